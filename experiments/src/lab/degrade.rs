//! Graceful degradation under backpressure: the userspace half of
//! `bpf/include/bpfstream_degrade.h`.
//!
//! When a ring buffer fills faster than its consumer drains it, dropping whatever no longer fits
//! loses events blindly. With the degrade policy the BPF side watches the ring's fill
//! (`bpf_ringbuf_query(BPF_RB_AVAIL_DATA)`): past a high watermark it stops sending each event
//! and counts it per key in a hash map instead (optionally still sending 1 in N as a sample),
//! and below a low watermark it returns to full fidelity. Each switch is announced in the
//! stream by a [`Notice`] record. Nothing is lost unaccounted:
//!
//! ```text
//! produced = delivered + dropped + summarized
//! ```
//!
//! where `delivered` counts the application's records (not notices), `dropped` and the BPF-side
//! `produced` come from the library's drop counters, and `summarized` from [`DegradeMaps`].
//!
//! Set a [`DegradePolicy`]'s [`globals`](DegradePolicy::globals) when loading the object, then
//! take its maps with [`DegradeMaps::take`]. Minimum kernel: 5.8 (ring buffers,
//! `bpf_ringbuf_query`); 5.17 for `bpf_loop` where a program uses it. Perf buffers cannot be
//! queried for their fill level from BPF, so the policy needs a ring buffer.

use std::collections::BTreeMap;
use std::mem::size_of;

use anyhow::{anyhow, bail, Result};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use bpfstream::{EventSource, FromRecord, Totals, Transport};

/// The read-only global holding the high watermark (bytes waiting; 0: policy off).
const HIGH_GLOBAL: &str = "bpfstream_degrade_high";
/// The read-only global holding the low watermark (bytes waiting).
const LOW_GLOBAL: &str = "bpfstream_degrade_low";
/// The read-only global holding N of the 1-in-N sample sent in degraded mode (0: none).
const SAMPLE_GLOBAL: &str = "bpfstream_degrade_sample";
/// The per-CPU array of [`DegradeCounters`].
const STATS_MAP: &str = "bpfstream_degrade_stats";
/// The hash map key (u64) -> events summarized (u64).
const SUMMARY_MAP: &str = "bpfstream_summary";
/// First u64 of every [`Notice`] record (`BPFSTREAM_DEGRADE_MAGIC`); above 2^63, so no
/// CLOCK_MONOTONIC nanosecond timestamp can start a record with it.
const NOTICE_MAGIC: u64 = 0xb9f5_de9a_0de9_a0de;

/// When the BPF side degrades and recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DegradePolicy {
    /// Bytes waiting in the ring at which the BPF side degrades (0: never).
    pub high: u64,
    /// Bytes waiting at or below which it returns to full fidelity.
    pub low: u64,
    /// In degraded mode, still send every N-th event (0: send none, summarize all).
    pub sample_every: u32,
}

impl DegradePolicy {
    /// The policy that never degrades.
    pub const OFF: DegradePolicy = DegradePolicy { high: 0, low: 0, sample_every: 0 };

    /// Watermarks as fractions of a ring of `ring_size` bytes: degrade at `high` full, recover
    /// at `low` full (`0 <= low < high <= 1`). Leave headroom above `high` for the events that
    /// arrive while the switch happens (a burst written by one program run).
    pub fn for_ring(ring_size: u64, high: f64, low: f64, sample_every: u32) -> Result<Self> {
        if !((0.0..1.0).contains(&low) && low < high && high <= 1.0) {
            bail!("degrade watermarks must satisfy 0 <= low < high <= 1 (fractions of the ring), got low {low}, high {high}");
        }
        let bytes = |f: f64| ((ring_size as f64 * f) as u64).max(1);
        Ok(DegradePolicy { high: bytes(high), low: (ring_size as f64 * low) as u64, sample_every })
    }

    /// Whether this policy never degrades.
    pub fn is_off(&self) -> bool {
        self.high == 0
    }

    /// Checks that `source` can carry this policy: anything but [`DegradePolicy::OFF`] needs a
    /// ring buffer, since BPF cannot read a perf buffer's fill level.
    pub fn check(&self, source: &EventSource) -> Result<()> {
        if !self.is_off() && source.transport() != Transport::Ring {
            bail!(
                "the degrade policy needs a ring buffer (BPF cannot read a perf buffer's fill level); load the ring \
                 variant of the program or turn the policy off"
            );
        }
        Ok(())
    }

