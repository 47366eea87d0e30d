//! The consumers under test (bpfstream's, libbpf's, aya's; ring and perf) behind one trait, and
//! the pinned thread each runs on. Every consumer does the same per record: count it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::perf::{PerfEvent, PerfEventArrayBuffer};
use aya::maps::{Map, MapData, PerfEventArray, RingBuf};
use bpfstream::{Event, EventSource, PerfWakeup, Record, Transport, WakeupPolicy};

use super::libbpf::{self, Libbpf};
use super::measure::{own_cpu_ns, pin_to_cpu, PlainRead, ThreadClock};
use super::perf_event;

/// A consumer under test.
pub trait Consumer {
    /// Waits up to `timeout` for records, then consumes what is there; adds them to `count`.
    fn poll(&mut self, timeout: Duration, count: &mut u64) -> Result<()>;
    /// Consumes what is there without waiting; adds the records to `count`.
    fn consume(&mut self, count: &mut u64) -> Result<()>;
}

/// Whose consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    Bpfstream,
    Libbpf,
    Aya,
}

/// A consumer: a library and a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub library: Library,
    pub transport: Transport,
}

/// Every consumer, in the order of the table.
pub const ALL: [Kind; 6] = [
    Kind { library: Library::Bpfstream, transport: Transport::Ring },
    Kind { library: Library::Libbpf, transport: Transport::Ring },
    Kind { library: Library::Aya, transport: Transport::Ring },
    Kind { library: Library::Bpfstream, transport: Transport::Perf },
    Kind { library: Library::Libbpf, transport: Transport::Perf },
    Kind { library: Library::Aya, transport: Transport::Perf },
];

impl Kind {
    /// `bpfstream-ring`, `libbpf-perf`, ...
    pub fn name(self) -> &'static str {
        match (self.library, self.transport) {
            (Library::Bpfstream, Transport::Ring) => "bpfstream-ring",
            (Library::Bpfstream, Transport::Perf) => "bpfstream-perf",
            (Library::Libbpf, Transport::Ring) => "libbpf-ring",
            (Library::Libbpf, Transport::Perf) => "libbpf-perf",
            (Library::Aya, Transport::Ring) => "aya-ring",
            (Library::Aya, Transport::Perf) => "aya-perf",
        }
    }

    /// The consumer called `name`.
    pub fn parse(name: &str) -> Result<Kind, String> {
        ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|k| k.name()).collect();
            format!("unknown consumer {name:?}; choose from {}", names.join(", "))
        })
    }
}

/// When a perf buffer wakes its consumer (a ring's wakeups are the BPF side's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerfWake {
    /// Whatever the library does by default: libbpf and aya wake on every sample; bpfstream
    /// sets a watermark of a quarter buffer.
    LibraryDefault,
    /// `wakeup_events = n` (aya 0.14 cannot set it: its buffers are written through a redirected
    /// helper event that can, `perf_event.rs`).
    Events(u32),
    /// `drain`: nobody waits during the fill, so wake every n samples to keep the fill cheap
    /// (aya's buffers as in `Events`).
    Fill(u32),
}

/// How to open a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The ring producer's wakeup policy, which bpfstream's ring consumer is told (libbpf and
    /// aya have no such setting).
    pub ring_wakeup: WakeupPolicy,
    /// Perf buffer pages per CPU.
    pub perf_pages: usize,
    pub perf_wake: PerfWake,
}

