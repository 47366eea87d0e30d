//! NATS JetStream: publish with headers and `Nats-Msg-Id`, counted when the stream's publish
//! acknowledgement comes back. A stream capturing the subject is created unless `create=false`:
//! one per subject, or with `stream=NAME` one capturing every subject of the client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{ContextBuilder, GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event, HeaderMap};

use crate::config::{parse_bool, parse_duration, parse_positive_duration};
use crate::exporter::Destination;
use crate::link::Link;
use crate::pipeline::{Delivery, Failure, Message, Publisher};
use crate::start::{self, Budget, Progress};
use crate::{ConnectPolicy, Endpoint, ExportConfig, ExportError, Identity};

/// The `--output-option`s of NATS.
#[derive(Debug, Default, Clone)]
pub(crate) struct Settings {
    stream: Option<String>,
    storage: stream::StorageType,
    duplicate_window: Option<Duration>,
    ack_timeout: Option<Duration>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    creds: Option<PathBuf>,
    /// `tls=true`, or `tls_ca`, `tls_cert`/`tls_key` given (`None`: not said).
    tls: Option<bool>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

const KEYS: &str = "stream, storage, duplicate_window, ack_timeout, user, password, token, creds, tls, tls_ca, \
                    tls_cert, tls_key (and queue, in_flight, connect, flush_timeout, create)";

impl Settings {
    /// Reads the options; refuses unknown keys, settings that would make `exported` mean less
    /// than acknowledged (a zero `ack_timeout`), and TLS files without TLS (they turn TLS on:
    /// never plaintext when a certificate was given) or that cannot be read.
    pub fn parse(options: &[(String, String)]) -> Result<Self, ExportError> {
        let mut s = Settings::default();
        for (key, value) in options {
            let text = || Some(value.clone());
            let path = || Some(PathBuf::from(value));
            match key.as_str() {
                "stream" => s.stream = text(),
                "storage" => {
                    s.storage = match value.as_str() {
                        "file" => stream::StorageType::File,
                        "memory" => stream::StorageType::Memory,
                        _ => return Err(ExportError::Option(format!("storage={value:?}: use file or memory"))),
                    }
                }
                "duplicate_window" => s.duplicate_window = Some(parse_duration(key, value)?),
                "ack_timeout" => s.ack_timeout = Some(parse_positive_duration(key, value)?),
                "user" => s.user = text(),
                "password" => s.password = text(),
                "token" => s.token = text(),
                "creds" => s.creds = path(),
                "tls" => s.tls = Some(parse_bool(key, value)?),
                "tls_ca" => s.tls_ca = path(),
                "tls_cert" => s.tls_cert = path(),
                "tls_key" => s.tls_key = path(),
                _ => return Err(ExportError::Option(format!("NATS has no option {key:?}; it takes {KEYS}"))),
            }
        }
        if s.password.is_some() != s.user.is_some() || s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err(ExportError::Option("give user with password, and tls_cert with tls_key".into()));
        }
        s.check_tls_files()?;
        Ok(s)
    }

    /// TLS files turn TLS on, and must be readable now.
    fn check_tls_files(&mut self) -> Result<(), ExportError> {
        let files = [("tls_ca", &self.tls_ca), ("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)];
        let given: Vec<(&str, &PathBuf)> =
            files.iter().filter_map(|(key, path)| Some((*key, path.as_ref()?))).collect();
        if given.is_empty() {
            return Ok(());
        }
        if self.tls == Some(false) {
            return Err(ExportError::Option(format!(
                "{} given with tls=false: TLS files need TLS (leave out tls=false)",
                given[0].0
            )));
        }
        for (key, path) in given {
            std::fs::File::open(path)
                .map_err(|e| ExportError::Option(format!("{key}={}: cannot read it: {e}", path.display())))?;
        }
        self.tls = Some(true);
        Ok(())
    }

    fn tls(&self) -> bool {
        self.tls == Some(true)
    }

    async fn connect_options(&self, policy: ConnectPolicy, link: Arc<Link>) -> Result<ConnectOptions, ExportError> {
        let mut options = ConnectOptions::new().name("bpfstream").event_callback(follow(link));
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| ExportError::Option(format!("creds={}: {e}", creds.display())))?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        options = options.require_tls(self.tls());
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if policy == ConnectPolicy::Retry {
            options = options.retry_on_initial_connect();
        }
        Ok(options)
    }
}

/// The client's connection events, in `link`: connected, lost, and every connection after the
/// first one counted as a reconnection.
fn follow(link: Arc<Link>) -> impl Fn(Event) -> std::future::Ready<()> + Send + Sync + 'static {
    let connected_before = AtomicBool::new(false);
    move |event| {
        match event {
            Event::Connected => {
                // Relaxed: the client's events come one at a time, from one task.
                if connected_before.swap(true, Ordering::Relaxed) {
                    link.count_reconnects(1);
                }
                link.set_connected(true);
            }
            Event::Disconnected | Event::Closed => link.set_connected(false),
            _ => {}
        }
        std::future::ready(())
    }
}

