//! A destination's pipeline on the exporter's thread: takes messages off its queue, publishes them with at most
//! `in_flight` unacknowledged, counts acknowledgements, republishes failures after a backoff,
//! and at the final flush's deadline counts whatever is left as unflushed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::accounting::{Counters, QueueBytes};

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

    /// Messages to publish in one turn of the loop at most: 1 for a client whose publication
    /// starts only when its future is first polled (in no set order within a turn), so that
    /// the engine gets the events in their order.
    fn batch(&self) -> usize {
        BATCH
    }
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

/// Messages taken off the queue in one turn of the loop at most.
const BATCH: usize = 64;

/// What the loop of [`Pipeline::run`] keeps between turns.
struct State {
    in_flight: InFlight,
    /// Failed publications waiting for their next try (same `seq`).
    retry: VecDeque<Message>,
    backoff: Backoff,
    /// Set after a failure: nothing is published until then.
    paused_until: Option<Instant>,
    /// The queue is closed and empty: no more messages will come.
    closed: bool,
}

impl State {
    fn room(&self, max_in_flight: usize) -> bool {
        self.in_flight.len() < max_in_flight && self.paused_until.is_none()
    }
}

/// Everything a pipeline needs besides its publisher (made before the engine answers).
pub(crate) struct Wiring {
    pub queue: mpsc::Receiver<Message>,
    /// The queue's bytes: given back as each message is taken out.
    pub queue_bytes: Arc<QueueBytes>,
    pub counters: Arc<Counters>,
    /// Set by `finish`: the final flush's deadline.
    pub deadline: watch::Receiver<Option<Instant>>,
    pub max_in_flight: usize,
    /// Called with each failure's text, at most once per backoff.
    pub on_error: Box<dyn FnMut(&str) + Send>,
    /// Dropped with the pipeline: tells its exporter that it ended (after its last count).
    pub _ending: std::sync::mpsc::Sender<()>,
}

/// The pipeline on the exporter's thread.
pub(crate) struct Pipeline<P> {
    pub publisher: P,
    pub w: Wiring,
}

impl<P: Publisher> Pipeline<P> {
    pub fn new(publisher: P, w: Wiring) -> Self {
        Pipeline { publisher, w }
    }

    /// Runs until every message is acknowledged or failed and the queue is closed, or until
    /// the final flush's deadline. Each wakeup handles every acknowledgement that is ready and
    /// takes as many queued messages as there is room for, so that a busy stream costs one
    /// turn of the loop per batch rather than per event.
    pub async fn run(mut self) {
        let mut state = State {
            in_flight: FuturesUnordered::new(),
            retry: VecDeque::new(),
            backoff: Backoff { next: Backoff::FIRST },
            paused_until: None,
            closed: false,
        };
        let deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(deadline);
        let mut deadline_set = false;
        loop {
            if state.closed && state.retry.is_empty() && state.in_flight.is_empty() {
                return;
            }
            self.dispatch_retries(&mut state);
            if !deadline_set {
                if let Some(at) = *self.w.deadline.borrow() {
                    deadline.as_mut().reset(at);
                    deadline_set = true;
                }
            }
            let room = state.room(self.w.max_in_flight);
            tokio::select! {
                biased;
                () = &mut deadline, if deadline_set => break,
                Ok(()) = self.w.deadline.changed(), if !deadline_set => {}
                Some((message, result)) = state.in_flight.next(), if !state.in_flight.is_empty() => {
                    self.settle(&mut state, message, result);
                    while let Some(Some((message, result))) = state.in_flight.next().now_or_never() {
                        self.settle(&mut state, message, result);
                    }
                }
                () = sleep_until(state.paused_until), if state.paused_until.is_some() => state.paused_until = None,
                message = self.w.queue.recv(), if room && state.retry.is_empty() && !state.closed => match message {
                    Some(message) => {
                        self.w.queue_bytes.give_back(message.payload.len());
                        self.dispatch(&mut state.in_flight, message);
                        self.take_queued(&mut state);
                    }
                    None => state.closed = true,
                },
            }
        }
        self.count_unflushed(state.in_flight.len() + state.retry.len());
    }

    /// Republishes held-back messages while there is room.
    fn dispatch_retries(&self, state: &mut State) {
        while state.room(self.w.max_in_flight) {
            let Some(message) = state.retry.pop_front() else { return };
            self.dispatch(&mut state.in_flight, message);
        }
    }

    /// Publishes what is already queued, while there is room, [`Publisher::batch`] at most.
    fn take_queued(&mut self, state: &mut State) {
        for _ in 1..self.publisher.batch() {
            if !state.room(self.w.max_in_flight) {
                return;
            }
            match self.w.queue.try_recv() {
                Ok(message) => {
                    self.w.queue_bytes.give_back(message.payload.len());
                    self.dispatch(&mut state.in_flight, message);
                }
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    state.closed = true;
                    return;
                }
            }
        }
    }

    /// Counts one publication's outcome; a failure is held back for a retry after a backoff.
    fn settle(&mut self, state: &mut State, message: Message, result: Result<(), Failure>) {
        match result {
            Ok(()) => {
                Counters::add(&self.w.counters.exported, 1);
                state.backoff.next = Backoff::FIRST;
            }
            Err(Failure::Reject(why)) => {
                Counters::add(&self.w.counters.rejected, 1);
                (self.w.on_error)(&why);
            }
            Err(Failure::Retry(why)) => {
                Counters::add(&self.w.counters.retries, 1);
                state.retry.push_back(message);
                if state.paused_until.is_none() {
                    (self.w.on_error)(&why);
                    state.paused_until = Some(Instant::now() + state.backoff.take());
                }
            }
        }
    }

    fn dispatch(&self, in_flight: &mut InFlight, message: Message) {
        let delivery = self.publisher.publish(&message);
        in_flight.push(Box::pin(async move { (message, delivery.await) }));
    }

    /// At the deadline: what is unacknowledged and what is still queued.
    fn count_unflushed(&mut self, unacknowledged: usize) {
        self.w.queue.close();
        let mut left = unacknowledged as u64;
        while self.w.queue.try_recv().is_ok() {
            left += 1;
        }
        Counters::add(&self.w.counters.unflushed, left);
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
        let queue_bytes = Arc::new(QueueBytes::new(usize::MAX));
        let (tx, rx) = mpsc::channel(1024);
        let (deadline_tx, deadline_rx) = watch::channel(None);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            for seq in 1..=events {
                assert!(queue_bytes.take(2));
                tx.send(Message { seq, payload: Bytes::from_static(b"{}") }).await.unwrap();
                Counters::add(&counters.offered, 1);
            }
            drop(tx);
            deadline_tx.send(Some(Instant::now() + deadline)).unwrap();
            let wiring = Wiring {
                queue: rx,
                queue_bytes: queue_bytes.clone(),
                counters: counters.clone(),
                deadline: deadline_rx,
                max_in_flight: 4,
                on_error: Box::new(|_| {}),
                _ending: std::sync::mpsc::channel().0,
            };
            Pipeline::new(script, wiring).run().await;
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
