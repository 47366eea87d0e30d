//! Ordered merge of several event streams by a key (a timestamp), with a bounded reorder window.
//!
//! A perf buffer is one ring per CPU: a consumer reads CPU 0's batch, then CPU 1's, so records
//! come out of order across CPUs even though each CPU's ring is in order. Several ring buffers
//! have the same problem. [`OrderedMerge`] holds records back for a bounded window and releases
//! them in key order:
//!
//! - a record is released once nothing earlier can still arrive: its key is at least
//!   [`OrderedMerge::with_span`] behind the newest key seen (or the clock given to
//!   [`OrderedMerge::advance`]), or, when the streams are declared sorted, no stream can still
//!   send an earlier key (the classic k-way merge);
//! - [`OrderedMerge::with_max_held`] bounds memory: past it the oldest record is released early;
//! - a record that arrives after a later key was already released is **late**: it is handed
//!   out at once as [`Merged::Late`], with how far behind it is. Nothing is dropped and nothing
//!   is silently put out of order;
//! - [`OrderedMerge::finish`] releases everything still held.
//!
//! Guarantees (tested): the keys of [`Merged::InOrder`] records never decrease; every record
//! pushed comes out exactly once; with a time span and no count bound, a record whose key is
//! within `span` of the newest key seen before it is never late; with sorted streams, nothing is
//! late.
//!
//! ```
//! use bpfstream::merge::{Merged, OrderedMerge};
//! // (cpu, timestamp) records from two CPUs, read one CPU's batch at a time.
//! let mut merge = OrderedMerge::new(2, |r: &(u32, u64)| r.1).with_span(100);
//! for r in [(0, 10), (0, 30), (1, 20), (1, 40)] {
//!     merge.push(r.0 as usize, r);
//! }
//! let mut out = Vec::new();
//! merge.finish();
//! while let Some(Merged::InOrder(r)) = merge.pop() {
//!     out.push(r.1);
//! }
//! assert_eq!(out, [10, 20, 30, 40]);
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;

/// How long records may be held back to put them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ReorderWindow {
    /// Release a record once the newest key is this far past it (key units: ns for
    /// timestamps). `None`: no time bound.
    span: Option<u64>,
    /// Hold at most this many records; past it the oldest is released early. `None`: no bound.
    max_held: Option<usize>,
    /// Every stream is in key order by itself (a perf CPU ring), so a record can be released as
    /// soon as every stream has sent a later one. A stream that breaks this has its records
    /// reported late, not lost.
    sorted_streams: bool,
}

/// What the merge hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged<T> {
    /// In key order with everything released before it.
    InOrder(T),
    /// Arrived after a record with a later key was released; handed out at once.
    Late {
        /// The record.
        item: T,
        /// Its key.
        key: u64,
        /// How far its key is behind the last key released in order.
        behind: u64,
    },
}

/// Counters of a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeStats {
    /// Records pushed.
    pub pushed: u64,
    /// Records released in order.
    pub in_order: u64,
    /// Records reported late.
    pub late: u64,
    /// The furthest behind a late record was.
    pub max_behind: u64,
    /// Records released early because of [`OrderedMerge::with_max_held`].
    pub forced: u64,
    /// Records held now.
    pub held: usize,
    /// The most records held at once.
    pub max_held: usize,
}

struct Held<T> {
    key: u64,
    arrival: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.arrival) == (other.key, other.arrival)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    /// By key, then arrival: equal keys keep their arrival order.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.key, self.arrival).cmp(&(other.key, other.arrival))
    }
}

/// A k-way merge of streams by a caller-supplied key; see the [module docs](self).
pub struct OrderedMerge<T, K: Fn(&T) -> u64> {
    key: K,
    window: ReorderWindow,
    held: BinaryHeap<Reverse<Held<T>>>,
    late: VecDeque<(T, u64, u64)>,
    /// Per stream: the newest key it sent (a lower bound for its next key when sorted).
    stream_keys: Vec<Option<u64>>,
    /// The newest key seen or advanced to.
    newest: Option<u64>,
    last_released: Option<u64>,
    finishing: bool,
    arrivals: u64,
    stats: MergeStats,
}

