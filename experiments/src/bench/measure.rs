//! What the bench measures with: CPU pinning, per-thread CPU clocks, the memory of the buffer
//! mappings, and medians of windows.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;
use std::time::Duration;

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: u32) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set`; `cpu` is checked against its capacity first.
    unsafe {
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::other(format!("CPU {cpu} is beyond CPU_SETSIZE")));
        }
        libc::CPU_SET(cpu as usize, &mut set);
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The producer's and the consumer's CPUs: the first two online CPUs, or the same one on a
/// single-CPU machine (then the two threads compete, and the note says so).
pub fn choose_cpus(online: &[u32]) -> (u32, u32) {
    match online {
        [] => (0, 0),
        [only] => (*only, *only),
        [first, second, ..] => (*first, *second),
    }
}

fn clock_ns(clock: libc::clockid_t) -> io::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), in nanoseconds.
pub fn own_cpu_ns() -> io::Result<u64> {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU-time clock of another thread: the same clock that thread reads as
/// CLOCK_THREAD_CPUTIME_ID, readable from here while it blocks in poll.
#[derive(Debug, Clone, Copy)]
pub struct ThreadClock(libc::clockid_t);

impl ThreadClock {
    pub fn of<T>(thread: &JoinHandle<T>) -> io::Result<Self> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the handle's pthread_t is a live thread (not joined: we borrow its handle);
        // `clock` is writable.
        let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(ThreadClock(clock))
    }

    pub fn now_ns(self) -> io::Result<u64> {
        clock_ns(self.0)
    }
}

/// Memory of the buffers the process has mapped from BPF maps and perf events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Virtual size of the mappings (a ring's data pages count twice: they are mapped twice).
    pub mapped: u64,
    /// Resident pages of those mappings.
    pub rss: u64,
}

/// Sums `Size` and `Rss` over the mappings of BPF maps (`anon_inode:bpf-map`) and perf events
/// (`anon_inode:[perf_event]`) in smaps text. Only one consumer is alive at a time, so this is
/// that consumer's buffer memory, whichever library mapped it.
pub fn buffer_memory_in(smaps: &str) -> Memory {
    let mut memory = Memory::default();
    let mut counting = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.ends_with(':') {
            if counting {
                let kib = fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                match first {
                    "Size:" => memory.mapped += kib * 1024,
                    "Rss:" => memory.rss += kib * 1024,
                    _ => {}
                }
            }
        } else if first.contains('-') {
            // A mapping header: address range, perms, offset, dev, inode, then the name.
            let name = fields.nth(4).unwrap_or("");
            counting = name == "anon_inode:bpf-map" || name == "anon_inode:[perf_event]";
        }
    }
    memory
}

/// [`buffer_memory_in`] of this process, now.
pub fn buffer_memory() -> io::Result<Memory> {
    Ok(buffer_memory_in(&std::fs::read_to_string("/proc/self/smaps")?))
}

/// A plain read of memory, the reference for a drain of a buffer of the same size: about as fast
/// as memory lets a consumer go.
/// Anonymous 4 KiB pages (no transparent huge pages), as a ring's data pages are, written once
/// when made so that no pass takes a page fault.
pub struct PlainRead {
    pages: AnonymousPages,
    record_bytes: usize,
}

impl PlainRead {
    pub fn new(bytes: usize, record_bytes: usize) -> io::Result<Self> {
        if record_bytes < 8 {
            return Err(io::Error::other("a plain read needs records of at least 8 bytes"));
        }
        let mut pages = AnonymousPages::new(bytes)?;
        pages.as_mut_slice().fill(1);
        Ok(PlainRead { pages, record_bytes })
    }

    /// One pass, touching one u64 per record as a consumer does: records per second.
    pub fn records_per_sec(&mut self) -> f64 {
        let started = std::time::Instant::now();
        std::hint::black_box(read_one_u64_per_record(self.pages.as_mut_slice(), self.record_bytes));
        (self.pages.len / self.record_bytes) as f64 / started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Bytes ahead that [`read_one_u64_per_record`] prefetches (as bpfstream's consumers do: the
/// hardware prefetcher of this VM falls behind a sequential read, and a plain loop without the
/// hint runs about 20 % slower).
const READ_PREFETCH_AHEAD: usize = 2048;

/// Sums the first u64 of every `record_bytes` of `memory`, hinting each cache line in advance.
fn read_one_u64_per_record(memory: &[u8], record_bytes: usize) -> u64 {
    let mut sum = 0u64;
    for (i, record) in memory.chunks_exact(record_bytes).enumerate() {
        let offset = i * record_bytes;
        if offset % 64 == 0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 is a hint: it cannot fault whatever the address (this one may
            // lie past the end) and the program observes no memory through it.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(memory.as_ptr().wrapping_add(offset + READ_PREFETCH_AHEAD).cast());
            }
        }
        sum = sum.wrapping_add(u64::from_ne_bytes(record[..8].try_into().unwrap_or_default()));
    }
    sum
}

/// A private anonymous mapping in 4 KiB pages, unmapped on drop.
struct AnonymousPages {
    ptr: *mut u8,
    len: usize,
}

impl AnonymousPages {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping: no address hint, no fd; the kernel checks
        // `len`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = AnonymousPages { ptr: ptr.cast(), len };
        // SAFETY: the range is exactly the mapping made above. MADV_NOHUGEPAGE only changes how
        // it is backed; where THP is compiled out it fails harmlessly, so the result is ignored.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        Ok(pages)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+len` is a readable and writable mapping that lives as long as `self`,
        // and `&mut self` makes this the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AnonymousPages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, which no reference outlives (slices
        // borrow `self`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// Counters read at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Records the BPF side tried to write.
    pub produced: u64,
    /// Records the consumer has handled.
    pub consumed: u64,
    /// Records the BPF side dropped.
    pub dropped: u64,
    /// The consumer thread's CPU time.
    pub cpu_ns: u64,
}

