//! One epoll set over many sources, each with its own handler and priority: [`Poller`].

use std::fmt;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ringbuf::BUSY_BACKOFF;
use crate::stats::{Fill, Stats};
use crate::stop::{Control, StopHandle, CANCEL, RUNNING};
use crate::sys::{Epoll, EventFd};
use crate::{sys, Error, EventSource, Failure, Flow, Item, Totals};

/// Something the [`Poller`] can wait on and read.
pub(crate) trait Source {
    /// A descriptor that polls readable when the source has data for us.
    fn poll_fd(&self) -> BorrowedFd<'_>;

    /// Hands at most `max` records (and any loss reports) to `handler` without blocking;
    /// returns the number of records. `handler` can end the pass after any item by returning
    /// [`ControlFlow::Break`]: what was handed over is consumed, the rest stays in the buffer
    /// (the async streams use it to take exactly one item out of the kernel's buffer per item
    /// they yield).
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<usize, Error>;

    /// [`consume_until`](Self::consume_until) for a handler of a known type: a source whose
    /// consume loop is generic overrides it, so that the loop inlines the handler (the
    /// [`Poller`] erases a handler's type once per batch, not per record).
    fn consume_with<H>(&mut self, max: usize, mut handler: H) -> Result<usize, Error>
    where
        Self: Sized,
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        self.consume_until(max, &mut handler)
    }

    /// [`drain_items`](Self::drain_items) for a handler of a known type (see
    /// [`consume_with`](Self::consume_with)).
    fn drain_with<H>(&mut self, mut handler: H) -> Result<usize, Error>
    where
        Self: Sized,
        H: FnMut(Item<'_>),
    {
        self.drain_items(&mut handler)
    }

    /// One round of an exact stop ([`EventSource::finish`], after the grace period the caller
    /// waited for): the source's totals, and whether the handler stopped. The default, for
    /// sources without counters: everything left, and empty totals.
    fn settle_with<H>(&mut self, deadline: Instant, handler: H) -> Result<(Totals, bool), Error>
    where
        Self: Sized,
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        let _ = deadline;
        let mut handler = handler;
        let mut stopped = false;
        self.drain_items(&mut |item: Item<'_>| stopped |= handler(item).is_break())?;
        Ok((Totals::default(), stopped))
    }

    /// Hands over everything left, for shutdown. The default consumes until empty;
    /// [`EventSource`] also reads its drop counters one last time ([`EventSource::finish`]).
    fn drain_items(&mut self, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let n = self.consume_until(usize::MAX, &mut |item: Item<'_>| {
                handler(item);
                ControlFlow::Continue(())
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Bytes waiting and capacity, if the source knows (the async streams publish it in their
    /// [`Stats`](crate::Stats)). The default: unknown.
    fn fill(&self) -> Option<Fill> {
        None
    }

    /// Whether records wait that no coming wakeup of [`poll_fd`](Self::poll_fd) is certain to
    /// announce: the poller then does not sleep. The poller waits edge-triggered (a ring buffer's
    /// fd stays readable while anything waits, which would turn every wait into a spin), so a
    /// source must say here what it holds that no wakeup will report. The default: anything
    /// waiting, if [`fill`](Self::fill) knows.
    fn ready_now(&self) -> bool {
        self.fill().is_some_and(|f| f.used > 0)
    }

    /// Whether the record at the head of the buffer is still being written (a ring's BUSY
    /// record): what waits behind it cannot be taken yet, and its commit may send no wakeup, so
    /// the poller looks again after [`BUSY_BACKOFF`] rather than at once. The default: no.
    fn head_is_busy(&self) -> bool {
        false
    }

    /// Whether the producers signal [`poll_fd`](Self::poll_fd) for the records they write.
    /// `false` for a ring buffer told [`WakeupPolicy::Never`](crate::WakeupPolicy::Never)
    /// ([`EventSource::expect_wakeups`]): the async streams then keep a delay timer whatever
    /// `set_max_delay` says, since nothing else would ever wake them. The default: `true`.
    #[cfg(feature = "tokio")]
    fn sends_wakeups(&self) -> bool {
        true
    }

    /// Told after every wait of a [`Poller`] whether this source's descriptor signalled, for
    /// sources that keep [`Stats`](crate::Stats). The default ignores it.
    fn note_wait(&mut self, signalled: bool) {
        let _ = signalled;
    }

    /// What the source has accounted for, if it keeps [`Totals`](crate::Totals)
    /// ([`EventSource`] does). The default: nothing.
    fn totals(&self) -> Option<crate::Totals> {
        None
    }

    /// The source as an [`EventSource`], if it is one (to give it back from a stream).
    #[cfg(feature = "tokio")]
    fn into_event_source(self: Box<Self>) -> Option<EventSource> {
        None
    }
}

impl Source for EventSource {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn ready_now(&self) -> bool {
        EventSource::ready_now(self)
    }
    fn head_is_busy(&self) -> bool {
        EventSource::head_is_busy(self)
    }
    #[cfg(feature = "tokio")]
    fn sends_wakeups(&self) -> bool {
        EventSource::sends_wakeups(self)
    }
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<usize, Error> {
        self.consume_n(max, handler)
    }
    fn drain_items(&mut self, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        self.drain_with(handler)
    }
    fn consume_with<H>(&mut self, max: usize, handler: H) -> Result<usize, Error>
    where
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        self.consume_n(max, handler)
    }
    fn drain_with<H>(&mut self, handler: H) -> Result<usize, Error>
    where
        H: FnMut(Item<'_>),
    {
        let before = self.totals().delivered;
        let after = self.drain(handler)?.delivered;
        Ok((after - before) as usize)
    }
    fn settle_with<H>(&mut self, deadline: Instant, handler: H) -> Result<(Totals, bool), Error>
    where
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        self.settle(deadline, handler)
    }
    fn fill(&self) -> Option<Fill> {
        Some(EventSource::fill(self))
    }
    fn totals(&self) -> Option<crate::Totals> {
        Some(EventSource::totals(self))
    }
    #[cfg(feature = "tokio")]
    fn into_event_source(self: Box<Self>) -> Option<EventSource> {
        Some(*self)
    }
    fn note_wait(&mut self, signalled: bool) {
        self.note_wait(signalled);
    }
}

/// How the poller serves one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceOptions {
    /// Higher is served first, and again before every batch of a lower-priority source.
    priority: i32,
    /// Records per batch (the weight in a round). `usize::MAX`: everything available.
    batch: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { priority: 0, batch: usize::MAX }
    }
}

