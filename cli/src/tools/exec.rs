//! `bpfstream exec`: every successful exec, with the whole filename (up to 4096 bytes, in a
//! record exactly as long as the path), from the `sched/sched_process_exec` tracepoint. The
//! filename is the path as passed to execve, made absolute in the kernel against the caller's
//! working directory when it was relative (not canonicalized: `./x` from /srv is `/srv/./x`);
//! from a working directory more than 64 levels deep, or on Linux 5.13–5.16 (no `bpf_loop`), a
//! relative name comes as passed. The program needs Linux 5.13 to load (its `bpf_loop` callback
//! is a BPF_PSEUDO_FUNC reference, which older verifiers reject even where it is never called).

use std::io::{self, Write};

use anyhow::Result;
use bpfstream::{FromRecord, Item};

use crate::export::Tee;
use crate::lifecycle::{task_filter_globals, Attach, BufferOptions, CommonArgs, Sink, Tracer, TracerSpec};
use crate::objects;
use crate::output::{c_str, display_bytes, JsonLine, TimeColumn};

bpfstream::record! {
    /// `struct exec_event` of bpf/exec.h; the filename follows it.
    #[derive(Debug)]
    pub struct ExecEvent {
        pub ts_ns: u64,
        pub pid: u32,
        pub ppid: u32,
        pub uid: u32,
        pub filename_len: u32,
        pub comm: [u8; 16],
    }
}

/// An exec record: the fixed header and the filename bytes.
#[derive(Debug)]
pub struct Exec<'a> {
    pub header: ExecEvent,
    pub filename: &'a [u8],
}

/// Decodes a record; `None` if it is shorter than it claims.
pub fn decode(data: &[u8]) -> Option<Exec<'_>> {
    let (header, rest) = ExecEvent::from_record_prefix(data).ok()?;
    let filename = rest.get(..header.filename_len as usize)?;
    Some(Exec { header, filename })
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print a timestamp column (seconds since the first event)
    #[arg(short = 'T', long)]
    pub time: bool,
}

pub fn spec(args: &CommonArgs) -> TracerSpec {
    TracerSpec {
        what: "exec events",
        objects: objects::EXEC,
        attach: vec![Attach::Tracepoint { program: "handle_exec", category: "sched", name: "sched_process_exec" }],
        globals: task_filter_globals(args, None),
    }
}

/// Prints exec events as table rows or JSON lines.
struct Printer<W: Write> {
    out: W,
    json: bool,
    time: TimeColumn,
    malformed: u64,
    filename_bytes: u64,
    tee: Tee,
}

impl<W: Write> Sink for Printer<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        self.time.title(&mut self.out)?;
        writeln!(self.out, "{:<6} {:<16} {:<7} {:<7} FILENAME", "UID", "PCOMM", "PID", "PPID")?;
        self.out.flush()
    }

    fn item(&mut self, item: Item<'_>) -> io::Result<()> {
        let Item::Record(record) = item else { return Ok(()) };
        let Some(e) = decode(record.data) else {
            self.malformed += 1;
            self.tee.unencoded();
            return Ok(());
        };
        self.filename_bytes += e.filename.len() as u64;
        let h = &e.header;
        if self.tee.active() {
            let line = JsonLine::new("exec")
                .num("ts_ns", h.ts_ns)
                .num("pid", h.pid)
                .num("ppid", h.ppid)
                .num("uid", h.uid)
                .bytes("comm", c_str(&h.comm))
                .bytes("filename", e.filename);
            self.tee.emit(&mut self.out, line)?;
            if self.json {
                return Ok(());
            }
        }
        self.time.cell(&mut self.out, h.ts_ns)?;
        writeln!(
            self.out,
            "{:<6} {:<16} {:<7} {:<7} {}",
            h.uid,
            display_bytes(c_str(&h.comm)),
            h.pid,
            h.ppid,
            display_bytes(e.filename)
        )
    }

    fn tick(&mut self) -> io::Result<()> {
        self.tee.tick(&mut self.out)?;
        self.out.flush()
    }
}

pub fn run(args: ExecArgs) -> Result<()> {
    let options = BufferOptions::from_args(&args.common);
    let json = args.common.json;
    let tee = Tee::start(&args.common.output, json)?;
    let tracer = Tracer::start(&spec(&args.common), &options)?;
    let mut printer = Printer {
        out: io::BufWriter::new(io::stdout().lock()),
        json,
        time: TimeColumn::new(args.time),
        malformed: 0,
        filename_bytes: 0,
        tee,
    };
    let mut summary = tracer.run(args.common.duration, options.max_delay, &mut printer)?;
    summary.export = printer.tee.finish();
    let avg = if summary.events > 0 { printer.filename_bytes as f64 / summary.events as f64 } else { 0.0 };
    let malformed = printer.malformed;
    drop(printer);
    summary.print(json, |line| line.num("malformed", malformed).float("avg_filename_bytes", avg), "")?;
    if malformed > 0 {
        eprintln_lossy!("warning: {malformed} records were shorter than their header says");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_event_mirrors_the_struct_clang_laid_out() {
        for object in [objects::EXEC.ring, objects::EXEC.perf] {
            let c = bpfstream::btf::struct_layout(object, "exec_event").unwrap();
            c.check(&bpfstream::rust_layout!(ExecEvent { ts_ns, pid, ppid, uid, filename_len, comm })).unwrap();
        }
    }
}
