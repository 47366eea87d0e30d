//! `lab compare` (exercise 2): the same tracer-like load (one record per system call) from a
//! thread on every CPU, through a ring buffer, a perf buffer, and a perf buffer whose per-CPU
//! streams pass through the library's ordered merge. Compared: memory mapped, ordering,
//! throughput and consumer CPU.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream::merge::{Merged, OrderedMerge};
use bpfstream::{Item, Poller, Transport, WakeupPolicy};

use super::load::{self, LabEvent, Loaded, Pace, CLASS_BULK};
use super::report::{Account, Cell, LabReport, Table};
use super::Progress;
use crate::lifecycle::BufferOptions;
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

/// The merge of per-CPU streams by timestamp: records are (cpu, ts_ns).
type Merge = OrderedMerge<(u32, u64), fn(&(u32, u64)) -> u64>;

/// What the consumer keeps while it reads.
struct State {
    merge: Option<Merge>,
    order: Order,
    delivered: u64,
}

impl State {
    fn record(&mut self, item: Item<'_>) {
        let Item::Record(record) = item else { return };
        let Some(e) = LabEvent::decode(record.data) else { return };
        self.delivered += 1;
        match &mut self.merge {
            Some(merge) => merge.push(e.cpu as usize, (e.cpu, e.ts_ns)),
            None => self.order.see(e.ts_ns),
        }
    }

    /// Hands what the merge has released to the ordering check.
    fn drain_merge(&mut self) {
        let Some(merge) = &mut self.merge else { return };
        while let Some(m) = merge.pop() {
            match m {
                Merged::InOrder((_, ts)) | Merged::Late { item: (_, ts), .. } => self.order.see(ts),
            }
        }
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
    let Loaded { bpf, mut source } =
        Loaded::start("lab compare", objects::LAB_LOAD, &["lab_burst"], Vec::new(), &options)?;
    let key: fn(&(u32, u64)) -> u64 = |e| e.1;
    let merge = || OrderedMerge::new(cpus.len(), key).with_span(WINDOW.as_nanos() as u64).with_sorted_streams();
    let state =
        RefCell::new(State { merge: (mode == Mode::PerfMerged).then(merge), order: Order::default(), delivered: 0 });
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let cpu_before = load::thread_cpu_ns();
    let mut wakeups = 0;
    std::thread::scope(|s| -> Result<()> {
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
        let _stop = load::StopOnDrop(&stop);
        let mut poller = Poller::new()?;
        poller.add(&mut source, |item: Item<'_>| state.borrow_mut().record(item))?;
        while started.elapsed() < duration {
            poller.poll(Some(MAX_DELAY))?;
            let mut state = state.borrow_mut();
            if let Some(merge) = &mut state.merge {
                merge.advance(load::monotonic_ns());
            }
            state.drain_merge();
            progress.tick();
        }
        wakeups = poller.stats().wakeups;
        drop(_stop);
        for p in producers {
            p.join().expect("producer thread")?;
        }
        Ok(())
    })?;
    let buffer_bytes = source.buffer_bytes();
    drop(bpf);
    let totals = source.finish(super::finish_deadline(), |item: Item<'_>| state.borrow_mut().record(item))?;
    let mut state = state.into_inner();
    if let Some(merge) = &mut state.merge {
        merge.finish();
    }
    state.drain_merge();
    let secs = started.elapsed().as_secs_f64();
    let cpu_ns = load::thread_cpu_ns() - cpu_before;
    Ok(Row {
        mode,
        produced: totals.produced.unwrap_or(0),
        delivered: state.delivered,
        dropped: totals.dropped,
        buffer_bytes,
        inversions: state.order.inversions,
        max_inversion_ns: state.order.max_behind,
        late: state.merge.map_or(0, |m| m.stats().late),
        wakeups,
        secs,
        cpu_ns,
    })
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
            "perf-merged: the per-CPU streams through bpfstream::merge::OrderedMerge (k-way by timestamp, reorder \
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
