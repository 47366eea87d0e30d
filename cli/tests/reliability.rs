//! The tracers as an SRE runs them, as real processes against the real kernel: stopped by
//! signals in the middle of a storm, exact to the last event every time; a stop that ends
//! whatever stdout does (blocked, slow, closed, full) with what could not be written counted;
//! a second Ctrl-C that ends the process at once; nothing left loaded.
//!
//! No test asserts a duration: a stop that hung would hit the 60 s guard of the helpers.

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::storm::{Storm, STORM_COMM};
use common::*;

/// The numbers of a text summary line: `N events, N dropped[, N unwritten (...)] in ... ;
/// produced N`.
#[derive(Debug, Clone, Copy)]
struct Accounting {
    events: u64,
    dropped: u64,
    unwritten: u64,
    produced: u64,
}

fn number_before(text: &str, word: &str) -> Option<u64> {
    let end = text.find(word)?;
    let start = text[..end].trim_end().rfind([' ', ',', ';']).map_or(0, |i| i + 1);
    text[start..end].trim().parse().ok()
}

/// The accounting of the summary on stderr: a JSON object (a `--json` run whose stdout could
/// not take it), or the text line.
fn accounting(stderr: &str) -> Accounting {
    if let Some(object) = stderr.lines().find(|l| l.starts_with("{\"type\":\"summary\"")) {
        let summary: serde_json::Value = serde_json::from_str(object).unwrap();
        let n = |key: &str| summary[key].as_u64().unwrap_or_else(|| panic!("{key} in {summary}"));
        assert_eq!(summary["unaccounted"], 0, "{summary}");
        return Accounting {
            events: n("events"),
            dropped: n("dropped"),
            unwritten: n("unwritten"),
            produced: n("produced"),
        };
    }
    let line = stderr
        .lines()
        .find(|l| l.contains(" events, ") && l.contains("produced"))
        .unwrap_or_else(|| panic!("no summary on stderr:\n{stderr}"));
    let produced = line.rsplit("produced ").next().and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next());
    Accounting {
        events: number_before(line, " events").unwrap(),
        dropped: number_before(line, " dropped").unwrap(),
        unwritten: number_before(line, " unwritten").unwrap_or(0),
        produced: produced.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no produced: {line}")),
    }
}

/// Asserts events + dropped + unwritten = produced and no `unaccounted` warning.
fn assert_exact(finished: &Finished) -> Accounting {
    let a = accounting(&finished.stderr);
    assert!(!finished.stderr.contains("(unaccounted)"), "{}", finished.stderr);
    assert_eq!(a.events + a.dropped + a.unwritten, a.produced, "{a:?}\n{}", finished.stderr);
    a
}

const TRACER_OBJECTS: &[&str] = &["syscall_enter", "syscall_exit", "events", "bpfstream_stats", "starts", "untracked"];

/// Starts `bpfstream args...` with `stdout`, after its `Tracing` line.
fn start_to(args: &[&str], stdout: impl Into<Stdio>) -> Running {
    let mut command = Command::new(bin());
    command.args(args).stdout(stdout);
    start_command(command, &format!("{args:?}"))
}

fn storm_stopped_by_sigint_50_times(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let _storm = Storm::start();
    let args = ["syscalls", "--buffer", transport, "--buffer-size", "64K", "--name", STORM_COMM];
    let (mut produced, mut dropped) = (0, 0);
    for round in 0..50u64 {
        let run = start_to(&args, Stdio::null());
        // Stop at different points of the stream: at once, and after up to 90 ms.
        std::thread::sleep(Duration::from_millis(round % 10 * 10));
        let finished = run.stop();
        assert!(finished.status.success(), "round {round}: {:?}\n{}", finished.status, finished.stderr);
        let a = assert_exact(&finished);
        produced += a.produced;
        dropped += a.dropped;
    }
    assert!(produced > 0, "the storm is traced");
    assert!(dropped > 0, "a full-speed storm overflows a 64 KiB buffer at least once in 50 runs");
    assert_nothing_left(before, TRACER_OBJECTS);
}

