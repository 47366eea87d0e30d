//! The life of every tracer, written once: pick the transport, set the read-only globals, load,
//! attach, announce `Tracing...`, poll until Ctrl-C/SIGTERM/`--duration`, detach, drain, and
//! account for every event. A tool brings only its BPF objects, attach points, globals and a
//! decoder.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::Map;
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use bpfstream::accounting::{STATS_MAP, WAKEUP_ARG_GLOBAL, WAKEUP_POLICY_GLOBAL};
use bpfstream::{DropCounters, EventSource, Item, PerfOptions, PerfWakeup, Poller, Transport, WakeupPolicy};

use crate::output::JsonLine;
use crate::size::human_bytes;
use crate::{signals, tracefs};

/// Name of the events map in every bpfstream BPF object (`bpfstream.h`).
pub const EVENTS_MAP: &str = "events";

/// Default buffer: 256 KiB (ring: total; perf: per CPU), the chapter's rule of thumb.
pub const DEFAULT_BUFFER_SIZE: u64 = 256 << 10;

/// Options every tracer takes (`cli-contract.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Transport: ring (default; falls back to perf where the kernel lacks ring buffers) or perf
    #[arg(long, value_enum)]
    pub buffer: Option<BufferKind>,
    /// Buffer size: ring total bytes, or perf bytes per CPU; a power of two from 4K to 1G
    #[arg(long, value_name = "BYTES", value_parser = crate::size::parse_buffer_size)]
    pub buffer_size: Option<u64>,
    /// Stop after SECS, drain, print the summary and exit 0
    #[arg(long, value_name = "SECS", value_parser = crate::size::parse_run_duration)]
    pub duration: Option<Duration>,
    /// JSON lines on stdout: one object per event, then the summary object
    #[arg(long)]
    pub json: bool,
    /// Only this process (filtered in the kernel)
    #[arg(long, value_name = "PID", value_parser = parse_task_id)]
    pub pid: Option<u32>,
    /// Only tasks whose comm is exactly COMM (first 15 bytes; filtered in the kernel)
    #[arg(long, value_name = "COMM", value_parser = parse_comm)]
    pub name: Option<String>,
    /// When producers wake the reader: adaptive (when the reader had caught up), every, never,
    /// records:N or bytes:N. Default: bytes at a quarter of the buffer for perf buffers and for
    /// the high-rate tracers (syscalls, open), adaptive otherwise
    #[arg(long, value_name = "POLICY", value_parser = parse_wakeup)]
    pub wakeup: Option<Wakeup>,
    /// Longest a record may wait in the buffer before it is read, whatever the wakeup policy
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = crate::size::parse_run_duration)]
    pub max_delay: Duration,
    // --output: shipping events to Kafka / NATS JetStream (export.rs).
    #[command(flatten)]
    pub output: crate::export::OutputArgs,
}

/// `--wakeup`, for either transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    Adaptive,
    Every,
    Never,
    Records(u32),
    Bytes(u32),
}

impl Wakeup {
    /// The ring producers' policy.
    fn ring(self) -> WakeupPolicy {
        match self {
            Wakeup::Adaptive => WakeupPolicy::Adaptive,
            Wakeup::Every => WakeupPolicy::EveryRecord,
            Wakeup::Never => WakeupPolicy::Never,
            Wakeup::Records(n) => WakeupPolicy::EveryRecords(n.into()),
            Wakeup::Bytes(n) => WakeupPolicy::Bytes(n.into()),
        }
    }

    /// The perf buffers' policy (`None`: the default watermark); perf cannot wake less often
    /// than at half the buffer, so `never` means the default.
    fn perf(self) -> Option<PerfWakeup> {
        match self {
            Wakeup::Every => Some(PerfWakeup::Events(1)),
            Wakeup::Records(n) => Some(PerfWakeup::Events(n)),
            Wakeup::Bytes(n) => Some(PerfWakeup::Bytes(n)),
            Wakeup::Adaptive | Wakeup::Never => None,
        }
    }
}

