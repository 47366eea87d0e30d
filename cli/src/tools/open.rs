//! `bpfstream open`: every open/openat/openat2 with the filename exactly as passed (up to 4096
//! bytes), in a record exactly as long as the name (the chapter's exercise 4), from the
//! `syscalls` tracepoints the kernel has.

use std::io::{self, Write};

use anyhow::{bail, Result};
use aya::maps::{MapData, PerCpuArray};
use bpfstream::names::syscall_name;
use bpfstream::{FromRecord, Item};

use crate::export::Tee;
use crate::lifecycle::{task_filter_globals, Attach, CommonArgs, Global, Sink, Tracer, TracerSpec};
use crate::output::{c_str, display_bytes, JsonLine, TimeColumn};
use crate::tools::{high_rate_options, per_cpu_total};
use crate::{objects, tracefs};

/// `OPEN_FILENAME_MAX` of bpf/open.h: the longest name reported whole.
pub const FILENAME_MAX: usize = 4096;

bpfstream::record! {
    /// `struct open_event` of bpf/open.h; the filename follows it.
    #[derive(Debug)]
    pub struct OpenEvent {
        pub ts_ns: u64,
        pub ret: i64,
        pub flags: u64,
        pub pid: u32,
        pub tid: u32,
        pub nr: u32,
        pub filename_len: u16,
        pub truncated: u16,
        pub comm: [u8; 16],
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

#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only this thread (filtered in the kernel)
    #[arg(long, value_name = "TID")]
    pub tid: Option<u32>,
    /// Only failed opens (filtered in the kernel)
    #[arg(short = 'x', long)]
    pub failed: bool,
    /// Print a timestamp column (seconds since the first event)
    #[arg(short = 'T', long)]
    pub time: bool,
    /// Print the open flags (octal) and the syscall, like opensnoop -e
    #[arg(short = 'e', long)]
    pub extended: bool,
}

/// Each open syscall's tracepoints and the programs for them (bpf/open.bpf.c).
struct OpenSyscall {
    enter_program: &'static str,
    enter_tracepoint: &'static str,
    exit_program: &'static str,
    exit_tracepoint: &'static str,
}

const OPEN_SYSCALLS: [OpenSyscall; 3] = [
    OpenSyscall {
        enter_program: "open_enter_open",
        enter_tracepoint: "sys_enter_open",
        exit_program: "open_exit_open",
        exit_tracepoint: "sys_exit_open",
    },
    OpenSyscall {
        enter_program: "open_enter_at",
        enter_tracepoint: "sys_enter_openat",
        exit_program: "open_exit_at",
        exit_tracepoint: "sys_exit_openat",
    },
    OpenSyscall {
        enter_program: "open_enter_at2",
        enter_tracepoint: "sys_enter_openat2",
        exit_program: "open_exit_at2",
        exit_tracepoint: "sys_exit_openat2",
    },
];

/// The attach points: the tracepoints of the open syscalls this kernel has (`open` is missing
/// on architectures without it, `openat2` before Linux 5.6).
pub fn spec(args: &OpenArgs) -> Result<TracerSpec> {
    tracefs::ensure_mounted()?;
    let mut attach = Vec::new();
    for s in OPEN_SYSCALLS {
        if tracefs::tracepoint_exists("syscalls", s.enter_tracepoint)
            && tracefs::tracepoint_exists("syscalls", s.exit_tracepoint)
        {
            attach.push(Attach::Tracepoint {
                program: s.enter_program,
                category: "syscalls",
                name: s.enter_tracepoint,
            });
            attach.push(Attach::Tracepoint { program: s.exit_program, category: "syscalls", name: s.exit_tracepoint });
        }
    }
    if attach.is_empty() {
        bail!("this kernel has no syscalls/sys_enter_open* tracepoints (it needs CONFIG_FTRACE_SYSCALLS)");
    }
    attach.push(Attach::RawTracePoint { program: "open_reap", name: "sched_process_exit" });
    let common = &args.common;
    Ok(TracerSpec {
        what: "open events",
        objects: objects::OPEN,
        attach,
        globals: [task_filter_globals(common, args.tid), vec![Global::bool("only_failed", args.failed)]].concat(),
    })
}

/// Prints open events as table rows or JSON lines.
struct Printer<W: Write> {
    out: W,
    json: bool,
    time: TimeColumn,
    extended: bool,
    malformed: u64,
    truncated: u64,
    tee: Tee,
}

impl<W: Write> Sink for Printer<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        self.time.title(&mut self.out)?;
        write!(self.out, "{:<7} {:<16} {:>3} {:>3} ", "PID", "COMM", "FD", "ERR")?;
        if self.extended {
            write!(self.out, "{:>8} {:<8} ", "FLAGS", "SYSCALL")?;
        }
        writeln!(self.out, "PATH")?;
        self.out.flush()
    }

    fn item(&mut self, item: Item<'_>) -> io::Result<()> {
        let Item::Record(record) = item else { return Ok(()) };
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
                .num("ret", h.ret);
            let line = if h.truncated != 0 { line.boolean("truncated", true) } else { line };
            self.tee.emit(&mut self.out, line)?;
            if self.json {
                return Ok(());
            }
        }
        self.time.cell(&mut self.out, h.ts_ns)?;
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
}

pub fn run(args: OpenArgs) -> Result<()> {
    let options = high_rate_options(&args.common);
    let json = args.common.json;
    let tee = Tee::start(&args.common.output, json)?;
    let mut tracer = Tracer::start(&spec(&args)?, &options)?;
    let untracked: PerCpuArray<MapData, u64> = tracer.take_map("untracked")?.try_into()?;
    let mut printer = Printer {
        out: io::BufWriter::new(io::stdout().lock()),
        json,
        time: TimeColumn::new(args.time),
        extended: args.extended,
        malformed: 0,
        truncated: 0,
        tee,
    };
    let mut summary = tracer.run(args.common.duration, options.max_delay, &mut printer)?;
    summary.export = printer.tee.finish();
    let (malformed, truncated) = (printer.malformed, printer.truncated);
    drop(printer);
    let untracked = per_cpu_total(&untracked)?;
    let avg = if summary.events > 0 { summary.bytes as f64 / summary.events as f64 } else { 0.0 };
    let mut extra = format!(
        "; records averaged {avg:.0} bytes against {FIXED_RECORD_BYTES} for a fixed-size record ({:.1}x smaller)",
        FIXED_RECORD_BYTES as f64 / avg.max(1.0)
    );
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
    use super::*;

    #[test]
    fn open_event_mirrors_the_struct_clang_laid_out() {
        for object in [objects::OPEN.ring, objects::OPEN.perf] {
            let c = bpfstream::btf::struct_layout(object, "open_event").unwrap();
            let rust =
                bpfstream::rust_layout!(OpenEvent { ts_ns, ret, flags, pid, tid, nr, filename_len, truncated, comm });
            c.check(&rust).unwrap();
        }
    }

    #[test]
    fn decode_takes_exactly_the_name_and_rejects_short_records() {
        let mut data = vec![0u8; 56];
        data[36..38].copy_from_slice(&3u16.to_ne_bytes());
        data.extend_from_slice(b"a/b\0\0\0\0\0"); // perf padding after the name
        let e = decode(&data).unwrap();
        assert_eq!(e.filename, b"a/b");
        assert!(decode(&data[..58]).is_none(), "claims 3 bytes of name, has 2");
        assert!(decode(&data[..40]).is_none());
    }
}
