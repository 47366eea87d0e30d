//! Stopping a consumer from another thread or task: [`StopHandle`], for an
//! [`EventSource`](crate::EventSource) or a [`Poller`](crate::Poller) blocked in a wait and for
//! an [`EventStream`](crate::stream::EventStream), blocking or async, alike.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use crate::sys::EventFd;

/// Nothing asked.
pub(crate) const RUNNING: u8 = 0;
/// Stop once everything buffered has been handed over.
pub(crate) const DRAIN: u8 = 1;
/// Stop now; what is buffered stays in the buffers.
pub(crate) const CANCEL: u8 = 2;

/// What a [`StopHandle`] asked for, and how to wake the consumer that waits: the task polling a
/// stream (its waker), or a thread blocked in `epoll_wait` (an eventfd in its epoll set, which
/// stays readable once signalled, so that no later wait blocks).
#[derive(Debug)]
pub(crate) struct Control {
    request: AtomicU8,
    task: Mutex<Option<Waker>>,
    fd: EventFd,
}

impl Control {
    /// A control that signals `fd` (which blocked consumers wait on) when asked.
    pub(crate) fn with_fd(fd: EventFd) -> Self {
        Control { request: AtomicU8::new(RUNNING), task: Mutex::new(None), fd }
    }

    /// The eventfd blocked consumers wait on.
    pub(crate) fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// What was asked so far: [`RUNNING`], [`DRAIN`] or [`CANCEL`].
    pub(crate) fn request(&self) -> u8 {
        self.request.load(Ordering::Acquire)
    }

    fn ask(&self, request: u8) {
        // Cancel wins over drain, whatever the order they come in.
        self.request.fetch_max(request, Ordering::AcqRel);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.wake();
        }
        self.fd.signal();
    }

    /// Remembers the task to wake on a request (the stream calls it before it looks, so a
    /// request made after the look still wakes it).
    #[cfg(feature = "tokio")]
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// Stops an [`EventSource`](crate::EventSource), a [`Poller`](crate::Poller) or an
/// [`EventStream`](crate::stream::EventStream) from any thread or task (`Clone + Send + Sync`;
/// safe from a signal-handling thread), any number of times. [`cancel`](Self::cancel) wins over
/// [`drain`](Self::drain) whatever the order.
///
/// What stops means depends on the consumer: a poller's [`run`](crate::Poller::run) and a
/// stream end (after a drain, or at once); a source's waits (and a poller's) return at once and
/// no longer wait, for the caller's loop to see [`is_stopped`](Self::is_stopped).
#[derive(Debug, Clone)]
pub struct StopHandle(pub(crate) Arc<Control>);

impl StopHandle {
    /// Stops once everything left in the buffers has been handed over, with the final loss
    /// report (an [`EventSource`](crate::EventSource) reads its drop counters one last time): a
    /// poller's [`run`](crate::Poller::run) drains and returns; a stream yields the rest and
    /// ends. A record still being written at the head of a ring is waited for, up to a second.
    /// Detach the producers first, or the drain lasts as long as they produce; for an end exact
    /// to the last event (grace periods, counter snapshots), call
    /// [`Poller::finish`](crate::Poller::finish) or
    /// [`EventSource::finish`](crate::EventSource::finish) after the detach.
    pub fn drain(&self) {
        self.0.ask(DRAIN);
    }

    /// Stops at once: a poller's `run` returns without a drain, a stream ends at its next poll
    /// (yielding only the loss reports it already took). Records not yet taken stay in the
    /// buffers, for the next consumer.
    pub fn cancel(&self) {
        self.0.ask(CANCEL);
    }

    /// Whether a stop (either kind) was asked.
    pub fn is_stopped(&self) -> bool {
        self.0.request() != RUNNING
    }
}
