//! What a person types and what the traced processes name themselves, at its worst: numbers
//! with signs, zeros, junk suffixes or beyond the kernel's limits are usage errors (exit 2, with
//! the reason) for every tracer; `--name` matches comms of any bytes; every tracer's table
//! escapes what a terminal would hide or reinterpret.

mod common;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use common::workload::{Step, Workload};
use common::*;

#[test]
fn bad_numbers_and_names_are_usage_errors_with_the_reason() {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--pid", "0"], "no task's id"),
        (&["--pid=-1"], "negative"),
        (&["--pid", "+5"], "sign"),
        (&["--pid", "5x"], "not a digit"),
        (&["--pid", " 5"], "not a digit"),
        (&["--pid", "99999999"], "pid_max"),
        (&["--pid", &pid_max], "pid_max"),
        (&["--pid", "99999999999999999999999"], "too large"),
        (&["--buffer-size", "4kbibi"], "not a size"),
        (&["--buffer-size", "+4K"], "sign"),
        (&["--buffer-size=-4K"], "negative"),
        (&["--buffer-size", "4.5K"], "not a size"),
        (&["--wakeup", "records:+5"], "sign"),
        (&["--wakeup", "records:0"], "positive"),
        (&["--wakeup", "bytes:4kbibi"], "not a size"),
        (&["--name", ""], "empty name"),
        (&["--name", "a\\x00"], "NUL"),
        (&["--name", "a\\q"], "\\xNN"),
        (&["--max-delay", "5 parsecs"], "unit"),
    ];
    for tool in ["exec", "open", "syscalls"] {
        for (args, says) in cases {
            let all = [&[tool][..], args].concat();
            let (code, err) = run_to_end(&all);
            assert_eq!(code, Some(2), "{all:?}: {err}");
            assert!(err.contains(says), "{all:?} should say {says:?}: {err}");
        }
    }
    for tool in ["open", "syscalls"] {
        for (tid, says) in [("0", "no task's id"), ("+5", "sign"), ("99999999", "pid_max")] {
            let (code, err) = run_to_end(&[tool, "--tid", tid]);
            assert_eq!(code, Some(2), "{tool} --tid {tid}: {err}");
            assert!(err.contains(says), "{tool} --tid {tid}: {err}");
        }
    }
    for top in ["0", "+3", "3k"] {
        let (code, err) = run_to_end(&["syscalls", "--summary", "--top", top]);
        assert_eq!(code, Some(2), "--top {top}: {err}");
    }
}

const GETPPIDS: u32 = 5;

/// A comm that is not UTF-8 and holds an escape character and a backslash.
const HOSTILE_COMM: &[u8] = b"bpfs\xffn\x1b\\z";

/// `syscalls --name` with the comm spelled with escapes, or as the raw bytes, sees exactly the
/// child's syscalls; JSON carries the bytes exactly, the table shows them escaped.
fn name_matches_any_bytes(name: &OsStr, json: bool) -> Finished {
    let child = Workload::spawn_with_comm(HOSTILE_COMM, None, vec![Step::Getppid(GETPPIDS)]);
    let mut command = Command::new(bin());
    command.arg("syscalls").arg("--name").arg(name).stdout(Stdio::piped());
    if json {
        command.arg("--json");
    }
    let run = start_command(command, "syscalls --name <hostile comm>");
    child.go();
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished
}

#[test]
fn name_takes_escaped_and_raw_bytes() {
    let Some(_kernel) = kernel_test() else { return };
    // Raw bytes, but a backslash is still written \\.
    for name in [OsStr::new("bpfs\\xffn\\x1b\\\\z"), OsStr::from_bytes(b"bpfs\xffn\x1b\\\\z")] {
        let finished = name_matches_any_bytes(name, true);
        let events = finished.of_type("syscall");
        assert_eq!(events.len(), GETPPIDS as usize, "{events:?}");
        for e in &events {
            assert_eq!(e["syscall"], "getppid");
            assert_eq!(e["comm_hex"], "62706673ff6e1b5c7a", "{e}");
        }
        assert_eq!(finished.summary()["produced"], u64::from(GETPPIDS), "filtered in the kernel");
    }
    let table = name_matches_any_bytes(OsStr::new("bpfs\\xffn\\x1b\\\\z"), false);
    let rows: Vec<_> = table.stdout.iter().filter(|l| l.contains("getppid")).collect();
    assert_eq!(rows.len(), GETPPIDS as usize, "{:?}", table.stdout);
    assert!(rows.iter().all(|r| r.starts_with("bpfs\\xffn\\x1b\\\\z ")), "{rows:?}");
}

