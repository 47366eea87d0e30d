//! What tracing costs: a one-thread syscall storm traced by `bpfstream syscalls` (ring and perf,
//! events and --summary), libbpf-tools' `syscount -L` and an equivalent bpftrace script, and an
//! open() storm traced by `bpfstream open` and libbpf-tools' opensnoop. For each: events/s delivered, drops, the
//! tracer's CPU per event (utime+stime from /proc/PID/stat over the window), and the traced
//! program's slowdown: its own CPU time per syscall against an untraced window of the same run
//! (CPU time, not wall time, so that other users of a shared machine taking its CPU do not count;
//! its wall-clock rate is shown too). "filtered-out" rows are bpfstream attached with a filter
//! that matches nothing: the cost of the syscall tracepoints themselves, which all tracers pay.
//!
//! `sudo cargo bench --bench tracers` (root: it loads BPF programs). The storm runs pinned to
//! CPU 0 and every tracer to CPU 1; each (storm, tracer) gets one window per round, rounds
//! interleave the tracers so drift hits all of them alike, and the table shows medians.
//! Environment: BPFSTREAM_BENCH_WINDOW (seconds per window, default 2; e.g. 0.5 for a smoke
//! run), BPFSTREAM_BENCH_ROUNDS (default 3, at least 3), BPFSTREAM_BENCH_STORM (`getppid` or
//! `open`: only that storm), BPFSTREAM_BENCH_TRACERS (comma-separated names: only those tracers
//! and the untraced windows).
//!
//! Tracer output goes to files in /dev/shm, parsed after each window, so that no reader
//! competes with the tracer for the CPU while it is measured.
//!
//! `bpfstream run` on the syscalls tracer's own object, JSON lines decoded from its BTF, runs
//! against `bpfstream syscalls --json` on the same storm with the same buffer and wakeups: the
//! ratio of their CPU per event (medians of one run) is the cost of decoding from BTF against
//! the tracer's hand-written formatting.
//!
//! Then bursts (BPFSTREAM_BENCH_STORM=burst: only those): 100,000 getsid, and 20,000 opens of
//! names 1 to 4,000 bytes long, each traced by `bpfstream syscalls` / `bpfstream open` with the
//! default buffer and with the former default of 256 KiB, the reader running as usual: the
//! share of each burst lost, per round.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const STORM_CPU: usize = 0;
const TRACER_CPU: usize = 1;
const STORM_COMM: &str = "bpfs-storm";
/// Time after a tracer's first output before the window starts (lets start-up work settle).
const WARMUP: Duration = Duration::from_millis(300);

/// What the storm does in its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StormKind {
    /// getppid(), one syscall per iteration.
    Getppid,
    /// openat() of a file then close(): one open per iteration.
    Open,
}

impl StormKind {
    fn name(self) -> &'static str {
        match self {
            StormKind::Getppid => "getppid",
            StormKind::Open => "open",
        }
    }
}

/// A forked child looping on syscalls, pinned to STORM_CPU, counting iterations in shared memory.
struct Storm {
    pid: i32,
    counter: &'static AtomicU64,
}

impl Storm {
    fn start(kind: StormKind, file: &Path) -> Storm {
        // SAFETY: a fresh shared anonymous mapping of one page, so the child's count reaches us;
        // it is never unmapped, so the 'static reference stays valid.
        let counter = unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED, "mmap");
            &*(page as *const AtomicU64)
        };
        let path = CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        let pid = fork_pinned(|| {
            let mut n: u64 = 0;
            loop {
                match kind {
                    StormKind::Getppid => {
                        // SAFETY: a syscall without arguments.
                        unsafe { libc::syscall(libc::SYS_getppid) };
                    }
                    StormKind::Open => open_close(&path),
                }
                n += 1;
                counter.store(n, Ordering::Relaxed);
            }
        });
        Storm { pid, counter }
    }

    /// Iterations so far and the storm's CPU time (ns).
    fn sample(&self) -> (u64, u64) {
        (self.counter.load(Ordering::Relaxed), cpu_ns(self.pid as u32).unwrap_or(0))
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks a child with the storm's comm, pinned to STORM_CPU, that runs `body` then exits. The
/// bench is single-threaded when it forks, and `body` makes only raw syscalls and atomic stores
/// on memory prepared before the fork.
fn fork_pinned(body: impl FnOnce()) -> i32 {
    let comm = CString::new(STORM_COMM).unwrap();
    // SAFETY: see above.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: in the child: pinning itself and naming itself, then `body`, then _exit.
        unsafe {
            pin_self(STORM_CPU);
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
        }
        body();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    pid
}

/// openat(path) then close, as opensnoop's users' programs do.
fn open_close(path: &std::ffi::CStr) {
    // SAFETY: a NUL-terminated path; the fd is ours to close.
    unsafe {
        let fd = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY);
        if fd >= 0 {
            libc::syscall(libc::SYS_close, fd);
        }
    }
}

