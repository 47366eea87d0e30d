//! One epoll set over many sources, each with its own handler and priority: [`Poller`].

use std::fmt;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ringbuf::BUSY_BACKOFF;
use crate::stop::{Control, StopHandle, CANCEL, RUNNING};
use crate::sys::{Epoll, EventFd};
use crate::{sys, Error, Event, EventSource, Failure, Fill, Flow, Record, Totals};

/// Something the [`Poller`] (or a stream) can wait on and read.
pub(crate) trait Source {
    /// A descriptor that polls readable when the source has data for us.
    fn poll_fd(&self) -> BorrowedFd<'_>;

    /// Hands at most `max` records (and any drop reports) to `handler` without blocking;
    /// returns the number of records. `handler` can end the pass after any item by returning
    /// [`ControlFlow::Break`]: what was handed over is consumed, the rest stays in the buffer
    /// (the streams use it to take exactly one item out of the kernel's buffer per item they
    /// yield).
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    ) -> Result<usize, Error>;

    /// [`consume_until`](Self::consume_until) for a handler of a known type: a source whose
    /// consume loop is generic overrides it, so that the loop inlines the handler (the
    /// [`Poller`] erases a handler's type once per batch, not per record).
    fn consume_with<H>(&mut self, max: usize, mut handler: H) -> Result<usize, Error>
    where
        Self: Sized,
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        self.consume_until(max, &mut handler)
    }

    /// [`drain_items`](Self::drain_items) for a handler of a known type (see
    /// [`consume_with`](Self::consume_with)).
    fn drain_with<H>(&mut self, mut handler: H) -> Result<usize, Error>
    where
        Self: Sized,
        H: FnMut(Event<Record<'_>>),
    {
        self.drain_items(&mut handler)
    }

    /// One round of an exact stop ([`EventSource::finish`], after the grace period the caller
    /// waited for): the source's totals, and whether the handler stopped. The default, for
    /// sources without counters: everything left, and empty totals.
    fn settle_with<H>(&mut self, deadline: Instant, handler: H) -> Result<(Totals, bool), Error>
    where
        Self: Sized,
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        let _ = deadline;
        let mut handler = handler;
        let mut stopped = false;
        self.drain_items(&mut |event: Event<Record<'_>>| stopped |= handler(event).is_break())?;
        Ok((Totals::default(), stopped))
    }

    /// Hands over everything left, for shutdown. The default consumes until empty;
    /// [`EventSource`] also reads its drop counters one last time.
    fn drain_items(&mut self, handler: &mut dyn FnMut(Event<Record<'_>>)) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let n = self.consume_until(usize::MAX, &mut |event: Event<Record<'_>>| {
                handler(event);
                ControlFlow::Continue(())
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Bytes waiting and capacity, if the source knows. The default: unknown.
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

    /// When a pass would hand over nothing and change nothing (no record, not even a BUSY one,
    /// no drop report due, nothing lent to settle): publishes what the round's wait changed and
    /// returns true, so that the round passes the source by. The default: false (every round
    /// serves the source).
    fn pass_if_quiet(&mut self) -> bool {
        false
    }

    /// Whether the producers signal [`poll_fd`](Self::poll_fd) for the records they write.
    /// `false` for a ring buffer whose producers were loaded with
    /// [`WakeupPolicy::Never`](crate::WakeupPolicy::Never): the streams then keep a delay timer
    /// whatever `set_max_delay` says, since nothing else would ever wake them. The default:
    /// `true`.
    fn sends_wakeups(&self) -> bool {
        true
    }

    /// Told after every wait whether this source's descriptor signalled, for sources that count
    /// their wakeups. The default ignores it.
    fn note_wait(&mut self, signalled: bool) {
        let _ = signalled;
    }

    /// What the source has accounted for, if it keeps [`Totals`] ([`EventSource`] does). The
    /// default: nothing.
    fn totals(&self) -> Option<Totals> {
        None
    }

    /// The source as an [`EventSource`], if it is one (to give it back from a stream).
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
    fn pass_if_quiet(&mut self) -> bool {
        EventSource::pass_if_quiet(self)
    }
    fn sends_wakeups(&self) -> bool {
        EventSource::sends_wakeups(self)
    }
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    ) -> Result<usize, Error> {
        self.consume_n(max, handler)
    }
    fn drain_items(&mut self, handler: &mut dyn FnMut(Event<Record<'_>>)) -> Result<usize, Error> {
        self.drain_with(handler)
    }
    fn consume_with<H>(&mut self, max: usize, mut handler: H) -> Result<usize, Error>
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        self.consume_n(max, &mut handler)
    }
    fn drain_with<H>(&mut self, handler: H) -> Result<usize, Error>
    where
        H: FnMut(Event<Record<'_>>),
    {
        let before = self.totals().delivered;
        let after = self.drain(handler)?.delivered;
        Ok((after - before) as usize)
    }
    fn settle_with<H>(&mut self, deadline: Instant, handler: H) -> Result<(Totals, bool), Error>
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        self.settle(deadline, handler)
    }
    fn fill(&self) -> Option<Fill> {
        Some(EventSource::fill(self))
    }
    fn totals(&self) -> Option<Totals> {
        Some(EventSource::totals(self))
    }
    fn into_event_source(self: Box<Self>) -> Option<EventSource> {
        Some(*self)
    }
    fn note_wait(&mut self, signalled: bool) {
        EventSource::note_wait(self, signalled);
    }
}

/// How the poller serves one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceOptions {
    /// Higher is served first, and again before every batch of a lower-priority source.
    priority: i32,
    /// Records per batch (the weight in a round); `None`: [`BATCH`] for a source below the
    /// highest priority, everything available for one at the highest.
    batch: Option<usize>,
}

/// Records a source below the highest priority takes per turn: enough to amortize a turn, few
/// enough that a higher-priority source waits at most one batch behind a flood.
const BATCH: usize = 1024;

/// Identifies a source added to a [`Poller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(pub(crate) usize);

/// A source and its handler, type-erased together: one dynamic call per batch, with the
/// source's consume loop compiled for the handler inside it.
trait Lane<E> {
    fn source(&self) -> &dyn Source;
    fn source_mut(&mut self) -> &mut dyn Source;
    /// One batch of at most `max` records: how many, and whether the handler stopped. A handler
    /// that fails keeps its error in `failure`.
    fn serve(&mut self, max: usize, failure: &mut Failure<E>) -> Result<(usize, bool), Error>;
    /// Everything left ([`Source::drain_with`]), past a handler that stops; its first error
    /// goes to `failure`.
    fn drain(&mut self, failure: &mut Failure<E>) -> Result<usize, Error>;
    /// One round of an exact stop ([`Source::settle_with`]): the totals, and whether the handler
    /// stopped (its error goes to `failure`).
    fn settle(&mut self, deadline: Instant, failure: &mut Failure<E>) -> Result<(Totals, bool), Error>;
}

struct Served<'a, S, H> {
    source: &'a mut S,
    handler: H,
}

