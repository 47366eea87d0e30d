//! Consumer of `BPF_MAP_TYPE_PERF_EVENT_ARRAY` (Linux 4.4+): one ring per CPU, filled by
//! `bpf_perf_event_output()`.
//!
//! # Memory layout
//!
//! For every online CPU we open a `PERF_COUNT_SW_BPF_OUTPUT` software event, store its fd in the
//! map slot of that CPU, and mmap it read-write (a read-write mapping is what tells the kernel to
//! respect `data_tail`; a read-only one makes it overwrite unread data):
//!
//! ```text
//!  page 0: struct perf_event_mmap_page          pages 1 ..= 2^n: data (data_size bytes)
//!  +-------------------------------------+      +------------------------------------------+
//!  | ...                                 |      | records, 8-byte aligned, wrapping at the  |
//!  | @1024 u64 data_head  (kernel writes)|      | end: NOT double mapped, so a record that  |
//!  | @1032 u64 data_tail  (we write)     |      | straddles the end is copied out           |
//!  | @1040 u64 data_offset               |      +------------------------------------------+
//!  | @1048 u64 data_size                 |
//!  +-------------------------------------+
//! ```
//!
//! Records start with `struct perf_event_header { u32 type; u16 misc; u16 size; }`, `size`
//! counting the header and a multiple of 8:
//!
//! ```text
//!  PERF_RECORD_SAMPLE (9), sample_type = PERF_SAMPLE_RAW:  u32 raw_size; u8 raw[raw_size];
//!      raw_size includes zero padding so that 4 + raw_size is a multiple of 8: the payload
//!      starts 4-byte aligned and may carry up to 7 trailing padding bytes.
//!  PERF_RECORD_LOST (2):  u64 id; u64 lost;   (samples the kernel could not write)
//! ```
//!
//! Head and tail are free-running byte counters. The kernel's side of the protocol is the
//! diagram in `kernel/events/ring_buffer.c` (perf_output_put_handle):
//!
//! ```text
//!    kernel                             user
//!    if (LOAD ->data_tail) {            LOAD ->data_head
//!                     (A)               smp_rmb()       (C)
//!       STORE $data                     LOAD $data
//!       smp_wmb()     (B)               smp_mb()        (D)
//!       STORE ->data_head               STORE ->data_tail
//!    }
//! ```

use std::fmt;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ownership::PerfSlots;
use crate::ringbuf::{guarded, Panic, Waited, STOP_TOKEN};
use crate::scan::{self, Corruption, Stride, Walk};
use crate::sys::{self, map_type, Epoll, Mmap, PerfEventAttr};
use crate::{DropOrigin, Dropped, Error, Event, Fill, Options, Record};

/// `PERF_RECORD_LOST`.
pub(crate) const RECORD_LOST: u32 = 2;
/// `PERF_RECORD_SAMPLE`.
pub(crate) const RECORD_SAMPLE: u32 = 9;
/// Size of `struct perf_event_header`.
pub(crate) const HEADER_SIZE: u64 = 8;

const DATA_HEAD_OFFSET: usize = 1024;
const DATA_TAIL_OFFSET: usize = 1032;

/// The memory of one CPU's perf ring: the kernel's mmap, or a simulation in tests.
///
/// # Safety
///
/// Implementors guarantee, for as long as the value lives:
/// - `size()` is a power of two and a multiple of 8;
/// - `data()` is 8-byte aligned and valid for reads of `size()` bytes;
/// - bytes between `data_tail` and `data_head` are not written until `data_tail` moves past
///   them.
pub(crate) unsafe trait PerfMemory {
    /// Written by the kernel: end of the data written so far.
    fn data_head(&self) -> &AtomicU64;
    /// Written by us: end of the data consumed so far.
    fn data_tail(&self) -> &AtomicU64;
    /// Start of the data area.
    fn data(&self) -> NonNull<u8>;
    /// Size of the data area in bytes.
    fn size(&self) -> usize;
    /// The CPU whose ring this is.
    fn cpu(&self) -> u32;
}

/// Outcome of one pass over a CPU's ring (over all CPUs, for [`PerfBuffer::consume`]).
#[derive(Debug, Default)]
pub(crate) struct Pass {
    pub records: usize,
    pub bytes: u64,
    pub lost: u64,
    pub stopped: bool,
    /// The handler panicked on the last item counted (see [`ringbuf::Pass`](crate::ringbuf::Pass)).
    pub panicked: Option<Panic>,
}

/// Out of line: the consume loop's fast path stays small.
#[cold]
#[inline(never)]
fn corrupt(position: u64, length: u64, reason: &'static str) -> Error {
    corruption(position, length, reason).into_error()
}

