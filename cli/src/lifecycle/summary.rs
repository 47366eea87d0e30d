//! The accounting of one run, and where it is printed: the JSON summary goes to stdout if
//! stdout can still take it by the stop's deadline, the text one to stderr; when stdout is
//! unusable (blocked, full, closed), the summary (the JSON object with `--json`) comes on
//! stderr instead, with what was not written.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{anyhow, Result};
use bpfstream::{Totals, Transport};

use super::stop::Ending;
use crate::loss::burst_text;
use crate::output::JsonLine;
use crate::size::human_bytes;
use crate::writer::{stderr_queue, stdout_queue, Output};

/// The accounting of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Records read from the buffer and handed to the output.
    pub events: u64,
    pub dropped: u64,
    pub produced: Option<u64>,
    pub bytes: u64,
    pub transport: Transport,
    pub buffer_bytes: u64,
    pub elapsed: Duration,
    /// The worst burst of loss (records one buffer lost), and the `--buffer-size` that would
    /// have held it (`None`: none would).
    pub burst: Option<(u64, Option<u64>)>,
    /// With `--output`: the exporter's accounting after its final flush (`crate::export`).
    pub export: Option<crate::export::ExportSummary>,
    /// A ring without drop counters: what it dropped is not known (`"dropped": null`).
    pub dropped_unknown: bool,
    ending: Ending,
}

pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

impl Summary {
    /// When the exporter's final flush must end: with the events' share of the stop.
    pub fn export_deadline(&self) -> std::time::Instant {
        self.ending.events_by
    }

    pub(super) fn new(
        totals: Totals,
        transport: Transport,
        buffer_bytes: u64,
        elapsed: Duration,
        ending: Ending,
        burst: Option<(u64, Option<u64>)>,
    ) -> Self {
        Summary {
            events: totals.delivered,
            dropped: totals.dropped,
            produced: totals.produced,
            bytes: totals.bytes,
            transport,
            buffer_bytes,
            elapsed,
            burst,
            export: None,
            dropped_unknown: false,
            ending,
        }
    }

    /// The run so far (SIGUSR1), with the exporter's accounting so far.
    pub(super) fn so_far(
        totals: Totals,
        transport: Transport,
        buffer_bytes: u64,
        elapsed: Duration,
        export: Option<crate::export::ExportSummary>,
    ) -> Self {
        let mut summary = Summary::new(totals, transport, buffer_bytes, elapsed, Ending::passed(), None);
        summary.export = export;
        summary
    }

    /// Prints the run so far and returns at once: a `progress` object on stdout (`--json`),
    /// or a `so far:` line on stderr, queued behind the output before it.
    pub(super) fn report(&self, json: bool) {
        let unwritten = stdout_queue().unwritten();
        let (queue, line) = match json {
            true => (stdout_queue(), self.json("progress", unwritten).finish_line()),
            false => (stderr_queue(), format!("so far: {}\n", self.text(unwritten)).into_bytes()),
        };
        let mut out = Output::new(queue.clone());
        let _ = out.write_all(&line);
    }

    /// Events the BPF side produced that are neither written, nor unwritten, nor reported
    /// dropped (0; anything else is a bug worth shouting about).
    pub fn unaccounted(&self) -> i128 {
        self.produced.map_or(0, |p| i128::from(p) - i128::from(self.events) - i128::from(self.dropped))
    }

    /// The summary object (`kind`: `summary`, or `progress` for the run so far, whose
    /// `in_flight` events are still in the buffer); tools add their own fields before writing
    /// it. `events` counts what was written: events + dropped + unwritten = produced.
    fn json(&self, kind: &str, unwritten: u64) -> JsonLine {
        let secs = self.elapsed.as_secs_f64();
        let written = self.events.saturating_sub(unwritten);
        let line = JsonLine::new(kind).num("events", written);
        let line = if self.dropped_unknown { line.null("dropped") } else { line.num("dropped", self.dropped) };
        let mut line = line
            .num("unwritten", unwritten)
            .str("buffer", &self.transport.to_string())
            .num("buffer_bytes", self.buffer_bytes);
        if let Some(p) = self.produced {
            let unaccounted = if kind == "progress" { "in_flight" } else { "unaccounted" };
            line = line.num("produced", p).num(unaccounted, self.unaccounted());
        }
        if let Some((lost, size)) = self.burst {
            line = line.num("worst_burst_lost", lost);
            if let Some(size) = size {
                line = line.num("burst_buffer_size", size);
            }
        }
        if let Some(export) = &self.export {
            line = export.json(line);
        }
        line.num("bytes", self.bytes).float("duration_s", secs).float("events_per_sec", written as f64 / secs.max(1e-9))
    }

    /// One line for humans (stderr).
    fn text(&self, unwritten: u64) -> String {
        let mut s = format!("{} events", self.events.saturating_sub(unwritten));
        if !self.dropped_unknown {
            s.push_str(&format!(", {} dropped", self.dropped));
        }
        if unwritten > 0 {
            s.push_str(&format!(", {unwritten} unwritten (stdout did not take them)"));
        }
        s.push_str(&format!(
            " in {:.1} s via {} buffer ({} mapped)",
            self.elapsed.as_secs_f64(),
            self.transport,
            human_bytes(self.buffer_bytes)
        ));
        if let Some(p) = self.produced {
            s.push_str(&format!("; produced {p}"));
        }
        if let Some((lost, size)) = self.burst {
            s.push_str(&burst_text(lost, size));
        }
        if let Some(export) = &self.export {
            s.push_str(&export.text());
        }
        s
    }

    /// Waits, until the stop's deadline at most, for what a tool wrote to stdout after the run
    /// (a final table) to be written; for tools that print no summary object of their own.
    pub fn settle_output(&self) {
        stdout_queue().drain_by(self.ending.summary_deadline());
    }

    /// Prints the summary (JSON on stdout, or text on stderr; when stdout cannot take the JSON
    /// object in time, or failed, or its reader left, the object goes to stderr) plus a warning
    /// if the accounting does not add up. Waits for the output until the stop's deadlines at
    /// most. Fails when stdout failed for another reason than a reader that left.
    pub fn print(&self, json: bool, extend: impl FnOnce(JsonLine) -> JsonLine, extra_text: &str) -> Result<()> {
        let out = stdout_queue();
        let unwritten = out.settle(self.ending.events_by);
        let err = stderr_queue();
        let object = json.then(|| extend(self.json("summary", unwritten)).finish_line());
        let on_stdout = object.as_ref().is_some_and(|line| out.write_by(line.clone(), self.ending.summary_deadline()));
        if !on_stdout {
            let line = object.unwrap_or_else(|| format!("{}{extra_text}\n", self.text(unwritten)).into_bytes());
            err.write_by(line, self.ending.summary_deadline());
        }
        if self.unaccounted() != 0 {
            let text = format!(
                "warning: {} events produced by the BPF side are neither delivered nor counted as dropped (unaccounted)\n",
                self.unaccounted()
            );
            err.write_by(text.into_bytes(), self.ending.summary_deadline());
        }
        let unexported = self.export.as_ref().map_or(0, |export| export.unaccounted(self.events));
        if unexported != 0 {
            let text =
                format!("warning: {unexported} delivered events are neither exported nor counted as export_failed\n");
            err.write_by(text.into_bytes(), self.ending.summary_deadline());
        }
        match out.error() {
            Some(kind) if kind != io::ErrorKind::BrokenPipe => {
                Err(anyhow!("writing to stdout failed: {}", io::Error::from(kind)))
            }
            _ => Ok(()),
        }
    }
}
