//! The options every tracer takes, and the one place that turns them into a buffer and its
//! wakeup policy, and into the task filter's globals.

use std::time::Duration;

use bpfstream::{PerfWakeup, Transport, WakeupPolicy};

use bpfstream_core::load::{BufferOptions, Global};

use crate::values::{comm_parser, parse_task_id, parse_uid, Comm};

/// Default buffer: 256 KiB (ring: total; perf: per CPU).
pub const DEFAULT_BUFFER_SIZE: u64 = 256 << 10;

/// Options every tracer takes (`cli-contract.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Transport: ring (default; falls back to perf where the kernel lacks ring buffers) or perf
    #[arg(long, value_enum)]
    pub buffer: Option<BufferKind>,
    /// Buffer size: ring total bytes, or perf bytes per CPU; a power of two from 4K to 1G
    #[arg(long, value_name = "BYTES", value_parser = crate::size::parse_buffer_size)]
    pub buffer_size: Option<u64>,
    /// Stop after SECS, drain, print the summary and exit 0
    #[arg(short = 'd', long, value_name = "SECS", value_parser = crate::size::parse_run_duration)]
    pub duration: Option<Duration>,
    /// JSON lines on stdout: one object per event, then the summary object
    #[arg(long)]
    pub json: bool,
    /// Only this process (filtered in the kernel)
    #[arg(short = 'p', long, value_name = "PID", value_parser = parse_task_id)]
    pub pid: Option<u32>,
    /// Only tasks whose comm is exactly COMM (first 15 bytes; filtered in the kernel); any byte
    /// can be given as \xNN, a backslash as \\
    #[arg(long, value_name = "COMM", value_parser = comm_parser(), conflicts_with = "name_contains")]
    pub name: Option<Comm>,
    /// Only tasks whose comm contains NAME, like opensnoop -n (filtered in the kernel; escapes as
    /// for --name)
    #[arg(short = 'n', long, value_name = "NAME", value_parser = comm_parser())]
    pub name_contains: Option<Comm>,
    /// Only tasks of this (real) user id (filtered in the kernel)
    #[arg(short = 'u', long, value_name = "UID", value_parser = parse_uid)]
    pub uid: Option<u32>,
    /// Only tasks in this cgroup v2 directory or below it, e.g. /sys/fs/cgroup/system.slice
    /// (filtered in the kernel)
    #[arg(long, value_name = "PATH", value_parser = crate::cgroup::parse_cgroup)]
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// Print a wall-clock time column (HH:MM:SS, local time), like execsnoop -T
    #[arg(short = 'T', long)]
    pub timestamp: bool,
    /// Print a column of seconds since the first event
    #[arg(long)]
    pub elapsed: bool,
    /// When producers wake the reader: adaptive (when the reader had caught up), every, never,
    /// records:N or bytes:N. Default: bytes at a quarter of the buffer for perf buffers and for
    /// the high-rate tracers (syscalls, open), adaptive otherwise
    #[arg(long, value_name = "POLICY", value_parser = parse_wakeup)]
    pub wakeup: Option<Wakeup>,
    /// Longest a record may wait in the buffer before it is read, whatever the wakeup policy
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = crate::size::parse_run_duration)]
    pub max_delay: Duration,
    /// `--output`: shipping events to Kafka / NATS JetStream (`crate::export`).
    #[command(flatten)]
    pub output: crate::export::OutputArgs,
}

/// `--wakeup`, for either transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    Adaptive,
    Every,
    Never,
    Records(u32),
    Bytes(u32),
}

impl Wakeup {
    /// The ring producers' policy.
    fn ring(self) -> WakeupPolicy {
        match self {
            Wakeup::Adaptive => WakeupPolicy::Adaptive,
            Wakeup::Every => WakeupPolicy::EveryRecord,
            Wakeup::Never => WakeupPolicy::Never,
            Wakeup::Records(n) => WakeupPolicy::EveryRecords(n.into()),
            Wakeup::Bytes(n) => WakeupPolicy::Bytes(n.into()),
        }
    }

    /// The perf buffers' policy (`None`: the default watermark); perf cannot wake less often
    /// than at half the buffer, so `never` means the default.
    fn perf(self) -> Option<PerfWakeup> {
        match self {
            Wakeup::Every => Some(PerfWakeup::Events(1)),
            Wakeup::Records(n) => Some(PerfWakeup::Events(n)),
            Wakeup::Bytes(n) => Some(PerfWakeup::Bytes(n)),
            Wakeup::Adaptive | Wakeup::Never => None,
        }
    }
}

