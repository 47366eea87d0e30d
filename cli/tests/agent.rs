//! `bpfstream agent --check FILE` and the refusals of `--config FILE`: a valid file exits 0
//! with what it would run; a bad one exits 2 with `FILE:LINE: reason`, attaching nothing.
//! Checking needs no privilege.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use common::agent::{counts, summary_of, wait_for_lines, write};
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

/// A destination's messages, once `n` arrived (or a deadline passed).
type Read = Box<dyn Fn(&str, usize) -> Vec<common::engine::Exported>>;

/// Where an agent's two streams export, for [`exports_each_stream_on_one_connection`].
struct Target {
    /// The `[output]` URL.
    url: String,
    /// The topics or subjects of the streams `execs` and `opens`.
    topics: [String; 2],
    read: Read,
    /// The connections of the agent (its pid) to the engine.
    connections: Box<dyn Fn(u32) -> usize>,
}

/// With `[output]`, the agent's streams share one connection, each stream's events going to
/// its own topic or subject (each with its own `run`, numbered from 1 in order) and none to stdout,
/// which gets each stream's summary: exported + export_failed + dropped = produced, every
/// event exported, each stream counting its own.
fn exports_each_stream_on_one_connection(target: Target) {
    let worker = Worker::start();
    let tid = worker.tid;
    let [execs_topic, opens_topic] = &target.topics;
    let file = write(
        "output.toml",
        &format!(
            "[output]\nurl = \"{}\"\noptions = {{ flush_timeout = \"30s\" }}\n\n\
             [[stream]]\nname = \"execs\"\ntracer = \"exec\"\nargs = [\"--tid\", \"{tid}\"]\ntopic = \"{execs_topic}\"\n\n\
             [[stream]]\nname = \"opens\"\ntracer = \"open\"\nargs = [\"--tid\", \"{tid}\"]\ntopic = \"{opens_topic}\"\n",
            target.url
        ),
    );
    let agent = start(&["agent", "--config", file.to_str().unwrap()]);
    let (execs, opens) = (4, 60);
    worker.act(Act::FailedExecs(execs));
    worker.act(Act::Opens(opens));
    for (topic, n) in [(execs_topic, execs), (opens_topic, opens)] {
        assert_eq!((target.read)(topic, n).len(), n, "{topic}: not all exported");
    }
    assert_eq!((target.connections)(agent.pid()), 1, "one connection for both streams");
    let finished = agent.stop_with(libc::SIGTERM);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json();
    assert_eq!(lines.len(), 2, "only the summaries on stdout: {lines:?}");
    let mut runs = std::collections::HashSet::new();
    for ((stream, kind, n), topic) in
        [("execs", "exec", execs), ("opens", "open", opens)].into_iter().zip(&target.topics)
    {
        let s = summary_of(&lines, stream);
        let n = n as u64;
        assert_eq!(counts(s, &["produced", "events", "dropped", "exported", "export_failed"]), [n, n, 0, n, 0], "{s}");
        assert!(s["output"].as_str().unwrap().ends_with(&format!("/{topic}")), "{s}");
        let messages = (target.read)(topic, n as usize);
        assert_eq!(messages.len(), n as usize, "{stream}");
        for m in &messages {
            let event: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
            assert_eq!((event["type"].as_str(), event["stream"].as_str()), (Some(kind), Some(stream)), "{event}");
            runs.insert(m.headers["run"].clone());
        }
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq()).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{stream}: its own seqs, in order");
    }
    assert_eq!(runs.len(), 2, "a run per stream: {runs:?}");
}

#[test]
fn streams_export_to_their_own_subjects_on_one_nats_connection() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(nats) = common::engine::Nats::get() else { return };
    let (url, subject) = nats.url("agent");
    let address = nats.address();
    let port: u16 = address.rsplit_once(':').unwrap().1.parse().unwrap();
    let reader = address.clone();
    let read = move |subject: &str, n: usize| {
        let deadline = deadline(std::time::Duration::from_secs(60));
        loop {
            let messages = common::engine::nats_messages(&reader, subject);
            if messages.len() >= n || std::time::Instant::now() >= deadline {
                return messages;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    exports_each_stream_on_one_connection(Target {
        url,
        topics: [format!("{subject}.execs"), format!("{subject}.opens")],
        read: Box::new(read),
        connections: Box::new(move |pid| common::engine::connections_to(pid, port)),
    });
}

#[test]
fn streams_export_to_their_own_topics_with_one_kafka_producer() {
    let Some(_kernel) = kernel_test() else { return };
    let Some(kafka) = common::engine::Kafka::get() else { return };
    let (url, execs_topic) = kafka.url("agent-execs", true);
    let (_, opens_topic) = kafka.url("agent-opens", true);
    let address = kafka.address();
    exports_each_stream_on_one_connection(Target {
        url,
        topics: [execs_topic, opens_topic],
        read: Box::new(move |topic, n| common::engine::kafka_messages(&address, topic, n)),
        connections: Box::new(|pid| common::engine::threads_named(pid, "rdk:main")),
    });
}
