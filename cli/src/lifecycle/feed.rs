//! One stream's path from its buffer to its outputs: each record decoded and formatted by its
//! tracer's [`Format`] straight into the stream's stdout buffer (and to the exporter), losses
//! reported as they happen, stdout accounted per batch (a count of the events' lines, see
//! `crate::writer`). It is generic over the format: from the poller's handler to the output
//! buffer no call is dynamic. The lifecycle reaches a stream through [`Fed`], once per batch.
//!
//! ```text
//!  Poller ──handler──▶ Feed<F>::item ──▶ F::decode ──▶ F::json + containers ──▶ Tee (stdout, exporter)
//!                                                 └──▶ time cell + F::row ──▶ Output (stdout)
//!  end of batch: F::tick, export losses, loss report, Output::flush ──▶ stdout queue
//! ```

use std::cell::RefCell;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use bpfstream::{Event, EventSource, Poller, Record, SourceId, Transport};

use super::args::CommonArgs;
use super::format::Format;
use super::summary::Summary;
use crate::container::{ContainerArgs, ContainerFields};
use crate::export::Tee;
use crate::loss::{buffer_for_burst, LossReport};
use crate::output::{JsonLine, TimeColumn};
use crate::writer::{stderr_queue, stdout_queue, Output, Queue};

/// Most output one chunk of the stdout queue holds (well below `writer::MAX_QUEUED`).
const CHUNK_BYTES: usize = 1 << 20;

/// Where a run writes: stdout (events, `lost` lines, JSON summaries) and stderr (`Lost N events`
/// of tables, the summaries for people, warnings).
#[derive(Clone)]
pub struct Console {
    pub stdout: Arc<Queue>,
    pub stderr: Arc<Queue>,
}

impl Console {
    /// The process's stdout and stderr.
    pub fn process() -> Self {
        Console { stdout: stdout_queue().clone(), stderr: stderr_queue().clone() }
    }

    /// Fails when stdout failed for another reason than a reader that left.
    pub fn check(&self) -> Result<()> {
        match self.stdout.error() {
            Some(kind) if kind != io::ErrorKind::BrokenPipe => {
                Err(anyhow!("writing to stdout failed: {}", io::Error::from(kind)))
            }
            _ => Ok(()),
        }
    }
}

/// How a stream's events leave: a table or JSON lines on stdout, the exporter (`--output`), the
/// table's time column and the JSON lines' container fields (`--cgroup-path`).
#[derive(Debug)]
pub struct Outlet {
    json: bool,
    time: TimeColumn,
    tee: Tee,
    containers: ContainerFields,
}

impl Outlet {
    /// `--json`, `-T`/`--elapsed`, `--cgroup-path` and `--output`, whose exporter connects when
    /// the run starts ([`super::start_plans`]), before anything is loaded.
    pub fn start(args: &CommonArgs, container: &ContainerArgs) -> Result<Self> {
        let tee = Tee::new(&args.output, args.json);
        let containers = ContainerFields::for_tracer(container, tee.active())?;
        Ok(Outlet { json: args.json, time: TimeColumn::new(args.timestamp, args.elapsed), tee, containers })
    }

    /// Where its events go besides stdout, for the run to connect its `--output`.
    pub(super) fn tee_mut(&mut self) -> &mut Tee {
        &mut self.tee
    }

    /// Events to the exporter only, nothing of them on stdout; `lost` lines and the summary
    /// as JSON lines on stdout (the agent's streams with `[output]`).
    pub fn export_only(mut self) -> Self {
        self.json = true;
        self
    }
}

/// A stream's events on their way out.
pub(super) struct Feed<F: Format> {
    format: F,
    /// Stdout: the events' lines, `lost` lines with `--json`, the tracer's own tables.
    out: Output,
    /// Stderr: `Lost N events` of tables.
    err: Output,
    /// The format's last output, printed with the summary.
    closing: Vec<u8>,
    json: bool,
    time: TimeColumn,
    tee: Tee,
    containers: ContainerFields,
    /// How each event's JSON line begins: its kind and stream, escaped once.
    opening: String,
    loss: LossReport,
    malformed: u64,
    /// The first error of the format or an output; the stream takes nothing after it.
    failure: Option<io::Error>,
}

