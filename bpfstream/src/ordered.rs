//! An async stream's records in timestamp order (feature `tokio`): [`EventStream::ordered`],
//! [`MergedStream::ordered`].
//!
//! A perf buffer is a ring per CPU and a stream reads them one after another, so its records
//! come out of timestamp order across CPUs (each CPU's records are in order); a
//! [`MergedStream`] takes turns between its sources, so its records are out of order across
//! sources too. [`Ordered`] holds records back in key order and yields them by a key, normally
//! a `bpf_ktime_get_ns()` timestamp in the record: a record is released once the monotonic
//! clock, at a moment the buffers were seen empty, is `span` past it. Losses and malformed
//! records are not held: they come out as they arrive.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::merge::MergeStats;
use crate::poller::{Source, SourceId};
use crate::stream::{EventStream, MergedStream};
use crate::typed::Decode;
use crate::{Error, Event};

/// Most records held at once; past it the oldest is released early (counted as `forced`).
const MAX_HELD: usize = 1 << 16;

mod sealed {
    /// What [`Ordered`](super::Ordered) needs of the stream it orders.
    pub trait Unordered: futures_core::Stream<Item = Result<Self::Event, crate::Error>> + Unpin {
        /// An item of the stream.
        type Event;
        /// A decoded record, what the key reads.
        type Record;
        /// The record in `event`, if it is one (not a loss or a malformed record).
        fn record(event: &Self::Event) -> Option<&Self::Record>;
        /// Whether nothing waits in the stream's buffers.
        fn is_empty(&self) -> bool;
    }
}

use sealed::Unordered;

fn record_in<T>(event: &Event<T>) -> Option<&T> {
    match event {
        Event::Record(record) => Some(record),
        _ => None,
    }
}

impl<S: Source, D: Decode> Unordered for EventStream<S, D> {
    type Event = Event<D::Output>;
    type Record = D::Output;
    fn record(event: &Self::Event) -> Option<&D::Output> {
        record_in(event)
    }
    fn is_empty(&self) -> bool {
        self.get_ref().fill().is_none_or(|f| f.used == 0)
    }
}

impl<T> Unordered for MergedStream<'_, T> {
    type Event = (SourceId, Event<T>);
    type Record = T;
    fn record(event: &Self::Event) -> Option<&T> {
        record_in(&event.1)
    }
    fn is_empty(&self) -> bool {
        self.fill().used == 0
    }
}

/// An [`EventStream`] or a [`MergedStream`] whose records come out in key order (built by
/// [`EventStream::ordered`] or [`MergedStream::ordered`]). Items are those of the stream.
pub struct Ordered<St: Unordered, K> {
    inner: St,
    key: K,
    span: u64,
    /// Held records by (key, arrival): equal keys keep their arrival order.
    held: BTreeMap<(u64, u64), St::Event>,
    arrivals: u64,
    /// Keys up to this can be released: the clock, less `span`, when the buffer was last seen
    /// empty.
    bound: u64,
    last_released: Option<u64>,
    /// Losses, malformed and late records, passed on before any held record.
    passing: VecDeque<St::Event>,
    /// The stream's last item, an error: yielded once everything held is out.
    error: Option<Error>,
    ended: bool,
    stats: MergeStats,
}

impl<St: Unordered, K> std::fmt::Debug for Ordered<St, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ordered").field("stats", &self.stats).field("ended", &self.ended).finish()
    }
}

