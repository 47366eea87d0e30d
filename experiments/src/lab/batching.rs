//! `lab batching` (exercise 6): kernel-side batching of wakeups. The BPF side decides per record
//! whether to wake the consumer (`bpfstream.h`'s wakeup policies, set through
//! [`WakeupPolicy`]); the consumer's poll timeout is the delay bound that makes every policy
//! safe: no record waits longer than it, even when the load stops and no wakeup ever comes.
//! Each run ends with exactly that case: a silence, then a tail of a few records that trips no
//! count or byte threshold, whose delivery latency is measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream::{Event, Poller, Record, Transport, WakeupPolicy};
use bpfstream_core::load::BufferOptions;

use super::load::{self, LabEvent, Latencies, Loaded, Pace, CLASS_BULK};
use super::report::{Account, Cell, LabReport, Table};
use super::Progress;
use crate::objects;
use crate::plot::{self, BarPanel};
use crate::size::human_bytes;

/// Records per second (one per system call, paced).
const RATE: f64 = 100_000.0;
/// Large enough that no policy drops: the experiment is about wakeups and delay.
const BUFFER: u64 = 4 << 20;
/// The delay bound: the consumer's poll timeout under every policy.
const BOUND: Duration = Duration::from_millis(10);
/// Records in the tail sent after the load stops: fewer than any count or byte threshold.
const TAIL: u64 = 5;
/// Quiet time before the tail, so the consumer is asleep when it comes.
const SILENCE: Duration = Duration::from_millis(50);
/// How long to wait for the tail before giving up on it (then the final drain delivers it and
/// its latency shows the bound was broken).
const TAIL_WAIT: Duration = Duration::from_secs(1);
/// Tail records are tagged with this bit in their sequence number.
const TAIL_TAG: u64 = 1 << 62;

