//! `bpfstream bench`: bpfstream's consumers against libbpf's and aya's on the workload of the
//! kernel's `selftests/bpf/benchs/bench_ringbufs.c`, all in one run.
//!
//! A BPF program on the getpgid tracepoint writes a batch of 500 8-byte records per call
//! (`producer.rs`); one producer thread calls getpgid in a loop on one CPU, one consumer thread
//! drains on another (`consumers.rs`, `libbpf.rs`). For every (consumer, mode) the object is
//! loaded afresh, the consumer opened, the producer attached; after a warm-up the rates and the
//! consumer thread's CPU time are taken over several windows and their medians reported
//! (`measure.rs`, `report.rs`). Every row ends with the accounting check
//! produced = consumed + dropped.

mod consumers;
mod libbpf;
mod measure;
mod perf_event;
mod producer;
mod report;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bpfstream::{Transport, WakeupPolicy};

use consumers::{ConsumerThread, Kind, Library, Options, PerfWake};
use libbpf::Libbpf;
use measure::{Snapshot, Window};
use producer::{Producer, Program, BATCH, RING_RECORD_BYTES};
use report::{Measured, Outcome, Row};

/// How the producer and consumer meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// Every record may wake the consumer: each library's default wakeups
    Parallel,
    /// The consumer is woken once per 500 records
    Sampled,
    /// A buffer (64 MiB) filled with no consumer running, then drained: the consumer's own cost
    Drain,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Parallel => "parallel",
            Mode::Sampled => "sampled",
            Mode::Drain => "drain",
        }
    }
}

pub const ALL_MODES: [Mode; 3] = [Mode::Parallel, Mode::Sampled, Mode::Drain];

/// Records per wakeup in `sampled` mode (the kernel bench's `--rb-sample-rate`).
const SAMPLE_RATE: u32 = 500;
/// Buffer of the streaming modes, as in the kernel bench: 512 KiB ring, 128 pages per CPU.
const STREAM_BUFFER: u64 = 512 << 10;
/// Measured windows per streaming row (the row's `--duration` is split between them).
const STREAM_WINDOWS: u32 = 5;
/// Measured fill-and-drain rounds per `drain` row, after one unmeasured round.
const DRAIN_WINDOWS: usize = 5;

/// `--drain-size`: a buffer size that holds at least one batch of perf records.
fn parse_drain_size(text: &str) -> Result<u64, String> {
    let bytes = crate::size::parse_buffer_size(text)?;
    if producer::calls_to_fill(Transport::Perf, bytes) == 0 {
        return Err(format!("{text} is too small for a drain: it must hold a batch of {BATCH} records (16K or more)"));
    }
    Ok(bytes)
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Measured seconds per consumer and mode, split into 5 windows after a warm-up of a quarter
    /// of it (drain rows instead fill and drain --drain-size 5 times, after an eighth as warm-up)
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = crate::size::parse_run_duration)]
    pub duration: Duration,
    /// JSON lines on stdout: one object per (consumer, mode), then one per target
    #[arg(long)]
    pub json: bool,
    /// Buffer that `drain` fills and drains (ring: total; perf: per CPU)
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_drain_size)]
    pub drain_size: u64,
    /// Only this consumer (repeatable): bpfstream-ring, libbpf-ring, aya-ring, bpfstream-perf,
    /// libbpf-perf, aya-perf
    #[arg(long, value_name = "NAME", value_parser = Kind::parse)]
    pub consumer: Vec<Kind>,
    /// Only this mode (repeatable)
    #[arg(long, value_enum)]
    pub mode: Vec<Mode>,
    /// Run every row this many times, in turn, and take the medians over the windows of all
    /// rounds: drift on a shared machine then hits every consumer alike
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Also draw the rates and the sampled rows' CPU per record as bar charts into this SVG file
    #[arg(long, value_name = "FILE.svg", value_parser = crate::plot::parse_svg_path)]
    pub plot: Option<PathBuf>,
    /// Exit 1 if a target's ratio falls past its floor (the goal less room for noise; ratios of
    /// rows of this run only): the regression guard of CI
    #[arg(long)]
    pub check: bool,
}

/// Everything one row is set up with.
#[derive(Debug, Clone, Copy)]
struct Setup {
    kind: Kind,
    mode: Mode,
    /// Ring: total bytes; perf: bytes per CPU.
    buffer_bytes: u64,
    options: Options,
}