/// Identifies a source added to a [`Poller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(pub(crate) usize);

/// A source and its handler, type-erased together: one dynamic call per batch, with the
/// source's consume loop compiled for the handler inside it.
trait Lane {
    fn source(&self) -> &dyn Source;
    fn source_mut(&mut self) -> &mut dyn Source;
    /// One batch of at most `max` records: how many, and whether the handler stopped. A handler
    /// that fails keeps its error in `failure`.
    fn serve(&mut self, max: usize, failure: &mut Failure) -> Result<(usize, bool), Error>;
    /// Everything left ([`Source::drain_with`]), past a handler that stops; its first error
    /// goes to `failure`.
    fn drain(&mut self, failure: &mut Failure) -> Result<usize, Error>;
    /// One round of an exact stop ([`Source::settle_with`]): the totals, and whether the handler
    /// stopped (its error goes to `failure`).
    fn settle(&mut self, deadline: Instant, failure: &mut Failure) -> Result<(Totals, bool), Error>;
}

struct Served<'a, S, H> {
    source: &'a mut S,
    handler: H,
}

impl<S: Source, F: Flow, H: FnMut(Item<'_>) -> F> Lane for Served<'_, S, H> {
    fn source(&self) -> &dyn Source {
        self.source
    }
    fn source_mut(&mut self) -> &mut dyn Source {
        self.source
    }
    fn serve(&mut self, max: usize, failure: &mut Failure) -> Result<(usize, bool), Error> {
        let handler = &mut self.handler;
        let mut stopped = false;
        let served = self.source.consume_with(max, |item: Item<'_>| {
            let flow = failure.check(handler(item));
            stopped |= flow.is_break();
            flow
        })?;
        Ok((served, stopped))
    }
    fn drain(&mut self, failure: &mut Failure) -> Result<usize, Error> {
        let handler = &mut self.handler;
        self.source.drain_with(|item: Item<'_>| {
            let _ = failure.check(handler(item));
        })
    }
    fn settle(&mut self, deadline: Instant, failure: &mut Failure) -> Result<(Totals, bool), Error> {
        let handler = &mut self.handler;
        self.source.settle_with(deadline, |item: Item<'_>| failure.check(handler(item)))
    }
}

