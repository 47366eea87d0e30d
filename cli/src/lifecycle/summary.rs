//! The accounting of one stream of a run, and where it is printed: the JSON summary goes to
//! stdout if stdout can still take it by the stop's deadline, the text one to stderr; when
//! stdout is unusable (blocked, full, closed), the summary (the JSON object with `--json`) comes
//! on stderr instead, with what was not written.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfstream::{Totals, Transport};

use super::feed::Console;
use super::stop::Ending;
use crate::loss::burst_text;
use crate::output::JsonLine;
use crate::size::human_bytes;
use crate::writer::Output;

/// The accounting of one stream of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The stream's name (`"stream"`), if it has one.
    pub stream: Option<Arc<str>>,
    /// Its map (`"map"`, `map NAME: ` for people), when a run streams several of one object.
    pub map: Option<String>,
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
    /// Events whose line stdout did not take (of `events`).
    pub unwritten: u64,
    /// Records shorter than their type (of `events`).
    pub malformed: u64,
    /// A ring without drop counters: what it dropped is not known (`"dropped": null`).
    pub dropped_unknown: bool,
    ending: Ending,
}

impl Summary {
    /// When the exporter's final flush must end: with the events' share of the stop.
    pub fn export_deadline(&self) -> std::time::Instant {
        self.ending.events_by
    }

    pub(super) fn new(
        stream: Option<Arc<str>>,
        totals: Totals,
        transport: Transport,
        buffer_bytes: u64,
        elapsed: Duration,
        ending: Ending,
    ) -> Self {
        Summary {
            stream,
            map: None,
            events: totals.delivered,
            dropped: totals.dropped,
            produced: totals.produced,
            bytes: totals.bytes,
            transport,
            buffer_bytes,
            elapsed,
            burst: None,
            export: None,
            unwritten: 0,
            malformed: 0,
            // A ring without drop counters (perf buffers report theirs in LOST records).
            dropped_unknown: totals.produced.is_none() && transport == Transport::Ring,
            ending,
        }
    }

    /// A stream's run so far (SIGUSR1): nothing waits for its deadlines.
    pub(super) fn so_far(
        stream: Option<Arc<str>>,
        totals: Totals,
        transport: Transport,
        buffer_bytes: u64,
        elapsed: Duration,
    ) -> Self {
        Summary::new(stream, totals, transport, buffer_bytes, elapsed, Ending::passed())
    }

    /// Prints the run so far and returns at once: a `progress` object on stdout (`--json`),
    /// or a `so far:` line on stderr, queued behind the output before it.
    pub(super) fn report(&self, console: &Console, json: bool) {
        let (queue, line) = match json {
            true => (&console.stdout, self.json("progress").finish_line()),
            false => (&console.stderr, format!("{}so far: {}\n", self.prefix(), self.text()).into_bytes()),
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
    /// `in_flight` events are still in the buffer); tracers add their own fields after it.
    /// `events` counts what was written: events + dropped + unwritten = produced.
    fn json(&self, kind: &str) -> JsonLine {
        let secs = self.elapsed.as_secs_f64();
        let unwritten = self.unwritten;
        let written = self.events.saturating_sub(unwritten);
        let line = match &self.stream {
            Some(name) => JsonLine::new(kind).str("stream", name),
            None => JsonLine::new(kind),
        };
        let line = match &self.map {
            Some(map) => line.str("map", map),
            None => line,
        };
        let line = line.num("events", written);
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
        line.num("bytes", self.bytes)
            .float("duration_s", secs)
            .float("events_per_sec", written as f64 / secs.max(1e-9))
            .num("malformed", self.malformed)
    }

    /// One line for humans (stderr), without the newline.
    fn text(&self) -> String {
        let unwritten = self.unwritten;
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

    /// `NAME: ` before a line for people about a named stream, `map NAME: ` about one of several
    /// maps.
    fn prefix(&self) -> String {
        let stream = self.stream.as_ref().map(|name| format!("{name}: ")).unwrap_or_default();
        let map = self.map.as_ref().map(|map| format!("map {map}: ")).unwrap_or_default();
        stream + &map
    }

    /// Prints the summary (JSON on stdout, or text on stderr; when stdout cannot take the JSON
    /// object in time, or failed, or its reader left, the object goes to stderr) plus warnings
    /// if the accounting does not add up. Call it once the console's stdout settled
    /// ([`crate::writer::Queue::settle`]); waits for the output until `deadline` at most (the
    /// stop's summary deadline, [`Ending::summary_deadline`]). `extend` adds the tracer's fields
    /// to the object, `text` makes the line for people from the lifecycle's.
    pub fn print(
        &self,
        console: &Console,
        deadline: Instant,
        json: bool,
        extend: impl FnOnce(JsonLine) -> JsonLine,
        text: impl FnOnce(String) -> String,
    ) {
        let object = json.then(|| extend(self.json("summary")).finish_line());
        let on_stdout = object.as_ref().is_some_and(|line| console.stdout.write_by(line.clone(), deadline));
        let mut warnings = String::new();
        let mut on_stderr = Vec::new();
        if !on_stdout {
            on_stderr = object.unwrap_or_else(|| format!("{}{}\n", self.prefix(), text(self.text())).into_bytes());
        }
        if self.unaccounted() != 0 {
            warnings.push_str(&format!(
                "{}warning: {} events produced by the BPF side are neither delivered nor counted as dropped (unaccounted)\n",
                self.prefix(),
                self.unaccounted()
            ));
        }
        let unexported = self.export.as_ref().map_or(0, |export| export.unaccounted(self.events));
        if unexported != 0 {
            warnings.push_str(&format!(
                "{}warning: {unexported} delivered events are neither exported nor counted as export_failed\n",
                self.prefix()
            ));
        }
        if self.malformed > 0 {
            warnings.push_str(&format!(
                "{}warning: {} records were shorter than the event they carry (counted as malformed)\n",
                self.prefix(),
                self.malformed
            ));
        }
        on_stderr.extend_from_slice(warnings.as_bytes());
        if !on_stderr.is_empty() {
            console.stderr.write_by(on_stderr, deadline);
        }
    }
}
