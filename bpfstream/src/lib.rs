//! Stream events from eBPF programs to userspace through ring buffers
//! (`BPF_MAP_TYPE_RINGBUF`) and perf buffers (`BPF_MAP_TYPE_PERF_EVENT_ARRAY`), with nothing
//! lost unaccounted.
//!
//! The consumers here are written from the kernel's memory protocols, not wrapped from
//! libbpf: [`RingBuffer`] and [`PerfBuffer`] map the kernel's memory and lend records as
//! `&[u8]` without copying, publishing the consumer position once per batch. [`Poller`] serves
//! many of them from one epoll set. [`EventSource`] is one stream type for either transport plus
//! the BPF-side drop counters of `bpfstream.h` ([`INCLUDE_DIR`]), so that for every stream
//! `delivered + dropped == produced`.
//!
//! Handlers are plain closures that may borrow local state (no `'static` bound); they return
//! `()` to go on, [`std::ops::ControlFlow`] to stop early, or a `Result` whose error stops the
//! consumer and comes back as [`Error::Handler`] (see [`Flow`]).
//!
//! # The parts
//!
//! | | blocking | async (feature `tokio`) |
//! |---|---|---|
//! | one ring buffer | [`RingBuffer`] (`&[u8]` records) | [`stream::EventStream`] |
//! | one perf buffer | [`PerfBuffer`] ([`Item`]s: records and `Lost`) | [`stream::EventStream`] |
//! | either, with drop counters | [`EventSource`] | [`stream::EventStream`] |
//! | many sources, priorities | [`Poller`] | [`stream::MergedStream`] |
//!
//! - Loss is an item, never silence: perf `PERF_RECORD_LOST` and ring-buffer drops (counted by
//!   the BPF side, [`DropCounters`]) both arrive as [`Item::Lost`] / [`Event::Lost`], and
//!   [`Totals`] keep `delivered + dropped == produced`.
//! - Typed events: [`record!`] declares `#[repr(C)]` mirrors, [`FromRecord`] decodes them with a
//!   length-checked, alignment-safe copy, [`typed`] adapts handlers and streams, and [`btf`]
//!   checks a mirror's size and offsets against the struct clang compiled.
//! - [`Stats`]: events, bytes, losses, wakeups and fill, readable from any thread while the
//!   consumer runs.
//! - `sim` (feature `sim`): the kernel's buffer layouts in ordinary memory, for tests without
//!   root.
//!
//! Runnable examples (as root) are in `bpfstream/examples/`: a blocking ring consumer, a perf
//! consumer that loses events, a multi-source poller, an async stream, variable-length records.
//!
//! # Consuming, and what it adds up to
//!
//! Every consumer has the same verbs:
//!
//! - `consume`: hand over what is buffered now, without blocking;
//! - `poll`: wait (with a timeout) for the producers' wakeup, then consume;
//! - [`EventSource::finish`]: at the end, after the producers are detached: drain, read the
//!   drop counters one last time, and return the [`Totals`] (`delivered + dropped == produced`);
//!   [`EventSource::finish_by`] does the same until a deadline, for records still being written.
//!
//! [`Poller`] and the async streams drive any [`Source`] through its two methods,
//! [`consume_until`](Source::consume_until) (a bounded batch that a handler can stop) and
//! [`drain_items`](Source::drain_items) (the shutdown drain). There is one count type per
//! question: [`Stats`], the live view of a running consumer (readable from other threads through
//! a [`StatsHandle`]), and [`Totals`], what happened, from [`EventSource::totals`] or `finish`.
//!
//! # The BPF side
//!
//! `bpfstream.h`, shipped in this crate's package (its directory is [`INCLUDE_DIR`]), is the
//! send path of a BPF program: `bpfstream_reserve`/`bpfstream_submit`/`bpfstream_discard` for
//! fixed-size records, `bpfstream_scratch`/`bpfstream_output` for variable-length ones, the
//! per-CPU counters [`DropCounters`] reads, and the wakeup policy ([`WakeupPolicy`]). One
//! source is compiled twice, once per transport, and userspace loads the object it wants:
//!
//! ```text
//! clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$INCLUDE_DIR -c tool.bpf.c -o tool.ring.bpf.o
//! clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$INCLUDE_DIR -DBPFSTREAM_PERF \
//!       -c tool.bpf.c -o tool.perf.bpf.o
//! ```
//!
//! The program brings its own `vmlinux.h` (`bpftool btf dump file /sys/kernel/btf/vmlinux
//! format c`): included before `bpfstream.h`, or found on the include path. The events map is
//! named `events` ([`EVENTS_MAP`]) unless `BPFSTREAM_EVENTS` names it otherwise;
//! uprobes and other preemptible programs define `BPFSTREAM_PREEMPTIBLE` (a guard on the per-CPU
//! scratch record). From a `build.rs`, add this crate as a build-dependency and pass
//! `-I{bpfstream::INCLUDE_DIR}`.
//!
//! # Kernel versions
//!
//! Ring buffers need Linux 5.8 (`BPF_MAP_TYPE_RINGBUF`, epoll on its fd, `BPF_RB_NO_WAKEUP` /
//! `BPF_RB_FORCE_WAKEUP`, `bpf_ringbuf_query`); perf buffers Linux 4.4 (`bpf_perf_event_output`
//! into `PERF_COUNT_SW_BPF_OUTPUT` events). Opening a map by fd reads its type with
//! `BPF_OBJ_GET_INFO_BY_FD` (4.13); drop counters are a per-CPU array (4.6). Items that need a
//! kernel say so; [`typed`], [`btf`], [`Stats`], `sim` and [`names`] need none.
//!
//! # Threads
//!
//! [`RingBuffer`], [`PerfBuffer`], [`EventSource`] and [`DropCounters`] are `Send` and `Sync`;
//! streams are `Send` when their source and decoder are; [`StatsHandle`], [`Waker`] and
//! [`stream::CancelHandle`] are `Send + Sync` so that other threads can watch and stop a
//! consumer; [`Poller`] is neither. The argument:
//!
//! - `Send`: a consumer owns its descriptors and mappings and has no thread affinity (perf
//!   events are opened per CPU for all processes, not per thread), so it works the same after a
//!   move to another thread.
//! - `Sync`: every `&self` method only reads (atomic loads of the kernel's positions, plain
//!   fields); everything that consumes takes `&mut self`. The record protocols need a single
//!   consumer (only it writes `consumer_pos` / `data_tail`, and a lent record stays valid until
//!   it moves them), and `&mut` is exactly that for one consumer. A second consumer of the same
//!   ring map would move the consumer position under a lent record, so within a process
//!   [`RingBuffer::new`] refuses one ([`Error::AlreadyConsumed`]) until the first is dropped,
//!   whatever fd it is given. A consumer in another process is beyond what the library can see:
//!   one consumer per ring map is the kernel protocol's rule, do not break it across processes.
//!   (A second [`PerfBuffer`] on a map only takes the map's slots over: each has its own events
//!   and rings, and dropping the first leaves the slots to the second.)
//! - Whatever the kernel's memory holds (a corrupt header, a producer position more than a
//!   ring ahead), a record is lent only from inside the mapping: anything else is an
//!   [`Error::Corrupt`].
//! - [`Poller`] holds `&mut dyn Source` and handler closures without a `Send` bound, precisely so
//!   that handlers can borrow anything (an `Rc`, a `RefCell`, a `&mut` to a local): it lives on
//!   the thread that runs it; wake it from others with a [`Waker`].
//!
//! ```compile_fail
//! fn send<T: Send>() {}
//! send::<bpfstream::Poller<'static>>(); // handlers may borrow non-Send state
//! ```

