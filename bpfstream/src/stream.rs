//! Async streams of events on tokio (feature `tokio`): a [`futures_core::Stream`] over a
//! [`RingBuffer`](crate::RingBuffer), [`PerfBuffer`](crate::PerfBuffer),
//! [`EventSource`](crate::EventSource) (anything that is a [`Source`]), or several of them
//! merged ([`MergedStream`]).
//!
//! ```no_run
//! # async fn demo(source: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
//! use futures_util::StreamExt;
//! use bpfstream::stream::EventStream;
//! use bpfstream::Event;
//!
//! bpfstream::record! {
//!     pub struct Exec { pub ts_ns: u64, pub pid: u32 }
//! }
//! let mut events = EventStream::typed::<Exec>(source)?;
//! while let Some(event) = events.next().await {
//!     match event? {
//!         Event::Record(exec) => println!("exec by {}", exec.pid),
//!         Event::Lost(lost) => eprintln!("{} events lost", lost.count),
//!         Event::Malformed(error) => eprintln!("{error}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # How it waits
//!
//! The source's descriptor (a ring's map fd; a perf buffer's epoll fd over its CPUs) is
//! registered with tokio's reactor through [`AsyncFd`]. A stream takes records while there are
//! any; when the buffer is empty it waits for whichever comes first: the kernel's wakeup, the
//! delay timer ([`EventStream::set_max_delay`], default 100 ms), or a [`CancelHandle`]. The
//! timer is what delivers records produced without a wakeup (`BPF_RB_NO_WAKEUP`, a perf
//! watermark not reached) within the delay bound, and what lets an
//! [`EventSource`](crate::EventSource) read its drop counters while no record arrives. A
//! stream over a source whose producers never wake it ([`WakeupPolicy::Never`], told through
//! `expect_wakeups`) keeps the timer even when [`EventStream::set_max_delay`] asks for none.
//!
//! [`WakeupPolicy::Never`]: crate::WakeupPolicy::Never
//!
//! Before it sleeps, a stream asks the source whether bytes wait that no wakeup is certain to
//! announce ([`Source::ready_now`]): a ring whose head record is still being written (BUSY)
//! with records committed behind it. It then looks again after a millisecond instead of
//! sleeping, so such records never wait for the delay timer (or forever, without one).
//!
//! # Buffering and cancellation
//!
//! Records are copied out of the kernel's memory to be yielded as owned values, one at a time:
//! each poll takes at most one record from the buffer, decodes it while it is still in the
//! kernel's memory, and yields it in that same poll. So at most one record is ever out of the
//! kernel's buffer and not yet yielded, and only for the duration of one `poll_next`; besides it
//! the stream queues only loss reports (at most one per CPU, plus one perf LOST record, per
//! pass). The bound on memory is the kernel buffer you sized, and backpressure is the kernel's:
//! a consumer that falls behind sees drops reported as [`Event::Lost`], never an unbounded
//! queue in userspace.
//!
//! The consumer position moves past a record only in the poll that yields it. Dropping the
//! stream (or the future of `next()`, as `select!` and timeouts do) between polls therefore
//! loses nothing: every record not yet yielded is still in the kernel's buffer, for the next
//! consumer ([`EventStream::into_inner`] gives the source back; the blocking
//! [`EventSource::finish`](crate::EventSource::finish) then drains it). A [`CancelHandle`] ends a
//! stream from anywhere: [`cancel`](CancelHandle::cancel) ends it at once (records stay in the
//! buffer), [`drain`](CancelHandle::drain) ends it once everything buffered and the last loss
//! report have been yielded (detach the producers first, or it drains as long as they
//! produce).
//!
//! The stream cooperates with tokio's scheduler (`tokio::task::coop`): a busy stream yields to
//! other tasks after its budget, like tokio's own sockets.
//!
//! # Runtime
//!
//! Create and poll streams inside a tokio runtime with IO and time enabled
//! (`#[tokio::main]`, or `Builder::enable_all`); creating one outside a runtime is an
//! [`Error::Unsupported`], and tokio panics when IO or time is disabled.
//!
//! Minimum kernel: 5.8 for ring buffers (epoll on the map fd), 4.4 for perf buffers.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

