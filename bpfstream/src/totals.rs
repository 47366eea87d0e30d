//! What a stream has done ([`Totals`]), how full its buffer is now ([`Fill`]), and both read
//! from any thread while it is consumed ([`TotalsHandle`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a stream has accounted for: so far ([`EventSource::totals`](crate::EventSource::totals)),
/// or in the end ([`EventSource::finish`](crate::EventSource::finish)). With drop counters
/// (`bpfstream.h`), once the producers are detached and the stream finished,
/// `delivered + dropped == produced`, to the last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Records handed over.
    pub delivered: u64,
    /// Records the producers could not write ([`Dropped`](crate::Dropped) counts summed).
    pub dropped: u64,
    /// Records the producers tried to send, by the BPF side's counters (`None` without them).
    pub produced: Option<u64>,
    /// Payload bytes handed over.
    pub bytes: u64,
    /// Waits that ended because the buffer signalled (the kernel woke the consumer).
    pub wakeups: u64,
    /// Waits that ended without a signal from the buffer (the timeout, a delay timer, or
    /// another source of the same poller): the passes that bound the delay of records produced
    /// without a wakeup.
    pub timeouts: u64,
    /// Wakeups the BPF side forced (ring buffers with a wakeup policy; `None` without drop
    /// counters).
    pub forced_wakeups: Option<u64>,
    /// The most bytes seen waiting in the buffer at the start of a pass.
    pub peak_fill: u64,
}

impl Totals {
    /// Two sources' totals together (a stream over several).
    pub(crate) fn sum(self, other: Totals) -> Totals {
        let both = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Totals {
            delivered: self.delivered + other.delivered,
            dropped: self.dropped + other.dropped,
            produced: both(self.produced, other.produced),
            bytes: self.bytes + other.bytes,
            wakeups: self.wakeups + other.wakeups,
            timeouts: self.timeouts + other.timeouts,
            forced_wakeups: both(self.forced_wakeups, other.forced_wakeups),
            peak_fill: self.peak_fill.max(other.peak_fill),
        }
    }

    /// Counts a pass that began with `fill`.
    pub(crate) fn note_fill(&mut self, fill: Fill) {
        self.peak_fill = self.peak_fill.max(fill.used);
    }

    /// Counts how a wait ended.
    pub(crate) fn note_wait(&mut self, signalled: bool) {
        if signalled {
            self.wakeups += 1;
        } else {
            self.timeouts += 1;
        }
    }
}

/// How full a buffer is now: libbpf's `ring__avail_data_size` (`used`), `ring__size`
/// (`capacity`), `ring__consumer_pos` and `ring__producer_pos`. Positions are free-running
/// byte counters; a perf buffer's (a ring per CPU) are its CPUs' `data_tail` and `data_head`
/// summed, so that `producer_pos - consumer_pos` is still `used`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fill {
    /// Bytes written by producers and not consumed yet (records, headers and padding).
    pub used: u64,
    /// Bytes the buffer holds (a ring's data size; a perf buffer's summed over its CPUs).
    pub capacity: u64,
    /// Where the consumer is.
    pub consumer_pos: u64,
    /// Where the producers are.
    pub producer_pos: u64,
}

impl Fill {
    /// Two buffers' fill together (all CPUs of a perf buffer, all sources of a stream).
    pub(crate) fn sum(self, other: Fill) -> Fill {
        Fill {
            used: self.used + other.used,
            capacity: self.capacity + other.capacity,
            consumer_pos: self.consumer_pos.wrapping_add(other.consumer_pos),
            producer_pos: self.producer_pos.wrapping_add(other.producer_pos),
        }
    }
}

const NONE: u64 = u64::MAX;

/// The published [`Totals`], one atomic per field.
#[derive(Default)]
struct Published {
    delivered: AtomicU64,
    dropped: AtomicU64,
    produced: AtomicU64,
    bytes: AtomicU64,
    wakeups: AtomicU64,
    timeouts: AtomicU64,
    forced_wakeups: AtomicU64,
    peak_fill: AtomicU64,
}

