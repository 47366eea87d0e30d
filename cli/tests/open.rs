//! `bpfstream open` against the real kernel: names of every length up to 4096 bytes, relative
//! and absolute, not UTF-8, or in a page the process never touched, arrive whole in both
//! transports, in records as long as the name; open, openat and openat2 are all seen; filters
//! are applied in the kernel.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::workload::{Step, Workload};
use common::*;
use serde_json::Value;

/// `base/ddd.../ddd/name`, exactly `len` bytes long (components of at most 200 bytes).
fn path_of_len(base: &Path, len: usize) -> PathBuf {
    let mut path = base.to_path_buf();
    loop {
        let remaining = len - path.as_os_str().len() - 1;
        if remaining <= 200 {
            path.push("f".repeat(remaining));
            assert_eq!(path.as_os_str().len(), len);
            return path;
        }
        path.push("d".repeat(200.min(remaining - 2)));
    }
}

fn create(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"x").unwrap();
}

fn cstring(bytes: &[u8]) -> CString {
    CString::new(bytes).unwrap()
}

/// openat(AT_FDCWD, path, O_RDONLY).
fn open_at(path: &Path) -> Step {
    Step::OpenAt { dirfd: libc::AT_FDCWD, path: cstring(path.as_os_str().as_bytes()), flags: libc::O_RDONLY }
}

/// A file-backed mapping holding `text` that nobody has touched: its page is not resident in
/// the process, so the BPF program cannot read it at entry and must read it at exit.
fn untouched_mapping(dir: &Path, text: &[u8]) -> *const libc::c_char {
    let file = dir.join("name-in-a-mapping");
    let mut bytes = text.to_vec();
    bytes.push(0);
    std::fs::write(&file, &bytes).unwrap();
    let f = std::fs::File::open(&file).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh read-only private mapping of a file we just wrote; it stays mapped for the
    // life of the test process (and of the forked child).
    let ptr =
        unsafe { libc::mmap(std::ptr::null_mut(), bytes.len(), libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0) };
    assert_ne!(ptr, libc::MAP_FAILED);
    ptr.cast()
}

/// What one step should produce.
struct Expected {
    syscall: &'static str,
    filename: Vec<u8>,
    flags: u64,
    truncated: bool,
}

fn expected(syscall: &'static str, filename: &[u8], flags: i32) -> Expected {
    Expected { syscall, filename: filename.to_vec(), flags: flags as u64, truncated: false }
}

/// The opens of the path test, and what each should look like.
fn path_steps(dir: &Path) -> (Vec<Step>, Vec<Expected>) {
    let rd = libc::O_RDONLY | libc::O_CLOEXEC;
    let one = b"a".to_vec();
    let n255 = vec![b'n'; 255];
    let mut rel256 = b"s/".to_vec();
    rel256.extend(vec![b'm'; 254]);
    let abs1000 = path_of_len(dir, 1000);
    let abs4095 = path_of_len(dir, 4095);
    let not_utf8 = b"bad-\xff\xfe-name".to_vec();
    for rel in [&one, &n255, &rel256, &not_utf8] {
        create(&dir.join(std::ffi::OsStr::from_bytes(rel)));
    }
    create(&abs1000);
    create(&abs4095);
    let abs1000 = abs1000.as_os_str().as_bytes().to_vec();
    let abs4095 = abs4095.as_os_str().as_bytes().to_vec();
    let missing = dir.join("missing").as_os_str().as_bytes().to_vec();
    let exactly4096 = vec![b'z'; 4096];
    let over = vec![b'o'; 5000];
    let mapped_name = dir.join(std::ffi::OsStr::from_bytes(&n255)).as_os_str().as_bytes().to_vec();

    let mut steps = Vec::new();
    let mut want = Vec::new();
    for name in [&one, &n255, &rel256, &abs1000, &abs4095, &not_utf8, &missing, &exactly4096] {
        steps.push(Step::OpenAt { dirfd: libc::AT_FDCWD, path: cstring(name), flags: rd });
        want.push(expected("openat", name, rd));
    }
    steps.push(Step::OpenAt { dirfd: libc::AT_FDCWD, path: cstring(&over), flags: rd });
    want.push(Expected { truncated: true, ..expected("openat", &over[..4096], rd) });
    steps.push(Step::Open { path: cstring(&one), flags: libc::O_RDONLY });
    want.push(expected("open", &one, libc::O_RDONLY));
    steps.push(Step::OpenAt2 { path: cstring(&abs1000), flags: rd as u64 });
    want.push(expected("openat2", &abs1000, rd));
    steps.push(Step::OpenAtRaw { ptr: untouched_mapping(dir, &mapped_name), flags: rd });
    want.push(expected("openat", &mapped_name, rd));
    (steps, want)
}

