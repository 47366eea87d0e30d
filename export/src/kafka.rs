//! Kafka: an idempotent producer with `acks=all`, through librdkafka (bundled, built from
//! source: Debian's 2.0 cannot talk to every broker); an event counts when its delivery report
//! says the partition leader and its in-sync replicas have it. A missing topic is an error
//! unless `create=true`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Statistics};

use crate::exporter::Destination;
use crate::link::Link;
use crate::pipeline::{Delivery, Failure, Message, Publisher};
use crate::start::{self, Budget};
use crate::{ConnectPolicy, Endpoint, ExportConfig, ExportError, Identity};

/// How long a look for a topic that may have disappeared, and its creation, wait.
const HEAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long librdkafka tries to deliver an event before it reports a timeout (its own default
/// is 5 minutes); a timeout makes the exporter start a new producer and publish again.
const MESSAGE_TIMEOUT_MS: &str = "10000";

/// How often librdkafka reports its statistics, from which the exporter's connection is read
/// (unless the `statistics.interval.ms` option says otherwise).
const STATISTICS_INTERVAL_MS: &str = "1000";

/// The last error librdkafka reported about a broker, which says what failed (a TLS handshake,
/// a certificate, SASL) when the start-up checks only see a timeout ("all brokers are down",
/// its consequence, is left out).
#[derive(Clone, Default)]
struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    fn note(&self, error: &KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_string());
    }

    /// ` (librdkafka: REASON)`, or nothing if librdkafka reported no error.
    fn describe(&self) -> String {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref().map_or_else(String::new, |reason| format!(" (librdkafka: {reason})"))
    }
}

/// A producer's client context: its last error, and its brokers' connections as librdkafka's
/// statistics say them (every `statistics.interval.ms`), followed in the exporter's link.
#[derive(Clone)]
struct Context {
    errors: LastError,
    link: Arc<Link>,
    /// The brokers' `disconnects` at the last statistics, all brokers together.
    disconnects: Arc<AtomicU64>,
}

impl Context {
    fn new(link: Arc<Link>) -> Self {
        Context { errors: LastError::default(), link, disconnects: Arc::new(AtomicU64::new(0)) }
    }
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.note(&error, reason);
    }

    /// Connected while a broker's connection is up; each connection lost since the last
    /// statistics is one reconnection (librdkafka reconnects every broker it lost).
    fn stats(&self, statistics: Statistics) {
        let brokers = statistics.brokers.values().filter(|b| b.source == "configured" || b.source == "learned");
        let (mut up, mut disconnects) = (false, 0);
        for broker in brokers {
            up |= broker.state == "UP";
            disconnects += broker.disconnects.unwrap_or(0).max(0) as u64;
        }
        // Relaxed: statistics come one at a time, from librdkafka's main thread.
        let before = self.disconnects.swap(disconnects, Ordering::Relaxed);
        self.link.count_reconnects(disconnects.saturating_sub(before));
        self.link.set_connected(up);
    }
}

type Producer = FutureProducer<Context>;

/// Topic creation's `--output-option`s; every other key is a librdkafka property.
#[derive(Debug)]
pub(crate) struct Settings {
    partitions: i32,
    replication_factor: i32,
    client: ClientConfig,
}

/// Why a librdkafka property that would make `exported` mean less than acknowledged by every
/// in-sync replica, send events elsewhere than the URL says, or hide the connection, is refused.
fn weakens_delivery(key: &str, value: &str) -> Option<&'static str> {
    match key {
        "acks" | "request.required.acks" if value != "all" && value != "-1" => {
            Some("an event counts as exported only once every in-sync replica has it (acks=all)")
        }
        "enable.idempotence" if !matches!(value, "true" | "1") => {
            Some("the idempotent producer keeps a republished event from being stored twice or out of order")
        }
        "bootstrap.servers" | "metadata.broker.list" => {
            Some("the brokers are the URL's (kafka://HOST:PORT,HOST:PORT/TOPIC), which errors and the summary name")
        }
        "transactional.id" => Some("bpfstream commits no transaction: consumers that read committed would see nothing"),
        "statistics.interval.ms" if value == "0" => {
            Some("the exporter's connection (its metrics, the agent's /healthz) is read from librdkafka's statistics")
        }
        _ => None,
    }
}

/// TLS properties (`ssl.*`) without TLS (`security.protocol` ssl or sasl_ssl) would be ignored
/// by librdkafka and the events sent in clear: refused.
fn check_tls(client: &ClientConfig) -> Result<(), ExportError> {
    let protocol = client.get("security.protocol").unwrap_or("plaintext").to_ascii_lowercase();
    let tls = protocol == "ssl" || protocol == "sasl_ssl";
    match client.config_map().keys().find(|key| key.starts_with("ssl.")) {
        Some(key) if !tls => Err(ExportError::Option(format!(
            "{key} is a TLS setting, but security.protocol is {protocol}: the events would go in clear; add \
             security.protocol=ssl (or sasl_ssl)"
        ))),
        _ => Ok(()),
    }
}

