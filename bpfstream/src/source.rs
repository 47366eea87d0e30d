//! One event stream for either transport: a ring buffer or a perf buffer, plus the BPF-side
//! drop counters, so a tool reads records and drops the same way whatever the kernel offers.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accounting::DropCounters;
use crate::records::{Ended, Records};
use crate::ringbuf::{self, Waited};
use crate::stop::{Control, StopHandle, RUNNING};
use crate::sys::{self, map_type, EventFd};
use crate::{perfbuf, Dropped, Error, Event, Failure, Fill, Flow, Options, PerfBuffer, Record, RingBuffer};
use crate::{Totals, TotalsHandle};

/// Which kind of buffer carries the events (`Display`: `ring`, `perf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `BPF_MAP_TYPE_RINGBUF`: one ring for all CPUs (Linux 5.8+).
    Ring,
    /// `BPF_MAP_TYPE_PERF_EVENT_ARRAY`: a ring per CPU (Linux 4.4+).
    Perf,
}

impl Transport {
    /// The best transport this kernel has: [`Transport::Ring`] if it can create a ring buffer
    /// map (it creates and frees a one-page ring), else [`Transport::Perf`].
    pub fn probe() -> Transport {
        match sys::map_create(map_type::RINGBUF, 0, 0, sys::page_size() as u32) {
            Ok(_) => Transport::Ring,
            Err(_) => Transport::Perf,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Ring => "ring",
            Transport::Perf => "perf",
        })
    }
}

/// How long a [`StopHandle`] drain waits for a record still being written (BUSY) at the head of
/// a ring: its program runs on another CPU and commits within microseconds, unless that CPU is
/// preempted.
const BUSY_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How often a wait without a timeout looks at a ring whose producers never wake it.
const UNWOKEN_LOOK_EVERY: Duration = Duration::from_millis(100);

pub(crate) enum Buffer {
    Ring(RingBuffer),
    Perf(PerfBuffer),
}

/// A ring or perf buffer with its drop counters: hands over [`Event::Record`]s and
/// [`Event::Dropped`] reports and keeps [`Totals`].
///
/// Three ways to take records, all lending them from the kernel's memory without a copy:
/// [`consume`](Self::consume) (what is there now) and [`poll`](Self::poll) (wait, then consume)
/// call a handler; [`read`](Self::read) waits and returns the batch as an iterator. Then
/// [`finish`](Self::finish), once the programs are detached, hands over the rest, exactly.
///
/// ```no_run
/// # fn demo(mut source: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
/// use std::time::{Duration, Instant};
/// use bpfstream::{Event, FromRecord};
///
/// // A handler that may borrow local state (no 'static, no Arc).
/// let mut pids = Vec::new();
/// source.poll(Some(Duration::from_millis(100)), |event| match event {
///     Event::Record(record) => pids.extend(u32::from_record(record.data)),
///     Event::Dropped(dropped) => eprintln!("{} dropped", dropped.count),
/// })?;
/// // Or pull: the batch's records are lent until the next call on the source.
/// for event in source.read(Some(Duration::from_millis(100)))? {
///     if let Event::Record(record) = event {
///         println!("{} bytes", record.data.len());
///     }
/// }
/// // After detaching the programs: everything left, and totals that add up.
/// let totals = source.finish(Instant::now() + Duration::from_secs(1), |_| ())?;
/// println!("{} delivered + {} dropped of {:?}", totals.delivered, totals.dropped, totals.produced);
/// # Ok(()) }
/// ```
///
/// Minimum kernel: 5.8 for a ring, 4.4 for a perf buffer; [`open`](Self::open) 4.13
/// (`BPF_OBJ_GET_INFO_BY_FD`).
pub struct EventSource {
    pub(crate) buffer: Buffer,
    counters: Option<DropCounters>,
    counter_interval: Duration,
    last_counter_read: Option<Instant>,
    /// Per CPU: drops reported by perf LOST records.
    perf_lost: Vec<u64>,
    pub(crate) totals: Totals,
    handle: TotalsHandle,
    /// What a [`StopHandle`] asked; its eventfd is in the buffer's wait set.
    control: Arc<Control>,
    /// The error that ended a pulled batch early: the next call returns it.
    pub(crate) deferred: Option<Error>,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource").field("transport", &self.transport()).field("totals", &self.totals).finish()
    }
}

