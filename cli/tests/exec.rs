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
    assert_nothing_left(
        before,
        &["handle_exec", "exec_enter", "exec_exit", "exec_starts", "events", "bpfstream_stats"],
    );
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
    assert_eq!(
        finished.stdout[0].split_whitespace().collect::<Vec<_>>(),
        ["PCOMM", "PID", "PPID", "RET", "FILENAME", "ARGS"]
    );
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

/// `argv[0]` and the rest, as the program got them: whole up to 128 arguments and 16 KiB (the
/// stated bound), cut beyond with `args_truncated`, in both transports, for execs that succeed
/// (argv from the new program's stack) and execs that fail (argv from the caller).
fn argv_arrives_whole_up_to_the_bound(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let name = format!("bpfsa-{transport}");
    let dir = temp_dir(&format!("argv-{transport}"));
    let probe = probe_binary(&dir, &name);
    let missing = dir.join("missing");
    let plain: Vec<String> = ["a b", "", "-x", "\u{e9}t\u{e9}"].iter().map(|s| s.to_string()).collect();
    let many: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    let big: Vec<String> = (0..5).map(|i| char::from(b'a' + i).to_string().repeat(5000)).collect();
    let run = start(&["exec", "--json", "--buffer", transport, "-n", &name]);
    for args in [&plain, &many, &big] {
        assert!(Command::new(&probe).args(args).status().unwrap().success());
    }
    // The shell's forked child (comm `name`) fails to exec a missing file, with `plain`.
    let script = format!("'{}' \"$@\"; true", missing.display());
    std::fs::create_dir(dir.join("sh")).unwrap();
    let shell = dir.join("sh").join(&name);
    copy_executable(Path::new("/bin/sh"), &shell);
    assert!(Command::new(&shell).arg("-c").arg(&script).arg("sh").args(&plain).status().unwrap().success());
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let mut events = finished.of_type("exec");
    events.sort_by_key(|e| e["ts_ns"].as_u64().unwrap());
    let args_of = |e: &serde_json::Value| -> Vec<String> {
        e["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
    };
    // The three runs of the probe, the shell, and its child's failed exec (the copy of sh is the
    // probe's name too, so its own exec is seen).
    assert_eq!(events.len(), 5, "{events:#?}");
    let argv0 = probe.to_str().unwrap().to_string();
    let with_argv0 = |rest: &[String]| [vec![argv0.clone()], rest.to_vec()].concat();
    assert_eq!(args_of(&events[0]), with_argv0(&plain));
    assert_eq!(events[0]["args_truncated"], false);
    assert_eq!(args_of(&events[1]), with_argv0(&many[..127]), "128 arguments with argv[0]");
    assert_eq!(events[1]["args_truncated"], true);
    let cut = args_of(&events[2]);
    assert_eq!(cut[..4], with_argv0(&big[..3])[..], "whole arguments before the bound");
    assert!(big[3].starts_with(&cut[4]) && cut[4].len() < big[3].len(), "the last one cut");
    let bytes = cut.iter().map(|a| a.len() + 1).sum::<usize>() - 1; // the cut one has no NUL
    assert_eq!(bytes, 16 << 10, "16 KiB, NULs included");
    assert_eq!(events[2]["args_truncated"], true);
    for e in &events[..3] {
        assert_eq!(e["ret"], 0);
        assert_eq!(e["filename"], argv0.as_str());
    }
    let failed = &events[4];
    assert_eq!(failed["ret"], -2, "ENOENT");
    assert_eq!(failed["filename"], missing.to_str().unwrap());
    assert_eq!(args_of(failed), [vec![missing.to_str().unwrap().to_string()], plain.clone()].concat());
    assert_eq!(failed["args_truncated"], false);
    assert_eq!(finished.summary()["failed"], 1);
}

#[test]
fn ring_argv_arrives_whole_up_to_the_bound() {
    argv_arrives_whole_up_to_the_bound("ring");
}

#[test]
fn perf_argv_arrives_whole_up_to_the_bound() {
    argv_arrives_whole_up_to_the_bound("perf");
}

/// Execs that fail are reported with -errno: a missing file (ENOENT), a file that is not
/// executable (EACCES); `-x` shows only those, `--max-args` cuts the arguments.
#[test]
fn failed_execs_carry_their_errno_and_x_shows_only_them() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfsx-failed";
    let dir = temp_dir("failed");
    let shell = dir.join(name);
    copy_executable(Path::new("/bin/sh"), &shell);
    let (missing, not_executable) = (dir.join("missing"), dir.join("data"));
    std::fs::write(&not_executable, b"not a program").unwrap();
    let script = format!("'{}' one two three; '{}' four; /bin/true", missing.display(), not_executable.display());
    let all = start(&["exec", "--json", "-n", name]);
    let failed_only = start(&["exec", "--json", "-x", "--max-args", "2", "-n", name]);
    assert!(Command::new(&shell).arg("-c").arg(&script).status().unwrap().success());
    let (all, failed_only) = (all.stop(), failed_only.stop());

    let failures = failed_only.of_type("exec");
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert_eq!(failures[0]["ret"], -2, "ENOENT");
    assert_eq!(failures[0]["filename"], missing.to_str().unwrap());
    assert_eq!(failures[0]["args"], serde_json::json!([missing.to_str().unwrap(), "one"]));
    assert_eq!(failures[0]["args_truncated"], true, "--max-args 2 of 4");
    assert_eq!(failures[1]["ret"], -13, "EACCES");
    assert_eq!(failures[1]["args"], serde_json::json!([not_executable.to_str().unwrap(), "four"]));
    assert_eq!(failures[1]["args_truncated"], false);
    assert_eq!(failed_only.summary()["produced"], 2, "successes filtered in the kernel");

    let rets: Vec<i64> = all.of_type("exec").iter().map(|e| e["ret"].as_i64().unwrap()).collect();
    assert_eq!(rets, [0, -2, -13], "the shell's own exec, then its child's two failures ({name} filter)");
}