/// Publishes to one subject of a JetStream-enabled server, on a client it may share with the
/// publishers of other subjects.
pub(crate) struct NatsPublisher {
    jetstream: jetstream::Context,
    subject: async_nats::Subject,
    identity: Arc<Identity>,
    stream: Arc<StreamSetup>,
}

impl NatsPublisher {
    /// Connects one client and makes sure a stream captures each destination's subject
    /// (creating it unless told not to), saying in `budget` what it waits for; with
    /// `connect=retry`, both happen in the background until they succeed. The client's
    /// connection is followed in `link`. A publisher per destination, in their order.
    pub async fn connect(
        config: &ExportConfig,
        settings: Settings,
        budget: Budget,
        link: Arc<Link>,
        destinations: Vec<Destination>,
    ) -> Result<Vec<Self>, ExportError> {
        let Endpoint::Nats { server, .. } = &config.endpoint else { unreachable!("a NATS endpoint") };
        let client = connect_client(config, &settings, &budget.progress, link).await?;
        // The client's bound on unacknowledged publications is every pipeline's.
        let in_flight = config.in_flight.saturating_mul(destinations.len()).saturating_add(1);
        let jetstream = ContextBuilder::new()
            .timeout(settings.ack_timeout.unwrap_or(Duration::from_secs(5)))
            .max_ack_inflight(in_flight)
            .backpressure_on_inflight(true)
            .build(client);
        let subjects: Vec<String> = destinations.iter().map(|d| d.name.clone()).collect();
        let mut publishers = Vec::with_capacity(destinations.len());
        for Destination { name, identity } in destinations {
            // `stream=NAME`: one stream captures every subject; else one per subject.
            let captures = if settings.stream.is_some() { subjects.clone() } else { vec![name.clone()] };
            let stream = Arc::new(StreamSetup {
                jetstream: jetstream.clone(),
                server: server.clone(),
                subject: name.clone(),
                captures,
                create: config.create.unwrap_or(true),
                settings: settings.clone(),
                progress: budget.progress.clone(),
                healing: AtomicBool::new(false),
            });
            match config.connect {
                ConnectPolicy::Fail => stream.ensure().await?,
                ConnectPolicy::Retry => {
                    tokio::spawn(stream.clone().ensure_eventually());
                }
            }
            let (subject, identity) = (name.as_str().into(), Arc::new(identity));
            publishers.push(NatsPublisher { jetstream: jetstream.clone(), subject, identity, stream });
        }
        Ok(publishers)
    }
}

/// The client, connected (or, with `connect=retry`, connecting in the background), saying in
/// `progress` how far the server got.
async fn connect_client(
    config: &ExportConfig,
    settings: &Settings,
    progress: &Progress,
    link: Arc<Link>,
) -> Result<async_nats::Client, ExportError> {
    let Endpoint::Nats { server, .. } = &config.endpoint else { unreachable!("a NATS endpoint") };
    let tls = settings.tls();
    let options = settings.connect_options(config.connect, link).await?;
    let connected = match config.connect {
        ConnectPolicy::Retry => options.connect(server.as_str()).await,
        ConnectPolicy::Fail => {
            let after = if tls { "the TLS handshake and the login" } else { "the login" };
            tokio::select! {
                client = options.connect(server.as_str()) => client,
                never = start::watch(server, "nats-server", Some(("INFO", after)), progress) => match never {},
            }
        }
    };
    let over =
        if tls { " over TLS (tls, tls_ca, tls_cert and tls_key require it: does the server have it?)" } else { "" };
    connected.map_err(|e| {
        ExportError::Unreachable(format!(
            "cannot reach nats-server at {server}{over}: {e}. Start it (with -js), check the address, or add \
             --output-option connect=retry to wait for it"
        ))
    })
}

/// Finding or creating the stream that captures the subject: at start, and again whenever a
/// publication finds none (the stream was deleted, or the server came back without its store).
struct StreamSetup {
    jetstream: jetstream::Context,
    server: String,
    subject: String,
    /// The subjects of a stream it creates.
    captures: Vec<String>,
    create: bool,
    settings: Settings,
    /// What the start waits for.
    progress: Progress,
    /// A creation is under way (one at a time).
    healing: AtomicBool,
}

impl StreamSetup {
    async fn ensure(&self) -> Result<(), ExportError> {
        let (server, subject) = (&self.server, &self.subject);
        self.progress.waiting_for(format!("JetStream at {server} did not say which stream captures {subject:?}"));
        let error = match self.jetstream.stream_by_subject(subject.as_str()).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !matches!(error.kind(), GetStreamByNameErrorKind::NotFound) {
            return Err(ExportError::Setup(format!(
                "asking JetStream which stream captures {subject:?} failed: {error} (is JetStream enabled: \
                 nats-server -js?)"
            )));
        }
        if !self.create {
            return Err(ExportError::Setup(format!(
                "no JetStream stream captures {subject:?}: create one, or leave out create=false to let bpfstream \
                 create it"
            )));
        }
        let config = stream::Config {
            name: self.settings.stream.clone().unwrap_or_else(|| stream_name(subject)),
            subjects: self.captures.clone(),
            storage: self.settings.storage,
            duplicate_window: self.settings.duplicate_window.unwrap_or(Duration::from_secs(120)),
            ..Default::default()
        };
        self.progress.waiting_for(format!("JetStream at {server} did not create a stream for {subject:?}"));
        self.jetstream
            .create_stream(config)
            .await
            .map_err(|e| ExportError::Setup(format!("creating a JetStream stream for {subject:?} failed: {e}")))?;
        Ok(())
    }