impl<S: Source, F: Flow, H: FnMut(Event<Record<'_>>) -> F> Lane<F::Error> for Served<'_, S, H> {
    fn source(&self) -> &dyn Source {
        self.source
    }
    fn source_mut(&mut self) -> &mut dyn Source {
        self.source
    }
    fn serve(&mut self, max: usize, failure: &mut Failure<F::Error>) -> Result<(usize, bool), Error> {
        let handler = &mut self.handler;
        let mut stopped = false;
        let served = self.source.consume_with(max, |event: Event<Record<'_>>| {
            let flow = failure.check(handler(event));
            stopped |= flow.is_break();
            flow
        })?;
        Ok((served, stopped))
    }
    fn drain(&mut self, failure: &mut Failure<F::Error>) -> Result<usize, Error> {
        let handler = &mut self.handler;
        self.source.drain_with(|event: Event<Record<'_>>| {
            let _ = failure.check(handler(event));
        })
    }
    fn settle(&mut self, deadline: Instant, failure: &mut Failure<F::Error>) -> Result<(Totals, bool), Error> {
        let handler = &mut self.handler;
        self.source.settle_with(deadline, |event: Event<Record<'_>>| failure.check(handler(event)))
    }
}

struct Entry<'a, E> {
    lane: Box<dyn Lane<E> + 'a>,
    options: SourceOptions,
    id: SourceId,
}

