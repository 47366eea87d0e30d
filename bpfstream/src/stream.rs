//! Streams of decoded events: [`EventStream`], over one [`EventSource`] or several merged, in
//! the order the buffers hold them or in timestamp order ([`EventStream::ordered`]), pulled one
//! at a time: blocking ([`EventStream::next_blocking`]), or as a [`futures_core::Stream`] on
//! tokio (feature `tokio`).
//!
//! ```no_run
//! # fn demo(source: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
//! use bpfstream::stream::EventStream;
//! use bpfstream::{Event, FromRecord};
//!
//! bpfstream::record! {
//!     pub struct Exec { pub ts_ns: u64, pub pid: u32 }
//! }
//! let span = std::time::Duration::from_millis(10);
//! let mut events = EventStream::new(source, |r| Exec::from_record(r.data))?.ordered(span, |e: &Exec| e.ts_ns);
//! while let Some(event) = events.next_blocking(None)? {
//!     match event {
//!         Event::Record(exec) => println!("{} exec by {}", exec.ts_ns, exec.pid),
//!         Event::Dropped(dropped) => eprintln!("{} dropped", dropped.count),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Items
//!
//! Items are `Result<Event<T>, Error>`. A record the decoder rejects is an
//! [`Error::Malformed`] item (the record was consumed and counts as delivered), and the stream
//! goes on after it; any other error (a corrupt buffer, a failing system call) is the last item.
//!
//! # How it waits
//!
//! A stream takes records while there are any; when the buffers are empty it waits for
//! whichever comes first: the kernel's wakeup, the delay timer ([`EventStream::set_max_delay`],
//! default 100 ms), or a [`StopHandle`]. The timer is what delivers records produced without a
//! wakeup (`BPF_RB_NO_WAKEUP`, a perf watermark not reached) within the delay bound, and what
//! lets an [`EventSource`] read its drop counters while no record arrives. A stream over a
//! source whose producers never wake it ([`WakeupPolicy::Never`](crate::WakeupPolicy::Never))
//! keeps the timer even when asked for none. Before it sleeps, a stream asks its sources
//! whether bytes wait that no wakeup is certain to announce (a ring whose head record is still
//! being written, with records committed behind it); it then looks again after a millisecond
//! instead of sleeping.
//!
//! # Buffering and cancellation
//!
//! Records are copied out of the kernel's memory to be yielded as owned values, one at a time:
//! each pull takes at most one record from the buffer and decodes it while it is still in the
//! kernel's memory. So at most one record is ever out of the kernel's buffer and not yet
//! yielded, and only for the duration of one pull; besides it the stream queues only drop
//! reports (at most one per CPU, plus one perf LOST record, per pass). The bound on memory is
//! the kernel buffer you sized, and backpressure is the kernel's: a consumer that falls behind
//! sees drops reported as [`Event::Dropped`], never an unbounded queue in userspace.
//!
//! The consumer position moves past a record only in the pull that yields it. Dropping the
//! stream (or the future of an async `next()`, as `select!` and timeouts do) between pulls
//! therefore loses nothing: every record not yet yielded is still in the kernel's buffer, for
//! the next consumer ([`EventStream::into_sources`] gives the sources back; then
//! [`EventSource::finish`] drains them exactly). A [`StopHandle`] ends a stream from anywhere:
//! [`cancel`](StopHandle::cancel) ends it at once (records stay in the buffer),
//! [`drain`](StopHandle::drain) ends it once everything buffered and the last drop report have
//! been yielded (detach the producers first, or it drains as long as they produce).
//!
//! # Async (feature `tokio`)
//!
//! `EventStream` is a `futures_core::Stream`: poll it inside a tokio runtime with IO and time
//! enabled (`Builder::new_current_thread().enable_all()`; `#[tokio::main]` needs tokio's
//! `rt-multi-thread` and `macros` features, `#[tokio::main(flavor = "current_thread")]` only
//! `macros`). Polled outside one, it yields an [`Error::Unsupported`]. The stream cooperates
//! with tokio's scheduler (`tokio::task::coop`): a busy stream yields to other tasks after its
//! budget, like tokio's own sockets.
//!
//! Minimum kernel: 5.8 for ring buffers (epoll on the map fd), 4.4 for perf buffers.

use std::collections::VecDeque;
use std::fmt;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ordered::Reorder;
use crate::poller::Source;
use crate::ringbuf::BUSY_BACKOFF;
use crate::stop::{Control, StopHandle, CANCEL, DRAIN};
use crate::sys::{Epoll, EventFd};
use crate::{Error, Event, EventSource, Fill, OwnedRecord, Record, Totals};

