//! `bpfstream exec` against the real kernel: every exec seen exactly once with the right fields
//! in both transports, bursts fully accounted, kernel-side filters, clean exit, clear errors.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// `base/<200-byte components>/.../name`, at least `len` bytes long.
fn long_path(base: &Path, len: usize, name: &str) -> PathBuf {
    let mut path = base.to_path_buf();
    let mut i = 0;
    while path.as_os_str().len() + name.len() + 1 < len {
        let room = len - path.as_os_str().len() - name.len() - 2;
        path.push(format!("{i:03}{}", "d".repeat(room.clamp(1, 200) - 1)));
        i += 1;
    }
    path.join(name)
}

fn exec_each_child_once(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let name = format!("bpfsx-{transport}");
    let dir = temp_dir(&format!("exec-{transport}"));
    let paths = [
        probe_binary(&dir, &name),
        probe_binary(long_path(&dir, 1000, &name).parent().unwrap(), &name),
        probe_binary(long_path(&dir, 4000, &name).parent().unwrap(), &name),
    ];
    assert!(paths[2].as_os_str().len() >= 4000);
    let before = id_watermarks();

    let run = start(&["exec", "--json", "--buffer", transport, "--name", &name]);
    let mut spawned = Vec::new();
    for round in 0..5 {
        for path in &paths {
            let status = Command::new(path).status().unwrap();
            assert!(status.success(), "round {round}: {path:?}");
        }
    }
    for path in &paths {
        let child = Command::new(path).spawn().unwrap();
        spawned.push((child.id(), path.clone()));
        let mut child = child;
        child.wait().unwrap();
    }
    let finished = run.stop();
    assert!(finished.status.success(), "exit status {:?}; stderr:\n{}", finished.status, finished.stderr);

    let events = finished.of_type("exec");
    assert_eq!(events.len(), 18, "5 rounds of 3 paths plus 3 more, nothing else (--name filters)");
    for path in &paths {
        let text = path.to_str().unwrap();
        let seen = events.iter().filter(|e| e["filename"] == text).count();
        assert_eq!(seen, 6, "{} bytes path seen {seen} times", text.len());
    }
    for (pid, path) in &spawned {
        let mine: Vec<_> = events.iter().filter(|e| e["pid"] == *pid).collect();
        assert_eq!(mine.len(), 1, "pid {pid} seen once");
        let e = mine[0];
        assert_eq!(e["filename"], path.to_str().unwrap());
        assert_eq!(e["comm"], name.as_str());
        assert_eq!(e["ppid"], std::process::id());
        assert_eq!(e["uid"], 0);
        assert!(e["ts_ns"].as_u64().unwrap() > 0);
    }
    let summary = finished.summary();
    assert_eq!(summary["events"], 18);
    assert_eq!(summary["dropped"], 0);
    assert_eq!(summary["produced"], 18);
    assert_eq!(summary["buffer"], transport);
    assert!(summary["buffer_bytes"].as_u64().unwrap() >= 256 << 10);
    assert_nothing_left(before, &["handle_exec", "events", "bpfstream_stats"]);
}

#[test]
fn ring_sees_every_exec_once_with_whole_paths() {
    exec_each_child_once("ring");
}

#[test]
fn perf_sees_every_exec_once_with_whole_paths() {
    exec_each_child_once("perf");
}