struct Entry<'a> {
    lane: Box<dyn Lane + 'a>,
    options: SourceOptions,
    id: SourceId,
}

/// The epoll token of the stop handle's eventfd.
const STOP_TOKEN: u64 = u64::MAX;

/// One epoll set over many [`EventSource`]s (ring and perf buffers together), each with its
/// own handler and priority.
///
/// ```no_run
/// # fn demo(mut ring: bpfstream::EventSource, mut perf: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
/// use std::time::Duration;
/// use bpfstream::{Item, Poller};
///
/// let (mut from_ring, mut from_perf) = (0u64, 0u64);
/// let mut poller = Poller::new()?;
/// poller.add(&mut ring, |item: Item<'_>| if let Item::Record(_) = item { from_ring += 1 })?;
/// poller.add(&mut perf, |item: Item<'_>| if let Item::Record(_) = item { from_perf += 1 })?;
/// let stop = poller.stop_handle(); // Send + Clone: call stop.drain() from a signal thread
/// # stop.drain();
/// poller.run(Duration::from_millis(100))?; // until stopped, then a final drain
/// # Ok(()) }
/// ```
///
/// Every poll serves every source (the check of an empty buffer is two memory loads), so the
/// poll timeout bounds how long a record can wait even when its producer never wakes us.
/// Sources are served by priority: before a lower-priority source gets its batch, all
/// higher-priority sources are served again, so a flood in a bulk source cannot delay a
/// critical one by more than one batch.
///
/// Not `Send`: handlers may borrow anything, including state that is not `Send` (see the crate
/// docs, "Threads"). Minimum kernel: that of its sources (5.8 for a ring, 4.4 for perf).
pub struct Poller<'a> {
    epoll: Epoll,
    control: Arc<Control>,
    entries: Vec<Entry<'a>>,
    ready: Vec<u64>,
    /// The source whose handler stopped the last poll or consume.
    stopped_by: Option<SourceId>,
    stats: Stats,
}

impl fmt::Debug for Poller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").field("sources", &self.entries.len()).field("stop", &self.control.request()).finish()
    }
}

impl<'a> Poller<'a> {
    /// An empty poller.
    pub fn new() -> Result<Self, Error> {
        let epoll = Epoll::new()?;
        let stop_fd = EventFd::new()?;
        epoll.add(stop_fd.as_fd(), STOP_TOKEN)?;
        let control = Arc::new(Control::with_fd(stop_fd));
        Ok(Poller { epoll, control, entries: Vec::new(), ready: Vec::new(), stopped_by: None, stats: Stats::default() })
    }

    /// Adds a source with default options; `handler` receives its records and loss reports.
    /// Both may borrow local state for `'a`. The handler returns `()`, or a [`Flow`] that stops
    /// the poll after this item ([`stopped_by`](Self::stopped_by) then names the source) or
    /// fails it ([`Error::Handler`]).
    pub fn add<F: Flow>(
        &mut self,
        source: &'a mut EventSource,
        handler: impl FnMut(Item<'_>) -> F + 'a,
    ) -> Result<SourceId, Error> {
        self.add_source(source, SourceOptions::default(), handler)
    }

    /// Adds a source with a `priority` (higher is served first, and again before every batch of
    /// a lower-priority source; the default is 0) and a `batch` size (records per turn;
    /// `usize::MAX`, the default: everything available).
    pub fn add_with<F: Flow>(
        &mut self,
        source: &'a mut EventSource,
        priority: i32,
        batch: usize,
        handler: impl FnMut(Item<'_>) -> F + 'a,
    ) -> Result<SourceId, Error> {
        self.add_source(source, SourceOptions { priority, batch }, handler)
    }

    /// Adds anything that is a [`Source`] (the crate's tests add simulated ones).
    pub(crate) fn add_source<S: Source, F: Flow>(
        &mut self,
        source: &'a mut S,
        options: SourceOptions,
        handler: impl FnMut(Item<'_>) -> F + 'a,
    ) -> Result<SourceId, Error> {
        let id = SourceId(self.entries.len());
        self.epoll.add_edge_triggered(source.poll_fd(), id.0 as u64)?;
        self.entries.push(Entry { lane: Box::new(Served { source, handler }), options, id });
        // Stable: equal priorities keep their insertion order.
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.options.priority));
        Ok(id)
    }

    /// A handle that stops this poller from another thread: [`run`](Self::run) then returns,
    /// after a final drain unless it was [`cancel`](StopHandle::cancel)led.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.control))
    }

