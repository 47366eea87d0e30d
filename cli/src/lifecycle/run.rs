//! A run from its streams' first event to their summaries: one [`Poller`] serves every stream's
//! source by priority until SIGINT/SIGTERM, the duration or a failed output ends the loop; then
//! [`super::stop`] detaches every program and the same poller drains every source to its last
//! event within one deadline, and each stream prints its summary. A one-tracer command is the run of one stream
//! ([`trace`]).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use aya::Ebpf;
use bpfstream::{Poller, Totals, TotalsHandle};

use super::feed::{Console, Fed, Feed, Outlet};
use super::format::Format;
use super::start::Loaded;
use super::stop::{self, Ending};
use super::summary::Summary;
use crate::counters::DropCounters;
use crate::metrics::{ExportLink, StreamCounters, StreamMetrics};
use crate::signals::{self, Signal};

/// Longest single wait: a signal that lands between the check of the stop flag and the start
/// of the wait does not interrupt it, so the wait itself must end soon.
const LONGEST_WAIT: Duration = Duration::from_millis(250);

/// Most time between two publishes of a stream's counters to its metrics (each reads the BPF
/// side's counters: a system call per stream).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);

/// A loaded stream with the way out of its events, and where its counters are published.
pub struct Stream {
    loaded: Loaded,
    feed: Box<dyn Fed>,
    pub(super) metrics: Option<StreamMetrics>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("loaded", &self.loaded).finish()
    }
}

impl Loaded {
    /// The stream of this tracer's events, in `format`, out through `outlet` to `console`.
    pub fn stream<F: Format>(self, format: F, outlet: Outlet, console: &Console) -> Stream {
        let feed = Feed::new(format, outlet, console, self.name.clone(), self.source.transport());
        Stream { loaded: self, feed: Box::new(RefCell::new(feed)), metrics: None }
    }
}

/// Runs `streams` until SIGINT/SIGTERM, `duration` or a failed output, then stops them all
/// (detach, exact drain within one deadline) and prints each one's summary. Streams are served,
/// drained and summarized by priority, highest first (then in the order given), and their
/// summaries come back in that order. A stream whose format or output failed (but for stdout's reader
/// leaving) makes it an error once every summary is printed.
pub fn run(mut streams: Vec<Stream>, duration: Option<Duration>, console: &Console) -> Result<Vec<Summary>> {
    streams.sort_by_key(|s| std::cmp::Reverse(s.loaded.priority));
    let max_delay = streams.iter().map(|s| s.loaded.max_delay).min().unwrap_or(LONGEST_WAIT);
    let started = Instant::now();
    let mut shapes: Vec<Shape> = streams.iter_mut().map(Shape::of).collect();
    let mut objects: Vec<Ebpf> = Vec::with_capacity(streams.len());
    let mut feeds: Vec<&dyn Fed> = Vec::with_capacity(streams.len());
    let mut poller = Poller::new()?;
    for stream in &mut streams {
        objects.extend(stream.loaded.bpf.take());
        let feed: &dyn Fed = &*stream.feed;
        feed.serve(&mut poller, &mut stream.loaded.source, stream.loaded.priority)?;
        feeds.push(feed);
    }
    let until = duration.map(|d| started + d);
    let streamed = serve(&mut poller, &feeds, &mut shapes, (started, until), max_delay, console);
    let elapsed = started.elapsed();
    let ending = stop::detach(objects);
    let mut metrics: Vec<Option<StreamMetrics>> = shapes.iter_mut().map(|s| s.metrics.take()).collect();
    for m in metrics.iter_mut().flatten() {
        m.set_detached("stopping: its programs are detached");
    }
    let drained = stop::drain(&mut poller, ending);
    for feed in &feeds {
        feed.end_batch();
    }
    streamed?;
    let totals = drained?;
    if let Some(e) = feeds.iter().find_map(|f| f.take_failure()) {
        return Err(anyhow!(e).context("writing events"));
    }
    let fill: Vec<f64> = shapes.iter().map(Shape::fill_ratio).collect();
    let summaries = summarize(&feeds, shapes, totals, elapsed, ending, console)?;
    for ((m, summary), fill) in metrics.iter_mut().zip(&summaries).zip(fill) {
        if let Some(m) = m {
            m.publish(&counters(summary, fill));
        }
    }
    Ok(summaries)
}

/// A stream's counters for its metrics, as its summary says them.
fn counters(summary: &Summary, buffer_fill_ratio: f64) -> StreamCounters {
    let export = summary.export.as_ref();
    let stats = export.map(|e| e.stats).unwrap_or_default();
    StreamCounters {
        produced: summary.produced.unwrap_or(summary.events + summary.dropped),
        delivered: summary.events,
        dropped: summary.dropped,
        unwritten: summary.unwritten,
        exported: stats.exported,
        export_queue_full: stats.queue_full,
        export_rejected: stats.rejected,
        export_unencoded: export.map_or(0, |e| e.unencoded),
        export_unflushed: stats.unflushed,
        buffer_fill_ratio,
        export_queue_depth: stats.in_flight(),
        export_reconnects: export.map_or(0, |e| e.connection.reconnects),
        export_link: match export {
            None => ExportLink::NoExporter,
            Some(e) if e.connection.connected => ExportLink::Connected,
            Some(_) => ExportLink::NotConnected,
        },
    }
}

