//! The ring-buffer and perf-buffer record protocols on simulated kernel memory (no root): the
//! same consumer code as on the kernel's mmap, fed by producers that write as the kernel does,
//! through both the handler and the pull.

use std::ops::ControlFlow;

use proptest::prelude::*;

use super::{SimPerf, SimRing};
use crate::{DropOrigin, Error, Event, Record};

fn drain_ring(ring: &SimRing) -> Result<Vec<Vec<u8>>, Error> {
    let mut seen = Vec::new();
    ring.consumer().unwrap().consume(|r: &[u8]| seen.push(r.to_vec()))?;
    Ok(seen)
}

#[test]
fn ring_delivers_in_order_and_frees_space() {
    let ring = SimRing::new(4096);
    for i in 0..10u8 {
        ring.output(&[i; 5]).unwrap();
    }
    assert_eq!(ring.available(), 10 * 16, "8-byte header + 5 bytes padded to 8");
    let seen = drain_ring(&ring).unwrap();
    assert_eq!(seen, (0..10u8).map(|i| vec![i; 5]).collect::<Vec<_>>());
    assert_eq!(ring.available(), 0);
    assert_eq!(ring.positions().0, 160);
}

#[test]
fn ring_record_wrapping_the_end_is_contiguous() {
    // Start 24 bytes before the end: a 100-byte record spans the end of the data area.
    let ring = SimRing::starting_at(256, 256 * 7 - 24);
    let payload: Vec<u8> = (0..100u8).collect();
    ring.output(&payload).unwrap();
    ring.output(b"after").unwrap();
    assert_eq!(drain_ring(&ring).unwrap(), vec![payload, b"after".to_vec()]);
}

#[test]
fn ring_stops_at_a_busy_record_and_resumes_after_commit() {
    let ring = SimRing::new(1024);
    ring.output(b"one").unwrap();
    let busy = ring.reserve(8).unwrap();
    ring.output(b"three").unwrap(); // committed, but behind a busy record
    assert_eq!(drain_ring(&ring).unwrap(), vec![b"one".to_vec()]);
    assert!(drain_ring(&ring).unwrap().is_empty(), "still busy: nothing more, no spinning");
    ring.fill(&busy, b"two!two!");
    ring.commit(busy, false);
    assert_eq!(drain_ring(&ring).unwrap(), vec![b"two!two!".to_vec(), b"three".to_vec()]);
}

#[test]
fn ring_skips_discarded_records() {
    let ring = SimRing::new(1024);
    ring.output(b"keep1").unwrap();
    let r = ring.reserve(40).unwrap();
    ring.commit(r, true);
    ring.output(b"keep2").unwrap();
    assert_eq!(drain_ring(&ring).unwrap(), vec![b"keep1".to_vec(), b"keep2".to_vec()]);
    assert_eq!(ring.available(), 0, "the discarded record's space is released too");
}

#[test]
fn ring_full_reservation_fails_like_the_kernel() {
    let ring = SimRing::new(64);
    // 64-byte ring: at most 56 bytes in flight (the kernel keeps prod - cons <= size - 1).
    assert!(ring.output(&[1; 40]).is_some()); // 48 bytes
    assert!(ring.output(&[2; 1]).is_none()); // would make 64
    drain_ring(&ring).unwrap();
    assert!(ring.output(&[2; 1]).is_some());
}

