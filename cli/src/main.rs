//! `bpfstream`: eBPF tracers, consumer benchmarks and buffer experiments on the bpfstream
//! library. See `bpfstream --help`.

/// `eprintln!` that never panics: when stderr has no reader any more (`2>&1 | head` after head
/// exits), the message is dropped instead of aborting a tracer in the middle of its drain.
macro_rules! eprintln_lossy {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`eprintln_lossy`]).
macro_rules! eprint_lossy {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod agent;
mod bench;
mod cgroup;
mod cgroup_paths;
mod container;
mod export;
mod histogram;
mod host;
mod lab;
mod lifecycle;
mod loss;
mod metrics;
mod names;
mod objects;
mod output;
mod plot;
mod privileges;
mod run;
mod signals;
mod size;
mod tools;
mod tracefs;
mod values;
mod writer;

use std::process::ExitCode;

/// jemalloc for every allocation of the process, librdkafka's included (its `malloc` and `free`
/// replace glibc's at link time). With `--output kafka://`, events are allocated on the exporter's
/// thread and freed on librdkafka's: glibc then finds its per-thread cache empty and takes the
/// arena's lock for nearly every allocation; jemalloc halves the tracer's CPU per exported event
/// (README, "Shipping events to Kafka or NATS JetStream").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

fn main() -> ExitCode {
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln_lossy!("bpfstream: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Tracers catch SIGINT/SIGTERM to detach, drain, print their summary (a second one ends
    // them at once). The bench and the lab keep the default action: Ctrl-C ends them at once, and the kernel frees every program,
    // link and map they made with the process (nothing is pinned).
    if matches!(cli.command, Command::Syscalls(_) | Command::Exec(_) | Command::Open(_) | Command::Run(_)) {
        signals::install()?;
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
