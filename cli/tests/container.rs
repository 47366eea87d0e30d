//! `--cgroup-path` against the real kernel: processes exec'd in cgroups named as docker,
//! containerd (CRI), CRI-O and podman name them carry their cgroup's path, container id and pod
//! UID; a cgroup that comes back under the same name is resolved anew; one removed before the
//! tracer read its event is said gone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const POD: &str = "0f4c2d1e-9a8b-4c7d-8e6f-5a4b3c2d1e0f";

/// A cgroup made below `root` for the test (and its parents), removed by [`remove`].
fn make(root: &Path, relative: &str) -> PathBuf {
    let dir = root.join(relative);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a cgroup whose tasks have exited (retrying while the kernel still counts one).
fn remove(dir: &Path) {
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("could not remove {dir:?}");
}

/// Removes `dir` and the cgroups below it, deepest first (their files go with them).
fn remove_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            remove_tree(&entry.path());
        }
    }
    remove(dir);
}

/// A cgroup of the test's own under the cgroup2 mount, empty: (its name, its directory).
fn fresh_root(tag: &str) -> (String, PathBuf) {
    let name = format!("{tag}-{}", std::process::id());
    let root = cgroup2_mount().join(&name);
    if root.exists() {
        remove_tree(&root);
    }
    (name, root)
}

/// Runs `/bin/true MARKER` from a shell that moved itself into `cgroup` first.
fn exec_in(cgroup: &Path, marker: &str) {
    let procs = cgroup.join("cgroup.procs");
    let script = format!("echo $$ > '{}' && exec /bin/true {marker}", procs.display());
    assert!(Command::new("sh").args(["-c", &script]).status().unwrap().success(), "{script}");
}

/// The exec event whose argv ends with `marker`.
fn event<'a>(events: &'a [Value], marker: &str) -> &'a Value {
    let mine: Vec<_> = events.iter().filter(|e| e["args"].as_array().unwrap().last() == Some(&marker.into())).collect();
    assert_eq!(mine.len(), 1, "{marker} in {events:#?}");
    mine[0]
}

/// Waits until `pid` is stopped (state T in /proc/PID/stat).
fn wait_stopped(pid: u32) {
    let state =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().rsplit(") ").next().unwrap().to_string();
    let deadline = deadline(Duration::from_secs(10));
    while !state().starts_with('T') {
        assert!(std::time::Instant::now() < deadline, "pid {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the tracer printed `count` lines.
fn wait_lines(run: &Running, count: usize) {
    let deadline = deadline(Duration::from_secs(10));
    while run.lines_so_far() < count {
        assert!(std::time::Instant::now() < deadline, "{} of {count} lines", run.lines_so_far());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn events_carry_their_cgroup_container_and_pod() {
    let Some(_kernel) = kernel_test() else { return };
    let (name, root) = fresh_root("bpfstream-containers");
    let uid_ = POD.replace('-', "_");
    let docker = format!("system.slice/docker-{ID}.scope");
    let cri =
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope");
    let crio = format!("kubepods/besteffort/pod{POD}/crio-{ID}");
    let podman = format!("machine.slice/libpod-{ID}.scope");
    let plain = "system.slice/ssh.service".to_string();
    let gone = format!("system.slice/docker-{}.scope", "f".repeat(64));
    std::fs::create_dir(&root).unwrap();

    let run = start(&["exec", "--json", "--cgroup-path", "--cgroup", root.to_str().unwrap()]);
    let mut kept = Vec::new();
    for (i, relative) in [&docker, &cri, &crio, &podman, &plain].into_iter().enumerate() {
        let dir = make(&root, relative);
        exec_in(&dir, &format!("first-{i}"));
        kept.push(dir);
    }
    // Once the tracer wrote the docker container's event (its path read), the cgroup goes and
    // comes back under the same name: another cgroup (another id), resolved to its path anew.
    wait_lines(&run, kept.len());
    remove(&kept.remove(0));
    let again = make(&root, &docker);
    exec_in(&again, "again");
    // Made, used and removed while the tracer is stopped: gone before it could be resolved.
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(run.pid() as i32, libc::SIGSTOP) }, 0);
    wait_stopped(run.pid());
    let removed = make(&root, &gone);
    exec_in(&removed, "gone");
    remove(&removed);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(run.pid() as i32, libc::SIGCONT) }, 0);
    let finished = run.stop();
    remove_tree(&root);
    assert!(finished.status.success(), "{:?}\n{}", finished.status, finished.stderr);

    let events = finished.of_type("exec");
    let path = |relative: &str| format!("/{name}/{relative}");
    let expect = [
        ("first-0", path(&docker), Some(ID), None),
        ("first-1", path(&cri), Some(ID), Some(POD)),
        ("first-2", path(&crio), Some(ID), Some(POD)),
        ("first-3", path(&podman), Some(ID), None),
        ("first-4", path(&plain), None, None),
        ("again", path(&docker), Some(ID), None),
    ];
    for (marker, cgroup, container, pod) in expect {
        let e = event(&events, marker);
        assert_eq!(e["cgroup"], cgroup.as_str(), "{e}");
        assert_eq!(e["container_id"].as_str(), container, "{e}");
        assert_eq!(e["pod_uid"].as_str(), pod, "{e}");
        assert!(e.get("cgroup_gone").is_none(), "{e}");
    }
    let ids: Vec<_> = ["first-0", "again"].iter().map(|m| event(&events, m)["cgroup_id"].as_u64()).collect();
    assert_ne!(ids[0], ids[1], "a cgroup made again under the same name has another id");
    let e = event(&events, "gone");
    assert_eq!(e["cgroup_gone"], true, "{e}");
    assert!(e.get("cgroup").is_none() && e.get("container_id").is_none(), "never a wrong path: {e}");
}

#[test]
fn cgroup_path_needs_json_lines() {
    let (code, err) = run_to_end(&["exec", "--cgroup-path", "-d", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cgroup-path adds fields to JSON lines"), "{err}");
}

/// `open` and `syscalls` take the flag too: a process in a docker container's cgroup opens a
/// file, and each tracer's events of it carry the container.
#[test]
fn open_and_syscalls_events_carry_the_container() {
    let Some(_kernel) = kernel_test() else { return };
    let (name, root) = fresh_root("bpfstream-containers-tools");
    let relative = format!("system.slice/docker-{ID}.scope");
    let cgroup = make(&root, &relative);
    for tracer in ["open", "syscalls"] {
        let run = start(&[tracer, "--json", "--cgroup-path", "--cgroup", root.to_str().unwrap()]);
        let marker = format!("/nonexistent-{tracer}-marker");
        let script = format!("echo $$ > '{}' && exec cat {marker}", cgroup.join("cgroup.procs").display());
        let _ = Command::new("sh").args(["-c", &script]).stderr(std::process::Stdio::null()).status().unwrap();
        let finished = run.stop();
        assert!(finished.status.success(), "{tracer}: {}", finished.stderr);
        let events: Vec<_> =
            finished.json().into_iter().filter(|e| e["type"] == "open" || e["type"] == "syscall").collect();
        assert!(!events.is_empty(), "{tracer}: no event");
        if tracer == "open" {
            assert!(events.iter().any(|e| e["filename"] == marker.as_str()), "{events:#?}");
        }
        for e in &events {
            assert_eq!(e["cgroup"], format!("/{name}/{relative}").as_str(), "{tracer}: {e}");
            assert_eq!(e["container_id"], ID, "{tracer}: {e}");
            assert!(e.get("pod_uid").is_none(), "{tracer}: {e}");
        }
    }
    remove_tree(&root);
}