impl<T, K: Fn(&T) -> u64> fmt::Debug for OrderedMerge<T, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderedMerge").field("window", &self.window).field("stats", &self.stats).finish()
    }
}

impl<T, K: Fn(&T) -> u64> OrderedMerge<T, K> {
    /// A merge of `streams` streams (numbered `0..streams`) ordered by `key`, holding records
    /// back until [`finish`](Self::finish) unless a bound is set: [`with_span`](Self::with_span),
    /// [`with_max_held`](Self::with_max_held) or [`with_sorted_streams`](Self::with_sorted_streams).
    pub fn new(streams: usize, key: K) -> Self {
        OrderedMerge {
            key,
            window: ReorderWindow::default(),
            held: BinaryHeap::new(),
            late: VecDeque::new(),
            stream_keys: vec![None; streams.max(1)],
            newest: None,
            last_released: None,
            finishing: false,
            arrivals: 0,
            stats: MergeStats::default(),
        }
    }

    /// Releases a record once the newest key is `span` past it (key units: ns for timestamps).
    pub fn with_span(mut self, span: u64) -> Self {
        self.window.span = Some(span);
        self
    }

    /// Holds at most `max_held` records; past it the oldest is released early (counted in
    /// [`MergeStats::forced`]).
    pub fn with_max_held(mut self, max_held: usize) -> Self {
        self.window.max_held = Some(max_held);
        self
    }

    /// Declares every stream in key order by itself (a perf CPU ring), so a record can be
    /// released as soon as every stream has sent a later one (the classic k-way merge). A stream
    /// that breaks this has its records reported late, not lost.
    pub fn with_sorted_streams(mut self) -> Self {
        self.window.sorted_streams = true;
        self
    }

    /// Adds a record from `stream` (streams beyond the number given to `new` are added). A
    /// record that is already late comes out of the next [`pop`](Self::pop) as
    /// [`Merged::Late`].
    pub fn push(&mut self, stream: usize, item: T) {
        let key = (self.key)(&item);
        self.stats.pushed += 1;
        if stream >= self.stream_keys.len() {
            self.stream_keys.resize(stream + 1, None);
        }
        let slot = &mut self.stream_keys[stream];
        *slot = Some(slot.map_or(key, |k| k.max(key)));
        self.newest = Some(self.newest.map_or(key, |n| n.max(key)));
        match self.last_released {
            Some(last) if key < last => {
                self.stats.late += 1;
                self.stats.max_behind = self.stats.max_behind.max(last - key);
                self.late.push_back((item, key, last - key));
            }
            _ => {
                self.arrivals += 1;
                self.held.push(Reverse(Held { key, arrival: self.arrivals, item }));
                self.stats.held = self.held.len();
                self.stats.max_held = self.stats.max_held.max(self.held.len());
            }
        }
    }

    /// Tells the merge that time has reached `now` (same units as the keys): records older than
    /// `now - span` can be released even if no stream sends anything newer. This bounds how
    /// long a record waits when the streams go quiet.
    pub fn advance(&mut self, now: u64) {
        self.newest = Some(self.newest.map_or(now, |n| n.max(now)));
    }

    /// Releases everything held from now on (end of the streams).
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    /// The next record that may be handed out, if any: late records first, then held records
    /// whose turn has come.
    pub fn pop(&mut self) -> Option<Merged<T>> {
        if let Some((item, key, behind)) = self.late.pop_front() {
            return Some(Merged::Late { item, key, behind });
        }
        let Reverse(top) = self.held.peek()?;
        let over_count = self.window.max_held.is_some_and(|max| self.held.len() > max);
        let due = self.release_bound().is_some_and(|bound| top.key <= bound);
        if !(self.finishing || over_count || due) {
            return None;
        }
        if over_count && !self.finishing && !due {
            self.stats.forced += 1;
        }
        let Reverse(top) = self.held.pop().expect("peeked");
        self.stats.held = self.held.len();
        self.stats.in_order += 1;
        self.last_released = Some(top.key);
        Some(Merged::InOrder(top.item))
    }

