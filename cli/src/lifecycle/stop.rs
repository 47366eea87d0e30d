//! The end of a run, exact to the last event and bounded in time, whatever stdout does:
//!
//! 1. detach: closing the object's links and programs takes them out of the tracepoints, so no
//!    new run of them can start;
//! 2. [`EventSource::finish`]: grace periods, drop-counter snapshots until two agree, a drain
//!    until `delivered + dropped` reaches `produced`, by the drain's deadline; what is left is
//!    reported as `unaccounted`, never hidden;
//! 4. the output gets until its own deadline to be written; what is not is `unwritten`.
//!
//! The deadlines count from the end of the loop, so the whole stop fits in [`STOP_BUDGET`],
//! except that a detach that used up the drain's share (closing classic tracepoints waits for
//! grace periods in the kernel, tens of ms each) still leaves the drain [`DRAIN_AT_LEAST`], and
//! the summary always gets [`SUMMARY_AT_LEAST`]: exactness and a summary come before the bound.

use std::time::{Duration, Instant};

use anyhow::Result;
use aya::Ebpf;
use bpfstream::{Event, EventSource, Record, Totals};

use super::run::Feed;

/// The longest a stop takes (the contract says 1 s).
pub const STOP_BUDGET: Duration = Duration::from_millis(900);
/// Of it, the share of the detach and the drain; the output has the rest.
const DRAIN_BUDGET: Duration = Duration::from_millis(400);
/// Of the output's share, what the events may take; the summary line has the rest.
const EVENTS_BUDGET: Duration = Duration::from_millis(300);
/// What the drain always gets after the detach.
const DRAIN_AT_LEAST: Duration = Duration::from_millis(150);
/// What the summary always gets, even when the output used up its share: enough for a reader
/// that takes it to get it.
const SUMMARY_AT_LEAST: Duration = Duration::from_millis(100);

/// When each part of a stop must be done.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    drain_by: Instant,
    pub events_by: Instant,
    summary_by: Instant,
}

impl Ending {
    /// Deadlines that have passed: a summary of the run so far, which nothing waits for.
    pub(super) fn passed() -> Self {
        let now = Instant::now();
        Ending { drain_by: now, events_by: now, summary_by: now }
    }

    /// When the summary must be written: its deadline, but never less than
    /// [`SUMMARY_AT_LEAST`] from now.
    pub fn summary_deadline(&self) -> Instant {
        self.summary_by.max(Instant::now() + SUMMARY_AT_LEAST)
    }
}

/// Step 1: detaches every program of `bpf`; returns the deadlines of the rest of the stop.
pub(super) fn detach(bpf: Ebpf) -> Ending {
    let began = Instant::now();
    drop(bpf);
    let drain_by = (began + DRAIN_BUDGET).max(Instant::now() + DRAIN_AT_LEAST);
    Ending {
        drain_by,
        events_by: (began + DRAIN_BUDGET + EVENTS_BUDGET).max(drain_by),
        summary_by: began + STOP_BUDGET,
    }
}

/// Steps 2 and 3: drains `source` into `feed` to the last event the counters account for (or
/// the drain's deadline).
pub(super) fn drain(source: &mut EventSource, ending: Ending, feed: &mut Feed<'_>) -> Result<Totals> {
    let totals = source.finish(ending.drain_by, |item: Event<Record<'_>>| feed.item(item))?;
    feed.end_batch();
    Ok(totals)
}
