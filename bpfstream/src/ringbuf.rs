//! Consumer of `BPF_MAP_TYPE_RINGBUF` (Linux 5.8+): one ring shared by all CPUs.
//!
//! # Memory layout
//!
//! The map fd is mmap'd the way `kernel/bpf/ringbuf.c` (`ringbuf_map_mmap_kern`) allows:
//!
//! ```text
//!  fd offset:  0             PAGE            2*PAGE                2*PAGE+size          2*PAGE+2*size
//!              +-------------+---------------+---------------------+--------------------+
//!              | consumer_pos| producer_pos  | data[0 .. size)     | data[0 .. size)    |
//!              | (u64) RW    | (u64) RO      | RO                  | same pages again RO|
//!              +-------------+---------------+---------------------+--------------------+
//!               mapping 1     mapping 2 (PAGE + 2*size bytes)
//! ```
//!
//! The data pages are mapped twice back to back, so a record that runs past the end of the
//! ring is still contiguous in virtual memory and can be lent out as one `&[u8]`.
//!
//! Each record is an 8-byte header followed by its payload, padded to 8 bytes:
//!
//! ```text
//!  u32 len:    bit 31 BUSY (reserved, not yet committed)
//!              bit 30 DISCARD (committed with bpf_ringbuf_discard: skip it)
//!              bits 0..29 payload length
//!  u32 pg_off: kernel-internal (locates the ring from a record pointer)
//! ```
//!
//! Positions are free-running byte counters; `pos & (size - 1)` is the offset into data.
//! The consumer reads records from `consumer_pos` up to `producer_pos`, stops at the first BUSY
//! record (records commit out of order, but are consumed in order), and publishes the new
//! `consumer_pos` once per batch, which is what frees the space for the producers.

use std::fmt;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ownership::RingClaim;
use crate::scan::{self, Corruption, Stride, Walk};
use crate::sys::{self, map_type, Epoll, Mmap};
use crate::{Error, Fill, WakeupPolicy};

/// Set in a record's length while the producer still owns it (`BPF_RINGBUF_BUSY_BIT`).
pub(crate) const BUSY_BIT: u32 = 1 << 31;
/// Set in a record's length when it was discarded (`BPF_RINGBUF_DISCARD_BIT`).
pub(crate) const DISCARD_BIT: u32 = 1 << 30;
/// Size of a record header (`BPF_RINGBUF_HDR_SZ`).
pub(crate) const HEADER_SIZE: u64 = 8;

/// The memory a ring-buffer consumer reads: the kernel's mmap, or a simulation in tests.
///
/// # Safety
///
/// Implementors guarantee, for as long as the value lives:
/// - `size()` is a power of two, at least 8;
/// - `data()` is 8-byte aligned and valid for reads of `2 * size()` bytes, where byte
///   `i + size()` is the same memory as byte `i` (the kernel's double mapping);
/// - memory between `consumer_pos` and `producer_pos` that the ring protocol marks committed
///   (header without BUSY) is not written until `consumer_pos` moves past it.
pub(crate) unsafe trait RingMemory {
    /// The consumer position (written by us, read by producers).
    fn consumer_pos(&self) -> &AtomicU64;
    /// The producer position (written by producers, read by us).
    fn producer_pos(&self) -> &AtomicU64;
    /// Start of the (double-mapped) data area.
    fn data(&self) -> NonNull<u8>;
    /// Size of the data area in bytes.
    fn size(&self) -> usize;
}

/// Outcome of one pass over the ring.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    /// Records handed to the handler.
    pub records: usize,
    /// Payload bytes handed to the handler.
    pub bytes: u64,
    /// The handler asked to stop.
    pub stopped: bool,
    /// The handler panicked, on the last record counted: the pass stopped there, and what it
    /// handed over is consumed and counted. The caller resumes the panic once it has counted.
    pub panicked: Option<Panic>,
}

/// A handler's panic, caught to be resumed after the bookkeeping.
pub(crate) type Panic = Box<dyn std::any::Any + Send>;

/// Runs the handler on one record, catching a panic: the consume loops record what was handed
/// over before they let it go on (a record must not be handed over twice). No cost on the
/// path that does not panic.
#[inline(always)]
pub(crate) fn guarded<T, H: FnMut(T) -> ControlFlow<()> + ?Sized>(
    handler: &mut H,
    item: T,
) -> Result<ControlFlow<()>, Panic> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(item)))
}

