//! Stream events from eBPF programs to userspace through ring buffers
//! (`BPF_MAP_TYPE_RINGBUF`) and perf buffers (`BPF_MAP_TYPE_PERF_EVENT_ARRAY`), with nothing
//! lost unaccounted.
//!
//! The consumers here are written from the kernel's memory protocols, not wrapped from
//! libbpf: [`RingBuffer`] and [`PerfBuffer`] map the kernel's memory and lend records as
//! `&[u8]` without copying, publishing the consumer position once per batch. [`Poller`] serves
//! many of them from one epoll set. [`EventSource`] is one stream type for either transport plus
//! the BPF-side drop counters of `bpf/include/bpfstream.h`, so that for every stream
//! `delivered + dropped == produced`.
//!
//! Handlers are plain closures that may borrow local state (no `'static` bound); they return
//! `()` to go on or [`std::ops::ControlFlow`] to stop early (see [`Flow`]).

pub mod accounting;
mod error;
pub mod names;
pub mod perfbuf;
pub mod poller;
pub mod ringbuf;
mod scan;
pub mod sim;
pub mod source;
mod sys;
pub mod typed;

pub use accounting::{Counters, DropCounters, WakeupPolicy};
pub use error::Error;
pub use perfbuf::{PerfBuffer, PerfOptions, PerfWakeup};
pub use poller::{Poller, Waker};
pub use ringbuf::{RingBuffer, RingStats};
pub use source::{EventSource, Totals, Transport};
pub use sys::{online_cpus, page_size, possible_cpus};
pub use typed::{FromRecord, TypedError};

use std::ops::ControlFlow;

/// One sample from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The payload, borrowed from the kernel's memory (or, for a perf sample that wrapped the
    /// end of its ring, from the consumer's scratch buffer). Perf payloads may carry up to 7
    /// bytes of trailing padding.
    pub data: &'a [u8],
    /// The CPU whose buffer held it (perf buffers); `None` for a ring buffer.
    pub cpu: Option<u32>,
}

/// Where a loss report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossOrigin {
    /// A `PERF_RECORD_LOST` the kernel wrote into a perf buffer.
    PerfLostRecord,
    /// The per-CPU drop counter of `bpfstream.h` (a failed ring reservation or output).
    DropCounter,
}

/// Events that could not be written to a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// How many.
    pub count: u64,
    /// The CPU they were lost on, when known.
    pub cpu: Option<u32>,
    /// Who counted them.
    pub origin: LossOrigin,
}

/// What a consumer hands to its handler: a record, or a report of lost records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A sample.
    Record(Record<'a>),
    /// Samples that were lost before reaching the buffer.
    Lost(Lost),
}

/// What a handler returns: `()` to keep going, or a [`ControlFlow`] that can stop the
/// consumer after the current record (the records handled so far are consumed, the rest stay).
pub trait Flow {
    /// Whether the consumer should stop after this record.
    fn is_stop(&self) -> bool;
}

impl Flow for () {
    fn is_stop(&self) -> bool {
        false
    }
}

impl<B> Flow for ControlFlow<B> {
    fn is_stop(&self) -> bool {
        self.is_break()
    }
}
