//! An async stream's records in timestamp order (feature `tokio`):
//! [`EventStream::ordered`](crate::stream::EventStream::ordered).
//!
//! A perf buffer is a ring per CPU and a stream reads them one after another, so its records
//! come out of timestamp order across CPUs (each CPU's records are in order); a stream over
//! several sources takes turns between them, so its records are out of order across sources
//! too. An ordered stream holds records back in key order and yields them by a key, normally a
//! `bpf_ktime_get_ns()` timestamp in the record: a record is released once the monotonic clock,
//! at a moment the buffers were seen empty, is `span` past it. Losses and malformed records are
//! not held: they come out as they arrive.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::merge::MergeStats;
use crate::stream::Inputs;
use crate::{Error, Event};

/// Most records held at once; past it the oldest is released early (counted as `forced`).
const MAX_HELD: usize = 1 << 16;

/// The reordering stage of an ordered [`EventStream`](crate::stream::EventStream).
pub(crate) struct Reorder<T> {
    key: Box<dyn Fn(&T) -> u64 + Send>,
    span: u64,
    /// Held records by (key, arrival): equal keys keep their arrival order.
    held: BTreeMap<(u64, u64), Event<T>>,
    arrivals: u64,
    /// Keys up to this can be released: the clock, less `span`, when the buffers were last seen
    /// empty.
    bound: u64,
    last_released: Option<u64>,
    /// Losses, malformed and late records, passed on before any held record.
    passing: VecDeque<Event<T>>,
    /// The stream's last item, an error: yielded once everything held is out.
    error: Option<Error>,
    /// Wakes the stream when the first record held is `span` old, for a stream that no delay
    /// timer and no producer's wakeup would wake once its buffers are empty.
    release_timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
    stats: MergeStats,
}

impl<T> Reorder<T> {
    pub(crate) fn new(span: Duration, key: Box<dyn Fn(&T) -> u64 + Send>) -> Self {
        Reorder {
            key,
            span: u64::try_from(span.as_nanos()).unwrap_or(u64::MAX),
            held: BTreeMap::new(),
            arrivals: 0,
            bound: 0,
            last_released: None,
            passing: VecDeque::new(),
            error: None,
            release_timer: None,
            ended: false,
            stats: MergeStats::default(),
        }
    }

    /// How many records were held, released in order, late, or released early.
    pub(crate) fn stats(&self) -> MergeStats {
        self.stats
    }

    /// What is held or passing, in the order it would have been released.
    pub(crate) fn into_held(self) -> Vec<Event<T>> {
        self.passing.into_iter().chain(self.held.into_values()).collect()
    }