use crate::poller::{Source, SourceId};
use crate::stats::{Fill, Stats, StatsHandle};
use crate::sys::Epoll;
use crate::typed::{Copied, Decode, Typed};
use crate::{Error, Event, FromRecord, Item};

pub use crate::ordered::Ordered;

/// Default bound on how long a record waits when its producer does not wake the stream.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(100);

// How soon a stream looks again when bytes wait but the head record is still being written
// (BUSY): the same backoff as the blocking `RingBuffer::poll`.
use crate::ringbuf::BUSY_BACKOFF;

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const CANCEL: u8 = 2;

/// What a [`CancelHandle`] asked for, and the waker of the task polling the stream.
#[derive(Debug, Default)]
struct Control {
    request: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Control {
    fn request(&self) -> u8 {
        self.request.load(Ordering::Acquire)
    }

    fn ask(&self, request: u8) {
        // Cancel wins over drain, whatever the order they come in.
        self.request.fetch_max(request, Ordering::AcqRel);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// Ends a stream from any task or thread (`Clone + Send + Sync`); see the
/// [module docs](self#buffering-and-cancellation).
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<Control>);

impl CancelHandle {
    /// Ends the stream at its next poll: what it has already taken from the kernel (loss reports
    /// only) is yielded, records not yet taken stay in the buffer.
    pub fn cancel(&self) {
        self.0.ask(CANCEL);
    }

    /// Ends the stream once it has yielded every record left in the buffer and the final loss
    /// report (an [`EventSource`](crate::EventSource) reads its drop counters one last time).
    /// Detach the producers first, or the drain lasts as long as they produce.
    pub fn drain(&self) {
        self.0.ask(DRAIN);
    }
}

/// Why a wait ended.
enum Wake {
    /// The descriptor became readable.
    Signalled,
    /// The delay timer expired.
    Timeout,
    /// The short wait for a BUSY head record expired.
    Backoff,
    /// A [`CancelHandle`] asked for something.
    Control,
}

/// An fd registered with tokio, the delay timer and the cancel control: the waiting half of a
/// stream.
struct Waiter<T: AsRawFd> {
    fd: AsyncFd<T>,
    max_delay: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Running while the source holds bytes that cannot be taken yet (see `BUSY_BACKOFF`).
    backoff: Option<Pin<Box<Sleep>>>,
    control: Arc<Control>,
}

impl<T: AsRawFd> Waiter<T> {
    /// Registers `fd`, which must own its descriptor (an `OwnedFd`, an [`Epoll`]), so that it
    /// stays open and the same for as long as the registration.
    fn new(fd: T) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Unsupported(
                "an async event stream must be created inside a tokio runtime (with IO and time enabled)".into(),
            ));
        }
        // SAFETY: `T` is `OwnedFd` or `EpollFd` (see the callers): it owns the descriptor, which
        // therefore stays open, and `as_raw_fd` returns that same descriptor until `fd` is dropped
        // or taken back with `into_inner`; nothing swaps it through `get_mut` (never called).
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::sys("registering the buffer with tokio", e.into()))?;
        Ok(Waiter { fd, max_delay: Some(DEFAULT_MAX_DELAY), timer: None, backoff: None, control: Arc::default() })
    }

    /// Waits for a signal from the descriptor, the delay timer or the control, and for at most
    /// [`BUSY_BACKOFF`] when `busy` (records wait behind a head record still being written, or
    /// no coming wakeup is certain to announce what waits). `unsignalled`: some producer never
    /// signals the descriptor, so the timer runs even if none was asked for
    /// ([`DEFAULT_MAX_DELAY`]). Call it only after a pass took nothing.
    fn poll_wait(&mut self, cx: &mut Context<'_>, busy: bool, unsignalled: bool) -> Poll<Result<Wake, Error>> {
        // Register before looking, so a request made after the look still wakes us.
        self.control.register(cx.waker());
        if self.control.request() != RUNNING {
            return Poll::Ready(Ok(Wake::Control));
        }
        match self.fd.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                // Clear first, then the caller takes what is there: a wakeup arriving after the
                // clear sets readiness again, so none is missed.
                guard.clear_ready();
                return Poll::Ready(Ok(Wake::Signalled));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::sys("waiting for the buffer", e))),
            Poll::Pending => {}
        }
        if busy {
            let backoff = self.backoff.get_or_insert_with(|| Box::pin(tokio::time::sleep(BUSY_BACKOFF)));
            if backoff.as_mut().poll(cx).is_ready() {
                self.backoff = None;
                return Poll::Ready(Ok(Wake::Backoff));
            }
        } else {
            self.backoff = None;
        }
        let delay = self.max_delay.or(unsignalled.then_some(DEFAULT_MAX_DELAY));
        if let Some(delay) = delay {
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if timer.as_mut().poll(cx).is_ready() {
                timer.as_mut().reset(Instant::now() + delay);
                return Poll::Ready(Ok(Wake::Timeout));
            }
        }
        Poll::Pending
    }

    fn set_max_delay(&mut self, max_delay: Option<Duration>) {
        self.max_delay = max_delay;
        self.timer = None;
    }
}