fn corruption(position: u64, length: u64, reason: &'static str) -> Corruption {
    Corruption { transport: "perf", position, length, reason }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the records of one CPU's ring in order: samples go to `handler` as
/// [`Event::Record`], `PERF_RECORD_LOST` as [`Event::Dropped`], other record types are skipped.
/// `data_tail` is published every `publish_every` bytes and once at the end (the positions are
/// drawn at [`ringbuf::consume`](crate::ringbuf::consume)). Stops after `max` samples, when the
/// handler breaks, when the ring is empty, or after one ring's worth of bytes. A record whose
/// size is not a multiple of 8 inside what was written is an [`Error::Corrupt`]; what was handed
/// over before is counted and published.
///
/// Samples that lie whole before the end of the ring take [`Walk::samples`], a loop with no
/// atomic (everything below the `data_head` read is written and stays so), no call and no store
/// but the handler's; the rest (a sample that wraps the end, a LOST record) take
/// [`other_record`], out of line.
#[inline(always)]
pub(crate) fn consume<M, H>(
    mem: &M,
    cpu: u32,
    scratch: &mut Vec<u8>,
    max: usize,
    publish_every: u64,
    handler: &mut H,
) -> (Pass, Result<(), Error>)
where
    M: PerfMemory + ?Sized,
    H: FnMut(Event<Record<'_>>) -> ControlFlow<()> + ?Sized,
{
    let mut pass = Pass::default();
    if max == 0 {
        return (pass, Ok(()));
    }
    let size = mem.size() as u64;
    let data = mem.data().as_ptr();
    let publish_every = publish_every.max(HEADER_SIZE);
    // Only we write data_tail.
    let start = mem.data_tail().load(Ordering::Relaxed);
    let mut done = 0u64;
    let mut published = 0u64;
    // Most streams repeat one sample size; the first guess is the smallest sample record.
    let mut walk = Walk::new(max, HEADER_SIZE + 8);
    let result = 'batch: loop {
        // (C): pairs with the kernel's smp_wmb() (B) before it stores data_head; everything
        // below the head we read is fully written. The kernel writes only while data_head -
        // data_tail <= size.
        let end = mem.data_head().load(Ordering::Acquire).wrapping_sub(start);
        let lead = end.wrapping_sub(done);
        if lead > size {
            break Err(corrupt(start.wrapping_add(done), lead, "data_head is more than one buffer ahead"));
        }
        if lead == 0 || done >= size {
            break Ok(());
        }
        while done < end {
            let offset = start.wrapping_add(done) & (size - 1);
            // SAFETY: the offset is below `size`, inside the data area.
            let first = unsafe { data.add(offset as usize) };
            // Written bytes from `first` that do not wrap the end of the ring.
            let room = (end - done).min(size - offset) as usize;
            let stretch = ((end.min(published + publish_every) - done) as usize).min(room);
            let walked = if max == usize::MAX {
                // SAFETY: the `room` bytes from `first` are written, inside the data area.
                unsafe { walk.samples::<H, false>(first, stretch, room, cpu, handler) }
            } else {
                // SAFETY: as above.
                unsafe { walk.samples::<H, true>(first, stretch, room, cpu, handler) }
            };
            done += walked.0 as u64;
            let stop = match walked.1 {
                PerfExit::StretchDone => false,
                PerfExit::Stopped => {
                    pass.stopped = true;
                    true
                }
                PerfExit::Panicked(panic) => {
                    pass.panicked = Some(panic);
                    true
                }
                PerfExit::Max => true,
                PerfExit::Other => {
                    let tail = start.wrapping_add(done);
                    match other_record(mem, cpu, tail, end - done, scratch, &mut walk, &mut pass, handler) {
                        Ok((length, stop)) => {
                            done += length;
                            stop
                        }
                        Err(e) => break 'batch Err(e),
                    }
                }
            };
            if stop {
                break 'batch Ok(());
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

/// Why [`Walk::samples`] returned.
enum PerfExit {
    /// It reached the end of the stretch.
    StretchDone,
    /// The record there is not a sample lying whole in the walked bytes: [`other_record`]'s.
    Other,
    /// The handler broke, after the sample it was handed.
    Stopped,
    /// The handler panicked on the sample it was handed.
    Panicked(Panic),
    /// `max` samples were handed over.
    Max,
}

impl Walk {
    /// Hands the samples from `first` on to `handler` until `stretch` bytes are passed or a
    /// record that is not a whole, well-formed sample within `room` is reached; returns the
    /// bytes walked over (the last sample's included if the handler broke or `max` was reached)
    /// and why it stopped.
    ///
    /// # Safety
    ///
    /// `first` is 8-aligned, `stretch <= room`, and the `room` bytes from it are inside the data
    /// area, below data_head, and not rewritten before data_tail passes them.
    #[inline(always)]
    unsafe fn samples<H, const LIMITED: bool>(
        &mut self,
        first: *const u8,
        stretch: usize,
        room: usize,
        cpu: u32,
        handler: &mut H,
    ) -> (usize, PerfExit)
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()> + ?Sized,
    {
        // A record shorter than this ends within `room` wherever in the stretch it starts.
        let slack = room - stretch;
        // In locals, so that they stay in registers (`self` is also lent to `other_record`).
        let (mut left, mut bytes, mut stride) = (self.left, self.bytes, self.stride);
        let mut at = 0usize;
        let exit = loop {
            if at >= stretch {
                break PerfExit::StretchDone;
            }
            scan::prefetch(first.wrapping_add(at + scan::PREFETCH_AHEAD));
            // SAFETY: headers are 8-aligned and `at < stretch <= room`, with `room` a multiple of
            // 8: the 8 header bytes (`u32 type; u16 misc; u16 size`) are inside the readable
            // bytes.
            let (kind, length) = unsafe {
                let header = first.add(at);
                (header.cast::<u32>().read(), header.add(6).cast::<u16>().read() as usize)
            };
            // A length seen before is known to be a multiple of 8 of at least 16: the common
            // case costs one compare.
            if kind != RECORD_SAMPLE || (length as u64 != stride.size() && (length < 16 || length % 8 != 0)) {
                break PerfExit::Other;
            }
            if length > slack && length > room - at {
                break PerfExit::Other;
            }
            // SAFETY: the sample's `length >= 16` bytes lie within the readable bytes (checked
            // above); its raw size follows the 8-byte header, 4-aligned.
            let raw_size = unsafe { first.add(at + 8).cast::<u32>().read() } as usize;
            if raw_size > length - 12 {
                break PerfExit::Other;
            }
            // SAFETY: [at + 12, at + 12 + raw_size) lies inside the sample, inside the readable
            // bytes, not rewritten before data_tail passes it, after the handler returned.
            let data = unsafe { std::slice::from_raw_parts(first.add(at + 12), raw_size) };
            bytes += raw_size as u64;
            left -= 1;
            match guarded(handler, Event::Record(Record { data, cpu: Some(cpu) })) {
                Ok(flow) if flow.is_break() => {
                    at += length;
                    break PerfExit::Stopped;
                }
                Ok(_) => {}
                Err(panic) => {
                    at += length;
                    break PerfExit::Panicked(panic);
                }
            }
            if LIMITED && left == 0 {
                at += length;
                break PerfExit::Max;
            }
            at = stride.next(at as u64, length as u64) as usize;
        };
        (self.left, self.bytes, self.stride) = (left, bytes, stride);
        (at, exit)
    }
}

/// The record at `tail` that [`Walk::samples`] left: a sample that wraps the end of the ring
/// (its two parts copied into `scratch`), a LOST record, another type (skipped), or a corrupt
/// one (an [`Error::Corrupt`]: a size that is not a multiple of 8 inside the `room` bytes
/// written from `tail`, or a raw size that does not fit its sample). Returns the record's length
/// and whether the pass ends after it. Out of line: the fast path stays small.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn other_record<M, H>(
    mem: &M,
    cpu: u32,
    tail: u64,
    room: u64,
    scratch: &mut Vec<u8>,
    walk: &mut Walk,
    pass: &mut Pass,
    handler: &mut H,
) -> Result<(u64, bool), Error>
where
    M: PerfMemory + ?Sized,
    H: FnMut(Event<Record<'_>>) -> ControlFlow<()> + ?Sized,
{
    let offset = (tail & (mem.size() as u64 - 1)) as usize;
    // SAFETY: headers are 8-aligned and size is a multiple of 8, so the 8 header bytes lie
    // inside the data area; they are below data_head and not rewritten before data_tail passes
    // them.
    let header: [u8; 8] = unsafe { mem.data().as_ptr().add(offset).cast::<[u8; 8]>().read() };
    let kind = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
    let length = u64::from(u16::from_ne_bytes([header[6], header[7]]));
    // `room <= size`: a record that passes this lies within one buffer.
    if length < HEADER_SIZE || length % 8 != 0 || length > room {
        return Err(corrupt(tail, length, "record size is not a multiple of 8 inside the written data"));
    }
    let record = record_bytes(mem, offset, length as usize, scratch);
    let flow = match kind {
        RECORD_SAMPLE => {
            let data = sample_payload(record).map_err(|reason| corrupt(tail, length, reason))?;
            walk.left -= 1;
            walk.bytes += data.len() as u64;
            guarded(handler, Event::Record(Record { data, cpu: Some(cpu) }))
        }
        RECORD_LOST => {
            let lost = lost_count(record, cpu).map_err(|reason| corrupt(tail, length, reason))?;
            pass.lost += lost.count;
            guarded(handler, Event::Dropped(lost))
        }
        _ => return Ok((length, false)), // THROTTLE, UNTHROTTLE, ...: nothing for a BPF output consumer.
    };
    let flow = match flow {
        Ok(flow) => flow,
        Err(panic) => {
            pass.panicked = Some(panic);
            return Ok((length, true));
        }
    };
    pass.stopped = flow.is_break();
    Ok((length, pass.stopped || walk.left == 0))
}

/// The `length` bytes of the record at `offset`: lent in place, or, when it wraps the end of
/// the ring, its two parts copied into `scratch` (at most `size` bytes: `length <= size`).
fn record_bytes<'a, M: PerfMemory + ?Sized>(
    mem: &'a M,
    offset: usize,
    length: usize,
    scratch: &'a mut Vec<u8>,
) -> &'a [u8] {
    let data = mem.data().as_ptr();
    if offset + length <= mem.size() {
        // SAFETY: [offset, offset + length) is inside the data area and below data_head, and is
        // not rewritten before data_tail passes it, which happens after the handler returned.
        return unsafe { std::slice::from_raw_parts(data.add(offset), length) };
    }
    let first = mem.size() - offset;
    scratch.clear();
    // SAFETY: the record's first part runs to the end of the data area and the rest starts at
    // its beginning; both are below data_head.
    unsafe {
        scratch.extend_from_slice(std::slice::from_raw_parts(data.add(offset), first));
        scratch.extend_from_slice(std::slice::from_raw_parts(data, length - first));
    }
    scratch
}

/// The raw payload of a `PERF_RECORD_SAMPLE` (`u32 raw_size; u8 raw[raw_size]` after the
/// header). A raw size that does not fit its record is an [`Error::Corrupt`].
#[inline(always)]
fn sample_payload(record: &[u8]) -> Result<&[u8], &'static str> {
    let size_bytes = record.get(8..12).ok_or("sample too short for its raw size")?;
    let raw_size = u32::from_ne_bytes(size_bytes.try_into().expect("4 bytes")) as usize;
    record.get(12..12 + raw_size).ok_or("raw sample size exceeds its record")
}

/// The count of a `PERF_RECORD_LOST` (`u64 id; u64 lost` after the header).
fn lost_count(record: &[u8], cpu: u32) -> Result<Dropped, &'static str> {
    if record.len() < 24 {
        return Err("LOST record too short");
    }
    Ok(Dropped { count: u64_at(record, 16), cpu: Some(cpu), origin: DropOrigin::PerfLostRecord })
}

fn publish<M: PerfMemory + ?Sized>(mem: &M, tail: u64) {
    // (D): our reads of the records happen before the kernel can see the space as free; pairs
    // with the kernel's READ_ONCE(data_tail) + smp_mb() (A) in perf_output_begin().
    mem.data_tail().store(tail, Ordering::Release);
}

/// When a CPU's perf buffer wakes its reader (`perf_event_attr.wakeup_events` /
/// `wakeup_watermark`, available wherever perf buffers are: Linux 4.4+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerfWakeup {
    /// After this many samples (`wakeup_events`; libbpf's default is 1: every sample).
    Events(u32),
    /// Once this many bytes are waiting (`wakeup_watermark`).
    Bytes(u32),
}

