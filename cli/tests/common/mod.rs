//! Shared helpers of the tests that run `bpfstream` against the real kernel (as root).
#![allow(dead_code)] // each test binary uses a different subset

pub mod agent;
#[path = "../../../export/tests/support/certificates.rs"]
pub mod certificates;
pub mod engine;
pub mod storm;
#[path = "../../../bpfstream/tests/support/time_scale.rs"]
pub mod time_scale;
pub mod worker;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use time_scale::{deadline, scaled};

/// Kernel tests of one test binary run one at a time: they load programs and storm the CPUs.
static KERNEL: Mutex<()> = Mutex::new(());

/// Takes the kernel-test lock; panics with instructions when not root (set
/// BPFSTREAM_SKIP_KERNEL_TESTS=1 to skip them deliberately, e.g. in an unprivileged container).
pub fn kernel_test() -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os("BPFSTREAM_SKIP_KERNEL_TESTS").is_some() {
        eprintln!("skipping a kernel test: BPFSTREAM_SKIP_KERNEL_TESTS is set");
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "kernel tests load BPF programs: run them as root (sudo cargo test)");
    Some(KERNEL.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bpfstream")
}

/// A running `bpfstream` whose stderr has printed its `Tracing` line.
pub struct Running {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    received: std::cell::RefCell<Vec<String>>,
    stderr: std::sync::Arc<Mutex<String>>,
    /// Disconnected once stderr reached its end.
    stderr_eof: mpsc::Receiver<()>,
}

/// Starts `bpfstream args...` and waits (up to 60 s, scaled) for the `Tracing` line on stderr.
pub fn start(args: &[&str]) -> Running {
    start_with_env(args, &[])
}

/// [`start`] with extra environment variables for the child.
pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(bin());
    command.args(args).envs(env.iter().copied()).stdout(Stdio::piped());
    start_command(command, &format!("{args:?}"))
}

/// setpriv (util-linux) arguments that run a program as nobody with CAP_BPF and CAP_PERFMON
/// and no other privilege.
pub const LEAST_PRIVILEGE: [&str; 5] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all,+bpf,+perfmon",
    "--ambient-caps=+bpf,+perfmon",
];

/// The transports an unprivileged user with CAP_BPF + CAP_PERFMON can use here: perf buffers
/// need perf_event_open, which kernels built with Debian's perf_event_paranoid=3 restriction
/// (CONFIG_SECURITY_PERF_EVENTS_RESTRICT, e.g. Debian's own 6.1 and 6.12) keep from such a user.
pub fn unprivileged_transports() -> Vec<&'static str> {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    if paranoid.trim().parse::<i32>().is_ok_and(|p| p > 2) {
        eprintln!(
            "perf_event_paranoid is {}: perf buffers need more than CAP_PERFMON here; ring only",
            paranoid.trim()
        );
        return vec!["ring"];
    }
    vec!["ring", "perf"]
}

/// [`start`] as nobody with CAP_BPF and CAP_PERFMON only.
pub fn start_least_privileged(args: &[&str]) -> Running {
    let mut command = Command::new("setpriv");
    command.args(LEAST_PRIVILEGE).arg(bin()).args(args).stdout(Stdio::piped());
    start_command(command, &format!("{args:?}"))
}

/// Starts `command` (stdin null, stderr piped; stdout as the command says, read line by line
/// when piped) and waits (up to 60 s) for the `Tracing` line on stderr.
pub fn start_command(command: Command, what: &str) -> Running {
    let (mut running, ready_rx) = launch(command);
    if ready_rx.recv_timeout(scaled(Duration::from_secs(60))).is_err() {
        let _ = running.child.kill();
        let _ = running.child.wait();
        panic!("bpfstream {what} never printed its Tracing line; stderr:\n{}", running.stderr.lock().unwrap());
    }
    running
}

/// Starts `bpfstream args...` with stdout piped, without waiting for anything (a start that may
/// never end, or end in an error).
pub fn spawn(args: &[&str]) -> Running {
    let mut command = Command::new(bin());
    command.args(args).stdout(Stdio::piped());
    launch(command).0
}

