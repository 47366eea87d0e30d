//! `bpfstream syscalls` against the real kernel: a child with a known mix of syscalls appears
//! exactly (counts, names, return values, the sleep's duration) in both transports and in the
//! summary; every filter is applied in the kernel (the `produced` counter says so); bursts are
//! accounted; bpfstream never traces itself.

mod common;

use std::ffi::CString;
use std::time::Duration;

use common::workload::{Step, Workload};
use common::*;
use serde_json::Value;

const GETPPIDS: u32 = 50;
const MISSING_OPENS: usize = 7;
const SLEEP: Duration = Duration::from_millis(200);

/// N getppid, M openat of missing files, one 200 ms nanosleep.
fn known_mix() -> Vec<Step> {
    let mut steps = vec![Step::Getppid(GETPPIDS)];
    for i in 0..MISSING_OPENS {
        let path = CString::new(format!("/nonexistent-bpfstream-test/{i}")).unwrap();
        steps.push(Step::OpenAt { dirfd: libc::AT_FDCWD, path, flags: libc::O_RDONLY });
    }
    steps.push(Step::Sleep(SLEEP));
    steps
}

const KNOWN_MIX_EVENTS: u64 = GETPPIDS as u64 + MISSING_OPENS as u64 + 1;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned number: {v}"))
}

/// Checks the events of one run of [`known_mix`] by `pid`, in order.
fn assert_known_mix(events: &[Value], pid: u32) {
    assert_eq!(events.len() as u64, KNOWN_MIX_EVENTS, "exactly the workload's syscalls: {events:#?}");
    let me = std::process::id();
    for e in events {
        assert_eq!(e["pid"], pid);
        assert_eq!(e["tid"], pid);
        assert_eq!(e["comm"], "bpfs-mix");
        assert!(u(&e["ts_ns"]) > 0);
    }
    let (getppids, rest) = events.split_at(GETPPIDS as usize);
    for e in getppids {
        assert_eq!(e["syscall"], "getppid");
        assert_eq!(e["nr"], 110);
        assert_eq!(e["ret"], me, "getppid returns the test's pid");
        assert!(u(&e["duration_ns"]) < 1_000_000_000, "{e}");
    }
    let (opens, sleep) = rest.split_at(MISSING_OPENS);
    for e in opens {
        assert_eq!(e["syscall"], "openat");
        assert_eq!(e["nr"], 257);
        assert_eq!(e["ret"], -2, "ENOENT as a negative errno");
    }
    let sleep = &sleep[0];
    assert_eq!(sleep["syscall"], "nanosleep");
    assert_eq!(sleep["ret"], 0);
    let slept = u(&sleep["duration_ns"]);
    assert!(slept >= SLEEP.as_nanos() as u64, "slept {slept} ns");
    assert!(slept < SLEEP.as_nanos() as u64 + 2_000_000_000, "slept {slept} ns");
    let times: Vec<u64> = events.iter().map(|e| u(&e["ts_ns"])).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "one thread's syscalls arrive in order");
}

fn known_mix_appears_exactly(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let child = Workload::spawn("bpfs-mix", None, known_mix());
    let child_pid = child.pid();
    let pid = child_pid.to_string();
    let run = start(&["syscalls", "--json", "--buffer", transport, "--pid", &pid]);
    let results = child.go();
    assert_eq!(results[1], -2);
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    assert_known_mix(&finished.of_type("syscall"), child_pid);
    let summary = finished.summary();
    assert_eq!(summary["events"], KNOWN_MIX_EVENTS);
    assert_eq!(summary["dropped"], 0);
    assert_eq!(summary["produced"], KNOWN_MIX_EVENTS);
    assert_eq!(summary["untracked"], 0);
    assert_eq!(summary["buffer"], transport);
    assert_nothing_left(before, &["syscall_enter", "syscall_exit", "events", "bpfstream_stats", "starts", "untracked"]);
}

#[test]
fn ring_sees_a_known_mix_exactly() {
    known_mix_appears_exactly("ring");
}

#[test]
fn perf_sees_a_known_mix_exactly() {
    known_mix_appears_exactly("perf");
}

