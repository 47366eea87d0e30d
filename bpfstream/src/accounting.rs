//! The userspace half of `bpfstream.h` ([`crate::INCLUDE_DIR`]): the per-CPU counters every bpfstream BPF
//! program keeps, and the wakeup policy it reads at load time.
//!
//! A failed `bpf_ringbuf_reserve()` is visible only to the BPF program, so the header counts it
//! (`dropped`) next to every attempt (`produced`). [`DropCounters`] reads those counters and
//! turns their increments into [`Dropped`] reports, the same shape a perf buffer's
//! `PERF_RECORD_LOST` takes, which is how ring-buffer drops stop being silent.
//!
//! A loader other than [`crate::aya::load`] sets the policy through the read-only globals
//! `bpfstream_wakeup_policy` (`enum bpfstream_wakeup`, a u32) and `bpfstream_wakeup_arg` (a
//! u64) before loading the object, as `bpfstream.h` documents them.

use std::mem::size_of;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::{self, map_type};
use crate::{DropOrigin, Dropped, Error};

/// Name of the per-CPU counters map of the default stream defined by `bpfstream.h`.
#[cfg(any(test, feature = "aya"))]
pub(crate) const STATS_MAP: &str = "bpfstream_stats";
/// Name of the read-only global holding the wakeup policy.
#[cfg(any(test, feature = "aya"))]
pub(crate) const WAKEUP_POLICY_GLOBAL: &str = "bpfstream_wakeup_policy";
/// Name of the read-only global holding the wakeup policy's argument.
#[cfg(any(test, feature = "aya"))]
pub(crate) const WAKEUP_ARG_GLOBAL: &str = "bpfstream_wakeup_arg";

crate::record! {
    /// `struct bpfstream_counters`, one per CPU.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub(crate) struct Counters {
        /// Records the CPU tried to send.
        pub produced: u64,
        /// Records that could not be written (ring full, perf buffer full, bad length).
        pub dropped: u64,
        /// Records (count policy) or bytes (byte policy) since the last forced wakeup.
        pub since_wakeup: u64,
        /// Submits that forced a wakeup.
        pub forced_wakeups: u64,
    }
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.produced += other.produced;
        self.dropped += other.dropped;
        self.since_wakeup += other.since_wakeup;
        self.forced_wakeups += other.forced_wakeups;
    }
}

/// When a ring-buffer producer wakes the consumer (`enum bpfstream_wakeup` of `bpfstream.h`,
/// read-only globals set when the object is loaded: [`crate::aya::load`] sets them). A perf
/// buffer's equivalent is [`crate::PerfWakeup`], set when the buffer is opened. Both are fields
/// of [`Options`](crate::Options).
///
/// Minimum kernel: 5.8 (`BPF_RB_NO_WAKEUP`, `BPF_RB_FORCE_WAKEUP`, `bpf_ringbuf_query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WakeupPolicy {
    /// The kernel's default: wake when the consumer had caught up (flags 0).
    #[default]
    Adaptive,
    /// `BPF_RB_FORCE_WAKEUP` on every record.
    EveryRecord,
    /// `BPF_RB_NO_WAKEUP` always: the consumer must poll with a timeout, which bounds the delay
    /// (a source opened with it looks every 100 ms when asked to wait without a timeout, and
    /// streams keep their delay timer whatever `set_max_delay` says).
    Never,
    /// Force a wakeup every N records per CPU.
    EveryRecords(u64),
    /// Force a wakeup once N bytes wait in the ring (`bpf_ringbuf_query(BPF_RB_AVAIL_DATA)`),
    /// at most once per N bytes each CPU writes (so records committed while the reader wakes
    /// up do not each raise another wakeup); with several producing CPUs up to CPUs × N bytes
    /// can wait before the wakeup, and the reader's poll timeout bounds the delay.
    Bytes(u64),
}

impl WakeupPolicy {
    /// The values of `bpfstream_wakeup_policy` (`enum bpfstream_wakeup`) and
    /// `bpfstream_wakeup_arg`.
    #[cfg(any(test, feature = "aya"))]
    pub(crate) fn numbers(self) -> (u32, u64) {
        match self {
            WakeupPolicy::Adaptive => (0, 0),
            WakeupPolicy::EveryRecord => (1, 0),
            WakeupPolicy::Never => (2, 0),
            WakeupPolicy::EveryRecords(n) => (3, n.max(1)),
            WakeupPolicy::Bytes(n) => (4, n.max(1)),
        }
    }
}

/// Reader of the `bpfstream_stats` per-CPU map.
///
/// Minimum kernel: 4.13 (`BPF_OBJ_GET_INFO_BY_FD`; per-CPU arrays are 4.6).
#[derive(Debug)]
pub(crate) struct DropCounters {
    map: OwnedFd,
    value: Vec<u8>,
    reported: Vec<u64>,
}

