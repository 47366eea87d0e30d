//! `lab sizing` (exercise 1): a fixed bursty load against ring and perf buffers of growing
//! size. A burst is written by one BPF program run (bpf_loop), far faster than any consumer
//! drains; between bursts the consumer (with a fixed per-record cost) has time to empty the
//! buffer. So what a burst loses is what did not fit: the buffer size decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream::{Event, Record, Transport, WakeupPolicy};
use bpfstream_core::load::BufferOptions;

use super::load::{self, Loaded, CLASS_BULK, RECORD_BYTES};
use super::report::{Account, Cell, LabReport, Table};
use super::Progress;
use crate::objects;
use crate::plot::{self, LinePanel, Series};
use crate::size::human_bytes;

/// Records per burst.
const BURST: u64 = 2048;
/// Time between bursts.
const PERIOD: Duration = Duration::from_millis(20);
/// Consumer work per record: 2048 records take ~4 ms, well inside the period.
const WORK_NS: u64 = 2_000;
/// Buffer sizes (ring: total; perf: per CPU), from the smallest allowed (one page) upwards.
const SIZES: [u64; 6] = [4 << 10, 16 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20];
/// Bytes a record takes in each buffer: ring: 8-byte header + payload, padded to 8; perf:
/// 8-byte perf_event_header + u32 size + payload, padded to 8.
const RING_RECORD: u64 = (8 + RECORD_BYTES).next_multiple_of(8);
const PERF_RECORD: u64 = (8 + 4 + RECORD_BYTES).next_multiple_of(8);

struct Row {
    transport: Transport,
    size: u64,
    mapped: u64,
    produced: u64,
    delivered: u64,
    dropped: u64,
    bursts: u64,
}

impl Row {
    fn loss_rate(&self) -> f64 {
        if self.produced == 0 {
            0.0
        } else {
            self.dropped as f64 / self.produced as f64
        }
    }
}

pub fn run(duration: Duration, progress: &mut Progress) -> Result<LabReport> {
    let cpus = load::cpus()?;
    let per_run = duration / (2 * SIZES.len() as u32);
    let bursts = (per_run.as_nanos() / PERIOD.as_nanos()).max(2) as u64;
    let mut rows = Vec::new();
    for transport in [Transport::Ring, Transport::Perf] {
        for size in SIZES {
            progress.run(format!("{transport} {}", human_bytes(size)), per_run);
            rows.push(run_one(transport, size, bursts, cpus, progress)?);
        }
    }
    Ok(report(rows, bursts))
}

fn run_one(transport: Transport, size: u64, bursts: u64, cpus: load::Cpus, progress: &Progress) -> Result<Row> {
    let options = BufferOptions {
        transport: Some(transport),
        size,
        ring_wakeup: WakeupPolicy::Adaptive,
        perf_wakeup: None,
        max_delay: Duration::from_millis(5),
    };
    let Loaded { bpf, mut source } =
        Loaded::start("lab sizing", objects::LAB_LOAD, &["lab_burst"], Vec::new(), &options)?;
    let done = AtomicBool::new(false);
    let mut delivered = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let producer = s.spawn(|| -> Result<()> {
            let _pin = load::pin_current_thread(cpus.load)?;
            let start = Instant::now();
            for i in 0..bursts {
                load::trigger(BURST, 0, i * BURST, CLASS_BULK);
                if let Some(wait) = (start + PERIOD * (i as u32 + 1)).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            done.store(true, Ordering::Release);
            Ok(())
        });
        let _pin = load::pin_current_thread(cpus.consumer)?;
        while !done.load(Ordering::Acquire) {
            source.poll(Some(options.max_delay), |item: Event<Record<'_>>| {
                if let Event::Record(_) = item {
                    delivered += 1;
                    load::spin_ns(WORK_NS);
                }
            })?;
            progress.tick();
        }
        producer.join().expect("producer thread")
    })?;
    let mapped = source.mapped_bytes();
    drop(bpf);
    let totals = source.finish(super::finish_deadline(), |item: Event<Record<'_>>| {
        if let Event::Record(_) = item {
            delivered += 1;
        }
    })?;
    Ok(Row {
        transport,
        size,
        mapped,
        produced: totals.produced.unwrap_or(0),
        delivered,
        dropped: totals.dropped,
        bursts,
    })
}