    /// Holds `event`, a record, by its key (or passes it on if it is late).
    fn hold(&mut self, key: u64, event: Event<T>) {
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

    fn released(&mut self) -> Option<Event<T>> {
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

    /// The next event of `inputs` in key order.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        inputs: &mut Inputs<T>,
    ) -> Poll<Option<Result<Event<T>, Error>>> {
        loop {
            if let Some(event) = self.released() {
                return Poll::Ready(Some(Ok(event)));
            }
            if self.ended {
                return Poll::Ready(self.error.take().map(Err));
            }
            // The clock before the look at the buffers: a record stamped before it is in a
            // buffer by the time we look (within `span`).
            let now = monotonic_ns();
            match inputs.poll_next(cx) {
                Poll::Ready(Some(Ok(Event::Record(record)))) => {
                    let key = (self.key)(&record);
                    self.hold(key, Event::Record(record));
                }
                Poll::Ready(Some(Ok(event))) => self.passing.push_back(event),
                Poll::Ready(end) => {
                    self.error = end.and_then(Result::err);
                    self.ended = true;
                }
                Poll::Pending => {
                    // Pending with nothing waiting: everything stamped before `now` has been
                    // read. (Pending with records waiting is the scheduler's budget.)
                    if inputs.is_empty() {
                        self.bound = self.bound.max(now.saturating_sub(self.span));
                    }
                    if let Some(event) = self.released() {
                        return Poll::Ready(Some(Ok(event)));
                    }
                    if !self.release_due(cx, now) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<T> Reorder<T> {
    /// Whether the first record held is due now (`span` past its key at `now`); if not, arms the
    /// release timer for when it will be, so that the stream is woken then (`cx`). A key beyond
    /// the clock is looked at again every `span`.
    fn release_due(&mut self, cx: &mut Context<'_>, now: u64) -> bool {
        let Some((&(key, _), _)) = self.held.first_key_value() else {
            self.release_timer = None;
            return false;
        };
        let wait = key.saturating_add(self.span).saturating_sub(now).clamp(1, self.span.max(1));
        let at = tokio::time::Instant::now() + Duration::from_nanos(wait);
        let timer = self.release_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.release_timer = None;
            return true;
        }
        false
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::ops::ControlFlow;
    use std::os::fd::{AsFd, BorrowedFd};

    use futures_util::StreamExt;

    use super::*;
    use crate::poller::Source;
    use crate::stats::Fill;
    use crate::stream::tests::{next_within, runtime};
    use crate::stream::EventStream;
    use crate::sys::EventFd;
    use crate::{FromRecord, Item, LossOrigin, Lost, Record};

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

    /// The decoder of a `Keys` record: the key.
    fn key_of(r: Record<'_>) -> Result<u64, crate::TypedError> {
        u64::from_record(r.data)
    }

    fn keys(items: impl IntoIterator<Item = Option<u64>>) -> Box<Keys> {
        Box::new(Keys { fd: EventFd::new().unwrap(), items: items.into_iter().collect() })
    }

    /// A stream of u64 records ordered by their value.
    fn ordered(items: &[Option<u64>], span: Duration) -> EventStream<u64> {
        let mut stream = EventStream::from_source(keys(items.iter().copied()), Box::new(key_of)).unwrap();
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
            stream.stop_handle().drain();
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

    /// No delay timer and no producer's wakeup to come (the buffer is empty): the record held
    /// is released once it is `span` old all the same.
    #[test]
    fn a_held_record_is_released_without_a_delay_timer() {
        runtime().block_on(async {
            let mut stream = EventStream::from_source(keys([Some(monotonic_ns())]), Box::new(key_of)).unwrap();
            stream.set_max_delay(None);
            let mut stream = stream.ordered(Duration::from_millis(10), |k: &u64| *k);
            let event = next_within(&mut stream, "the held record was never released").await.unwrap();
            assert!(matches!(event, Event::Record(_)), "{event:?}");
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
            assert_two_released_one_held(&mut stream, [now - 3_000_000, now - 2_000_000]).await;
        });
    }

    /// The first two items of `stream` are `expected` (released by the look after the buffers
    /// were found empty, or the delay timer) while one record stays held.
    async fn assert_two_released_one_held<T: PartialEq + std::fmt::Debug + 'static>(
        stream: &mut EventStream<T>,
        expected: [T; 2],
    ) {
        for record in expected {
            let event = next_within(stream, "a record older than the span stayed held").await.unwrap();
            assert_eq!(event, Event::Record(record));
        }
        assert_eq!(stream.merge_stats().held, 1);
    }

    /// Sources of keys merged into one ordered stream of (source index, key).
    fn merged(sources: &[&[u64]], span: Duration) -> EventStream<(u8, u64)> {
        let tagged = |source: u8| Box::new(move |r: Record<'_>| key_of(r).map(|key| (source, key)));
        let mut stream = EventStream::from_source(keys(sources[0].iter().copied().map(Some)), tagged(0)).unwrap();
        for (index, source) in sources.iter().enumerate().skip(1) {
            stream.add_source(keys(source.iter().copied().map(Some)), 0, tagged(index as u8)).unwrap();
        }
        stream.set_max_delay(Some(Duration::from_millis(5)));
        stream.ordered(span, |(_, key): &(u8, u64)| *key)
    }

    #[test]
    fn merged_sources_come_out_in_key_order() {
        runtime().block_on(async {
            let now = monotonic_ns();
            // Each source in order; taking turns between them gives 10 5 20 15 30.
            let (a, b) = ([now + 10, now + 20, now + 30], [now + 5, now + 15]);
            let mut stream = merged(&[&a, &b], Duration::from_secs(3600));
            stream.stop_handle().drain();
            let out: Vec<Event<(u8, u64)>> = (&mut stream).map(Result::unwrap).collect().await;
            let records: Vec<(u8, u64)> = out
                .iter()
                .map(|e| match e {
                    Event::Record((source, key)) => (*source, key - now),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(records, [(1, 5), (0, 10), (1, 15), (0, 20), (0, 30)]);
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
            assert_two_released_one_held(&mut stream, [(1, now - 3_000_000), (0, now - 2_000_000)]).await;
        });
    }
}
