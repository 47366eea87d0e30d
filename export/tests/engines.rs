//! The exporter against real engines on loopback, from Rust, without tracers: `nats-server`
//! and `tansu` from PATH (skipped loudly when missing, unless `CI` is set).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpfstream_export::{ExportConfig, ExportError, Exporter, Identity};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args` (with `{port}` replaced by a free port) and waits until it listens.
fn serve(program: &str, args: &[&str]) -> Option<(Server, u16)> {
    let found = Command::new(program).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must run the exporter's tests, but {program} is missing");
        eprintln!("\n*** SKIPPING an exporter test: {program} is not on PATH ***\n");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
    let child = Command::new(program).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{program} does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, port))
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

#[test]
fn jetstream_acknowledges_every_event() {
    let store = std::env::temp_dir().join(format!("bpfstream-export-test-{}", std::process::id()));
    let store = store.to_str().unwrap().to_string();
    let Some((_server, port)) = serve("nats-server", &["-a", "127.0.0.1", "-p", "{port}", "-js", "-sd", &store]) else {
        return;
    };
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
    let down = start("kafka://127.0.0.1:9/t", &[]).unwrap_err();
    assert!(matches!(down, ExportError::Unreachable(_)), "{down}");
}
