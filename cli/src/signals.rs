//! SIGINT/SIGTERM handling: one process-wide handler that records the request and wakes every
//! poller registered with it, so Ctrl-C stops a blocked poll at once and the tool can drain,
//! print its summary and detach.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use bpfstream::Waker;

static STOP: AtomicBool = AtomicBool::new(false);
static WAKERS: Mutex<Vec<Option<Waker>>> = Mutex::new(Vec::new());

/// Installs the handler (once, at start-up).
pub fn install() -> Result<()> {
    ctrlc::set_handler(|| {
        STOP.store(true, Ordering::SeqCst);
        if let Ok(wakers) = WAKERS.lock() {
            wakers.iter().flatten().for_each(Waker::wake);
        }
    })
    .context("installing the SIGINT/SIGTERM handler")
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Wakes `waker` on SIGINT/SIGTERM while the returned guard lives.
pub fn wake_on_signal(waker: Waker) -> SignalGuard {
    let mut wakers = WAKERS.lock().unwrap_or_else(|e| e.into_inner());
    if stop_requested() {
        waker.wake();
    }
    wakers.push(Some(waker));
    SignalGuard(wakers.len() - 1)
}

/// Unregisters a waker on drop.
#[derive(Debug)]
pub struct SignalGuard(usize);

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let mut wakers = WAKERS.lock().unwrap_or_else(|e| e.into_inner());
        wakers[self.0] = None;
    }
}
