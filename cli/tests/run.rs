//! `bpfstream run OBJECT` against the real kernel: a record with a field of every kind, its
//! variable-length tail included, arrives decoded from BTF in both transports, with `--set`
//! typed values; a program without bpfstream.h streams and says its drops are not counted;
//! every section kind attaches where it says (kprobes where the kernel has them), what cannot
//! attach is refused by name; bad objects and options are one line and exit 2; the project's own
//! objects through `run` give what the built-in tracers give, field for field; several maps of
//! one object are each a stream whose events, `lost` lines, run so far, summary and export say
//! their map, each map's accounting exact by itself.
//!
//! The programs are bpf/tests/*.bpf.c, compiled now where clang is installed (else the committed
//! objects of bpf/obj/tests/, which `bpf/build.sh --check` keeps in step with the sources).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::workload::{Step, Workload};
use common::*;
use serde_json::{json, Value};

/// The uprobe of bpf/tests/run_kinds.bpf.c: one record per call.
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_run_kinds(seq: u64, len: u64) -> u64 {
    std::hint::black_box(seq.wrapping_add(len))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where the test programs' objects are: built from bpf/tests/ now when clang is there, on a
/// machine whose time is not scaled (an emulated guest would spend minutes compiling).
fn objects() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let committed = repo().join("bpf/obj/tests");
        let clang = Command::new("clang").arg("--version").output().is_ok_and(|o| o.status.success());
        if !clang || time_scale::is_scaled() {
            let why = if clang { "time is scaled (an emulated guest)" } else { "clang is not installed" };
            eprintln!("{why}: using the committed objects of bpf/obj/tests, not building bpf/tests/*.bpf.c");
            return committed;
        }
        let dir = temp_dir("run-objects");
        let sources: Vec<PathBuf> = std::fs::read_dir(repo().join("bpf/tests"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
            .collect();
        let built = Command::new(repo().join("bpf/build.sh")).arg("--out").arg(&dir).args(&sources).status().unwrap();
        assert!(built.success(), "bpf/build.sh --out {} bpf/tests/*.bpf.c failed", dir.display());
        dir
    })
}

fn object(name: &str) -> String {
    objects().join(name).to_str().unwrap().to_owned()
}

/// The kinds record the program sends for `seq` and `len` with the test's --set values.
fn kinds_event(seq: u64, len: usize) -> Value {
    let data: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    json!({
        "type": "kinds_event", "u8": 255, "s8": -1, "u16": 65535, "s16": -32768, "u32": 1000 + seq,
        "s32": -2147483648i64, "u64": u64::MAX, "s64": -5, "flag": true, "color": "BLUE", "unnamed_color": 7,
        "text": "hello", "bytes": "\\xffa\\xfe", "bytes_hex": "ff61fe", "numbers": [1, 2, 3],
        "points": [{"x": 1, "y": -1}, {"x": 2, "y": -2}], "origin": {"x": 0, "y": 0},
        "word": {"u": 67305985, "b": [1, 2, 3, 4]}, "inner_a": 10, "inner_b": 20, "ptr": "0xdeadbeef",
        "low": 5, "mid": 4097, "high": 65535, "neg": -16, "type_": 99, "data_len": len, "data": data,
    })
}

fn every_kind_arrives_decoded(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfstream_run_kinds", exe.display());
    let file = object(&format!("run_kinds.{transport}.bpf.o"));
    let sets = ["base=1000", "offset=-5", "flag_value=true", "color_value=BLUE", "label=hello"];
    let mut args = vec!["run", &file, "--uprobe", &target, "--json"];
    args.extend(sets.iter().flat_map(|s| ["--set", s]));
    let run = start(&args);
    for (seq, len) in [(7, 3), (8, 0), (9, 64), (1000, 3), (1001, 2)] {
        bpfstream_run_kinds(seq, len);
    }
    wait_for_lines_of(&run, "kinds_event", 3);
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    let events = finished.of_type("kinds_event");
    assert_eq!(events, [kinds_event(7, 3), kinds_event(8, 0), kinds_event(9, 64)]);
    let summary = finished.summary();
    assert_eq!((&summary["events"], &summary["dropped"], &summary["produced"]), (&json!(5), &json!(0), &json!(5)));
    assert_eq!(summary["malformed"], 2, "seq 1000 is cut short, seq 1001 states more data than it has");
    assert_eq!(summary["counters"], true);
    assert!(finished.stderr.contains("warning: 2 records were shorter"), "{}", finished.stderr);
    assert_nothing_left(before, &["kinds", "events", "bpfstream_stats"]);
}

