//! Every tracer as an unprivileged user with CAP_BPF and CAP_PERFMON and nothing more (exit 0,
//! its events delivered), and with no capability at all (exit 1, one line naming the missing
//! capabilities); tracers attach raw tracepoints, so they need and mount no tracefs. exec and open
//! run the same way in their own tests, in both transports.

mod common;

use std::process::{Command, Stdio};

use common::workload::{Step, Workload};
use common::*;

/// `setpriv` (util-linux) as `nobody`/`nogroup`, no supplementary groups, with `caps` (e.g.
/// `+bpf,+perfmon`, or `-all`) inheritable and ambient, so they survive the exec.
fn as_nobody(caps: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", &format!("--inh-caps={caps}")]);
    if caps != "-all" {
        command.arg(format!("--ambient-caps={caps}"));
    }
    command.arg(bin());
    command
}

const BPF_AND_PERFMON: &str = "+bpf,+perfmon";

/// Runs `tool args...` as nobody with CAP_BPF + CAP_PERFMON while `child` runs its steps.
fn trace_as_nobody(tool: &str, args: &[&str], child: Workload) -> Finished {
    let mut command = as_nobody(BPF_AND_PERFMON);
    command.arg(tool).args(args).arg("--json").stdout(Stdio::piped());
    let run = start_command(command, tool);
    child.go();
    let finished = run.stop();
    assert_eq!(finished.status.code(), Some(0), "{tool}: {}", finished.stderr);
    finished
}

#[test]
fn syscalls_runs_with_cap_bpf_and_cap_perfmon_alone() {
    let Some(_kernel) = kernel_test() else { return };
    for transport in unprivileged_transports() {
        let child = Workload::spawn("bpfs-lp-sys", None, vec![Step::Getppid(10)]);
        let pid = child.pid().to_string();
        let finished = trace_as_nobody("syscalls", &["--buffer", transport, "--pid", &pid], child);
        let events = finished.of_type("syscall");
        assert_eq!(events.len(), 10, "{transport}: {events:?}");
        assert_eq!(finished.summary()["produced"], 10);
    }
}

#[test]
fn without_capabilities_every_tracer_says_which_are_missing_in_one_line() {
    if std::env::var_os("BPFSTREAM_SKIP_KERNEL_TESTS").is_some() {
        return;
    }
    for (caps, missing, present) in
        [("-all", "missing CAP_BPF and CAP_PERFMON", ""), ("+bpf", "missing CAP_PERFMON", "CAP_BPF and")]
    {
        for tool in ["exec", "open", "syscalls"] {
            let out = as_nobody(caps).args([tool, "--duration", "1"]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{tool} {caps}: {err}");
            assert_eq!(err.lines().count(), 1, "{tool} {caps}: one line: {err}");
            assert!(err.contains(missing), "{tool} {caps}: {err}");
            assert!(present.is_empty() || !err.contains(&format!("missing {present}")), "{tool} {caps}: {err}");
        }
    }
}

/// Mount points of tracefs in this mount namespace.
fn tracefs_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|rest| rest.starts_with("tracefs ")))
        .map(|l| l.split(' ').nth(4).unwrap().to_string())
        .collect()
}

#[test]
fn tracers_mount_nothing() {
    let Some(_kernel) = kernel_test() else { return };
    let before = tracefs_mounts();
    for tool in ["exec", "open", "syscalls"] {
        let finished = start(&[tool, "--duration", "0.2"]).wait();
        assert!(finished.status.success(), "{tool}: {}", finished.stderr);
        assert_eq!(tracefs_mounts(), before, "{tool}: nothing mounted, nothing unmounted");
    }
}

/// Puts tracefs back at /sys/kernel/tracing (when the test took it away).
struct Remount;

impl Drop for Remount {
    fn drop(&mut self) {
        if !tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing") {
            let ok = Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]).status();
            assert!(ok.is_ok_and(|s| s.success()), "remounting tracefs");
        }
    }
}

#[test]
fn tracers_attach_without_tracefs() {
    let Some(_kernel) = kernel_test() else { return };
    let before = tracefs_mounts();
    let _remount = Remount;
    if !Command::new("umount").arg("/sys/kernel/tracing").status().unwrap().success() {
        eprintln!("skipped: tracefs is in use here, so it cannot be unmounted for the test");
        return;
    }
    assert!(!tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"));
    let run = start(&["open", "--json", "--name", "bpfs-no-such"]);
    assert!(
        !tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"),
        "tracers need no tracefs: {:?}",
        tracefs_mounts()
    );
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(finished.summary()["events"], 0);
    drop(_remount);
    assert_eq!(tracefs_mounts(), before);
}
