//! Latency percentiles in constant memory per key: a log-linear histogram (the HdrHistogram
//! idea) with 32 buckets per power of two, so any percentile is within 1/32 (about 3 %) of the
//! true value, whatever the rate. A summary of a million syscalls a second cannot keep every
//! duration; this keeps at most 1.9 k counters per key, grown only as far as the largest value.

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of values (nanoseconds) in log-linear buckets, with their exact count, sum and max.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

/// The bucket of `value`: values below 64 have their own bucket, then 32 buckets per power of
/// two.
fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= SUB_BITS
    let mantissa = value >> (exp - SUB_BITS); // in SUB..2*SUB
    ((u64::from(exp - SUB_BITS) + 1) * SUB + mantissa - SUB) as usize
}

/// The largest value that falls in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB {
        return bucket;
    }
    let shift = bucket / SUB - 1;
    let mantissa = bucket % SUB + SUB;
    let low = mantissa << shift;
    low.saturating_add((1u64 << shift) - 1)
}

impl LatencyHistogram {
    pub fn record(&mut self, value: u64) {
        let bucket = bucket_of(value);
        if self.buckets.len() <= bucket {
            self.buckets.resize(bucket + 1, 0);
        }
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the values, exactly.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The largest value, exactly.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at or below which a fraction `q` (0..=1) of the values lie: the top of the
    /// bucket holding that rank, never above the true maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(bucket).min(self.max);
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
        for bucket in 0..bucket_of(u64::MAX) {
            let high = bucket_high(bucket);
            if let Some(p) = previous_high {
                assert_eq!(bucket_of(p + 1), bucket, "bucket {bucket} starts right after the previous one");
            }
            assert_eq!(bucket_of(high), bucket);
            let low = previous_high.map_or(0, |p| p + 1);
            assert!((high - low) as f64 <= low as f64 / SUB as f64 + 1.0, "bucket {bucket}: {low}..={high}");
            previous_high = Some(high);
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(u64::MAX - 1));
    }

    #[test]
    fn quantiles_are_within_three_percent() {
        let mut h = LatencyHistogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.sum(), (1..=100_000u128).sum::<u128>() * 10);
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.01, 10_000.0)] {
            let got = h.quantile(q) as f64;
            assert!(got >= exact && got <= exact * 1.032, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn small_and_single_values_are_exact() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), 0);
        h.record(200_123_456);
        assert_eq!(h.quantile(0.5), 200_123_456, "capped at the exact max");
        let mut h = LatencyHistogram::default();
        for v in [3, 3, 7, 40] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.75), 7);
        assert_eq!(h.quantile(0.99), 40);
    }
}
