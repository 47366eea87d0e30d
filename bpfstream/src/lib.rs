//! Stream events from eBPF programs to userspace through ring buffers
//! (`BPF_MAP_TYPE_RINGBUF`) and perf buffers (`BPF_MAP_TYPE_PERF_EVENT_ARRAY`), with nothing
//! lost unaccounted.
//!
//! The consumers here are written from the kernel's memory protocols, not wrapped from
//! libbpf: an [`EventSource`] maps a ring or perf buffer's memory and lends its records as
//! `&[u8]` without copying, publishing the consumer position once per batch, and counts with
//! the BPF-side drop counters of `bpfstream.h` ([`INCLUDE_DIR`]) so that for every stream
//! `delivered + dropped == produced`. [`Poller`] serves many sources from one epoll set.
//!
//! Handlers are plain closures that may borrow local state (no `'static` bound); they return
//! `()` to go on, [`std::ops::ControlFlow`] to stop early, or a `Result` whose error stops the
//! consumer and comes back as [`Error::Handler`] (see [`Flow`]).
//!
//! # The parts
//!
//! | | blocking | async (feature `tokio`) |
//! |---|---|---|
//! | one ring or perf buffer | [`EventSource`] ([`Item`]s: records and `Lost`) | [`stream::EventStream`] |
//! | many sources, priorities | [`Poller`] | [`stream::EventStream::add`] |
//! | stop from another thread | [`StopHandle`] | [`StopHandle`] |
//!
//! - Loss is an item, never silence: perf `PERF_RECORD_LOST` and ring-buffer drops (counted by
//!   the BPF side, [`DropCounters`]) both arrive as [`Item::Lost`] / [`Event::Lost`], and
//!   [`Totals`] keep `delivered + dropped == produced`.
//! - Typed events: [`record!`] declares `#[repr(C)]` mirrors (a C `char comm[16]` is a
//!   [`FixedStr<16>`](FixedStr)), [`FromRecord`] decodes them with a length-checked,
//!   alignment-safe copy, [`events`] and [`decoding`] adapt blocking handlers and
//!   [`stream::EventStream::typed`] streams, and a record type checks its size and offsets
//!   against the struct clang compiled ([`btf::Mirror::check_btf`]).
//! - Order: a ring buffer's records come in commit order; a perf buffer's come CPU by CPU, out
//!   of timestamp order across CPUs, and several sources merged take turns.
//!   [`stream::EventStream::ordered`] (async) and [`merge::OrderedMerge`] (anywhere) put them
//!   in order.
//! - `bpfstream::aya` (feature `aya`): load an object with its wakeup policy and open a stream by map
//!   name, with its drop counters, in two calls.
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
//! - `finish(deadline, ...)`: the exact end, after the caller has detached the programs
//!   ([`EventSource::finish`], [`Poller::finish`] for all of a poller's sources): waits the RCU
//!   grace periods, drains until `delivered + dropped == produced` for a snapshot of the drop
//!   counters, waiting out records still being written, until two snapshots agree, and returns
//!   the [`Totals`]; by the caller's deadline.
//! - A [`StopHandle`] drain (a [`Poller`]'s `run`, a stream) hands over what is buffered and
//!   reads the counters once more, without the grace periods: after `finish`, or where an
//!   approximate end is enough.
//!
//! There is one count type per question: [`Stats`], the live view of a running consumer
//! (readable from other threads through a [`StatsHandle`]), and [`Totals`], what happened, from
//! [`EventSource::totals`], `finish`, or [`stream::EventStream::totals`].
//!
//! # The BPF side
//!
//! `bpfstream.h`, shipped in this crate's package (its directory is [`INCLUDE_DIR`]), is the
//! send path of a BPF program: `bpfstream_reserve`/`bpfstream_submit`/`bpfstream_discard` for
//! fixed-size records, `bpfstream_scratch`/`bpfstream_output` for variable-length ones, the
//! per-CPU counters [`DropCounters`] reads, and the wakeup policy ([`WakeupPolicy`]).
//!
//! **Two transports, one source.** The header defines the events map as a ring buffer, or,
//! with `-DBPFSTREAM_PERF`, as a perf event array (for kernels before 5.8, or where a ring
//! buffer is not wanted); the send calls are the same in both. So a tool compiles its program
//! twice and loads, at start-up, the object of the transport it picks
//! ([`Transport::probe`] says whether the kernel has ring buffers):
//!
//! ```text
//! clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$INCLUDE_DIR -c tool.bpf.c -o tool.ring.bpf.o
//! clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$INCLUDE_DIR -DBPFSTREAM_PERF \
//!       -c tool.bpf.c -o tool.perf.bpf.o
//! ```
//!
//! `-g` keeps BTF in the object (aya needs it for globals and CO-RE, and
//! [`btf::Mirror::check_btf`] reads record layouts from it). The header includes
//! `<bpf/bpf_helpers.h>` from libbpf (Debian: `libbpf-dev`), and the program brings its own
//! `vmlinux.h` (`bpftool btf dump file /sys/kernel/btf/vmlinux format c`): included before
//! `bpfstream.h`, or found on the include path. Uprobes and other preemptible programs define
//! `BPFSTREAM_PREEMPTIBLE` first (a guard on the per-CPU scratch record).
//!
//! **Maps.** The events map is named `events` ([`EventSource::MAP`]) unless
//! `BPFSTREAM_EVENTS` names it otherwise; its counters are `bpfstream_stats`. An object can
//! hold several streams: `BPFSTREAM_STREAM(name)` declares another events map `name` with its
//! own counters `name_stats`, sent to with `bpfstream_reserve_to(name, type)`,
//! `bpfstream_submit_to(name, ctx, e)`, `bpfstream_scratch_to(name)` and
//! `bpfstream_output_to(name, ctx, data, len)`; each stream keeps
//! `delivered + dropped == produced` by itself. The wakeup policy is one per object.
//!
//! # A tool, end to end
//!
//! A crate with its BPF program in `src/tool.bpf.c` and a `vmlinux.h` beside `Cargo.toml`;
//! `bpfstream` is a dependency (features `aya`, and `tokio` for async streams) and a
//! build-dependency; `aya`, `tokio` (features `rt`, `macros`) and `futures-util` (for
//! `StreamExt`) are dependencies. The `build.rs` compiles both variants against
//! [`INCLUDE_DIR`]:
//!
//! ```no_run
//! // build.rs
//! let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
//! for (variant, defines) in [("ring", &[][..]), ("perf", &["-DBPFSTREAM_PERF"][..])] {
//!     let status = std::process::Command::new("clang")
//!         .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86"])
//!         .arg(format!("-I{}", bpfstream::INCLUDE_DIR))
//!         .arg(format!("-I{}", std::env::var("CARGO_MANIFEST_DIR").unwrap())) // vmlinux.h
//!         .args(defines)
//!         .args(["-c", "src/tool.bpf.c", "-o"])
//!         .arg(out.join(format!("tool.{variant}.bpf.o")))
//!         .status()
//!         .expect("clang (apt-get install clang libbpf-dev)");
//!     assert!(status.success(), "clang failed on src/tool.bpf.c ({variant})");
//! }
//! println!("cargo::rerun-if-changed=src/tool.bpf.c");
//! ```
//!
//! The program (`src/tool.bpf.c`) sends one record per exec:
//!
//! ```text
//! #include "vmlinux.h"
//! #include "bpfstream.h"
//!
//! struct exec_event { __u64 ts_ns; __u32 pid; char comm[16]; };
//! BPFSTREAM_EXPORT_STRUCT(exec_event);  /* keeps the struct in BTF, for the layout check */
//!
//! SEC("tracepoint/sched/sched_process_exec")
//! int handle_exec(void *ctx)
//! {
//!     struct exec_event *e = bpfstream_reserve(struct exec_event);
//!     if (!e)
//!         return 0;  /* dropped, and counted */
//!     e->ts_ns = bpf_ktime_get_ns();
//!     e->pid = bpf_get_current_pid_tgid() >> 32;
//!     bpf_get_current_comm(e->comm, sizeof(e->comm));
//!     bpfstream_submit(ctx, e);
//!     return 0;
//! }
//! char LICENSE[] SEC("license") = "Dual BSD/GPL";
//! ```
//!
//! (Attaching a tracepoint needs tracefs: `mount -t tracefs nodev /sys/kernel/tracing` where
//! it is not mounted.) And `main.rs` mirrors the record, loads the object of the transport the
//! kernel has, opens
//! the stream before attaching (a perf buffer must be in its map before the first record),
//! streams events in timestamp order until `shutdown` (Ctrl-C, say), then detaches and drains,
//! so that the totals add up to the last event:
//!
//! ```no_run
//! # #[cfg(all(feature = "aya", feature = "tokio"))]
//! # async fn demo(shutdown: impl std::future::Future<Output = ()>) -> Result<(), Box<dyn std::error::Error>> {
//! use bpfstream::btf::Mirror;
//! use bpfstream::stream::EventStream;
//! use bpfstream::{Event, FixedStr, PerfOptions, Transport, WakeupPolicy};
//! use futures_util::StreamExt;
//!
//! bpfstream::record! {
//!     pub struct ExecEvent { pub ts_ns: u64, pub pid: u32, pub comm: FixedStr<16> }
//! }
//! # macro_rules! include_bytes_aligned { ($p:expr) => { &[0u8] } }
//! static RING: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.ring.bpf.o"));
//! static PERF: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tool.perf.bpf.o"));
//! // (include_bytes_aligned is aya's macro: aya needs the object 8-byte aligned.)
//!
//! let object = match Transport::probe() {
//!     Transport::Ring => RING,
//!     Transport::Perf => PERF,
//! };
//! ExecEvent::check_btf(object, "exec_event")?; // the mirror matches what clang laid out
//! let policy = WakeupPolicy::Adaptive;
//! let mut loader = aya::EbpfLoader::new();
//! loader.map_max_entries("events", 1 << 20); // ring bytes (ignored by the perf variant)
//! let mut ebpf = bpfstream::aya::load(loader, object, policy)?;
//! let source = bpfstream::aya::open(&ebpf, "events", policy, PerfOptions::default())?;
//! let program: &mut aya::programs::TracePoint = ebpf.program_mut("handle_exec").unwrap().try_into()?;
//! program.load()?;
//! program.attach("sched", "sched_process_exec")?;
//!
//! let stream = EventStream::typed::<ExecEvent>(source)?;
//! let stop = stream.stop_handle();
//! let mut events = stream.ordered(std::time::Duration::from_millis(10), |e: &ExecEvent| e.ts_ns);
//! let mut shutdown = std::pin::pin!(shutdown);
//! let mut ebpf = Some(ebpf);
//! loop {
//!     let event = tokio::select! {
//!         () = &mut shutdown, if ebpf.is_some() => {
//!             ebpf = None; // detaches the programs
//!             stop.drain(); // the stream ends once all that is buffered is out
//!             continue;
//!         }
//!         event = events.next() => event,
//!     };
//!     let Some(event) = event else { break };
//!     match event? {
//!         Event::Record(e) => println!("{} {} {}", e.ts_ns, e.pid, e.comm),
//!         Event::Lost(lost) => eprintln!("{} events lost", lost.count),
//!         Event::Malformed(error) => eprintln!("{error}"),
//!     }
//! }
//! let totals = events.totals(); // its sources' totals, final once the drain is done
//! eprintln!("{} delivered + {} dropped of {:?}", totals.delivered, totals.dropped, totals.produced);
//! # Ok(()) }
//! ```
//!
//! Without the `aya` feature the same takes the map descriptors by hand: [`EventSource::open`]
//! on the events map, [`EventSource::with_counters`] with a [`DropCounters`] on
//! `bpfstream_stats`, the globals [`WakeupPolicy::globals`] names set on the loader, and
//! [`EventSource::expect_wakeups`] with the same policy. `bpfstream/tests/outside_tool` in the
//! repository is such a tool, built by a test from this crate's package alone.
//!
//! # Kernel versions
//!
//! Ring buffers need Linux 5.8 (`BPF_MAP_TYPE_RINGBUF`, epoll on its fd, `BPF_RB_NO_WAKEUP` /
//! `BPF_RB_FORCE_WAKEUP`, `bpf_ringbuf_query`); perf buffers Linux 4.4 (`bpf_perf_event_output`
//! into `PERF_COUNT_SW_BPF_OUTPUT` events). Opening a map by fd reads its type with
//! `BPF_OBJ_GET_INFO_BY_FD` (4.13); drop counters are a per-CPU array (4.6). Items that need a
//! kernel say so; [`FromRecord`], [`btf`], [`Stats`] and `sim` need none.
//!
//! # Threads
//!
//! [`EventSource`] and [`DropCounters`] are `Send` and `Sync`; streams are `Send` when what they
//! yield is; [`StatsHandle`] and [`StopHandle`] are `Send + Sync` so that other threads can watch
//! and stop a consumer; [`Poller`] is neither. The argument:
//!
//! - `Send`: a consumer owns its descriptors and mappings and has no thread affinity (perf
//!   events are opened per CPU for all processes, not per thread), so it works the same after a
//!   move to another thread.
//! - `Sync`: every `&self` method only reads (atomic loads of the kernel's positions, plain
//!   fields); everything that consumes takes `&mut self`. The record protocols need a single
//!   consumer (only it writes `consumer_pos` / `data_tail`, and a lent record stays valid until
//!   it moves them), and `&mut` is exactly that for one consumer. A second consumer of the same
//!   ring map would move the consumer position under a lent record, so within a process
//!   [`EventSource::open`] refuses one ([`Error::AlreadyConsumed`]) until the first is dropped,
//!   whatever fd it is given. A consumer in another process is beyond what the library can see:
//!   one consumer per ring map is the kernel protocol's rule, do not break it across processes.
//!   (A second source on a perf map only takes the map's slots over: each has its own events
//!   and rings, and dropping the first leaves the slots to the second.)
//! - Whatever the kernel's memory holds (a corrupt header, a producer position more than a
//!   ring ahead), a record is lent only from inside the mapping: anything else is an
//!   [`Error::Corrupt`].
//! - [`Poller`] holds `&mut EventSource`s and handler closures without a `Send` bound, precisely
//!   so that handlers can borrow anything (an `Rc`, a `RefCell`, a `&mut` to a local): it lives
//!   on the thread that runs it; stop it from others with a [`StopHandle`].
//!
//! ```compile_fail
//! fn send<T: Send>() {}
//! send::<bpfstream::Poller<'static>>(); // handlers may borrow non-Send state
//! ```