/// Default bound on how long a record waits when its producer does not wake the stream.
pub(crate) const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(100);

/// The epoll tokens of a blocking wait: the sources' descriptor and the stop eventfd.
const SOURCES_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

/// Turns a borrowed record into an owned value while it is still in the kernel's memory.
type Decoder<T> = Box<dyn FnMut(Record<'_>) -> Result<T, Error> + Send>;

/// One source of a stream, with its decoder.
struct Input<T> {
    source: Box<dyn Source + Send>,
    decoder: Decoder<T>,
    priority: i32,
    /// Position in the order the sources were added.
    added: usize,
}

/// Takes at most one record (and the drop reports that come with it) from `input`, decoded,
/// into `out`; returns whether anything was taken. A pass stops right after the first item the
/// buffer hands over, so a drop report found first leaves the record for the next pass.
fn take_one<T>(input: &mut Input<T>, out: &mut VecDeque<Result<Event<T>, Error>>) -> Result<bool, Error> {
    let before = out.len();
    let decoder = &mut input.decoder;
    input.source.consume_until(1, &mut |event: Event<Record<'_>>| {
        out.push_back(decode(decoder, event));
        ControlFlow::Break(())
    })?;
    Ok(out.len() > before)
}

fn decode<T>(decoder: &mut Decoder<T>, event: Event<Record<'_>>) -> Result<Event<T>, Error> {
    match event {
        Event::Record(record) => decoder(record).map(Event::Record),
        Event::Dropped(dropped) => Ok(Event::Dropped(dropped)),
    }
}

/// What a stream waits on: a duplicate of its one source's poll descriptor (owning it keeps the
/// descriptor the same whatever the source does), or an epoll set over several.
enum WaitFd {
    Own(OwnedFd),
    Set(Epoll),
}

impl AsFd for WaitFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            WaitFd::Own(fd) => fd.as_fd(),
            WaitFd::Set(epoll) => epoll.as_fd(),
        }
    }
}

/// What one look at the sources gives.
pub(crate) enum Step<T> {
    /// An item to yield.
    Item(Result<Event<T>, Error>),
    /// The stream has ended.
    End,
    /// Nothing now: wait for the sources (at most [`BUSY_BACKOFF`] when `busy`: bytes wait that
    /// no wakeup may announce), with a delay timer even if none was asked when `unsignalled`
    /// (a source whose producers never signal).
    Wait { busy: bool, unsignalled: bool },
}

/// What a pull with a deadline gives.
pub(crate) enum Pulled<T> {
    Item(Result<Event<T>, Error>),
    End,
    /// The deadline passed with nothing to yield.
    Nothing,
}

/// The sources of a stream and how it takes records from them, before any reordering.
pub(crate) struct Inputs<T> {
    /// Registered with tokio on the first async poll (it owns a duplicate of `fd`).
    #[cfg(feature = "tokio")]
    waiter: Option<crate::stream_tokio::Waiter>,
    /// The sources' descriptor and the stop eventfd, on the first blocking pull.
    blocking: Option<Epoll>,
    fd: WaitFd,
    control: Arc<Control>,
    max_delay: Option<Duration>,
    /// By priority, highest first; equal priorities in the order they were added.
    inputs: Vec<Input<T>>,
    /// Per priority level (a run of equal priorities in `inputs`): the index to try first.
    turn: Vec<usize>,
    /// Items taken with a record (drop reports, malformed records), or left from the drain.
    pending: VecDeque<Result<Event<T>, Error>>,
    done: bool,
}

impl<T> Inputs<T> {
    fn new(source: Box<dyn Source + Send>, decoder: Decoder<T>) -> Result<Self, Error> {
        let fd = source.poll_fd().try_clone_to_owned().map_err(|e| Error::sys("dup", e))?;
        Ok(Inputs {
            #[cfg(feature = "tokio")]
            waiter: None,
            blocking: None,
            fd: WaitFd::Own(fd),
            control: Arc::new(Control::with_fd(EventFd::new()?)),
            max_delay: Some(DEFAULT_MAX_DELAY),
            inputs: vec![Input { source, decoder, priority: 0, added: 0 }],
            turn: vec![0],
            pending: VecDeque::new(),
            done: false,
        })
    }

