//! A stream's records in timestamp order:
//! [`EventStream::ordered`](crate::stream::EventStream::ordered).
//!
//! A perf buffer is a ring per CPU and a stream reads them one after another, so its records
//! come out of timestamp order across CPUs (each CPU's records are in order); a stream over
//! several sources takes turns between them, so its records are out of order across sources
//! too. An ordered stream holds records back in key order and yields them by a key, normally a
//! `bpf_ktime_get_ns()` timestamp in the record: a record is released once the monotonic clock,
//! at a moment the buffers were seen empty, is `span` past it. Drop reports and malformed
//! records are not held: they come out as they arrive.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::stream::{Inputs, Pulled};
use crate::{Error, Event};

/// Most records held at once; past it the oldest is released early.
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
    /// Drop reports, malformed and late records, passed on before any held record.
    passing: VecDeque<Result<Event<T>, Error>>,
    /// The stream's last item, an error: yielded once everything held is out.
    error: Option<Error>,
    /// Wakes the async stream when the first record held is `span` old, for a stream that no
    /// delay timer and no producer's wakeup would wake once its buffers are empty.
    #[cfg(feature = "tokio")]
    pub(crate) release_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
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
            #[cfg(feature = "tokio")]
            release_timer: None,
            ended: false,
        }
    }

    /// What is held or passing, in the order it would have been released.
    pub(crate) fn into_held(self) -> Vec<Result<Event<T>, Error>> {
        self.passing.into_iter().chain(self.held.into_values().map(Ok)).chain(self.error.map(Err)).collect()
    }

    /// Takes an item of the inputs: a record is held by its key (or passed on if it is late),
    /// anything else passed on; an error other than a malformed record is the last item.
    pub(crate) fn accept(&mut self, pulled: Pulled<T>) {
        match pulled {
            Pulled::Item(Ok(Event::Record(record))) => {
                let key = (self.key)(&record);
                match self.last_released {
                    Some(last) if key < last => self.passing.push_back(Ok(Event::Record(record))),
                    _ => {
                        self.arrivals += 1;
                        self.held.insert((key, self.arrivals), Event::Record(record));
                    }
                }
            }
            Pulled::Item(item @ (Ok(Event::Dropped(_)) | Err(Error::Malformed { .. }))) => self.passing.push_back(item),
            Pulled::Item(Err(error)) => self.error = Some(error),
            Pulled::End => self.ended = true,
            Pulled::Nothing => {}
        }
    }

    /// The next item that may go out: passing ones first, then held records whose turn has
    /// come; at the end, everything held and then the error.
    pub(crate) fn released(&mut self) -> Option<Result<Event<T>, Error>> {
        if let Some(item) = self.passing.pop_front() {
            return Some(item);
        }
        match self.held.first_key_value() {
            Some((&(key, _), _)) if self.ended || self.held.len() > MAX_HELD || key <= self.bound => {
                self.last_released = Some(key);
                self.held.pop_first().map(|(_, event)| Ok(event))
            }
            Some(_) => None,
            None if self.ended => self.error.take().map(Err),
            None => None,
        }
    }

    /// Whether the stream is over: ended, and nothing left to release.
    pub(crate) fn is_over(&self) -> bool {
        self.ended && self.passing.is_empty() && self.held.is_empty() && self.error.is_none()
    }

    /// The buffers were seen empty by a look that started at `now`: everything stamped `span`
    /// before it has been read.
    pub(crate) fn seen_empty(&mut self, now: u64) {
        self.bound = self.bound.max(now.saturating_sub(self.span));
    }

    /// How long until the first record held is due at `now` (`span` past its key), if one is
    /// held; a key beyond the clock is looked at again every `span`.
    pub(crate) fn due_in(&self, now: u64) -> Option<Duration> {
        let (&(key, _), _) = self.held.first_key_value()?;
        Some(Duration::from_nanos(key.saturating_add(self.span).saturating_sub(now).clamp(1, self.span.max(1))))
    }

    /// The next item in key order, waiting until `deadline` at most: the blocking pull.
    pub(crate) fn pull_blocking(
        &mut self,
        inputs: &mut Inputs<T>,
        deadline: Option<Instant>,
    ) -> Result<Pulled<T>, Error> {
        loop {
            if let Some(item) = self.released() {
                return Ok(Pulled::Item(item));
            }
            if self.is_over() {
                return Ok(Pulled::End);
            }
            // The clock before the look at the buffers: a record stamped before it is in a
            // buffer by the time we look (within `span`).
            let now = monotonic_ns();
            match inputs.pull_blocking(Some(Instant::now()))? {
                Pulled::Nothing => {}
                pulled => {
                    self.accept(pulled);
                    continue;
                }
            }
            if inputs.is_empty() {
                self.seen_empty(now);
            }
            if let Some(item) = self.released() {
                return Ok(Pulled::Item(item));
            }
            let due = self.due_in(now).map(|wait| Instant::now() + wait);
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(Pulled::Nothing);
            }
            let until = [deadline, due].into_iter().flatten().min();
            self.accept(inputs.pull_blocking(until)?);
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::ops::ControlFlow;
    use std::os::fd::{AsFd, BorrowedFd};

    use super::*;
    use crate::poller::Source;
    use crate::stream::EventStream;
    use crate::sys::EventFd;
    use crate::{DropOrigin, Dropped, Fill, FromRecord, Record};

    /// A source of u64 keys, one per record, and drop reports (`None`); its fd never signals,
    /// so records are found by the stream's own looks and delay timer.
    pub(crate) struct Keys {
        fd: EventFd,
        items: VecDeque<Option<u64>>,
    }

    impl Source for Keys {
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn fill(&self) -> Option<Fill> {
            Some(Fill { used: 8 * self.items.len() as u64, capacity: 4096, ..Fill::default() })
        }
        fn consume_until(
            &mut self,
            max: usize,
            handler: &mut dyn FnMut(Event<Record<'_>>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
            let mut n = 0;
            while n < max {
                let Some(item) = self.items.pop_front() else { break };
                let event = match item {
                    Some(key) => Event::Record(Record { data: &key.to_ne_bytes(), cpu: None }),
                    None => Event::Dropped(DROPPED),
                };
                n += 1;
                if handler(event).is_break() {
                    break;
                }
            }
            Ok(n)
        }
    }

    pub(crate) const DROPPED: Dropped = Dropped { count: 2, cpu: Some(1), origin: DropOrigin::PerfLostRecord };

    /// The decoder of a `Keys` record: the key.
    pub(crate) fn key_of(r: Record<'_>) -> Result<u64, Error> {
        u64::from_record(r.data)
    }

    pub(crate) fn keys(items: impl IntoIterator<Item = Option<u64>>) -> Box<Keys> {
        Box::new(Keys { fd: EventFd::new().unwrap(), items: items.into_iter().collect() })
    }

    /// A stream of u64 records ordered by their value.
    pub(crate) fn ordered(items: &[Option<u64>], span: Duration) -> EventStream<u64> {
        let mut stream = EventStream::from_source(keys(items.iter().copied()), Box::new(key_of)).unwrap();
        stream.set_max_delay(Some(Duration::from_millis(5)));
        stream.ordered(span, |k: &u64| *k)
    }

    /// Sources of keys merged into one ordered stream of (source index, key).
    pub(crate) fn merged(sources: &[&[u64]], span: Duration) -> EventStream<(u8, u64)> {
        let tagged = |source: u8| Box::new(move |r: Record<'_>| key_of(r).map(|key| (source, key)));
        let mut stream = EventStream::from_source(keys(sources[0].iter().copied().map(Some)), tagged(0)).unwrap();
        for (index, source) in sources.iter().enumerate().skip(1) {
            stream.add_source(keys(source.iter().copied().map(Some)), 0, tagged(index as u8)).unwrap();
        }
        stream.set_max_delay(Some(Duration::from_millis(5)));
        stream.ordered(span, |(_, key): &(u8, u64)| *key)
    }

    /// Everything a stream yields through the blocking pull until it ends.
    fn pulled<T: 'static>(stream: &mut EventStream<T>) -> Vec<Event<T>> {
        std::iter::from_fn(|| stream.next_blocking(Some(Duration::from_secs(10))).unwrap()).collect()
    }

    /// Keys `now + 10, 30, 50` from one CPU and `now + 20, 40` from another, read one CPU's
    /// batch after the other, a drop report between them.
    pub(crate) fn two_cpus(now: u64) -> (Vec<Option<u64>>, Vec<Event<u64>>) {
        let keys = [now + 10, now + 30, now + 50, now + 20, now + 40];
        let mut items: Vec<Option<u64>> = keys.iter().copied().map(Some).collect();
        items.insert(3, None);
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let mut expected = vec![Event::Dropped(DROPPED)];
        expected.extend(sorted.into_iter().map(Event::Record));
        (items, expected)
    }

    #[test]
    fn a_drained_stream_comes_out_in_key_order_with_drops_first() {
        let (items, expected) = two_cpus(monotonic_ns());
        let mut stream = ordered(&items, Duration::from_secs(3600));
        stream.stop_handle().drain();
        assert_eq!(pulled(&mut stream), expected);
    }

    #[test]
    fn merged_sources_come_out_in_key_order() {
        let now = monotonic_ns();
        // Each source in order; taking turns between them gives 10 5 20 15 30.
        let (a, b) = ([now + 10, now + 20, now + 30], [now + 5, now + 15]);
        let mut stream = merged(&[&a, &b], Duration::from_secs(3600));
        stream.stop_handle().drain();
        let records: Vec<(u8, u64)> = pulled(&mut stream)
            .into_iter()
            .map(|e| match e {
                Event::Record((source, key)) => (source, key - now),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(records, [(1, 5), (0, 10), (1, 15), (0, 20), (0, 30)]);
    }

    #[test]
    fn records_older_than_the_span_are_released_once_the_buffer_is_empty() {
        let now = monotonic_ns();
        // Two old records out of order, and one far in the future: held until the end.
        let mut stream = ordered(
            &[Some(now - 2_000_000), Some(now - 3_000_000), Some(now + 3_600_000_000_000)],
            Duration::from_millis(1),
        );
        for key in [now - 3_000_000, now - 2_000_000] {
            assert_eq!(stream.next_blocking(Some(Duration::from_secs(10))).unwrap(), Some(Event::Record(key)));
        }
        assert_eq!(stream.next_blocking(Some(Duration::from_millis(20))).unwrap(), None, "the future record is held");
    }

    /// No delay timer and no producer's wakeup to come (the buffer is empty): the record held
    /// is released once it is `span` old all the same.
    #[test]
    fn a_held_record_is_released_by_the_blocking_pull_without_a_delay_timer() {
        let mut stream = EventStream::from_source(keys([Some(monotonic_ns())]), Box::new(key_of)).unwrap();
        stream.set_max_delay(None);
        let mut stream = stream.ordered(Duration::from_millis(10), |k: &u64| *k);
        let event = stream.next_blocking(Some(Duration::from_secs(10))).unwrap();
        assert!(matches!(event, Some(Event::Record(_))), "the held record was never released: {event:?}");
    }
}
