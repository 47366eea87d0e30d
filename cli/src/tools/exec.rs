//! `bpfstream exec`: every exec, successful or failed, with the whole filename (up to 4096
//! bytes), argv whole up to [`ARGS_MAX`] arguments / 16 KiB (`EXEC_ARGS_BYTES`) and the return
//! value, in a record exactly as long as its contents. Attached with raw tracepoints (no
//! tracefs): `sched_process_exec` for execs that succeed (the file actually executed, argv from
//! the new program's stack, as `ps` shows it: a script's is its interpreter's, `/bin/sh
//! ./script arg`) and `sys_enter`/`sys_exit` for execve/execveat that fail (`ret` is
//! -errno; name and argv as the caller passed them).
//!
//! The filename is made absolute in the kernel against the caller's working directory when it
//! was relative (not canonicalized: `./x` from /srv is `/srv/./x`). It comes as passed when
//! relative to an execveat directory fd, from a working directory more than 64 levels deep, or
//! on Linux 5.15–5.16 (no `bpf_loop`, where a failed exec also comes without its arguments).
//! The programs need Linux 5.15 to load (`bpf_task_pt_regs`).

use std::io::{self, Write};

use anyhow::Result;
use bpfstream::FromRecord;

use crate::container::ContainerArgs;
use crate::lifecycle::{
    task_filter_globals, tracer_buffer, Attach, BufferOptions, CommonArgs, EventRate, Format, Global, Outlet,
    StreamPlan, Summary, TracerSpec,
};
use crate::objects;
use crate::output::{c_str, display_bytes, JsonLine};
use crate::writer::Output;

/// `EXEC_ARGS_MAX` of bpf/exec.h: most arguments reported (and `--max-args`' ceiling).
pub const ARGS_MAX: u32 = 128;

bpfstream::record! {
    /// `struct exec_event` of bpf/exec.h.
    #[derive(Debug)]
    pub struct ExecEvent {
        pub ts_ns: u64,
        pub cgroup_id: u64,
        pub ret: i32,
        pub pid: u32,
        pub ppid: u32,
        pub uid: u32,
        pub argc: u32,
        pub filename_len: u16,
        pub args_len: u16,
        pub comm: [u8; 16],
        /// The flexible `filename[]`: its bytes follow the header, then the arguments'.
        pub filename: [u8; 0],
    }
}

/// An exec record: the fixed header, the filename and the NUL-separated arguments.
#[derive(Debug)]
pub struct Exec<'a> {
    pub header: ExecEvent,
    pub filename: &'a [u8],
    args: &'a [u8],
}

/// Decodes a record; `None` if it is shorter than it claims.
pub fn decode(data: &[u8]) -> Option<Exec<'_>> {
    let (header, rest) = ExecEvent::from_record_prefix(data).ok()?;
    let filename_len = usize::from(header.filename_len);
    let filename = rest.get(..filename_len)?;
    let args = rest.get(filename_len..filename_len + usize::from(header.args_len))?;
    Some(Exec { header, filename, args })
}

impl Exec<'_> {
    /// The first `max` arguments, and whether the program was given more than those (or the
    /// last one shown is cut at 16 KiB).
    pub fn args(&self, max: u32) -> (Vec<&[u8]>, bool) {
        let mut args: Vec<&[u8]> = Vec::new();
        let mut rest = self.args;
        let mut cut = false;
        while !rest.is_empty() && args.len() < max as usize {
            match rest.iter().position(|&b| b == 0) {
                Some(end) => {
                    args.push(&rest[..end]);
                    rest = &rest[end + 1..];
                }
                None => {
                    args.push(rest); // cut at the byte bound, without its NUL
                    rest = &[];
                    cut = true;
                }
            }
        }
        let truncated = cut || !rest.is_empty() || self.header.argc as usize > args.len();
        (args, truncated)
    }
}