/// One CPU's perf event and its mapping.
pub(crate) struct CpuRing {
    cpu: u32,
    event: OwnedFd,
    mmap: Mmap,
    /// The data area, one page into `mmap` (computed once: the loop reads it per record).
    data: NonNull<u8>,
    data_size: usize,
}

// SAFETY: `data` points into `mmap`, which the value owns; the mapping is Send and Sync
// (`Mmap`), and `&CpuRing` hands out only what `Mmap` does: pointers and atomics.
unsafe impl Send for CpuRing {}
// SAFETY: as above.
unsafe impl Sync for CpuRing {}

// SAFETY: the mapping is 1 + 2^n pages of a BPF-output perf event: the perf_event_mmap_page
// (data_head/data_tail at their uapi offsets, 8-aligned) then `data_size` bytes of data at
// offset PAGE (the kernel's data_offset), alive as long as `self`. The kernel writes only ahead
// of data_tail because the mapping is writable (no overwrite mode).
unsafe impl PerfMemory for CpuRing {
    fn data_head(&self) -> &AtomicU64 {
        // SAFETY: data_head is an aligned u64 at offset 1024 of the mapped control page.
        unsafe { &*self.mmap.ptr().as_ptr().add(DATA_HEAD_OFFSET).cast::<AtomicU64>() }
    }
    fn data_tail(&self) -> &AtomicU64 {
        // SAFETY: data_tail is an aligned u64 at offset 1032 of the mapped control page.
        unsafe { &*self.mmap.ptr().as_ptr().add(DATA_TAIL_OFFSET).cast::<AtomicU64>() }
    }
    fn data(&self) -> NonNull<u8> {
        self.data
    }
    fn size(&self) -> usize {
        self.data_size
    }
    fn cpu(&self) -> u32 {
        self.cpu
    }
}

