//! `--output`: every event to NATS JetStream or Kafka, acknowledged, with the same accounting
//! across the wire: read back from real servers, exactly, with no duplicate `seq`, through a
//! restart of the engine, an engine down at start, and bad URLs. Needs root (the tracers),
//! `nats-server` and `tansu` (see `common/engine.rs`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::certificates::{certificates, client_certificate};
use common::engine::{
    create_topic, free_ports, kafka_messages, kafka_messages_with, nats_messages, Kafka, KafkaServer, Nats, NatsServer,
    TlsProxy,
};
use common::workload::{Step, Workload};
use common::{kernel_test, run_to_end, start};
use serde_json::Value;

/// By default the final flush shares the stop's 1 s; tests that expect every event
/// acknowledged give it all the time it needs.
const FLUSH: &str = "flush_timeout=60s";

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// exported + export_failed + dropped = produced, and every delivered event is one or the other.
fn assert_accounted(summary: &Value) {
    let (events, dropped, produced) = (u(&summary["events"]), u(&summary["dropped"]), u(&summary["produced"]));
    let (exported, failed) = (u(&summary["exported"]), u(&summary["export_failed"]));
    assert_eq!(exported + failed + dropped, produced, "exported + export_failed + dropped = produced: {summary}");
    assert_eq!(exported + failed, events, "{summary}");
}

/// The `seq` headers: all distinct, and the set of them.
fn distinct_seqs(messages: &[common::engine::Exported]) -> HashSet<u64> {
    let seqs: HashSet<u64> = messages.iter().map(|m| m.seq()).collect();
    assert_eq!(seqs.len(), messages.len(), "a seq came twice");
    seqs
}

#[test]
fn nats_receives_every_event_line_exactly_with_its_headers() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, subject) = nats.url("exact");
    const CALLS: u32 = 3000;
    let child = Workload::spawn("bpfs-export", None, vec![Step::Getppid(CALLS)]);
    let pid = child.pid().to_string();
    let run = start(&[
        "syscalls",
        "--json",
        "--pid",
        &pid,
        "--buffer-size",
        "4M",
        "--output",
        &url,
        "--output-option",
        FLUSH,
    ]);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_eq!((u(&summary["produced"]), u(&summary["exported"])), (u64::from(CALLS), u64::from(CALLS)), "{summary}");
    assert_accounted(&summary);
    let lines: Vec<&String> = finished.stdout.iter().filter(|l| l.starts_with("{\"type\":\"syscall\"")).collect();
    let messages = nats_messages(&nats.address(), &subject);
    assert_eq!(messages.len(), CALLS as usize);
    assert_eq!(distinct_seqs(&messages), (1..=u64::from(CALLS)).collect());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    for (message, line) in messages.iter().zip(&lines) {
        assert_eq!(&message.payload, *line, "the message is the event's JSON line");
        assert_eq!(message.headers["host"], host.trim());
        assert_eq!(message.headers["boot_id"], boot_id.trim());
        let id = format!("{}/{}/{}/{}", host.trim(), boot_id.trim(), message.headers["run"], message.seq());
        assert_eq!(message.headers["Nats-Msg-Id"], id);
    }
}

/// Table on stdout and JSON lines to the engine, from the exec tracer.
#[test]
fn nats_export_runs_alongside_the_table() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, subject) = nats.url("table");
    let dir = common::temp_dir("export-table");
    let probe = common::probe_binary(&dir, "bpfs-exported");
    let run = start(&["exec", "--name", "bpfs-exported", "--output", &url, "--output-option", FLUSH]);
    for _ in 0..5 {
        assert!(std::process::Command::new(&probe).status().unwrap().success());
    }
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let rows = finished.stdout.iter().filter(|l| l.contains("bpfs-exported")).count();
    assert_eq!(rows, 5, "table rows:\n{:?}", finished.stdout);
    assert!(finished.stderr.contains("5 exported to nats://"), "{}", finished.stderr);
    let messages = nats_messages(&nats.address(), &subject);
    assert_eq!(messages.len(), 5);
    for m in &messages {
        let event: Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!((event["type"].as_str(), event["filename"].as_str()), (Some("exec"), probe.to_str()));
    }
}

