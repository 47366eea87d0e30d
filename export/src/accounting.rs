//! The exporter's counters: written by the tracer's thread (offered, queue_full) and by the
//! exporter's thread (the rest), read by anyone at any time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One exporter's counters, shared with its pipeline. Relaxed everywhere: each counter is a
/// tally on its own; the only reader that needs them to add up reads after
/// [`Exporter::finish`](crate::Exporter::finish) saw the pipeline end (its end of a channel
/// dropped after its last count: the channel's disconnection orders every write before the
/// read).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub offered: AtomicU64,
    pub queue_full: AtomicU64,
    pub exported: AtomicU64,
    pub rejected: AtomicU64,
    pub unflushed: AtomicU64,
    pub retries: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExportStats {
            offered: get(&self.offered),
            exported: get(&self.exported),
            queue_full: get(&self.queue_full),
            rejected: get(&self.rejected),
            unflushed: get(&self.unflushed),
            retries: get(&self.retries),
        }
    }
}

/// The bytes of the events in the queue, against the `queue_bytes` bound: taken by the tracer's
/// thread (the only one that takes) before it queues an event, given back by the exporter's
/// thread as it takes the event out, so bytes are never given back before they were taken.
/// Relaxed: a tally, as the counters.
#[derive(Debug)]
pub(crate) struct QueueBytes {
    used: AtomicUsize,
    max: usize,
}

impl QueueBytes {
    pub fn new(max: usize) -> Self {
        QueueBytes { used: AtomicUsize::new(0), max }
    }

    /// Counts `len` more bytes queued, unless that would pass the bound.
    pub fn take(&self, len: usize) -> bool {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(len) > self.max {
            return false;
        }
        self.used.fetch_add(len, Ordering::Relaxed);
        true
    }

    /// Counts `len` bytes out of the queue.
    pub fn give_back(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::Relaxed);
    }
}

/// An exporter's accounting. After [`Exporter::finish`](crate::Exporter::finish):
/// `offered = exported + export_failed()`, exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Events given to [`Exporter::send`](crate::Exporter::send).
    pub offered: u64,
    /// Acknowledged by the engine.
    pub exported: u64,
    /// Refused at once because the queue was full (the engine too slow, or down).
    pub queue_full: u64,
    /// Refused by the engine for good (e.g. larger than it accepts).
    pub rejected: u64,
    /// Still queued or unacknowledged at the final flush's deadline.
    pub unflushed: u64,
    /// Publications repeated after an error or a missing acknowledgement (same `seq`).
    pub retries: u64,
}

impl ExportStats {
    /// Events that will not be (or were not seen to be) acknowledged.
    pub fn export_failed(&self) -> u64 {
        self.queue_full + self.rejected + self.unflushed
    }

    /// Queued or published, not yet acknowledged nor failed (0 after the final flush).
    pub fn in_flight(&self) -> u64 {
        self.offered.saturating_sub(self.exported + self.export_failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_bytes_refuse_what_passes_the_bound_until_given_back() {
        let bytes = QueueBytes::new(100);
        assert!(bytes.take(60));
        assert!(bytes.take(40), "up to the bound exactly");
        assert!(!bytes.take(1), "past the bound");
        bytes.give_back(60);
        assert!(!bytes.take(61));
        assert!(bytes.take(60));
        assert!(!bytes.take(usize::MAX), "no overflow");
    }
}
