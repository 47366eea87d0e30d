//! `bpfstream bench` against the real kernel (as root): every requested row is printed, every
//! row accounts for every record, and nothing stays loaded. Speed is not tested here (the bench
//! is for that); these runs are a fraction of a second per row.

mod common;

use std::process::Command;

use common::{assert_nothing_left, bin, id_watermarks, kernel_test, run_to_end, scaled};
use serde_json::Value;

fn bench(args: &[&str]) -> (Vec<String>, String) {
    let out = Command::new(bin()).arg("bench").args(args).output().expect("run bpfstream bench");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "bpfstream bench {args:?} failed:\n{stderr}\n{stdout}");
    (stdout.lines().map(str::to_owned).collect(), stderr)
}

#[test]
fn every_row_is_printed_and_accounts_for_every_record() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let consumers = ["bpfstream-ring", "libbpf-perf", "aya-perf"];
    let (lines, stderr) = bench(&[
        "--json",
        "--duration",
        "0.1",
        "--drain-size",
        "1M",
        "--consumer",
        consumers[0],
        "--consumer",
        consumers[1],
        "--consumer",
        consumers[2],
    ]);
    let objects: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let rows: Vec<&Value> = objects.iter().filter(|o| o["type"] == "bench").collect();
    let expected: Vec<(&str, &str)> =
        ["parallel", "sampled", "drain"].iter().flat_map(|m| consumers.iter().map(move |c| (*c, *m))).collect();
    let got: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["consumer"].as_str().unwrap(), r["mode"].as_str().unwrap())).collect();
    assert_eq!(got, expected, "one row per (consumer, mode), in table order");
    assert_eq!(stderr.lines().filter(|l| l.starts_with('[')).count(), 9, "a progress line per row:\n{stderr}");

    for row in rows {
        if let Some(why) = row.get("skipped") {
            assert!(row["consumer"].as_str().unwrap().starts_with("libbpf"), "{row}");
            assert!(why.as_str().unwrap().contains("libbpf.so.1"), "{row}");
            continue;
        }
        let n = |field: &str| row[field].as_u64().unwrap_or_else(|| panic!("{field} in {row}"));
        // The rate is a median over windows: one where a slow machine stalled the consumer can
        // be empty. That it consumed at all is what is judged.
        assert!(n("consumed") > 0 && row["consumed_per_sec"].as_f64().unwrap() >= 0.0, "{row}");
        assert!(row["dropped_per_sec"].as_f64().is_some(), "{row}");
        // CPU per event is a median over the windows that consumed something: none, when every
        // window was one of those empty ones.
        match row["consumer_cpu_ns_per_event"].as_f64() {
            Some(cpu) => assert!(cpu > 0.0, "{row}"),
            None => {
                assert_eq!(row["consumed_per_sec"].as_f64(), Some(0.0), "no CPU figure, yet windows consumed: {row}")
            }
        }
        assert_eq!(n("windows"), 5, "{row}");
        assert!(n("produced") > 0 && n("produced") % 500 == 0, "whole batches of 500: {row}");
        assert_eq!(n("produced"), n("consumed") + n("dropped"), "{row}");
        assert_eq!(row["unaccounted"], 0, "{row}");
        assert!(n("mapped_bytes") >= n("buffer_bytes"), "{row}");
    }
    assert!(objects.iter().any(|o| o["type"] == "target"), "the perf targets of this run are reported");
    assert_nothing_left(before, &["bench_produce", "events", "bpfstream_stats"]);
}

#[test]
fn the_table_has_a_header_a_line_per_row_and_the_targets() {
    let Some(_kernel) = kernel_test() else { return };
    let (lines, _) = bench(&["--duration", "0.1", "--mode", "sampled", "--consumer", "bpfstream-ring"]);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header[..6], ["CONSUMER", "MODE", "PRODUCED/s", "CONSUMED/s", "DROPPED/s", "CPU"], "{lines:?}");
    assert!(lines[1].starts_with("bpfstream-ring  sampled"), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("ring sampled drops")), "{lines:?}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["bench", "--duration", "0"][..],
        &["bench", "--consumer", "bcc-ring"],
        &["bench", "--mode", "burst"],
        &["bench", "--drain-size", "3M"],
    ] {
        let (code, err) = run_to_end(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?}");
    }
    let (_, err) = run_to_end(&["bench", "--consumer", "bcc-ring"]);
    assert!(err.contains("choose from") && err.contains("aya-perf"), "{err}");
}

/// Ctrl-C ends a long bench at once (it would otherwise run for a minute), and leaves no program
/// or map behind.
#[test]
fn ctrl_c_ends_the_bench_at_once_and_leaves_nothing_loaded() {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let mut child = Command::new(bin())
        .args(["bench", "--duration", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < scaled(std::time::Duration::from_secs(2)), "ended {:?} after Ctrl-C", sent.elapsed());
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGINT), "{status:?}");
    assert_nothing_left(before, &["bench_produce", "events", "bpfstream_stats"]);
}