/// The epoll token of the stop handle's eventfd.
const STOP_TOKEN: u64 = u64::MAX;

/// One epoll set over many [`EventSource`]s (ring and perf buffers together), each with its
/// own handler and priority; the handlers fail with `E` (by default [`Error`]: handlers that
/// return `()` or `ControlFlow`), which every call that consumes returns.
///
/// ```no_run
/// # fn demo(mut ring: bpfstream::EventSource, mut perf: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
/// use std::time::{Duration, Instant};
/// use bpfstream::{Event, Poller};
///
/// let (mut from_ring, mut from_perf) = (0u64, 0u64);
/// let mut poller = Poller::new()?;
/// poller.add(&mut ring, 1, |event| if let Event::Record(_) = event { from_ring += 1 })?;
/// poller.add(&mut perf, 0, |event| if let Event::Record(_) = event { from_perf += 1 })?;
/// let stop = poller.stop_handle(); // Send + Clone: call stop.cancel() from a signal thread
/// # stop.cancel();
/// poller.run(Duration::from_millis(100))?; // until stopped
/// // ...detach the programs, then hand over the rest, exactly:
/// let totals = poller.finish(Instant::now() + Duration::from_secs(1))?;
/// # Ok(()) }
/// ```
///
/// Every poll serves every source (the check of an empty buffer is two memory loads), so the
/// poll timeout bounds how long a record can wait even when its producer never wakes us.
/// Sources are served by priority, in batches: before a lower-priority source gets its batch,
/// all higher-priority sources are served again, so a flood in a bulk source delays a critical
/// one by at most one batch (1024 records).
///
/// A handler that returns an error fails the call that consumes, with that error; every handler
/// of a poller fails with the same type `E`, which the first [`add`](Self::add) sets:
///
/// ```no_run
/// # fn demo(mut source: bpfstream::EventSource) -> anyhow::Result<()> {
/// # fn write(_: &[u8]) -> anyhow::Result<()> { Ok(()) }
/// let mut poller = bpfstream::Poller::new()?;
/// poller.add(&mut source, 0, |event| match event {
///     bpfstream::Event::Record(record) => write(record.data), // anyhow::Result<()>
///     bpfstream::Event::Dropped(_) => Ok(()),
/// })?;
/// poller.poll(None)?; // an anyhow::Error: the handler's own, or the library's
/// # Ok(()) }
/// ```
///
/// Not `Send`: handlers may borrow anything, including state that is not `Send` (see the crate
/// docs, "Threads"). Minimum kernel: that of its sources (5.8 for a ring, 4.4 for perf).
pub struct Poller<'a, E = Error> {
    epoll: Epoll,
    control: Arc<Control>,
    entries: Vec<Entry<'a, E>>,
    ready: Vec<u64>,
    /// The source whose handler stopped the last poll.
    stopped_by: Option<SourceId>,
}

impl<E> fmt::Debug for Poller<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").field("sources", &self.entries.len()).field("stop", &self.control.request()).finish()
    }
}

impl<'a, E: From<Error>> Poller<'a, E> {
    /// An empty poller.
    pub fn new() -> Result<Self, Error> {
        let epoll = Epoll::new()?;
        let stop_fd = EventFd::new()?;
        epoll.add(stop_fd.as_fd(), STOP_TOKEN)?;
        let control = Arc::new(Control::with_fd(stop_fd));
        Ok(Poller { epoll, control, entries: Vec::new(), ready: Vec::new(), stopped_by: None })
    }

    /// Adds a source; `handler` receives its records and drop reports. Both may borrow local
    /// state for `'a`. A higher `priority` is served first, and again before every batch of a
    /// lower-priority source; equal priorities take turns. The handler returns `()`, or a
    /// [`Flow`] that stops the poll after this record ([`stopped_by`](Self::stopped_by) then
    /// names the source) or fails it with `E`.
    pub fn add<F: Flow<Error = E>>(
        &mut self,
        source: &'a mut EventSource,
        priority: i32,
        handler: impl FnMut(Event<Record<'_>>) -> F + 'a,
    ) -> Result<SourceId, Error>
    where
        E: 'a,
    {
        self.add_source(source, SourceOptions { priority, batch: None }, handler)
    }

    /// Adds anything that is a [`Source`] (the crate's tests add simulated ones).
    pub(crate) fn add_source<S: Source, F: Flow<Error = E>>(
        &mut self,
        source: &'a mut S,
        options: SourceOptions,
        handler: impl FnMut(Event<Record<'_>>) -> F + 'a,
    ) -> Result<SourceId, Error>
    where
        E: 'a,
    {
        let id = SourceId(self.entries.len());
        self.epoll.add_edge_triggered(source.poll_fd(), id.0 as u64)?;
        self.entries.push(Entry { lane: Box::new(Served { source, handler }), options, id });
        // Stable: equal priorities keep their insertion order.
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.options.priority));
        Ok(id)
    }