/// After the drain: each stream closes (its last loss report, the exporter's flush, its last
/// output), stdout gets until the events' deadline, then each stream prints its summary.
fn summarize(
    feeds: &[&dyn Fed],
    shapes: Vec<Shape>,
    totals: Vec<Totals>,
    elapsed: Duration,
    ending: Ending,
    console: &Console,
) -> Result<Vec<Summary>> {
    let mut summaries = Vec::with_capacity(feeds.len());
    let mut closed = Ok(());
    for ((feed, shape), totals) in feeds.iter().zip(shapes).zip(totals) {
        let mut summary = Summary::new(shape.name, totals, shape.transport, shape.buffer_bytes, elapsed, ending);
        closed = closed.and(feed.close(&mut summary, shape.size));
        summaries.push(summary);
    }
    console.stdout.settle(ending.events_by);
    // One deadline for every summary, however many streams.
    let deadline = ending.summary_deadline();
    for (feed, summary) in feeds.iter().zip(&mut summaries) {
        feed.print(summary, console, deadline);
    }
    closed.map(|()| summaries)
}

/// What a stream's summaries say of it besides its feed's part: its name and buffer, and its
/// counts so far.
struct Shape {
    name: Option<std::sync::Arc<str>>,
    metrics: Option<StreamMetrics>,
    transport: bpfstream::Transport,
    buffer_bytes: u64,
    size: u64,
    /// What its consumer published (the poller holds the source).
    totals: TotalsHandle,
    counters: Option<DropCounters>,
}

impl Shape {
    fn of(stream: &mut Stream) -> Self {
        let loaded = &mut stream.loaded;
        if let Some(m) = stream.metrics.as_mut() {
            m.set_attached();
        }
        Shape {
            name: loaded.name.clone(),
            metrics: stream.metrics.take(),
            transport: loaded.source.transport(),
            buffer_bytes: loaded.source.mapped_bytes(),
            size: loaded.size,
            totals: loaded.source.totals_handle(),
            counters: loaded.counters.take(),
        }
    }

    /// The stream so far: what its consumer published, with the BPF side's counters as of now.
    fn so_far(&mut self, elapsed: Duration) -> Summary {
        let mut totals = self.totals.read();
        if let Some(now) = self.counters.as_mut().and_then(|c| c.total().ok()) {
            totals.produced = Some(now.produced);
            totals.dropped = totals.dropped.max(now.dropped);
        }
        Summary::so_far(self.name.clone(), totals, self.transport, self.buffer_bytes, elapsed)
    }

    /// How full its buffer is now, 0 to 1.
    fn fill_ratio(&self) -> f64 {
        let fill = self.totals.fill();
        if fill.capacity == 0 {
            return 0.0;
        }
        fill.used as f64 / fill.capacity as f64
    }

    /// Publishes the stream so far to its metrics, if it has any.
    fn publish(&mut self, feed: &dyn Fed, elapsed: Duration) {
        if self.metrics.is_none() {
            return;
        }
        let mut summary = self.so_far(elapsed);
        feed.fill(&mut summary);
        let counters = counters(&summary, self.fill_ratio());
        if let Some(m) = self.metrics.as_mut() {
            m.publish(&counters);
        }
    }
}

/// The loop: one poll per batch, bounded by the streams' `max_delay` (and [`LONGEST_WAIT`]),
/// from `started` until the stop or the end of the duration; SIGUSR1 prints every stream's run
/// so far.
fn serve(
    poller: &mut Poller<'_>,
    feeds: &[&dyn Fed],
    shapes: &mut [Shape],
    (started, until): (Instant, Option<Instant>),
    max_delay: Duration,
    console: &Console,
) -> Result<()> {
    for (feed, shape) in feeds.iter().zip(shapes.iter_mut()) {
        feed.header();
        // Before the first poll: `/healthz` sees each exporter's connection from the start.
        shape.publish(*feed, Duration::ZERO);
    }
    let broken = || console.stdout.has_failed() || feeds.iter().any(|f| f.failed());
    let mut published = Instant::now();
    while !signals::stop_requested() && !broken() {
        let timeout = match until {
            None => max_delay,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(max_delay),
                _ => break,
            },
        };
        poller.poll(Some(timeout.min(LONGEST_WAIT)))?;
        for feed in feeds {
            feed.end_batch();
        }
        if published.elapsed() >= PUBLISH_INTERVAL {
            published = Instant::now();
            for (feed, shape) in feeds.iter().zip(shapes.iter_mut()) {
                shape.publish(*feed, started.elapsed());
            }
        }
        if signals::take(Signal::Report) {
            for (feed, shape) in feeds.iter().zip(shapes.iter_mut()) {
                feed.report(shape.so_far(started.elapsed()), console);
            }
        }
    }
    Ok(())
}
