//! The agent's `/metrics` as a real Prometheus server sees it: Debian's `prometheus` scrapes the
//! metrics server (the binary's own module, built alone here) every second on a private
//! loopback port; once the target is gone, as an agent that stopped, every value read through
//! Prometheus' query API (`last_over_time`: a vanished target's series are marked stale) equals
//! what the streams published last. `/healthz` says 503 and why until every stream is attached.
//! Then the same for a running agent: what Prometheus scraped equals each stream's summary.
//! And a running agent whose engine (NATS, Kafka) goes away and comes back: its stream's
//! exporter series and `/healthz` follow the connection.

mod common;
#[path = "../src/metrics/mod.rs"]
#[allow(unused_imports)] // built alone: the binary uses what this test does not
mod metrics;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::http_get;
use common::engine::{KafkaServer, NatsServer};
use common::time_scale;
use common::worker::{Act, Worker};
use metrics::{ExportLink, MetricsServer, Registry, StreamCounters};
use serde_json::Value;

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Prometheus on a free loopback port, scraping `target` every second; killed when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Self {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: agent\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; .ci/run installs it)");
        Prometheus { child, address }
    }

    /// The instant vector of `query` (waits for Prometheus to answer).
    fn query(&self, query: &str) -> Vec<Value> {
        let deadline = time_scale::deadline(Duration::from_secs(30));
        loop {
            if let Ok(mut stream) = TcpStream::connect(self.address) {
                let path = format!("/api/v1/query?query={}", encode(query));
                write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                // Until it is ready, Prometheus answers `Service Unavailable`, not JSON.
                let body = response.split_once("\r\n\r\n").map(|(_, body)| body);
                if let Some(answer) = body.and_then(|body| serde_json::from_str::<Value>(body).ok()) {
                    if answer["status"] == "success" {
                        return answer["data"]["result"].as_array().unwrap().clone();
                    }
                }
            }
            assert!(Instant::now() < deadline, "Prometheus did not answer {query}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The one value of `query`, once it has one that `ready` accepts (a scrape may be due).
    fn value_when(&self, query: &str, ready: impl Fn(f64) -> bool) -> f64 {
        let deadline = time_scale::deadline(Duration::from_secs(30));
        loop {
            let result = self.query(query);
            if let [sample] = &result[..] {
                let value: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
                if ready(value) {
                    return value;
                }
            }
            assert!(Instant::now() < deadline, "{query}: {result:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_reads_what_the_streams_published() {
    let dir = std::env::temp_dir().join(format!("bpfstream-test-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry = Registry::new("9.8.7");
    let server =
        MetricsServer::start(metrics::bind("127.0.0.1:0".parse().unwrap()).unwrap(), registry.clone()).unwrap();
    let address = server.address();

    let mut exec = registry.add_stream("exec").unwrap();
    let mut slow = registry.add_stream("slow").unwrap();
    let (status, body) = http_get(address, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stream exec: not attached: starting"), "{body}");
    exec.set_attached();
    slow.set_attached();
    slow.publish(&StreamCounters { export_link: ExportLink::NotConnected, ..Default::default() });
    assert_eq!(http_get(address, "/healthz"), (503, "stream slow: exporter not connected to its engine\n".into()));
    slow.publish(&StreamCounters { export_link: ExportLink::Connected, ..Default::default() });
    assert_eq!(http_get(address, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(address, "/nothing").0, 404);

    let prometheus = Prometheus::start(&dir, address);
    let up = "up{job=\"agent\"}";
    prometheus.value_when(up, |v| v == 1.0);
    // As at a stop: the last snapshots, exact (exported + failed + unflushed + dropped = produced).
    let exec_last = StreamCounters {
        produced: 1_000_003,
        delivered: 999_990,
        dropped: 13,
        exported: 999_000,
        export_queue_full: 700,
        export_rejected: 90,
        export_unencoded: 0,
        export_unflushed: 200,
        buffer_fill_ratio: 0.125,
        export_queue_depth: 17,
        export_reconnects: 3,
        export_link: ExportLink::Connected,
        ..Default::default()
    };
    let slow_last = StreamCounters {
        produced: 42,
        delivered: 42,
        exported: 41,
        export_unflushed: 1,
        export_link: ExportLink::NotConnected,
        ..Default::default()
    };
    exec.publish(&exec_last);
    slow.publish(&slow_last);
    prometheus.value_when("bpfstream_events_produced_total{stream=\"slow\"}", |v| v == 42.0);
    prometheus.value_when("bpfstream_export_reconnects_total{stream=\"exec\"}", |v| v == 3.0);
    drop(server);
    prometheus.value_when(up, |v| v == 0.0);
    assert!(prometheus.query("bpfstream_events_produced_total").is_empty(), "a vanished target's series are stale");

    let last = |metric: &str, labels: &str| {
        prometheus.value_when(&format!("last_over_time({metric}{{{labels}}}[5m])"), |_| true)
    };
    for (stream, c) in [("exec", exec_last), ("slow", slow_last)] {
        let label = format!("stream=\"{stream}\"");
        let expected = [
            ("bpfstream_events_produced_total", c.produced as f64),
            ("bpfstream_events_delivered_total", c.delivered as f64),
            ("bpfstream_events_dropped_total", c.dropped as f64),
            ("bpfstream_events_unwritten_total", c.unwritten as f64),
            ("bpfstream_events_exported_total", c.exported as f64),
            ("bpfstream_export_unflushed_total", c.export_unflushed as f64),
            ("bpfstream_buffer_fill_ratio", c.buffer_fill_ratio),
            ("bpfstream_stream_attached", 1.0),
        ];
        for (metric, value) in expected {
            assert_eq!(last(metric, &label), value, "{metric}{{{label}}}");
        }
        let failed: f64 = ["queue_full", "rejected", "unencoded"]
            .iter()
            .map(|cause| last("bpfstream_export_failed_total", &format!("{label},cause=\"{cause}\"")))
            .sum();
        assert_eq!(failed, (c.export_queue_full + c.export_rejected + c.export_unencoded) as f64, "{stream}");
        let exported_or_failed = c.exported as f64 + failed + c.export_unflushed as f64 + c.dropped as f64;
        assert_eq!(exported_or_failed, c.produced as f64, "{stream}: the accounting, from Prometheus alone");
    }
    let (exec_label, slow_label) = ("stream=\"exec\"", "stream=\"slow\"");
    assert_eq!(last("bpfstream_export_queue_depth", exec_label), 17.0);
    assert_eq!(last("bpfstream_export_reconnects_total", exec_label), 3.0);
    assert_eq!(last("bpfstream_export_connected", exec_label), 1.0);
    assert_eq!(last("bpfstream_export_connected", slow_label), 0.0);
    assert_eq!(last("bpfstream_build_info", "version=\"9.8.7\""), 1.0);
    let started = last("process_start_time_seconds", "job=\"agent\"");
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started > since_epoch - 3600.0 && started <= since_epoch, "{started}");
    assert!(last("process_resident_memory_bytes", "job=\"agent\"") > 0.0);
    assert!(last("process_cpu_seconds_total", "job=\"agent\"") > 0.0);
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running agent scraped by Prometheus: `/healthz` is 200 while its streams are attached, and
/// what Prometheus last scraped of each stream equals that stream's summary at the stop.
#[test]
fn prometheus_reads_the_agents_summaries() {
    let Some(_kernel) = common::kernel_test() else { return };
    let dir = common::temp_dir("metrics-agent");
    let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let worker = Worker::start();
    let tid = worker.tid;
    let config = format!(
        "[metrics]\nlisten = \"{address}\"\n\n[[stream]]\nname = \"opens\"\ntracer = \"open\"\n\
         args = [\"--tid\", \"{tid}\"]\n\n[[stream]]\nname = \"execs\"\ntracer = \"exec\"\n\
         args = [\"--tid\", \"{tid}\"]\n"
    );
    let file = dir.join("agent.toml");
    std::fs::write(&file, config).unwrap();
    let agent = common::start(&["agent", "--config", file.to_str().unwrap()]);
    // Attached once started: healthy once its run begins.
    let deadline = time_scale::deadline(Duration::from_secs(30));
    while http_get(address, "/healthz") != (200, "ok\n".into()) {
        assert!(Instant::now() < deadline, "not healthy: {:?}", http_get(address, "/healthz"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let prometheus = Prometheus::start(&dir, address);
    let up = "up{job=\"agent\"}";
    prometheus.value_when(up, |v| v == 1.0);
    let (opens, execs) = (40, 3);
    worker.act(Act::Opens(opens));
    worker.act(Act::FailedExecs(execs));
    for (stream, n) in [("opens", opens), ("execs", execs)] {
        let delivered = format!("bpfstream_events_delivered_total{{stream=\"{stream}\"}}");
        prometheus.value_when(&delivered, |v| v == n as f64);
    }
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    prometheus.value_when(up, |v| v == 0.0);
    let last = |metric: &str, stream: &str| {
        prometheus.value_when(&format!("last_over_time({metric}{{stream=\"{stream}\"}}[5m])"), |_| true)
    };
    for summary in finished.of_type("summary") {
        let stream = summary["stream"].as_str().unwrap();
        let count = |key: &str| summary[key].as_u64().unwrap() as f64;
        let expected = [
            ("bpfstream_events_produced_total", count("produced")),
            ("bpfstream_events_delivered_total", count("events") + count("unwritten")),
            ("bpfstream_events_dropped_total", count("dropped")),
            ("bpfstream_events_unwritten_total", count("unwritten")),
            ("bpfstream_stream_attached", 1.0),
        ];
        for (metric, value) in expected {
            assert_eq!(last(metric, stream), value, "{metric} of {stream}: {summary}");
        }
    }
    assert_eq!(finished.of_type("summary").len(), 2, "{:?}", finished.stdout);
    assert_eq!(prometheus.value_when("last_over_time(bpfstream_build_info[5m])", |_| true), 1.0);
}

/// The value of `series` (`name{labels}`, as the page writes it) on a `/metrics` page.
fn value_of(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `address` until `ready` accepts the page (30 s at most, scaled); the page.
fn scrape_until(address: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = time_scale::deadline(Duration::from_secs(30));
    loop {
        let (_, page) = http_get(address, "/metrics");
        if ready(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "{what}:\n{page}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/healthz` until `ready` accepts its answer (30 s at most, scaled).
fn health_until(address: SocketAddr, what: &str, ready: impl Fn(u16, &str) -> bool) {
    let deadline = time_scale::deadline(Duration::from_secs(30));
    loop {
        let (status, body) = http_get(address, "/healthz");
        if ready(status, &body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The series `name` of the stream `execs`.
fn of_execs(name: &str) -> String {
    format!("{name}{{stream=\"execs\"}}")
}

/// An agent with one stream, `execs` (the execs of thread `tid`), exporting to `url` with the
/// `[output]` options `options`, its metrics on a free loopback port; once healthy, its
/// exporter's series say connected, no reconnection and nothing queued. The agent and the
/// metrics' address.
fn exporting_agent(url: &str, options: &str, tid: u32) -> (common::Running, SocketAddr) {
    let dir = common::temp_dir("metrics-export");
    let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[output]\nurl = \"{url}\"\noptions = {{ {options} }}\n\n[metrics]\nlisten = \"{address}\"\n\n\
         [[stream]]\nname = \"execs\"\ntracer = \"exec\"\nargs = [\"--tid\", \"{tid}\"]\n"
    );
    let file = dir.join("agent.toml");
    std::fs::write(&file, config).unwrap();
    let agent = common::start(&["agent", "--config", file.to_str().unwrap()]);
    health_until(address, "healthy once attached and connected", |status, _| status == 200);
    // The exporter's series as the stream published them since (a publish a moment after the
    // one /healthz read may be the first that carries them).
    let connected = of_execs("bpfstream_export_connected");
    let page = scrape_until(address, "connected", |page| value_of(page, &connected) == Some(1.0));
    for (name, value) in [
        ("bpfstream_export_connected", 1.0),
        ("bpfstream_export_reconnects_total", 0.0),
        ("bpfstream_export_queue_depth", 0.0),
    ] {
        assert_eq!(value_of(&page, &of_execs(name)), Some(value), "{name}: {page}");
    }
    (agent, address)
}

/// Once the engine is gone: `/healthz` 503 naming the stream, and `connected` 0. The page.
fn engine_lost(address: SocketAddr) -> String {
    health_until(address, "503 naming the stream once the engine is gone", |status, body| {
        status == 503 && body == "stream execs: exporter not connected to its engine\n"
    });
    let connected = of_execs("bpfstream_export_connected");
    scrape_until(address, "not connected", |page| value_of(page, &connected) == Some(0.0))
}

/// Once the engine is back: `/healthz` 200, `connected` 1, a reconnection counted. The page.
fn engine_regained(address: SocketAddr) -> String {
    health_until(address, "200 once reconnected", |status, _| status == 200);
    let (connected, reconnects) =
        (of_execs("bpfstream_export_connected"), of_execs("bpfstream_export_reconnects_total"));
    scrape_until(address, "connected again, a reconnection counted", |page| {
        value_of(page, &connected) == Some(1.0) && value_of(page, &reconnects).is_some_and(|n| n >= 1.0)
    })
}

/// An agent exporting to a private nats-server: the server stopped holds three events
/// unacknowledged (the queue depth), then is killed (503, not connected, still three queued)
/// and comes back (200, a reconnection, the three events acknowledged).
#[test]
fn the_exporters_series_and_health_follow_nats() {
    let Some(_kernel) = common::kernel_test() else { return };
    let Some(mut nats) = NatsServer::start() else { return };
    let worker = Worker::start();
    let (agent, address) = exporting_agent(&nats.url("bpf.metrics"), "", worker.tid);
    let depth = of_execs("bpfstream_export_queue_depth");
    nats.run_on(false);
    worker.act(Act::FailedExecs(3));
    scrape_until(address, "3 events wait for their acknowledgement", |page| value_of(page, &depth) == Some(3.0));
    nats.kill();
    let page = engine_lost(address);
    assert_eq!(value_of(&page, &depth), Some(3.0), "nothing acknowledged meanwhile: {page}");
    nats.restart();
    engine_regained(address);
    let exported = of_execs("bpfstream_events_exported_total");
    scrape_until(address, "the 3 events acknowledged after the reconnection", |page| {
        value_of(page, &depth) == Some(0.0) && value_of(page, &exported) == Some(3.0)
    });
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let summaries = finished.of_type("summary");
    assert_eq!(summaries.len(), 1, "{:?}", finished.stdout);
    assert_eq!((summaries[0]["exported"].as_u64(), summaries[0]["export_failed"].as_u64()), (Some(3), Some(0)));
}

/// The same with a private Kafka broker (tansu), killed and restarted: librdkafka's statistics
/// say the connection.
#[test]
fn the_exporters_series_and_health_follow_kafka() {
    let Some(_kernel) = common::kernel_test() else { return };
    let Some(mut kafka) = KafkaServer::start() else { return };
    let worker = Worker::start();
    let url = format!("kafka://{}/bpf.metrics", kafka.address());
    // The broker keeps nothing across a restart: the topic is made again.
    let (agent, address) = exporting_agent(&url, "create = \"true\"", worker.tid);
    kafka.kill();
    engine_lost(address);
    kafka.restart();
    engine_regained(address);
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
}
