//! A tracer from `Tracing...` to its summary: one event source served directly (a poll with a
//! timeout, records handed to the sink), until SIGINT/SIGTERM, `--duration` or a failed output
//! ends the loop; then [`super::stop`] takes it to the last event.

use std::io;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use aya::maps::Map;
use aya::Ebpf;
use bpfstream::{Event, EventSource, Record, Transport};

use super::args::BufferOptions;
use super::load::{attach, load, open_source, TracerSpec, LOADING};
use super::stop;
use super::summary::{is_broken_pipe, Summary};
use crate::counters::DropCounters;
use crate::loss::{buffer_for_burst, LossReport, Reporting};
use crate::signals::{self, Signal};
use crate::size::human_bytes;
use crate::writer::{stdout_queue, Queue};

/// Longest single wait: a signal that lands between the check of the stop flag and the start
/// of the wait does not interrupt it, so the wait itself must end soon.
const LONGEST_WAIT: Duration = Duration::from_millis(250);

/// Where a tracer's items go.
pub trait Sink {
    /// Before the first event: a table's column titles.
    fn header(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// One record or loss report.
    fn item(&mut self, item: Event<Record<'_>>) -> io::Result<()>;
    /// After every poll (a batch) and after the final drain: flush output, print periodic
    /// summaries.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// With `--output`: the exporter's accounting so far, which `lost` lines carry.
    fn export(&self) -> Option<crate::export::ExportSummary> {
        None
    }
}

/// Records between two looks at the clock in a batch (a look costs about as much as a record).
const CLOCK_EVERY: u32 = 1024;

/// Most output one chunk of the stdout queue holds (well below `writer::MAX_QUEUED`).
const CHUNK_BYTES: usize = 1 << 20;

/// A sink and what it was given: where each record's output ends since the last batch, and
/// its first error.
pub(super) struct Feed<'a> {
    sink: &'a mut dyn Sink,
    queue: &'a Queue,
    ends: Vec<usize>,
    pub(super) failure: Option<io::Error>,
}

impl Feed<'_> {
    /// Hands `item` over; an error stops the consume at once.
    pub(super) fn item(&mut self, item: Event<Record<'_>>) -> ControlFlow<()> {
        if self.failure.is_some() {
            return ControlFlow::Break(());
        }
        let record = matches!(item, Event::Record(_));
        match self.sink.item(item) {
            Ok(()) => {
                if record {
                    self.queue.note_event_end(&mut self.ends);
                }
                if self.queue.buffered() >= CHUNK_BYTES {
                    // A large buffer lends batches of many MiB of records, whose lines would
                    // make one chunk larger than the queue takes: hand them over in pieces.
                    self.end_batch();
                }
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.failure = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    /// The end of a batch: its events go with the output the sink flushes now.
    pub(super) fn end_batch(&mut self) {
        self.queue.note_events(&mut self.ends);
        if let Err(e) = self.sink.tick() {
            self.failure.get_or_insert(e);
        }
    }

    /// Whether the loop must end: the sink failed, or stdout did.
    fn broken(&self) -> bool {
        self.failure.is_some() || self.queue.error().is_some()
    }

    /// Whether the loop must end after the record just handed over: a stop signal, a failed
    /// stdout or (looked at every [`CLOCK_EVERY`] records) the run's `deadline`.
    fn must_end(&self, records: &mut u32, deadline: Option<Instant>) -> bool {
        *records = records.wrapping_add(1);
        let late = || *records % CLOCK_EVERY == 0 && deadline.is_some_and(|d| Instant::now() >= d);
        signals::stop_requested() || self.queue.has_failed() || late()
    }
}

/// A loaded, attached tracer and its event stream.
pub struct Tracer {
    bpf: Ebpf,
    source: EventSource,
    what: String,
    size: u64,
    /// Loss reports as JSON lines on stdout (`--json`) instead of lines on stderr.
    json: bool,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("what", &self.what).field("source", &self.source).finish()
    }
}

impl Tracer {
    /// Loads, attaches and opens the stream; then announces `Tracing...` on stderr. A stop
    /// signal before or during it ends the start with [`signals::StoppedAtStart`].
    pub fn start(spec: &TracerSpec, options: &BufferOptions) -> Result<Self> {
        signals::stop_point(LOADING)?;
        let started = Self::load_and_attach(spec, options);
        match started {
            // A signal may interrupt the verifier (EINTR, EAGAIN): the stop, not the error, counts.
            Err(_) if signals::stop_requested() => Err(signals::StoppedAtStart { during: LOADING.into() }.into()),
            started => started,
        }
    }

    fn load_and_attach(spec: &TracerSpec, options: &BufferOptions) -> Result<Self> {
        let (mut bpf, _) = load(spec, options)?;
        signals::stop_point(LOADING)?;
        // Open the buffer before attaching: perf buffers must be in the map before the first
        // event, or those events would be dropped for want of a slot.
        let source = open_source(&bpf, options)?;
        attach(&mut bpf, spec)?;
        Ok(Self::attached(bpf, source, spec.what.to_owned(), options.size))
    }

    /// An object loaded and attached, streaming `source` (a buffer of `size` bytes, per CPU for
    /// perf): announces `Tracing <what> via ...` on stderr.
    pub fn attached(bpf: Ebpf, source: EventSource, what: String, size: u64) -> Self {
        let tracer = Tracer { bpf, source, what, size, json: false };
        eprintln_lossy!("Tracing {} via {}... Hit Ctrl-C to end.", tracer.what, tracer.describe_buffer());
        tracer
    }

    /// `ring buffer (256 KiB)` or `perf buffer (256 KiB per CPU, 2 CPUs: 512 KiB)`.
    pub fn describe_buffer(&self) -> String {
        match self.source.transport() {
            Transport::Ring => format!("ring buffer ({})", human_bytes(self.size)),
            Transport::Perf => {
                // A perf buffer's capacity is its size on each of its CPUs.
                let cpus = self.source.fill().capacity / self.size.max(1);
                let total = human_bytes(self.size * cpus);
                format!("perf buffer ({} per CPU, {cpus} CPUs: {total})", human_bytes(self.size))
            }
        }
    }

    /// Reports losses as `lost` JSON lines on stdout (for `--json`).
    pub fn set_json(&mut self, json: bool) {
        self.json = json;
    }

    /// Takes one of the object's maps out of it (e.g. a tool's own counters), to read after
    /// [`run`](Self::run) has detached the programs.
    pub fn take_map(&mut self, name: &str) -> Result<Map> {
        self.bpf.take_map(name).ok_or_else(|| anyhow!("BPF object has no {name} map"))
    }

    /// Streams into `sink` until SIGINT/SIGTERM, the `duration`, or a failed output (a sink
    /// error, or stdout: closed, full). Then detaches every program, drains the buffer into the
    /// sink to the last event and returns the accounting; the output then has until
    /// [`Summary::print`] to be written.
    pub fn run(mut self, duration: Option<Duration>, max_delay: Duration, sink: &mut dyn Sink) -> Result<Summary> {
        let started = Instant::now();
        let queue = stdout_queue();
        let mut reporting =
            Reporting::new(sink, LossReport::new(self.json, self.source.transport() == Transport::Perf));
        let mut feed = Feed { sink: &mut reporting, queue, ends: Vec::new(), failure: None };
        let streamed = self.stream(started, duration.map(|d| started + d), max_delay, &mut feed);
        let elapsed = started.elapsed();
        let buffer_bytes = self.source.mapped_bytes();
        let transport = self.source.transport();
        let Tracer { bpf, mut source, size, .. } = self;
        let ending = stop::detach(bpf);
        let totals = stop::drain(&mut source, ending, &mut feed)?;
        streamed?;
        let failure = feed.failure;
        reporting.finish();
        if let Some(e) = failure {
            if !is_broken_pipe(&e) {
                return Err(anyhow!(e).context("writing events"));
            }
        }
        let worst_burst = reporting.loss.worst_burst();
        let record_bytes = totals.bytes.checked_div(totals.delivered).unwrap_or(0);
        let burst = (worst_burst > 0).then(|| (worst_burst, buffer_for_burst(size, worst_burst, record_bytes)));
        Ok(Summary::new(totals, transport, buffer_bytes, elapsed, ending, burst))
    }

    /// The loop: one poll per batch, bounded by `max_delay` (and [`LONGEST_WAIT`]).
    fn stream(
        &mut self,
        started: Instant,
        deadline: Option<Instant>,
        max_delay: Duration,
        feed: &mut Feed<'_>,
    ) -> Result<()> {
        if let Err(e) = feed.sink.header() {
            feed.failure = Some(e);
        }
        feed.end_batch();
        while !signals::stop_requested() && !feed.broken() {
            let timeout = match deadline {
                None => max_delay,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(max_delay),
                    _ => break,
                },
            };
            // The end of the loop ends the batch at the record it came on: the rest is for the
            // drain, which the stop's deadlines bound; under a storm a batch may last as long as
            // the storm.
            let mut records = 0u32;
            let until_end = |item: Event<Record<'_>>| match feed.item(item) {
                ControlFlow::Continue(()) if feed.must_end(&mut records, deadline) => ControlFlow::Break(()),
                flow => flow,
            };
            self.source.poll(Some(timeout.min(LONGEST_WAIT)), until_end)?;
            feed.end_batch();
            if signals::take(Signal::Report) {
                self.report_so_far(started, feed);
            }
        }
        Ok(())
    }

    /// SIGUSR1: the summary so far, where the final one goes (a `progress` object on stdout
    /// with `--json`, a line on stderr otherwise); the run goes on.
    fn report_so_far(&self, started: Instant, feed: &Feed<'_>) {
        let mut totals = self.source.totals();
        // The BPF side's counters as of now (the source reads them every 100 ms at most).
        if let Ok(now) = DropCounters::open(&self.bpf).and_then(|counters| counters.total()) {
            totals.produced = Some(now.produced);
            totals.dropped = totals.dropped.max(now.dropped);
        }
        let export = feed.sink.export();
        let (transport, buffer_bytes) = (self.source.transport(), self.source.mapped_bytes());
        Summary::so_far(totals, transport, buffer_bytes, started.elapsed(), export).report(self.json);
    }
}