/// A relative name is made absolute against the caller's working directory, across mounts
/// (/dev/shm is a tmpfs on devtmpfs on /), as written (`.` and `..` stay); from a directory
/// deeper than the BPF side climbs, it is sent as passed.
fn relative_names_are_made_absolute(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let name = format!("bpfsr-{transport}");
    let shm = PathBuf::from(format!("/dev/shm/bpfstream-test-rel-{transport}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shm);
    probe_binary(&shm.join("sub"), &name);
    let mut deep = temp_dir(&format!("rel-deep-{transport}"));
    for _ in 0..70 {
        deep.push("d");
    }
    probe_binary(&deep, &name);

    let run = start(&["exec", "--json", "--buffer", transport, "--name", &name]);
    let runs = [
        (shm.clone(), format!("./sub/{name}"), format!("{}/./sub/{name}", shm.display())),
        (shm.join("sub"), format!("../sub/{name}"), format!("{}/sub/../sub/{name}", shm.display())),
        (
            PathBuf::from("/"),
            format!("{}/sub/{name}", &shm.display().to_string()[1..]),
            format!("{}/sub/{name}", shm.display()),
        ),
        (deep.clone(), format!("./{name}"), format!("./{name}")),
    ];
    for (cwd, program, _) in &runs {
        let status = Command::new(program).current_dir(cwd).status().unwrap();
        assert!(status.success(), "{program} from {cwd:?}");
    }
    let finished = run.stop();
    assert!(
        finished.status.success(),
        "stderr:
{}",
        finished.stderr
    );
    // By time: perf buffers are per CPU, so the children's records may come out of order.
    let mut events = finished.of_type("exec");
    events.sort_by_key(|e| e["ts_ns"].as_u64().unwrap());
    let seen: Vec<String> = events.iter().map(|e| e["filename"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = runs.iter().map(|(_, _, filename)| filename.clone()).collect();
    assert_eq!(seen, expected);
    std::fs::remove_dir_all(&shm).unwrap();
}

#[test]
fn ring_makes_relative_names_absolute() {
    relative_names_are_made_absolute("ring");
}

#[test]
fn perf_makes_relative_names_absolute() {
    relative_names_are_made_absolute("perf");
}

/// A burst while the consumer is stopped overflows the smallest buffer; every exec is still
/// either delivered or counted dropped, and the kernel-side filter means exactly ours were
/// produced.
fn burst_is_fully_accounted(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    const BURST: u64 = 300;
    let name = format!("bpfsb-{transport}");
    let probe = probe_binary(&temp_dir(&format!("burst-{transport}")), &name);
    let run = start(&["exec", "--json", "--buffer", transport, "--buffer-size", "4K", "--name", &name]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.pid() as i32, libc::SIGSTOP) };
    for _ in 0..BURST {
        assert!(Command::new(&probe).status().unwrap().success());
    }
    // SAFETY: as above.
    unsafe { libc::kill(run.pid() as i32, libc::SIGCONT) };
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);
    let summary = finished.summary();
    let events = summary["events"].as_u64().unwrap();
    let dropped = summary["dropped"].as_u64().unwrap();
    assert_eq!(summary["produced"], BURST, "the kernel-side --name filter produced only our execs");
    assert_eq!(events + dropped, BURST, "delivered + dropped = produced");
    assert!(dropped > 0, "a 4 KiB buffer cannot hold {BURST} exec records");
    assert_eq!(finished.of_type("exec").len() as u64, events);
}

#[test]
fn ring_burst_into_smallest_buffer_is_fully_accounted() {
    burst_is_fully_accounted("ring");
}

#[test]
fn perf_burst_into_smallest_buffer_is_fully_accounted() {
    burst_is_fully_accounted("perf");
}

#[test]
fn pid_filter_is_applied_in_the_kernel() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfsp-pid";
    let probe = probe_binary(&temp_dir("pid"), name);
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read line; exec '{}'", probe.display()))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = shell.id().to_string();
    let run = start(&["exec", "--json", "--pid", &pid]);
    for _ in 0..20 {
        Command::new(&probe).status().unwrap(); // other pids: never produced
    }
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    shell.wait().unwrap();
    let finished = run.stop();
    let events = finished.of_type("exec");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["pid"].to_string(), pid);
    assert_eq!(events[0]["filename"], probe.to_str().unwrap());
    assert_eq!(finished.summary()["produced"], 1, "other processes' execs were filtered in the kernel");
}