#![warn(missing_docs)]

mod accounting;
mod batch;
pub mod btf;
pub mod degrade;
mod error;
pub mod merge;
pub mod names;
mod ownership;
mod perfbuf;
mod poller;
mod ringbuf;
mod scan;
#[cfg(feature = "sim")]
pub mod sim;
mod source;
mod stats;
#[cfg(feature = "tokio")]
pub mod stream;
mod sys;
pub mod typed;

pub use accounting::{DropCounters, WakeupPolicy, EVENTS_MAP};
pub use error::Error;
pub use perfbuf::{PerfBuffer, PerfOptions, PerfWakeup};
pub use poller::{Poller, Source, SourceId, SourceOptions, Waker};
pub use ringbuf::RingBuffer;
pub use source::{EventSource, Totals, Transport};
pub use stats::{Fill, Stats, StatsHandle};
pub use sys::{online_cpus, page_size};
pub use typed::{Event, FromRecord, TypedError};

use std::ops::ControlFlow;

/// The directory of `bpfstream.h`, the BPF-side half of this crate (see "The BPF side" in the
/// crate docs): pass it to clang as `-I` from a `build.rs`.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");

// The thread-safety promises of the crate docs ("Threads"), checked at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<RingBuffer>();
    send_sync::<PerfBuffer>();
    send_sync::<EventSource>();
    send_sync::<DropCounters>();
    send_sync::<StatsHandle>();
    send_sync::<Waker>();
    #[cfg(feature = "sim")]
    {
        send_sync::<sim::SimRing>();
        send_sync::<sim::SimPerf>();
    }
    #[cfg(feature = "tokio")]
    {
        send_sync::<stream::CancelHandle>();
        const fn send<T: Send>() {}
        send::<stream::EventStream<EventSource, typed::Typed<u64>>>();
        send::<stream::MergedStream<'static, typed::OwnedRecord>>();
    }
};

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