/// Names a terminal would show wrong: a literal backslash sequence, a bidi override, a line
/// separator, a zero-width space, an escape sequence.
const HOSTILE_NAMES: [(&str, &str); 5] = [
    ("a\\x0ab", "a\\\\x0ab"),
    ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
    ("line\u{2028}sep", "line\\u{2028}sep"),
    ("zero\u{200b}width", "zero\\u{200b}width"),
    ("esc\x1b[2J", "esc\\x1b[2J"),
];

/// Stops `run` and checks its table: a header, then one row per name of [`HOSTILE_NAMES`], in
/// order, ending with `prefix` and the name as it must be shown.
fn assert_rows_end_with_escaped_names(run: Running, prefix: &str) {
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let rows = &finished.stdout[1..];
    assert_eq!(rows.len(), HOSTILE_NAMES.len(), "one line per name: {rows:?}");
    for (row, (_, shown)) in rows.iter().zip(HOSTILE_NAMES) {
        let expected = format!("{prefix}{shown}");
        assert!(row.ends_with(&expected), "{row:?} should end with {expected:?}");
    }
}

#[test]
fn open_table_escapes_hostile_names() {
    let Some(_kernel) = kernel_test() else { return };
    let dir = temp_dir("hostile-open");
    let steps = HOSTILE_NAMES
        .iter()
        .map(|(name, _)| Step::OpenAt {
            dirfd: libc::AT_FDCWD,
            path: CString::new(dir.join(name).as_os_str().as_bytes()).unwrap(),
            flags: libc::O_RDONLY,
        })
        .collect();
    let child = Workload::spawn("bpfs-hostile", None, steps);
    let pid = child.pid().to_string();
    let run = start(&["open", "--pid", &pid]);
    child.go();
    assert_rows_end_with_escaped_names(run, &format!("{}/", dir.display()));
}

#[test]
fn exec_table_escapes_hostile_names() {
    let Some(_kernel) = kernel_test() else { return };
    let dir = temp_dir("hostile-exec");
    // A comm is the first 15 bytes of the name: every copy has this one.
    let comm = "bpfs-hexec12345";
    let run = start(&["exec", "--name", comm]);
    for (name, _) in HOSTILE_NAMES {
        let probe = probe_binary(&dir, &format!("{comm}{name}"));
        let _ = Command::new(&probe).status().unwrap();
    }
    assert_rows_end_with_escaped_names(run, &format!("{}/{comm}", dir.display()));
}

#[test]
fn syscalls_table_escapes_hostile_comms() {
    let Some(_kernel) = kernel_test() else { return };
    let comms: [(&[u8], &str); 3] = [
        (b"bp\\x0ab", "bp\\\\x0ab"),
        ("bp\u{202e}x".as_bytes(), "bp\\u{202e}x"),
        ("bp\u{200b}z".as_bytes(), "bp\\u{200b}z"),
    ];
    for (comm, shown) in comms {
        let child = Workload::spawn_with_comm(comm, None, vec![Step::Getppid(1)]);
        let pid = child.pid().to_string();
        let run = start(&["syscalls", "--pid", &pid]);
        child.go();
        let finished = run.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        let rows: Vec<_> = finished.stdout.iter().filter(|l| l.contains("getppid")).collect();
        assert_eq!(rows.len(), 1, "{:?}", finished.stdout);
        assert!(rows[0].starts_with(&format!("{shown} ")), "{:?} should start with {shown:?}", rows[0]);
    }
}
