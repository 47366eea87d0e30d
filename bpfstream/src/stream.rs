//! Async streams of events on tokio (feature `tokio`): [`EventStream`], a
//! [`futures_core::Stream`] over an [`EventSource`] or several merged, in the
//! order the buffers hold them or in timestamp order ([`EventStream::ordered`]).
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
//! delay timer ([`EventStream::set_max_delay`], default 100 ms), or a [`StopHandle`]. The
//! timer is what delivers records produced without a wakeup (`BPF_RB_NO_WAKEUP`, a perf
//! watermark not reached) within the delay bound, and what lets an
//! [`EventSource`] read its drop counters while no record arrives. A
//! stream over a source whose producers never wake it ([`WakeupPolicy::Never`], told through
//! `expect_wakeups`) keeps the timer even when [`EventStream::set_max_delay`] asks for none.
//!
//! [`WakeupPolicy::Never`]: crate::WakeupPolicy::Never
//!
//! Before it sleeps, a stream asks the source whether bytes wait that no wakeup is certain to
//! announce (the source's own `ready_now` check): a ring whose head record is still being written (BUSY)
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
//! consumer ([`EventStream::into_sources`] gives the sources back; the blocking
//! [`EventSource::finish`](crate::EventSource::finish) then drains it). A [`StopHandle`] ends a
//! stream from anywhere: [`cancel`](StopHandle::cancel) ends it at once (records stay in the
//! buffer), [`drain`](StopHandle::drain) ends it once everything buffered and the last loss
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
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

use crate::merge::MergeStats;
use crate::ordered::Reorder;
use crate::poller::Source;
use crate::stats::{Fill, Stats, StatsHandle};
use crate::stop::{Control, StopHandle, CANCEL, DRAIN, RUNNING};
use crate::sys::Epoll;
use crate::typed::OwnedRecord;
use crate::{Error, Event, EventSource, FromRecord, Item, Record, Totals, TypedError};

/// Default bound on how long a record waits when its producer does not wake the stream.
const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(100);

// How soon a stream looks again when bytes wait but the head record is still being written
// (BUSY): the same backoff as the blocking `EventSource::poll`.
use crate::ringbuf::BUSY_BACKOFF;

/// Why a wait ended.
enum Wake {
    /// The descriptor became readable.
    Signalled,
    /// The delay timer expired.
    Timeout,
    /// The short wait for a BUSY head record expired.
    Backoff,
    /// A [`StopHandle`] asked for something.
    Control,
}

/// An fd registered with tokio, the delay timer and the cancel control: the waiting half of a
/// stream.
struct Waiter {
    fd: AsyncFd<WaitFd>,
    max_delay: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Running while the source holds bytes that cannot be taken yet (see `BUSY_BACKOFF`).
    backoff: Option<Pin<Box<Sleep>>>,
    control: Arc<Control>,
}

impl Waiter {
    /// Registers `fd` (which owns its descriptor, so that it stays open and the same for as long
    /// as the registration), answering to `control`.
    fn new(fd: WaitFd, control: Arc<Control>) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Unsupported(
                "an async event stream must be created inside a tokio runtime (with IO and time enabled)".into(),
            ));
        }
        // SAFETY: a `WaitFd` owns its descriptor (an `OwnedFd` or an `Epoll`), which therefore
        // stays open, and `as_raw_fd` returns that same descriptor until `fd` is dropped
        // or taken back with `into_inner`; nothing swaps it through `get_mut` (never called).
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::sys("registering the buffer with tokio", e.into()))?;
        Ok(Waiter { fd, max_delay: Some(DEFAULT_MAX_DELAY), timer: None, backoff: None, control })
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

/// Turns a borrowed record into an owned value while it is still in the kernel's memory.
type Decoder<T> = Box<dyn FnMut(Record<'_>) -> Result<T, TypedError> + Send>;

/// One source of a stream, with its decoder.
struct Input<T> {
    source: Box<dyn Source + Send>,
    decoder: Decoder<T>,
    priority: i32,
    /// Position in the order the sources were added.
    added: usize,
}

/// Takes at most one record (and the loss reports that come with it) from `input`, decoded,
/// into `out`; returns whether anything was taken. The record, if any, is `out`'s first new
/// element: a pass stops right after the first item the buffer hands over, so a loss report
/// found first leaves the record for the next pass.
fn take_one<T>(input: &mut Input<T>, stats: &mut Stats, out: &mut VecDeque<Event<T>>) -> Result<bool, Error> {
    let before = out.len();
    let decoder = &mut input.decoder;
    input.source.consume_until(1, &mut |item: Item<'_>| {
        out.push_back(decode_item(decoder, stats, item));
        ControlFlow::Break(())
    })?;
    Ok(out.len() > before)
}

