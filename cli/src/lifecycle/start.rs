//! The start of a run: every stream loaded (its programs verified) and its buffer opened, then
//! all of them attached, so that nothing is attached unless every stream could be; then one
//! `Tracing...` line per stream. A stop signal during the start ends it
//! ([`StoppedAtStart`](crate::signals::StoppedAtStart)).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aya::maps::Map;
use aya::Ebpf;
use bpfstream::{EventSource, Transport};

use super::args::BufferOptions;
use super::load::{attach, load, open_stream, TracerSpec, COUNTERS_MAP, EVENTS_MAP, LOADING};
use crate::counters::DropCounters;
use crate::signals;
use crate::size::human_bytes;

/// What a stream runs in the kernel: an object, the map it streams, the programs it attaches.
pub trait Tracer {
    /// Shown in `Tracing <what> via ...`.
    fn what(&self) -> String;
    /// Loads the object for `buffer`, its programs verified where it can; nothing attached.
    fn load(&self, buffer: &BufferOptions) -> Result<Ebpf>;
    /// Attaches the loaded object's programs.
    fn attach(&self, bpf: &mut Ebpf) -> Result<()>;
    /// The map it streams: a ring buffer or a perf event array.
    fn events_map(&self) -> &str {
        EVENTS_MAP
    }
    /// The map of its drop counters (`None`: it sends without bpfstream.h's counters).
    fn counters_map(&self) -> Option<&str> {
        Some(COUNTERS_MAP)
    }
}

/// A built-in tracer: an embedded object, its `events` map, its attach points.
impl Tracer for TracerSpec {
    fn what(&self) -> String {
        self.what.to_owned()
    }
    fn load(&self, buffer: &BufferOptions) -> Result<Ebpf> {
        load(self, buffer).map(|(bpf, _)| bpf)
    }
    fn attach(&self, bpf: &mut Ebpf) -> Result<()> {
        attach(bpf, self)
    }
}

/// One stream of a run: a tracer and its buffer, with a name its events, loss reports and
/// summary carry (`"stream":NAME`), and a priority (a higher one is served first, and again
/// before every batch of a lower one).
pub struct StreamSpec<'t> {
    pub tracer: Box<dyn Tracer + 't>,
    pub buffer: BufferOptions,
    pub name: Option<String>,
    pub priority: i32,
}

impl<'t> StreamSpec<'t> {
    /// The one stream of a one-tracer command: no name, the default priority.
    pub fn alone(tracer: impl Tracer + 't, buffer: BufferOptions) -> Self {
        StreamSpec { tracer: Box::new(tracer), buffer, name: None, priority: 0 }
    }
}

/// A stream loaded and attached, its buffer open.
pub struct Loaded {
    /// `None` once detached.
    pub(super) bpf: Option<Ebpf>,
    pub(super) source: EventSource,
    pub(super) what: String,
    pub(super) name: Option<Arc<str>>,
    pub(super) priority: i32,
    /// `--buffer-size`: ring total, or perf per CPU.
    pub(super) size: u64,
    pub(super) max_delay: Duration,
    /// Its drop counters, read for the run so far (SIGUSR1).
    pub(super) counters: Option<DropCounters>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("what", &self.what)
            .field("name", &self.name)
            .field("source", &self.source)
            .finish()
    }
}

impl Loaded {
    /// Takes one of the object's maps out of it (e.g. a tool's own counters), to read after the
    /// run detached the programs.
    pub fn take_map(&mut self, name: &str) -> Result<Map> {
        let bpf = self.bpf.as_mut().ok_or_else(|| anyhow!("the programs of {} are detached", self.what))?;
        bpf.take_map(name).ok_or_else(|| anyhow!("BPF object has no {name} map"))
    }

    /// `ring buffer (256 KiB)` or `perf buffer (256 KiB per CPU, 2 CPUs: 512 KiB)`.
    pub fn describe_buffer(&self) -> String {
        match self.source.transport() {
            Transport::Ring => format!("ring buffer ({})", human_bytes(self.size)),
            Transport::Perf => {
                // A perf buffer's capacity is its size on each of its CPUs.
                let cpus = self.source.fill().capacity / self.size.max(1);
                let total = human_bytes(self.size * cpus);
                format!("perf buffer ({} per CPU, {cpus} CPUs: {total})", human_bytes(self.size))
            }
        }
    }
}

/// Loads every stream and opens its buffer, then attaches them all (nothing is attached unless
/// every stream loaded), then announces each on stderr: `Tracing <what> via <buffer>...`.
pub fn start(specs: Vec<StreamSpec<'_>>) -> Result<Vec<Loaded>> {
    let started = load_and_attach(specs);
    match started {
        // A signal may interrupt the verifier (EINTR, EAGAIN): the stop, not the error, counts.
        Err(_) if signals::stop_requested() => Err(signals::StoppedAtStart { during: LOADING.into() }.into()),
        Ok(streams) => {
            for stream in &streams {
                let name = stream.name.as_ref().map(|name| format!(" (stream {name})")).unwrap_or_default();
                eprintln_lossy!("Tracing {} via {}{name}... Hit Ctrl-C to end.", stream.what, stream.describe_buffer());
            }
            Ok(streams)
        }
        failed => failed,
    }
}

fn load_and_attach(specs: Vec<StreamSpec<'_>>) -> Result<Vec<Loaded>> {
    let mut opened = Vec::with_capacity(specs.len());
    for spec in &specs {
        signals::stop_point(LOADING)?;
        let t = &spec.tracer;
        let bpf = t.load(&spec.buffer)?;
        // Open the buffer before attaching: perf buffers must be in the map before the first
        // event, or those events would be dropped for want of a slot.
        let source = open_stream(&bpf, t.events_map(), t.counters_map(), &spec.buffer)?;
        let counters = match t.counters_map().and_then(|name| bpf.map(name)) {
            Some(map) => Some(DropCounters::of(map)?),
            None => None,
        };
        opened.push((bpf, source, counters));
    }
    for ((bpf, ..), spec) in opened.iter_mut().zip(&specs) {
        signals::stop_point(LOADING)?;
        spec.tracer.attach(bpf)?;
    }
    let streams = opened
        .into_iter()
        .zip(specs)
        .map(|((bpf, source, counters), spec)| Loaded {
            bpf: Some(bpf),
            source,
            what: spec.tracer.what(),
            name: spec.name.map(Arc::from),
            priority: spec.priority,
            size: spec.buffer.size,
            max_delay: spec.buffer.max_delay,
            counters,
        })
        .collect();
    Ok(streams)
}