    /// Tries again with a growing pause until the stream exists.
    async fn ensure_eventually(self: Arc<Self>) {
        let mut pause = Duration::from_millis(100);
        while self.ensure().await.is_err() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A publication found no stream: unless `create=false`, makes it again in the background
    /// (the failed publications are retried meanwhile, with their `seq`). Returns the words
    /// for the failure's report.
    fn stream_missing(self: &Arc<Self>) -> &'static str {
        if !self.create {
            return " (create=false: create the stream)";
        }
        // Relaxed: a flag on its own; the task that clears it is the one it guards.
        if !self.healing.swap(true, Ordering::Relaxed) {
            let setup = self.clone();
            tokio::spawn(async move {
                let _ = setup.ensure().await;
                setup.healing.store(false, Ordering::Relaxed);
            });
        }
        " (deleted, or a server that lost its store: creating it again)"
    }
}

/// `BPFSTREAM_` and the subject with every character a stream name cannot have as `_`.
fn stream_name(subject: &str) -> String {
    let cleaned: String =
        subject.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("BPFSTREAM_{cleaned}")
}

impl Publisher for NatsPublisher {
    fn publish(&self, message: &Message) -> Delivery {
        let id = &self.identity;
        let seq = message.seq.to_string();
        let mut headers = HeaderMap::new();
        headers.insert("host", id.host.as_str());
        headers.insert("boot_id", id.boot_id.as_str());
        headers.insert("run", id.run.as_str());
        headers.insert("seq", seq.as_str());
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers)
            .message_id(format!("{}/{}/{}/{seq}", id.host, id.boot_id, id.run));
        let jetstream = self.jetstream.clone();
        let subject = self.subject.clone();
        let stream = self.stream.clone();
        Box::pin(async move {
            let ack = jetstream.send_publish(subject, publish).await.map_err(|e| Failure::Retry(e.to_string()))?;
            match ack.await {
                Ok(_) => Ok(()),
                Err(e) => Err(match e.kind() {
                    PublishErrorKind::StreamNotFound => {
                        Failure::Retry(format!("JetStream has no stream for the subject{}", stream.stream_missing()))
                    }
                    PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                        Failure::Reject(e.to_string())
                    }
                    PublishErrorKind::Other => Failure::Reject(format!("JetStream refused an event: {e}")),
                    _ => Failure::Retry(format!("JetStream did not acknowledge an event: {e}")),
                }),
            }
        })
    }

    /// A publication starts when its future is first polled.
    fn batch(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_events_are_followed() {
        use futures_util::FutureExt;

        let link = Arc::new(Link::default());
        let follow = follow(link.clone());
        let seen = |event| {
            assert_eq!(follow(event).now_or_never(), Some(()), "the callback's work is done when it returns");
            (link.now().connected, link.now().reconnects)
        };
        assert_eq!(seen(Event::Connected), (true, 0), "the first connection is no reconnection");
        assert_eq!(seen(Event::Disconnected), (false, 0));
        assert_eq!(seen(Event::SlowConsumer(1)), (false, 0));
        assert_eq!(seen(Event::Connected), (true, 1));
        assert_eq!(seen(Event::Closed), (false, 1));
    }

    #[test]
    fn settings_parse_and_refuse_unknown_keys() {
        let options =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let s =
            Settings::parse(&options(&[("storage", "memory"), ("duplicate_window", "30s"), ("tls", "true")])).unwrap();
        assert_eq!(
            (s.storage, s.duplicate_window, s.tls),
            (stream::StorageType::Memory, Some(Duration::from_secs(30)), Some(true))
        );
        for bad in [
            &[("linger.ms", "5")][..],
            &[("storage", "disk")],
            &[("user", "u")],
            &[("tls_cert", "c")],
            &[("ack_timeout", "0")],
            &[("tls_ca", "/nonexistent")],
            &[("tls", "false"), ("tls_ca", "/etc/hostname")],
        ] {
            assert!(Settings::parse(&options(bad)).unwrap_err().is_usage(), "{bad:?}");
        }
        assert_eq!(stream_name("bpf.events-1"), "BPFSTREAM_bpf_events-1");
        let tls_by_its_files = Settings::parse(&options(&[("tls_ca", "/etc/hostname")])).unwrap();
        assert!(tls_by_its_files.tls(), "a CA turns TLS on");
    }
}
