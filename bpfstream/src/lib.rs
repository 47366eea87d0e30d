//! Stream events from eBPF programs to userspace through ring buffers
//! (`BPF_MAP_TYPE_RINGBUF`) and perf buffers (`BPF_MAP_TYPE_PERF_EVENT_ARRAY`), with nothing
//! lost unaccounted.
//!
//! The consumers are written from the kernel's memory protocols, not wrapped from libbpf: an
//! [`EventSource`] maps a ring or perf buffer and lends its records as `&[u8]` without copying,
//! returns their space to the producers once per batch, and counts with the BPF-side drop
//! counters of `bpfstream.h` ([`INCLUDE_DIR`]), so that for every stream
//! `delivered + dropped == produced`, to the last record.
//!
//! # The parts
//!
//! | | blocking | async (feature `tokio`) |
//! |---|---|---|
//! | one ring or perf buffer | [`EventSource`]: a handler (`consume`, `poll`) or a pull (`read`) | [`stream::EventStream`] |
//! | owned, decoded, in timestamp order | [`stream::EventStream::next_blocking`] | [`stream::EventStream`] as a `Stream` |
//! | many sources, by priority | [`Poller`] | [`stream::EventStream::add`] |
//! | the exact end, after the detach | [`EventSource::finish`], [`Poller::finish`] | [`stream::EventStream::into_sources`], then `finish` |
//! | stop from another thread | [`StopHandle`] | [`StopHandle`] |
//!
//! - Every consumer hands over [`Event`]s: `Event::Record` and `Event::Dropped`, the records
//!   the producers could not write (perf `PERF_RECORD_LOST`, and the ring drops only the BPF
//!   side sees, which `bpfstream.h` counts): a drop is an item, never silence. [`Totals`] is
//!   what happened (`delivered`, `dropped`, `produced`, and more), [`Fill`] how full a buffer
//!   is now (libbpf's `ring__avail_data_size`, `ring__size`, `ring__consumer_pos`,
//!   `ring__producer_pos`); a [`TotalsHandle`] reads both from any thread.
//! - Typed records: [`record!`] declares `#[repr(C)]` mirrors of the C structs (a C
//!   `char comm[16]` is a [`FixedStr<16>`](FixedStr)), [`FromRecord`] decodes them with a
//!   length-checked, alignment-safe copy, and a record type checks its size and offsets against
//!   the struct clang compiled ([`btf::Mirror::check_btf`]).
//! - `bpfstream::aya` (feature `aya`): load an object and open its streams by map name, with
//!   their drop counters, in two calls, from one [`Options`].
//!
//! Runnable examples (as root) are in `examples/`: a blocking ring consumer (handler and pull),
//! a perf buffer that drops, a poller over two sources, an async stream, variable-length
//! records. `template/`, shipped in this crate's package, is a whole tool to start from:
//! `build.rs`, a BPF program on a tracepoint, `main.rs`.
//!
//! # Handlers, in std terms
//!
//! A handler is a closure that may borrow local state (no `'static`, no `Send`). It returns `()`
//! to go on, [`ControlFlow<()>`](std::ops::ControlFlow) to stop the consumer after this record,
//! or `Result<(), E>` (or `Result<ControlFlow<()>, E>`) to fail it: the call then returns `E`,
//! the handler's own error as itself (see [`Flow`]). The records handed over up to the stop are
//! consumed; the rest stay in the buffer.
//!
//! ```no_run
//! # fn demo(source: &mut bpfstream::EventSource) -> anyhow::Result<()> {
//! use std::io::Write;
//! use bpfstream::Event;
//!
//! let mut out = std::io::stdout().lock();
//! source.poll(None, |event| -> anyhow::Result<()> {
//!     if let Event::Record(record) = event {
//!         out.write_all(record.data)?; // a write error stops the poll and comes back as itself
//!     }
//!     Ok(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! # Consuming, and what it adds up to
//!
//! - `consume`: what is buffered now, without blocking; `poll`: wait for the producers' wakeup
//!   (with a timeout), then consume; [`EventSource::read`]: wait, then pull the batch as an
//!   iterator, which lends each record from the kernel's memory until the next call on the
//!   source (the producers get the space back once per batch). A signal that interrupts a wait
//!   (EINTR) ends it early, as a timeout does: `Ok` with what is there.
//! - `finish(deadline, ...)`: the exact end, once the caller has detached the programs
//!   (dropped the `aya::Ebpf`): waits the RCU grace periods, drains until
//!   `delivered + dropped == produced` for a snapshot of the drop counters, waiting out records
//!   still being written, until two snapshots agree, and returns the final [`Totals`], by the
//!   caller's deadline ([`EventSource::finish`]; [`Poller::finish`] for all of a poller's
//!   sources).
//! - A [`StopHandle`] ends a wait from another thread: a poller's `run` and a stream end (after
//!   a drain of what is buffered, or at once: [`StopHandle::cancel`]), a source's `poll` and
//!   `read` return and no longer wait. Then detach and `finish`.
//!
//! # The BPF side
//!
//! `bpfstream.h`, shipped in this crate's package (its directory is [`INCLUDE_DIR`]), is the
//! send path of a BPF program: `bpfstream_reserve`/`bpfstream_submit`/`bpfstream_discard` for
//! fixed-size records, `bpfstream_scratch`/`bpfstream_output` for variable-length ones, the
//! per-CPU drop counters, and the ring producers' wakeup policy ([`WakeupPolicy`]).
//!
//! **Two transports, one source.** The header defines the events map as a ring buffer, or,
//! with `-DBPFSTREAM_PERF`, as a perf event array (for kernels before 5.8, or where a ring
//! buffer is not wanted); the send calls are the same in both. So a tool compiles its program
//! twice and loads, at start-up, the object of the transport the kernel has
//! ([`Transport::probe`]):
//!
//! ```sh
//! clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$INCLUDE_DIR -c tool.bpf.c -o tool.ring.bpf.o
//! clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$INCLUDE_DIR -DBPFSTREAM_PERF \
//!       -c tool.bpf.c -o tool.perf.bpf.o
//! ```
//!
//! `-g` keeps BTF in the object (aya needs it for globals and CO-RE, [`btf::Mirror::check_btf`]
//! reads record layouts from it, and [`aya::load`] finds the ring maps in it). The header
//! includes `<bpf/bpf_helpers.h>` from libbpf (Debian: `libbpf-dev`), and the program brings
//! its own `vmlinux.h` (`bpftool btf dump file /sys/kernel/btf/vmlinux format c`): included
//! before `bpfstream.h`, or found on the include path. Uprobes and other preemptible programs
//! define `BPFSTREAM_PREEMPTIBLE` first (a guard on the per-CPU scratch record).
//!
//! **Maps.** The events map is named `events` unless `BPFSTREAM_EVENTS` names it otherwise; its
//! counters are `bpfstream_stats`. An object can hold several streams: `BPFSTREAM_STREAM(name)`
//! declares another events map `name` with its own counters `name_stats`, sent to with
//! `bpfstream_reserve_to(name, type)`, `bpfstream_submit_to(name, ctx, e)`,
//! `bpfstream_scratch_to(name)` and `bpfstream_output_to(name, ctx, data, len)`; each stream
//! keeps `delivered + dropped == produced` by itself.
//!
//! **Sizes and wakeups**, one [`Options`] for both transports: [`Options::buffer_bytes`] is a
//! ring's size (all CPUs share it) or a perf buffer's per CPU, 256 KiB by default;
//! [`Options::wakeup`] is the ring producers' wakeup policy, the kernel's own by default. With
//! aya, [`aya::load`] and [`aya::open`] apply them. With another loader, set the ring maps'
//! `max_entries`, and the read-only globals `bpfstream_wakeup_policy` (a u32, `enum
//! bpfstream_wakeup`) and `bpfstream_wakeup_arg` (a u64) that `bpfstream.h` declares, before
//! loading; then [`EventSource::open`] the events map, with its counters map, and the same
//! options.
//!
//! # A tool, end to end
//!
//! `template/` in this crate's package is one, built and run by the crate's tests: an exec
//! tracer on the `sched/sched_process_exec` tracepoint. Its `build.rs` compiles the program
//! twice against [`INCLUDE_DIR`]; its `main.rs` does what this does, blocking:
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use bpfstream::btf::Mirror;
//! use bpfstream::stream::EventStream;
//! use bpfstream::{Event, FixedStr, FromRecord, Options, Transport};
//!
//! bpfstream::record! {
//!     /// `struct exec_event` of the BPF program.
//!     pub struct ExecEvent { pub ts_ns: u64, pub pid: u32, pub ppid: u32, pub comm: FixedStr<16> }
//! }
//!
//! /// Traces execs with the object of the transport the kernel has (`ring` or `perf`, both
//! /// built by `build.rs`) until `stop` is asked, then ends exactly.
//! fn trace(ring: &[u8], perf: &[u8], stop: std::sync::mpsc::Receiver<()>) -> Result<(), Box<dyn std::error::Error>> {
//!     let object = match Transport::probe() {
//!         Transport::Ring => ring,
//!         Transport::Perf => perf,
//!     };
//!     ExecEvent::check_btf(object, "exec_event")?; // the mirror matches what clang laid out
//!     let options = Options { buffer_bytes: Some(1 << 20), ..Options::default() };
//!     let mut ebpf = bpfstream::aya::load(aya::EbpfLoader::new(), object, &options)?;
//!     // Open the stream before attaching: a perf buffer must be in its map before the first record.
//!     let source = bpfstream::aya::open(&ebpf, "events", &options)?;
//!     let program: &mut aya::programs::TracePoint = ebpf.program_mut("handle_exec").unwrap().try_into()?;
//!     program.load()?;
//!     program.attach("sched", "sched_process_exec")?;
//!
//!     // Owned, decoded, in timestamp order across a perf buffer's CPUs.
//!     let span = Duration::from_millis(10);
//!     let mut events = EventStream::new(source, |r| ExecEvent::from_record(r.data))?.ordered(span, |e: &ExecEvent| e.ts_ns);
//!     let stop_handle = events.stop_handle();
//!     std::thread::spawn(move || {
//!         let _ = stop.recv(); // Ctrl-C, say
//!         stop_handle.cancel(); // the pull below returns None
//!     });
//!     while let Some(event) = events.next_blocking(None)? {
//!         match event {
//!             Event::Record(e) => println!("{} {} {}", e.ts_ns, e.pid, e.comm),
//!             Event::Dropped(dropped) => eprintln!("{} execs dropped", dropped.count),
//!         }
//!     }
//!     drop(ebpf); // detaches the program
//!     let (mut sources, held) = events.into_sources(); // records held for ordering come back
//!     eprintln!("{} held", held.len());
//!     let totals = sources[0].finish(Instant::now() + Duration::from_secs(1), |_| ())?;
//!     eprintln!("{} delivered + {} dropped of {:?}", totals.delivered, totals.dropped, totals.produced);
//!     Ok(())
//! }
//! ```
//!
//! The same with tokio: the stream is a `futures_core::Stream` (feature `tokio`), polled in a
//! runtime with IO and time enabled; a current-thread runtime needs tokio's `rt` feature
//! (`#[tokio::main]` would also need `macros`, and `rt-multi-thread` for its default flavor):
//!
//! ```no_run
//! # #[cfg(all(feature = "aya", feature = "tokio"))]
//! # fn demo(ebpf: aya::Ebpf, source: bpfstream::EventSource) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use bpfstream::stream::EventStream;
//! use bpfstream::{Event, FromRecord};
//! use futures_util::StreamExt;
//!
//! bpfstream::record! {
//!     pub struct ExecEvent { pub ts_ns: u64, pub pid: u32 }
//! }
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async move {
//!     let span = Duration::from_millis(10);
//!     let mut events = EventStream::new(source, |r| ExecEvent::from_record(r.data))?.ordered(span, |e: &ExecEvent| e.ts_ns);
//!     let stop = events.stop_handle();
//!     let shutdown = tokio::time::sleep(Duration::from_secs(10)); // or a signal, a channel...
//!     let mut shutdown = std::pin::pin!(shutdown);
//!     let mut ebpf = Some(ebpf);
//!     loop {
//!         let event = tokio::select! {
//!             () = &mut shutdown, if ebpf.is_some() => {
//!                 ebpf = None; // detaches the programs
//!                 stop.drain(); // the stream ends once everything buffered is out
//!                 continue;
//!             }
//!             event = events.next() => event,
//!         };
//!         let Some(event) = event else { break };
//!         if let Event::Record(e) = event? {
//!             println!("{} {}", e.ts_ns, e.pid);
//!         }
//!     }
//!     let totals = events.totals();
//!     eprintln!("{} delivered + {} dropped of {:?}", totals.delivered, totals.dropped, totals.produced);
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # Kernel versions
//!
//! Ring buffers need Linux 5.8 (`BPF_MAP_TYPE_RINGBUF`, epoll on its fd, `BPF_RB_NO_WAKEUP` /
//! `BPF_RB_FORCE_WAKEUP`, `bpf_ringbuf_query`); perf buffers Linux 4.4 (`bpf_perf_event_output`
//! into `PERF_COUNT_SW_BPF_OUTPUT` events). Opening a map by fd reads its type with
//! `BPF_OBJ_GET_INFO_BY_FD` (4.13); drop counters are a per-CPU array (4.6). Items that need a
//! kernel say so; [`FromRecord`] and [`btf`] need none.
//!
//! # Threads
//!
//! [`EventSource`] is `Send` and `Sync`; streams are `Send` when what they yield is;
//! [`TotalsHandle`] and [`StopHandle`] are `Send + Sync` so that other threads can watch and
//! stop a consumer; [`Poller`] is neither. The argument:
//!
//! - `Send`: a consumer owns its descriptors and mappings and has no thread affinity (perf
//!   events are opened per CPU for all processes, not per thread), so it works the same after a
//!   move to another thread.
//! - `Sync`: every `&self` method only reads (atomic loads of the kernel's positions, plain
//!   fields); everything that consumes takes `&mut self`. The record protocols need a single
//!   consumer (only it writes `consumer_pos` / `data_tail`, and a lent record stays valid until
//!   it moves them), and `&mut` is exactly that for one consumer; a pulled batch's records
//!   borrow the source, so no call can move the positions while one is alive. A second
//!   consumer of the same ring map would move the consumer position under a lent record, so
//!   within a process [`EventSource::open`] refuses one ([`Error::AlreadyConsumed`]) until the
//!   first is dropped, whatever fd it is given. A consumer in another process is beyond what the
//!   library can see: one consumer per ring map is the kernel protocol's rule, do not break it
//!   across processes. (A second source on a perf map only takes the map's slots over: each has
//!   its own events and rings, and dropping the first leaves the slots to the second.)
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

// The packaged README's snippets compile as written.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeSnippets;

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
