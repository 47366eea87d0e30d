//! The end of a run, exact to the last event and bounded in time, whatever stdout does:
//!
//! 1. detach: closing the object's links and programs takes them out of the tracepoints, so no
//!    new run of them can start;
//! 2. wait until no run that started before can still be going (a grace period);
//! 3. one snapshot of the drop counters, then drain until `delivered + dropped` reaches its
//!    `produced`, and again after another grace period until two snapshots agree, or until the
//!    drain's deadline; what is left is reported as `unaccounted`, never hidden;
//! 4. the output gets until its own deadline to be written; what is not is `unwritten`.
//!
//! The deadlines count from the end of the loop, so the whole stop fits in [`STOP_BUDGET`],
//! except that a detach that used up the drain's share (closing classic tracepoints waits for
//! grace periods in the kernel, tens of ms each) still leaves the drain [`DRAIN_AT_LEAST`], and
//! the summary always gets [`SUMMARY_AT_LEAST`]: exactness and a summary come before the bound.

use std::time::{Duration, Instant};

use anyhow::Result;
use aya::Ebpf;
use bpfstream::{EventSource, Item, Totals};

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
    let mut previous: Option<u64> = None;
    loop {
        wait_for_running_programs();
        let totals = source.finish_by(ending.drain_by, |item: Item<'_>| feed.item(item))?;
        feed.end_batch();
        let settled = totals.produced.is_none() || previous == totals.produced;
        if settled || Instant::now() >= ending.drain_by {
            return Ok(totals);
        }
        previous = totals.produced;
    }
}

/// `MEMBARRIER_CMD_GLOBAL` of membarrier(2).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Waits until no program detached before the call can still be running.
///
/// Detaching replaces the tracepoint's probe array (tracepoint_probe_unregister(), for raw
/// tracepoints) or the event's program array (perf_event_detach_bpf_prog(), for classic ones,
/// which also waits for a Tasks Trace grace period before it returns). A tracepoint call that
/// read the old array may still be running one of our programs: under preempt_disable() or
/// rcu_read_lock() (classic tracepoints, and every BPF run through __bpf_trace_run()), which
/// MEMBARRIER_CMD_GLOBAL waits for, as it is synchronize_rcu() (kernel/sched/membarrier.c).
/// A faultable tracepoint (sys_enter/sys_exit) reads the array under Tasks Trace RCU, which
/// synchronize_rcu() does not wait for: such a call can be between reading the array and
/// entering the program. That is why the drain takes a second snapshot after a second grace
/// period and goes on until two agree: a late run shows as a counter that moved.
fn wait_for_running_programs() {
    // SAFETY: membarrier(2) takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // nohz_full kernels refuse it (EINVAL), pre-4.3 ones lack it: a plain pause, the
        // settle loop catches what still ran after it.
        std::thread::sleep(Duration::from_millis(20));
    }
}
