//! `lab backpressure`: a source that overruns its consumer, without and with graceful
//! degradation (`bpf/include/bpfstream_degrade.h` + its userspace half, [`super::degrade`]).
//! Each run has three phases: calm, overload, calm. Without the policy the overload drops what
//! does not fit; with it the BPF side summarizes per key past the high watermark (sending 1 in
//! N as a sample) and returns to full fidelity below the low one, so nothing is dropped and the
//! per-key counts stay exact.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream::{Event, Record, Transport, WakeupPolicy};
use bpfstream_core::load::{BufferOptions, Global};

use super::degrade::{DegradeMaps, DegradePolicy, Notice, PolicyTotals};
use super::load::{self, LabEvent, Loaded, Pace, CLASS_BULK};
use super::report::{Account, Cell, LabReport, Table};
use super::Progress;
use crate::counters::DropCounters;
use crate::objects;
use crate::plot::{self, LinePanel, Series};
use crate::size::human_bytes;

const BUFFER: u64 = 256 << 10;
/// Consumer work per record: it drains at most ~500k records/s.
const WORK_NS: u64 = 2_000;
/// Calm phases: well within the consumer's reach.
const CALM_RATE: f64 = 50_000.0;
/// Overload: bursts of this many records, back to back.
const OVERLOAD_BURST: u64 = 256;
/// Aggregation keys (think: syscall numbers), cycled through by the load.
const KEYS: u64 = 16;
const HIGH: f64 = 0.25;
const LOW: f64 = 0.05;
const SAMPLE_EVERY: u32 = 256;
const MAX_DELAY: Duration = Duration::from_millis(10);
/// Time-series resolution of the figure.
const BUCKET: Duration = Duration::from_millis(100);
const PHASES: [&str; 3] = ["calm", "overload", "calm-again"];

/// Counters read at a phase boundary by the producer, right after its last trigger of the phase
/// (the triggers are synchronous, so nothing of the phase is still being counted).
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    t_ns: u64,
    produced: u64,
    dropped: u64,
    summarized: u64,
}

#[derive(Debug)]
struct Run {
    policy_on: bool,
    /// Phase boundaries: before phase 0, after each phase.
    snapshots: Vec<Snapshot>,
    delivered: [u64; 3],
    generated: BTreeMap<u64, u64>,
    delivered_by_key: BTreeMap<u64, u64>,
    summary: BTreeMap<u64, u64>,
    notices: Vec<Notice>,
    notices_dropped: u64,
    /// Under the policy: `delivered + dropped + summarized == produced`.
    totals: PolicyTotals,
    /// (seconds, delivered/s, dropped/s, summarized/s) per bucket.
    series: Vec<(f64, f64, f64, f64)>,
    start_ns: u64,
}

pub fn run(duration: Duration, progress: &mut Progress) -> Result<LabReport> {
    let per_run = duration / 2;
    let mut runs = Vec::new();
    for policy_on in [false, true] {
        progress.run(if policy_on { "degrade policy on" } else { "policy off" }, per_run);
        runs.push(run_one(policy_on, per_run, progress)?);
    }
    Ok(report(runs, per_run))
}

