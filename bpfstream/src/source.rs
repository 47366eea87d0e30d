//! One event stream for either transport: a ring buffer or a perf buffer, plus the BPF-side
//! drop counters, so a tool reads records and losses the same way whatever the kernel offers.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::accounting::DropCounters;
use crate::ringbuf;
use crate::stats::{Fill, Stats, StatsHandle};
use crate::sys::{self, map_type};
use crate::{Error, Failure, Flow, Item, Lost, PerfBuffer, PerfOptions, Record, RingBuffer, WakeupPolicy};

/// Which kind of buffer carries the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `BPF_MAP_TYPE_RINGBUF`: one ring for all CPUs (Linux 5.8+).
    Ring,
    /// `BPF_MAP_TYPE_PERF_EVENT_ARRAY`: a ring per CPU (Linux 4.4+).
    Perf,
}

impl Transport {
    /// `"ring"` or `"perf"`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ring => "ring",
            Transport::Perf => "perf",
        }
    }

    /// Whether this kernel can create a ring buffer map (Linux 5.8+). Creates (and frees) a
    /// one-page ring.
    pub fn ring_supported() -> bool {
        sys::map_create(map_type::RINGBUF, 0, 0, sys::page_size() as u32).is_ok()
    }

    /// The best transport this kernel has: [`Transport::Ring`] if it can create one, else
    /// [`Transport::Perf`].
    pub fn probe() -> Transport {
        if Transport::ring_supported() {
            Transport::Ring
        } else {
            Transport::Perf
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a stream has accounted for: so far ([`EventSource::totals`]), or in the end
/// ([`EventSource::finish`]). Once the producers are detached and the stream drained,
/// `delivered + dropped + summarized == produced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Records handed to the handler.
    pub delivered: u64,
    /// Payload bytes handed to the handler.
    pub bytes: u64,
    /// Records reported lost (ring drop counters, perf LOST records).
    pub dropped: u64,
    /// What the BPF side says it tried to send, or counted in a summary instead (`None`
    /// without drop counters).
    pub produced: Option<u64>,
    /// Wakeups the BPF side forced (ring buffers with a wakeup policy).
    pub forced_wakeups: Option<u64>,
    /// Events the BPF side counted in a summary instead of sending them, as filled in by a
    /// tool that summarizes under backpressure (the CLI's `lab backpressure`); 0 otherwise.
    pub summarized: u64,
}

#[cfg(feature = "tokio")]
impl Totals {
    /// Two sources' totals together (a stream over several).
    pub(crate) fn sum(self, other: Totals) -> Totals {
        let both = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Totals {
            delivered: self.delivered + other.delivered,
            bytes: self.bytes + other.bytes,
            dropped: self.dropped + other.dropped,
            produced: both(self.produced, other.produced),
            forced_wakeups: both(self.forced_wakeups, other.forced_wakeups),
            summarized: self.summarized + other.summarized,
        }
    }
}

/// How long a [`StopHandle`](crate::StopHandle) drain waits for
/// a record still being written (BUSY) at the head of a ring: its program runs on another CPU
/// and commits within microseconds, unless that CPU is preempted.
const BUSY_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How often a blocking poll without a timeout looks at a ring whose producers never wake it.
const UNWOKEN_LOOK_EVERY: Duration = Duration::from_millis(100);

enum Buffer {
    Ring(RingBuffer),
    Perf(PerfBuffer),
}

/// A ring or perf buffer with its drop counters: yields [`Item::Record`] and [`Item::Lost`] and
/// keeps [`Totals`].
///
/// Drop counters are read at most every [`EventSource::set_counter_interval`] (default 100 ms;
/// a read is one system call) and always by [`EventSource::finish`].
///
/// Minimum kernel: 5.8 for a ring, 4.4 for a perf buffer; [`open`](Self::open) 4.13
/// (`BPF_OBJ_GET_INFO_BY_FD`).
pub struct EventSource {
    buffer: Buffer,
    counters: Option<DropCounters>,
    counter_interval: Duration,
    last_counter_read: Option<Instant>,
    /// Per CPU: losses reported by perf LOST records.
    perf_lost: Vec<u64>,
    totals: Totals,
    stats: Stats,
    stats_handle: StatsHandle,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource").field("transport", &self.transport()).field("totals", &self.totals).finish()
    }
}