/// Starts `command` as [`start_command`] does; the receiver gets the `Tracing` line.
fn launch(mut command: Command) -> (Running, mpsc::Receiver<()>) {
    let mut child = command.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn bpfstream");
    let (out_tx, out_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let stderr_text = std::sync::Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    let text = stderr_text.clone();
    let (eof_tx, stderr_eof) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _eof = eof_tx;
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.starts_with("Tracing") {
                        let _ = ready_tx.send(());
                    }
                    text.lock().unwrap().push_str(&line);
                }
            }
        }
    });
    (Running { child, stdout: out_rx, received: Default::default(), stderr: stderr_text, stderr_eof }, ready_rx)
}

/// Whether process `pid` has a handler for `signal` (`SigCgt` of /proc/PID/status): from then
/// on, the signal is its to handle.
pub fn catches(pid: u32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(mask, 16).unwrap_or(0) & (1 << (signal - 1)) != 0
}

/// Waits (up to 60 s) until a spawned `bpfstream` with piped stderr prints its `Tracing` line;
/// the rest of its stderr is read and dropped so that it never blocks on it.
pub fn wait_for_tracing(child: &mut Child) -> Result<(), String> {
    let stderr = child.stderr.take().ok_or("stderr is not piped")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Tracing") {
                let _ = ready_tx.send(Ok(()));
            }
            text.push_str(&line);
            text.push('\n');
        }
        let _ = ready_tx.send(Err(text));
    });
    match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(text)) => Err(format!("bpfstream exited before tracing: {text}")),
        Err(_) => Err("bpfstream never printed its Tracing line".into()),
    }
}

/// What a finished run printed.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Finished {
    /// Stdout lines parsed as JSON (all of them must be).
    pub fn json(&self) -> Vec<Value> {
        self.stdout.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    /// The JSON objects of a given `type`.
    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.json().into_iter().filter(|v| v["type"] == kind).collect()
    }

    /// The one summary object, which must be the last line.
    pub fn summary(&self) -> Value {
        let all = self.json();
        let last = all.last().unwrap_or_else(|| panic!("no output; stderr:\n{}", self.stderr)).clone();
        assert_eq!(last["type"], "summary", "the last line is the summary");
        last
    }
}

impl Running {
    /// Sends `signal`, waits (up to 60 s, scaled) for exit and collects the output.
    pub fn stop_with(self, signal: i32) -> Finished {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait()
    }

    /// SIGINT, like Ctrl-C.
    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGINT)
    }

    /// Waits (up to 60 s, scaled) for the process to exit by itself.
    pub fn wait(mut self) -> Finished {
        let deadline = deadline(Duration::from_secs(60));
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("bpfstream did not exit within {:?}", scaled(Duration::from_secs(60)));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = self.received.take();
        while let Ok(line) = self.stdout.recv_timeout(scaled(Duration::from_secs(5))) {
            stdout.push(line);
        }
        // Everything the process wrote to stderr, up to its end (a loaded machine may run the
        // reader late).
        let _ = self.stderr_eof.recv_timeout(Duration::from_secs(10));
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(!stderr.contains("panicked"), "bpfstream panicked:\n{stderr}");
        Finished { status, stdout, stderr }
    }

    /// Stdout lines printed so far (while still running).
    pub fn lines_so_far(&self) -> usize {
        self.stdout_so_far().len()
    }

    /// The stdout lines printed so far (while still running).
    pub fn stdout_so_far(&self) -> Vec<String> {
        let mut received = self.received.borrow_mut();
        received.extend(self.stdout.try_iter());
        received.clone()
    }

    /// What stderr printed so far (while still running).
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs `bpfstream args...` to completion (for error cases) and returns (exit code, stderr).
pub fn run_to_end(args: &[&str]) -> (Option<i32>, String) {
    run_to_end_with_env(args, &[])
}

