//! The engines `--output` ships to, run on loopback for the tests: `nats-server` with
//! JetStream, and `tansu` for Kafka. `.ci/run` starts shared servers and names them in
//! `BPFSTREAM_TEST_NATS` and `BPFSTREAM_TEST_KAFKA` (`HOST:PORT`); tests that kill and restart
//! an engine start a private one from the binary on PATH. Without the binary (and without the variable) a test is skipped
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
    eprintln!("\n*** SKIPPING a {what} test: {program} is not on PATH (see .ci/run to install it) ***\n");
    false
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports nobody listens on right now.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|l| l.local_addr().unwrap().port())
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

    /// SIGSTOP (`false`) or SIGCONT (`true`): a server that holds its connections and answers
    /// nothing, as a hung or overloaded engine does.
    /// When it returns, every thread of the server has stopped (a signal takes effect when each
    /// thread next runs).
    pub fn run_on(&self, go: bool) {
        let child = self.child.as_ref().expect("running");
        let signal = if go { libc::SIGCONT } else { libc::SIGSTOP };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !go && !all_stopped(child.id()) {
            assert!(Instant::now() < deadline, "nats-server did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in /proc/PID/task/*/stat).
pub fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        stat.rfind(')').and_then(|close| stat[close + 1..].split_whitespace().next()) == Some("T")
    })
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

/// CPU time (ns) of a process so far: utime + stime from /proc/PID/stat.
fn process_cpu_ns(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else { return f64::NAN };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) * 1e9 / hz
}

/// A private engine, as the benchmark drives it.
pub trait Engine {
    fn name(&self) -> &'static str;
    /// The `--output` URL of a topic or subject.
    fn url(&self, topic: &str) -> String;
    /// A fresh topic or subject named after `tag`, ready to take events.
    fn prepare(&self, tag: &str) -> String;
    /// The engine's CPU time so far.
    fn cpu_ns(&self) -> f64;
}

impl Engine for NatsServer {
    fn name(&self) -> &'static str {
        "nats-server (JetStream, file storage)"
    }
    fn url(&self, topic: &str) -> String {
        NatsServer::url(self, topic)
    }
    fn prepare(&self, tag: &str) -> String {
        format!("bpfstream.bench.{tag}")
    }
    fn cpu_ns(&self) -> f64 {
        self.child.as_ref().map_or(f64::NAN, |c| process_cpu_ns(c.id()))
    }
}

/// A private `tansu` Kafka broker on a free loopback port (memory storage).
pub struct KafkaServer {
    pub port: u16,
    /// The port it tells clients to connect to: its own, or a proxy's in front of it.
    advertised: u16,
    /// More `tansu broker` arguments.
    args: Vec<String>,
    child: Option<Child>,
}

impl KafkaServer {
    /// `None`: skipped (see the module's doc).
    pub fn start() -> Option<KafkaServer> {
        let port = free_port();
        Self::start_with(port, port, &[])
    }

