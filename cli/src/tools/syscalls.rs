//! `bpfstream syscalls`: every completed syscall with its latency (the chapter's "Complete
//! Example: Syscall Tracer"), from raw_syscalls sys_enter/sys_exit as raw tracepoints, with
//! every filter applied in the kernel; or, with `--summary`, per-syscall statistics counted in
//! the kernel (`syscall_summary`).

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use bpfstream::FromRecord;

use crate::container::ContainerArgs;
use crate::lifecycle::{
    task_filter_globals, tracer_buffer, Attach, BufferOptions, BurstBudget, CommonArgs, EventRate, Format, Global,
    Loaded, Outlet, StreamPlan, Summary, TracerSpec,
};
use crate::names::{errno_name, syscall_name, syscall_number};
use crate::objects;
use crate::output::{c_str, cell_left, cell_right, display_bytes, JsonLine};
use crate::tools::per_cpu_total;
use crate::tools::syscall_summary::{GroupBy, IntervalWriter, SortBy, StatsTable};
use crate::writer::Output;

bpfstream::record! {
    /// `struct syscall_event` of bpf/syscalls.h.
    #[derive(Debug)]
    pub struct SyscallEvent {
        pub ts_ns: u64,
        pub duration_ns: u64,
        pub ret: i64,
        pub nr: i64,
        pub pid: u32,
        pub tid: u32,
        pub comm: [u8; 16],
        pub cgroup_id: u64,
    }
}

/// What the default buffer holds without a read: 65,536 records per CPU (16 MiB of ring on two
/// CPUs), a storm of the cheapest syscalls on every CPU for about 40 ms.
const BURST: BurstBudget = BurstBudget { record_bytes: std::mem::size_of::<SyscallEvent>() as u64, records: 1 << 16 };

/// Words of the `--syscall` bitmap (`SYSCALLS_MASK_WORDS` in bpf/syscalls.h).
const MASK_WORDS: usize = 8;

/// `--syscall NAME[,NAME]`: the set as the BPF program's bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallSet([u64; MASK_WORDS]);

impl SyscallSet {
    fn bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }
}

/// Parses `openat,read,getppid` (names of x86-64 syscalls, or numbers).
pub fn parse_syscall_set(text: &str) -> Result<SyscallSet, String> {
    let mut mask = [0u64; MASK_WORDS];
    for name in text.split(',').map(str::trim) {
        let nr = match name.parse::<i64>() {
            Ok(nr) if syscall_name(nr).is_some() => nr,
            Ok(nr) => return Err(format!("{nr} is not an x86-64 syscall number")),
            Err(_) => syscall_number(name).ok_or_else(|| {
                format!("unknown syscall {name:?}: use x86-64 syscall names, e.g. openat,read,getppid (or numbers)")
            })?,
        };
        let bit = nr as usize;
        if bit >= MASK_WORDS * 64 {
            return Err(format!("syscall {name} ({nr}) is beyond the filter's {} bits", MASK_WORDS * 64));
        }
        mask[bit / 64] |= 1 << (bit % 64);
    }
    Ok(SyscallSet(mask))
}

/// The syscall's name, or `syscall_<nr>` for numbers this table does not know (newer kernels,
/// x32, or -1 for a syscall skipped by seccomp or ptrace).
pub fn syscall_label(nr: i64) -> Cow<'static, str> {
    match syscall_name(nr) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("syscall_{nr}")),
    }
}

/// `--errno ENOENT` or `--errno 2`: an errno by name or number.
pub fn parse_errno(text: &str) -> Result<u32, String> {
    let named = || (1..4096).find(|&e| errno_name(e).is_some_and(|n| n.eq_ignore_ascii_case(text)));
    match text.parse::<u32>() {
        Ok(e @ 1..=4095) => Ok(e),
        Ok(_) => Err(format!("errno {text} is outside 1..4095")),
        Err(_) => named()
            .map(|e| e as u32)
            .ok_or_else(|| format!("unknown errno {text:?}: use a name such as ENOENT, or a number")),
    }
}

/// A failed syscall returns -errno, -4095..=-1 (the kernel's IS_ERR_VALUE).
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

/// A comm for the table: borrowed when it is printable ASCII (nearly always), escaped otherwise.
fn comm_text(comm: &[u8; 16]) -> Cow<'_, str> {
    let bytes = c_str(comm);
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.iter().all(|&b| (b.is_ascii_graphic() && b != b'\\') || b == b' ') => Cow::Borrowed(text),
        _ => Cow::Owned(display_bytes(bytes)),
    }
}

