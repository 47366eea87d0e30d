//! The lab's deterministic load and the measuring tools every experiment shares: the record of
//! `bpf/lab.h`, the prctl trigger, CPU pinning, clocks, latency percentiles, and the setup of
//! lab BPF objects (loaded, buffer opened, attached) without a tracer's announcements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use aya::Ebpf;
use bpfstream::{EventSource, FromRecord};
use bpfstream_core::load::{self, Attach, BufferOptions, Global, Objects, TracerSpec};

/// `LAB_PRCTL_OPTION` of bpf/lab.h.
const LAB_PRCTL_OPTION: libc::c_ulong = 0x6270_6673;
/// `LAB_CLASS_BULK`.
pub const CLASS_BULK: u32 = 0;
/// `LAB_CLASS_CRITICAL`.
pub const CLASS_CRITICAL: u32 = 1;

bpfstream::record! {
    /// `struct lab_event` of bpf/lab.h.
    #[derive(Debug)]
    pub struct LabEvent {
        pub ts_ns: u64,
        pub seq: u64,
        pub cpu: u32,
        pub class: u32,
        pub key: u32,
        pub tid: u32,
        pub payload: [u8; 32],
    }
}

/// Bytes of a lab record's payload.
pub const RECORD_BYTES: u64 = std::mem::size_of::<LabEvent>() as u64;

impl LabEvent {
    /// Decodes a lab record (`None`: not one, e.g. a degrade notice or a short record).
    pub fn decode(data: &[u8]) -> Option<LabEvent> {
        LabEvent::from_record(data).ok()
    }
}

/// Asks the lab's BPF programs for `count` records (at most [`MAX_BURST`]) with aggregation
/// `key`, sequence numbers from `seq`, and `class`. prctl rejects the option (EINVAL) after the
/// tracepoint has fired: that is the point.
pub fn trigger(count: u64, key: u64, seq: u64, class: u32) {
    // SAFETY: prctl with an unknown option reads no memory; the kernel returns EINVAL.
    unsafe { libc::syscall(libc::SYS_prctl, LAB_PRCTL_OPTION, count, key, seq, u64::from(class)) };
}

/// One openat() that fails with ENOENT: the critical class of `lab multi-ring`.
pub fn failed_open() {
    let path = c"/nonexistent-bpfstream-lab/critical";
    // SAFETY: a NUL-terminated path; the fd is closed if (against expectation) it opened.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    if fd >= 0 {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd) };
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Busy-waits `ns`: a consumer's per-record work (decoding, formatting, writing), made exact.
pub fn spin_ns(ns: u64) {
    if ns == 0 {
        return;
    }
    let until = monotonic_ns() + ns;
    while monotonic_ns() < until {
        std::hint::spin_loop();
    }
}

/// The CPUs the lab uses: producers on the first online CPU, the consumer on the last (the
/// same CPU on a one-CPU machine).
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    pub load: u32,
    pub consumer: u32,
    pub all: usize,
}

pub fn cpus() -> Result<Cpus> {
    let online = crate::host::online_cpus()?;
    let first = *online.first().ok_or_else(|| anyhow!("no online CPU"))?;
    let last = *online.last().expect("non-empty");
    Ok(Cpus { load: first, consumer: last, all: online.len() })
}

/// Pins the calling thread to `cpu` until the guard drops (then its old affinity returns).
pub fn pin_current_thread(cpu: u32) -> Result<Pinned> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most size_of(cpu_set_t) bytes into `old`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit inside the set; cpu < CPU_SETSIZE for online CPUs here.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: sched_setaffinity reads the set we built.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning a thread to CPU {cpu}"));
    }
    Ok(Pinned { old })
}

/// Restores a thread's CPU affinity on drop.
pub struct Pinned {
    old: libc::cpu_set_t,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pinned")
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the set read by sched_getaffinity.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.old) };
    }
}

/// Paces a producer at `rate` records per second: `due(elapsed)` says how many should have
/// been sent by now.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub per_sec: f64,
}

impl Pace {
    pub fn due(&self, elapsed: Duration) -> u64 {
        (self.per_sec * elapsed.as_secs_f64()) as u64
    }
}