impl Settings {
    /// Reads the options: topic creation's, and librdkafka properties, refusing those that
    /// would weaken the delivery promise ([`weakens_delivery`]) or TLS files without TLS.
    pub fn parse(brokers: &[String], options: &[(String, String)]) -> Result<Self, ExportError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers.join(","))
            .set("client.id", "bpfstream")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        let mut settings = Settings { partitions: 1, replication_factor: 1, client };
        for (key, value) in options {
            let number = || match value.parse::<i32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ExportError::Option(format!("{key}={value:?}: give a positive count"))),
            };
            match key.as_str() {
                "partitions" => settings.partitions = number()?,
                "replication_factor" => settings.replication_factor = number()?,
                _ => match weakens_delivery(key, value) {
                    Some(why) => return Err(ExportError::Option(format!("{key}={value}: refused: {why}"))),
                    None => {
                        settings.client.set(key, value);
                    }
                },
            }
        }
        check_tls(&settings.client)?;
        Ok(settings)
    }
}

/// The connection's producer, which every topic's publisher shares, replaced by a new one
/// after a fatal error or a stalled event.
struct Producers {
    /// The producer and its generation (1, 2, ...: one more each time it is replaced).
    current: Mutex<(Producer, u64)>,
    /// The generation of a producer that let an event time out (0: none).
    stalled: AtomicU64,
    /// To make a new producer after a fatal error (an idempotent producer gives up for good
    /// when, for example, a broker that lost its state comes back).
    client: ClientConfig,
    /// Where every producer's connection is followed.
    link: Arc<Link>,
}

impl Producers {
    /// The producer and its generation, replaced by a new one if it hit a fatal error or let
    /// an event time out. An idempotent producer can stall for good or give up when a broker
    /// that lost its state comes back (tansu with memory storage, a wiped cluster): dropping
    /// the old one purges what it still held, which comes back as failures and is published
    /// again through the new one with the same `seq`, so that consumers drop what both
    /// delivered.
    fn producer(&self) -> (Producer, u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Relaxed: a flag on its own, set by delivery reports that arrive in any order anyway.
        let stalled = self.stalled.load(Ordering::Relaxed) == current.1;
        if stalled || current.0.client().fatal_error().is_some() {
            if let Ok(fresh) = self.client.create_with_context(Context::new(self.link.clone())) {
                *current = (fresh, current.1 + 1);
                self.link.count_reconnects(1);
            }
        }
        current.clone()
    }
}

/// Produces to one topic, through the producer it shares with the other topics' publishers.
pub(crate) struct KafkaPublisher {
    producers: Arc<Producers>,
    topic: Arc<Topic>,
    identity: Arc<Identity>,
}

impl KafkaPublisher {
    /// Creates the producer (a bad property is a usage error), then, unless `connect=retry`,
    /// checks that the brokers answer and that each destination's topic exists (creating it
    /// if asked to), saying in `budget` what it waits for. The producers' connections are
    /// followed in `link`. A publisher per destination, in their order.
    pub async fn connect(
        config: &ExportConfig,
        settings: Settings,
        budget: Budget,
        link: Arc<Link>,
        destinations: Vec<Destination>,
    ) -> Result<Vec<Self>, ExportError> {
        let Endpoint::Kafka { brokers, .. } = &config.endpoint else { unreachable!("a Kafka endpoint") };
        check_room_for_librdkafka()?;
        let context = Context::new(link.clone());
        let producer: Producer = settings.client.create_with_context(context.clone()).map_err(|e| match e {
            e @ KafkaError::ClientConfig(..) => ExportError::Option(format!("Kafka: {e}")),
            e => ExportError::Client(format!("creating the Kafka producer: {e}")),
        })?;
        let topic = |d: &Destination| {
            Arc::new(Topic {
                name: d.name.clone(),
                brokers: brokers.join(","),
                create: config.create == Some(true),
                partitions: settings.partitions,
                replication_factor: settings.replication_factor,
                client: settings.client.clone(),
                healing: AtomicBool::new(false),
            })
        };
        let topics: Vec<Arc<Topic>> = destinations.iter().map(topic).collect();
        if config.connect == ConnectPolicy::Fail {
            for topic in &topics {
                topic.check_at_start(&producer, &context.errors, &budget).await?;
            }
            link.set_connected(true);
        }
        let current = Mutex::new((producer, 1));
        let producers = Arc::new(Producers { current, stalled: AtomicU64::new(0), client: settings.client, link });
        let publisher = |(topic, d): (Arc<Topic>, Destination)| KafkaPublisher {
            producers: producers.clone(),
            topic,
            identity: Arc::new(d.identity),
        };
        Ok(topics.into_iter().zip(destinations).map(publisher).collect())
    }
}

