//! The pull API: a batch of records lent from the kernel's memory as an iterator
//! ([`Records`], from [`EventSource::read`](crate::EventSource::read)).

use crate::scan::Corruption;
use crate::source::Buffer;
use crate::{perfbuf, ringbuf, Dropped, Event, EventSource, Record};

/// A batch of what a buffer holds, pulled one item at a time: records lent from the kernel's
/// memory (valid until the next call on the source, which the borrow enforces) and drop
/// reports. From [`EventSource::read`](crate::EventSource::read).
///
/// The consumer position moves past what the iterator handed over when the next call on the
/// source (or its drop) settles the batch: the producers get the space back once per batch.
/// What the iterator did not reach stays in the buffer. Forgetting a `Records`
/// (`std::mem::forget`) leaves the whole batch in the buffer, uncounted.
pub struct Records<'a> {
    source: &'a mut EventSource,
    pull: Pull<'a>,
    delivered: u64,
    bytes: u64,
    /// The drop counters' reports, handed over after the records.
    drops: std::vec::IntoIter<Dropped>,
}

/// The transport's own batch.
pub(crate) enum Pull<'a> {
    Ring(ringbuf::Batch<'a>),
    Perf(perfbuf::Batch<'a, perfbuf::CpuRing>),
}

/// Where a batch stopped: a ring's consumer position, a perf buffer's data_tail per CPU.
pub(crate) enum Ended {
    Ring(u64),
    Perf(Vec<u64>),
}

impl std::fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("delivered", &self.delivered).field("bytes", &self.bytes).finish()
    }
}

impl<'a> Records<'a> {
    /// The batch of what `source`'s buffer holds now, `drops` (the drop counters' reports) to
    /// hand over after its records.
    #[inline(always)]
    pub(crate) fn new(source: &'a mut EventSource, drops: Vec<Dropped>) -> Self {
        let pull = match &mut source.buffer {
            // SAFETY: the batch's records borrow `source` for `'a`, and every call that
            // settles a batch needs `&mut` to the source.
            Buffer::Ring(ring) => Pull::Ring(unsafe { ring.batch() }),
            // SAFETY: as above.
            Buffer::Perf(perf) => Pull::Perf(unsafe { perf.batch() }),
        };
        Records { source, pull, delivered: 0, bytes: 0, drops: drops.into_iter() }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Event<Record<'a>>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.pull {
            Pull::Ring(batch) => {
                if let Some(data) = batch.next() {
                    self.delivered += 1;
                    self.bytes += data.len() as u64;
                    return Some(Event::Record(Record { data, cpu: None }));
                }
            }
            Pull::Perf(batch) => {
                while let Some(event) = batch.next() {
                    match event {
                        Event::Record(record) => {
                            self.delivered += 1;
                            self.bytes += record.data.len() as u64;
                            return Some(event);
                        }
                        Event::Dropped(dropped) => {
                            if let Some(new) = self.source.note_pulled_drop(dropped) {
                                return Some(Event::Dropped(new));
                            }
                        }
                    }
                }
            }
        }
        self.drops.next().map(Event::Dropped)
    }
}

impl Drop for Records<'_> {
    // Inlined, with the batch's state passed by value: a batch whose address never escapes
    // keeps its cursor in registers through the caller's loop.
    #[inline(always)]
    fn drop(&mut self) {
        let (ended, error) = match &mut self.pull {
            Pull::Ring(batch) => (Ended::Ring(batch.position()), batch.corruption.map(Corruption::into_error)),
            Pull::Perf(batch) => {
                let (tails, corruption) = batch.finish();
                (Ended::Perf(tails), corruption.map(Corruption::into_error))
            }
        };
        self.source.end_pull(ended, error, self.delivered, self.bytes);
    }
}
