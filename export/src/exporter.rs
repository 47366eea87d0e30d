//! The exporter as the tracer sees it: `send` never blocks (a full queue counts the event as
//! `queue_full`), `stats` at any time, `finish` with a deadline.

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
use crate::{kafka, nats, Endpoint, ExportConfig, ExportError, ExportStats};

/// Ships events to one engine from a thread of its own.
#[derive(Debug)]
pub struct Exporter {
    queue: Option<mpsc::Sender<Message>>,
    queue_bytes: Arc<QueueBytes>,
    counters: Arc<Counters>,
    deadline: watch::Sender<Option<Instant>>,
    thread: Option<JoinHandle<()>>,
    next_seq: u64,
    flush_timeout: Option<Duration>,
    endpoint: Endpoint,
    link: Arc<Link>,
}

/// Called with the text of a publishing error (at most once per retry backoff).
pub type ErrorReporter = Box<dyn FnMut(&str) + Send>;

/// An engine's client settings, checked before anything starts (a bad option is a usage
/// error, whatever the engine's state).
enum Engine {
    Nats(nats::Settings),
    Kafka(kafka::Settings),
}

impl Engine {
    fn configure(config: &ExportConfig) -> Result<Self, ExportError> {
        Ok(match &config.endpoint {
            Endpoint::Nats { .. } => Engine::Nats(nats::Settings::parse(&config.engine)?),
            Endpoint::Kafka { brokers, .. } => Engine::Kafka(kafka::Settings::parse(brokers, &config.engine)?),
        })
    }

    /// The exporter's thread: connects within the start's deadline, then runs the pipeline.
    fn serve(self, config: &ExportConfig, starting: Starting, wiring: Wiring, link: Arc<Link>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return starting.fail(ExportError::Client(format!("starting the exporter's runtime: {e}"))),
        };
        let budget = starting.budget();
        match self {
            Engine::Nats(settings) => {
                serve(&runtime, starting, nats::NatsPublisher::connect(config, settings, budget, link), wiring)
            }
            Engine::Kafka(settings) => {
                serve(&runtime, starting, kafka::KafkaPublisher::connect(config, settings, budget, link), wiring)
            }
        }
    }
}

/// Connects, and once the caller took the exporter, runs its pipeline.
fn serve<P: Publisher>(
    runtime: &tokio::runtime::Runtime,
    starting: Starting,
    connect: impl std::future::Future<Output = Result<P, ExportError>>,
    wiring: Wiring,
) {
    if let Some(publisher) = runtime.block_on(starting.run(connect)) {
        runtime.block_on(Pipeline::new(publisher, wiring).run());
    }
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
        let engine = Engine::configure(&config)?;
        let (queue, receiver) = mpsc::channel(config.queue);
        let (deadline, deadline_receiver) = watch::channel(None);
        let counters = Arc::new(Counters::default());
        let queue_bytes = Arc::new(QueueBytes::new(config.queue_bytes));
        let wiring = Wiring {
            queue: receiver,
            queue_bytes: queue_bytes.clone(),
            counters: counters.clone(),
            deadline: deadline_receiver,
            max_in_flight: config.in_flight,
            on_error,
        };
        let (handshake, starting) = start::handshake(config.connect_timeout);
        let endpoint = config.endpoint.clone();
        let flush_timeout = config.flush_timeout;
        let link = Arc::new(Link::default());
        let client_link = link.clone();
        let thread =
            start::spawn_unsignalled("bpfstream-export", move || engine.serve(&config, starting, wiring, client_link))
                .map_err(|e| ExportError::Client(format!("cannot start the bpfstream-export thread: {e}")))?;
        // On an error the thread is left to end by itself (it stops connecting at once).
        handshake.wait(cancelled)?;
        Ok(Exporter {
            queue: Some(queue),
            queue_bytes,
            counters,
            deadline,
            thread: Some(thread),
            next_seq: 1,
            flush_timeout,
            endpoint,
            link,
        })
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

    fn close(&mut self, deadline: Instant) {
        // The thread reads the deadline before it sees the queue closed.
        self.deadline.send_replace(Some(deadline));
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            // A panic on the exporter's thread leaves its in-flight events in `in_flight`,
            // where the caller's accounting shows them.
            let _ = thread.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.close(Instant::now() + self.flush_timeout.unwrap_or(Self::FLUSH_TIMEOUT));
    }
}
