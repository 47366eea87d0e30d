//! The exporter as the tracer sees it: `send` never blocks (a full queue counts the event as
//! `queue_full`), `stats` at any time, `finish` with a deadline. Several exporters may share
//! one connection to their engine ([`Exporter::start_shared`]), each to its own destination
//! with its own queue, sequence, pipeline and accounting:
//!
//! ```text
//!  tracer's thread(s)                    exporter's thread: one client, one pipeline per destination
//!  Exporter (topic a) ─send─▶ [ queue ] ──▶ Pipeline ─publish(a)─┐
//!  Exporter (topic b) ─send─▶ [ queue ] ──▶ Pipeline ─publish(b)─┴─▶ client ──▶ engine
//!      each: its counters ◀── acks of its own publications     one Link: connected, reconnects
//! ```

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::accounting::{Counters, QueueBytes};
use crate::link::{Connection, Link};
use crate::pipeline::{Message, Pipeline, Publisher, Wiring};
use crate::start::{self, Starting};
use crate::{kafka, nats, Endpoint, ExportConfig, ExportError, ExportStats, Identity};

/// Ships events to one destination of an engine, through a connection of its own or one it
/// shares ([`start_shared`](Self::start_shared)), from the connection's thread.
#[derive(Debug)]
pub struct Exporter {
    queue: Option<mpsc::Sender<Message>>,
    queue_bytes: Arc<QueueBytes>,
    counters: Arc<Counters>,
    deadline: watch::Sender<Option<Instant>>,
    /// Disconnected once this exporter's pipeline ended (it holds the other end).
    ended: Receiver<()>,
    next_seq: u64,
    flush_timeout: Option<Duration>,
    endpoint: Endpoint,
    link: Arc<Link>,
    /// The connection's thread, joined when its last exporter is dropped.
    _thread: Arc<ClientThread>,
}

/// Called with the text of a publishing error (at most once per retry backoff).
pub type ErrorReporter = Box<dyn FnMut(&str) + Send>;

/// The thread of a connection: it ends once every pipeline on it ended.
#[derive(Debug)]
struct ClientThread(Option<JoinHandle<()>>);

impl Drop for ClientThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            // A panic on the exporter's thread leaves its in-flight events in `in_flight`,
            // where the callers' accounting shows them.
            let _ = thread.join();
        }
    }
}

/// An engine's client settings, checked before anything starts (a bad option is a usage
/// error, whatever the engine's state).
enum Engine {
    Nats(nats::Settings),
    Kafka(kafka::Settings),
}

/// Where a pipeline publishes: its topic or subject, and the identity its messages carry.
pub(crate) struct Destination {
    pub name: String,
    pub identity: Identity,
}

impl Engine {
    fn configure(config: &ExportConfig) -> Result<Self, ExportError> {
        Ok(match &config.endpoint {
            Endpoint::Nats { .. } => Engine::Nats(nats::Settings::parse(&config.engine)?),
            Endpoint::Kafka { brokers, .. } => Engine::Kafka(kafka::Settings::parse(brokers, &config.engine)?),
        })
    }

    /// The exporter's thread: connects within the start's deadline, then runs a pipeline per
    /// destination until all of them ended.
    fn serve(self, config: &ExportConfig, starting: Starting, routes: Vec<(Destination, Wiring)>, link: Arc<Link>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return starting.fail(ExportError::Client(format!("starting the exporter's runtime: {e}"))),
        };
        let budget = starting.budget();
        let (destinations, wirings): (Vec<_>, Vec<_>) = routes.into_iter().unzip();
        match self {
            Engine::Nats(settings) => {
                let connect = nats::NatsPublisher::connect(config, settings, budget, link, destinations);
                serve(&runtime, starting, connect, wirings)
            }
            Engine::Kafka(settings) => {
                let connect = kafka::KafkaPublisher::connect(config, settings, budget, link, destinations);
                serve(&runtime, starting, connect, wirings)
            }
        }
    }
}