#[test]
fn ring_handler_can_stop_early_and_consume_n_limits() {
    let ring = SimRing::new(4096);
    for i in 0..6u8 {
        ring.output(&[i]).unwrap();
    }
    let mut first = Vec::new();
    let n = ring
        .consumer()
        .unwrap()
        .consume(|r: &[u8]| {
            first.push(r[0]);
            if r[0] == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!((n, first), (2, vec![0, 1]));
    let mut rest = Vec::new();
    assert_eq!(ring.consumer().unwrap().consume_n(3, |r: &[u8]| rest.push(r[0])).unwrap(), 3);
    assert_eq!(rest, vec![2, 3, 4]);
    assert_eq!(drain_ring(&ring).unwrap(), vec![vec![5]]);
}

#[test]
fn ring_publishes_once_per_batch_not_per_record() {
    let ring = SimRing::new(4096);
    for _ in 0..4 {
        ring.output(&[0; 8]).unwrap();
    }
    let start = ring.positions().0;
    let mut positions = Vec::new();
    ring.consumer().unwrap().consume(|_: &[u8]| positions.push(ring.positions().0)).unwrap();
    assert_eq!(positions, vec![start; 4], "the position does not move while the batch is read");
    assert_eq!(ring.positions().0, start + 64);
}

#[test]
fn ring_corrupt_length_is_an_error_not_a_loop() {
    for bad_len in [4000u32, 1 << 29, 57] {
        let ring = SimRing::new(256);
        let r = ring.output(&[7; 16]).unwrap();
        ring.corrupt_header(r, bad_len);
        for _ in 0..3 {
            let err = drain_ring(&ring).unwrap_err();
            assert!(matches!(err, Error::Corrupt { transport: "ring", .. }), "{err}");
        }
        assert_eq!(ring.positions().0, r, "never moves past the bad record");
    }
}

fn drain_perf(perf: &mut SimPerf) -> Result<Vec<Result<Vec<u8>, u64>>, Error> {
    let mut scratch = Vec::new();
    let mut seen = Vec::new();
    perf.consume(&mut scratch, |item: Event<Record<'_>>| match item {
        Event::Record(r) => seen.push(Ok(r.data.to_vec())),
        Event::Dropped(l) => {
            assert_eq!(l.origin, DropOrigin::PerfLostRecord);
            seen.push(Err(l.count));
        }
    })?;
    Ok(seen)
}

#[test]
fn perf_samples_carry_padding_to_8_bytes() {
    let mut perf = SimPerf::new(4096);
    assert!(perf.output(b"abc"));
    assert!(perf.output(b"abcd"));
    assert!(perf.output(b"abcdefghijkl"));
    let seen = drain_perf(&mut perf).unwrap();
    // 4 (raw size) + payload, rounded up to 8: 3 -> 4, 4 -> 4, 12 -> 12.
    assert_eq!(seen[0], Ok(b"abc\0".to_vec()));
    assert_eq!(seen[1], Ok(b"abcd".to_vec()));
    assert_eq!(seen[2], Ok(b"abcdefghijkl".to_vec()));
}

#[test]
fn perf_sample_straddling_the_end_is_reassembled() {
    let mut perf = SimPerf::starting_at(256, 256 * 3 - 16);
    let payload: Vec<u8> = (0..60u8).collect();
    assert!(perf.output(&payload));
    assert!(perf.output(b"next"));
    let seen = drain_perf(&mut perf).unwrap();
    assert_eq!(seen, vec![Ok(payload), Ok(b"next".to_vec())]);
    assert_eq!(perf.available(), 0);
}

#[test]
fn perf_lost_records_are_reported_before_the_next_sample() {
    let mut perf = SimPerf::new(128);
    let mut fitted = 0;
    for _ in 0..20 {
        fitted += usize::from(perf.output(&[1; 20]));
    }
    assert_eq!(fitted, 4, "128 bytes hold four 32-byte samples");
    assert_eq!(perf.pending_lost(), 16);
    let first = drain_perf(&mut perf).unwrap();
    assert_eq!(first.len(), 4);
    assert!(perf.output(&[2; 4]));
    let second = drain_perf(&mut perf).unwrap();
    assert_eq!(second, vec![Err(16), Ok(vec![2; 4])]);
}

#[test]
fn perf_corrupt_sizes_are_errors_not_loops() {
    // size 0 (would loop forever), size not a multiple of 8, size beyond the written data, and
    // a raw size larger than its record.
    let cases: [&[u8]; 4] = [
        &[9, 0, 0, 0, 0, 0, 0, 0],
        &[9, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0],
        &[9, 0, 0, 0, 0, 0, 64, 0],
        &[9, 0, 0, 0, 0, 0, 16, 0, 200, 0, 0, 0, 1, 2, 3, 4],
    ];
    for bytes in cases {
        let mut perf = SimPerf::new(256);
        assert!(perf.write_raw(bytes));
        for _ in 0..2 {
            let err = drain_perf(&mut perf).unwrap_err();
            assert!(matches!(err, Error::Corrupt { transport: "perf", .. }), "{bytes:?}: {err}");
        }
    }
}

#[test]
fn perf_skips_unknown_record_types() {
    let mut perf = SimPerf::new(256);
    assert!(perf.write_raw(&[5, 0, 0, 0, 0, 0, 16, 0, 1, 2, 3, 4, 5, 6, 7, 8])); // THROTTLE-like
    assert!(perf.output(b"real"));
    assert_eq!(drain_perf(&mut perf).unwrap(), vec![Ok(b"real".to_vec())]);
}

#[derive(Debug, Clone)]
enum RingOp {
    Output(Vec<u8>),
    Discard(u32),
    Busy(Vec<u8>),
    Consume(usize),
}

fn ring_op() -> impl Strategy<Value = RingOp> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..200).prop_map(RingOp::Output),
        1 => (0u32..100).prop_map(RingOp::Discard),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(RingOp::Busy),
        2 => (1usize..10).prop_map(RingOp::Consume),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any interleaving of outputs, discards, late commits and partial consumes on any ring
    /// size and start position delivers exactly the submitted records, in order, once.
    #[test]
    fn ring_model(size_log in 6u32..12, start in 0u64..1 << 20, ops in prop::collection::vec(ring_op(), 1..80)) {
        let ring = SimRing::starting_at(1 << size_log, start);
        // Records in reservation order; a busy one is a hole until it is committed.
        let mut expected: Vec<Option<Vec<u8>>> = Vec::new();
        let mut delivered = Vec::new();
        let mut busy = None;
        let commit = |ring: &SimRing, expected: &mut Vec<Option<Vec<u8>>>, (r, p, slot): (_, Vec<u8>, usize)| {
            ring.fill(&r, &p);
            ring.commit(r, false);
            expected[slot] = Some(p);
        };
        for op in ops {
            match op {
                RingOp::Output(p) => if ring.output(&p).is_some() { expected.push(Some(p)) },
                RingOp::Discard(n) => if let Some(r) = ring.reserve(n) { ring.commit(r, true) },
                RingOp::Busy(p) => {
                    if busy.is_none() {
                        if let Some(r) = ring.reserve(p.len() as u32) {
                            expected.push(None);
                            busy = Some((r, p, expected.len() - 1));
                        }
                    }
                }
                RingOp::Consume(n) => {
                    ring.consumer().unwrap().consume_n(n, |r: &[u8]| delivered.push(r.to_vec())).unwrap();
                    // Nothing after a busy record comes out before it is committed.
                    if let Some((_, _, slot)) = &busy {
                        prop_assert!(delivered.len() <= *slot);
                    }
                }
            }
            if delivered.len() % 3 == 0 {
                if let Some(b) = busy.take() {
                    commit(&ring, &mut expected, b);
                }
            }
        }
        if let Some(b) = busy.take() {
            commit(&ring, &mut expected, b);
        }
        ring.consumer().unwrap().consume(|r: &[u8]| delivered.push(r.to_vec())).unwrap();
        prop_assert_eq!(delivered, expected.into_iter().map(Option::unwrap).collect::<Vec<_>>());
        prop_assert_eq!(ring.available(), 0);
    }

    /// Samples of any size on any buffer size and start: delivered samples (padding stripped by
    /// length) plus reported losses equal what was produced, in order.
    #[test]
    fn perf_model(size_log in 6u32..11, start in 0u64..1 << 20,
                  ops in prop::collection::vec(prop_oneof![
                      3 => prop::collection::vec(any::<u8>(), 0..120).prop_map(Some),
                      1 => Just(None)], 1..100)) {
        let mut perf = SimPerf::starting_at(1 << size_log, start);
        let mut produced = 0u64;
        let mut accepted = Vec::new();
        let mut got = Vec::new();
        let mut lost = 0u64;
        let mut scratch = Vec::new();
        let mut consume = |perf: &mut SimPerf, got: &mut Vec<Vec<u8>>, lost: &mut u64| {
            perf.consume(&mut scratch, |item: Event<Record<'_>>| match item {
                Event::Record(r) => got.push(r.data.to_vec()),
                Event::Dropped(l) => *lost += l.count,
            }).unwrap();
        };
        for op in ops {
            match op {
                Some(payload) => {
                    produced += 1;
                    if perf.output(&payload) { accepted.push(payload) }
                }
                None => consume(&mut perf, &mut got, &mut lost),
            }
        }
        consume(&mut perf, &mut got, &mut lost);
        let pending = perf.pending_lost();
        prop_assert_eq!(got.len() as u64 + lost + pending, produced);
        prop_assert_eq!(got.len(), accepted.len());
        for (g, a) in got.iter().zip(&accepted) {
            prop_assert_eq!(&g[..a.len()], &a[..]);
            prop_assert!(g[a.len()..].iter().all(|&b| b == 0) && g.len() - a.len() < 8);
        }
    }

    /// Arbitrary bytes in the ring's data area: the consumer returns records or an error, never
    /// reads outside the ring, never moves past the producer, never loops.
    #[test]
    fn ring_survives_garbage(words in prop::collection::vec(any::<u32>(), 1..64)) {
        let ring = SimRing::new(512);
        let r = ring.reserve(((words.len() * 4) as u32).min(400)).unwrap();
        for (i, w) in words.iter().enumerate().take(100) {
            ring.corrupt_header(r.pos() + 8 * i as u64, *w);
        }
        let _ = ring.consumer().unwrap().consume(|_: &[u8]| ());
        prop_assert!(ring.positions().0 <= ring.positions().1);
    }

    /// Arbitrary bytes as perf records: records or an error, never out of bounds or a loop.
    #[test]
    fn perf_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 8..400)) {
        let mut perf = SimPerf::new(512);
        let len = bytes.len() & !7;
        prop_assert!(perf.write_raw(&bytes[..len]));
        let mut scratch = Vec::new();
        let _ = perf.consume(&mut scratch, |_: Event<Record<'_>>| ());
        prop_assert!(perf.available() <= len as u64);
    }
}