fn parse_wakeup(text: &str) -> Result<Wakeup, String> {
    let count = |n: &str| -> Result<u32, String> {
        match crate::values::parse_count(n) {
            Ok(v) => u32::try_from(v).map_err(|_| format!("{n:?} is too large")),
            Err(e) => Err(e),
        }
    };
    match text.split_once(':') {
        None => match text {
            "adaptive" => Ok(Wakeup::Adaptive),
            "every" => Ok(Wakeup::Every),
            "never" => Ok(Wakeup::Never),
            _ => Err(format!("unknown wakeup policy {text:?}: use adaptive, every, never, records:N or bytes:N")),
        },
        Some(("records", n)) => count(n).map(Wakeup::Records),
        Some(("bytes", n)) => {
            let bytes = crate::size::parse_bytes(n)?;
            match u32::try_from(bytes) {
                Ok(0) => Err(format!("{n:?} is not a positive size")),
                Ok(b) => Ok(Wakeup::Bytes(b)),
                Err(_) => Err(format!("{n:?} is too large")),
            }
        }
        Some(_) => Err(format!("unknown wakeup policy {text:?}: use adaptive, every, never, records:N or bytes:N")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BufferKind {
    Ring,
    Perf,
}

/// How many events a tracer expects: it decides the default buffer and wakeup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRate {
    /// Events by the dozen (exec): a [`DEFAULT_BUFFER_SIZE`] buffer that wakes the reader
    /// whenever it had caught up.
    Moderate,
    /// Events by the million per second (syscalls, opens): a buffer that holds the burst, and a
    /// ring that wakes the reader once 64 KiB (a quarter of a smaller buffer) wait instead of
    /// whenever it had caught up. Each wakeup costs the traced thread an irq_work and an IPI (a
    /// VM exit on a virtual machine); under a storm the adaptive default wakes a reader that keeps
    /// catching up for nearly every record, and the traced program runs at the reader's pace.
    /// `max_delay` bounds how long a record can wait.
    High(BurstBudget),
}

/// What a tracer's default buffer must hold: `records` records of about `record_bytes` bytes
/// from every CPU at once, without the reader's help (a burst while it is descheduled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstBudget {
    pub record_bytes: u64,
    pub records: u64,
}

/// Largest default buffer.
const MAX_DEFAULT_BUFFER: u64 = 256 << 20;

/// The default buffer size for `budget`: the burst of every CPU (+ the ring's 8-byte record
/// header) in one ring, or one CPU's in each perf buffer, as a power of two.
fn burst_buffer_size(args: &CommonArgs, budget: BurstBudget) -> u64 {
    let one_cpu = (budget.record_bytes + 8).saturating_mul(budget.records);
    // Without --buffer the transport is a ring unless the kernel has none; a perf fallback then
    // gets the ring's size per CPU, more than it needs.
    let buffers_of =
        if args.buffer == Some(BufferKind::Perf) { 1 } else { crate::host::online_cpus().map_or(1, |c| c.len()) };
    one_cpu.saturating_mul(buffers_of as u64).next_power_of_two().clamp(DEFAULT_BUFFER_SIZE, MAX_DEFAULT_BUFFER)
}

/// The buffer and wakeup policy of a tracer: `--buffer-size` and `--wakeup` if given, else the
/// defaults for its event rate.
pub fn tracer_buffer(args: &CommonArgs, rate: EventRate) -> BufferOptions {
    let (default_size, high_rate) = match rate {
        EventRate::Moderate => (DEFAULT_BUFFER_SIZE, false),
        EventRate::High(budget) => (burst_buffer_size(args, budget), true),
    };
    let default_size = match crate::privileges::perf_buffer_budget() {
        // Without CAP_IPC_LOCK, perf buffers must fit what the user may lock.
        Some(budget) if args.buffer == Some(BufferKind::Perf) => default_size.min(budget),
        _ => default_size,
    };
    let size = args.buffer_size.unwrap_or(default_size);
    let default_ring =
        if high_rate { WakeupPolicy::Bytes((size / 4).min(DEFAULT_BUFFER_SIZE / 4)) } else { WakeupPolicy::Adaptive };
    BufferOptions {
        transport: args.buffer.map(|b| match b {
            BufferKind::Ring => Transport::Ring,
            BufferKind::Perf => Transport::Perf,
        }),
        size,
        ring_wakeup: args.wakeup.map_or(default_ring, Wakeup::ring),
        perf_wakeup: args.wakeup.and_then(Wakeup::perf),
        max_delay: args.max_delay,
    }
}

/// The globals of `bpf/include/bpfstream_filter.h`: the task filters every tracer applies in
/// the kernel (`--pid`, `--tid`, `--uid`, `--cgroup`, `--name`, `-n`), and bpfstream's own
/// process, never traced.
pub fn task_filter_globals(args: &CommonArgs, tid: Option<u32>) -> Vec<Global> {
    let comm = args.name.as_ref().or(args.name_contains.as_ref()).map_or(&[][..], |c| c.bytes());
    vec![
        Global::u32("self_tgid", std::process::id()),
        Global::u32("targ_pid", args.pid.unwrap_or(0)),
        Global::u32("targ_tid", tid.unwrap_or(0)),
        Global::bool("filter_uid", args.uid.is_some()),
        Global::u32("targ_uid", args.uid.unwrap_or(0)),
        Global::u64("targ_cgroup", args.cgroup.as_ref().map_or(0, |c| c.id)),
        Global::u32("targ_cgroup_level", args.cgroup.as_ref().map_or(0, |c| c.level)),
        Global::bool("filter_comm", !comm.is_empty()),
        Global::bool("comm_substring", args.name_contains.is_some()),
        Global::u32("targ_comm_len", comm.len() as u32),
        Global::comm("targ_comm", comm),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakeup_policies_parse() {
        assert_eq!(parse_wakeup("adaptive"), Ok(Wakeup::Adaptive));
        assert_eq!(parse_wakeup("never"), Ok(Wakeup::Never));
        assert_eq!(parse_wakeup("records:500"), Ok(Wakeup::Records(500)));
        assert_eq!(parse_wakeup("bytes:64K"), Ok(Wakeup::Bytes(64 << 10)));
        for bad in ["sometimes", "records:0", "records:x", "records:+5", "bytes:", "bytes:0", "pages:3"] {
            assert!(parse_wakeup(bad).is_err(), "{bad}");
        }
        assert_eq!(Wakeup::Records(7).ring(), WakeupPolicy::EveryRecords(7));
        assert_eq!(Wakeup::Never.perf(), None);
        assert_eq!(Wakeup::Bytes(9).perf(), Some(PerfWakeup::Bytes(9)));
    }
}
