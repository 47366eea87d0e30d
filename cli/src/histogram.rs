//! Latency percentiles in constant memory per key: the log-linear histogram (the HdrHistogram
//! idea) that `bpf/syscalls.bpf.c` fills in the kernel, laid out in `bpf/syscalls.h`:
//!
//! ```text
//!   bucket:  0 1 ... 31 | 32 ... 63 | 64 ... 95      | ... | 1120 ... 1151
//!   values:  0 1 ... 31 | 32 ... 63 | 64 ... 127 (2) | ... | 2^39 ... (2^34 wide, and above)
//! ```
//!
//! Below 32 ns every value has its own bucket; from there each power of two is cut into 32
//! equal buckets, so a bucket is at most 1/32 of its lowest value wide. A percentile is reported
//! as the midpoint of the bucket that holds its rank, within [`RELATIVE_ERROR`] (1/64, 1.6 %) of
//! the true value, capped at the exact maximum. Values from 2^40 ns (18 minutes) share the last
//! bucket.

/// log2 of the buckets per power of two (`SYSCALL_HIST_SUB_BITS`).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values from 2^MAX_EXP share the last bucket (`SYSCALL_HIST_MAX_EXP`).
const MAX_EXP: u32 = 40;
/// Buckets per histogram (`SYSCALL_HIST_BUCKETS`).
pub const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS) as u64 * SUB) as usize;
/// How far a reported percentile may be from the true value, relative to it (below 2^40 ns).
pub const RELATIVE_ERROR: f64 = 1.0 / (2 * SUB) as f64;

/// The bucket of `value`, exactly as the BPF program's `hist_bucket` computes it (the kernel
/// fills the buckets; this is its specification, for the tests).
#[cfg(test)]
pub fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= SUB_BITS
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    ((u64::from(exp - SUB_BITS)) * SUB + (value >> (exp - SUB_BITS))) as usize
}

/// The smallest and largest value of `bucket` (the last one is open above; its nominal width
/// is used).
fn bucket_range(bucket: usize) -> (u64, u64) {
    let bucket = bucket as u64;
    if bucket < SUB {
        return (bucket, bucket);
    }
    let shift = bucket / SUB - 1;
    let low = (bucket % SUB + SUB) << shift;
    (low, low + ((1u64 << shift) - 1))
}

/// The value a bucket reports: its midpoint, within half a bucket of every value in it.
fn bucket_mid(bucket: usize) -> u64 {
    let (low, high) = bucket_range(bucket);
    low + (high - low) / 2
}

/// Counts of values (nanoseconds) in log-linear buckets, with their exact maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    max: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: vec![0; BUCKETS], max: 0 }
    }
}

impl LatencyHistogram {
    /// Adds the counts of a histogram the kernel filled (one CPU's, or a difference).
    pub fn add_counts(&mut self, buckets: &[u64]) {
        for (sum, n) in self.buckets.iter_mut().zip(buckets) {
            *sum = sum.wrapping_add(*n);
        }
    }

    /// Removes the counts of an earlier reading of the same cumulative histogram.
    pub fn subtract(&mut self, earlier: &LatencyHistogram) {
        for (n, before) in self.buckets.iter_mut().zip(&earlier.buckets) {
            *n = n.saturating_sub(*before);
        }
    }

    /// Sets the exact maximum (kept next to the histogram by the kernel).
    pub fn set_max(&mut self, max: u64) {
        self.max = max;
    }

    #[cfg(test)]
    pub fn record(&mut self, value: u64) {
        self.buckets[bucket_of(value)] += 1;
        self.max = self.max.max(value);
    }

    /// The values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The largest value: exact when set by [`set_max`](Self::set_max).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The top of the highest non-empty bucket, capped at the maximum: the largest value of
    /// these counts, when only an upper bound of it is known.
    pub fn highest_bucket_top(&self) -> u64 {
        self.buckets.iter().rposition(|&n| n > 0).map_or(0, |b| bucket_range(b).1.min(self.max))
    }

    /// The value at or below which a fraction `q` (0..=1) of the values lie, within
    /// [`RELATIVE_ERROR`], never above the maximum; the maximum itself for the last rank (so
    /// every percentile of one value is that value). 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        if rank == count {
            return self.max;
        }
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_mid(bucket).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut previous_high = None;
        for bucket in 0..BUCKETS - 1 {
            let (low, high) = bucket_range(bucket);
            if let Some(p) = previous_high {
                assert_eq!(low, p + 1, "bucket {bucket} starts right after the previous one");
            }
            assert_eq!((bucket_of(low), bucket_of(high)), (bucket, bucket));
            assert!((high - low) as f64 <= low as f64 / SUB as f64, "bucket {bucket}: {low}..={high}");
            previous_high = Some(high);
        }
        assert_eq!(bucket_range(BUCKETS - 2).1 + 1, bucket_range(BUCKETS - 1).0);
        assert_eq!(bucket_of(1 << MAX_EXP), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of((1 << MAX_EXP) - 1), BUCKETS - 1);
        assert_eq!(BUCKETS, 1152, "SYSCALL_HIST_BUCKETS in bpf/syscalls.h");
    }

    /// Every value below 2^40 is reported within 1.6 % by its bucket's midpoint.
    #[test]
    fn midpoints_are_within_the_stated_error() {
        let mut worst: f64 = 0.0;
        let mut check = |v: u64| {
            let mid = bucket_mid(bucket_of(v)) as f64;
            worst = worst.max((mid - v as f64).abs() / (v as f64).max(1.0));
        };
        (0..100_000).for_each(&mut check);
        for exp in 17..MAX_EXP {
            for step in 0..4096u64 {
                let v = (1u64 << exp) + step * ((1u64 << exp) / 4096);
                check(v);
                check((v + (1 << (exp - SUB_BITS)) - 1).min((1 << MAX_EXP) - 1));
            }
        }
        assert!(worst <= RELATIVE_ERROR, "worst relative error {worst}");
        assert!(worst > RELATIVE_ERROR * 0.9, "the bound is tight: {worst}");
    }

    #[test]
    fn quantiles_are_within_the_stated_error() {
        let mut h = LatencyHistogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.max(), 1_000_000);
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.01, 10_000.0), (0.999, 999_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - exact).abs() <= exact * RELATIVE_ERROR, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn small_single_and_capped_values() {
        let mut h = LatencyHistogram::default();
        assert_eq!((h.quantile(0.5), h.highest_bucket_top()), (0, 0));
        h.record(200_123_456);
        assert_eq!(h.quantile(0.5), 200_123_456, "capped at the exact max");
        let mut h = LatencyHistogram::default();
        for v in [3, 3, 7, 40] {
            h.record(v);
        }
        assert_eq!((h.quantile(0.5), h.quantile(0.75), h.quantile(0.99)), (3, 7, 40));
    }

    #[test]
    fn differences_of_cumulative_readings() {
        let mut first = LatencyHistogram::default();
        first.record(100);
        let mut second = first.clone();
        second.record(5000);
        second.record(5001);
        second.subtract(&first);
        assert_eq!(second.count(), 2);
        let top = second.highest_bucket_top();
        assert!((5001..=5001 + 5001 / 32).contains(&top), "{top}");
        let mut sum = LatencyHistogram::default();
        sum.add_counts(&second.buckets);
        sum.add_counts(&second.buckets);
        assert_eq!(sum.count(), 4);
    }
}