impl EventSource {
    /// The name of the events map `bpfstream.h` defines (`BPFSTREAM_EVENTS` renames it;
    /// `BPFSTREAM_STREAM(name)` defines more).
    pub const MAP: &'static str = "events";

    /// Opens `map` as whatever it is: a ring buffer, or a perf event array with `perf`
    /// options.
    pub fn open(map: impl AsFd, perf: PerfOptions) -> Result<Self, Error> {
        const EXPECTED: &str = "BPF_MAP_TYPE_RINGBUF or BPF_MAP_TYPE_PERF_EVENT_ARRAY";
        let info = sys::map_info_of(map.as_fd(), EXPECTED)?;
        match info.map_type {
            map_type::RINGBUF => Ok(Self::with(Buffer::Ring(RingBuffer::new(map)?))),
            map_type::PERF_EVENT_ARRAY => Ok(Self::with(Buffer::Perf(PerfBuffer::new(map, perf)?))),
            other => Err(Error::WrongMapType {
                expected: EXPECTED.into(),
                actual: format!("{} ({:?})", map_type::name(other), info.name()),
            }),
        }
    }

    fn with(buffer: Buffer) -> Self {
        EventSource {
            buffer,
            counters: None,
            counter_interval: Duration::from_millis(100),
            last_counter_read: None,
            perf_lost: Vec::new(),
            totals: Totals::default(),
            stats: Stats::default(),
            stats_handle: StatsHandle::new(),
        }
    }

    /// Adds the BPF side's drop counters (the `bpfstream_stats` map of `bpfstream.h`), so ring
    /// drops are reported and `produced` is known.
    pub fn with_counters(mut self, counters: DropCounters) -> Self {
        self.counters = Some(counters);
        self
    }

    /// How often drop counters are read while streaming.
    pub fn set_counter_interval(&mut self, interval: Duration) {
        self.counter_interval = interval;
    }

    /// The transport.
    pub fn transport(&self) -> crate::Transport {
        match self.buffer {
            Buffer::Ring(_) => Transport::Ring,
            Buffer::Perf(_) => Transport::Perf,
        }
    }

    /// The CPUs with a buffer of their own: those of a perf buffer (its online CPUs); empty for a
    /// ring, which all CPUs share.
    pub fn cpus(&self) -> Vec<u32> {
        match &self.buffer {
            Buffer::Perf(p) => p.cpus(),
            Buffer::Ring(_) => Vec::new(),
        }
    }

    /// Bytes of memory mapped for the buffer (all CPUs for perf; for a ring, the data once plus
    /// its two control pages: the kernel maps the data pages twice but allocates them once).
    pub fn buffer_bytes(&self) -> u64 {
        match &self.buffer {
            Buffer::Ring(r) => r.stats().size + 2 * sys::page_size() as u64,
            Buffer::Perf(p) => p.mapped_bytes() as u64,
        }
    }

    /// Records and losses so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Bytes waiting in the buffer and its capacity, read now.
    pub fn fill(&self) -> Fill {
        match &self.buffer {
            Buffer::Ring(r) => r.fill(),
            Buffer::Perf(p) => p.fill(),
        }
    }