impl<S: Source, D: Decode> EventStream<S, D> {
    /// This stream's records in the order of `key`, a CLOCK_MONOTONIC nanosecond timestamp in
    /// the record (as `bpf_ktime_get_ns()` writes it). A record is held until the buffer has
    /// been seen empty at a time `span` past its key (so every record stamped before it has been
    /// read, if records are committed within `span` of being stamped), then released in order;
    /// at the end of the stream everything held is released. A record that arrives after a
    /// later one was released is yielded at once and counted in
    /// [`Ordered::merge_stats`]`.late`: nothing is dropped. Losses and malformed records are
    /// not held.
    ///
    /// Held records are released when the stream finds the buffer empty, at the latest when
    /// its delay timer ([`set_max_delay`](Self::set_max_delay), 100 ms by default) wakes it: a
    /// record waits about `span` plus that delay. Ring buffers are in commit order already; this
    /// is for perf buffers (and rings fed from several CPUs whose timestamps must be in order).
    /// Several sources merged: [`MergedStream::ordered`].
    ///
    /// ```no_run
    /// # async fn demo(source: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
    /// use futures_util::StreamExt;
    /// use bpfstream::stream::EventStream;
    /// bpfstream::record! {
    ///     pub struct Exec { pub ts_ns: u64, pub pid: u32 }
    /// }
    /// let span = std::time::Duration::from_millis(10);
    /// let mut events = EventStream::typed::<Exec>(source)?.ordered(span, |e: &Exec| e.ts_ns);
    /// while let Some(event) = events.next().await {
    ///     if let bpfstream::Event::Record(exec) = event? {
    ///         println!("{} exec by {}", exec.ts_ns, exec.pid);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn ordered<K: Fn(&D::Output) -> u64>(self, span: Duration, key: K) -> Ordered<Self, K> {
        Ordered::new(self, span, key)
    }
}

impl<'a, T> MergedStream<'a, T> {
    /// This stream's records, from all its sources, in the order of `key`: as
    /// [`EventStream::ordered`], with items `(SourceId, Event<T>)`. A record is held until
    /// every source has been seen empty at a time `span` past its key. Priorities then no longer
    /// decide the order of records, only which source is read first.
    ///
    /// ```no_run
    /// # async fn demo(cpu_a: bpfstream::EventSource, cpu_b: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
    /// use futures_util::StreamExt;
    /// use bpfstream::stream::MergedStream;
    /// use bpfstream::typed::Typed;
    /// bpfstream::record! {
    ///     pub struct Exec { pub ts_ns: u64, pub pid: u32 }
    /// }
    /// let mut merged = MergedStream::new()?;
    /// merged.add(cpu_a, 0, Typed::<Exec>::new())?;
    /// merged.add(cpu_b, 0, Typed::<Exec>::new())?;
    /// let span = std::time::Duration::from_millis(10);
    /// let mut events = merged.ordered(span, |e: &Exec| e.ts_ns);
    /// while let Some(item) = events.next().await {
    ///     if let (id, bpfstream::Event::Record(exec)) = item? {
    ///         println!("{} exec by {} from {id:?}", exec.ts_ns, exec.pid);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn ordered<K: Fn(&T) -> u64>(self, span: Duration, key: K) -> Ordered<Self, K> {
        Ordered::new(self, span, key)
    }
}

impl<St: Unordered, K: Fn(&St::Record) -> u64> Ordered<St, K> {
    fn new(inner: St, span: Duration, key: K) -> Self {
        Ordered {
            inner,
            key,
            span: u64::try_from(span.as_nanos()).unwrap_or(u64::MAX),
            held: BTreeMap::new(),
            arrivals: 0,
            bound: 0,
            last_released: None,
            passing: VecDeque::new(),
            error: None,
            ended: false,
            stats: MergeStats::default(),
        }
    }

    /// How many records were held, released in order, late, or released early because too
    /// many were held.
    pub fn merge_stats(&self) -> MergeStats {
        self.stats
    }

    /// The underlying stream (its stats, its source).
    pub fn get_ref(&self) -> &St {
        &self.inner
    }

    /// Holds `event`, a record, by its key (or passes it on if it is late).
    fn hold(&mut self, key: u64, event: St::Event) {
        self.stats.pushed += 1;
        match self.last_released {
            Some(last) if key < last => {
                self.stats.late += 1;
                self.stats.max_behind = self.stats.max_behind.max(last - key);
                self.passing.push_back(event);
            }
            _ => {
                self.arrivals += 1;
                self.held.insert((key, self.arrivals), event);
                self.stats.held = self.held.len();
                self.stats.max_held = self.stats.max_held.max(self.held.len());
            }
        }
    }

