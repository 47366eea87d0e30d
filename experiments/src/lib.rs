//! bpfstream's experiments, subcommands of the `bpfstream` binary beside its tracers:
//!
//! - `bench`: bpfstream's ring and perf consumers against libbpf's and aya's, on the workload of
//!   the kernel's ring buffer benchmark, in each mode (parallel, sampled, drain);
//! - `lab`: the buffer policies as experiments (sizing, compare, batching, backpressure,
//!   multi-ring), each with a table that accounts for every event, a figure, and a report;
//! - `plot`: the figures both draw (SVG).
//!
//! They load their BPF objects as the tracers do, through `bpfstream-core`.

#[macro_use]
extern crate bpfstream_core;

pub mod bench;
pub mod lab;
mod plot;

// Shared with the tracers; reached from here as `crate::objects`, `crate::size`, ...
use bpfstream_core::{counters, host, objects, output, size};