/// The engine is killed in the middle of the stream and comes back a second later: events keep
/// coming meanwhile, their acknowledgements time out (300 ms) and they are published again with
/// the same seq. Whatever did not reach the engine is in export_failed, what it acknowledged is
/// in it, and no seq is stored twice (`Nats-Msg-Id`).
#[test]
fn nats_restart_mid_stream_leaves_nothing_unaccounted() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(mut server) = NatsServer::start() else { return };
    let subject = "bpfstream.test.restart";
    let url = server.url(subject);
    let options = ["ack_timeout=300ms", "flush_timeout=20s", "queue=4000"];
    let finished = through_a_restart(&url, &options, || {
        server.kill();
        std::thread::sleep(Duration::from_millis(1000));
        server.restart();
    });
    let summary = finished.summary();
    let produced = u(&summary["produced"]);
    assert!(u(&summary["export_retries"]) > 0, "the kill went unnoticed: {summary}");
    assert!(finished.stderr.contains("bpfstream: export:"), "errors are reported: {}", finished.stderr);
    let seqs = distinct_seqs(&nats_messages(&format!("127.0.0.1:{}", server.port), subject));
    let (exported, failed) = (u(&summary["exported"]), u(&summary["export_failed"]));
    assert!(seqs.len() as u64 >= exported, "{} stored, {exported} acknowledged", seqs.len());
    assert!(produced - seqs.len() as u64 <= failed, "missing events not in export_failed: {summary}");
}

/// The engine hangs (SIGSTOP) under a stream of events: by default the final flush shares the
/// stop's budget, so the tracer stops on time and counts what the engine did not acknowledge as
/// unflushed. Asserts the accounting, exactly (the stop's duration was checked by hand: tests
/// judge no time).
#[test]
fn a_hung_engine_leaves_the_stop_bounded_and_counts_unflushed() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(server) = NatsServer::start() else { return };
    let url = server.url("bpfstream.test.hung");
    let child = Workload::spawn("bpfs-hung", None, vec![Step::Getppid(5000)]);
    let pid = child.pid().to_string();
    let run = start(&["syscalls", "--json", "--pid", &pid, "--buffer-size", "4M", "--output", &url]);
    server.run_on(false);
    child.go();
    let finished = run.stop();
    server.run_on(true);
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_accounted(&summary);
    assert_eq!((u(&summary["events"]), u(&summary["exported"])), (5000, 0), "{summary}");
    assert_eq!(u(&summary["export_unflushed"]), u(&summary["export_failed"]), "{summary}");
}

#[test]
fn nats_down_at_start_is_an_error_or_a_wait() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(mut server) = NatsServer::start() else { return };
    server.kill();
    let url = server.url("bpfstream.test.down");
    let (code, err) = run_to_end(&["exec", "--duration", "1", "--output", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach nats-server") && err.contains("connect=retry"), "{err}");
    // connect=retry: the tracer starts, the events wait in the queue until the server comes.
    let child = Workload::spawn("bpfs-late", None, vec![Step::Getppid(500)]);
    let pid = child.pid().to_string();
    let retry = ["--output-option", "connect=retry", "--output-option", FLUSH];
    let run = start(&[&["syscalls", "--json", "--pid", &pid, "--output", &url][..], &retry].concat());
    child.go();
    server.restart();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_accounted(&summary);
    assert_eq!(u(&summary["exported"]), 500, "{summary}");
    assert_eq!(nats_messages(&format!("127.0.0.1:{}", server.port), "bpfstream.test.down").len(), 500);
}

/// A queue of 16 and one event in flight cannot keep up with a burst: the tracer keeps
/// draining and counts what it could not queue.
#[test]
fn nats_full_queue_is_counted_not_blocking() {
    full_queue_is_counted_not_blocking("full", &["queue=16", "in_flight=1"]);
}

/// The same with the queue bounded in bytes (a few events' worth) rather than in events.
#[test]
fn nats_queue_full_in_bytes_is_counted_not_blocking() {
    full_queue_is_counted_not_blocking("fullbytes", &["queue_bytes=4096", "in_flight=1"]);
}

fn full_queue_is_counted_not_blocking(name: &str, options: &[&str]) {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, subject) = nats.url(name);
    let finished = storm_to(&url, "bpfs-full", 20_000, &["--buffer-size", "4M"], options);
    let summary = finished.summary();
    assert_accounted(&summary);
    assert_eq!((u(&summary["events"]), u(&summary["dropped"])), (20_000, 0), "{summary}");
    assert!(u(&summary["export_queue_full"]) > 0, "{summary}");
    assert_eq!(u(&summary["export_failed"]), u(&summary["export_queue_full"]), "{summary}");
    let lost: u64 = finished.of_type("lost").iter().map(|l| u(&l["count"])).sum();
    assert!(lost <= u(&summary["export_failed"]), "lost lines report export failures as they happen");
    let messages = nats_messages(&nats.address(), &subject);
    assert_eq!(messages.len() as u64, u(&summary["exported"]));
    distinct_seqs(&messages);
}