/// How full one CPU's ring is, read now.
fn fill<M: PerfMemory + ?Sized>(mem: &M) -> Fill {
    let capacity = mem.size() as u64;
    // Only we write data_tail.
    let consumer_pos = mem.data_tail().load(Ordering::Relaxed);
    // (C): pairs with the kernel's smp_wmb() (B) before it stores data_head.
    let producer_pos = mem.data_head().load(Ordering::Acquire);
    Fill { used: producer_pos.wrapping_sub(consumer_pos).min(capacity), capacity, consumer_pos, producer_pos }
}

/// A consumer of one `BPF_MAP_TYPE_PERF_EVENT_ARRAY`: a ring per online CPU.
///
/// Samples are lent as [`Event::Record`] with their CPU; a sample that wraps the end of its ring
/// is copied into a scratch buffer first (one per CPU, so that a pulled batch can lend one from
/// each). Payloads are 4-byte aligned and may end with up to 7 bytes of padding (decode with a
/// length-checked, alignment-safe copy such as [`crate::FromRecord`]). Kernel losses arrive as
/// [`Event::Dropped`].
///
/// Minimum kernel: 4.4 (BPF output events); `PERF_FLAG_FD_CLOEXEC` 3.14.
pub(crate) struct PerfBuffer {
    map: OwnedFd,
    /// The map slots this buffer stored.
    slots: PerfSlots,
    epoll: Epoll,
    /// Shared with the source's [`TotalsHandle`](crate::TotalsHandle), which reads the fill.
    cpus: Arc<[CpuRing]>,
    /// Per CPU: where a sample that wraps the end of the ring is copied.
    scratch: Vec<Vec<u8>>,
    /// Per CPU: the end of the last pulled batch, to publish before anything else reads or
    /// waits (see [`settle`](Self::settle)).
    lent_to: Vec<Option<u64>>,
    wakeup: PerfWakeup,
    next: usize,
    ready: Vec<u64>,
    /// The last consume stopped early (`max`, or the handler said stop): records may wait
    /// that the kernel will not signal again.
    left_behind: bool,
}

impl fmt::Debug for PerfBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerfBuffer").field("wakeup", &self.wakeup).field("fill", &self.fill()).finish()
    }
}

