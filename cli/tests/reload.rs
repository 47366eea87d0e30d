//! `bpfstream agent` reloads its file on SIGHUP: an unchanged stream runs on, exact across the
//! reload; a removed one stops with its summary then; an added one starts; an invalid file is
//! refused in one line and changes nothing; an added one that cannot start is unhealthy until
//! removed; a moved `[metrics]` answers on its new address; a changed `[output]` restarts the
//! streams that export.
//! Unlike the agent's other tests, these run in the emulated guests too: a reload re-registers
//! running ring and perf buffers in a new epoll set and drains some buffers while others stay
//! attached.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::{counts, http_get, summary_of, wait_for_lines, write};
use common::worker::{Act, Worker};
use common::*;

/// Waits (up to 60 s, scaled) until `ready` holds of `agent`; fails saying `what` otherwise.
fn wait_until(agent: &Running, what: &str, ready: impl Fn(&Running) -> bool) {
    let deadline = deadline(Duration::from_secs(60));
    while !ready(agent) {
        assert!(Instant::now() < deadline, "{what}; stderr:\n{}", agent.stderr_so_far());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `text` to the agent's `file`, then sends it SIGHUP.
fn hangup(agent: &Running, file: &Path, text: &str) {
    std::fs::write(file, text).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
}

/// The agent's `n`th line on stderr that starts with `prefix` (1-based), once it printed it.
fn nth_line(agent: &Running, prefix: &str, n: usize) -> String {
    let lines = |a: &Running| -> Vec<String> {
        a.stderr_so_far().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    };
    wait_until(agent, &format!("{prefix}... #{n}"), |a| lines(a).len() >= n);
    lines(agent).swap_remove(n - 1)
}

/// The `n`th reload's line: `reloaded` or `reload refused`.
fn reload_line(agent: &Running, n: usize) -> String {
    nth_line(agent, "bpfstream agent: reload", n)
}

/// The address of the `n`th metrics server the agent started.
fn metrics_address(agent: &Running, n: usize) -> SocketAddr {
    let line = nth_line(agent, "Metrics on http://", n);
    line["Metrics on http://".len()..].split('/').next().unwrap().parse().unwrap()
}

/// `/metrics` at `address`; `None` when nothing listens there.
fn scrape(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    Some(response)
}

/// Whether the agent printed the summary of `stream` so far.
fn summarized(agent: &Running, stream: &str) -> bool {
    agent
        .stdout_so_far()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|l| l["type"] == "summary" && l["stream"] == stream)
}

/// A `[[stream]]` of the given tracer, for thread `tid` only.
fn stream_of(name: &str, tracer: &str, tid: u32, args: &str) -> String {
    format!("[[stream]]\nname = \"{name}\"\ntracer = \"{tracer}\"\nargs = [\"--tid\", \"{tid}\"{args}]\n\n")
}

/// SIGHUP with one stream unchanged, one removed and one added: the removed one's summary comes
/// at the reload; the unchanged one gets every event, before, around and after the reload, and
/// its summary at the stop counts each exactly once; the added one gets those after. Then a
/// SIGTERM right after a second SIGHUP.
#[test]
fn a_reload_keeps_unchanged_streams_stops_removed_ones_and_starts_added_ones() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let tid = worker.tid;
    let kept = stream_of("kept", "open", tid, "");
    let file = write("reload.toml", &(kept.clone() + &stream_of("gone", "exec", tid, "")));
    let added = stream_of("added", "syscalls", tid, ", \"--syscall\", \"getppid\"");
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let (before, around, after, execs, calls) = (100, 100, 100, 3, 50);
    worker.act(Act::Opens(before));
    worker.act(Act::FailedExecs(execs));
    wait_for_lines(&agent, before + execs);
    hangup(&agent, &file, &(kept.clone() + &added));
    worker.act(Act::Opens(around));
    let expected = format!("bpfstream agent: reloaded {}: kept 1, started 1, stopped 1", file.display());
    assert_eq!(reload_line(&agent, 1), expected);
    wait_until(&agent, "the removed stream's summary at the reload", |a| summarized(a, "gone"));
    worker.act(Act::Opens(after));
    worker.act(Act::Calls(calls));
    worker.act(Act::FailedExecs(1)); // no stream traces execs any more
    let opens = before + around + after;
    wait_for_lines(&agent, opens + execs + 1 + calls);
    // A stop at once after a reload that removes a stream: whichever the agent takes first, each
    // stream's summary comes once.
    hangup(&agent, &file, &kept);
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    let of = |kind: &str, stream: &str| lines.iter().filter(|l| l["type"] == kind && l["stream"] == stream).count();
    assert_eq!((of("open", "kept"), of("exec", "gone"), of("syscall", "added")), (opens, execs, calls), "{lines:?}");
    for (stream, n) in [("kept", opens), ("gone", execs), ("added", calls)] {
        let s = summary_of(&lines, stream);
        let n = n as u64;
        assert_eq!(counts(s, &["events", "dropped", "unwritten", "produced"]), [n, 0, 0, n], "{stream}: {s}");
    }
    let gone = lines.iter().position(|l| l["type"] == "summary" && l["stream"] == "gone").unwrap();
    let first_added = lines.iter().position(|l| l["stream"] == "added").unwrap();
    assert!(gone < first_added, "the removed stream's summary comes before the added stream's events");
    assert_eq!(lines.len(), opens + execs + calls + 3, "nothing else on stdout");
}

