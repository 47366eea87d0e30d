//! The exporter against real engines on loopback, from Rust, without tracers: `nats-server`
//! and `tansu` from PATH (skipped loudly when missing, unless `CI` is set).

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpfstream_export::{ErrorReporter, ExportConfig, ExportError, Exporter, Identity};

#[path = "support/certificates.rs"]
mod certificates;
use certificates::certificates;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args` (with `{port}` replaced by a free port) and waits until it listens.
/// A port found free may be taken before the server binds it (by another test's server, or as
/// the local end of a connection): then the server exits, and another port is tried.
fn serve(program: &str, args: &[&str]) -> Option<(Server, u16)> {
    if !installed(program) {
        return None;
    }
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if let Some(server) = try_serve_on(port, program, args) {
            return Some((server, port));
        }
    }
    panic!("{program} exited at start on 5 free ports in a row");
}

/// Whether `program` runs; when it does not, the test is skipped loudly (outside CI).
fn installed(program: &str) -> bool {
    let found = Command::new(program).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must run the exporter's tests, but {program} is missing");
        eprintln!("\n*** SKIPPING an exporter test: {program} is not on PATH ***\n");
    }
    found
}

/// Starts `program args` on `port` (replacing `{port}`) and waits until it listens.
fn serve_on(port: u16, program: &str, args: &[&str]) -> Server {
    try_serve_on(port, program, args).unwrap_or_else(|| panic!("{program} exited at start on port {port}"))
}

/// As [`serve_on`], or `None` if the server exits before it listens (or just after: what
/// answered was then not the server).
fn try_serve_on(port: u16, program: &str, args: &[&str]) -> Option<Server> {
    let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
    let child = Command::new(program).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exited = || server.0.try_wait().unwrap().is_some();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if exited() {
            return None;
        }
        assert!(Instant::now() < deadline, "{program} does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    if exited() {
        return None;
    }
    Some(server)
}

fn start(url: &str, options: &[&str]) -> Result<Exporter, ExportError> {
    let mut config = ExportConfig::new(url.parse().unwrap(), Identity::of_this_process());
    for option in options {
        config.set_text(option).unwrap();
    }
    Exporter::start(config, Box::new(|e: &str| eprintln!("export: {e}")))
}

/// Sends `n` events and checks that every one was acknowledged.
fn ship(mut exporter: Exporter, n: u64) {
    for i in 0..n {
        assert!(exporter.send(format!("{{\"type\":\"test\",\"i\":{i}}}").as_bytes()));
    }
    let stats = exporter.finish();
    assert_eq!((stats.offered, stats.exported, stats.export_failed(), stats.in_flight()), (n, n, 0, 0), "{stats:?}");
}

/// `nats-server -js` on a free port with its store in a fresh directory named after `tag`:
/// the server, its port and the store (to remove at the end).
fn jetstream_server(tag: &str) -> Option<(Server, u16, String)> {
    let store = std::env::temp_dir().join(format!("bpfstream-export-{tag}-{}", std::process::id()));
    let store = store.to_str().unwrap().to_string();
    let (server, port) = serve("nats-server", &["-a", "127.0.0.1", "-p", "{port}", "-js", "-sd", &store])?;
    Some((server, port, store))
}

#[test]
fn jetstream_acknowledges_every_event() {
    let Some((_server, port, store)) = jetstream_server("test") else { return };
    ship(start(&format!("nats://127.0.0.1:{port}/export.test"), &[]).unwrap(), 10_000);
    let missing = start(&format!("nats://127.0.0.1:{port}/export.none"), &["create=false"]).unwrap_err();
    assert!(missing.to_string().contains("no JetStream stream captures"), "{missing}");
    let _ = std::fs::remove_dir_all(&store);
}

#[test]
fn kafka_acknowledges_every_event() {
    let listener = "tcp://127.0.0.1:{port}";
    let args = ["broker", "--listener-url", listener, "--advertised-listener-url", listener];
    let Some((_server, port)) = serve("tansu", &args) else { return };
    let url = format!("kafka://127.0.0.1:{port}/export-test");
    let missing = start(&url, &[]).unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    ship(start(&url, &["create=true", "linger.ms=5"]).unwrap(), 10_000);
    // librdkafka's properties pass through: a bad value is a usage error, and SASL
    // credentials the broker does not take keep it from starting.
    let bad = start(&url, &["security.protocol=bogus"]).unwrap_err();
    assert!(bad.is_usage() && bad.to_string().contains("security.protocol"), "{bad}");
    let sasl = ["security.protocol=sasl_plaintext", "sasl.mechanism=SCRAM-SHA-256", "sasl.username=nobody"];
    let refused = start(&url, &[&sasl[..], &["sasl.password=wrong"]].concat()).unwrap_err();
    assert!(matches!(refused, ExportError::Unreachable(_)), "{refused}");
    let down = start("kafka://127.0.0.1:9/t", &[]).unwrap_err();
    assert!(matches!(down, ExportError::Unreachable(_)), "{down}");
}

/// `tansu broker` (memory storage) on `port`, with no topic.
fn empty_tansu_on(port: u16) -> Server {
    let listener = "tcp://127.0.0.1:{port}";
    let args = ["broker", "--listener-url", listener, "--advertised-listener-url", listener];
    serve_on(port, "tansu", &[&args[..], &["--storage-engine", "memory://tansu/"]].concat())
}

/// `tansu broker` (memory storage) on `port`, with `topic` created by tansu's own client.
fn tansu_on(port: u16, topic: &str) -> Server {
    let server = empty_tansu_on(port);
    let broker = format!("tcp://127.0.0.1:{port}");
    let created =
        Command::new("tansu").args(["topic", "create", topic, "--broker", &broker]).stdout(Stdio::null()).status();
    assert!(created.unwrap().success(), "tansu topic create {topic}");
    server
}

/// The `seq` header of every record of `topic` (all partitions), read from the start until
/// `wanted` are all there (or 30 s without a new record), then 1 s more for any duplicate.
fn kafka_seqs(port: u16, topic: &str, wanted: &HashSet<u64>) -> Vec<u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "bpfstream-export-tests")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let (mut seqs, mut missing) = (Vec::new(), wanted.clone());
    let mut idle_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < idle_until {
        let Some(record) = consumer.poll(Duration::from_millis(100)) else { continue };
        let record = record.unwrap();
        let headers = record.headers().expect("headers");
        let seq = headers.iter().find(|h| h.key == "seq").and_then(|h| h.value).expect("a seq header");
        let seq: u64 = std::str::from_utf8(seq).unwrap().parse().unwrap();
        seqs.push(seq);
        missing.remove(&seq);
        idle_until = Instant::now() + Duration::from_secs(if missing.is_empty() { 1 } else { 30 });
    }
    seqs
}

/// Bursts of 200 events every 50 ms; the broker (memory storage) is killed once the first
/// 1,600 are acknowledged and comes back empty a second later, without the topic, which the
/// exporter makes again (`create=true`). The idempotent producer stalls against a broker that
/// does not know it; its events time out (`message.timeout.ms`), a new producer takes over and
/// they are published again with their `seq`. Asserts: every event is acknowledged (the final
/// flush has time enough) and exactly accounted; the new broker holds every event the old one
/// had not acknowledged when it was killed; any seq stored twice there came from a
/// republication (at most `retries` of them), so that dropping duplicates by `seq` leaves each
/// event once.
#[test]
fn kafka_delivery_resumes_after_the_broker_restarts_empty() {
    if !installed("tansu") {
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let topic = "export-restart";
    let server = tansu_on(port, topic);
    let url = format!("kafka://127.0.0.1:{port}/{topic}");
    let mut exporter = start(&url, &["flush_timeout=60s", "message.timeout.ms=3000", "create=true"]).unwrap();
    let burst = |exporter: &mut Exporter, bursts: u32| {
        for _ in 0..bursts {
            for _ in 0..200 {
                assert!(exporter.send(b"{\"type\":\"test\"}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    burst(&mut exporter, 8);
    while exporter.stats().exported < 1600 {
        std::thread::sleep(Duration::from_millis(10));
    }
    burst(&mut exporter, 2);
    drop(server);
    // Acknowledgements already read off the closed connection are counted by now.
    std::thread::sleep(Duration::from_millis(200));
    let acknowledged_by_the_old = exporter.stats().exported;
    burst(&mut exporter, 5);
    let _server = empty_tansu_on(port);
    burst(&mut exporter, 10);
    let stats = exporter.finish();
    assert_eq!((stats.offered, stats.exported, stats.export_failed()), (5000, 5000, 0), "{stats:?}");
    assert!(stats.retries > 0, "the restart went unnoticed: {stats:?}");
    let wanted: HashSet<u64> = (acknowledged_by_the_old + 1..=5000).collect();
    let seqs = kafka_seqs(port, topic, &wanted);
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    let missing = wanted.difference(&distinct).count();
    assert_eq!(
        missing,
        0,
        "of {} events; read {} records: {:?}",
        wanted.len(),
        seqs.len(),
        &seqs[..seqs.len().min(20)]
    );
    let twice = (seqs.len() - distinct.len()) as u64;
    assert!(twice <= stats.retries, "{twice} seqs stored twice, {} republications", stats.retries);
    eprintln!("{stats:?}; the new broker holds {} records, {twice} of them twice", seqs.len());
}

/// nats-server with TLS (a CA made here) and a user and password: the exporter reaches it with
/// `tls`, `tls_ca`, `user` and `password`; without the CA, or with a wrong password, it is a
/// clear error at start. A token server takes `token`.
#[test]
fn jetstream_over_tls_with_user_and_password_or_a_token() {
    if !installed("nats-server") || !installed("openssl") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("bpfstream-export-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let store = dir.join("js");
    let store = store.to_str().unwrap();
    let base = ["-a", "127.0.0.1", "-p", "{port}", "-js", "-sd", store];
    let tls = ["--tls", "--tlscert", &cert, "--tlskey", &key, "--user", "agent", "--pass", "s3cret"];
    let Some((_server, port)) = serve("nats-server", &[&base[..], &tls].concat()) else { return };
    let url = format!("nats://127.0.0.1:{port}/export.tls");
    let tls_ca = format!("tls_ca={ca}");
    ship(start(&url, &["tls=true", &tls_ca, "user=agent", "password=s3cret"]).unwrap(), 1000);
    let untrusted = start(&url, &["tls=true", "user=agent", "password=s3cret"]).unwrap_err();
    assert!(matches!(untrusted, ExportError::Unreachable(_)), "{untrusted}");
    let refused = start(&url, &["tls=true", &tls_ca, "user=agent", "password=wrong"]).unwrap_err();
    assert!(matches!(refused, ExportError::Unreachable(_)), "{refused}");
    let token_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token_store = dir.join("js-token");
    let token_args =
        ["-a", "127.0.0.1", "-p", "{port}", "-js", "-sd", token_store.to_str().unwrap(), "--auth", "t0ken"];
    let _token_server = serve_on(token_port, "nats-server", &token_args);
    let token_url = format!("nats://127.0.0.1:{token_port}/export.token");
    ship(start(&token_url, &["token=t0ken"]).unwrap(), 1000);
    assert!(start(&token_url, &["token=nope"]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback listener that accepts connections and never answers (a frozen engine); the
/// connections stay open while the test runs.
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    port
}

/// Against an engine that never answers, the start ends at `connect_timeout` naming the step,
/// or at once when the caller gives up.
#[test]
fn a_start_against_a_silent_engine_ends_at_its_deadline_or_when_cancelled() {
    let port = silent_listener();
    for (scheme, says) in [("nats", "sent no INFO greeting"), ("kafka", "accepted the connection but did not answer")] {
        let url = format!("{scheme}://127.0.0.1:{port}/silent");
        let error = start(&url, &["connect_timeout=300ms"]).unwrap_err();
        assert!(matches!(error, ExportError::Unreachable(_)) && error.to_string().contains(says), "{error}");
        let mut config = ExportConfig::new(url.parse().unwrap(), Identity::of_this_process());
        config.set_text("connect_timeout=60s").unwrap();
        let asked = Instant::now();
        let cancelled =
            Exporter::start_until(config, Box::new(|_| {}), &|| asked.elapsed() > Duration::from_millis(200));
        assert!(matches!(cancelled, Err(ExportError::Cancelled)), "{scheme}: {cancelled:?}");
    }
}

/// Exporters started on one connection, one per subject, from their options on `url`.
fn start_shared(url: &str, subjects: &[&str], options: &[&str]) -> Vec<Exporter> {
    let mut config = ExportConfig::new(url.parse().unwrap(), Identity::of_this_process());
    for option in options {
        config.set_text(option).unwrap();
    }
    let quiet = || -> ErrorReporter { Box::new(|_| {}) };
    let routes = subjects.iter().map(|s| (s.to_string(), quiet())).collect();
    Exporter::start_shared(config, routes, &|| false).unwrap()
}

/// Exporters sharing one connection each get every one of their events acknowledged on their
/// own subject, interleaved as the agent's streams send them: with a JetStream stream made for
/// each subject, and with `stream=NAME`, one made for both.
#[test]
fn exporters_on_one_connection_ship_each_to_its_subject() {
    let Some((_server, port, store)) = jetstream_server("shared") else { return };
    for (subjects, options) in [(["shared.a", "shared.b"], None), (["one.a", "one.b"], Some("stream=ONE"))] {
        let url = format!("nats://127.0.0.1:{port}/{}", subjects[0]);
        let mut exporters = start_shared(&url, &subjects, options.as_slice());
        let n = 5_000;
        for i in 0..n {
            for exporter in &mut exporters {
                assert!(exporter.send(format!("{{\"i\":{i}}}").as_bytes()));
            }
        }
        for (exporter, subject) in exporters.into_iter().zip(subjects) {
            assert_eq!(exporter.endpoint().destination(), subject);
            let stats = exporter.finish();
            assert_eq!((stats.offered, stats.exported, stats.export_failed()), (n, n, 0), "{subject}: {stats:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&store);
}

/// On one connection, a full queue is its exporter's own: against an engine that never answers
/// (with one event in flight at most and 4 queued), the exporter sent 100 events counts at least
/// 95 `queue_full`, the one sent 3 none, and each accounts for every event it was given.
#[test]
fn a_full_queue_on_a_shared_connection_is_its_own_exporters() {
    let port = silent_listener();
    let url = format!("nats://127.0.0.1:{port}/full");
    let options = ["connect=retry", "queue=4", "in_flight=1", "flush_timeout=100ms"];
    let mut exporters = start_shared(&url, &["full", "calm"], &options);
    for _ in 0..100 {
        exporters[0].send(b"{}");
    }
    for _ in 0..3 {
        assert!(exporters[1].send(b"{}"), "its own queue has room");
    }
    let calm = exporters.pop().unwrap().finish();
    let full = exporters.pop().unwrap().finish();
    assert!(full.queue_full >= 95 && full.offered == 100, "{full:?}");
    assert_eq!((calm.offered, calm.queue_full, calm.unflushed), (3, 0, 3), "{calm:?}");
    for stats in [full, calm] {
        assert_eq!(stats.offered, stats.exported + stats.export_failed(), "{stats:?}");
    }
}

/// Options that would make `exported` mean less than acknowledged are usage errors.
#[test]
fn options_that_weaken_the_delivery_promise_are_refused() {
    for (url, option) in [
        ("kafka://127.0.0.1:9/t", "acks=1"),
        ("kafka://127.0.0.1:9/t", "enable.idempotence=false"),
        ("kafka://127.0.0.1:9/t", "bootstrap.servers=127.0.0.2:9"),
        ("nats://127.0.0.1:9/t", "ack_timeout=0s"),
    ] {
        let error = start(url, &[option]).unwrap_err();
        assert!(error.is_usage(), "{option}: {error}");
    }
}

/// The JetStream stream is deleted in the middle of a run (create=true, the default): the next
/// publications find no stream, the exporter makes it again and delivery resumes with the next
/// event, every event after the deletion acknowledged and stored once in the new stream.
#[test]
fn jetstream_stream_deleted_mid_run_is_made_again_and_delivery_resumes() {
    let Some((_server, port, store)) = jetstream_server("heal") else { return };
    let subject = "export.heal";
    let mut exporter = start(&format!("nats://127.0.0.1:{port}/{subject}"), &["flush_timeout=30s"]).unwrap();
    let send = |exporter: &mut Exporter, n: usize| (0..n).for_each(|_| assert!(exporter.send(b"{}")));
    send(&mut exporter, 500);
    while exporter.stats().exported < 500 {
        std::thread::sleep(Duration::from_millis(10));
    }
    jetstream(port, |js| async move { js.delete_stream("BPFSTREAM_export_heal").await.map(drop).unwrap() });
    send(&mut exporter, 500);
    let stats = exporter.finish();
    assert_eq!((stats.exported, stats.export_failed()), (1000, 0), "{stats:?}");
    assert!(stats.retries > 0, "the deletion went unnoticed: {stats:?}");
    let mut seqs = jetstream(port, move |js| async move { stored_seqs(&js, subject).await });
    // Republished events come after the ones published meanwhile: sorted, each seq once.
    seqs.sort_unstable();
    assert_eq!(seqs, (501..=1000).collect::<Vec<u64>>(), "the new stream holds every event after the deletion, once");
    let _ = std::fs::remove_dir_all(&store);
}

/// Runs `work` with a JetStream context on the server at `port`.
fn jetstream<T, F: std::future::Future<Output = T>>(
    port: u16,
    work: impl FnOnce(async_nats::jetstream::Context) -> F,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
        work(async_nats::jetstream::new(client)).await
    })
}

/// The `seq` header of every message of the stream capturing `subject`, in stream order.
async fn stored_seqs(js: &async_nats::jetstream::Context, subject: &str) -> Vec<u64> {
    use futures_util::StreamExt;
    let name = js.stream_by_subject(subject).await.unwrap();
    let mut stream = js.get_stream(&name).await.unwrap();
    let count = stream.info().await.unwrap().state.messages as usize;
    let consumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap().take(count);
    let mut seqs = Vec::with_capacity(count);
    while let Some(message) = messages.next().await {
        let headers = message.unwrap().headers.clone().expect("headers");
        seqs.push(headers.get("seq").expect("a seq header").as_str().parse().unwrap());
    }
    seqs
}
