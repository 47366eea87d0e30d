//! The library against the real kernel (as root): the async streams compared with the blocking
//! consumers, cancellation, the delay bound, typed and merged streams, stats. Every load is
//! triggered by the test itself: a uprobe on `bpfstream_ping` in this binary sends one record per
//! call (`bpf/ping.bpf.c`), and nothing else on the machine can add to it.

#[path = "../examples/common/mod.rs"]
mod ping;
#[path = "support/time_scale.rs"]
mod time_scale;

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bpfstream::stream::EventStream;
use bpfstream::{Event, EventSource, Item, Poller, Record, Transport, WakeupPolicy};
use bpfstream::{OwnedRecord, TypedError};
use futures_util::StreamExt;
use ping::{ping, PingOptions, PingProbe};
use time_scale::{deadline, scaled};

/// Kernel tests of this binary run one at a time: the probe of one would see the pings of
/// another (same process).
static KERNEL: Mutex<()> = Mutex::new(());

fn kernel_test() -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os("BPFSTREAM_SKIP_KERNEL_TESTS").is_some() {
        eprintln!("skipping a kernel test: BPFSTREAM_SKIP_KERNEL_TESTS is set");
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "kernel tests load BPF programs: run them as root (sudo cargo test)");
    Some(KERNEL.lock().unwrap_or_else(|e| e.into_inner()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Payload lengths cycle through fixed-size records (0) and variable ones.
fn len_of(seq: u64) -> u32 {
    [0, 1, 7, 64, 200, 0, 13, 1000][seq as usize % 8]
}

/// What a consumer saw: the (seq, len) of every record, in order, and the losses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    records: Vec<(u64, u32)>,
    lost: u64,
}

impl Seen {
    fn item(&mut self, item: Item<'_>) {
        match item {
            Item::Record(r) => self.record(r.data),
            Item::Lost(l) => self.lost += l.count,
        }
    }

    fn record(&mut self, data: &[u8]) {
        let (header, _) = ping::decode(data).unwrap_or_else(|| panic!("malformed ping record {data:?}"));
        assert_eq!(header.len, len_of(header.seq));
        self.records.push((header.seq, header.len));
    }

    fn event(&mut self, event: Event<OwnedRecord>) {
        match event {
            Event::Record(r) => self.record(&r.data),
            Event::Lost(l) => self.lost += l.count,
            Event::Malformed(e) => panic!("{e}"),
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.records.iter().map(|&(seq, _)| seq).collect()
    }
}

/// Pings `0..count` (of `len(seq)` bytes) from a thread pinned to CPU 0: a perf buffer's records
/// are in order only within a CPU, and a thread that migrates mid-burst splits them.
fn ping_from_one_cpu(count: u64, len: fn(u64) -> u32) {
    std::thread::spawn(move || {
        ping::pin_to_cpu(0).unwrap();
        for seq in 0..count {
            ping(seq, len(seq));
        }
    })
    .join()
    .unwrap();
}

/// Loads the probe, sends `count` pings from a thread pinned to CPU 0 while nobody consumes,
/// detaches, and returns the source with everything still in it.
fn burst(options: PingOptions, count: u64) -> EventSource {
    let mut probe = PingProbe::load(options).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    ping_from_one_cpu(count, len_of);
    probe.detach();
    source
}

fn drain_async(source: EventSource) -> (Seen, bpfstream::Stats) {
    runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        stream.stop_handle().drain();
        let mut seen = Seen::default();
        while let Some(event) = stream.next().await {
            seen.event(event.unwrap());
        }
        (seen, stream.stats())
    })
}