impl<F: Format> Feed<F> {
    pub(super) fn new(
        format: F,
        outlet: Outlet,
        console: &Console,
        stream: Option<Arc<str>>,
        transport: Transport,
    ) -> Self {
        let Outlet { json, time, mut tee, containers } = outlet;
        tee.set_names(stream.clone(), format.map());
        let loss = LossReport::new(json, transport == Transport::Perf, stream.clone()).of_map(format.map());
        let opening = JsonLine::opening(format.kind(), stream.as_deref());
        Feed {
            format,
            out: Output::new(console.stdout.clone()),
            err: Output::new(console.stderr.clone()),
            closing: Vec::new(),
            json,
            time,
            tee,
            containers,
            loss,
            opening,
            malformed: 0,
            failure: None,
        }
    }

    /// Hands `item` over; an error stops the consume at once.
    fn item(&mut self, item: Event<Record<'_>>) -> ControlFlow<()> {
        if self.failure.is_some() {
            return ControlFlow::Break(());
        }
        let handled = match item {
            Event::Record(record) => self.record(record.data),
            Event::Dropped(lost) => {
                self.loss.add(&lost, Instant::now());
                Ok(())
            }
        };
        if let Err(e) = handled {
            self.failure = Some(e);
            return ControlFlow::Break(());
        }
        if self.out.len() >= CHUNK_BYTES {
            // A large buffer lends batches of many MiB of records, whose lines would make one
            // chunk larger than the queue takes: hand them over in pieces.
            self.end_batch();
        }
        ControlFlow::Continue(())
    }

    /// One record: its JSON line (stdout with `--json`, the exporter with `--output`) or its
    /// table row.
    fn record(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(event) = self.format.decode(data) else {
            self.malformed += 1;
            self.tee.unencoded();
            return Ok(());
        };
        self.format.note(&event);
        if self.tee.active() {
            let line = self.format.json(&event, JsonLine::opened(&self.opening));
            let line = match self.format.cgroup_id(&event) {
                Some(id) => self.containers.add(line, id),
                None => line,
            };
            self.tee.emit(&mut self.out, line)?;
            if self.json {
                if self.tee.writes_stdout() {
                    self.out.end_event();
                }
                return Ok(());
            }
        }
        if let Some(ts) = self.format.ts_ns(&event) {
            self.time.cell(&mut self.out, ts)?;
        }
        self.format.row(&event, &mut self.out)?;
        self.out.end_event();
        Ok(())
    }

    /// The table's titles, before the first event.
    fn header(&mut self) -> io::Result<()> {
        if !self.json {
            if let Some(titles) = self.format.titles() {
                self.time.title(&mut self.out)?;
                self.out.write_all(titles.as_bytes())?;
            }
        }
        self.out.flush()
    }

    /// The end of a batch: the tracer's periodic output and the loss reports follow its events,
    /// and all of it goes to the queue.
    fn end_batch(&mut self) {
        if let Err(e) = self.tick() {
            self.failure.get_or_insert(e);
        }
    }

    fn tick(&mut self) -> io::Result<()> {
        self.format.tick(&mut self.out)?;
        self.tee.tick(&mut self.out)?;
        self.report_loss(false);
        self.out.flush()
    }

    /// Reports what was lost since the last report (queued; an output that failed is accounted
    /// by its queue).
    fn report_loss(&mut self, end: bool) {
        let export = self.tee.so_far();
        let out = if self.json { &mut self.out } else { &mut self.err };
        let _ = self.loss.report(Instant::now(), end, out, export.as_ref());
    }