#[test]
fn ring_storm_stopped_by_sigint_50_times_is_exact_every_time() {
    storm_stopped_by_sigint_50_times("ring");
}

#[test]
fn perf_storm_stopped_by_sigint_50_times_is_exact_every_time() {
    storm_stopped_by_sigint_50_times("perf");
}

/// A pipe whose read end is kept open and never read: stdout blocks once it is full.
fn blocked_pipe() -> (OwnedFd, OwnedFd) {
    let (read, write) = pipe();
    (read.into(), write.into())
}

/// SIGTERM with stdout blocked: the tracer stops, counts what it could not write, prints the
/// summary on stderr, exits 0, and leaves nothing loaded.
fn blocked_stdout_stop(extra: &[&str]) {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let _storm = Storm::start();
    let (_read, write) = blocked_pipe();
    let mut args = vec!["syscalls", "--name", STORM_COMM];
    args.extend_from_slice(extra);
    let run = start_to(&args, write);
    // Until the pipe is full and more waits behind it.
    std::thread::sleep(Duration::from_millis(500));
    let finished = run.stop_with(libc::SIGTERM);
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let a = assert_exact(&finished);
    assert!(a.unwritten > 0, "a blocked stdout leaves lines unwritten: {a:?}");
    assert_json_on_stderr(extra, &finished);
    assert_nothing_left(before, TRACER_OBJECTS);
}

/// A `--json` run whose stdout could not take its summary prints the object on stderr, for the
/// scripts that read it.
fn assert_json_on_stderr(args: &[&str], finished: &Finished) {
    if args.contains(&"--json") {
        assert!(finished.stderr.contains("{\"type\":\"summary\""), "{}", finished.stderr);
    }
}

#[test]
fn sigterm_ends_a_table_run_whose_stdout_is_blocked() {
    blocked_stdout_stop(&[]);
}

#[test]
fn sigterm_ends_a_json_run_whose_stdout_is_blocked_with_the_summary_on_stderr() {
    blocked_stdout_stop(&["--json", "--buffer", "perf"]);
}

#[test]
fn duration_ends_a_run_whose_stdout_is_blocked() {
    let Some(_kernel) = kernel_test() else { return };
    let _storm = Storm::start();
    let (_read, write) = blocked_pipe();
    let run = start_to(&["syscalls", "--json", "--duration", "1", "--name", STORM_COMM], write);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(assert_exact(&finished).unwritten > 0);
}

#[test]
fn a_slow_reader_gets_every_line_it_reads_and_the_rest_is_counted() {
    let Some(_kernel) = kernel_test() else { return };
    let _storm = Storm::start();
    let (read, write) = pipe();
    let reader = std::thread::spawn(move || {
        let mut read = read;
        let mut buf = [0u8; 4096];
        let mut lines = 0u64;
        while let Ok(n) = std::io::Read::read(&mut read, &mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            std::thread::sleep(Duration::from_millis(5));
        }
        lines
    });
    let run = start_to(&["syscalls", "--name", STORM_COMM], write);
    std::thread::sleep(Duration::from_millis(500));
    let finished = run.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let a = assert_exact(&finished);
    // The process is gone, so the reader ends; it read the header and every written event.
    let lines = reader.join().unwrap();
    assert!(lines > a.events, "{lines} lines read for {a:?}");
}

#[test]
fn a_full_disk_ends_the_run_with_the_summary_on_stderr_and_exit_1() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let _storm = Storm::start();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let run = start_to(&["syscalls", "--json", "--name", STORM_COMM], full);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(finished.stderr.contains("writing to stdout failed"), "{}", finished.stderr);
    assert!(assert_exact(&finished).unwritten > 0);
    assert_json_on_stderr(&["--json"], &finished);
    assert_nothing_left(before, TRACER_OBJECTS);
}

#[test]
fn a_closed_stdout_ends_the_run_cleanly_with_the_summary_on_stderr() {
    let Some(_kernel) = kernel_test() else { return };
    let _storm = Storm::start();
    for json in [&[][..], &["--json"]] {
        let (read, write) = pipe();
        drop(read);
        let run = start_to(&[&["syscalls", "--name", STORM_COMM][..], json].concat(), write);
        let finished = run.wait();
        assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
        assert_exact(&finished);
        assert_json_on_stderr(json, &finished);
    }
}