/// Reads committed records in order and hands each payload to `handler`, publishing the
/// consumer position every `publish_every` bytes within a batch and once at the end, so that a
/// long drain returns space to the producers as it goes. Stops at a BUSY record, after `max`
/// records, when the handler breaks, when the ring is empty, or after one ring's worth of bytes
/// (a producer faster than the handler must not keep us here forever). A producer more than a
/// ring ahead, or a record longer than what was written, is an [`Error::Corrupt`], so every
/// record lent lies within one ring's worth of bytes from its start, inside the double mapping.
/// What was handed over is counted and published in every case, the error's included.
///
/// ```text
///  start            published        done              end = producer - start
///    |-- published ---|-- read, not yet --|-- written, not --|
///                         published          read yet
/// ```
///
/// Positions are free-running and wrap at 2^64 as the kernel's do; the loop counts bytes from
/// where it started (`done`, `end`), which stay below two rings.
///
/// Per record ([`Walk::records`], compiled for each handler and called once per stretch): one
/// acquire load of the header (a plain load on x86), a few register operations and the handler,
/// inlined: no call, no atomic read-modify-write, no system call. The consumer position is
/// stored once per stretch.
#[inline(always)]
pub(crate) fn consume<M, H>(mem: &M, max: usize, publish_every: u64, handler: &mut H) -> (Pass, Result<(), Error>)
where
    M: RingMemory + ?Sized,
    H: FnMut(&[u8]) -> ControlFlow<()> + ?Sized,
{
    let mut pass = Pass::default();
    if max == 0 {
        return (pass, Ok(()));
    }
    let size = mem.size() as u64;
    let data = mem.data().as_ptr();
    let publish_every = publish_every.max(HEADER_SIZE);
    // Only this consumer writes consumer_pos, so a relaxed load sees our own last store.
    let start = mem.consumer_pos().load(Ordering::Relaxed);
    let mut done = 0u64;
    let mut published = 0u64;
    // Most streams repeat one record size; the first guess is the smallest (an empty payload).
    let mut walk = Walk::new(max, HEADER_SIZE);
    let result = 'batch: loop {
        // Pairs with smp_store_release(&rb->producer_pos, ...) in __bpf_ringbuf_reserve(): every
        // header below the position read has been written (at least as BUSY). The kernel
        // reserves only while producer_pos - consumer_pos < size.
        let end = mem.producer_pos().load(Ordering::Acquire).wrapping_sub(start);
        let lead = end.wrapping_sub(done);
        if lead > size {
            let reason = "producer position is more than one ring ahead";
            break Err(corrupt(start.wrapping_add(done), lead, reason));
        }
        if lead == 0 || done >= size {
            break Ok(());
        }
        while done < end {
            // SAFETY: the offset is below `size`, inside the mapping.
            let first = unsafe { data.add((start.wrapping_add(done) & (size - 1)) as usize) };
            let stretch = end.min(published + publish_every) - done;
            // SAFETY: `first` is below `data + size`, and everything the walk reads lies within
            // the `end - done <= size` bytes written from it: inside the double mapping.
            let (stretch, room) = (stretch as usize, (end - done) as usize);
            let (walked, exit) = if max == usize::MAX {
                // SAFETY: as above.
                unsafe { walk.records::<H, false>(first, stretch, room, handler) }
            } else {
                // SAFETY: as above.
                unsafe { walk.records::<H, true>(first, stretch, room, handler) }
            };
            let position = start.wrapping_add(done);
            done += walked as u64;
            match exit {
                Exit::StretchDone => {}
                Exit::Flagged(len_word) if len_word & BUSY_BIT != 0 => break 'batch Ok(()),
                Exit::Flagged(len_word) => match skip_discarded(position + walked as u64, end - done, len_word) {
                    Ok(total) => done += total,
                    Err(e) => break 'batch Err(e.into_error()),
                },
                Exit::Corrupt(len_word) => {
                    let reason = "record extends past the producer position";
                    break 'batch Err(corrupt(position + walked as u64, u64::from(len_word), reason));
                }
                Exit::Stopped => {
                    pass.stopped = true;
                    break 'batch Ok(());
                }
                Exit::Panicked(panic) => {
                    pass.panicked = Some(panic);
                    break 'batch Ok(());
                }
                Exit::Max => break 'batch Ok(()),
            }
            if done - published >= publish_every {
                publish(mem, start.wrapping_add(done));
                published = done;
            }
        }
    };
    if done != published {
        publish(mem, start.wrapping_add(done));
    }
    pass.records = max - walk.left;
    pass.bytes = walk.bytes;
    (pass, result)
}

/// Why [`Walk::records`] returned.
enum Exit {
    /// It reached the end of the stretch.
    StretchDone,
    /// The record there is BUSY or discarded: this length word.
    Flagged(u32),
    /// The record there extends past the producer position: this length word.
    Corrupt(u32),
    /// The handler broke, after the record it was handed.
    Stopped,
    /// The handler panicked on the record it was handed.
    Panicked(Panic),
    /// `max` records were handed over.
    Max,
}

impl Walk {
    /// Hands the committed records from `first` on to `handler` until `stretch` bytes are passed;
    /// returns the bytes walked over (the records handed over, and the last one if the handler
    /// broke or `max` was reached) and why it stopped. The hot loop of every ring consumer: a
    /// pointer walk with no masking, no call and no store but the handler's.
    ///
    /// # Safety
    ///
    /// `first` is 8-aligned and the `room >= stretch` bytes from it are readable: written by the
    /// producers (the double mapping makes them contiguous), with committed records left
    /// unwritten until the consumer position passes them.
    // Out of line (one call per stretch): the loop then has the registers to itself, where
    // inlined into the pass it shares them with the pass's own state and spills to the stack.
    #[inline(never)]
    unsafe fn records<H, const LIMITED: bool>(
        &mut self,
        first: *const u8,
        stretch: usize,
        room: usize,
        handler: &mut H,
    ) -> (usize, Exit)
    where
        H: FnMut(&[u8]) -> ControlFlow<()> + ?Sized,
    {
        // In locals, so that they stay in registers whatever the handler does with memory. The
        // walk predicts the next header word to be the last one: `len`, with `stride` its record
        // size. A record that matches costs one compare and adds the predicted stride, so the
        // next header's load does not wait for this one's; its payload bytes are counted per run
        // of equal lengths, `len` times the records of the run.
        let (mut left, mut bytes, mut len) = (self.left, self.bytes, self.len);
        let mut stride = record_size(len);
        let mut run_start = left;
        let mut at = 0usize;
        let exit = loop {
            if at >= stretch {
                break Exit::StretchDone;
            }
            // A group of records with the predicted length word: their headers first, then one
            // acquire fence, then the handler on each, so that the handler's state is loaded
            // once per group rather than after every header's acquire load.
            if at + GROUP * stride <= stretch && (!LIMITED || left >= GROUP) {
                // SAFETY: the GROUP records from `at` end within the stretch, inside the
                // readable bytes.
                let same = unsafe { same_headers(first.add(at), stride, len) };
                if same > 0 {
                    // With the relaxed loads of `same_headers`, an acquire of every header it
                    // saw: pairs with the xchg(&hdr->len, new_len) in bpf_ringbuf_commit().
                    fence(Ordering::Acquire);
                    let mut handed = 0;
                    let stopped = loop {
                        if handed == same {
                            break None;
                        }
                        // SAFETY: as for a record of the single path below: committed (its
                        // header seen before the fence), inside the readable bytes.
                        let payload = unsafe { std::slice::from_raw_parts(first.add(at + 8), len as usize) };
                        (at, handed) = (at + stride, handed + 1);
                        match guarded(handler, payload) {
                            Ok(flow) if flow.is_break() => break Some(Exit::Stopped),
                            Ok(_) => {}
                            Err(panic) => break Some(Exit::Panicked(panic)),
                        }
                    };
                    left -= handed;
                    match stopped {
                        Some(exit) => break exit,
                        None if LIMITED && left == 0 => break Exit::Max,
                        None => continue,
                    }
                }
            }
            scan::prefetch(first.wrapping_add(at + scan::PREFETCH_AHEAD));
            // SAFETY: `at < stretch <= room`, 8-aligned: the header is an aligned u32 inside the
            // readable bytes. The kernel writes it concurrently, hence an atomic.
            let header = unsafe { &*first.add(at).cast::<AtomicU32>() };
            // Pairs with the xchg(&hdr->len, new_len) in bpf_ringbuf_commit() (a full barrier):
            // once we see BUSY clear, the payload written before the commit is visible.
            let len_word = header.load(Ordering::Acquire);
            if len_word != len {
                if len_word & (BUSY_BIT | DISCARD_BIT) != 0 {
                    break Exit::Flagged(len_word);
                }
                bytes += (run_start - left) as u64 * u64::from(len);
                (run_start, len, stride) = (left, len_word, record_size(len_word));
            }
            let next = at + stride;
            if next > room {
                break Exit::Corrupt(len_word);
            }
            // SAFETY: the record lies within the readable bytes (checked above). It is committed
            // and stays unwritten until consumer_pos passes it, which happens only after the
            // handler has returned and dropped this borrow (and no other consumer in this
            // process can move it: `RingClaim`).
            let payload = unsafe { std::slice::from_raw_parts(first.add(at + 8), len as usize) };
            left -= 1;
            at = next;
            match guarded(handler, payload) {
                Ok(flow) if flow.is_break() => break Exit::Stopped,
                Ok(_) => {}
                Err(panic) => break Exit::Panicked(panic),
            }
            if LIMITED && left == 0 {
                break Exit::Max;
            }
        };
        bytes += (run_start - left) as u64 * u64::from(len);
        (self.left, self.bytes, self.len) = (left, bytes, len);
        (at, exit)
    }
}

