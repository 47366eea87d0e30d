//! An async stream's records in timestamp order (feature `tokio`): [`EventStream::ordered`].
//!
//! A perf buffer is a ring per CPU and a stream reads them one after another, so its records
//! come out of timestamp order across CPUs (each CPU's records are in order). [`Ordered`] holds
//! records back in an [`OrderedMerge`] and yields them by a key, normally a
//! `bpf_ktime_get_ns()` timestamp in the record: a record is released once the newest key seen,
//! or the monotonic clock, is `span` past it. Losses and malformed records are not held: they
//! come out as they arrive.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::merge::{MergeStats, Merged, OrderedMerge, ReorderWindow};
use crate::poller::Source;
use crate::stream::EventStream;
use crate::typed::Decode;
use crate::{Error, Event};

/// An [`EventStream`] whose records come out in key order (built by
/// [`EventStream::ordered`]). Items are those of the stream.
pub struct Ordered<St, T, K: Fn(&T) -> u64> {
    inner: St,
    merge: OrderedMerge<T, K>,
    /// Losses and malformed records, passed on before any held record.
    passing: VecDeque<Event<T>>,
    /// The stream's last item, an error: yielded once everything held is out.
    error: Option<Error>,
    ended: bool,
}

impl<St, T, K: Fn(&T) -> u64> std::fmt::Debug for Ordered<St, T, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ordered").field("merge", &self.merge).field("ended", &self.ended).finish()
    }
}

impl<S: Source, D: Decode> EventStream<S, D> {
    /// This stream's records in the order of `key` (a CLOCK_MONOTONIC nanosecond timestamp in
    /// the record, as `bpf_ktime_get_ns()` writes): each record is held until the newest key
    /// seen, or the clock, is `span` past it, then released in order. A record that still
    /// arrives after a later one was released (it was more than `span` late) is yielded at
    /// once, and counted in [`Ordered::merge_stats`]`.late`: nothing is dropped.
    ///
    /// When no record arrives, held ones are released when the stream's delay timer
    /// ([`set_max_delay`](Self::set_max_delay), 100 ms by default) wakes it, so a record waits at
    /// most about `span` plus that delay. Ring buffers are in commit order already; this is for
    /// perf buffers (and rings fed from several CPUs whose timestamps must be in order).
    ///
    /// ```no_run
    /// # async fn demo(source: bpfstream::EventSource) -> Result<(), bpfstream::Error> {
    /// use futures_util::StreamExt;
    /// use bpfstream::stream::EventStream;
    /// bpfstream::record! {
    ///     pub struct Exec { pub ts_ns: u64, pub pid: u32 }
    /// }
    /// let span = std::time::Duration::from_millis(10);
    /// let mut events = EventStream::typed::<Exec>(source)?.ordered(span, |e: &Exec| e.ts_ns);
    /// while let Some(event) = events.next().await {
    ///     if let bpfstream::Event::Record(exec) = event? {
    ///         println!("{} exec by {}", exec.ts_ns, exec.pid);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn ordered<K: Fn(&D::Output) -> u64>(self, span: Duration, key: K) -> Ordered<Self, D::Output, K> {
        Ordered::new(self, span, key)
    }
}

impl<St, T, K: Fn(&T) -> u64> Ordered<St, T, K> {
    pub(crate) fn new(inner: St, span: Duration, key: K) -> Self {
        let span = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        Ordered {
            inner,
            merge: OrderedMerge::new(1, ReorderWindow::span(span), key),
            passing: VecDeque::new(),
            error: None,
            ended: false,
        }
    }

    /// How many records were held, released in order, or late.
    pub fn merge_stats(&self) -> MergeStats {
        self.merge.stats()
    }

    /// The underlying stream (its stats, its source).
    pub fn get_ref(&self) -> &St {
        &self.inner
    }

    fn released(&mut self) -> Option<Result<Event<T>, Error>> {
        if let Some(event) = self.passing.pop_front() {
            return Some(Ok(event));
        }
        match self.merge.pop()? {
            Merged::InOrder(item) | Merged::Late { item, .. } => Some(Ok(Event::Record(item))),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

impl<St, T, K: Fn(&T) -> u64> Unpin for Ordered<St, T, K> where St: Unpin {}

impl<St, T, K> Stream for Ordered<St, T, K>
where
    St: Stream<Item = Result<Event<T>, Error>> + Unpin,
    K: Fn(&T) -> u64,
{
    type Item = Result<Event<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.released() {
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(this.error.take().map(Err));
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(Event::Record(item)))) => this.merge.push(0, item),
                Poll::Ready(Some(Ok(event))) => this.passing.push_back(event),
                Poll::Ready(end) => {
                    this.error = end.and_then(Result::err);
                    this.merge.finish();
                    this.ended = true;
                }
                Poll::Pending => {
                    // Quiet: the clock releases what is old enough. The stream's delay timer
                    // polls us again while records are held.
                    this.merge.advance(monotonic_ns());
                    return this.released().map_or(Poll::Pending, |item| Poll::Ready(Some(item)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::{LossOrigin, Lost};

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    fn lost(count: u64) -> Event<u64> {
        Event::Lost(Lost { count, cpu: Some(1), origin: LossOrigin::PerfLostRecord })
    }

    #[test]
    fn records_come_out_in_key_order_and_losses_at_once() {
        let now = monotonic_ns();
        // Two CPUs' batches, one after the other; a loss in between.
        let keys = [now + 10, now + 30, now + 50, now + 20, now + 40];
        let mut items: Vec<Result<Event<u64>, Error>> = keys.iter().map(|&k| Ok(Event::Record(k))).collect();
        items.insert(3, Ok(lost(2)));
        let mut ordered = Ordered::new(futures_util::stream::iter(items), Duration::from_secs(3600), |k: &u64| *k);
        let out: Vec<Event<u64>> = block_on((&mut ordered).map(Result::unwrap).collect::<Vec<_>>());
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let mut expected = vec![lost(2)];
        expected.extend(sorted.into_iter().map(Event::Record));
        assert_eq!(out, expected);
        assert_eq!((ordered.merge_stats().in_order, ordered.merge_stats().late), (5, 0));
    }

    #[test]
    fn an_error_comes_after_what_was_held() {
        let items = vec![Ok(Event::Record(5)), Ok(Event::Record(3)), Err(Error::Unsupported("gone".into()))];
        let ordered = Ordered::new(futures_util::stream::iter(items), Duration::from_secs(1), |k: &u64| *k);
        let out: Vec<_> = block_on(ordered.collect::<Vec<_>>());
        assert!(matches!(out[..], [Ok(Event::Record(3)), Ok(Event::Record(5)), Err(Error::Unsupported(_))]), "{out:?}");
    }
}