/// Takes at most one record (and the loss reports that come with it) from `source`, decoded,
/// into `out`; returns whether anything was taken. The record, if any, is `out`'s first new
/// element: a pass stops right after the first item the buffer hands over, so a loss report
/// found first leaves the record for the next pass.
fn take_one<T>(
    source: &mut dyn Source,
    decoder: &mut dyn Decode<Output = T>,
    stats: &mut Stats,
    out: &mut VecDeque<Event<T>>,
) -> Result<bool, Error> {
    let before = out.len();
    source.consume_until(1, &mut |item: Item<'_>| {
        out.push_back(decode_item(decoder, stats, item));
        ControlFlow::Break(())
    })?;
    Ok(out.len() > before)
}

fn decode_item<T>(decoder: &mut dyn Decode<Output = T>, stats: &mut Stats, item: Item<'_>) -> Event<T> {
    match item {
        Item::Record(record) => {
            stats.events += 1;
            stats.bytes += record.data.len() as u64;
            match decoder.decode(record) {
                Ok(value) => Event::Record(value),
                Err(error) => Event::Malformed(error),
            }
        }
        Item::Lost(lost) => {
            stats.lost += lost.count;
            Event::Lost(lost)
        }
    }
}

/// A stream of decoded [`Event`]s from one [`Source`]; see the [module docs](self).
///
/// Records come in the order the source holds them: commit order for a ring buffer, but CPU by
/// CPU for a perf buffer, so a perf stream is out of timestamp order across CPUs;
/// [`ordered`](Self::ordered) puts it in order.
///
/// Items are `Result<Event<D::Output>, Error>`: an error (a corrupt buffer, a failing system
/// call) is the last item. `Send` when the source and decoder are.
pub struct EventStream<S: Source, D: Decode = Copied> {
    /// A duplicate of the source's poll descriptor, registered with tokio. Owning it (rather
    /// than asking the source each time) keeps the registration valid whatever the source does.
    waiter: Waiter<OwnedFd>,
    source: S,
    decoder: D,
    /// Loss reports taken with a record, or left from the final drain.
    pending: VecDeque<Event<D::Output>>,
    done: bool,
    stats: Stats,
    stats_handle: StatsHandle,
}

