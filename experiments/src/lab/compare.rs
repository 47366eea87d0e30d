//! `lab compare` (exercise 2): the same tracer-like load (one record per system call) from a
//! thread on every CPU, through a ring buffer, a perf buffer, and a perf buffer read through an
//! ordered stream (the library's merge of its per-CPU rings by timestamp). Compared: memory
//! mapped, ordering, throughput and consumer CPU.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream::stream::EventStream;
use bpfstream::{Event, EventSource, Poller, Record, Totals, Transport, WakeupPolicy};
use bpfstream_core::load::BufferOptions;

use super::load::{self, LabEvent, Loaded, Pace, CLASS_BULK};
use super::report::{Account, Cell, LabReport, Table};
use super::Progress;
use crate::objects;
use crate::plot::{self, BarPanel};
use crate::size::human_bytes;

/// Records per second from each CPU's load thread.
const RATE_PER_CPU: f64 = 100_000.0;
/// Ring: total; perf: per CPU (the tracers' default, 256 KiB).
const BUFFER: u64 = 256 << 10;
/// The poll timeout: no record waits longer than this in a buffer.
const MAX_DELAY: Duration = Duration::from_millis(10);
/// The merge's reorder window: well above the longest a record waits in a buffer.
const WINDOW: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Ring,
    Perf,
    PerfMerged,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ring => "ring",
            Mode::Perf => "perf",
            Mode::PerfMerged => "perf-merged",
        }
    }
}

#[derive(Debug)]
struct Row {
    mode: Mode,
    produced: u64,
    delivered: u64,
    dropped: u64,
    buffer_bytes: u64,
    inversions: u64,
    max_inversion_ns: u64,
    late: u64,
    wakeups: u64,
    secs: f64,
    cpu_ns: u64,
}

/// Counts records delivered with a timestamp earlier than one delivered before.
#[derive(Debug, Default)]
struct Order {
    newest: u64,
    inversions: u64,
    max_behind: u64,
}

impl Order {
    fn see(&mut self, ts: u64) {
        if ts < self.newest {
            self.inversions += 1;
            self.max_behind = self.max_behind.max(self.newest - ts);
        } else {
            self.newest = ts;
        }
    }
}

pub fn run(duration: Duration, progress: &mut Progress) -> Result<LabReport> {
    let per_run = duration / 3;
    let mut rows = Vec::new();
    for mode in [Mode::Ring, Mode::Perf, Mode::PerfMerged] {
        progress.run(mode.name(), per_run);
        rows.push(run_one(mode, per_run, progress)?);
    }
    Ok(report(rows, per_run))
}

/// What the consumer keeps while it reads.
#[derive(Default)]
struct State {
    order: Order,
    delivered: u64,
}

impl State {
    fn record(&mut self, item: Event<Record<'_>>) {
        let Event::Record(record) = item else { return };
        self.stamp(LabEvent::decode(record.data).map(|e| e.ts_ns));
    }

    /// A lab record's timestamp (`None`: not a lab record).
    fn stamp(&mut self, ts: Option<u64>) {
        let Some(ts) = ts else { return };
        self.delivered += 1;
        self.order.see(ts);
    }
}

