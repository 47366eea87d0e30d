//! The record parsers' own cost, on simulated kernel memory: no root and no kernel, so the
//! numbers move only when the consume loops do. Each case fills a 16 MiB buffer the way the
//! kernel would (`bpfstream::sim`), then times one consume of everything in it; the table shows
//! the median of the rounds. The handler takes each record's length only, so "lent GB/s" is the
//! payload handed out, not read: the cost is the walk over the headers.
//!
//! Two ring rows isolate batching: the same loop publishing the consumer position once per
//! batch (bpfstream's default) and after every record (what libbpf's `ring_buffer__consume`
//! does). A perf row runs libbpf's `perf_event_read_simple()` algorithm, rewritten here, on the
//! same memory: what a perf consumer without our checks costs.
//!
//! `cargo bench -p bpfstream --bench parse`; BPFSTREAM_BENCH_ROUNDS (default 9) sets the rounds.

use std::hint::black_box;
use std::time::Instant;

use bpfstream::sim::{SimPerf, SimRing};
use bpfstream::Item;

/// Data bytes of every simulated buffer: larger than the caches of most machines' last level,
/// as the bench's 64 MiB drain is, but quick to fill.
const BUFFER_BYTES: usize = 16 << 20;

/// Payload sizes of a case: all the same, or cycling through several.
#[derive(Clone, Copy)]
enum Payloads {
    Fixed(usize),
    Mixed(&'static [usize]),
}

impl Payloads {
    fn nth(self, i: usize) -> usize {
        match self {
            Payloads::Fixed(n) => n,
            Payloads::Mixed(sizes) => sizes[i % sizes.len()],
        }
    }

    fn name(self) -> String {
        match self {
            Payloads::Fixed(n) => format!("{n} B"),
            Payloads::Mixed(sizes) => format!("mixed {sizes:?} B"),
        }
    }
}

/// One timed consume: records and bytes of payload handled, and the nanoseconds it took.
struct Pass {
    records: usize,
    payload_bytes: usize,
    ns: f64,
}

fn ring_pass(payloads: Payloads, publish_every_record: bool) -> Pass {
    let ring = SimRing::new(BUFFER_BYTES);
    let payload = vec![0xa5u8; 4096];
    let mut written = 0;
    while ring.output(&payload[..payloads.nth(written)]).is_some() {
        written += 1;
    }
    let mut consumer = ring.consumer().expect("one consumer");
    if publish_every_record {
        consumer.set_publish_every(0);
    }
    let mut payload_bytes = 0;
    let started = Instant::now();
    let records = consumer.consume(|record: &[u8]| payload_bytes += black_box(record).len()).expect("a valid ring");
    let ns = started.elapsed().as_nanos() as f64;
    assert_eq!(records, written, "every record written is consumed");
    Pass { records, payload_bytes, ns }
}

/// A simulated perf buffer written full of samples, and how many.
fn filled_perf(payloads: Payloads) -> (SimPerf, usize) {
    let mut perf = SimPerf::new(BUFFER_BYTES);
    let payload = vec![0xa5u8; 4096];
    let mut written = 0;
    while perf.output(&payload[..payloads.nth(written)]) {
        written += 1;
    }
    (perf, written)
}

fn perf_pass(payloads: Payloads) -> Pass {
    let (mut perf, written) = filled_perf(payloads);
    let (mut scratch, mut payload_bytes) = (Vec::new(), 0);
    let started = Instant::now();
    let records = perf
        .consume(&mut scratch, |item: Item<'_>| {
            if let Item::Record(record) = item {
                payload_bytes += black_box(record.data).len();
            }
        })
        .expect("a valid perf buffer");
    let ns = started.elapsed().as_nanos() as f64;
    assert_eq!(records, written, "every sample written is consumed");
    Pass { records, payload_bytes, ns }
}