    /// The read-only globals to set before loading: (name, native-endian value).
    pub fn globals(&self) -> [(&'static str, Vec<u8>); 3] {
        [
            (HIGH_GLOBAL, self.high.to_ne_bytes().to_vec()),
            (LOW_GLOBAL, self.low.to_ne_bytes().to_vec()),
            (SAMPLE_GLOBAL, self.sample_every.to_ne_bytes().to_vec()),
        ]
    }
}

bpfstream::record! {
    /// `struct bpfstream_degrade_notice`.
    struct RawNotice {
        magic: u64,
        ts_ns: u64,
        fill: u64,
        degraded: u32,
        cpu: u32,
    }

    /// `struct bpfstream_degrade_counters`, summed over CPUs by [`DegradeMaps::counters`].
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct DegradeCounters {
        /// Events counted in the summary instead of sent.
        pub summarized: u64,
        /// Events sent as the 1-in-N sample in degraded mode.
        pub sampled: u64,
        /// Notices written into the ring.
        pub notices: u64,
        /// Notices the ring had no room for (the mode is still in the map
        /// `bpfstream_degrade_state`).
        pub notices_dropped: u64,
        /// Events sent in degraded mode because the summary had no room for their key.
        pub summary_full: u64,
        /// Events seen in degraded mode.
        pub degraded_seen: u64,
    }
}

// SAFETY: #[repr(C)] (record!) with only u64 fields: no padding, and every bit pattern is a
// valid value, as aya's Pod requires of a map value.
unsafe impl aya::Pod for DegradeCounters {}

/// A mode switch announced in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// `true`: degraded from now on; `false`: full fidelity again.
    pub degraded: bool,
    /// When (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Bytes waiting in the ring at the switch.
    pub fill: u64,
    /// The CPU that switched.
    pub cpu: u32,
}

impl Notice {
    /// Size of the record (`sizeof(struct bpfstream_degrade_notice)`).
    const SIZE: usize = size_of::<RawNotice>();

    /// The notice in `data`, or `None` if `data` is an ordinary record.
    pub fn parse(data: &[u8]) -> Option<Notice> {
        let raw = RawNotice::from_record(data).ok()?;
        (raw.magic == NOTICE_MAGIC && data.len() < Self::SIZE + 8).then_some(Notice {
            degraded: raw.degraded != 0,
            ts_ns: raw.ts_ns,
            fill: raw.fill,
            cpu: raw.cpu,
        })
    }
}

/// The policy's maps, taken out of a loaded object: they stay readable after the object (and
/// so its programs) is dropped.
pub struct DegradeMaps {
    stats: PerCpuArray<MapData, DegradeCounters>,
    summary: HashMap<MapData, u64, u64>,
}

impl DegradeMaps {
    /// Takes the maps of `bpfstream_degrade.h` out of `bpf`.
    pub fn take(bpf: &mut aya::Ebpf) -> Result<Self> {
        Ok(DegradeMaps { stats: take_map(bpf, STATS_MAP)?, summary: take_map(bpf, SUMMARY_MAP)? })
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<DegradeCounters> {
        Ok(self.stats.get(&0, 0)?.iter().fold(DegradeCounters::default(), |sum, cpu| DegradeCounters {
            summarized: sum.summarized + cpu.summarized,
            sampled: sum.sampled + cpu.sampled,
            notices: sum.notices + cpu.notices,
            notices_dropped: sum.notices_dropped + cpu.notices_dropped,
            summary_full: sum.summary_full + cpu.summary_full,
            degraded_seen: sum.degraded_seen + cpu.degraded_seen,
        }))
    }

    /// Events summarized per key so far (cumulative). Read while producers run, a key's count
    /// may be a little behind [`DegradeCounters::summarized`]; once they are detached both agree.
    /// A key deleted while the map is walked is skipped.
    pub fn summary(&self) -> Result<BTreeMap<u64, u64>> {
        Ok(self.summary.iter().collect::<Result<_, _>>()?)
    }
}

/// Takes the map `name` out of `bpf` as an `M`, which checks its type and key and value sizes.
fn take_map<M: TryFrom<Map, Error = MapError>>(bpf: &mut aya::Ebpf, name: &str) -> Result<M> {
    let map = bpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the object has no {name} map: does it include bpfstream_degrade.h?"))?;
    M::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))
}