fn run_one(mode: Mode, duration: Duration, progress: &Progress) -> Result<Row> {
    let cpus = crate::host::online_cpus()?;
    let options = BufferOptions {
        transport: Some(if mode == Mode::Ring { Transport::Ring } else { Transport::Perf }),
        size: BUFFER,
        ring_wakeup: WakeupPolicy::Adaptive,
        perf_wakeup: None,
        max_delay: MAX_DELAY,
    };
    let Loaded { bpf, source } = Loaded::start("lab compare", objects::LAB_LOAD, &["lab_burst"], Vec::new(), &options)?;
    let (buffer_bytes, counts) = (source.mapped_bytes(), source.totals_handle());
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let cpu_before = load::thread_cpu_ns();
    let (state, totals) = std::thread::scope(|s| -> Result<(State, Totals)> {
        let producers: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(index, &cpu)| {
                let stop = &stop;
                s.spawn(move || -> Result<u64> {
                    let _pin = load::pin_current_thread(cpu)?;
                    let seq_base = (index as u64) << 40;
                    // One record per system call, like a tracer's probe.
                    Ok(load::paced(Pace { per_sec: RATE_PER_CPU }, 1_000_000, stop, |sent, n| {
                        for i in 0..n {
                            load::trigger(1, 0, seq_base + sent + i, CLASS_BULK);
                        }
                    }))
                })
            })
            .collect();
        let stopping = load::StopOnDrop(&stop);
        let until = started + duration;
        let read = match mode {
            Mode::PerfMerged => read_ordered(source, until, progress, || drop(bpf)),
            Mode::Ring | Mode::Perf => read_polled(source, until, progress, || drop(bpf)),
        };
        drop(stopping);
        for p in producers {
            p.join().expect("producer thread")?;
        }
        read
    })?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_ns = load::thread_cpu_ns() - cpu_before;
    let late = if mode == Mode::PerfMerged { state.order.inversions } else { 0 };
    Ok(Row {
        mode,
        produced: totals.produced.unwrap_or(0),
        delivered: state.delivered,
        dropped: totals.dropped,
        buffer_bytes,
        inversions: state.order.inversions,
        max_inversion_ns: state.order.max_behind,
        late,
        wakeups: counts.read().wakeups,
        secs,
        cpu_ns,
    })
}

/// Reads `source` through a poller until `until`, then `detach`es and finishes it.
fn read_polled(
    mut source: EventSource,
    until: Instant,
    progress: &Progress,
    detach: impl FnOnce(),
) -> Result<(State, Totals)> {
    let state = RefCell::new(State::default());
    {
        let mut poller = Poller::new()?;
        poller.add(&mut source, 0, |item| state.borrow_mut().record(item))?;
        while Instant::now() < until {
            poller.poll(Some(MAX_DELAY))?;
            progress.tick();
        }
    }
    detach();
    let totals = source.finish(super::finish_deadline(), |item| state.borrow_mut().record(item))?;
    Ok((state.into_inner(), totals))
}

/// Reads `source` in timestamp order (an ordered stream's blocking pull) until `until`, then
/// `detach`es, takes what the stream held and finishes the source.
fn read_ordered(
    source: EventSource,
    until: Instant,
    progress: &Progress,
    detach: impl FnOnce(),
) -> Result<(State, Totals)> {
    let mut state = State::default();
    let stamps = |r: Record<'_>| Ok(LabEvent::decode(r.data).map(|e| e.ts_ns));
    let mut stream = EventStream::new(source, stamps)?.ordered(WINDOW, |ts: &Option<u64>| ts.unwrap_or(0));
    while Instant::now() < until {
        if let Some(Event::Record(ts)) = stream.next_blocking(Some(MAX_DELAY))? {
            state.stamp(ts);
        }
        progress.tick();
    }
    detach();
    let (mut sources, held) = stream.into_sources();
    for item in held {
        if let Event::Record(ts) = item? {
            state.stamp(ts);
        }
    }
    let totals = sources[0].finish(super::finish_deadline(), |item| state.record(item))?;
    Ok((state, totals))
}