#[test]
fn every_kind_arrives_decoded_from_a_ring() {
    every_kind_arrives_decoded("ring");
}

#[test]
fn every_kind_arrives_decoded_from_perf_buffers() {
    every_kind_arrives_decoded("perf");
}

/// The uprobe of bpf/tests/run_maps.bpf.c: one record of `seq` per call, sent to the map `map`
/// numbers (0 events, 1 second, 2 plain).
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_run_maps(seq: u64, map: u64) -> u64 {
    std::hint::black_box(seq.wrapping_add(map))
}

/// Waits (up to 30 s, scaled) until `run` printed `n` lines of type `kind`: every line out
/// before the stop, whose output deadline (which an emulated machine can spend detaching) is the
/// stop tests' subject, not the caller's.
fn wait_for_lines_of(run: &Running, kind: &str, n: usize) {
    let arrived = deadline(Duration::from_secs(30));
    let pattern = format!("\"type\":\"{kind}\"");
    let printed = || run.stdout_so_far().iter().filter(|l| l.contains(&pattern)).count();
    while printed() < n && Instant::now() < arrived {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends ten records to the maps of bpf/tests/run_maps.bpf.c, five to `events`, three to
/// `second`, two to `plain`: their (seq, map number).
fn send_to_maps() -> Vec<(u64, usize)> {
    let sent: Vec<(u64, usize)> =
        [0, 1, 0, 2, 0, 1, 0, 2, 0, 1].into_iter().enumerate().map(|(seq, map)| (seq as u64 + 100, map)).collect();
    for &(seq, map) in &sent {
        bpfstream_run_maps(seq, map as u64);
    }
    sent
}

/// The summary of `map` among a run's summaries.
fn summary_of<'a>(summaries: &'a [Value], map: &str) -> &'a Value {
    summaries.iter().find(|s| s["map"] == map).unwrap_or_else(|| panic!("no summary of map {map}: {summaries:?}"))
}

/// Three maps of one object, one stream each: `events` and `second` on bpfstream.h (each with
/// its own counters), `plain` a ring written with bpf_ringbuf_output; in the perf build the first
/// two are perf event arrays, so ring and perf buffers stream from one object.
fn each_map_is_a_stream(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfstream_run_maps", exe.display());
    let file = object(&format!("run_maps.{transport}.bpf.o"));
    let names = ["events", "second", "plain"];
    let mut args = vec!["run", &file, "--uprobe", &target, "--json"];
    args.extend(names.iter().flat_map(|name| ["--map", name]));
    let run = start(&args);
    let sent = send_to_maps();
    wait_for_lines_of(&run, "map_event", sent.len());
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    // The plain ring keeps the size its author declared.
    let buffers = [format!("{transport} buffer"), format!("{transport} buffer"), "ring buffer (64 KiB)".into()];
    for (name, buffer) in names.iter().zip(buffers) {
        let tracing =
            format!("Tracing struct map_event records from run_maps.{transport}.bpf.o (map {name}) via {buffer}");
        assert!(finished.stderr.contains(&tracing), "{tracing:?} in:\n{}", finished.stderr);
    }
    let events = finished.of_type("map_event");
    let mut received = Vec::new();
    for event in &events {
        let map = event["map_"].as_u64().unwrap() as usize;
        assert_eq!(event["map"], names[map], "each event carries the map it came from: {event}");
        received.push((event["seq"].as_u64().unwrap(), map));
    }
    received.sort();
    let summaries = finished.of_type("summary");
    assert_eq!(received, sent, "every record, once; the summaries: {summaries:?}");
    assert_eq!(summaries.len(), 3, "one summary per map: {summaries:?}");
    let summary = |name: &str| summary_of(&summaries, name);
    for (name, n) in [("events", 5), ("second", 3)] {
        let s = summary(name);
        assert_eq!(
            (&s["events"], &s["dropped"], &s["produced"], &s["counters"]),
            (&json!(n), &json!(0), &json!(n), &json!(true)),
            "{s}"
        );
    }
    let plain = summary("plain");
    assert_eq!(
        (&plain["events"], &plain["dropped"], &plain["counters"]),
        (&json!(2), &Value::Null, &json!(false)),
        "{plain}"
    );
    assert!(plain.get("produced").is_none(), "never a made-up number: {plain}");
    // Its own names: a test beside it may make maps named events and bpfstream_stats.
    assert_nothing_left(before, &["maps", "second", "second_stats", "plain"]);
}

