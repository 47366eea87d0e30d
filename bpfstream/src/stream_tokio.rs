//! The async half of [`EventStream`] (feature `tokio`): its sources' descriptor registered with
//! tokio's reactor through [`AsyncFd`], its timers, and the [`Stream`] impl.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

use crate::ordered::{monotonic_ns, Reorder};
use crate::ringbuf::BUSY_BACKOFF;
use crate::stop::{Control, RUNNING};
use crate::stream::{EventStream, Inputs, Pulled, Step};
use crate::{Error, Event};

/// Why a wait ended.
enum Wake {
    /// The descriptor became readable.
    Signalled,
    /// The delay timer expired.
    Timeout,
    /// The short wait for a BUSY head record expired, or a [`StopHandle`](crate::StopHandle)
    /// asked for something.
    Look,
}

/// The stream's descriptor registered with tokio, the delay timer and the backoff timer.
pub(crate) struct Waiter {
    fd: AsyncFd<OwnedFd>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Running while the sources hold bytes that cannot be taken yet (see `BUSY_BACKOFF`).
    backoff: Option<Pin<Box<Sleep>>>,
    control: Arc<Control>,
}

impl Waiter {
    /// Registers `fd` (a duplicate of the stream's descriptor, which it owns, so that it stays
    /// open and the same for as long as the registration), answering to `control`.
    pub(crate) fn new(fd: OwnedFd, control: Arc<Control>) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Unsupported(
                "an async event stream must be polled inside a tokio runtime (with IO and time enabled)".into(),
            ));
        }
        // SAFETY: the `OwnedFd` owns its descriptor, which therefore stays open, and
        // `as_raw_fd` returns that same descriptor until it is dropped with the `AsyncFd`;
        // nothing swaps it through `get_mut` (never called).
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::sys("registering the buffer with tokio", e.into()))?;
        debug_assert!(fd.get_ref().as_raw_fd() >= 0);
        Ok(Waiter { fd, timer: None, backoff: None, control })
    }

    /// Restarts the delay timer (its length changed).
    pub(crate) fn reset_timer(&mut self) {
        self.timer = None;
    }

    /// Waits for a signal from the descriptor, the delay timer (`delay`) or the control, and for
    /// at most [`BUSY_BACKOFF`] when `busy`. Call it only after a look took nothing.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        busy: bool,
        delay: Option<std::time::Duration>,
    ) -> Poll<Result<Wake, Error>> {
        // Register before looking, so a request made after the look still wakes us.
        self.control.register(cx.waker());
        if self.control.request() != RUNNING {
            return Poll::Ready(Ok(Wake::Look));
        }
        match self.fd.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                // Clear first, then the caller takes what is there: a wakeup arriving after the
                // clear sets readiness again, so none is missed.
                guard.clear_ready();
                return Poll::Ready(Ok(Wake::Signalled));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::sys("waiting for the buffer", e))),
            Poll::Pending => {}
        }
        if busy {
            let backoff = self.backoff.get_or_insert_with(|| Box::pin(tokio::time::sleep(BUSY_BACKOFF)));
            if backoff.as_mut().poll(cx).is_ready() {
                self.backoff = None;
                return Poll::Ready(Ok(Wake::Look));
            }
        } else {
            self.backoff = None;
        }
        if let Some(delay) = delay {
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if timer.as_mut().poll(cx).is_ready() {
                timer.as_mut().reset(Instant::now() + delay);
                return Poll::Ready(Ok(Wake::Timeout));
            }
        }
        Poll::Pending
    }
}

impl<T> Inputs<T> {
    /// The next item in the order the sources hold them.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event<T>, Error>>> {
        let coop = if self.nothing_pending() { Some(ready!(tokio::task::coop::poll_proceed(cx))) } else { None };
        loop {
            let (busy, unsignalled) = match self.step() {
                Step::Item(item) => {
                    if let Some(coop) = &coop {
                        coop.made_progress();
                    }
                    return Poll::Ready(Some(item));
                }
                Step::End => return Poll::Ready(None),
                Step::Wait { busy, unsignalled } => (busy, unsignalled),
            };
            let delay = self.delay(unsignalled);
            let woke = match self.waiter() {
                Ok(waiter) => ready!(waiter.poll_wait(cx, busy, delay)),
                Err(error) => Err(error),
            };
            match woke {
                Ok(Wake::Signalled) => self.note_wait(true),
                Ok(Wake::Timeout) => self.note_wait(false),
                Ok(Wake::Look) => {}
                Err(error) => return Poll::Ready(Some(self.fail(error))),
            }
        }
    }
}