impl PerfBuffer {
    /// Opens a buffer of `options.buffer_bytes` per CPU on every online CPU and stores their
    /// fds in `map` (a `BPF_MAP_TYPE_PERF_EVENT_ARRAY` with a slot per possible CPU).
    ///
    /// A second buffer on the same map takes the slots over (records go to it from then on);
    /// dropping the first then leaves them alone. Who stored a slot last is tracked within this
    /// process: a buffer in another process that overwrites the slots is not seen, and dropping
    /// ours would empty them.
    pub fn new(map: BorrowedFd<'_>, options: &Options) -> Result<Self, Error> {
        let info = sys::expect_map_type(map, map_type::PERF_EVENT_ARRAY)?;
        let page = sys::page_size();
        // At most 2 GiB: the kernel's interface has the watermark (and our record walk the ring
        // offsets) in 32 bits.
        let data_size = options.buffer_size(page as u64)? as usize;
        let wakeup = options.perf_wakeup.unwrap_or(PerfWakeup::Bytes((data_size / 4) as u32));
        let map = sys::dup(map)?;
        let epoll = Epoll::new()?;
        // Every CPU's event first, the map's slots after: an open that fails part way (EMFILE,
        // ENOMEM) must not have taken over slots that another buffer on the map still reads.
        let mut cpus = Vec::new();
        for cpu in sys::online_cpus()? {
            if cpu >= info.max_entries {
                return Err(Error::Unsupported(format!(
                    "CPU {cpu} is online but the perf event array {:?} has only {} slots; create it with max_entries = 0 or the number of possible CPUs",
                    info.name(),
                    info.max_entries
                )));
            }
            let mut attr = PerfEventAttr {
                type_: sys::PERF_TYPE_SOFTWARE,
                config: sys::PERF_COUNT_SW_BPF_OUTPUT,
                sample_period: 1,
                sample_type: sys::PERF_SAMPLE_RAW,
                ..Default::default()
            };
            match wakeup {
                PerfWakeup::Events(n) => attr.wakeup = n.max(1),
                PerfWakeup::Bytes(n) => {
                    attr.flags |= sys::PERF_ATTR_FLAG_WATERMARK;
                    attr.wakeup = n.clamp(1, data_size as u32 - 1);
                }
            }
            let event = sys::perf_event_open_cpu(&mut attr, cpu)?;
            let mmap = Mmap::map(event.as_fd(), page + data_size, 0, true)?;
            // SAFETY: the data area starts one page into a mapping of 1 + 2^n pages.
            let data = unsafe { mmap.ptr().add(page) };
            epoll.add(event.as_fd(), cpus.len() as u64)?;
            cpus.push(CpuRing { cpu, event, mmap, data, data_size });
        }
        let count = cpus.len();
        let buffer = PerfBuffer {
            slots: PerfSlots::new(info.id),
            map,
            epoll,
            cpus: cpus.into(),
            scratch: vec![Vec::new(); count],
            lent_to: vec![None; count],
            wakeup,
            next: 0,
            ready: Vec::new(),
            left_behind: false,
        };
        for ring in buffer.cpus.iter() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&ring.event) as u32;
            // From here on Drop removes the slot again (unless another buffer took it over).
            buffer.slots.store(ring.cpu, || sys::map_update_u32(buffer.map.as_fd(), ring.cpu, fd))?;
            sys::perf_event_enable(ring.event.as_fd(), true)?;
        }
        Ok(buffer)
    }

    /// Adds `stop` (an eventfd) to what [`wait`](Self::wait) wakes for.
    pub(crate) fn watch_stop(&self, stop: BorrowedFd<'_>) -> Result<(), Error> {
        self.epoll.add(stop, STOP_TOKEN)
    }

    /// Publishes where the last pulled batch stopped on each CPU, if it is not yet: its records
    /// are free for the kernel from here on. Every call that consumes or waits does this first.
    pub(crate) fn settle(&mut self) {
        for (ring, lent_to) in self.cpus.iter().zip(&mut self.lent_to) {
            if let Some(tail) = lent_to.take() {
                publish(ring, tail);
            }
        }
    }

    /// Hands at most `max` samples (and the loss reports) to `handler` without blocking
    /// ([`consume`]). CPUs are visited round-robin, starting after the one the previous call
    /// ended on.
    #[inline(always)]
    pub(crate) fn consume<H>(&mut self, max: usize, handler: &mut H) -> (Pass, Result<(), Error>)
    where
        H: FnMut(Event<Record<'_>>) -> ControlFlow<()>,
    {
        self.settle();
        let count = self.cpus.len();
        let mut total = Pass::default();
        self.left_behind = false;
        for step in 0..count {
            let index = (self.next + step) % count;
            let ring = &self.cpus[index];
            let publish_every = (ring.data_size as u64 / 4).max(HEADER_SIZE);
            let scratch = &mut self.scratch[index];
            let (pass, result) = consume(ring, ring.cpu, scratch, max - total.records, publish_every, handler);
            total.records += pass.records;
            total.bytes += pass.bytes;
            total.lost += pass.lost;
            total.stopped = pass.stopped;
            total.panicked = pass.panicked;
            if result.is_err() || total.stopped || total.panicked.is_some() || total.records >= max {
                self.next = (index + 1) % count;
                self.left_behind = true;
                return (total, result);
            }
        }
        (total, Ok(()))
    }

    /// Every CPU's records now in the buffer, to be pulled one by one ([`Batch`]); each CPU's
    /// data_tail moves past them when [`finish_batch`](Self::finish_batch) is told where the
    /// pull stopped and a later call settles it.
    ///
    /// # Safety
    ///
    /// As [`RingBuffer::batch`](crate::ringbuf::RingBuffer::batch): the records the batch lends
    /// (from the mapping, or from this buffer's scratch) must be dead before the next call on
    /// this buffer that settles and before it is dropped.
    #[inline(always)]
    pub(crate) unsafe fn batch<'a>(&mut self) -> Batch<'a, CpuRing> {
        self.settle();
        self.left_behind = false;
        // SAFETY: the rings stay mapped for 'a: this buffer holds them (its `Arc`), and the
        // caller keeps it alive and borrowed for 'a.
        let rings = unsafe { &*Arc::as_ptr(&self.cpus) };
        // SAFETY: the caller's promise (above) is `Batch::new`'s.
        unsafe { Batch::new(rings, &mut self.scratch) }
    }

    /// Where a pulled batch stopped on each CPU ([`Batch::tails`]): published by the next call
    /// that settles.
    pub(crate) fn finish_batch(&mut self, tails: &[u64]) {
        for ((ring, lent_to), &tail) in self.cpus.iter().zip(&mut self.lent_to).zip(tails) {
            if tail != ring.data_tail().load(Ordering::Relaxed) {
                *lent_to = Some(tail);
            }
        }
    }

    /// Whether records wait that no coming signal is certain to announce: only when the last
    /// consume stopped early and left some behind. The kernel signals every `wakeup_events`
    /// samples or `wakeup_watermark` bytes, counted as it writes whatever we consumed, and
    /// perf_poll() reports each signal once: after a consume that took everything it saw,
    /// waiting loses no signal. Waiting instead of consuming what trickled in since is what lets
    /// the wakeup policy batch.
    pub(crate) fn ready_now(&self) -> bool {
        self.left_behind
    }

    /// Sleeps up to `timeout` for a CPU's signal (or a stop), unless
    /// [`ready_now`](Self::ready_now).
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> Result<Waited, Error> {
        self.settle();
        if self.ready_now() {
            return Ok(Waited::NotWoken);
        }
        let interrupted = self.epoll.wait(timeout, &mut self.ready)?;
        Ok(Waited::of(interrupted, &self.ready))
    }

    /// Bytes waiting, data bytes and positions, summed over all CPUs (two memory loads per CPU,
    /// no allocation).
    pub(crate) fn fill(&self) -> Fill {
        self.cpus.iter().map(fill).fold(Fill::default(), Fill::sum)
    }

    /// A function that reads the fill from the buffer's memory, which it keeps mapped.
    pub(crate) fn fill_reader(&self) -> impl Fn() -> Fill + Send + Sync + 'static {
        let cpus = Arc::clone(&self.cpus);
        move || cpus.iter().map(fill).fold(Fill::default(), Fill::sum)
    }

    /// Bytes mapped for all CPUs (a control page plus the data pages each).
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.cpus.iter().map(|ring| ring.mmap.len()).sum()
    }
}

