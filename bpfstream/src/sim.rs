//! Simulated kernel buffers: the ring-buffer and perf-buffer memory layouts in ordinary heap
//! memory, with producers that write exactly as the kernel does. The consumers run on them
//! unchanged, which is how the record protocols are tested (and fuzzed) without root
//! (`sim/tests.rs`), and what the parse bench (`benches/parse.rs`) times.
//!
//! Test support only: the crate's unit tests build it, and the parse bench includes this file
//! (and the crate's source) as modules of its own.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::perfbuf::{self, PerfMemory};
use crate::ringbuf::{self, RingMemory, BUSY_BIT, DISCARD_BIT, HEADER_SIZE};
use crate::scan::Corruption;
use crate::{Error, Event, Failure, Flow, Record};

/// 8-byte aligned, zeroed memory.
fn aligned(bytes: usize) -> Box<[AtomicU64]> {
    (0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect()
}

fn base(words: &[AtomicU64]) -> NonNull<u8> {
    NonNull::from(words).cast()
}

/// Writes `bytes` at byte `offset` of `words` (atomically per byte; the simulation is not about
/// speed, and atomics keep it sound while a consumer holds shared references).
fn store_bytes(words: &[AtomicU64], offset: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        let at = offset + i;
        let word = &words[at / 8];
        let shift = (at % 8) * 8;
        let mask = !(0xffu64 << shift);
        let old = word.load(Ordering::Relaxed);
        word.store((old & mask) | (u64::from(b) << shift), Ordering::Relaxed);
    }
}

/// A simulated `BPF_MAP_TYPE_RINGBUF`: positions, and a data area of `2 * size` bytes kept
/// identical in both halves, as the kernel's double mapping is.
#[derive(Debug)]
pub struct SimRing {
    consumer_pos: AtomicU64,
    producer_pos: AtomicU64,
    data: Box<[AtomicU64]>,
    size: usize,
    /// A [`SimRingConsumer`] exists (one at a time, as for a kernel ring).
    consumed: AtomicBool,
    /// Tells this ring's reservations from another ring's.
    id: u64,
}

/// Source of [`SimRing`] identities.
static NEXT_RING: AtomicU64 = AtomicU64::new(0);

// SAFETY: `data` is 8-aligned (AtomicU64 words) and 2*size bytes; writes mirror every byte at
// `i` and `i + size`. The producer methods write a record's bytes only while it is BUSY (a
// `Reservation` is committed once, by value, and only on its own ring) or ahead of
// producer_pos; the methods that write anywhere (`corrupt_header`, `force_positions`) refuse
// while a consumer exists. So no committed byte a consumer may be lending is ever written.
unsafe impl RingMemory for SimRing {
    fn consumer_pos(&self) -> &AtomicU64 {
        &self.consumer_pos
    }
    fn producer_pos(&self) -> &AtomicU64 {
        &self.producer_pos
    }
    fn data(&self) -> NonNull<u8> {
        base(&self.data)
    }
    fn size(&self) -> usize {
        self.size
    }
}

/// A reservation in a [`SimRing`], as returned by `bpf_ringbuf_reserve()`: filled while it is
/// BUSY, committed once (by value).
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    ring: u64,
    pos: u64,
    len: u32,
}

impl Reservation {
    /// Position of the record header.
    pub fn pos(&self) -> u64 {
        self.pos
    }
}

