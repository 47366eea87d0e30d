//! `bpfstream agent --check FILE` and the refusals of `--config FILE`: a valid file exits 0
//! with what it would run; a bad one exits 2 with `FILE:LINE: reason`, attaching nothing.
//! Checking needs no privilege.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
