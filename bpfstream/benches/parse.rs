//! The record parsers' own cost, on simulated kernel memory: no root and no kernel, so the
//! numbers move only when the consume loops do. Each case fills a 16 MiB buffer the way the
//! kernel would (`bpfstream::sim`), then times one consume of everything in it; the table shows
//! the median of the rounds. Every handler (ours, and libbpf's callback in the perf row written
//! as libbpf runs it) only takes the record through `black_box`, so that the cost is the walk
//! over the headers, not what a handler does; "lent GB/s" is the payload handed out (as written),
//! not read. One more ring row keeps a handler that adds each length into a counter behind a
//! reference: a read-modify-write of memory per record, whose store-to-load chain (about five
//! cycles) then sets the pace, as it would for any handler whose state is memory.
//!
//! Two ring rows isolate batching: the same loop publishing the consumer position once per
//! batch (bpfstream's default) and after every record (what libbpf's `ring_buffer__consume`
//! does). A perf row runs libbpf's `perf_event_read_simple()` algorithm, rewritten here, on the
//! same memory: what a perf consumer without our checks costs.
//!
//! Times are the consuming thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so that a busy machine
//! that takes the CPU away mid-pass does not count against the loop. A plain read of the same
//! memory (one load per record, no parsing) shows what the memory allows.
//!
//! The pull rows time the same walk through the pull API (`EventSource::read`): the caller's
//! loop takes each record from an iterator inlined into it, so its own state (here the byte
//! count) stays in registers, where a handler's state is memory behind a reference that every
//! header's acquire load keeps there.
//!
//! `cargo bench -p bpfstream --bench parse`; BPFSTREAM_BENCH_ROUNDS (default 9) sets the rounds,
//! BPFSTREAM_BENCH_ONLY (say `ring 8 B`: the first two columns) runs one row.
//!
//! The simulated buffers are the crate's test support (`src/sim.rs`), not its API: this bench
//! includes the crate's source as a module of its own, built as for the crate's tests.

// Lints that the crate's exported API is exempt from apply to it as a private module here.
#[allow(dead_code, unused_imports, clippy::wrong_self_convention)]
#[path = "../src/lib.rs"]
mod bpfstream;

use std::hint::black_box;

// The included crate's root items, where its `crate::` paths look for them.
use bpfstream::sim::{SimPerf, SimRing, SimRingConsumer};
#[allow(unused_imports)]
use bpfstream::*;

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

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "CLOCK_THREAD_CPUTIME_ID");
    now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
}

/// One timed consume: records and bytes of payload handled, and the nanoseconds it took.
struct Pass {
    records: usize,
    payload_bytes: usize,
    ns: f64,
}

/// How a ring case takes its records.
#[derive(Clone, Copy)]
enum RingWay {
    /// A handler, the consumer position published once per batch (per quarter ring).
    Handler,
    /// The same, its handler adding each length into memory behind a reference.
    HandlerSumming,
    /// A handler, the position published after every record.
    PublishPerRecord,
    /// The pull.
    Pull,
}

fn ring_pass(payloads: Payloads, way: RingWay) -> Pass {
    let ring = SimRing::new(BUFFER_BYTES);
    let payload = vec![0xa5u8; 4096];
    let (mut written, mut payload_bytes) = (0, 0);
    while ring.output(&payload[..payloads.nth(written)]).is_some() {
        payload_bytes += payloads.nth(written);
        written += 1;
    }
    let mut consumer = ring.consumer().expect("one consumer");
    if let RingWay::PublishPerRecord = way {
        consumer.set_publish_every(0);
    }
    let started = thread_cpu_ns();
    let records = match way {
        RingWay::Handler | RingWay::PublishPerRecord => consume_ring(&mut consumer),
        RingWay::HandlerSumming => {
            let mut summed = 0;
            let records = consume_ring_summing(&mut consumer, &mut summed);
            assert_eq!(summed, payload_bytes, "every payload byte is lent");
            records
        }
        RingWay::Pull => pull_ring(&mut consumer),
    };
    let ns = thread_cpu_ns() - started;
    assert_eq!(records, written, "every record written is consumed");
    Pass { records, payload_bytes, ns }
}

/// The timed ring consume, out of line: `scripts/loop-guard` counts the instructions in here.
#[inline(never)]
fn consume_ring(consumer: &mut SimRingConsumer<'_>) -> usize {
    consumer
        .consume(|record: &[u8]| {
            black_box(record);
        })
        .expect("a valid ring")
}

/// The timed ring consume whose handler adds each length into `payload_bytes`.
#[inline(never)]
fn consume_ring_summing(consumer: &mut SimRingConsumer<'_>, payload_bytes: &mut usize) -> usize {
    consumer.consume(|record: &[u8]| *payload_bytes += black_box(record).len()).expect("a valid ring")
}

/// The timed perf consume, out of line: `scripts/loop-guard` counts the instructions in here.
#[inline(never)]
fn consume_perf(perf: &mut SimPerf, scratch: &mut Vec<u8>) -> usize {
    perf.consume(scratch, |event: Event<Record<'_>>| {
        if let Event::Record(record) = event {
            black_box(record.data);
        }
    })
    .expect("a valid perf buffer")
}

/// The timed ring pull, out of line: `scripts/loop-guard` counts the instructions in here.
#[inline(never)]
fn pull_ring(consumer: &mut SimRingConsumer<'_>) -> usize {
    let mut records = 0;
    for record in consumer.read() {
        records += 1;
        black_box(record);
    }
    records
}

