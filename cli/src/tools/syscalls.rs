//! `bpfstream syscalls`: every completed syscall with its latency (the chapter's "Complete
//! Example: Syscall Tracer"), from raw_syscalls sys_enter/sys_exit as raw tracepoints, with
//! every filter applied in the kernel; or, with `--summary`, per-syscall statistics folded from
//! the same records.

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use bpfstream::names::{errno_name, syscall_name, syscall_number};
use bpfstream::{FromRecord, Item};

use crate::export::Tee;
use crate::lifecycle::{task_filter_globals, Attach, CommonArgs, Global, Sink, Tracer, TracerSpec};
use crate::objects;
use crate::output::{c_str, cell_left, cell_right, display_bytes, JsonLine, TimeColumn};
use crate::tools::syscall_summary::{Aggregator, GroupBy, IntervalWriter};
use crate::tools::{high_rate_options, per_cpu_total};

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
    }
}

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

/// A failed syscall returns -errno, -4095..=-1 (the kernel's IS_ERR_VALUE).
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

/// A comm for the table: borrowed when it is printable ASCII (nearly always), escaped otherwise.
fn comm_text(comm: &[u8; 16]) -> Cow<'_, str> {
    let bytes = c_str(comm);
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => Cow::Borrowed(text),
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

/// `{:03}`: digits zero-padded on the left to `width`.
fn cell_right_zeros(out: &mut String, digits: &str, width: usize) {
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
}

#[derive(Debug, clap::Args)]
pub struct SyscallsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only this thread (filtered in the kernel)
    #[arg(long, value_name = "TID", value_parser = crate::lifecycle::parse_task_id)]
    pub tid: Option<u32>,
    /// Only these syscalls, by x86-64 name or number (filtered in the kernel)
    #[arg(long, value_name = "NAME[,NAME]", value_parser = parse_syscall_set)]
    pub syscall: Option<SyscallSet>,
    /// Only failed syscalls (return value -4095..-1; filtered in the kernel)
    #[arg(long)]
    pub failed: bool,
    /// Only syscalls that took at least this long, e.g. 10us, 5ms (filtered in the kernel)
    #[arg(long, value_name = "DURATION", value_parser = crate::size::parse_duration)]
    pub min_duration: Option<Duration>,
    /// Instead of events: per-syscall count, errors, total time and p50/p99/max latency
    /// (events only: not with --output)
    #[arg(long, conflicts_with = "output")]
    pub summary: bool,
    /// With --summary: print and reset the table every SECS (default: once, at the end)
    #[arg(long, value_name = "SECS", requires = "summary", value_parser = crate::size::parse_run_duration)]
    pub interval: Option<Duration>,
    /// With --summary: one row per process instead of per syscall
    #[arg(long, requires = "summary")]
    pub by_process: bool,
    /// With --summary: show only the N rows with the most total time
    #[arg(long, value_name = "N", requires = "summary", value_parser = clap::value_parser!(u64).range(1..))]
    pub top: Option<u64>,
    /// Print a timestamp column (seconds since the first event)
    #[arg(short = 'T', long)]
    pub time: bool,
}

pub fn spec(args: &SyscallsArgs) -> TracerSpec {
    let common = &args.common;
    let mut globals = task_filter_globals(common, args.tid);
    globals.extend([
        Global::bool("only_failed", args.failed),
        Global::u64("min_duration_ns", args.min_duration.map_or(0, |d| d.as_nanos().min(u64::MAX.into()) as u64)),
        Global::bool("filter_syscalls", args.syscall.is_some()),
    ]);
    if let Some(set) = &args.syscall {
        globals.push(Global { name: "syscall_mask", bytes: set.bytes() });
    }
    TracerSpec {
        what: "syscalls",
        objects: objects::SYSCALLS,
        attach: vec![
            Attach::RawTracePoint { program: "syscall_enter", name: "sys_enter" },
            Attach::RawTracePoint { program: "syscall_exit", name: "sys_exit" },
        ],
        globals,
    }
}

/// Summary mode's state.
struct Summary {
    agg: Aggregator,
    writer: IntervalWriter,
    interval: Option<Duration>,
    started: Instant,
    last: Instant,
}

/// Prints syscall events as table rows or JSON lines, or folds them into summaries.
struct Printer<W: Write> {
    out: W,
    /// The table row being built (reused).
    line: String,
    json: bool,
    time: TimeColumn,
    malformed: u64,
    summary: Option<Summary>,
    tee: Tee,
}

