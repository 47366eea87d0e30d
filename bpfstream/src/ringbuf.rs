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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::stats::Fill;
use crate::sys::{self, map_type, Mmap};
use crate::{Error, Flow};

/// Set in a record's length while the producer still owns it (`BPF_RINGBUF_BUSY_BIT`).
pub const BUSY_BIT: u32 = 1 << 31;
/// Set in a record's length when it was discarded (`BPF_RINGBUF_DISCARD_BIT`).
pub const DISCARD_BIT: u32 = 1 << 30;
/// Size of a record header (`BPF_RINGBUF_HDR_SZ`).
pub const HEADER_SIZE: u64 = 8;

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
pub unsafe trait RingMemory {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pass {
    /// Records handed to the handler.
    pub records: usize,
    /// Payload bytes handed to the handler.
    pub bytes: u64,
    /// The handler asked to stop.
    pub stopped: bool,
}

/// Reads committed records in order and hands each payload to `handler`, publishing the
/// consumer position once per batch. Stops at a BUSY record, after `max` records, when the
/// handler says stop, when the ring is empty, or after one ring's worth of bytes.
///
/// A batch is what one read of `producer_pos` shows, capped at `publish_every` bytes so that a
/// long drain still returns space to the producers as it goes.
pub(crate) fn consume<M: RingMemory + ?Sized, F: Flow>(
    mem: &M,
    max: usize,
    publish_every: u64,
    handler: &mut dyn FnMut(&[u8]) -> F,
) -> Result<Pass, Error> {
    let size = mem.size() as u64;
    let mask = size - 1;
    let data = mem.data();
    let mut pass = Pass::default();
    // Only this consumer writes consumer_pos, so a relaxed load sees our own last store.
    let mut cons = mem.consumer_pos().load(Ordering::Relaxed);
    let start = cons;
    let mut published = cons;

    let result = 'outer: loop {
        // Pairs with smp_store_release(&rb->producer_pos, ...) in __bpf_ringbuf_reserve():
        // every header below the position we read has been written (at least as BUSY).
        let prod = mem.producer_pos().load(Ordering::Acquire);
        // One lap at most: a producer faster than the handler must not keep us here forever.
        if cons >= prod || cons - start >= size {
            break Ok(());
        }
        while cons < prod {
            if pass.records >= max || pass.stopped {
                break 'outer Ok(());
            }
            let offset = (cons & mask) as usize;
            // SAFETY: `offset + 8 <= size` because offsets are 8-aligned and size is a multiple
            // of 8; `data` is 8-aligned, so the header is an aligned u32 inside the mapping. The
            // kernel writes it concurrently, hence an atomic.
            let header = unsafe { &*data.as_ptr().add(offset).cast::<AtomicU32>() };
            // Pairs with the xchg(&hdr->len, new_len) in bpf_ringbuf_commit() (a full barrier):
            // once we see BUSY clear, the payload written before the commit is visible.
            let len_word = header.load(Ordering::Acquire);
            if len_word & BUSY_BIT != 0 {
                break 'outer Ok(());
            }
            let len = u64::from(len_word & !(BUSY_BIT | DISCARD_BIT));
            let total = (len + HEADER_SIZE).next_multiple_of(8);
            if total > prod - cons {
                break 'outer Err(Error::Corrupt {
                    transport: "ring",
                    position: cons,
                    length: len,
                    reason: "record extends past the producer position",
                });
            }
            if len_word & DISCARD_BIT == 0 {
                // SAFETY: the record lies within [cons, prod), i.e. at most `size` bytes from
                // `offset`; with the double mapping, `offset + 8 + len <= 2 * size`. The record is
                // committed and stays unwritten until consumer_pos passes it, which happens only
                // after the handler has returned and dropped this borrow.
                let payload = unsafe {
                    std::slice::from_raw_parts(data.as_ptr().add(offset + HEADER_SIZE as usize), len as usize)
                };
                pass.records += 1;
                pass.bytes += len;
                pass.stopped = handler(payload).is_stop();
            }
            cons += total;
            if cons - published >= publish_every {
                publish(mem, cons);
                published = cons;
            }
        }
    };
    if cons != published {
        publish(mem, cons);
    }
    result.map(|()| pass)
}

fn publish<M: RingMemory + ?Sized>(mem: &M, cons: u64) {
    // Pairs with smp_load_acquire(&rb->consumer_pos) in __bpf_ringbuf_reserve() and
    // ringbuf_avail_data_sz(): the producer reuses the space only after our reads of it are done.
    mem.consumer_pos().store(cons, Ordering::Release);
}

/// Positions and fill of a ring buffer at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    /// Size of the data area in bytes.
    pub size: u64,
    /// Bytes written by producers and not yet consumed (records, headers and padding).
    pub available: u64,
    /// The consumer position (free-running byte counter).
    pub consumer_pos: u64,
    /// The producer position (free-running byte counter).
    pub producer_pos: u64,
}