impl SimRing {
    /// A ring of `size` data bytes (a power of two, at least 16).
    pub fn new(size: usize) -> Self {
        assert!(size.is_power_of_two() && size >= 16, "ring size must be a power of two >= 16");
        SimRing {
            consumer_pos: AtomicU64::new(0),
            producer_pos: AtomicU64::new(0),
            data: aligned(2 * size),
            size,
            consumed: AtomicBool::new(false),
            id: NEXT_RING.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A ring whose positions start at `pos` (8-aligned), to test wrap-around and large
    /// free-running counters.
    pub fn starting_at(size: usize, pos: u64) -> Self {
        let ring = Self::new(size);
        ring.consumer_pos.store(pos & !7, Ordering::Relaxed);
        ring.producer_pos.store(pos & !7, Ordering::Relaxed);
        ring
    }

    fn write(&self, pos: u64, bytes: &[u8]) {
        let mask = self.size as u64 - 1;
        for (i, &b) in bytes.iter().enumerate() {
            let at = (pos.wrapping_add(i as u64) & mask) as usize;
            store_bytes(&self.data, at, &[b]);
            store_bytes(&self.data, at + self.size, &[b]);
        }
    }

    fn set_header(&self, pos: u64, len_word: u32) {
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&len_word.to_ne_bytes());
        self.write(pos, &header);
    }

    /// Reserves `len` payload bytes as `__bpf_ringbuf_reserve()` does: fails when the record
    /// would not fit behind the consumer; otherwise writes a BUSY header and advances the
    /// producer position.
    pub fn reserve(&self, len: u32) -> Option<Reservation> {
        let cons = self.consumer_pos.load(Ordering::Acquire);
        let prod = self.producer_pos.load(Ordering::Relaxed);
        let total = (u64::from(len) + HEADER_SIZE).next_multiple_of(8);
        let lead = prod.wrapping_add(total).wrapping_sub(cons);
        if len & (BUSY_BIT | DISCARD_BIT) != 0 || lead > self.size as u64 - 1 {
            return None;
        }
        self.set_header(prod, len | BUSY_BIT);
        self.producer_pos.store(prod.wrapping_add(total), Ordering::Release);
        Some(Reservation { ring: self.id, pos: prod, len })
    }

    /// Fills a reserved record's payload.
    pub fn fill(&self, r: &Reservation, payload: &[u8]) {
        assert_eq!(r.ring, self.id, "a reservation of another ring");
        assert!(payload.len() <= r.len as usize);
        self.write(r.pos.wrapping_add(HEADER_SIZE), payload);
    }

    /// Commits a reservation (`bpf_ringbuf_submit`, or `bpf_ringbuf_discard` with `discard`).
    pub fn commit(&self, r: Reservation, discard: bool) {
        assert_eq!(r.ring, self.id, "a reservation of another ring");
        self.set_header(r.pos, r.len | if discard { DISCARD_BIT } else { 0 });
    }

    /// Reserve, fill and submit (`bpf_ringbuf_output`); returns the record's position, `None`
    /// when the ring is full.
    pub fn output(&self, payload: &[u8]) -> Option<u64> {
        let r = self.reserve(payload.len() as u32)?;
        let pos = r.pos;
        self.fill(&r, payload);
        self.commit(r, false);
        Some(pos)
    }

    /// Panics if a consumer exists: memory may be written anywhere only while nobody reads it.
    fn assert_unread(&self, what: &str) {
        assert!(!self.consumed.load(Ordering::Acquire), "{what} while a consumer reads the ring: drop it first");
    }

    /// Overwrites the header at `pos` with a raw length word, to simulate corruption (no
    /// consumer may exist: it could be lending the bytes).
    pub fn corrupt_header(&self, pos: u64, len_word: u32) {
        self.assert_unread("corrupt_header");
        self.set_header(pos, len_word);
    }

    /// The consumer and producer positions (free-running byte counters), read now.
    pub fn positions(&self) -> (u64, u64) {
        let fill = ringbuf::fill(self);
        (fill.consumer_pos, fill.producer_pos)
    }

    /// Bytes written and not yet consumed (records, headers and padding).
    pub fn available(&self) -> u64 {
        ringbuf::fill(self).used
    }

    /// Start of the data area (mapped twice back to back, `2 * size` bytes), to check that
    /// what a consumer lends lies inside it.
    pub fn data_area(&self) -> *const u8 {
        self.data().as_ptr().cast_const()
    }

    /// Overwrites both positions, to simulate a corrupt or foreign consumer position or a
    /// producer position the protocol cannot produce (no consumer may exist).
    pub fn force_positions(&self, consumer_pos: u64, producer_pos: u64) {
        self.assert_unread("force_positions");
        self.consumer_pos.store(consumer_pos, Ordering::Relaxed);
        self.producer_pos.store(producer_pos, Ordering::Release);
    }

    /// The consumer over this memory, running the same protocol code as an
    /// [`EventSource`](crate::EventSource) over a ring.
    /// As there, a ring has one consumer at a time: [`Error::AlreadyConsumed`] while another
    /// exists.
    pub fn consumer(&self) -> Result<SimRingConsumer<'_>, Error> {
        if self.consumed.swap(true, Ordering::Acquire) {
            return Err(Error::AlreadyConsumed { what: "this simulated ring".into() });
        }
        Ok(SimRingConsumer {
            ring: self,
            _claim: Claim(&self.consumed),
            publish_every: ringbuf::default_publish_every(self.size as u64),
            lent_to: None,
        })
    }
}