impl Setup {
    fn new(kind: Kind, mode: Mode, drain_bytes: u64) -> Self {
        let buffer_bytes = if mode == Mode::Drain { drain_bytes } else { STREAM_BUFFER };
        let ring_wakeup = match mode {
            // The kernel bench's --rb-sampled: FORCE_WAKEUP once 500 records' bytes wait.
            Mode::Sampled => WakeupPolicy::Bytes(u64::from(SAMPLE_RATE) * RING_RECORD_BYTES),
            Mode::Parallel | Mode::Drain => WakeupPolicy::Adaptive,
        };
        let perf_wake = match mode {
            Mode::Parallel => PerfWake::LibraryDefault,
            Mode::Sampled => PerfWake::Events(SAMPLE_RATE),
            Mode::Drain => PerfWake::Fill(SAMPLE_RATE),
        };
        let perf_pages = (buffer_bytes / crate::host::page_size() as u64) as usize;
        let options = Options { ring_wakeup, perf_pages, perf_wake };
        Setup { kind, mode, buffer_bytes, options }
    }

    /// How the consumer is woken, in words.
    fn wakeup(&self) -> String {
        if self.mode == Mode::Drain {
            return match self.kind.transport {
                Transport::Ring => "none: drained after the fill".into(),
                Transport::Perf => format!("none: drained after the fill (fill: wakeup_events {SAMPLE_RATE})"),
            };
        }
        match (self.kind.transport, self.options.ring_wakeup, self.options.perf_wake, self.kind.library) {
            (Transport::Ring, WakeupPolicy::Bytes(n), _, _) => format!("FORCE_WAKEUP at {n} bytes, else NO_WAKEUP"),
            (Transport::Ring, _, _, _) => "flags 0 (kernel: wake when caught up)".into(),
            (Transport::Perf, _, PerfWake::LibraryDefault, Library::Aya) => {
                "wakeup_events 1 (aya's fixed setting)".into()
            }
            (Transport::Perf, _, PerfWake::Events(n) | PerfWake::Fill(n), _) => format!("wakeup_events {n}"),
            (Transport::Perf, _, PerfWake::LibraryDefault, Library::Libbpf) => {
                "wakeup_events 1 (libbpf default)".into()
            }
            (Transport::Perf, _, PerfWake::LibraryDefault, _) => {
                format!("watermark {} (default)", crate::size::human_bytes(self.buffer_bytes / 4))
            }
        }
    }

    fn note(&self) -> Option<String> {
        if self.kind.library != Library::Aya || self.kind.transport != Transport::Perf {
            return None;
        }
        match self.options.perf_wake {
            PerfWake::LibraryDefault => None,
            PerfWake::Events(_) | PerfWake::Fill(_) => Some(
                "written through a helper event redirected into aya's buffer (aya 0.14 cannot set wakeup_events)"
                    .into(),
            ),
        }
    }
}

/// The bench's fixed parts: the producer thread, the consumer's CPU and libbpf.
struct Bench {
    producer: Producer,
    consumer_cpu: u32,
    libbpf: Result<Arc<Libbpf>, String>,
    duration: Duration,
}

