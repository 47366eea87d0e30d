//! The bench's producer: `bpf/bench.bpf.c` on the `getpgid` tracepoint, loaded for one thread,
//! and that thread, pinned to its own CPU, calling getpgid() in a loop. Every call writes
//! [`BATCH`] 8-byte records; the BPF side counts each attempt and each drop.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use aya::Ebpf;
use bpfstream::{Transport, WakeupPolicy};
use bpfstream_core::load::{self, Attach, BufferOptions, Global, TracerSpec, EVENTS_MAP};

use crate::counters::DropCounters;
use crate::objects;

/// Records per getpgid() call: `BENCH_BATCH` in bpf/bench.h.
pub const BATCH: u64 = 500;

/// Bytes one record takes in a ring buffer: the 8-byte header and the 8-byte payload.
pub const RING_RECORD_BYTES: u64 = 16;

/// Bytes one record takes in a perf buffer: `perf_event_header` (8), the raw size (4), the
/// payload (8) and 4 bytes of padding to keep records 8-byte aligned.
pub const PERF_RECORD_BYTES: u64 = 24;

/// Bytes one record takes in a buffer of `transport`.
pub fn record_bytes(transport: Transport) -> u64 {
    match transport {
        Transport::Ring => RING_RECORD_BYTES,
        Transport::Perf => PERF_RECORD_BYTES,
    }
}

/// getpgid() calls that fill `buffer_bytes` as far as whole batches go without a drop (the
/// kernel keeps at least one byte free: a ring never holds `size` bytes).
pub fn calls_to_fill(transport: Transport, buffer_bytes: u64) -> u64 {
    (buffer_bytes - 1) / (record_bytes(transport) * BATCH)
}

fn spec(tid: u32) -> TracerSpec {
    TracerSpec {
        what: "the bench producer",
        objects: objects::BENCH,
        attach: vec![Attach::Tracepoint { program: "bench_produce", category: "syscalls", name: "sys_enter_getpgid" }],
        globals: vec![Global::u32("targ_tid", tid)],
    }
}

/// The loaded BPF producer of one bench row.
pub struct Program {
    bpf: Option<Ebpf>,
    spec: TracerSpec,
    counters: DropCounters,
    events: OwnedFd,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("attached", &self.bpf.is_some()).finish()
    }
}

/// What the BPF side counted, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfCounts {
    /// Records the program tried to send.
    pub produced: u64,
    /// Records that could not be written.
    pub dropped: u64,
    /// Submits that forced a wakeup.
    pub forced_wakeups: u64,
}

impl Program {
    /// Loads the producer for thread `tid` (nothing attached yet). `ring_bytes` sizes a ring
    /// buffer; a perf buffer is sized by its consumer.
    pub fn load(transport: Transport, ring_bytes: u64, wakeup: WakeupPolicy, tid: u32) -> Result<Self> {
        let spec = spec(tid);
        let options = BufferOptions {
            transport: Some(transport),
            size: ring_bytes,
            ring_wakeup: wakeup,
            perf_wakeup: None,
            max_delay: Duration::from_millis(100),
        };
        let (bpf, _) = load::load(&spec, &options)?;
        let events = bpf.map(EVENTS_MAP).ok_or_else(|| anyhow!("the bench object has no {EVENTS_MAP} map"))?;
        let events = load::map_fd(events)?.try_clone_to_owned().context("dup of the events map")?;
        let counters = DropCounters::open(&bpf)?;
        Ok(Program { bpf: Some(bpf), spec, counters, events })
    }

    /// A new descriptor of the events map, for a consumer to open.
    pub fn events(&self) -> Result<OwnedFd> {
        self.events.as_fd().try_clone_to_owned().context("dup of the events map")
    }

    /// Attaches to the tracepoint: from now on the producer thread's getpgid() writes records.
    pub fn attach(&mut self) -> Result<()> {
        let bpf = self.bpf.as_mut().ok_or_else(|| anyhow!("the bench producer was detached"))?;
        load::attach(bpf, &self.spec)
    }

    /// Detaches and unloads the program; the maps live on in the consumer and the counters.
    pub fn detach(&mut self) {
        self.bpf = None;
    }

    /// The BPF side's counters, summed over CPUs.
    pub fn counters(&mut self) -> Result<BpfCounts> {
        let totals = self.counters.total()?;
        Ok(BpfCounts { produced: totals.produced, dropped: totals.dropped, forced_wakeups: totals.forced_wakeups })
    }
}

enum Command {
    /// Call getpgid() until [`Producer::stop`].
    Run,
    /// Call getpgid() this many times.
    Calls(u64),
}