/// Records a walk hands over per group (see [`Walk::records`]).
const GROUP: usize = 16;

/// How many of the [`GROUP`] headers from `first`, `stride` bytes apart, read `len` (a length
/// word without flags: committed records of that length), up to the first that does not.
/// Relaxed loads: the caller's acquire fence orders them before the payloads.
///
/// # Safety
///
/// The `GROUP * stride` bytes from `first` are readable, `first` and `stride` 8-aligned.
#[inline(always)]
unsafe fn same_headers(first: *const u8, stride: usize, len: u32) -> usize {
    let mut n = 0;
    while n < GROUP {
        let at = n * stride;
        scan::prefetch(first.wrapping_add(at + scan::PREFETCH_AHEAD));
        // SAFETY: an aligned u32 inside the readable bytes; the kernel writes it concurrently.
        if unsafe { &*first.add(at).cast::<AtomicU32>() }.load(Ordering::Relaxed) != len {
            break;
        }
        n += 1;
    }
    n
}

/// Header plus payload of a record whose length word is `len_word` (no flag set: below 2^30),
/// rounded up to 8. Out of line, so that the compiler cannot turn the walk's branch on a new
/// length into a conditional move that makes every next position wait for its header's load.
#[cold]
#[inline(never)]
fn record_size(len_word: u32) -> usize {
    (len_word as usize + HEADER_SIZE as usize + 7) & !7
}

/// The size of the discarded record at `position` (`len_word` read from its header, BUSY
/// clear), or an [`Error::Corrupt`] if it extends past the `room` bytes written from there.
/// Out of line: discarded records are rare, and the fast path stays small.
#[cold]
#[inline(never)]
fn skip_discarded(position: u64, room: u64, len_word: u32) -> Result<u64, Corruption> {
    let len = u64::from(len_word & !DISCARD_BIT);
    let total = (len + HEADER_SIZE + 7) & !7;
    if total > room {
        return Err(corruption(position, len, "record extends past the producer position"));
    }
    Ok(total)
}

/// How long a poll waits before looking again at a head record still being written (BUSY): its
/// commit is not certain to send a wakeup (`BPF_RB_NO_WAKEUP`, or a wakeup already spent).
pub(crate) const BUSY_BACKOFF: Duration = Duration::from_millis(1);

/// Whether the record at the consumer position is still being written.
pub(crate) fn head_is_busy<M: RingMemory + ?Sized>(mem: &M) -> bool {
    let cons = mem.consumer_pos().load(Ordering::Relaxed);
    // Pairs with smp_store_release(&rb->producer_pos, ...) in __bpf_ringbuf_reserve(): the
    // header below the position read has been written (at least as BUSY).
    let prod = mem.producer_pos().load(Ordering::Acquire);
    let lead = prod.wrapping_sub(cons);
    if lead == 0 || lead > mem.size() as u64 {
        return false;
    }
    let offset = (cons & (mem.size() as u64 - 1)) as usize;
    // SAFETY: as in `consume`: an 8-aligned offset below `size` is an aligned u32 inside the
    // mapping, written concurrently by the kernel.
    let header = unsafe { &*mem.data().as_ptr().add(offset).cast::<AtomicU32>() };
    // Pairs with the xchg(&hdr->len, new_len) in bpf_ringbuf_commit().
    header.load(Ordering::Acquire) & BUSY_BIT != 0
}

/// Waits while `busy()`: the record at the head of a ring is still being written, which holds
/// back what is committed behind it, and its commit may send no wakeup. Looks again every
/// [`BUSY_BACKOFF`] until `deadline` (`None`: until it is committed).
pub(crate) fn wait_past_busy(deadline: Option<Instant>, mut busy: impl FnMut() -> bool) {
    while busy() {
        let left = deadline.map_or(BUSY_BACKOFF, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(BUSY_BACKOFF));
    }
}