fn same_load_same_items(transport: Transport) {
    let Some(_kernel) = kernel_test() else { return };
    // Small buffers, so the burst overflows them and losses are part of what must match.
    let options = PingOptions { ring_bytes: 16 << 10, perf_pages: 1, ..PingOptions::new(transport) };
    let count = 600;

    let mut blocking = Seen::default();
    let mut source = burst(options, count);
    let totals = source.finish(deadline(Duration::from_secs(5)), |item: Item<'_>| blocking.item(item)).unwrap();
    assert_eq!(totals.produced, Some(count));
    assert_eq!(totals.delivered + totals.dropped, count, "{totals:?}");
    assert!(totals.dropped > 0, "the burst should overflow the buffer: {totals:?}");

    let (asynchronous, stats) = drain_async(burst(options, count));
    assert_eq!(asynchronous, blocking, "the async stream saw something else than the blocking consumer");
    assert_eq!((stats.events, stats.lost), (totals.delivered, totals.dropped));
    assert_eq!(asynchronous.records.len() as u64 + asynchronous.lost, count);
}

#[test]
fn ring_async_stream_delivers_what_the_blocking_consumer_does() {
    same_load_same_items(Transport::Ring);
}

#[test]
fn perf_async_stream_delivers_what_the_blocking_consumer_does() {
    same_load_same_items(Transport::Perf);
}

/// A producer thread pings while the stream waits and consumes; the stream must yield every
/// record once, in order, with no loss. The producer sends batches the buffer can hold and
/// waits for the stream to catch up after each, so nothing is lost however slow the machine.
/// The ring stream has no delay timer: each wait it makes must end with the kernel's wakeup, or
/// the records stay stranded and the test times out. (Whether it has to wait at all depends on
/// the machine's speed, so the count of wakeups is not judged.)
fn live(transport: Transport) {
    let Some(_kernel) = kernel_test() else { return };
    let (count, batch) = (3000, 500);
    let mut probe = PingProbe::load(PingOptions::new(transport)).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    let (seen, stats) = runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        if transport == Transport::Ring {
            stream.set_max_delay(None);
        }
        let cancel = stream.stop_handle();
        let stats = stream.stats_handle();
        let progress = stream.stats_handle();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watching = running.clone();
        // Read the stats from another thread while the stream runs: they only grow.
        let watcher = std::thread::spawn(move || {
            let mut last = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let now = stats.read().events;
                assert!(now >= last, "events went from {last} to {now}");
                last = now;
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        let producer = std::thread::spawn(move || {
            ping::pin_to_cpu(0).unwrap();
            for seq in 0..count {
                ping(seq, len_of(seq));
                if (seq + 1) % batch == 0 {
                    let caught_up = deadline(Duration::from_secs(20));
                    while progress.read().events + progress.read().lost < seq + 1 {
                        assert!(std::time::Instant::now() < caught_up, "stranded: {:?}", progress.read());
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            cancel.drain(); // nothing more will come: yield the rest and end
        });
        let mut seen = Seen::default();
        let all = async {
            while let Some(event) = stream.next().await {
                seen.event(event.unwrap());
            }
        };
        tokio::time::timeout(scaled(Duration::from_secs(60)), all).await.expect("records stranded without a wakeup");
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        producer.join().unwrap();
        watcher.join().unwrap();
        (seen, stream.stats())
    });
    assert_eq!(seen.seqs(), (0..count).collect::<Vec<_>>());
    assert_eq!((seen.lost, stats.lost, stats.events), (0, 0, count), "{stats:?}");
    assert!(stats.peak_fill > 0 && stats.fill.capacity > 0, "{stats:?}");
}

#[test]
fn ring_async_stream_keeps_up_with_a_live_producer() {
    live(Transport::Ring);
}

#[test]
fn perf_async_stream_keeps_up_with_a_live_producer() {
    live(Transport::Perf);
}

/// Takes `taken` records with the stream, then stops it in one of three ways; everything not
/// yielded must still be in the buffer for the next consumer.
fn cancel_mid_stream(transport: Transport, how: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let (count, taken) = (300u64, 100u64);
    let mut probe = PingProbe::load(PingOptions::new(transport)).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    ping_from_one_cpu(count, len_of);
    let (first, rest_source, counted) = runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        let mut first = Seen::default();
        while (first.records.len() as u64) < taken {
            first.event(stream.next().await.unwrap().unwrap());
        }
        if how == "cancel" {
            stream.stop_handle().cancel();
            assert!(stream.next().await.is_none(), "a cancelled stream ends");
        }
        let counted = stream.stats().events;
        let rest_source = match how {
            // Dropping the stream drops its ring consumer; a new one continues where it stopped.
            "drop" => {
                drop(stream);
                None
            }
            _ => {
                let (mut sources, pending) = stream.into_sources();
                assert!(pending.is_empty(), "only loss reports can wait in a stream: {pending:?}");
                Some(sources.remove(0))
            }
        };
        (first, rest_source, counted)
    });
    assert_eq!(counted, taken, "the stream counts what it yielded");
    let mut source = rest_source.unwrap_or_else(|| probe.source().unwrap());
    probe.detach();
    let mut rest = Seen::default();
    let totals = source.finish(deadline(Duration::from_secs(5)), |item: Item<'_>| rest.item(item)).unwrap();
    assert_eq!(first.seqs(), (0..taken).collect::<Vec<_>>());
    assert_eq!(rest.seqs(), (taken..count).collect::<Vec<_>>(), "records after a {how} were lost or repeated");
    assert_eq!(totals.dropped, 0);
}

#[test]
fn ring_dropping_the_stream_leaves_the_rest_in_the_ring() {
    cancel_mid_stream(Transport::Ring, "drop");
}

#[test]
fn ring_into_inner_gives_back_the_rest() {
    cancel_mid_stream(Transport::Ring, "into_inner");
}

#[test]
fn perf_stop_handle_cancel_leaves_the_rest_in_the_buffer() {
    cancel_mid_stream(Transport::Perf, "cancel");
}

/// `next()` futures dropped before they complete (a timeout, a `select!` branch not taken)
/// lose nothing: every record comes out exactly once, in order, or is counted as dropped by the
/// kernel (a ring the consumer fell behind on, as on a slow machine).
#[test]
fn dropped_next_futures_lose_nothing() {
    let Some(_kernel) = kernel_test() else { return };
    let count = 2000;
    let mut probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    let (seen, abandoned) = runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        let mut abandoned = 0;
        // Nothing was sent yet: these futures are certainly dropped while waiting.
        for _ in 0..3 {
            assert!(tokio::time::timeout(Duration::from_millis(5), stream.next()).await.is_err());
            abandoned += 1;
        }
        let producer = std::thread::spawn(move || {
            for seq in 0..count {
                ping(seq, len_of(seq));
                if seq % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let mut seen = Seen::default();
        while seen.records.len() as u64 + seen.lost < count {
            match tokio::time::timeout(Duration::from_micros(200), stream.next()).await {
                Ok(event) => seen.event(event.unwrap().unwrap()),
                Err(_) => abandoned += 1,
            }
        }
        producer.join().unwrap();
        (seen, abandoned)
    });
    probe.detach();
    assert!(seen.seqs().windows(2).all(|w| w[0] < w[1]), "repeated or out of order: {:?}", seen.seqs());
    assert_eq!(seen.records.len() as u64 + seen.lost, count, "delivered + dropped = produced");
    assert!(abandoned >= 3);
}

/// With `BPF_RB_NO_WAKEUP` the kernel never wakes the consumer: records come out only through
/// the delay timer, and must all come out.
#[test]
fn records_without_wakeups_arrive_through_the_delay_timer() {
    let Some(_kernel) = kernel_test() else { return };
    let stats = records_without_wakeups_arrive(Some(Duration::from_millis(20)));
    assert!(stats.timeouts > 0, "{stats:?}");
}

#[test]
fn records_without_wakeups_arrive_though_no_delay_timer_was_asked_for() {
    let Some(_kernel) = kernel_test() else { return };
    // A source told its producers never wake it keeps the default timer.
    records_without_wakeups_arrive(None);
}

/// Sends records with `BPF_RB_NO_WAKEUP` into a ring that a stream with `max_delay` waits on;
/// returns the stream's stats once it has them all.
fn records_without_wakeups_arrive(max_delay: Option<Duration>) -> bpfstream::Stats {
    let count = 50;
    let options = PingOptions { wakeup: WakeupPolicy::Never, ..PingOptions::new(Transport::Ring) };
    let mut probe = PingProbe::load(options).unwrap();
    let mut source = probe.source().unwrap();
    source.expect_wakeups(WakeupPolicy::Never);
    probe.attach().unwrap();
    let stats = runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        stream.set_max_delay(max_delay);
        let producer = tokio::task::spawn_blocking(move || {
            // Start once the stream waits, so the records land in a buffer nobody is reading.
            std::thread::sleep(Duration::from_millis(50));
            for seq in 0..count {
                ping(seq, len_of(seq));
            }
        });
        let mut seen = Seen::default();
        let all = async {
            while (seen.records.len() as u64) < count {
                seen.event(stream.next().await.unwrap().unwrap());
            }
        };
        // Not `tokio::time::timeout`: at the deadline it polls the stream once more, which
        // would find the records a stream asleep for good had missed.
        tokio::select! {
            biased;
            () = tokio::time::sleep(scaled(Duration::from_secs(20))) => panic!("records stranded without a wakeup"),
            () = all => {}
        }
        producer.await.unwrap();
        assert_eq!(seen.seqs(), (0..count).collect::<Vec<_>>());
        stream.stats()
    });
    probe.detach();
    assert_eq!(stats.wakeups, 0, "BPF_RB_NO_WAKEUP, yet the kernel woke the stream: {stats:?}");
    stats
}

/// A blocking poll without a timeout on a ring whose producers never wake it looks again on
/// its own rather than sleep forever: records sent after it started waiting are delivered.
#[test]
fn a_blocking_poll_without_timeout_finds_records_sent_without_wakeups() {
    let Some(_kernel) = kernel_test() else { return };
    let options = PingOptions { wakeup: WakeupPolicy::Never, ..PingOptions::new(Transport::Ring) };
    let mut probe = PingProbe::load(options).unwrap();
    let mut source = probe.source().unwrap();
    source.expect_wakeups(WakeupPolicy::Never);
    probe.attach().unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let n = source.poll(None, |item: Item<'_>| seen.item(item)).unwrap();
        done_tx.send(()).unwrap();
        (n, seen.seqs())
    });
    // Start once the consumer waits, so the record lands in a buffer nobody is reading.
    std::thread::sleep(Duration::from_millis(50));
    ping(7, len_of(7));
    if done.recv_timeout(scaled(Duration::from_secs(20))).is_err() {
        panic!("poll(None) slept while a record waited");
    }
    let (n, seqs) = consumer.join().unwrap();
    probe.detach();
    assert_eq!((n, seqs), (1, vec![7]));
}

#[test]
fn a_cancel_wakes_a_waiting_stream() {
    let Some(_kernel) = kernel_test() else { return };
    let probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let source = probe.source().unwrap();
    runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        stream.set_max_delay(None); // only the cancel can end the wait
        let cancel = stream.stop_handle();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            cancel.cancel();
        });
        let next = tokio::time::timeout(scaled(Duration::from_secs(20)), stream.next()).await;
        assert!(matches!(next, Ok(None)), "the stream should end when cancelled");
    });
}