    /// Events, bytes, losses, wakeups and fill as of the last pass (see [`StatsHandle`]).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A handle that reads [`stats`](Self::stats) from any thread while this source is being
    /// consumed.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats_handle.clone()
    }

    /// Counts a wait for this source's descriptor: `signalled` if it became readable, otherwise
    /// it timed out (or another source woke the waiter). [`poll`](Self::poll) and
    /// [`Poller`](crate::Poller) call this (through [`Source::note_wait`](crate::poller::Source::note_wait)).
    pub(crate) fn note_wait(&mut self, signalled: bool) {
        self.stats.note_wait(signalled);
    }

    fn publish_stats(&mut self) {
        let t = &self.totals;
        self.stats.events = t.delivered;
        self.stats.bytes = t.bytes;
        self.stats.lost = t.dropped;
        self.stats.produced = t.produced;
        self.stats_handle.publish(&self.stats);
    }

    /// Consumes what is buffered now, without blocking; returns the number of records handed
    /// over. Drop counters are checked if the counter interval has passed.
    pub fn consume<F: Flow>(&mut self, mut handler: impl FnMut(Item<'_>) -> F) -> Result<usize, Error> {
        self.consume_n(usize::MAX, &mut handler)
    }

    /// Like [`consume`](Self::consume), at most `max` records.
    pub(crate) fn consume_n<F: Flow>(
        &mut self,
        max: usize,
        mut handler: impl FnMut(Item<'_>) -> F,
    ) -> Result<usize, Error> {
        let mut failure = Failure::default();
        let mut handler = |item: Item<'_>| failure.check(handler(item));
        self.stats.note_fill(Some(self.fill()));
        let n = self.consume_buffer(max, &mut handler);
        let due = self.last_counter_read.is_none_or(|t| t.elapsed() >= self.counter_interval);
        let counted = if n.is_ok() && due { self.report_counter_drops(&mut handler) } else { Ok(()) };
        self.publish_stats();
        failure.result(counted.and(n))
    }

    /// Waits up to `timeout` for data, then consumes. The timeout also bounds how long a record
    /// can wait when the producer does not wake us (`BPF_RB_NO_WAKEUP`, perf watermarks). With
    /// no timeout on a ring whose producers never wake us ([`WakeupPolicy::Never`], told by
    /// [`expect_wakeups`](Self::expect_wakeups)), it looks every 100 ms until it has records
    /// rather than sleep forever.
    pub fn poll<F: Flow>(
        &mut self,
        timeout: Option<Duration>,
        mut handler: impl FnMut(Item<'_>) -> F,
    ) -> Result<usize, Error> {
        if timeout.is_none() && !self.sends_wakeups() {
            loop {
                let n = self.wait_and_consume(Some(UNWOKEN_LOOK_EVERY), &mut handler)?;
                if n > 0 {
                    return Ok(n);
                }
            }
        }
        self.wait_and_consume(timeout, &mut handler)
    }

    /// One [`poll`](Self::poll): a wait of at most `timeout`, then a consume.
    fn wait_and_consume<F: Flow>(
        &mut self,
        timeout: Option<Duration>,
        handler: &mut impl FnMut(Item<'_>) -> F,
    ) -> Result<usize, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        if !self.ready_now() {
            let signalled = match &mut self.buffer {
                Buffer::Ring(r) => r.wait(timeout)?,
                Buffer::Perf(p) => p.wait(timeout)?,
            };
            self.note_wait(signalled);
        }
        // A ring's head record still being written holds back what is committed behind it, and
        // its commit may send no wakeup: look again every millisecond until the deadline.
        ringbuf::consume_past_busy(deadline, || {
            let n = self.consume_n(usize::MAX, &mut *handler)?;
            Ok((n, self.head_is_busy()))
        })
    }

    /// Whether records wait that no coming wakeup is certain to announce, so that sleeping
    /// until the next wakeup could strand them: for a ring, at least the wakeup threshold of the
    /// policy told by [`expect_wakeups`](Self::expect_wakeups) is waiting (with the default
    /// policy: anything at all); for a perf buffer, the last consume stopped early and left
    /// records behind.
    pub fn ready_now(&self) -> bool {
        match &self.buffer {
            Buffer::Ring(r) => r.ready_now(),
            Buffer::Perf(p) => p.ready_now(),
        }
    }

    /// Tells a ring buffer's waits which wakeups its producers send (the policy the BPF side
    /// was loaded with, see `bpfstream.h`), so that [`poll`](Self::poll) sleeps through records
    /// written without a wakeup instead of returning for each trickle of them. The default, the
    /// kernel's [`WakeupPolicy::Adaptive`], is right for every policy but wastes CPU with the
    /// others. With [`WakeupPolicy::Never`] nothing wakes a consumer but its own timeout: the
    /// async streams then keep a delay timer even if asked for none. Perf buffers know their
    /// wakeups from their [`PerfOptions`].
    pub fn expect_wakeups(&mut self, policy: WakeupPolicy) {
        if let Buffer::Ring(r) = &mut self.buffer {
            r.expect_wakeups(policy);
        }
    }

    /// Whether the producers wake the consumer at all (see `Source::sends_wakeups`); perf
    /// buffers always do.
    pub(crate) fn sends_wakeups(&self) -> bool {
        match &self.buffer {
            Buffer::Ring(r) => r.sends_wakeups(),
            Buffer::Perf(_) => true,
        }
    }

    /// The exact end of the stream, once the caller has detached every program that writes to
    /// it (closed its links, or dropped the `aya::Ebpf` that holds them): hands over everything
    /// the programs wrote, with the final loss reports, and returns the final [`Totals`], by
    /// `deadline`. Then, with drop counters ([`with_counters`](Self::with_counters)),
    /// `delivered + dropped == produced`, to the last event.
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
        mut handler: impl FnMut(Item<'_>) -> F,
    ) -> Result<Totals, Error> {
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
        handler: impl FnMut(Item<'_>) -> F,
    ) -> Result<(Totals, bool), Error> {
        let mut failure = Failure::default();
        let stopped = Cell::new(false);
        let mut handler = stopping(&mut failure, &stopped, handler);
        let drained = match self.counters.is_some() {
            true => self.drain_to_snapshot(deadline, &mut handler, &stopped),
            false => self.drain_with(deadline, &mut handler, &stopped),
        };
        drop(handler);
        self.publish_stats();
        failure.result(drained.map(|()| (self.totals, stopped.get())))
    }

    /// Drains everything buffered and reads the drop counters one last time: what a
    /// [`StopHandle`](crate::StopHandle) drain does. A record still being written (BUSY) at the
    /// head of a ring is waited for, up to [`BUSY_DRAIN_LIMIT`].
    pub(crate) fn drain<F: Flow>(&mut self, handler: impl FnMut(Item<'_>) -> F) -> Result<Totals, Error> {
        let mut failure = Failure::default();
        let stopped = Cell::new(false);
        let mut handler = stopping(&mut failure, &stopped, handler);
        let drained = self.drain_with(Instant::now() + BUSY_DRAIN_LIMIT, &mut handler, &stopped);
        drop(handler);
        self.publish_stats();
        failure.result(drained.map(|()| self.totals))
    }

    /// Consumes until the buffer is empty with no BUSY head (or `deadline`), then, unless the
    /// handler stopped, reads the drop counters one last time.
    fn drain_with<H>(&mut self, deadline: Instant, handler: &mut H, stopped: &Cell<bool>) -> Result<(), Error>
    where
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        ringbuf::drain_past_busy(deadline, || {
            if stopped.get() {
                return Ok((0, false));
            }
            let n = self.consume_buffer(usize::MAX, handler)?;
            Ok((n, self.head_is_busy()))
        })?;
        // The handler stopped (or failed): what it has not taken stays, and so do the counters.
        if stopped.get() {
            return Ok(());
        }
        self.report_counter_drops(handler)
    }

    /// One snapshot of the drop counters, its drops reported, then consumes until `delivered +
    /// dropped` reaches its `produced`, the handler stops, or `deadline`.
    fn drain_to_snapshot<H>(&mut self, deadline: Instant, handler: &mut H, stopped: &Cell<bool>) -> Result<(), Error>
    where
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        let Some(counters) = &mut self.counters else { return Ok(()) };
        let snapshot = counters.read()?;
        for lost in counters.drops_in(&snapshot, Some(&self.perf_lost)) {
            self.totals.dropped += lost.count;
            if !stopped.get() {
                let _ = handler(Item::Lost(lost));
            }
        }
        let produced = snapshot.iter().map(|c| c.produced).sum();
        self.totals.produced = Some(produced);
        self.totals.forced_wakeups = Some(snapshot.iter().map(|c| c.forced_wakeups).sum());
        self.last_counter_read = Some(Instant::now());
        while !stopped.get() && self.totals.delivered + self.totals.dropped < produced && Instant::now() < deadline {
            // A record still being written (BUSY) is waited for, not taken for the end.
            if self.consume_buffer(usize::MAX, handler)? == 0 {
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
        H: FnMut(Item<'_>) -> ControlFlow<()>,
    {
        let totals = &mut self.totals;
        let (records, bytes, panicked, result) = match &mut self.buffer {
            Buffer::Ring(ring) => {
                let (pass, result) =
                    ring.consume(max, &mut |data: &[u8]| handler(Item::Record(Record { data, cpu: None })));
                (pass.records, pass.bytes, pass.panicked, result)
            }
            Buffer::Perf(perf) => {
                let perf_lost = &mut self.perf_lost;
                let counters = &mut self.counters;
                let (pass, result) = perf.consume(max, &mut |item: Item<'_>| match item {
                    Item::Record(_) => handler(item),
                    Item::Lost(lost) => {
                        let new = note_perf_lost(perf_lost, counters.as_mut(), lost);
                        if new == 0 {
                            return ControlFlow::Continue(());
                        }
                        totals.dropped += new;
                        handler(Item::Lost(Lost { count: new, ..lost }))
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
            self.publish_stats();
            std::panic::resume_unwind(panic);
        }
        result.map(|()| records)
    }

    fn report_counter_drops<R>(&mut self, handler: &mut dyn FnMut(Item<'_>) -> R) -> Result<(), Error> {
        self.last_counter_read = Some(Instant::now());
        let Some(counters) = &mut self.counters else { return Ok(()) };
        for lost in counters.new_drops(Some(&self.perf_lost))? {
            self.totals.dropped += lost.count;
            handler(Item::Lost(lost));
        }
        let total = counters.total()?;
        self.totals.produced = total.produced;
        self.totals.forced_wakeups = total.forced_wakeups;
        Ok(())
    }
}

/// `handler` as the consume loops take it: its verdict checked (an error kept in `failure`), and
/// whether it ever stopped in `stopped`.
fn stopping<'h, F: Flow>(
    failure: &'h mut Failure,
    stopped: &'h Cell<bool>,
    mut handler: impl FnMut(Item<'_>) -> F + 'h,
) -> impl FnMut(Item<'_>) -> ControlFlow<()> + 'h {
    move |item: Item<'_>| {
        let flow = failure.check(handler(item));
        stopped.set(stopped.get() || flow.is_break());
        flow
    }
}

/// Adds a perf LOST record's count to its CPU's total and returns how many of them the drop
/// counters have not reported already (the same drops may be counted by both).
#[cold]
fn note_perf_lost(perf_lost: &mut Vec<u64>, counters: Option<&mut DropCounters>, lost: Lost) -> u64 {
    let cpu = lost.cpu.unwrap_or(0) as usize;
    if perf_lost.len() <= cpu {
        perf_lost.resize(cpu + 1, 0);
    }
    perf_lost[cpu] += lost.count;
    match counters {
        Some(c) => c.note_reported(cpu as u32, perf_lost[cpu]),
        None => lost.count,
    }
}

impl AsFd for EventSource {
    /// Readable when records are waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.buffer {
            Buffer::Ring(r) => r.as_fd(),
            Buffer::Perf(p) => p.as_fd(),
        }
    }
}