#[test]
fn a_simulated_ring_has_one_consumer_at_a_time() {
    let ring = SimRing::new(4096);
    ring.output(b"one").unwrap();
    let first = ring.consumer().unwrap();
    let err = ring.consumer().unwrap_err();
    assert!(matches!(err, Error::AlreadyConsumed { .. }), "{err}");
    assert!(err.to_string().contains("drop it"), "{err}");
    drop(first);
    assert_eq!(drain_ring(&ring).unwrap(), vec![b"one".to_vec()]);
}

/// A producer position more than one ring ahead of the consumer (which a second consumer of
/// the map could cause): the header at the consumer position is reused bytes. It claims 16 MiB
/// of a 4 KiB ring; the consumer refuses before lending anything.
#[test]
fn ring_producer_more_than_a_lap_ahead_is_an_error_not_a_huge_slice() {
    let ring = SimRing::new(4096);
    ring.corrupt_header(0, 16 << 20);
    ring.force_positions(0, 3 * 4096 + (16 << 20));
    let mut lent = 0;
    let err = ring.consumer().unwrap().consume(|_: &[u8]| lent += 1).unwrap_err();
    assert_eq!(lent, 0);
    assert!(err.to_string().contains("more than one ring ahead"), "{err}");
    // Even a lead of one ring and 8 bytes is refused.
    ring.force_positions(0, 4096 + 8);
    assert!(matches!(drain_ring(&ring), Err(Error::Corrupt { .. })));
    // A producer behind the consumer is no ring state either.
    ring.force_positions(4096, 0);
    assert!(matches!(drain_ring(&ring), Err(Error::Corrupt { .. })));
}

