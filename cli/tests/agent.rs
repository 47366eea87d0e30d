//! `bpfstream agent --check FILE` and the refusals of `--config FILE`: a valid file exits 0
//! with what it would run; a bad one exits 2 with `FILE:LINE: reason`, attaching nothing.
//! Checking needs no privilege. A running agent reloads its file on SIGHUP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::worker::{Act, Worker};
use common::*;

const VALID: &str = r#"
[output]
url = "nats://127.0.0.1:4222/bpf"
options = { connect = "retry" }

[metrics]
listen = "127.0.0.1:0"

[[stream]]
name = "exec"
tracer = "exec"
args = ["-x", "--cgroup-path"]
priority = 10
topic = "bpf.exec"

[[stream]]
name = "slow"
tracer = "syscalls"
args = ["--min-duration", "10ms"]
"#;

fn write(name: &str, text: &str) -> PathBuf {
    let path = temp_dir(&format!("agent-{name}")).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn agent(mode: &str, file: &Path) -> (Option<i32>, String) {
    let output = Command::new(bin()).args(["agent", mode, file.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(!text.contains("panicked"), "{text}");
    (output.status.code(), text)
}

#[test]
fn a_valid_file_passes_the_check() {
    let file = write("valid.toml", VALID);
    let (code, text) = agent("--check", &file);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "valid: 2 streams (exec: exec, slow: syscalls); output nats://127.0.0.1:4222/bpf; metrics on 127.0.0.1:0"
        ),
        "{text}"
    );
}

#[test]
fn checking_needs_no_privilege() {
    let file = write("unprivileged.toml", VALID);
    std::fs::set_permissions(file.parent().unwrap(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bin(), "agent", "--check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn bad_files_are_refused_with_their_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let cases = [
        (VALID.replace("priority = 10", "priority = 10\nprio = 1"), ":14: unknown field `prio`"),
        (
            VALID.replace("\"-x\",", "\"-x\", \"--errno\", \"ENOENT\","),
            ":12: stream \"exec\": unexpected argument '--errno'",
        ),
        (VALID.replace("127.0.0.1:0", &in_use), ":7: metrics address"),
        (
            VALID.replace("connect = \"retry\"", "connect = \"later\""),
            ":4: [output] options: bad output option: connect=\"later\"",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write(&format!("bad-{i}.toml"), text);
        let (code, message) = agent("--check", &file);
        assert_eq!(code, Some(2), "{expected}: {message}");
        let expected = format!("bpfstream agent: {}{expected}", file.display());
        assert!(message.starts_with(&expected), "expected {expected:?}, got {message:?}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    assert!(agent("--check", Path::new("/no/such/file.toml")).1.contains("/no/such/file.toml: cannot read it"));
    drop(taken);
}

/// `--config` checks the whole file before it attaches anything: with a bad last stream, the
/// agent makes not one bpf() call (seen by `bpfstream syscalls` on a copy of the binary with a
/// name of its own; the same copy tracing for a moment is seen making them).
#[test]
fn a_bad_file_attaches_nothing() {
    let Some(_kernel) = kernel_test() else { return };
    let agent_copy = temp_dir("agent-bpf-calls").join("bpfs-agent");
    copy_executable(Path::new(bin()), &agent_copy);
    let file = write("late-error.toml", &VALID.replace("\"10ms\"", "\"10ms\", \"--syscall\", \"no_such_call\""));
    let watch = start(&["syscalls", "--json", "--name", "bpfs-agent", "--syscall", "bpf"]);
    let run = |args: &[&str]| {
        let child = Command::new(&agent_copy).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        (pid, output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let (refused, code, message) = run(&["agent", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{message}");
    assert!(message.contains(":19: stream \"slow\": invalid value 'no_such_call' for '--syscall"), "{message}");
    let (control, code, message) = run(&["exec", "-d", "0.1"]);
    assert_eq!(code, Some(0), "{message}");
    let calls = watch.stop().of_type("syscall");
    let of = |pid: u32| calls.iter().filter(|e| e["pid"] == pid).count();
    assert_eq!(of(refused), 0, "no bpf() call from the refused agent: {calls:?}");
    assert!(of(control) > 0, "the control run's bpf() calls are seen: {calls:?}");
}

/// The README's example file is valid as written (on a free port).
#[test]
fn the_readme_example_passes_the_check() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = readme.split("## The agent").nth(1).unwrap();
    let example = section.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let file = write("readme.toml", &example.replace("127.0.0.1:9464", "127.0.0.1:0"));
    let (code, text) = agent("--check", &file);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("valid: 2 streams (exec: exec, slow: syscalls); output kafka://127.0.0.1:9092/bpf"),
        "{text}"
    );
}

/// Waits (up to 60 s, scaled) until `agent` printed `lines` lines.
fn wait_for_lines(agent: &Running, lines: usize) {
    let deadline = deadline(std::time::Duration::from_secs(60));
    while agent.lines_so_far() < lines && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The summary line of `stream`, which must be the only one.
fn summary_of<'a>(lines: &'a [serde_json::Value], stream: &str) -> &'a serde_json::Value {
    let summaries: Vec<_> = lines.iter().filter(|l| l["type"] == "summary" && l["stream"] == stream).collect();
    assert_eq!(summaries.len(), 1, "one summary of {stream}: {lines:?}");
    summaries[0]
}

/// The counts `keys` of a summary.
fn counts(summary: &serde_json::Value, keys: &[&str]) -> Vec<u64> {
    keys.iter().map(|k| summary[k].as_u64().unwrap_or_else(|| panic!("{k} in {summary}"))).collect()
}

/// Two streams of one agent, each filtered to one thread of this test: every event carries its
/// stream, and at SIGTERM each stream's summary counts exactly its own events.
#[test]
fn streams_run_together_each_named_and_exact() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let tid = worker.tid;
    let file = write(
        "two.toml",
        &format!(
            "[[stream]]\nname = \"execs\"\ntracer = \"exec\"\nargs = [\"--tid\", \"{tid}\"]\n\n\
             [[stream]]\nname = \"opens\"\ntracer = \"open\"\nargs = [\"--tid\", \"{tid}\"]\npriority = 3\n"
        ),
    );
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let (execs, opens) = (5, 300);
    worker.act(Act::FailedExecs(execs));
    worker.act(Act::Opens(opens));
    wait_for_lines(&agent, execs + opens);
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    let of = |kind: &str, stream: &str| lines.iter().filter(|l| l["type"] == kind && l["stream"] == stream).count();
    assert_eq!(of("exec", "execs"), execs, "{lines:?}");
    assert_eq!(of("open", "opens"), opens);
    assert!(lines.iter().filter(|l| l["type"] == "exec").all(|l| l["ret"] == -libc::ENOENT && l["pid"] != 0));
    for (stream, n) in [("execs", execs), ("opens", opens)] {
        let s = summary_of(&lines, stream);
        let n = n as u64;
        assert_eq!(counts(s, &["events", "dropped", "unwritten", "produced"]), [n, 0, 0, n], "{stream}: {s}");
    }
    assert_eq!(lines.len(), execs + opens + 2, "nothing else on stdout");
    let tracing = finished.stderr.lines().filter(|l| l.starts_with("Tracing")).count();
    assert_eq!(tracing, 2, "{}", finished.stderr);
}

/// A busy low-priority stream does not starve a high-priority one: with the agent stopped
/// (SIGSTOP), 20,000 records wait in the low one's buffer, then one in the high one's; once the
/// agent runs again, the high one's event is served before any of the backlog. With the
/// priorities the other way round, it comes after at least a batch of the backlog (1,024 records).
#[test]
fn a_busy_low_priority_stream_does_not_starve_a_high_one() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let tid = worker.tid;
    let calls = 20_000;
    for (exec_priority, calls_priority) in [(10, 0), (0, 10)] {
        let file = write(
            &format!("priority-{exec_priority}.toml"),
            &format!(
                "[[stream]]\nname = \"busy\"\ntracer = \"syscalls\"\npriority = {calls_priority}\n\
                 args = [\"--tid\", \"{tid}\", \"--syscall\", \"getppid\", \"--buffer-size\", \"16M\"]\n\n\
                 [[stream]]\nname = \"critical\"\ntracer = \"exec\"\npriority = {exec_priority}\n\
                 args = [\"--tid\", \"{tid}\"]\n"
            ),
        );
        let agent = start(&["agent", "--config", file.to_str().unwrap()]);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
        while !common::engine::all_stopped(agent.pid()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        worker.act(Act::Calls(calls));
        worker.act(Act::FailedExecs(1));
        // SAFETY: as above.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
        wait_for_lines(&agent, calls + 1);
        let finished = agent.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        let lines = finished.json();
        let critical = lines.iter().position(|l| l["type"] == "exec").expect("the exec event");
        let busy_before = lines[..critical].iter().filter(|l| l["stream"] == "busy").count();
        if exec_priority > calls_priority {
            assert_eq!(busy_before, 0, "the critical event comes first");
        } else {
            assert!(busy_before >= 1024, "served after the busy stream's batch: {busy_before}");
        }
        for (stream, n) in [("busy", calls), ("critical", 1)] {
            let s = summary_of(&lines, stream);
            let n = n as u64;
            assert_eq!(counts(s, &["events", "produced", "dropped"]), [n, n, 0], "{stream}: {s}");
        }
    }
}

/// With `[output]`, each stream's events go to its own subject and none to stdout, which gets
/// each stream's summary: exported + export_failed + dropped = produced, every event exported.
#[test]
fn each_stream_exports_to_its_own_subject() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = common::engine::Nats::get() else { return };
    let (url, subject) = nats.url("agent");
    let worker = Worker::start();
    let tid = worker.tid;
    let file = write(
        "output.toml",
        &format!(
            "[output]\nurl = \"{url}\"\noptions = {{ flush_timeout = \"30s\" }}\n\n\
             [[stream]]\nname = \"execs\"\ntracer = \"exec\"\nargs = [\"--tid\", \"{tid}\"]\ntopic = \"{subject}.execs\"\n\n\
             [[stream]]\nname = \"opens\"\ntracer = \"open\"\nargs = [\"--tid\", \"{tid}\"]\ntopic = \"{subject}.opens\"\n"
        ),
    );
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let (execs, opens) = (4, 60);
    worker.act(Act::FailedExecs(execs));
    worker.act(Act::Opens(opens));
    let address = nats.address();
    for (stream, n) in [("execs", execs), ("opens", opens)] {
        let deadline = deadline(std::time::Duration::from_secs(60));
        while common::engine::nats_messages(&address, &format!("{subject}.{stream}")).len() < n {
            assert!(std::time::Instant::now() < deadline, "{stream}: not all exported");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    assert_eq!(lines.len(), 2, "only the summaries on stdout: {lines:?}");
    for (stream, kind, n) in [("execs", "exec", execs), ("opens", "open", opens)] {
        let s = summary_of(&lines, stream);
        let n = n as u64;
        assert_eq!(counts(s, &["produced", "events", "dropped", "exported", "export_failed"]), [n, n, 0, n, 0], "{s}");
        let messages = common::engine::nats_messages(&address, &format!("{subject}.{stream}"));
        assert_eq!(messages.len(), n as usize, "{stream}");
        for m in &messages {
            let event: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
            assert_eq!((event["type"].as_str(), event["stream"].as_str()), (Some(kind), Some(stream)), "{event}");
        }
    }
}

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
    agent.stdout_so_far().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|l| {
        l["type"] == "summary" && l["stream"] == stream
    })
}

/// A `[[stream]]` of the given tracer, for thread `tid` only.
fn stream_of(name: &str, tracer: &str, tid: u32, args: &str) -> String {
    format!("[[stream]]\nname = \"{name}\"\ntracer = \"{tracer}\"\nargs = [\"--tid\", \"{tid}\"{args}]\n\n")
}

/// SIGHUP with one stream unchanged, one removed and one added: the removed one's summary comes
/// at the reload; the unchanged one gets every event, before, around and after the reload, and
/// its summary at the stop counts each exactly once; the added one gets those after.
#[test]
fn a_reload_keeps_unchanged_streams_stops_removed_ones_and_starts_added_ones() {
    let Some(_kernel) = kernel_test() else { return };
    let worker = Worker::start();
    let tid = worker.tid;
    let kept = stream_of("kept", "open", tid, "");
    let file = write("reload.toml", &(kept.clone() + &stream_of("gone", "exec", tid, "")));
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let (before, around, after, execs, calls) = (100, 100, 100, 3, 50);
    worker.act(Act::Opens(before));
    worker.act(Act::FailedExecs(execs));
    wait_for_lines(&agent, before + execs);
    hangup(&agent, &file, &(kept + &stream_of("added", "syscalls", tid, ", \"--syscall\", \"getppid\"")));
    worker.act(Act::Opens(around));
    let expected = format!("bpfstream agent: reloaded {}: kept 1, started 1, stopped 1", file.display());
    assert_eq!(reload_line(&agent, 1), expected);
    wait_until(&agent, "the removed stream's summary at the reload", |a| summarized(a, "gone"));
    worker.act(Act::Opens(after));
    worker.act(Act::Calls(calls));
    worker.act(Act::FailedExecs(1)); // no stream traces execs any more
    let opens = before + around + after;
    wait_for_lines(&agent, opens + execs + 1 + calls);
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