/// `--pid` / `--tid`: a task id. 0 is refused: in the kernel filter it means "any task".
pub fn parse_task_id(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("0 is no task's id (to trace every task, leave the option out)".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("{text:?} is not a task id (a positive integer)")),
    }
}

/// `--name`: a comm to match; an empty one would match nothing.
fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("an empty name matches no task; give a comm such as `bash`".into());
    }
    Ok(text.to_string())
}

fn parse_wakeup(text: &str) -> Result<Wakeup, String> {
    let count = |n: &str| -> Result<u32, String> {
        match n.parse::<u32>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(format!("{n:?} is not a positive count")),
        }
    };
    match text.split_once(':') {
        None => match text {
            "adaptive" => Ok(Wakeup::Adaptive),
            "every" => Ok(Wakeup::Every),
            "never" => Ok(Wakeup::Never),
            _ => Err(format!("unknown wakeup policy {text:?}: use adaptive, every, never, records:N or bytes:N")),
        },
        Some(("records", n)) => count(n).map(Wakeup::Records),
        Some(("bytes", n)) => {
            let bytes = crate::size::parse_bytes(n)?;
            let bytes = u32::try_from(bytes).map_err(|_| format!("{n:?} is too large"))?;
            count(&bytes.to_string()).map(Wakeup::Bytes)
        }
        Some(_) => Err(format!("unknown wakeup policy {text:?}: use adaptive, every, never, records:N or bytes:N")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BufferKind {
    Ring,
    Perf,
}

/// One BPF program and where it attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// `SEC("tracepoint/<category>/<name>")`, attached through tracefs.
    Tracepoint { program: &'static str, category: &'static str, name: &'static str },
    /// `SEC("raw_tp/<name>")`: the tracepoint's raw arguments, without the copy into a trace
    /// record classic tracepoints make, and no tracefs needed.
    RawTracePoint { program: &'static str, name: &'static str },
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
    pub fn comm(name: &'static str, comm: &str) -> Self {
        let mut bytes = vec![0u8; 16];
        let src = comm.as_bytes();
        let n = src.len().min(15);
        bytes[..n].copy_from_slice(&src[..n]);
        Global { name, bytes }
    }
}

/// The globals of `bpf/include/bpfstream_filter.h`: the task filters every tracer applies in
/// the kernel (`--pid`, `--tid`, `--name`), and bpfstream's own process, never traced.
pub fn task_filter_globals(args: &CommonArgs, tid: Option<u32>) -> Vec<Global> {
    vec![
        Global::u32("self_tgid", std::process::id()),
        Global::u32("targ_pid", args.pid.unwrap_or(0)),
        Global::u32("targ_tid", tid.unwrap_or(0)),
        Global::bool("filter_comm", args.name.is_some()),
        Global::comm("targ_comm", args.name.as_deref().unwrap_or("")),
    ]
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
    pub fn from_args(args: &CommonArgs) -> Self {
        BufferOptions {
            transport: args.buffer.map(|b| match b {
                BufferKind::Ring => Transport::Ring,
                BufferKind::Perf => Transport::Perf,
            }),
            size: args.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE),
            ring_wakeup: args.wakeup.map_or(WakeupPolicy::Adaptive, Wakeup::ring),
            perf_wakeup: args.wakeup.and_then(Wakeup::perf),
            max_delay: args.max_delay,
        }
    }
}

/// Set to make bpfstream behave as on a kernel without ring buffers (to exercise the perf
/// fallback on a modern kernel).
pub const NO_RINGBUF_ENV: &str = "BPFSTREAM_NO_RINGBUF";

fn ring_supported() -> bool {
    std::env::var_os(NO_RINGBUF_ENV).is_none() && Transport::ring_supported()
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

/// Where a tracer's items go.
pub trait Sink {
    /// Before the first event: a table's column titles.
    fn header(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// One record or loss report.
    fn item(&mut self, item: Item<'_>) -> io::Result<()>;
    /// After every poll (a batch) and after the final drain: flush output, print periodic
    /// summaries.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A loaded, attached tracer and its event stream.
pub struct Tracer {
    bpf: Ebpf,
    pub source: EventSource,
    what: &'static str,
    size: u64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("what", &self.what).field("source", &self.source).finish()
    }
}

/// Loads a BPF object with the globals and buffer of `spec`/`options` (nothing attached yet).
pub fn load(spec: &TracerSpec, options: &BufferOptions) -> Result<(Ebpf, Transport)> {
    let transport = choose_transport(options.transport)?;
    let (policy, arg) = options.ring_wakeup.globals();
    let size = u32::try_from(options.size).map_err(|_| anyhow!("buffer size {} is too large", options.size))?;
    let mut loader = EbpfLoader::new();
    // Maps aya has no userspace type for (task storage) are still created for the programs.
    loader.allow_unsupported_maps();
    for g in &spec.globals {
        loader.override_global(g.name, g.bytes.as_slice(), true);
    }
    loader.override_global(WAKEUP_POLICY_GLOBAL, &policy, false);
    loader.override_global(WAKEUP_ARG_GLOBAL, &arg, false);
    let object = match transport {
        Transport::Ring => {
            loader.map_max_entries(EVENTS_MAP, size);
            spec.objects.ring
        }
        Transport::Perf => spec.objects.perf,
    };
    let bpf = loader.load(object).map_err(|e| load_error(spec.what, e))?;
    Ok((bpf, transport))
}

fn load_error(what: &str, e: aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    let hint = if text.contains("Operation not permitted") || text.contains("EPERM") {
        " (run as root, or grant CAP_BPF and CAP_PERFMON)"
    } else {
        ""
    };
    anyhow!("loading the BPF program for {what} failed{hint}: {text}")
}

/// Loads and attaches every program of `spec`.
pub fn attach(bpf: &mut Ebpf, spec: &TracerSpec) -> Result<()> {
    let needs_tracefs = spec.attach.iter().any(|a| matches!(a, Attach::Tracepoint { .. }));
    if needs_tracefs {
        tracefs::ensure_mounted()?;
    }
    for a in &spec.attach {
        match *a {
            Attach::Tracepoint { program, category, name } => {
                let p: &mut TracePoint = program_mut(bpf, program)?.try_into()?;
                p.load().with_context(|| format!("verifying {program}"))?;
                p.attach(category, name)
                    .with_context(|| format!("attaching {program} to tracepoint {category}/{name}"))?;
            }
            Attach::RawTracePoint { program, name } => {
                let p: &mut RawTracePoint = program_mut(bpf, program)?.try_into()?;
                p.load().with_context(|| format!("verifying {program}"))?;
                p.attach(name).with_context(|| format!("attaching {program} to raw tracepoint {name}"))?;
            }
        }
    }
    Ok(())
}

fn program_mut<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    bpf.program_mut(name).ok_or_else(|| anyhow!("BPF object has no program {name}"))
}

/// The event stream of a loaded object: its `events` map with its drop counters.
pub fn open_source(bpf: &Ebpf, options: &BufferOptions) -> Result<EventSource> {
    let events = bpf.map(EVENTS_MAP).ok_or_else(|| anyhow!("BPF object has no {EVENTS_MAP} map"))?;
    let fd = map_fd(events)?;
    let perf_pages = (options.size as usize / bpfstream::page_size()).max(1);
    let mut source = EventSource::open(fd, PerfOptions { pages_per_cpu: perf_pages, wakeup: options.perf_wakeup })?;
    source.expect_wakeups(options.ring_wakeup);
    let stats = bpf.map(STATS_MAP).ok_or_else(|| anyhow!("BPF object has no {STATS_MAP} map"))?;
    Ok(source.with_counters(DropCounters::new(map_fd(stats)?)?))
}

impl Tracer {
    /// Loads, attaches and opens the stream; then announces `Tracing...` on stderr.
    pub fn start(spec: &TracerSpec, options: &BufferOptions) -> Result<Self> {
        let (mut bpf, _) = load(spec, options)?;
        // Open the buffer before attaching: perf buffers must be in the map before the first
        // event, or those events would be dropped for want of a slot.
        let source = open_source(&bpf, options)?;
        attach(&mut bpf, spec)?;
        let tracer = Tracer { bpf, source, what: spec.what, size: options.size };
        eprintln_lossy!("Tracing {} via {}... Hit Ctrl-C to end.", tracer.what, tracer.describe_buffer());
        Ok(tracer)
    }

    /// `ring buffer (256 KiB)` or `perf buffer (256 KiB per CPU, 2 CPUs)`.
    pub fn describe_buffer(&self) -> String {
        match self.source.as_perf() {
            None => format!("ring buffer ({})", human_bytes(self.size)),
            Some(perf) => format!("perf buffer ({} per CPU, {} CPUs)", human_bytes(self.size), perf.cpus().len()),
        }
    }

    /// Takes one of the object's maps out of it (e.g. a tool's own counters), to read after
    /// [`run`](Self::run) has detached the programs.
    pub fn take_map(&mut self, name: &str) -> Result<Map> {
        self.bpf.take_map(name).ok_or_else(|| anyhow!("BPF object has no {name} map"))
    }

    /// Streams into `sink` until SIGINT/SIGTERM, the `duration`, or a failing sink (e.g. a
    /// closed stdout). Then detaches every program, drains the buffer into the sink and returns
    /// the accounting.
    pub fn run(mut self, duration: Option<Duration>, max_delay: Duration, sink: &mut dyn Sink) -> Result<Summary> {
        let started = Instant::now();
        let deadline = duration.map(|d| started + d);
        let mut failure: Option<io::Error> = None;
        // A reader gone before the first line (`| head -0`) ends the run at once, like a gone
        // reader later on: drain, account, detach.
        let reader_gone = match sink.header() {
            Err(e) if is_broken_pipe(&e) => true,
            Err(e) => return Err(anyhow!(e).context("writing the header")),
            Ok(()) => false,
        };
        if !reader_gone {
            let sink_cell = std::cell::RefCell::new(&mut *sink);
            let failure = &mut failure;
            let mut poller = Poller::new()?;
            let waker = poller.waker();
            let _signals = signals::wake_on_signal(waker.clone());
            let cell = &sink_cell;
            poller.add(&mut self.source, move |item: Item<'_>| {
                if failure.is_none() {
                    if let Err(e) = cell.borrow_mut().item(item) {
                        *failure = Some(e);
                        waker.wake();
                    }
                }
            })?;
            while !poller.is_stopped() {
                let timeout = match deadline {
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left.min(max_delay),
                        _ => break,
                    },
                    None => max_delay,
                };
                poller.poll(Some(timeout))?;
                if let Err(e) = sink_cell.borrow_mut().tick() {
                    if !is_broken_pipe(&e) {
                        return Err(e.into());
                    }
                    break;
                }
            }
        }
        let elapsed = started.elapsed();
        let buffer_bytes = self.source.buffer_bytes();
        let transport = self.source.transport();
        // Detach first, so nothing is produced while we drain and the counters settle.
        let Tracer { bpf, mut source, .. } = self;
        drop(bpf);
        let totals = source.finish(|item: Item<'_>| {
            if failure.is_none() {
                if let Err(e) = sink.item(item) {
                    failure = Some(e);
                }
            }
        })?;
        if failure.is_none() {
            failure = sink.tick().err();
        }
        if let Some(e) = failure {
            if !is_broken_pipe(&e) {
                return Err(anyhow!(e).context("writing events"));
            }
        }
        Ok(Summary {
            events: totals.delivered,
            dropped: totals.dropped,
            produced: totals.produced,
            bytes: totals.bytes,
            transport,
            buffer_bytes,
            elapsed,
            export: None,
        })
    }
}

pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// The accounting of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub events: u64,
    pub dropped: u64,
    pub produced: Option<u64>,
    pub bytes: u64,
    pub transport: Transport,
    pub buffer_bytes: u64,
    pub elapsed: Duration,
    /// With `--output`: the exporter's accounting after its final flush (export.rs).
    pub export: Option<crate::export::ExportSummary>,
}

impl Summary {
    /// Events the BPF side produced that are neither delivered nor reported dropped (always 0;
    /// anything else is a bug worth shouting about).
    pub fn unaccounted(&self) -> i128 {
        self.produced.map_or(0, |p| i128::from(p) - i128::from(self.events) - i128::from(self.dropped))
    }

    /// The summary object; tools add their own fields before writing it.
    pub fn json(&self) -> JsonLine {
        let secs = self.elapsed.as_secs_f64();
        let mut line = JsonLine::new("summary")
            .num("events", self.events)
            .num("dropped", self.dropped)
            .str("buffer", self.transport.name())
            .num("buffer_bytes", self.buffer_bytes);
        if let Some(p) = self.produced {
            line = line.num("produced", p);
        }
        if let Some(export) = &self.export {
            line = export.json(line);
        }
        line.num("bytes", self.bytes)
            .float("duration_s", secs)
            .float("events_per_sec", self.events as f64 / secs.max(1e-9))
    }