fn decode_item<T>(decoder: &mut Decoder<T>, stats: &mut Stats, item: Item<'_>) -> Event<T> {
    match item {
        Item::Record(record) => {
            stats.events += 1;
            stats.bytes += record.data.len() as u64;
            match decoder(record) {
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

/// What a stream registers with tokio: a duplicate of its one source's poll descriptor (owning
/// it keeps the registration valid whatever the source does), or an epoll set over several.
enum WaitFd {
    Own(OwnedFd),
    Set(Epoll),
}

impl AsRawFd for WaitFd {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            WaitFd::Own(fd) => fd.as_raw_fd(),
            WaitFd::Set(epoll) => epoll.as_fd().as_raw_fd(),
        }
    }
}

/// The sources of a stream and how it takes records from them, before any reordering.
pub(crate) struct Inputs<T> {
    waiter: Waiter,
    /// By priority, highest first; equal priorities in the order they were added.
    inputs: Vec<Input<T>>,
    /// Per priority level (a run of equal priorities in `inputs`): the index to try first.
    turn: Vec<usize>,
    /// Loss reports taken with a record, or left from the final drain.
    pending: VecDeque<Event<T>>,
    done: bool,
    stats: Stats,
    stats_handle: StatsHandle,
}

impl<T> Inputs<T> {
    fn new(source: Box<dyn Source + Send>, decoder: Decoder<T>) -> Result<Self, Error> {
        let fd = source.poll_fd().try_clone_to_owned().map_err(|e| Error::sys("dup", e))?;
        Ok(Inputs {
            waiter: Waiter::new(WaitFd::Own(fd), Arc::default())?,
            inputs: vec![Input { source, decoder, priority: 0, added: 0 }],
            turn: vec![0],
            pending: VecDeque::new(),
            done: false,
            stats: Stats::default(),
            stats_handle: StatsHandle::new(),
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
        let control = Arc::clone(&self.waiter.control);
        let max_delay = self.waiter.max_delay;
        self.waiter = Waiter::new(WaitFd::Set(set), control)?;
        self.waiter.set_max_delay(max_delay);
        Ok(())
    }

    /// Bytes waiting and capacity, all sources together (those that know).
    fn fill(&self) -> Fill {
        self.inputs
            .iter()
            .filter_map(|input| input.source.fill())
            .fold(Fill::default(), |a, b| Fill { used: a.used + b.used, capacity: a.capacity + b.capacity })
    }

    /// Whether nothing waits in any source's buffer.
    pub(crate) fn is_empty(&self) -> bool {
        self.fill().used == 0
    }

    /// Takes one record from the highest-priority source that has one (equal priorities in
    /// turn), into `pending`.
    fn take_one(&mut self) -> Result<bool, Error> {
        self.stats.note_fill(Some(self.fill()));
        let mut start = 0;
        while start < self.inputs.len() {
            let priority = self.inputs[start].priority;
            let level = self.inputs[start..].iter().take_while(|input| input.priority == priority).count();
            for step in 0..level {
                let index = start + (self.turn[start] + step) % level;
                if take_one(&mut self.inputs[index], &mut self.stats, &mut self.pending)? {
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
            let (decoder, stats, pending) = (&mut input.decoder, &mut self.stats, &mut self.pending);
            input.source.drain_items(&mut |item: Item<'_>| pending.push_back(decode_item(decoder, stats, item)))?;
        }
        Ok(())
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Event<T>, Error>>> {
        self.done = true;
        self.stats_handle.publish(&self.stats);
        Poll::Ready(Some(Err(error)))
    }

    /// The next event in the order the sources hold them.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event<T>, Error>>> {
        if let Some(event) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let request = self.waiter.control.request();
            if request == CANCEL {
                self.done = true;
                return Poll::Ready(None);
            }
            let taken = self.take_one();
            self.stats_handle.publish(&self.stats);
            match taken {
                Err(e) => return self.fail(e),
                Ok(true) => {
                    coop.made_progress();
                    return Poll::Ready(self.pending.pop_front().map(Ok));
                }
                Ok(false) if request == DRAIN => {
                    let drained = self.drain_all();
                    self.done = true;
                    self.stats_handle.publish(&self.stats);
                    if let Err(e) = drained {
                        return self.fail(e);
                    }
                    return Poll::Ready(self.pending.pop_front().map(Ok));
                }
                Ok(false) => {}
            }
            // Bytes wait that no wakeup may announce (a BUSY head record, a store-buffer race
            // with the producer's check of our position): look again soon rather than sleep.
            let busy = self.inputs.iter().any(|input| input.source.ready_now());
            let unsignalled = self.inputs.iter().any(|input| !input.source.sends_wakeups());
            let signalled = match ready!(self.waiter.poll_wait(cx, busy, unsignalled)) {
                Ok(Wake::Signalled) => true,
                Ok(Wake::Timeout) => false,
                Ok(Wake::Control | Wake::Backoff) => continue,
                Err(e) => return self.fail(e),
            };
            self.stats.note_wait(signalled);
            // Which source of a set signalled is not known: only a lone source is told.
            if let [input] = &mut self.inputs[..] {
                input.source.note_wait(signalled);
            }
        }
    }
}

/// A stream of decoded [`Event`]s from one [`EventSource`], or several merged; see the
/// [module docs](self).
///
/// Records come in the order the source holds them: commit order for a ring buffer, but CPU by
/// CPU for a perf buffer, so a perf stream is out of timestamp order across CPUs;
/// [`ordered`](Self::ordered) puts it in order. A stream over several sources
/// ([`add`](Self::add)) takes one record at a time from the highest-priority source that has
/// one; sources of equal priority take turns.
///
/// Items are `Result<Event<T>, Error>`: an error (a corrupt buffer, a failing system call) is
/// the last item. `Send` when `T` is.
pub struct EventStream<T = OwnedRecord> {
    inputs: Inputs<T>,
    order: Option<Reorder<T>>,
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("sources", &self.inputs.inputs.len())
            .field("stats", &self.inputs.stats)
            .field("ordered", &self.order.is_some())
            .field("done", &self.inputs.done)
            .finish()
    }
}

impl EventStream {
    /// A stream of the source's records copied out as [`OwnedRecord`]s.
    pub fn new(source: EventSource) -> Result<Self, Error> {
        Self::with_decoder(source, |r: Record<'_>| Ok(OwnedRecord { data: r.data.to_vec(), cpu: r.cpu }))
    }

    /// A stream of `E` values decoded from the source's records (length-checked,
    /// alignment-safe: [`FromRecord`]); a record too short for `E` is an [`Event::Malformed`].
    pub fn typed<E: FromRecord + 'static>(source: EventSource) -> Result<EventStream<E>, Error> {
        EventStream::with_decoder(source, |r: Record<'_>| E::from_record(r.data))
    }

    /// A stream whose records are turned into values by `decoder`, e.g. a header and a
    /// variable-length tail ([`FromRecord::from_record_prefix`]).
    pub fn with_decoder<T: 'static>(
        source: EventSource,
        decoder: impl FnMut(Record<'_>) -> Result<T, TypedError> + Send + 'static,
    ) -> Result<EventStream<T>, Error> {
        EventStream::from_source(Box::new(source), Box::new(decoder))
    }
}

impl<T: 'static> EventStream<T> {
    pub(crate) fn from_source(source: Box<dyn Source + Send>, decoder: Decoder<T>) -> Result<Self, Error> {
        Ok(EventStream { inputs: Inputs::new(source, decoder)?, order: None })
    }

    /// Merges another source into this stream, with its own decoder into `T` and a priority
    /// (higher is served first; the first source has priority 0). To tell the sources' records
    /// apart, decode them into different values of `T` (an enum); each source's losses are in
    /// [`totals`](Self::totals) summed.
    pub fn add(
        &mut self,
        source: EventSource,
        priority: i32,
        decoder: impl FnMut(Record<'_>) -> Result<T, TypedError> + Send + 'static,
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
    /// later one was released is yielded at once and counted in
    /// [`merge_stats`](Self::merge_stats)`.late`: nothing is dropped. Losses and malformed
    /// records are not held. With several sources, priorities then no longer decide the order
    /// of records, only which source is read first.
    ///
    /// Held records are released when the stream finds the buffers empty, at the latest when
    /// its delay timer ([`set_max_delay`](Self::set_max_delay), 100 ms by default) wakes it: a
    /// record waits about `span` plus that delay. Ring buffers are in commit order already; this
    /// is for perf buffers, several sources, and rings fed from several CPUs whose timestamps
    /// must be in order.
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
    pub fn ordered(mut self, span: Duration, key: impl Fn(&T) -> u64 + Send + 'static) -> Self {
        self.order = Some(Reorder::new(span, Box::new(key)));
        self
    }

    /// How many records [`ordered`](Self::ordered) held, released in order, released late, or
    /// released early because too many were held (all 0 for a stream that is not ordered).
    pub fn merge_stats(&self) -> MergeStats {
        self.order.as_ref().map(|order| order.stats()).unwrap_or_default()
    }

    /// Bounds how long a record can wait in the buffer when its producer does not wake us
    /// (`None`: no timer; rely on wakeups alone). Default: 100 ms.
    ///
    /// A source whose producers never wake us (a ring told
    /// [`WakeupPolicy::Never`](crate::WakeupPolicy::Never) by `expect_wakeups`) cannot go
    /// without a timer: with `None` the stream keeps 100 ms, or its records would wait forever.
    pub fn set_max_delay(&mut self, max_delay: Option<Duration>) {
        self.inputs.waiter.set_max_delay(max_delay);
    }

    /// A handle that ends this stream from another task or thread (see the
    /// [module docs](self#buffering-and-cancellation)).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.inputs.waiter.control))
    }

    /// What this stream has yielded and seen so far, all sources together.
    pub fn stats(&self) -> Stats {
        self.inputs.stats
    }

    /// A handle that reads [`stats`](Self::stats) from any thread while the stream runs.
    pub fn stats_handle(&self) -> StatsHandle {
        self.inputs.stats_handle.clone()
    }

    /// What the sources have accounted for, summed: after the stream ended on a
    /// [`drain`](StopHandle::drain) request, the final [`Totals`].
    pub fn totals(&self) -> Totals {
        self.inputs.inputs.iter().filter_map(|input| input.source.totals()).fold(Totals::default(), Totals::sum)
    }

    /// Ends the stream and returns its sources, in the order they were added, with every record
    /// not yet yielded still in their buffers, and the items the stream had taken but not
    /// yielded yet (loss reports only, except after a [`drain`](StopHandle::drain) request;
    /// records held for [`ordered`](Self::ordered) come first).
    pub fn into_sources(self) -> (Vec<EventSource>, Vec<Event<T>>) {
        let EventStream { mut inputs, order } = self;
        inputs.inputs.sort_by_key(|input| input.added);
        let sources = inputs.inputs.into_iter().filter_map(|input| input.source.into_event_source()).collect();
        let mut pending: Vec<Event<T>> = order.map(Reorder::into_held).unwrap_or_default();
        pending.extend(inputs.pending);
        (sources, pending)
    }
}

// Nothing in a stream is pinned structurally (the timers are pinned in their own boxes), so the
// stream can move whatever `T` is.
impl<T> Unpin for EventStream<T> {}

impl<T: 'static> Stream for EventStream<T> {
    type Item = Result<Event<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match &mut this.order {
            None => this.inputs.poll_next(cx),
            Some(order) => order.poll_next(cx, &mut this.inputs),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::{AsFd, BorrowedFd};

    use futures_util::StreamExt;

    use super::*;
    use crate::sys::EventFd;

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

    fn copy(r: Record<'_>) -> Result<Vec<u8>, TypedError> {
        Ok(r.data.to_vec())
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
            let mut stream = EventStream::from_source(Box::new(source()), Box::new(copy)).unwrap();
            stream.set_max_delay(None);
            let event = next_within(&mut stream, "the stream slept while a record waited").await.unwrap();
            assert_eq!(event, Event::Record(42u64.to_ne_bytes().to_vec()));

            let mut merged = EventStream::from_source(Box::new(source()), Box::new(copy)).unwrap();
            merged.add_source(Box::new(source()), 0, Box::new(copy)).unwrap();
            merged.set_max_delay(None);
            for _ in 0..2 {
                let event = next_within(&mut merged, "the merged stream slept while a record waited").await.unwrap();
                assert_eq!(event, Event::Record(42u64.to_ne_bytes().to_vec()));
            }
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