fn filename_of(e: &Value) -> Vec<u8> {
    match e.get("filename_hex") {
        Some(hex) => {
            let hex = hex.as_str().unwrap();
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
        }
        None => e["filename"].as_str().unwrap().as_bytes().to_vec(),
    }
}

fn paths_arrive_whole(transport: &str) {
    let Some(_kernel) = kernel_test() else { return };
    let before = id_watermarks();
    let dir = temp_dir(&format!("open-{transport}"));
    let (steps, want) = path_steps(&dir);
    let child = Workload::spawn("bpfs-open", Some(&dir), steps);
    let pid = child.pid();
    let run = start(&["open", "--json", "--buffer", transport, "--pid", &pid.to_string()]);
    let results = child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "stderr:\n{}", finished.stderr);

    let events = finished.of_type("open");
    assert_eq!(events.len(), want.len(), "one event per open, nothing else: {events:#?}");
    assert_eq!(results[6], -2, "the missing file");
    assert_eq!(results[7], -36, "a 4096-byte name is ENAMETOOLONG");
    let mut record_bytes = 0;
    for (i, ((e, w), ret)) in events.iter().zip(&want).zip(&results).enumerate() {
        let name = filename_of(e);
        assert_eq!(name.len(), w.filename.len(), "step {i}: length");
        assert!(name == w.filename, "step {i}: {} bytes differ", w.filename.len());
        assert_eq!(e["ret"], *ret, "step {i}");
        assert_eq!(e["syscall"], w.syscall, "step {i}");
        assert_eq!(e["flags"], w.flags, "step {i}");
        assert_eq!(e["pid"], pid);
        assert_eq!(e["tid"], pid);
        assert_eq!(e["comm"], "bpfs-open");
        assert_eq!(e.get("truncated").is_some(), w.truncated, "step {i}");
        record_bytes += 72 + w.filename.len() as u64; // struct open_event, then the name
    }
    for (i, ret) in results.iter().enumerate().take(6) {
        assert!(*ret >= 0, "step {i} opened an existing file: {ret}");
    }
    assert!(events[5].get("filename_hex").is_some(), "the non-UTF-8 name carries its bytes in hex");
    let summary = finished.summary();
    assert_eq!(summary["events"], want.len());
    assert_eq!(summary["produced"], want.len());
    assert_eq!(summary["dropped"], 0);
    assert_eq!(summary["truncated"], 1);
    assert_eq!(summary["untracked"], 0);
    let bytes = summary["bytes"].as_u64().unwrap();
    match transport {
        "ring" => assert_eq!(bytes, record_bytes, "ring records are exactly as long as the names"),
        _ => assert!(bytes >= record_bytes && bytes < record_bytes + 8 * want.len() as u64, "perf pads to 8 bytes"),
    }
    assert!(summary["avg_record_bytes"].as_f64().unwrap() < summary["fixed_record_bytes"].as_f64().unwrap());
    assert_nothing_left(before, &["open_enter", "open_exit", "open_reap", "opens", "events", "untracked"]);
}

#[test]
fn ring_paths_arrive_whole() {
    paths_arrive_whole("ring");
}

#[test]
fn perf_paths_arrive_whole() {
    paths_arrive_whole("perf");
}

/// Several tracers with different kernel-side filters watch two children making the same opens.
#[test]
fn filters_are_applied_in_the_kernel() {
    let Some(_kernel) = kernel_test() else { return };
    let dir = temp_dir("open-filters");
    create(&dir.join("exists"));
    let steps = || {
        let mut steps = Vec::new();
        for i in 0..10 {
            let name = if i % 3 == 0 { "missing" } else { "exists" };
            steps.push(open_at(&dir.join(name)));
        }
        steps
    };
    let (opens, failures) = (10u64, 4u64);
    let target = Workload::spawn("bpfs-otarget", None, steps());
    let other = Workload::spawn("bpfs-oother", None, steps());
    let target_pid = target.pid();
    let pid = target_pid.to_string();
    let runs = [
        (vec!["--pid", &pid], opens),
        (vec!["-p", &pid], opens),
        (vec!["--tid", &pid], opens),
        (vec!["-t", &pid], opens),
        (vec!["--name", "bpfs-otarget"], opens),
        (vec!["-n", "otarg"], opens),
        (vec!["--pid", &pid, "--failed"], failures),
        (vec!["-x", "-n", "bpfs-otarget"], failures),
        (vec!["--errno", "ENOENT", "-n", "bpfs-otarget"], failures),
        (vec!["--errno", "EACCES", "-n", "bpfs-otarget"], 0),
        (vec!["-u", "0", "-n", "bpfs-otarget"], opens),
        (vec!["-u", "65534", "-n", "bpfs-o"], 0),
    ];
    let running: Vec<_> = runs
        .iter()
        .map(|(filter, _)| {
            let mut args = vec!["open", "--json"];
            args.extend(filter.iter().copied());
            start(&args)
        })
        .collect();
    let other_thread = std::thread::spawn(move || other.go());
    let results = target.go();
    other_thread.join().unwrap();
    assert_eq!(results.iter().filter(|r| **r == -2).count() as u64, failures);
    for ((filter, expected), run) in runs.iter().zip(running) {
        let finished = run.stop();
        assert!(finished.status.success(), "{filter:?}: {}", finished.stderr);
        let events = finished.of_type("open");
        assert_eq!(events.len() as u64, *expected, "{filter:?}: {events:#?}");
        assert!(events.iter().all(|e| e["pid"] == target_pid), "{filter:?}");
        assert_eq!(finished.summary()["produced"], *expected, "{filter:?}: filtered in the kernel");
    }
}