/// A file that is not valid on SIGHUP (a metrics address in use, an unknown key) is refused in
/// one line and changes nothing: the streams run on, exact, and the stop gives their summaries.
/// The metrics address already bound, written as such, is no refusal.
#[test]
fn an_invalid_file_on_reload_is_refused_and_the_streams_run_on() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let tid = worker.tid;
    let streams = stream_of("execs", "exec", tid, "") + &stream_of("opens", "open", tid, "");
    let valid = format!("[metrics]\nlisten = \"127.0.0.1:0\"\n\n{streams}");
    let file = write("refused.toml", &valid);
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let bound = metrics_address(&agent, 1);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let refusals = [
        (valid.replace("127.0.0.1:0", &in_use), format!(":2: metrics address {in_use}: ")),
        (valid.replace("tracer = \"open\"", "tracer = \"open\"\npriority = \"high\""), ":12: invalid type".into()),
    ];
    let per_round = 20;
    for (i, (text, expected)) in refusals.iter().enumerate() {
        hangup(&agent, &file, text);
        let line = reload_line(&agent, i + 1);
        let start = format!("bpfstream agent: reload refused: {}{expected}", file.display());
        assert!(line.starts_with(&start), "expected {start:?}, got {line:?}");
        assert!(line.ends_with("; still running the previous configuration"), "{line}");
        worker.act(Act::Opens(per_round));
        worker.act(Act::FailedExecs(1));
        wait_for_lines(&agent, (i + 1) * (per_round + 1));
    }
    hangup(&agent, &file, &valid.replace("127.0.0.1:0", &bound.to_string()));
    let expected = format!("bpfstream agent: reloaded {}: kept 2, started 0, stopped 0", file.display());
    assert_eq!(reload_line(&agent, 3), expected);
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    for (stream, n) in [("execs", refusals.len()), ("opens", refusals.len() * per_round)] {
        let s = summary_of(&lines, stream);
        let n = n as u64;
        assert_eq!(counts(s, &["events", "dropped", "unwritten", "produced"]), [n, 0, 0, n], "{stream}: {s}");
    }
    assert_eq!(finished.stderr.lines().filter(|l| l.starts_with("Tracing")).count(), 2, "{}", finished.stderr);
    drop(taken);
}

/// A stream added on SIGHUP that cannot start (its uprobe's function does not exist) is one
/// line naming it; the others run on, and `/healthz` says 503 naming it until a reload removes
/// it.
#[test]
fn a_stream_that_cannot_start_on_reload_is_unhealthy_until_removed() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let good = format!("[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}", stream_of("execs", "exec", worker.tid, ""));
    let object = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf/obj/tests/run_maps.ring.bpf.o");
    let args = format!("{:?}, \"--map\", \"events\", \"--uprobe\", \"/bin/true:bpfstream_no_such_function\"", object);
    let broken = format!("[[stream]]\nname = \"broken\"\ntracer = \"run\"\nargs = [{args}]\n");
    let file = write("unstarted.toml", &good);
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let address = metrics_address(&agent, 1);
    wait_until(&agent, "healthy once attached", |_| http_get(address, "/healthz") == (200, "ok\n".into()));
    hangup(&agent, &file, &(good.clone() + &broken));
    let reloaded = format!("bpfstream agent: reloaded {}: kept 1, started 0, stopped 0", file.display());
    assert_eq!(reload_line(&agent, 1), reloaded);
    let refused = nth_line(&agent, "bpfstream agent: stream \"broken\" not started: ", 1);
    assert!(refused.ends_with("; the others run on"), "{refused}");
    let (status, body) = http_get(address, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("stream broken: not started: "), "{body}");
    worker.act(Act::FailedExecs(1));
    wait_for_lines(&agent, 1);
    hangup(&agent, &file, &good);
    assert_eq!(reload_line(&agent, 2), reloaded);
    assert_eq!(http_get(address, "/healthz"), (200, "ok\n".into()));
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    assert_eq!(counts(summary_of(&lines, "execs"), &["events", "dropped", "produced"]), [1, 0, 1]);
}

