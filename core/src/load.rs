//! Loading and attaching a bpfstream BPF object: the transport, the buffer, the read-only
//! globals, the programs and where they attach. The tracers' start (`bpfstream-cli`'s
//! `lifecycle`) and the experiments load their objects through it.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::Map;
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use bpfstream::Transport;

use bpfstream::{PerfWakeup, WakeupPolicy};

use crate::tracefs;

/// Name of the events map in every bpfstream BPF object (`bpfstream.h`).
pub const EVENTS_MAP: &str = "events";

/// Name of the drop counters of the events map (`bpfstream.h`).
pub const COUNTERS_MAP: &str = "bpfstream_stats";

/// One BPF program and where it attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// `SEC("tracepoint/<category>/<name>")`, attached through tracefs.
    Tracepoint { program: &'static str, category: &'static str, name: &'static str },
    /// `SEC("raw_tp/<name>")`: the tracepoint's raw arguments, without the copy into a trace
    /// record classic tracepoints make, and no tracefs needed.
    RawTracePoint { program: &'static str, name: &'static str },
}

impl Attach {
    /// The program's name in the object.
    fn program(&self) -> &'static str {
        match *self {
            Attach::Tracepoint { program, .. } | Attach::RawTracePoint { program, .. } => program,
        }
    }
}

/// A BPF object compiled for both transports (`bpf/build.sh`).
#[derive(Debug, Clone, Copy)]
pub struct Objects {
    pub ring: &'static [u8],
    pub perf: &'static [u8],
}

/// A read-only global to set before loading.
#[derive(Debug, Clone)]
pub struct Global {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

impl Global {
    pub fn u32(name: &'static str, value: u32) -> Self {
        Global { name, bytes: value.to_ne_bytes().to_vec() }
    }
    pub fn u64(name: &'static str, value: u64) -> Self {
        Global { name, bytes: value.to_ne_bytes().to_vec() }
    }
    pub fn bool(name: &'static str, value: bool) -> Self {
        Global { name, bytes: vec![u8::from(value)] }
    }
    /// A `char[16]` comm; longer names are cut to 15 bytes, as the kernel cuts comm.
    pub fn comm(name: &'static str, comm: &[u8]) -> Self {
        let mut bytes = vec![0u8; 16];
        let n = comm.len().min(crate::values::COMM_MAX);
        bytes[..n].copy_from_slice(&comm[..n]);
        Global { name, bytes }
    }
}

/// How to set up the buffer.
#[derive(Debug, Clone, Copy)]
pub struct BufferOptions {
    /// `None`: ring if the kernel has it, else perf (with a notice).
    pub transport: Option<Transport>,
    /// Ring: total bytes; perf: bytes per CPU.
    pub size: u64,
    /// Ring producers' wakeup policy.
    pub ring_wakeup: WakeupPolicy,
    /// Perf buffers' wakeup policy (`None`: a quarter of the buffer).
    pub perf_wakeup: Option<PerfWakeup>,
    /// Longest a record may wait before we read it (the poll timeout).
    pub max_delay: Duration,
}

impl BufferOptions {
    /// The library's options for this buffer: its size in bytes (a ring's, or a perf buffer's
    /// per CPU) and both transports' wakeup policies.
    pub fn library(&self) -> bpfstream::Options {
        bpfstream::Options {
            wakeup: self.ring_wakeup,
            buffer_bytes: Some(self.size),
            perf_wakeup: self.perf_wakeup,
            ..bpfstream::Options::default()
        }
    }
}

/// What a tracer is made of.
#[derive(Debug, Clone)]
pub struct TracerSpec {
    /// Shown in `Tracing <what> via ...`.
    pub what: &'static str,
    pub objects: Objects,
    pub attach: Vec<Attach>,
    pub globals: Vec<Global>,
}

/// Set to make bpfstream behave as on a kernel without ring buffers (to exercise the perf
/// fallback on a modern kernel).
pub const NO_RINGBUF_ENV: &str = "BPFSTREAM_NO_RINGBUF";

fn ring_supported() -> bool {
    std::env::var_os(NO_RINGBUF_ENV).is_none() && Transport::probe() == Transport::Ring
}

/// Resolves the transport, with the fallback notice of the contract.
pub fn choose_transport(requested: Option<Transport>) -> Result<Transport> {
    match requested {
        Some(Transport::Ring) if !ring_supported() => {
            bail!("this kernel has no BPF ring buffers (BPF_MAP_TYPE_RINGBUF needs Linux 5.8); use --buffer perf")
        }
        Some(t) => Ok(t),
        None => {
            let t = if ring_supported() { Transport::Ring } else { Transport::Perf };
            if t == Transport::Perf {
                eprintln_lossy!(
                    "Notice: this kernel has no BPF ring buffers (Linux 5.8+); using perf buffers instead."
                );
            }
            Ok(t)
        }
    }
}

/// The fd of a loaded map, for the maps bpfstream objects contain.
pub fn map_fd(map: &Map) -> Result<BorrowedFd<'_>> {
    let data = match map {
        Map::RingBuf(m)
        | Map::PerfEventArray(m)
        | Map::PerCpuArray(m)
        | Map::Array(m)
        | Map::HashMap(m)
        | Map::PerCpuHashMap(m)
        | Map::LruHashMap(m) => m,
        Map::Unsupported(m) => m,
        _ => bail!("unexpected map kind"),
    };
    Ok(data.fd().as_fd())
}