/// [`run_to_end`] with extra environment variables for the child.
///
/// Its stderr goes to a file, not a pipe: a child forked by a test running beside this one
/// (a [`workload::Workload`]) holds, from its fork, whatever pipes were open then, and a read
/// to the end of a pipe would wait for that child too. A run that does not end within 60 s
/// (scaled) is killed and fails the test with what it printed.
pub fn run_to_end_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("bpfstream-test-stderr-{}-{run}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let mut child =
        Command::new(bin()).args(args).envs(env.iter().copied()).stdout(Stdio::null()).stderr(file).spawn().unwrap();
    let deadline = deadline(Duration::from_secs(60));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&path).unwrap_or_default();
            panic!("bpfstream {args:?} did not exit within {:?}; stderr:\n{err}", scaled(Duration::from_secs(60)));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
    let _ = std::fs::remove_file(&path);
    assert!(!err.contains("panicked"), "bpfstream panicked:\n{err}");
    (status.code(), err)
}

/// A pipe: (read end, write end), both close-on-exec (std::io::pipe needs Rust 1.87).
pub fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two fresh fds, owned by nothing else.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
}

/// A copy of /bin/true at `dir/name`, so its execs are recognizable by path and comm.
pub fn probe_binary(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    copy_executable(Path::new("/bin/true"), &path);
    path
}

/// Copies the executable `from` to `to` with cp, not from this process: a child that another
/// test thread forks while the copy is open for writing would inherit that descriptor, and exec
/// of the copy would fail (ETXTBSY) until that child execs.
pub fn copy_executable(from: &Path, to: &Path) {
    let copied = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(copied.success(), "cp {} {}", from.display(), to.display());
}

/// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split_whitespace().nth(2) == Some("cgroup2")).expect("a cgroup2 mount");
    PathBuf::from(line.split_whitespace().nth(1).unwrap())
}

/// A fresh directory under /tmp.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bpfstream-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// --- BPF object introspection, straight from bpf(2), so the tests need no bpftool.

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
    // SAFETY: a zero-initialised 128-byte bpf_attr, large enough for these commands.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr) as u32) }
}

fn ids(cmd: libc::c_long) -> Vec<u32> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id); // start_id (u32) | next_id (u32) << 32
        if bpf(cmd, &mut attr) < 0 {
            return out;
        }
        id = (attr[0] >> 32) as u32;
        out.push(id);
    }
}

/// Name of a program or map by id (`None` once it is gone).
fn name_of(get_fd: libc::c_long, id: u32, name_offset: usize) -> Option<String> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(get_fd, &mut attr);
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = fd as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    let ok = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) >= 0;
    // SAFETY: closing the fd we just got.
    unsafe { libc::close(fd as i32) };
    if !ok {
        return None;
    }
    let raw = &info[name_offset..name_offset + 16];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Loaded BPF programs: (id, name). `struct bpf_prog_info.name` is at offset 64.
pub fn programs() -> Vec<(u32, String)> {
    ids(BPF_PROG_GET_NEXT_ID).into_iter().filter_map(|id| Some((id, name_of(BPF_PROG_GET_FD_BY_ID, id, 64)?))).collect()
}

/// Existing BPF maps: (id, name). `struct bpf_map_info.name` is at offset 24.
pub fn maps() -> Vec<(u32, String)> {
    ids(BPF_MAP_GET_NEXT_ID).into_iter().filter_map(|id| Some((id, name_of(BPF_MAP_GET_FD_BY_ID, id, 24)?))).collect()
}

/// Highest program and map ids now (ids only grow).
pub fn id_watermarks() -> (u32, u32) {
    let max = |v: Vec<(u32, String)>| v.into_iter().map(|(id, _)| id).max().unwrap_or(0);
    (max(programs()), max(maps()))
}

/// Asserts that no program or map created after `before` and named one of `names` is still in
/// the kernel (a link holds its program, so no program means no link), waiting up to 3 s (scaled) for
/// deferred frees.
pub fn assert_nothing_left(before: (u32, u32), names: &[&str]) {
    let deadline = deadline(Duration::from_secs(3));
    loop {
        let progs: Vec<_> =
            programs().into_iter().filter(|(id, n)| *id > before.0 && names.contains(&n.as_str())).collect();
        let maps: Vec<_> = maps().into_iter().filter(|(id, n)| *id > before.1 && names.contains(&n.as_str())).collect();
        if progs.is_empty() && maps.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("left in the kernel after exit: programs {progs:?}, maps {maps:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