/// Opens `kind` on the events map `map`. Perf consumers put their per-CPU fds into the map, so
/// open them before the producer is attached.
pub fn open(kind: Kind, map: OwnedFd, options: Options, libbpf: Option<&Arc<Libbpf>>) -> Result<Box<dyn Consumer>> {
    Ok(match (kind.library, kind.transport) {
        (Library::Bpfstream, _) => {
            let perf_wakeup = match options.perf_wake {
                PerfWake::LibraryDefault => None,
                PerfWake::Events(n) | PerfWake::Fill(n) => Some(PerfWakeup::Events(n)),
            };
            let library = bpfstream::Options {
                wakeup: options.ring_wakeup,
                buffer_bytes: Some((options.perf_pages * crate::host::page_size()) as u64),
                perf_wakeup,
                ..bpfstream::Options::default()
            };
            Box::new(Ours(EventSource::open(map, None, &library)?))
        }
        (Library::Libbpf, transport) => {
            let libbpf = libbpf.ok_or_else(|| anyhow!("libbpf is not loaded"))?.clone();
            match transport {
                Transport::Ring => Box::new(libbpf::RingConsumer::new(libbpf, map)?),
                Transport::Perf => {
                    let setup = match options.perf_wake {
                        PerfWake::LibraryDefault => libbpf::PerfSetup::Default,
                        PerfWake::Events(n) | PerfWake::Fill(n) => libbpf::PerfSetup::WakeupEvents(n),
                    };
                    Box::new(libbpf::PerfConsumer::new(libbpf, map, options.perf_pages, setup)?)
                }
            }
        }
        (Library::Aya, Transport::Ring) => {
            let map = Map::from_map_data(MapData::from_fd(map)?)?;
            Box::new(AyaRing { ring: RingBuf::try_from(map)?, waiting: Vec::new() })
        }
        (Library::Aya, Transport::Perf) => {
            let map_fd = map.try_clone()?;
            let mut array = PerfEventArray::try_from(Map::from_map_data(MapData::from_fd(map)?)?)?;
            let mut buffers = Vec::new();
            let mut helpers = Vec::new();
            for cpu in crate::host::online_cpus()? {
                let buffer = array.open(cpu, Some(options.perf_pages))?;
                // aya opens its events waking every sample; sampled and drain rows write
                // through a helper event that wakes every n instead.
                if let PerfWake::Events(n) | PerfWake::Fill(n) = options.perf_wake {
                    let helper = perf_event::redirect_samples(map_fd.as_fd(), cpu, buffer.as_fd(), n)
                        .with_context(|| format!("redirecting the samples into aya's buffer on CPU {cpu}"))?;
                    helpers.push(helper);
                }
                buffers.push(buffer);
            }
            Box::new(AyaPerf { buffers, waiting: Vec::new(), _helpers: helpers })
        }
    })
}