bpfstream::record! {
    /// A ping with at least 32 bytes of data.
    #[derive(Debug)]
    struct BigPing {
        seq: u64,
        len: u32,
        cpu: u32,
        data: [u8; 32],
    }
}

#[test]
fn typed_streams_decode_and_report_short_records() {
    let Some(_kernel) = kernel_test() else { return };
    let mut probe = PingProbe::load(PingOptions::new(Transport::Perf)).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    ping(1, 0); // 16 bytes: too short
    ping(2, 32);
    ping(3, 40); // longer than BigPing: the rest is ignored
    probe.detach();
    let events = runtime().block_on(async {
        let mut stream = EventStream::typed::<BigPing>(source).unwrap();
        stream.stop_handle().drain();
        let events: Vec<_> = stream.by_ref().map(Result::unwrap).collect().await;
        assert_eq!(stream.stats().events, 3, "a malformed record is delivered (and reported)");
        events
    });
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(events[0], Event::Malformed(TypedError { needed: 48, .. })), "{events:?}");
    let Event::Record(ref big) = events[1] else { panic!("{events:?}") };
    assert_eq!((big.seq, big.len, big.data[..3].to_vec()), (2, 32, vec![2, 3, 4]));
    assert!(matches!(events[2], Event::Record(BigPing { seq: 3, len: 40, .. })), "{events:?}");
}

