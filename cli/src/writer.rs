//! Stdout written by a thread of its own, so that a reader that blocks, crawls, goes away or
//! fills its disk can never hold up a tracer: the tracer formats into a buffer ([`Output`]),
//! hands whole batches to the queue, and its stop gives the queue a bounded time to empty.
//! An event's output is one line (or nothing), and a batch begins with its events' lines: the
//! batch carries how many they are and where they end, nothing per event. The thread writes at
//! most PIPE_BUF bytes at a time to a pipe, socket or terminal (all or nothing on a pipe), and at
//! most [`FILE_PIECE`] to a regular file (which no reader holds up), ending each write at a
//! line's end, so it knows to the byte, and so to the line, what went out. Batches queued
//! together (an agent's streams, each with its own) go out in one writev(2) when they fit in
//! one such write, and a push wakes the thread only when it waits. An event whose line was not
//! completely written when the stop gave up, or when the reader failed, or that was refused
//! because the reader fell more than [`MAX_QUEUED`] behind, is counted as `unwritten`, to the
//! stream whose [`Output`] wrote it: `events + dropped + unwritten = produced` for each stream,
//! whatever stdout does. (The one piece a blocked write holds when the stop gives up is counted
//! unwritten; should the reader take it in the moment before the process exits, it gets those
//! lines too.)
//!
//! ```text
//!  tracer thread                                   writer thread
//!  Output.buf ──flush()──▶ queue: [Chunk, ...] ──▶ writing: [bytes, done] ──writev(2), ≤ a piece──▶ fd
//!  [event lines | other lines]   Chunk: bytes + EventLines{end, count, unwritten: the stream's}
//! ```

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Most bytes waiting for a slow reader; a batch beyond it is not queued but counted unwritten
/// (the buffer in the kernel keeps filling meanwhile, and drops are counted there).
pub const MAX_QUEUED: usize = 16 << 20;

/// A reader that took no bytes for this long is taken for blocked by [`Queue::drain_by`] (a slow
/// one takes some every few milliseconds).
const STALLED: Duration = Duration::from_millis(100);

/// Most bytes of one write(2) to a regular file: a write there does not wait for a reader, and
/// one write per 64 KiB rather than per 4 costs a sixteenth of the calls.
const FILE_PIECE: usize = 64 << 10;

/// Most chunks one writev(2) gathers (far below IOV_MAX).
const MAX_GATHERED: usize = 64;

/// Initial room for a batch of output (a batch grows as it needs).
const BATCH: usize = 64 << 10;

/// The events' lines a chunk begins with: one line per event.
struct EventLines {
    /// Where they end; other output (loss reports, tables) may follow.
    end: usize,
    count: u64,
    /// The count of unwritten events of the stream that wrote them. Added to under the queue's
    /// lock and read after [`Queue::settle`] took it: Relaxed, the lock orders both.
    unwritten: Arc<AtomicU64>,
}

impl EventLines {
    /// Counts `n` of these events unwritten.
    fn lose(&self, n: u64) -> u64 {
        self.unwritten.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Counts unwritten the events whose line is not within the first `done` bytes of `bytes`
    /// (their lines, the writer's pieces and the stop all end at line ends).
    fn cut(&self, bytes: &[u8], done: usize) -> u64 {
        let left = match done {
            0 => self.count,
            _ => bytes[done.min(self.end)..self.end].iter().filter(|&&b| b == b'\n').count() as u64,
        };
        self.lose(left)
    }
}

/// A batch of output.
struct Chunk {
    bytes: Vec<u8>,
    events: Option<EventLines>,
}

impl Chunk {
    /// Counts its events unwritten (it is not written at all).
    fn refuse(&self) -> u64 {
        self.events.as_ref().map_or(0, |e| e.lose(e.count))
    }
}

/// A chunk the thread is writing: shared with [`Queue::abandon`], which counts what it did not
/// write.
struct Writing {
    bytes: Arc<Vec<u8>>,
    events: Option<EventLines>,
    /// Bytes out so far.
    done: usize,
}

impl Writing {
    fn cut(&self) -> u64 {
        self.events.as_ref().map_or(0, |e| e.cut(&self.bytes, self.done))
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    /// The chunks of the write under way (none: the writer is between writes).
    writing: Vec<Writing>,
    /// The writer waits for a chunk: a push wakes it (otherwise it finds the chunk itself).
    writer_waits: bool,
    /// Threads in [`Queue::drain_by`], woken when a write ends.
    drainers: usize,
    /// Every stream's unwritten events.
    unwritten: u64,
    /// The first write error; nothing is written after it.
    error: Option<io::ErrorKind>,
    /// Set by [`Queue::abandon`]: the stop deadline passed.
    abandoned: bool,
    /// When the writer last got bytes out, or began a chunk.
    progress: Option<Instant>,
}

impl State {
    /// Whether nothing is queued or being written.
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.writing.is_empty()
    }