impl AsFd for PerfBuffer {
    /// An epoll fd over all CPUs' events: readable when any CPU's buffer has signalled.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl Drop for PerfBuffer {
    fn drop(&mut self) {
        // The records of the last pulled batch are dead (the batch borrowed the buffer).
        self.settle();
        for ring in self.cpus.iter() {
            // Empty the slot first so BPF programs stop writing to an event we are closing;
            // a slot another buffer has taken over since is that buffer's.
            self.slots.release(ring.cpu, || sys::map_delete_u32(self.map.as_fd(), ring.cpu));
            let _ = sys::perf_event_enable(ring.event.as_fd(), false);
        }
    }
}

/// Where a pulled batch is in the ring of one CPU.
#[derive(Clone, Copy)]
struct Cursor {
    /// The data area of the CPU's ring (null before the first CPU is entered, and after the
    /// last).
    data: *const u8,
    mask: u64,
    /// data_tail when the CPU was entered, and the bytes pulled from it since.
    start: u64,
    at: u64,
    /// data_head - start, read once when the CPU was entered.
    end: u64,
    cpu: u32,
}

impl Cursor {
    const NONE: Cursor = Cursor { data: std::ptr::null(), mask: 0, start: 0, at: 0, end: 0, cpu: 0 };
}

/// The records of every CPU's ring at one moment, pulled one at a time, CPU after CPU (the pull
/// API, [`Records`](crate::Records)): samples lent in place, or from the CPU's scratch when one
/// wraps the end of its ring (at most one per CPU in a batch: a batch reads at most one ring's
/// worth of bytes from each, which crosses the end at most once), and LOST records as drops.
/// Nothing is published until the batch is over and a later call settles it
/// ([`PerfBuffer::finish_batch`]). `M` is the kernel's mapping, or a simulation in tests.
///
/// The cursor and the prediction stay in the caller's registers: the cold paths (the next CPU,
/// a record that is not a whole sample) take what they need as values and touch only the rest.
pub(crate) struct Batch<'a, M> {
    cursor: Cursor,
    stride: Stride,
    /// On the heap, so that the cold paths' `&mut` to it is not a pointer into the batch, which
    /// would keep the whole batch in memory.
    rest: Box<Rest<'a, M>>,
}

/// What a batch needs only on its cold paths.
struct Rest<'a, M> {
    /// The cursor of the CPU [`next_cpu`](Rest::next_cpu) entered.
    entered: Cursor,
    rings: &'a [M],
    /// Per ring: the buffer's scratch, which only this batch writes until it is settled.
    scratch: *mut Vec<u8>,
    /// Per CPU: the data_tail after what was pulled (the CPU being pulled from: where it was
    /// entered).
    tails: Vec<u64>,
    /// The CPU being pulled from.
    index: usize,
    /// What stopped the batch early (a corrupt record), for the next call to report.
    corruption: Option<Corruption>,
}

/// What [`Rest::other_record`] found.
enum Other<'a> {
    /// A sample or a drop report, `length` bytes long.
    Event(u64, Event<Record<'a>>),
    /// A record of another type, `length` bytes long, skipped.
    Skip(u64),
    /// A corrupt record: the batch ends before it.
    Stop,
}

