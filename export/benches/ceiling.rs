//! The engines' own ceiling on this machine, without a tracer: how many events per second a
//! local nats-server (JetStream) or Kafka broker acknowledges from (1) a trivial producer, the
//! engine's client pipelining as many publications as it can with no headers, and (2) the
//! [`Exporter`] fed from a loop (headers, `seq`, accounting; no kernel, no JSON encoding). Each
//! row: the median over rounds of events acknowledged per second and this process's CPU time
//! (all threads) per event.
//!
//! Start the engines yourself and name them (the topic must exist; the stream is made here):
//! `BPFSTREAM_BENCH_NATS=127.0.0.1:4222 BPFSTREAM_BENCH_KAFKA=127.0.0.1:9092
//! BPFSTREAM_BENCH_TOPIC=ceiling cargo bench -p bpfstream-export --bench ceiling`.
//! BPFSTREAM_BENCH_EVENTS (per round, default 300000), BPFSTREAM_BENCH_ROUNDS (default 3).

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bpfstream_export::{ExportConfig, Exporter, Identity};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

/// Publications awaiting their acknowledgement at most (the trivial NATS producer).
const WINDOW: usize = 8_192;

/// About the size of a `syscalls` event's JSON line.
const PAYLOAD: &[u8] = &[b'x'; 220];

fn cpu_secs() -> f64 {
    // SAFETY: a zeroed rusage is valid for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a pointer to a live local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Runs `round` (which acknowledges `events` events) and returns (events/s, CPU ns/event).
fn timed(events: u64, round: impl FnOnce()) -> (f64, f64) {
    let (cpu, started) = (cpu_secs(), Instant::now());
    round();
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_secs() - cpu);
    (events as f64 / wall, cpu * 1e9 / events as f64)
}

fn nats_raw(address: &str, subject: &str, events: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(address).await.unwrap();
        let js = jetstream::context::ContextBuilder::new().max_ack_inflight(WINDOW + 1).build(client);
        let mut acks = FuturesUnordered::new();
        for _ in 0..events {
            acks.push(Box::pin(js.publish(subject.to_string(), PAYLOAD.into()).await.unwrap().into_future()));
            while acks.len() >= WINDOW {
                acks.next().await.unwrap().unwrap();
            }
        }
        while let Some(ack) = acks.next().await {
            ack.unwrap();
        }
    });
}

fn kafka_raw(address: &str, topic: &str, events: u64) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for _ in 0..events {
        let mut record = BaseRecord::to(topic).payload(PAYLOAD).key("host");
        while let Err((_, back)) = producer.send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
}

fn exporter(url: &str, events: u64) {
    let mut config = ExportConfig::new(url.parse().unwrap(), Identity::of_this_process());
    config.set("queue", &events.to_string()).unwrap();
    config.set("flush_timeout", "60s").unwrap();
    let mut exporter = Exporter::start(config, Box::new(|e: &str| eprintln!("export: {e}"))).unwrap();
    for _ in 0..events {
        exporter.send(PAYLOAD);
    }
    let stats = exporter.finish();
    assert_eq!(stats.exported, events, "{stats:?}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let env = |name: &str| std::env::var(name).ok();
    let events: u64 = env("BPFSTREAM_BENCH_EVENTS").and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let rounds: usize = env("BPFSTREAM_BENCH_ROUNDS").and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut rows: Vec<(String, Box<dyn Fn()>)> = Vec::new();
    if let Some(nats) = env("BPFSTREAM_BENCH_NATS") {
        let (n, url) = (nats.clone(), format!("nats://{nats}/ceiling.exporter"));
        // The exporter's first round creates its stream; the raw producer publishes there too.
        exporter(&url, 1);
        rows.push(("nats-server, trivial producer".into(), Box::new(move || nats_raw(&n, "ceiling.exporter", events))));
        rows.push(("nats-server, Exporter".into(), Box::new(move || exporter(&url, events))));
    }
    if let (Some(kafka), Some(topic)) = (env("BPFSTREAM_BENCH_KAFKA"), env("BPFSTREAM_BENCH_TOPIC")) {
        let (k, t, url) = (kafka.clone(), topic.clone(), format!("kafka://{kafka}/{topic}"));
        rows.push(("Kafka, trivial producer".into(), Box::new(move || kafka_raw(&k, &t, events))));
        rows.push(("Kafka, Exporter".into(), Box::new(move || exporter(&url, events))));
    }
    if rows.is_empty() {
        eprintln!("bench ceiling: skipped, name an engine (see the header of export/benches/ceiling.rs)");
    }
    println!("| engine, producer | acknowledged events/s | producer CPU ns/event |\n|---|---|---|");
    for (name, round) in &rows {
        let figures: Vec<(f64, f64)> = (0..rounds).map(|_| timed(events, round)).collect();
        let rate = median(figures.iter().map(|f| f.0).collect());
        let cpu = median(figures.iter().map(|f| f.1).collect());
        println!("| {name} | {rate:.0} | {cpu:.0} |");
    }
}