    /// A broker on `port` that tells its clients to connect to `advertised` (a proxy in front
    /// of it), with more `tansu broker` arguments. `None`: skipped (see the module's doc).
    pub fn start_with(port: u16, advertised: u16, args: &[&str]) -> Option<KafkaServer> {
        if !available("tansu", "Kafka") {
            return None;
        }
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut server = KafkaServer { port, advertised, args, child: None };
        server.restart();
        Some(server)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let mut child = Command::new("tansu")
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        wait_listening(self.port, &mut child, "tansu");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Creates `topic` on the broker at `address` with tansu's own client.
pub fn create_topic(address: &str, topic: &str) {
    let status = Command::new("tansu")
        .args(["topic", "create", topic, "--broker", &format!("tcp://{address}")])
        .stdout(Stdio::null())
        .status()
        .expect("run tansu topic create");
    assert!(status.success(), "tansu topic create {topic}: {status}");
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `socat` terminating TLS on a loopback port in front of a plain TCP server: it presents a
/// server certificate and takes only clients whose certificate `ca` signed (mutual TLS).
pub struct TlsProxy(Child);

impl TlsProxy {
    /// Listens on `port` and forwards each connection to 127.0.0.1:`target`. `None`: skipped
    /// (see the module's doc).
    pub fn start(port: u16, target: u16, cert: &str, key: &str, ca: &str) -> Option<TlsProxy> {
        if !available("socat", "TLS") {
            return None;
        }
        let listen =
            format!("OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={cert},key={key},cafile={ca},verify=1");
        let mut child = Command::new("socat")
            .args([&listen, &format!("TCP:127.0.0.1:{target}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn socat");
        wait_listening(port, &mut child, "socat");
        Some(TlsProxy(child))
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Engine for KafkaServer {
    fn name(&self) -> &'static str {
        "tansu (Kafka, memory storage)"
    }
    fn url(&self, topic: &str) -> String {
        format!("kafka://{}/{topic}", self.address())
    }
    fn prepare(&self, tag: &str) -> String {
        let topic = format!("bpfstream-bench-{tag}");
        create_topic(&self.address(), &topic);
        topic
    }
    fn cpu_ns(&self) -> f64 {
        self.child.as_ref().map_or(f64::NAN, |c| process_cpu_ns(c.id()))
    }
}

/// `HOST:PORT` of a Kafka broker: `.ci/run`'s (`BPFSTREAM_TEST_KAFKA`), or a private one.
pub enum Kafka {
    Shared(String),
    Private(KafkaServer),
}

impl Kafka {
    pub fn get() -> Option<Kafka> {
        match std::env::var("BPFSTREAM_TEST_KAFKA") {
            Ok(address) => Some(Kafka::Shared(address)),
            Err(_) => KafkaServer::start().map(Kafka::Private),
        }
    }

    pub fn address(&self) -> String {
        match self {
            Kafka::Shared(address) => address.clone(),
            Kafka::Private(server) => server.address(),
        }
    }

    /// The URL of a topic no other test uses; created unless `create` is false.
    pub fn url(&self, tag: &str, create: bool) -> (String, String) {
        let topic = format!("bpfstream-test-{tag}-{}", std::process::id());
        if create {
            create_topic(&self.address(), &topic);
        }
        (format!("kafka://{}/{topic}", self.address()), topic)
    }
}

/// Every record of `topic` (all partitions), fetched from the start: reads until `expected`
/// records came, then one more second for any extra (a duplicate would show there).
pub fn kafka_messages(address: &str, topic: &str, expected: usize) -> Vec<Exported> {
    kafka_messages_with(address, &[], topic, expected)
}

/// [`kafka_messages`] by a consumer with more librdkafka properties (TLS, SASL).
pub fn kafka_messages_with(address: &str, config: &[(&str, &str)], topic: &str, expected: usize) -> Vec<Exported> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", address).set("group.id", "bpfstream-tests").set("enable.auto.commit", "false");
    for (key, value) in config {
        client.set(*key, *value);
    }
    let consumer: BaseConsumer = client.create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let mut idle_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < idle_until {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.unwrap();
        let headers = message.headers().map_or_else(Default::default, |h| {
            h.iter()
                .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect()
        });
        let mut headers: std::collections::HashMap<String, String> = headers;
        headers.insert("key".into(), String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned());
        out.push(Exported {
            payload: String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap(),
            headers,
        });
        if out.len() == expected {
            idle_until = Instant::now() + Duration::from_secs(1);
        }
    }
    out
}

/// A TCP listener on loopback that accepts every connection and never says a word: an engine
/// that never answers (a frozen server, a stuck proxy or load balancer), for NATS and Kafka
/// alike. The connections stay open until it is dropped.
pub struct SilentEngine {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentEngine {
    pub fn start() -> SilentEngine {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(AtomicBool::new(true));
        let accepting = open.clone();
        std::thread::spawn(move || {
            let mut connections = Vec::new();
            for stream in listener.incoming() {
                if !accepting.load(Ordering::Relaxed) {
                    break;
                }
                connections.extend(stream.ok());
            }
        });
        SilentEngine { port, open }
    }

    /// The URL of `scheme` (`nats` or `kafka`) to a destination both take.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/bpfs-silent", self.port)
    }
}

impl Drop for SilentEngine {
    fn drop(&mut self) {
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accepting thread, which then ends and closes every connection.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The established TCP connections process `pid` holds to `port` (its sockets, as
/// `/proc/PID/fd` names them, found in `/proc/PID/net/tcp`): how many connections a client made.
pub fn connections_to(pid: u32, port: u16) -> usize {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|link| Some(link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let to_port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[2].ends_with(&to_port) && f[3] == "01" && sockets.contains(f[9]))
        .count()
}

/// The threads of process `pid` named `name` (`/proc/PID/task/*/comm`): librdkafka runs one
/// `rdk:main` per client.
pub fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks.flatten().filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)).count()
}