/// A drain: runs `pass` (records taken, and whether the head record was BUSY before it) until it
/// takes nothing with no BUSY head; while the head is BUSY (its program is still writing it, and
/// the records behind it wait), looks again every [`BUSY_BACKOFF`] until `deadline`. Returns
/// the records taken in all. The head is looked at before the pass, not after: a head
/// committed between the pass and the look would otherwise end the drain with its record unread.
pub(crate) fn drain_past_busy(
    deadline: Instant,
    mut pass: impl FnMut() -> Result<(usize, bool), Error>,
) -> Result<usize, Error> {
    let mut total = 0;
    loop {
        let (n, busy) = pass()?;
        total += n;
        if n > 0 {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !busy || left.is_zero() {
            return Ok(total);
        }
        std::thread::sleep(left.min(BUSY_BACKOFF));
    }
}

/// Out of line: the consume loop's fast path stays small.
#[cold]
#[inline(never)]
fn corrupt(position: u64, length: u64, reason: &'static str) -> Error {
    corruption(position, length, reason).into_error()
}

fn corruption(position: u64, length: u64, reason: &'static str) -> Corruption {
    Corruption { transport: "ring", position, length, reason }
}

fn publish<M: RingMemory + ?Sized>(mem: &M, cons: u64) {
    // Pairs with smp_load_acquire(&rb->consumer_pos) in __bpf_ringbuf_reserve() and
    // ringbuf_avail_data_sz(): the producer reuses the space only after our reads of it are done.
    mem.consumer_pos().store(cons, Ordering::Release);
}

/// How full a ring is, read now: its positions and size.
pub(crate) fn fill<M: RingMemory + ?Sized>(mem: &M) -> Fill {
    let capacity = mem.size() as u64;
    let consumer_pos = mem.consumer_pos().load(Ordering::Relaxed);
    // Pairs with smp_store_release(&rb->producer_pos, ...) in __bpf_ringbuf_reserve().
    let producer_pos = mem.producer_pos().load(Ordering::Acquire);
    Fill { used: producer_pos.wrapping_sub(consumer_pos).min(capacity), capacity, consumer_pos, producer_pos }
}

/// The kernel's ring mapped into this process.
struct MappedRing {
    consumer: Mmap,
    producer: Mmap,
    /// The data area, one page into `producer` (computed once: the loop reads it per record).
    data: NonNull<u8>,
    size: usize,
}

// SAFETY: `data` points into `producer`, which the value owns; the mappings are Send and Sync
// (`Mmap`), and `&MappedRing` hands out only what `Mmap` does: pointers and atomics.
unsafe impl Send for MappedRing {}
// SAFETY: as above.
unsafe impl Sync for MappedRing {}

// SAFETY: the kernel maps the consumer page (page aligned, so the u64 is aligned) and, at
// PAGE, the producer page followed by the data pages twice (`ringbuf_map_mmap_kern`); both
// mappings live as long as `self`. The kernel writes committed records only ahead of
// consumer_pos, as the trait requires.
unsafe impl RingMemory for MappedRing {
    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first u64 of the consumer page is consumer_pos, page-aligned and mapped.
        unsafe { &*self.consumer.ptr().as_ptr().cast::<AtomicU64>() }
    }
    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first u64 of the producer page is producer_pos, page-aligned and mapped.
        unsafe { &*self.producer.ptr().as_ptr().cast::<AtomicU64>() }
    }
    fn data(&self) -> NonNull<u8> {
        self.data
    }
    fn size(&self) -> usize {
        self.size
    }
}

/// A consumer of one `BPF_MAP_TYPE_RINGBUF` (what an [`EventSource`](crate::EventSource) over a
/// ring reads with).
///
/// Records are lent as `&[u8]` straight from the kernel's memory (zero copy). A handler's
/// records ([`consume`](Self::consume)) are freed once per stretch of the batch, after the
/// handler has returned; a pulled batch's ([`batch`](Self::batch)) at the next call that
/// consumes or waits, which the borrow of the records rules out while any is alive. Either way
/// a record is never rewritten while it is borrowed.
///
/// Minimum kernel: 5.8.
pub(crate) struct RingBuffer {
    /// This process's only consumer of the map.
    _claim: RingClaim,
    fd: OwnedFd,
    /// Shared with the source's [`TotalsHandle`](crate::TotalsHandle), which reads the fill.
    ring: Arc<MappedRing>,
    publish_every: u64,
    /// The map fd, edge-triggered, and a stop eventfd: [`wait`](Self::wait) sleeps until the
    /// producers' next wakeup or a stop.
    wakeups: Epoll,
    ready: Vec<u64>,
    /// [`wait`](Self::wait) sleeps only while fewer bytes than this wait (see `expect_wakeups`).
    wake_threshold: u64,
    /// The producers' wakeup policy, as told by `expect_wakeups`.
    policy: WakeupPolicy,
    /// The end of the last pulled batch: the consumer position to publish before anything else
    /// reads or waits (see [`settle`](Self::settle)).
    lent_to: Option<u64>,
}

/// The epoll token of a stop eventfd in a buffer's wait set.
pub(crate) const STOP_TOKEN: u64 = u64::MAX;

/// How a wait for a buffer's wakeup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The producers woke the consumer.
    Woken,
    /// The timeout passed, records were waiting already, or a stop was asked.
    NotWoken,
    /// A signal interrupted the wait (EINTR).
    Interrupted,
}

impl Waited {
    /// How a wait of a buffer's wait set ended: `interrupted`, or with the tokens of `ready`
    /// (a stop is no wakeup).
    pub(crate) fn of(interrupted: bool, ready: &[u64]) -> Self {
        if interrupted {
            Waited::Interrupted
        } else if ready.iter().any(|&token| token != STOP_TOKEN) {
            Waited::Woken
        } else {
            Waited::NotWoken
        }
    }
}

impl fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingBuffer").field("fill", &self.fill()).finish()
    }
}

