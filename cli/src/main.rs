//! `bpfstream`: eBPF tracers, `run` of any BPF object, and the agent, on the bpfstream library;
//! the experiments (`bench`, `lab`) come from `bpfstream-experiments`, and what both stand on
//! from `bpfstream-core`. See `bpfstream --help`.

// `eprintln_lossy!`, `eprint_lossy!`: stderr that never panics.
#[macro_use]
extern crate bpfstream_core;

mod agent;
mod allocator;
mod cgroup;
mod cgroup_paths;
mod container;
mod export;
mod histogram;
mod lifecycle;
mod loss;
mod metrics;
mod names;
mod run;
mod stopped;
mod tools;
mod writer;

// Shared with the experiments; reached from here as `crate::signals`, `crate::output`, ...
use bpfstream_core::{counters, host, limits, objects, output, privileges, signals, size, tracefs, values};
use bpfstream_experiments::{bench, lab};

use std::process::ExitCode;

/// jemalloc, which ends the process with one line when an allocation fails (allocator.rs).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bpfstream",
    version,
    about = "Stream kernel events through BPF ring and perf buffers, with nothing lost unaccounted"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trace syscalls with their latency, or summarize them (--summary)
    Syscalls(tools::syscalls::SyscallsArgs),
    /// Trace exec() calls, failed ones too: pid, ppid, uid, comm, ret, the whole filename and argv
    Exec(tools::exec::ExecArgs),
    /// Trace open/openat/openat2: pid, comm, fd or error, flags and the whole filename
    Open(tools::open::OpenArgs),
    /// Benchmark bpfstream's ring and perf consumers against libbpf's and aya's
    Bench(bench::BenchArgs),
    /// The chapter's exercises as experiments: sizing, compare, batching, backpressure,
    /// multi-ring (or all of them into a report)
    Lab(lab::LabArgs),
    /// Run any BPF object (CO-RE, with BTF) and stream its events, decoded from its BTF
    Run(run::RunArgs),
    /// Many streams in one process from a TOML file: one exporter, Prometheus metrics, container
    /// identity (--check FILE validates a file)
    Agent(agent::AgentArgs),
}

impl Command {
    /// The options of a tracer (`None`: not a tracer).
    fn tracer(&self) -> Option<&lifecycle::CommonArgs> {
        match self {
            Command::Syscalls(args) => Some(&args.common),
            Command::Exec(args) => Some(&args.common),
            Command::Open(args) => Some(&args.common),
            Command::Run(args) => Some(&args.common),
            Command::Bench(_) | Command::Lab(_) | Command::Agent(_) => None,
        }
    }
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    // First: a stop signal at any later point of the start is then honoured (see signals.rs).
    if let Err(e) = signals::install(signals::TRACER_STOPS) {
        eprintln_lossy!("bpfstream: {e:#}");
        return ExitCode::from(1);
    }
    allocator::reserve_stack();
    let cli = Cli::parse();
    // Checking a config or describing an object reads files: no privilege needed.
    let checks_only = match &cli.command {
        Command::Agent(args) => args.only_checks(),
        Command::Run(args) => args.describe,
        _ => false,
    };
    if let Err(missing) = privileges::check().or_else(|e| if checks_only { Ok(()) } else { Err(e) }) {
        eprintln_lossy!("bpfstream: {missing}");
        return ExitCode::from(1);
    }
    let tracer = cli.command.tracer().cloned();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match (e.downcast_ref::<signals::StoppedAtStart>(), &tracer) {
            (Some(stopped), Some(args)) => {
                stopped::print_summary(args, &stopped.during, started.elapsed());
                ExitCode::SUCCESS
            }
            _ => {
                eprintln_lossy!("bpfstream: {}", limits::explain(&e));
                ExitCode::from(1)
            }
        },
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        // Tracers stop on SIGINT/SIGTERM/SIGHUP (detach, drain, summary; a second one ends them
        // at once) and print the summary so far on SIGUSR1. Their output threads start before
        // anything else, so that one that cannot start fails the run before it attaches.
        command if command.tracer().is_some() => writer::start()?,
        // The agent stops on SIGINT/SIGTERM; SIGHUP is its reload, recorded for it to take
        // (signals::take(Signal::Hangup)).
        Command::Agent(_) => signals::install(&[signals::Signal::Interrupt, signals::Signal::Terminate])?,
        // The bench and the lab keep the default actions: Ctrl-C ends them at once, and the
        // kernel frees every program, link and map they made with the process (nothing is
        // pinned).
        _ => signals::restore_default()?,
    }
    match cli.command {
        Command::Syscalls(args) => tools::syscalls::run(args),
        Command::Exec(args) => tools::exec::run(args),
        Command::Open(args) => tools::open::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Lab(args) => lab::run(args),
        Command::Run(args) => run::run(args),
        Command::Agent(args) => agent::run(args),
    }
}