    /// After the drain: the last loss report, the exporter's final flush, the tracer's last
    /// output; their accounting goes into `summary`.
    fn close(&mut self, summary: &mut Summary, size: u64) -> Result<()> {
        self.report_loss(true);
        summary.map = self.format.map().map(str::to_owned);
        summary.export = self.tee.finish(summary.export_deadline());
        summary.malformed = self.malformed;
        let worst = self.loss.worst_burst();
        let record_bytes = summary.bytes.checked_div(summary.events).unwrap_or(0);
        summary.burst = (worst > 0).then(|| (worst, buffer_for_burst(size, worst, record_bytes)));
        let _ = self.out.flush();
        self.format.finish(&mut self.closing)
    }
}

/// A stream's feed as the lifecycle drives it, whatever its format: called once per batch (its
/// records come through the handler [`serve`](Self::serve) gives the poller).
pub(super) trait Fed {
    /// Adds `source` to `poller`, its records handed to this feed.
    fn serve<'a>(
        &'a self,
        poller: &mut Poller<'a>,
        source: &'a mut EventSource,
        priority: i32,
    ) -> Result<SourceId, bpfstream::Error>;
    fn header(&self);
    fn end_batch(&self);
    fn failed(&self) -> bool;
    /// The first error of the format or an output, if it is not stdout's reader leaving.
    fn take_failure(&self) -> Option<io::Error>;
    fn close(&self, summary: &mut Summary, size: u64) -> Result<()>;
    /// Prints `summary` once the queues settled, with what stdout did not take of this stream,
    /// by `deadline` at most.
    fn print(&self, summary: &mut Summary, console: &Console, deadline: Instant);
    /// Adds this feed's part to the run so far (`summary`, the consumer's part).
    fn fill(&self, summary: &mut Summary);
    /// Prints the run so far (`summary`, the consumer's part) at once, with this feed's part.
    fn report(&self, summary: Summary, console: &Console);
}

impl<F: Format> Fed for RefCell<Feed<F>> {
    fn serve<'a>(
        &'a self,
        poller: &mut Poller<'a>,
        source: &'a mut EventSource,
        priority: i32,
    ) -> Result<SourceId, bpfstream::Error> {
        poller.add(source, priority, move |item: Event<Record<'_>>| self.borrow_mut().item(item))
    }

    fn header(&self) {
        let mut feed = self.borrow_mut();
        if let Err(e) = feed.header() {
            feed.failure.get_or_insert(e);
        }
    }

    fn end_batch(&self) {
        self.borrow_mut().end_batch();
    }

    fn failed(&self) -> bool {
        self.borrow().failure.is_some()
    }

    fn take_failure(&self) -> Option<io::Error> {
        self.borrow_mut().failure.take().filter(|e| e.kind() != io::ErrorKind::BrokenPipe)
    }

    fn close(&self, summary: &mut Summary, size: u64) -> Result<()> {
        self.borrow_mut().close(summary, size)
    }

    fn fill(&self, summary: &mut Summary) {
        let feed = self.borrow();
        summary.map = feed.format.map().map(str::to_owned);
        summary.unwritten = feed.out.unwritten();
        summary.malformed = feed.malformed;
        summary.export = feed.tee.so_far();
    }

    fn report(&self, mut summary: Summary, console: &Console) {
        self.fill(&mut summary);
        summary.report(console, self.borrow().json);
    }

    fn print(&self, summary: &mut Summary, console: &Console, deadline: Instant) {
        let mut feed = self.borrow_mut();
        let closing = std::mem::take(&mut feed.closing);
        if !closing.is_empty() && !console.stdout.write_by(closing.clone(), deadline) {
            // Stdout failed, or did not take it in time: it goes to stderr, as the summary does,
            // rather than nowhere.
            console.stdout.abandon();
            console.stderr.write_by(closing, deadline);
        }
        summary.unwritten = feed.out.unwritten();
        let summary = &*summary;
        summary.print(
            console,
            deadline,
            feed.json,
            |line| feed.format.summary_json(summary, line),
            |text| feed.format.summary_text(summary, text),
        );
    }
}