    /// A handle that stops this poller from another thread: [`run`](Self::run) then returns,
    /// after a final drain unless it was [`cancel`](StopHandle::cancel)led; a
    /// [`poll`](Self::poll) returns at once, and later ones do not wait.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.control))
    }

    /// The source whose handler stopped the last [`poll`](Self::poll) (`None`: it served every
    /// source).
    pub fn stopped_by(&self) -> Option<SourceId> {
        self.stopped_by
    }

    /// Waits up to `timeout` (`None`: until a source signals or a stop is asked), then serves
    /// every source by priority. Returns the number of records handled; why it returned is
    /// [`StopHandle::is_stopped`] and [`stopped_by`](Self::stopped_by) (a handler), or the error
    /// of a handler that failed. A signal interrupting the wait (EINTR) ends it early, as a
    /// timeout does: not an error.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<usize, E> {
        let wait = self.wait_for(timeout);
        self.epoll.wait(wait, &mut self.ready)?;
        for entry in &mut self.entries {
            entry.lane.source_mut().note_wait(self.ready.contains(&(entry.id.0 as u64)));
        }
        self.serve_all()
    }

    /// How long [`poll`](Self::poll) may wait: not at all while a source holds records no wakeup
    /// may announce (or once a stop was asked), at most [`BUSY_BACKOFF`] while one waits behind
    /// a record still being written (taking nothing now, but not to be left for a whole
    /// timeout), else `timeout`.
    fn wait_for(&self, timeout: Option<Duration>) -> Option<Duration> {
        let sources = || self.entries.iter().map(|e| e.lane.source());
        if self.control.request() != RUNNING || sources().any(|s| s.ready_now() && !s.head_is_busy()) {
            Some(Duration::ZERO)
        } else if sources().any(|s| s.head_is_busy()) {
            Some(timeout.map_or(BUSY_BACKOFF, |t| t.min(BUSY_BACKOFF)))
        } else {
            timeout
        }
    }

    /// Serves every source once, by priority, without blocking (until a handler stops); a
    /// quiet one is passed by ([`Source::pass_if_quiet`]: a stream of an agent that sees
    /// nothing costs the rounds of the busy ones a look at its positions, not a pass).
    fn serve_all(&mut self) -> Result<usize, E> {
        self.stopped_by = None;
        let mut total = 0;
        for i in 0..self.entries.len() {
            if self.entries[i].lane.source_mut().pass_if_quiet() {
                continue;
            }
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

    fn serve(&mut self, index: usize) -> Result<usize, E> {
        let highest = self.entries[0].options.priority;
        let entry = &mut self.entries[index];
        let below = entry.options.priority < highest;
        let batch = entry.options.batch.unwrap_or(if below { BATCH } else { usize::MAX });
        let mut failure = Failure::default();
        let served = entry.lane.serve(batch, &mut failure);
        let served = served.map(|(n, stopped)| {
            if stopped {
                self.stopped_by = Some(entry.id);
            }
            n
        });
        failure.result(served)
    }

    /// Polls (each wait at most `max_delay`, the bound on delivery delay) until a [`StopHandle`]
    /// asks, then drains every source (unless it asked to cancel). Returns the number of records
    /// handled. A handler that stops it ends it at once, without the drain.
    pub fn run(&mut self, max_delay: Duration) -> Result<usize, E> {
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
    pub fn finish(&mut self, deadline: Instant) -> Result<Vec<(SourceId, Totals)>, E> {
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
    fn drain(&mut self) -> Result<usize, E> {
        let mut total = 0;
        let mut failure = Failure::default();
        for entry in &mut self.entries {
            total += entry.lane.drain(&mut failure)?;
        }
        failure.result(Ok(total))
    }

    /// The sources in the order they are served.
    #[cfg(test)]
    fn sources(&self) -> Vec<(SourceId, SourceOptions)> {
        self.entries.iter().map(|e| (e.id, e.options)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;

    /// A source over a queue of numbers, readable through an eventfd the test signals; it
    /// counts its waits as (wakeups, timeouts).
    struct Queue {
        items: Rc<RefCell<VecDeque<u32>>>,
        fd: Rc<EventFd>,
        waits: Rc<Cell<(u64, u64)>>,
    }

    impl Queue {
        fn new(items: impl IntoIterator<Item = u32>) -> (Self, Rc<RefCell<VecDeque<u32>>>) {
            let items = Rc::new(RefCell::new(items.into_iter().collect()));
            let waits = Rc::default();
            (Queue { items: Rc::clone(&items), fd: Rc::new(EventFd::new().unwrap()), waits }, items)
        }
    }

    /// A test handler's own error.
    #[derive(Debug, PartialEq)]
    enum Refused {
        Value(u32),
        Library(String),
    }

    impl From<Error> for Refused {
        fn from(error: Error) -> Self {
            Refused::Library(error.to_string())
        }
    }

    const DEFAULT: SourceOptions = SourceOptions { priority: 0, batch: None };

    impl Source for Queue {
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn note_wait(&mut self, signalled: bool) {
            let (wakeups, timeouts) = self.waits.get();
            self.waits.set(if signalled { (wakeups + 1, timeouts) } else { (wakeups, timeouts + 1) });
        }
        fn consume_until(
            &mut self,
            max: usize,
            handler: &mut dyn FnMut(Event<Record<'_>>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
            let mut n = 0;
            while n < max {
                let Some(x) = self.items.borrow_mut().pop_front() else { break };
                n += 1;
                if handler(Event::Record(Record { data: &x.to_ne_bytes(), cpu: None })).is_break() {
                    break;
                }
            }
            Ok(n)
        }
    }

    fn value(item: Event<Record<'_>>) -> u32 {
        match item {
            Event::Record(r) => u32::from_ne_bytes(r.data.try_into().unwrap()),
            Event::Dropped(_) => panic!("no drops here"),
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
                .add_source(&mut a, DEFAULT, |item: Event<Record<'_>>| {
                    seen.borrow_mut().push(value(item));
                    if value(item) == 2 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            poller.add_source(&mut b, DEFAULT, |item: Event<Record<'_>>| seen.borrow_mut().push(value(item))).unwrap();
            assert_eq!(poller.serve_all().unwrap(), 2);
            assert_eq!(poller.stopped_by(), Some(stopper));
            assert_eq!(poller.serve_all().unwrap(), 3, "the next pass goes on");
            assert_eq!(poller.stopped_by(), None);
        }
        assert_eq!(seen.into_inner(), [1, 2, 3, 10, 20]);

        let (mut c, rest) = Queue::new([7, 8, 9]);
        let mut poller = Poller::new().unwrap();
        poller
            .add_source(
                &mut c,
                DEFAULT,
                |item: Event<Record<'_>>| if value(item) == 8 { Err(Refused::Value(8)) } else { Ok(()) },
            )
            .unwrap();
        let err = poller.poll(Some(Duration::ZERO)).unwrap_err();
        assert_eq!(err, Refused::Value(8), "the handler's own error, as itself");
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
        let bulk_handler = |item: Event<Record<'_>>| {
            let v = value(item);
            log.borrow_mut().push(('b', v));
            // Every bulk record "causes" a critical one to arrive meanwhile.
            critical_items.borrow_mut().push_back(1000 + v);
        };
        let mut poller = Poller::new().unwrap();
        // Added bulk first: priority, not insertion order, decides.
        poller.add_source(&mut bulk_a, SourceOptions { priority: 0, batch: Some(BATCH) }, bulk_handler).unwrap();
        poller.add_source(&mut bulk_b, SourceOptions { priority: 0, batch: Some(BATCH) }, bulk_handler).unwrap();
        poller
            .add_source(&mut critical, SourceOptions { priority: 10, batch: None }, |item| {
                log.borrow_mut().push(('c', value(item)));
            })
            .unwrap();
        while poller.serve_all().unwrap() > 0 {}
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
        let record = |item: Event<Record<'_>>| order.borrow_mut().push(value(item));
        poller.add_source(&mut low, SourceOptions { priority: -1, batch: Some(1) }, record).unwrap();
        poller.add_source(&mut mid, SourceOptions { priority: 0, batch: Some(1) }, record).unwrap();
        poller.add_source(&mut high, SourceOptions { priority: 5, batch: Some(1) }, record).unwrap();
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
        let waits = Rc::clone(&silent.waits);
        let delivered = RefCell::new(Vec::new());
        let mut poller = Poller::new().unwrap();
        poller.add_source(&mut silent, DEFAULT, |item| delivered.borrow_mut().push(value(item))).unwrap();
        let started = std::time::Instant::now();
        let bound = Duration::from_millis(20);
        let handled = poller.poll(Some(bound)).unwrap();
        let waited = started.elapsed();
        assert_eq!(handled, 3);
        assert!(waited >= bound, "returned after {waited:?} without any signal");
        assert!(waited < Duration::from_secs(5), "a silent source was left waiting for {waited:?}");
        assert_eq!(waits.get(), (0, 1), "(wakeups, timeouts)");
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
        fn consume_until(
            &mut self,
            _: usize,
            _: &mut dyn FnMut(Event<Record<'_>>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
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
        poller.add_source(&mut busy, DEFAULT, |_| {}).unwrap();
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
        let waits = Rc::clone(&queue.waits);
        let mut poller = Poller::new().unwrap();
        poller.add_source(&mut queue, DEFAULT, |_| {}).unwrap();
        for _ in 0..5 {
            poller.poll(Some(Duration::from_millis(5))).unwrap();
        }
        assert_eq!(waits.get(), (1, 4), "(wakeups, timeouts)");
    }

    #[test]
    fn sources_tell_wakeups_from_timeouts() {
        let (mut queue, items) = Queue::new([]);
        let readable = Rc::clone(&queue.fd);
        let waits = Rc::clone(&queue.waits);
        let mut poller = Poller::new().unwrap();
        poller.add_source(&mut queue, DEFAULT, |_| {}).unwrap();
        poller.poll(Some(Duration::from_millis(1))).unwrap();
        assert_eq!(waits.get(), (0, 1));
        items.borrow_mut().push_back(7);
        readable.signal();
        assert_eq!(poller.poll(Some(Duration::from_secs(5))).unwrap(), 1);
        assert_eq!(waits.get(), (1, 1));
        readable.clear();
        let stop = poller.stop_handle();
        stop.drain();
        let started = std::time::Instant::now();
        poller.poll(Some(Duration::from_secs(5))).unwrap();
        poller.poll(None).unwrap();
        assert!(stop.is_stopped());
        assert!(started.elapsed() < Duration::from_secs(5), "a stopped poller does not wait");
        assert_eq!(waits.get().0, 1, "a stop is not a producer's wakeup");
    }

    #[test]
    fn a_stop_handle_drains_or_cancels_a_run() {
        let (mut queue, items) = Queue::new([1, 2, 3]);
        let delivered = RefCell::new(Vec::new());
        {
            let mut poller = Poller::new().unwrap();
            poller.add_source(&mut queue, DEFAULT, |item| delivered.borrow_mut().push(value(item))).unwrap();
            let stop = poller.stop_handle();
            stop.cancel();
            stop.drain(); // cancel wins, whatever the order
            assert_eq!(poller.run(Duration::from_secs(5)).unwrap(), 0, "a cancelled run hands nothing over");
            assert!(stop.is_stopped());
        }
        assert_eq!(items.borrow().len(), 3, "what was not taken stays in the source");
        {
            let mut poller = Poller::new().unwrap();
            poller.add_source(&mut queue, DEFAULT, |item| delivered.borrow_mut().push(value(item))).unwrap();
            let stop = poller.stop_handle();
            std::thread::spawn(move || stop.drain()).join().unwrap();
            assert_eq!(poller.run(Duration::from_secs(5)).unwrap(), 3, "a drained run hands everything over");
        }
        assert_eq!(delivered.into_inner(), [1, 2, 3]);
    }
}