    /// Adds a source: from then on the stream waits on an epoll set over all of them.
    fn add(&mut self, source: Box<dyn Source + Send>, priority: i32, decoder: Decoder<T>) -> Result<(), Error> {
        let added = self.inputs.len();
        self.inputs.push(Input { source, decoder, priority, added });
        // Stable: equal priorities keep the order they were added in.
        self.inputs.sort_by_key(|input| std::cmp::Reverse(input.priority));
        self.turn = vec![0; self.inputs.len()];
        let set = Epoll::new()?;
        for input in &self.inputs {
            set.add(input.source.poll_fd(), input.added as u64)?;
        }
        // The waits register the new descriptor when they next wait.
        #[cfg(feature = "tokio")]
        {
            self.waiter = None;
        }
        self.blocking = None;
        self.fd = WaitFd::Set(set);
        Ok(())
    }

    /// Bytes waiting and capacity, all sources together (those that know).
    fn fill(&self) -> Fill {
        self.inputs.iter().filter_map(|input| input.source.fill()).fold(Fill::default(), Fill::sum)
    }

    /// Whether nothing waits in any source's buffer.
    pub(crate) fn is_empty(&self) -> bool {
        self.fill().used == 0
    }

    /// Takes one record from the highest-priority source that has one (equal priorities in
    /// turn), into `pending`.
    fn take_one(&mut self) -> Result<bool, Error> {
        let mut start = 0;
        while start < self.inputs.len() {
            let priority = self.inputs[start].priority;
            let level = self.inputs[start..].iter().take_while(|input| input.priority == priority).count();
            for step in 0..level {
                let index = start + (self.turn[start] + step) % level;
                if take_one(&mut self.inputs[index], &mut self.pending)? {
                    self.turn[start] = (index - start + 1) % level;
                    return Ok(true);
                }
            }
            start += level;
        }
        Ok(false)
    }

