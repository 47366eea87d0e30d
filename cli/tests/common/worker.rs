//! A thread of a test that makes system calls when told, and nothing else: streams filter on
//! its tid, so what they see is exactly what it was told to do.

use std::sync::mpsc;

/// What a thread of this test does when told, and nothing else: the streams filter on its tid.
pub enum Act {
    /// getppid() this many times.
    Calls(usize),
    /// open() of a missing file this many times.
    Opens(usize),
    /// execve() of a missing file this many times (each fails with ENOENT).
    FailedExecs(usize),
}

/// A thread of this process that does each [`Act`] it is sent, then says so.
pub struct Worker {
    pub tid: u32,
    acts: mpsc::Sender<Act>,
    done: mpsc::Receiver<()>,
}

impl Worker {
    pub fn start() -> Worker {
        let (tid_tx, tid) = mpsc::channel();
        let (acts, acts_rx) = mpsc::channel::<Act>();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: gettid(2) takes nothing.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            for act in acts_rx {
                match act {
                    Act::Calls(n) => (0..n).for_each(|_| {
                        // SAFETY: getppid(2) takes nothing.
                        unsafe { libc::getppid() };
                    }),
                    Act::Opens(n) => (0..n).for_each(|_| {
                        // SAFETY: open(2) of a NUL-terminated path; it fails (no such file).
                        unsafe { libc::open(c"/nonexistent/bpfstream-agent".as_ptr(), libc::O_RDONLY) };
                    }),
                    Act::FailedExecs(n) => (0..n).for_each(|_| {
                        let argv = [c"bpfstream-agent".as_ptr(), std::ptr::null()];
                        let envp = [std::ptr::null()];
                        // SAFETY: execve(2) of a missing file with NULL-terminated argv and envp:
                        // it fails (ENOENT) and returns.
                        unsafe { libc::execve(c"/nonexistent/bpfstream-agent".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                    }),
                }
                done_tx.send(()).unwrap();
            }
        });
        Worker { tid: tid.recv().unwrap(), acts, done }
    }

    /// Does `act` and returns once it is done.
    pub fn act(&self, act: Act) {
        self.acts.send(act).unwrap();
        self.done.recv().unwrap();
    }
}