#![warn(missing_docs)]

// The private modules are `pub(crate)`, not private, because the parse bench
// (`benches/parse.rs`) includes this file as a module of its own crate, and its items reach
// each other through `crate::` paths that the bench's root imports.
pub(crate) mod accounting;
#[cfg(feature = "aya")]
pub mod aya;
pub mod btf;
pub(crate) mod error;
pub(crate) mod fixed_str;
pub(crate) mod options;
pub(crate) mod ordered;
pub(crate) mod ownership;
pub(crate) mod perfbuf;
pub(crate) mod poller;
pub(crate) mod records;
pub(crate) mod ringbuf;
pub(crate) mod scan;
#[cfg(test)]
pub(crate) mod sim;
pub(crate) mod source;
pub(crate) mod stop;
pub mod stream;
#[cfg(feature = "tokio")]
pub(crate) mod stream_tokio;
pub(crate) mod sys;
pub(crate) mod totals;
pub(crate) mod typed;

pub(crate) use accounting::DropCounters;
pub use accounting::WakeupPolicy;
pub use error::Error;
pub use fixed_str::FixedStr;
pub use options::Options;
pub(crate) use perfbuf::PerfBuffer;
pub use perfbuf::PerfWakeup;
pub use poller::{Poller, SourceId};
pub use records::Records;
pub(crate) use ringbuf::RingBuffer;
pub use source::{EventSource, Transport};
pub use stop::StopHandle;
pub use totals::{Fill, Totals, TotalsHandle};
pub use typed::{FromRecord, OwnedRecord, Plain};

