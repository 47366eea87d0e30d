//! `lab multi-ring` (exercise 5): event classes in separate ring buffers, served by priority
//! from one [`Poller`]. The critical class (this process's failed openat() calls) has a small
//! ring of its own; the bulk class (a synthetic flood) overruns its ring. With separate rings
//! and priorities the critical ring loses nothing; the baseline puts both classes in one shared
//! ring, where the flood takes the critical events down with it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream::{Event, EventSource, Poller, Record, Transport, WakeupPolicy};
use bpfstream_core::load::BufferOptions;

use super::load::{self, LabEvent, Latencies, Loaded, Pace, CLASS_BULK, CLASS_CRITICAL};
use super::report::{Account, Cell, LabReport, Table};
use super::Progress;
use crate::objects;
use crate::plot::{self, BarPanel};
use crate::size::human_bytes;

const CRITICAL_RING: u64 = 16 << 10;
const BULK_RING: u64 = 256 << 10;
const CRITICAL_PRIORITY: i32 = 10;
const BULK_PRIORITY: i32 = 0;
/// Bulk records served per turn; the critical ring gets a turn between bulk batches.
/// Failed opens per second (the critical class).
const CRITICAL_RATE: f64 = 1_000.0;
/// The flood: bursts of this many bulk records, back to back.
const FLOOD_BURST: u64 = 256;
/// Consumer work per record.
const WORK_NS: u64 = 1_000;
const MAX_DELAY: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
struct ClassStats {
    delivered: u64,
    latencies: Latencies,
}

#[derive(Debug)]
struct RingRow {
    ring: &'static str,
    priority: Option<i32>,
    buffer_bytes: u64,
    produced: u64,
    delivered: u64,
    dropped: u64,
    latencies: Latencies,
}

#[derive(Debug)]
struct Setup {
    rows: Vec<RingRow>,
    /// The shared ring's own counters (BPF side), when there is one.
    shared_total: Option<Account>,
    warnings: Vec<String>,
}

fn options(size: u64) -> BufferOptions {
    BufferOptions {
        transport: Some(Transport::Ring),
        size,
        ring_wakeup: WakeupPolicy::Adaptive,
        perf_wakeup: None,
        max_delay: MAX_DELAY,
    }
}

pub fn run(duration: Duration, progress: &mut Progress) -> Result<LabReport> {
    let per_run = duration / 2;
    progress.run("separate rings, by priority", per_run);
    let separate = run_separate(per_run, progress)?;
    progress.run("one shared ring", per_run);
    let shared = run_shared(per_run, progress)?;
    Ok(report(separate, shared, per_run))
}

/// Handles a record of either class into `stats`: while running, with the consumer's work and
/// its latency; at teardown (after detaching, which takes a while) only counted.
fn record(item: Event<Record<'_>>, stats: &RefCell<[ClassStats; 2]>, running: bool) {
    let Event::Record(r) = item else { return };
    let Some(e) = LabEvent::decode(r.data) else { return };
    let latency = load::monotonic_ns().saturating_sub(e.ts_ns);
    let class = if e.class == CLASS_CRITICAL { 1 } else { 0 };
    {
        let mut stats = stats.borrow_mut();
        stats[class].delivered += 1;
        if running {
            stats[class].latencies.push(latency);
        }
    }
    if running {
        load::spin_ns(WORK_NS);
    }
}

