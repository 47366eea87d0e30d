//! Loading a `bpfstream.h` object with aya and opening its stream (feature `aya`).
//!
//! A BPF object built on `bpfstream.h` has three things userspace must set up consistently: the
//! wakeup policy's read-only globals (before the object is loaded), the events map (a ring or a
//! perf event array, whichever variant was loaded) and the per-CPU drop counters next to it.
//! [`load`] sets the globals; [`open`] opens the map by name as an [`EventSource`] with its
//! counters, and tells it which wakeups to expect. Pass both the same [`WakeupPolicy`]. Each
//! stream of an object with several (`BPFSTREAM_STREAM` in `bpfstream.h`) is opened by its
//! map name, with its own counters.
//!
//! ```no_run
//! # fn demo(object: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use bpfstream::{PerfOptions, WakeupPolicy};
//!
//! let policy = WakeupPolicy::EveryRecords(64);
//! let mut loader = aya::EbpfLoader::new();
//! loader.map_max_entries("events", 1 << 20); // ring size (ring variant only)
//! let mut ebpf = bpfstream::aya::load(loader, object, policy)?;
//! // Open the stream before attaching: a perf buffer must be in its map before the first record.
//! let mut source = bpfstream::aya::open(&ebpf, "events", policy, PerfOptions::default())?;
//! let program: &mut aya::programs::TracePoint = ebpf.program_mut("handle_exec").unwrap().try_into()?;
//! program.load()?;
//! program.attach("sched", "sched_process_exec")?;
//! source.poll(Some(std::time::Duration::from_millis(100)), |item| println!("{item:?}"))?;
//! # Ok(()) }
//! ```
//!
//! Minimum kernel: as [`EventSource::open`].

use std::os::fd::{AsFd, BorrowedFd};

use ::aya::maps::Map;
use ::aya::{Ebpf, EbpfError, EbpfLoader};

use crate::accounting::{STATS_MAP, WAKEUP_ARG_GLOBAL, WAKEUP_POLICY_GLOBAL};
use crate::{DropCounters, Error, EventSource, PerfOptions, WakeupPolicy};

/// Loads `object` with `loader` (its other settings kept), the wakeup policy's globals set to
/// `policy`. Objects that do not read the policy (the perf variant) load all the same.
pub fn load(loader: EbpfLoader<'_>, object: &[u8], policy: WakeupPolicy) -> Result<Ebpf, EbpfError> {
    let (kind, arg) = policy.numbers();
    let mut loader = loader;
    loader.override_global(WAKEUP_POLICY_GLOBAL, &kind, false).override_global(WAKEUP_ARG_GLOBAL, &arg, false);
    loader.load(object)
}

/// Opens the events map `map` of a loaded object (a ring buffer or a perf event array; `perf`
/// applies to the latter) as an [`EventSource`] with its drop counters, expecting the wakeups
/// of `policy` (the one given to [`load`]). The counters are `{map}_stats` for a stream
/// declared with `BPFSTREAM_STREAM(map)`, else the default stream's `bpfstream_stats`.
pub fn open(ebpf: &Ebpf, map: &str, policy: WakeupPolicy, perf: PerfOptions) -> Result<EventSource, Error> {
    let mut source = EventSource::open(map_fd(ebpf, map)?, perf)?;
    source.expect_wakeups(policy);
    let own = format!("{map}_stats");
    let counters = if ebpf.map(&own).is_some() { own.as_str() } else { STATS_MAP };
    Ok(source.with_counters(DropCounters::new(map_fd(ebpf, counters)?)?))
}

/// The descriptor of the map `name` (of a type a stream or its counters can be).
fn map_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Result<BorrowedFd<'a>, Error> {
    match ebpf.map(name) {
        Some(Map::RingBuf(m) | Map::PerfEventArray(m) | Map::PerCpuArray(m)) => Ok(m.fd().as_fd()),
        Some(_) => Err(Error::WrongMapType {
            expected: "a ring buffer, perf event array or per-CPU array".into(),
            actual: format!("another type of map named {name:?}"),
        }),
        None => Err(Error::Unsupported(format!(
            "the BPF object has no map named {name:?}: is it built on bpfstream.h, and does BPFSTREAM_EVENTS name its events map otherwise?"
        ))),
    }
}
