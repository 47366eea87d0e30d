//! A run from its streams' first event to their summaries: one [`Poller`] serves every stream's
//! source by priority until SIGINT/SIGTERM, the duration or a failed output ends the loop; then
//! [`super::stop`] detaches every program, a poller of the stopping streams drains every source
//! to its last event within one deadline, and each stream prints its summary. A one-tracer
//! command is the run of one stream ([`super::trace`]). The agent serves in rounds
//! ([`RunningStreams`]): between two, it stops some streams that way and adds others, and the
//! next round's poller serves the rest where they were (the sources keep their place in their
//! buffers and their counts; a new epoll set reports what is already waiting).

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
pub fn run(streams: Vec<Stream>, duration: Option<Duration>, console: &Console) -> Result<Vec<Summary>> {
    let mut running = RunningStreams::new(streams);
    let until = duration.map(|d| Instant::now() + d);
    let served = running.serve(until, console, &|| false);
    let stopped = running.stop_all(console);
    served?;
    stopped
}

/// One stream of a run, with what its summaries say of it besides its feed's part.
struct Member {
    stream: Stream,
    shape: Shape,
}

/// The streams of a run, served by one poller per round of [`serve`](Self::serve): between
/// rounds, streams may be stopped ([`stop`](Self::stop)) and added ([`add`](Self::add)) while
/// the others keep their programs attached, their buffers and their counts.
pub struct RunningStreams {
    /// By priority, highest first (then in the order added).
    members: Vec<Member>,
}

impl RunningStreams {
    /// `streams`, each of them attached from now on.
    pub fn new(streams: Vec<Stream>) -> Self {
        let mut running = RunningStreams { members: Vec::new() };
        running.add(streams);
        running
    }

    /// Adds `streams`: each prints its header and publishes its (zero) counters before it is
    /// marked attached, so that `/healthz` never says 200 before it sees its exporter's
    /// connection.
    pub fn add(&mut self, streams: Vec<Stream>) {
        for mut stream in streams {
            let mut shape = Shape::of(&mut stream);
            stream.feed.header();
            shape.publish(&*stream.feed);
            if let Some(m) = shape.metrics.as_mut() {
                m.set_attached();
            }
            self.members.push(Member { stream, shape });
        }
        self.members.sort_by_key(|m| std::cmp::Reverse(m.stream.loaded.priority));
    }

    /// Serves every stream on one poller until SIGINT/SIGTERM, `until`, a failed output, or
    /// `interrupted()` says so; returns whether it did.
    pub fn serve(&mut self, until: Option<Instant>, console: &Console, interrupted: &dyn Fn() -> bool) -> Result<bool> {
        let max_delay = self.members.iter().map(|m| m.stream.loaded.max_delay).min().unwrap_or(LONGEST_WAIT);
        let mut poller = Poller::new()?;
        let mut feeds: Vec<&dyn Fed> = Vec::with_capacity(self.members.len());
        let mut shapes: Vec<&mut Shape> = Vec::with_capacity(self.members.len());
        for Member { stream, shape } in &mut self.members {
            let feed: &dyn Fed = &*stream.feed;
            feed.serve(&mut poller, &mut stream.loaded.source, stream.loaded.priority)?;
            feeds.push(feed);
            shapes.push(shape);
        }
        serve(&mut poller, &feeds, &mut shapes, (until, max_delay), console, interrupted)
    }

    /// Stops the streams named in `names` as [`stop_all`](Self::stop_all) stops every one; the
    /// others are not touched.
    pub fn stop(&mut self, names: &[&str], console: &Console) -> Result<Vec<Summary>> {
        let named = |m: &Member| m.shape.name.as_deref().is_some_and(|name| names.contains(&name));
        let (stopping, staying) = std::mem::take(&mut self.members).into_iter().partition(named);
        self.members = staying;
        finish(stopping, console)
    }

    /// Stops every stream: detach, exact drain within one deadline, and each one's summary.
    pub fn stop_all(self, console: &Console) -> Result<Vec<Summary>> {
        finish(self.members, console)
    }
}