/// The ring-buffer consumer running on a [`SimRing`].
#[derive(Debug)]
pub struct SimRingConsumer<'a> {
    ring: &'a SimRing,
    /// The ring's one consumer, until dropped.
    _claim: Claim<'a>,
    publish_every: u64,
    /// Where the last pulled batch ended: published at the next call, or on drop.
    lent_to: Option<u64>,
}

impl Drop for SimRingConsumer<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A batch of a [`SimRing`]'s records, pulled one at a time as
/// [`EventSource::read`](crate::EventSource::read) lends them (`ringbuf::Batch`).
pub struct SimRingRecords<'a> {
    batch: ringbuf::Batch<'a>,
    lent_to: &'a mut Option<u64>,
}

impl<'a> Iterator for SimRingRecords<'a> {
    type Item = &'a [u8];

    #[inline(always)]
    fn next(&mut self) -> Option<&'a [u8]> {
        self.batch.next()
    }
}

impl SimRingRecords<'_> {
    /// The error that ended the batch early, if one did.
    pub fn error(&self) -> Option<Error> {
        self.batch.corruption.map(Corruption::into_error)
    }
}

impl Drop for SimRingRecords<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.lent_to = Some(self.batch.position());
    }
}

/// A ring's consumer flag, set while its consumer exists: cleared on drop.
#[derive(Debug)]
struct Claim<'a>(&'a AtomicBool);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl SimRingConsumer<'_> {
    /// Consumes every committed record now in the ring, as
    /// [`EventSource::consume`](crate::EventSource::consume) does.
    pub fn consume<F: Flow>(&mut self, handler: impl FnMut(&[u8]) -> F) -> Result<usize, F::Error> {
        self.consume_n(usize::MAX, handler)
    }

    /// As [`consume`](Self::consume), at most `max` records (the consume loop the ring buffer
    /// runs with a limit: for the streams and the poller).
    pub fn consume_n<F: Flow>(&mut self, max: usize, mut handler: impl FnMut(&[u8]) -> F) -> Result<usize, F::Error> {
        self.settle();
        let mut failure = Failure::default();
        let (pass, result) =
            ringbuf::consume(self.ring, max, self.publish_every, &mut |r: &[u8]| failure.check(handler(r)));
        failure.result(result.map(|()| pass.records))
    }

    /// As [`EventSource::poll`](crate::EventSource::poll) on a ring whose producers send no
    /// wakeups: while the head record is still being written (BUSY), looks again every
    /// millisecond until `timeout` (`None`: until it is committed), then consumes.
    pub fn poll<F: Flow>(
        &mut self,
        timeout: Option<std::time::Duration>,
        mut handler: impl FnMut(&[u8]) -> F,
    ) -> Result<usize, F::Error> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        ringbuf::wait_past_busy(deadline, || ringbuf::head_is_busy(self.ring));
        self.consume_n(usize::MAX, &mut handler)
    }

    /// The committed records now in the ring, pulled one at a time; the consumer position moves
    /// past what was pulled at the next call (or when the consumer is dropped).
    #[inline(always)]
    pub fn read(&mut self) -> SimRingRecords<'_> {
        self.settle();
        SimRingRecords { batch: ringbuf::Batch::new(self.ring), lent_to: &mut self.lent_to }
    }

    /// Publishes where the last pulled batch ended.
    #[inline(always)]
    fn settle(&mut self) {
        if let Some(position) = self.lent_to.take() {
            self.ring.consumer_pos.store(position, Ordering::Release);
        }
    }

    /// Publish the consumer position every `bytes` within a batch (default: a quarter ring).
    pub fn set_publish_every(&mut self, bytes: u64) {
        self.publish_every = bytes.max(8);
    }
}

