//! The ping probe, shared by the examples and the kernel tests: `bpf/ping.bpf.c` (committed as
//! `bpf/obj/ping.{ring,perf}.bpf.o`) puts a uprobe on [`bpfstream_ping`] in this very binary, so
//! each call sends exactly one record carrying the caller's `seq` and `len`, and nothing else
//! on the machine can add to the stream. It also shows the glue every tool needs: load an object
//! with aya, then hand its `events` and `bpfstream_stats` maps to bpfstream.
#![allow(dead_code)] // each example and test uses a different subset

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::Map;
use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};
use bpfstream::{DropCounters, EventSource, PerfOptions, Transport, WakeupPolicy};

static PING_RING: &[u8] = include_bytes_aligned!("../obj/ping.ring.bpf.o");
static PING_PERF: &[u8] = include_bytes_aligned!("../obj/ping.perf.bpf.o");

/// Largest payload a ping carries (`PING_DATA_MAX` in `bpf/ping.h`).
pub const PING_DATA_MAX: u32 = 4096;

bpfstream::record! {
    /// `struct ping_event` of `bpf/ping.h`; `len` bytes of data follow it.
    #[derive(Debug, PartialEq, Eq)]
    pub struct PingEvent {
        pub seq: u64,
        pub len: u32,
        pub cpu: u32,
    }
}

/// The probed function: every call sends one record (`len` == 0: just the header; otherwise
/// the header and `len` bytes, byte `i` being `(seq + i) as u8`).
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_ping(seq: u64, len: u32) {
    std::hint::black_box((seq, len));
}

/// The second probed function (ring objects): sends ping `seq` (fixed size) behind a record
/// the probe reserves first and discards last (`handle_ping_behind_discard`).
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_ping_behind_discard(seq: u64) {
    std::hint::black_box(seq);
}

/// Calls [`bpfstream_ping`] so that the compiler cannot drop or merge the call.
pub fn ping(seq: u64, len: u32) {
    bpfstream_ping(std::hint::black_box(seq), std::hint::black_box(len));
}

/// Decodes a ping record and checks its data; `None` if it is malformed. Perf payloads carry
/// padding, so only the first `len` bytes after the header are data.
pub fn decode(data: &[u8]) -> Option<(PingEvent, &[u8])> {
    use bpfstream::FromRecord;
    let (header, rest) = PingEvent::from_record_prefix(data).ok()?;
    let payload = rest.get(..header.len as usize)?;
    let intact = payload.iter().enumerate().all(|(i, &b)| b == (header.seq as u8).wrapping_add(i as u8));
    intact.then_some((header, payload))
}

/// How to load the probe.
#[derive(Debug, Clone, Copy)]
pub struct PingOptions {
    pub transport: Transport,
    /// Ring: total bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Perf: data pages per CPU.
    pub perf_pages: usize,
    /// Ring producers' wakeup policy.
    pub wakeup: WakeupPolicy,
}

impl PingOptions {
    pub fn new(transport: Transport) -> Self {
        PingOptions { transport, ring_bytes: 256 << 10, perf_pages: 64, wakeup: WakeupPolicy::Adaptive }
    }
}

/// The loaded ping probe (not attached until [`attach`](Self::attach)).
pub struct PingProbe {
    bpf: Ebpf,
    options: PingOptions,
}

fn map_fd<'a>(bpf: &'a Ebpf, name: &str) -> Result<BorrowedFd<'a>> {
    match bpf.map(name).ok_or_else(|| anyhow!("the ping object has no map {name}"))? {
        Map::RingBuf(m) | Map::PerfEventArray(m) | Map::PerCpuArray(m) => Ok(m.fd().as_fd()),
        _ => bail!("map {name} has an unexpected type"),
    }
}

impl PingProbe {
    /// Loads the ping object for `options.transport`, filtered to this process.
    pub fn load(options: PingOptions) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("loading BPF programs needs root: run this as root (sudo)");
        }
        let wakeup = options.wakeup.globals();
        let tgid = std::process::id();
        let mut loader = EbpfLoader::new();
        loader.override_global("targ_tgid", &tgid, true);
        for (name, bytes) in &wakeup {
            loader.override_global(name, bytes.as_slice(), false);
        }
        let object = match options.transport {
            Transport::Ring => {
                loader.map_max_entries("events", options.ring_bytes);
                PING_RING
            }
            Transport::Perf => PING_PERF,
        };
        let bpf = loader.load(object).context("loading bpf/obj/ping.*.bpf.o")?;
        Ok(PingProbe { bpf, options })
    }

    /// The event stream with its drop counters. Open it before [`attach`](Self::attach): a perf
    /// buffer must be in the map before the first record.
    pub fn source(&self) -> Result<EventSource> {
        let perf = PerfOptions { pages_per_cpu: self.options.perf_pages, wakeup: None };
        let source = EventSource::open(map_fd(&self.bpf, "events")?, perf)?;
        Ok(source.with_counters(DropCounters::new(map_fd(&self.bpf, DropCounters::MAP)?)?))
    }

    /// The descriptor of one of the object's maps (`events`, `bpfstream_stats`), to build
    /// consumers by hand.
    pub fn map(&self, name: &str) -> Result<BorrowedFd<'_>> {
        map_fd(&self.bpf, name)
    }

    /// Attaches the uprobe to [`bpfstream_ping`] in this executable.
    pub fn attach(&mut self) -> Result<()> {
        self.attach_program("handle_ping", "bpfstream_ping")
    }

    /// Attaches the probe's program `program` to `function` in this executable (e.g.
    /// `handle_ping_behind_discard` to [`bpfstream_ping_behind_discard`]).
    pub fn attach_program(&mut self, program: &str, function: &str) -> Result<()> {
        let exe = std::env::current_exe()?;
        let probe: &mut UProbe =
            self.bpf.program_mut(program).ok_or_else(|| anyhow!("no program {program}"))?.try_into()?;
        probe.load()?;
        probe
            .attach(function, &exe, UProbeScope::CallingProcess)
            .with_context(|| format!("attaching a uprobe to {function} in {}", exe.display()))?;
        Ok(())
    }

    /// Detaches and unloads everything (also done by dropping the probe).
    pub fn detach(self) {
        drop(self.bpf);
    }
}

/// Pins the calling thread to one CPU, so that all its records go to one perf ring in order and
/// drop counters land on one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is checked against the set's capacity by CPU_SET's implementation in libc
    // (it ignores out-of-range CPUs).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size passed, for the calling thread (0).
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