/// Runs `send(n)` (send n records; returns nothing) at `pace` until `stop`, in groups no longer
/// than `group`; returns the records sent.
pub fn paced(pace: Pace, group: u64, stop: &AtomicBool, mut send: impl FnMut(u64, u64)) -> u64 {
    let start = Instant::now();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = pace.due(start.elapsed());
        while sent < due {
            let n = (due - sent).min(group);
            send(sent, n);
            sent += n;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    sent
}

/// Sets a stop flag when dropped, so producer threads end even when the consumer bails out with
/// an error (a scope would otherwise wait for them forever).
#[derive(Debug)]
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Latencies (ns) collected during a run.
#[derive(Debug, Default)]
pub struct Latencies {
    values: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn push(&mut self, ns: u64) {
        self.values.push(ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The `p`-th percentile (0..=100) in µs; 0 when empty.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * (self.values.len() - 1) as f64).round() as usize;
        self.values[rank.min(self.values.len() - 1)] as f64 / 1e3
    }

    pub fn max_us(&self) -> f64 {
        self.values.iter().max().copied().unwrap_or(0) as f64 / 1e3
    }
}

/// A lab object: loaded with its buffer open and its programs attached.
pub struct Loaded {
    pub bpf: Ebpf,
    pub source: EventSource,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("source", &self.source).finish()
    }
}

impl Loaded {
    /// Loads `objects` with `globals` plus the lab's pid filter, opens the buffer, attaches
    /// `programs` (each on its tracepoint in [`ATTACH_POINTS`]).
    pub fn start(
        what: &'static str,
        objects: Objects,
        programs: &[&'static str],
        globals: Vec<Global>,
        options: &BufferOptions,
    ) -> Result<Self> {
        let mut globals = globals;
        globals.push(Global::u32("targ_tgid", std::process::id()));
        let attach = programs
            .iter()
            .map(|p| {
                ATTACH_POINTS
                    .iter()
                    .find(|a| matches!(a, Attach::Tracepoint { program, .. } if program == p))
                    .copied()
                    .ok_or_else(|| anyhow!("no attach point for lab program {p}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = TracerSpec { what, objects, attach, globals };
        let (mut bpf, _) = load::load(&spec, options)?;
        let mut library = options.library();
        library.counter_interval = Duration::from_millis(50);
        let events = bpf.map(load::EVENTS_MAP).ok_or_else(|| anyhow!("the lab object has no events map"))?;
        let counters = bpf.map(load::COUNTERS_MAP).ok_or_else(|| anyhow!("the lab object has no stats map"))?;
        let source = EventSource::open(load::map_fd(events)?, Some(load::map_fd(counters)?), &library)?;
        load::attach(&mut bpf, &spec)?;
        Ok(Loaded { bpf, source })
    }
}

/// Where each lab program attaches.
pub const ATTACH_POINTS: [Attach; 3] = [
    Attach::Tracepoint { program: "lab_burst", category: "syscalls", name: "sys_enter_prctl" },
    Attach::Tracepoint { program: "lab_failed_open", category: "syscalls", name: "sys_exit_openat" },
    Attach::Tracepoint { program: "lab_degrade_burst", category: "syscalls", name: "sys_enter_prctl" },
];

/// `part / whole` as a percentage (0 when `whole` is 0).
pub fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;

    #[test]
    fn lab_event_mirrors_the_struct_clang_laid_out() {
        for object in [crate::objects::LAB_LOAD.ring, crate::objects::LAB_LOAD.perf] {
            LabEvent::check_btf(object, "lab_event").unwrap();
        }
    }

    #[test]
    fn percentiles() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile_us(99.0), 0.0);
        for v in 1..=100 {
            l.push(v * 1000);
        }
        assert_eq!(l.percentile_us(50.0), 51.0);
        assert_eq!(l.percentile_us(99.0), 99.0);
        assert_eq!(l.percentile_us(100.0), 100.0);
        assert_eq!(l.max_us(), 100.0);
    }

    #[test]
    fn pace() {
        let p = Pace { per_sec: 1000.0 };
        assert_eq!(p.due(Duration::from_millis(250)), 250);
    }
}