/// Pins the calling thread (and what it execs) to `cpu`.
///
/// # Safety
///
/// Async-signal-safe; callable between fork and exec.
unsafe fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Where a tracer's count of traced calls comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// One output line per event.
    Lines,
    /// bpfstream --summary: `N syscalls counted in the kernel in S s` on stderr.
    BpfstreamSummary,
    /// syscount: the storm's row of its final table (`getppid  COUNT  TIME`).
    SyscountTable,
}

/// A tracer configuration.
struct TracerConfig {
    name: &'static str,
    storm: StormKind,
    counted: Counted,
    /// Program and arguments, `{pid}` replaced by the storm's pid; `None`: the untraced window.
    command: Option<Vec<String>>,
}

fn bpfstream(args: &[&str]) -> Option<Vec<String>> {
    let mut v = vec![env!("CARGO_BIN_EXE_bpfstream").to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    Some(v)
}

/// bpftrace doing what `bpfstream syscalls --pid` does: time each syscall, print one line.
fn bpftrace_syscalls() -> Option<Vec<String>> {
    let script = "BEGIN { printf(\"ready\\n\"); } \
        tracepoint:raw_syscalls:sys_enter /pid == {pid}/ { @start[tid] = nsecs; } \
        tracepoint:raw_syscalls:sys_exit /pid == {pid} && @start[tid]/ { \
            printf(\"%s %d %d %d %d %d\\n\", comm, pid, tid, args->id, nsecs - @start[tid], args->ret); \
            delete(@start[tid]); }";
    Some(vec!["bpftrace".into(), "-e".into(), script.into()])
}

/// libbpf-tools' syscount, its stdout line-buffered so that its `Tracing` line reaches the file
/// at once.
fn syscount(args: &[&str]) -> Option<Vec<String>> {
    let mut v: Vec<String> = ["stdbuf", "-oL", "/usr/sbin/syscount"].map(String::from).to_vec();
    v.extend(args.iter().map(|s| s.to_string()));
    Some(v)
}

/// The syscalls tracer's object, as `bpfstream run` takes it.
const SYSCALLS_OBJECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/obj/syscalls.ring.bpf.o");
/// `bpfstream syscalls --json` and `bpfstream run` on its object: the tracer's default buffer
/// and wakeups for both.
const SAME_BUFFER: &str = "--buffer-size=16M";
const SAME_WAKEUP: &str = "--wakeup=bytes:64K";
/// The decoding cost `run` may have: at most this many times the tracer's CPU per event.
const RUN_TARGET: f64 = 1.5;

fn configs() -> Vec<TracerConfig> {
    let getppid = StormKind::Getppid;
    let open = StormKind::Open;
    let c = |name, storm, command| TracerConfig { name, storm, counted: Counted::Lines, command };
    vec![
        c("untraced", getppid, None),
        // Attached but filtering everything out (pid 1 makes no getppid storm): the cost of the
        // syscall tracepoints themselves, which every tracer below pays too.
        c("bpfstream-filtered-out", getppid, bpfstream(&["syscalls", "--pid", "1"])),
        c("bpfstream-ring", getppid, bpfstream(&["syscalls", "--pid", "{pid}"])),
        c("bpfstream-perf", getppid, bpfstream(&["syscalls", "--buffer", "perf", "--pid", "{pid}"])),
        c("bpfstream-json", getppid, bpfstream(&["syscalls", "--json", "--pid", "{pid}", SAME_BUFFER, SAME_WAKEUP])),
        c(
            "run-syscalls-json",
            getppid,
            bpfstream(&[
                "run",
                SYSCALLS_OBJECT,
                "--type",
                "syscall_event",
                "--json",
                "--pid",
                "{pid}",
                SAME_BUFFER,
                SAME_WAKEUP,
            ]),
        ),
        TracerConfig {
            counted: Counted::BpfstreamSummary,
            ..c("bpfstream-summary", getppid, bpfstream(&["syscalls", "--summary", "--pid", "{pid}"]))
        },
        TracerConfig { counted: Counted::SyscountTable, ..c("syscount-L", getppid, syscount(&["-L", "-p", "{pid}"])) },
        c("bpftrace", getppid, bpftrace_syscalls()),
        // `open` attaches to every syscall's entry and exit (raw tracepoints) and picks out the
        // opens: what that costs the syscalls that are not opens.
        c("bpfstream-open-on-getppid", getppid, bpfstream(&["open", "--pid", "{pid}"])),
        c("untraced", open, None),
        c("bpfstream-open-filtered-out", open, bpfstream(&["open", "--pid", "1"])),
        c("bpfstream-open", open, bpfstream(&["open", "--pid", "{pid}"])),
        c("opensnoop", open, Some(vec!["/usr/sbin/opensnoop".into(), "-p".into(), "{pid}".into()])),
    ]
}

/// One window's measurements.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Storm iterations per second (syscalls for getppid, opens for open).
    storm_per_sec: f64,
    /// The storm's CPU time per iteration: what one (traced) iteration costs the traced program,
    /// whatever share of its CPU the machine's other users leave it.
    storm_ns_per_call: f64,
    /// Event lines the tracer wrote per second during the window.
    events_per_sec: f64,
    /// Events the tracer reported lost, per second of its run.
    dropped_per_sec: f64,
    /// Tracer CPU time per delivered event.
    cpu_ns_per_event: f64,
    /// Tracer CPU time over wall time.
    cpu_share: f64,
}

fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends comm: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(ticks * 1_000_000_000 / hz.max(1))
}

/// CPU ns per iteration between two storm samples.
fn per_call(from: (u64, u64), to: (u64, u64)) -> f64 {
    (to.1 - from.1) as f64 / (to.0 - from.0).max(1) as f64
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Lines of `text` that are events of the storm (they carry its comm).
fn event_lines(text: &[u8]) -> u64 {
    text.split(|&b| b == b'\n')
        .filter(|line| line.windows(STORM_COMM.len()).any(|w| w == STORM_COMM.as_bytes()))
        .count() as u64
}

/// bpfstream --summary's last line on stderr: `N syscalls counted in the kernel in S s`: (N, S).
fn summary_counted(text: &str) -> Option<(u64, f64)> {
    let line = text.lines().find(|l| l.contains(" syscalls counted in the kernel in "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let counted = words.first()?.parse().ok()?;
    let secs = words.get(words.iter().rposition(|w| *w == "in")? + 1)?.parse().ok()?;
    Some((counted, secs))
}

/// syscount's count of the storm's syscall in its final table.
fn syscount_counted(out: &str, kind: StormKind) -> Option<u64> {
    let name = match kind {
        StormKind::Getppid => "getppid",
        StormKind::Open => "openat",
    };
    out.lines().rev().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        (words.first() == Some(&name)).then(|| words.get(1)?.parse().ok()).flatten()
    })
}

/// Events the tracer said it lost: bpfstream's summary "E events, N dropped" when there is one
/// (its "Lost N events" lines as they happen add up to it), else bpftrace's and opensnoop's
/// "Lost N events" lines.
fn reported_lost(text: &str) -> u64 {
    let summary = text.lines().find(|l| l.contains(" events, ") && l.contains(" dropped in "));
    let lines: Vec<&str> = match summary {
        Some(line) => vec![line],
        None => text.lines().collect(),
    };
    let mut lost = 0;
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if w.eq_ignore_ascii_case("lost") {
                lost += words.get(i + 1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            }
            if w.starts_with("dropped") && i > 0 {
                lost += words[i - 1].parse::<u64>().unwrap_or(0);
            }
        }
    }
    lost
}