/// Runs the flood and the critical load until `duration` passes, calling `serve` to consume.
/// Returns (bulk records triggered, failed opens made).
fn drive(duration: Duration, progress: &Progress, mut serve: impl FnMut() -> Result<()>) -> Result<(u64, u64)> {
    let cpus = load::cpus()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(u64, u64)> {
        let flood = s.spawn(|| -> Result<u64> {
            let _pin = load::pin_current_thread(cpus.load)?;
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                load::trigger(FLOOD_BURST, 0, seq, CLASS_BULK);
                seq += FLOOD_BURST;
            }
            Ok(seq)
        });
        let critical = s.spawn(|| {
            load::paced(Pace { per_sec: CRITICAL_RATE }, 1_000_000, &stop, |_, n| {
                for _ in 0..n {
                    load::failed_open();
                }
            })
        });
        let _pin = load::pin_current_thread(cpus.consumer)?;
        let started = Instant::now();
        let served = (|| -> Result<()> {
            while started.elapsed() < duration {
                serve()?;
                progress.tick();
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let bulk = flood.join().expect("flood thread")?;
        let opens = critical.join().expect("critical thread");
        served?;
        Ok((bulk, opens))
    })
}

fn run_separate(duration: Duration, progress: &Progress) -> Result<Setup> {
    let critical_opts = options(CRITICAL_RING);
    let bulk_opts = options(BULK_RING);
    let Loaded { bpf: critical_bpf, source: mut critical } =
        Loaded::start("lab multi-ring critical", objects::LAB_LOAD, &["lab_failed_open"], Vec::new(), &critical_opts)?;
    let Loaded { bpf: bulk_bpf, source: mut bulk } =
        Loaded::start("lab multi-ring bulk", objects::LAB_LOAD, &["lab_burst"], Vec::new(), &bulk_opts)?;
    let stats = RefCell::new([ClassStats::default(), ClassStats::default()]);
    let (bulk_sent, opens) = {
        let mut poller = Poller::new()?;
        poller.add(&mut critical, CRITICAL_PRIORITY, |item: Event<Record<'_>>| record(item, &stats, true))?;
        poller.add(&mut bulk, BULK_PRIORITY, |item: Event<Record<'_>>| record(item, &stats, true))?;
        drive(duration, progress, || poller.poll(Some(MAX_DELAY)).map(drop).map_err(Into::into))?
    };
    drop((critical_bpf, bulk_bpf));
    let critical_totals =
        critical.finish(super::finish_deadline(), |item: Event<Record<'_>>| record(item, &stats, false))?;
    let bulk_totals = bulk.finish(super::finish_deadline(), |item: Event<Record<'_>>| record(item, &stats, false))?;
    let [bulk_stats, critical_stats] = stats.into_inner();
    let mut warnings = Vec::new();
    let critical_produced = critical_totals.produced.unwrap_or(0);
    let bulk_produced = bulk_totals.produced.unwrap_or(0);
    if critical_produced != opens || bulk_produced != bulk_sent {
        warnings.push(format!(
            "warning: separate rings: BPF counted {critical_produced} critical and {bulk_produced} bulk events for \
             {opens} failed opens and {bulk_sent} bulk records triggered"
        ));
    }
    let row = |ring, priority, source: &EventSource, totals: bpfstream::Totals, stats: ClassStats| RingRow {
        ring,
        priority: Some(priority),
        buffer_bytes: source.mapped_bytes(),
        produced: totals.produced.unwrap_or(0),
        delivered: stats.delivered,
        dropped: totals.dropped,
        latencies: stats.latencies,
    };
    Ok(Setup {
        rows: vec![
            row("critical", CRITICAL_PRIORITY, &critical, critical_totals, critical_stats),
            row("bulk", BULK_PRIORITY, &bulk, bulk_totals, bulk_stats),
        ],
        shared_total: None,
        warnings,
    })
}

fn run_shared(duration: Duration, progress: &Progress) -> Result<Setup> {
    let opts = options(BULK_RING);
    let Loaded { bpf, mut source } = Loaded::start(
        "lab multi-ring shared",
        objects::LAB_LOAD,
        &["lab_burst", "lab_failed_open"],
        Vec::new(),
        &opts,
    )?;
    let stats = RefCell::new([ClassStats::default(), ClassStats::default()]);
    let (bulk_sent, opens) = drive(duration, progress, || {
        source.poll(Some(MAX_DELAY), |item: Event<Record<'_>>| record(item, &stats, true))?;
        Ok(())
    })?;
    drop(bpf);
    let totals = source.finish(super::finish_deadline(), |item: Event<Record<'_>>| record(item, &stats, false))?;
    let [bulk_stats, critical_stats] = stats.into_inner();
    let delivered = bulk_stats.delivered + critical_stats.delivered;
    let produced = totals.produced.unwrap_or(0);
    let mut warnings = Vec::new();
    if produced != bulk_sent + opens {
        warnings.push(format!(
            "warning: shared ring: BPF counted {produced} events for {} triggered; the per-class drops are estimates",
            bulk_sent + opens
        ));
    }
    // One ring counts drops for both classes together; per class, what was triggered and not
    // delivered was dropped (the total is checked against the ring's own counters).
    let row = |ring, triggered: u64, stats: ClassStats| RingRow {
        ring,
        priority: None,
        buffer_bytes: source.mapped_bytes(),
        produced: triggered,
        delivered: stats.delivered,
        dropped: triggered.saturating_sub(stats.delivered),
        latencies: stats.latencies,
    };
    Ok(Setup {
        rows: vec![row("shared: critical", opens, critical_stats), row("shared: bulk", bulk_sent, bulk_stats)],
        shared_total: Some(Account {
            label: "shared ring (BPF counters)".into(),
            produced,
            delivered,
            dropped: totals.dropped,
            summarized: 0,
        }),
        warnings,
    })
}

fn report(separate: Setup, shared: Setup, per_run: Duration) -> LabReport {
    let mut table = Table::new(&[
        "ring",
        "priority",
        "buffer_bytes",
        "produced",
        "delivered",
        "dropped",
        "latency_p50_us",
        "latency_p99_us",
        "latency_max_us",
    ]);
    let mut accounts: Vec<Account> = Vec::new();
    let mut notes = Vec::new();
    let mut figure_rows = Vec::new();
    let mut critical = None;
    for setup in [separate, shared] {
        notes.extend(setup.warnings);
        accounts.extend(setup.shared_total);
        for mut r in setup.rows {
            let p99 = r.latencies.percentile_us(99.0);
            let p50 = r.latencies.percentile_us(50.0);
            table.push(vec![
                Cell::text(r.ring),
                Cell::text(r.priority.map_or("-".to_string(), |p| p.to_string())),
                Cell::Int(r.buffer_bytes),
                Cell::Int(r.produced),
                Cell::Int(r.delivered),
                Cell::Int(r.dropped),
                Cell::Float(p50, 1),
                Cell::Float(p99, 1),
                Cell::Float(r.latencies.max_us(), 1),
            ]);
            accounts.push(Account {
                label: r.ring.into(),
                produced: r.produced,
                delivered: r.delivered,
                dropped: r.dropped,
                summarized: 0,
            });
            let loss = load::percent(r.dropped as f64, r.produced as f64);
            figure_rows.push((r.ring.to_string(), loss, p99 / 1e3));
            if r.ring == "critical" {
                critical = Some((r.dropped, r.produced, p99));
            }
        }
    }
    let loss_of = |ring: &str| figure_rows.iter().find(|r| r.0 == ring).map_or(0.0, |r| r.1);
    if let Some((dropped, produced, p99)) = critical {
        notes.push(format!(
            "Separate rings, critical served first: the critical ring lost {dropped} of {produced} events (p99 delivery \
             {p99:.0} us) while the bulk ring lost {:.1}% to the flood.",
            loss_of("bulk")
        ));
    }
    if let Some(shared) = figure_rows.iter().find(|r| r.0 == "shared: critical") {
        notes.push(format!("One shared ring under the same flood: {:.1}% of the critical events were lost.", shared.1));
    }
    let figure = move |path: &std::path::Path| {
        let labels: Vec<String> = figure_rows.iter().map(|r| r.0.clone()).collect();
        plot::bars(
            path,
            "Critical and bulk events under a bulk flood: separate rings by priority vs one shared ring",
            &[
                BarPanel {
                    title: "events lost".into(),
                    y_label: "% of produced".into(),
                    labels: labels.clone(),
                    values: figure_rows.iter().map(|r| r.1).collect(),
                    decimals: 1,
                },
                BarPanel {
                    title: "delivery latency p99".into(),
                    y_label: "ms".into(),
                    labels,
                    values: figure_rows.iter().map(|r| r.2).collect(),
                    decimals: 2,
                },
            ],
        )
    };
    LabReport {
        name: "multi-ring",
        title: "Multiple rings with priorities (exercise 5)",
        setup: format!(
            "For {:.1} s per setup: a flood of bulk records (bursts of {FLOOD_BURST}, back to back, one pinned thread) \
             and {CRITICAL_RATE} failed openat() calls per second (the critical class); the consumer spends {} us per \
             record. Separate rings: critical {} (priority {CRITICAL_PRIORITY}, served whole), bulk {} (priority \
             {BULK_PRIORITY}, 1024 records per turn), one Poller. Shared: both classes in one {} ring. Latency: \
             bpf_ktime_get_ns() to delivery, for records delivered while running (not those drained at teardown). In the shared ring a class's drops are what was \
             triggered and not delivered; the ring's own counters check their total.",
            per_run.as_secs_f64(),
            WORK_NS / 1000,
            human_bytes(CRITICAL_RING),
            human_bytes(BULK_RING),
            human_bytes(BULK_RING)
        ),
        table,
        notes,
        figure: Box::new(figure),
        accounts,
    }
}
