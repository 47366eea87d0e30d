//! The end of a run, exact to the last event of every stream and bounded in time, whatever
//! stdout does:
//!
//! 1. detach: closing the objects' links and programs takes them out of the tracepoints, so no
//!    new run of them can start;
//! 2. [`Poller::finish`], for every stream's source at once: grace periods (one per round for
//!    all), drop-counter snapshots until two agree, a drain until `delivered + dropped` reaches
//!    `produced`, by the drain's one deadline; what is left is reported as `unaccounted`, never
//!    hidden;
//! 3. the output gets until its own deadline to be written; what is not is `unwritten`.
//!
//! The deadlines count from the end of the loop, so the whole stop fits in [`STOP_BUDGET`],
//! except that a detach that used up the drain's share (closing classic tracepoints waits for
//! grace periods in the kernel, tens of ms each) still leaves the drain [`DRAIN_AT_LEAST`], and
//! the summary always gets [`SUMMARY_AT_LEAST`]: exactness and a summary come before the bound.

use std::time::{Duration, Instant};

use anyhow::Result;
use aya::Ebpf;
use bpfstream::{Poller, Totals};

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

/// Step 1: detaches every program of every object; returns the deadlines of the rest of the
/// stop.
pub(super) fn detach(objects: Vec<Ebpf>) -> Ending {
    let began = Instant::now();
    drop(objects);
    let drain_by = (began + DRAIN_BUDGET).max(Instant::now() + DRAIN_AT_LEAST);
    Ending {
        drain_by,
        events_by: (began + DRAIN_BUDGET + EVENTS_BUDGET).max(drain_by),
        summary_by: began + STOP_BUDGET,
    }
}

/// Step 2: every source of `poller` into its handler, to the last event its counters account
/// for (or the drain's deadline). Returns each source's totals, in the order they were added.
pub(super) fn drain(poller: &mut Poller<'_>, ending: Ending) -> Result<Vec<Totals>> {
    Ok(poller.finish(ending.drain_by)?.into_iter().map(|(_, totals)| totals).collect())
}
