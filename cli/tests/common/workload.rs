//! A child process that makes an exact, known sequence of syscalls when told to, so a tracer
//! filtering on its pid sees exactly those and nothing else the machine does.
//!
//! The child is forked from the test and, between fork and `_exit`, makes nothing but raw
//! syscalls on data prepared before the fork (no allocation, no locks: safe in a child of a
//! multi-threaded process). It blocks reading a pipe before it starts; the test waits until it is
//! blocked there, starts the tracer, then writes to the pipe. The blocking read began before the
//! tracer attached, so its completion is not reported: the traced syscalls are exactly the steps.
//! The child exits with exit_group, which never returns, so it is not reported either.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// One thing the child does.
#[derive(Debug, Clone)]
pub enum Step {
    /// `count` getppid calls.
    Getppid(u32),
    /// openat(dirfd, path, flags): `dirfd` is AT_FDCWD or an fd the child inherited.
    OpenAt { dirfd: i32, path: CString, flags: i32 },
    /// open(path, flags).
    Open { path: CString, flags: i32 },
    /// openat2(AT_FDCWD, path, {flags}).
    OpenAt2 { path: CString, flags: u64 },
    /// openat(AT_FDCWD, ptr, flags) with a path at a raw address (e.g. in a mapping the child
    /// has not touched yet).
    OpenAtRaw { ptr: *const libc::c_char, flags: i32 },
    /// nanosleep.
    Sleep(Duration),
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A forked child waiting to run its steps.
#[derive(Debug)]
pub struct Workload {
    pid: i32,
    go: Option<OwnedFd>,
    results: *mut i64,
    results_len: usize,
    steps: usize,
}

// SAFETY: `results` points to a shared mapping owned by this value alone; moving the value to
// another thread moves that ownership with it.
unsafe impl Send for Workload {}

impl Workload {
    /// Forks the child: it sets its comm to `comm` and its cwd to `cwd`, then blocks until
    /// [`go`](Self::go).
    pub fn spawn(comm: &str, cwd: Option<&std::path::Path>, steps: Vec<Step>) -> Workload {
        Self::spawn_with_comm(comm.as_bytes(), cwd, steps)
    }

    /// [`spawn`](Self::spawn) with a comm of any bytes (not necessarily UTF-8; no NUL).
    pub fn spawn_with_comm(comm: &[u8], cwd: Option<&std::path::Path>, steps: Vec<Step>) -> Workload {
        let comm = CString::new(comm).unwrap();
        let cwd = cwd.map(|p| CString::new(p.as_os_str().as_encoded_bytes()).unwrap());
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let len = (steps.len().max(1) * 8).next_multiple_of(4096);
        // SAFETY: a fresh shared anonymous mapping, so the child's results reach us.
        let results = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(results, libc::MAP_FAILED);
        let results = results.cast::<i64>();
        let kept = kept_fds(fds[0], &steps);
        // SAFETY: fork; the child only makes raw syscalls on memory prepared above and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: in the child: raw syscalls on live data, then _exit without unwinding.
            unsafe { child(fds[0], &kept, &comm, cwd.as_ref(), &steps, results) }
        }
        // One CPU for the child: a perf buffer is per CPU, so its records then come out in the
        // order it made its syscalls (a child that migrates has them come out grouped by CPU).
        // SAFETY: a zeroed cpu_set_t with CPU 0 set, applied to our own child.
        unsafe {
            let mut cpu0: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut cpu0);
            assert_eq!(libc::sched_setaffinity(pid, std::mem::size_of_val(&cpu0), &cpu0), 0);
        }
        // SAFETY: closing the read end in the parent; the write end becomes the `go` fd.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is ours and open.
        let go = Some(unsafe { OwnedFd::from_raw_fd(fds[1]) });
        let workload = Workload { pid, go, results, results_len: len, steps: steps.len() };
        workload.wait_until_blocked();
        workload
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits until the child sleeps in its read(2) of the go pipe (/proc/PID/syscall starts
    /// with the syscall number 0 then).
    fn wait_until_blocked(&self) {
        let deadline = super::time_scale::deadline(Duration::from_secs(20));
        loop {
            let text = std::fs::read_to_string(format!("/proc/{}/syscall", self.pid)).unwrap_or_default();
            if text.starts_with("0 ") {
                return;
            }
            assert!(Instant::now() < deadline, "workload child never blocked in read: {text:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the child run its steps and waits for it; returns each step's last return value.
    pub fn go(mut self) -> Vec<i64> {
        let go = self.go.take().unwrap();
        // SAFETY: writing one byte to our pipe.
        assert_eq!(unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) }, 1);
        drop(go);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(self.pid, &mut status, 0) }, self.pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "workload status {status:#x}");
        self.pid = 0;
        // SAFETY: the child wrote `steps` i64 into the shared mapping and has exited.
        (0..self.steps).map(|i| unsafe { self.results.add(i).read_volatile() }).collect()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: killing and reaping our own child (a test failed before `go`).
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
        // SAFETY: unmapping the results mapping we created; nothing refers to it any more.
        unsafe { libc::munmap(self.results.cast(), self.results_len) };
    }
}

