//! Loading a `bpfstream.h` object with aya and opening its streams (feature `aya`).
//!
//! A BPF object built on `bpfstream.h` has three things userspace must set up consistently: the
//! wakeup policy's read-only globals and the ring buffers' size (before the object is loaded),
//! the events map (a ring or a perf event array, whichever variant was loaded) and the per-CPU
//! drop counters next to it. [`load`] does the first; [`open`] opens a map by name as an
//! [`EventSource`] with its counters. Give both the same [`Options`]: the one size knob,
//! [`Options::buffer_bytes`], sizes a ring at [`load`] and a perf buffer at [`open`]. Each
//! stream of an object with several (`BPFSTREAM_STREAM` in `bpfstream.h`) is opened by its map
//! name, with its own counters.
//!
//! ```no_run
//! # fn demo(object: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use bpfstream::{Options, WakeupPolicy};
//!
//! let options = Options { buffer_bytes: Some(1 << 20), wakeup: WakeupPolicy::EveryRecords(64), ..Options::default() };
//! let mut ebpf = bpfstream::aya::load(aya::EbpfLoader::new(), object, &options)?;
//! // Open the stream before attaching: a perf buffer must be in its map before the first record.
//! let mut source = bpfstream::aya::open(&ebpf, "events", &options)?;
//! let program: &mut aya::programs::TracePoint = ebpf.program_mut("handle_exec").unwrap().try_into()?;
//! program.load()?;
//! program.attach("sched", "sched_process_exec")?;
//! source.poll(Some(std::time::Duration::from_millis(100)), |event| println!("{event:?}"))?;
//! # Ok(()) }
//! ```
//!
//! Minimum kernel: as [`EventSource::open`].

use std::os::fd::{AsFd, BorrowedFd};

use ::aya::maps::Map;
use ::aya::{Ebpf, EbpfLoader};

use crate::accounting::{STATS_MAP, WAKEUP_ARG_GLOBAL, WAKEUP_POLICY_GLOBAL};
use crate::{btf, sys, Error, EventSource, Options};

/// Loads `object` with `loader` (its other settings kept: globals of the program's own, pinning,
/// BTF), with `bpfstream.h`'s wakeup globals set to `options.wakeup` and every ring buffer map
/// of the object sized to `options.buffer_bytes` (default: the object's own, 256 KiB from
/// `bpfstream.h`). Objects that have neither (the perf variant) load all the same. An object
/// without BTF, or a size out of range, is an error before anything is loaded.
pub fn load<'a>(loader: EbpfLoader<'a>, object: &'a [u8], options: &Options) -> Result<Ebpf, Error> {
    let (kind, arg) = options.wakeup.numbers();
    let mut loader = loader;
    loader.override_global(WAKEUP_POLICY_GLOBAL, &kind, false).override_global(WAKEUP_ARG_GLOBAL, &arg, false);
    if options.buffer_bytes.is_some() {
        let size = options.buffer_size(sys::page_size() as u64)? as u32;
        let rings =
            btf::ring_buffer_maps(object).map_err(|e| Error::Unsupported(format!("reading the object's maps: {e}")))?;
        for ring in rings {
            loader.map_max_entries(ring, size);
        }
    }
    loader.load(object).map_err(Error::Load)
}

/// Opens the events map `map` of a loaded object (a ring buffer or a perf event array) as an
/// [`EventSource`] with its drop counters (`{map}_stats` for a stream declared with
/// `BPFSTREAM_STREAM(map)`, else the default stream's `bpfstream_stats`), set up by `options`
/// (the ones given to [`load`]).
pub fn open(ebpf: &Ebpf, map: &str, options: &Options) -> Result<EventSource, Error> {
    let own = format!("{map}_stats");
    let counters = if ebpf.map(&own).is_some() { own.as_str() } else { STATS_MAP };
    EventSource::open(map_fd(ebpf, map)?, Some(map_fd(ebpf, counters)?), options)
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