/// Connects, and once the caller took the exporters, runs their pipelines together, polled from
/// one future (as tokio tasks of their own, a burst's NATS publications left out of order).
fn serve<P: Publisher>(
    runtime: &tokio::runtime::Runtime,
    starting: Starting,
    connect: impl std::future::Future<Output = Result<Vec<P>, ExportError>>,
    wirings: Vec<Wiring>,
) {
    let Some(publishers) = runtime.block_on(starting.run(connect)) else { return };
    let pipelines = publishers.into_iter().zip(wirings).map(|(p, w)| Pipeline::new(p, w).run());
    runtime.block_on(futures_util::future::join_all(pipelines));
}

impl Exporter {
    /// Connects to the engine and checks that it takes the events (stream or topic), then
    /// starts the exporter's thread. With [`ConnectPolicy::Retry`](crate::ConnectPolicy), an
    /// engine that does not answer yet is waited for in the background. The whole start has
    /// the `connect_timeout` option's deadline; an error then names the step that did not
    /// answer ([`ExportError::Unreachable`]).
    pub fn start(config: ExportConfig, on_error: ErrorReporter) -> Result<Self, ExportError> {
        Self::start_until(config, on_error, &|| false)
    }

    /// [`start`](Self::start) that gives up, with [`ExportError::Cancelled`], as soon as
    /// `cancelled` returns true (it is asked every 10 ms while the start waits for the engine;
    /// e.g. whether a stop signal arrived). The exporter's thread, and every thread its client
    /// starts, blocks SIGINT, SIGTERM, SIGHUP and SIGUSR1, so that they reach the caller's.
    pub fn start_until(
        config: ExportConfig,
        on_error: ErrorReporter,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, ExportError> {
        let destination = config.endpoint.destination().to_owned();
        let mut exporters = Self::start_shared(config, vec![(destination, on_error)], cancelled)?;
        Ok(exporters.remove(0))
    }

    /// [`start_until`](Self::start_until) with one connection (one Kafka producer, one NATS
    /// client) for several destinations of the endpoint's engine: an exporter for each topic
    /// or subject of `routes` (with its error reporter), in their order, each with its own
    /// queue (the `queue`, `queue_bytes` and `in_flight` options bound each), its own `seq`
    /// and `run` (`RUN`, `RUN.1`, ...) and its own accounting; the connection is theirs
    /// ([`connection`](Self::connection)). Every destination is checked (and created when
    /// asked to) within the start's deadline.
    pub fn start_shared(
        config: ExportConfig,
        routes: Vec<(String, ErrorReporter)>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Self>, ExportError> {
        let engine = Engine::configure(&config)?;
        let endpoints =
            routes.iter().map(|(d, _)| config.endpoint.with_destination(d)).collect::<Result<Vec<_>, _>>()?;
        let (ends, wired): (Vec<_>, Vec<_>) = routes
            .into_iter()
            .enumerate()
            .map(|(index, (name, on_error))| {
                let (end, wiring) = End::new(&config, on_error);
                (end, (Destination { name, identity: config.identity.of_destination(index) }, wiring))
            })
            .unzip();
        let (handshake, starting) = start::handshake(config.connect_timeout);
        let flush_timeout = config.flush_timeout;
        let link = Arc::new(Link::default());
        let client_link = link.clone();
        let thread =
            start::spawn_unsignalled("bpfstream-export", move || engine.serve(&config, starting, wired, client_link))
                .map_err(|e| ExportError::Client(format!("cannot start the bpfstream-export thread: {e}")))?;
        // On an error the thread is left to end by itself (it stops connecting at once).
        handshake.wait(cancelled)?;
        let thread = Arc::new(ClientThread(Some(thread)));
        let exporter = |(end, endpoint): (End, Endpoint)| Exporter {
            queue: Some(end.queue),
            queue_bytes: end.queue_bytes,
            counters: end.counters,
            deadline: end.deadline,
            ended: end.ended,
            next_seq: 1,
            flush_timeout,
            endpoint,
            link: link.clone(),
            _thread: thread.clone(),
        };
        Ok(ends.into_iter().zip(endpoints).map(exporter).collect())
    }

    /// Queues one event (its bytes are copied) and numbers it; `false` if the queue was full,
    /// in events (`queue`) or in bytes (`queue_bytes`): counted as `queue_full`. Never blocks.
    pub fn send(&mut self, payload: &[u8]) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        Counters::add(&self.counters.offered, 1);
        let queued = self.queue_bytes.take(payload.len()) && {
            let message = Message { seq, payload: Bytes::copy_from_slice(payload) };
            let sent = self.queue.as_ref().is_some_and(|q| q.try_send(message).is_ok());
            if !sent {
                self.queue_bytes.give_back(payload.len());
            }
            sent
        };
        if !queued {
            Counters::add(&self.counters.queue_full, 1);
        }
        queued
    }

    /// The accounting so far.
    pub fn stats(&self) -> ExportStats {
        self.counters.snapshot()
    }

    /// Whether the client is connected to its engine now, and how often it reconnected.
    pub fn connection(&self) -> Connection {
        self.link.now()
    }

    /// Where the events go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops taking events, waits until every queued event is acknowledged or failed, or
    /// until the `flush_timeout` option's deadline (5 s if not given; what is left then
    /// counts as `unflushed`). Afterwards `offered = exported + export_failed`, exactly.
    pub fn finish(self) -> ExportStats {
        let deadline = std::time::Instant::now() + Self::FLUSH_TIMEOUT;
        self.finish_by(deadline)
    }

    /// [`finish`](Self::finish) with the caller's deadline (a tracer's stop budget), unless
    /// the `flush_timeout` option was given: then that one.
    pub fn finish_by(mut self, deadline: std::time::Instant) -> ExportStats {
        let deadline = match self.flush_timeout {
            Some(timeout) => Instant::now() + timeout,
            None => Instant::from_std(deadline),
        };
        self.close(deadline);
        self.counters.snapshot()
    }

    /// The final flush's deadline of [`finish`](Self::finish) and of a drop, without the
    /// `flush_timeout` option.
    const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

    /// Closes the queue and waits until this exporter's pipeline ended (the other exporters
    /// of the connection go on).
    fn close(&mut self, deadline: Instant) {
        // The pipeline reads the deadline before it sees the queue closed.
        self.deadline.send_replace(Some(deadline));
        self.queue = None;
        // Returns once the pipeline dropped its end: it ended, or panicked.
        let _ = self.ended.recv();
    }
}

/// The exporter's end of its pipeline, made before the engine answers.
struct End {
    queue: mpsc::Sender<Message>,
    queue_bytes: Arc<QueueBytes>,
    counters: Arc<Counters>,
    deadline: watch::Sender<Option<Instant>>,
    ended: Receiver<()>,
}

impl End {
    /// An exporter's end and its pipeline's, with the bounds of `config`.
    fn new(config: &ExportConfig, on_error: ErrorReporter) -> (Self, Wiring) {
        let (queue, receiver) = mpsc::channel(config.queue);
        let (deadline, deadline_receiver) = watch::channel(None);
        let (ending, ended) = std::sync::mpsc::channel();
        let counters = Arc::new(Counters::default());
        let queue_bytes = Arc::new(QueueBytes::new(config.queue_bytes));
        let wiring = Wiring {
            queue: receiver,
            queue_bytes: queue_bytes.clone(),
            counters: counters.clone(),
            deadline: deadline_receiver,
            max_in_flight: config.in_flight,
            on_error,
            _ending: ending,
        };
        (End { queue, queue_bytes, counters, deadline, ended }, wiring)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.close(Instant::now() + self.flush_timeout.unwrap_or(Self::FLUSH_TIMEOUT));
    }
}