/// One measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// What the BPF side tried to write: shows whether the producer or the consumer set the pace.
    pub produced_per_sec: f64,
    pub consumed_per_sec: f64,
    pub dropped_per_sec: f64,
    /// NaN when nothing was consumed.
    pub cpu_ns_per_event: f64,
    /// Drain rows of rings: a [`PlainRead`] of as much memory, right after this window's drain on
    /// the consumer's CPU (NaN elsewhere). The consumer's rate over it is its fraction of memory
    /// speed, which drifts less than the rate itself on a shared machine.
    pub plain_read_per_sec: f64,
}

impl Window {
    pub fn between(start: &Snapshot, end: &Snapshot, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let consumed = end.consumed.saturating_sub(start.consumed);
        let cpu = end.cpu_ns.saturating_sub(start.cpu_ns);
        Window {
            produced_per_sec: end.produced.saturating_sub(start.produced) as f64 / secs,
            consumed_per_sec: consumed as f64 / secs,
            dropped_per_sec: end.dropped.saturating_sub(start.dropped) as f64 / secs,
            cpu_ns_per_event: if consumed == 0 { f64::NAN } else { cpu as f64 / consumed as f64 },
            plain_read_per_sec: f64::NAN,
        }
    }
}

/// Per-metric medians of windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medians {
    pub produced_per_sec: f64,
    pub consumed_per_sec: f64,
    pub dropped_per_sec: f64,
    /// `None` when no window consumed anything.
    pub cpu_ns_per_event: Option<f64>,
    /// `None` when not measured (see [`Window::plain_read_per_sec`]).
    pub plain_read_per_sec: Option<f64>,
    /// The median over windows of the consumer's rate over the plain read's.
    pub memory_speed_fraction: Option<f64>,
    pub windows: usize,
}