/// `-u` keeps one user's execs, `-n` matches a substring of the comm, and `--name` the whole of
/// it; all in the kernel.
#[test]
fn uid_and_name_filters_are_applied_in_the_kernel() {
    let Some(_kernel) = kernel_test() else { return };
    let dir = temp_dir("uid-name");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let probe = probe_binary(&dir, "bpfsu-probe");
    let other = probe_binary(&dir, "bpfsu-other");
    let by_nobody = start(&["exec", "--json", "-u", "65534", "-n", "bpfsu-"]);
    let substring = start(&["exec", "--json", "-n", "u-pro"]);
    let exact = start(&["exec", "--json", "--name", "u-pro"]);
    let status = Command::new("setpriv").args(LEAST_PRIVILEGE).arg(&probe).status().unwrap();
    assert!(status.success());
    assert!(Command::new(&probe).status().unwrap().success());
    assert!(Command::new(&other).status().unwrap().success());
    let (by_nobody, substring, exact) = (by_nobody.stop(), substring.stop(), exact.stop());
    let nobody = by_nobody.of_type("exec");
    assert_eq!(nobody.len(), 1, "{nobody:#?}");
    assert_eq!(nobody[0]["uid"], 65534);
    assert_eq!(nobody[0]["comm"], "bpfsu-probe");
    assert_eq!(by_nobody.summary()["produced"], 1);
    let comms: Vec<_> = substring.of_type("exec").iter().map(|e| e["comm"].as_str().unwrap().to_string()).collect();
    assert_eq!(comms, ["bpfsu-probe", "bpfsu-probe"]);
    assert_eq!(substring.summary()["produced"], 2);
    assert_eq!(exact.summary()["produced"], 0, "--name matches the whole comm");
}

/// `--cgroup DIR` keeps the execs of tasks in that cgroup (and below), filtered in the kernel,
/// and every event carries the task's cgroup id, the directory's inode number.
#[test]
fn cgroup_filter_keeps_only_tasks_in_the_cgroup() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfsc-cgroup";
    let probe = probe_binary(&temp_dir("cgroup"), name);
    let cgroup = cgroup2_mount().join(format!("bpfstream-test-{}", std::process::id()));
    let _ = std::fs::remove_dir(&cgroup);
    std::fs::create_dir(&cgroup).unwrap();
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup).unwrap());
    let mut inside = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read line; exec '{}'", probe.display()))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), inside.id().to_string()).unwrap();
    let run = start(&["exec", "--json", "--cgroup", cgroup.to_str().unwrap()]);
    let everywhere = start(&["exec", "--json", "-n", name]);
    assert!(Command::new(&probe).status().unwrap().success(), "outside the cgroup");
    inside.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(inside.wait().unwrap().success());
    let (finished, everywhere) = (run.stop(), everywhere.stop());
    std::fs::remove_dir(&cgroup).unwrap();
    let events = finished.of_type("exec");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["pid"], inside.id());
    assert_eq!(events[0]["cgroup_id"], cgroup_id);
    assert_eq!(finished.summary()["produced"], 1, "filtered in the kernel");
    let ids: Vec<u64> = everywhere.of_type("exec").iter().map(|e| e["cgroup_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&cgroup_id) && ids.iter().any(|id| *id != cgroup_id), "{ids:?}");
    let (code, err) = run_to_end(&["exec", "--cgroup", "/tmp"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a cgroup v2 directory"), "{err}");
}

/// As nobody with CAP_BPF and CAP_PERFMON only (no tracefs needed), in both transports: starts,
/// delivers, exits 0.
#[test]
fn least_privilege_is_enough() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfsl-least";
    let probe = probe_binary(&temp_dir("least"), name);
    for transport in unprivileged_transports() {
        let run = start_least_privileged(&["exec", "--json", "--buffer", transport, "-n", name]);
        assert!(Command::new(&probe).arg("x").status().unwrap().success());
        let finished = run.stop();
        assert!(finished.status.success(), "{transport}: {}", finished.stderr);
        let events = finished.of_type("exec");
        assert_eq!(events.len(), 1, "{transport}: {events:#?}");
        assert_eq!(events[0]["args"], serde_json::json!([probe.to_str().unwrap(), "x"]));
    }
}

/// The table is execsnoop's: `-T` wall-clock time, `-U` uid, then PCOMM PID PPID RET, the
/// filename and the arguments (quoted where they hold spaces).
#[test]
fn table_looks_like_execsnoop() {
    let Some(_kernel) = kernel_test() else { return };
    let name = "bpfst-table";
    let probe = probe_binary(&temp_dir("table"), name);
    let run = start(&["exec", "-T", "-U", "-n", name]);
    let child = Command::new(&probe).args(["a b", "-c"]).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait_with_output().unwrap().status.success());
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let header: Vec<_> = finished.stdout[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "UID", "PCOMM", "PID", "PPID", "RET", "FILENAME", "ARGS"]);
    assert_eq!(finished.stdout.len(), 2, "{:?}", finished.stdout);
    let row: Vec<_> = finished.stdout[1].split_whitespace().collect();
    assert_eq!(row[0].len(), 8, "HH:MM:SS: {row:?}");
    let path = probe.to_str().unwrap();
    let ppid = std::process::id().to_string();
    assert_eq!(row[1..], ["0", name, pid.as_str(), ppid.as_str(), "0", path, path, "\"a", "b\"", "-c"]);
}