    /// Whether a [`StopHandle`] has asked this poller to stop, or a handler stopped the last
    /// poll.
    pub fn is_stopped(&self) -> bool {
        self.control.request() != RUNNING || self.stopped_by.is_some()
    }

    /// The source whose handler stopped the last [`poll`](Self::poll) or
    /// [`consume`](Self::consume) (`None`: it served every source).
    pub fn stopped_by(&self) -> Option<SourceId> {
        self.stopped_by
    }

    /// Waits up to `timeout` (`None`: until a source signals or a stop is asked), then serves
    /// every source by priority. Returns the number of records handled; why it returned is
    /// [`is_stopped`](Self::is_stopped) (a [`StopHandle`]) and [`stopped_by`](Self::stopped_by) (a
    /// handler), or the error of a handler that failed ([`Error::Handler`]). A signal
    /// interrupting the wait (EINTR) is not an error.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<usize, Error> {
        let wait = self.wait_for(timeout);
        self.epoll.wait(wait, &mut self.ready)?;
        if self.ready.iter().any(|&token| token != STOP_TOKEN) {
            self.stats.wakeups += 1;
        } else if self.ready.is_empty() {
            self.stats.timeouts += 1;
        }
        if let Some(fd) = self.control.fd().filter(|_| self.ready.contains(&STOP_TOKEN)) {
            fd.clear();
        }
        for entry in &mut self.entries {
            entry.lane.source_mut().note_wait(self.ready.contains(&(entry.id.0 as u64)));
        }
        self.consume()
    }

    /// How long [`poll`](Self::poll) may wait: not at all while a source holds records no wakeup
    /// may announce, at most [`BUSY_BACKOFF`] while one waits behind a record still being
    /// written (taking nothing now, but not to be left for a whole timeout), else `timeout`.
    fn wait_for(&self, timeout: Option<Duration>) -> Option<Duration> {
        let sources = || self.entries.iter().map(|e| e.lane.source());
        if sources().any(|s| s.ready_now() && !s.head_is_busy()) {
            Some(Duration::ZERO)
        } else if sources().any(|s| s.head_is_busy()) {
            Some(timeout.map_or(BUSY_BACKOFF, |t| t.min(BUSY_BACKOFF)))
        } else {
            timeout
        }
    }

    /// Serves every source once, by priority, without blocking (until a handler stops).
    pub fn consume(&mut self) -> Result<usize, Error> {
        self.stopped_by = None;
        let mut total = 0;
        for i in 0..self.entries.len() {
            total += self.serve(i)?;
            // Strict priority: higher-priority sources get another turn before lower ones.
            let priority = self.entries[i].options.priority;
            for j in 0..i {
                if self.entries[j].options.priority > priority && self.stopped_by.is_none() {
                    total += self.serve(j)?;
                }
            }
            if self.stopped_by.is_some() {
                break;
            }
        }
        Ok(total)
    }

    fn serve(&mut self, index: usize) -> Result<usize, Error> {
        let entry = &mut self.entries[index];
        let mut failure = Failure::default();
        let served = entry.lane.serve(entry.options.batch, &mut failure);
        let served = served.map(|(n, stopped)| {
            if stopped {
                self.stopped_by = Some(entry.id);
            }
            self.stats.events += n as u64;
            n
        });
        failure.result(served)
    }

    /// Polls (each wait at most `max_delay`, the bound on delivery delay) until a [`StopHandle`]
    /// asks, then drains every source (unless it asked to cancel). Returns the number of records handled.
    /// A handler that stops it ends it at once, without the drain.
    pub fn run(&mut self, max_delay: Duration) -> Result<usize, Error> {
        let mut total = 0;
        while self.control.request() == RUNNING {
            total += self.poll(Some(max_delay))?;
            if self.stopped_by.is_some() {
                return Ok(total);
            }
        }
        if self.control.request() == CANCEL {
            return Ok(total);
        }
        Ok(total + self.drain()?)
    }

    /// The exact end of every source, once the caller has detached every program that writes
    /// to them: [`EventSource::finish`] for all of them at once (one grace period per round for
    /// all, the sources by priority, each to its own snapshot of its counters, until two
    /// snapshots of every source agree), by `deadline`. Returns each source's final [`Totals`],
    /// in the order the sources were added. A handler that stops ends its source's part of the
    /// round; the first handler error is returned once every source had its round.
    pub fn finish(&mut self, deadline: Instant) -> Result<Vec<(SourceId, Totals)>, Error> {
        let mut previous: Vec<Option<Option<u64>>> = vec![None; self.entries.len()];
        let mut failure = Failure::default();
        loop {
            sys::wait_for_running_programs();
            let mut settled = true;
            for (entry, previous) in self.entries.iter_mut().zip(&mut previous) {
                let (totals, stopped) = entry.lane.settle(deadline, &mut failure)?;
                let produced = Some(totals.produced);
                settled &= stopped || totals.produced.is_none() || *previous == produced;
                *previous = produced;
            }
            if settled || Instant::now() >= deadline {
                break;
            }
        }
        let mut totals: Vec<(SourceId, Totals)> =
            self.entries.iter().map(|e| (e.id, e.lane.source().totals().unwrap_or_default())).collect();
        totals.sort_by_key(|(id, _)| id.0);
        failure.result(Ok(totals))
    }

    /// Hands over everything still buffered in every source (highest priority first). The
    /// drain goes on past a handler that stops; the first handler error is returned at the end.
    fn drain(&mut self) -> Result<usize, Error> {
        let mut total = 0;
        let mut failure = Failure::default();
        for entry in &mut self.entries {
            total += entry.lane.drain(&mut failure)?;
        }
        failure.result(Ok(total))
    }

    /// The poller's own counts so far: `events` (records handed to handlers), `wakeups` (waits
    /// ended by a source's signal) and `timeouts` (waits that ended with no signal; a wait ended
    /// by the [`StopHandle`] alone is neither). Bytes, losses and fill are each source's own
    /// ([`EventSource::stats`]).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The sources in the order they are served.
    #[cfg(test)]
    fn sources(&self) -> Vec<(SourceId, SourceOptions)> {
        self.entries.iter().map(|e| (e.id, e.options)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;
    use crate::Record;

    /// A source over a queue of numbers, readable through an eventfd the test signals.
    struct Queue {
        items: Rc<RefCell<VecDeque<u32>>>,
        fd: Rc<EventFd>,
    }

    impl Queue {
        fn new(items: impl IntoIterator<Item = u32>) -> (Self, Rc<RefCell<VecDeque<u32>>>) {
            let items = Rc::new(RefCell::new(items.into_iter().collect()));
            (Queue { items: Rc::clone(&items), fd: Rc::new(EventFd::new().unwrap()) }, items)
        }
    }

    impl Source for Queue {
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn consume_until(
            &mut self,
            max: usize,
            handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
            let mut n = 0;
            while n < max {
                let Some(x) = self.items.borrow_mut().pop_front() else { break };
                n += 1;
                if handler(Item::Record(Record { data: &x.to_ne_bytes(), cpu: None })).is_break() {
                    break;
                }
            }
            Ok(n)
        }
    }

    fn value(item: Item<'_>) -> u32 {
        match item {
            Item::Record(r) => u32::from_ne_bytes(r.data.try_into().unwrap()),
            Item::Lost(_) => panic!("no losses here"),
        }
    }

    #[test]
    fn a_handler_stops_or_fails_a_poll_and_says_so() {
        let (mut a, _) = Queue::new([1, 2, 3]);
        let (mut b, _) = Queue::new([10, 20]);
        let seen = RefCell::new(Vec::new());
        {
            let mut poller = Poller::new().unwrap();
            let stopper = poller
                .add_source(&mut a, SourceOptions::default(), |item: Item<'_>| {
                    seen.borrow_mut().push(value(item));
                    if value(item) == 2 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            poller
                .add_source(&mut b, SourceOptions::default(), |item: Item<'_>| seen.borrow_mut().push(value(item)))
                .unwrap();
            assert_eq!(poller.consume().unwrap(), 2);
            assert_eq!((poller.stopped_by(), poller.is_stopped()), (Some(stopper), true));
            assert_eq!(poller.consume().unwrap(), 3, "the next pass goes on");
            assert_eq!(poller.stopped_by(), None);
        }
        assert_eq!(seen.into_inner(), [1, 2, 3, 10, 20]);

        let (mut c, rest) = Queue::new([7, 8, 9]);
        let mut poller = Poller::new().unwrap();
        poller
            .add_source(
                &mut c,
                SourceOptions::default(),
                |item: Item<'_>| if value(item) == 8 { Err("no room for 8") } else { Ok(()) },
            )
            .unwrap();
        let err = poller.poll(Some(Duration::ZERO)).unwrap_err();
        assert_eq!(err.to_string(), "the handler failed: no room for 8");
        assert_eq!(rest.borrow().iter().copied().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_bulk_flood_delays_critical_records_by_at_most_one_batch() {
        const BATCH: usize = 3;
        let log = RefCell::new(Vec::new());
        let (mut critical, critical_items) = Queue::new([]);
        // Two bulk sources: without another turn for the critical source between their batches,
        // a critical record would wait behind both.
        let (mut bulk_a, _) = Queue::new(0..30);
        let (mut bulk_b, _) = Queue::new(100..130);
        let bulk_handler = |item: Item<'_>| {
            let v = value(item);
            log.borrow_mut().push(('b', v));
            // Every bulk record "causes" a critical one to arrive meanwhile.
            critical_items.borrow_mut().push_back(1000 + v);
        };
        let mut poller = Poller::new().unwrap();
        // Added bulk first: priority, not insertion order, decides.
        poller.add_source(&mut bulk_a, SourceOptions { priority: 0, batch: BATCH }, bulk_handler).unwrap();
        poller.add_source(&mut bulk_b, SourceOptions { priority: 0, batch: BATCH }, bulk_handler).unwrap();
        poller
            .add_source(&mut critical, SourceOptions { priority: 10, batch: usize::MAX }, |item| {
                log.borrow_mut().push(('c', value(item)));
            })
            .unwrap();
        while poller.consume().unwrap() > 0 {}
        drop(poller);
        let log = log.into_inner();
        assert_eq!(log.iter().filter(|(k, _)| *k == 'b').count(), 60);
        assert_eq!(log.iter().filter(|(k, _)| *k == 'c').count(), 60);
        // Each critical record 1000+v arrived right after bulk record v: at most BATCH - 1
        // further bulk records may be handled before it.
        for (pos, &(kind, v)) in log.iter().enumerate() {
            if kind != 'b' {
                continue;
            }
            let served = log.iter().position(|&e| e == ('c', 1000 + v)).unwrap();
            let bulk_between = log[pos + 1..served].iter().filter(|(k, _)| *k == 'b').count();
            assert!(bulk_between < BATCH, "critical {} waited behind {bulk_between} bulk records", 1000 + v);
        }
    }

    #[test]
    fn drain_serves_every_source_highest_priority_first() {
        let order = RefCell::new(Vec::new());
        let (mut low, _) = Queue::new([1, 2]);
        let (mut mid, _) = Queue::new([3]);
        let (mut high, _) = Queue::new([4, 5]);
        let mut poller = Poller::new().unwrap();
        let record = |item: Item<'_>| order.borrow_mut().push(value(item));
        poller.add_source(&mut low, SourceOptions { priority: -1, batch: 1 }, record).unwrap();
        poller.add_source(&mut mid, SourceOptions { priority: 0, batch: 1 }, record).unwrap();
        poller.add_source(&mut high, SourceOptions { priority: 5, batch: 1 }, record).unwrap();
        assert_eq!(poller.drain().unwrap(), 5);
        assert_eq!(poller.sources().iter().map(|(_, o)| o.priority).collect::<Vec<_>>(), [5, 0, -1]);
        drop(poller);
        assert_eq!(order.into_inner(), [4, 5, 3, 1, 2]);
    }

    #[test]
    fn the_poll_timeout_bounds_the_delay_when_no_wakeup_comes() {
        // Records wait in a source whose fd never signals (BPF_RB_NO_WAKEUP, or a batching
        // producer that stopped short of its threshold): the timeout alone must deliver them.
        let (mut silent, _) = Queue::new([1, 2, 3]);
        let delivered = RefCell::new(Vec::new());
        let mut poller = Poller::new().unwrap();
        poller
            .add_source(&mut silent, SourceOptions::default(), |item| delivered.borrow_mut().push(value(item)))
            .unwrap();
        let started = std::time::Instant::now();
        let bound = Duration::from_millis(20);
        let handled = poller.poll(Some(bound)).unwrap();
        let waited = started.elapsed();
        assert_eq!(handled, 3);
        assert!(waited >= bound, "returned after {waited:?} without any signal");
        assert!(waited < Duration::from_secs(5), "a silent source was left waiting for {waited:?}");
        assert_eq!((poller.stats().wakeups, poller.stats().timeouts), (0, 1));
        drop(poller);
        assert_eq!(delivered.into_inner(), [1, 2, 3]);
    }

    /// A source whose head record is still being written: records wait, but none can be taken.
    struct BusyHead {
        fd: EventFd,
    }

    impl Source for BusyHead {
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn consume_until(&mut self, _: usize, _: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>) -> Result<usize, Error> {
            Ok(0)
        }
        fn ready_now(&self) -> bool {
            true
        }
        fn head_is_busy(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_busy_head_is_looked_at_again_after_a_backoff_not_at_once() {
        let mut busy = BusyHead { fd: EventFd::new().unwrap() };
        let mut poller = Poller::new().unwrap();
        poller.add_source(&mut busy, SourceOptions::default(), |_| {}).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(poller.poll(Some(Duration::from_secs(5))).unwrap(), 0);
        }
        let waited = started.elapsed();
        assert!(waited >= 3 * crate::ringbuf::BUSY_BACKOFF, "three polls spun for {waited:?} in all");
    }

    #[test]
    fn a_descriptor_that_stays_readable_is_one_wakeup_not_a_spin() {
        // A ring buffer's fd polls readable for as long as any byte waits, wakeup or not; the
        // poller waits edge-triggered, so only a new wakeup (here: the one signal) ends a wait.
        let (mut queue, _) = Queue::new([]);
        queue.fd.signal(); // readable from now on: never cleared
        let mut poller = Poller::new().unwrap();
        poller.add_source(&mut queue, SourceOptions::default(), |_| {}).unwrap();
        for _ in 0..5 {
            poller.poll(Some(Duration::from_millis(5))).unwrap();
        }
        assert_eq!((poller.stats().wakeups, poller.stats().timeouts), (1, 4));
    }

    #[test]
    fn stats_tell_wakeups_from_timeouts() {
        let (mut queue, items) = Queue::new([]);
        let readable = Rc::clone(&queue.fd);
        let mut poller = Poller::new().unwrap();
        poller.add_source(&mut queue, SourceOptions::default(), |_| {}).unwrap();
        poller.poll(Some(Duration::from_millis(1))).unwrap();
        assert_eq!((poller.stats().wakeups, poller.stats().timeouts), (0, 1));
        items.borrow_mut().push_back(7);
        readable.signal();
        assert_eq!(poller.poll(Some(Duration::from_secs(5))).unwrap(), 1);
        assert_eq!((poller.stats().wakeups, poller.stats().timeouts), (1, 1));
        readable.clear();
        poller.stop_handle().drain();
        poller.poll(Some(Duration::from_secs(5))).unwrap();
        assert!(poller.is_stopped());
        assert_eq!(poller.stats().wakeups, 1, "a stop is not a producer's wakeup");
    }

    #[test]
    fn a_stop_handle_drains_or_cancels_a_run() {
        let (mut queue, items) = Queue::new([1, 2, 3]);
        let delivered = RefCell::new(Vec::new());
        {
            let mut poller = Poller::new().unwrap();
            poller
                .add_source(&mut queue, SourceOptions::default(), |item| delivered.borrow_mut().push(value(item)))
                .unwrap();
            let stop = poller.stop_handle();
            stop.cancel();
            stop.drain(); // cancel wins, whatever the order
            assert_eq!(poller.run(Duration::from_secs(5)).unwrap(), 0, "a cancelled run hands nothing over");
            assert!(poller.is_stopped());
        }
        assert_eq!(items.borrow().len(), 3, "what was not taken stays in the source");
        {
            let mut poller = Poller::new().unwrap();
            poller
                .add_source(&mut queue, SourceOptions::default(), |item| delivered.borrow_mut().push(value(item)))
                .unwrap();
            let stop = poller.stop_handle();
            std::thread::spawn(move || stop.drain()).join().unwrap();
            assert_eq!(poller.run(Duration::from_secs(5)).unwrap(), 3, "a drained run hands everything over");
        }
        assert_eq!(delivered.into_inner(), [1, 2, 3]);
    }
}