/// A simulated perf buffer of one CPU, with a producer that writes `PERF_RECORD_SAMPLE` and
/// `PERF_RECORD_LOST` records the way `kernel/events/ring_buffer.c` does: a sample that does not
/// fit is counted lost, and the count is written as a LOST record before the next sample that
/// fits.
#[derive(Debug)]
pub struct SimPerf {
    data_head: AtomicU64,
    data_tail: AtomicU64,
    data: Box<[AtomicU64]>,
    size: usize,
    pending_lost: u64,
    scratch: Vec<u8>,
    /// Where the last pulled batch ended: published at the next call.
    lent_to: Cell<Option<u64>>,
}

/// A batch of a [`SimPerf`]'s records, pulled one at a time as
/// [`EventSource::read`](crate::EventSource::read) lends them (`perfbuf::Batch`).
pub struct SimPerfRecords<'a> {
    batch: perfbuf::Batch<'a, SimPerf>,
    perf: &'a SimPerf,
}

impl<'a> Iterator for SimPerfRecords<'a> {
    type Item = Event<Record<'a>>;

    #[inline(always)]
    fn next(&mut self) -> Option<Event<Record<'a>>> {
        self.batch.next()
    }
}

impl SimPerfRecords<'_> {
    /// The error that ended the batch early, if one did.
    pub fn error(&self) -> Option<Error> {
        self.batch.corruption().map(Corruption::into_error)
    }
}

impl Drop for SimPerfRecords<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.perf.lent_to.set(self.batch.finish().0.first().copied());
    }
}

// SAFETY: `data` is 8-aligned and `size` bytes; the producer writes only between data_head and
// data_tail + size (free space), never unread records.
unsafe impl PerfMemory for SimPerf {
    fn data_head(&self) -> &AtomicU64 {
        &self.data_head
    }
    fn data_tail(&self) -> &AtomicU64 {
        &self.data_tail
    }
    fn data(&self) -> NonNull<u8> {
        base(&self.data)
    }
    fn size(&self) -> usize {
        self.size
    }
    fn cpu(&self) -> u32 {
        0
    }
}

impl SimPerf {
    /// A buffer of `size` data bytes (a power of two, at least 64).
    pub fn new(size: usize) -> Self {
        assert!(size.is_power_of_two() && size >= 64, "perf data size must be a power of two >= 64");
        SimPerf {
            data_head: AtomicU64::new(0),
            data_tail: AtomicU64::new(0),
            data: aligned(size),
            size,
            pending_lost: 0,
            scratch: Vec::new(),
            lent_to: Cell::new(None),
        }
    }

    /// A buffer whose head and tail start at `pos` (8-aligned), to put records across the end.
    pub fn starting_at(size: usize, pos: u64) -> Self {
        let perf = Self::new(size);
        perf.data_head.store(pos & !7, Ordering::Relaxed);
        perf.data_tail.store(pos & !7, Ordering::Relaxed);
        perf
    }

    /// Appends raw bytes at the head (wrapping) and publishes them: the building block for
    /// hand-made (and corrupt) records. Returns false if they do not fit.
    pub fn write_raw(&mut self, bytes: &[u8]) -> bool {
        let head = self.data_head.load(Ordering::Relaxed);
        let tail = self.data_tail.load(Ordering::Acquire);
        let end = head.wrapping_add(bytes.len() as u64);
        if end.wrapping_sub(tail) > self.size as u64 {
            return false;
        }
        let mask = self.size as u64 - 1;
        for (i, &b) in bytes.iter().enumerate() {
            store_bytes(&self.data, (head.wrapping_add(i as u64) & mask) as usize, &[b]);
        }
        self.data_head.store(end, Ordering::Release);
        true
    }

    fn record(&mut self, kind: u32, body: &[u8]) -> bool {
        let size = 8 + body.len();
        self.scratch.clear();
        self.scratch.extend_from_slice(&kind.to_ne_bytes());
        self.scratch.extend_from_slice(&0u16.to_ne_bytes());
        self.scratch.extend_from_slice(&(size as u16).to_ne_bytes());
        self.scratch.extend_from_slice(body);
        let record = std::mem::take(&mut self.scratch);
        let ok = self.write_raw(&record);
        self.scratch = record;
        ok
    }