/// The perf counterpart: `data_head` more than a lap ahead with a SAMPLE header of 65,528 bytes
/// in a 4 KiB buffer. Nothing is copied, nothing is lent.
#[test]
fn perf_head_more_than_a_lap_ahead_is_an_error_not_a_huge_copy() {
    let mut perf = SimPerf::new(4096);
    perf.poke(4000, &[9, 0, 0, 0, 0, 0, 0xf8, 0xff, 0xf0, 0xff, 0, 0]);
    perf.force_positions(4000, 4000 + 65536);
    let mut lent = 0;
    let err = perf.consume(&mut Vec::new(), |_: Event<Record<'_>>| lent += 1).unwrap_err();
    assert_eq!(lent, 0);
    assert!(err.to_string().contains("more than one buffer ahead"), "{err}");
}

/// Free-running positions wrap at 2^64 as the kernel's do.
#[test]
fn positions_wrap_at_the_end_of_u64() {
    let ring = SimRing::starting_at(256, u64::MAX - 31);
    for i in 0..8u8 {
        ring.output(&[i; 9]).unwrap();
    }
    assert_eq!(drain_ring(&ring).unwrap(), (0..8u8).map(|i| vec![i; 9]).collect::<Vec<_>>());
    let mut perf = SimPerf::starting_at(256, u64::MAX - 31);
    for i in 0..6u8 {
        assert!(perf.output(&[i; 12]));
    }
    let seen = drain_perf(&mut perf).unwrap();
    assert_eq!(seen, (0..6u8).map(|i| Ok(vec![i; 12])).collect::<Vec<_>>());
}

/// Where a lent slice lies relative to a data area of `len` bytes at `base`.
fn inside(slice: &[u8], base: *const u8, len: usize) -> bool {
    let (start, end) = (slice.as_ptr() as usize, slice.as_ptr() as usize + slice.len());
    start >= base as usize && end <= base as usize + len
}

/// A position near `base`: mostly within a couple of rings, sometimes anywhere.
fn position_near() -> impl Strategy<Value = i64> {
    prop_oneof![4 => -9000i64..9000, 1 => any::<i64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary positions (near each other, a lap or more apart, backwards, across 2^64) and
    /// arbitrary header words anywhere in the ring: the consumer lends only slices inside the
    /// double mapping, returns records or `Corrupt`, and never publishes past the producer.
    #[test]
    fn ring_survives_forced_positions_and_headers(
        size_log in 4u32..13,
        base in any::<u64>(),
        lead in position_near(),
        words in prop::collection::vec((any::<u16>(), any::<u32>()), 0..40),
    ) {
        let size = 1usize << size_log;
        let ring = SimRing::new(size);
        let cons = base & !7;
        let prod = cons.wrapping_add_signed(lead) & !7;
        for (at, word) in &words {
            ring.corrupt_header(cons.wrapping_add(u64::from(*at) * 8), *word);
        }
        ring.force_positions(cons, prod);
        let data = ring.data_area();
        let mut lent = Vec::new();
        let result = ring.consumer().unwrap().consume(|r: &[u8]| lent.push(inside(r, data, 2 * size)));
        prop_assert!(lent.iter().all(|&ok| ok), "a record outside the mapping");
        prop_assert!(matches!(result, Ok(_) | Err(Error::Corrupt { .. })), "{:?}", result);
        let moved = ring.positions().0.wrapping_sub(cons);
        prop_assert!(moved <= prod.wrapping_sub(cons) && moved <= size as u64 + (1 << 30));
    }

    /// The same for a perf buffer: arbitrary tail and head, arbitrary bytes in the data area;
    /// lent payloads are inside the buffer or, for a wrapped record, no longer than it.
    #[test]
    fn perf_survives_forced_positions_and_bytes(
        size_log in 6u32..13,
        base in any::<u64>(),
        lead in position_near(),
        pokes in prop::collection::vec((any::<u16>(), prop::collection::vec(any::<u8>(), 1..16)), 0..40),
    ) {
        let size = 1usize << size_log;
        let mut perf = SimPerf::new(size);
        let tail = base & !7;
        let head = tail.wrapping_add_signed(lead) & !7;
        for (at, bytes) in &pokes {
            perf.poke(usize::from(*at), bytes);
        }
        perf.force_positions(tail, head);
        let data = perf.data_area();
        let mut bad = 0;
        let result = perf.consume(&mut Vec::new(), |item: Event<Record<'_>>| {
            if let Event::Record(r) = item {
                let in_place = inside(r.data, data, size);
                let wrapped = !in_place && r.data.len() <= size;
                bad += usize::from(!in_place && !wrapped);
            }
        });
        prop_assert_eq!(bad, 0);
        prop_assert!(matches!(result, Ok(_) | Err(Error::Corrupt { .. })), "{:?}", result);
        prop_assert!(perf.available() == head.wrapping_sub(tail) || perf.available() <= size as u64);
    }
}

/// A test handler's own error.
#[derive(Debug, PartialEq)]
enum Refused {
    Record(u8),
    Library(String),
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Refused::Library(error.to_string())
    }
}

