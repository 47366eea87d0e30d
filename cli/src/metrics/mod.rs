//! The agent's metrics for Prometheus, and its health:
//!
//! - `registry`: what the streams publish (each its counters and its exporter's state, as one
//!   snapshot, lock-free); read by the server;
//! - `exposition`: the registry as Prometheus' text format (`/metrics`);
//! - `process`: the `process_*` metrics from `/proc/self`;
//! - `server`: the HTTP server (`/metrics`, `/healthz`) on a thread of its own.
//!
//! The lifecycle holds one [`StreamMetrics`] per stream (from [`Registry::add_stream`]) and
//! publishes after each batch. This module uses nothing else of the binary (`tests/metrics.rs`
//! builds it alone).

mod exposition;
mod process;
mod registry;
mod server;

pub use registry::{ExportLink, Registry, StreamCounters, StreamMetrics};
pub use server::{bind, MetricsServer};