/// The RET column of a failed syscall: its errno name (`None`: print the value).
fn errno_text(ret: i64) -> Option<&'static str> {
    if is_error(ret) {
        errno_name((-ret) as i32)
    } else {
        None
    }
}

/// `{:03}`: digits zero-padded on the left to 3.
fn cell_three_digits(out: &mut String, digits: &str) {
    out.push_str(&"000"[..3usize.saturating_sub(digits.len())]);
    out.push_str(digits);
}

#[derive(Debug, clap::Args)]
pub struct SyscallsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    /// Only this thread (filtered in the kernel)
    #[arg(short = 't', long, value_name = "TID", value_parser = crate::values::parse_task_id)]
    pub tid: Option<u32>,
    /// Only these syscalls, by x86-64 name or number (filtered in the kernel)
    #[arg(long, value_name = "NAME[,NAME]", value_parser = parse_syscall_set)]
    pub syscall: Option<SyscallSet>,
    /// Only failed syscalls (return value -4095..-1; filtered in the kernel)
    #[arg(short = 'x', long)]
    pub failed: bool,
    /// Only syscalls that failed with this errno, e.g. ENOENT or 2 (filtered in the kernel)
    #[arg(short = 'e', long, value_name = "ERRNO", value_parser = parse_errno)]
    pub errno: Option<u32>,
    /// Only syscalls that took at least this long, e.g. 10us, 5ms (filtered in the kernel)
    #[arg(long, value_name = "DURATION", value_parser = crate::size::parse_duration)]
    pub min_duration: Option<Duration>,
    /// Instead of events: per-syscall count, errors, total time and p50/p99/max latency,
    /// counted in the kernel (exact at any rate; like syscount -L)
    /// (not with --output: no events are streamed)
    #[arg(short = 'L', long, visible_alias = "latency", conflicts_with = "output")]
    pub summary: bool,
    /// Summary every SECS, each of the calls since the previous one (implies --summary;
    /// default: once, at the end)
    #[arg(short = 'i', long, value_name = "SECS", value_parser = crate::size::parse_run_duration)]
    pub interval: Option<Duration>,
    /// Summary rows per process instead of per syscall (implies --summary)
    #[arg(short = 'P', long)]
    pub by_process: bool,
    /// Summary: show only the first N rows (implies --summary)
    #[arg(long, value_name = "N", value_parser = crate::values::parse_count)]
    pub top: Option<u64>,
    /// Summary rows by total time or by count, most first (implies --summary)
    #[arg(long, value_enum, value_name = "time|count")]
    pub sort: Option<SortBy>,
    /// Durations in milliseconds instead of microseconds
    #[arg(short = 'm', long)]
    pub milliseconds: bool,
}

impl SyscallsArgs {
    /// Summary mode: `--summary`, or any option that only makes sense there.
    pub fn summary_mode(&self) -> bool {
        self.summary || self.interval.is_some() || self.by_process || self.top.is_some() || self.sort.is_some()
    }
}

pub fn spec(args: &SyscallsArgs) -> TracerSpec {
    let common = &args.common;
    let mut globals = task_filter_globals(common, args.tid);
    globals.extend([
        Global::bool("summary_mode", args.summary_mode()),
        Global::bool("by_process", args.by_process),
        Global::u32("targ_errno", args.errno.unwrap_or(0)),
        Global::bool("only_failed", args.failed),
        Global::u64("min_duration_ns", args.min_duration.map_or(0, |d| d.as_nanos().min(u64::MAX.into()) as u64)),
        Global::bool("filter_syscalls", args.syscall.is_some()),
    ]);
    if let Some(set) = &args.syscall {
        globals.push(Global { name: "syscall_mask", bytes: set.bytes() });
    }
    TracerSpec {
        what: if args.summary_mode() { SUMMARY_WHAT } else { "syscalls" },
        objects: objects::SYSCALLS,
        attach: vec![
            Attach::RawTracePoint { program: "syscall_enter", name: "sys_enter" },
            Attach::RawTracePoint { program: "syscall_exit", name: "sys_exit" },
        ],
        globals,
    }
}

/// The `Tracing` line of summary mode, with the memory the rows take.
pub(crate) const SUMMARY_WHAT: &str = "syscalls, counted in the kernel (9 KiB per row and CPU, up to 1024 rows),";

/// Summary mode's state.
struct Counts {
    table: StatsTable,
    writer: IntervalWriter,
    interval: Option<Duration>,
    started: Instant,
    last: Instant,
}

