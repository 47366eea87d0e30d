//! `bpfstream open`: every open/openat/openat2 with the filename exactly as passed (up to 4096
//! bytes), in a record exactly as long as the name (the chapter's exercise 4), from the raw
//! tracepoints `sys_enter`/`sys_exit` (no tracefs, no trace-record layout that differs between
//! kernels such as PREEMPT_RT's). Needs Linux 5.15 (`bpf_task_pt_regs`).

use std::io::{self, Write};

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use bpfstream::{Event, FromRecord, Record};

use crate::container::{ContainerArgs, ContainerFields};
use crate::export::Tee;
use crate::lifecycle::{
    task_filter_globals, Attach, BufferOptions, BurstBudget, CommonArgs, EventRate, Global, Sink, Tracer, TracerSpec,
};
use crate::names::{errno_name, syscall_name};
use crate::objects;
use crate::output::{c_str, display_bytes, JsonLine, TimeColumn};
use crate::tools::per_cpu_total;

/// `OPEN_FILENAME_MAX` of bpf/open.h: the longest name reported whole.
pub const FILENAME_MAX: usize = 4096;

bpfstream::record! {
    /// `struct open_event` of bpf/open.h.
    #[derive(Debug)]
    pub struct OpenEvent {
        pub ts_ns: u64,
        pub ret: i64,
        pub flags: u64,
        pub cgroup_id: u64,
        pub pid: u32,
        pub tid: u32,
        pub uid: u32,
        pub nr: u32,
        pub filename_len: u16,
        pub truncated: u16,
        pub comm: [u8; 16],
        pub pad: u32,
        /// The flexible `filename[]`: its bytes follow the header.
        pub filename: [u8; 0],
    }
}

/// An open record: the fixed header and the filename bytes.
#[derive(Debug)]
pub struct Open<'a> {
    pub header: OpenEvent,
    pub filename: &'a [u8],
}

/// Decodes a record; `None` if it is shorter than it claims.
pub fn decode(data: &[u8]) -> Option<Open<'_>> {
    let (header, rest) = OpenEvent::from_record_prefix(data).ok()?;
    let filename = rest.get(..usize::from(header.filename_len))?;
    Some(Open { header, filename })
}

/// A record's size if it had room for the longest name, as a fixed-size design would send.
pub const FIXED_RECORD_BYTES: usize = std::mem::size_of::<OpenEvent>() + FILENAME_MAX;

/// `--errno`: a name such as ENOENT, or a number.
fn parse_errno(text: &str) -> Result<u32, String> {
    let by_name = (1..4096).find(|&n| errno_name(n).is_some_and(|name| name.eq_ignore_ascii_case(text)));
    match (by_name, text.parse::<u32>()) {
        (Some(n), _) => Ok(n as u32),
        (None, Ok(n @ 1..=4095)) => Ok(n),
        _ => Err(format!("{text:?} is not an errno: give a name such as ENOENT, or a number from 1 to 4095")),
    }
}

/// What the default buffer holds without a read: 8,192 opens of 2 KiB names per CPU (64 MiB of
/// ring on two CPUs): 20,000 opens of names up to 4 KiB, even with the reader descheduled.
const BURST: BurstBudget =
    BurstBudget { record_bytes: (std::mem::size_of::<OpenEvent>() + 2048) as u64, records: 1 << 13 };

#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    /// Only this thread (filtered in the kernel)
    #[arg(short = 't', long, value_name = "TID", value_parser = crate::values::parse_task_id)]
    pub tid: Option<u32>,
    /// Only failed opens (filtered in the kernel)
    #[arg(short = 'x', long)]
    pub failed: bool,
    /// Only opens that failed with this errno, e.g. ENOENT or 2 (filtered in the kernel)
    #[arg(long, value_name = "ERRNO", value_parser = parse_errno)]
    pub errno: Option<u32>,
    /// Print a UID column
    #[arg(short = 'U', long)]
    pub print_uid: bool,
    /// Print the open flags (octal) and the syscall, like opensnoop -e
    #[arg(short = 'e', long)]
    pub extended: bool,
}

/// The attach points: every syscall's entry and exit, where the programs pick out the opens.
pub fn spec(args: &OpenArgs) -> TracerSpec {
    let mut globals = task_filter_globals(&args.common, args.tid);
    globals.extend([Global::bool("only_failed", args.failed), Global::u32("targ_errno", args.errno.unwrap_or(0))]);
    TracerSpec {
        what: "open events",
        objects: objects::OPEN,
        attach: vec![
            Attach::RawTracePoint { program: "open_enter", name: "sys_enter" },
            Attach::RawTracePoint { program: "open_exit", name: "sys_exit" },
            Attach::RawTracePoint { program: "open_reap", name: "sched_process_exit" },
        ],
        globals,
    }
}

/// Prints open events as table rows or JSON lines.
struct Printer<W: Write> {
    out: W,
    json: bool,
    time: TimeColumn,
    print_uid: bool,
    extended: bool,
    malformed: u64,
    truncated: u64,
    tee: Tee,
    containers: ContainerFields,
}