/// The cgroup v2 id of this process: the inode number of its cgroup's directory.
fn own_cgroup_id() -> u64 {
    let mount = cgroup2_mount().display().to_string();
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(format!("{mount}{own}")).unwrap())
}

/// As nobody with CAP_BPF and CAP_PERFMON only (no tracefs needed), in both transports: starts,
/// delivers, exits 0; events carry the opener's uid and cgroup id.
#[test]
fn least_privilege_is_enough() {
    let Some(_kernel) = kernel_test() else { return };
    let dir = temp_dir("open-least");
    let path = dir.join("missing");
    for transport in unprivileged_transports() {
        let step = open_at(&path);
        let child = Workload::spawn("bpfs-oleast", None, vec![step]);
        let pid = child.pid().to_string();
        let run = start_least_privileged(&["open", "--json", "--buffer", transport, "-p", &pid]);
        child.go();
        let finished = run.stop();
        assert!(finished.status.success(), "{transport}: {}", finished.stderr);
        let events = finished.of_type("open");
        assert_eq!(events.len(), 1, "{transport}: {events:#?}");
        assert_eq!(events[0]["filename"], path.to_str().unwrap());
        assert_eq!(events[0]["ret"], -2);
        assert_eq!(events[0]["uid"], 0);
        assert_eq!(events[0]["cgroup_id"], own_cgroup_id());
    }
}

#[test]
fn table_looks_like_opensnoop() {
    let Some(_kernel) = kernel_test() else { return };
    let dir = temp_dir("open-table");
    let missing = dir.join("missing");
    let child = Workload::spawn("bpfs-otable", None, vec![open_at(&missing)]);
    let pid = child.pid().to_string();
    let run = start(&["open", "--pid", &pid]);
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let header: Vec<_> = finished.stdout[0].split_whitespace().collect();
    assert_eq!(header, ["PID", "COMM", "FD", "ERR", "PATH"]);
    assert_eq!(finished.stdout.len(), 2, "{:?}", finished.stdout);
    let row: Vec<_> = finished.stdout[1].split_whitespace().collect();
    assert_eq!(row, [pid.as_str(), "bpfs-otable", "-1", "2", missing.to_str().unwrap()]);
    assert!(finished.stderr.contains("1 events, 0 dropped"), "{}", finished.stderr);
    assert!(finished.stderr.contains("for a fixed-size record"), "{}", finished.stderr);

    let (code, err) = run_to_end(&["open", "--errno", "ENOPE"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not an errno"), "{err}");
    let (code, err) = run_to_end(&["open", "--name", "a", "-n", "b"]);
    assert_eq!(code, Some(2), "--name is exact, -n a substring: one or the other ({err})");
    let (code, err) = run_to_end(&["open", "-u", "-1"]);
    assert_eq!(code, Some(2), "{err}");
    let finished = start(&["open", "-n", "bpfs-nothing", "-d", "0.1"]).wait();
    assert!(!finished.stderr.contains("fixed-size"), "no averages of nothing: {}", finished.stderr);
}

/// `-T` is execsnoop's wall-clock column (`HH:MM:SS`), `-U` opensnoop's UID column, and `-d`
/// stops the run by itself.
#[test]
fn short_flags_wall_clock_uid_column_and_duration() {
    let Some(_kernel) = kernel_test() else { return };
    let missing = temp_dir("open-short").join("missing");
    let step = open_at(&missing);
    let child = Workload::spawn("bpfs-oshort", None, vec![step]);
    let pid = child.pid().to_string();
    let run = start(&["open", "-T", "-U", "-p", &pid, "-d", "5"]);
    child.go();
    let finished = run.wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    let header: Vec<_> = finished.stdout[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "UID", "PID", "COMM", "FD", "ERR", "PATH"]);
    let row: Vec<_> = finished.stdout[1].split_whitespace().collect();
    let time: Vec<_> = row[0].split(':').collect();
    assert!(time.len() == 3 && time.iter().all(|f| f.len() == 2 && f.parse::<u8>().is_ok()), "{row:?}");
    assert_eq!(row[1..], ["0", pid.as_str(), "bpfs-oshort", "-1", "2", missing.to_str().unwrap()]);
}