    fn released(&mut self) -> Option<St::Event> {
        if let Some(event) = self.passing.pop_front() {
            return Some(event);
        }
        let (&(key, _), _) = self.held.first_key_value()?;
        let forced = self.held.len() > MAX_HELD;
        if !(self.ended || forced || key <= self.bound) {
            return None;
        }
        self.stats.forced += u64::from(forced && !self.ended && key > self.bound);
        let (_, item) = self.held.pop_first()?;
        self.stats.held = self.held.len();
        self.stats.in_order += 1;
        self.last_released = Some(key);
        Some(item)
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

impl<St: Unordered, K> Unpin for Ordered<St, K> {}

impl<St: Unordered, K: Fn(&St::Record) -> u64> Stream for Ordered<St, K> {
    type Item = Result<St::Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.released() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.ended {
                return Poll::Ready(this.error.take().map(Err));
            }
            // The clock before the look at the buffer: a record stamped before it is in the
            // buffer by the time we look (within `span`).
            let now = monotonic_ns();
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => match St::record(&event).map(&this.key) {
                    Some(key) => this.hold(key, event),
                    None => this.passing.push_back(event),
                },
                Poll::Ready(end) => {
                    this.error = end.and_then(Result::err);
                    this.ended = true;
                }
                Poll::Pending => {
                    // Pending with nothing waiting: everything stamped before `now` has been
                    // read. (Pending with records waiting is the scheduler's budget.)
                    if this.inner.is_empty() {
                        this.bound = this.bound.max(now.saturating_sub(this.span));
                    }
                    return this.released().map_or(Poll::Pending, |event| Poll::Ready(Some(Ok(event))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::ops::ControlFlow;
    use std::os::fd::{AsFd, BorrowedFd};

    use futures_util::StreamExt;

    use super::*;
    use crate::stats::Fill;
    use crate::stream::tests::{next_within, runtime};
    use crate::sys::EventFd;
    use crate::typed::Typed;
    use crate::{Item, LossOrigin, Lost, Record};

    /// A source of u64 keys, one per record, and loss reports (`None`); its fd never signals,
    /// so records are found by the stream's own looks and delay timer.
    struct Keys {
        fd: EventFd,
        items: VecDeque<Option<u64>>,
    }

    impl Source for Keys {
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn fill(&self) -> Option<Fill> {
            Some(Fill { used: 8 * self.items.len() as u64, capacity: 4096 })
        }
        fn consume_until(
            &mut self,
            max: usize,
            handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
            let mut n = 0;
            while n < max {
                let Some(item) = self.items.pop_front() else { break };
                let item = match item {
                    Some(key) => Item::Record(Record { data: &key.to_ne_bytes(), cpu: None }),
                    None => Item::Lost(Lost { count: 2, cpu: Some(1), origin: LossOrigin::PerfLostRecord }),
                };
                n += 1;
                if handler(item).is_break() {
                    break;
                }
            }
            Ok(n)
        }
    }

    /// A stream of u64 records ordered by their value.
    type ByValue<St> = Ordered<St, fn(&u64) -> u64>;

    fn ordered(items: &[Option<u64>], span: Duration) -> ByValue<EventStream<Keys, Typed<u64>>> {
        let keys = Keys { fd: EventFd::new().unwrap(), items: items.iter().copied().collect() };
        let mut stream = EventStream::typed::<u64>(keys).unwrap();
        stream.set_max_delay(Some(Duration::from_millis(5)));
        stream.ordered(span, |k: &u64| *k)
    }

    #[test]
    fn a_drained_stream_comes_out_in_key_order_with_losses_first() {
        runtime().block_on(async {
            let now = monotonic_ns();
            // Two CPUs' batches, one after the other, a loss between them.
            let keys = [now + 10, now + 30, now + 50, now + 20, now + 40];
            let mut items: Vec<Option<u64>> = keys.iter().copied().map(Some).collect();
            items.insert(3, None);
            let mut stream = ordered(&items, Duration::from_secs(3600));
            stream.get_ref().cancel_handle().drain();
            let out: Vec<Event<u64>> = (&mut stream).map(Result::unwrap).collect().await;
            let mut sorted = keys.to_vec();
            sorted.sort_unstable();
            let lost = Event::Lost(Lost { count: 2, cpu: Some(1), origin: LossOrigin::PerfLostRecord });
            let mut expected = vec![lost];
            expected.extend(sorted.into_iter().map(Event::Record));
            assert_eq!(out, expected);
            assert_eq!((stream.merge_stats().in_order, stream.merge_stats().late), (5, 0));
        });
    }

    #[test]
    fn records_older_than_the_span_are_released_once_the_buffer_is_empty() {
        runtime().block_on(async {
            let now = monotonic_ns();
            let span = Duration::from_millis(1);
            // Two old records out of order, and one far in the future: held until the end.
            let mut stream =
                ordered(&[Some(now - 2_000_000), Some(now - 3_000_000), Some(now + 3_600_000_000_000)], span);
            let expected = [Event::Record(now - 3_000_000), Event::Record(now - 2_000_000)];
            assert_two_released_one_held(&mut stream, expected).await;
        });
    }

    /// The first two items of `stream` are `expected` (released by the look after the buffers
    /// were found empty, or the delay timer) while one record stays held.
    async fn assert_two_released_one_held<St: Unordered, K: Fn(&St::Record) -> u64>(
        stream: &mut Ordered<St, K>,
        expected: [St::Event; 2],
    ) where
        St::Event: PartialEq + std::fmt::Debug,
    {
        for event in expected {
            assert_eq!(next_within(stream, "a record older than the span stayed held").await.unwrap(), event);
        }
        assert_eq!(stream.merge_stats().held, 1);
    }

    fn merged(sources: &[&[u64]], span: Duration) -> ByValue<MergedStream<'static, u64>> {
        let mut merged = MergedStream::new().unwrap();
        for keys in sources {
            let keys = Keys { fd: EventFd::new().unwrap(), items: keys.iter().copied().map(Some).collect() };
            merged.add(keys, 0, Typed::<u64>::new()).unwrap();
        }
        merged.set_max_delay(Some(Duration::from_millis(5)));
        merged.ordered(span, |k: &u64| *k)
    }

    #[test]
    fn merged_sources_come_out_in_key_order() {
        runtime().block_on(async {
            let now = monotonic_ns();
            // Each source in order; taking turns between them gives 10 5 20 15 30.
            let (a, b) = ([now + 10, now + 20, now + 30], [now + 5, now + 15]);
            let mut stream = merged(&[&a, &b], Duration::from_secs(3600));
            stream.get_ref().cancel_handle().drain();
            let out: Vec<(SourceId, Event<u64>)> = (&mut stream).map(Result::unwrap).collect().await;
            let keys: Vec<u64> = out.iter().map(|(_, e)| *record_in(e).unwrap() - now).collect();
            assert_eq!(keys, [5, 10, 15, 20, 30]);
            let ids: Vec<usize> = out.iter().map(|(id, _)| id.0).collect();
            assert_eq!(ids, [1, 0, 1, 0, 0]);
            assert_eq!((stream.merge_stats().in_order, stream.merge_stats().late), (5, 0));
        });
    }

    #[test]
    fn merged_records_older_than_the_span_are_released_once_every_source_is_empty() {
        runtime().block_on(async {
            let now = monotonic_ns();
            // Taking turns gives -2 ms before -3 ms; the future record is held until the end.
            let (a, b) = ([now - 2_000_000, now + 3_600_000_000_000], [now - 3_000_000]);
            let mut stream = merged(&[&a, &b], Duration::from_millis(1));
            let expected =
                [(SourceId(1), Event::Record(now - 3_000_000)), (SourceId(0), Event::Record(now - 2_000_000))];
            assert_two_released_one_held(&mut stream, expected).await;
        });
    }
}