/// Address space librdkafka needs beyond what the process uses before it starts: its threads'
/// stacks (one per broker and a few of its own, `ulimit -s` each: 8 MiB by default), an admin
/// client's to create a topic, its queues.
const LIBRDKAFKA_ROOM: u64 = 64 << 20;

/// librdkafka ends the process (an assertion, an abort) when an allocation or a thread's
/// creation fails: under an address-space limit (`ulimit -v`) that leaves it too little room,
/// the start is refused instead, with one line.
fn check_room_for_librdkafka() -> Result<(), ExportError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let used = pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let left = limit.rlim_cur.saturating_sub(used);
    if left >= LIBRDKAFKA_ROOM {
        return Ok(());
    }
    Err(ExportError::Client(format!(
        "out of memory: the address-space limit (ulimit -v) leaves {} MiB, and the Kafka client (librdkafka, which \
         aborts when an allocation fails) needs about {} MiB: raise the limit",
        left >> 20,
        LIBRDKAFKA_ROOM >> 20
    )))
}

/// The topic events go to: checked (and created when asked to) at start, and created again
/// whenever it disappears (a broker that came back without its storage) with `create=true`.
struct Topic {
    name: String,
    /// The URL's brokers, for messages.
    brokers: String,
    create: bool,
    partitions: i32,
    replication_factor: i32,
    client: ClientConfig,
    /// A check or a creation is under way (one at a time).
    healing: AtomicBool,
}

impl Topic {
    /// At start: the brokers answer and the topic exists, or is created with `create=true`.
    async fn check_at_start(
        &self,
        producer: &Producer,
        errors: &LastError,
        budget: &Budget,
    ) -> Result<(), ExportError> {
        // librdkafka's own timeout ends just before the start's, so that its error, with the
        // reason it reported (TLS, SASL), is the one told.
        let timeout = budget.time_left().saturating_sub(Duration::from_millis(100));
        let found = tokio::select! {
            found = self.exists(producer, timeout) => found,
            never = start::watch(self.brokers.split(',').next().unwrap_or_default(), "the Kafka broker", None, &budget.progress) => match never {},
        };
        let found = found.map_err(|e| {
            ExportError::Unreachable(format!(
                "cannot reach the Kafka brokers at {} within {:?} (connect_timeout): {}: {e}{}. Start them, check \
                 the address and the TLS/SASL options, raise connect_timeout for a slower network, or add \
                 --output-option connect=retry to wait for them",
                self.brokers,
                budget.timeout(),
                budget.progress.describe(),
                errors.describe()
            ))
        })?;
        match (found, self.create) {
            (true, _) => Ok(()),
            (false, false) => Err(ExportError::Setup(format!(
                "Kafka topic {:?} does not exist: create it, or add --output-option create=true",
                self.name
            ))),
            (false, true) => {
                budget
                    .progress
                    .waiting_for(format!("the Kafka brokers at {} did not create topic {:?}", self.brokers, self.name));
                self.create(budget.time_left()).await
            }
        }
    }

    /// Asks the brokers (through `producer`) whether the topic exists, without creating it.
    async fn exists(&self, producer: &Producer, timeout: Duration) -> Result<bool, KafkaError> {
        let (producer, name) = (producer.clone(), self.name.clone());
        let asked = start::blocking("the Kafka metadata request", move || {
            let metadata = producer.client().fetch_metadata(Some(&name), timeout)?;
            Ok(metadata.topics().iter().any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty()))
        });
        asked.await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// A publication failed: with `create=true`, looks in the background (once a second at
    /// most) whether the topic is still there, and creates it again if it is not.
    fn check_soon(self: &Arc<Self>, producer: &Producer) {
        // Relaxed: a flag on its own; the task that clears it is the one it guards.
        if !self.create || self.healing.swap(true, Ordering::Relaxed) {
            return;
        }
        let (topic, producer) = (self.clone(), producer.clone());
        tokio::spawn(async move {
            if let Ok(false) = topic.exists(&producer, HEAL_TIMEOUT).await {
                let _ = topic.create(HEAL_TIMEOUT).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            topic.healing.store(false, Ordering::Relaxed);
        });
    }

    async fn create(&self, timeout: Duration) -> Result<(), ExportError> {
        let topic = &self.name;
        let admin: AdminClient<DefaultClientContext> =
            self.client.create().map_err(|e| ExportError::Client(format!("creating a Kafka admin client: {e}")))?;
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(self.replication_factor));
        let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
        let failed =
            |e: &dyn std::fmt::Display| ExportError::Setup(format!("creating Kafka topic {topic:?} failed: {e}"));
        for result in admin.create_topics([&new], &options).await.map_err(|e| failed(&e))? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(failed(&code)),
            }
        }
        Ok(())
    }
}

