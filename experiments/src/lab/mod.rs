//! `bpfstream lab`: the chapter's exercises as experiments anyone can rerun. Each drives a
//! library policy with a deterministic load (the lab's own threads trigger BPF programs filtered
//! to this process), prints a table whose every row accounts for every event, and draws a
//! figure.

mod backpressure;
mod batching;
mod compare;
mod degrade;
mod load;
mod multi_ring;
mod report;
mod sizing;

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use report::LabReport;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    experiment: Option<Experiment>,
    #[command(flatten)]
    all: AllArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Experiment {
    /// Loss against buffer size for a fixed bursty load, ring and perf (exercise 1)
    Sizing(LabOptions),
    /// The same load on both transports over all CPUs: memory, ordering, speed (exercise 2)
    Compare(LabOptions),
    /// Kernel-side batching with wakeup policies and a guaranteed delay bound (exercise 6)
    Batching(LabOptions),
    /// Overrun the consumer, with and without graceful degradation (exercise 3)
    Backpressure(LabOptions),
    /// A critical and a bulk ring served by priority under a bulk flood (exercise 5)
    MultiRing(LabOptions),
    /// Every experiment, briefly, into a Markdown report with its figures (also: `lab` alone)
    All(AllArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct LabOptions {
    /// JSON lines on stdout: one object per row, then the notes
    #[arg(long)]
    json: bool,
    /// Draw the experiment's figure into this SVG file
    #[arg(long, value_name = "FILE.svg", value_parser = crate::plot::parse_svg_path)]
    plot: Option<PathBuf>,
    /// Total run time of the experiment (default: the experiment's own, under a minute)
    #[arg(long, value_name = "SECS", value_parser = crate::size::parse_run_duration)]
    duration: Option<Duration>,
}

#[derive(Debug, Clone, clap::Args)]
struct AllArgs {
    /// Directory for the report (README.md and one SVG per experiment)
    #[arg(long, value_name = "DIR", default_value = "lab-report")]
    out: PathBuf,
    /// Run time of each experiment (default: a short run of each)
    #[arg(long, value_name = "SECS", value_parser = crate::size::parse_run_duration)]
    duration: Option<Duration>,
    /// Print every experiment's rows as JSON lines on stdout (default: tables)
    #[arg(long)]
    json: bool,
}

/// An experiment: its name, default run time, brief run time (for `lab all`) and body.
struct Lab {
    name: &'static str,
    default: Duration,
    brief: Duration,
    run: fn(Duration, &mut Progress) -> Result<LabReport>,
}

/// When a lab's final drain must be done ([`bpfstream::EventSource::finish`]): its programs are
/// detached just before, so the drain takes milliseconds; the bound only keeps a stuck one short.
fn finish_deadline() -> Instant {
    Instant::now() + Duration::from_secs(2)
}

const LABS: [Lab; 5] = [
    Lab { name: "sizing", default: Duration::from_secs(12), brief: Duration::from_secs(4), run: sizing::run },
    Lab { name: "compare", default: Duration::from_secs(9), brief: Duration::from_secs(3), run: compare::run },
    Lab { name: "batching", default: Duration::from_secs(15), brief: Duration::from_secs(5), run: batching::run },
    Lab {
        name: "backpressure",
        default: Duration::from_secs(16),
        brief: Duration::from_secs(6),
        run: backpressure::run,
    },
    Lab { name: "multi-ring", default: Duration::from_secs(10), brief: Duration::from_secs(4), run: multi_ring::run },
];

fn lab(name: &str) -> &'static Lab {
    LABS.iter().find(|l| l.name == name).expect("known lab")
}

pub fn run(args: LabArgs) -> Result<()> {
    let (name, options) = match args.experiment {
        None => return run_all(&args.all),
        Some(Experiment::All(all)) => return run_all(&all),
        Some(Experiment::Sizing(o)) => ("sizing", o),
        Some(Experiment::Compare(o)) => ("compare", o),
        Some(Experiment::Batching(o)) => ("batching", o),
        Some(Experiment::Backpressure(o)) => ("backpressure", o),
        Some(Experiment::MultiRing(o)) => ("multi-ring", o),
    };
    let lab = lab(name);
    let duration = options.duration.unwrap_or(lab.default);
    let mut progress = Progress::new(lab.name, duration);
    let report = (lab.run)(duration, &mut progress)?;
    progress.finish();
    report.print(options.json)?;
    if let Some(path) = &options.plot {
        (report.figure)(path)?;
        eprintln_lossy!("figure written to {}", path.display());
    }
    check_accounting(&[report])
}

fn run_all(args: &AllArgs) -> Result<()> {
    let started = Instant::now();
    let mut reports = Vec::new();
    for lab in &LABS {
        let duration = args.duration.unwrap_or(lab.brief);
        let mut progress = Progress::new(lab.name, duration);
        let report = (lab.run)(duration, &mut progress)?;
        progress.finish();
        report.print(args.json)?;
        if !args.json {
            writeln!(io::stdout())?;
        }
        reports.push(report);
    }
    let cpus = load::cpus()?;
    let intro = format!(
        "Generated by `bpfstream lab all` in {:.0} s on Linux {} with {} online CPUs. Every row accounts for \
         every event: produced = delivered + dropped (+ summarized). Runs were short; rerun one experiment \
         with `bpfstream lab <name> --duration SECS` for steadier numbers.",
        started.elapsed().as_secs_f64(),
        kernel_release(),
        cpus.all
    );
    report::write_report(&args.out, &reports, &intro)?;
    eprintln_lossy!("report written to {}", args.out.join("README.md").display());
    check_accounting(&reports)
}

fn check_accounting(reports: &[LabReport]) -> Result<()> {
    let bad: Vec<String> = reports.iter().flat_map(LabReport::unbalanced).collect();
    if !bad.is_empty() {
        bail!("accounting does not add up (a bug; please report it):\n  {}", bad.join("\n  "));
    }
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A progress bar on stderr (drawn only on a terminal) over an experiment's planned run time.
pub struct Progress {
    bar: ProgressBar,
    total_ms: u64,
    base_ms: u64,
    planned_ms: u64,
    started: Instant,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("total_ms", &self.total_ms).finish()
    }
}

impl Progress {
    fn new(name: &str, total: Duration) -> Self {
        let total_ms = total.as_millis() as u64;
        let bar = ProgressBar::new(total_ms.max(1));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:32}] {percent:>3}% {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Progress { bar, total_ms, base_ms: 0, planned_ms: 0, started: Instant::now() }
    }

    /// Starts the next run of an experiment (`planned` of its total time).
    pub fn run(&mut self, label: impl Into<String>, planned: Duration) {
        self.base_ms += self.planned_ms;
        self.planned_ms = planned.as_millis() as u64;
        self.started = Instant::now();
        self.bar.set_message(label.into());
        self.bar.set_position(self.base_ms.min(self.total_ms));
    }

    /// Updates the bar from the time spent in the current run.
    pub fn tick(&self) {
        let done = (self.started.elapsed().as_millis() as u64).min(self.planned_ms);
        self.bar.set_position((self.base_ms + done).min(self.total_ms));
    }

    fn finish(self) {
        self.bar.finish_and_clear();
    }
}
