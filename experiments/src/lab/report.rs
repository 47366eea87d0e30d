//! What an experiment hands back (a table, notes, a figure, its accounting), how it is printed
//! (aligned table or JSON lines), and the Markdown report of `lab all`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::output::JsonLine;

/// One table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(u64),
    /// A float printed with this many decimals.
    Float(f64, usize),
    Text(String),
    Bool(bool),
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    fn display(&self) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Float(v, decimals) => format!("{v:.decimals$}"),
            Cell::Text(s) => s.clone(),
            Cell::Bool(b) => if *b { "yes" } else { "no" }.into(),
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, Cell::Int(_) | Cell::Float(..))
    }

    fn add_to(&self, line: JsonLine, key: &str) -> JsonLine {
        match self {
            Cell::Int(v) => line.num(key, *v),
            Cell::Float(v, _) => line.float(key, *v),
            Cell::Text(s) => line.str(key, s),
            Cell::Bool(b) => line.boolean(key, *b),
        }
    }
}

/// Rows with named columns.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| self.rows.iter().map(|r| r[i].display().len()).chain([c.len()]).max().unwrap_or(0))
            .collect()
    }

    /// Aligned columns (numbers right-aligned).
    pub fn text(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<(String, bool)>| {
            let parts: Vec<String> = cells
                .into_iter()
                .zip(&widths)
                .map(|((s, right), w)| if right { format!("{s:>w$}") } else { format!("{s:<w$}") })
                .collect();
            let _ = writeln!(out, "{}", parts.join("  ").trim_end());
        };
        let numeric: Vec<bool> =
            (0..self.columns.len()).map(|i| self.rows.first().is_some_and(|r| r[i].numeric())).collect();
        line(&mut out, self.columns.iter().zip(&numeric).map(|(c, &n)| (c.to_uppercase(), n)).collect());
        for row in &self.rows {
            line(&mut out, row.iter().map(|c| (c.display(), c.numeric())).collect());
        }
        out
    }

    /// A Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.columns.join(" | "));
        let _ = writeln!(
            out,
            "|{}|",
            self.rows
                .first()
                .map(|r| r.iter().map(|c| if c.numeric() { "---:" } else { "---" }).collect::<Vec<_>>().join("|"))
                .unwrap_or_else(|| vec!["---"; self.columns.len()].join("|"))
        );
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.iter().map(Cell::display).collect::<Vec<_>>().join(" | "));
        }
        out
    }

    /// One JSON object per row, `"type"` = `kind`.
    pub fn json_lines(&self, kind: &str) -> Vec<String> {
        self.rows
            .iter()
            .map(|row| {
                let mut line = JsonLine::new(kind);
                for (cell, key) in row.iter().zip(&self.columns) {
                    line = cell.add_to(line, key);
                }
                line.finish()
            })
            .collect()
    }
}

/// Draws a figure into an SVG file.
pub type Figure = Box<dyn Fn(&Path) -> Result<()>>;

/// One accounted row: `produced = delivered + dropped + summarized` must hold.
#[derive(Debug, Clone)]
pub struct Account {
    pub label: String,
    pub produced: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub summarized: u64,
}

impl Account {
    pub fn balanced(&self) -> bool {
        self.produced == self.delivered + self.dropped + self.summarized
    }
}

/// What an experiment found.
pub struct LabReport {
    /// `sizing`, `compare`, ...: the JSON `type` of its rows and the figure's file name.
    pub name: &'static str,
    pub title: &'static str,
    /// One paragraph: what was run.
    pub setup: String,
    pub table: Table,
    /// Findings and recommendations, one per line.
    pub notes: Vec<String>,
    pub figure: Figure,
    pub accounts: Vec<Account>,
}

impl std::fmt::Debug for LabReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabReport").field("name", &self.name).field("table", &self.table).finish()
    }
}

impl LabReport {
    /// Rows whose accounting does not add up, described.
    pub fn unbalanced(&self) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|a| !a.balanced())
            .map(|a| {
                format!(
                    "{} {}: produced {} != delivered {} + dropped {} + summarized {}",
                    self.name, a.label, a.produced, a.delivered, a.dropped, a.summarized
                )
            })
            .collect()
    }

    /// The table (or JSON lines) and the notes on stdout.
    pub fn print(&self, json: bool) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if json {
            for line in self.table.json_lines(self.name) {
                writeln!(out, "{line}")?;
            }
            for note in &self.notes {
                writeln!(out, "{}", JsonLine::new("note").str("lab", self.name).str("text", note).finish())?;
            }
        } else {
            writeln!(out, "{}\n{}", self.title, self.setup)?;
            writeln!(out)?;
            write!(out, "{}", self.table.text())?;
            for note in &self.notes {
                writeln!(out, "* {note}")?;
            }
        }
        out.flush()
    }

    /// This experiment's section of the report.
    fn markdown(&self, figure: &str) -> String {
        let mut out = format!("## {}\n\n{}\n\n{}\n", self.title, self.setup, self.table.markdown());
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(out, "\n![{}]({figure})\n", self.name);
        out
    }
}

/// Writes `dir/README.md` and one SVG figure per experiment.
pub fn write_report(dir: &Path, reports: &[LabReport], intro: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the report directory {}", dir.display()))?;
    let mut md = format!("# bpfstream lab report\n\n{intro}\n\n");
    for r in reports {
        let figure = format!("{}.svg", r.name);
        (r.figure)(&dir.join(&figure)).with_context(|| format!("drawing {figure}"))?;
        md.push_str(&r.markdown(&figure));
    }
    let path = dir.join("README.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(&["buffer", "events", "loss_rate", "ok"]);
        t.push(vec![Cell::text("ring"), Cell::Int(1000), Cell::Float(0.5, 3), Cell::Bool(true)]);
        t.push(vec![Cell::text("perf"), Cell::Int(7), Cell::Float(0.25, 3), Cell::Bool(false)]);
        t
    }

    #[test]
    fn text_is_aligned_with_numbers_right() {
        assert_eq!(
            table().text(),
            "BUFFER  EVENTS  LOSS_RATE  OK\nring      1000      0.500  yes\nperf         7      0.250  no\n"
        );
    }

    #[test]
    fn json_and_markdown() {
        let t = table();
        assert_eq!(
            t.json_lines("sizing")[0],
            r#"{"type":"sizing","buffer":"ring","events":1000,"loss_rate":0.500,"ok":true}"#
        );
        let md = t.markdown();
        assert!(
            md.starts_with("| buffer | events | loss_rate | ok |\n|---|---:|---:|---|\n| ring | 1000 | 0.500 | yes |")
        );
    }

    #[test]
    fn accounts() {
        let a = Account { label: "x".into(), produced: 10, delivered: 6, dropped: 3, summarized: 1 };
        assert!(a.balanced());
        assert!(!Account { produced: 11, ..a }.balanced());
    }
}