/// `--max-args N`: 1 to [`ARGS_MAX`].
fn parse_max_args(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n @ 1..=ARGS_MAX) => Ok(n),
        _ => Err(format!("{text:?} is not a number of arguments from 1 to {ARGS_MAX}")),
    }
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    /// Only this thread (the one calling exec; filtered in the kernel)
    #[arg(short = 't', long, value_name = "TID", value_parser = crate::values::parse_task_id)]
    pub tid: Option<u32>,
    /// Only failed execs (filtered in the kernel)
    #[arg(short = 'x', long)]
    pub failed: bool,
    /// Print a UID column
    #[arg(short = 'U', long)]
    pub print_uid: bool,
    /// Most arguments to report per exec (1 to 128; the default); more are marked truncated
    #[arg(long, value_name = "N", default_value_t = ARGS_MAX, value_parser = parse_max_args)]
    pub max_args: u32,
}

pub fn spec(args: &ExecArgs) -> TracerSpec {
    let mut attach = vec![
        Attach::RawTracePoint { program: "exec_enter", name: "sys_enter" },
        Attach::RawTracePoint { program: "exec_exit", name: "sys_exit" },
    ];
    if !args.failed {
        attach.push(Attach::RawTracePoint { program: "handle_exec", name: "sched_process_exec" });
    }
    let mut globals = task_filter_globals(&args.common, args.tid);
    globals.push(Global::u32("max_args", args.max_args));
    TracerSpec { what: "exec events", objects: objects::EXEC, attach, globals }
}

/// An argument for the table: quoted when empty or holding spaces, so the row splits back into
/// the arguments.
fn arg_text(arg: &[u8]) -> String {
    let text = display_bytes(arg);
    if text.is_empty() || text.contains([' ', '"']) {
        format!("\"{}\"", text.replace('"', "\\\""))
    } else {
        text
    }
}

/// Exec events' columns, and what the summary totals.
struct ExecFormat {
    print_uid: bool,
    max_args: u32,
    failed: u64,
    filename_bytes: u64,
}

impl Format for ExecFormat {
    type Event<'a> = Exec<'a>;

    fn decode<'a>(&mut self, data: &'a [u8]) -> Option<Exec<'a>> {
        decode(data)
    }

    fn note(&mut self, e: &Exec<'_>) {
        self.filename_bytes += e.filename.len() as u64;
        self.failed += u64::from(e.header.ret < 0);
    }

    fn kind(&self) -> &str {
        "exec"
    }

    fn ts_ns(&self, e: &Exec<'_>) -> Option<u64> {
        Some(e.header.ts_ns)
    }

    fn cgroup_id(&self, e: &Exec<'_>) -> Option<u64> {
        Some(e.header.cgroup_id)
    }

    fn titles(&self) -> Option<String> {
        let uid = if self.print_uid { format!("{:<6} ", "UID") } else { String::new() };
        Some(format!("{uid}{:<16} {:<7} {:<7} {:>4} FILENAME ARGS\n", "PCOMM", "PID", "PPID", "RET"))
    }

    fn row(&mut self, e: &Exec<'_>, out: &mut Output) -> io::Result<()> {
        let h = &e.header;
        if self.print_uid {
            write!(out, "{:<6} ", h.uid)?;
        }
        let (args, truncated) = e.args(self.max_args);
        let mut line: Vec<String> = args.iter().map(|a| arg_text(a)).collect();
        if truncated {
            line.push("...".into());
        }
        writeln!(
            out,
            "{:<16} {:<7} {:<7} {:>4} {} {}",
            display_bytes(c_str(&h.comm)),
            h.pid,
            h.ppid,
            h.ret,
            display_bytes(e.filename),
            line.join(" ")
        )
    }

    fn json(&self, e: &Exec<'_>, line: JsonLine) -> JsonLine {
        let h = &e.header;
        let (args, truncated) = e.args(self.max_args);
        line.num("ts_ns", h.ts_ns)
            .num("pid", h.pid)
            .num("ppid", h.ppid)
            .num("uid", h.uid)
            .bytes("comm", c_str(&h.comm))
            .bytes("filename", e.filename)
            .byte_strings("args", args.iter().copied())
            .boolean("args_truncated", truncated)
            .num("ret", h.ret)
            .num("cgroup_id", h.cgroup_id)
    }

    fn summary_json(&self, summary: &Summary, line: JsonLine) -> JsonLine {
        let avg = if summary.events > 0 { self.filename_bytes as f64 / summary.events as f64 } else { 0.0 };
        line.num("failed", self.failed).float("avg_filename_bytes", avg)
    }

    fn summary_text(&self, _: &Summary, line: String) -> String {
        if self.failed > 0 {
            format!("{line}; {} failed", self.failed)
        } else {
            line
        }
    }
}