fn report(rows: Vec<Row>, per_run: Duration) -> LabReport {
    let mut table = Table::new(&[
        "buffer",
        "events",
        "dropped",
        "produced",
        "buffer_bytes",
        "ordering_inversions",
        "max_inversion_us",
        "late",
        "events_per_sec",
        "wakeups_per_sec",
        "consumer_cpu_pct",
    ]);
    let mut accounts = Vec::new();
    for r in &rows {
        table.push(vec![
            Cell::text(r.mode.name()),
            Cell::Int(r.delivered),
            Cell::Int(r.dropped),
            Cell::Int(r.produced),
            Cell::Int(r.buffer_bytes),
            Cell::Int(r.inversions),
            Cell::Float(r.max_inversion_ns as f64 / 1e3, 1),
            Cell::Int(r.late),
            Cell::Float(r.delivered as f64 / r.secs, 0),
            Cell::Float(r.wakeups as f64 / r.secs, 0),
            Cell::Float(load::percent(r.cpu_ns as f64, r.secs * 1e9), 1),
        ]);
        accounts.push(Account {
            label: r.mode.name().into(),
            produced: r.produced,
            delivered: r.delivered,
            dropped: r.dropped,
            summarized: 0,
        });
    }
    let get = |m: Mode| rows.iter().find(|r| r.mode == m);
    let mut notes = Vec::new();
    if let (Some(ring), Some(perf)) = (get(Mode::Ring), get(Mode::Perf)) {
        notes.push(format!(
            "Memory: the ring maps {} for all CPUs; perf maps {} ({} per CPU): perf's memory grows with the CPU count.",
            human_bytes(ring.buffer_bytes),
            human_bytes(perf.buffer_bytes),
            human_bytes(BUFFER + crate::host::page_size() as u64)
        ));
        notes.push(format!(
            "Ordering: the ring delivered {} of {} records behind an earlier-delivered timestamp (producers on \
             different CPUs reserve and stamp in a slightly different order; at most {:.1} us behind); perf delivered \
             {} of {} out of order (one CPU's batch after another's, up to {:.1} us behind).",
            ring.inversions,
            ring.delivered,
            ring.max_inversion_ns as f64 / 1e3,
            perf.inversions,
            perf.delivered,
            perf.max_inversion_ns as f64 / 1e3
        ));
    }
    if let (Some(ring), Some(perf)) = (get(Mode::Ring), get(Mode::Perf)) {
        notes.push(format!(
            "Consumer CPU follows the wakeups: the ring's default (adaptive) wakeup fires whenever the consumer has \
             caught up ({:.0}/s here), perf's default fires when a quarter of a CPU's buffer is full ({:.0}/s).",
            ring.wakeups as f64 / ring.secs,
            perf.wakeups as f64 / perf.secs
        ));
    }
    if let Some(m) = get(Mode::PerfMerged) {
        notes.push(format!(
            "perf-merged: the per-CPU rings through an ordered bpfstream::stream::EventStream (by timestamp, reorder \
             window {} ms): {} inversions, {} records reported late.",
            WINDOW.as_millis(),
            m.inversions,
            m.late
        ));
    }
    let labels: Vec<String> = rows.iter().map(|r| r.mode.name().to_string()).collect();
    let inversions: Vec<f64> = rows.iter().map(|r| r.inversions as f64).collect();
    let memory: Vec<f64> = rows.iter().map(|r| r.buffer_bytes as f64 / 1024.0).collect();
    let rate: Vec<f64> = rows.iter().map(|r| r.delivered as f64 / r.secs / 1e3).collect();
    let cpu: Vec<f64> = rows.iter().map(|r| load::percent(r.cpu_ns as f64, r.secs * 1e9)).collect();
    let figure = move |path: &std::path::Path| {
        let panel = |title: &str, y: &str, values: &Vec<f64>, decimals| BarPanel {
            title: title.into(),
            y_label: y.into(),
            labels: labels.clone(),
            values: values.clone(),
            decimals,
        };
        plot::bars(
            path,
            "Ring vs perf buffer, same load on every CPU",
            &[
                panel("ordering inversions", "records", &inversions, 0),
                panel("memory mapped", "KiB", &memory, 0),
                panel("events delivered", "thousand / s", &rate, 1),
                panel("consumer CPU", "% of one CPU", &cpu, 1),
            ],
        )
    };
    LabReport {
        name: "compare",
        title: "Perf vs ring buffer (exercise 2)",
        setup: format!(
            "For {:.1} s per row, one thread pinned to each CPU makes {} system calls per second, each traced into \
             one record (timestamped in BPF). Ring: {} in all; perf: {} per CPU; polled every {} ms at most.",
            per_run.as_secs_f64(),
            RATE_PER_CPU,
            human_bytes(BUFFER),
            human_bytes(BUFFER),
            MAX_DELAY.as_millis()
        ),
        table,
        notes,
        figure: Box::new(figure),
        accounts,
    }
}