/// The fds the child keeps besides stdin, stdout and stderr, in order: its go pipe and the
/// directories its steps open from.
fn kept_fds(go: i32, steps: &[Step]) -> Vec<i32> {
    let dirs = steps.iter().filter_map(|s| match s {
        Step::OpenAt { dirfd, .. } if *dirfd > 2 => Some(*dirfd),
        _ => None,
    });
    let mut kept: Vec<i32> = dirs.chain([go]).collect();
    kept.sort_unstable();
    kept.dedup();
    kept
}

/// Closes every fd above stderr but `kept` (sorted): the pipes other tests of this process had
/// open at the fork (a child's stderr, say), which would otherwise stay open until this child
/// exits, and a reader waiting for their end would wait for it.
///
/// # Safety
///
/// Only in a freshly forked child: it closes fds the parent's threads may be using.
unsafe fn close_inherited(kept: &[i32]) {
    let mut from = 3u32;
    for &fd in kept {
        if fd as u32 > from {
            // SAFETY: close_range on fds of this child alone.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd as u32 - 1, 0) };
        }
        from = fd as u32 + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// The child's whole life.
///
/// # Safety
///
/// Only to be called in a freshly forked child; never returns.
unsafe fn child(go: i32, kept: &[i32], comm: &CString, cwd: Option<&CString>, steps: &[Step], results: *mut i64) -> ! {
    // SAFETY: raw syscalls on pointers to live data; _exit ends the child without unwinding.
    unsafe {
        close_inherited(kept);
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
        if let Some(cwd) = cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                libc::_exit(3);
            }
        }
        let mut byte = 0u8;
        if libc::read(go, (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::_exit(4);
        }
        for (i, step) in steps.iter().enumerate() {
            let ret = match step {
                Step::Getppid(count) => {
                    let mut ret = 0;
                    for _ in 0..*count {
                        ret = libc::syscall(libc::SYS_getppid);
                    }
                    ret
                }
                Step::OpenAt { dirfd, path, flags } => libc::syscall(libc::SYS_openat, *dirfd, path.as_ptr(), *flags),
                Step::Open { path, flags } => libc::syscall(libc::SYS_open, path.as_ptr(), *flags),
                Step::OpenAt2 { path, flags } => {
                    let how = OpenHow { flags: *flags, mode: 0, resolve: 0 };
                    libc::syscall(
                        libc::SYS_openat2,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        &how as *const OpenHow,
                        std::mem::size_of::<OpenHow>(),
                    )
                }
                Step::OpenAtRaw { ptr, flags } => libc::syscall(libc::SYS_openat, libc::AT_FDCWD, *ptr, *flags),
                Step::Sleep(d) => {
                    let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ };
                    libc::syscall(
                        libc::SYS_nanosleep,
                        &ts as *const libc::timespec,
                        std::ptr::null_mut::<libc::timespec>(),
                    )
                }
            };
            // A syscall fails with -1 and errno; report it as the kernel returned it.
            let ret = if ret == -1 { -i64::from(*libc::__errno_location()) } else { ret };
            results.add(i).write_volatile(ret);
        }
        libc::_exit(0)
    }
}
