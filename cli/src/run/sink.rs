//! How `run`'s records look: each is checked against its [`Plan`], then written as a JSON line
//! (`--json`, `--output`) or a table row whose columns are the record's fields.

use std::io::{self, Write};

use super::decode::Plan;
use crate::lifecycle::{Format, Summary};
use crate::output::{cell_left, cell_right, JsonLine};
use crate::writer::Output;

/// Records decoded by their plan.
pub struct Records {
    pub plan: Plan,
    /// Where the record's `ts_ns` is (`-T` / `--elapsed`).
    pub ts_at: Option<usize>,
    /// Where the record's `cgroup_id` is (`--cgroup-path`).
    pub cgroup_at: Option<usize>,
    /// Whether the object counts its drops (bpfstream.h's counters).
    pub counters: bool,
    /// Its map, when several maps stream.
    pub map: Option<MapLabel>,
    /// The row and the cell being built (reused).
    line: String,
    cell: String,
}

/// One of several maps streamed: its name, on its events' lines (`"map"`), in a MAP column as
/// wide as the longest name and on its summary; the table's titles are printed by the first
/// map's stream only.
pub struct MapLabel {
    pub name: String,
    pub width: usize,
    pub first: bool,
}

impl Records {
    pub fn new(
        plan: Plan,
        ts_at: Option<usize>,
        cgroup_at: Option<usize>,
        counters: bool,
        map: Option<MapLabel>,
    ) -> Self {
        Records { plan, ts_at, cgroup_at, counters, map, line: String::new(), cell: String::new() }
    }
}

/// A record that passed its plan's check, and where its variable-length tail begins.
pub struct Checked<'a> {
    data: &'a [u8],
    tail: usize,
}

/// The `__u64` at `at` of a checked record.
fn u64_at(data: &[u8], at: Option<usize>) -> Option<u64> {
    let at = at?;
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

impl Format for Records {
    type Event<'a> = Checked<'a>;

    fn decode<'a>(&mut self, data: &'a [u8]) -> Option<Checked<'a>> {
        self.plan.check(data).ok().map(|tail| Checked { data, tail })
    }

    fn kind(&self) -> &str {
        &self.plan.name
    }

    fn map(&self) -> Option<&str> {
        self.map.as_ref().map(|m| m.name.as_str())
    }

    fn ts_ns(&self, r: &Checked<'_>) -> Option<u64> {
        u64_at(r.data, self.ts_at)
    }

    fn cgroup_id(&self, r: &Checked<'_>) -> Option<u64> {
        u64_at(r.data, self.cgroup_at)
    }

    fn titles(&self) -> Option<String> {
        let mut line = String::new();
        if let Some(map) = &self.map {
            if !map.first {
                return None;
            }
            cell_left(&mut line, "MAP", map.width);
            line.push(' ');
        }
        let fields = self.plan.fields();
        for (i, field) in fields.iter().enumerate() {
            let title = field.name.to_uppercase();
            let width = if i + 1 == fields.len() { 0 } else { field.column.width };
            if field.column.right {
                cell_right(&mut line, &title, width);
            } else {
                cell_left(&mut line, &title, width);
            }
            line.push(if i + 1 == fields.len() { '\n' } else { ' ' });
        }
        Some(line)
    }

    fn row(&mut self, r: &Checked<'_>, out: &mut Output) -> io::Result<()> {
        self.line.clear();
        if let Some(map) = &self.map {
            cell_left(&mut self.line, &map.name, map.width);
            self.line.push(' ');
        }
        let fields = self.plan.fields();
        for (i, field) in fields.iter().enumerate() {
            self.cell.clear();
            self.plan.cell(field, r.data, r.tail, &mut self.cell);
            let width = if i + 1 == fields.len() { 0 } else { field.column.width };
            if field.column.right {
                cell_right(&mut self.line, &self.cell, width);
            } else {
                cell_left(&mut self.line, &self.cell, width);
            }
            self.line.push(if i + 1 == fields.len() { '\n' } else { ' ' });
        }
        out.write_all(self.line.as_bytes())
    }

    fn json(&self, r: &Checked<'_>, line: JsonLine) -> JsonLine {
        let line = match &self.map {
            Some(map) => line.str("map", &map.name),
            None => line,
        };
        line.raw(|buf| self.plan.json(r.data, r.tail, buf))
    }

    fn summary_json(&self, _: &Summary, line: JsonLine) -> JsonLine {
        line.boolean("counters", self.counters)
    }

    fn summary_text(&self, _: &Summary, line: String) -> String {
        if self.counters {
            line
        } else {
            line + "; drops not counted: the object sends without bpfstream.h's counters (produced unknown)"
        }
    }
}
