//! The signals of a bpfstream process, each with one meaning, which the caller interprets:
//!
//! | signal | [`Signal`] | a tracer | an agent (its own choice) |
//! |---|---|---|---|
//! | SIGINT | `Interrupt` | stop: detach, drain, summary | stop |
//! | SIGTERM | `Terminate` | stop | stop |
//! | SIGHUP | `Hangup` | stop, like SIGTERM | reload |
//! | SIGUSR1 | `Report` | print the summary so far, go on | the same |
//!
//! The handler only records what came ([`take`]); the signals [`install`] is given as *stops*
//! also set [`stop_requested`], and a second stop ends the process at once (exit 130, as a
//! shell reports an interrupted command), whatever it was waiting for: the kernel then detaches
//! and frees everything, as nothing is pinned.
//!
//! The handlers are installed at the first instruction of `main`, before the arguments are
//! parsed, so that a signal at any point of the start is honoured; commands that keep the
//! default actions (`bench`, `lab`) put them back with [`restore_default`]. They are installed
//! without SA_RESTART, so a signal interrupts the waiting thread's wait (epoll_wait returns
//! EINTR) and the caller looks at once. Threads bpfstream starts block these signals
//! ([`spawn_unsignalled`]), so that the kernel delivers them to the thread that waits for them.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use anyhow::{bail, Result};

/// A signal bpfstream handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (a service manager's stop).
    Terminate,
    /// SIGHUP (the terminal went away, or a reload for a daemon).
    Hangup,
    /// SIGUSR1 (print what happened so far).
    Report,
}

impl Signal {
    const ALL: [Signal; 4] = [Signal::Interrupt, Signal::Terminate, Signal::Hangup, Signal::Report];

    fn number(self) -> libc::c_int {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Hangup => libc::SIGHUP,
            Signal::Report => libc::SIGUSR1,
        }
    }

    fn bit(self) -> u32 {
        1 << self.number()
    }
}

/// What a tracer treats as a stop.
pub const TRACER_STOPS: &[Signal] = &[Signal::Interrupt, Signal::Terminate, Signal::Hangup];

/// Signals that arrived and were not taken yet, one bit per signal number.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// The signals that stop the process, one bit per signal number.
static STOPS: AtomicU32 = AtomicU32::new(0);
/// A stop was asked for.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Exit status after a second stop: 128 + SIGINT, as a shell reports an interrupted command.
const EXIT_AT_ONCE: i32 = 130;

extern "C" fn on_signal(number: libc::c_int) {
    // Async-signal-safe: atomics, and _exit(2). SeqCst: the flags are read by other threads
    // with nothing else to order them.
    let bit = 1u32 << number;
    if STOPS.load(Ordering::SeqCst) & bit != 0 && STOPPING.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe; it ends the process without running destructors
        // or flushing stdio, which could block on the very reader the user gave up on.
        unsafe { libc::_exit(EXIT_AT_ONCE) };
    }
    PENDING.fetch_or(bit, Ordering::SeqCst);
}

fn set_action(signal: Signal, handler: libc::sighandler_t) -> Result<()> {
    // SAFETY: a zeroed sigaction with either SIG_DFL or a handler that only touches atomics
    // and _exit; no SA_RESTART, so blocking calls return EINTR.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal.number(), &action, std::ptr::null_mut())
    };
    if rc != 0 {
        bail!("installing the handler of {signal:?}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Handles every [`Signal`]; those in `stops` set [`stop_requested`] (and a second one ends
/// the process at once). Called again, it changes which signals stop.
pub fn install(stops: &[Signal]) -> Result<()> {
    STOPS.store(stops.iter().fold(0, |mask, s| mask | s.bit()), Ordering::SeqCst);
    for signal in Signal::ALL {
        set_action(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t)?;
    }
    Ok(())
}

/// Puts the default actions back (a signal then ends the process, as for any program); a stop
/// that arrived since [`install`] ends it now, as the default action would have.
pub fn restore_default() -> Result<()> {
    for signal in Signal::ALL {
        set_action(signal, libc::SIG_DFL)?;
    }
    if stop_requested() {
        let stops = STOPS.load(Ordering::SeqCst) & PENDING.load(Ordering::SeqCst);
        for signal in Signal::ALL.into_iter().filter(|s| stops & s.bit() != 0) {
            // SAFETY: raising a signal whose action is now the default: it ends the process.
            unsafe { libc::raise(signal.number()) };
        }
        std::process::exit(EXIT_AT_ONCE);
    }
    Ok(())
}

/// Whether a stop signal arrived.
pub fn stop_requested() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// `Err(StoppedAtStart)` once a stop signal arrived: for the steps of a start, between which a
/// stop is honoured at once.
pub fn stop_point(during: &str) -> Result<(), StoppedAtStart> {
    match stop_requested() {
        true => Err(StoppedAtStart { during: during.into() }),
        false => Ok(()),
    }
}

/// Whether `signal` arrived since the last call (for the same signal).
pub fn take(signal: Signal) -> bool {
    PENDING.fetch_and(!signal.bit(), Ordering::SeqCst) & signal.bit() != 0
}

/// Starts a helper thread with every [`Signal`] blocked (from its first instruction: a new
/// thread inherits the mask of the thread that creates it, so they are blocked around the
/// spawn).
pub fn spawn_unsignalled(name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: sigsets built by sigemptyset/sigaddset; pthread_sigmask changes this thread's mask
    // and restores it below.
    let previous = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in Signal::ALL {
            libc::sigaddset(&mut set, signal.number());
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous);
        previous
    };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(work);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    spawned.map(drop)
}

/// A run that a stop signal ended before its first event (during the start): it ends with an
/// empty summary and exit 0, as any stop.
#[derive(Debug)]
pub struct StoppedAtStart {
    /// What the start was doing (`connecting to nats://...`, `loading the BPF programs`).
    pub during: String,
}

impl std::fmt::Display for StoppedAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped while {}", self.during)
    }
}

impl std::error::Error for StoppedAtStart {}