/// A storm into an 8K ring loses events in the kernel: their `lost` lines (no `cause`) carry the
/// exporter's accounting so far, like the export's own, and the summary adds everything up.
#[test]
fn kernel_drop_lost_lines_carry_the_export_counts() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, _) = nats.url("kdrop");
    let finished = storm_to(&url, "bpfs-kdrop", 100_000, &["--buffer-size", "8K"], &[]);
    let summary = finished.summary();
    assert_accounted(&summary);
    assert!(u(&summary["dropped"]) > 0, "the kernel dropped nothing: {summary}");
    let kernel: Vec<Value> = finished.of_type("lost").into_iter().filter(|l| l.get("cause").is_none()).collect();
    assert!(!kernel.is_empty(), "no lost line for the kernel's drops");
    for line in &kernel {
        assert!(line["output"].as_str().is_some_and(|o| o.starts_with("nats://")), "{line}");
        let (exported, failed) = (u(&line["exported"]), u(&line["export_failed"]));
        assert!(exported + failed <= u(&summary["events"]), "{line}");
    }
}

#[test]
fn nats_without_a_stream_and_create_false_is_a_clear_error() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, _) = nats.url("nostream");
    let (code, err) = run_to_end(&["exec", "--duration", "1", "--output", &url, "--output-option", "create=false"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no JetStream stream captures"), "{err}");
}

#[test]
fn bad_outputs_are_usage_errors() {
    let long_host = format!("nats://{}:4222/x", "h".repeat(1200));
    let tls_ca = "tls_ca=/etc/hostname".to_string();
    for (args, says) in [
        (&["--output", "http://127.0.0.1:4222/x"][..], "unknown scheme"),
        (&["--output", "nats://127.0.0.1/x"], "no :PORT"),
        (&["--output", "kafka://127.0.0.1:9092"], "no /TOPIC"),
        (&["--output", "nats://127.0.0.1:99999/x"], "not a port"),
        (&["--output", "nats://127.0.0.1:4222/a.>"], "not a NATS subject"),
        (&["--output-option", "queue=1"], "--output"),
        (&["--output", "nats://127.0.0.1:4222/x", "--output-option", "queue=0"], "positive count"),
        (&["--output", "nats://127.0.0.1:4222/x", "--output-option", "no-equals"], "key=value"),
        (&["--output", "nats://127.0.0.1:4222/x", "--output-option", "linger.ms=5"], "NATS has no option"),
        (&["--output", "nats://127.0.0.1:4222/x", "--summary"], "cannot be used with"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "no.such.property=1"], "No such configuration"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "partitions=0"], "positive count"),
        (&["--output", "nats://[::1:14222/x"], "not a host"),
        (&["--output", &long_host], "not a host"),
        (&["--output", "nats://127.0.0.1:4222/x", "--output-option", "connect_timeout=0"], "above zero"),
        // What would make `exported` mean less than acknowledged.
        (&["--output", "nats://127.0.0.1:4222/x", "--output-option", "ack_timeout=0"], "above zero"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "acks=0"], "acks=all"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "acks=1"], "acks=all"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "request.required.acks=1"], "acks=all"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "enable.idempotence=false"], "idempotent"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "bootstrap.servers=127.0.0.2:9092"], "URL"),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "transactional.id=t"], "transaction"),
        // TLS settings without TLS, or files that cannot be read: never plaintext.
        (&["--output", "nats://127.0.0.1:4222/x", "--output-option", "tls_ca=/nonexistent"], "cannot read"),
        (
            &["--output", "nats://127.0.0.1:4222/x", "--output-option", "tls=false", "--output-option", &tls_ca],
            "tls=false",
        ),
        (&["--output", "kafka://127.0.0.1:9/x", "--output-option", "ssl.ca.location=/etc/hostname"], "in clear"),
    ] {
        let args = [&["syscalls"][..], args].concat();
        let (code, err) = run_to_end(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// 40 x (200 getppid, a 50 ms sleep) traced and shipped to `url`; 400 ms in, `bounce` kills
/// the engine and restarts it a second later. Checks the accounting.
fn through_a_restart(url: &str, options: &[&str], bounce: impl FnOnce()) -> common::Finished {
    let steps: Vec<Step> = (0..40).flat_map(|_| [Step::Getppid(200), Step::Sleep(Duration::from_millis(50))]).collect();
    let child = Workload::spawn("bpfs-restart", None, steps);
    let pid = child.pid().to_string();
    let mut args = vec!["syscalls", "--json", "--pid", &pid, "--buffer-size", "4M", "--output", url];
    args.extend(options.iter().flat_map(|o| ["--output-option", o]));
    let run = start(&args);
    let going = std::thread::spawn(move || child.go());
    std::thread::sleep(Duration::from_millis(400));
    bounce();
    going.join().unwrap();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    eprintln!("after the restart: {summary}");
    assert_accounted(&summary);
    assert_eq!(u(&summary["produced"]), 8040, "40 x (200 getppid + 1 nanosleep)");
    finished
}

/// The events of a `--pid` storm of `calls` getppid, traced with `--json` and the tracer's
/// `args` and shipped to `url` with `options`.
fn storm_to(url: &str, comm: &str, calls: u32, args: &[&str], options: &[&str]) -> common::Finished {
    let child = Workload::spawn(comm, None, vec![Step::Getppid(calls)]);
    let pid = child.pid().to_string();
    let mut args = [&["syscalls", "--json", "--pid", &pid, "--output", url][..], args].concat();
    args.extend([FLUSH].iter().chain(options).flat_map(|o| ["--output-option", o]));
    let run = start(&args);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished
}

#[test]
fn kafka_receives_every_event_line_exactly_with_key_and_headers() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(kafka) = Kafka::get() else { return };
    let (url, topic) = kafka.url("exact", true);
    const CALLS: u32 = 3000;
    let finished = storm_to(&url, "bpfs-kafka", CALLS, &["--buffer-size", "4M"], &[]);
    let summary = finished.summary();
    assert_eq!((u(&summary["produced"]), u(&summary["exported"])), (u64::from(CALLS), u64::from(CALLS)), "{summary}");
    assert_accounted(&summary);
    let lines: Vec<&String> = finished.stdout.iter().filter(|l| l.starts_with("{\"type\":\"syscall\"")).collect();
    let mut messages = kafka_messages(&kafka.address(), &topic, CALLS as usize);
    assert_eq!(messages.len(), CALLS as usize);
    assert_eq!(distinct_seqs(&messages), (1..=u64::from(CALLS)).collect());
    messages.sort_by_key(|m| m.seq());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    for (message, line) in messages.iter().zip(&lines) {
        assert_eq!(&message.payload, *line, "the record's value is the event's JSON line");
        assert_eq!(message.headers["key"], host.trim(), "the key is the host");
        assert_eq!(message.headers["host"], host.trim());
        assert_eq!(message.headers["boot_id"], boot_id.trim());
        assert!(!message.headers["run"].is_empty());
    }
}

#[test]
fn kafka_missing_topic_is_an_error_unless_creation_is_asked_for() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(kafka) = Kafka::get() else { return };
    let (url, topic) = kafka.url("missing", false);
    let (code, err) = run_to_end(&["exec", "--duration", "1", "--output", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not exist") && err.contains("create=true"), "{err}");
    let finished = storm_to(&url, "bpfs-kcreate", 200, &[], &["create=true"]);
    let summary = finished.summary();
    assert_accounted(&summary);
    assert_eq!(u(&summary["exported"]), 200, "{summary}");
    assert_eq!(kafka_messages(&kafka.address(), &topic, 200).len(), 200);
}

#[test]
fn kafka_down_at_start_is_an_error_or_a_wait() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(mut server) = KafkaServer::start() else { return };
    server.kill();
    let url = format!("kafka://{}/bpfstream-test-late", server.address());
    let (code, err) = run_to_end(&["exec", "--duration", "1", "--output", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the Kafka brokers") && err.contains("connect=retry"), "{err}");
    let child = Workload::spawn("bpfs-klate", None, vec![Step::Getppid(500)]);
    let pid = child.pid().to_string();
    let retry = ["--output-option", "connect=retry", "--output-option", FLUSH];
    let run = start(&[&["syscalls", "--json", "--pid", &pid, "--output", &url][..], &retry].concat());
    child.go();
    server.restart();
    create_topic(&server.address(), "bpfstream-test-late");
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_accounted(&summary);
    assert_eq!(u(&summary["exported"]), 500, "{summary}");
    assert_eq!(kafka_messages(&server.address(), "bpfstream-test-late", 500).len(), 500);
}

/// The broker is killed in the middle of the stream and a new one takes its place a second
/// later (tansu's memory storage: it comes back empty, and the topic is created again). The
/// idempotent producer stalls against a broker that does not know it; its events time out
/// (`message.timeout.ms=3000`), a new producer publishes them again with their `seq`. Asserts:
/// exact accounting with nothing failed (the final flush has time enough); the new broker holds
/// the last event and only this run's seqs; any seq stored twice came from a republication.
#[test]
fn kafka_restart_mid_stream_resumes_delivery() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(mut server) = KafkaServer::start() else { return };
    let topic = "bpfstream-test-restart";
    create_topic(&server.address(), topic);
    let url = format!("kafka://{}/{topic}", server.address());
    let address = server.address();
    let options = ["flush_timeout=60s", "queue=10000", "message.timeout.ms=3000"];
    let finished = through_a_restart(&url, &options, || {
        server.kill();
        std::thread::sleep(Duration::from_millis(1000));
        server.restart();
        create_topic(&address, topic);
    });
    let summary = finished.summary();
    let events = u(&summary["events"]);
    assert_eq!((u(&summary["exported"]), u(&summary["export_failed"])), (events, 0), "{summary}");
    // Everything the new broker holds: read for the reader's whole 20 s.
    let stored = kafka_messages(&address, topic, usize::MAX);
    let seqs: HashSet<u64> = stored.iter().map(|m| m.seq()).collect();
    assert!(seqs.contains(&events), "delivery resumed: the last event is in the new broker: {summary}");
    assert!(seqs.iter().all(|&s| s <= events), "only this run's seqs");
    let twice = (stored.len() - seqs.len()) as u64;
    assert!(twice <= u(&summary["export_retries"]), "{twice} seqs stored twice: {summary}");
}

/// A tansu broker (with `args`) behind socat terminating mutual TLS, with certificates made in
/// a fresh directory: the broker advertises socat's port, so that librdkafka's every
/// connection, the bootstrap and the follow-ups, goes through TLS.
struct TlsKafka {
    dir: std::path::PathBuf,
    server: KafkaServer,
    _proxy: TlsProxy,
    proxy_port: u16,
    /// The client's librdkafka properties: `ssl`, the CA, a client certificate and its key.
    tls: [(&'static str, String); 4],
}

impl TlsKafka {
    /// `None`: skipped (tansu or socat missing, outside CI).
    fn start(tag: &str, args: &[&str]) -> Option<TlsKafka> {
        let dir = common::temp_dir(tag);
        let (ca, cert, key) = certificates(&dir);
        let (client_cert, client_key) = client_certificate(&dir);
        let [proxy_port, broker_port] = free_ports();
        let server = KafkaServer::start_with(broker_port, proxy_port, args)?;
        let proxy = TlsProxy::start(proxy_port, broker_port, &cert, &key, &ca)?;
        let tls = [
            ("security.protocol", "ssl".to_string()),
            ("ssl.ca.location", ca),
            ("ssl.certificate.location", client_cert),
            ("ssl.key.location", client_key),
        ];
        Some(TlsKafka { dir, server, _proxy: proxy, proxy_port, tls })
    }

    fn url(&self, topic: &str) -> String {
        format!("kafka://127.0.0.1:{}/{topic}", self.proxy_port)
    }

    /// `--output-option`s: the TLS properties, with `more` added or replacing theirs.
    fn options(&self, more: &[(&str, &str)]) -> Vec<String> {
        let kept = self.tls.iter().filter(|(k, _)| !more.iter().any(|(m, _)| m == k));
        let tls = kept.map(|(k, v)| format!("{k}={v}"));
        tls.chain(more.iter().map(|(k, v)| format!("{k}={v}"))).collect()
    }

    /// Every record of `topic`, read back through the proxy with the TLS properties and `more`.
    fn messages(&self, more: &[(&str, &str)], topic: &str, expected: usize) -> Vec<common::engine::Exported> {
        let config: Vec<(&str, &str)> =
            self.tls.iter().map(|(k, v)| (*k, v.as_str())).chain(more.iter().copied()).collect();
        kafka_messages_with(&format!("127.0.0.1:{}", self.proxy_port), &config, topic, expected)
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ships `calls` getppid events to `url` with `options`; asserts they were all exported.
fn all_exported(url: &str, comm: &str, calls: u32, options: &[String]) {
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let summary = storm_to(url, comm, calls, &[], &options).summary();
    assert_accounted(&summary);
    assert_eq!(u(&summary["exported"]), u64::from(calls), "{summary}");
}

/// `bpfstream exec --output url` with `options` cannot start: exit 1, saying `says`.
fn refused_at_start(url: &str, options: &[String], what: &str, says: &str) {
    let mut args = vec!["exec", "--duration", "1", "--output", url];
    args.extend(options.iter().flat_map(|o| ["--output-option", o.as_str()]));
    let (code, err) = run_to_end(&args);
    assert_eq!(code, Some(1), "{what}: {err}");
    assert!(err.contains("cannot reach the Kafka brokers") && err.contains(says), "{what}: {err}");
}

/// Kafka over mutual TLS, end to end (tansu has no TLS of its own: 0.6 takes `--cert` and
/// `--key` but never uses them; socat terminates TLS in front of it). With the CA and a client
/// certificate, every event arrives and is read back through the proxy; a CA that did not sign
/// the broker's certificate, or no client certificate, is an error at start that says so.
#[test]
fn kafka_over_mutual_tls_through_a_terminating_proxy() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(kafka) = TlsKafka::start("kafka-tls", &[]) else { return };
    let topic = "bpfstream-test-tls";
    create_topic(&kafka.server.address(), topic);
    all_exported(&kafka.url(topic), "bpfs-ktls", 2000, &kafka.options(&[]));
    assert_eq!(distinct_seqs(&kafka.messages(&[], topic, 2000)), (1..=2000).collect());
    let other = common::temp_dir("kafka-tls-other");
    let (wrong_ca, _, _) = certificates(&other);
    let wrong = kafka.options(&[("ssl.ca.location", &wrong_ca)]);
    refused_at_start(
        &kafka.url(topic),
        &wrong,
        "a CA that did not sign the broker's certificate",
        "certificate verify failed",
    );
    let anonymous: Vec<String> = kafka.options(&[]).into_iter().take(2).collect();
    refused_at_start(&kafka.url(topic), &anonymous, "no client certificate", "certificate required");
    let _ = std::fs::remove_dir_all(&other);
}

/// An engine that accepts the connection and then says nothing: the start ends at
/// `connect_timeout` with one line that names what did not answer, and exit 1.
#[test]
fn a_silent_engine_ends_the_start_at_connect_timeout_naming_what_did_not_answer() {
    let silent = common::engine::SilentEngine::start();
    for (scheme, says) in [
        ("nats", "accepted the connection but sent no INFO greeting"),
        ("kafka", "accepted the connection but did not answer"),
    ] {
        let url = silent.url(scheme);
        let (code, err) = run_to_end(&["exec", "--output", &url, "--output-option", "connect_timeout=500ms"]);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(says) && err.contains("within 500ms") && err.contains("connect_timeout"), "{err}");
    }
}

/// TLS files given without `tls=true` turn TLS on: against a server without TLS the start
/// fails, where it used to send the events in clear.
#[test]
fn nats_tls_files_without_tls_never_go_in_clear() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, _) = nats.url("cleartext");
    let dir = common::temp_dir("cleartext");
    let (ca, cert, key) = certificates(&dir);
    for options in [vec![format!("tls_ca={ca}")], vec![format!("tls_cert={cert}"), format!("tls_key={key}")]] {
        let mut args = vec!["exec", "--duration", "1", "--output", &url];
        args.extend(options.iter().flat_map(|o| ["--output-option", o.as_str()]));
        let (code, err) = run_to_end(&args);
        assert_eq!(code, Some(1), "{options:?}: {err}");
        assert!(err.contains("cannot reach nats-server") && err.contains("TLS"), "{options:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subject holding a bidi control (U+202E) is escaped in the summary line, as any name in a
/// table is.
#[test]
fn a_hostile_subject_is_escaped_in_the_summary_line() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = Nats::get() else { return };
    let (url, _) = nats.url("bidi\u{202e}gnp");
    let (code, err) = run_to_end(&["exec", "--duration", "0.5", "--output", &url]);
    assert_eq!(code, Some(0), "{err}");
    let summary = err.lines().find(|l| l.contains(" exported to ")).unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(summary.contains("bidi\\u{202e}gnp") && !summary.contains('\u{202e}'), "{summary}");
}
