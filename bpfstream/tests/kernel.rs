//! The library against the real kernel (as root): the async streams compared with the blocking
//! consumers, the pull, cancellation, the delay bound, typed, merged and ordered streams, totals
//! and fill. Every load is triggered by the test itself: a uprobe on `bpfstream_ping` in this
//! binary sends one record per call (`bpf/ping.bpf.c`), and nothing else on the machine can add
//! to it.

#[path = "support/ping.rs"]
mod ping;
#[path = "support/time_scale.rs"]
mod time_scale;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bpfstream::stream::EventStream;
use bpfstream::{
    Event, EventSource, FromRecord, Options, OwnedRecord, Poller, Record, Totals, Transport, WakeupPolicy,
};
use futures_util::StreamExt;
use ping::{ping, PingProbe};
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
    fn item(&mut self, event: Event<Record<'_>>) {
        match event {
            Event::Record(r) => self.record(r.data),
            Event::Dropped(d) => self.lost += d.count,
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
            Event::Dropped(d) => self.lost += d.count,
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

/// A stream of the source's records, copied.
fn copied(source: EventSource) -> EventStream {
    EventStream::new(source, |r| Ok(OwnedRecord::from(r))).unwrap()
}

/// Options with a buffer of `bytes`.
fn sized(bytes: u64) -> Options {
    Options { buffer_bytes: Some(bytes), ..Options::default() }
}

/// Loads the probe, sends `count` pings from a thread pinned to CPU 0 while nobody consumes,
/// detaches, and returns the source with everything still in it.
fn burst(transport: Transport, options: Options, count: u64) -> EventSource {
    let mut probe = PingProbe::load(transport, options).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    ping_from_one_cpu(count, len_of);
    probe.detach();
    source
}

fn drain_async(source: EventSource) -> (Seen, Totals) {
    runtime().block_on(async {
        let mut stream = copied(source);
        stream.stop_handle().drain();
        let mut seen = Seen::default();
        while let Some(event) = stream.next().await {
            seen.event(event.unwrap());
        }
        (seen, stream.totals())
    })
}

/// What a blocking pull of the stream saw (the same as the async one, as a blocking tool gets
/// it).
fn drain_blocking(source: EventSource) -> Seen {
    let mut stream = copied(source);
    stream.stop_handle().drain();
    let mut seen = Seen::default();
    while let Some(event) = stream.next_blocking(None).unwrap() {
        seen.event(event);
    }
    seen
}

/// What pulled batches ([`EventSource::read`]) saw, until the counters add up.
fn drain_pulled(mut source: EventSource, count: u64) -> (Seen, Totals) {
    let mut seen = Seen::default();
    let until = deadline(Duration::from_secs(10));
    while seen.records.len() as u64 + seen.lost < count {
        assert!(std::time::Instant::now() < until, "the pull never got everything: {seen:?}");
        for event in source.read(Some(Duration::from_millis(20))).unwrap() {
            seen.item(event);
        }
    }
    (seen, source.totals())
}

fn same_load_same_items(transport: Transport) {
    let Some(_kernel) = kernel_test() else { return };
    // Small buffers, so the burst overflows them and drops are part of what must match.
    let options = sized(match transport {
        Transport::Ring => 16 << 10,
        Transport::Perf => 4 << 10,
    });
    let count = 600;

    let mut blocking = Seen::default();
    let mut source = burst(transport, options, count);
    let totals = source.finish(deadline(Duration::from_secs(5)), |event| blocking.item(event)).unwrap();
    assert_eq!(totals.produced, Some(count));
    assert_eq!(totals.delivered + totals.dropped, count, "{totals:?}");
    assert!(totals.dropped > 0, "the burst should overflow the buffer: {totals:?}");

    let (asynchronous, stream_totals) = drain_async(burst(transport, options, count));
    assert_eq!(asynchronous, blocking, "the async stream saw something else than the blocking consumer");
    assert_eq!((stream_totals.delivered, stream_totals.dropped), (totals.delivered, totals.dropped));
    assert_eq!(asynchronous.records.len() as u64 + asynchronous.lost, count);

    let pulled_stream = drain_blocking(burst(transport, options, count));
    assert_eq!(pulled_stream, blocking, "the blocking pull of a stream saw something else");

    let (pulled, pulled_totals) = drain_pulled(burst(transport, options, count), count);
    assert_eq!(pulled, blocking, "the pulled batches saw something else than the handler");
    assert_eq!((pulled_totals.delivered, pulled_totals.dropped), (totals.delivered, totals.dropped));
}

#[test]
fn ring_streams_and_pulls_deliver_what_the_handler_does() {
    same_load_same_items(Transport::Ring);
}

#[test]
fn perf_streams_and_pulls_deliver_what_the_handler_does() {
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
    let mut probe = PingProbe::new(transport).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    let (seen, totals, fill) = runtime().block_on(async {
        let (stats, progress, stats_fill) = (source.totals_handle(), source.totals_handle(), source.totals_handle());
        let mut stream = copied(source);
        if transport == Transport::Ring {
            stream.set_max_delay(None);
        }
        let cancel = stream.stop_handle();
        let running = Arc::new(AtomicBool::new(true));
        let watching = running.clone();
        // Read the totals from another thread while the stream runs: they only grow.
        let watcher = std::thread::spawn(move || {
            let mut last = 0;
            while watching.load(Ordering::Relaxed) {
                let now = stats.read().delivered;
                assert!(now >= last, "delivered went from {last} to {now}");
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
                    while progress.read().delivered + progress.read().dropped < seq + 1 {
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
        running.store(false, Ordering::Relaxed);
        producer.join().unwrap();
        let fill = stats_fill.fill();
        watcher.join().unwrap();
        (seen, stream.totals(), fill)
    });
    assert_eq!(seen.seqs(), (0..count).collect::<Vec<_>>());
    assert_eq!((seen.lost, totals.dropped, totals.delivered), (0, 0, count), "{totals:?}");
    assert!(totals.peak_fill > 0 && fill.capacity > 0, "{totals:?} {fill:?}");
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
    let mut probe = PingProbe::new(transport).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    ping_from_one_cpu(count, len_of);
    let (first, rest_source, counted) = runtime().block_on(async {
        let mut stream = copied(source);
        let mut first = Seen::default();
        while (first.records.len() as u64) < taken {
            first.event(stream.next().await.unwrap().unwrap());
        }
        if how == "cancel" {
            stream.stop_handle().cancel();
            assert!(stream.next().await.is_none(), "a cancelled stream ends");
        }
        let counted = stream.totals().delivered;
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
    let totals = source.finish(deadline(Duration::from_secs(5)), |event| rest.item(event)).unwrap();
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
    let mut probe = PingProbe::new(Transport::Ring).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    let (seen, abandoned) = runtime().block_on(async {
        let mut stream = copied(source);
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
    let totals = records_without_wakeups_arrive(Some(Duration::from_millis(20)));
    assert!(totals.timeouts > 0, "{totals:?}");
}

#[test]
fn records_without_wakeups_arrive_though_no_delay_timer_was_asked_for() {
    let Some(_kernel) = kernel_test() else { return };
    // A source told its producers never wake it keeps the default timer.
    records_without_wakeups_arrive(None);
}

/// Options whose ring producers never wake the consumer (`BPF_RB_NO_WAKEUP`).
fn never_woken() -> Options {
    Options { wakeup: WakeupPolicy::Never, ..Options::default() }
}

/// Sends records with `BPF_RB_NO_WAKEUP` into a ring that a stream with `max_delay` waits on;
/// returns the stream's totals once it has them all.
fn records_without_wakeups_arrive(max_delay: Option<Duration>) -> Totals {
    let count = 50;
    let mut probe = PingProbe::load(Transport::Ring, never_woken()).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    let totals = runtime().block_on(async {
        let mut stream = copied(source);
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
        stream.totals()
    });
    probe.detach();
    assert_eq!(totals.wakeups, 0, "BPF_RB_NO_WAKEUP, yet the kernel woke the stream: {totals:?}");
    totals
}

/// A blocking poll without a timeout on a ring whose producers never wake it looks again on
/// its own rather than sleep forever: records sent after it started waiting are delivered.
#[test]
fn a_blocking_poll_without_timeout_finds_records_sent_without_wakeups() {
    let Some(_kernel) = kernel_test() else { return };
    let mut probe = PingProbe::load(Transport::Ring, never_woken()).unwrap();
    let mut source = probe.source().unwrap();
    probe.attach().unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let n = source.poll(None, |event| seen.item(event)).unwrap();
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
    let probe = PingProbe::new(Transport::Ring).unwrap();
    let source = probe.source().unwrap();
    runtime().block_on(async {
        let mut stream = copied(source);
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
    let mut probe = PingProbe::new(Transport::Perf).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    ping(1, 0); // 16 bytes: too short
    ping(2, 32);
    ping(3, 40); // longer than BigPing: the rest is ignored
    probe.detach();
    let items = runtime().block_on(async {
        let mut stream = EventStream::new(source, |r| BigPing::from_record(r.data)).unwrap();
        stream.stop_handle().drain();
        let items: Vec<_> = stream.by_ref().collect().await;
        assert_eq!(stream.totals().delivered, 3, "a malformed record is delivered (and reported)");
        items
    });
    assert_eq!(items.len(), 3, "the stream goes on after a malformed record: {items:?}");
    assert!(matches!(items[0], Err(bpfstream::Error::Malformed { needed: 48, .. })), "{items:?}");
    let Ok(Event::Record(ref big)) = items[1] else { panic!("{items:?}") };
    assert_eq!((big.seq, big.len, big.data[..3].to_vec()), (2, 32, vec![2, 3, 4]));
    assert!(matches!(items[2], Ok(Event::Record(BigPing { seq: 3, len: 40, .. }))), "{items:?}");
}

/// Two probes (a ring and a perf buffer) see every ping; a merged stream serves them by
/// priority, and in turns when the priorities are equal.
fn merged(perf_priority: i32) -> Vec<(&'static str, u64)> {
    let count = 40;
    let mut ring_probe = PingProbe::new(Transport::Ring).unwrap();
    let mut perf_probe = PingProbe::new(Transport::Perf).unwrap();
    let (ring, perf) = (ring_probe.source().unwrap(), perf_probe.source().unwrap());
    ring_probe.attach().unwrap();
    perf_probe.attach().unwrap();
    ping_from_one_cpu(count, len_of);
    ring_probe.detach();
    perf_probe.detach();
    runtime().block_on(async {
        let tagged = |source: &'static str| {
            move |r: Record<'_>| -> Result<(&'static str, u64), bpfstream::Error> {
                Ok((source, ping::decode(r.data).expect("intact").0.seq))
            }
        };
        let mut merged = EventStream::new(ring, tagged("ring")).unwrap(); // priority 0
        merged.add(perf, perf_priority, tagged("perf")).unwrap();
        merged.stop_handle().drain();
        let mut out = Vec::new();
        while let Some(item) = merged.next().await {
            let event = item.unwrap();
            let Event::Record(tagged) = event else { panic!("{event:?}") };
            out.push(tagged);
        }
        assert_eq!(merged.totals().delivered, 2 * count);
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
    let mut probe = PingProbe::new(Transport::Ring).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    for seq in 0..count {
        ping(seq, 0);
    }
    probe.detach();
    let seqs = runtime().block_on(async move {
        let mut stream = EventStream::new(source, |r| ping::PingEvent::from_record(r.data)).unwrap();
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

/// The blocking side: a Poller whose handler borrows a local Vec, totals read from another
/// thread while it runs (through a handle taken before), and waits counted.
#[test]
fn poller_handlers_borrow_locals_and_totals_are_live() {
    let Some(_kernel) = kernel_test() else { return };
    let count = 2000;
    let mut probe = PingProbe::new(Transport::Ring).unwrap();
    let mut source = probe.source().unwrap();
    probe.attach().unwrap();
    let totals_handle = source.totals_handle();
    let mut seqs = Vec::new();
    let mut poller = Poller::new().unwrap();
    poller
        .add(&mut source, 0, |event| {
            if let Event::Record(r) = event {
                seqs.push(ping::decode(r.data).unwrap().0.seq);
            }
        })
        .unwrap();
    let stop = poller.stop_handle();
    let watched = totals_handle.clone();
    let producer = std::thread::spawn(move || {
        for seq in 0..count {
            ping(seq, 0); // 24 bytes each: the ring holds them all, however slow the consumer
        }
        // Watch from this thread until the consumer has everything, then stop it.
        while watched.read().delivered < count {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.drain();
        (watched.read(), watched.fill())
    });
    poller.run(Duration::from_millis(50)).unwrap();
    drop(poller);
    let (seen_from_thread, fill) = producer.join().unwrap();
    probe.detach();
    let totals = source.finish(deadline(Duration::from_secs(5)), |_| {}).unwrap();
    assert_eq!(seqs, (0..count).collect::<Vec<_>>());
    assert_eq!(seen_from_thread.delivered, count);
    assert_eq!(totals_handle.read(), totals, "the handle reads what the source has");
    assert_eq!(totals.produced, Some(count));
    assert!(totals.wakeups > 0, "{totals:?}");
    assert!(totals.peak_fill > 0 && fill.capacity == 256 << 10, "{totals:?} {fill:?}");
}

/// A round passes a source with nothing to hand over by, yet publishes the wait it counted; the
/// records that source gets later are served as any.
#[test]
fn a_quiet_source_is_passed_by_and_served_once_records_come() {
    let Some(_kernel) = kernel_test() else { return };
    let (mut busy, mut quiet) = (PingProbe::new(Transport::Ring).unwrap(), PingProbe::new(Transport::Ring).unwrap());
    let (mut busy_source, mut quiet_source) = (busy.source().unwrap(), quiet.source().unwrap());
    let quiet_totals = quiet_source.totals_handle();
    busy.attach().unwrap();
    let (from_busy, from_quiet) = (Cell::new(0u64), Cell::new(0u64));
    let count = |seen: &Cell<u64>, event: Event<Record<'_>>| {
        seen.set(seen.get() + u64::from(matches!(event, Event::Record(_))))
    };
    let mut poller = Poller::new().unwrap();
    poller.add(&mut busy_source, 0, |event| count(&from_busy, event)).unwrap();
    poller.add(&mut quiet_source, 0, |event| count(&from_quiet, event)).unwrap();
    // The first round serves both (their drop counters are due); the second passes the quiet
    // one by: its two waits are published all the same.
    for round in 0..2 {
        ping(round, 0);
        poller.poll(Some(Duration::from_secs(5))).unwrap();
    }
    let seen = quiet_totals.read();
    assert_eq!((seen.delivered, seen.wakeups + seen.timeouts), (0, 2), "{seen:?}");
    quiet.attach().unwrap();
    for seq in 2..12 {
        ping(seq, 0);
    }
    let until = deadline(Duration::from_secs(30));
    while from_quiet.get() < 10 && Instant::now() < until {
        poller.poll(Some(Duration::from_millis(100))).unwrap();
    }
    drop(poller);
    assert_eq!(from_quiet.get(), 10, "the records of a source passed by before are served");
    busy.detach();
    quiet.detach();
    let finish = |source: &mut EventSource| source.finish(until, |_| {}).unwrap();
    assert_eq!((finish(&mut busy_source).delivered, finish(&mut quiet_source).delivered), (12, 10));
    assert_eq!(from_busy.get(), 12);
}

/// libbpf's ring introspection: `ring__consumer_pos`, `ring__producer_pos`,
/// `ring__avail_data_size` and `ring__size` are `Fill`'s fields, read now (from the source or a
/// handle); the positions move by the records' sizes, headers and padding included.
#[test]
fn fill_tells_positions_bytes_waiting_and_size_at_libbpfs_level() {
    let Some(_kernel) = kernel_test() else { return };
    for (transport, capacity) in [(Transport::Ring, 64 << 10), (Transport::Perf, 16 << 10)] {
        let mut probe = PingProbe::load(transport, sized(capacity)).unwrap();
        let mut source = probe.source().unwrap();
        let handle = source.totals_handle();
        probe.attach().unwrap();
        let empty = source.fill();
        ping_from_one_cpu(3, |_| 0); // 16-byte records
        let full = handle.fill();
        // A ring record has an 8-byte header; a perf sample an 8-byte header and a 4-byte size,
        // its data padded to 8.
        let (record, per_cpu) = match transport {
            Transport::Ring => (24, 1),
            Transport::Perf => (32, online_cpus()),
        };
        assert_eq!((empty.used, empty.capacity), (0, capacity * per_cpu), "{transport}: {empty:?}");
        assert_eq!(full.used, 3 * record, "{transport}: {full:?}");
        assert_eq!(full.producer_pos - full.consumer_pos, full.used, "{transport}: {full:?}");
        assert_eq!(full.consumer_pos, empty.consumer_pos, "{transport}: nothing consumed yet");
        assert_eq!(source.consume(|_| ()).unwrap(), 3);
        let after = source.fill();
        assert_eq!((after.used, after.consumer_pos), (0, full.producer_pos), "{transport}: {after:?}");
        probe.detach();
    }
}

/// The CPUs the kernel has online (a perf buffer has a ring on each).
fn online_cpus() -> u64 {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    list.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// One size knob, in bytes, for either transport: `Options::buffer_bytes` sizes the ring map at
/// `aya::load` and the perf buffer at `aya::open`, rounded up to a power-of-two number of
/// pages; a size out of range is an error, not a panic.
#[test]
fn one_size_in_bytes_sizes_either_transport() {
    let Some(_kernel) = kernel_test() else { return };
    for transport in [Transport::Ring, Transport::Perf] {
        let probe = PingProbe::load(transport, sized(100_000)).unwrap();
        let per_cpu = if transport == Transport::Perf { online_cpus() } else { 1 };
        assert_eq!(probe.source().unwrap().fill().capacity, (128 << 10) * per_cpu, "{transport}");
    }
    for transport in [Transport::Ring, Transport::Perf] {
        let err = PingProbe::load(transport, sized(4 << 30)).err().expect("4 GiB");
        assert!(err.to_string().contains("buffer size"), "{transport}: {err}");
    }
    let probe = PingProbe::new(Transport::Perf).unwrap();
    let err = EventSource::open(probe.map("events"), None, &sized(4 << 30)).expect_err("4 GiB per CPU");
    assert!(matches!(err, bpfstream::Error::InvalidSize { .. }), "{err}");
}

/// The pull lends records in place: a batch's records stay valid while it is alive (they are
/// all read after the iterator is done), and the space is returned at the next call, not
/// before; what the iterator did not reach comes with the next batch.
#[test]
fn pulled_records_stay_valid_until_the_next_call() {
    let Some(_kernel) = kernel_test() else { return };
    for transport in [Transport::Ring, Transport::Perf] {
        let mut probe = PingProbe::new(transport).unwrap();
        let mut source = probe.source().unwrap();
        probe.attach().unwrap();
        ping_from_one_cpu(10, len_of);
        let records: Vec<Record<'_>> = source
            .read(Some(Duration::from_secs(1)))
            .unwrap()
            .filter_map(|event| match event {
                Event::Record(record) => Some(record),
                Event::Dropped(_) => None,
            })
            .take(6)
            .collect();
        let mut seen = Seen::default();
        for record in &records {
            seen.record(record.data);
        }
        assert_eq!(seen.seqs(), (0..6).collect::<Vec<_>>(), "{transport}");
        let lent = source.fill();
        assert!(lent.used > 0, "{transport}: the lent records' space is not returned yet");
        for event in source.read(Some(Duration::ZERO)).unwrap() {
            seen.item(event);
        }
        assert_eq!(seen.seqs(), (0..10).collect::<Vec<_>>(), "{transport}: the rest, in the next batch");
        probe.detach();
        let totals = source.finish(deadline(Duration::from_secs(5)), |event| seen.item(event)).unwrap();
        assert_eq!((totals.delivered, totals.dropped, totals.produced), (10, 0, Some(10)), "{transport}");
    }
}

/// A StopHandle of a bare source wakes a poll or a read blocked in its wait, from another
/// thread, and later waits do not block.
#[test]
fn a_stop_handle_wakes_a_blocked_poll_and_read() {
    let Some(_kernel) = kernel_test() else { return };
    for transport in [Transport::Ring, Transport::Perf] {
        let probe = PingProbe::new(transport).unwrap();
        let mut source = probe.source().unwrap();
        let stop = source.stop_handle();
        let waker = stop.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.cancel();
        });
        let started = std::time::Instant::now();
        assert_eq!(source.poll(None, |_| ()).unwrap(), 0, "{transport}: nothing was sent");
        stopper.join().unwrap();
        assert!(stop.is_stopped());
        assert_eq!(source.read(None).unwrap().count(), 0, "{transport}: a stopped source does not wait");
        assert!(started.elapsed() < scaled(Duration::from_secs(20)), "{transport}: the stop did not wake the wait");
    }
}

/// A signal that interrupts a blocking poll or read without a timeout ends its wait, as a
/// timeout does (`Ok`, with nothing), so that the caller's loop can look at what the signal's
/// handler set: on either transport, and on a ring whose producers never wake it (where the
/// wait looks at the ring on its own every 100 ms).
#[test]
fn a_signal_ends_a_blocking_poll_and_read() {
    let Some(_kernel) = kernel_test() else { return };
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, for SIGUSR2, which nothing else in this binary uses.
    unsafe { libc::signal(libc::SIGUSR2, ignore as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    let cases = [
        (Transport::Ring, Options::default()),
        (Transport::Ring, never_woken()),
        (Transport::Perf, Options::default()),
    ];
    for (transport, options) in cases {
        let probe = PingProbe::load(transport, options).unwrap();
        let mut source = probe.source().unwrap();
        for pull in [false, true] {
            let returned = Arc::new(AtomicBool::new(false));
            let signaller = interrupt_until(Arc::clone(&returned), source.stop_handle());
            let taken = if pull { source.read(None).unwrap().count() } else { source.poll(None, |_| ()).unwrap() };
            returned.store(true, Ordering::SeqCst);
            let stopped = signaller.join().unwrap();
            assert!(!stopped, "{transport} {:?}, pull {pull}: the signal did not end the wait", options.wakeup);
            assert_eq!(taken, 0, "{transport}: nothing was sent");
        }
    }
}

/// Sends SIGUSR2 to this thread every 10 ms until `returned` (a signal that comes before the
/// wait begins interrupts nothing); stops the source through `stop` instead if the wait lasts
/// 20 s, and then says so.
fn interrupt_until(returned: Arc<AtomicBool>, stop: bpfstream::StopHandle) -> std::thread::JoinHandle<bool> {
    // SAFETY: pthread_self has no preconditions; this thread outlives the signaller (joined).
    let waiting = unsafe { libc::pthread_self() };
    let deadline = deadline(Duration::from_secs(20));
    std::thread::spawn(move || {
        while !returned.load(Ordering::SeqCst) {
            if std::time::Instant::now() > deadline {
                stop.cancel();
                return true;
            }
            // SAFETY: the waiting thread is alive until it joins this one.
            unsafe { libc::pthread_kill(waiting, libc::SIGUSR2) };
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    })
}

/// A blocking tool's ordered pull: records from two CPUs of a perf buffer, the later ones
/// written first on the other CPU, through a stream put in order and pulled with
/// `next_blocking`, come out all, in order (the key is the ping's sequence number here, where a
/// tool's would be a `bpf_ktime_get_ns()` stamp).
#[test]
fn an_ordered_blocking_pull_puts_two_cpus_in_order() {
    let Some(_kernel) = kernel_test() else { return };
    if online_cpus() < 2 {
        eprintln!("skipping: one CPU");
        return;
    }
    let count = 1000;
    let mut probe = PingProbe::new(Transport::Perf).unwrap();
    let source = probe.source().unwrap();
    probe.attach().unwrap();
    for (cpu, seqs) in [(1, 0..count / 2), (0, count / 2..count)] {
        std::thread::spawn(move || {
            ping::pin_to_cpu(cpu).unwrap();
            seqs.for_each(|seq| ping(seq, 0));
        })
        .join()
        .unwrap();
    }
    probe.detach();
    let mut stream = EventStream::new(source, |r| ping::PingEvent::from_record(r.data).map(|p| (p.seq, p.cpu)))
        .unwrap()
        .ordered(Duration::from_millis(10), |&(seq, _): &(u64, u32)| seq);
    stream.stop_handle().drain();
    let (mut seqs, mut cpus) = (Vec::new(), BTreeSet::new());
    while let Some(event) = stream.next_blocking(Some(scaled(Duration::from_secs(20)))).unwrap() {
        let Event::Record((seq, cpu)) = event else { panic!("{event:?}") };
        seqs.push(seq);
        cpus.insert(cpu);
    }
    assert_eq!(cpus.len(), 2, "from both CPUs");
    assert_eq!(seqs, (0..count).collect::<Vec<_>>(), "all, in key order");
    assert_eq!(stream.totals().delivered, count);
}

/// A ring map has one consumer in this process: a second one (through any fd of the map) would
/// publish past records the first still lends. Refused until the first is dropped.
#[test]
fn a_ring_map_has_one_consumer_per_process() {
    let Some(_kernel) = kernel_test() else { return };
    let mut probe = PingProbe::new(Transport::Ring).unwrap();
    let options = Options::default();
    let mut first = EventSource::open(probe.map("events"), None, &options).unwrap();
    let err = EventSource::open(probe.map("events"), None, &options).unwrap_err();
    assert!(matches!(err, bpfstream::Error::AlreadyConsumed { .. }), "{err}");
    assert!(err.to_string().contains("\"events\""), "{err}");
    let err = probe.source().unwrap_err().to_string();
    assert!(err.contains("already has a consumer"), "{err}");
    probe.attach().unwrap();
    ping(1, len_of(1));
    let mut seen = Seen::default();
    assert_eq!(first.consume(|event| seen.item(event)).unwrap(), 1);
    drop(first);
    let mut source = probe.source().expect("free once the first consumer is dropped");
    ping(2, len_of(2));
    source.consume(|event| seen.item(event)).unwrap();
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
    let mut probe = PingProbe::new(Transport::Ring).unwrap();
    let source = probe.source().unwrap();
    probe.attach_program("handle_ping_behind_discard", "bpfstream_ping_behind_discard").unwrap();
    let (mut latencies, totals) = runtime().block_on(async {
        let mut stream = copied(source);
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
    let mut probe = PingProbe::new(Transport::Perf).unwrap();
    let options = Options::default();
    let first = EventSource::open(probe.map("events"), None, &options).unwrap();
    let mut second = EventSource::open(probe.map("events"), None, &options).unwrap();
    drop(first);
    probe.attach().unwrap();
    for seq in 0..10 {
        ping(seq, len_of(seq));
    }
    let mut seen = Seen::default();
    second.consume(|event| seen.item(event)).unwrap();
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
    let options = sized(match transport {
        Transport::Ring => 1 << 20,
        Transport::Perf => 256 << 10,
    });
    let mut probe = PingProbe::load(transport, options).unwrap();
    let mut source = probe.source().unwrap();
    probe.attach().unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    let (mut seqs, mut malformed) = (Vec::new(), 0);
    let mut handle = |event: Event<Record<'_>>| {
        if let Event::Record(record) = event {
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
    let mut probe = PingProbe::new(Transport::Perf).unwrap();
    let options = Options::default();
    let mut first = EventSource::open(probe.map("events"), None, &options).unwrap();
    // The lowest free descriptors, in the order the next opens get them: the second open takes
    // three (the map's duplicate, its epoll set, the first CPU's event) before the second CPU's
    // event, the fourth, which the limit refuses.
    let free: Vec<std::fs::File> = (0..4).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    let fourth = std::os::fd::AsRawFd::as_raw_fd(&free[3]) as u64;
    drop(free);
    let old = set_open_files_limit(fourth);
    let second = EventSource::open(probe.map("events"), None, &options);
    set_open_files_limit(old);
    let err = second.expect_err("the second CPU's event is past the limit");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    probe.attach().unwrap();
    ping_from_one_cpu(5, len_of);
    probe.detach();
    let mut seen = Seen::default();
    first.consume(|event| seen.item(event)).unwrap();
    assert_eq!((seen.seqs(), seen.lost), ((0..5).collect::<Vec<_>>(), 0), "the first buffer lost CPU 0's slot");
}

/// A tool's own error, which its handlers return and which comes back as itself.
#[derive(Debug)]
#[allow(dead_code)] // the library's error is read through Debug
enum ToolError {
    NoRoom(u64),
    Library(bpfstream::Error),
}

impl From<bpfstream::Error> for ToolError {
    fn from(error: bpfstream::Error) -> Self {
        ToolError::Library(error)
    }
}

/// `finish` with a handler that fails stops at the failure and returns its error, as itself.
#[test]
fn finish_stops_at_a_failing_handler_and_returns_its_error() {
    let Some(_kernel) = kernel_test() else { return };
    let mut source = burst(Transport::Ring, Options::default(), 5);
    let mut calls = 0;
    let result = source.finish(deadline(Duration::from_secs(1)), |event| {
        calls += 1;
        let Event::Record(record) = event else { return Ok(()) };
        Err(ToolError::NoRoom(ping::decode(record.data).unwrap().0.seq))
    });
    let err = result.expect_err("the handler failed");
    assert!(matches!(err, ToolError::NoRoom(0)), "{err:?}");
    assert_eq!(calls, 1);
    // anyhow works as it is: its error is the handler's.
    let result =
        source.finish(deadline(Duration::from_secs(1)), |_| -> anyhow::Result<()> { anyhow::bail!("disk full") });
    assert_eq!(result.expect_err("the handler failed").to_string(), "disk full");
}

/// A handler that panics mid-pass (the caller catches it): the records handed over before and
/// the one it panicked on are consumed and counted, so the final drain hands over only the rest
/// and delivered + dropped == produced.
#[test]
fn a_handler_that_panics_hands_no_record_over_twice() {
    let Some(_kernel) = kernel_test() else { return };
    for transport in [Transport::Ring, Transport::Perf] {
        let mut source = burst(transport, Options::default(), 5);
        let mut seen = Seen::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            source.consume(|event| {
                seen.item(event);
                assert!(seen.records.len() < 3, "the handler gives up at the third record");
            })
        }));
        assert!(panicked.is_err(), "{transport}: the handler panicked");
        let totals = source.finish(deadline(Duration::from_secs(5)), |event| seen.item(event)).unwrap();
        assert_eq!(seen.seqs(), (0..5).collect::<Vec<_>>(), "{transport}: each record once, in order");
        assert_eq!((totals.delivered, totals.dropped, totals.produced), (5, 0, Some(5)), "{transport}");
    }
}

/// A deadline bounds the wait for records still being written, not the reading of what is
/// buffered: with the deadline already past, every source still hands over all it holds (one
/// source's wait must not leave the next one's records unread).
#[test]
fn a_finish_past_its_deadline_still_reads_what_every_source_holds() {
    let Some(_kernel) = kernel_test() else { return };
    let mut first = burst(Transport::Ring, Options::default(), 4);
    let mut second = burst(Transport::Perf, Options::default(), 3);
    let (mut from_first, mut from_second) = (Seen::default(), Seen::default());
    let mut poller = Poller::new().unwrap();
    poller.add(&mut first, 5, |event| from_first.item(event)).unwrap();
    poller.add(&mut second, 0, |event| from_second.item(event)).unwrap();
    let totals = poller.finish(std::time::Instant::now()).unwrap();
    drop(poller);
    for ((_, totals), sent) in totals.iter().zip([4, 3]) {
        assert_eq!((totals.delivered, totals.dropped, totals.produced), (sent, 0, Some(sent)), "{totals:?}");
    }
    assert_eq!((from_first.seqs(), from_second.seqs()), ((0..4).collect(), (0..3).collect()));
}

/// The exact end of a poller's sources in one call: after the detach, every source's totals add
/// up (delivered + dropped == produced), each delivered record handed to its source's handler.
#[test]
fn a_poller_finishes_all_its_sources_exactly() {
    let Some(_kernel) = kernel_test() else { return };
    let mut ring = burst(Transport::Ring, Options::default(), 7);
    let mut perf = burst(Transport::Perf, Options::default(), 9);
    let (mut from_ring, mut from_perf) = (Seen::default(), Seen::default());
    let mut poller = Poller::new().unwrap();
    let ring_id = poller.add(&mut ring, 0, |event| from_ring.item(event)).unwrap();
    let perf_id = poller.add(&mut perf, 5, |event| from_perf.item(event)).unwrap();
    let totals = poller.finish(deadline(Duration::from_secs(5))).unwrap();
    drop(poller);
    assert_eq!(totals.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [ring_id, perf_id], "in the order added");
    for ((_, totals), (seen, sent)) in totals.iter().zip([(&from_ring, 7), (&from_perf, 9)]) {
        assert_eq!((totals.delivered, totals.dropped, totals.produced), (sent, 0, Some(sent)), "{totals:?}");
        assert_eq!(seen.seqs(), (0..sent).collect::<Vec<_>>());
    }
}