impl<W: Write> Printer<W> {
    fn event(&mut self, e: &SyscallEvent) -> io::Result<()> {
        let name = syscall_label(e.nr);
        if self.tee.active() {
            let line = JsonLine::new("syscall")
                .num("ts_ns", e.ts_ns)
                .num("duration_ns", e.duration_ns)
                .num("pid", e.pid)
                .num("tid", e.tid)
                .bytes("comm", c_str(&e.comm))
                .num("nr", e.nr)
                .str("syscall", &name)
                .num("ret", e.ret);
            self.tee.emit(&mut self.out, line)?;
            if self.json {
                return Ok(());
            }
        }
        self.time.cell(&mut self.out, e.ts_ns)?;
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
        cell_left(line, &name, 20);
        line.push(' ');
        cell_right(line, num.format(e.duration_ns / 1000), 9);
        line.push('.');
        cell_right_zeros(line, num.format(e.duration_ns % 1000), 3);
        line.push(' ');
        match errno_text(e.ret) {
            Some(errno) => line.push_str(errno),
            None => line.push_str(num.format(e.ret)),
        }
        line.push('\n');
        self.out.write_all(line.as_bytes())
    }

    /// Prints the summary accumulated since the last one.
    fn print_interval(&mut self) -> io::Result<()> {
        let Some(s) = &mut self.summary else { return Ok(()) };
        s.last = Instant::now();
        s.writer.write(&mut self.out, &mut s.agg, s.started.elapsed())
    }
}

impl<W: Write> Sink for Printer<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.json || self.summary.is_some() {
            return Ok(());
        }
        self.time.title(&mut self.out)?;
        writeln!(self.out, "{:<16} {:>7} {:>7} {:<20} {:>13} RET", "COMM", "PID", "TID", "SYSCALL", "DURATION(us)")?;
        self.out.flush()
    }

    fn item(&mut self, item: Item<'_>) -> io::Result<()> {
        let record = match item {
            Item::Record(record) => record,
            Item::Lost(lost) => {
                if let Some(s) = &mut self.summary {
                    s.agg.lost(lost.count);
                }
                return Ok(());
            }
        };
        let Ok(e) = SyscallEvent::from_record(record.data) else {
            self.malformed += 1;
            self.tee.unencoded();
            return Ok(());
        };
        match &mut self.summary {
            Some(s) => {
                s.agg.add(&e);
                Ok(())
            }
            None => self.event(&e),
        }
    }

    fn tick(&mut self) -> io::Result<()> {
        let due = self.summary.as_ref().is_some_and(|s| s.interval.is_some_and(|i| s.last.elapsed() >= i));
        if due {
            self.print_interval()?;
        }
        self.tee.tick(&mut self.out)?;
        self.out.flush()
    }
}

pub fn run(args: SyscallsArgs) -> Result<()> {
    let options = high_rate_options(&args.common);
    let json = args.common.json;
    let tee = Tee::start(&args.common.output, json)?;
    let mut tracer = Tracer::start(&spec(&args), &options)?;
    let untracked: PerCpuArray<MapData, u64> = tracer.take_map("untracked")?.try_into()?;
    let by = if args.by_process { GroupBy::Process } else { GroupBy::Syscall };
    let now = Instant::now();
    let mut printer = Printer {
        out: io::BufWriter::new(io::stdout().lock()),
        line: String::new(),
        json,
        time: TimeColumn::new(args.time),
        malformed: 0,
        summary: args.summary.then(|| Summary {
            agg: Aggregator::new(by),
            writer: IntervalWriter {
                by,
                json,
                top: args.top.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                printed: 0,
            },
            interval: args.interval,
            started: now,
            last: now,
        }),
        tee,
    };
    let mut summary = tracer.run(args.common.duration, options.max_delay, &mut printer)?;
    summary.export = printer.tee.finish();
    // The rows since the last interval (all of them without --interval).
    let pending =
        printer.summary.as_ref().is_some_and(|s| s.agg.events() + s.agg.dropped() > 0 || s.writer.printed == 0);
    if pending {
        match printer.print_interval().and_then(|()| printer.out.flush()) {
            Err(e) if !crate::lifecycle::is_broken_pipe(&e) => return Err(e.into()),
            _ => {}
        }
    }
    let malformed = printer.malformed;
    drop(printer);
    let untracked = per_cpu_total(&untracked)?;
    let extra =
        if untracked > 0 { format!("; {untracked} syscalls untracked (in-flight map full)") } else { String::new() };
    summary.print(json, |line| line.num("malformed", malformed).num("untracked", untracked), &extra)?;
    if malformed > 0 {
        eprintln_lossy!("warning: {malformed} records were shorter than a syscall event");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_event_mirrors_the_struct_clang_laid_out() {
        for object in [objects::SYSCALLS.ring, objects::SYSCALLS.perf] {
            let c = bpfstream::btf::struct_layout(object, "syscall_event").unwrap();
            c.check(&bpfstream::rust_layout!(SyscallEvent { ts_ns, duration_ns, ret, nr, pid, tid, comm })).unwrap();
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
        comm[..6].copy_from_slice(b"bash\0\0");
        assert!(matches!(comm_text(&comm), Cow::Borrowed("bash")));
    }
}
