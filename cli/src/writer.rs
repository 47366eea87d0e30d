//! Stdout written by a thread of its own, so that a reader that blocks, crawls, goes away or
//! fills its disk can never hold up a tracer: the tracer formats into a buffer ([`Output`]),
//! hands whole batches to the queue, and its stop gives the queue a bounded time to empty.
//! Whatever is still queued then (or was refused: the reader failed, or fell more than
//! [`MAX_QUEUED`] behind) is counted as `unwritten`, by the events it carried, so that
//! `events + dropped + unwritten = produced` whatever stdout does.
//!
//! ```text
//!  tracer thread                          writer thread
//!  Output.buf ──flush()──▶ queue: [Chunk{bytes, events}, ...] ──write(2)──▶ fd 1
//!  note_events(n) ──▶ pending ─┘ (a flush takes the events noted since the last)
//! ```

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// Most bytes waiting for a slow reader; a batch beyond it is not queued but counted unwritten
/// (the buffer in the kernel keeps filling meanwhile, and drops are counted there).
pub const MAX_QUEUED: usize = 16 << 20;

/// Initial room for a batch of output (a batch grows as it needs).
const BATCH: usize = 64 << 10;

/// A batch of output and the events whose lines it holds.
struct Chunk {
    bytes: Vec<u8>,
    events: u64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    /// Events given to the sink since the last flush; the next chunk carries them.
    pending: u64,
    /// Events of the chunk the thread is writing now.
    writing: Option<u64>,
    unwritten: u64,
    /// The first write error; nothing is written after it.
    error: Option<io::ErrorKind>,
    /// Set by [`Queue::abandon`]: the stop deadline passed.
    abandoned: bool,
}

/// The queue between the tracer and the writer thread of one file descriptor.
pub struct Queue {
    fd: RawFd,
    state: Mutex<State>,
    changed: Condvar,
}