use std::ops::ControlFlow;

/// The directory of `bpfstream.h`, the BPF-side half of this crate (see "The BPF side" in the
/// crate docs): pass it to clang as `-I` from a `build.rs`.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");

// The thread-safety promises of the crate docs ("Threads"), checked at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<RingBuffer>();
    send_sync::<PerfBuffer>();
    send_sync::<EventSource>();
    send_sync::<DropCounters>();
    send_sync::<TotalsHandle>();
    send_sync::<StopHandle>();
    send::<stream::EventStream<u64>>();
};

/// One sample from a buffer, lent from the kernel's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The payload, borrowed from the kernel's memory (or, for a perf sample that wrapped the
    /// end of its ring, from the consumer's scratch buffer). Perf payloads may carry up to 7
    /// bytes of trailing padding.
    pub data: &'a [u8],
    /// The CPU whose buffer held it (perf buffers); `None` for a ring buffer.
    pub cpu: Option<u32>,
}

/// Who counted a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropOrigin {
    /// A `PERF_RECORD_LOST` the kernel wrote into a perf buffer.
    PerfLostRecord,
    /// The per-CPU drop counter of `bpfstream.h` (a failed ring reservation or output).
    DropCounter,
}

/// Records the producers could not write to the buffer (it was full): what
/// [`Totals::dropped`] adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// How many.
    pub count: u64,
    /// The CPU they were dropped on, when known.
    pub cpu: Option<u32>,
    /// Who counted them.
    pub origin: DropOrigin,
}