impl Counts {
    /// Prints the rows counted since the last interval.
    fn print_interval(&mut self, out: &mut Output) -> io::Result<()> {
        self.last = Instant::now();
        let rows = self.table.take_rows().map_err(io::Error::other)?;
        self.writer.write(out, rows, self.started.elapsed())
    }
}

/// Syscall events' columns, or the summaries they are folded into in the kernel.
struct SyscallsFormat {
    /// The table row being built (reused).
    line: String,
    millis: bool,
    counts: Option<Counts>,
    /// The BPF side's syscalls it could not track, read at the end.
    untracked_map: PerCpuArray<MapData, u64>,
    untracked: u64,
    /// Summary mode: the calls counted since attach, read at the end.
    counted: Option<u64>,
}

impl Format for SyscallsFormat {
    type Event<'a> = SyscallEvent;

    fn decode(&mut self, data: &[u8]) -> Option<SyscallEvent> {
        SyscallEvent::from_record(data).ok()
    }

    fn kind(&self) -> &str {
        "syscall"
    }

    fn ts_ns(&self, e: &SyscallEvent) -> Option<u64> {
        Some(e.ts_ns)
    }

    fn cgroup_id(&self, e: &SyscallEvent) -> Option<u64> {
        Some(e.cgroup_id)
    }

    fn titles(&self) -> Option<String> {
        let duration = if self.millis { "DURATION(ms)" } else { "DURATION(us)" };
        let titles = format!("{:<16} {:>7} {:>7} {:<20} {duration:>13} RET\n", "COMM", "PID", "TID", "SYSCALL");
        self.counts.is_none().then_some(titles)
    }

    fn row(&mut self, e: &SyscallEvent, out: &mut Output) -> io::Result<()> {
        // Built by hand into a reused line (integers, no allocation): this runs for every
        // syscall of a storm. Columns as "{:<16} {:>7} {:>7} {:<20} {:>9}.{:03} {}".
        let mut num = itoa::Buffer::new();
        let line = &mut self.line;
        line.clear();
        cell_left(line, &comm_text(&e.comm), 16);
        line.push(' ');
        cell_right(line, num.format(e.pid), 7);
        line.push(' ');
        cell_right(line, num.format(e.tid), 7);
        line.push(' ');
        cell_left(line, &syscall_label(e.nr), 20);
        line.push(' ');
        let unit = if self.millis { 1_000_000 } else { 1000 };
        cell_right(line, num.format(e.duration_ns / unit), 9);
        line.push('.');
        cell_three_digits(line, num.format(e.duration_ns % unit / (unit / 1000)));
        line.push(' ');
        match errno_text(e.ret) {
            Some(errno) => line.push_str(errno),
            None => line.push_str(num.format(e.ret)),
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    }

    fn json(&self, e: &SyscallEvent, line: JsonLine) -> JsonLine {
        line.num("ts_ns", e.ts_ns)
            .num("duration_ns", e.duration_ns)
            .num("pid", e.pid)
            .num("tid", e.tid)
            .bytes("comm", c_str(&e.comm))
            .num("nr", e.nr)
            .str("syscall", &syscall_label(e.nr))
            .num("ret", e.ret)
            .num("cgroup_id", e.cgroup_id)
    }

    fn tick(&mut self, out: &mut Output) -> io::Result<()> {
        match &mut self.counts {
            Some(c) if c.interval.is_some_and(|i| c.last.elapsed() >= i) => c.print_interval(out),
            _ => Ok(()),
        }
    }

    /// Summary mode: the rows since the last interval (all of them without --interval), and
    /// the calls counted since attach.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.untracked = per_cpu_total(&self.untracked_map)?;
        let Some(c) = &mut self.counts else { return Ok(()) };
        let rows = c.table.take_rows()?;
        if !rows.is_empty() || c.writer.printed == 0 {
            c.writer.write(out, rows, c.started.elapsed())?;
        }
        self.counted = Some(c.table.counted());
        Ok(())
    }

    fn summary_json(&self, _: &Summary, line: JsonLine) -> JsonLine {
        let line = line.num("untracked", self.untracked);
        match self.counted {
            Some(counted) => line.num("counted", counted),
            None => line,
        }
    }

    fn summary_text(&self, summary: &Summary, line: String) -> String {
        let untracked = match self.untracked {
            0 => String::new(),
            n => format!(
                "; {n} syscalls untracked (no kernel memory for their in-flight state or summary row at the time)"
            ),
        };
        match self.counted {
            Some(counted) => {
                format!("{counted} syscalls counted in the kernel in {:.1} s{untracked}", summary.elapsed.as_secs_f64())
            }
            None => line + &untracked,
        }
    }
}