/// The median of each metric over `windows` (each metric on its own); `None` when empty.
pub fn medians(windows: &[Window]) -> Option<Medians> {
    let of = |f: fn(&Window) -> f64| median(&windows.iter().map(f).collect::<Vec<_>>());
    Some(Medians {
        produced_per_sec: of(|w| w.produced_per_sec)?,
        consumed_per_sec: of(|w| w.consumed_per_sec)?,
        dropped_per_sec: of(|w| w.dropped_per_sec)?,
        cpu_ns_per_event: of(|w| w.cpu_ns_per_event),
        plain_read_per_sec: of(|w| w.plain_read_per_sec),
        memory_speed_fraction: of(|w| w.consumed_per_sec / w.plain_read_per_sec),
        windows: windows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_read_measures_a_rate() {
        let rate = PlainRead::new(1 << 20, 16).unwrap().records_per_sec();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert!(PlainRead::new(1 << 20, 4).is_err(), "a record holds at least the u64 read");
        assert_eq!(read_one_u64_per_record(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 9, 2, 0, 0, 0, 0, 0, 0, 0, 9, 9], 10), 3);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0, 1.0, 9.0]), Some(5.0), "NaN windows are ignored");
        assert_eq!(median(&[f64::NAN]), None);
        // An outlier window does not move the median.
        assert_eq!(median(&[10.0, 11.0, 1000.0, 12.0, 0.0]), Some(11.0));
    }

    #[test]
    fn windows_are_rates_and_cpu_per_event() {
        let start = Snapshot { produced: 1_010, consumed: 1_000, dropped: 10, cpu_ns: 5_000 };
        let end = Snapshot { produced: 3_030, consumed: 3_000, dropped: 30, cpu_ns: 25_000 };
        let w = Window::between(&start, &end, Duration::from_millis(500));
        assert_eq!(w.produced_per_sec, 4_040.0);
        assert_eq!(w.consumed_per_sec, 4_000.0);
        assert_eq!(w.dropped_per_sec, 40.0);
        assert_eq!(w.cpu_ns_per_event, 10.0);
        let idle = Window::between(&end, &end, Duration::from_secs(1));
        assert!(idle.cpu_ns_per_event.is_nan());
    }

    #[test]
    fn medians_are_taken_per_metric() {
        let w = |c: f64, d: f64, n: f64| Window {
            produced_per_sec: c + d,
            consumed_per_sec: c,
            dropped_per_sec: d,
            cpu_ns_per_event: n,
            plain_read_per_sec: 4.0 * c,
        };
        let m = medians(&[w(1.0, 9.0, 5.0), w(3.0, 7.0, f64::NAN), w(2.0, 8.0, 4.0)]).unwrap();
        assert_eq!((m.consumed_per_sec, m.dropped_per_sec, m.cpu_ns_per_event, m.windows), (2.0, 8.0, Some(4.5), 3));
        assert_eq!(m.produced_per_sec, 10.0);
        assert_eq!((m.plain_read_per_sec, m.memory_speed_fraction), (Some(8.0), Some(0.25)));
        let unread = Window { plain_read_per_sec: f64::NAN, ..w(1.0, 0.0, 1.0) };
        assert_eq!(medians(&[unread]).unwrap().memory_speed_fraction, None);
        assert_eq!(medians(&[]), None);
    }

    #[test]
    fn buffer_memory_counts_only_bpf_and_perf_mappings() {
        let smaps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 123 /usr/bin/bpfstream
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0000001000 rw-s 00000000 00:0e 1055 anon_inode:bpf-map
Size:                  4 kB
KernelPageSize:        4 kB
Rss:                   4 kB
7f0000001000-7f0000102000 r--s 00001000 00:0e 1055 anon_inode:bpf-map
Size:               1028 kB
Rss:                 516 kB
7f0000200000-7f0000281000 rw-s 00000000 00:0e 1055 anon_inode:[perf_event]
Size:                516 kB
Rss:                   8 kB
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
";
        assert_eq!(buffer_memory_in(smaps), Memory { mapped: (4 + 1028 + 516) * 1024, rss: (4 + 516 + 8) * 1024 });
        assert_eq!(buffer_memory_in(""), Memory::default());
    }

    #[test]
    fn cpus_for_producer_and_consumer() {
        assert_eq!(choose_cpus(&[0, 1]), (0, 1));
        assert_eq!(choose_cpus(&[2, 5, 7]), (2, 5));
        assert_eq!(choose_cpus(&[3]), (3, 3));
    }

    #[test]
    fn thread_clocks_advance_with_work() {
        let before = own_cpu_ns().unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(own_cpu_ns().unwrap() > before, "{x}");
        // While this thread spins, the other sleeps: its clock is its own, not the process's
        // (its start-up, however slow the machine, is before the first reading).
        let (started, wait) = std::sync::mpsc::channel();
        let (wake, asleep_until) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            started.send(()).unwrap();
            asleep_until.recv().unwrap();
        });
        wait.recv().unwrap();
        let clock = ThreadClock::of(&thread).unwrap();
        let asleep_from = clock.now_ns().unwrap();
        let spinning_from = own_cpu_ns().unwrap();
        while own_cpu_ns().unwrap() - spinning_from < 200_000_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let asleep = clock.now_ns().unwrap() - asleep_from;
        wake.send(()).unwrap();
        thread.join().unwrap();
        assert!(asleep < 100_000_000, "a sleeping thread's clock moved {asleep} ns while this one spun 200 ms");
    }
}
