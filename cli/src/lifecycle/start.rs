//! The start of a run: every stream's object loaded once (its programs verified) and the buffer
//! of each of its maps opened, then all of them attached, so that nothing is attached unless
//! every stream could be; then one `Tracing...` line per map. A stop signal during the start ends it
//! ([`StoppedAtStart`](crate::signals::StoppedAtStart)).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use aya::maps::Map;
use aya::Ebpf;
use bpfstream::{EventSource, Transport};
use bpfstream_core::load::{attach, load, map_fd, BufferOptions, TracerSpec, COUNTERS_MAP, EVENTS_MAP, LOADING};

use crate::counters::DropCounters;
use crate::signals;
use crate::size::human_bytes;

/// What a stream runs in the kernel: an object and the programs it attaches.
pub trait Tracer {
    /// Loads the object for `buffer`, its programs verified where it can; nothing attached.
    fn load(&self, buffer: &BufferOptions) -> Result<Ebpf>;
    /// Attaches the loaded object's programs.
    fn attach(&self, bpf: &mut Ebpf) -> Result<()>;
}

/// A built-in tracer: an embedded object, its `events` map, its attach points.
impl Tracer for TracerSpec {
    fn load(&self, buffer: &BufferOptions) -> Result<Ebpf> {
        load(self, buffer).map(|(bpf, _)| bpf)
    }
    fn attach(&self, bpf: &mut Ebpf) -> Result<()> {
        attach(bpf, self)
    }
}

/// A map a stream reads: a ring buffer or a perf event array of its tracer's object, with its
/// buffer and drop counters.
pub struct MapStream {
    /// Shown in `Tracing <what> via ...`.
    pub what: String,
    pub map: String,
    /// Its drop counters (`None`: it is sent to without bpfstream.h's counters).
    pub counters: Option<String>,
    pub buffer: BufferOptions,
}

impl MapStream {
    /// A built-in tracer's `events` map, counted in `bpfstream_stats`.
    pub fn events(tracer: &TracerSpec, buffer: BufferOptions) -> Self {
        let (map, counters) = (EVENTS_MAP.to_owned(), Some(COUNTERS_MAP.to_owned()));
        MapStream { what: tracer.what.to_owned(), map, counters, buffer }
    }
}

/// One stream of a run: a tracer and the maps it reads (each a stream of its own, the object
/// loaded for the first one's buffer), with a name their events, loss reports and summaries
/// carry (`"stream":NAME`), and a priority (a higher one is served first, and again before every
/// batch of a lower one).
pub struct StreamSpec<'t> {
    pub tracer: Box<dyn Tracer + 't>,
    pub maps: Vec<MapStream>,
    pub name: Option<String>,
    pub priority: i32,
}

impl StreamSpec<'_> {
    /// The streams of its maps, loaded as `bpf` and opened as `opened`: the first holds the object.
    fn loaded(self, bpf: Ebpf, opened: Vec<Opened>) -> impl Iterator<Item = Loaded> {
        let (mut bpf, name, priority) = (Some(bpf), self.name.map(Arc::<str>::from), self.priority);
        opened.into_iter().zip(self.maps).map(move |((source, counters), m)| Loaded {
            bpf: bpf.take(),
            source,
            what: m.what,
            name: name.clone(),
            priority,
            size: m.buffer.size,
            max_delay: m.buffer.max_delay,
            counters,
        })
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
    announce(load_and_attach(specs))
}

/// A start that a stop signal did not end, announced.
fn announce(started: Result<Vec<Loaded>>) -> Result<Vec<Loaded>> {
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
    let mut loaded = Vec::with_capacity(specs.len());
    for spec in &specs {
        signals::stop_point(LOADING)?;
        loaded.push(load_and_open(spec)?);
    }
    for ((bpf, _), spec) in loaded.iter_mut().zip(&specs) {
        signals::stop_point(LOADING)?;
        spec.tracer.attach(bpf)?;
    }
    Ok(loaded.into_iter().zip(specs).flat_map(|((bpf, opened), spec)| spec.loaded(bpf, opened)).collect())
}

/// A map's buffer, and a second handle on its drop counters for the run so far.
type Opened = (EventSource, Option<DropCounters>);

/// The stream's object, loaded for its first map's buffer, and the buffer of each of its maps.
fn load_and_open(spec: &StreamSpec<'_>) -> Result<(Ebpf, Vec<Opened>)> {
    let first = spec.maps.first().ok_or_else(|| anyhow!("no map to stream"))?;
    let bpf = spec.tracer.load(&first.buffer)?;
    let opened = spec.maps.iter().map(|m| open(&bpf, &m.map, m.counters.as_deref(), &m.buffer));
    let opened = opened.collect::<Result<Vec<Opened>>>()?;
    Ok((bpf, opened))
}

/// The buffer of `map` with its drop counters, and a second handle on them for the run so far.
/// Opened before attaching: perf buffers must be in the map before the first event, or those
/// events would be dropped for want of a slot.
fn open(bpf: &Ebpf, map: &str, counters: Option<&str>, buffer: &BufferOptions) -> Result<Opened> {
    let source = open_stream(bpf, map, counters, buffer)?;
    let counters = match counters.and_then(|name| bpf.map(name)) {
        Some(map) => Some(DropCounters::of(map)?),
        None => None,
    };
    Ok((source, counters))
}

/// Whether `map` is a perf event array.
fn events_are_perf(map: &Map) -> bool {
    matches!(map, Map::PerfEventArray(_))
}

/// Whether opening a buffer failed for want of privileges (EPERM or EACCES).
fn is_permission_denied(error: &bpfstream::Error) -> bool {
    matches!(error, bpfstream::Error::Sys { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The event stream of the map `map`, with the drop counters of the map `counters` (`None`: an
/// object that sends without bpfstream.h's counters).
fn open_stream(bpf: &Ebpf, map: &str, counters: Option<&str>, options: &BufferOptions) -> Result<EventSource> {
    let events = bpf.map(map).ok_or_else(|| anyhow!("BPF object has no {map} map"))?;
    let counters = match counters {
        Some(name) => Some(map_fd(bpf.map(name).ok_or_else(|| anyhow!("BPF object has no {name} map"))?)?),
        None => None,
    };
    match EventSource::open(map_fd(events)?, counters, &options.library()) {
        Err(e) if is_permission_denied(&e) && events_are_perf(events) => {
            bail!("{}: {}", crate::privileges::perf_permission_hint(options.size), crate::privileges::os_error(&e))
        }
        opened => Ok(opened?),
    }
}