/// Blocks until one of `fds` is readable or `timeout` passes (poll(2); EINTR is a timeout).
fn wait_readable<'a>(
    pollfds: &mut Vec<libc::pollfd>,
    fds: impl Iterator<Item = BorrowedFd<'a>>,
    timeout: Duration,
) -> Result<()> {
    pollfds.clear();
    pollfds.extend(fds.map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pollfds` is a valid array of pollfd of the length passed.
    if unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) } < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(anyhow!(err).context("poll"));
        }
    }
    Ok(())
}

/// bpfstream's consumer: an [`EventSource`] over the ring or perf buffer, without drop counters.
struct Ours(EventSource);

fn count_record(records: &mut u64) -> impl FnMut(Event<Record<'_>>) + '_ {
    move |item: Event<Record<'_>>| {
        if let Event::Record(_) = item {
            *records += 1;
        }
    }
}

impl Consumer for Ours {
    fn poll(&mut self, timeout: Duration, count: &mut u64) -> Result<()> {
        self.0.poll(Some(timeout), count_record(count))?;
        Ok(())
    }
    fn consume(&mut self, count: &mut u64) -> Result<()> {
        self.0.consume(count_record(count))?;
        Ok(())
    }
}

/// Most records [`AyaRing::consume`] takes per call.
const AYA_RECORDS_PER_CALL: usize = 1 << 16;

/// aya's `RingBuf`: `next()` until empty, after waiting on its fd as aya's docs suggest.
struct AyaRing {
    ring: RingBuf<MapData>,
    waiting: Vec<libc::pollfd>,
}

impl Consumer for AyaRing {
    fn poll(&mut self, timeout: Duration, count: &mut u64) -> Result<()> {
        wait_readable(&mut self.waiting, std::iter::once(self.ring.as_fd()), timeout)?;
        self.consume(count)
    }
    fn consume(&mut self, count: &mut u64) -> Result<()> {
        // `next()` has no notion of a batch: against a faster producer this loop would never
        // end, and the bench would see no progress until it did. Return now and then instead.
        for _ in 0..AYA_RECORDS_PER_CALL {
            if self.ring.next().is_none() {
                break;
            }
            *count += 1;
        }
        Ok(())
    }
}

/// aya's `PerfEventArray`: a buffer per online CPU, each drained with `for_each`.
struct AyaPerf {
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
    waiting: Vec<libc::pollfd>,
    /// `sampled` and `drain`: the events the BPF program writes through into `buffers`.
    _helpers: Vec<OwnedFd>,
}

impl Consumer for AyaPerf {
    fn poll(&mut self, timeout: Duration, count: &mut u64) -> Result<()> {
        wait_readable(&mut self.waiting, self.buffers.iter().map(|b| b.as_fd()), timeout)?;
        self.consume(count)
    }
    fn consume(&mut self, count: &mut u64) -> Result<()> {
        for buffer in &mut self.buffers {
            buffer.for_each(|event| {
                if let PerfEvent::Sample { .. } = event {
                    *count += 1;
                }
            });
        }
        Ok(())
    }
}

enum Command {
    /// Poll until `stop` is set.
    Stream,
    /// Consume without waiting until this many records in all have been consumed; then, with
    /// `plain_read`, time a [`PlainRead`] of that many bytes of `record_bytes` records.
    Drain { until: u64, plain_read: Option<(usize, usize)> },
    /// Consume what is left and exit.
    Finish,
}

enum Reply {
    Ready,
    Streamed,
    Drained(Drained),
    Finished(u64),
}

/// What one drain took.
pub struct Drained {
    pub wall: Duration,
    pub cpu_ns: u64,
    /// Records per second of the plain read that followed, if one was asked for.
    pub plain_read_per_sec: Option<f64>,
}

/// Longest a record waits when the producer does not wake the consumer (the poll timeout).
pub const MAX_DELAY: Duration = Duration::from_millis(100);

/// How long the bench waits for a consumer thread to answer before it gives up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A consumer on its own pinned thread (libbpf's objects must stay on the thread that made them).
pub struct ConsumerThread {
    thread: Option<JoinHandle<()>>,
    commands: Option<Sender<Command>>,
    replies: Receiver<Result<Reply>>,
    consumed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    clock: ThreadClock,
}

impl std::fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerThread").field("consumed", &self.consumed).finish()
    }
}

struct Body {
    consumer: Box<dyn Consumer>,
    count: u64,
    consumed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Made on the first drain that asks for it, and kept: its pages are faulted in once.
    plain_read: Option<PlainRead>,
}

impl Body {
    fn answer(&mut self, command: Command) -> Result<Reply> {
        match command {
            Command::Stream => {
                while !self.stop.load(Ordering::Relaxed) {
                    self.consumer.poll(MAX_DELAY, &mut self.count)?;
                    self.consumed.store(self.count, Ordering::Relaxed);
                }
                Ok(Reply::Streamed)
            }
            Command::Drain { until, plain_read } => {
                let started = Instant::now();
                let cpu_start = own_cpu_ns()?;
                let mut progress = started;
                while self.count < until {
                    let before = self.count;
                    self.consumer.consume(&mut self.count)?;
                    if self.count != before {
                        progress = Instant::now();
                    } else if progress.elapsed() > Duration::from_secs(5) {
                        bail!("the drain stalled at {} of {until} records", self.count);
                    }
                }
                let wall = started.elapsed();
                let cpu_ns = own_cpu_ns()? - cpu_start;
                self.consumed.store(self.count, Ordering::Relaxed);
                let plain_read_per_sec = match plain_read {
                    Some((bytes, record_bytes)) => {
                        let reader = match &mut self.plain_read {
                            Some(reader) => reader,
                            slot => slot.insert(PlainRead::new(bytes, record_bytes).context("mapping the plain read")?),
                        };
                        Some(reader.records_per_sec())
                    }
                    None => None,
                };
                Ok(Reply::Drained(Drained { wall, cpu_ns, plain_read_per_sec }))
            }
            Command::Finish => {
                loop {
                    let before = self.count;
                    self.consumer.consume(&mut self.count)?;
                    if self.count == before {
                        break;
                    }
                }
                self.consumed.store(self.count, Ordering::Relaxed);
                Ok(Reply::Finished(self.count))
            }
        }
    }
}

impl ConsumerThread {
    /// Starts a thread on `cpu` that opens `kind` on `map`; returns once it is open.
    pub fn spawn(
        kind: Kind,
        map: OwnedFd,
        options: Options,
        libbpf: Option<Arc<Libbpf>>,
        cpu: u32,
    ) -> Result<ConsumerThread> {
        let (command_tx, command_rx) = mpsc::channel::<Command>();
        let (reply_tx, reply_rx) = mpsc::channel::<Result<Reply>>();
        let consumed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_consumed, thread_stop) = (consumed.clone(), stop.clone());
        let thread = std::thread::Builder::new().name(format!("bench-{}", kind.name())).spawn(move || {
            let opened = pin_to_cpu(cpu)
                .with_context(|| format!("pinning the consumer thread to CPU {cpu}"))
                .and_then(|()| open(kind, map, options, libbpf.as_ref()));
            let consumer = match opened {
                Ok(consumer) => consumer,
                Err(e) => {
                    let _ = reply_tx.send(Err(e));
                    return;
                }
            };
            let _ = reply_tx.send(Ok(Reply::Ready));
            let mut body = Body { consumer, count: 0, consumed: thread_consumed, stop: thread_stop, plain_read: None };
            for command in command_rx {
                let reply = body.answer(command);
                let failed = reply.is_err();
                if reply_tx.send(reply).is_err() || failed {
                    return;
                }
            }
        })?;
        let clock = ThreadClock::of(&thread)?;
        let mut me = ConsumerThread {
            thread: Some(thread),
            commands: Some(command_tx),
            replies: reply_rx,
            consumed,
            stop,
            clock,
        };
        match me.reply()? {
            Reply::Ready => Ok(me),
            _ => bail!("the consumer thread answered out of turn"),
        }
    }

    fn reply(&mut self) -> Result<Reply> {
        match self.replies.recv_timeout(ANSWER_TIMEOUT) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => bail!("the consumer thread did not answer within {ANSWER_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the consumer thread ended unexpectedly"),
        }
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands
            .as_ref()
            .and_then(|c| c.send(command).ok())
            .ok_or_else(|| anyhow!("the consumer thread ended unexpectedly"))
    }

    /// Starts polling (until [`end_stream`](Self::end_stream)).
    pub fn stream(&self) -> Result<()> {
        self.stop.store(false, Ordering::Relaxed);
        self.send(Command::Stream)
    }

    /// Records consumed so far (published after every poll).
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// The consumer thread's CPU time so far.
    pub fn cpu_ns(&self) -> Result<u64> {
        Ok(self.clock.now_ns()?)
    }

    /// Stops polling (within one poll timeout).
    pub fn end_stream(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.reply()? {
            Reply::Streamed => Ok(()),
            _ => bail!("the consumer thread answered out of turn"),
        }
    }

    /// Consumes, without waiting, until `until` records in all; returns the wall and CPU time
    /// it took, and the rate of a plain read of `plain_read` (bytes, record bytes) right after.
    pub fn drain(&mut self, until: u64, plain_read: Option<(usize, usize)>) -> Result<Drained> {
        self.send(Command::Drain { until, plain_read })?;
        match self.reply()? {
            Reply::Drained(drained) => Ok(drained),
            _ => bail!("the consumer thread answered out of turn"),
        }
    }

    /// Consumes what is left, ends the thread and returns the records consumed in all.
    pub fn finish(mut self) -> Result<u64> {
        self.send(Command::Finish)?;
        match self.reply()? {
            Reply::Finished(count) => Ok(count),
            _ => bail!("the consumer thread answered out of turn"),
        }
    }
}

impl Drop for ConsumerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_round_trip() {
        for kind in ALL {
            assert_eq!(Kind::parse(kind.name()), Ok(kind));
        }
        let err = Kind::parse("bcc-ring").unwrap_err();
        assert!(err.contains("bcc-ring") && err.contains("libbpf-perf"), "{err}");
    }
}