impl<'a, M: PerfMemory> Batch<'a, M> {
    /// A batch of what `rings` hold now, a sample that wraps copied into the ring's `scratch`.
    ///
    /// # Safety
    ///
    /// The records the batch lends (from the rings, or from `scratch`) must be dead before the
    /// rings' data_tail moves past them (the caller settles the batch only at a call that its
    /// lifetime `'a` rules out) and before `scratch` is used again.
    #[inline(always)]
    pub(crate) unsafe fn new(rings: &'a [M], scratch: &mut [Vec<u8>]) -> Self {
        assert_eq!(rings.len(), scratch.len(), "a scratch buffer per ring");
        let tails = rings.iter().map(|ring| ring.data_tail().load(Ordering::Relaxed)).collect();
        let rest =
            Rest { entered: Cursor::NONE, rings, scratch: scratch.as_mut_ptr(), tails, index: 0, corruption: None };
        Batch { cursor: Cursor::NONE, stride: Stride::new(HEADER_SIZE + 8), rest: Box::new(rest) }
    }

    /// The next sample or LOST report, or `None` when every CPU's ring is done (or one is
    /// corrupt, kept for [`finish`](Self::finish)).
    #[inline(always)]
    pub fn next(&mut self) -> Option<Event<Record<'a>>> {
        loop {
            // Field by field: a copy of the whole cursor per record would be a wide load of
            // bytes just stored narrowly, which the CPU cannot forward.
            let (data, at, end) = (self.cursor.data, self.cursor.at, self.cursor.end);
            if at >= end {
                let left = (!data.is_null()).then(|| self.cursor.start.wrapping_add(at));
                let entered = self.rest.next_cpu(left);
                self.cursor = self.rest.entered;
                if !entered {
                    return None;
                }
                continue;
            }
            let offset = (self.cursor.start.wrapping_add(at) & self.cursor.mask) as usize;
            scan::prefetch(data.wrapping_add(offset + scan::PREFETCH_AHEAD));
            // SAFETY: headers are 8-aligned and the data size a multiple of 8: the header's 8
            // bytes (`u32 type; u16 misc; u16 size`) lie inside the data area, below data_head.
            let (kind, length) = unsafe {
                let header = data.add(offset);
                (header.cast::<u32>().read(), u64::from(header.add(6).cast::<u16>().read()))
            };
            // A length seen before is known to be a multiple of 8 of at least 16: the common
            // case costs one compare.
            let well_formed = length == self.stride.size() || (length >= 16 && length % 8 == 0);
            let whole = offset as u64 + length <= self.cursor.mask + 1 && length <= end - at;
            if kind == RECORD_SAMPLE && well_formed && whole {
                // SAFETY: the sample's `length >= 16` bytes lie inside the data area, below
                // data_head; its raw size follows the 8-byte header, 4-aligned.
                let raw_size = u64::from(unsafe { data.add(offset + 8).cast::<u32>().read() });
                if raw_size <= length - 12 {
                    // SAFETY: [offset + 12, offset + 12 + raw_size) lies inside the sample. It
                    // stays unwritten until data_tail passes it, which happens only at a call
                    // that the lifetime `'a` rules out while the record is borrowed (see
                    // `Batch::new`).
                    let payload = unsafe { std::slice::from_raw_parts(data.add(offset + 12), raw_size as usize) };
                    self.cursor.at = self.stride.next(at, length);
                    return Some(Event::Record(Record { data: payload, cpu: Some(self.cursor.cpu) }));
                }
            }
            let tail = self.cursor.start.wrapping_add(at);
            match self.rest.other_record(data, offset, tail, end - at, self.cursor.cpu) {
                Other::Event(length, event) => {
                    self.cursor.at += length;
                    return Some(event);
                }
                Other::Skip(length) => self.cursor.at += length,
                Other::Stop => self.cursor = Cursor::NONE,
            }
        }
    }

    /// The corruption that ended the batch early, if one did.
    #[cfg(test)]
    pub fn corruption(&self) -> Option<Corruption> {
        self.rest.corruption
    }

    /// Per CPU, the data_tail after what was pulled, and the corruption that ended the batch
    /// early, if one did (the tails once: the batch is over).
    #[inline(always)]
    pub fn finish(&mut self) -> (Vec<u64>, Option<Corruption>) {
        if !self.cursor.data.is_null() {
            self.rest.tails[self.rest.index] = self.cursor.start.wrapping_add(self.cursor.at);
        }
        (std::mem::take(&mut self.rest.tails), self.rest.corruption)
    }
}

impl<'a, M: PerfMemory> Rest<'a, M> {
    /// Ends the current CPU's part at `left` (`None`: no CPU was entered yet) and enters the
    /// next CPU's ring (its cursor in [`entered`](Self::entered)); `false` when there is none.
    /// Out of line, once per CPU, on values (see [`Batch`]).
    #[cold]
    #[inline(never)]
    fn next_cpu(&mut self, left: Option<u64>) -> bool {
        if let Some(tail) = left {
            self.tails[self.index] = tail;
            self.index += 1;
        }
        self.entered = Cursor::NONE;
        let Some(ring) = self.rings.get(self.index) else { return false };
        let start = self.tails[self.index];
        // (C): pairs with the kernel's smp_wmb() (B) before it stores data_head; everything
        // below the head we read is fully written. The kernel writes only while data_head -
        // data_tail <= size.
        let end = ring.data_head().load(Ordering::Acquire).wrapping_sub(start);
        let size = ring.size() as u64;
        if end > size {
            self.stop(corruption(start, end, "data_head is more than one buffer ahead"));
            return false;
        }
        self.entered = Cursor { data: ring.data().as_ptr(), mask: size - 1, start, at: 0, end, cpu: ring.cpu() };
        true
    }