/// Two probes (a ring and a perf buffer) see every ping; a merged stream serves them by
/// priority, and in turns when the priorities are equal.
fn merged(perf_priority: i32) -> Vec<(&'static str, u64)> {
    let count = 40;
    let mut ring_probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let mut perf_probe = PingProbe::load(PingOptions::new(Transport::Perf)).unwrap();
    let (ring, perf) = (ring_probe.source().unwrap(), perf_probe.source().unwrap());
    ring_probe.attach().unwrap();
    perf_probe.attach().unwrap();
    ping_from_one_cpu(count, len_of);
    ring_probe.detach();
    perf_probe.detach();
    runtime().block_on(async {
        let tagged = |source: &'static str| {
            move |r: Record<'_>| -> Result<(&'static str, u64), TypedError> {
                Ok((source, ping::decode(r.data).expect("intact").0.seq))
            }
        };
        let mut merged = EventStream::with_decoder(ring, tagged("ring")).unwrap(); // priority 0
        merged.add(perf, perf_priority, tagged("perf")).unwrap();
        merged.stop_handle().drain();
        let mut out = Vec::new();
        while let Some(item) = merged.next().await {
            let event = item.unwrap();
            let Event::Record(tagged) = event else { panic!("{event:?}") };
            out.push(tagged);
        }
        assert_eq!(merged.stats().events, 2 * count);
        out
    })
}