pub fn run(args: SyscallsArgs) -> Result<()> {
    if args.summary_mode() && args.common.output.output.is_some() {
        let text = "--output ships events, and the summary options (-L -i -P --top --sort) stream none\n";
        clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, text).exit();
    }
    let duration = args.common.duration;
    crate::lifecycle::trace(plan(args)?, duration)
}

/// The stream of `args` (its `--output` connected now).
pub fn plan(args: SyscallsArgs) -> Result<StreamPlan<'static>> {
    let outlet = Outlet::start(&args.common, &args.container)?;
    Ok(StreamPlan::new(spec(&args), buffer(&args), outlet, move |loaded| format(&args, loaded)))
}

/// The buffer of `args`.
pub fn buffer(args: &SyscallsArgs) -> BufferOptions {
    let mut options = tracer_buffer(&args.common, EventRate::High(BURST));
    if args.summary_mode() {
        // Nothing is sent: the smallest buffer the transport takes.
        options.size = crate::host::page_size() as u64;
    }
    options
}

/// The events' format of `args`, with the maps it reads taken from the loaded object.
pub fn format(args: &SyscallsArgs, loaded: &mut Loaded) -> Result<impl Format> {
    let by = if args.by_process { GroupBy::Process } else { GroupBy::Syscall };
    let counts = if args.summary_mode() {
        let (rows, unbucketed) = (loaded.take_map("stats")?, loaded.take_map("stats_early")?);
        let now = Instant::now();
        Some(Counts {
            table: StatsTable::new(rows, unbucketed, by, args.sort.unwrap_or(SortBy::Time))?,
            writer: IntervalWriter {
                by,
                json: args.common.json,
                top: args.top.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                millis: args.milliseconds,
                printed: 0,
            },
            interval: args.interval,
            started: now,
            last: now,
        })
    } else {
        None
    };
    Ok(SyscallsFormat {
        line: String::new(),
        millis: args.milliseconds,
        counts,
        untracked_map: loaded.take_map("untracked")?.try_into()?,
        untracked: 0,
        counted: None,
    })
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;

    #[test]
    fn syscall_event_mirrors_the_struct_clang_laid_out() {
        for object in [objects::SYSCALLS.ring, objects::SYSCALLS.perf] {
            SyscallEvent::check_btf(object, "syscall_event").unwrap();
        }
    }

    #[test]
    fn syscall_sets_parse_names_and_numbers() {
        let set = parse_syscall_set("openat, getppid,0,file_setattr").unwrap();
        assert_eq!(set.0[0], 1);
        assert_eq!(set.0[257 / 64], 1 << (257 % 64));
        assert_eq!(set.0[110 / 64], 1 << (110 % 64));
        assert_eq!(set.0[469 / 64], 1 << (469 % 64));
        assert_eq!(set.bytes().len(), 64);
        let err = parse_syscall_set("openat,opne").unwrap_err();
        assert!(err.contains("unknown syscall \"opne\""), "{err}");
        assert!(parse_syscall_set("600").is_err());
        assert!(parse_syscall_set("").is_err());
    }

    #[test]
    fn errnos_parse_by_name_or_number() {
        assert_eq!(parse_errno("ENOENT"), Ok(2));
        assert_eq!(parse_errno("eacces"), Ok(13));
        assert_eq!(
            parse_errno("EWOULDBLOCK").unwrap_err(),
            "unknown errno \"EWOULDBLOCK\": use a name such as ENOENT, or a number"
        );
        assert_eq!(parse_errno("4095"), Ok(4095));
        assert!(parse_errno("0").is_err() && parse_errno("4096").is_err() && parse_errno("").is_err());
    }

    #[test]
    fn names_errors_and_labels() {
        assert_eq!(syscall_label(110), "getppid");
        assert_eq!(syscall_label(-1), "syscall_-1");
        assert!(is_error(-2) && is_error(-4095) && !is_error(0) && !is_error(-4096) && !is_error(3));
        assert_eq!(errno_text(-2), Some("ENOENT"));
        assert_eq!(errno_text(-512), Some("ERESTARTSYS"));
        assert_eq!(errno_text(-4000), None);
        assert_eq!(errno_text(42), None);
        assert_eq!(errno_text(-5000), None);
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"a b\x1bc\xff");
        assert_eq!(comm_text(&comm), "a b\\x1bc\\xff");
        comm[..6].copy_from_slice(b"a\\x0ab");
        assert_eq!(comm_text(&comm), "a\\\\x0ab");
        comm[..6].copy_from_slice(b"bash\0\0");
        assert!(matches!(comm_text(&comm), Cow::Borrowed("bash")));
    }
}