impl RingBuffer {
    /// Maps the ring behind `map` (a `BPF_MAP_TYPE_RINGBUF` fd). The fd is duplicated, so the
    /// consumer keeps the map alive by itself.
    ///
    /// A ring has one consumer: while a `RingBuffer` of this process reads the map (whatever fd
    /// it was opened through), another is refused with [`Error::AlreadyConsumed`]. A consumer
    /// in another process is beyond what this process can see; do not run one.
    pub fn new(map: BorrowedFd<'_>) -> Result<Self, Error> {
        let info = sys::expect_map_type(map, map_type::RINGBUF)?;
        let size = info.max_entries as usize;
        let page = sys::page_size();
        if !size.is_power_of_two() || size % page != 0 {
            return Err(Error::sys(
                "ring buffer size",
                std::io::Error::other(format!("{size} is not a power-of-two multiple of the page size")),
            ));
        }
        let claim = RingClaim::take(info.id, &info.name())?;
        let fd = sys::dup(map)?;
        let consumer = Mmap::map(fd.as_fd(), page, 0, true)?;
        let producer = Mmap::map(fd.as_fd(), page + 2 * size, page, false)?;
        // SAFETY: the data area starts one page into the producer mapping, which is
        // PAGE + 2*size bytes long.
        let data = unsafe { producer.ptr().add(page) };
        let wakeups = Epoll::new()?;
        wakeups.add_edge_triggered(fd.as_fd(), 0)?;
        Ok(RingBuffer {
            _claim: claim,
            fd,
            ring: Arc::new(MappedRing { consumer, producer, data, size }),
            publish_every: default_publish_every(size as u64),
            wakeups,
            ready: Vec::new(),
            wake_threshold: wake_threshold(WakeupPolicy::Adaptive, size as u64),
            policy: WakeupPolicy::Adaptive,
            lent_to: None,
        })
    }

    /// Adds `stop` (an eventfd) to what [`wait`](Self::wait) wakes for.
    pub(crate) fn watch_stop(&self, stop: BorrowedFd<'_>) -> Result<(), Error> {
        self.wakeups.add(stop, STOP_TOKEN)
    }

    /// Tells [`wait`](Self::wait) which wakeups the producers send (the policy the BPF side was
    /// loaded with, see `bpfstream.h`), so that it sleeps through records written without a
    /// wakeup instead of returning for each trickle of them. The default, the kernel's
    /// [`WakeupPolicy::Adaptive`], is right for every policy but wastes CPU with the others.
    pub(crate) fn expect_wakeups(&mut self, policy: WakeupPolicy) {
        self.wake_threshold = wake_threshold(policy, self.ring.size as u64);
        self.policy = policy;
    }

    /// Whether the producers wake the consumer at all (not [`WakeupPolicy::Never`], as told by
    /// [`expect_wakeups`](Self::expect_wakeups)).
    pub(crate) fn sends_wakeups(&self) -> bool {
        self.policy != WakeupPolicy::Never
    }

    /// Publishes the end of the last pulled batch, if it is not yet: its records are free for
    /// the producers from here on. Every call that consumes or waits does this first.
    pub(crate) fn settle(&mut self) {
        if let Some(position) = self.lent_to.take() {
            publish(&*self.ring, position);
        }
    }

    /// Hands every committed record (at most `max`) to `handler` without blocking ([`consume`]).
    #[inline(always)]
    pub(crate) fn consume<H>(&mut self, max: usize, handler: &mut H) -> (Pass, Result<(), Error>)
    where
        H: FnMut(&[u8]) -> ControlFlow<()>,
    {
        self.settle();
        consume(&*self.ring, max, self.publish_every, handler)
    }

    /// The committed records now in the ring, to be pulled one by one ([`Batch`]); the consumer
    /// position moves past them when [`finish_batch`](Self::finish_batch) is told where the
    /// pull stopped and a later call settles it.
    ///
    /// # Safety
    ///
    /// The records the batch lends must be dead before the next call on this buffer that
    /// settles (consume, wait, batch) and before it is dropped: the caller ties their lifetime
    /// to a borrow of the buffer that those calls need.
    #[inline(always)]
    pub(crate) unsafe fn batch<'a>(&mut self) -> Batch<'a> {
        self.settle();
        Batch::new(&*self.ring)
    }

    /// Whether a pulled batch ended at a position not published yet (the next call that settles
    /// publishes it).
    pub(crate) fn holds_lent(&self) -> bool {
        self.lent_to.is_some()
    }

    /// Where a pulled batch stopped: published by the next call that settles.
    pub(crate) fn finish_batch(&mut self, position: u64) {
        self.lent_to = Some(position);
    }

    /// Whether records wait that no coming wakeup is certain to announce, so that sleeping
    /// until the next wakeup could strand them: at least the policy's wakeup threshold is
    /// waiting (with the default policy: anything at all).
    pub(crate) fn ready_now(&self) -> bool {
        // Orders our last store of consumer_pos (the end of the previous consume) before the
        // load of producer_pos in fill(). Pairs with the full barrier of the xchg in
        // bpf_ringbuf_commit(), between the producer's store of producer_pos (reserve) and its
        // load of consumer_pos: either the producer sees where we stopped, finds its record
        // there and wakes us, or we see its record here and do not sleep.
        fence(Ordering::SeqCst);
        fill(&*self.ring).used >= self.wake_threshold
    }

    /// Sleeps up to `timeout` for the producers' next wakeup (or a stop), unless
    /// [`ready_now`](Self::ready_now).
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> Result<Waited, Error> {
        self.settle();
        if self.ready_now() {
            return Ok(Waited::NotWoken);
        }
        let interrupted = self.wakeups.wait(timeout, &mut self.ready)?;
        Ok(Waited::of(interrupted, &self.ready))
    }

    /// Whether the record at the consumer position is still being written.
    pub(crate) fn head_is_busy(&self) -> bool {
        head_is_busy(&*self.ring)
    }

    /// Size, fill and positions, read now (two memory loads).
    pub(crate) fn fill(&self) -> Fill {
        fill(&*self.ring)
    }

    /// A function that reads the fill from the ring's memory, which it keeps mapped.
    pub(crate) fn fill_reader(&self) -> impl Fn() -> Fill + Send + Sync + 'static {
        let ring = Arc::clone(&self.ring);
        move || fill(&*ring)
    }
}