impl EventSource {
    /// Opens `events_map` as whatever it is: a ring buffer (its size is the map's), or a perf
    /// event array (a buffer of `options.buffer_bytes` per CPU); with `counters_map`, the
    /// per-CPU drop counters of `bpfstream.h` (`bpfstream_stats`, or `NAME_stats` for a stream
    /// `BPFSTREAM_STREAM(NAME)`), which make ring drops visible and `produced` known. Without a
    /// loader of your own, [`crate::aya::open`] finds both maps by name.
    pub fn open(events_map: impl AsFd, counters_map: Option<BorrowedFd<'_>>, options: &Options) -> Result<Self, Error> {
        const EXPECTED: &str = "BPF_MAP_TYPE_RINGBUF or BPF_MAP_TYPE_PERF_EVENT_ARRAY";
        let map = events_map.as_fd();
        let info = sys::map_info_of(map, EXPECTED)?;
        let buffer = match info.map_type {
            map_type::RINGBUF => {
                let mut ring = RingBuffer::new(map)?;
                ring.expect_wakeups(options.wakeup);
                Buffer::Ring(ring)
            }
            map_type::PERF_EVENT_ARRAY => Buffer::Perf(PerfBuffer::new(map, options)?),
            other => {
                return Err(Error::WrongMapType {
                    expected: EXPECTED.into(),
                    actual: format!("{} ({:?})", map_type::name(other), info.name()),
                })
            }
        };
        let stop = EventFd::new()?;
        let handle = match &buffer {
            Buffer::Ring(r) => {
                r.watch_stop(stop.as_fd())?;
                TotalsHandle::new(r.fill_reader())
            }
            Buffer::Perf(p) => {
                p.watch_stop(stop.as_fd())?;
                TotalsHandle::new(p.fill_reader())
            }
        };
        Ok(EventSource {
            buffer,
            counters: counters_map.map(DropCounters::new).transpose()?,
            counter_interval: options.counter_interval,
            last_counter_read: None,
            perf_lost: Vec::new(),
            totals: Totals::default(),
            handle,
            control: Arc::new(Control::with_fd(stop)),
            deferred: None,
        })
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        match self.buffer {
            Buffer::Ring(_) => Transport::Ring,
            Buffer::Perf(_) => Transport::Perf,
        }
    }

    /// Bytes of memory mapped for the buffer (all CPUs for perf; for a ring, the data once plus
    /// its two control pages: the kernel maps the data pages twice but allocates them once).
    pub fn mapped_bytes(&self) -> u64 {
        match &self.buffer {
            Buffer::Ring(r) => r.fill().capacity + 2 * sys::page_size() as u64,
            Buffer::Perf(p) => p.mapped_bytes() as u64,
        }
    }

    /// What this source has handed over and counted so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// How full the buffer is, read now (two memory loads; per CPU for a perf buffer).
    pub fn fill(&self) -> Fill {
        match &self.buffer {
            Buffer::Ring(r) => r.fill(),
            Buffer::Perf(p) => p.fill(),
        }
    }

    /// A handle that reads [`totals`](Self::totals) and [`fill`](Self::fill) from any thread,
    /// also while a [`Poller`](crate::Poller) or a stream holds the source (take it before).
    pub fn totals_handle(&self) -> TotalsHandle {
        self.handle.clone()
    }

