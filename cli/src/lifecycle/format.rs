//! What a tracer brings besides its BPF object: how to decode its records and its columns, in a
//! table and in JSON. Where its events go (stdout, the exporter), the time column, the stream's
//! name, the container fields, malformed records and losses are the lifecycle's.

use std::io;

use anyhow::Result;

use super::summary::Summary;
use crate::output::JsonLine;
use crate::writer::Output;

/// A tracer's events: decoder and columns. The lifecycle calls it for every record, generically
/// (no dynamic call per event).
pub trait Format: 'static {
    /// The `type` of the events' JSON lines.
    fn kind(&self) -> &str;

    /// A record decoded, borrowing from the buffer's memory.
    type Event<'a>;

    /// Decodes a record; `None` when it is shorter than it says (counted as malformed).
    fn decode<'a>(&mut self, data: &'a [u8]) -> Option<Self::Event<'a>>;

    /// Counts an event in the tracer's own totals (fields of its summary).
    fn note(&mut self, event: &Self::Event<'_>) {
        let _ = event;
    }

    /// The map its events come from when a run streams several of one object: its loss
    /// reports (the exporter's too), the run so far and its summary carry it (`"map"`, or
    /// `map NAME: ` before the line for people).
    fn map(&self) -> Option<&str> {
        None
    }

    /// The event's stamp (`bpf_ktime_get_ns`), for the time column (`None`: it has none).
    fn ts_ns(&self, event: &Self::Event<'_>) -> Option<u64>;

    /// The event's cgroup (`bpf_get_current_cgroup_id`), for `--cgroup-path` (`None`: it has
    /// none).
    fn cgroup_id(&self, event: &Self::Event<'_>) -> Option<u64>;

    /// The table's column titles after the time column's, with the newline; `None` when the
    /// tracer prints no table of events.
    fn titles(&self) -> Option<String>;

    /// The event's table row after its time cell: one line, with its newline.
    fn row(&mut self, event: &Self::Event<'_>, out: &mut Output) -> io::Result<()>;

    /// The event's JSON fields, after `type` (and `stream`).
    fn json(&self, event: &Self::Event<'_>, line: JsonLine) -> JsonLine;

    /// After every batch: output of its own (a periodic table), never an event's line.
    fn tick(&mut self, out: &mut Output) -> io::Result<()> {
        let _ = out;
        Ok(())
    }

    /// After the drain: its last output (a final table, written with the summary, by the
    /// summary's deadline), and what its summary reads from its maps.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let _ = out;
        Ok(())
    }

    /// Its fields of the summary object, after the lifecycle's.
    fn summary_json(&self, summary: &Summary, line: JsonLine) -> JsonLine {
        let _ = summary;
        line
    }

    /// Its summary line for people, given the lifecycle's (`line`, without the newline).
    fn summary_text(&self, summary: &Summary, line: String) -> String {
        let _ = summary;
        line
    }
}