impl<S: Source, D: Decode> fmt::Debug for EventStream<S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("stats", &self.stats)
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<S: Source> EventStream<S> {
    /// A stream of the source's records copied out as [`OwnedRecord`](crate::typed::OwnedRecord)s.
    pub fn new(source: S) -> Result<Self, Error> {
        Self::with_decoder(source, Copied)
    }

    /// A stream of `E` values decoded from the source's records ([`Typed`]: length-checked,
    /// alignment-safe); a record too short for `E` is an [`Event::Malformed`].
    pub fn typed<E: FromRecord>(source: S) -> Result<EventStream<S, Typed<E>>, Error> {
        EventStream::with_decoder(source, Typed::new())
    }
}

impl<S: Source, D: Decode> EventStream<S, D> {
    /// A stream whose records are turned into values by `decoder` (any
    /// `FnMut(Record<'_>) -> Result<T, TypedError>` closure, e.g. for variable-length records).
    pub fn with_decoder(source: S, decoder: D) -> Result<Self, Error> {
        let fd = source.poll_fd().try_clone_to_owned().map_err(|e| Error::sys("dup", e))?;
        Ok(EventStream {
            waiter: Waiter::new(fd)?,
            source,
            decoder,
            pending: VecDeque::new(),
            done: false,
            stats: Stats::default(),
            stats_handle: StatsHandle::new(),
        })
    }

    /// Bounds how long a record can wait in the buffer when its producer does not wake us
    /// (`None`: no timer; rely on wakeups alone). Default: [`DEFAULT_MAX_DELAY`].
    ///
    /// A source whose producers never wake us (a ring told
    /// [`WakeupPolicy::Never`](crate::WakeupPolicy::Never) by `expect_wakeups`,
    /// [`Source::sends_wakeups`] `false`) cannot go without a timer: with `None` it keeps
    /// [`DEFAULT_MAX_DELAY`], or its records would wait forever.
    pub fn set_max_delay(&mut self, max_delay: Option<Duration>) {
        self.waiter.set_max_delay(max_delay);
    }

    /// A handle that ends this stream from another task or thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(Arc::clone(&self.waiter.control))
    }

    /// What this stream has yielded and seen so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A handle that reads [`stats`](Self::stats) from any thread while the stream runs.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats_handle.clone()
    }

    /// What the source has accounted for ([`Source::totals`]; `Some` for an
    /// [`EventSource`](crate::EventSource)): after the stream ended on a
    /// [`drain`](CancelHandle::drain) request, the final [`Totals`](crate::Totals).
    pub fn totals(&self) -> Option<crate::Totals> {
        self.source.totals()
    }

    /// The source.
    pub fn get_ref(&self) -> &S {
        &self.source
    }

    /// Ends the stream and returns the source, with every record not yet yielded still in its
    /// buffer, and the items the stream had taken but not yielded yet (loss reports only, except
    /// after a [`drain`](CancelHandle::drain) request).
    pub fn into_inner(self) -> (S, Vec<Event<D::Output>>) {
        (self.source, self.pending.into())
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Event<D::Output>, Error>>> {
        self.done = true;
        self.stats_handle.publish(&self.stats);
        Poll::Ready(Some(Err(error)))
    }
}

// Nothing in a stream is pinned structurally (the timer is pinned in its own box), so the
// stream can move whatever its type parameters are.
impl<S: Source, D: Decode> Unpin for EventStream<S, D> {}