#[test]
fn merged_stream_serves_the_higher_priority_first() {
    let Some(_kernel) = kernel_test() else { return };
    let out = merged(5);
    let expected: Vec<_> = (0..40).map(|s| ("perf", s)).chain((0..40).map(|s| ("ring", s))).collect();
    assert_eq!(out, expected);
}

#[test]
fn merged_stream_takes_turns_between_equal_priorities() {
    let Some(_kernel) = kernel_test() else { return };
    let out = merged(0);
    let expected: Vec<_> = (0..40).flat_map(|s| [("ring", s), ("perf", s)]).collect();
    assert_eq!(out, expected);
    let distinct: BTreeSet<_> = out.iter().collect();
    assert_eq!(distinct.len(), 80);
}

#[test]
fn streams_are_send_and_run_on_spawned_tasks() {
    let Some(_kernel) = kernel_test() else { return };
    let count = 100;
    let mut probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    for seq in 0..count {
        ping(seq, 0);
    }
    probe.detach();
    let seqs = runtime().block_on(async move {
        let mut stream = EventStream::typed::<ping::PingEvent>(source).unwrap();
        stream.stop_handle().drain();
        // A spawned task needs a Send + 'static stream.
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            while let Some(event) = stream.next().await {
                if let Event::Record(p) = event.unwrap() {
                    seqs.push(p.seq);
                }
            }
            seqs
        })
        .await
        .unwrap()
    });
    assert_eq!(seqs, (0..count).collect::<Vec<_>>());
}