/// A handler that fails stops the consumer: its error comes back as itself, the records up to
/// and including the failing one are consumed, the rest stay.
#[test]
fn a_failing_handler_stops_the_consumer_with_its_own_error() {
    let ring = SimRing::new(4096);
    for i in 0..6u8 {
        ring.output(&[i]).unwrap();
    }
    let mut seen = Vec::new();
    let err = ring
        .consumer()
        .unwrap()
        .consume(|r: &[u8]| {
            seen.push(r[0]);
            if r[0] == 2 {
                return Err(Refused::Record(2));
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err, Refused::Record(2));
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(drain_ring(&ring).unwrap(), vec![vec![3], vec![4], vec![5]]);

    let mut perf = SimPerf::new(4096);
    for i in 0..4u8 {
        assert!(perf.output(&[i; 4]));
    }
    let mut count = 0;
    let result = perf.consume(&mut Vec::new(), |_: Event<Record<'_>>| -> Result<ControlFlow<()>, Refused> {
        count += 1;
        if count == 2 {
            Err(Refused::Record(1))
        } else {
            Ok(ControlFlow::Continue(()))
        }
    });
    assert_eq!(result.unwrap_err(), Refused::Record(1));
    assert_eq!(drain_perf(&mut perf).unwrap(), vec![Ok(vec![2; 4]), Ok(vec![3; 4])]);

    // A library error reaches such a handler's caller as the handler's type, converted.
    let ring = SimRing::new(256);
    let at = ring.output(&[7; 16]).unwrap();
    ring.corrupt_header(at, 4000);
    let err = ring.consumer().unwrap().consume(|_: &[u8]| Ok::<(), Refused>(())).unwrap_err();
    assert!(matches!(&err, Refused::Library(text) if text.contains("corrupt ring buffer")), "{err:?}");
}

/// Pulls every committed record of `ring` (one batch, as `EventSource::read`).
fn pull_ring(ring: &SimRing) -> Result<Vec<Vec<u8>>, String> {
    let mut consumer = ring.consumer().unwrap();
    let mut records = consumer.read();
    let seen: Vec<Vec<u8>> = records.by_ref().map(<[u8]>::to_vec).collect();
    match records.error() {
        Some(error) => Err(error.to_string()),
        None => Ok(seen),
    }
}

/// Pulls every record of `perf` (one batch): samples as `Ok`, drop counts as `Err`.
fn pull_perf(perf: &mut SimPerf) -> (Vec<Result<Vec<u8>, u64>>, bool) {
    let mut scratch = Vec::new();
    let mut records = perf.read(&mut scratch);
    let seen = records
        .by_ref()
        .map(|event| match event {
            Event::Record(r) => Ok(r.data.to_vec()),
            Event::Dropped(d) => Err(d.count),
        })
        .collect();
    (seen, records.error().is_some())
}

#[test]
fn a_pulled_batch_is_published_at_the_next_call_not_before() {
    let ring = SimRing::new(4096);
    for i in 0..4u8 {
        ring.output(&[i; 8]).unwrap();
    }
    let mut consumer = ring.consumer().unwrap();
    let records: Vec<&[u8]> = consumer.read().collect();
    assert_eq!(records.len(), 4);
    assert_eq!(ring.positions().0, 0, "the records are still lent: nothing published");
    assert_eq!(records[3], &[3; 8]);
    assert_eq!(consumer.read().count(), 0, "the next call publishes the last batch first");
    assert_eq!(ring.positions().0, 64);
    // What the iterator did not reach stays for the next call.
    ring.output(b"a").unwrap();
    ring.output(b"b").unwrap();
    assert_eq!(consumer.read().next(), Some(&b"a"[..]));
    assert_eq!(consumer.read().collect::<Vec<_>>(), [&b"b"[..]]);
    drop(consumer);
    assert_eq!(ring.available(), 0, "dropping the consumer publishes its last batch");
}

#[test]
fn a_pull_stops_at_a_busy_record_skips_discarded_ones_and_ends_at_a_corrupt_one() {
    let ring = SimRing::new(1024);
    ring.output(b"one").unwrap();
    let discarded = ring.reserve(40).unwrap();
    ring.commit(discarded, true);
    let busy = ring.reserve(8).unwrap();
    ring.output(b"three").unwrap();
    assert_eq!(pull_ring(&ring).unwrap(), vec![b"one".to_vec()]);
    ring.fill(&busy, b"two!two!");
    ring.commit(busy, false);
    assert_eq!(pull_ring(&ring).unwrap(), vec![b"two!two!".to_vec(), b"three".to_vec()]);

    let ring = SimRing::new(256);
    ring.output(b"fine").unwrap();
    let bad = ring.output(&[7; 16]).unwrap();
    ring.corrupt_header(bad, 4000);
    let err = pull_ring(&ring).unwrap_err();
    assert!(err.contains("past the producer position"), "{err}");
    assert_eq!(ring.positions().0, bad, "the batch ended before the corrupt record");
}

#[test]
fn a_pulled_perf_batch_copies_a_wrapped_sample_and_reports_drops() {
    let mut perf = SimPerf::starting_at(256, 256 * 3 - 16);
    let payload: Vec<u8> = (0..60u8).collect();
    assert!(perf.output(&payload));
    assert!(perf.output(b"next"));
    let (seen, corrupt) = pull_perf(&mut perf);
    assert!(!corrupt);
    assert_eq!(seen, vec![Ok(payload), Ok(b"next".to_vec())]);
    assert_eq!(perf.positions().0, 256 * 3 - 16, "lent: not published yet");
    assert!(pull_perf(&mut perf).0.is_empty());
    assert_eq!(perf.positions(), (256 * 3 - 16 + 88, 256 * 3 - 16 + 88), "published by the next call: 72 + 16 bytes");

    let mut perf = SimPerf::new(128);
    let fitted = (0..20).filter(|_| perf.output(&[1; 20])).count();
    assert_eq!(fitted, 4);
    assert_eq!(pull_perf(&mut perf).0.len(), 4);
    assert!(!perf.output(&[2; 4]), "the pulled samples' space is free only once the batch is settled");
    assert!(pull_perf(&mut perf).0.is_empty(), "a pull settles the last batch first");
    assert!(perf.output(&[2; 4]));
    assert_eq!(pull_perf(&mut perf).0, vec![Err(17), Ok(vec![2; 4])]);

    let mut perf = SimPerf::new(256);
    assert!(perf.output(b"fine"));
    assert!(perf.write_raw(&[9, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    let (seen, corrupt) = pull_perf(&mut perf);
    assert_eq!((seen.len(), corrupt), (1, true), "the sample before the corrupt record, then the end");
}