#[test]
fn each_map_is_a_stream_of_one_object_from_rings() {
    each_map_is_a_stream("ring");
}

#[test]
fn each_map_is_a_stream_of_one_object_from_perf_and_ring_buffers() {
    each_map_is_a_stream("perf");
}

/// Waits until each map's run so far (SIGUSR1's `progress` lines) has every record it produced
/// delivered or dropped, and its drops on `lost` lines: those lines are queued after the lines of
/// what was consumed before them, so then everything is out on stdout, and the stop has nothing
/// left to write but the summaries.
fn wait_until_consumed(run: &Running, produced: &[(&str, u64)]) {
    let of_type = |kind: &str| -> Vec<Value> {
        let prefix = format!("{{\"type\":\"{kind}\"");
        let lines = run.stdout_so_far();
        lines.iter().filter(|l| l.starts_with(&prefix)).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let progress = || of_type("progress");
    let reported = |map: &str| -> u64 {
        of_type("lost").iter().filter(|l| l["map"] == map).map(|l| l["count"].as_u64().unwrap()).sum()
    };
    let until = deadline(Duration::from_secs(60));
    loop {
        let asked = progress().len();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(run.pid() as i32, libc::SIGUSR1) };
        let mut reports = progress();
        while reports.len() < asked + produced.len() {
            assert!(Instant::now() < until, "not a report per map after SIGUSR1: {reports:?}");
            std::thread::sleep(Duration::from_millis(20));
            reports = progress();
        }
        let latest = &reports[asked..];
        let consumed = |&(map, n): &(&str, u64)| {
            latest.iter().any(|p| {
                let dropped = p["dropped"].as_u64().unwrap_or(0);
                let taken = p["events"].as_u64().unwrap_or(0) + dropped;
                p["map"] == map && p["produced"] == n && taken == n && reported(map) == dropped
            })
        };
        if produced.iter().all(consumed) {
            return;
        }
        assert!(Instant::now() < until, "not every record consumed: {latest:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A map that overflows while bpfstream is stopped (SIGSTOP) says so on its own `lost` lines,
/// and its summary counts them; the other map is exact by itself.
#[test]
fn the_lost_lines_of_a_map_name_it() {
    let Some(_kernel) = kernel_test() else { return };
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfstream_run_maps", exe.display());
    let file = object("run_maps.ring.bpf.o");
    let args =
        ["run", &file, "--uprobe", &target, "--json", "--buffer-size", "4096", "--map", "events", "--map", "second"];
    let run = start(&args);
    let (sent, second) = (1000, 3);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.pid() as i32, libc::SIGSTOP) };
    for seq in 0..sent {
        bpfstream_run_maps(seq, 0);
    }
    for seq in 0..second {
        bpfstream_run_maps(seq, 1);
    }
    // SAFETY: as above.
    unsafe { libc::kill(run.pid() as i32, libc::SIGCONT) };
    // Every record taken before the stop, and its line out: the stop's output deadline (which an
    // emulated machine can spend writing what was queued) is the stop tests' subject, not this.
    wait_until_consumed(&run, &[("events", sent), ("second", second)]);
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    let lost = finished.of_type("lost");
    assert!(lost.iter().all(|l| l["map"] == "events"), "{lost:?}");
    let lost: u64 = lost.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    let summaries = finished.of_type("summary");
    let summary = |name: &str| summary_of(&summaries, name);
    let events = summary("events");
    assert!(lost > 0, "a 4 KiB ring cannot hold {sent} records: {events}");
    assert_eq!(events["dropped"], lost, "{events}");
    assert_eq!(events["events"].as_u64().unwrap() + lost, sent, "{events}");
    assert_eq!(events["produced"], sent, "{events}");
    let second_summary = summary("second");
    assert_eq!(
        (&second_summary["events"], &second_summary["dropped"]),
        (&json!(second), &json!(0)),
        "{second_summary}"
    );
}

/// SIGUSR1's run so far names each map as its summary does: a `progress` object with `"map"`
/// (`--json`), or `map NAME: so far: ...` on stderr.
fn the_run_so_far_names_each_map(json: bool) {
    let Some(_kernel) = kernel_test() else { return };
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfstream_run_maps", exe.display());
    let file = object("run_maps.ring.bpf.o");
    let names = ["events", "second", "plain"];
    let mut args = vec!["run", &file, "--uprobe", &target];
    args.extend(json.then_some("--json"));
    args.extend(names.iter().flat_map(|name| ["--map", name]));
    let run = start(&args);
    send_to_maps();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.pid() as i32, libc::SIGUSR1) };
    let reports = || match json {
        true => run.stdout_so_far().into_iter().filter(|l| l.starts_with("{\"type\":\"progress\"")).collect(),
        false => run.stderr_so_far().lines().filter(|l| l.contains("so far: ")).map(str::to_owned).collect(),
    };
    let deadline = deadline(std::time::Duration::from_secs(10));
    let mut so_far: Vec<String> = reports();
    while so_far.len() < names.len() {
        assert!(std::time::Instant::now() < deadline, "not a report per map after SIGUSR1: {so_far:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
        so_far = reports();
    }
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    for (report, name) in so_far.iter().zip(names) {
        match json {
            true => assert_eq!(serde_json::from_str::<Value>(report).unwrap()["map"], name, "{report}"),
            false => assert!(report.starts_with(&format!("map {name}: so far: ")), "{report}"),
        }
    }
}

