//! The ping probe of the kernel tests: `bpf/ping.bpf.c` (committed as
//! `examples/obj/ping.{ring,perf}.bpf.o`) puts a uprobe on [`bpfstream_ping`] in this very
//! binary, so each call sends exactly one record carrying the caller's `seq` and `len`, and
//! nothing else on the machine can add to the stream. Loaded and opened through
//! `bpfstream::aya::{load, open}`, as any tool would.
#![allow(dead_code)] // each test uses a different subset

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::Map;
use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};
use bpfstream::{EventSource, FromRecord, Options, Transport};

static PING_RING: &[u8] = include_bytes_aligned!("../../examples/obj/ping.ring.bpf.o");
static PING_PERF: &[u8] = include_bytes_aligned!("../../examples/obj/ping.perf.bpf.o");

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
    let (header, rest) = PingEvent::from_record_prefix(data).ok()?;
    let payload = rest.get(..header.len as usize)?;
    let intact = payload.iter().enumerate().all(|(i, &b)| b == (header.seq as u8).wrapping_add(i as u8));
    intact.then_some((header, payload))
}

/// The loaded ping probe (not attached until [`attach`](Self::attach)).
pub struct PingProbe {
    bpf: Ebpf,
    options: Options,
}

impl PingProbe {
    /// Loads the ping object of `transport`, filtered to this process, set up by `options`.
    pub fn load(transport: Transport, options: Options) -> anyhow::Result<Self> {
        let object = match transport {
            Transport::Ring => PING_RING,
            Transport::Perf => PING_PERF,
        };
        let tgid = std::process::id();
        let mut loader = EbpfLoader::new();
        loader.override_global("targ_tgid", &tgid, true);
        let bpf = bpfstream::aya::load(loader, object, &options)?;
        Ok(PingProbe { bpf, options })
    }

    /// [`load`](Self::load) with the default options.
    pub fn new(transport: Transport) -> anyhow::Result<Self> {
        Self::load(transport, Options::default())
    }

    /// The event stream with its drop counters. Open it before [`attach`](Self::attach): a perf
    /// buffer must be in the map before the first record.
    pub fn source(&self) -> Result<EventSource, bpfstream::Error> {
        bpfstream::aya::open(&self.bpf, "events", &self.options)
    }

    /// The descriptor of one of the object's maps (`events`, `bpfstream_stats`), to open
    /// sources by hand.
    pub fn map(&self, name: &str) -> BorrowedFd<'_> {
        match self.bpf.map(name) {
            Some(Map::RingBuf(m) | Map::PerfEventArray(m) | Map::PerCpuArray(m)) => m.fd().as_fd(),
            _ => panic!("the ping object has no map {name} of a stream's type"),
        }
    }

    /// Attaches the uprobe to [`bpfstream_ping`] in this executable.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        self.attach_program("handle_ping", "bpfstream_ping")
    }

    /// Attaches the probe's program `program` to `function` in this executable (e.g.
    /// `handle_ping_behind_discard` to [`bpfstream_ping_behind_discard`]).
    pub fn attach_program(&mut self, program: &str, function: &str) -> anyhow::Result<()> {
        let probe: &mut UProbe =
            self.bpf.program_mut(program).ok_or_else(|| anyhow::anyhow!("no program {program}"))?.try_into()?;
        probe.load()?;
        probe.attach(function, "/proc/self/exe", UProbeScope::CallingProcess)?;
        Ok(())
    }

    /// Detaches and unloads everything (also done by dropping the probe).
    pub fn detach(self) {
        drop(self.bpf);
    }
}

/// Pins the calling thread to one CPU, so that all its records go to one perf ring in order and
/// drop counters land on one CPU.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is checked against the set's capacity by CPU_SET's implementation in libc
    // (it ignores out-of-range CPUs).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size passed, for the calling thread (0).
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        anyhow::bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