#[test]
fn ping_event_mirrors_the_struct_clang_laid_out() {
    use bpfstream::btf::Mirror;
    for object in ["ping.ring.bpf.o", "ping.perf.bpf.o"] {
        let bytes = std::fs::read(format!("{}/examples/obj/{object}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        ping::PingEvent::check_btf(&bytes, "ping_event").unwrap();
    }
}

/// The blocking side: a Poller whose handler borrows a local Vec, stats read from another thread
/// while it runs, and waits counted.
#[test]
fn poller_handlers_borrow_locals_and_stats_are_live() {
    let Some(_kernel) = kernel_test() else { return };
    let count = 2000;
    let mut probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let mut source = probe.source().unwrap();
    probe.attach().unwrap();
    let stats = source.stats_handle();
    let mut seqs = Vec::new();
    let mut poller = Poller::new().unwrap();
    poller
        .add(&mut source, |item: Item<'_>| {
            if let Item::Record(r) = item {
                seqs.push(ping::decode(r.data).unwrap().0.seq);
            }
        })
        .unwrap();
    let stop = poller.stop_handle();
    let producer = std::thread::spawn(move || {
        for seq in 0..count {
            ping(seq, 0); // 24 bytes each: the ring holds them all, however slow the consumer
        }
        // Watch from this thread until the consumer has everything, then stop it.
        while stats.read().events < count {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.drain();
        stats.read()
    });
    poller.run(Duration::from_millis(50)).unwrap();
    drop(poller);
    let seen_from_thread = producer.join().unwrap();
    probe.detach();
    let totals = source.finish(deadline(Duration::from_secs(5)), |_: Item<'_>| {}).unwrap();
    assert_eq!(seqs, (0..count).collect::<Vec<_>>());
    assert_eq!(seen_from_thread.events, count);
    let stats = source.stats();
    assert_eq!((stats.events, stats.lost, stats.produced), (totals.delivered, totals.dropped, totals.produced));
    assert_eq!(stats.produced, Some(count));
    assert!(stats.wakeups > 0, "{stats:?}");
    assert!(stats.peak_fill > 0 && stats.fill.capacity == 256 << 10, "{stats:?}");
}

/// A ring map has one consumer in this process: a second one (through any fd of the map) would
/// publish past records the first still lends. Refused until the first is dropped.
#[test]
fn a_ring_map_has_one_consumer_per_process() {
    let Some(_kernel) = kernel_test() else { return };
    let mut probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let options = bpfstream::PerfOptions::default();
    let mut first = EventSource::open(probe.map("events").unwrap(), options).unwrap();
    let err = EventSource::open(probe.map("events").unwrap(), options).unwrap_err();
    assert!(matches!(err, bpfstream::Error::AlreadyConsumed { .. }), "{err}");
    assert!(err.to_string().contains("\"events\""), "{err}");
    let err = probe.source().unwrap_err().to_string();
    assert!(err.contains("already has a consumer"), "{err}");
    probe.attach().unwrap();
    ping(1, len_of(1));
    let mut seen = Seen::default();
    assert_eq!(first.consume(|item: Item<'_>| seen.item(item)).unwrap(), 1);
    drop(first);
    let mut source = probe.source().expect("free once the first consumer is dropped");
    ping(2, len_of(2));
    source.consume(|item: Item<'_>| seen.item(item)).unwrap();
    drop(source);
    probe.detach();
    assert_eq!(seen.seqs(), [1, 2]);
}

/// A ping committed behind a record that is discarded after it (adaptive wakeups, no delay
/// timer): the discard wakes the stream waiting at it, so the ping is delivered at once rather
/// than stranded until some later wakeup.
#[test]
fn a_record_behind_a_discarded_head_is_delivered_without_a_timer() {
    let Some(_kernel) = kernel_test() else { return };
    let mut probe = PingProbe::load(PingOptions::new(Transport::Ring)).unwrap();
    let source = probe.source().unwrap();
    probe.attach_program("handle_ping_behind_discard", "bpfstream_ping_behind_discard").unwrap();
    let (mut latencies, totals) = runtime().block_on(async {
        let mut stream = EventStream::new(source).unwrap();
        stream.set_max_delay(None);
        let mut latencies = Vec::new();
        for seq in 0..20 {
            let producer = tokio::task::spawn_blocking(move || {
                // Send once the stream sleeps on an empty ring.
                std::thread::sleep(Duration::from_millis(20));
                let sent = std::time::Instant::now();
                ping::bpfstream_ping_behind_discard(seq);
                sent
            });
            // Not `timeout`: it would poll the stream once more when it expires, and that look
            // finds the record. Only a wakeup may deliver it here.
            let event = tokio::select! {
                biased;
                () = tokio::time::sleep(Duration::from_secs(5)) => panic!("the record behind the discarded head was stranded"),
                event = stream.next() => event,
            };
            let received = std::time::Instant::now();
            let event = event.unwrap().unwrap();
            latencies.push(received - producer.await.unwrap());
            let Event::Record(record) = event else { panic!("{event:?}") };
            assert_eq!(ping::decode(&record.data).unwrap().0.seq, seq);
        }
        (latencies, stream.totals())
    });
    probe.detach();
    latencies.sort();
    eprintln!("record behind a discarded head: median {:?}, max {:?}", latencies[10], latencies[19]);
    assert_eq!((totals.delivered, totals.dropped), (20, 0), "{totals:?}");
}

/// A second perf buffer on a map takes its slots over; dropping the first leaves them to it.
#[test]
fn dropping_a_perf_buffer_leaves_the_slots_its_successor_took_over() {
    let Some(_kernel) = kernel_test() else { return };
    let mut probe = PingProbe::load(PingOptions::new(Transport::Perf)).unwrap();
    let options = bpfstream::PerfOptions::default();
    let first = EventSource::open(probe.map("events").unwrap(), options).unwrap();
    let mut second = EventSource::open(probe.map("events").unwrap(), options).unwrap();
    drop(first);
    probe.attach().unwrap();
    for seq in 0..10 {
        ping(seq, len_of(seq));
    }
    let mut seen = Seen::default();
    second.consume(|item: Item<'_>| seen.item(item)).unwrap();
    drop(second);
    probe.detach();
    let mut seqs = seen.seqs();
    seqs.sort();
    assert_eq!((seqs, seen.lost), ((0..10).collect::<Vec<_>>(), 0));
}

/// Four threads on two CPUs ping as fast as they can: uprobe programs are preemptible, so two of
/// them interleave on a CPU (long payloads keep each run long enough to be preempted). Every
/// call is counted produced exactly once, every record comes out intact (no two programs build
/// a record in the same scratch memory), and delivered + dropped == produced.
fn uprobe_storm(transport: Transport) {
    let Some(_kernel) = kernel_test() else { return };
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 10_000;
    let len = |seq: u64| if seq % 4 == 0 { 0 } else { ping::PING_DATA_MAX };
    let options = PingOptions { ring_bytes: 1 << 20, perf_pages: 64, ..PingOptions::new(transport) };
    let mut probe = PingProbe::load(options).unwrap();
    let mut source = probe.source().unwrap();
    probe.attach().unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    let (mut seqs, mut malformed) = (Vec::new(), 0);
    let mut handle = |item: Item<'_>| {
        if let Item::Record(record) = item {
            match ping::decode(record.data) {
                Some((event, _)) if event.len == len(event.seq) => seqs.push(event.seq),
                _ => malformed += 1,
            }
        }
    };
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let done = &done;
            scope.spawn(move || {
                ping::pin_to_cpu(thread as usize % 2).unwrap();
                for i in 0..PER_THREAD {
                    let seq = thread * PER_THREAD + i;
                    ping(seq, len(seq));
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Release);
            });
        }
        while done.load(std::sync::atomic::Ordering::Acquire) < THREADS {
            source.poll(Some(Duration::from_millis(10)), &mut handle).unwrap();
        }
    });
    probe.detach();
    let totals = source.finish(deadline(Duration::from_secs(5)), &mut handle).unwrap();
    eprintln!("{transport:?} storm: {totals:?}, {malformed} malformed");
    assert_eq!(malformed, 0, "records built by two programs at once");
    assert_eq!(totals.produced, Some(THREADS * PER_THREAD), "every call counted once: {totals:?}");
    assert_eq!(totals.delivered + totals.dropped, THREADS * PER_THREAD, "{totals:?}");
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!((seqs.len() as u64, distinct.len() as u64), (totals.delivered, totals.delivered));
}

#[test]
fn ring_counters_stay_exact_in_a_uprobe_storm() {
    uprobe_storm(Transport::Ring);
}

#[test]
fn perf_counters_stay_exact_in_a_uprobe_storm() {
    uprobe_storm(Transport::Perf);
}

/// Sets this process's limit of open descriptors (soft), returning the old one.
fn set_open_files_limit(soft: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one rlimit through valid pointers.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let old = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        old
    }
}

/// A second perf buffer whose open fails on its second CPU (EMFILE: the first CPU's event was
/// opened, the second could not be) leaves the first buffer every slot: the first still gets
/// the records of the first CPU.
#[test]
fn a_second_perf_open_that_fails_part_way_leaves_the_first_its_slots() {
    let Some(_kernel) = kernel_test() else { return };
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipping: one CPU, a perf open cannot fail part way");
        return;
    }
    let mut probe = PingProbe::load(PingOptions::new(Transport::Perf)).unwrap();
    let options = bpfstream::PerfOptions::default();
    let mut first = EventSource::open(probe.map("events").unwrap(), options).unwrap();
    // The lowest free descriptors, in the order the next opens get them: the second open takes
    // three (the map's duplicate, its epoll set, the first CPU's event) before the second CPU's
    // event, the fourth, which the limit refuses.
    let free: Vec<std::fs::File> = (0..4).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    let fourth = std::os::fd::AsRawFd::as_raw_fd(&free[3]) as u64;
    drop(free);
    let old = set_open_files_limit(fourth);
    let second = EventSource::open(probe.map("events").unwrap(), options);
    set_open_files_limit(old);
    let err = second.expect_err("the second CPU's event is past the limit");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    probe.attach().unwrap();
    ping_from_one_cpu(5, len_of);
    probe.detach();
    let mut seen = Seen::default();
    first.consume(|item: Item<'_>| seen.item(item)).unwrap();
    assert_eq!((seen.seqs(), seen.lost), ((0..5).collect::<Vec<_>>(), 0), "the first buffer lost CPU 0's slot");
}

/// `finish` with a handler that fails stops at the failure and returns its error.
#[test]
fn finish_stops_at_a_failing_handler_and_returns_its_error() {
    let Some(_kernel) = kernel_test() else { return };
    let mut source = burst(PingOptions::new(Transport::Ring), 5);
    let mut calls = 0;
    let result = source.finish(deadline(Duration::from_secs(1)), |_: Item<'_>| {
        calls += 1;
        Err::<(), _>("no room")
    });
    let err = result.expect_err("the handler failed");
    assert_eq!((err.to_string().as_str(), calls), ("the handler failed: no room", 1));
}

/// A handler that panics mid-pass (the caller catches it): the records handed over before and
/// the one it panicked on are consumed and counted, so the final drain hands over only the rest
/// and delivered + dropped == produced.
#[test]
fn a_handler_that_panics_hands_no_record_over_twice() {
    let Some(_kernel) = kernel_test() else { return };
    for transport in [Transport::Ring, Transport::Perf] {
        let mut source = burst(PingOptions::new(transport), 5);
        let mut seen = Seen::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            source.consume(|item: Item<'_>| {
                seen.item(item);
                assert!(seen.records.len() < 3, "the handler gives up at the third record");
            })
        }));
        assert!(panicked.is_err(), "{transport}: the handler panicked");
        let totals = source.finish(deadline(Duration::from_secs(5)), |item: Item<'_>| seen.item(item)).unwrap();
        assert_eq!(seen.seqs(), (0..5).collect::<Vec<_>>(), "{transport}: each record once, in order");
        assert_eq!((totals.delivered, totals.dropped, totals.produced), (5, 0, Some(5)), "{transport}");
    }
}

