//! `bpfstream open`: every open/openat/openat2 with the filename exactly as passed (up to 4096
//! bytes), in a record exactly as long as the name (the chapter's exercise 4), from the raw
//! tracepoints `sys_enter`/`sys_exit` (no tracefs, no trace-record layout that differs between
//! kernels such as PREEMPT_RT's). Needs Linux 5.15 (`bpf_task_pt_regs`).

use std::io::{self, Write};

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use bpfstream::FromRecord;

use crate::container::ContainerArgs;
use crate::lifecycle::{
    task_filter_globals, tracer_buffer, Attach, BufferOptions, BurstBudget, CommonArgs, EventRate, Format, Global,
    Loaded, Outlet, StreamPlan, Summary, TracerSpec,
};
use crate::names::{errno_name, syscall_name};
use crate::objects;
use crate::output::{c_str, display_bytes, JsonLine};
use crate::tools::per_cpu_total;
use crate::writer::Output;

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

/// Open events' columns, and what the summary totals.
struct OpenFormat {
    print_uid: bool,
    extended: bool,
    truncated: u64,
    /// The BPF side's opens it could not track (in-flight map full), read at the end.
    untracked_map: PerCpuArray<MapData, u64>,
    untracked: u64,
}

impl Format for OpenFormat {
    type Event<'a> = Open<'a>;

    fn decode<'a>(&mut self, data: &'a [u8]) -> Option<Open<'a>> {
        decode(data)
    }

    fn note(&mut self, e: &Open<'_>) {
        self.truncated += u64::from(e.header.truncated != 0);
    }

    fn kind(&self) -> &str {
        "open"
    }

    fn ts_ns(&self, e: &Open<'_>) -> Option<u64> {
        Some(e.header.ts_ns)
    }

    fn cgroup_id(&self, e: &Open<'_>) -> Option<u64> {
        Some(e.header.cgroup_id)
    }

    fn titles(&self) -> Option<String> {
        let mut titles = if self.print_uid { format!("{:<6} ", "UID") } else { String::new() };
        titles.push_str(&format!("{:<7} {:<16} {:>3} {:>3} ", "PID", "COMM", "FD", "ERR"));
        if self.extended {
            titles.push_str(&format!("{:>8} {:<8} ", "FLAGS", "SYSCALL"));
        }
        titles.push_str("PATH\n");
        Some(titles)
    }

    fn row(&mut self, e: &Open<'_>, out: &mut Output) -> io::Result<()> {
        let h = &e.header;
        if self.print_uid {
            write!(out, "{:<6} ", h.uid)?;
        }
        let (fd, err) = if h.ret >= 0 { (h.ret, 0) } else { (-1, -h.ret) };
        write!(out, "{:<7} {:<16} {:>3} {:>3} ", h.pid, display_bytes(c_str(&h.comm)), fd, err)?;
        if self.extended {
            write!(out, "{:>8o} {:<8} ", h.flags, syscall_name(i64::from(h.nr)).unwrap_or("open"))?;
        }
        let cut = if h.truncated != 0 { "... (truncated)" } else { "" };
        writeln!(out, "{}{cut}", display_bytes(e.filename))
    }

    fn json(&self, e: &Open<'_>, line: JsonLine) -> JsonLine {
        let h = &e.header;
        let line = line
            .num("ts_ns", h.ts_ns)
            .num("pid", h.pid)
            .num("tid", h.tid)
            .bytes("comm", c_str(&h.comm))
            .str("syscall", syscall_name(i64::from(h.nr)).unwrap_or("open"))
            .bytes("filename", e.filename)
            .num("flags", h.flags)
            .num("ret", h.ret)
            .num("uid", h.uid)
            .num("cgroup_id", h.cgroup_id);
        if h.truncated != 0 {
            line.boolean("truncated", true)
        } else {
            line
        }
    }

    fn finish(&mut self, _: &mut Vec<u8>) -> Result<()> {
        self.untracked = per_cpu_total(&self.untracked_map)?;
        Ok(())
    }

    fn summary_json(&self, summary: &Summary, line: JsonLine) -> JsonLine {
        line.float("avg_record_bytes", average_record(summary))
            .num("fixed_record_bytes", FIXED_RECORD_BYTES)
            .num("truncated", self.truncated)
            .num("untracked", self.untracked)
    }

    fn summary_text(&self, summary: &Summary, mut line: String) -> String {
        // With no events there is no average to compare.
        if summary.events > 0 {
            let avg = average_record(summary);
            line.push_str(&format!(
                "; records averaged {avg:.0} bytes against {FIXED_RECORD_BYTES} for a fixed-size record ({:.1}x smaller)",
                FIXED_RECORD_BYTES as f64 / avg.max(1.0)
            ));
        }
        if self.untracked > 0 {
            line.push_str(&format!("; {} opens untracked (in-flight map full)", self.untracked));
        }
        line
    }
}

/// Bytes per record delivered.
fn average_record(summary: &Summary) -> f64 {
    if summary.events > 0 {
        summary.bytes as f64 / summary.events as f64
    } else {
        0.0
    }
}

pub fn run(args: OpenArgs) -> Result<()> {
    let duration = args.common.duration;
    crate::lifecycle::trace(plan(args)?, duration)
}

/// The stream of `args` (its `--output` connected now).
pub fn plan(args: OpenArgs) -> Result<StreamPlan<'static>> {
    let outlet = Outlet::start(&args.common, &args.container)?;
    Ok(StreamPlan::new(spec(&args), buffer(&args), outlet, move |loaded| format(&args, loaded)))
}

/// The buffer of `args`.
pub fn buffer(args: &OpenArgs) -> BufferOptions {
    tracer_buffer(&args.common, EventRate::High(BURST))
}

/// The events' format of `args`, with the map it reads taken from the loaded object.
pub fn format(args: &OpenArgs, loaded: &mut Loaded) -> Result<impl Format> {
    Ok(OpenFormat {
        print_uid: args.print_uid,
        extended: args.extended,
        truncated: 0,
        untracked_map: loaded.take_map("untracked")?.try_into()?,
        untracked: 0,
    })
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
