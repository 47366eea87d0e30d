//! One epoll set over many sources: ring buffers, perf buffers and [`EventSource`]s together,
//! each with its own handler and priority.
//!
//! ```no_run
//! # fn demo(mut ring: bpfstream::RingBuffer, mut perf: bpfstream::PerfBuffer) -> Result<(), bpfstream::Error> {
//! use std::time::Duration;
//! use bpfstream::{Item, Poller};
//!
//! let (mut from_ring, mut from_perf) = (0u64, 0u64);
//! let mut poller = Poller::new()?;
//! poller.add(&mut ring, |item: Item<'_>| if let Item::Record(_) = item { from_ring += 1 })?;
//! poller.add(&mut perf, |item: Item<'_>| if let Item::Record(_) = item { from_perf += 1 })?;
//! let waker = poller.waker(); // Send + Clone: call waker.wake() from a signal thread to stop
//! # waker.wake();
//! poller.run(Duration::from_millis(100))?; // until woken, then a final drain
//! # Ok(()) }
//! ```
//!
//! Every poll serves every source (the check of an empty buffer is two memory loads), so the
//! poll timeout bounds how long a record can wait even when its producer never wakes us.
//! Sources are served by priority: before a lower-priority source gets its batch, all
//! higher-priority sources are served again, so a flood in a bulk source cannot delay a
//! critical one by more than one batch.

use std::fmt;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::stats::Fill;
use crate::sys::{Epoll, EventFd};
use crate::{Error, EventSource, Item, PerfBuffer, Record, RingBuffer};

/// Something the [`Poller`] can wait on and read.
pub trait Source {
    /// A descriptor that polls readable when the source has data for us.
    fn poll_fd(&self) -> BorrowedFd<'_>;

    /// Hands at most `max` records (and any loss reports) to `handler` without blocking;
    /// returns the number of records.
    fn consume_items(&mut self, max: usize, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error>;

    /// Like [`consume_items`](Self::consume_items), but `handler` can end the pass after any
    /// item by returning [`ControlFlow::Break`]: what was handed over is consumed, the rest stays
    /// in the buffer. The async streams use it to take exactly one item out of the kernel's
    /// buffer per item they yield. The default cannot stop early (it ignores `Break`), so a
    /// source of your own should implement it.
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<usize, Error> {
        self.consume_items(max, &mut |item: Item<'_>| {
            let _ = handler(item);
        })
    }

    /// Hands over everything left, for shutdown. The default consumes until empty.
    fn drain_items(&mut self, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let n = self.consume_items(usize::MAX, handler)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Bytes waiting and capacity, if the source knows (the async streams publish it in their
    /// [`Stats`](crate::stats::Stats)). The default: unknown.
    fn fill(&self) -> Option<Fill> {
        None
    }

    /// Told after every wait of a [`Poller`] whether this source's descriptor signalled, for
    /// sources that keep [`Stats`](crate::stats::Stats). The default ignores it.
    fn note_wait(&mut self, signalled: bool) {
        let _ = signalled;
    }
}

impl Source for RingBuffer {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn consume_items(&mut self, max: usize, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        self.consume_n(max, |data: &[u8]| handler(Item::Record(Record { data, cpu: None })))
    }
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<usize, Error> {
        self.consume_n(max, |data: &[u8]| handler(Item::Record(Record { data, cpu: None })))
    }
    fn fill(&self) -> Option<Fill> {
        Some(RingBuffer::fill(self))
    }
}

impl Source for PerfBuffer {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn consume_items(&mut self, max: usize, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        self.consume_n(max, handler)
    }
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<usize, Error> {
        self.consume_n(max, handler)
    }
    fn fill(&self) -> Option<Fill> {
        Some(PerfBuffer::fill(self))
    }
}

impl Source for EventSource {
    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
    fn consume_items(&mut self, max: usize, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        self.consume_n(max, handler)
    }
    fn consume_until(
        &mut self,
        max: usize,
        handler: &mut dyn FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<usize, Error> {
        self.consume_n(max, handler)
    }
    fn drain_items(&mut self, handler: &mut dyn FnMut(Item<'_>)) -> Result<usize, Error> {
        let before = self.totals().delivered;
        let after = self.finish(handler)?.delivered;
        Ok((after - before) as usize)
    }
    fn fill(&self) -> Option<Fill> {
        Some(EventSource::fill(self))
    }
    fn note_wait(&mut self, signalled: bool) {
        EventSource::note_wait(self, signalled);
    }
}

/// How the poller serves one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceOptions {
    /// Higher is served first, and again before every batch of a lower-priority source.
    pub priority: i32,
    /// Records per batch (the weight in a round). `usize::MAX`: everything available.
    pub batch: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { priority: 0, batch: usize::MAX }
    }
}

/// Identifies a source added to a [`Poller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(pub(crate) usize);

struct Entry<'a> {
    source: &'a mut dyn Source,
    handler: Box<dyn FnMut(Item<'_>) + 'a>,
    options: SourceOptions,
    id: SourceId,
}

/// Wakes a [`Poller`] blocked in [`Poller::poll`] or [`Poller::run`] from any thread (or a
/// signal-handling thread), and makes `run` stop after a final drain.
#[derive(Debug, Clone)]
pub struct Waker(Arc<EventFd>);

impl Waker {
    /// Asks the poller to stop; safe to call any number of times, from any thread.
    pub fn wake(&self) {
        self.0.signal();
    }
}

const WAKER_TOKEN: u64 = u64::MAX;

/// Serves many sources from one epoll set; see the [module docs](self).
///
/// Not `Send`: handlers may borrow anything, including state that is not `Send` (see the crate
/// docs, "Threads"). Minimum kernel: that of its sources (5.8 for a ring, 4.4 for perf).
pub struct Poller<'a> {
    epoll: Epoll,
    waker: Arc<EventFd>,
    entries: Vec<Entry<'a>>,
    ready: Vec<u64>,
    stopped: bool,
}

impl fmt::Debug for Poller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").field("sources", &self.entries.len()).field("stopped", &self.stopped).finish()
    }
}