/// Loads a BPF object with the globals and buffer of `spec`/`options` and verifies the programs
/// of `spec` (nothing attached yet).
pub fn load(spec: &TracerSpec, options: &BufferOptions) -> Result<(Ebpf, Transport)> {
    let transport = choose_transport(options.transport)?;
    let mut loader = EbpfLoader::new();
    // Maps aya has no userspace type for (task storage) are still created for the programs.
    loader.allow_unsupported_maps();
    for g in &spec.globals {
        loader.override_global(g.name, g.bytes.as_slice(), true);
    }
    let object = match transport {
        Transport::Ring => spec.objects.ring,
        Transport::Perf => spec.objects.perf,
    };
    // The wakeup globals and the ring's size, from the same options the stream opens with.
    let mut bpf = match bpfstream::aya::load(loader, object, &options.library()) {
        Err(bpfstream::Error::Load(e)) => return Err(load_error(spec.what, e)),
        loaded => loaded?,
    };
    verify(&mut bpf, spec)?;
    Ok((bpf, transport))
}

/// Loads every program of `spec` into the kernel, which verifies it.
fn verify(bpf: &mut Ebpf, spec: &TracerSpec) -> Result<()> {
    for a in &spec.attach {
        // Each program's verification may take a while: a stop is honoured between them.
        crate::signals::stop_point(LOADING)?;
        let program = program_mut(bpf, a.program())?;
        let verified = match a {
            Attach::Tracepoint { .. } => <&mut TracePoint>::try_from(program)?.load(),
            Attach::RawTracePoint { .. } => <&mut RawTracePoint>::try_from(program)?.load(),
        };
        verified.with_context(|| format!("verifying {}", a.program()))?;
    }
    Ok(())
}

/// A failed load, with the privilege a refusal points at.
pub fn load_error(what: &str, e: aya::EbpfError) -> anyhow::Error {
    let text = crate::limits::chain(&e); // with its causes, each once
    let hint = if text.contains("Operation not permitted") || text.contains("EPERM") {
        crate::privileges::eperm_hint()
    } else {
        String::new()
    };
    anyhow!("loading the BPF program for {what} failed{hint}: {text}")
}

/// What a start that a stop signal ended was doing.
pub const LOADING: &str = "loading the BPF programs";

/// Attaches every program of `spec` (loaded by [`load`]).
pub fn attach(bpf: &mut Ebpf, spec: &TracerSpec) -> Result<()> {
    let needs_tracefs = spec.attach.iter().any(|a| matches!(a, Attach::Tracepoint { .. }));
    // Held (and, if bpfstream mounted it, unmounted) until every tracepoint is attached.
    let _tracefs = if needs_tracefs { Some(tracefs::Tracefs::open()?) } else { None };
    for a in &spec.attach {
        match *a {
            Attach::Tracepoint { program, category, name } => {
                let p: &mut TracePoint = program_mut(bpf, program)?.try_into()?;
                p.attach(category, name)
                    .with_context(|| format!("attaching {program} to tracepoint {category}/{name}"))?;
            }
            Attach::RawTracePoint { program, name } => {
                let p: &mut RawTracePoint = program_mut(bpf, program)?.try_into()?;
                p.attach(name).with_context(|| format!("attaching {program} to raw tracepoint {name}"))?;
            }
        }
    }
    Ok(())
}

fn program_mut<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    bpf.program_mut(name).ok_or_else(|| anyhow!("BPF object has no program {name}"))
}
