//! The tracers: each is its BPF program, its event decoder and its columns; the lifecycle is
//! `crate::lifecycle`.

pub mod exec;
pub mod open;
pub mod syscall_summary;
pub mod syscalls;

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use bpfstream::WakeupPolicy;

use crate::lifecycle::{BufferKind, BufferOptions, CommonArgs, DEFAULT_BUFFER_SIZE};

/// What a tracer's default buffer must hold: `records` records of about `record_bytes` bytes
/// from every CPU at once, without the reader's help (a burst while it is descheduled).
#[derive(Debug, Clone, Copy)]
pub struct BurstBudget {
    pub record_bytes: u64,
    pub records: u64,
}

/// Smallest and largest default buffer.
const MIN_DEFAULT_BUFFER: u64 = DEFAULT_BUFFER_SIZE;
const MAX_DEFAULT_BUFFER: u64 = 256 << 20;

/// The default buffer size for `budget`: the burst of every CPU (+ the ring's 8-byte record
/// header) in one ring, or one CPU's in each perf buffer, as a power of two. An explicit
/// `--buffer-size` wins.
pub fn default_buffer_size(args: &CommonArgs, budget: BurstBudget) -> u64 {
    if let Some(size) = args.buffer_size {
        return size;
    }
    let one_cpu = (budget.record_bytes + 8).saturating_mul(budget.records);
    // Without --buffer the transport is a ring unless the kernel has none; a perf fallback then
    // gets the ring's size per CPU, more than it needs.
    let buffers_of =
        if args.buffer == Some(BufferKind::Perf) { 1 } else { bpfstream::online_cpus().map_or(1, |c| c.len()) };
    one_cpu.saturating_mul(buffers_of as u64).next_power_of_two().clamp(MIN_DEFAULT_BUFFER, MAX_DEFAULT_BUFFER)
}

/// Buffer options for tracers whose events can come by the million per second (syscalls,
/// opens): sized for `budget`, and the ring wakes the consumer once 64 KiB (a quarter of a
/// smaller buffer) wait instead of whenever the consumer had caught up. Each wakeup costs the
/// traced thread an irq_work and an IPI (a VM exit on a virtual machine); under a storm the
/// adaptive default wakes a consumer that keeps catching up for nearly every record, and the
/// traced program runs at the consumer's pace. The poll timeout (`max_delay`, 100 ms) bounds how
/// long a record can wait when few arrive. An explicit `--wakeup` wins.
pub fn high_rate_options(args: &CommonArgs, budget: BurstBudget) -> BufferOptions {
    let mut options = BufferOptions::from_args(args);
    options.size = default_buffer_size(args, budget);
    if args.wakeup.is_none() {
        options.ring_wakeup = WakeupPolicy::Bytes((options.size / 4).min(DEFAULT_BUFFER_SIZE / 4));
    }
    options
}

/// Sum over CPUs of a one-slot per-CPU `u64` array (a tool's own counter in its BPF object).
pub fn per_cpu_total(map: &PerCpuArray<MapData, u64>) -> Result<u64> {
    Ok(map.get(&0, 0)?.iter().sum())
}
