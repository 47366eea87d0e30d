//! execsnoop: one line per exec (time, pid, parent, name) until Ctrl-C, then totals that add
//! up. A template for tools on bpfstream: load the object of the transport the kernel has,
//! check the record's layout, open the stream, attach, read in timestamp order through a
//! blocking pull, and at the stop detach and finish exactly.
//!
//! ```sh
//! sudo execsnoop [--perf] [--ppid PID] [--buffer-bytes N]
//! ```

use std::error::Error;
use std::time::{Duration, Instant};

use aya::programs::TracePoint;
use bpfstream::btf::Mirror;
use bpfstream::stream::EventStream;
use bpfstream::{Event, FixedStr, FromRecord, Options, Record, Transport};

bpfstream::record! {
    /// `struct exec_event` of src/tool.bpf.c.
    pub struct ExecEvent { pub ts_ns: u64, pub pid: u32, pub ppid: u32, pub comm: FixedStr<16> }
}

// aya needs the objects 8-byte aligned.
static RING: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.ring.bpf.o"));
static PERF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.perf.bpf.o"));

/// What the command line asks.
struct Args {
    /// A perf buffer even where the kernel has ring buffers.
    perf: bool,
    /// Only the children of this process (0: every exec).
    ppid: u32,
    /// The buffer's size (a ring's, or a perf buffer's per CPU); `None`: bpfstream's 256 KiB.
    buffer_bytes: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { perf: false, ppid: 0, buffer_bytes: None };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| words.next().ok_or(format!("{name} needs a value"));
        match word.as_str() {
            "--perf" => args.perf = true,
            "--ppid" => args.ppid = value("--ppid")?.parse().map_err(|e| format!("--ppid: {e}"))?,
            "--buffer-bytes" => {
                args.buffer_bytes = Some(value("--buffer-bytes")?.parse().map_err(|e| format!("--buffer-bytes: {e}"))?)
            }
            other => return Err(format!("unknown argument {other:?} (--perf, --ppid PID, --buffer-bytes N)")),
        }
    }
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("execsnoop: {e}");
        std::process::exit(2)
    });
    if let Err(e) = run(&args) {
        eprintln!("execsnoop: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    // SIGINT and SIGTERM are blocked in every thread (before any starts), and one waits for them.
    let stop_signals = block_stop_signals()?;
    let transport = if args.perf { Transport::Perf } else { Transport::probe() };
    let object = match transport {
        Transport::Ring => RING,
        Transport::Perf => PERF,
    };
    ExecEvent::check_btf(object, "exec_event")?; // the mirror matches what clang laid out
    let options = Options { buffer_bytes: args.buffer_bytes, ..Options::default() };
    let mut loader = aya::EbpfLoader::new();
    loader.override_global("targ_ppid", &args.ppid, true);
    let mut ebpf = bpfstream::aya::load(loader, object, &options)?;
    // Open the stream before attaching: a perf buffer must be in its map before the first record.
    let source = bpfstream::aya::open(&ebpf, "events", &options)?;
    let program: &mut TracePoint = ebpf.program_mut("handle_exec").ok_or("no program handle_exec")?.try_into()?;
    program.load()?;
    program.attach("sched", "sched_process_exec").map_err(|e| {
        format!("attaching to sched/sched_process_exec: {e} (is tracefs mounted? mount -t tracefs nodev /sys/kernel/tracing)")
    })?;

    // In timestamp order: a perf buffer's CPUs are read one after another.
    let span = Duration::from_millis(10);
    let mut events = EventStream::new(source, |r| ExecEvent::from_record(r.data))?.ordered(span, |e: &ExecEvent| e.ts_ns);
    let stop = events.stop_handle();
    std::thread::spawn(move || {
        wait_for(&stop_signals);
        stop.cancel(); // the pull below returns None
    });
    eprintln!("execsnoop: tracing execs through a {transport} buffer; Ctrl-C to stop");
    while let Some(event) = events.next_blocking(None)? {
        show(event);
    }

    // Stopped: detach, then hand over the rest, exactly (the records held for ordering first).
    drop(ebpf);
    let (mut sources, held) = events.into_sources();
    for event in held {
        show(event?);
    }
    let decode = |event: Event<Record<'_>>| -> Result<(), bpfstream::Error> {
        show(match event {
            Event::Record(record) => Event::Record(ExecEvent::from_record(record.data)?),
            Event::Dropped(dropped) => Event::Dropped(dropped),
        });
        Ok(())
    };
    let totals = sources[0].finish(Instant::now() + Duration::from_secs(1), decode)?;
    let produced = totals.produced.ok_or("the object has no drop counters")?;
    println!("delivered={} dropped={} produced={produced}", totals.delivered, totals.dropped);
    if totals.delivered + totals.dropped != produced {
        return Err(format!("{} records unaccounted for", produced - totals.delivered - totals.dropped).into());
    }
    Ok(())
}

fn show(event: Event<ExecEvent>) {
    match event {
        Event::Record(e) => println!("{} {} {} {}", e.ts_ns, e.pid, e.ppid, e.comm),
        Event::Dropped(d) => eprintln!("execsnoop: {} execs dropped (buffer full)", d.count),
    }
}

/// Blocks SIGINT and SIGTERM in this thread and the threads it starts; returns the set.
fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset and sigaddset write the set they are given; pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Waits for one of the (blocked) signals of `set`.
fn wait_for(set: &libc::sigset_t) {
    let mut signal = 0;
    // SAFETY: sigwait reads the set and writes the signal number through valid pointers.
    unsafe { libc::sigwait(set, &mut signal) };
}