fn report(rows: Vec<Row>, bursts: u64) -> LabReport {
    let mut table =
        Table::new(&["buffer", "buffer_bytes", "mapped_bytes", "produced", "delivered", "dropped", "loss_rate"]);
    let mut accounts = Vec::new();
    let mut notes = Vec::new();
    for r in &rows {
        table.push(vec![
            Cell::text(r.transport.to_string()),
            Cell::Int(r.size),
            Cell::Int(r.mapped),
            Cell::Int(r.produced),
            Cell::Int(r.delivered),
            Cell::Int(r.dropped),
            Cell::Float(r.loss_rate(), 4),
        ]);
        let label = format!("{} {}", r.transport, human_bytes(r.size));
        accounts.push(Account {
            label: label.clone(),
            produced: r.produced,
            delivered: r.delivered,
            dropped: r.dropped,
            summarized: 0,
        });
        if r.produced != r.bursts * BURST {
            notes.push(format!(
                "warning: {label}: the BPF side counted {} records for {} triggered",
                r.produced,
                r.bursts * BURST
            ));
        }
    }
    notes.extend(recommendation(&rows));
    let series: Vec<Series> = [Transport::Ring, Transport::Perf]
        .into_iter()
        .map(|t| Series {
            name: if t == Transport::Ring { "ring (total)".into() } else { "perf (per CPU)".into() },
            points: rows.iter().filter(|r| r.transport == t).map(|r| (r.size as f64, 100.0 * r.loss_rate())).collect(),
        })
        .collect();
    let figure = move |path: &std::path::Path| {
        plot::lines(
            path,
            &format!("Loss against buffer size: bursts of {BURST} x {RECORD_BYTES}-byte records"),
            &[LinePanel {
                title: "records lost per burst".into(),
                x_label: "buffer size (ring: total, perf: per CPU)".into(),
                y_label: "loss rate (%)".into(),
                series: series.clone(),
                x_bytes_log2: true,
                ..Default::default()
            }],
        )
    };
    LabReport {
        name: "sizing",
        title: "Buffer sizing (exercise 1)",
        setup: format!(
            "{bursts} bursts of {BURST} records ({RECORD_BYTES}-byte payload) every {} ms from one thread pinned to one \
             CPU; the consumer, pinned to another, spends {} us per record (a burst takes it {:.1} ms to drain). \
             Ring: adaptive wakeups; perf: wakeup at a quarter full; both polled every 5 ms at most.",
            PERIOD.as_millis(),
            WORK_NS / 1000,
            (BURST * WORK_NS) as f64 / 1e6
        ),
        table,
        notes,
        figure: Box::new(figure),
        accounts,
    }
}

/// The smallest lossless size per transport, and what the burst needs on paper.
fn recommendation(rows: &[Row]) -> Vec<String> {
    let ring_need = BURST * RING_RECORD;
    let perf_need = BURST * PERF_RECORD;
    let smallest = |t: Transport| rows.iter().filter(|r| r.transport == t && r.dropped == 0).map(|r| r.size).min();
    let cpus = crate::host::online_cpus().map(|c| c.len() as u64).unwrap_or(1);
    let mut notes = vec![format!(
        "The burst: {BURST} records = {} in a ring ({RING_RECORD} bytes each with header), {} in one CPU's perf \
         buffer ({PERF_RECORD} bytes each).",
        human_bytes(ring_need),
        human_bytes(perf_need)
    )];
    let ring = smallest(Transport::Ring);
    let perf = smallest(Transport::Perf);
    notes.push(match ring {
        Some(size) => format!("Smallest lossless ring measured: {}.", human_bytes(size)),
        None => "No ring size measured was lossless.".into(),
    });
    notes.push(match perf {
        Some(size) => format!(
            "Smallest lossless perf buffer measured: {} per CPU ({} mapped on {cpus} CPUs).",
            human_bytes(size),
            human_bytes(size * cpus)
        ),
        None => "No perf size measured was lossless.".into(),
    });
    let advice = ring_need.next_power_of_two().max(4096);
    notes.push(format!(
        "Recommendation for this burst: a ring of {} (the next power of two above one burst; double it if the \
         consumer can stall for longer than a burst interval), or a perf buffer of {} per CPU when all of a burst \
         lands on one CPU.",
        human_bytes(advice),
        human_bytes(perf_need.next_power_of_two())
    ));
    notes
}