/// Several tracers with different kernel-side filters watch two identical children at once;
/// each produces exactly the events its filter lets through, and nothing of the other child.
/// `--min-duration` lets through the sleep, and any other syscall the machine stalled as long
/// (an emulated kernel may): as many as the unfiltered tracer timed that long.
#[test]
fn filters_are_applied_in_the_kernel() {
    let Some(_kernel) = kernel_test() else { return };
    let target = Workload::spawn("bpfs-target", None, known_mix());
    let other = Workload::spawn("bpfs-other", None, known_mix());
    let target_pid = target.pid();
    let pid = target_pid.to_string();
    let runs = [
        (vec!["--pid", &pid], KNOWN_MIX_EVENTS),
        (vec!["--tid", &pid], KNOWN_MIX_EVENTS),
        (vec!["--name", "bpfs-target"], KNOWN_MIX_EVENTS),
        (vec!["--pid", &pid, "--syscall", "getppid,nanosleep"], GETPPIDS as u64 + 1),
        (vec!["--pid", &pid, "--syscall", "257"], MISSING_OPENS as u64),
        (vec!["--pid", &pid, "--failed"], MISSING_OPENS as u64),
        (vec!["--pid", &pid, "--min-duration", "100ms"], u64::MAX),
        (vec!["--name", "bpfs-target", "--min-duration", "10s"], 0),
    ];
    let running: Vec<_> = runs
        .iter()
        .map(|(filter, _)| {
            let mut args = vec!["syscalls", "--json"];
            args.extend(filter.iter().copied());
            start(&args)
        })
        .collect();
    let other_thread = std::thread::spawn(move || other.go());
    target.go();
    other_thread.join().unwrap();
    let finished: Vec<_> = running.into_iter().map(|run| run.stop()).collect();
    let slow = finished[0].of_type("syscall").iter().filter(|e| u(&e["duration_ns"]) >= 100_000_000).count() as u64;
    assert!(slow >= 1, "the sleep took 200 ms");
    for ((filter, expected), finished) in runs.iter().zip(finished) {
        let expected = &if *expected == u64::MAX { slow } else { *expected };
        assert!(finished.status.success(), "{filter:?}: {}", finished.stderr);
        let events = finished.of_type("syscall");
        assert_eq!(events.len() as u64, *expected, "{filter:?}: {events:#?}");
        assert!(events.iter().all(|e| e["pid"] == target_pid), "{filter:?}: only the target");
        let summary = finished.summary();
        assert_eq!(summary["produced"], *expected, "{filter:?}: nothing else was produced in the kernel");
    }
}

#[test]
fn summary_agrees_with_the_stream() {
    let Some(_kernel) = kernel_test() else { return };
    let child = Workload::spawn("bpfs-sum", None, known_mix());
    let pid = child.pid().to_string();
    let run = start(&["syscalls", "--json", "--summary", "--pid", &pid]);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.of_type("syscall").is_empty(), "summary mode prints no events");
    let intervals = finished.of_type("syscall_interval");
    assert_eq!(intervals.len(), 1, "one table at the end without --interval");
    assert_eq!(intervals[0]["events"], KNOWN_MIX_EVENTS);
    let rows = finished.of_type("syscall_stats");
    let row = |name: &str| rows.iter().find(|r| r["syscall"] == name).unwrap_or_else(|| panic!("no {name}: {rows:#?}"));
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!((u(&row("getppid")["count"]), u(&row("getppid")["errors"])), (GETPPIDS as u64, 0));
    assert_eq!((u(&row("openat")["count"]), u(&row("openat")["errors"])), (MISSING_OPENS as u64, MISSING_OPENS as u64));
    let sleep = row("nanosleep");
    assert_eq!((u(&sleep["count"]), u(&sleep["errors"])), (1, 0));
    let max = u(&sleep["max_ns"]);
    assert!(max >= SLEEP.as_nanos() as u64 && max < SLEEP.as_nanos() as u64 + 2_000_000_000, "{max}");
    assert_eq!(u(&sleep["p50_ns"]), max, "one sample: every percentile is it");
    assert_eq!(u(&sleep["total_ns"]), max);
    for r in &rows {
        assert!(u(&r["p50_ns"]) <= u(&r["p99_ns"]) && u(&r["p99_ns"]) <= u(&r["max_ns"]), "{r}");
        assert!(u(&r["total_ns"]) >= u(&r["max_ns"]));
    }
    assert_eq!(finished.summary()["events"], KNOWN_MIX_EVENTS);
}