    /// Counts unwritten the events of the write under way whose line is not out.
    fn cut_writing(&mut self) {
        self.unwritten += self.writing.iter().map(Writing::cut).sum::<u64>();
    }

    /// The chunks of the next write: the first queued, and as many after it as fit whole in one
    /// write of at most `piece` bytes (the streams of an agent, each with its batch, go out in
    /// one writev(2)).
    fn take_writing(&mut self, piece: usize) -> Vec<Arc<Vec<u8>>> {
        let mut total = 0;
        let mut taken = Vec::new();
        while let Some(next) = self.queue.front() {
            let fits = total + next.bytes.len() <= piece && taken.len() < MAX_GATHERED;
            if !taken.is_empty() && !fits {
                break;
            }
            let chunk = self.queue.pop_front().expect("a front chunk");
            total += chunk.bytes.len();
            self.queued_bytes -= chunk.bytes.len();
            let bytes = Arc::new(chunk.bytes);
            self.writing.push(Writing { bytes: bytes.clone(), events: chunk.events, done: 0 });
            taken.push(bytes);
        }
        taken
    }

    /// Counts unwritten what is queued, and forgets it.
    fn refuse_queued(&mut self) {
        let refused: u64 = self.queue.drain(..).map(|c| c.refuse()).sum();
        self.unwritten += refused;
        self.queued_bytes = 0;
    }
}

/// The queue between the tracer and the writer thread of one file descriptor.
pub struct Queue {
    fd: RawFd,
    /// Most bytes of one write: [`piece_limit`] of `fd`.
    piece: usize,
    state: Mutex<State>,
    /// Signalled by a push when the writer waits.
    work: Condvar,
    /// Signalled when a write ends and someone drains.
    written: Condvar,
    /// Set with `State::error`, for a look without the lock (Relaxed: a flag on its own; the
    /// error itself is read under the lock).
    failed: AtomicBool,
}

impl Queue {
    /// A queue for `fd` and the thread that writes it (its signals are blocked, so they reach
    /// the tracer's thread and interrupt its wait). Fails when the thread cannot start (the
    /// user's process limit, memory).
    pub fn start(fd: RawFd) -> io::Result<Arc<Queue>> {
        let queue = Self::new(fd, None);
        let writer = queue.clone();
        let (running, started) = std::sync::mpsc::channel();
        let work = move || {
            let _ = running.send(());
            writer.write_loop()
        };
        crate::signals::spawn_unsignalled(THREAD, work).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start the {THREAD} thread: {e} (a process or memory limit: ulimit -u, ulimit -v?)"),
            )
        })?;
        // Until the thread runs: its start-up allocates too (allocator.rs), and a failure there
        // belongs to this start, not to a later moment (after an error line, say).
        let _ = started.recv();
        Ok(queue)
    }

    /// A queue whose `fd` failed with `error` before anything was written: every event given to
    /// it counts as unwritten.
    fn failed(fd: RawFd, error: io::ErrorKind) -> Arc<Queue> {
        Self::new(fd, Some(error))
    }

    fn new(fd: RawFd, error: Option<io::ErrorKind>) -> Arc<Queue> {
        let failed = AtomicBool::new(error.is_some());
        let state = Mutex::new(State { error, ..State::default() });
        Arc::new(Queue { fd, piece: piece_limit(fd), state, work: Condvar::new(), written: Condvar::new(), failed })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_loop(&self) {
        loop {
            let mut state = self.lock();
            while state.queue.is_empty() {
                state.writer_waits = true;
                state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                state.writer_waits = false;
            }
            let chunks = state.take_writing(self.piece);
            state.progress = Some(Instant::now());
            drop(state);
            let written = match chunks.as_slice() {
                [one] => self.write_chunk(one),
                several => self.write_together(several),
            };
            let mut state = self.lock();
            if let Err(e) = written {
                // Only the first error counts; after it nothing is written.
                state.error.get_or_insert(e.kind());
                self.failed.store(true, Ordering::Relaxed);
                if !state.abandoned {
                    state.cut_writing();
                    state.refuse_queued();
                }
            }
            state.writing.clear();
            if state.drainers > 0 {
                self.written.notify_all();
            }
        }
    }

    /// Writes `bytes` a piece at a time, noting after each write how much is out.
    fn write_chunk(&self, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            let piece = &bytes[done..piece_end(bytes, done, self.piece)];
            write_all(self.fd, piece)?;
            done += piece.len();
            if !self.note_done(|_| done) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes whole chunks, at most a piece in all, with one writev(2) (more if the descriptor
    /// takes part of it), then notes them out.
    fn write_together(&self, chunks: &[Arc<Vec<u8>>]) -> io::Result<()> {
        let mut slices: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        write_all_vectored(self.fd, &mut slices)?;
        self.note_done(|i| chunks[i].len());
        Ok(())
    }

    /// Notes the bytes out of each chunk being written (`done` of its index); false when the
    /// stop gave up meanwhile (what is left is counted unwritten already).
    fn note_done(&self, done: impl Fn(usize) -> usize) -> bool {
        let mut state = self.lock();
        if state.abandoned {
            return false;
        }
        for (i, writing) in state.writing.iter_mut().enumerate() {
            writing.done = done(i);
        }
        state.progress = Some(Instant::now());
        true
    }

    fn push(&self, chunk: Chunk) {
        if chunk.bytes.is_empty() {
            // Nothing to write: the events (folded into a summary, or malformed) are done with.
            return;
        }
        let mut state = self.lock();
        if state.abandoned || state.error.is_some() || state.queued_bytes + chunk.bytes.len() > MAX_QUEUED {
            state.unwritten += chunk.refuse();
            return;
        }
        if state.idle() {
            // The writer was idle: its time to take this chunk starts now.
            state.progress = Some(Instant::now());
        }
        state.queued_bytes += chunk.bytes.len();
        state.queue.push_back(chunk);
        if state.writer_waits {
            // Only a waiting writer needs the futex call; a busy one finds the chunk when its
            // write ends.
            self.work.notify_one();
        }
    }

    /// Whether the output failed ([`error`](Self::error)), without taking the lock: cheap enough
    /// to ask after every event.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The write error that ended the output, if any (e.g. `BrokenPipe`: the reader left).
    pub fn error(&self) -> Option<io::ErrorKind> {
        self.lock().error
    }

    /// Waits until everything queued is written, at most until `deadline`, or until the reader
    /// took nothing for [`STALLED`] (a blocked reader: waiting longer only delays the stop);
    /// returns whether everything was written.
    pub fn drain_by(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.idle() {
                return state.error.is_none();
            }
            let now = Instant::now();
            let stalled_at = state.progress.map_or(deadline, |p| p + STALLED);
            let Some(left) = deadline.min(stalled_at).checked_duration_since(now) else { return false };
            state.drainers += 1;
            state = self.written.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
            state.drainers -= 1;
        }
    }

    /// Gives up on what is not written yet: counts its events unwritten (of the chunk being
    /// written, those whose line is not completely out) and drops it. Returns the total
    /// unwritten events.
    pub fn abandon(&self) -> u64 {
        let mut state = self.lock();
        if !state.abandoned {
            state.abandoned = true;
            state.cut_writing();
            state.refuse_queued();
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

    /// A short line (a summary) goes out at once from the calling thread when nothing waits
    /// before it and the descriptor can take it without blocking: then it does not depend on
    /// the writer thread being scheduled in time on a machine a storm keeps busy.
    pub fn write_by(&self, bytes: Vec<u8>, deadline: Instant) -> bool {
        let mut state = self.lock();
        if state.abandoned {
            return false;
        }
        let idle = state.idle() && state.error.is_none();
        if idle && bytes.len() <= libc::PIPE_BUF && writable_now(self.fd) {
            // Holding the lock: the writer thread cannot start a write meanwhile.
            return match write_all(self.fd, &bytes) {
                Ok(()) => true,
                Err(e) => {
                    state.error.get_or_insert(e.kind());
                    self.failed.store(true, Ordering::Relaxed);
                    false
                }
            };
        }
        drop(state);
        self.push(Chunk { bytes, events: None });
        self.drain_by(deadline)
    }
}

/// Where the write of `bytes` from `done` ends: at most `piece` on, at the end of the last whole
/// line that fits, so that a reader never holds half a line when the stop gives up on the rest
/// (only a line longer than `piece` is written in pieces).
fn piece_end(bytes: &[u8], done: usize, piece: usize) -> usize {
    let limit = bytes.len().min(done + piece);
    if limit == bytes.len() {
        return limit;
    }
    match bytes[done..limit].iter().rposition(|&b| b == b'\n') {
        Some(newline) => done + newline + 1,
        None => limit,
    }
}

/// The most bytes one write to `fd` may carry: [`FILE_PIECE`] for a regular file, PIPE_BUF for
/// anything a reader drains (a pipe, where at most PIPE_BUF is written all or nothing, a socket,
/// a terminal) or that fstat(2) cannot tell.
fn piece_limit(fd: RawFd) -> usize {
    // SAFETY: an all-zero stat is a valid value, and fstat(2) fills it from a live descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) writes into the struct passed.
    let known = unsafe { libc::fstat(fd, &mut stat) } == 0;
    match known && stat.st_mode & libc::S_IFMT == libc::S_IFREG {
        true => FILE_PIECE,
        false => libc::PIPE_BUF,
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

/// Writes all of `slices`, in order, with writev(2) (again for what a partial write left).
fn write_all_vectored(fd: RawFd, mut slices: &mut [&[u8]]) -> io::Result<()> {
    while let Some(first) = slices.first() {
        if first.is_empty() {
            slices = &mut slices[1..];
            continue;
        }
        // On the stack: a write of one slice (every write but a gathered one) allocates nothing.
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_GATHERED];
        let count = slices.len().min(MAX_GATHERED);
        for (entry, slice) in iov.iter_mut().zip(&slices[..count]) {
            *entry = libc::iovec { iov_base: slice.as_ptr() as *mut libc::c_void, iov_len: slice.len() };
        }
        // SAFETY: writev(2) reads the first `count` iovecs, which point to slices all alive and
        // unchanged for the call; `fd` is stdout or stderr, open for the whole process.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), count as libc::c_int) };
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
        let mut left = n as usize;
        while left > 0 {
            let taken = left.min(slices[0].len());
            slices[0] = &slices[0][taken..];
            left -= taken;
            if slices[0].is_empty() {
                slices = &mut slices[1..];
            }
        }
    }
    Ok(())
}

fn write_all(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    write_all_vectored(fd, &mut [bytes])
}

/// The name of the writer threads.
const THREAD: &str = "bpfstream-output";

static STDOUT: OnceLock<Arc<Queue>> = OnceLock::new();
static STDERR: OnceLock<Arc<Queue>> = OnceLock::new();

/// Starts the writer threads of stdout and stderr. A tracer calls it before anything else, so
/// that a thread that cannot start ends the run before it began (exit 1), not after it traced
/// for nothing.
pub fn start() -> io::Result<()> {
    for (queue, fd) in [(&STDOUT, libc::STDOUT_FILENO), (&STDERR, libc::STDERR_FILENO)] {
        if queue.get().is_none() {
            let _ = queue.set(Queue::start(fd)?);
        }
    }
    Ok(())
}

/// The queue of `fd`, started by [`start`]; a thread that cannot start at this point makes a
/// queue that writes nothing and counts every event unwritten.
fn queue(queue: &'static OnceLock<Arc<Queue>>, fd: RawFd) -> &'static Arc<Queue> {
    queue.get_or_init(|| Queue::start(fd).unwrap_or_else(|e| Queue::failed(fd, e.kind())))
}

/// The queue of the process's stdout.
pub fn stdout_queue() -> &'static Arc<Queue> {
    queue(&STDOUT, libc::STDOUT_FILENO)
}

/// The queue of the process's stderr, for what must not block a stop (the summary).
pub fn stderr_queue() -> &'static Arc<Queue> {
    queue(&STDERR, libc::STDERR_FILENO)
}

/// What a tracer writes its events into: a buffer handed to the queue at each flush (the end
/// of a batch), and at drop. A batch is its events' lines, one per event, each noted with
/// [`end_event`](Self::end_event) once written, then any other output (loss reports, tables)
/// until the flush: nothing else is written between a flush and the last event's line.
pub struct Output {
    buf: Vec<u8>,
    queue: Arc<Queue>,
    /// Where the events' lines of `buf` end, and how many they are.
    events_end: usize,
    events: u64,
    /// Events of this output whose line the queue did not write.
    unwritten: Arc<AtomicU64>,
}

impl Output {
    pub fn new(queue: Arc<Queue>) -> Self {
        Output { buf: Vec::with_capacity(BATCH), queue, events_end: 0, events: 0, unwritten: Arc::default() }
    }

    /// The line of an event was just written: it ends the output so far.
    pub fn end_event(&mut self) {
        debug_assert!(
            self.buf.last() == Some(&b'\n') && self.buf[self.events_end..].iter().filter(|&&b| b == b'\n').count() == 1,
            "an event's output is one line, after the previous event's"
        );
        self.events += 1;
        self.events_end = self.buf.len();
    }

    /// Bytes written since the last flush.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The events whose line the queue did not write, so far ([`Queue::settle`] first, for the
    /// final count).
    pub fn unwritten(&self) -> u64 {
        self.unwritten.load(Ordering::Relaxed)
    }
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Queues the batch. Never blocks and never fails: a failed output is found with
    /// [`Queue::error`] and accounted as unwritten.
    fn flush(&mut self) -> io::Result<()> {
        // The next batch gets room for as much as this one held: batches grow without a copy.
        let room = self.buf.len().next_power_of_two().max(BATCH);
        let bytes =
            if self.buf.is_empty() { Vec::new() } else { std::mem::replace(&mut self.buf, Vec::with_capacity(room)) };
        let events = (self.events > 0).then(|| EventLines {
            end: self.events_end,
            count: self.events,
            unwritten: self.unwritten.clone(),
        });
        (self.events, self.events_end) = (0, 0);
        self.queue.push(Chunk { bytes, events });
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
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: two fresh fds, owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Writes `events` events of one `line` each as one batch.
    fn batch(out: &mut Output, events: usize, line: &[u8]) {
        for _ in 0..events {
            out.write_all(line).unwrap();
            out.end_event();
        }
        out.flush().unwrap();
    }

    /// A line of `len` bytes, its newline included.
    fn line(len: usize) -> Vec<u8> {
        let mut line = vec![b'x'; len - 1];
        line.push(b'\n');
        line
    }

    #[test]
    fn everything_written_is_nothing_unwritten() {
        let (read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let mut out = Output::new(queue.clone());
        batch(&mut out, 1, b"one\n");
        assert!(queue.drain_by(Instant::now() + Duration::from_secs(30)));
        assert_eq!(queue.abandon(), 0);
        let mut got = [0u8; 4];
        // SAFETY: read(2) into a live buffer.
        assert_eq!(unsafe { libc::read(read.as_raw_fd(), got.as_mut_ptr().cast(), 4) }, 4);
        assert_eq!(&got, b"one\n");
    }

    #[test]
    fn a_reader_that_never_reads_gets_what_the_pipe_holds_and_the_rest_is_counted() {
        let (read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let mut out = Output::new(queue.clone());
        // 200 events of 1 KiB: more than a pipe holds (64 KiB, 16 pages).
        for _ in 0..20 {
            batch(&mut out, 10, &line(1024));
        }
        // Long enough for the thread to fill the pipe and block.
        assert!(!queue.drain_by(Instant::now() + Duration::from_secs(1)));
        // What the pipe took (the writer is blocked, its next piece all or nothing): exactly
        // the events not counted.
        let mut taken: libc::c_int = 0;
        // SAFETY: FIONREAD into a live int.
        assert_eq!(unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &mut taken) }, 0);
        let unwritten = queue.abandon();
        assert!(taken > 0 && taken % 1024 == 0, "{taken}");
        assert_eq!(unwritten, 200 - taken as u64 / 1024);
        assert!(!queue.write_by(b"summary\n".to_vec(), Instant::now()));
    }

    #[test]
    fn a_reader_that_stops_reading_holds_whole_lines_only() {
        let (read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let mut out = Output::new(queue.clone());
        // 200 lines of 1000 bytes: PIPE_BUF pieces would end mid-line.
        for _ in 0..20 {
            batch(&mut out, 10, &line(1000));
        }
        assert!(!queue.drain_by(Instant::now() + Duration::from_secs(1)));
        let unwritten = queue.abandon();
        let mut held = vec![0u8; 1 << 20];
        // SAFETY: read(2) into a live buffer; the pipe holds less than it.
        let n = unsafe { libc::read(read.as_raw_fd(), held.as_mut_ptr().cast(), held.len()) };
        assert!(n > 0 && n % 1000 == 0, "the pipe holds {n} bytes: a line was cut");
        assert_eq!(held[n as usize - 1], b'\n');
        assert_eq!(unwritten, 200 - n as u64 / 1000);
    }

    #[test]
    fn pieces_end_at_line_ends_unless_a_line_is_longer_than_a_piece() {
        let mut lines = [b"a".repeat(3000), b"\n".to_vec(), b"b".repeat(3000), b"\n".to_vec()].concat();
        assert_eq!(piece_end(&lines, 0, libc::PIPE_BUF), 3001);
        assert_eq!(piece_end(&lines, 3001, libc::PIPE_BUF), lines.len());
        assert_eq!(piece_end(&lines, 0, FILE_PIECE), lines.len());
        lines = b"c".repeat(3 * libc::PIPE_BUF);
        assert_eq!(piece_end(&lines, 0, libc::PIPE_BUF), libc::PIPE_BUF);
    }

    #[test]
    fn chunks_queued_together_are_taken_whole_up_to_a_piece() {
        let mut state = State::default();
        let chunk = |len: usize| Chunk { bytes: vec![b'\n'; len], events: None };
        for len in [1000, 2000, 1500, 10, 5000, 20] {
            state.queued_bytes += len;
            state.queue.push_back(chunk(len));
        }
        let mut taken = || {
            state.writing.clear();
            state.take_writing(libc::PIPE_BUF).iter().map(|c| c.len()).collect::<Vec<_>>()
        };
        assert_eq!(taken(), [1000, 2000]);
        assert_eq!(taken(), [1500, 10]);
        assert_eq!(taken(), [5000], "a chunk larger than a piece goes alone, in pieces");
        assert_eq!(taken(), [20]);
        assert_eq!((state.queued_bytes, state.writing.len()), (0, 1));
    }

    #[test]
    fn chunks_of_several_outputs_go_out_whole_and_in_order() {
        let (read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let (mut a, mut b) = (Output::new(queue.clone()), Output::new(queue.clone()));
        for i in 0..100 {
            let out = if i % 3 == 0 { &mut a } else { &mut b };
            batch(out, 1 + i % 4, format!("{i:04}\n").as_bytes());
        }
        assert!(queue.drain_by(Instant::now() + Duration::from_secs(30)));
        let mut held = vec![0u8; 1 << 16];
        // SAFETY: read(2) into a live buffer; the pipe holds less than it.
        let n = unsafe { libc::read(read.as_raw_fd(), held.as_mut_ptr().cast(), held.len()) } as usize;
        let expected: String = (0..100).map(|i| format!("{i:04}\n").repeat(1 + i % 4)).collect();
        assert_eq!(std::str::from_utf8(&held[..n]).unwrap(), expected);
        assert_eq!((a.unwritten(), b.unwritten(), queue.abandon()), (0, 0, 0));
    }

    #[test]
    fn a_regular_file_takes_larger_pieces_than_a_pipe() {
        let (read, write) = pipe();
        assert_eq!((piece_limit(read.as_raw_fd()), piece_limit(write.as_raw_fd())), (libc::PIPE_BUF, libc::PIPE_BUF));
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(piece_limit(file.as_raw_fd()), FILE_PIECE);
        assert_eq!(piece_limit(-1), libc::PIPE_BUF);
    }

    #[test]
    fn a_failed_output_counts_what_it_carried_and_everything_after() {
        let (read, write) = pipe();
        drop(read);
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let mut out = Output::new(queue.clone());
        for _ in 0..3 {
            batch(&mut out, 1, b"line\n");
        }
        assert!(!queue.drain_by(Instant::now() + Duration::from_secs(30)));
        assert_eq!(queue.error(), Some(io::ErrorKind::BrokenPipe));
        batch(&mut out, 1, b"late\n");
        assert_eq!(queue.abandon(), 4);
    }

    #[test]
    fn output_without_events_is_not_counted() {
        let (read, write) = pipe();
        drop(read);
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let mut out = Output::new(queue.clone());
        out.write_all(b"a table title\n").unwrap();
        out.flush().unwrap();
        assert!(!queue.drain_by(Instant::now() + Duration::from_secs(30)));
        out.write_all(b"a loss report\n").unwrap();
        out.flush().unwrap();
        assert_eq!(queue.abandon(), 0);
    }

    #[test]
    fn unwritten_events_are_counted_to_the_output_that_wrote_them() {
        let (read, write) = pipe();
        let queue = Queue::start(write.as_raw_fd()).unwrap();
        let (mut a, mut b) = (Output::new(queue.clone()), Output::new(queue.clone()));
        // 40 KiB of a's lines, then b's, each batch followed by a line that is no event: more
        // than the pipe holds in all, so the writer blocks in b's lines.
        for _ in 0..5 {
            for _ in 0..8 {
                a.write_all(&line(1024)).unwrap();
                a.end_event();
            }
            a.write_all(b"not an event\n").unwrap();
            a.flush().unwrap();
        }
        for _ in 0..40 {
            batch(&mut b, 1, &line(1024));
        }
        assert!(!queue.drain_by(Instant::now() + Duration::from_secs(1)));
        let unwritten = queue.abandon();
        let mut held = vec![0u8; 1 << 20];
        // SAFETY: read(2) into a live buffer; the pipe holds less than it.
        let n = unsafe { libc::read(read.as_raw_fd(), held.as_mut_ptr().cast(), held.len()) } as usize;
        let text = &held[..n];
        let lines = |from: &[u8]| from.split(|&c| c == b'\n').filter(|l| l.len() == 1023).count() as u64;
        let mark = b"not an event\n";
        let b_start = text.windows(mark.len()).rposition(|w| w == mark).unwrap() + mark.len();
        assert_eq!(lines(&text[..b_start]), 40, "a's lines all went out");
        assert_eq!((a.unwritten(), b.unwritten()), (0, 40 - lines(&text[b_start..])));
        assert_eq!(unwritten, b.unwritten());
    }
}