    /// A handle that stops this source's waits from another thread: a [`poll`](Self::poll) or
    /// [`read`](Self::read) blocked in its wait returns at once, and later ones do not wait
    /// (they take what is buffered, if anything). The caller's loop then sees
    /// [`StopHandle::is_stopped`] and ends, typically with [`finish`](Self::finish) after
    /// detaching the programs. (A [`Poller`](crate::Poller) or a stream that serves the source
    /// is stopped through its own handle.)
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.control))
    }

    fn stopped(&self) -> bool {
        self.control.request() != RUNNING
    }

    /// Publishes the totals to the [`TotalsHandle`].
    fn publish(&mut self) {
        self.handle.publish(&self.totals);
    }

    /// Consumes what is buffered now, without blocking; returns the number of records handed
    /// over. Drop counters are read if the counter interval has passed
    /// ([`Options::counter_interval`]).
    pub fn consume<F: Flow>(&mut self, mut handler: impl FnMut(Event<Record<'_>>) -> F) -> Result<usize, F::Error> {
        let mut failure = Failure::default();
        let n = self.consume_n(usize::MAX, &mut |event: Event<Record<'_>>| failure.check(handler(event)));
        failure.result(n)
    }

    /// Waits up to `timeout` for records (`None`: until some come), then consumes. The timeout
    /// also bounds how long a record can wait when the producers do not wake the consumer
    /// (`BPF_RB_NO_WAKEUP`, perf watermarks); with no timeout on a ring whose producers never
    /// wake it ([`WakeupPolicy::Never`](crate::WakeupPolicy::Never)), it looks every 100 ms.
    ///
    /// The wait ends early, and `poll` consumes what is there (perhaps nothing) and returns
    /// `Ok`, when a signal interrupts it (EINTR: the signal's handler has run, and the caller's
    /// loop can look at what it set) or a [`StopHandle`] asks.
    pub fn poll<F: Flow>(
        &mut self,
        timeout: Option<Duration>,
        handler: impl FnMut(Event<Record<'_>>) -> F,
    ) -> Result<usize, F::Error> {
        self.wait_for_records(timeout)?;
        self.consume(handler)
    }

    /// Waits as [`poll`](Self::poll) does, then returns what is buffered as an iterator (the
    /// pull API, as aya's `RingBuf::next` and cilium's `Reader.Read`): records lent from the
    /// kernel's memory, and drop reports. The consumer position moves past the batch at the next
    /// call on the source, or when it is dropped (every call needs `&mut self`, so no record of
    /// the batch is alive then): the batch is freed at once, and the producers' space is
    /// returned once per batch, not per record. A record the iterator did not reach stays for
    /// the next call. Taking a batch costs a wait at most; its records then cost a few
    /// instructions each, inlined into the caller's loop.
    ///
    /// ```no_run
    /// # fn demo(source: &mut bpfstream::EventSource) -> Result<(), bpfstream::Error> {
    /// use bpfstream::Event;
    /// let mut bytes = 0;
    /// for event in source.read(Some(std::time::Duration::from_millis(100)))? {
    ///     match event {
    ///         Event::Record(record) => bytes += record.data.len(),
    ///         Event::Dropped(dropped) => eprintln!("{} dropped", dropped.count),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// A corrupt record (a header the protocol cannot produce) ends the batch before it; the
    /// next call returns the [`Error::Corrupt`].
    // Inlined, so that the batch is made in the caller's frame: its cursor then stays in the
    // caller's registers through the loop (a `Records` returned through memory would not).
    #[inline(always)]
    pub fn read(&mut self, timeout: Option<Duration>) -> Result<Records<'_>, Error> {
        let drops = self.prepare_read(timeout)?;
        Ok(Records::new(self, drops))
    }

    /// What [`read`](Self::read) does before the batch: the error of the last batch, the wait,
    /// and the drop counters if they are due (their reports, to hand over after the records).
    fn prepare_read(&mut self, timeout: Option<Duration>) -> Result<Vec<Dropped>, Error> {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        self.wait_for_records(timeout)?;
        self.totals.note_fill(self.fill());
        let mut drops = Vec::new();
        if self.counters_due() {
            self.report_counter_drops(&mut |event: Event<Record<'_>>| {
                if let Event::Dropped(dropped) = event {
                    drops.push(dropped);
                }
            })?;
        }
        self.publish();
        Ok(drops)
    }

    /// Where a pulled batch ended (to publish at the next call), what it handed over, and the
    /// error that ended it early.
    #[cold]
    pub(crate) fn end_pull(&mut self, ended: Ended, error: Option<Error>, delivered: u64, bytes: u64) {
        match (&mut self.buffer, ended) {
            (Buffer::Ring(ring), Ended::Ring(position)) => ring.finish_batch(position),
            (Buffer::Perf(perf), Ended::Perf(tails)) => perf.finish_batch(&tails),
            _ => unreachable!("a batch of the source's own buffer"),
        }
        self.deferred = error;
        self.totals.delivered += delivered;
        self.totals.bytes += bytes;
        self.publish();
    }

    /// A perf LOST report of a pulled batch: counted, and what the drop counters have not
    /// reported already (`None`: all of it).
    pub(crate) fn note_pulled_drop(&mut self, dropped: Dropped) -> Option<Dropped> {
        let new = note_perf_lost(&mut self.perf_lost, self.counters.as_mut(), dropped);
        self.totals.dropped += new;
        (new > 0).then_some(Dropped { count: new, ..dropped })
    }

    /// Waits up to `timeout` for records, as [`poll`](Self::poll) describes; not at all once a
    /// stop was asked.
    fn wait_for_records(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        if timeout.is_none() && !self.sends_wakeups() {
            while self.fill().used == 0 && !self.stopped() {
                if self.wait_once(Some(UNWOKEN_LOOK_EVERY))? == Waited::Interrupted {
                    break;
                }
            }
        } else if !self.stopped() {
            self.wait_once(timeout)?;
        }
        ringbuf::wait_past_busy(deadline, || self.head_is_busy() && !self.stopped());
        Ok(())
    }

    /// One wait of at most `timeout` for the producers' wakeup (none if records wait that no
    /// wakeup may announce), counted in the totals.
    fn wait_once(&mut self, timeout: Option<Duration>) -> Result<Waited, Error> {
        if self.ready_now() {
            return Ok(Waited::NotWoken);
        }
        let waited = match &mut self.buffer {
            Buffer::Ring(r) => r.wait(timeout)?,
            Buffer::Perf(p) => p.wait(timeout)?,
        };
        self.note_wait(waited == Waited::Woken);
        Ok(waited)
    }

    /// Counts a wait for this source's descriptor: `signalled` if it became readable, otherwise
    /// it timed out (or another source woke the waiter).
    pub(crate) fn note_wait(&mut self, signalled: bool) {
        self.totals.note_wait(signalled);
    }

    /// Whether records wait that no coming wakeup is certain to announce, so that sleeping until
    /// the next wakeup could strand them: for a ring, at least the wakeup threshold of its
    /// producers' policy ([`Options::wakeup`]) is waiting (with the default policy: anything at
    /// all); for a perf buffer, the last consume stopped early and left records behind.
    pub(crate) fn ready_now(&self) -> bool {
        match &self.buffer {
            Buffer::Ring(r) => r.ready_now(),
            Buffer::Perf(p) => p.ready_now(),
        }
    }

    /// Whether the producers wake the consumer at all; perf buffers always do.
    pub(crate) fn sends_wakeups(&self) -> bool {
        match &self.buffer {
            Buffer::Ring(r) => r.sends_wakeups(),
            Buffer::Perf(_) => true,
        }
    }

    /// Like [`consume`](Self::consume), at most `max` records, with a handler of the consume
    /// loops' own verdict.
    pub(crate) fn consume_n<H>(&mut self, max: usize, handler: &mut H) -> Result<usize, Error>
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()> + ?Sized,
    {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        self.totals.note_fill(self.fill());
        let n = self.consume_buffer(max, handler);
        let counted = match n.is_ok() && self.counters_due() {
            true => self.report_counter_drops(&mut |event: Event<Record<'_>>| handler(event)),
            false => Ok(()),
        };
        self.publish();
        counted.and(n)
    }

    /// When a consume would hand over nothing and change nothing (a ring holding no record, not
    /// even a BUSY one, with no drop report due, no error to return and no pulled batch to
    /// settle): publishes the totals (the wait just counted) and returns true. A perf buffer
    /// never passes (its LOST records and per-CPU tails are for its consume to find).
    pub(crate) fn pass_if_quiet(&mut self) -> bool {
        let quiet = match &self.buffer {
            Buffer::Ring(ring) => {
                !ring.holds_lent() && ring.fill().used == 0 && self.deferred.is_none() && !self.counters_due()
            }
            Buffer::Perf(_) => false,
        };
        if quiet {
            self.publish();
        }
        quiet
    }

    fn counters_due(&self) -> bool {
        self.last_counter_read.is_none_or(|t| t.elapsed() >= self.counter_interval)
    }

    /// The exact end of the stream, once the caller has detached every program that writes to
    /// it (closed its links, or dropped the `aya::Ebpf` that holds them): hands over everything
    /// the programs wrote, with the final drop reports, and returns the final [`Totals`], by
    /// `deadline`. Then, with drop counters, `delivered + dropped == produced`, to the last
    /// record.
    ///
    /// What it does, in rounds: waits for an RCU grace period (`membarrier(2)`), so that no run
    /// of a detached program that started before can still be going; takes one snapshot of the
    /// drop counters (`produced` and `dropped` from the same read) and reports its drops; drains
    /// until `delivered + dropped` reaches that `produced`, waiting out records still being
    /// written (BUSY); and again, after another grace period, until two snapshots agree (a
    /// program that entered late, through a faultable tracepoint or a uprobe, shows as a counter
    /// that moved). Without drop counters: one grace period, then a drain until the buffer is
    /// empty and no record at its head is BUSY.
    ///
    /// At `deadline` it returns what it has: then `produced` may exceed `delivered + dropped`,
    /// and what they disagree on is the caller's to report. A handler that stops ends it early
    /// (the totals so far); one that fails, with its error. Producers still attached keep it
    /// busy until the deadline and make the totals a moment's view, not a final one.
    pub fn finish<F: Flow>(
        &mut self,
        deadline: Instant,
        mut handler: impl FnMut(Event<Record<'_>>) -> F,
    ) -> Result<Totals, F::Error> {
        let mut previous = None;
        loop {
            sys::wait_for_running_programs();
            let (totals, stopped) = self.settle(deadline, &mut handler)?;
            if stopped || totals.produced.is_none() || previous == totals.produced || Instant::now() >= deadline {
                return Ok(totals);
            }
            previous = totals.produced;
        }
    }

    /// One round of [`finish`](Self::finish), after a grace period: one snapshot of the drop
    /// counters, its drops reported, then a drain until `delivered + dropped` reaches its
    /// `produced` (without counters: until empty), or `deadline`. Returns the totals, and
    /// whether the handler stopped.
    pub(crate) fn settle<F: Flow>(
        &mut self,
        deadline: Instant,
        handler: impl FnMut(Event<Record<'_>>) -> F,
    ) -> Result<(Totals, bool), F::Error> {
        let mut failure = Failure::default();
        let stopped = Cell::new(false);
        let mut handler = stopping(&mut failure, &stopped, handler);
        let drained = match self.counters.is_some() {
            true => self.drain_to_snapshot(deadline, &mut handler, &stopped),
            false => self.drain_with(deadline, &mut handler, &stopped),
        };
        drop(handler);
        self.publish();
        failure.result(drained.map(|()| (self.totals, stopped.get())))
    }

    /// Drains everything buffered and reads the drop counters one last time: what a
    /// [`StopHandle`] drain of a poller or a stream does. A record still being written (BUSY) at
    /// the head of a ring is waited for, up to [`BUSY_DRAIN_LIMIT`].
    pub(crate) fn drain<F: Flow>(&mut self, handler: impl FnMut(Event<Record<'_>>) -> F) -> Result<Totals, F::Error> {
        let mut failure = Failure::default();
        let stopped = Cell::new(false);
        let mut handler = stopping(&mut failure, &stopped, handler);
        let drained = self.drain_with(Instant::now() + BUSY_DRAIN_LIMIT, &mut handler, &stopped);
        drop(handler);
        self.publish();
        failure.result(drained.map(|()| self.totals))
    }

    /// Consumes until the buffer is empty with no BUSY head (or `deadline`), then, unless the
    /// handler stopped, reads the drop counters one last time.
    fn drain_with<H>(&mut self, deadline: Instant, handler: &mut H, stopped: &Cell<bool>) -> Result<(), Error>
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        ringbuf::drain_past_busy(deadline, || {
            if stopped.get() {
                return Ok((0, false));
            }
            // Looked at before the pass: a head committed during it is taken by it.
            let busy = self.head_is_busy();
            let n = self.consume_buffer(usize::MAX, handler)?;
            Ok((n, busy))
        })?;
        // The handler stopped (or failed): what it has not taken stays, and so do the counters.
        if stopped.get() {
            return Ok(());
        }
        self.report_counter_drops(handler)
    }

    /// One snapshot of the drop counters, its drops reported, then consumes until `delivered +
    /// dropped` reaches its `produced`, the handler stops, or nothing is buffered past `deadline`.
    fn drain_to_snapshot<H>(&mut self, deadline: Instant, handler: &mut H, stopped: &Cell<bool>) -> Result<(), Error>
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        let Some(counters) = &mut self.counters else { return Ok(()) };
        let snapshot = counters.read()?;
        for dropped in counters.drops_in(&snapshot, Some(&self.perf_lost)) {
            self.totals.dropped += dropped.count;
            if !stopped.get() {
                let _ = handler(Event::Dropped(dropped));
            }
        }
        let produced = snapshot.iter().map(|c| c.produced).sum();
        self.totals.produced = Some(produced);
        self.totals.forced_wakeups = Some(snapshot.iter().map(|c| c.forced_wakeups).sum());
        self.last_counter_read = Some(Instant::now());
        while !stopped.get() && self.totals.delivered + self.totals.dropped < produced {
            // What is buffered is read whatever the time (one source that waited out the
            // deadline must not leave the records of the next unread); the deadline bounds
            // the wait for a record still being written (BUSY), not taken for the end.
            if self.consume_buffer(usize::MAX, handler)? == 0 {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }

    /// Whether the record at a ring's consumer position is still being written (never, for a
    /// perf buffer: its records are whole below `data_head`).
    pub(crate) fn head_is_busy(&self) -> bool {
        matches!(&self.buffer, Buffer::Ring(r) if r.head_is_busy())
    }

    /// One pass over the buffer: hands at most `max` records and the perf LOST reports to
    /// `handler` and counts them in the totals. Generic, so that the transport's loop inlines
    /// the handler: per record, no call the compiler cannot see.
    #[inline(always)]
    fn consume_buffer<H>(&mut self, max: usize, handler: &mut H) -> Result<usize, Error>
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()> + ?Sized,
    {
        let totals = &mut self.totals;
        let (records, bytes, panicked, result) = match &mut self.buffer {
            Buffer::Ring(ring) => {
                let (pass, result) =
                    ring.consume(max, &mut |data: &[u8]| handler(Event::Record(Record { data, cpu: None })));
                (pass.records, pass.bytes, pass.panicked, result)
            }
            Buffer::Perf(perf) => {
                let perf_lost = &mut self.perf_lost;
                let counters = &mut self.counters;
                let (pass, result): (perfbuf::Pass, _) =
                    perf.consume(max, &mut |event: Event<Record<'_>>| match event {
                        Event::Record(_) => handler(event),
                        Event::Dropped(dropped) => {
                            let new = note_perf_lost(perf_lost, counters.as_mut(), dropped);
                            if new == 0 {
                                return ControlFlow::Continue(());
                            }
                            totals.dropped += new;
                            handler(Event::Dropped(Dropped { count: new, ..dropped }))
                        }
                    });
                (pass.records, pass.bytes, pass.panicked, result)
            }
        };
        self.totals.delivered += records as u64;
        self.totals.bytes += bytes;
        if let Some(panic) = panicked {
            // What the handler was handed, the record it panicked on included, is consumed and
            // counted: a later consume or finish does not hand it over again.
            self.publish();
            std::panic::resume_unwind(panic);
        }
        result.map(|()| records)
    }

    /// Reads the drop counters: their new drops to `handler`, `produced` to the totals.
    fn report_counter_drops<R>(&mut self, handler: &mut dyn FnMut(Event<Record<'_>>) -> R) -> Result<(), Error> {
        self.last_counter_read = Some(Instant::now());
        let Some(counters) = &mut self.counters else { return Ok(()) };
        for dropped in counters.new_drops(Some(&self.perf_lost))? {
            self.totals.dropped += dropped.count;
            handler(Event::Dropped(dropped));
        }
        let total = counters.total()?;
        self.totals.produced = Some(total.produced);
        self.totals.forced_wakeups = Some(total.forced_wakeups);
        Ok(())
    }
}

/// `handler` as the consume loops take it: its verdict checked (an error kept in `failure`), and
/// whether it ever stopped in `stopped`.
fn stopping<'h, F: Flow>(
    failure: &'h mut Failure<F::Error>,
    stopped: &'h Cell<bool>,
    mut handler: impl FnMut(Event<Record<'_>>) -> F + 'h,
) -> impl FnMut(Event<Record<'_>>) -> ControlFlow<()> + 'h {
    move |event: Event<Record<'_>>| {
        let flow = failure.check(handler(event));
        stopped.set(stopped.get() || flow.is_break());
        flow
    }
}

/// Adds a perf LOST record's count to its CPU's total and returns how many of them the drop
/// counters have not reported already (the same drops may be counted by both).
#[cold]
fn note_perf_lost(perf_lost: &mut Vec<u64>, counters: Option<&mut DropCounters>, dropped: Dropped) -> u64 {
    let cpu = dropped.cpu.unwrap_or(0) as usize;
    if perf_lost.len() <= cpu {
        perf_lost.resize(cpu + 1, 0);
    }
    perf_lost[cpu] += dropped.count;
    match counters {
        Some(c) => c.note_reported(cpu as u32, perf_lost[cpu]),
        None => dropped.count,
    }
}

impl AsFd for EventSource {
    /// Readable when records are waiting (a ring's map fd; an epoll fd over a perf buffer's
    /// CPUs): to wait for a source in an event loop of your own.
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.buffer {
            Buffer::Ring(r) => r.as_fd(),
            Buffer::Perf(p) => p.as_fd(),
        }
    }
}