impl<S: Source, D: Decode> Stream for EventStream<S, D> {
    type Item = Result<Event<D::Output>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let request = this.waiter.control.request();
            if request == CANCEL {
                this.done = true;
                return Poll::Ready(None);
            }
            let source = &mut this.source;
            this.stats.note_fill(source.fill());
            let taken = take_one(source, &mut this.decoder, &mut this.stats, &mut this.pending);
            this.stats_handle.publish(&this.stats);
            match taken {
                Err(e) => return this.fail(e),
                Ok(true) => {
                    coop.made_progress();
                    return Poll::Ready(this.pending.pop_front().map(Ok));
                }
                Ok(false) if request == DRAIN => {
                    // Empty: the last word of the source (an EventSource's final counter read).
                    let (decoder, stats, pending) = (&mut this.decoder, &mut this.stats, &mut this.pending);
                    let drained = source.drain_items(&mut |item: Item<'_>| {
                        pending.push_back(decode_item(decoder, stats, item));
                    });
                    this.done = true;
                    this.stats_handle.publish(&this.stats);
                    if let Err(e) = drained {
                        return this.fail(e);
                    }
                    return Poll::Ready(this.pending.pop_front().map(Ok));
                }
                Ok(false) => {}
            }
            // Bytes wait that no wakeup may announce (a BUSY head record, a store-buffer race
            // with the producer's check of our position): look again soon rather than sleep.
            let busy = this.source.ready_now();
            match ready!(this.waiter.poll_wait(cx, busy, !this.source.sends_wakeups())) {
                Ok(Wake::Signalled) => {
                    this.stats.note_wait(true);
                    this.source.note_wait(true);
                }
                Ok(Wake::Timeout) => {
                    this.stats.note_wait(false);
                    this.source.note_wait(false);
                }
                Ok(Wake::Control | Wake::Backoff) => {}
                Err(e) => return this.fail(e),
            }
        }
    }
}

/// The epoll set of a [`MergedStream`], as something tokio can register.
struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An item of a [`MergedStream`]: the source it came from and the event, or the error that ends
/// the stream.
pub type MergedItem<T> = Result<(SourceId, Event<T>), Error>;

struct Merged<'a, T> {
    source: Box<dyn Source + Send + 'a>,
    decoder: Box<dyn Decode<Output = T> + Send + 'a>,
    priority: i32,
    id: SourceId,
}

/// One stream over many sources (rings, perf buffers, event sources), each with its own
/// decoder into a common type `T` and a priority; items are `(SourceId, Event<T>)`.
///
/// Each poll takes one record from the highest-priority source that has one; sources of equal
/// priority take turns. So records come out of timestamp order across sources (and across CPUs
/// of a perf source); [`ordered`](Self::ordered) puts them in order. Buffering, waiting and cancellation are those of [`EventStream`] (one
/// epoll set over all the sources is registered with tokio).
///
/// ```no_run
/// # async fn demo(execs: bpfstream::EventSource, opens: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
/// use futures_util::StreamExt;
/// use bpfstream::stream::MergedStream;
/// use bpfstream::typed::{OwnedRecord, TypedError};
/// use bpfstream::{Event, Record};
///
/// let copy = |r: Record<'_>| -> Result<Vec<u8>, TypedError> { Ok(r.data.to_vec()) };
/// let mut merged = MergedStream::new()?;
/// let exec_id = merged.add(execs, 1, copy)?; // served first
/// let _open_id = merged.add(opens, 0, copy)?;
/// while let Some(item) = merged.next().await {
///     let (id, event) = item?;
///     if let Event::Record(bytes) = event {
///         println!("{} bytes from {}", bytes.len(), if id == exec_id { "exec" } else { "open" });
///     }
/// }
/// # Ok(()) }
/// ```
pub struct MergedStream<'a, T> {
    waiter: Waiter<EpollFd>,
    sources: Vec<Merged<'a, T>>,
    /// Per priority level (a run of equal priorities in `sources`): the index to try first.
    turn: Vec<usize>,
    pending: VecDeque<(SourceId, Event<T>)>,
    scratch: VecDeque<Event<T>>,
    done: bool,
    stats: Stats,
    stats_handle: StatsHandle,
}

impl<T> fmt::Debug for MergedStream<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedStream")
            .field("sources", &self.sources.len())
            .field("stats", &self.stats)
            .field("done", &self.done)
            .finish()
    }
}

impl<'a, T> MergedStream<'a, T> {
    /// A stream with no sources yet.
    pub fn new() -> Result<Self, Error> {
        Ok(MergedStream {
            waiter: Waiter::new(EpollFd(Epoll::new()?))?,
            sources: Vec::new(),
            turn: Vec::new(),
            pending: VecDeque::new(),
            scratch: VecDeque::new(),
            done: false,
            stats: Stats::default(),
            stats_handle: StatsHandle::new(),
        })
    }