#[test]
fn sigterm_and_duration_end_with_a_summary() {
    let Some(_kernel) = kernel_test() else { return };
    let finished = start(&["exec", "--json", "--name", "bpfs-nothing"]).stop_with(libc::SIGTERM);
    assert!(finished.status.success());
    assert_eq!(finished.summary()["events"], 0);

    let started = std::time::Instant::now();
    let finished = start(&["exec", "--duration", "0.5"]).wait();
    assert!(finished.status.success());
    assert!(started.elapsed() < scaled(std::time::Duration::from_secs(20)));
    assert_eq!(finished.stdout[0].split_whitespace().collect::<Vec<_>>(), ["UID", "PCOMM", "PID", "PPID", "FILENAME"]);
    assert!(
        finished.stderr.contains("events, 0 dropped") || finished.stderr.contains(" dropped"),
        "{}",
        finished.stderr
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let (code, err) = run_to_end(&["exec", "--buffer-size", "1000"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("power of two"), "{err}");
    let (code, err) = run_to_end(&["exec", "--buffer-size", "12Q"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("K/M/G"), "{err}");
    let (code, _) = run_to_end(&["exec", "--no-such-option"]);
    assert_eq!(code, Some(2));
    let (code, _) = run_to_end(&["exec", "--buffer", "pipe"]);
    assert_eq!(code, Some(2));
    let (code, err) = run_to_end(&["exec", "--duration", "0"]);
    assert_eq!(code, Some(2), "{err}");
    for (args, says) in [
        (&["exec", "--pid", "0"][..], "no task's id"),
        (&["exec", "--pid=-5"], "not a task id"),
        (&["exec", "--name", ""], "empty name"),
        (&["syscalls", "--tid", "0"], "no task's id"),
        (&["syscalls", "--summary", "--top", "0"], "--top"),
    ] {
        let (code, err) = run_to_end(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `bpfstream exec 2>&1 | head -1`: stdout and stderr lose their reader while the tracer runs;
/// it still drains, detaches and exits 0 instead of panicking on the closed stderr.
#[test]
fn a_reader_that_goes_away_ends_the_tracer_cleanly() {
    let Some(_kernel) = kernel_test() else { return };
    let (mut read, write) = std::io::pipe().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpfstream"))
        .args(["syscalls", "--duration", "1"])
        .stdout(write.try_clone().unwrap())
        .stderr(write)
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut read, &mut first).unwrap();
    drop(read);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn unprivileged_run_says_which_capability_is_missing() {
    if std::env::var_os("BPFSTREAM_SKIP_KERNEL_TESTS").is_some() {
        return;
    }
    // setpriv (util-linux) drops to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bin(), "exec"])
        .output()
        .expect("setpriv from util-linux");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn without_ring_buffers_the_default_falls_back_to_perf_with_a_notice() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfsf-fallback";
    let probe = probe_binary(&temp_dir("fallback"), name);
    let no_ring = [("BPFSTREAM_NO_RINGBUF", "1")];
    let run = start_with_env(&["exec", "--json", "--name", name], &no_ring);
    let (code, err) = run_to_end_with_env(&["exec", "--buffer", "ring"], &no_ring);
    assert!(Command::new(&probe).status().unwrap().success());
    let finished = run.stop();
    assert!(finished.stderr.contains("Notice: this kernel has no BPF ring buffers"), "{}", finished.stderr);
    assert!(finished.stderr.contains("via perf buffer"), "{}", finished.stderr);
    assert_eq!(finished.summary()["buffer"], "perf");
    assert_eq!(finished.of_type("exec").len(), 1);
    assert_eq!(code, Some(1), "an explicit --buffer ring cannot fall back");
    assert!(err.contains("use --buffer perf"), "{err}");
}

/// Every wakeup policy verifies in the kernel (the BPF side prunes the others at load time, so
/// each must be loaded to be checked) and, with the poll timeout as the delay bound, delivers
/// every exec, even `never`, which never wakes the reader.
#[test]
fn every_wakeup_policy_loads_and_delivers_within_the_delay_bound() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfsw-wakeup";
    let probe = probe_binary(&temp_dir("wakeup"), name);
    for transport in ["ring", "perf"] {
        for policy in ["adaptive", "every", "never", "records:3", "bytes:100"] {
            let run = start(&[
                "exec",
                "--json",
                "--buffer",
                transport,
                "--wakeup",
                policy,
                "--max-delay",
                "20ms",
                "--name",
                name,
            ]);
            for _ in 0..5 {
                assert!(Command::new(&probe).status().unwrap().success());
            }
            // Wait for the records to come out before stopping: the final drain must not be
            // what delivers them.
            let deadline = deadline(std::time::Duration::from_secs(10));
            while run.lines_so_far() < 5 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let streamed = run.lines_so_far();
            let finished = run.stop();
            assert_eq!(streamed, 5, "{transport} {policy}: delivered while running");
            assert_eq!(finished.of_type("exec").len(), 5, "{transport} {policy}");
            assert_eq!(finished.summary()["produced"], 5, "{transport} {policy}");
        }
    }
}