    /// Everything left in every source, and each source's last word (an [`EventSource`]'s final
    /// counter read).
    fn drain_all(&mut self) -> Result<(), Error> {
        for input in &mut self.inputs {
            let (decoder, pending) = (&mut input.decoder, &mut self.pending);
            input.source.drain_items(&mut |event: Event<Record<'_>>| pending.push_back(decode(decoder, event)))?;
        }
        Ok(())
    }

    /// One look at the sources, without waiting: the next item, the end, or what to wait for.
    pub(crate) fn step(&mut self) -> Step<T> {
        if let Some(item) = self.pending.pop_front() {
            return Step::Item(item);
        }
        if self.done {
            return Step::End;
        }
        let request = self.control.request();
        if request == CANCEL {
            self.done = true;
            return Step::End;
        }
        match self.take_one() {
            Ok(true) => return Step::Item(self.pending.pop_front().expect("an item was taken")),
            Ok(false) => {}
            Err(error) => {
                self.done = true;
                return Step::Item(Err(error));
            }
        }
        if request == DRAIN {
            if let Err(error) = self.drain_all() {
                self.pending.push_back(Err(error));
            }
            self.done = true;
            return self.pending.pop_front().map_or(Step::End, Step::Item);
        }
        let busy = self.inputs.iter().any(|input| input.source.ready_now());
        let unsignalled = self.inputs.iter().any(|input| !input.source.sends_wakeups());
        Step::Wait { busy, unsignalled }
    }

    /// The delay timer of a wait: the one asked for, or the default where a source never
    /// signals.
    pub(crate) fn delay(&self, unsignalled: bool) -> Option<Duration> {
        self.max_delay.or(unsignalled.then_some(DEFAULT_MAX_DELAY))
    }

    /// Counts a wait that ended by a signal or by the delay timer. Which source of a set
    /// signalled is not known: only a lone source is told.
    pub(crate) fn note_wait(&mut self, signalled: bool) {
        if let [input] = &mut self.inputs[..] {
            input.source.note_wait(signalled);
        }
    }

    /// The next item in the order the sources hold them, waiting until `deadline` at most
    /// (`None`: as long as it takes).
    pub(crate) fn pull_blocking(&mut self, deadline: Option<Instant>) -> Result<Pulled<T>, Error> {
        loop {
            let (busy, unsignalled) = match self.step() {
                Step::Item(item) => return Ok(Pulled::Item(item)),
                Step::End => return Ok(Pulled::End),
                Step::Wait { busy, unsignalled } => (busy, unsignalled),
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(Pulled::Nothing);
            }
            let delay = self.delay(unsignalled);
            let wait = [left, delay, busy.then_some(BUSY_BACKOFF)].into_iter().flatten().min();
            let signalled = self.wait_blocking(wait)?;
            if signalled || (wait == delay && wait.is_some()) {
                self.note_wait(signalled);
            }
        }
    }

    /// Waits up to `timeout` for the sources' descriptor (edge-triggered, as a
    /// [`Poller`](crate::Poller) does) or a stop; returns whether the sources signalled.
    fn wait_blocking(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let epoll = match &mut self.blocking {
            Some(epoll) => epoll,
            none => {
                let epoll = Epoll::new()?;
                epoll.add_edge_triggered(self.fd.as_fd(), SOURCES_TOKEN)?;
                epoll.add(self.control.fd().as_fd(), STOP_TOKEN)?;
                none.insert(epoll)
            }
        };
        let mut ready = Vec::new();
        epoll.wait(timeout, &mut ready)?;
        Ok(ready.contains(&SOURCES_TOKEN))
    }

    /// The tokio half of the stream: its registration (made on first use) and timers.
    #[cfg(feature = "tokio")]
    pub(crate) fn waiter(&mut self) -> Result<&mut crate::stream_tokio::Waiter, Error> {
        match &mut self.waiter {
            Some(waiter) => Ok(waiter),
            none => {
                let fd = self.fd.as_fd().try_clone_to_owned().map_err(|e| Error::sys("dup", e))?;
                Ok(none.insert(crate::stream_tokio::Waiter::new(fd, Arc::clone(&self.control))?))
            }
        }
    }

    /// Ends the stream with `error` as its last item.
    #[cfg(feature = "tokio")]
    pub(crate) fn fail(&mut self, error: Error) -> Result<Event<T>, Error> {
        self.done = true;
        Err(error)
    }

    /// Whether the stream has no item to give without looking at the sources: nothing pending
    /// and not ended.
    #[cfg(feature = "tokio")]
    pub(crate) fn nothing_pending(&self) -> bool {
        self.pending.is_empty() && !self.done
    }
}

/// A stream of decoded [`Event`]s from one [`EventSource`], or several merged; see the
/// [module docs](self).
///
/// Records come in the order the source holds them: commit order for a ring buffer, but CPU by
/// CPU for a perf buffer, so a perf stream is out of timestamp order across CPUs;
/// [`ordered`](Self::ordered) puts it in order. A stream over several sources
/// ([`add`](Self::add)) takes one record at a time from the highest-priority source that has
/// one; sources of equal priority take turns. `Send` when `T` is.
pub struct EventStream<T = OwnedRecord> {
    inputs: Inputs<T>,
    order: Option<Reorder<T>>,
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("sources", &self.inputs.inputs.len())
            .field("ordered", &self.order.is_some())
            .field("done", &self.inputs.done)
            .finish()
    }
}

