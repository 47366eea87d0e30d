//! The engines `--output` ships to, run on loopback for the tests: `nats-server` with
//! JetStream (and `tansu` for Kafka). `.ci/run` starts shared servers and names them in
//! `BPFSTREAM_TEST_NATS` (`HOST:PORT`); tests that kill and restart an engine start a private
//! one from the binary on PATH. Without the binary (and without the variable) a test is skipped
//! loudly, except under CI (`CI` set), where it fails.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` is on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `None` (with a loud message) when the engine cannot be had outside CI; panics under CI.
fn available(program: &str, what: &str) -> bool {
    if on_path(program) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must run the {what} tests, but {program} is not on PATH");
    eprintln!("\n*** SKIPPING a {what} test: {program} is not on PATH (apt-get install nats-server) ***\n");
    false
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private `nats-server -js` on a free loopback port, with its store in a fresh directory
/// (so that it can be killed and restarted with its streams).
pub struct NatsServer {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// `None`: skipped (see the module's doc).
    pub fn start() -> Option<NatsServer> {
        if !available("nats-server", "NATS") {
            return None;
        }
        let port = free_port();
        let store = super::temp_dir(&format!("nats-{port}"));
        let mut server = NatsServer { port, store, child: None };
        server.restart();
        Some(server)
    }

    /// (Re)starts the server on the same port and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        wait_listening(self.port, &mut child, "nats-server");
        self.child = Some(child);
    }

    /// SIGKILL: the server dies without a word to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, subject: &str) -> String {
        format!("nats://127.0.0.1:{}/{subject}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// `HOST:PORT` of a server to share: `.ci/run`'s (`BPFSTREAM_TEST_NATS`), or a private one.
pub enum Nats {
    Shared(String),
    Private(NatsServer),
}

impl Nats {
    pub fn get() -> Option<Nats> {
        match std::env::var("BPFSTREAM_TEST_NATS") {
            Ok(address) => Some(Nats::Shared(address)),
            Err(_) => NatsServer::start().map(Nats::Private),
        }
    }

    pub fn address(&self) -> String {
        match self {
            Nats::Shared(address) => address.clone(),
            Nats::Private(server) => format!("127.0.0.1:{}", server.port),
        }
    }

    /// The URL of a subject no other test uses.
    pub fn url(&self, tag: &str) -> (String, String) {
        let subject = format!("bpfstream.test.{tag}.{}", std::process::id());
        (format!("nats://{}/{subject}", self.address()), subject)
    }
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct Exported {
    pub payload: String,
    pub headers: std::collections::HashMap<String, String>,
}

impl Exported {
    pub fn seq(&self) -> u64 {
        self.headers["seq"].parse().unwrap()
    }
}

/// Every message the JetStream stream capturing `subject` holds, in stream order.
pub fn nats_messages(address: &str, subject: &str) -> Vec<Exported> {
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(address).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let name = jetstream.stream_by_subject(subject).await.unwrap();
        let mut stream = jetstream.get_stream(&name).await.unwrap();
        let count = stream.info().await.unwrap().state.messages as usize;
        let config = async_nats::jetstream::consumer::pull::OrderedConfig::default();
        let consumer = stream.create_consumer(config).await.unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let message = messages.next().await.unwrap().unwrap();
            let headers = message.headers.as_ref().expect("headers");
            let headers = headers.iter().map(|(k, v)| (k.to_string(), v[0].to_string())).collect();
            out.push(Exported { payload: String::from_utf8(message.payload.to_vec()).unwrap(), headers });
        }
        out
    })
}