/// libbpf's `perf_event_read_simple()` loop, for comparison: each record's size read from its
/// header, one indirect call per record, data_tail stored once at the end.
fn perf_pass_libbpf_style(payloads: Payloads) -> Pass {
    let (mut perf, written) = filled_perf(payloads);
    extern "C" fn on_sample(count: *mut usize, _data: *const u8, size: u32) {
        // SAFETY: `count` is the caller's live counter.
        unsafe { *count += size as usize };
    }
    let callback: extern "C" fn(*mut usize, *const u8, u32) = black_box(on_sample);
    let (data, mask) = (perf.data_area(), BUFFER_BYTES as u64 - 1);
    let (mut records, mut payload_bytes) = (0, 0usize);
    let started = Instant::now();
    let (mut tail, head) = perf.positions();
    while tail < head {
        // SAFETY: records are 8-aligned inside the simulated data area, below its head.
        let (kind, size, raw) = unsafe {
            let record = data.add((tail & mask) as usize);
            (record.cast::<u32>().read(), record.add(6).cast::<u16>().read(), record.add(8).cast::<u32>().read())
        };
        if kind == 9 {
            records += 1;
            // SAFETY: the payload follows the raw size inside the record.
            callback(&mut payload_bytes, unsafe { data.add((tail & mask) as usize + 12) }, raw);
        }
        tail += u64::from(size);
    }
    perf.force_positions(tail, head);
    let ns = started.elapsed().as_nanos() as f64;
    assert_eq!(records, written, "every sample written is consumed");
    Pass { records, payload_bytes, ns }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run one round then.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds = match std::env::var("BPFSTREAM_BENCH_ROUNDS") {
        Ok(text) => text.parse::<usize>().ok().filter(|&n| n > 0).unwrap_or_else(|| {
            eprintln!("BPFSTREAM_BENCH_ROUNDS must be a positive integer, not {text:?}");
            std::process::exit(2)
        }),
        Err(_) if benching => 9,
        Err(_) => 1,
    };
    let mixed = Payloads::Mixed(&[8, 24, 100, 256, 40]);
    type Case = (&'static str, Payloads, Box<dyn Fn(Payloads) -> Pass>);
    let cases: Vec<Case> = vec![
        ("ring", Payloads::Fixed(8), Box::new(|p| ring_pass(p, false))),
        ("ring, publish per record", Payloads::Fixed(8), Box::new(|p| ring_pass(p, true))),
        ("ring", Payloads::Fixed(64), Box::new(|p| ring_pass(p, false))),
        ("ring", Payloads::Fixed(512), Box::new(|p| ring_pass(p, false))),
        ("ring", mixed, Box::new(|p| ring_pass(p, false))),
        ("perf", Payloads::Fixed(8), Box::new(perf_pass)),
        ("perf, libbpf-style loop", Payloads::Fixed(8), Box::new(perf_pass_libbpf_style)),
        ("perf", Payloads::Fixed(64), Box::new(perf_pass)),
        ("perf", Payloads::Fixed(512), Box::new(perf_pass)),
        ("perf", mixed, Box::new(perf_pass)),
    ];
    println!("Consume of a full {} MiB simulated buffer, median of {rounds} rounds", BUFFER_BYTES >> 20);
    println!("{:<26} {:<30} {:>9} {:>8} {:>8} {:>9}", "BUFFER", "PAYLOAD", "RECORDS", "ns/rec", "M rec/s", "lent GB/s");
    for (buffer, payloads, pass) in &cases {
        let passes: Vec<Pass> = (0..rounds).map(|_| pass(*payloads)).collect();
        let ns_per_record = median(passes.iter().map(|p| p.ns / p.records as f64).collect());
        let bytes_per_ns = median(passes.iter().map(|p| p.payload_bytes as f64 / p.ns).collect());
        println!(
            "{:<26} {:<30} {:>9} {:>8.2} {:>8.1} {:>9.2}",
            buffer,
            payloads.name(),
            passes[0].records,
            ns_per_record,
            1e3 / ns_per_record,
            bytes_per_ns,
        );
    }
}
