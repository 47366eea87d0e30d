//! The exporter's connection to its engine, as the engine's client reports it: whether it is
//! connected now and how often it connected again after losing the engine. Written by the
//! client's callbacks (NATS: its connection events; Kafka: librdkafka's statistics), read by
//! the tracer's thread at any time ([`Exporter::connection`](crate::Exporter::connection)).
//!
//! ```text
//!  client's thread ──connected / lost──▶ Link { connected, reconnects } ◀── Exporter::connection
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The exporter's connection at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connection {
    /// The client is connected to its engine now (Kafka: to at least one broker).
    pub connected: bool,
    /// Times the client connected again after it lost its engine, or was replaced by a new
    /// one (NATS: its reconnections; Kafka: connections to a broker lost, each of which
    /// librdkafka then reconnects, and replaced producers).
    pub reconnects: u64,
}

/// Shared between the client's callbacks and the exporter. Relaxed everywhere: two gauges,
/// each read on its own, with no data behind them.
#[derive(Debug, Default)]
pub(crate) struct Link {
    connected: AtomicBool,
    reconnects: AtomicU64,
}

impl Link {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn count_reconnects(&self, n: u64) {
        self.reconnects.fetch_add(n, Ordering::Relaxed);
    }

    pub fn now(&self) -> Connection {
        Connection {
            connected: self.connected.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}
