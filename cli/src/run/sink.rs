//! Where `run`'s records go: each is checked against its [`Plan`], then written as a JSON line
//! (`--json`, `--output`) or a table row whose columns are the record's fields.

use std::io::{self, Write};

use bpfstream::{Event, Record};

use super::decode::Plan;
use crate::container::ContainerFields;
use crate::export::Tee;
use crate::lifecycle::Sink;
use crate::output::{cell_left, cell_right, JsonLine, TimeColumn};

/// Prints decoded records.
pub struct Printer<W: Write> {
    pub out: W,
    pub plan: Plan,
    pub json: bool,
    /// `-T` / `--elapsed`, and where the record's `ts_ns` is.
    pub time: (TimeColumn, Option<usize>),
    /// `--cgroup-path`, and where the record's `cgroup_id` is.
    pub containers: (ContainerFields, Option<usize>),
    /// Records shorter than their type, or than the length they state.
    pub malformed: u64,
    pub tee: Tee,
    /// The row and the cell being built (reused).
    line: String,
    cell: String,
}

/// The `__u64` at `at` of a checked record.
fn u64_at(data: &[u8], at: Option<usize>) -> Option<u64> {
    let at = at?;
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, plan: Plan, json: bool, tee: Tee) -> Self {
        Printer {
            out,
            plan,
            json,
            time: (TimeColumn::new(false, false), None),
            containers: (ContainerFields::none(), None),
            malformed: 0,
            tee,
            line: String::new(),
            cell: String::new(),
        }
    }

    fn record(&mut self, data: &[u8]) -> io::Result<()> {
        let Ok(tail) = self.plan.check(data) else {
            self.malformed += 1;
            self.tee.unencoded();
            return Ok(());
        };
        if self.tee.active() {
            let plan = &self.plan;
            let mut line = JsonLine::new(&plan.name).raw(|buf| plan.json(data, tail, buf));
            if let Some(cgroup_id) = u64_at(data, self.containers.1) {
                line = self.containers.0.add(line, cgroup_id);
            }
            self.tee.emit(&mut self.out, line)?;
            if self.json {
                return Ok(());
            }
        }
        if let Some(ts) = u64_at(data, self.time.1) {
            self.time.0.cell(&mut self.out, ts)?;
        }
        self.line.clear();
        let fields = self.plan.fields();
        for (i, field) in fields.iter().enumerate() {
            self.cell.clear();
            self.plan.cell(field, data, tail, &mut self.cell);
            let width = if i + 1 == fields.len() { 0 } else { field.column.width };
            if field.column.right {
                cell_right(&mut self.line, &self.cell, width);
            } else {
                cell_left(&mut self.line, &self.cell, width);
            }
            self.line.push(if i + 1 == fields.len() { '\n' } else { ' ' });
        }
        self.out.write_all(self.line.as_bytes())
    }
}

impl<W: Write> Sink for Printer<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        self.time.0.title(&mut self.out)?;
        let mut line = String::new();
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
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }

    fn item(&mut self, item: Event<Record<'_>>) -> io::Result<()> {
        // Losses are reported by the lifecycle and totalled in its summary.
        match item {
            Event::Record(record) => self.record(record.data),
            Event::Dropped(_) => Ok(()),
        }
    }

    fn tick(&mut self) -> io::Result<()> {
        self.tee.tick(&mut self.out)?;
        self.out.flush()
    }

    fn export(&self) -> Option<crate::export::ExportSummary> {
        self.tee.so_far()
    }
}