    /// Adds a source; higher `priority` is served first. Returns the id its items carry.
    pub fn add(
        &mut self,
        source: impl Source + Send + 'a,
        priority: i32,
        decoder: impl Decode<Output = T> + Send + 'a,
    ) -> Result<SourceId, Error> {
        let id = SourceId(self.sources.len());
        self.waiter.fd.get_ref().0.add(source.poll_fd(), id.0 as u64)?;
        self.sources.push(Merged { source: Box::new(source), decoder: Box::new(decoder), priority, id });
        // Stable: equal priorities keep their insertion order.
        self.sources.sort_by_key(|s| std::cmp::Reverse(s.priority));
        self.turn = vec![0; self.sources.len()];
        Ok(id)
    }

    /// As [`EventStream::set_max_delay`]: with `None`, the stream still keeps
    /// [`DEFAULT_MAX_DELAY`] while any of its sources never wakes it.
    pub fn set_max_delay(&mut self, max_delay: Option<Duration>) {
        self.waiter.set_max_delay(max_delay);
    }

    /// A handle that ends this stream from another task or thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(Arc::clone(&self.waiter.control))
    }

    /// What this stream has yielded and seen so far, all sources together.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A handle that reads [`stats`](Self::stats) from any thread while the stream runs.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats_handle.clone()
    }

    /// Bytes waiting and capacity, all sources together (those that know).
    pub(crate) fn fill(&self) -> Fill {
        self.sources
            .iter()
            .filter_map(|s| s.source.fill())
            .fold(Fill::default(), |a, b| Fill { used: a.used + b.used, capacity: a.capacity + b.capacity })
    }

    /// Takes one record from the highest-priority source that has one (equal priorities in
    /// turn), into `pending`.
    fn take_one(&mut self) -> Result<bool, Error> {
        self.stats.note_fill(Some(self.fill()));
        let mut start = 0;
        while start < self.sources.len() {
            let priority = self.sources[start].priority;
            let end = start + self.sources[start..].iter().take_while(|s| s.priority == priority).count();
            let level = end - start;
            for step in 0..level {
                let index = start + (self.turn[start] + step) % level;
                let entry = &mut self.sources[index];
                if take_one(&mut *entry.source, &mut *entry.decoder, &mut self.stats, &mut self.scratch)? {
                    self.turn[start] = (index - start + 1) % level;
                    let id = entry.id;
                    self.pending.extend(self.scratch.drain(..).map(|event| (id, event)));
                    return Ok(true);
                }
            }
            start = end;
        }
        Ok(false)
    }

    fn drain_all(&mut self) -> Result<(), Error> {
        for entry in &mut self.sources {
            let (decoder, stats, pending, id) = (&mut entry.decoder, &mut self.stats, &mut self.pending, entry.id);
            entry.source.drain_items(&mut |item: Item<'_>| {
                pending.push_back((id, decode_item(&mut **decoder, stats, item)));
            })?;
        }
        Ok(())
    }

    fn fail(&mut self, error: Error) -> Poll<Option<MergedItem<T>>> {
        self.done = true;
        self.stats_handle.publish(&self.stats);
        Poll::Ready(Some(Err(error)))
    }
}

impl<T> Unpin for MergedStream<'_, T> {}

