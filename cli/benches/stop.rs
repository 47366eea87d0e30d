//! How long a stop takes when stdout is blocked: `bpfstream syscalls --name bpfs-storm` traces a
//! storm (two dd copying a byte at a time, one per CPU) with its stdout a pipe that nobody
//! reads; 500 ms after its `Tracing` line (the pipe is full by then, and more waits behind it) it
//! gets SIGTERM, and the time from the signal to its exit (waitpid) is the stop. Each run must
//! exit 0. Prints the distribution per transport (ring, perf) and how many stops took more than
//! the 1 s the contract promises.
//!
//! `sudo cargo bench --bench stop` (root: it loads BPF programs). Environment:
//! BPFSTREAM_BENCH_RUNS (stops per transport, default 50), BPFSTREAM_BENCH_ARGS (more tracer
//! options, separated by spaces, e.g. `--json`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::storm::{Storm, STORM_COMM};

/// The promise of the contract.
const STOP_BOUND: Duration = Duration::from_secs(1);

/// One stop: the time from SIGTERM to the exit.
fn stop_once(transport: &str, extra: &[String]) -> Result<Duration, String> {
    let (read, write) = common::pipe();
    let mut tracer = Command::new(common::bin())
        .args(["syscalls", "--buffer", transport, "--name", STORM_COMM])
        .args(extra)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    common::wait_for_tracing(&mut tracer)?;
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGTERM) };
    let status = tracer.wait().map_err(|e| e.to_string())?;
    let stop = stopping.elapsed();
    // Kept open until the exit: a pipe nobody reads, never a closed one.
    drop(read);
    match status.code() {
        Some(0) => Ok(stop),
        _ => Err(format!("the tracer ended with {status}")),
    }
}

/// The value at quantile `q` (0 to 1) of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench stop: skipped, it loads BPF programs: run as root (sudo cargo bench --bench stop)");
        return;
    }
    let runs: usize = std::env::var("BPFSTREAM_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let extra: Vec<String> =
        std::env::var("BPFSTREAM_BENCH_ARGS").unwrap_or_default().split_whitespace().map(String::from).collect();
    let _storm = Storm::start();
    println!("| transport | stops | min | median | p90 | max | over 1 s |");
    println!("|---|---|---|---|---|---|---|");
    for transport in ["ring", "perf"] {
        let mut stops = Vec::with_capacity(runs);
        for run in 0..runs {
            match stop_once(transport, &extra) {
                Ok(stop) => stops.push(stop),
                Err(e) => eprintln!("bench stop: {transport} run {run}: {e}"),
            }
        }
        stops.sort();
        if stops.is_empty() {
            continue;
        }
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        let over = stops.iter().filter(|&&s| s > STOP_BOUND).count();
        println!(
            "| {transport} | {} | {} | {} | {} | {} | {over} |",
            stops.len(),
            ms(stops[0]),
            ms(quantile(&stops, 0.5)),
            ms(quantile(&stops, 0.9)),
            ms(stops[stops.len() - 1]),
        );
        let all: Vec<String> = stops.iter().map(|&s| format!("{:.0}", s.as_secs_f64() * 1e3)).collect();
        eprintln!("bench stop: {transport}, every stop in ms: {}", all.join(" "));
    }
}