fn policies() -> [(&'static str, WakeupPolicy); 5] {
    [
        ("every-record", WakeupPolicy::EveryRecord),
        ("every-64-records", WakeupPolicy::EveryRecords(64)),
        ("16KiB-waiting", WakeupPolicy::Bytes(16 << 10)),
        ("poll-10ms", WakeupPolicy::Never),
        ("adaptive", WakeupPolicy::Adaptive),
    ]
}

/// What the figure shows of a row.
#[derive(Debug)]
struct FigureRow {
    policy: &'static str,
    wakeups: f64,
    p50: f64,
    p99: f64,
    cpu: f64,
}

#[derive(Debug)]
struct Row {
    policy: &'static str,
    produced: u64,
    delivered: u64,
    dropped: u64,
    secs: f64,
    wakeups: u64,
    latencies: Latencies,
    tail: Latencies,
    cpu_ns: u64,
}

pub fn run(duration: Duration, progress: &mut Progress) -> Result<LabReport> {
    let per_run = duration / policies().len() as u32;
    let mut rows = Vec::new();
    for (name, policy) in policies() {
        progress.run(name, per_run);
        rows.push(run_one(name, policy, per_run, progress)?);
    }
    Ok(report(rows, per_run))
}

fn run_one(name: &'static str, policy: WakeupPolicy, duration: Duration, progress: &Progress) -> Result<Row> {
    let cpus = load::cpus()?;
    let options = BufferOptions {
        transport: Some(Transport::Ring),
        size: BUFFER,
        ring_wakeup: policy,
        perf_wakeup: None,
        max_delay: BOUND,
    };
    let Loaded { bpf, mut source } =
        Loaded::start("lab batching", objects::LAB_LOAD, &["lab_burst"], Vec::new(), &options)?;
    let stop = AtomicBool::new(false);
    let tail_sent = AtomicU64::new(0);
    let mut latencies = Latencies::default();
    let mut tail = Latencies::default();
    let mut delivered = 0u64;
    let tail_seen = std::cell::Cell::new(0u64);
    let mut record = |item: Event<Record<'_>>, latencies: &mut Latencies, tail: &mut Latencies| {
        let Event::Record(r) = item else { return };
        let Some(e) = LabEvent::decode(r.data) else { return };
        let latency = load::monotonic_ns().saturating_sub(e.ts_ns);
        delivered += 1;
        if e.seq & TAIL_TAG != 0 {
            tail.push(latency);
            tail_seen.set(tail_seen.get() + 1);
        } else {
            latencies.push(latency);
        }
    };
    let started = Instant::now();
    let cpu_before = load::thread_cpu_ns();
    let mut wakeups = 0;
    std::thread::scope(|s| -> Result<()> {
        // Registered while the ring is empty: epoll reports it readable only on a wakeup (or,
        // being level-triggered, when data waits right after a wakeup was served).
        let stop_guard = load::StopOnDrop(&stop);
        let _pin = load::pin_current_thread(cpus.consumer)?;
        let counts = source.totals_handle();
        let mut poller = Poller::new()?;
        poller.add(&mut source, 0, |item: Event<Record<'_>>| record(item, &mut latencies, &mut tail))?;
        let producer = s.spawn(|| -> Result<()> {
            let _pin = load::pin_current_thread(cpus.load)?;
            load::paced(Pace { per_sec: RATE }, 1_000_000, &stop, |sent, n| {
                for i in 0..n {
                    load::trigger(1, 0, sent + i, CLASS_BULK);
                }
            });
            std::thread::sleep(SILENCE);
            load::trigger(TAIL, 0, TAIL_TAG, CLASS_BULK);
            tail_sent.store(TAIL, Ordering::Release);
            Ok(())
        });
        while started.elapsed() < duration {
            poller.poll(Some(BOUND))?;
            progress.tick();
        }
        drop(stop_guard);
        // Serve the silence and the tail, waiting at most TAIL_WAIT for it.
        let tail_deadline = Instant::now() + SILENCE + TAIL_WAIT;
        loop {
            poller.poll(Some(BOUND))?;
            let sent = tail_sent.load(Ordering::Acquire);
            if (sent > 0 && tail_seen.get() >= sent) || Instant::now() > tail_deadline {
                break;
            }
        }
        wakeups = counts.read().wakeups;
        drop(poller);
        producer.join().expect("producer thread")
    })?;
    let elapsed = started.elapsed();
    let cpu_ns = load::thread_cpu_ns() - cpu_before;
    drop(bpf);
    let totals =
        source.finish(super::finish_deadline(), |item: Event<Record<'_>>| record(item, &mut latencies, &mut tail))?;
    Ok(Row {
        policy: name,
        produced: totals.produced.unwrap_or(0),
        delivered,
        dropped: totals.dropped,
        secs: elapsed.as_secs_f64(),
        wakeups,
        latencies,
        tail,
        cpu_ns,
    })
}

fn report(mut rows: Vec<Row>, per_run: Duration) -> LabReport {
    let mut table = Table::new(&[
        "policy",
        "events_per_sec",
        "wakeups_per_sec",
        "latency_p50_us",
        "latency_p99_us",
        "latency_max_us",
        "tail_latency_max_us",
        "consumer_cpu_pct",
        "produced",
        "delivered",
        "dropped",
    ]);
    let mut accounts = Vec::new();
    let mut figure_rows = Vec::new();
    for r in &mut rows {
        let p50 = r.latencies.percentile_us(50.0);
        let p99 = r.latencies.percentile_us(99.0);
        let cpu = load::percent(r.cpu_ns as f64, r.secs * 1e9);
        let wakeups = r.wakeups as f64 / r.secs;
        table.push(vec![
            Cell::text(r.policy),
            Cell::Float(r.delivered as f64 / r.secs, 0),
            Cell::Float(wakeups, 0),
            Cell::Float(p50, 1),
            Cell::Float(p99, 1),
            Cell::Float(r.latencies.max_us(), 1),
            Cell::Float(r.tail.max_us(), 1),
            Cell::Float(cpu, 1),
            Cell::Int(r.produced),
            Cell::Int(r.delivered),
            Cell::Int(r.dropped),
        ]);
        accounts.push(Account {
            label: r.policy.into(),
            produced: r.produced,
            delivered: r.delivered,
            dropped: r.dropped,
            summarized: 0,
        });
        figure_rows.push(FigureRow { policy: r.policy, wakeups, p50, p99, cpu });
    }
    let bound_us = BOUND.as_micros() as f64;
    let mut notes = vec![format!(
        "Delay bound {} ms (the poll timeout, the same under every policy). After the load stopped, a tail of \
         {TAIL} records that trips no count or byte threshold was delivered within {:.1} ms at worst.",
        BOUND.as_millis(),
        rows.iter().map(|r| r.tail.max_us()).fold(0.0, f64::max) / 1e3
    )];
    for r in &rows {
        if r.tail.len() as u64 != TAIL {
            notes.push(format!("warning: {}: {} of {TAIL} tail records seen", r.policy, r.tail.len()));
        } else if r.tail.max_us() > bound_us + 50_000.0 {
            notes.push(format!(
                "warning: {}: a tail record waited {:.1} ms, beyond the {} ms bound (a busy machine?)",
                r.policy,
                r.tail.max_us() / 1e3,
                BOUND.as_millis()
            ));
        }
    }
    notes.push(
        "Fewer wakeups cost latency and save consumer CPU: every-record wakes for each record; every-64 and 16KiB \
         batch in the kernel; poll-10ms never wakes and relies on the timeout alone."
            .into(),
    );
    let figure = move |path: &std::path::Path| {
        let labels: Vec<String> = figure_rows.iter().map(|r| r.policy.to_string()).collect();
        let panel = |title: &str, y: &str, f: fn(&FigureRow) -> f64, decimals| BarPanel {
            title: title.into(),
            y_label: y.into(),
            labels: labels.clone(),
            values: figure_rows.iter().map(f).collect(),
            decimals,
        };
        plot::bars(
            path,
            &format!("Wakeup policies at {} records/s (delay bound {} ms)", RATE, BOUND.as_millis()),
            &[
                panel("wakeups", "per second", |r| r.wakeups, 0),
                panel("latency p50", "us", |r| r.p50, 0),
                panel("latency p99", "us", |r| r.p99, 0),
                panel("consumer CPU", "% of one CPU", |r| r.cpu, 1),
            ],
        )
    };
    LabReport {
        name: "batching",
        title: "Kernel-side batching with a delay bound (exercise 6)",
        setup: format!(
            "For {:.1} s per policy, one thread pinned to one CPU makes {RATE} system calls per second, each traced \
             into one record; the consumer (pinned to another CPU) polls a {} ring with a {} ms timeout. Latency: \
             bpf_ktime_get_ns() in BPF to delivery (CLOCK_MONOTONIC). Wakeups: polls that returned because the \
             ring was readable rather than by the timeout.",
            per_run.as_secs_f64(),
            human_bytes(BUFFER),
            BOUND.as_millis()
        ),
        table,
        notes,
        figure: Box::new(figure),
        accounts,
    }
}