/// Whether SIGINT is pending for `pid` (`ShdPnd` of /proc/PID/status).
fn sigint_pending(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|l| l.strip_prefix("ShdPnd:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(mask, 16).unwrap_or(0) & (1 << (libc::SIGINT - 1)) != 0
}

#[test]
fn a_second_sigint_ends_the_process_at_once() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let _storm = Storm::start();
    let (_read, write) = blocked_pipe();
    let run = start_to(&["syscalls", "--name", STORM_COMM], write);
    std::thread::sleep(Duration::from_millis(300));
    let pid = run.pid();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    // The first one handled (no longer pending), the stop now waits for the blocked stdout.
    while sigint_pending(pid) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let finished = run.stop();
    assert_eq!(finished.status.code(), Some(130), "{}", finished.stderr);
    assert_nothing_left(before, TRACER_OBJECTS);
}

/// The `events` of the summary are the lines written: a reader that takes everything gets one
/// line per event counted, under a storm and its drops, in both transports.
#[test]
fn every_event_counted_is_a_line_written() {
    let Some(_kernel) = kernel_test() else { return };
    let _storm = Storm::start();
    for transport in ["ring", "perf"] {
        let run = start(&["syscalls", "--json", "--buffer", transport, "--buffer-size", "64K", "--name", STORM_COMM]);
        std::thread::sleep(Duration::from_millis(300));
        let finished = run.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        let summary = finished.summary();
        let lines = finished.of_type("syscall").len() as u64;
        let n = |key: &str| summary[key].as_u64().unwrap_or_else(|| panic!("{key} in {summary}"));
        assert_eq!(n("events"), lines, "{summary}");
        assert_eq!(n("events") + n("dropped") + n("unwritten"), n("produced"), "{summary}");
        assert_eq!(summary["unaccounted"], 0, "{summary}");
        assert!(lines > 0, "{summary}");
    }
}