impl Drop for RingBuffer {
    fn drop(&mut self) {
        // The records of the last pulled batch are dead (the batch borrowed the buffer): the
        // next consumer of the map starts after them.
        self.settle();
    }
}

impl AsFd for RingBuffer {
    /// The map fd: readable (EPOLLIN) when records are waiting. Add it to any epoll set or to
    /// tokio's `AsyncFd`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The committed records of a ring at one moment, pulled one at a time (the pull API,
/// [`Records`](crate::Records)): each is lent in place, and nothing is published until the
/// batch is over and a later call settles it ([`RingBuffer::finish_batch`]).
///
/// ```text
///  start (consumer_pos)        at                       end (producer_pos read once)
///    |-- lent, not published ---|-- committed, not yet pulled --|
/// ```
///
/// Per record: one acquire load of the header (a plain load on x86), the flag and length checks
/// and a few register operations, all inlined into the caller's loop with the batch's state in
/// registers: the caller's own counters are locals, not memory behind a handler's reference.
pub(crate) struct Batch<'a> {
    /// The data byte at `start`; the double mapping makes the `end <= size` bytes from it
    /// contiguous.
    first: NonNull<u8>,
    start: u64,
    at: u64,
    end: u64,
    stride: Stride,
    /// What stopped the batch early (a corrupt header), for the next call to report.
    pub corruption: Option<Corruption>,
    _lent: PhantomData<&'a [u8]>,
}

// The pull's state must stay in the caller's registers: nothing below takes the batch's address
// in a call the compiler cannot inline (the cold paths take and return values), or every
// header's acquire load would make the loop reload it from memory.
impl<'a> Batch<'a> {
    /// The committed records of `mem` now: they are lent for `'a`, so its consumer position must
    /// not move past them before then (the caller settles the batch only at a call that `'a`
    /// rules out).
    #[inline(always)]
    pub(crate) fn new<M: RingMemory + ?Sized>(mem: &M) -> Self {
        let size = mem.size() as u64;
        // Only this consumer writes consumer_pos, so a relaxed load sees our own last store.
        let start = mem.consumer_pos().load(Ordering::Relaxed);
        // Pairs with smp_store_release(&rb->producer_pos, ...) in __bpf_ringbuf_reserve(): every
        // header below the position read has been written (at least as BUSY).
        let lead = mem.producer_pos().load(Ordering::Acquire).wrapping_sub(start);
        // SAFETY: the offset is below `size`, inside the mapping.
        let first = unsafe { mem.data().add((start & (size - 1)) as usize) };
        let (end, corruption) = match lead <= size {
            true => (lead, None),
            false => (0, Some(corruption(start, lead, "producer position is more than one ring ahead"))),
        };
        Batch { first, start, at: 0, end, stride: Stride::new(HEADER_SIZE), corruption, _lent: PhantomData }
    }

    /// The next committed record, or `None` at the end of the batch: the producer position it
    /// was made with, a record still being written (BUSY), or a corrupt header (kept in
    /// [`corruption`](Self::corruption)).
    #[inline(always)]
    pub fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.at >= self.end {
                return None;
            }
            let at = self.at as usize;
            scan::prefetch(self.first.as_ptr().wrapping_add(at + scan::PREFETCH_AHEAD));
            // SAFETY: `at < end <= size` and 8-aligned: the header is an aligned u32 inside the
            // double mapping. The kernel writes it concurrently, hence an atomic.
            let header = unsafe { self.first.add(at).cast::<AtomicU32>().as_ref() };
            // Pairs with the xchg(&hdr->len, new_len) in bpf_ringbuf_commit() (a full barrier):
            // once we see BUSY clear, the payload written before the commit is visible.
            let len_word = header.load(Ordering::Acquire);
            // Header plus payload, rounded up to 8 (len < 2^30 when no flag is set).
            let total = (u64::from(len_word) + HEADER_SIZE + 7) & !7;
            if len_word & (BUSY_BIT | DISCARD_BIT) != 0 || total > self.end - self.at {
                match unlendable(self.start.wrapping_add(self.at), self.end - self.at, len_word) {
                    Ok(skipped) => self.at += skipped,
                    Err(corruption) => {
                        self.end = self.at;
                        self.corruption = corruption;
                    }
                }
                continue;
            }
            // SAFETY: the record lies within the `end - at` written bytes (checked above),
            // inside the double mapping. It is committed and stays unwritten until
            // consumer_pos passes it, which happens only at a call that the lifetime `'a` rules
            // out while the record is borrowed (see `RingBuffer::batch`), and no other consumer
            // in this process can move it (`RingClaim`).
            let payload = unsafe { std::slice::from_raw_parts(self.first.add(at + 8).as_ptr(), len_word as usize) };
            self.at = self.stride.next(self.at, total);
            return Some(payload);
        }
    }

    /// The consumer position after the records pulled so far.
    #[inline(always)]
    pub fn position(&self) -> u64 {
        self.start.wrapping_add(self.at)
    }
}

/// A header at `position` that [`Batch::next`] cannot lend, `room` bytes before the producer
/// position: a discarded record is skipped (`Ok`: its size), a BUSY one ends the batch before it
/// (`Err(None)`), a record longer than what was written ends it with an error. Out of line,
/// and on values: the pull's fast path stays small and its state in registers.
#[cold]
#[inline(never)]
fn unlendable(position: u64, room: u64, len_word: u32) -> Result<u64, Option<Corruption>> {
    if len_word & BUSY_BIT != 0 {
        return Err(None);
    }
    // A record without flags gets here only when it does not fit: an error here too.
    skip_discarded(position, room, len_word).map_err(Some)
}

/// Bytes waiting below which `poll` may sleep until the producers' next wakeup without leaving
/// records longer than the policy (or the poll timeout) allows.
pub(crate) fn wake_threshold(policy: WakeupPolicy, size: u64) -> u64 {
    match policy {
        // The kernel wakes only for a record written where the consumer stopped: sleep only
        // when nothing at all is waiting.
        WakeupPolicy::Adaptive | WakeupPolicy::EveryRecord => 1,
        // A wakeup comes once `n` bytes wait; but never sleep on a ring half full.
        WakeupPolicy::Bytes(n) => n.clamp(1, size / 2),
        // No byte count is promised: sleep until the wakeup or the timeout, unless half full.
        WakeupPolicy::EveryRecords(_) | WakeupPolicy::Never => (size / 2).max(1),
    }
}

