//! The exporter's thread: takes messages off the queue, publishes them with at most
//! `in_flight` unacknowledged, counts acknowledgements, republishes failures after a backoff,
//! and at the final flush's deadline counts whatever is left as unflushed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::accounting::Counters;

/// One event on its way: its per-run sequence number and its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub seq: u64,
    pub payload: Bytes,
}

/// Why a publication did not end in an acknowledgement.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another try (connection lost, no acknowledgement in time, client queue full).
    Retry(String),
    /// The engine will never take this message.
    Reject(String),
}

/// Resolves when the engine acknowledged the message (or did not).
pub(crate) type Delivery = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// An engine's client, as the pipeline drives it.
pub(crate) trait Publisher {
    /// Publishes `message`; the future resolves with the engine's acknowledgement.
    fn publish(&self, message: &Message) -> Delivery;
}

/// Backoff between retries: doubles from 50 ms up to 5 s; an acknowledgement resets it.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn take(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }
}

type InFlight = FuturesUnordered<Pin<Box<dyn Future<Output = (Message, Result<(), Failure>)> + Send>>>;

/// The pipeline's state on the exporter's thread.
pub(crate) struct Pipeline<P> {
    pub publisher: P,
    pub queue: mpsc::Receiver<Message>,
    pub counters: Arc<Counters>,
    /// Set by `finish`: the final flush's deadline.
    pub deadline: watch::Receiver<Option<Instant>>,
    pub max_in_flight: usize,
    /// Called with each failure's text, at most once per backoff.
    pub on_error: Box<dyn FnMut(&str) + Send>,
}

impl<P: Publisher> Pipeline<P> {
    /// Runs until every message is acknowledged or failed and the queue is closed, or until
    /// the final flush's deadline.
    pub async fn run(mut self) {
        let mut in_flight: InFlight = FuturesUnordered::new();
        let mut retry: VecDeque<Message> = VecDeque::new();
        let mut backoff = Backoff { next: Backoff::FIRST };
        let mut paused_until: Option<Instant> = None;
        let mut closed = false;
        loop {
            if closed && retry.is_empty() && in_flight.is_empty() {
                return;
            }
            let room = in_flight.len() < self.max_in_flight && paused_until.is_none();
            if room {
                if let Some(message) = retry.pop_front() {
                    self.dispatch(&mut in_flight, message);
                    continue;
                }
            }
            let deadline = *self.deadline.borrow();
            tokio::select! {
                biased;
                () = sleep_until(deadline) => break,
                Ok(()) = self.deadline.changed() => {}
                Some((message, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                    Ok(()) => {
                        Counters::add(&self.counters.exported, 1);
                        backoff.next = Backoff::FIRST;
                    }
                    Err(Failure::Reject(why)) => {
                        Counters::add(&self.counters.rejected, 1);
                        (self.on_error)(&why);
                    }
                    Err(Failure::Retry(why)) => {
                        Counters::add(&self.counters.retries, 1);
                        retry.push_back(message);
                        if paused_until.is_none() {
                            (self.on_error)(&why);
                            paused_until = Some(Instant::now() + backoff.take());
                        }
                    }
                },
                () = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
                message = self.queue.recv(), if room && retry.is_empty() && !closed => match message {
                    Some(message) => self.dispatch(&mut in_flight, message),
                    None => closed = true,
                },
            }
        }
        self.count_unflushed(in_flight.len() + retry.len());
    }

    fn dispatch(&self, in_flight: &mut InFlight, message: Message) {
        let delivery = self.publisher.publish(&message);
        in_flight.push(Box::pin(async move { (message, delivery.await) }));
    }

    /// At the deadline: what is unacknowledged and what is still queued.
    fn count_unflushed(&mut self, unacknowledged: usize) {
        self.queue.close();
        let mut left = unacknowledged as u64;
        while self.queue.try_recv().is_ok() {
            left += 1;
        }
        Counters::add(&self.counters.unflushed, left);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// Acknowledges every message, except: the first `fail_first` publications fail (retry),
    /// `reject` seqs fail for good, `hang` seqs are never acknowledged.
    struct Scripted {
        published: Arc<Mutex<Vec<u64>>>,
        fail_first: AtomicU64,
        reject: Vec<u64>,
        hang: Vec<u64>,
    }

    impl Publisher for Scripted {
        fn publish(&self, message: &Message) -> Delivery {
            self.published.lock().unwrap().push(message.seq);
            let seq = message.seq;
            let fail = self.fail_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
            let (reject, hang) = (self.reject.contains(&seq), self.hang.contains(&seq));
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                match (fail, reject) {
                    (true, _) => Err(Failure::Retry("connection lost".into())),
                    (_, true) => Err(Failure::Reject("too large".into())),
                    _ => Ok(()),
                }
            })
        }
    }

    fn run(script: Scripted, events: u64, deadline: Duration) -> (crate::ExportStats, Vec<u64>) {
        let published = script.published.clone();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(1024);
        let (deadline_tx, deadline_rx) = watch::channel(None);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            for seq in 1..=events {
                tx.send(Message { seq, payload: Bytes::from_static(b"{}") }).await.unwrap();
                Counters::add(&counters.offered, 1);
            }
            drop(tx);
            deadline_tx.send(Some(Instant::now() + deadline)).unwrap();
            let pipeline = Pipeline {
                publisher: script,
                queue: rx,
                counters: counters.clone(),
                deadline: deadline_rx,
                max_in_flight: 4,
                on_error: Box::new(|_| {}),
            };
            pipeline.run().await;
        });
        let published = published.lock().unwrap().clone();
        (counters.snapshot(), published)
    }

    #[test]
    fn failures_are_retried_with_their_seq_and_rejections_counted() {
        let script = Scripted { published: Default::default(), fail_first: 3.into(), reject: vec![7], hang: vec![] };
        let (stats, published) = run(script, 10, Duration::from_secs(30));
        assert_eq!((stats.exported, stats.rejected, stats.retries, stats.unflushed), (9, 1, 3, 0));
        assert_eq!(published.len(), 13);
        let mut distinct = published.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, (1..=10).collect::<Vec<_>>());
        assert_eq!(stats.offered, stats.exported + stats.export_failed());
    }

    #[test]
    fn the_deadline_counts_unacknowledged_and_queued_messages_as_unflushed() {
        // Seqs 2 and 3 never get their acknowledgement; with 4 in flight at most, the pipeline
        // keeps going until the deadline.
        let script = Scripted { published: Default::default(), fail_first: 0.into(), reject: vec![], hang: vec![2, 3] };
        let (stats, _) = run(script, 100, Duration::from_millis(200));
        assert_eq!((stats.exported, stats.unflushed), (98, 2));
        assert_eq!(stats.offered, stats.exported + stats.export_failed());
    }
}