fn run_one(policy_on: bool, duration: Duration, progress: &Progress) -> Result<Run> {
    let cpus = load::cpus()?;
    let policy = if policy_on { DegradePolicy::for_ring(BUFFER, HIGH, LOW, SAMPLE_EVERY)? } else { DegradePolicy::OFF };
    let options = BufferOptions {
        transport: Some(Transport::Ring),
        size: BUFFER,
        ring_wakeup: WakeupPolicy::Adaptive,
        perf_wakeup: None,
        max_delay: MAX_DELAY,
    };
    let globals = policy.globals().into_iter().map(|(name, bytes)| Global { name, bytes }).collect();
    let Loaded { mut bpf, mut source } =
        Loaded::start("lab backpressure", objects::LAB_DEGRADE, &["lab_degrade_burst"], globals, &options)?;
    policy.check(&source)?;
    let maps = DegradeMaps::take(&mut bpf)?;
    let counters = DropCounters::open(&bpf)?;
    let stop = AtomicBool::new(false);
    let consumer_ready = AtomicBool::new(false);
    let start_ns = load::monotonic_ns();
    let phase_len = [duration / 4, duration / 2, duration / 4];

    let mut delivered = [0u64; 3];
    let mut delivered_by_key = BTreeMap::new();
    let mut notices = Vec::new();
    let mut buckets: Vec<[f64; 3]> = Vec::new();
    let bucket_of = |ts: u64| (ts.saturating_sub(start_ns) / BUCKET.as_nanos() as u64) as usize;
    let mut handle = |item: Event<Record<'_>>, work: bool, buckets: &mut Vec<[f64; 3]>| {
        let Event::Record(r) = item else { return };
        if let Some(n) = Notice::parse(r.data) {
            notices.push(n);
            return;
        }
        let Some(e) = LabEvent::decode(r.data) else { return };
        delivered[(e.seq >> 48) as usize % 3] += 1;
        *delivered_by_key.entry(u64::from(e.key)).or_insert(0) += 1;
        let b = bucket_of(e.ts_ns);
        if buckets.len() <= b {
            buckets.resize(b + 1, [0.0; 3]);
        }
        buckets[b][0] += 1.0;
        if work {
            load::spin_ns(WORK_NS);
        }
    };

    let (snapshots, generated) = std::thread::scope(|s| -> Result<(Vec<Snapshot>, BTreeMap<u64, u64>)> {
        let producer = s.spawn(|| -> Result<(Vec<Snapshot>, BTreeMap<u64, u64>)> {
            let _pin = load::pin_current_thread(cpus.load)?;
            // Start when the consumer is in place, or the calm phase would begin with a backlog.
            while !consumer_ready.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let snapshot = || -> Result<Snapshot> {
                let c = counters.total()?;
                let d = maps.counters()?;
                Ok(Snapshot {
                    t_ns: load::monotonic_ns(),
                    produced: c.produced,
                    dropped: c.dropped,
                    summarized: d.summarized,
                })
            };
            let mut generated = BTreeMap::new();
            let mut snapshots = vec![snapshot()?];
            let mut triggers = 0u64;
            let mut send = |phase: usize, n: u64, seq: u64| {
                let key = triggers % KEYS;
                triggers += 1;
                load::trigger(n, key, ((phase as u64) << 48) | seq, CLASS_BULK);
                *generated.entry(key).or_insert(0) += n;
            };
            for (phase, len) in phase_len.iter().enumerate() {
                let until = Instant::now() + *len;
                if phase == 1 {
                    let mut seq = 0;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        send(phase, OVERLOAD_BURST, seq);
                        seq += OVERLOAD_BURST;
                    }
                } else {
                    let phase_stop = AtomicBool::new(false);
                    std::thread::scope(|inner| {
                        inner.spawn(|| {
                            std::thread::sleep(*len);
                            phase_stop.store(true, Ordering::Relaxed);
                        });
                        load::paced(Pace { per_sec: CALM_RATE }, 16, &phase_stop, |sent, n| send(phase, n, sent));
                    });
                }
                snapshots.push(snapshot()?);
            }
            Ok((snapshots, generated))
        });
        let pinned = load::pin_current_thread(cpus.consumer);
        // Even if pinning failed: the producer must not wait for a consumer that bailed out.
        consumer_ready.store(true, Ordering::Release);
        let _pin = pinned?;
        let mut next_sample = Instant::now() + BUCKET;
        let mut last = (0u64, 0u64, load::monotonic_ns());
        while !producer.is_finished() {
            source.poll(Some(MAX_DELAY), |item: Event<Record<'_>>| handle(item, true, &mut buckets))?;
            if Instant::now() >= next_sample {
                next_sample += BUCKET;
                let dropped = counters.total()?.dropped;
                let summarized = maps.counters()?.summarized;
                let now = load::monotonic_ns();
                // The counts happened since the last sample: put them in the middle of it.
                let b = bucket_of(last.2 / 2 + now / 2);
                if buckets.len() <= b {
                    buckets.resize(b + 1, [0.0; 3]);
                }
                buckets[b][1] += (dropped - last.0) as f64;
                buckets[b][2] += (summarized - last.1) as f64;
                last = (dropped, summarized, now);
            }
            progress.tick();
        }
        stop.store(true, Ordering::Relaxed);
        producer.join().expect("producer thread")
    })?;
    drop(bpf);
    let totals =
        source.finish(super::finish_deadline(), |item: Event<Record<'_>>| handle(item, false, &mut buckets))?;
    let counters = maps.counters()?;
    let summary = maps.summary()?;
    let notices_delivered = notices.len() as u64;
    let secs = BUCKET.as_secs_f64();
    let series = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| ((i as f64 + 0.5) * secs, b[0] / secs, b[1] / secs, b[2] / secs))
        .collect();
    Ok(Run {
        policy_on,
        snapshots,
        delivered,
        generated,
        delivered_by_key,
        summary,
        notices,
        notices_dropped: counters.notices_dropped,
        totals: counters.apply(&totals, notices_delivered),
        series,
        start_ns,
    })
}