impl<T: 'static> EventStream<T> {
    /// A stream of the source's records, each turned into a `T` by `decoder` while it is still
    /// in the kernel's memory (so only what the value needs is copied): `|r| Ok(OwnedRecord::from(r))`
    /// copies the record, `|r| Exec::from_record(r.data)` decodes an `Exec` ([`FromRecord`],
    /// length-checked and alignment-safe), and a header with a variable-length tail decodes
    /// with [`FromRecord::from_record_prefix`].
    ///
    /// [`FromRecord`]: crate::FromRecord
    /// [`FromRecord::from_record_prefix`]: crate::FromRecord::from_record_prefix
    pub fn new(
        source: EventSource,
        decoder: impl FnMut(Record<'_>) -> Result<T, Error> + Send + 'static,
    ) -> Result<Self, Error> {
        EventStream::from_source(Box::new(source), Box::new(decoder))
    }

    pub(crate) fn from_source(source: Box<dyn Source + Send>, decoder: Decoder<T>) -> Result<Self, Error> {
        Ok(EventStream { inputs: Inputs::new(source, decoder)?, order: None })
    }

    /// Merges another source into this stream, with its own decoder into `T` and a priority
    /// (higher is served first; the first source has priority 0). To tell the sources' records
    /// apart, decode them into different values of `T` (an enum); the sources' totals are
    /// summed in [`totals`](Self::totals).
    pub fn add(
        &mut self,
        source: EventSource,
        priority: i32,
        decoder: impl FnMut(Record<'_>) -> Result<T, Error> + Send + 'static,
    ) -> Result<(), Error> {
        self.add_source(Box::new(source), priority, Box::new(decoder))
    }

    /// Merges anything that is a [`Source`] (the crate's tests merge simulated ones).
    pub(crate) fn add_source(
        &mut self,
        source: Box<dyn Source + Send>,
        priority: i32,
        decoder: Decoder<T>,
    ) -> Result<(), Error> {
        self.inputs.add(source, priority, decoder)
    }

    /// This stream's records in the order of `key`, a CLOCK_MONOTONIC nanosecond timestamp in
    /// the record (as `bpf_ktime_get_ns()` writes it). A record is held until every source has
    /// been seen empty at a time `span` past its key (so every record stamped before it has been
    /// read, if records are committed within `span` of being stamped), then released in order;
    /// at the end of the stream everything held is released. A record that arrives after a
    /// later one was released is yielded at once: nothing is dropped. Drop reports and malformed
    /// records are not held. With several sources, priorities then no longer decide the order
    /// of records, only which source is read first.
    ///
    /// Held records are released when the stream finds the buffers empty, or when the first
    /// one held is `span` old: a record waits about `span`. Ring buffers are in commit order
    /// already; this is for perf buffers, several sources, and rings fed from several CPUs whose
    /// timestamps must be in order.
    pub fn ordered(mut self, span: Duration, key: impl Fn(&T) -> u64 + Send + 'static) -> Self {
        self.order = Some(Reorder::new(span, Box::new(key)));
        self
    }

    /// Bounds how long a record can wait in the buffer when its producer does not wake the
    /// stream (`None`: no timer; rely on wakeups alone). Default: 100 ms.
    ///
    /// A source whose producers never wake the stream (a ring loaded with
    /// [`WakeupPolicy::Never`](crate::WakeupPolicy::Never)) cannot go without a timer: with
    /// `None` the stream keeps 100 ms, or its records would wait forever.
    pub fn set_max_delay(&mut self, max_delay: Option<Duration>) {
        self.inputs.max_delay = max_delay;
        #[cfg(feature = "tokio")]
        if let Some(waiter) = &mut self.inputs.waiter {
            waiter.reset_timer();
        }
    }

    /// A handle that ends this stream from another task or thread (see the
    /// [module docs](self#buffering-and-cancellation)).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.inputs.control))
    }

    /// What the sources have accounted for, summed: after the stream ended on a
    /// [`drain`](StopHandle::drain) request, the final [`Totals`].
    pub fn totals(&self) -> Totals {
        self.inputs.inputs.iter().filter_map(|input| input.source.totals()).fold(Totals::default(), Totals::sum)
    }

    /// The next item, waiting up to `timeout` for one (`None`: as long as it takes): the
    /// blocking pull. `Ok(None)` when the timeout passed with nothing to yield, or the stream
    /// has ended (a [`StopHandle`]); after the end, every call returns `Ok(None)` at once. The
    /// wait wakes for the sources, the delay timer and a stop; a signal that interrupts it
    /// (EINTR) only makes it look at the sources again.
    pub fn next_blocking(&mut self, timeout: Option<Duration>) -> Result<Option<Event<T>>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let pulled = match &mut self.order {
            None => self.inputs.pull_blocking(deadline)?,
            Some(order) => order.pull_blocking(&mut self.inputs, deadline)?,
        };
        match pulled {
            Pulled::Item(item) => item.map(Some),
            Pulled::End | Pulled::Nothing => Ok(None),
        }
    }

    /// Ends the stream and returns its sources, in the order they were added, with every record
    /// not yet yielded still in their buffers, and the items the stream had taken but not
    /// yielded yet (drop reports only, except after a [`drain`](StopHandle::drain) request;
    /// records held for [`ordered`](Self::ordered) come first).
    pub fn into_sources(self) -> (Vec<EventSource>, Vec<Result<Event<T>, Error>>) {
        let EventStream { mut inputs, order } = self;
        let mut pending: Vec<Result<Event<T>, Error>> = order.map(Reorder::into_held).unwrap_or_default();
        pending.extend(inputs.pending.drain(..));
        inputs.inputs.sort_by_key(|input| input.added);
        let sources = inputs.inputs.into_iter().filter_map(|input| input.source.into_event_source()).collect();
        (sources, pending)
    }

    /// The async pull: the stream's order, or the merge's.
    #[cfg(feature = "tokio")]
    pub(crate) fn poll_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Event<T>, Error>>> {
        match &mut self.order {
            None => self.inputs.poll_next(cx),
            Some(order) => order.poll_next(cx, &mut self.inputs),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::{AsFd, BorrowedFd};

    use super::*;
    use crate::sys::EventFd;

    /// A source with one record whose descriptor never signals: only looking again finds it.
    /// For the first `busy_passes` passes the record cannot be taken yet (it sits behind a head
    /// record still being written, or is not written yet); `ready_now` tells of the record if
    /// `tells_ready`; `wakes` is what it tells of its producers.
    pub(crate) struct Unsignalled {
        pub fd: EventFd,
        pub busy_passes: u32,
        pub record: Option<u64>,
        pub tells_ready: bool,
        pub wakes: bool,
    }

    impl Source for Unsignalled {
        fn poll_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn ready_now(&self) -> bool {
            self.tells_ready && self.record.is_some()
        }
        fn sends_wakeups(&self) -> bool {
            self.wakes
        }
        fn consume_until(
            &mut self,
            _max: usize,
            handler: &mut dyn FnMut(Event<Record<'_>>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
            if self.busy_passes > 0 {
                self.busy_passes -= 1;
                return Ok(0);
            }
            let Some(value) = self.record.take() else { return Ok(0) };
            let _ = handler(Event::Record(Record { data: &value.to_ne_bytes(), cpu: None }));
            Ok(1)
        }
    }

    pub(crate) fn copy(r: Record<'_>) -> Result<Vec<u8>, Error> {
        Ok(r.data.to_vec())
    }

    /// A stream and a merged stream over `source()`, both asked for no delay timer, deliver its
    /// record through the blocking pull (rather than sleep forever).
    pub(crate) fn assert_found_blocking_without_a_timer(source: impl Fn() -> Unsignalled) {
        let within = Some(Duration::from_secs(10));
        let mut stream = EventStream::from_source(Box::new(source()), Box::new(copy)).unwrap();
        stream.set_max_delay(None);
        let event = stream.next_blocking(within).unwrap();
        assert_eq!(event, Some(Event::Record(42u64.to_ne_bytes().to_vec())), "the stream slept while a record waited");

        let mut merged = EventStream::from_source(Box::new(source()), Box::new(copy)).unwrap();
        merged.add_source(Box::new(source()), 0, Box::new(copy)).unwrap();
        merged.set_max_delay(None);
        for _ in 0..2 {
            let event = merged.next_blocking(within).unwrap();
            assert_eq!(event, Some(Event::Record(42u64.to_ne_bytes().to_vec())), "the merged stream slept");
        }
    }

    pub(crate) fn busy_head() -> Unsignalled {
        Unsignalled { fd: EventFd::new().unwrap(), busy_passes: 3, record: Some(42), tells_ready: true, wakes: true }
    }

    /// The record is written, without a wakeup, after the stream's first look found nothing;
    /// only the source's word that no wakeup will come keeps the stream looking.
    pub(crate) fn never_wakes() -> Unsignalled {
        Unsignalled { fd: EventFd::new().unwrap(), busy_passes: 1, record: Some(42), tells_ready: false, wakes: false }
    }

    #[test]
    fn blocking_pulls_without_a_timer_do_not_sleep_on_a_busy_head() {
        assert_found_blocking_without_a_timer(busy_head);
    }

    #[test]
    fn blocking_pulls_keep_a_timer_for_a_source_that_never_wakes_them() {
        assert_found_blocking_without_a_timer(never_wakes);
    }

    #[test]
    fn a_stop_ends_a_blocking_pull_and_malformed_records_do_not() {
        let mut stream = EventStream::from_source(
            Box::new(Unsignalled {
                fd: EventFd::new().unwrap(),
                busy_passes: 0,
                record: Some(7),
                tells_ready: true,
                wakes: true,
            }),
            Box::new(|r: Record<'_>| u128::from_record(r.data)),
        )
        .unwrap();
        let item = stream.next_blocking(Some(Duration::from_secs(10)));
        assert!(matches!(item, Err(Error::Malformed { needed: 16, actual: 8, .. })), "{item:?}");
        assert_eq!(stream.next_blocking(Some(Duration::from_millis(1))).unwrap(), None, "nothing within the timeout");
        let stop = stream.stop_handle();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            stop.cancel();
        });
        assert_eq!(stream.next_blocking(None).unwrap(), None, "the cancel ends the wait and the stream");
        assert_eq!(stream.next_blocking(None).unwrap(), None);
    }

    use crate::FromRecord;
}