/// What a consumer hands over: a record, or a report of records dropped before they reached
/// the buffer. Handlers of an [`EventSource`] or a [`Poller`] get `Event<Record<'_>>` (lent
/// from the kernel's memory); streams yield `Event<T>`, `T` what their decoder made of the
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<R> {
    /// A record.
    Record(R),
    /// Records dropped before reaching the buffer.
    Dropped(Dropped),
}

mod sealed {
    use std::ops::ControlFlow;

    /// A handler's return value as the consume loops take it: go on, stop after this record,
    /// or fail with `E`.
    pub trait Verdict<E> {
        fn verdict(self) -> Result<ControlFlow<()>, E>;
    }

    impl Verdict<crate::Error> for () {
        #[inline(always)]
        fn verdict(self) -> Result<ControlFlow<()>, crate::Error> {
            Ok(ControlFlow::Continue(()))
        }
    }

    impl Verdict<crate::Error> for ControlFlow<()> {
        #[inline(always)]
        fn verdict(self) -> Result<ControlFlow<()>, crate::Error> {
            Ok(self)
        }
    }

    impl<E> Verdict<E> for Result<(), E> {
        #[inline(always)]
        fn verdict(self) -> Result<ControlFlow<()>, E> {
            self.map(|()| ControlFlow::Continue(()))
        }
    }