impl DropCounters {
    /// Opens the counters behind `map` (a `BPF_MAP_TYPE_PERCPU_ARRAY` of
    /// `struct bpfstream_counters`).
    pub fn new(map: BorrowedFd<'_>) -> Result<Self, Error> {
        let info = sys::expect_map_type(map, map_type::PERCPU_ARRAY)?;
        if info.value_size as usize != size_of::<Counters>() {
            return Err(Error::WrongMapType {
                expected: format!("per-CPU array of struct bpfstream_counters ({} bytes)", size_of::<Counters>()),
                actual: format!("values of {} bytes ({:?})", info.value_size, info.name()),
            });
        }
        let cpus = sys::possible_cpus()?;
        Ok(DropCounters { map: sys::dup(map)?, value: vec![0; cpus * size_of::<Counters>()], reported: vec![0; cpus] })
    }

    /// The counters of every possible CPU, indexed by CPU.
    pub(crate) fn read(&mut self) -> Result<Vec<Counters>, Error> {
        sys::map_lookup_u32(self.map.as_fd(), 0, &mut self.value)?;
        Ok(self
            .value
            .chunks_exact(size_of::<Counters>())
            .map(|chunk| {
                let field = |i: usize| u64::from_ne_bytes(chunk[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                Counters { produced: field(0), dropped: field(1), since_wakeup: field(2), forced_wakeups: field(3) }
            })
            .collect())
    }

    /// What the BPF side counted, summed over all CPUs (`since_wakeup` aside).
    pub(crate) fn total(&mut self) -> Result<Counters, Error> {
        let mut sum = Counters::default();
        for c in self.read()? {
            sum.add(&c);
        }
        Ok(sum)
    }

    /// Drops counted since the last call, one [`Dropped`] per CPU that dropped, as a consumer
    /// reports them. `floor[cpu]`, when given, is what was already reported for that CPU by other
    /// means (perf LOST records); only what exceeds both is new.
    pub(crate) fn new_drops(&mut self, already: Option<&[u64]>) -> Result<Vec<Dropped>, Error> {
        let counters = self.read()?;
        Ok(self.drops_in(&counters, already))
    }

    /// [`new_drops`](Self::new_drops) of counters already read (`counters`, indexed by CPU, as
    /// [`read`](Self::read) returns them), so drops and `produced` come from one snapshot.
    pub(crate) fn drops_in(&mut self, counters: &[Counters], already: Option<&[u64]>) -> Vec<Dropped> {
        let mut lost = Vec::new();
        for (cpu, c) in counters.iter().enumerate() {
            let seen = self.reported[cpu].max(already.and_then(|a| a.get(cpu).copied()).unwrap_or(0));
            if c.dropped > seen {
                lost.push(Dropped { count: c.dropped - seen, cpu: Some(cpu as u32), origin: DropOrigin::DropCounter });
            }
            self.reported[cpu] = seen.max(c.dropped);
        }
        lost
    }

    /// Marks `count` drops on `cpu` as reported by other means (a perf LOST record), so
    /// [`new_drops`](Self::new_drops) does not report them twice. Returns how many of them the
    /// counters had not covered yet (and so are new).
    pub(crate) fn note_reported(&mut self, cpu: u32, total_for_cpu: u64) -> u64 {
        let slot = &mut self.reported[cpu as usize];
        let new = total_for_cpu.saturating_sub(*slot);
        *slot = (*slot).max(total_for_cpu);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example objects ship in the crate's package (the workspace's bpf/obj does not).
    static PING_RING: &[u8] = include_bytes!("../examples/obj/ping.ring.bpf.o");
    static PING_PERF: &[u8] = include_bytes!("../examples/obj/ping.perf.bpf.o");

    #[test]
    fn counters_mirror_what_clang_laid_out() {
        use crate::btf::Mirror;
        for object in [PING_RING, PING_PERF] {
            Counters::check_btf(object, "bpfstream_counters").unwrap();
        }
    }

    #[test]
    fn wakeup_policy_numbers_match_the_c_enum_clang_compiled() {
        let values = crate::btf::enum_values(PING_RING, "bpfstream_wakeup").unwrap();
        let policies = [
            ("BPFSTREAM_WAKE_ADAPTIVE", WakeupPolicy::Adaptive),
            ("BPFSTREAM_WAKE_EVERY", WakeupPolicy::EveryRecord),
            ("BPFSTREAM_WAKE_NEVER", WakeupPolicy::Never),
            ("BPFSTREAM_WAKE_COUNT", WakeupPolicy::EveryRecords(500)),
            ("BPFSTREAM_WAKE_BYTES", WakeupPolicy::Bytes(4096)),
        ];
        let rust: Vec<(String, i64)> =
            policies.iter().map(|(name, policy)| ((*name).to_owned(), i64::from(policy.numbers().0))).collect();
        assert_eq!(values, rust);
        assert_eq!(WakeupPolicy::EveryRecords(0).numbers(), (3, 1), "an argument of 0 means 1");
    }

    #[test]
    fn the_header_ships_in_the_include_dir() {
        let header = std::fs::read_to_string(format!("{}/bpfstream.h", crate::INCLUDE_DIR)).unwrap();
        assert!(
            header.contains("struct bpfstream_counters")
                && header.contains(&format!("BPFSTREAM_COUNTERS_MAP({STATS_MAP});"))
                && header.contains(&format!("const volatile enum bpfstream_wakeup {WAKEUP_POLICY_GLOBAL} ="))
                && header.contains(&format!("const volatile __u64 {WAKEUP_ARG_GLOBAL} ="))
        );
    }
}