#[test]
fn the_run_so_far_names_each_map_in_json() {
    the_run_so_far_names_each_map(true);
}

#[test]
fn the_run_so_far_names_each_map_for_people() {
    the_run_so_far_names_each_map(false);
}

/// Whether the `--output` tests run here: not in an emulated guest (time scaled), which runs no
/// exporter's test (`NO_KERNEL` in scripts/kernel-test: the host's engines are not on its
/// loopback); their kernel side is the maps' own tests.
fn on_the_host() -> bool {
    let host = !time_scale::is_scaled();
    if !host {
        eprintln!("time is scaled (an emulated guest): the --output tests run on the host only");
    }
    host
}

/// With `--output`, each map's events are exported with their `"map"`, and each map's summary
/// accounts for its own: exported + export_failed + dropped = produced, every event exported.
#[test]
fn each_map_exports_its_events_with_its_own_accounting() {
    let Some(_kernel) = kernel_test().filter(|_| on_the_host()) else { return };
    let Some(nats) = common::engine::Nats::get() else { return };
    let (url, subject) = nats.url("run-maps");
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfstream_run_maps", exe.display());
    let file = object("run_maps.ring.bpf.o");
    let names = ["events", "second", "plain"];
    let mut args = vec!["run", &file, "--uprobe", &target, "--json", "--output", &url];
    args.extend(["--output-option", "flush_timeout=60s"]);
    args.extend(names.iter().flat_map(|name| ["--map", name]));
    let run = start(&args);
    let sent = send_to_maps();
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    let summaries = finished.of_type("summary");
    for (map, name) in names.iter().enumerate() {
        let n = sent.iter().filter(|&&(_, m)| m == map).count() as u64;
        let s = summary_of(&summaries, name);
        assert_eq!((&s["events"], &s["exported"], &s["export_failed"]), (&json!(n), &json!(n), &json!(0)), "{s}");
        if let Some(produced) = s["produced"].as_u64() {
            let dropped = s["dropped"].as_u64().unwrap();
            assert_eq!(n + dropped, produced, "exported + export_failed + dropped = produced: {s}");
        }
    }
    let mut lines: Vec<String> =
        finished.stdout.iter().filter(|l| l.starts_with("{\"type\":\"map_event\"")).cloned().collect();
    let mut messages: Vec<String> =
        common::engine::nats_messages(&nats.address(), &subject).into_iter().map(|m| m.payload).collect();
    lines.sort();
    messages.sort();
    assert_eq!(messages, lines, "every event's line, once, each with its map");
    let mut exported: Vec<(u64, usize)> = Vec::new();
    for message in &messages {
        let event: Value = serde_json::from_str(message).unwrap();
        let map = event["map_"].as_u64().unwrap() as usize;
        assert_eq!(event["map"], names[map], "{event}");
        exported.push((event["seq"].as_u64().unwrap(), map));
    }
    exported.sort();
    assert_eq!(exported, sent);
}