fn measure(config: &TracerConfig, storm: &Storm, window: Duration, scratch: &Path) -> Result<Window, String> {
    let Some(command) = &config.command else {
        let (s0, t0) = (storm.sample(), Instant::now());
        std::thread::sleep(window);
        let (s1, secs) = (storm.sample(), t0.elapsed().as_secs_f64());
        return Ok(Window {
            storm_per_sec: (s1.0 - s0.0) as f64 / secs,
            storm_ns_per_call: per_call(s0, s1),
            ..Window::default()
        });
    };
    let out_path = scratch.join(format!("{}.out", config.name));
    let err_path = scratch.join(format!("{}.err", config.name));
    let pid = storm.pid.to_string();
    let args: Vec<String> = command.iter().map(|a| a.replace("{pid}", &pid)).collect();
    let mut child = spawn_tracer(&args, &out_path, &err_path)?;
    let result = measure_running(&mut child, storm, window, &out_path, &err_path);
    stop(&mut child);
    let result = result.and_then(|(w, ready_at, stopped_at, window_bytes)| {
        let out = fs::read(&out_path).map_err(|e| e.to_string())?;
        let err = fs::read_to_string(&err_path).unwrap_or_default();
        let (from, to) = window_bytes;
        let lost = reported_lost(&String::from_utf8_lossy(&out)) + reported_lost(&err);
        let run = (stopped_at - ready_at).as_secs_f64();
        let events_per_sec = match config.counted {
            Counted::Lines => event_lines(&out[from.min(out.len())..to.min(out.len())]) as f64 / window.as_secs_f64(),
            Counted::BpfstreamSummary => {
                let (counted, secs) = summary_counted(&err).ok_or_else(|| format!("no summary line in {err:?}"))?;
                counted as f64 / secs
            }
            Counted::SyscountTable => {
                let text = String::from_utf8_lossy(&out);
                let counted =
                    syscount_counted(&text, config.storm).ok_or_else(|| format!("no storm row in {text:?}"))?;
                counted as f64 / run
            }
        };
        let in_window = events_per_sec * window.as_secs_f64();
        Ok(Window {
            events_per_sec,
            dropped_per_sec: lost as f64 / run,
            cpu_ns_per_event: if in_window > 0.0 { w.cpu_ns_per_event / in_window } else { f64::NAN },
            ..w
        })
    });
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    result
}

/// Starts `command` pinned to TRACER_CPU, its stdout and stderr into files.
fn spawn_tracer(command: &[String], out: &Path, err: &Path) -> Result<Child, String> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).map_err(|e| e.to_string())?)
        .stderr(fs::File::create(err).map_err(|e| e.to_string())?);
    // SAFETY: pin_self is async-signal-safe, as pre_exec requires.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            pin_self(TRACER_CPU);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("{}: {e}", command[0]))
}

/// Window measurements with `cpu_ns_per_event` holding the window's CPU ns (divided later),
/// when the tracer became ready and stopped, and the window's byte range of its output.
type Running = (Window, Instant, Instant, (usize, usize));

fn measure_running(
    child: &mut Child,
    storm: &Storm,
    window: Duration,
    out: &Path,
    err: &Path,
) -> Result<Running, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready: bpfstream says `Tracing`; the others print their first line once attached.
    let ready = || file_len(out) > 0 || fs::read_to_string(err).is_ok_and(|t| t.contains("Tracing"));
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}: {}", fs::read_to_string(err).unwrap_or_default().trim()));
        }
        if Instant::now() > deadline {
            return Err("no output within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready_at = Instant::now();
    std::thread::sleep(WARMUP);
    let pid = child.id();
    let (s0, cpu0, b0, t0) = (storm.sample(), cpu_ns(pid).ok_or("no /proc stat")?, file_len(out), Instant::now());
    std::thread::sleep(window);
    let (s1, cpu1, b1, t1) = (storm.sample(), cpu_ns(pid).ok_or("no /proc stat")?, file_len(out), Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let cpu = (cpu1 - cpu0) as f64;
    let w = Window {
        storm_per_sec: (s1.0 - s0.0) as f64 / secs,
        storm_ns_per_call: per_call(s0, s1),
        cpu_ns_per_event: cpu,
        cpu_share: cpu / 1e9 / secs,
        ..Window::default()
    };
    Ok((w, ready_at, Instant::now(), (b0 as usize, b1 as usize)))
}

/// SIGINT, then SIGKILL if it lingers.
fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A JSON number, or null when not finite.
fn json_number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "null".into()
    }
}

