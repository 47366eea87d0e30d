//! A consumer's counts ([`Stats`]), published once per pass for readers on other threads
//! ([`StatsHandle`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How full a buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fill {
    /// Bytes written by producers and not consumed yet (records, headers and padding).
    pub used: u64,
    /// Bytes the buffer holds (a ring's data size; a perf buffer's data size summed over CPUs).
    pub capacity: u64,
}

/// A consumer's counts at one instant. No kernel needed to read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Records handed over.
    pub events: u64,
    /// Payload bytes handed over.
    pub bytes: u64,
    /// Records reported lost ([`Item::Lost`](crate::Item::Lost) counts summed).
    pub lost: u64,
    /// Waits that ended because the buffer signalled (the kernel woke us).
    pub wakeups: u64,
    /// Waits that ended without a signal from the buffer (the poll timeout or delay timer, or
    /// another source of the same poller): the passes that bound the delay of records produced
    /// with `BPF_RB_NO_WAKEUP` or below a perf watermark.
    pub timeouts: u64,
    /// Buffer fill seen at the start of the last pass.
    pub fill: Fill,
    /// Highest `fill.used` seen at the start of any pass.
    pub peak_fill: u64,
    /// What the BPF side says it tried to send (`None` without drop counters).
    pub produced: Option<u64>,
}

impl Stats {
    /// `fill.used / fill.capacity` (0 for an unknown capacity).
    pub fn fill_ratio(&self) -> f64 {
        if self.fill.capacity == 0 {
            0.0
        } else {
            self.fill.used as f64 / self.fill.capacity as f64
        }
    }

    /// Records the fill seen at the start of a pass.
    pub(crate) fn note_fill(&mut self, fill: Option<Fill>) {
        if let Some(fill) = fill {
            self.fill = fill;
            self.peak_fill = self.peak_fill.max(fill.used);
        }
    }

    /// Records how a wait ended.
    pub(crate) fn note_wait(&mut self, signalled: bool) {
        if signalled {
            self.wakeups += 1;
        } else {
            self.timeouts += 1;
        }
    }
}

const NONE: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Shared {
    events: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    wakeups: AtomicU64,
    timeouts: AtomicU64,
    fill_used: AtomicU64,
    fill_capacity: AtomicU64,
    peak_fill: AtomicU64,
    produced: AtomicU64,
}

/// A shared, read-only view of a consumer's [`Stats`]: `Clone + Send + Sync`, read with
/// [`read`](Self::read) from any thread. Reading costs nine relaxed loads and never blocks the
/// consumer.
///
/// Stream statistics readable at any time, from any thread, while the consumer runs.
///
/// A consumer ([`EventSource`](crate::EventSource), or an async
/// [`EventStream`](crate::stream::EventStream)) keeps its counts in plain integers and publishes
/// them into a [`StatsHandle`] once per pass over the buffer: a handful of relaxed atomic stores,
/// no locks, no read-modify-write, nothing per record. Any number of handles (they are cheap
/// clones of one `Arc`) read them from other threads:
///
/// ```
/// # fn demo(source: &mut bpfstream::EventSource) -> Result<(), bpfstream::Error> {
/// let stats = source.stats_handle();
/// std::thread::spawn(move || loop {
///     let s = stats.read();
///     eprintln!("{} events, {} lost, buffer {:.0}% full", s.events, s.lost, 100.0 * s.fill_ratio());
///     std::thread::sleep(std::time::Duration::from_secs(1));
/// });
/// # Ok(()) }
/// ```
///
/// Each field is exact as of the last pass that published it; a read racing a publish may see
/// some fields from that pass and others from the one before.
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    /// A handle with nothing published yet.
    pub(crate) fn new() -> Self {
        let shared = Shared::default();
        shared.produced.store(NONE, Ordering::Relaxed);
        StatsHandle(Arc::new(shared))
    }

    /// The counts as last published by the consumer.
    pub fn read(&self) -> Stats {
        let s = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let produced = load(&s.produced);
        Stats {
            events: load(&s.events),
            bytes: load(&s.bytes),
            lost: load(&s.lost),
            wakeups: load(&s.wakeups),
            timeouts: load(&s.timeouts),
            fill: Fill { used: load(&s.fill_used), capacity: load(&s.fill_capacity) },
            peak_fill: load(&s.peak_fill),
            produced: (produced != NONE).then_some(produced),
        }
    }

    /// Publishes `stats` (the consumer's side; relaxed stores, as only the consumer writes).
    pub(crate) fn publish(&self, stats: &Stats) {
        let s = &self.0;
        let store = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        store(&s.events, stats.events);
        store(&s.bytes, stats.bytes);
        store(&s.lost, stats.lost);
        store(&s.wakeups, stats.wakeups);
        store(&s.timeouts, stats.timeouts);
        store(&s.fill_used, stats.fill.used);
        store(&s.fill_capacity, stats.fill.capacity);
        store(&s.peak_fill, stats.peak_fill);
        store(&s.produced, stats.produced.unwrap_or(NONE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counts_are_read_back_from_another_thread() {
        let handle = StatsHandle::new();
        assert_eq!(handle.read(), Stats::default());
        let mut stats = Stats { events: 3, bytes: 300, lost: 2, produced: Some(5), ..Stats::default() };
        stats.note_fill(Some(Fill { used: 64, capacity: 4096 }));
        stats.note_fill(Some(Fill { used: 8, capacity: 4096 }));
        stats.note_wait(true);
        stats.note_wait(false);
        stats.note_wait(false);
        handle.publish(&stats);
        let reader = handle.clone();
        let seen = std::thread::spawn(move || reader.read()).join().unwrap();
        assert_eq!(seen, stats);
        assert_eq!((seen.peak_fill, seen.fill.used, seen.wakeups, seen.timeouts), (64, 8, 1, 2));
        assert!((seen.fill_ratio() - 8.0 / 4096.0).abs() < 1e-12);
    }
}