    /// The record at `tail` (`offset` into the ring's `data`, `room` bytes before data_head)
    /// that is not a sample lying whole before the end of the ring: a sample that wraps (copied
    /// into the CPU's scratch), a LOST record, another type (skipped), or a corrupt one (the
    /// batch stops). Out of line, on values (see [`Batch`]).
    #[cold]
    #[inline(never)]
    fn other_record(&mut self, data: *const u8, offset: usize, tail: u64, room: u64, cpu: u32) -> Other<'a> {
        let ring = &self.rings[self.index];
        // SAFETY: as in `Batch::next`: the 8 header bytes lie inside the data area, below
        // data_head.
        let header: [u8; 8] = unsafe { data.add(offset).cast::<[u8; 8]>().read() };
        let kind = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
        let length = u64::from(u16::from_ne_bytes([header[6], header[7]]));
        let reason = match kind {
            _ if length < HEADER_SIZE || length % 8 != 0 || length > room => {
                "record size is not a multiple of 8 inside the written data"
            }
            RECORD_SAMPLE | RECORD_LOST => {
                // SAFETY: this CPU's scratch is written by this batch alone (the buffer's other
                // users settle the batch first, which needs its records dead), and at most once:
                // the one sample that wraps the end of the ring in the at most one ring's worth
                // of bytes read.
                let scratch = unsafe { &mut *self.scratch.add(self.index) };
                let record = record_bytes(ring, offset, length as usize, scratch);
                // SAFETY: the bytes are in the mapping, below data_head and not rewritten
                // before the batch is settled, or in the scratch, not rewritten before then
                // either: valid for 'a (see `Batch::new`).
                let record: &'a [u8] = unsafe { std::slice::from_raw_parts(record.as_ptr(), record.len()) };
                let event = match kind {
                    RECORD_SAMPLE => sample_payload(record).map(|data| Event::Record(Record { data, cpu: Some(cpu) })),
                    _ => lost_count(record, cpu).map(Event::Dropped),
                };
                match event {
                    Ok(event) => return Other::Event(length, event),
                    Err(reason) => reason,
                }
            }
            _ => return Other::Skip(length), // THROTTLE, UNTHROTTLE, ...: nothing for a BPF output consumer.
        };
        self.tails[self.index] = tail;
        self.stop(corruption(tail, length, reason));
        Other::Stop
    }

    /// Ends the batch at the tail recorded for the current CPU (and every CPU after it).
    fn stop(&mut self, corruption: Corruption) {
        self.index = self.rings.len();
        self.corruption = Some(corruption);
    }
}

/// The record protocol on the simulated perf ring (`sim.rs`), which writes as the kernel does.
#[cfg(test)]
mod protocol_tests {
    use proptest::prelude::*;

    use crate::sim::SimPerf;
    use crate::{Event, Record};

    fn payload(seq: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq * 17 + i) as u8).collect()
    }

    proptest! {
        /// Mixed sizes (the next-record prediction misses and hits), samples that wrap the end
        /// of the ring (copied out), and LOST records between them: every sample comes out whole
        /// and in order, and every loss is reported; through the handler or the pull.
        #[test]
        fn samples_and_losses_come_out_in_order(
            sizes in proptest::collection::vec(0usize..300, 1..300),
            start in 0u64..10_000,
            every in 1usize..40,
            pull in proptest::bool::ANY,
        ) {
            let mut perf = SimPerf::starting_at(1024, start);
            let (mut scratch, mut pulled_scratch) = (Vec::new(), Vec::new());
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut lost = 0u64;
            let mut written = Vec::new();
            let mut take = |perf: &mut SimPerf| {
                let mut handle = |event: Event<Record<'_>>| match event {
                    Event::Record(r) => seen.push(r.data.to_vec()),
                    Event::Dropped(l) => lost += l.count,
                };
                match pull {
                    true => perf.read(&mut pulled_scratch).for_each(handle),
                    false => perf.consume(&mut scratch, &mut handle).map(drop).unwrap(),
                }
            };
            for (seq, &len) in sizes.iter().enumerate() {
                if perf.output(&payload(seq, len)) {
                    written.push(payload(seq, len));
                }
                if seq % every == 0 {
                    take(&mut perf);
                }
            }
            take(&mut perf);
            take(&mut perf); // publishes a last pulled batch
            prop_assert_eq!(seen.len(), written.len());
            for (got, sent) in seen.iter().zip(&written) {
                // Payloads carry the kernel's padding up to 4 + raw_size ≡ 0 (mod 8).
                prop_assert_eq!(&got[..sent.len()], &sent[..]);
                prop_assert!(got.len() - sent.len() < 8 && got[sent.len()..].iter().all(|&b| b == 0));
            }
            prop_assert_eq!(lost + perf.pending_lost(), (sizes.len() - written.len()) as u64);
            prop_assert_eq!(perf.available(), 0);
        }
    }

    #[test]
    fn a_corrupt_size_is_an_error_not_a_wild_read() {
        let mut perf = SimPerf::new(4096);
        assert!(perf.output(b"fine"));
        // A SAMPLE header claiming 12 bytes: not a multiple of 8.
        assert!(perf.write_raw(&[9, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        let mut seen = 0;
        let err = perf.consume(&mut Vec::new(), |_: Event<Record<'_>>| seen += 1).unwrap_err();
        assert_eq!(seen, 1);
        assert!(err.to_string().contains("multiple of 8"), "{err}");
    }
}