impl Run {
    fn name(&self) -> &'static str {
        if self.policy_on {
            "on"
        } else {
            "off"
        }
    }

    /// Intervals (ns) spent degraded, from the notices.
    fn degraded_intervals(&self, end_ns: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut since = None;
        let mut notices = self.notices.clone();
        notices.sort_by_key(|n| n.ts_ns);
        for n in notices {
            match (n.degraded, since) {
                (true, None) => since = Some(n.ts_ns),
                (false, Some(t)) => {
                    out.push((t, n.ts_ns));
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(t) = since {
            out.push((t, end_ns));
        }
        out
    }

    /// Fraction of [a, b) spent degraded.
    fn degraded_fraction(&self, a: u64, b: u64, end_ns: u64) -> f64 {
        let overlap: u64 =
            self.degraded_intervals(end_ns).iter().map(|&(s, e)| e.min(b).saturating_sub(s.max(a))).sum();
        overlap as f64 / (b - a).max(1) as f64
    }

    /// Whether the per-key counts add up exactly: delivered + summarized == generated, key by key.
    fn summary_exact(&self) -> bool {
        self.totals.dropped == 0
            && self.generated.iter().all(|(k, &n)| {
                self.delivered_by_key.get(k).copied().unwrap_or(0) + self.summary.get(k).copied().unwrap_or(0) == n
            })
            && self.summary.values().sum::<u64>() == self.totals.summarized
    }
}

fn report(runs: Vec<Run>, per_run: Duration) -> LabReport {
    let mut table = Table::new(&[
        "policy",
        "phase",
        "produced",
        "delivered",
        "dropped",
        "summarized",
        "degraded",
        "degraded_pct",
        "summary_exact",
    ]);
    let mut accounts = Vec::new();
    let mut notes = Vec::new();
    for run in &runs {
        let end_ns = run.snapshots.last().map_or(0, |s| s.t_ns);
        for (p, name) in PHASES.iter().enumerate() {
            let (a, b) = (run.snapshots[p], run.snapshots[p + 1]);
            let summarized = b.summarized - a.summarized;
            let produced = b.produced - a.produced + summarized;
            let dropped = b.dropped - a.dropped;
            let fraction = run.degraded_fraction(a.t_ns, b.t_ns, end_ns);
            table.push(vec![
                Cell::text(run.name()),
                Cell::text(*name),
                Cell::Int(produced),
                Cell::Int(run.delivered[p]),
                Cell::Int(dropped),
                Cell::Int(summarized),
                Cell::Bool(fraction > 0.0),
                Cell::Float(100.0 * fraction, 1),
                Cell::text("-"),
            ]);
            accounts.push(Account {
                label: format!("policy {} phase {name}", run.name()),
                produced,
                delivered: run.delivered[p],
                dropped,
                summarized,
            });
        }
        let t = run.totals;
        let produced = t.produced;
        let generated: u64 = run.generated.values().sum();
        let exact = run.summary_exact();
        table.push(vec![
            Cell::text(run.name()),
            Cell::text("total"),
            Cell::Int(produced),
            Cell::Int(t.delivered),
            Cell::Int(t.dropped),
            Cell::Int(t.summarized),
            Cell::Bool(!run.notices.is_empty()),
            Cell::Float(100.0 * run.degraded_fraction(run.snapshots[0].t_ns, end_ns, end_ns), 1),
            Cell::text(if run.policy_on {
                if exact {
                    "yes"
                } else {
                    "no"
                }
            } else {
                "-"
            }),
        ]);
        accounts.push(Account {
            label: format!("policy {} total", run.name()),
            produced,
            delivered: t.delivered,
            dropped: t.dropped,
            summarized: t.summarized,
        });
        if produced != generated {
            notes.push(format!(
                "warning: policy {}: the BPF side counted {} events for {generated} triggered",
                run.name(),
                produced
            ));
        }
        if run.policy_on {
            let switches = run.notices.iter().filter(|n| n.degraded).count();
            notes.push(format!(
                "With the policy: {} dropped of {} ({:.3}%); {} summarized in {} keys; {switches} switches to degraded \
                 mode announced ({} notices lost); per-key counts (delivered + summarized = generated) {}.",
                t.dropped,
                produced,
                load::percent(t.dropped as f64, produced as f64),
                t.summarized,
                run.summary.len(),
                run.notices_dropped,
                if exact { "exact for every key" } else { "NOT exact" }
            ));
        } else {
            notes.push(format!(
                "Without the policy: {} dropped of {} ({:.1}%), and which keys they belonged to is unknown.",
                t.dropped,
                produced,
                load::percent(t.dropped as f64, produced as f64)
            ));
        }
    }
    let mut panels: Vec<LinePanel> = runs
        .iter()
        .map(|run| {
            let end_ns = run.snapshots.last().map_or(0, |s| s.t_ns);
            let secs = |ns: u64| ns.saturating_sub(run.start_ns) as f64 / 1e9;
            // Merge switches closer than a bucket so the shading stays readable.
            let mut shaded: Vec<(f64, f64)> = Vec::new();
            for (a, b) in run.degraded_intervals(end_ns) {
                match shaded.last_mut() {
                    Some(last) if secs(a) - last.1 < BUCKET.as_secs_f64() => last.1 = secs(b),
                    _ => shaded.push((secs(a), secs(b))),
                }
            }
            let pick = |f: fn(&(f64, f64, f64, f64)) -> f64| run.series.iter().map(|p| (p.0, f(p) / 1e3)).collect();
            LinePanel {
                title: format!("degrade policy {}", run.name()),
                x_label: "seconds".into(),
                y_label: "thousand events / s".into(),
                series: vec![
                    Series { name: "delivered".into(), points: pick(|p| p.1) },
                    Series { name: "dropped".into(), points: pick(|p| p.2) },
                    Series { name: "summarized".into(), points: pick(|p| p.3) },
                ],
                shaded,
                shaded_name: "degraded".into(),
                ..Default::default()
            }
        })
        .collect();
    // Delivered is small next to the overload's rates: its own panel, both runs.
    panels.push(LinePanel {
        title: "delivered to the consumer (by production time)".into(),
        x_label: "seconds".into(),
        y_label: "thousand events / s".into(),
        series: runs
            .iter()
            .map(|run| Series {
                name: format!("policy {}", run.name()),
                points: run.series.iter().map(|p| (p.0, p.1 / 1e3)).collect(),
            })
            .collect(),
        ..Default::default()
    });
    let figure = move |path: &std::path::Path| {
        plot::lines(path, "Backpressure: calm, overload, calm; without and with graceful degradation", &panels)
    };
    LabReport {
        name: "backpressure",
        title: "Backpressure and graceful degradation (exercise 3)",
        setup: format!(
            "Two runs of {:.1} s: calm ({} events/s), overload (bursts of {OVERLOAD_BURST} back to back), calm again; \
             {KEYS} keys; {} ring; the consumer spends {} us per record. Policy on: degrade at {:.0}% full, recover \
             at {:.0}%, sample 1 in {SAMPLE_EVERY} while degraded.",
            per_run.as_secs_f64(),
            CALM_RATE,
            human_bytes(BUFFER),
            WORK_NS / 1000,
            HIGH * 100.0,
            LOW * 100.0
        ),
        table,
        notes,
        figure: Box::new(figure),
        accounts,
    }
}