impl Queue {
    /// A queue for `fd` and the thread that writes it (its SIGINT/SIGTERM are blocked, so they
    /// reach the tracer's thread and interrupt its wait).
    pub fn start(fd: RawFd) -> Arc<Queue> {
        let queue = Arc::new(Queue { fd, state: Mutex::new(State::default()), changed: Condvar::new() });
        let writer = queue.clone();
        crate::signals::spawn_unsignalled("bpfstream-stdout", move || writer.write_loop());
        queue
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_loop(&self) {
        loop {
            let mut state = self.lock();
            let chunk = loop {
                match state.queue.pop_front() {
                    Some(chunk) => break chunk,
                    None => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                }
            };
            state.queued_bytes -= chunk.bytes.len();
            state.writing = Some(chunk.events);
            drop(state);
            let written = write_all(self.fd, &chunk.bytes);
            let mut state = self.lock();
            state.writing = None;
            if let Err(e) = written {
                // Only the first error counts; after it nothing is written.
                state.error.get_or_insert(e.kind());
                if !state.abandoned {
                    state.unwritten += chunk.events;
                    let queued: u64 = state.queue.drain(..).map(|c| c.events).sum();
                    state.unwritten += queued;
                }
                state.queued_bytes = 0;
            }
            self.changed.notify_all();
        }
    }

    /// Events given to the sink since the last flush (their lines are in the next chunk).
    pub fn note_events(&self, events: u64) {
        self.lock().pending += events;
    }

    fn push(&self, bytes: Vec<u8>) {
        let mut state = self.lock();
        let events = std::mem::take(&mut state.pending);
        if bytes.is_empty() {
            // Nothing to write: the events (folded into a summary, or malformed) are done with.
            return;
        }
        if state.abandoned || state.error.is_some() || state.queued_bytes + bytes.len() > MAX_QUEUED {
            state.unwritten += events;
            return;
        }
        state.queued_bytes += bytes.len();
        state.queue.push_back(Chunk { bytes, events });
        self.changed.notify_all();
    }

    /// The write error that ended the output, if any (e.g. `BrokenPipe`: the reader left).
    pub fn error(&self) -> Option<io::ErrorKind> {
        self.lock().error
    }

    /// Waits until everything queued is written, at most until `deadline`; returns whether it
    /// was.
    pub fn drain_by(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.queue.is_empty() && state.writing.is_none() {
                return state.error.is_none();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Gives up on what is not written yet: counts its events unwritten (the chunk being
    /// written too: its lines may be cut) and drops it. Returns the total unwritten events.
    pub fn abandon(&self) -> u64 {
        let mut state = self.lock();
        if !state.abandoned {
            state.abandoned = true;
            let queued: u64 = state.queue.drain(..).map(|c| c.events).sum();
            let writing = state.writing.unwrap_or(0);
            state.unwritten += queued + writing + std::mem::take(&mut state.pending);
            state.queued_bytes = 0;
        }
        state.unwritten
    }

    /// The end of the events: waits for them until `deadline`, then gives up on the rest.
    /// Returns the events not written.
    pub fn settle(&self, deadline: Instant) -> u64 {
        if self.drain_by(deadline) {
            self.lock().unwritten
        } else {
            self.abandon()
        }
    }

    /// Writes `bytes` (after everything queued) if that finishes by `deadline`.
    /// A short line (a summary) goes out at once from the calling thread when nothing waits
    /// before it and the descriptor can take it without blocking: then it does not depend on
    /// the writer thread being scheduled in time on a machine a storm keeps busy.
    pub fn write_by(&self, bytes: Vec<u8>, deadline: Instant) -> bool {
        let mut state = self.lock();
        if state.abandoned {
            return false;
        }
        let idle = state.queue.is_empty() && state.writing.is_none() && state.error.is_none();
        if idle && bytes.len() <= libc::PIPE_BUF && writable_now(self.fd) {
            // Holding the lock: the writer thread cannot start a write meanwhile.
            return match write_all(self.fd, &bytes) {
                Ok(()) => true,
                Err(e) => {
                    state.error.get_or_insert(e.kind());
                    false
                }
            };
        }
        drop(state);
        self.push(bytes);
        self.drain_by(deadline)
    }
}

/// Whether `fd` takes a write now: poll(2) says POLLOUT, which for a pipe means a free page, so a
/// write of at most PIPE_BUF bytes does not block (pipe_poll(), pipe_write()).
fn writable_now(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll(2) on one live pollfd, without waiting.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready == 1 && pollfd.revents & libc::POLLOUT != 0
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: write(2) from a live slice; `fd` is stdout, open for the whole process.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// The queue of the process's stdout (its thread starts at the first use).
pub fn stdout_queue() -> &'static Arc<Queue> {
    static STDOUT: OnceLock<Arc<Queue>> = OnceLock::new();
    STDOUT.get_or_init(|| Queue::start(libc::STDOUT_FILENO))
}

/// The queue of the process's stderr, for what must not block a stop (the summary).
pub fn stderr_queue() -> &'static Arc<Queue> {
    static STDERR: OnceLock<Arc<Queue>> = OnceLock::new();
    STDERR.get_or_init(|| Queue::start(libc::STDERR_FILENO))
}

/// What a tracer writes its events into: a buffer handed to the queue at each flush (the end
/// of a batch), and at drop.
pub struct Output {
    buf: Vec<u8>,
    queue: Arc<Queue>,
}

impl Output {
    pub fn new(queue: Arc<Queue>) -> Self {
        Output { buf: Vec::with_capacity(BATCH), queue }
    }
}

/// The tracers' stdout.
pub fn stdout() -> Output {
    Output::new(stdout_queue().clone())
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Queues the batch. Never blocks and never fails: a failed output is found with
    /// [`Queue::error`] and accounted as unwritten.
    fn flush(&mut self) -> io::Result<()> {
        let batch =
            if self.buf.is_empty() { Vec::new() } else { std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH)) };
        self.queue.push(batch);
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::Duration;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: two fresh fds, owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn everything_written_is_nothing_unwritten() {
        let (read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd());
        let mut out = Output::new(queue.clone());
        writeln!(out, "one").unwrap();
        queue.note_events(1);
        out.flush().unwrap();
        assert!(queue.drain_by(Instant::now() + Duration::from_secs(30)));
        assert_eq!(queue.abandon(), 0);
        let mut got = [0u8; 4];
        // SAFETY: read(2) into a live buffer.
        assert_eq!(unsafe { libc::read(read.as_raw_fd(), got.as_mut_ptr().cast(), 4) }, 4);
        assert_eq!(&got, b"one\n");
    }

    #[test]
    fn a_reader_that_never_reads_costs_a_bounded_wait_and_counts_every_event() {
        let (_read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd());
        let mut out = Output::new(queue.clone());
        // More than a pipe holds (64 KiB), in batches of 10 events of 1 KiB each.
        for _ in 0..20 {
            for _ in 0..10 {
                out.write_all(&[b'x'; 1024]).unwrap();
            }
            queue.note_events(10);
            out.flush().unwrap();
        }
        assert!(!queue.drain_by(Instant::now() + Duration::from_millis(50)));
        let unwritten = queue.abandon();
        assert!(unwritten > 0 && unwritten <= 200, "{unwritten}");
        assert_eq!(unwritten % 10, 0, "whole batches");
        assert!(!queue.write_by(b"summary\n".to_vec(), Instant::now()));
    }

    #[test]
    fn a_failed_output_counts_what_it_carried_and_everything_after() {
        let (read, write) = pipe();
        drop(read);
        let queue = Queue::start(write.as_raw_fd());
        let mut out = Output::new(queue.clone());
        for _ in 0..3 {
            out.write_all(b"line\n").unwrap();
            queue.note_events(1);
            out.flush().unwrap();
        }
        assert!(!queue.drain_by(Instant::now() + Duration::from_secs(30)));
        assert_eq!(queue.error(), Some(io::ErrorKind::BrokenPipe));
        out.write_all(b"late\n").unwrap();
        queue.note_events(1);
        out.flush().unwrap();
        assert_eq!(queue.abandon(), 4);
    }
}