/// A perf buffer too large to describe (the watermark and the ring size are 32-bit in the
/// kernel's interface) is an error from `open`, not a panic.
#[test]
fn a_perf_buffer_too_large_is_an_error() {
    let Some(_kernel) = kernel_test() else { return };
    let probe = PingProbe::load(PingOptions::new(Transport::Perf)).unwrap();
    let options = bpfstream::PerfOptions { pages_per_cpu: 1 << 20, ..bpfstream::PerfOptions::default() };
    let err = EventSource::open(probe.map("events").unwrap(), options).expect_err("4 GiB per CPU");
    assert!(err.to_string().contains("pages per CPU"), "{err}");
}

/// The exact end of a poller's sources in one call: after the detach, every source's totals add
/// up (delivered + dropped == produced), each delivered record handed to its source's handler.
#[test]
fn a_poller_finishes_all_its_sources_exactly() {
    let Some(_kernel) = kernel_test() else { return };
    let mut ring = burst(PingOptions::new(Transport::Ring), 7);
    let mut perf = burst(PingOptions::new(Transport::Perf), 9);
    let (mut from_ring, mut from_perf) = (Seen::default(), Seen::default());
    let mut poller = Poller::new().unwrap();
    let ring_id = poller.add(&mut ring, |item: Item<'_>| from_ring.item(item)).unwrap();
    let perf_id = poller.add_with(&mut perf, 5, usize::MAX, |item: Item<'_>| from_perf.item(item)).unwrap();
    let totals = poller.finish(deadline(Duration::from_secs(5))).unwrap();
    drop(poller);
    assert_eq!(totals.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [ring_id, perf_id], "in the order added");
    for ((_, totals), (seen, sent)) in totals.iter().zip([(&from_ring, 7), (&from_perf, 9)]) {
        assert_eq!((totals.delivered, totals.dropped, totals.produced), (sent, 0, Some(sent)), "{totals:?}");
        assert_eq!(seen.seqs(), (0..sent).collect::<Vec<_>>());
    }
}