    /// One line for humans (stderr in table mode).
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} events, {} dropped in {:.1} s via {} buffer ({} mapped)",
            self.events,
            self.dropped,
            self.elapsed.as_secs_f64(),
            self.transport,
            human_bytes(self.buffer_bytes)
        );
        if let Some(p) = self.produced {
            s.push_str(&format!("; produced {p}"));
        }
        if let Some(export) = &self.export {
            s.push_str(&export.text());
        }
        s
    }

    /// Prints the summary (JSON on stdout, or text on stderr) plus a warning if the
    /// accounting does not add up.
    pub fn print(&self, json: bool, extend: impl FnOnce(JsonLine) -> JsonLine, extra_text: &str) -> Result<()> {
        use std::io::Write;
        if json {
            let mut out = io::stdout().lock();
            let written = extend(self.json()).write_to(&mut out).and_then(|()| out.flush());
            if let Err(e) = written {
                if !is_broken_pipe(&e) {
                    return Err(e.into());
                }
            }
        } else {
            eprintln_lossy!("{}{extra_text}", self.text());
        }
        if self.unaccounted() != 0 {
            eprintln_lossy!(
                "warning: {} events produced by the BPF side are neither delivered nor counted as dropped",
                self.unaccounted()
            );
        }
        let unexported = self.export.as_ref().map_or(0, |export| export.unaccounted(self.events));
        if unexported != 0 {
            eprintln_lossy!("warning: {unexported} delivered events are neither exported nor counted as export_failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakeup_policies_parse() {
        assert_eq!(parse_wakeup("adaptive"), Ok(Wakeup::Adaptive));
        assert_eq!(parse_wakeup("never"), Ok(Wakeup::Never));
        assert_eq!(parse_wakeup("records:500"), Ok(Wakeup::Records(500)));
        assert_eq!(parse_wakeup("bytes:64K"), Ok(Wakeup::Bytes(64 << 10)));
        for bad in ["sometimes", "records:0", "records:x", "bytes:", "pages:3"] {
            assert!(parse_wakeup(bad).is_err(), "{bad}");
        }
        assert_eq!(Wakeup::Records(7).ring(), WakeupPolicy::EveryRecords(7));
        assert_eq!(Wakeup::Never.perf(), None);
        assert_eq!(Wakeup::Bytes(9).perf(), Some(PerfWakeup::Bytes(9)));
    }
}