/// Waits (up to 10 s) until `pid` handles SIGINT itself: before, a signal would find the
/// process still in the runtime's start, where the kernel's default action applies.
fn wait_for_handlers(pid: u32) {
    let deadline = deadline(Duration::from_secs(10));
    while !catches(pid, libc::SIGINT) {
        assert!(std::time::Instant::now() < deadline, "bpfstream never installed its signal handlers");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `bpfstream args...` gets `signal` `delay` after its handlers are in place: it ends with exit
/// 0 and a summary object, as any stopped run. Returns the summary.
fn stopped_during_start(args: &[&str], signal: i32, delay: Duration) -> serde_json::Value {
    let run = spawn(args);
    wait_for_handlers(run.pid());
    std::thread::sleep(delay);
    let finished = run.stop_with(signal);
    assert_eq!(finished.status.code(), Some(0), "{args:?}, signal {signal} after {delay:?}: {}", finished.stderr);
    let summary = finished.summary();
    // Exact, whatever else the machine runs meanwhile (an unfiltered tracer sees it all).
    let n = |key: &str| summary[key].as_u64().unwrap_or(0);
    assert!(summary["produced"].is_u64(), "{summary}");
    assert_eq!(n("events") + n("dropped") + n("unwritten"), n("produced"), "{summary}");
    assert_eq!(summary["unaccounted"], 0, "{summary}");
    summary
}

/// The stop signals at many points of a start that waits for an engine that accepts the
/// connection and never answers (a frozen server, a stuck proxy), NATS and Kafka: each ends the
/// process with exit 0 and an empty summary (nothing was traced), never a hang, never an
/// error. The start's deadline is set far beyond the delays (the stop owes nothing to it).
#[test]
fn a_stop_signal_at_any_point_of_a_start_against_silent_engines_ends_it_with_a_summary() {
    let Some(_kernel) = kernel_test() else { return };
    let silent = common::engine::SilentEngine::start();
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    for scheme in ["nats", "kafka"] {
        let url = silent.url(scheme);
        for (i, ms) in [0, 1, 3, 10, 30, 100, 300, 1000, 2000].into_iter().enumerate() {
            let summary = stopped_during_start(
                &["exec", "--json", "--output", &url, "--output-option", "connect_timeout=10m"],
                signals[i % signals.len()],
                Duration::from_millis(ms),
            );
            assert_eq!((summary["events"].as_u64(), summary["exported"].as_u64()), (Some(0), Some(0)), "{summary}");
            assert!(summary["stopped_at_start"].as_str().is_some_and(|s| s.contains("connecting to")), "{summary}");
        }
    }
}

/// The same while the programs load and attach (no engine): the stop comes before, during or
/// just after the load, and the run ends with its summary either way.
#[test]
fn a_stop_signal_while_the_programs_load_ends_the_run_with_a_summary() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    for (i, us) in [0, 100, 300, 1000, 3000, 10_000, 30_000, 100_000].into_iter().enumerate() {
        let signal = [libc::SIGTERM, libc::SIGINT][i % 2];
        stopped_during_start(&["syscalls", "--json"], signal, Duration::from_micros(us));
    }
    assert_nothing_left(before, TRACER_OBJECTS);
}

/// SIGUSR1 prints the summary so far and the run goes on; SIGHUP then ends it like SIGTERM,
/// with its summary and exit 0.
#[test]
fn sigusr1_reports_so_far_and_sighup_stops_with_the_summary() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let run = start(&["syscalls", "--json", "--name", "bpfs-nothing"]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(run.pid() as i32, libc::SIGUSR1) };
    let deadline = deadline(Duration::from_secs(10));
    while run.lines_so_far() == 0 {
        assert!(std::time::Instant::now() < deadline, "no progress line after SIGUSR1");
        std::thread::sleep(Duration::from_millis(10));
    }
    let finished = run.stop_with(libc::SIGHUP);
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let progress = finished.of_type("progress");
    assert_eq!(progress.len(), 1, "{:?}", finished.stdout);
    assert!(progress[0]["produced"].as_u64().is_some() && progress[0]["duration_s"].as_f64().is_some());
    assert_eq!(finished.summary()["unaccounted"], 0);
    assert_nothing_left(before, TRACER_OBJECTS);
}

/// Runs `bpfstream args...` through `prefix` (a program that sets a limit, then execs the next
/// one) to its end: (exit code or signal, stderr).
fn run_limited(prefix: &[&str], args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The one line of a failed start (besides nothing else).
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    lines[0]
}

/// Under every address-space limit from the one at which the process starts at all up to one
/// that lets it trace, it either traces (exit 0) or says in one line that it ran out of memory
/// (exit 1): never an abort (Rust's "memory allocation failed", glibc's "failed to register
/// TLS destructor"), never a SIGSEGV from a stack that could not grow.
#[test]
fn any_memory_limit_is_one_line_and_exit_1_never_an_abort() {
    let Some(_kernel) = kernel_test() else { return };
    let (mut started, mut refused) = (false, 0);
    for mib in (30..=200).step_by(10) {
        let limit = format!("--as={}", mib << 20);
        let (status, stderr) = run_limited(&["prlimit", &limit], &["syscalls", "--duration", "0.2"]);
        // Below some limit the kernel (SIGSEGV at exec) or the dynamic loader (127) cannot even
        // load the binary.
        let loaded = status.code().is_some_and(|c| c != 127);
        started |= loaded;
        if !started {
            continue;
        }
        match status.code() {
            Some(0) => {}
            Some(1) => {
                refused += 1;
                let line = one_line(&stderr);
                assert!(line.starts_with("bpfstream: ") && line.contains("ulimit -v"), "{mib} MiB: {line}");
            }
            _ => panic!("{mib} MiB: {status}\n{stderr}"),
        }
    }
    assert!(started && refused > 0, "no limit in 30..200 MiB refused the start");
}