impl<W: Write> Sink for Printer<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        self.time.title(&mut self.out)?;
        if self.print_uid {
            write!(self.out, "{:<6} ", "UID")?;
        }
        write!(self.out, "{:<7} {:<16} {:>3} {:>3} ", "PID", "COMM", "FD", "ERR")?;
        if self.extended {
            write!(self.out, "{:>8} {:<8} ", "FLAGS", "SYSCALL")?;
        }
        writeln!(self.out, "PATH")?;
        self.out.flush()
    }

    fn item(&mut self, item: Event<Record<'_>>) -> io::Result<()> {
        let Event::Record(record) = item else { return Ok(()) };
        let Some(e) = decode(record.data) else {
            self.malformed += 1;
            self.tee.unencoded();
            return Ok(());
        };
        let h = &e.header;
        self.truncated += u64::from(h.truncated != 0);
        let syscall = syscall_name(i64::from(h.nr)).unwrap_or("open");
        if self.tee.active() {
            let line = JsonLine::new("open")
                .num("ts_ns", h.ts_ns)
                .num("pid", h.pid)
                .num("tid", h.tid)
                .bytes("comm", c_str(&h.comm))
                .str("syscall", syscall)
                .bytes("filename", e.filename)
                .num("flags", h.flags)
                .num("ret", h.ret)
                .num("uid", h.uid)
                .num("cgroup_id", h.cgroup_id);
            let line = if h.truncated != 0 { line.boolean("truncated", true) } else { line };
            let line = self.containers.add(line, h.cgroup_id);
            self.tee.emit(&mut self.out, line)?;
            if self.json {
                return Ok(());
            }
        }
        self.time.cell(&mut self.out, h.ts_ns)?;
        if self.print_uid {
            write!(self.out, "{:<6} ", h.uid)?;
        }
        let (fd, err) = if h.ret >= 0 { (h.ret, 0) } else { (-1, -h.ret) };
        write!(self.out, "{:<7} {:<16} {:>3} {:>3} ", h.pid, display_bytes(c_str(&h.comm)), fd, err)?;
        if self.extended {
            write!(self.out, "{:>8o} {:<8} ", h.flags, syscall)?;
        }
        let cut = if h.truncated != 0 { "... (truncated)" } else { "" };
        writeln!(self.out, "{}{cut}", display_bytes(e.filename))
    }

    fn tick(&mut self) -> io::Result<()> {
        self.tee.tick(&mut self.out)?;
        self.out.flush()
    }

    fn export(&self) -> Option<crate::export::ExportSummary> {
        self.tee.so_far()
    }
}

pub fn run(args: OpenArgs) -> Result<()> {
    let options = BufferOptions::for_tracer(&args.common, EventRate::High(BURST));
    let json = args.common.json;
    let tee = Tee::start(&args.common.output, json)?;
    let containers = ContainerFields::for_tracer(&args.container, tee.active())?;
    let mut tracer = Tracer::start(&spec(&args), &options)?;
    tracer.set_json(json);
    let untracked: PerCpuArray<MapData, u64> = tracer.take_map("untracked")?.try_into()?;
    let mut printer = Printer {
        out: crate::writer::stdout(),
        json,
        time: TimeColumn::new(args.common.timestamp, args.common.elapsed),
        print_uid: args.print_uid,
        extended: args.extended,
        malformed: 0,
        truncated: 0,
        tee,
        containers,
    };
    let mut summary = tracer.run(args.common.duration, options.max_delay, &mut printer)?;
    summary.export = printer.tee.finish(summary.export_deadline());
    let (malformed, truncated) = (printer.malformed, printer.truncated);
    drop(printer);
    let untracked = per_cpu_total(&untracked)?;
    let avg = if summary.events > 0 { summary.bytes as f64 / summary.events as f64 } else { 0.0 };
    // With no events there is no average to compare.
    let mut extra = if summary.events > 0 {
        format!(
            "; records averaged {avg:.0} bytes against {FIXED_RECORD_BYTES} for a fixed-size record ({:.1}x smaller)",
            FIXED_RECORD_BYTES as f64 / avg.max(1.0)
        )
    } else {
        String::new()
    };
    if untracked > 0 {
        extra.push_str(&format!("; {untracked} opens untracked (in-flight map full)"));
    }
    summary.print(
        json,
        |line| {
            line.float("avg_record_bytes", avg)
                .num("fixed_record_bytes", FIXED_RECORD_BYTES)
                .num("truncated", truncated)
                .num("malformed", malformed)
                .num("untracked", untracked)
        },
        &extra,
    )?;
    if malformed > 0 {
        eprintln_lossy!("warning: {malformed} records were shorter than their header says");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;

    #[test]
    fn open_event_mirrors_the_struct_clang_laid_out() {
        for object in [objects::OPEN.ring, objects::OPEN.perf] {
            OpenEvent::check_btf(object, "open_event").unwrap();
        }
    }

    #[test]
    fn decode_takes_exactly_the_name_and_rejects_short_records() {
        let mut data = vec![0u8; 72];
        data[48..50].copy_from_slice(&3u16.to_ne_bytes());
        data.extend_from_slice(b"a/b\0\0\0\0\0"); // perf padding after the name
        let e = decode(&data).unwrap();
        assert_eq!(e.filename, b"a/b");
        assert!(decode(&data[..74]).is_none(), "claims 3 bytes of name, has 2");
        assert!(decode(&data[..40]).is_none());
    }

    #[test]
    fn errnos_parse_by_name_or_number() {
        assert_eq!(parse_errno("ENOENT"), Ok(2));
        assert_eq!(parse_errno("eacces"), Ok(13));
        assert_eq!(parse_errno("2"), Ok(2));
        for bad in ["0", "4096", "-2", "ENOPE", ""] {
            assert!(parse_errno(bad).is_err(), "{bad}");
        }
    }
}
