//! The start of an exporter, bounded and interruptible. Connecting to the engine and checking
//! that it takes the events (the connection, the server's greeting, the TLS handshake, the
//! stream or topic lookup and creation) run on the exporter's own thread under one deadline
//! (`connect_timeout`, 3 s by default), while the caller's thread waits for the outcome and
//! gives up at once when told to (a signal), or at the deadline:
//!
//! ```text
//!  caller's thread                          exporter's thread (signals blocked)
//!  Handshake::wait ◀──ready: Ok / Err─────── Starting::run(connect) ──▶ Pipeline::run
//!    │ cancelled() every 10 ms                 │ deadline: Err(what did not answer)
//!    └─ gives up: drops `abandon` ───────────▶ └ abandoned: stops connecting, ends
//! ```
//!
//! An error at the deadline names the step that did not answer ([`Progress`]); for the
//! connection itself, [`watch`] follows a TCP connection of its own alongside the client's to
//! tell an address that accepts nothing from a server that accepts and then says nothing.

use std::future::Future;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::ExportError;

/// How often the caller's thread looks at `cancelled` while it waits.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// What the start is waiting for now, in words that complete "... within 3 s".
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress(Arc<Mutex<String>>);

impl Progress {
    pub fn waiting_for(&self, what: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = what.into();
    }

    pub fn describe(&self) -> String {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The caller's end of the start.
pub(crate) struct Handshake {
    ready: Receiver<Result<(), ExportError>>,
    /// Dropped when the caller gives up: the exporter's thread stops connecting.
    _abandon: oneshot::Sender<()>,
    deadline: Instant,
    timeout: Duration,
    progress: Progress,
}

/// The exporter thread's end of the start.
pub(crate) struct Starting {
    ready: SyncSender<Result<(), ExportError>>,
    abandoned: oneshot::Receiver<()>,
    deadline: Instant,
    timeout: Duration,
    progress: Progress,
}

/// The two ends of a start that may take `timeout`.
pub(crate) fn handshake(timeout: Duration) -> (Handshake, Starting) {
    let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
    let (abandon, abandoned) = oneshot::channel();
    let deadline = Instant::now() + timeout;
    let progress = Progress::default();
    let starting = Starting { ready: ready_tx, abandoned, deadline, timeout, progress: progress.clone() };
    (Handshake { ready, _abandon: abandon, deadline, timeout, progress }, starting)
}

fn timed_out(progress: &Progress, timeout: Duration) -> ExportError {
    ExportError::Unreachable(format!(
        "{} within {timeout:?} (connect_timeout={timeout:?}: raise it for a slower network, or add connect=retry to start \
         without the engine)",
        progress.describe()
    ))
}

impl Handshake {
    /// Waits until the exporter's thread connected (or failed), `cancelled` returns true
    /// ([`ExportError::Cancelled`]), or the deadline passed.
    pub fn wait(self, cancelled: &dyn Fn() -> bool) -> Result<(), ExportError> {
        loop {
            match self.ready.recv_timeout(LOOK_EVERY) {
                Ok(outcome) => return outcome,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ExportError::Client("the exporter's thread ended during the start".into()))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if cancelled() {
                return Err(ExportError::Cancelled);
            }
            // The thread reports the deadline itself; this is for a thread that cannot.
            if Instant::now() >= self.deadline + LOOK_EVERY * 10 {
                return Err(timed_out(&self.progress, self.timeout));
            }
        }
    }
}

impl Starting {
    /// Runs `connect` until it ends, the deadline passes, or the caller gives up, and tells
    /// the caller. The publisher, when the caller took it.
    pub async fn run<P>(mut self, connect: impl Future<Output = Result<P, ExportError>>) -> Option<P> {
        let outcome = tokio::select! {
            outcome = connect => outcome,
            () = tokio::time::sleep_until(self.deadline.into()) => Err(timed_out(&self.progress, self.timeout)),
            _ = &mut self.abandoned => return None,
        };
        match outcome {
            Ok(publisher) => self.ready.send(Ok(())).is_ok().then_some(publisher),
            Err(error) => {
                let _ = self.ready.send(Err(error));
                None
            }
        }
    }

    /// Tells the caller the start failed before it could connect.
    pub fn fail(self, error: ExportError) {
        let _ = self.ready.send(Err(error));
    }

    /// What the engine's connection needs of the start: where to say what it waits for, and
    /// how much time is left.
    pub fn budget(&self) -> Budget {
        Budget { progress: self.progress.clone(), deadline: self.deadline, timeout: self.timeout }
    }
}

/// The start as an engine's connection sees it.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    pub progress: Progress,
    deadline: Instant,
    timeout: Duration,
}

impl Budget {
    /// The whole start's time (`connect_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What is left of the start's time (for a client's own timeouts).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Follows a TCP connection of its own to `address` while a client connects, to say in
/// `progress` how far a server gets: nothing accepted, accepted and silent, or (with
/// `greeting`: the word a server of the engine greets with, and what the client does after it)
/// greeted. Never ends: it is dropped when the client's connection ends.
pub(crate) async fn watch(
    address: &str,
    engine: &str,
    greeting: Option<(&str, &str)>,
    progress: &Progress,
) -> std::convert::Infallible {
    progress.waiting_for(format!("nothing accepted a TCP connection to {engine} at {address}"));
    match tokio::net::TcpStream::connect(address).await {
        Err(e) => progress.waiting_for(format!("{engine} at {address} could not be reached ({e})")),
        Ok(mut stream) => {
            let silent = match greeting {
                Some((word, _)) => format!("sent no {word} greeting (a stopped server, or not {engine}?)"),
                None => "did not answer (a stopped server, or not a Kafka broker?)".into(),
            };
            progress.waiting_for(format!("{engine} at {address} accepted the connection but {silent}"));
            if let Some((word, then)) = greeting {
                let mut first = vec![0u8; word.len()];
                if stream.read_exact(&mut first).await.is_ok() && first == word.as_bytes() {
                    progress.waiting_for(format!("{engine} at {address} greeted but did not complete {then}"));
                }
            }
        }
    }
    std::future::pending().await
}

/// Starts a thread with SIGINT, SIGTERM, SIGHUP and SIGUSR1 blocked, from its first
/// instruction (a new thread inherits the mask of the thread that creates it, so they are
/// blocked around the spawn), and with them every thread it starts (the engine's client's):
/// the caller's threads, which wait for them, get them.
pub(crate) fn spawn_unsignalled<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    // SAFETY: sigsets built by sigemptyset/sigaddset; pthread_sigmask changes this thread's mask
    // and restores it below.
    let previous = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous);
        previous
    };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(work);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    spawned
}

/// Runs a blocking call (a client's synchronous request, bounded by its own timeout) on a
/// thread of its own, so that the runtime goes on meanwhile (the deadline, [`watch`]).
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ExportError> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("bpfstream-export-call".into())
        .spawn(move || {
            let _ = done.send(call());
        })
        .map_err(|e| ExportError::Client(format!("starting a thread for {what}: {e}")))?;
    result.await.map_err(|_| ExportError::Client(format!("{what} ended without an answer")))
}