pub fn run(args: ExecArgs) -> Result<()> {
    crate::lifecycle::trace(plan(&args)?, args.common.duration)
}

/// The stream of `args` (its `--output` connected now).
pub fn plan(args: &ExecArgs) -> Result<StreamPlan<'static>> {
    let outlet = Outlet::start(&args.common, &args.container)?;
    let format = format(args);
    Ok(StreamPlan::new(spec(args), buffer(args), outlet, |_| Ok(format)))
}

/// The buffer of `args`.
pub fn buffer(args: &ExecArgs) -> BufferOptions {
    tracer_buffer(&args.common, EventRate::Moderate)
}

/// The events' format of `args`.
pub fn format(args: &ExecArgs) -> impl Format {
    ExecFormat { print_uid: args.print_uid, max_args: args.max_args, failed: 0, filename_bytes: 0 }
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;

    #[test]
    fn exec_event_mirrors_the_struct_clang_laid_out() {
        for object in [objects::EXEC.ring, objects::EXEC.perf] {
            ExecEvent::check_btf(object, "exec_event").unwrap();
        }
    }

    fn record(argc: u32, filename: &[u8], args: &[u8]) -> Vec<u8> {
        let mut data = vec![0u8; std::mem::size_of::<ExecEvent>()];
        data[32..36].copy_from_slice(&argc.to_ne_bytes());
        data[36..38].copy_from_slice(&(filename.len() as u16).to_ne_bytes());
        data[38..40].copy_from_slice(&(args.len() as u16).to_ne_bytes());
        data.extend_from_slice(filename);
        data.extend_from_slice(args);
        data.extend_from_slice(b"\0\0\0"); // perf padding
        data
    }

    #[test]
    fn arguments_split_at_nuls_and_say_when_cut() {
        let data = record(3, b"/bin/ls", b"ls\0-l\0\0");
        let e = decode(&data).unwrap();
        assert_eq!(e.filename, b"/bin/ls");
        assert_eq!(e.args(128), (vec![&b"ls"[..], b"-l", b""], false));
        assert_eq!(e.args(2), (vec![&b"ls"[..], b"-l"], true), "--max-args 2");
        let more = record(5, b"/x", b"x\0a\0");
        assert_eq!(decode(&more).unwrap().args(128), (vec![&b"x"[..], b"a"], true), "argc says 5");
        let cut = record(2, b"/x", b"x\0abc");
        assert_eq!(decode(&cut).unwrap().args(128), (vec![&b"x"[..], b"abc"], true), "the byte bound");
        let none = record(0, b"/x", b"");
        assert_eq!(decode(&none).unwrap().args(128), (vec![], false));
        assert!(decode(&record(1, b"/x", b"x\0")[..59]).is_none(), "shorter than it claims");
    }

    #[test]
    fn table_arguments_keep_their_boundaries() {
        assert_eq!(arg_text(b"-l"), "-l");
        assert_eq!(arg_text(b"a b"), "\"a b\"");
        assert_eq!(arg_text(b""), "\"\"");
        assert_eq!(arg_text(b"x\ny"), "x\\x0ay");
        assert!(parse_max_args("0").is_err() && parse_max_args("129").is_err() && parse_max_args("x").is_err());
        assert_eq!(parse_max_args("20"), Ok(20));
    }
}