/// The producer thread, pinned to one CPU for the whole bench.
#[derive(Debug)]
pub struct Producer {
    tid: u32,
    commands: Option<Sender<Command>>,
    done: Receiver<u64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn trigger() {
    // SAFETY: getpgid(0) has no memory effects; it is the syscall the BPF program traces.
    unsafe { libc::getpgid(0) };
}

impl Producer {
    /// Starts the thread on `cpu` (pinning failures are returned).
    pub fn spawn(cpu: u32) -> Result<Self> {
        let (command_tx, command_rx) = mpsc::channel::<Command>();
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<u32>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new().name("bench-producer".into()).spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
            let pinned = super::measure::pin_to_cpu(cpu).map(|()| tid);
            let ok = pinned.is_ok();
            let _ = ready_tx.send(pinned);
            if !ok {
                return;
            }
            for command in command_rx {
                let calls = match command {
                    Command::Run => {
                        let mut calls = 0;
                        while !stop_flag.load(Ordering::Relaxed) {
                            trigger();
                            calls += 1;
                        }
                        calls
                    }
                    Command::Calls(n) => {
                        (0..n).for_each(|_| trigger());
                        n
                    }
                };
                if done_tx.send(calls).is_err() {
                    return;
                }
            }
        })?;
        let tid = ready_rx
            .recv()
            .context("the producer thread died")?
            .with_context(|| format!("pinning the producer thread to CPU {cpu}"))?;
        Ok(Producer { tid, commands: Some(command_tx), done: done_rx, stop, thread: Some(thread) })
    }

    /// The thread id the BPF program filters on.
    pub fn tid(&self) -> u32 {
        self.tid
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands.as_ref().and_then(|c| c.send(command).ok()).ok_or_else(|| anyhow!("the producer thread is gone"))
    }

    /// Starts calling getpgid() in a loop.
    pub fn start(&self) -> Result<()> {
        self.stop.store(false, Ordering::Relaxed);
        self.send(Command::Run)
    }

    /// Stops the loop started by [`start`](Self::start); returns the calls it made.
    pub fn stop(&self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.done.recv().context("the producer thread died")
    }

    /// Calls getpgid() `calls` times and returns when done.
    pub fn call(&self, calls: u64) -> Result<()> {
        self.send(Command::Calls(calls))?;
        self.done.recv().context("the producer thread died")?;
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.commands = None; // ends the thread's command loop
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_matches_the_bpf_header() {
        let header = include_str!("../../../bpf/bench.h");
        assert!(header.contains(&format!("#define BENCH_BATCH {BATCH}\n")), "bpf/bench.h and BATCH disagree");
    }

    #[test]
    fn fills_stop_short_of_full() {
        let mib64 = 64 << 20;
        // 8388 batches of 500 records of 16 bytes = 67,104,000 bytes of 67,108,864.
        assert_eq!(calls_to_fill(Transport::Ring, mib64), 8388);
        assert!(calls_to_fill(Transport::Ring, mib64) * BATCH * RING_RECORD_BYTES < mib64);
        assert_eq!(calls_to_fill(Transport::Perf, mib64), 5592);
        assert!(calls_to_fill(Transport::Perf, mib64) * BATCH * PERF_RECORD_BYTES < mib64);
        // Exactly one batch's worth of buffer leaves no room for the batch: the kernel keeps a
        // byte free.
        assert_eq!(calls_to_fill(Transport::Ring, BATCH * RING_RECORD_BYTES), 0);
    }
}

/// Against the real kernel (as root, like the integration tests; set
/// BPFSTREAM_SKIP_KERNEL_TESTS=1 to skip).
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use bpfstream::{Event, EventSource, Options, Record};

    fn kernel_test() -> bool {
        if std::env::var_os("BPFSTREAM_SKIP_KERNEL_TESTS").is_some() {
            eprintln_lossy!("skipping a kernel test: BPFSTREAM_SKIP_KERNEL_TESTS is set");
            return false;
        }
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "kernel tests load BPF programs: run them as root");
        true
    }

    /// Runs `calls` getpgid() on the producer thread, draining after each, and returns the BPF
    /// counters and what the consumer got, after detaching.
    fn run(transport: Transport, buffer: u64, calls: u64) -> (BpfCounts, u64) {
        let cpu = crate::host::online_cpus().unwrap()[0];
        let producer = Producer::spawn(cpu).unwrap();
        let mut program = Program::load(transport, buffer, WakeupPolicy::Adaptive, producer.tid()).unwrap();
        let mut consumed = 0u64;
        let mut count = |item: Event<Record<'_>>| {
            if let Event::Record(r) = item {
                // 8 bytes (perf pads them to 12): the record's index in its batch.
                let value = u64::from_ne_bytes(r.data[..8].try_into().unwrap());
                assert!(value < BATCH && r.data.len() <= 12, "{:?}", r.data);
                consumed += 1;
            }
        };
        let events = program.events().unwrap();
        let options = Options { buffer_bytes: Some(buffer), ..Options::default() };
        let mut source = EventSource::open(events, None, &options).unwrap();
        let mut drain = move |f: &mut dyn FnMut(Event<Record<'_>>)| {
            source.consume(|item: Event<Record<'_>>| f(item)).unwrap();
        };
        program.attach().unwrap();
        // SAFETY: getpgid has no memory effects. This thread is not the producer: filtered out.
        unsafe { libc::getpgid(0) };
        for _ in 0..calls {
            producer.call(1).unwrap();
            drain(&mut count);
        }
        program.detach();
        drain(&mut count);
        drop(drain);
        (program.counters().unwrap(), consumed)
    }

    #[test]
    fn the_producer_accounts_for_every_record() {
        if !kernel_test() {
            return;
        }
        for transport in [Transport::Ring, Transport::Perf] {
            // Roomy: 20 batches fit, nothing is dropped.
            let (counters, consumed) = run(transport, 512 << 10, 20);
            assert_eq!(counters.produced, 20 * BATCH, "{transport}: only the producer thread produces");
            assert_eq!((counters.dropped, consumed), (0, counters.produced), "{transport}");
            // One page cannot hold a batch: every call drops, and every drop is counted.
            let (counters, consumed) = run(transport, 4096, 20);
            assert_eq!(counters.produced, 20 * BATCH, "{transport}");
            assert!(counters.dropped > 0 && consumed > 0, "{transport}: {counters:?}, consumed {consumed}");
            assert_eq!(counters.produced, consumed + counters.dropped, "{transport}: {counters:?}");
        }
    }
}