impl<T> Reorder<T> {
    /// The next event of `inputs` in key order.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        inputs: &mut Inputs<T>,
    ) -> Poll<Option<Result<Event<T>, Error>>> {
        loop {
            if let Some(item) = self.released() {
                return Poll::Ready(Some(item));
            }
            if self.is_over() {
                return Poll::Ready(None);
            }
            // The clock before the look at the buffers: a record stamped before it is in a
            // buffer by the time we look (within `span`).
            let now = monotonic_ns();
            match inputs.poll_next(cx) {
                Poll::Ready(Some(item)) => self.accept(Pulled::Item(item)),
                Poll::Ready(None) => self.accept(Pulled::End),
                Poll::Pending => {
                    // Pending with nothing waiting: everything stamped before `now` has been
                    // read. (Pending with records waiting is the scheduler's budget.)
                    if inputs.is_empty() {
                        self.seen_empty(now);
                    }
                    if let Some(item) = self.released() {
                        return Poll::Ready(Some(item));
                    }
                    if !self.release_due(cx, now) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Whether the first record held is due now; if not, arms the release timer for when it
    /// will be, so that the stream is woken then (`cx`).
    fn release_due(&mut self, cx: &mut Context<'_>, now: u64) -> bool {
        let Some(wait) = self.due_in(now) else {
            self.release_timer = None;
            return false;
        };
        let at = Instant::now() + wait;
        let timer = self.release_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.release_timer = None;
            return true;
        }
        false
    }
}

// Nothing in a stream is pinned structurally (the timers are pinned in their own boxes), so the
// stream can move whatever `T` is.
impl<T> Unpin for EventStream<T> {}

impl<T: 'static> Stream for EventStream<T> {
    type Item = Result<Event<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::ordered::tests::{key_of, keys, merged, ordered, two_cpus};
    use crate::stream::tests::{busy_head, copy, never_wakes, Unsignalled};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// The next item of `stream`, which must come within 10 s. (Not `tokio::time::timeout`:
    /// it polls the stream once more when the time is up, which finds what a stream asleep
    /// forever would have missed.)
    async fn next_within<St: Stream + Unpin>(stream: &mut St, what: &str) -> St::Item {
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("{what}"),
            item = stream.next() => item.expect("the stream ended"),
        }
    }

    /// A stream and a merged stream over `source()`, both asked for no delay timer, deliver its
    /// record (rather than sleep forever).
    fn assert_found_without_a_timer(source: impl Fn() -> Unsignalled) {
        runtime().block_on(async {
            let mut stream = EventStream::from_source(Box::new(source()), Box::new(copy)).unwrap();
            stream.set_max_delay(None);
            let event = next_within(&mut stream, "the stream slept while a record waited").await.unwrap();
            assert_eq!(event, Event::Record(42u64.to_ne_bytes().to_vec()));

            let mut merged = EventStream::from_source(Box::new(source()), Box::new(copy)).unwrap();
            merged.add_source(Box::new(source()), 0, Box::new(copy)).unwrap();
            merged.set_max_delay(None);
            for _ in 0..2 {
                let event = next_within(&mut merged, "the merged stream slept while a record waited").await.unwrap();
                assert_eq!(event, Event::Record(42u64.to_ne_bytes().to_vec()));
            }
        });
    }

    #[test]
    fn streams_without_a_timer_do_not_sleep_on_a_busy_head() {
        assert_found_without_a_timer(busy_head);
    }

    #[test]
    fn streams_keep_a_timer_for_a_source_that_never_wakes_them() {
        assert_found_without_a_timer(never_wakes);
    }

    #[test]
    fn a_stream_polled_outside_a_runtime_says_so() {
        let mut stream = EventStream::from_source(Box::new(busy_head()), Box::new(copy)).unwrap();
        stream.set_max_delay(None);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // The record is behind a busy head: the first poll must wait, which needs a runtime.
        let item = Pin::new(&mut stream).poll_next(&mut cx);
        assert!(matches!(item, Poll::Ready(Some(Err(Error::Unsupported(_))))), "{item:?}");
    }

    #[test]
    fn a_drained_stream_comes_out_in_key_order_with_drops_first() {
        runtime().block_on(async {
            let (items, expected) = two_cpus(monotonic_ns());
            let mut stream = ordered(&items, Duration::from_secs(3600));
            stream.stop_handle().drain();
            let out: Vec<Event<u64>> = (&mut stream).map(Result::unwrap).collect().await;
            assert_eq!(out, expected);
        });
    }

    /// No delay timer and no producer's wakeup to come (the buffer is empty): the record held
    /// is released once it is `span` old all the same.
    #[test]
    fn a_held_record_is_released_without_a_delay_timer() {
        runtime().block_on(async {
            let mut stream = EventStream::from_source(keys([Some(monotonic_ns())]), Box::new(key_of)).unwrap();
            stream.set_max_delay(None);
            let mut stream = stream.ordered(Duration::from_millis(10), |k: &u64| *k);
            let event = next_within(&mut stream, "the held record was never released").await.unwrap();
            assert!(matches!(event, Event::Record(_)), "{event:?}");
        });
    }

    #[test]
    fn merged_records_older_than_the_span_are_released_once_every_source_is_empty() {
        runtime().block_on(async {
            let now = monotonic_ns();
            // Taking turns gives -2 ms before -3 ms; the future record is held until the end.
            let (a, b) = ([now - 2_000_000, now + 3_600_000_000_000], [now - 3_000_000]);
            let mut stream = merged(&[&a, &b], Duration::from_millis(1));
            for record in [(1, now - 3_000_000), (0, now - 2_000_000)] {
                let event = next_within(&mut stream, "a record older than the span stayed held").await.unwrap();
                assert_eq!(event, Event::Record(record));
            }
        });
    }
}
