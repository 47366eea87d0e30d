//! The per-CPU drop counters of `bpfstream.h` (`bpfstream_stats`), read at the moment they are
//! asked for. An event source reads them itself, as often as its counter interval says; the
//! bench's producer (whose consumer may be libbpf's or aya's) and the lab's phase snapshots need
//! them at an instant of their own.

use anyhow::{anyhow, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::Ebpf;

use crate::load::{self, COUNTERS_MAP};

bpfstream::record! {
    /// `struct bpfstream_counters` of `bpfstream.h`, one per CPU.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Counters {
        /// Records the CPU tried to send.
        pub produced: u64,
        /// Records that could not be written.
        pub dropped: u64,
        /// Records (count policy) or bytes (byte policy) since the last forced wakeup.
        pub since_wakeup: u64,
        /// Submits that forced a wakeup.
        pub forced_wakeups: u64,
    }
}

// SAFETY: #[repr(C)] and every field a u64 (record! checks that each is plain data): every bit
// pattern of its size is a value.
unsafe impl aya::Pod for Counters {}

/// A reader of one object's drop counters, with a descriptor of its own (it outlives the
/// object's `Ebpf`).
pub struct DropCounters(PerCpuArray<MapData, Counters>);

impl std::fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropCounters")
    }
}

impl DropCounters {
    /// The counters of `bpf`'s default stream.
    pub fn open(bpf: &Ebpf) -> Result<Self> {
        let map = bpf.map(COUNTERS_MAP).ok_or_else(|| anyhow!("the BPF object has no {COUNTERS_MAP} map"))?;
        Self::of(map)
    }

    /// The counters in `map` (a stream's `bpfstream_stats`, or its own `<map>_stats`).
    pub fn of(map: &Map) -> Result<Self> {
        let fd = load::map_fd(map)?;
        let data = MapData::from_fd(fd.try_clone_to_owned()?).context("opening the drop counters")?;
        Ok(DropCounters(PerCpuArray::try_from(Map::PerCpuArray(data))?))
    }

    /// The counters summed over CPUs, read now.
    pub fn total(&self) -> Result<Counters> {
        let per_cpu = self.0.get(&0, 0).context("reading the drop counters")?;
        Ok(per_cpu.iter().fold(Counters::default(), |sum, c| Counters {
            produced: sum.produced + c.produced,
            dropped: sum.dropped + c.dropped,
            since_wakeup: sum.since_wakeup + c.since_wakeup,
            forced_wakeups: sum.forced_wakeups + c.forced_wakeups,
        }))
    }
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;

    #[test]
    fn counters_mirror_what_clang_laid_out() {
        for object in [crate::objects::BENCH.ring, crate::objects::BENCH.perf] {
            Counters::check_btf(object, "bpfstream_counters").unwrap();
        }
    }
}