    /// `bpf_perf_event_output()` of `payload`: a PERF_RECORD_SAMPLE with PERF_SAMPLE_RAW, the
    /// raw data zero-padded so the record is 8-byte aligned. Returns false (and counts the sample
    /// lost) when it does not fit.
    pub fn output(&mut self, payload: &[u8]) -> bool {
        if self.pending_lost > 0 {
            let mut body = [0u8; 16];
            body[8..].copy_from_slice(&self.pending_lost.to_ne_bytes());
            if !self.record(perfbuf::RECORD_LOST, &body) {
                self.pending_lost += 1;
                return false;
            }
            self.pending_lost = 0;
        }
        let raw_size = (4 + payload.len()).next_multiple_of(8) - 4;
        let mut body = Vec::with_capacity(4 + raw_size);
        body.extend_from_slice(&(raw_size as u32).to_ne_bytes());
        body.extend_from_slice(payload);
        body.resize(4 + raw_size, 0);
        if !self.record(perfbuf::RECORD_SAMPLE, &body) {
            self.pending_lost += 1;
            return false;
        }
        true
    }

    /// Samples counted lost and not yet reported in a LOST record.
    pub fn pending_lost(&self) -> u64 {
        self.pending_lost
    }

    /// Runs the perf consumer over this buffer, as an [`EventSource`](crate::EventSource) does for one
    /// CPU (reported as CPU 0).
    pub fn consume<F: Flow>(
        &mut self,
        scratch: &mut Vec<u8>,
        mut handler: impl FnMut(Event<Record<'_>>) -> F,
    ) -> Result<usize, F::Error> {
        self.settle();
        let publish_every = (self.size as u64 / 4).max(8);
        let mut failure = Failure::default();
        let mut check = |event: Event<Record<'_>>| failure.check(handler(event));
        let (pass, result) = perfbuf::consume(&*self, 0, scratch, usize::MAX, publish_every, &mut check);
        if let Some(panic) = pass.panicked {
            std::panic::resume_unwind(panic);
        }
        failure.result(result.map(|()| pass.records))
    }

    /// The records now in the buffer, pulled one at a time (a sample that wraps the end of the
    /// ring copied into `scratch`); data_tail moves past what was pulled at the next call.
    #[inline(always)]
    pub fn read<'a>(&'a mut self, scratch: &'a mut Vec<Vec<u8>>) -> SimPerfRecords<'a> {
        self.settle();
        scratch.resize(1, Vec::new());
        let perf: &'a SimPerf = self;
        // SAFETY: the records are dead before data_tail moves past them (the next call that
        // settles needs `&mut self`, which `'a` rules out) and before `scratch` is used again
        // (borrowed for `'a`).
        let batch = unsafe { perfbuf::Batch::new(std::slice::from_ref(perf), scratch) };
        SimPerfRecords { batch, perf }
    }

    /// Publishes where the last pulled batch ended.
    #[inline(always)]
    fn settle(&mut self) {
        if let Some(tail) = self.lent_to.take() {
            self.data_tail.store(tail, Ordering::Release);
        }
    }

    /// Start of the data area (`size` bytes), to check that what a consumer lends lies
    /// inside it (or, for a sample that wraps the end, in the consumer's scratch buffer).
    pub fn data_area(&self) -> *const u8 {
        self.data().as_ptr().cast_const()
    }

    /// `data_tail` and `data_head` (free-running byte counters), read now.
    pub fn positions(&self) -> (u64, u64) {
        (self.data_tail.load(Ordering::Relaxed), self.data_head.load(Ordering::Acquire))
    }

    /// Bytes written and not yet consumed.
    pub fn available(&self) -> u64 {
        self.data_head.load(Ordering::Acquire).wrapping_sub(self.data_tail.load(Ordering::Relaxed))
    }

    /// Overwrites `data_tail` and `data_head`: to simulate positions the protocol cannot
    /// produce.
    pub fn force_positions(&mut self, data_tail: u64, data_head: u64) {
        self.data_tail.store(data_tail, Ordering::Relaxed);
        self.data_head.store(data_head, Ordering::Release);
    }

    /// Writes `bytes` at `offset` of the data area (wrapping), without moving `data_head`: to
    /// put arbitrary headers and payloads anywhere.
    pub fn poke(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            store_bytes(&self.data, (offset + i) % self.size, &[b]);
        }
    }
}

#[cfg(test)]
mod tests;