impl<'a> Poller<'a> {
    /// An empty poller.
    pub fn new() -> Result<Self, Error> {
        let epoll = Epoll::new()?;
        let waker = Arc::new(EventFd::new()?);
        epoll.add(waker.as_fd(), WAKER_TOKEN)?;
        Ok(Poller { epoll, waker, entries: Vec::new(), ready: Vec::new(), stopped: false })
    }

    /// Adds a source with default options; `handler` receives its records and loss reports.
    /// Both may borrow local state for `'a`.
    pub fn add(&mut self, source: &'a mut dyn Source, handler: impl FnMut(Item<'_>) + 'a) -> Result<SourceId, Error> {
        self.add_with(source, SourceOptions::default(), handler)
    }

    /// Adds a source with a priority and batch size.
    pub fn add_with(
        &mut self,
        source: &'a mut dyn Source,
        options: SourceOptions,
        handler: impl FnMut(Item<'_>) + 'a,
    ) -> Result<SourceId, Error> {
        let id = SourceId(self.entries.len());
        self.epoll.add(source.poll_fd(), id.0 as u64)?;
        self.entries.push(Entry { source, handler: Box::new(handler), options, id });
        // Stable: equal priorities keep their insertion order.
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.options.priority));
        Ok(id)
    }

    /// A handle that wakes and stops this poller from another thread.
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.waker))
    }

    /// Whether a [`Waker`] has asked this poller to stop.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Waits up to `timeout` (`None`: until a source signals or the waker fires), then serves
    /// every source by priority. Returns the number of records handled. A signal interrupting
    /// the wait (EINTR) is not an error.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<usize, Error> {
        self.epoll.wait(timeout, &mut self.ready)?;
        if self.ready.contains(&WAKER_TOKEN) && self.waker.clear() {
            self.stopped = true;
        }
        for entry in &mut self.entries {
            entry.source.note_wait(self.ready.contains(&(entry.id.0 as u64)));
        }
        self.consume()
    }

    /// Serves every source once, by priority, without blocking.
    pub fn consume(&mut self) -> Result<usize, Error> {
        let mut total = 0;
        for i in 0..self.entries.len() {
            total += self.serve(i)?;
            // Strict priority: higher-priority sources get another turn before lower ones.
            let priority = self.entries[i].options.priority;
            for j in 0..i {
                if self.entries[j].options.priority > priority {
                    total += self.serve(j)?;
                }
            }
        }
        Ok(total)
    }

    fn serve(&mut self, index: usize) -> Result<usize, Error> {
        let entry = &mut self.entries[index];
        entry.source.consume_items(entry.options.batch, &mut entry.handler)
    }

    /// Polls (each wait at most `max_delay`, the bound on delivery delay) until a [`Waker`]
    /// fires, then drains every source. Returns the number of records handled.
    pub fn run(&mut self, max_delay: Duration) -> Result<usize, Error> {
        let mut total = 0;
        while !self.stopped {
            total += self.poll(Some(max_delay))?;
        }
        Ok(total + self.drain()?)
    }

    /// Hands over everything still buffered in every source (highest priority first).
    pub fn drain(&mut self) -> Result<usize, Error> {
        let mut total = 0;
        for entry in &mut self.entries {
            total += entry.source.drain_items(&mut entry.handler)?;
        }
        Ok(total)
    }

    /// The sources in the order they are served.
    pub fn sources(&self) -> Vec<(SourceId, SourceOptions)> {
        self.entries.iter().map(|e| (e.id, e.options)).collect()
    }
}