struct Shared {
    totals: Published,
    /// Reads the buffer's fill from its mapping (which it keeps alive).
    fill: Box<dyn Fn() -> Fill + Send + Sync>,
}

/// A source's [`Totals`] and [`Fill`], read from any thread while the source is consumed (or
/// served by a [`Poller`](crate::Poller) or a stream, which hold it): `Clone + Send + Sync`,
/// from [`EventSource::totals_handle`](crate::EventSource::totals_handle).
///
/// The source publishes its totals once per pass over the buffer (relaxed stores, nothing per
/// record); each field is exact as of the last pass that published it, and a read racing a
/// publish may see some fields from that pass and others from the one before. The fill is read
/// from the buffer's memory at the call, which the handle keeps mapped.
///
/// ```no_run
/// # fn demo(source: &mut bpfstream::EventSource) {
/// let totals = source.totals_handle();
/// std::thread::spawn(move || loop {
///     let (t, fill) = (totals.read(), totals.fill());
///     eprintln!("{} delivered, {} dropped, buffer {}/{} bytes", t.delivered, t.dropped, fill.used, fill.capacity);
///     std::thread::sleep(std::time::Duration::from_secs(1));
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct TotalsHandle(Arc<Shared>);

impl std::fmt::Debug for TotalsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotalsHandle").field("totals", &self.read()).finish()
    }
}

impl TotalsHandle {
    /// A handle with nothing published yet, reading the fill with `fill`.
    pub(crate) fn new(fill: impl Fn() -> Fill + Send + Sync + 'static) -> Self {
        let shared = Shared { totals: Published::default(), fill: Box::new(fill) };
        shared.totals.produced.store(NONE, Ordering::Relaxed);
        shared.totals.forced_wakeups.store(NONE, Ordering::Relaxed);
        TotalsHandle(Arc::new(shared))
    }

    /// The totals as the source last published them.
    pub fn read(&self) -> Totals {
        let t = &self.0.totals;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let optional = |a: &AtomicU64| Some(load(a)).filter(|&v| v != NONE);
        Totals {
            delivered: load(&t.delivered),
            dropped: load(&t.dropped),
            produced: optional(&t.produced),
            bytes: load(&t.bytes),
            wakeups: load(&t.wakeups),
            timeouts: load(&t.timeouts),
            forced_wakeups: optional(&t.forced_wakeups),
            peak_fill: load(&t.peak_fill),
        }
    }

    /// How full the buffer is, read now from its memory.
    pub fn fill(&self) -> Fill {
        (self.0.fill)()
    }

    /// Publishes `totals` (the source's side; relaxed stores, as only the source writes).
    pub(crate) fn publish(&self, totals: &Totals) {
        let t = &self.0.totals;
        let store = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        store(&t.delivered, totals.delivered);
        store(&t.dropped, totals.dropped);
        store(&t.produced, totals.produced.unwrap_or(NONE));
        store(&t.bytes, totals.bytes);
        store(&t.wakeups, totals.wakeups);
        store(&t.timeouts, totals.timeouts);
        store(&t.forced_wakeups, totals.forced_wakeups.unwrap_or(NONE));
        store(&t.peak_fill, totals.peak_fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_totals_are_read_back_from_another_thread() {
        let fill = Fill { used: 8, capacity: 4096, consumer_pos: 64, producer_pos: 72 };
        let handle = TotalsHandle::new(move || fill);
        assert_eq!(handle.read(), Totals::default());
        let mut totals = Totals { delivered: 3, bytes: 300, dropped: 2, produced: Some(5), ..Totals::default() };
        totals.note_fill(Fill { used: 64, ..fill });
        totals.note_fill(fill);
        totals.note_wait(true);
        totals.note_wait(false);
        totals.note_wait(false);
        handle.publish(&totals);
        let reader = handle.clone();
        let (seen, seen_fill) = std::thread::spawn(move || (reader.read(), reader.fill())).join().unwrap();
        assert_eq!(seen, totals);
        assert_eq!((seen.peak_fill, seen.wakeups, seen.timeouts), (64, 1, 2));
        assert_eq!(seen_fill, fill);
    }
}
