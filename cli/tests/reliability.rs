//! The tracers as an SRE runs them, as real processes against the real kernel: stopped by
//! signals in the middle of a storm, exact to the last event every time; a stop that ends
//! whatever stdout does (blocked, slow, closed, full) with what could not be written counted;
//! a second Ctrl-C that ends the process at once; nothing left loaded.
//!
//! No test asserts a duration: a stop that hung would hit the 60 s guard of the helpers.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Two copies of dd named `bpfs-storm`, copying /dev/zero to /dev/null a byte at a time: a
/// read and a write syscall per byte, at full speed, one per CPU.
struct Storm(Vec<Child>);

const STORM_COMM: &str = "bpfs-storm";

impl Storm {
    fn start() -> Storm {
        let dd = temp_dir("storm").join(STORM_COMM);
        copy_executable(Path::new("/bin/dd"), &dd);
        let children = (0..2)
            .map(|_| {
                Command::new(&dd).args(["if=/dev/zero", "of=/dev/null", "bs=1"]).stderr(Stdio::null()).spawn().unwrap()
            })
            .collect();
        Storm(children)
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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

fn accounting(stderr: &str) -> Accounting {
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
    assert!(!finished.stderr.contains("unaccounted"), "{}", finished.stderr);
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
    assert_nothing_left(before, TRACER_OBJECTS);
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
    assert_nothing_left(before, TRACER_OBJECTS);
}

#[test]
fn a_closed_stdout_ends_the_run_cleanly_with_the_summary_on_stderr() {
    let Some(_kernel) = kernel_test() else { return };
    let _storm = Storm::start();
    let (read, write) = pipe();
    drop(read);
    let run = start_to(&["syscalls", "--name", STORM_COMM], write);
    let finished = run.wait();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_exact(&finished);
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