/// An engine that hangs (SIGSTOP) behind a queue of one: what each map could not export is
/// reported as it happens on `lost` lines (`"cause":"export"`) that name the map.
#[test]
fn the_export_lost_lines_of_a_map_name_it() {
    let Some(_kernel) = kernel_test().filter(|_| on_the_host()) else { return };
    let Some(server) = common::engine::NatsServer::start() else { return };
    let url = server.url("bpfstream.test.run-maps-hung");
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfstream_run_maps", exe.display());
    let file = object("run_maps.ring.bpf.o");
    let mut args = vec!["run", &file, "--uprobe", &target, "--json", "--output", &url, "--map", "events"];
    args.extend(["--map", "second", "--output-option", "queue=1", "--output-option", "in_flight=1"]);
    let run = start(&args);
    server.run_on(false);
    for seq in 0..20 {
        bpfstream_run_maps(seq, 0);
        bpfstream_run_maps(seq, 1);
    }
    let export_lost = |lines: &[String]| -> Vec<Value> {
        let lost = lines.iter().filter(|l| l.starts_with("{\"type\":\"lost\"") && l.contains("\"cause\":\"export\""));
        lost.map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let named = |lost: &[Value], map: &str| lost.iter().any(|l| l["map"] == map);
    let deadline = deadline(std::time::Duration::from_secs(10));
    while !["events", "second"].iter().all(|map| named(&export_lost(&run.stdout_so_far()), map)) {
        assert!(std::time::Instant::now() < deadline, "no export loss of each map: {:?}", run.stdout_so_far());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let finished = run.stop();
    server.run_on(true);
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    let lost = export_lost(&finished.stdout);
    let summaries = finished.of_type("summary");
    for map in ["events", "second"] {
        let reported: u64 = lost.iter().filter(|l| l["map"] == map).map(|l| l["count"].as_u64().unwrap()).sum();
        let s = summary_of(&summaries, map);
        assert!(reported > 0 && reported <= s["export_failed"].as_u64().unwrap(), "{map}: {reported} reported: {s}");
        assert_eq!(s["exported"].as_u64().unwrap() + s["export_failed"].as_u64().unwrap(), 20, "{s}");
    }
    assert!(lost.iter().all(|l| l["map"] == "events" || l["map"] == "second"), "{lost:?}");
}

/// A program with its own ring and bpf_ringbuf_output (no bpfstream.h), run by a user with
/// CAP_BPF and CAP_PERFMON only.
#[test]
fn a_program_without_bpfstream_h_streams_and_says_drops_are_not_counted() {
    let Some(_kernel) = kernel_test() else { return };
    let child = Workload::spawn("bpfs-plain", None, vec![Step::Getppid(3)]);
    let set = format!("target_pid={}", child.pid());
    let file = object("run_plain.bpf.o");
    let args = ["run", &file, "--type", "plain_event", "--set", &set, "--json", "--fields", "comm,nr"];
    let run = start_least_privileged(&args);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    let expected = json!({"type": "plain_event", "comm": "bpfs-plain", "nr": 110});
    assert_eq!(finished.of_type("plain_event"), vec![expected; 3]);
    let summary = finished.summary();
    assert_eq!(
        (&summary["events"], &summary["dropped"], &summary["counters"]),
        (&json!(3), &Value::Null, &json!(false))
    );
    assert!(summary.get("produced").is_none(), "never a made-up number: {summary}");
}

#[test]
fn each_section_attaches_where_it_says_and_what_cannot_is_refused_by_name() {
    let Some(_kernel) = kernel_test() else { return };
    let file = object("run_sections.bpf.o");
    let refused = |args: &[&str], expected: &str| {
        let mut all = vec!["run", file.as_str()];
        all.extend(args);
        let (code, err) = run_to_end(&all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    };
    refused(&[], "several events maps (first, second): choose with --map NAME");
    refused(&["--map", "first"], "names no record type: give --type STRUCT");
    refused(
        &["--map", "first", "--type", "section_event"],
        "program net is in section \"xdp\", which run cannot attach",
    );
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if kprobes {
        eprintln!("this kernel has kprobes: the kprobe program attaches (not refused)");
    } else {
        refused(&["--map", "first", "--type", "section_event", "--program", "nanosleep"], "this kernel has no kprobes");
    }

    let child = Workload::spawn(
        "bpfs-sections",
        None,
        vec![Step::Getppid(3), Step::Sleep(std::time::Duration::from_millis(1))],
    );
    let pid = child.pid().to_string();
    let set = format!("target_pid={pid}");
    let mut args = vec!["run", &file, "--map", "first", "--type", "section_event", "--set", &set];
    for program in ["raw_enter", "btf_enter", "tp_enter"].into_iter().chain(kprobes.then_some("nanosleep")) {
        args.extend(["--program", program]);
    }
    let run = start(&args);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    // A table, and the summary of a program without bpfstream.h's counters on stderr.
    assert_eq!(finished.stdout[0].split_whitespace().collect::<Vec<_>>(), ["KIND", "PID"]);
    let mut by_kind = BTreeMap::new();
    for row in &finished.stdout[1..] {
        let [kind, row_pid] = row.split_whitespace().collect::<Vec<_>>()[..] else { panic!("{row:?}") };
        assert_eq!(row_pid, pid);
        *by_kind.entry(kind.parse::<u32>().unwrap()).or_insert(0) += 1;
    }
    let mut expected = BTreeMap::from([(1, 3), (2, 3), (3, 3)]); // raw_tp, tp_btf, tp: 3 getppid each
    if kprobes {
        expected.insert(4, 1); // kprobe/do_nanosleep: the sleep
    }
    assert_eq!(by_kind, expected);
    let events = expected.values().sum::<u32>();
    let summary = finished.stderr.lines().find(|l| l.contains(" events in ")).unwrap_or_default();
    assert!(summary.starts_with(&format!("{events} events in ")), "no dropped count: {}", finished.stderr);
    assert!(summary.contains("drops not counted") && !summary.contains("; produced "), "{summary}");
}

#[test]
fn bad_objects_and_options_are_one_line_and_exit_2() {
    let dir = temp_dir("run-bad");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not an object\n").unwrap();
    let mut unbtf = std::fs::read(object("run_plain.bpf.o")).unwrap();
    rename(&mut unbtf, b".BTF\0", b".XTF\0");
    let no_btf = dir.join("no_btf.bpf.o");
    std::fs::write(&no_btf, unbtf).unwrap();
    let (kinds, plain, externs) =
        (object("run_kinds.ring.bpf.o"), object("run_plain.bpf.o"), object("run_externs.ring.bpf.o"));
    let uprobe = "--uprobe=/bin/true:main";
    let cases: &[(&[&str], &str)] = &[
        (&[text.to_str().unwrap()], "notes.txt: not an ELF object"),
        (&["/nonexistent/x.bpf.o"], "/nonexistent/x.bpf.o: No such file or directory"),
        (&[no_btf.to_str().unwrap()], "the object has no BTF (.BTF section): compile it with clang -g"),
        (&[&externs], "cannot resolve externs: LINUX_KERNEL_VERSION (a __kconfig extern"),
        (&[&plain], "the object names no record type: give --type STRUCT"),
        (&[&plain, "--type", "nope"], "no struct nope in the object's BTF"),
        (&[&plain, "--type", "plain_event", "--map", "nope"], "--map nope: the object has no map nope"),
        (&[&plain, "--type", "plain_event", "--map", "rb", "--map", "rb"], "--map rb is given twice"),
        (
            &[&plain, "--type", "plain_event", "--map", "rb", "--map", "nope"],
            "--map nope: the object has no map nope (its events maps: rb)",
        ),
        (
            &[&plain, "--type", "plain_event", "--set", "nope=1"],
            "--set nope: the object has no read-only global nope (its globals: target_pid)",
        ),
        (&[&plain, "--type", "plain_event", "--set", "target_pid=-1"], "--set target_pid=-1: \"-1\" is not a __u32"),
        (
            &[&plain, "--type", "plain_event", "--pid", "1"],
            "--pid, --uid, --name, -n and --cgroup set the globals of bpfstream_filter.h",
        ),
        (&[&plain, "--type", "plain_event", "--fields", "pid,nope"], "--fields: plain_event has no field \"nope\""),
        (&[&plain, "--type", "plain_event", "-T"], "-T and --elapsed read the record's ts_ns"),
        (&[&plain, "--type", "plain_event", "--json", "--cgroup-path"], "--cgroup-path reads the record's cgroup_id"),
        (&[&plain, "--type", "plain_event", "--buffer", "perf"], "--buffer perf: the object's map rb is a ring buffer"),
        (
            &[&plain, "--type", "plain_event", "--wakeup", "every"],
            "--wakeup: the object's programs choose their own ring wakeups",
        ),
        (&[&kinds], "program kinds (uprobe) names no function in its section: give --uprobe PATH:SYMBOL"),
        (
            &[&kinds, uprobe, "--set", "label=123456789"],
            "--set label=123456789: 9 bytes do not fit in char[8] with its NUL",
        ),
        (&[&kinds, uprobe, "--set", "color_value=PURPLE"], "enum color takes one of RED, GREEN, BLUE"),
        (
            &[&kinds, uprobe, "--program", "nope"],
            "--program nope: the object has no program nope (its programs: kinds)",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["run"];
        all.extend(args.iter());
        let (code, err) = run_to_end(&all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// Renames every ELF section name ending in `from` (`.BTF` and `.rel.BTF`).
fn rename(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    for at in 0..bytes.len() - from.len() {
        if &bytes[at..at + from.len()] == from {
            bytes[at..at + to.len()].copy_from_slice(to);
        }
    }
}

#[test]
fn describe_shows_the_object_without_privileges() {
    let file = object("run_kinds.ring.bpf.o");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .args([bin(), "run", &file, "--describe"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "events                   ringbuf            max_entries 262144  <- streamed",
        "kinds                    uprobe                           refused: program kinds (uprobe) names no function",
        "label                    char[8]                  = \"none\"",
        "color_value              enum color               = RED",
        "record: struct kinds_event (112 bytes; BPFSTREAM_EXPORT_STRUCT)",
        "   110     -  data                     char[] (variable length: data_len elements)",
        "    96:3     4  mid                      __u32 (13-bit bitfield)",
        "privileges: CAP_BPF + CAP_PERFMON",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
}

/// The built-in tracer and `run` on its own object, side by side on one workload: every field
/// the record carries has the same value in both (and `--cgroup-path`'s), but the time stamps
/// (each program takes its own) and what the tracer computes in userspace (syscall names, argv).
fn same_events(
    tracer: &[&str],
    run: &[&str],
    (kind, record): (&str, &str),
    must: &[&str],
    workload: impl FnOnce(),
) -> usize {
    let builtin = start(tracer);
    let through_run = start(run);
    workload();
    let (a, b) = (builtin.stop(), through_run.stop());
    assert!(a.status.success() && b.status.success(), "stderr:\n{}\n{}", a.stderr, b.stderr);
    let (a, b) = (a.of_type(kind), b.of_type(record));
    assert_eq!(a.len(), b.len(), "{tracer:?}: {a:#?}\n{run:?}: {b:#?}");
    for (x, y) in a.iter().zip(&b) {
        let compared: Vec<&String> = y.as_object().unwrap().keys().filter(|k| x.get(k.as_str()).is_some()).collect();
        for key in &compared {
            if !["type", "ts_ns", "duration_ns"].contains(&key.as_str()) {
                assert_eq!(x[key.as_str()], y[key.as_str()], "{key}: {x} against {y}");
            }
        }
        for key in must {
            assert!(compared.iter().any(|k| k == key), "{key} compared: {compared:?}");
        }
    }
    a.len()
}

/// Left out where time is scaled (an emulated guest): it compares the decoding of the same
/// bytes as here, and its six tracers would take half of this binary's time there.
#[test]
fn the_tracers_objects_through_run_give_what_the_tracers_give() {
    let Some(_kernel) = kernel_test() else { return };
    if time_scale::is_scaled() {
        eprintln!("time is scaled (an emulated guest): the side-by-side comparison runs on the host");
        return;
    }
    let obj = |name: &str| repo().join("bpf/obj").join(name).to_str().unwrap().to_owned();

    let mut steps = vec![Step::Getppid(20)];
    for i in 0..3 {
        let path = std::ffi::CString::new(format!("/nonexistent-bpfstream-run/{i}")).unwrap();
        steps.push(Step::OpenAt { dirfd: libc::AT_FDCWD, path, flags: libc::O_RDONLY });
    }
    let child = Workload::spawn("bpfs-dogfood", None, steps.clone());
    let pid = child.pid().to_string();
    let file = obj("syscalls.ring.bpf.o");
    let n = same_events(
        &["syscalls", "--json", "--cgroup-path", "--pid", &pid],
        &["run", &file, "--type", "syscall_event", "--json", "--cgroup-path", "--pid", &pid],
        ("syscall", "syscall_event"),
        &["pid", "tid", "comm", "nr", "ret", "cgroup_id", "cgroup"],
        || drop(child.go()),
    );
    assert_eq!(n, 23);

    let child = Workload::spawn("bpfs-dogfood", None, steps);
    let pid = child.pid().to_string();
    let file = obj("open.ring.bpf.o");
    let n = same_events(
        &["open", "--json", "--pid", &pid],
        &["run", &file, "--json", "--pid", &pid],
        ("open", "open_event"),
        &["pid", "tid", "comm", "flags", "ret", "cgroup_id", "filename"],
        || drop(child.go()),
    );
    assert_eq!(n, 3, "the three openat, filenames compared");

    let dir = temp_dir("run-dogfood");
    let name = "bpfs-rundog";
    let binary = probe_binary(&dir, name);
    let file = obj("exec.ring.bpf.o");
    let run = ["run", &file, "--json", "--name", name];
    let must = ["pid", "ppid", "uid", "comm", "ret", "cgroup_id", "filename"];
    let n = same_events(&["exec", "--json", "--name", name], &run, ("exec", "exec_event"), &must, || {
        assert!(Command::new(&binary).status().unwrap().success());
    });
    assert_eq!(n, 1, "filename compared; argv is split in userspace by the tracer");
}