    /// Keys up to this can no longer be overtaken (within the window's promises); `None`: no
    /// bound yet.
    fn release_bound(&self) -> Option<u64> {
        let by_time = match (self.window.span, self.newest) {
            (Some(span), Some(newest)) => newest.checked_sub(span),
            _ => None,
        };
        let by_streams = if self.window.sorted_streams {
            self.stream_keys.iter().copied().try_fold(u64::MAX, |min, k| k.map(|k| min.min(k)))
        } else {
            None
        };
        by_time.into_iter().chain(by_streams).max()
    }

    /// Records held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> MergeStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain<T, K: Fn(&T) -> u64>(m: &mut OrderedMerge<T, K>, out: &mut Vec<Merged<T>>) {
        while let Some(x) = m.pop() {
            out.push(x);
        }
    }

    /// (stream, key, id) records.
    type Rec = (usize, u64, usize);

    fn run(window: ReorderWindow, arrivals: &[Rec], pop_every: usize) -> (Vec<Merged<Rec>>, MergeStats) {
        let mut m = OrderedMerge::new(4, |r: &Rec| r.1);
        m.window = window;
        let mut out = Vec::new();
        for (i, r) in arrivals.iter().enumerate() {
            m.push(r.0, *r);
            if i % pop_every.max(1) == 0 {
                drain(&mut m, &mut out);
            }
        }
        m.finish();
        drain(&mut m, &mut out);
        (out, m.stats())
    }

    fn check_common(arrivals: &[Rec], out: &[Merged<Rec>]) {
        // Exactly once.
        let mut ids: Vec<usize> = out
            .iter()
            .map(|m| match m {
                Merged::InOrder(r) | Merged::Late { item: r, .. } => r.2,
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..arrivals.len()).collect::<Vec<_>>(), "every record comes out exactly once");
        // In-order records never go backwards.
        let mut last = 0;
        for m in out {
            if let Merged::InOrder(r) = m {
                assert!(r.1 >= last, "in-order output went back from {last} to {}", r.1);
                last = r.1;
            }
        }
    }

    /// Streams that are each sorted, interleaved in batches (like per-CPU perf rings).
    fn sorted_streams() -> impl Strategy<Value = Vec<Rec>> {
        (proptest::collection::vec((0usize..4, 0u64..50, 1usize..20), 0..60)).prop_map(|batches| {
            let mut next_key = [0u64; 4];
            let mut out = Vec::new();
            for (stream, step, len) in batches {
                for _ in 0..len {
                    next_key[stream] += step;
                    let id = out.len();
                    out.push((stream, next_key[stream], id));
                }
            }
            out
        })
    }

    fn any_arrivals() -> impl Strategy<Value = Vec<Rec>> {
        proptest::collection::vec((0usize..4, 0u64..1000), 0..300)
            .prop_map(|v| v.into_iter().enumerate().map(|(id, (s, k))| (s, k, id)).collect())
    }

    proptest! {
        #[test]
        fn never_out_of_order_and_nothing_lost(arrivals in any_arrivals(), span in 0u64..500, pop_every in 1usize..10) {
            let (out, stats) = run(ReorderWindow { span: Some(span), ..Default::default() }, &arrivals, pop_every);
            check_common(&arrivals, &out);
            prop_assert_eq!(stats.in_order + stats.late, arrivals.len() as u64);
        }

        #[test]
        fn records_within_the_span_are_never_late(arrivals in any_arrivals(), span in 0u64..500, pop_every in 1usize..10) {
            let (out, _) = run(ReorderWindow { span: Some(span), ..Default::default() }, &arrivals, pop_every);
            check_common(&arrivals, &out);
            // Newest key seen before each arrival.
            let mut newest_before = Vec::with_capacity(arrivals.len());
            let mut newest: Option<u64> = None;
            for r in &arrivals {
                newest_before.push(newest);
                newest = Some(newest.map_or(r.1, |n| n.max(r.1)));
            }
            for m in &out {
                if let Merged::Late { item, .. } = m {
                    let newest = newest_before[item.2].expect("a late record had something before it");
                    prop_assert!(item.1 + span < newest, "record {:?} was within the span of {} yet late", item, newest);
                }
            }
        }

        #[test]
        fn sorted_streams_merge_without_lates(arrivals in sorted_streams(), pop_every in 1usize..10) {
            let window = ReorderWindow { sorted_streams: true, ..Default::default() };
            let (out, stats) = run(window, &arrivals, pop_every);
            check_common(&arrivals, &out);
            prop_assert_eq!(stats.late, 0);
        }

        #[test]
        fn max_held_bounds_memory(arrivals in any_arrivals(), max in 1usize..20) {
            let mut m = OrderedMerge::new(4, |r: &Rec| r.1).with_max_held(max);
            let mut out = Vec::new();
            for r in &arrivals {
                m.push(r.0, *r);
                drain(&mut m, &mut out);
                prop_assert!(m.held() <= max);
            }
            m.finish();
            drain(&mut m, &mut out);
            check_common(&arrivals, &out);
        }
    }

    #[test]
    fn reports_records_that_arrive_too_late() {
        let mut m = OrderedMerge::new(2, |r: &u64| *r).with_span(10);
        m.push(0, 100);
        m.push(0, 125); // releases 100 (125 - 10 >= 100)
        assert_eq!(m.pop(), Some(Merged::InOrder(100)));
        assert_eq!(m.pop(), None, "125 waits for the window");
        m.push(1, 90); // behind 100, which is already out
        assert_eq!(m.pop(), Some(Merged::Late { item: 90, key: 90, behind: 10 }));
        m.push(1, 120); // within the window: held, in order
        m.finish();
        assert_eq!(m.pop(), Some(Merged::InOrder(120)));
        assert_eq!(m.pop(), Some(Merged::InOrder(125)));
        assert_eq!(m.pop(), None);
        let s = m.stats();
        assert_eq!((s.pushed, s.in_order, s.late, s.max_behind), (4, 3, 1, 10));
    }

    #[test]
    fn advancing_the_clock_releases_quiet_streams() {
        let mut m = OrderedMerge::new(2, |r: &u64| *r).with_span(1_000);
        m.push(0, 5_000);
        assert_eq!(m.pop(), None);
        m.advance(5_999);
        assert_eq!(m.pop(), None);
        m.advance(6_000);
        assert_eq!(m.pop(), Some(Merged::InOrder(5_000)));
    }

    #[test]
    fn sorted_streams_release_as_soon_as_every_stream_moved_on() {
        let mut m = OrderedMerge::new(2, |r: &u64| *r).with_span(1_000_000).with_sorted_streams();
        m.push(0, 10);
        m.push(0, 30);
        assert_eq!(m.pop(), None, "stream 1 may still send something before 10");
        m.push(1, 20);
        assert_eq!(m.pop(), Some(Merged::InOrder(10)));
        assert_eq!(m.pop(), Some(Merged::InOrder(20)));
        assert_eq!(m.pop(), None, "30 waits: stream 1 may still send 25");
    }

    #[test]
    fn finish_flushes_everything() {
        let mut m = OrderedMerge::new(3, |r: &u64| *r).with_span(u64::MAX);
        for k in [7, 3, 9, 1, 5] {
            m.push(k as usize % 3, k);
        }
        assert_eq!(m.pop(), None);
        m.finish();
        let out: Vec<_> = std::iter::from_fn(|| m.pop()).collect();
        assert_eq!(out, [1, 3, 5, 7, 9].map(Merged::InOrder));
        assert_eq!(m.stats().held, 0);
    }
}