/// Publish at least every quarter ring, so producers regain space during a long drain.
pub(crate) fn default_publish_every(size: u64) -> u64 {
    (size / 4).max(HEADER_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_sleeps_below_what_the_policy_promises_to_signal() {
        let size = 1 << 20;
        assert_eq!(wake_threshold(WakeupPolicy::Adaptive, size), 1, "only an empty ring is sure to be signalled");
        assert_eq!(wake_threshold(WakeupPolicy::EveryRecord, size), 1);
        assert_eq!(wake_threshold(WakeupPolicy::Bytes(8000), size), 8000);
        assert_eq!(wake_threshold(WakeupPolicy::Bytes(0), size), 1);
        assert_eq!(wake_threshold(WakeupPolicy::Bytes(size), size), size / 2, "never sleep on a half-full ring");
        assert_eq!(wake_threshold(WakeupPolicy::Never, size), size / 2);
        assert_eq!(wake_threshold(WakeupPolicy::EveryRecords(500), size), size / 2);
    }
}

/// The record protocol on the simulated ring (`sim.rs`), which writes as the kernel does.
#[cfg(test)]
mod protocol_tests {
    use std::ops::ControlFlow;

    use proptest::prelude::*;

    use crate::ringbuf;
    use crate::sim::{SimRing, SimRingConsumer};

    fn payload(seq: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq * 31 + i) as u8).collect()
    }

    /// Takes records from `consumer` into `seen`: with the handler, or, when `pull` is some,
    /// through a pulled batch stopped after that many records. Returns how many.
    fn take(consumer: &mut SimRingConsumer<'_>, pull: Option<usize>, seen: &mut Vec<Vec<u8>>) -> usize {
        let before = seen.len();
        match pull {
            None => drop(consumer.consume(|r: &[u8]| seen.push(r.to_vec())).unwrap()),
            Some(n) => seen.extend(consumer.read().take(n).map(<[u8]>::to_vec)),
        }
        seen.len() - before
    }

    proptest! {
        /// Whatever the mix of sizes (so the next-record prediction keeps missing and hitting),
        /// wherever the ring wraps and however the reads interleave with the writes, records
        /// come out whole and in order, and the consumer ends where the producer is; through the
        /// handler or the pull (whose batches are stopped early now and then).
        #[test]
        fn records_come_out_whole_and_in_order(
            sizes in proptest::collection::vec(0usize..200, 1..300),
            start in 0u64..10_000,
            every in 1usize..40,
            pull in proptest::option::of(1usize..8),
        ) {
            let ring = SimRing::starting_at(1024, start);
            let mut consumer = ring.consumer().unwrap();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            for (seq, &len) in sizes.iter().enumerate() {
                while ring.output(&payload(seq, len)).is_none() {
                    take(&mut consumer, pull, &mut seen);
                }
                if seq % every == 0 {
                    take(&mut consumer, pull, &mut seen);
                }
            }
            while take(&mut consumer, pull, &mut seen) > 0 {}
            drop(consumer); // publishes the last pulled batch
            let expected: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(seq, &len)| payload(seq, len)).collect();
            prop_assert_eq!(seen, expected);
            let (consumer_pos, producer_pos) = ring.positions();
            prop_assert_eq!(consumer_pos, producer_pos);
        }
    }

    #[test]
    fn a_long_drain_returns_space_as_it_goes() {
        let ring = SimRing::new(1 << 16);
        while ring.output(&[7; 8]).is_some() {}
        let mut consumer = ring.consumer().unwrap();
        consumer.set_publish_every(256);
        let mut handled = 0u64;
        let n = consumer
            .consume(|_: &[u8]| {
                handled += 1;
                // Every record is 16 bytes; the position published lags by less than a stretch.
                let lag = handled * 16 - ring.positions().0;
                assert!(lag <= 256 + 16, "consumer_pos lags {lag} bytes behind record {handled}");
            })
            .unwrap();
        assert_eq!(n as u64, handled);
        assert_eq!(ring.available(), 0);
    }

    #[test]
    fn groups_of_equal_records_end_at_max_a_stop_or_a_busy_record() {
        let ring = SimRing::new(1 << 16);
        for i in 0..40u8 {
            ring.output(&[i; 3]).unwrap();
        }
        let busy = ring.reserve(3).unwrap();
        for i in 41..100u8 {
            ring.output(&[i; 3]).unwrap();
        }
        let mut consumer = ring.consumer().unwrap();
        let mut seen = Vec::new();
        assert_eq!(consumer.consume_n(20, |r: &[u8]| seen.push(r[0])).unwrap(), 20);
        let stop_at_33 = |r: &[u8], seen: &mut Vec<u8>| {
            seen.push(r[0]);
            if r[0] == 33 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        assert_eq!(consumer.consume(|r: &[u8]| stop_at_33(r, &mut seen)).unwrap(), 14);
        assert_eq!(consumer.consume(|r: &[u8]| seen.push(r[0])).unwrap(), 6, "up to the BUSY record");
        assert_eq!(ring.positions().0, busy.pos());
        ring.fill(&busy, &[40; 3]);
        ring.commit(busy, false);
        assert_eq!(consumer.consume(|r: &[u8]| seen.push(r[0])).unwrap(), 60);
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
    }

    #[test]
    fn busy_records_stop_the_reader_and_discarded_ones_are_skipped() {
        let ring = SimRing::new(4096);
        ring.output(b"one").unwrap();
        let discarded = ring.reserve(5).unwrap();
        ring.commit(discarded, true);
        let busy = ring.reserve(3).unwrap();
        ring.output(b"three").unwrap();
        let mut seen = Vec::new();
        let mut consumer = ring.consumer().unwrap();
        consumer.consume(|r: &[u8]| seen.push(r.to_vec())).unwrap();
        assert_eq!(seen, [b"one".to_vec()], "stops at the BUSY record, skipping the discarded one");
        assert_eq!(ring.positions().0, busy.pos(), "the BUSY record is not consumed");
        ring.fill(&busy, b"two");
        ring.commit(busy, false);
        consumer.consume(|r: &[u8]| seen.push(r.to_vec())).unwrap();
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn max_and_stop_leave_the_rest_in_place() {
        let ring = SimRing::new(4096);
        for i in 0..10u8 {
            ring.output(&[i; 3]).unwrap();
        }
        let mut consumer = ring.consumer().unwrap();
        let mut seen = Vec::new();
        assert_eq!(consumer.consume_n(4, |r: &[u8]| seen.push(r[0])).unwrap(), 4);
        let stopped = consumer
            .consume(|r: &[u8]| {
                seen.push(r[0]);
                if r[0] == 6 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(stopped, 3);
        assert_eq!(consumer.consume(|r: &[u8]| seen.push(r[0])).unwrap(), 3);
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    }

    /// A ring whose head record stays BUSY for 20 ms, with a record behind it: what `take` got
    /// (records, payloads), run meanwhile.
    fn committed_late(
        take: impl FnOnce(&SimRing, &mut crate::sim::SimRingConsumer<'_>) -> (usize, Vec<Vec<u8>>),
    ) -> (usize, Vec<Vec<u8>>) {
        let ring = SimRing::new(4096);
        let busy = ring.reserve(3).unwrap();
        ring.output(b"behind").unwrap();
        std::thread::scope(|s| {
            let mut consumer = ring.consumer().unwrap();
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                ring.fill(&busy, b"one");
                ring.commit(busy, false);
            });
            take(&ring, &mut consumer)
        })
    }

    #[test]
    fn poll_looks_again_at_a_busy_head_until_it_is_committed() {
        // Without the backoff this returns 0 at once: the head is BUSY and nothing wakes it.
        let taken = committed_late(|_, consumer| {
            let mut seen = Vec::new();
            (consumer.poll(None, |r: &[u8]| seen.push(r.to_vec())).unwrap(), seen)
        });
        assert_eq!(taken, (2, vec![b"one".to_vec(), b"behind".to_vec()]));
    }

    #[test]
    fn a_drain_waits_out_a_busy_head_until_its_deadline() {
        let taken = committed_late(|ring, consumer| drain(ring, consumer, std::time::Duration::from_secs(30)));
        assert_eq!(taken, (2, vec![b"one".to_vec(), b"behind".to_vec()]), "the drain ended at the BUSY head");
        // A head that stays BUSY ends the drain at its deadline, with what was taken before it.
        let ring = SimRing::new(4096);
        ring.output(b"first").unwrap();
        let _busy = ring.reserve(3).unwrap();
        let mut consumer = ring.consumer().unwrap();
        assert_eq!(drain(&ring, &mut consumer, std::time::Duration::from_millis(5)).0, 1);
    }

    #[test]
    fn a_head_committed_right_after_a_pass_is_taken_by_the_drain() {
        // The commit lands between a pass that found the head BUSY and the drain's next look.
        let ring = SimRing::new(4096);
        let busy = ring.reserve(3).unwrap();
        ring.output(b"behind").unwrap();
        let mut consumer = ring.consumer().unwrap();
        let mut busy = Some(busy);
        let taken = drain_with(&ring, &mut consumer, std::time::Duration::from_secs(30), || {
            if let Some(head) = busy.take() {
                ring.fill(&head, b"one");
                ring.commit(head, false);
            }
        });
        assert_eq!(taken, (2, vec![b"one".to_vec(), b"behind".to_vec()]));
    }

    /// [`super::drain_past_busy`] over a simulated ring, within `limit`: the records and their
    /// payloads.
    fn drain(
        ring: &SimRing,
        consumer: &mut crate::sim::SimRingConsumer<'_>,
        limit: std::time::Duration,
    ) -> (usize, Vec<Vec<u8>>) {
        drain_with(ring, consumer, limit, || {})
    }

    /// [`drain`], running `after_pass` after each pass of the consumer.
    fn drain_with(
        ring: &SimRing,
        consumer: &mut crate::sim::SimRingConsumer<'_>,
        limit: std::time::Duration,
        mut after_pass: impl FnMut(),
    ) -> (usize, Vec<Vec<u8>>) {
        let mut seen = Vec::new();
        let n = super::drain_past_busy(std::time::Instant::now() + limit, || {
            let busy = ringbuf::head_is_busy(ring);
            let pass = consumer.consume(|r: &[u8]| seen.push(r.to_vec()))?;
            after_pass();
            Ok((pass, busy))
        });
        (n.unwrap(), seen)
    }

    #[test]
    fn poll_on_a_busy_head_returns_at_the_timeout() {
        let ring = SimRing::new(4096);
        let _busy = ring.reserve(3).unwrap();
        ring.output(b"behind").unwrap();
        let mut consumer = ring.consumer().unwrap();
        let n = consumer.poll(Some(std::time::Duration::from_millis(5)), |_: &[u8]| {}).unwrap();
        assert_eq!(n, 0, "the BUSY head holds the record behind it");
        // A committed head is taken at once, BUSY or not behind it.
        drop(consumer);
        let ring = SimRing::new(4096);
        ring.output(b"head").unwrap();
        let _busy = ring.reserve(3).unwrap();
        assert_eq!(ring.consumer().unwrap().poll(None, |_: &[u8]| {}).unwrap(), 1);
    }

    #[test]
    fn a_corrupt_length_is_an_error_not_a_wild_read() {
        let ring = SimRing::new(4096);
        let r = ring.output(b"fine").unwrap();
        ring.output(b"next").unwrap();
        ring.corrupt_header(r + 16, 5000);
        let mut seen = 0;
        let err = ring.consumer().unwrap().consume(|_: &[u8]| seen += 1).unwrap_err();
        assert_eq!(seen, 1);
        assert!(err.to_string().contains("past the producer position"), "{err}");
        assert_eq!(ring.positions().0, r + 16, "consumed up to the bad record");
    }
}
