//! What `--output` costs and how fast it goes: `bpfstream syscalls --pid P --json --output URL`
//! traces a syscall storm of a known size (paced near 200,000 syscalls/s, then unpaced) into a
//! JetStream stream (nats-server) or a Kafka topic (tansu) on loopback. For each: the storm's
//! rate, the rate of events acknowledged end to end (from the storm's start until the tracer
//! exited after its final flush), export_failed and kernel drops, and the CPU time per exported
//! event of the tracer (all its threads, from wait4's rusage) and of the engine.
//!
//! `sudo cargo bench --bench export` (root: it loads BPF programs; needs `nats-server` and/or
//! `tansu` on PATH: an engine that is missing is skipped with a notice). Environment:
//! BPFSTREAM_BENCH_WINDOW (seconds of storm per row, default 5), BPFSTREAM_BENCH_ROUNDS (rows
//! per configuration, default 3; medians are shown), BPFSTREAM_BENCH_OPTIONS (`--output-option`s
//! for every row, separated by spaces, e.g. `in_flight=65536 linger.ms=10`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{Engine, KafkaServer, NatsServer};
use common::workload::{Step, Workload};

/// One row's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    storm_per_sec: f64,
    exported_per_sec: f64,
    export_failed: f64,
    /// Of export_failed: what did not fit the exporter's queue.
    queue_full: f64,
    dropped: f64,
    tracer_ns_per_event: f64,
    engine_ns_per_event: f64,
    flush_ms: f64,
}

/// A storm of `total` getppid calls in blocks of 1000, with `pause` after each block.
fn storm(total: u32, pause: Option<Duration>) -> Vec<Step> {
    (0..total / 1000).flat_map(|_| [Some(Step::Getppid(1000)), pause.map(Step::Sleep)]).flatten().collect()
}

fn cpu_ns(usage: &libc::rusage) -> f64 {
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e9 + tv.tv_usec as f64 * 1e3;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Runs the tracer over one storm and returns its figures.
fn measure(engine: &dyn Engine, topic: &str, steps: Vec<Step>, scratch: &std::path::Path) -> Result<Row, String> {
    let child = Workload::spawn("bpfs-xstorm", None, steps);
    let pid = child.pid().to_string();
    let out = scratch.join("out.json");
    let options = std::env::var("BPFSTREAM_BENCH_OPTIONS").unwrap_or_default();
    let mut tracer = Command::new(common::bin())
        .args(["syscalls", "--json", "--pid", &pid, "--buffer-size", "16M", "--output", &engine.url(topic)])
        // The final flush may take what it needs (it shares the stop's 1 s by default).
        .args(["flush_timeout=60s"].into_iter().chain(options.split_whitespace()).flat_map(|o| ["--output-option", o]))
        .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    common::wait_for_tracing(&mut tracer)?;
    let engine_cpu0 = engine.cpu_ns();
    let started = Instant::now();
    child.go();
    let storm_secs = started.elapsed().as_secs_f64();
    let stopping = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaping our own child, with pointers to live locals.
    let reaped = unsafe { libc::wait4(tracer.id() as i32, &mut status, 0, &mut usage) };
    let (flush, total) = (stopping.elapsed().as_secs_f64(), started.elapsed().as_secs_f64());
    let engine_cpu = engine.cpu_ns() - engine_cpu0;
    if reaped <= 0 || status != 0 {
        return Err(format!("the tracer failed (status {status:#x})"));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    let summary: serde_json::Value =
        serde_json::from_str(text.lines().last().ok_or("no output")?).map_err(|e| e.to_string())?;
    let n = |key: &str| summary[key].as_f64().unwrap_or(f64::NAN);
    let exported = n("exported");
    Ok(Row {
        storm_per_sec: n("produced") / storm_secs,
        exported_per_sec: exported / total,
        export_failed: n("export_failed"),
        queue_full: n("export_queue_full"),
        dropped: n("dropped"),
        tracer_ns_per_event: cpu_ns(&usage) / exported,
        engine_ns_per_event: engine_cpu / exported,
        flush_ms: flush * 1e3,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench export: skipped, it loads BPF programs: run as root (sudo cargo bench --bench export)");
        return;
    }
    let env = |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let window = env("BPFSTREAM_BENCH_WINDOW", 5.0);
    let rounds = env("BPFSTREAM_BENCH_ROUNDS", 3.0) as usize;
    let total = ((200_000.0 * window) as u32).max(1000);
    let scratch = common::temp_dir("bench-export");
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    if let Some(nats) = NatsServer::start() {
        engines.push(Box::new(nats));
    }
    if let Some(kafka) = KafkaServer::start() {
        engines.push(Box::new(kafka));
    }
    println!(
        "| engine | storm | syscalls/s | exported/s end to end | export_failed | of which queue_full | dropped | tracer CPU ns/event | engine CPU ns/event | final flush ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for engine in &engines {
        for (name, pause) in [("paced 200k/s", Some(Duration::from_millis(4))), ("unpaced", None)] {
            let mut rows = Vec::new();
            for round in 0..rounds {
                let topic = engine.prepare(&format!("bench{round}{}", name.len()));
                match measure(engine.as_ref(), &topic, storm(total, pause), &scratch) {
                    Ok(row) => rows.push(row),
                    Err(e) => eprintln!("bench export: {} {name}: {e}", engine.name()),
                }
            }
            let m = |f: fn(&Row) -> f64| median(rows.iter().map(f));
            println!(
                "| {} | {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                engine.name(),
                m(|r| r.storm_per_sec),
                m(|r| r.exported_per_sec),
                m(|r| r.export_failed),
                m(|r| r.queue_full),
                m(|r| r.dropped),
                m(|r| r.tracer_ns_per_event),
                m(|r| r.engine_ns_per_event),
                m(|r| r.flush_ms),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