/// The error of a handler that failed, carried by [`Error::Handler`].
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns: `()` to keep going, a [`ControlFlow`] that can stop the consumer
/// after the current record, or a `Result` whose error stops it and is returned as
/// [`Error::Handler`] (as libbpf's `ring_buffer__poll` returns its callback's error). The
/// records handled so far, the failing one included, are consumed; the rest stay.
pub trait Flow {
    /// Whether the consumer should stop after this record.
    fn is_stop(&self) -> bool;

    /// The handler's error, if it failed. The default: handlers of this type cannot fail.
    fn into_error(self) -> Option<HandlerError>
    where
        Self: Sized,
    {
        None
    }
}

impl<E: Into<HandlerError>> Flow for Result<(), E> {
    fn is_stop(&self) -> bool {
        self.is_err()
    }
    fn into_error(self) -> Option<HandlerError> {
        self.err().map(Into::into)
    }
}

impl<B, E: Into<HandlerError>> Flow for Result<ControlFlow<B>, E> {
    fn is_stop(&self) -> bool {
        self.as_ref().map_or(true, ControlFlow::is_break)
    }
    fn into_error(self) -> Option<HandlerError> {
        self.err().map(Into::into)
    }
}

/// Keeps the error of a failed handler while a consumer stops, to return it afterwards.
#[derive(Default)]
pub(crate) struct Failure(Option<HandlerError>);

impl Failure {
    /// The handler's verdict as the consume loops take it; keeps its error.
    pub fn check<F: Flow>(&mut self, flow: F) -> ControlFlow<()> {
        if !flow.is_stop() {
            return ControlFlow::Continue(());
        }
        if let Some(error) = flow.into_error() {
            self.0.get_or_insert(error);
        }
        ControlFlow::Break(())
    }

    /// `result`, unless a handler failed: then its error.
    pub fn result<T>(self, result: Result<T, Error>) -> Result<T, Error> {
        match self.0 {
            Some(error) => Err(Error::Handler(error)),
            None => result,
        }
    }
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