/// Errors the broker will repeat however often the event is sent again.
fn classify(error: KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed,
        ) => Failure::Reject(format!("Kafka refused an event: {error}")),
        _ => Failure::Retry(format!("Kafka did not acknowledge an event: {error}")),
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header { key, value: Some(value.as_bytes()) }
}

impl Publisher for KafkaPublisher {
    fn publish(&self, message: &Message) -> Delivery {
        let id = &self.identity;
        let seq = message.seq.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(header("host", &id.host))
            .insert(header("boot_id", &id.boot_id))
            .insert(header("run", &id.run))
            .insert(header("seq", &seq));
        let record = FutureRecord::to(&self.topic.name)
            .key(id.host.as_bytes())
            .payload(message.payload.as_ref())
            .headers(headers);
        let (producer, generation) = self.producers.producer();
        let producers = self.producers.clone();
        let topic = self.topic.clone();
        match producer.send_result(record) {
            Ok(delivery) => Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => {
                        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
                            producers.stalled.fetch_max(generation, Ordering::Relaxed);
                        }
                        topic.check_soon(&producer);
                        Err(classify(error))
                    }
                    Err(_) => Err(Failure::Retry("the Kafka producer went away".into())),
                }
            }),
            Err((error, _)) => {
                self.topic.check_soon(&producer);
                Box::pin(std::future::ready(Err(classify(error))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_say_the_connection() {
        let link = Arc::new(Link::default());
        let context = Context::new(link.clone());
        let statistics = |brokers: &[(&str, &str, i64)]| {
            let brokers = brokers.iter().map(|&(source, state, disconnects)| {
                let broker = rdkafka::statistics::Broker {
                    source: source.into(),
                    state: state.into(),
                    disconnects: Some(disconnects),
                    ..Default::default()
                };
                (format!("{source}/{state}/{disconnects}"), broker)
            });
            Statistics { brokers: brokers.collect(), ..Default::default() }
        };
        context.stats(statistics(&[("configured", "UP", 0), ("internal", "UP", 9)]));
        assert_eq!((link.now().connected, link.now().reconnects), (true, 0), "the internal broker is not the engine");
        context.stats(statistics(&[("configured", "CONNECT", 1), ("learned", "DOWN", 1)]));
        assert_eq!((link.now().connected, link.now().reconnects), (false, 2), "a connection lost per broker");
        context.stats(statistics(&[("configured", "UP", 1), ("learned", "UP", 2)]));
        assert_eq!((link.now().connected, link.now().reconnects), (true, 3), "only what was lost since");
        Context::new(link.clone()).stats(statistics(&[("configured", "UP", 0)]));
        assert_eq!(link.now().reconnects, 3, "a new producer counts from its own start");
    }

    #[test]
    fn settings_keep_topic_options_and_pass_the_rest_to_librdkafka() {
        let options = [("partitions", "3"), ("linger.ms", "20"), ("compression.type", "lz4")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let s = Settings::parse(&["b:9092".into()], &options).unwrap();
        assert_eq!((s.partitions, s.replication_factor), (3, 1));
        assert_eq!(s.client.get("linger.ms"), Some("20"));
        assert_eq!(s.client.get("acks"), Some("all"));
        assert_eq!(s.client.get("enable.idempotence"), Some("true"));
        assert!(Settings::parse(&[], &[("partitions".into(), "0".into())]).unwrap_err().is_usage());
        for (key, value) in [
            ("acks", "0"),
            ("acks", "1"),
            ("request.required.acks", "1"),
            ("enable.idempotence", "false"),
            ("bootstrap.servers", "b2:9092"),
            ("metadata.broker.list", "b2:9092"),
            ("transactional.id", "t"),
            ("statistics.interval.ms", "0"),
            ("ssl.ca.location", "/etc/hostname"),
        ] {
            let refused = Settings::parse(&[], &[(key.into(), value.into())]).unwrap_err();
            assert!(refused.is_usage(), "{key}={value}: {refused}");
        }
        for (key, value) in [("acks", "all"), ("acks", "-1"), ("enable.idempotence", "true")] {
            assert!(Settings::parse(&[], &[(key.into(), value.into())]).is_ok(), "{key}={value}");
        }
        let tls = [("security.protocol", "ssl"), ("ssl.ca.location", "/etc/hostname")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert!(Settings::parse(&[], &tls).is_ok());
        let rejected = classify(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(matches!(rejected, Failure::Reject(_)));
        let retried = classify(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert!(matches!(retried, Failure::Retry(_)));
    }
}
