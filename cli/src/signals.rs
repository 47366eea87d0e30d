//! SIGINT/SIGTERM of the tracers: the first asks the run to stop (detach, drain, summary); a
//! second one ends the process at once (exit 130), whatever it was waiting for: the kernel then
//! detaches and frees everything, as nothing is pinned.
//!
//! The handler is installed without SA_RESTART, so the signal interrupts the tracer thread's
//! wait (epoll_wait returns EINTR) and the stop begins at once. Threads bpfstream starts block
//! both signals ([`spawn_unsignalled`]), so the kernel delivers them to the tracer thread.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

static STOP: AtomicBool = AtomicBool::new(false);

/// Exit status after a second signal: 128 + SIGINT, as a shell reports an interrupted command.
const EXIT_AT_ONCE: i32 = 130;

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic swap, and _exit(2).
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe; it ends the process without running destructors
        // or flushing stdio, which could block on the very reader the user gave up on.
        unsafe { libc::_exit(EXIT_AT_ONCE) };
    }
}

/// Installs the handler for SIGINT and SIGTERM (once, at start-up).
pub fn install() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only touches an atomic and _exit; no
        // SA_RESTART, so blocking calls return EINTR.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!("installing the SIGINT/SIGTERM handler: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Starts a helper thread with SIGINT and SIGTERM blocked (from its first instruction: a new
/// thread inherits the mask of the thread that creates it, so they are blocked around the spawn).
pub fn spawn_unsignalled(name: &str, work: impl FnOnce() + Send + 'static) {
    // SAFETY: sigsets built by sigemptyset/sigaddset; pthread_sigmask changes this thread's mask
    // and restores it below.
    let previous = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous);
        previous
    };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(work);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    if let Err(e) = spawned {
        eprintln_lossy!("bpfstream: cannot start the {name} thread: {e}");
    }
}
