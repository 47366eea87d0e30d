//! Ship events to Kafka or NATS JetStream with bpfstream's accounting across the wire: an event
//! counts as **exported** only once the engine acknowledged it (Kafka `acks=all` with an
//! idempotent producer; a JetStream publish acknowledgement), and every event offered ends in
//! exactly one of `exported` or `export_failed` once [`Exporter::finish`] returns.
//!
//! ```text
//!  tracer thread                      exporter thread (tokio, one core at most)
//!  send(json) ──try_send──▶ [ bounded queue ] ──▶ publish ──▶ in flight ──ack──▶ exported
//!      │ full: queue_full                              ▲            │ error / timeout
//!      ▼                                               └── retry ◀──┘ (backoff, same seq)
//!  export_failed = queue_full + rejected + unflushed (still queued or unacknowledged at the
//!                  final flush deadline)
//! ```
//!
//! Every message carries the key `host` (Kafka partition affinity) and the headers `host`,
//! `boot_id`, `run` and `seq` (1, 2, ... per run; a retry reuses its number), so that consumers
//! drop duplicates and see gaps; JetStream also gets `Nats-Msg-Id` = `host/boot_id/run/seq` for
//! its own deduplication.

mod accounting;
mod config;
mod endpoint;
mod exporter;
mod kafka;
mod link;
mod nats;
mod pipeline;
mod start;

pub use accounting::ExportStats;
pub use config::{ConnectPolicy, ExportConfig, Identity};
pub use endpoint::Endpoint;
pub use exporter::{ErrorReporter, Exporter};
pub use link::Connection;

/// What can go wrong before events flow.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The `--output` URL does not parse.
    #[error("bad output URL {0}")]
    Url(String),
    /// An option is unknown or its value invalid.
    #[error("bad output option: {0}")]
    Option(String),
    /// The engine does not answer at start.
    #[error("{0}")]
    Unreachable(String),
    /// The engine answers but cannot take the events (no stream, no topic, refused).
    #[error("{0}")]
    Setup(String),
    /// The client library failed in a way not covered above.
    #[error("{0}")]
    Client(String),
    /// The caller gave up on the start ([`Exporter::start_until`]).
    #[error("the start was cancelled")]
    Cancelled,
}

impl ExportError {
    /// Whether the user asked for something impossible (a command-line error: exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, ExportError::Url(_) | ExportError::Option(_))
    }
}