fn env_number(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench tracers: skipped, it loads BPF programs: run as root (sudo cargo bench --bench tracers)");
        return;
    }
    let window = Duration::from_secs_f64(env_number("BPFSTREAM_BENCH_WINDOW", 2.0));
    let rounds = (env_number("BPFSTREAM_BENCH_ROUNDS", 3.0) as usize).max(3);
    let scratch = PathBuf::from(format!("/dev/shm/bpfstream-bench-tracers-{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("create a scratch directory in /dev/shm");
    let open_target = scratch.join("opened-by-the-storm");
    fs::write(&open_target, b"x").unwrap();

    let only_tracers = std::env::var("BPFSTREAM_BENCH_TRACERS").ok();
    let configs: Vec<TracerConfig> = configs()
        .into_iter()
        .filter(|c| c.command.is_none() || only_tracers.as_deref().is_none_or(|o| o.split(',').any(|n| n == c.name)))
        .collect();
    let mut windows: Vec<Vec<Window>> = vec![Vec::new(); configs.len()];
    let mut failures: Vec<Option<String>> = vec![None; configs.len()];
    eprintln!(
        "bench tracers: {rounds} rounds of {:.1} s windows, storm on CPU {STORM_CPU}, tracers on CPU {TRACER_CPU}",
        window.as_secs_f64()
    );
    let only = std::env::var("BPFSTREAM_BENCH_STORM").ok();
    let kinds: Vec<StormKind> = [StormKind::Getppid, StormKind::Open]
        .into_iter()
        .filter(|k| only.as_deref().is_none_or(|o| o == k.name()))
        .collect();
    for &kind in &kinds {
        let storm = Storm::start(kind, &open_target);
        std::thread::sleep(Duration::from_millis(200));
        for round in 0..rounds {
            for (i, config) in configs.iter().enumerate().filter(|(_, c)| c.storm == kind) {
                if failures[i].is_some() {
                    continue;
                }
                match measure(config, &storm, window, &scratch) {
                    Ok(w) => {
                        eprintln!(
                            "  round {} {:<8} {:<27} storm {:>9.0}/s {:>6.0} ns/call  events {:>9.0}/s  \
                             dropped {:>9.0}/s  tracer {:>6.0} ns/event",
                            round + 1,
                            kind.name(),
                            config.name,
                            w.storm_per_sec,
                            w.storm_ns_per_call,
                            w.events_per_sec,
                            w.dropped_per_sec,
                            w.cpu_ns_per_event
                        );
                        windows[i].push(w);
                    }
                    Err(e) => {
                        eprintln!("bench tracers: {} on the {} storm: {e}", config.name, kind.name());
                        failures[i] = Some(e);
                    }
                }
            }
        }
    }
    report(&configs, &kinds, &windows, &failures, window);
    if only.as_deref().is_none_or(|o| o == "burst") {
        bursts(rounds, &scratch);
    }
    let _ = fs::remove_dir_all(&scratch);
}

/// A burst: what the child does once told to.
#[derive(Debug, Clone, Copy)]
enum Burst {
    /// getsid(0), this many times.
    Getsid(u32),
    /// openat of names 1..=4000 bytes long ("////...x"), this many.
    LongOpens(u32),
}

/// Forks a child pinned to STORM_CPU that runs `burst` once it can read a byte from the
/// returned pipe, then exits.
fn fork_burst(burst: Burst) -> (i32, i32) {
    let names: Vec<CString> = match burst {
        Burst::Getsid(_) => Vec::new(),
        Burst::LongOpens(n) => {
            (0..n).map(|i| CString::new(format!("{}x", "/".repeat((i as usize * 7919) % 4000))).unwrap()).collect()
        }
    };
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = fork_pinned(|| {
        let mut byte = 0u8;
        // SAFETY: reading one byte from our pipe into a local.
        unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        match burst {
            // SAFETY: getsid(0) reads nothing of ours.
            Burst::Getsid(n) => (0..n).for_each(|_| unsafe {
                libc::syscall(libc::SYS_getsid, 0);
            }),
            Burst::LongOpens(_) => names.iter().for_each(|name| open_close(name)),
        }
    });
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(fds[0]) };
    (pid, fds[1])
}