/// The timed perf pull, out of line: `scripts/loop-guard` counts the instructions in here.
#[inline(never)]
fn pull_perf(perf: &mut SimPerf, scratch: &mut Vec<Vec<u8>>) -> usize {
    let mut records = 0;
    for event in perf.read(scratch) {
        if let Event::Record(record) = event {
            records += 1;
            black_box(record.data);
        }
    }
    records
}

/// A simulated perf buffer written full of samples: how many, and their payload bytes.
fn filled_perf(payloads: Payloads) -> (SimPerf, usize, usize) {
    let mut perf = SimPerf::new(BUFFER_BYTES);
    let payload = vec![0xa5u8; 4096];
    let (mut written, mut payload_bytes) = (0, 0);
    while perf.output(&payload[..payloads.nth(written)]) {
        payload_bytes += payloads.nth(written);
        written += 1;
    }
    (perf, written, payload_bytes)
}

fn perf_pass(payloads: Payloads, pull: bool) -> Pass {
    let (mut perf, written, payload_bytes) = filled_perf(payloads);
    let (mut scratch, mut scratches) = (Vec::new(), Vec::new());
    let started = thread_cpu_ns();
    let records = match pull {
        false => consume_perf(&mut perf, &mut scratch),
        true => pull_perf(&mut perf, &mut scratches),
    };
    let ns = thread_cpu_ns() - started;
    assert_eq!(records, written, "every sample written is consumed");
    Pass { records, payload_bytes, ns }
}

/// libbpf's `perf_event_read_simple()` loop, for comparison: each record's size read from its
/// header, one indirect call per record, data_tail stored once at the end.
fn perf_pass_libbpf_style(payloads: Payloads) -> Pass {
    let (mut perf, written, payload_bytes) = filled_perf(payloads);
    extern "C" fn on_sample(_ctx: *mut u8, data: *const u8, size: u32) {
        black_box((data, size));
    }
    let callback: extern "C" fn(*mut u8, *const u8, u32) = black_box(on_sample);
    let (data, mask) = (perf.data_area(), BUFFER_BYTES as u64 - 1);
    let mut records = 0;
    let started = thread_cpu_ns();
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
            callback(std::ptr::null_mut(), unsafe { data.add((tail & mask) as usize + 12) }, raw);
        }
        tail += u64::from(size);
    }
    perf.force_positions(tail, head);
    let ns = thread_cpu_ns() - started;
    assert_eq!(records, written, "every sample written is consumed");
    Pass { records, payload_bytes, ns }
}

/// The memory's own speed, for scale: a ring written full of 8-byte payloads as in the first
/// row, then one u64 per 16-byte record summed with a prefetch hint per cache line, no parsing.
fn plain_read(_: Payloads) -> Pass {
    let ring = SimRing::new(BUFFER_BYTES);
    while ring.output(&[0xa5; 8]).is_some() {}
    let data = ring.data_area();
    let records = BUFFER_BYTES / 16;
    let started = thread_cpu_ns();
    let mut sum = 0u64;
    for i in 0..records {
        let at = i * 16;
        if at % 64 == 0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 is a hint: it cannot fault, whatever the address.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(data.wrapping_add(at + 2048).cast());
            }
        }
        // SAFETY: `at + 8 <= BUFFER_BYTES`, inside the simulated data area, 8-aligned.
        sum = sum.wrapping_add(unsafe { data.add(at).cast::<u64>().read_volatile() });
    }
    let ns = thread_cpu_ns() - started;
    black_box(sum);
    Pass { records, payload_bytes: records * 8, ns }
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
        ("ring", Payloads::Fixed(8), Box::new(|p| ring_pass(p, RingWay::Handler))),
        ("ring, pull", Payloads::Fixed(8), Box::new(|p| ring_pass(p, RingWay::Pull))),
        ("ring, handler summing", Payloads::Fixed(8), Box::new(|p| ring_pass(p, RingWay::HandlerSumming))),
        ("plain read of that memory", Payloads::Fixed(8), Box::new(plain_read)),
        ("ring, publish per record", Payloads::Fixed(8), Box::new(|p| ring_pass(p, RingWay::PublishPerRecord))),
        ("ring", Payloads::Fixed(64), Box::new(|p| ring_pass(p, RingWay::Handler))),
        ("ring", Payloads::Fixed(512), Box::new(|p| ring_pass(p, RingWay::Handler))),
        ("ring", mixed, Box::new(|p| ring_pass(p, RingWay::Handler))),
        ("ring, pull", mixed, Box::new(|p| ring_pass(p, RingWay::Pull))),
        ("perf", Payloads::Fixed(8), Box::new(|p| perf_pass(p, false))),
        ("perf, pull", Payloads::Fixed(8), Box::new(|p| perf_pass(p, true))),
        ("perf, libbpf-style loop", Payloads::Fixed(8), Box::new(perf_pass_libbpf_style)),
        ("perf", Payloads::Fixed(64), Box::new(|p| perf_pass(p, false))),
        ("perf", Payloads::Fixed(512), Box::new(|p| perf_pass(p, false))),
        ("perf", mixed, Box::new(|p| perf_pass(p, false))),
    ];
    println!("Consume of a full {} MiB simulated buffer, median of {rounds} rounds", BUFFER_BYTES >> 20);
    println!("{:<26} {:<30} {:>9} {:>8} {:>8} {:>9}", "BUFFER", "PAYLOAD", "RECORDS", "ns/rec", "M rec/s", "lent GB/s");
    let only = std::env::var("BPFSTREAM_BENCH_ONLY").ok();
    for (buffer, payloads, pass) in &cases {
        if only.as_ref().is_some_and(|only| *only != format!("{buffer} {}", payloads.name())) {
            continue;
        }
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