/// A `[metrics]` moved to another address on SIGHUP: the old server closes, the new one answers
/// with the series of the streams running now (the removed stream's gone, the added one's in).
#[test]
fn a_moved_metrics_address_is_served_after_a_reload() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let tid = worker.tid;
    let with = |listen: &str, stream: &str| format!("[metrics]\nlisten = \"{listen}\"\n\n{stream}");
    let file = write("moved.toml", &with("127.0.0.1:0", &stream_of("before", "exec", tid, "")));
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let old = metrics_address(&agent, 1);
    assert!(scrape(old).unwrap().contains("bpfstream_events_produced_total{stream=\"before\"}"));
    hangup(&agent, &file, &with("127.0.0.2:0", &stream_of("after", "exec", tid, "")));
    let expected = format!("bpfstream agent: reloaded {}: kept 0, started 1, stopped 1", file.display());
    assert_eq!(reload_line(&agent, 1), expected);
    let new = metrics_address(&agent, 2);
    assert_eq!(new.ip().to_string(), "127.0.0.2");
    assert!(scrape(old).is_none(), "the old address is closed");
    worker.act(Act::FailedExecs(2));
    wait_for_lines(&agent, 3);
    let page = scrape(new).expect("the new address answers");
    assert!(page.contains("bpfstream_events_produced_total{stream=\"after\"}"), "{page}");
    assert!(!page.contains("stream=\"before\""), "{page}");
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    assert_eq!(counts(summary_of(&lines, "before"), &["events", "produced"]), [0, 0]);
    assert_eq!(counts(summary_of(&lines, "after"), &["events", "produced"]), [2, 2]);
}

/// A changed `[output]` restarts every stream that exports: its summary at the reload, then the
/// stream again on a connection of its own with a new `run`, each part exported exactly (on the
/// host only: an emulated guest has no engine on its loopback).
#[test]
fn a_changed_output_restarts_the_exporting_streams() {
    if time_scale::is_scaled() {
        eprintln!("time is scaled (an emulated guest): the [output] reload runs on the host only");
        return;
    }
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = common::engine::Nats::get() else { return };
    let (url, subject) = nats.url("reload");
    let address = nats.address();
    let worker = Worker::start();
    let with = |timeout: &str| {
        let stream = stream_of("execs", "exec", worker.tid, "");
        format!("[output]\nurl = \"{url}\"\noptions = {{ flush_timeout = \"{timeout}\" }}\n\n{stream}")
    };
    let exported = |n: usize| {
        let deadline = deadline(Duration::from_secs(60));
        while common::engine::nats_messages(&address, &subject).len() < n {
            assert!(Instant::now() < deadline, "not all {n} exported");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let file = write("output.toml", &with("30s"));
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    worker.act(Act::FailedExecs(2));
    exported(2);
    hangup(&agent, &file, &with("20s"));
    let expected = format!("bpfstream agent: reloaded {}: kept 0, started 1, stopped 1", file.display());
    assert_eq!(reload_line(&agent, 1), expected);
    worker.act(Act::FailedExecs(3));
    exported(5);
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    let summaries: Vec<Vec<u64>> = lines
        .iter()
        .filter(|l| l["type"] == "summary" && l["stream"] == "execs")
        .map(|s| counts(s, &["produced", "events", "dropped", "exported", "export_failed"]))
        .collect();
    assert_eq!(summaries, [[2, 2, 0, 2, 0], [3, 3, 0, 3, 0]], "{lines:?}");
    let messages = common::engine::nats_messages(&address, &subject);
    let runs: std::collections::BTreeSet<&str> = messages.iter().map(|m| m.headers["run"].as_str()).collect();
    assert_eq!((messages.len(), runs.len()), (5, 2), "{messages:?}");
}