impl<T> Stream for MergedStream<'_, T> {
    type Item = MergedItem<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(item) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(item)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let request = this.waiter.control.request();
            if request == CANCEL {
                this.done = true;
                return Poll::Ready(None);
            }
            let taken = this.take_one();
            this.stats_handle.publish(&this.stats);
            match taken {
                Err(e) => return this.fail(e),
                Ok(true) => {
                    coop.made_progress();
                    return Poll::Ready(this.pending.pop_front().map(Ok));
                }
                Ok(false) if request == DRAIN => {
                    let drained = this.drain_all();
                    this.done = true;
                    this.stats_handle.publish(&this.stats);
                    if let Err(e) = drained {
                        return this.fail(e);
                    }
                    return Poll::Ready(this.pending.pop_front().map(Ok));
                }
                Ok(false) => {}
            }
            // As in EventStream: never sleep while a source holds bytes no wakeup may announce.
            let busy = this.sources.iter().any(|s| s.source.ready_now());
            let unsignalled = this.sources.iter().any(|s| !s.source.sends_wakeups());
            match ready!(this.waiter.poll_wait(cx, busy, unsignalled)) {
                Ok(Wake::Signalled) => this.stats.note_wait(true),
                Ok(Wake::Timeout) => this.stats.note_wait(false),
                Ok(Wake::Control | Wake::Backoff) => {}
                Err(e) => return this.fail(e),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::{AsFd, BorrowedFd};

    use futures_util::StreamExt;

    use super::*;
    use crate::sys::EventFd;
    use crate::Record;

    /// A source with one record whose descriptor never signals: only looking again finds it.
    /// For the first `busy_passes` passes the record cannot be taken yet (it sits behind a head
    /// record still being written, or is not written yet); `ready_now` tells of the record if `tells_ready`; `wakes` is what it tells of
    /// its producers.
    struct Unsignalled {
        fd: EventFd,
        busy_passes: u32,
        record: Option<u64>,
        tells_ready: bool,
        wakes: bool,
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
            handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
        ) -> Result<usize, Error> {
            if self.busy_passes > 0 {
                self.busy_passes -= 1;
                return Ok(0);
            }
            let Some(value) = self.record.take() else { return Ok(0) };
            let _ = handler(Item::Record(Record { data: &value.to_ne_bytes(), cpu: None }));
            Ok(1)
        }
    }

    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// The next item of `stream`, which must come within 10 s. (Not `tokio::time::timeout`:
    /// it polls the stream once more when the time is up, which finds what a stream asleep
    /// forever would have missed.)
    pub(crate) async fn next_within<St: Stream + Unpin>(stream: &mut St, what: &str) -> St::Item {
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("{what}"),
            item = stream.next() => item.expect("the stream ended"),
        }
    }

    /// A stream and a merged stream over `source()`, both asked for no delay timer, deliver its
    /// record (rather than sleep forever).
    fn assert_found_without_a_timer(source: impl Fn() -> Unsignalled) {
        runtime().block_on(async {
            let mut stream = EventStream::new(source()).unwrap();
            stream.set_max_delay(None);
            let event = next_within(&mut stream, "the stream slept while a record waited").await.unwrap();
            assert!(matches!(event, Event::Record(r) if r.data == 42u64.to_ne_bytes()));

            let mut merged = MergedStream::new().unwrap();
            merged.add(source(), 0, Copied).unwrap();
            merged.set_max_delay(None);
            let next = next_within(&mut merged, "the merged stream slept while a record waited").await;
            let (_, event) = next.unwrap();
            assert!(matches!(event, Event::Record(r) if r.data == 42u64.to_ne_bytes()));
        });
    }

    #[test]
    fn streams_without_a_timer_do_not_sleep_on_a_busy_head() {
        assert_found_without_a_timer(|| Unsignalled {
            fd: EventFd::new().unwrap(),
            busy_passes: 3,
            record: Some(42),
            tells_ready: true,
            wakes: true,
        });
    }

    #[test]
    fn streams_keep_a_timer_for_a_source_that_never_wakes_them() {
        // The record is written, without a wakeup, after the stream's first look found nothing;
        // only the source's word that no wakeup will come keeps the stream looking.
        assert_found_without_a_timer(|| Unsignalled {
            fd: EventFd::new().unwrap(),
            busy_passes: 1,
            record: Some(42),
            tells_ready: false,
            wakes: false,
        });
    }
}