/// Rows reset every interval and add up, over the intervals, to everything delivered.
#[test]
fn summary_intervals_add_up_and_group_by_process() {
    let Some(_kernel) = kernel_test() else { return };
    let mix = || {
        vec![
            Step::Getppid(30),
            Step::Sleep(Duration::from_millis(400)),
            Step::Getppid(30),
            Step::Sleep(Duration::from_millis(400)),
            Step::Getppid(30),
        ]
    };
    let a = Workload::spawn("bpfs-byproc", None, mix());
    let b = Workload::spawn("bpfs-byproc", None, mix());
    let run = start(&["syscalls", "--json", "--summary", "--interval", "0.2", "--by-process", "--name", "bpfs-byproc"]);
    let b_thread = std::thread::spawn(move || b.go());
    let a_pid = a.pid();
    a.go();
    b_thread.join().unwrap();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let intervals = finished.of_type("syscall_interval");
    assert!(intervals.len() >= 2, "a table every 0.2 s over 0.8 s: {intervals:#?}");
    let rows = finished.of_type("syscall_stats");
    let total: u64 = rows.iter().map(|r| u(&r["count"])).sum();
    let interval_total: u64 = intervals.iter().map(|i| u(&i["events"])).sum();
    assert_eq!(total, 2 * (90 + 2), "both children's getppids and sleeps");
    assert_eq!(interval_total, total);
    assert_eq!(finished.summary()["events"], total);
    let of_a: u64 = rows.iter().filter(|r| r["pid"] == a_pid).map(|r| u(&r["count"])).sum();
    assert_eq!(of_a, 92);
    assert!(rows.iter().all(|r| r["comm"] == "bpfs-byproc" && r.get("syscall").is_none()));
    let max_interval = intervals.iter().map(|i| u(&i["interval"])).max().unwrap();
    assert_eq!(max_interval, intervals.len() as u64);
}

/// A storm while the consumer is stopped overflows the smallest buffer; every syscall is still
/// delivered or counted dropped.
fn burst_is_fully_accounted(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    const BURST: u32 = 20_000;
    let child = Workload::spawn("bpfs-burst", None, vec![Step::Getppid(BURST)]);
    let pid = child.pid().to_string();
    let run = start(&["syscalls", "--json", "--buffer", transport, "--buffer-size", "4K", "--pid", &pid]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.pid() as i32, libc::SIGSTOP) };
    child.go();
    // SAFETY: as above.
    unsafe { libc::kill(run.pid() as i32, libc::SIGCONT) };
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    let (events, dropped) = (u(&summary["events"]), u(&summary["dropped"]));
    assert_eq!(summary["produced"], BURST);
    assert_eq!(events + dropped, u64::from(BURST), "delivered + dropped = produced");
    assert!(dropped > 0, "4 KiB cannot hold {BURST} records");
    assert_eq!(finished.of_type("syscall").len() as u64, events);
}

#[test]
fn ring_burst_is_fully_accounted() {
    burst_is_fully_accounted("ring");
}

#[test]
fn perf_burst_is_fully_accounted() {
    burst_is_fully_accounted("perf");
}

/// bpfstream's poll loop calls epoll_wait at least every 100 ms; none of those may show up.
#[test]
fn bpfstream_never_traces_itself() {
    let Some(_kernel) = kernel_test() else { return };
    let run = start(&["syscalls", "--json", "--name", "bpfstream", "--syscall", "epoll_wait,epoll_pwait,write"]);
    let me = run.pid();
    std::thread::sleep(Duration::from_millis(600));
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let own: Vec<_> = finished.of_type("syscall").into_iter().filter(|e| e["pid"] == me).collect();
    assert!(own.is_empty(), "bpfstream traced itself: {own:#?}");
}

#[test]
fn table_shows_errno_names() {
    let Some(_kernel) = kernel_test() else { return };
    let child = Workload::spawn("bpfs-table", None, known_mix());
    let pid = child.pid().to_string();
    let run = start(&["syscalls", "--pid", &pid]);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let header: Vec<_> = finished.stdout[0].split_whitespace().collect();
    assert_eq!(header, ["COMM", "PID", "TID", "SYSCALL", "DURATION(us)", "RET"]);
    let rows: Vec<Vec<&str>> = finished.stdout[1..].iter().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len() as u64, KNOWN_MIX_EVENTS);
    let opens: Vec<_> = rows.iter().filter(|r| r[3] == "openat").collect();
    assert_eq!(opens.len(), MISSING_OPENS);
    assert!(opens.iter().all(|r| r[5] == "ENOENT"), "{opens:?}");
    assert!(finished.stderr.contains(&format!("{KNOWN_MIX_EVENTS} events, 0 dropped")), "{}", finished.stderr);
}

#[test]
fn bad_input_is_a_clear_error() {
    let (code, err) = run_to_end(&["syscalls", "--syscall", "getppid,opne"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown syscall \"opne\""), "{err}");
    let (code, err) = run_to_end(&["syscalls", "--min-duration", "5 parsecs"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("duration"), "{err}");
    let (code, err) = run_to_end(&["syscalls", "--interval", "1"]);
    assert_eq!(code, Some(2), "--interval needs --summary: {err}");
    let (code, _) = run_to_end(&["syscalls", "--summary", "--interval", "0"]);
    assert_eq!(code, Some(2));
}
