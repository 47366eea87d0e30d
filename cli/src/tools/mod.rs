//! The tracers: each is its BPF program, its event decoder and its columns; the lifecycle is
//! `crate::lifecycle`.

pub mod exec;
pub mod open;
pub mod syscall_summary;
pub mod syscalls;

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use bpfstream::WakeupPolicy;

use crate::lifecycle::{BufferOptions, CommonArgs};

/// Buffer options for tracers whose events can come by the million per second (syscalls,
/// opens): the ring wakes the consumer once a quarter of it is full instead of whenever the
/// consumer had caught up. Each wakeup costs the traced thread an irq_work and an IPI (a VM
/// exit on a virtual machine); under a storm the adaptive default wakes a consumer that keeps
/// catching up for nearly every record, and the traced program runs at the consumer's pace. The
/// poll timeout (`max_delay`, 100 ms) bounds how long a record can wait when few arrive. An
/// explicit `--wakeup` wins.
pub fn high_rate_options(args: &CommonArgs) -> BufferOptions {
    let mut options = BufferOptions::from_args(args);
    if args.wakeup.is_none() {
        options.ring_wakeup = WakeupPolicy::Bytes(options.size / 4);
    }
    options
}

/// Sum over CPUs of a one-slot per-CPU `u64` array (a tool's own counter in its BPF object).
pub fn per_cpu_total(map: &PerCpuArray<MapData, u64>) -> Result<u64> {
    Ok(map.get(&0, 0)?.iter().sum())
}