/// Stops `members` (detach, exact drain within one deadline) and prints each one's summary.
fn finish(mut members: Vec<Member>, console: &Console) -> Result<Vec<Summary>> {
    let ended = Instant::now();
    let mut poller = Poller::new()?;
    let objects: Vec<Ebpf> = members.iter_mut().filter_map(|m| m.stream.loaded.bpf.take()).collect();
    let mut metrics: Vec<Option<StreamMetrics>> = members.iter_mut().map(|m| m.shape.metrics.take()).collect();
    let mut feeds: Vec<&dyn Fed> = Vec::with_capacity(members.len());
    let mut shapes: Vec<&Shape> = Vec::with_capacity(members.len());
    for Member { stream, shape } in &mut members {
        let feed: &dyn Fed = &*stream.feed;
        feed.serve(&mut poller, &mut stream.loaded.source, stream.loaded.priority)?;
        feeds.push(feed);
        shapes.push(shape);
    }
    let ending = stop::detach(objects);
    for m in metrics.iter_mut().flatten() {
        m.set_detached("stopping: its programs are detached");
    }
    let drained = stop::drain(&mut poller, ending);
    for feed in &feeds {
        feed.end_batch();
    }
    let totals = drained?;
    if let Some(e) = feeds.iter().find_map(|f| f.take_failure()) {
        return Err(anyhow!(e).context("writing events"));
    }
    let summaries = summarize(&feeds, &shapes, totals, ended, ending, console)?;
    for ((m, summary), shape) in metrics.iter_mut().zip(&summaries).zip(&shapes) {
        if let Some(m) = m {
            m.publish(&counters(summary, shape.fill_ratio()));
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
    shapes: &[&Shape],
    totals: Vec<Totals>,
    ended: Instant,
    ending: Ending,
    console: &Console,
) -> Result<Vec<Summary>> {
    let mut summaries = Vec::with_capacity(feeds.len());
    let mut closed = Ok(());
    for ((feed, shape), totals) in feeds.iter().zip(shapes).zip(totals) {
        let elapsed = ended.duration_since(shape.started);
        let mut summary =
            Summary::new(shape.name.clone(), totals, shape.transport, shape.buffer_bytes, elapsed, ending);
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

/// What a stream's summaries say of it besides its feed's part: its name and buffer, when it
/// started, and its counts so far.
struct Shape {
    name: Option<std::sync::Arc<str>>,
    started: Instant,
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
        Shape {
            name: loaded.name.clone(),
            started: Instant::now(),
            metrics: stream.metrics.take(),
            transport: loaded.source.transport(),
            buffer_bytes: loaded.source.mapped_bytes(),
            size: loaded.size,
            totals: loaded.source.totals_handle(),
            counters: loaded.counters.take(),
        }
    }

    /// The stream so far: what its consumer published, with the BPF side's counters as of now.
    fn so_far(&mut self) -> Summary {
        let elapsed = self.started.elapsed();
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
    fn publish(&mut self, feed: &dyn Fed) {
        if self.metrics.is_none() {
            return;
        }
        let mut summary = self.so_far();
        feed.fill(&mut summary);
        let counters = counters(&summary, self.fill_ratio());
        if let Some(m) = self.metrics.as_mut() {
            m.publish(&counters);
        }
    }
}

/// The loop: one poll per batch, bounded by the streams' `max_delay` (and [`LONGEST_WAIT`]),
/// until the stop, `until` or `interrupted()` (then `Ok(true)`); SIGUSR1 prints every stream's
/// run so far.
fn serve(
    poller: &mut Poller<'_>,
    feeds: &[&dyn Fed],
    shapes: &mut [&mut Shape],
    (until, max_delay): (Option<Instant>, Duration),
    console: &Console,
    interrupted: &dyn Fn() -> bool,
) -> Result<bool> {
    let broken = || console.stdout.has_failed() || feeds.iter().any(|f| f.failed());
    let mut published = Instant::now();
    while !signals::stop_requested() && !broken() {
        if interrupted() {
            return Ok(true);
        }
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
                shape.publish(*feed);
            }
        }
        if signals::take(Signal::Report) {
            for (feed, shape) in feeds.iter().zip(shapes.iter_mut()) {
                feed.report(shape.so_far(), console);
            }
        }
    }
    Ok(false)
}