impl Bench {
    fn run(&self, setup: &Setup) -> Outcome {
        let libbpf = match (&self.libbpf, setup.kind.library) {
            (Err(why), Library::Libbpf) => return Outcome::Skipped(why.clone()),
            (Ok(l), Library::Libbpf) => Some(l.clone()),
            _ => None,
        };
        let result = match setup.mode {
            Mode::Drain => self.drain(setup, libbpf),
            Mode::Parallel | Mode::Sampled => self.stream(setup, libbpf),
        };
        match result {
            Ok(measured) => Outcome::Measured(measured),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    fn open(&self, setup: &Setup, libbpf: Option<Arc<Libbpf>>) -> Result<(Program, ConsumerThread)> {
        let mut program =
            Program::load(setup.kind.transport, setup.buffer_bytes, setup.options.ring_wakeup, self.producer.tid())?;
        let consumer = ConsumerThread::spawn(setup.kind, program.events()?, setup.options, libbpf, self.consumer_cpu)
            .with_context(|| format!("opening {}", setup.kind.name()))?;
        program.attach()?;
        Ok((program, consumer))
    }

    /// `parallel` / `sampled`: producer and consumer run together; rates over windows.
    fn stream(&self, setup: &Setup, libbpf: Option<Arc<Libbpf>>) -> Result<Measured> {
        let (mut program, mut consumer) = self.open(setup, libbpf)?;
        consumer.stream()?;
        self.producer.start()?;
        // Whatever happens while measuring, the producer stops before the row ends.
        let measured = self.windows(&mut program, &consumer);
        let stopped = self.producer.stop();
        program.detach();
        let (windows, memory) = measured?;
        stopped?;
        consumer.end_stream()?;
        let consumed = consumer.finish()?;
        finish(setup, program, consumed, &windows, memory)
    }

    /// Warm-up, then the measured windows; and the consumer's memory at their end.
    fn windows(&self, program: &mut Program, consumer: &ConsumerThread) -> Result<(Vec<Window>, measure::Memory)> {
        let snapshot = |program: &mut Program| -> Result<(Instant, Snapshot)> {
            let cpu_ns = consumer.cpu_ns()?;
            let consumed = consumer.consumed();
            let counters = program.counters()?;
            let snapshot = Snapshot { produced: counters.produced, consumed, dropped: counters.dropped, cpu_ns };
            Ok((Instant::now(), snapshot))
        };
        std::thread::sleep((self.duration / 4).max(Duration::from_millis(20)));
        let window = self.duration / STREAM_WINDOWS;
        let mut windows = Vec::new();
        let mut last = snapshot(program)?;
        for _ in 0..STREAM_WINDOWS {
            std::thread::sleep(window);
            let now = snapshot(program)?;
            windows.push(Window::between(&last.1, &now.1, now.0 - last.0));
            last = now;
        }
        Ok((windows, measure::buffer_memory()?))
    }

    /// `drain`: fill the buffer with no consumer running, then time the consumer draining it.
    /// An eighth of a fill and its drain warm up first.
    fn drain(&self, setup: &Setup, libbpf: Option<Arc<Libbpf>>) -> Result<Measured> {
        let (mut program, mut consumer) = self.open(setup, libbpf)?;
        let full = producer::calls_to_fill(setup.kind.transport, setup.buffer_bytes);
        // Rings only: the drain target compares ring consumers, and memory speed bounds it.
        let plain_read = (setup.kind.transport == Transport::Ring)
            .then_some((setup.buffer_bytes as usize, RING_RECORD_BYTES as usize));
        let mut windows = Vec::new();
        let mut consumed = 0;
        for round in 0..=DRAIN_WINDOWS {
            let calls = if round == 0 { (full / 8).max(1) } else { full };
            let before = program.counters()?;
            let fill_started = Instant::now();
            self.producer.call(calls)?;
            let fill = fill_started.elapsed();
            let after = program.counters()?;
            let dropped = after.dropped - before.dropped;
            let records = after.produced - before.produced - dropped;
            let drained = consumer.drain(consumed + records, plain_read)?;
            consumed += records;
            if round > 0 {
                let (wall, cpu_ns) = (drained.wall, drained.cpu_ns);
                let secs = wall.as_secs_f64().max(1e-9);
                windows.push(Window {
                    produced_per_sec: (after.produced - before.produced) as f64 / fill.as_secs_f64().max(1e-9),
                    consumed_per_sec: records as f64 / secs,
                    dropped_per_sec: dropped as f64 / secs,
                    cpu_ns_per_event: cpu_ns as f64 / records.max(1) as f64,
                    plain_read_per_sec: drained.plain_read_per_sec.unwrap_or(f64::NAN),
                });
            }
        }
        let memory = measure::buffer_memory()?;
        program.detach();
        let consumed = consumer.finish()?;
        finish(setup, program, consumed, &windows, memory)
    }
}

/// The row's medians and its accounting, read after the producer is detached.
fn finish(
    setup: &Setup,
    mut program: Program,
    consumed: u64,
    windows: &[Window],
    memory: measure::Memory,
) -> Result<Measured> {
    let totals = program.counters()?;
    let medians = measure::medians(windows).context("no window was measured")?;
    Ok(Measured {
        medians,
        windows: windows.to_vec(),
        memory,
        produced: totals.produced,
        consumed,
        dropped: totals.dropped,
        forced_wakeups: totals.forced_wakeups,
        buffer_bytes: setup.buffer_bytes,
        note: setup.note(),
    })
}

/// The (consumer, mode) pairs to run, in table order: modes, then consumers.
fn plan(args: &BenchArgs) -> Vec<Setup> {
    let modes: Vec<Mode> = ALL_MODES.into_iter().filter(|m| args.mode.is_empty() || args.mode.contains(m)).collect();
    let kinds: Vec<Kind> =
        consumers::ALL.into_iter().filter(|k| args.consumer.is_empty() || args.consumer.contains(k)).collect();
    let drain = args.drain_size;
    modes.iter().flat_map(|&mode| kinds.iter().map(move |&kind| Setup::new(kind, mode, drain))).collect()
}

/// Runs the bench; progress on stderr, results on stdout.
pub fn run(args: BenchArgs) -> Result<()> {
    let setups = plan(&args);
    let online = crate::host::online_cpus()?;
    let (producer_cpu, consumer_cpu) = measure::choose_cpus(&online);
    let producer = Producer::spawn(producer_cpu)?;
    let libbpf = Libbpf::load().map_err(|e| format!("{e:#}"));
    let bench = Bench { producer, consumer_cpu, libbpf, duration: args.duration };

    eprintln_lossy!(
        "Benchmarking {} rows{}: producer thread on CPU {producer_cpu}, consumer on CPU {consumer_cpu}{}; \
         {BATCH} 8-byte records per getpgid(); {:.2} s measured per row in {STREAM_WINDOWS} windows \
         (drain: {DRAIN_WINDOWS} fills of {})",
        setups.len(),
        if args.rounds > 1 { format!(" x {} rounds, in turn", args.rounds) } else { String::new() },
        if producer_cpu == consumer_cpu { " (one CPU: they compete)" } else { "" },
        args.duration.as_secs_f64(),
        crate::size::human_bytes(args.drain_size),
    );
    if let Err(why) = &bench.libbpf {
        eprintln_lossy!("Notice: libbpf rows are skipped: {why}");
    }
    let mut outcomes: Vec<Option<Outcome>> = setups.iter().map(|_| None).collect();
    let total = setups.len() * args.rounds as usize;
    for round in 0..args.rounds as usize {
        for (i, setup) in setups.iter().enumerate() {
            let n = round * setups.len() + i + 1;
            eprint_lossy!("[{n:>2}/{total}] {:<15} {:<8} ", setup.kind.name(), setup.mode.name());
            let outcome = bench.run(setup);
            eprintln_lossy!("{}", progress_result(&outcome));
            outcomes[i] = Some(match outcomes[i].take() {
                None => outcome,
                Some(before) => before.merge(outcome),
            });
        }
    }
    let rows: Vec<Row> = setups
        .iter()
        .zip(outcomes)
        .filter_map(|(setup, outcome)| {
            Some(Row { consumer: setup.kind.name(), mode: setup.mode, wakeup: setup.wakeup(), outcome: outcome? })
        })
        .collect();

    let targets = report::targets(&rows);
    print(&rows, &targets, args.json)?;
    if let Some(path) = &args.plot {
        report::figure(&rows, path)?;
        eprintln_lossy!("figure written to {}", path.display());
    }
    let failed = rows.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count();
    let unaccounted = rows.iter().filter_map(Row::measured).filter(|m| m.unaccounted() != 0).count();
    if unaccounted > 0 {
        eprintln_lossy!("error: {unaccounted} rows do not account for every record (produced != consumed + dropped)");
    }
    if failed > 0 {
        eprintln_lossy!("error: {failed} rows failed (see their error)");
    }
    if failed + unaccounted > 0 {
        anyhow::bail!("the bench did not complete cleanly");
    }
    if args.check {
        check(&targets)?;
    }
    Ok(())
}

/// `--check`: every target with a floor was computed and holds it.
fn check(targets: &[report::Target]) -> Result<()> {
    let failures: Vec<String> = targets.iter().filter_map(report::Target::below_floor).collect();
    for failure in &failures {
        eprintln_lossy!("check failed: {failure}");
    }
    let checked = targets.iter().filter(|t| t.floor.is_some()).count();
    if checked == 0 {
        anyhow::bail!("--check: no target with a floor was computed; run the drain and sampled modes of bpfstream-ring, libbpf-ring, bpfstream-perf and libbpf-perf");
    }
    if !failures.is_empty() {
        anyhow::bail!("{} of {checked} checked ratios fell past their floors", failures.len());
    }
    eprintln_lossy!("check passed: {checked} ratios hold their floors");
    Ok(())
}

fn progress_result(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Measured(m) => format!(
            "{}/s consumed, {}/s dropped",
            report::rate(m.medians.consumed_per_sec),
            report::rate(m.medians.dropped_per_sec)
        ),
        Outcome::Skipped(_) => "skipped".into(),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    }
}

fn print(rows: &[Row], targets: &[report::Target], json: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    let written = (|| -> io::Result<()> {
        if json {
            for row in rows {
                row.json().write_to(&mut out)?;
            }
            for target in targets {
                target.json().write_to(&mut out)?;
            }
        } else {
            writeln!(out, "{}", report::table_header())?;
            for row in rows {
                writeln!(out, "{}", row.table_line())?;
            }
            writeln!(out, "\n{}", report::TABLE_NOTES)?;
            if !targets.is_empty() {
                writeln!(out, "\nTargets (ratios of rows of this run):")?;
                for target in targets {
                    writeln!(out, "  {}", target.text())?;
                }
            }
        }
        out.flush()
    })();
    match written {
        Err(e) if !crate::output::is_broken_pipe(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn arguments() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.duration, args.json, args.drain_size), (Duration::from_secs(1), false, 64 << 20));
        assert_eq!(plan(&args).len(), 18, "6 consumers x 3 modes by default");

        let args =
            parse(&["--duration", "0.2", "--json", "--consumer", "aya-ring", "--mode", "drain", "--drain-size", "1M"])
                .unwrap();
        assert_eq!((args.duration, args.json), (Duration::from_millis(200), true));
        let setups = plan(&args);
        assert_eq!(setups.len(), 1);
        assert_eq!((setups[0].kind.name(), setups[0].mode, setups[0].buffer_bytes), ("aya-ring", Mode::Drain, 1 << 20));
        let two = parse(&["--consumer", "aya-ring", "--consumer", "libbpf-perf", "--mode", "sampled"]).unwrap();
        let names: Vec<_> = plan(&two).iter().map(|s| s.kind.name()).collect();
        assert_eq!(names, ["aya-ring", "libbpf-perf"], "table order, whatever the order given");

        for bad in [
            &["--duration", "0"][..],
            &["--duration", "soon"],
            &["--consumer", "bcc"],
            &["--mode", "burst"],
            &["--drain-size", "8K"],
            &["--rounds", "0"],
            &["--drain-size", "3M"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn without_libbpf_its_rows_are_skipped_with_the_reason() {
        let cpu = crate::host::online_cpus().unwrap()[0];
        let bench = Bench {
            producer: Producer::spawn(cpu).unwrap(),
            consumer_cpu: cpu,
            libbpf: Err("libbpf.so.1 not found (...); install it (Debian: apt-get install libbpf1)".into()),
            duration: Duration::from_millis(10),
        };
        for name in ["libbpf-ring", "libbpf-perf"] {
            let outcome = bench.run(&Setup::new(Kind::parse(name).unwrap(), Mode::Sampled, 64 << 20));
            assert!(
                matches!(&outcome, Outcome::Skipped(why) if why.contains("apt-get install libbpf1")),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn rows_are_set_up_as_the_issue_says() {
        let libbpf_perf = Kind::parse("libbpf-perf").unwrap();
        let ours_perf = Kind::parse("bpfstream-perf").unwrap();
        let ours_ring = Kind::parse("bpfstream-ring").unwrap();
        let aya_perf = Kind::parse("aya-perf").unwrap();

        let setup = |kind, mode| Setup::new(kind, mode, 64 << 20);
        let sampled = setup(ours_ring, Mode::Sampled);
        assert_eq!(sampled.options.ring_wakeup, WakeupPolicy::Bytes(8000), "500 records of 16 bytes");
        assert_eq!(sampled.buffer_bytes, 512 << 10);
        assert_eq!(setup(ours_ring, Mode::Parallel).options.ring_wakeup, WakeupPolicy::Adaptive);

        let drain = setup(libbpf_perf, Mode::Drain);
        assert_eq!((drain.buffer_bytes, drain.options.perf_pages), (64 << 20, (64 << 20) / crate::host::page_size()));

        assert_eq!(setup(libbpf_perf, Mode::Sampled).options.perf_wake, PerfWake::Events(500));
        assert_eq!(setup(libbpf_perf, Mode::Parallel).wakeup(), "wakeup_events 1 (libbpf default)");
        assert_eq!(setup(ours_perf, Mode::Parallel).wakeup(), "watermark 128 KiB (default)");
        assert!(setup(aya_perf, Mode::Sampled).note().unwrap().contains("aya"));
        assert_eq!(setup(ours_perf, Mode::Sampled).note(), None);
    }
}