    impl<E> Verdict<E> for Result<ControlFlow<()>, E> {
        #[inline(always)]
        fn verdict(self) -> Result<ControlFlow<()>, E> {
            self
        }
    }
}

/// What a handler returns, in std terms: `()` to go on, [`ControlFlow<()>`] to stop the
/// consumer after this record, `Result<(), E>` (or `Result<ControlFlow<()>, E>`) to fail it.
///
/// The consuming call returns `Result<_, F::Error>`: [`Error`] for `()` and `ControlFlow`, the
/// handler's own `E` for a `Result`, so a handler's error comes back as itself (library errors
/// become an `E` through `From<bpfstream::Error>`, which `anyhow::Error`, `Box<dyn Error>` and a
/// `thiserror` enum with a `#[from] bpfstream::Error` variant all have). The records handed
/// over before the stop, the last one included, are consumed; the rest stay in the buffer.
///
/// Nothing to implement: the four types above are the handlers' return types (the trait is
/// sealed).
pub trait Flow: sealed::Verdict<<Self as Flow>::Error> {
    /// The error the consuming call returns.
    type Error: From<Error>;
}

impl Flow for () {
    type Error = Error;
}

impl Flow for ControlFlow<()> {
    type Error = Error;
}

impl<E: From<Error>> Flow for Result<(), E> {
    type Error = E;
}

impl<E: From<Error>> Flow for Result<ControlFlow<()>, E> {
    type Error = E;
}

/// Keeps the error of a failed handler while a consumer stops, to return it afterwards.
pub(crate) struct Failure<E>(Option<E>);

impl<E> Default for Failure<E> {
    fn default() -> Self {
        Failure(None)
    }
}

impl<E> Failure<E> {
    /// The handler's verdict as the consume loops take it; keeps its error (the first one).
    #[inline(always)]
    pub fn check<F: Flow<Error = E>>(&mut self, flow: F) -> ControlFlow<()> {
        match sealed::Verdict::verdict(flow) {
            Ok(flow) => flow,
            Err(error) => {
                self.keep(error);
                ControlFlow::Break(())
            }
        }
    }

    /// Keeps `error` unless one is kept already.
    #[cold]
    pub fn keep(&mut self, error: E) {
        self.0.get_or_insert(error);
    }

    /// `result`, unless a handler failed: then its error.
    pub fn result<T>(self, result: Result<T, Error>) -> Result<T, E>
    where
        E: From<Error>,
    {
        match self.0 {
            Some(error) => Err(error),
            None => result.map_err(E::from),
        }
    }
}