/// The same with the Kafka client (librdkafka, which aborts when an allocation or a thread's
/// creation fails) starting against a port nobody listens on: every limit ends in one line and
/// exit 1 (out of memory, or the broker that could not be reached).
#[test]
fn any_memory_limit_with_the_kafka_client_is_one_line_and_exit_1() {
    let Some(_kernel) = kernel_test() else { return };
    let url = format!("kafka://127.0.0.1:{}/bpfs-nobody", common::engine::free_port());
    let args = ["exec", "--output", &url, "--output-option", "connect_timeout=300ms"];
    let mut started = false;
    for mib in (30..=200).step_by(10) {
        let (status, stderr) = run_limited(&["prlimit", &format!("--as={}", mib << 20)], &args);
        started |= status.code().is_some_and(|c| c != 127);
        if started {
            assert_eq!(status.code(), Some(1), "{mib} MiB: {stderr}");
            assert!(one_line(&stderr).starts_with("bpfstream: "), "{mib} MiB: {stderr}");
        }
    }
    assert!(started);
}

/// With a descriptor limit too low for its maps, the start fails in one line that names it.
#[test]
fn a_descriptor_limit_too_low_is_named() {
    let Some(_kernel) = kernel_test() else { return };
    let (status, stderr) = run_limited(&["prlimit", "--nofile=4"], &["syscalls", "--duration", "0.2"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("file descriptors") && line.contains("ulimit -n") && line.contains(" 4,"), "{line}");
}

/// An unprivileged user (CAP_BPF + CAP_PERFMON) whose process limit leaves no room for the
/// output thread: the run fails before it attaches (exit 1, one line), instead of tracing for
/// nothing and reporting what it traced as unwritten.
#[test]
fn an_output_thread_that_cannot_start_fails_the_run_before_it_attaches() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let prefix = [&["prlimit", "--nproc=1", "setpriv"][..], &LEAST_PRIVILEGE].concat();
    let (status, stderr) = run_limited(&prefix, &["syscalls", "--duration", "1"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("cannot start the bpfstream-output thread"), "{line}");
    assert_nothing_left(before, TRACER_OBJECTS);
}

/// A perf buffer larger than an unprivileged user may lock, asked for by one who holds CAP_BPF
/// and CAP_PERFMON: the refusal names the real cause (the locked-memory allowance), not the
/// capabilities the user has.
#[test]
fn a_perf_buffer_over_the_lock_allowance_names_it_not_the_capabilities() {
    let Some(_kernel) = kernel_test() else { return };
    if !unprivileged_transports().contains(&"perf") {
        return;
    }
    let prefix = [&["setpriv"][..], &LEAST_PRIVILEGE].concat();
    let args = ["syscalls", "--buffer", "perf", "--buffer-size", "16M", "--duration", "1"];
    let (status, stderr) = run_limited(&prefix, &args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains("perf_event_mlock_kb") && line.contains("CAP_IPC_LOCK"), "{line}");
    assert!(!line.contains("grant CAP_BPF and CAP_PERFMON"), "the user has them: {line}");
}

/// Whether `pid` has exited (a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')').and_then(|close| stat[close + 1..].split_whitespace().next()) == Some("Z")
}

/// Two SIGINTs 50 ms apart: the second ends the process at once with 130 in every run whose
/// stop it reaches. A stop may be over in less than 50 ms (a reader blocked long before is given
/// up at once): then the process exited 0 before the second was sent, which the test checks
/// rather than guesses. With `--json` under a storm most stops last longer.
#[test]
fn two_sigints_50_ms_apart_exit_130_whenever_the_second_finds_the_stop() {
    let Some(_kernel) = kernel_test() else { return };
    let _storm = Storm::start();
    let mut at_once = 0;
    for round in 0..6 {
        let (_read, write) = blocked_pipe();
        let run = start_to(&["syscalls", "--json", "--name", STORM_COMM], write);
        std::thread::sleep(Duration::from_millis(300));
        let pid = run.pid();
        // SAFETY: kill(2) on our own child, which is not reaped until `stop` below.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(50));
        let over = exited(pid);
        let finished = run.stop();
        let expected = if over { 0 } else { 130 };
        assert_eq!(finished.status.code(), Some(expected), "round {round}: {}", finished.stderr);
        at_once += u32::from(!over);
    }
    assert!(at_once > 0, "every stop was over within 50 ms: the second SIGINT was never tried");
}