/// What a stream accounted for under the degrade policy: the library's [`Totals`], and the
/// events the policy summarized instead of sending them, which the library does not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyTotals {
    /// Events the BPF side was asked to send, summarized ones included.
    pub produced: u64,
    /// Events delivered (degrade notices not counted).
    pub delivered: u64,
    pub dropped: u64,
    pub summarized: u64,
}

impl DegradeCounters {
    /// A stream's [`Totals`] under the degrade policy: the `notices_delivered` notices (counted
    /// among the stream's delivered records) taken out of `delivered`, and the events the policy
    /// summarized instead of sending added to `summarized` and `produced`, so that
    /// `delivered + dropped + summarized == produced` once the stream is drained.
    pub fn apply(&self, totals: &Totals, notices_delivered: u64) -> PolicyTotals {
        PolicyTotals {
            produced: totals.produced.unwrap_or(0) + self.summarized,
            delivered: totals.delivered.saturating_sub(notices_delivered),
            dropped: totals.dropped,
            summarized: self.summarized,
        }
    }
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;

    #[test]
    fn mirrors_match_what_clang_laid_out() {
        for object in [crate::objects::LAB_DEGRADE.ring, crate::objects::LAB_DEGRADE.perf] {
            RawNotice::check_btf(object, "bpfstream_degrade_notice").unwrap();
            DegradeCounters::check_btf(object, "bpfstream_degrade_counters").unwrap();
        }
    }

    fn notice_bytes(magic: u64, degraded: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [magic, 123, 4096] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&degraded.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b
    }

    #[test]
    fn notices_are_recognised_and_ordinary_records_are_not() {
        let n = Notice::parse(&notice_bytes(NOTICE_MAGIC, 1)).unwrap();
        assert_eq!(n, Notice { degraded: true, ts_ns: 123, fill: 4096, cpu: 1 });
        assert!(!Notice::parse(&notice_bytes(NOTICE_MAGIC, 0)).unwrap().degraded);
        // A record that starts with a timestamp, even of the same length.
        assert_eq!(Notice::parse(&notice_bytes(1_000_000_000, 1)), None);
        // Too short, or much longer than a notice (another record type that starts alike).
        assert_eq!(Notice::parse(&notice_bytes(NOTICE_MAGIC, 1)[..31]), None);
        let mut long = notice_bytes(NOTICE_MAGIC, 1);
        long.extend_from_slice(&[0; 64]);
        assert_eq!(Notice::parse(&long), None);
        // Perf payloads carry up to 7 padding bytes.
        let mut padded = notice_bytes(NOTICE_MAGIC, 1);
        padded.extend_from_slice(&[0; 4]);
        assert!(Notice::parse(&padded).is_some());
    }

    #[test]
    fn policy_watermarks() {
        let p = DegradePolicy::for_ring(1 << 20, 0.5, 0.125, 100).unwrap();
        assert_eq!((p.high, p.low, p.sample_every), (1 << 19, 1 << 17, 100));
        assert!(!p.is_off());
        assert!(DegradePolicy::OFF.is_off());
        for (high, low) in [(0.5, 0.5), (0.2, 0.4), (1.5, 0.1), (0.5, -0.1)] {
            assert!(DegradePolicy::for_ring(1 << 20, high, low, 0).is_err(), "{high} {low}");
        }
        let g = p.globals();
        assert_eq!(g[0], (HIGH_GLOBAL, (1u64 << 19).to_ne_bytes().to_vec()));
        assert_eq!(g[2], (SAMPLE_GLOBAL, 100u32.to_ne_bytes().to_vec()));
    }

    #[test]
    fn totals_exclude_notices_and_add_the_summary() {
        let mut totals = Totals::default();
        (totals.delivered, totals.dropped, totals.produced) = (103, 2, Some(102));
        let counters = DegradeCounters { summarized: 1000, notices: 3, ..Default::default() };
        let t = counters.apply(&totals, 3);
        assert_eq!((t.produced, t.delivered, t.dropped, t.summarized), (1102, 100, 2, 1000));
        assert_eq!(t.delivered + t.dropped + t.summarized, t.produced);
    }
}