/// One burst traced by `args` (bpfstream, table output to a file): (delivered, dropped).
fn traced_burst(burst: Burst, args: &[&str], scratch: &Path) -> Result<(u64, u64), String> {
    let (out_path, err_path) = (scratch.join("burst.out"), scratch.join("burst.err"));
    let (pid, go) = fork_burst(burst);
    let pid_arg = pid.to_string();
    let command = bpfstream(args).unwrap_or_default();
    let command: Vec<String> = command.iter().map(|a| a.replace("{pid}", &pid_arg)).collect();
    let mut child = spawn_tracer(&command, &out_path, &err_path)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&err_path).is_ok_and(|t| t.contains("Tracing")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: starting our child's burst, waiting for it, closing our pipe end.
    unsafe {
        libc::write(go, b"g".as_ptr().cast(), 1);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(go);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop(&mut child);
    let err = fs::read_to_string(&err_path).unwrap_or_default();
    let line = err.lines().find(|l| l.contains(" events, ") && l.contains(" dropped in ")).ok_or(err.clone())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let number =
        |i: usize| words.get(i).and_then(|w| w.trim_end_matches(',').parse::<u64>().ok()).ok_or(line.to_string());
    Ok((number(0)?, number(2)?))
}

/// Loss of each burst with the default buffer and with 256 KiB, per round, then one JSON line
/// per (burst, buffer) with the median loss.
fn bursts(rounds: usize, scratch: &Path) {
    let getsid: &[&str] = &["syscalls", "--syscall", "getsid", "--pid", "{pid}"];
    let opens: &[&str] = &["open", "--pid", "{pid}"];
    let cases =
        [("getsid-100000", Burst::Getsid(100_000), getsid), ("open-20000-long", Burst::LongOpens(20_000), opens)];
    println!("{:<16} {:<10} {:>10} {:>10} {:>8}", "BURST", "BUFFER", "EVENTS", "DROPPED", "LOST %");
    for (name, burst, args) in cases {
        for (buffer, extra) in [("default", &[][..]), ("256K", &["--buffer-size", "256K"][..])] {
            let all: Vec<&str> = args.iter().chain(extra).copied().collect();
            let mut losses = Vec::new();
            for _ in 0..rounds {
                match traced_burst(burst, &all, scratch) {
                    Ok((events, dropped)) => {
                        let lost = 100.0 * dropped as f64 / (events + dropped).max(1) as f64;
                        println!("{name:<16} {buffer:<10} {events:>10} {dropped:>10} {lost:>7.2}%");
                        losses.push(lost);
                    }
                    Err(e) => println!("{name:<16} {buffer:<10} failed: {e}"),
                }
            }
            println!(
                "{{\"bench\":\"tracers\",\"burst\":\"{name}\",\"buffer\":\"{buffer}\",\"rounds\":{},\"lost_percent_median\":{},\"lost_percent_max\":{}}}",
                losses.len(),
                json_number(median(losses.clone()), 2),
                json_number(losses.iter().copied().fold(f64::NAN, f64::max), 2)
            );
        }
    }
}

/// The table of medians, then one JSON line per row. The storm's cost per call is its CPU time
/// per iteration, so other users of the machine taking its CPU do not count as slowdown;
/// `calls/s` is wall-clock throughput.
fn report(
    configs: &[TracerConfig],
    kinds: &[StormKind],
    windows: &[Vec<Window>],
    failures: &[Option<String>],
    window: Duration,
) {
    println!(
        "{:<8} {:<27} {:>10} {:>10} {:>10} {:>7} {:>11} {:>11} {:>8}",
        "STORM", "TRACER", "EVENTS/s", "DROPPED/s", "CPU ns/ev", "CPU %", "STORM ns/op", "STORM op/s", "SLOWDOWN"
    );
    let mut json = Vec::new();
    for &kind in kinds {
        let baseline = configs
            .iter()
            .zip(windows)
            .find(|(c, _)| c.storm == kind && c.command.is_none())
            .map(|(_, w)| median(w.iter().map(|w| w.storm_ns_per_call).collect()))
            .unwrap_or(f64::NAN);
        for ((config, ws), failure) in configs.iter().zip(windows).zip(failures).filter(|((c, _), _)| c.storm == kind) {
            if let Some(e) = failure {
                println!("{:<8} {:<27} failed: {e}", kind.name(), config.name);
                continue;
            }
            let m = |f: fn(&Window) -> f64| median(ws.iter().map(f).collect());
            let traced = config.command.is_some();
            let (rate, ns_per_call) = (m(|w| w.storm_per_sec), m(|w| w.storm_ns_per_call));
            let slowdown = ns_per_call / baseline;
            let (events, dropped, cpu_ns, cpu_share) = if traced {
                (m(|w| w.events_per_sec), m(|w| w.dropped_per_sec), m(|w| w.cpu_ns_per_event), m(|w| w.cpu_share))
            } else {
                (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
            };
            let cell = |v: f64, decimals: usize| if v.is_finite() { format!("{v:.decimals$}") } else { "-".into() };
            println!(
                "{:<8} {:<27} {:>10} {:>10} {:>10} {:>6}% {:>11} {:>11} {:>7}x",
                kind.name(),
                config.name,
                cell(events, 0),
                cell(dropped, 0),
                cell(cpu_ns, 0),
                cell(cpu_share * 100.0, 1),
                cell(ns_per_call, 0),
                cell(rate, 0),
                cell(slowdown, 2)
            );
            json.push(format!(
                "{{\"bench\":\"tracers\",\"storm\":\"{}\",\"tracer\":\"{}\",\"windows\":{},\"window_s\":{},\
                 \"events_per_sec\":{},\"dropped_per_sec\":{},\"tracer_cpu_ns_per_event\":{},\"tracer_cpu_share\":{},\
                 \"storm_cpu_ns_per_call\":{},\"storm_calls_per_sec\":{},\"storm_slowdown\":{}}}",
                kind.name(),
                config.name,
                ws.len(),
                json_number(window.as_secs_f64(), 3),
                json_number(events, 0),
                json_number(dropped, 0),
                json_number(cpu_ns, 1),
                json_number(cpu_share, 4),
                json_number(ns_per_call, 1),
                json_number(rate, 0),
                json_number(slowdown, 3)
            ));
        }
    }
    for line in json {
        println!("{line}");
    }
    run_ratio(configs, windows);
}

/// `bpfstream run`'s CPU per event over `bpfstream syscalls --json`'s, against its target.
fn run_ratio(configs: &[TracerConfig], windows: &[Vec<Window>]) {
    let cpu = |name: &str| {
        let i = configs.iter().position(|c| c.name == name)?;
        Some(median(windows[i].iter().map(|w| w.cpu_ns_per_event).collect())).filter(|v| v.is_finite())
    };
    let (Some(run), Some(builtin)) = (cpu("run-syscalls-json"), cpu("bpfstream-json")) else { return };
    let ratio = run / builtin;
    let verdict = if ratio <= RUN_TARGET { "met" } else { "MISSED" };
    println!(
        "run on the syscalls object: {run:.0} ns/event, bpfstream syscalls --json: {builtin:.0} ns/event: \
         {ratio:.2}x (target <= {RUN_TARGET}x: {verdict})"
    );
    println!(
        "{{\"bench\":\"tracers\",\"ratio\":\"run_over_syscalls_json_cpu_per_event\",\"value\":{},\"target\":{RUN_TARGET}}}",
        json_number(ratio, 3)
    );
}