pub(crate) fn stats<M: RingMemory + ?Sized>(mem: &M) -> RingStats {
    let consumer_pos = mem.consumer_pos().load(Ordering::Relaxed);
    let producer_pos = mem.producer_pos().load(Ordering::Acquire);
    RingStats {
        size: mem.size() as u64,
        available: producer_pos.saturating_sub(consumer_pos),
        consumer_pos,
        producer_pos,
    }
}

/// The kernel's ring mapped into this process.
struct MappedRing {
    consumer: Mmap,
    producer: Mmap,
    size: usize,
}

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
        // SAFETY: the data area starts one page into the producer mapping, which is
        // PAGE + 2*size bytes long.
        unsafe { self.producer.ptr().add(sys::page_size()) }
    }
    fn size(&self) -> usize {
        self.size
    }
}

/// A consumer of one `BPF_MAP_TYPE_RINGBUF`.
///
/// Records are lent to a handler as `&[u8]` straight from the kernel's memory (zero copy); the
/// consumer position is published once per batch, after the handler has returned, so a record
/// is never overwritten while borrowed.
///
/// ```no_run
/// # fn demo(map: std::os::fd::BorrowedFd<'_>) -> Result<(), bpfstream::Error> {
/// use std::time::Duration;
/// let mut ring = bpfstream::RingBuffer::new(map)?;
/// let mut total = 0usize;
/// ring.poll(Some(Duration::from_millis(100)), |record: &[u8]| total += record.len())?;
/// # Ok(()) }
/// ```
///
/// Minimum kernel: 5.8.
pub struct RingBuffer {
    fd: OwnedFd,
    ring: MappedRing,
    publish_every: u64,
}

impl fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingBuffer").field("stats", &self.stats()).finish()
    }
}

impl RingBuffer {
    /// Maps the ring behind `map` (a `BPF_MAP_TYPE_RINGBUF` fd). The fd is duplicated, so the
    /// consumer keeps the map alive by itself.
    pub fn new(map: impl AsFd) -> Result<Self, Error> {
        let map = map.as_fd();
        let info = sys::expect_map_type(map, map_type::RINGBUF)?;
        let size = info.max_entries as usize;
        let page = sys::page_size();
        if !size.is_power_of_two() || size % page != 0 {
            return Err(Error::sys(
                "ring buffer size",
                std::io::Error::other(format!("{size} is not a power-of-two multiple of the page size")),
            ));
        }
        let fd = sys::dup(map)?;
        let consumer = Mmap::map(fd.as_fd(), page, 0, true)?;
        let producer = Mmap::map(fd.as_fd(), page + 2 * size, page, false)?;
        Ok(RingBuffer {
            fd,
            ring: MappedRing { consumer, producer, size },
            publish_every: default_publish_every(size as u64),
        })
    }

    /// Consumes every committed record now in the ring without blocking; returns how many
    /// records were handed to `handler`. The handler may stop early by returning
    /// [`std::ops::ControlFlow::Break`].
    pub fn consume<F: Flow>(&mut self, mut handler: impl FnMut(&[u8]) -> F) -> Result<usize, Error> {
        self.consume_n(usize::MAX, &mut handler)
    }

    /// Like [`consume`](Self::consume), but hands over at most `max` records.
    pub fn consume_n<F: Flow>(&mut self, max: usize, mut handler: impl FnMut(&[u8]) -> F) -> Result<usize, Error> {
        Ok(consume(&self.ring, max, self.publish_every, &mut handler)?.records)
    }

    /// Waits up to `timeout` (`None`: forever) for data, then consumes what is there. Returns
    /// the number of records handled (0 on timeout or when interrupted by a signal).
    pub fn poll<F: Flow>(
        &mut self,
        timeout: Option<Duration>,
        handler: impl FnMut(&[u8]) -> F,
    ) -> Result<usize, Error> {
        if stats(&self.ring).available == 0 {
            sys::wait_readable(self.fd.as_fd(), timeout)?;
        }
        self.consume(handler)
    }

    /// Size, fill and positions, read now.
    pub fn stats(&self) -> RingStats {
        stats(&self.ring)
    }

    /// Bytes waiting and the ring's size, read now (two memory loads).
    pub fn fill(&self) -> Fill {
        let stats = self.stats();
        Fill { used: stats.available, capacity: stats.size }
    }

    /// Bytes of memory this consumer maps (consumer page, producer page, data mapped twice).
    /// The kernel allocates the data pages once; they appear twice in the address space.
    pub fn mapped_bytes(&self) -> usize {
        self.ring.consumer.len() + self.ring.producer.len()
    }
}

impl AsFd for RingBuffer {
    /// The map fd: readable (EPOLLIN) when records are waiting. Add it to any epoll set or to
    /// tokio's `AsyncFd`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Publish at least every quarter ring, so producers regain space during a long drain.
pub(crate) fn default_publish_every(size: u64) -> u64 {
    (size / 4).max(HEADER_SIZE)
}
