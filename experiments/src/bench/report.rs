//! The bench's results: one row per (consumer, mode) as a table line or a JSON object, and the
//! issue's targets as ratios between rows of the same run.

use std::path::Path;

use super::measure::{self, Medians, Memory, Window};
use super::{Mode, ALL_MODES};
use crate::output::JsonLine;
use crate::plot::{self, BarPanel};
use crate::size::human_bytes;

/// What became of one (consumer, mode).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Measured(Measured),
    /// Not run, and why (e.g. libbpf is not installed).
    Skipped(String),
    /// Run, and failed.
    Failed(String),
}

impl Outcome {
    /// Two rounds of one row: measurements merge; a failure in either round is the row's.
    pub fn merge(self, other: Outcome) -> Outcome {
        match (self, other) {
            (Outcome::Measured(a), Outcome::Measured(b)) => Outcome::Measured(a.merge(b)),
            (failed @ Outcome::Failed(_), _) | (_, failed @ Outcome::Failed(_)) => failed,
            (skipped @ Outcome::Skipped(_), _) | (_, skipped @ Outcome::Skipped(_)) => skipped,
        }
    }
}

/// The measurements of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Medians over the windows.
    pub medians: Medians,
    /// The windows themselves (of every round).
    pub windows: Vec<Window>,
    /// The consumer's buffer mappings.
    pub memory: Memory,
    /// Over the whole row (warm-up, windows and the final drain): what the BPF side produced,
    /// what the consumer got, and what the BPF side dropped.
    pub produced: u64,
    pub consumed: u64,
    pub dropped: u64,
    /// Ring: records the BPF side committed with BPF_RB_FORCE_WAKEUP.
    pub forced_wakeups: u64,
    /// Ring: total bytes; perf: bytes per CPU.
    pub buffer_bytes: u64,
    /// Anything the reader must know to read the numbers.
    pub note: Option<String>,
}

impl Measured {
    /// This row and another round of it as one: medians over the windows of both, counts
    /// summed (each round accounts for its own records, so the sums do too).
    pub fn merge(self, other: Measured) -> Measured {
        let mut windows = self.windows;
        windows.extend(other.windows);
        Measured {
            medians: measure::medians(&windows).unwrap_or(self.medians),
            windows,
            memory: other.memory,
            produced: self.produced + other.produced,
            consumed: self.consumed + other.consumed,
            dropped: self.dropped + other.dropped,
            forced_wakeups: self.forced_wakeups + other.forced_wakeups,
            buffer_bytes: self.buffer_bytes,
            note: self.note,
        }
    }

    /// produced - consumed - dropped: 0 unless something was lost silently.
    pub fn unaccounted(&self) -> i128 {
        i128::from(self.produced) - i128::from(self.consumed) - i128::from(self.dropped)
    }
}

/// One (consumer, mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub consumer: &'static str,
    pub mode: Mode,
    /// How the consumer is woken, in words.
    pub wakeup: String,
    pub outcome: Outcome,
}

impl Row {
    pub fn measured(&self) -> Option<&Measured> {
        match &self.outcome {
            Outcome::Measured(m) => Some(m),
            _ => None,
        }
    }

    /// The JSON object of `bpfstream bench --json` (fields fixed by cli-contract.md).
    pub fn json(&self) -> JsonLine {
        let line = JsonLine::new("bench").str("consumer", self.consumer).str("mode", self.mode.name());
        let line = match &self.outcome {
            Outcome::Measured(m) => line
                .float("consumed_per_sec", m.medians.consumed_per_sec)
                .float("produced_per_sec", m.medians.produced_per_sec)
                .float("dropped_per_sec", m.medians.dropped_per_sec)
                .opt_float("consumer_cpu_ns_per_event", m.medians.cpu_ns_per_event)
                .opt_float("plain_read_per_sec", m.medians.plain_read_per_sec)
                .opt_float("memory_speed_fraction", m.medians.memory_speed_fraction)
                .num("windows", m.medians.windows)
                .num("produced", m.produced)
                .num("consumed", m.consumed)
                .num("dropped", m.dropped)
                .num("unaccounted", m.unaccounted())
                .num("forced_wakeups", m.forced_wakeups)
                .num("buffer_bytes", m.buffer_bytes)
                .num("mapped_bytes", m.memory.mapped)
                .num("rss_bytes", m.memory.rss),
            Outcome::Skipped(_) | Outcome::Failed(_) => line
                .float("consumed_per_sec", f64::NAN)
                .float("dropped_per_sec", f64::NAN)
                .float("consumer_cpu_ns_per_event", f64::NAN),
        };
        let line = line.str("wakeup", &self.wakeup);
        match &self.outcome {
            Outcome::Measured(Measured { note: Some(note), .. }) => line.str("note", note),
            Outcome::Measured(_) => line,
            Outcome::Skipped(why) => line.str("skipped", why),
            Outcome::Failed(why) => line.str("error", why),
        }
    }

    /// One table line, under [`table_header`].
    pub fn table_line(&self) -> String {
        let cells = match &self.outcome {
            Outcome::Measured(m) => [
                rate(m.medians.produced_per_sec),
                rate(m.medians.consumed_per_sec),
                rate(m.medians.dropped_per_sec),
                m.medians.cpu_ns_per_event.map_or("-".to_string(), |ns| format!("{ns:.1}")),
                human_bytes(m.memory.mapped),
                human_bytes(m.memory.rss),
                match (&m.note, m.unaccounted(), m.medians.memory_speed_fraction) {
                    (_, n, _) if n != 0 => format!("{} UNACCOUNTED; {}", n, self.wakeup),
                    (Some(note), _, _) => format!("{}; {note}", self.wakeup),
                    (None, _, Some(fraction)) => {
                        format!("{}; {:.0}% of a plain read", self.wakeup, fraction * 100.0)
                    }
                    (None, _, None) => self.wakeup.clone(),
                },
            ],
            Outcome::Skipped(why) => dashes(format!("skipped: {why}")),
            Outcome::Failed(why) => dashes(format!("FAILED: {why}")),
        };
        let [produced, consumed, dropped, cpu, mapped, rss, note] = cells.each_ref().map(String::as_str);
        columns([self.consumer, self.mode.name(), produced, consumed, dropped, cpu, mapped, rss, note])
    }
}

fn dashes(note: String) -> [String; 7] {
    let d = || "-".to_string();
    [d(), d(), d(), d(), d(), d(), note]
}

fn columns([consumer, mode, produced, consumed, dropped, cpu, mapped, rss, note]: [&str; 9]) -> String {
    format!(
        "{consumer:<15} {mode:<8} {produced:>10} {consumed:>10} {dropped:>10} {cpu:>9} {mapped:>10} {rss:>10}  {note}"
    )
}

/// The column titles of [`Row::table_line`].
pub fn table_header() -> String {
    columns([
        "CONSUMER",
        "MODE",
        "PRODUCED/s",
        "CONSUMED/s",
        "DROPPED/s",
        "CPU ns/ev",
        "MAPPED",
        "RSS",
        "WAKEUP / NOTE",
    ])
}

/// What the columns mean, printed under the table.
pub const TABLE_NOTES: &str = "\
PRODUCED/s: what the BPF side wrote (drain: while filling); CONSUMED/s, DROPPED/s: medians of the
windows; CPU ns/ev: the consumer thread's CPU time (CLOCK_THREAD_CPUTIME_ID) per record consumed.
MAPPED, RSS: the consumer's buffer mappings (smaps). A ring's data pages are mapped twice, so both
count them twice; perf buffers are mapped VM_PFNMAP, which smaps never counts as resident, though
all their pages are allocated. \"% of a plain read\" (ring drain): the drain's rate over that of a
plain read of as much memory on the same CPU right after it, the median over windows.";

/// `215.3M`, `140.2K`, `0`: events per second for a table.
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() {
        return "-".into();
    }
    match per_sec {
        r if r >= 1e6 => format!("{:.2}M", r / 1e6),
        r if r >= 1e3 => format!("{:.1}K", r / 1e3),
        r => format!("{r:.0}"),
    }
}

/// A goal of the issue, compared between two rows of this run.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: &'static str,
    /// The two numbers and their ratio, in words.
    pub detail: String,
    /// The ratio (drops: the fraction dropped).
    pub ratio: f64,
    /// How the table shows it: `2.05x`, or a count.
    pub shown: String,
    /// e.g. `>= 2`.
    pub goal: String,
    pub met: bool,
    /// The highest ratio any consumer could show: the producer's own rate with no consumer
    /// running, over the rate compared against. Only where this run measured that rate.
    pub ceiling: Option<f64>,
    /// What `--check` holds the ratio to: the goal less room for a shared machine's noise, so
    /// that only a regression fails it (`None`: not checked).
    pub floor: Option<Goal>,
}

impl Target {
    pub fn json(&self) -> JsonLine {
        let line = JsonLine::new("target")
            .str("name", self.name)
            .float("ratio", self.ratio)
            .str("goal", &self.goal)
            .boolean("met", self.met)
            .opt_float("ceiling", self.ceiling);
        let line = match self.floor {
            Some(floor) => line.str("floor", &floor.text()),
            None => line,
        };
        line.str("detail", &self.detail)
    }

    /// `--check`: why the ratio fails its floor, if it does.
    pub fn below_floor(&self) -> Option<String> {
        let floor = self.floor?;
        (!floor.holds(self.ratio)).then(|| {
            format!(
                "{}: {:.2}x, the floor is {} (the goal {}): {}",
                self.name,
                self.ratio,
                floor.text(),
                self.goal,
                self.detail
            )
        })
    }

    pub fn text(&self) -> String {
        format!(
            "{:<34} {:>8} (goal {:>6})  {:<4}  {}",
            self.name,
            self.shown,
            self.goal,
            if self.met { "met" } else { "MISS" },
            self.detail
        )
    }
}

fn find<'a>(rows: &'a [Row], consumer: &str, mode: Mode) -> Option<&'a Measured> {
    rows.iter().find(|r| r.consumer == consumer && r.mode == mode).and_then(Row::measured)
}

/// `--plot`: per mode, the records each consumer took per second; and the sampled rows' CPU per
/// record, where bpfstream's batching shows.
pub fn figure(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let panel = |title: String, y_label: &str, of: &dyn Fn(&Measured) -> Option<f64>, mode: Mode| {
        let measured: Vec<(&str, f64)> =
            rows.iter().filter(|r| r.mode == mode).filter_map(|r| Some((r.consumer, of(r.measured()?)?))).collect();
        let top = measured.iter().map(|m| m.1).fold(0.0, f64::max);
        (!measured.is_empty()).then(|| BarPanel {
            title,
            y_label: y_label.into(),
            labels: measured.iter().map(|m| m.0.to_string()).collect(),
            values: measured.iter().map(|m| m.1).collect(),
            decimals: if top < 10.0 {
                2
            } else if top < 100.0 {
                1
            } else {
                0
            },
        })
    };
    let million_per_sec = |m: &Measured| Some(m.medians.consumed_per_sec / 1e6);
    let mut panels: Vec<BarPanel> = ALL_MODES
        .into_iter()
        .filter_map(|mode| panel(format!("{}: consumed", mode.name()), "M records/s", &million_per_sec, mode))
        .collect();
    let cpu = |m: &Measured| m.medians.cpu_ns_per_event;
    panels.extend(panel("sampled: consumer CPU".into(), "ns per record", &cpu, Mode::Sampled));
    if panels.is_empty() {
        anyhow::bail!("no row was measured: nothing to draw");
    }
    plot::bars(path, "bpfstream bench: 500 8-byte records per getpgid(), medians of windows", &panels)
}

/// What a ratio must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn text(self) -> String {
        match self {
            Goal::AtLeast(min) => format!(">= {min}x"),
            Goal::AtMost(max) => format!("<= {max}x"),
        }
    }

    fn holds(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(min) => ratio >= min,
            Goal::AtMost(max) => ratio <= max,
        }
    }
}

/// `ours / theirs` of one metric between two rows, when both were measured.
fn compare(
    rows: &[Row],
    name: &'static str,
    (ours, theirs, mode): (&str, &str, Mode),
    metric: fn(&Measured) -> Option<f64>,
    unit: &str,
    (goal, floor): (Goal, Option<Goal>),
) -> Option<Target> {
    let a = metric(find(rows, ours, mode)?)?;
    let b = metric(find(rows, theirs, mode)?)?;
    let ratio = a / b;
    let met = goal.holds(ratio);
    let goal = goal.text();
    let fmt = |v: f64| if unit == "/s" { format!("{}/s", rate(v)) } else { format!("{v:.2} {unit}") };
    Some(Target {
        name,
        detail: format!("{ours} {} vs {theirs} {} ({})", fmt(a), fmt(b), mode.name()),
        ratio,
        shown: format!("{ratio:.2}x"),
        goal,
        met,
        ceiling: None,
        floor,
    })
}

fn consumed(m: &Measured) -> Option<f64> {
    Some(m.medians.consumed_per_sec)
}

fn cpu_per_event(m: &Measured) -> Option<f64> {
    m.medians.cpu_ns_per_event
}

/// The perf producer's rate with no consumer running: the fills of this run's perf `drain` rows
/// (the fastest of them). No consumer can take records faster than they are written.
fn perf_producer_alone(rows: &[Row]) -> Option<f64> {
    ["bpfstream-perf", "libbpf-perf", "aya-perf"]
        .into_iter()
        .filter_map(|consumer| find(rows, consumer, Mode::Drain))
        .map(|m| m.medians.produced_per_sec)
        .max_by(f64::total_cmp)
}

/// Puts into a rate target against `theirs` what `bound` (records/s, measured as `how`) allows:
/// its ratio to `theirs`, which no consumer can pass by more than the noise, and the rate that the
/// goal needs.
fn with_ceiling(target: &mut Target, bound: f64, how: &str, theirs: &Measured, goal: f64) {
    let ceiling = bound / theirs.medians.consumed_per_sec;
    target.ceiling = Some(ceiling);
    target.detail.push_str(&format!(
        "; {how} runs at {}/s ({ceiling:.2}x), and {goal}x needs {}/s",
        rate(bound),
        rate(goal * theirs.medians.consumed_per_sec),
    ));
}

/// Ring drain: bpfstream against libbpf.
const RING_DRAIN_GOAL: f64 = 2.0;
/// Ring drain: bpfstream's rate over that of a plain read of as much memory right after it.
const RING_DRAIN_OF_PLAIN_READ_GOAL: f64 = 0.9;

/// What the other ring consumers dropped in `sampled`: stalls of the machine hit them all.
fn others_dropped(rows: &[Row]) -> String {
    ["libbpf-ring", "aya-ring"]
        .into_iter()
        .filter_map(|name| find(rows, name, Mode::Sampled).map(|m| format!(", {name} {} of {}", m.dropped, m.produced)))
        .collect::<Vec<_>>()
        .concat()
}

/// bpfstream-perf with its defaults against libbpf's `perf_buffer__new` defaults.
const PERF_DEFAULTS_GOAL: f64 = 20.0;

/// The goals of the consumers' speed that this run's rows allow to compute, each a ratio of two
/// rows of this run; the first four have a floor for `--check` (CI).
pub fn targets(rows: &[Row]) -> Vec<Target> {
    let targets = vec![
        compare(
            rows,
            "ring drain rate vs libbpf",
            ("bpfstream-ring", "libbpf-ring", Mode::Drain),
            consumed,
            "/s",
            (Goal::AtLeast(RING_DRAIN_GOAL), Some(Goal::AtLeast(1.5))),
        ),
        compare(
            rows,
            "ring drain CPU/record vs libbpf",
            ("bpfstream-ring", "libbpf-ring", Mode::Drain),
            cpu_per_event,
            "ns",
            (Goal::AtMost(0.5), Some(Goal::AtMost(0.6))),
        ),
        compare(
            rows,
            "perf drain rate vs libbpf",
            ("bpfstream-perf", "libbpf-perf", Mode::Drain),
            consumed,
            "/s",
            (Goal::AtLeast(1.2), Some(Goal::AtLeast(1.0))),
        ),
        compare(
            rows,
            "ring sampled CPU/event vs libbpf",
            ("bpfstream-ring", "libbpf-ring", Mode::Sampled),
            cpu_per_event,
            "ns",
            (Goal::AtMost(0.3), Some(Goal::AtMost(1.0))),
        ),
        compare(
            rows,
            "ring sampled rate vs libbpf",
            ("bpfstream-ring", "libbpf-ring", Mode::Sampled),
            consumed,
            "/s",
            (Goal::AtLeast(1.0), None),
        ),
        compare(
            rows,
            "perf sampled rate vs libbpf",
            ("bpfstream-perf", "libbpf-perf", Mode::Sampled),
            consumed,
            "/s",
            (Goal::AtLeast(1.0), None),
        ),
        compare(
            rows,
            "perf defaults rate vs libbpf's",
            ("bpfstream-perf", "libbpf-perf", Mode::Parallel),
            consumed,
            "/s",
            (Goal::AtLeast(PERF_DEFAULTS_GOAL), None),
        ),
        of_plain_read(rows),
    ];
    let mut targets: Vec<Target> = targets.into_iter().flatten().collect();
    let named = |targets: &[Target], name: &str| targets.iter().position(|t| t.name == name);
    if let (Some(i), Some(ours), Some(theirs)) = (
        named(&targets, "ring drain rate vs libbpf"),
        find(rows, "bpfstream-ring", Mode::Drain),
        find(rows, "libbpf-ring", Mode::Drain),
    ) {
        if let (Some(f_ours), Some(f_theirs), Some(read)) = (
            ours.medians.memory_speed_fraction,
            theirs.medians.memory_speed_fraction,
            theirs.medians.plain_read_per_sec,
        ) {
            targets[i].detail.push_str(&format!(
                "; as fractions of a plain read of the same memory right after each drain: {:.0}% vs {:.0}% ({:.2}x)",
                f_ours * 100.0,
                f_theirs * 100.0,
                f_ours / f_theirs
            ));
            with_ceiling(&mut targets[i], read, "a plain read after libbpf-ring's drains", theirs, RING_DRAIN_GOAL);
        }
    }
    // Perf rows with few wakeups run at the producer's pace: say how close that is.
    let alone = "the producer alone (perf drain fill, no consumer)";
    for (name, mode, goal) in [
        ("perf sampled rate vs libbpf", Mode::Sampled, 1.0),
        ("perf defaults rate vs libbpf's", Mode::Parallel, PERF_DEFAULTS_GOAL),
    ] {
        if let (Some(i), Some(theirs), Some(rate)) =
            (named(&targets, name), find(rows, "libbpf-perf", mode), perf_producer_alone(rows))
        {
            with_ceiling(&mut targets[i], rate, alone, theirs, goal);
        }
    }
    if let Some(m) = find(rows, "bpfstream-ring", Mode::Sampled) {
        targets.push(Target {
            floor: None,
            name: "ring sampled drops (whole row)",
            detail: format!("bpfstream-ring dropped {} of {} produced{}", m.dropped, m.produced, others_dropped(rows)),
            ratio: m.dropped as f64 / m.produced.max(1) as f64,
            shown: m.dropped.to_string(),
            goal: "0".into(),
            met: m.dropped == 0,
            ceiling: None,
        });
    }
    targets
}

/// The ring drain's rate as a fraction of a plain read of as much memory right after it (the
/// memory's own speed, measured in the same window).
fn of_plain_read(rows: &[Row]) -> Option<Target> {
    let fraction = find(rows, "bpfstream-ring", Mode::Drain)?.medians.memory_speed_fraction?;
    let goal = Goal::AtLeast(RING_DRAIN_OF_PLAIN_READ_GOAL);
    Some(Target {
        name: "ring drain vs a plain read",
        detail: format!("bpfstream-ring drains at {:.0}% of a plain read of the same memory", fraction * 100.0),
        ratio: fraction,
        shown: format!("{fraction:.2}x"),
        goal: goal.text(),
        met: goal.holds(fraction),
        ceiling: None,
        floor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rate: f64, cpu: Option<f64>, dropped: u64) -> Measured {
        Measured {
            medians: Medians {
                produced_per_sec: rate,
                consumed_per_sec: rate,
                dropped_per_sec: 0.0,
                cpu_ns_per_event: cpu,
                plain_read_per_sec: None,
                memory_speed_fraction: None,
                windows: 5,
            },
            windows: Vec::new(),
            memory: Memory { mapped: 2 << 20, rss: 1 << 20 },
            produced: 1000 + dropped,
            consumed: 1000,
            dropped,
            forced_wakeups: 0,
            buffer_bytes: 512 << 10,
            note: None,
        }
    }

    fn row(consumer: &'static str, mode: Mode, m: Measured) -> Row {
        Row { consumer, mode, wakeup: "flags 0".into(), outcome: Outcome::Measured(m) }
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(215_300_000.0), "215.30M");
        assert_eq!(rate(140_200.0), "140.2K");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(f64::NAN), "-");
    }

    #[test]
    fn json_rows_carry_the_contract_fields() {
        let line = row("bpfstream-ring", Mode::Drain, measured(4.5e8, Some(2.25), 0)).json().finish();
        assert!(line.starts_with(r#"{"type":"bench","consumer":"bpfstream-ring","mode":"drain","#), "{line}");
        for field in [
            r#""consumed_per_sec":450000000.000"#,
            r#""dropped_per_sec":0.000"#,
            r#""consumer_cpu_ns_per_event":2.250"#,
            r#""unaccounted":0"#,
            r#""mapped_bytes":2097152"#,
            r#""rss_bytes":1048576"#,
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
        let skipped = Row {
            consumer: "libbpf-ring",
            mode: Mode::Parallel,
            wakeup: "flags 0".into(),
            outcome: Outcome::Skipped("libbpf.so.1 not found".into()),
        };
        let line = skipped.json().finish();
        assert!(line.contains(r#""consumed_per_sec":null"#) && line.contains(r#""skipped":"libbpf.so.1 not found""#));
    }

    #[test]
    fn table_lines_line_up_with_the_header() {
        let line = row("libbpf-perf", Mode::Sampled, measured(11.2e6, Some(35.04), 0)).table_line();
        assert_eq!(
            line.split_whitespace().take(8).collect::<Vec<_>>(),
            ["libbpf-perf", "sampled", "11.20M", "11.20M", "0", "35.0", "2", "MiB"]
        );
        // Every number ends where its title ends.
        let header = table_header();
        for title in ["PRODUCED/s", "CONSUMED/s", "DROPPED/s", "CPU ns/ev", "MAPPED", "RSS"] {
            let end = header.find(title).unwrap() + title.len();
            let (last, after) = (line.as_bytes()[end - 1], line.as_bytes()[end]);
            assert!(last != b' ' && after == b' ', "{title}\n{header}\n{line}");
        }
        let mut lossy = measured(1.0, None, 0);
        lossy.consumed -= 3;
        let line = row("aya-ring", Mode::Parallel, lossy).table_line();
        assert!(line.contains("3 UNACCOUNTED"), "{line}");
        let failed =
            Row { outcome: Outcome::Failed("boom".into()), ..row("aya-perf", Mode::Drain, measured(1.0, None, 0)) };
        assert!(failed.table_line().ends_with("FAILED: boom"));
    }

    #[test]
    fn targets_are_ratios_of_rows_of_the_run() {
        let rows = vec![
            row("bpfstream-ring", Mode::Drain, measured(450e6, Some(2.0), 0)),
            row("libbpf-ring", Mode::Drain, measured(220e6, Some(4.5), 0)),
            row("bpfstream-ring", Mode::Sampled, measured(10e6, Some(3.0), 0)),
            row("libbpf-ring", Mode::Sampled, measured(9e6, Some(5.0), 0)),
            row("bpfstream-perf", Mode::Parallel, measured(3e6, None, 7)),
            row("libbpf-perf", Mode::Parallel, measured(0.14e6, Some(900.0), 0)),
        ];
        let targets = targets(&rows);
        let by_name = |n: &str| targets.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("{n}"));
        let drain = by_name("ring drain rate vs libbpf");
        assert!((drain.ratio - 450.0 / 220.0).abs() < 1e-9 && drain.met);
        let cpu = by_name("ring sampled CPU/event vs libbpf");
        assert!((cpu.ratio - 0.6).abs() < 1e-9 && !cpu.met, "0.6 is above the 0.3 goal");
        assert!(cpu.below_floor().is_none(), "but within the floor of 1.0");
        assert!(by_name("ring drain CPU/record vs libbpf").below_floor().is_none(), "2.0 of 4.5 ns");
        let perf = by_name("perf defaults rate vs libbpf's");
        assert!(perf.ratio > 21.0 && perf.met);
        let drops = by_name("ring sampled drops (whole row)");
        assert!(
            drops.met && drops.detail.ends_with("dropped 0 of 1000 produced, libbpf-ring 0 of 1000"),
            "{}",
            drops.detail
        );
        // perf sampled was not run: no target is made up for it.
        assert!(targets.iter().all(|t| t.name != "perf sampled rate vs libbpf"));
        assert!(drain.text().contains("met") && cpu.text().contains("MISS"));
        assert!(drain.json().finish().contains(r#""met":true"#));
        // No perf drain row ran: the producer's own rate is unknown, so is the ceiling.
        assert!(perf.ceiling.is_none() && perf.json().finish().contains(r#""ceiling":null"#));
    }

    #[test]
    fn a_ratio_past_its_floor_is_named_with_its_value_and_floor() {
        let rows = vec![
            row("bpfstream-ring", Mode::Drain, measured(240e6, Some(4.0), 0)),
            row("libbpf-ring", Mode::Drain, measured(200e6, Some(4.5), 0)),
        ];
        let targets = targets(&rows);
        let failures: Vec<String> = targets.iter().filter_map(Target::below_floor).collect();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].starts_with("ring drain rate vs libbpf: 1.20x, the floor is >= 1.5x (the goal >= 2x)"));
        assert!(failures[1].starts_with("ring drain CPU/record vs libbpf: 0.89x, the floor is <= 0.6x"));
        assert!(targets[0].json().finish().contains(r#""floor":">= 1.5x""#));
    }

    #[test]
    fn the_perf_producer_alone_bounds_the_defaults_ratio() {
        let mut fill = measured(220e6, Some(4.5), 0);
        fill.medians.produced_per_sec = 3.1e6;
        let rows = vec![
            row("bpfstream-perf", Mode::Parallel, measured(3e6, None, 0)),
            row("libbpf-perf", Mode::Parallel, measured(0.2e6, Some(900.0), 0)),
            row("libbpf-perf", Mode::Drain, fill),
        ];
        let targets = targets(&rows);
        let perf = targets.iter().find(|t| t.name == "perf defaults rate vs libbpf's").unwrap();
        assert!((perf.ratio - 15.0).abs() < 1e-9 && !perf.met);
        assert!((perf.ceiling.unwrap() - 15.5).abs() < 1e-9);
        assert!(
            perf.detail.contains(
                "the producer alone (perf drain fill, no consumer) runs at 3.10M/s (15.50x), and 20x needs 4.00M/s"
            ),
            "{}",
            perf.detail
        );
        assert!(perf.json().finish().contains(r#""ceiling":15.500"#));
    }

    #[test]
    fn rounds_merge_into_medians_over_all_their_windows() {
        let window = |rate: f64| Window {
            produced_per_sec: rate,
            consumed_per_sec: rate,
            dropped_per_sec: 0.0,
            cpu_ns_per_event: 10.0,
            plain_read_per_sec: f64::NAN,
        };
        let round = |rates: &[f64], dropped: u64| {
            let mut m = measured(0.0, None, dropped);
            m.windows = rates.iter().copied().map(window).collect();
            m.medians = measure::medians(&m.windows).unwrap();
            m
        };
        let merged = round(&[1.0, 2.0, 9.0], 5).merge(round(&[3.0, 4.0], 0));
        assert_eq!(merged.medians.consumed_per_sec, 3.0, "the median of 1, 2, 3, 4, 9");
        assert_eq!(merged.medians.windows, 5);
        assert_eq!((merged.produced, merged.consumed, merged.dropped), (2005, 2000, 5));
        assert_eq!(merged.unaccounted(), 0);

        let failed = Outcome::Measured(round(&[1.0], 0)).merge(Outcome::Failed("boom".into()));
        assert!(matches!(failed, Outcome::Failed(why) if why == "boom"), "a failed round fails the row");
    }

    #[test]
    fn the_figure_has_a_panel_per_measured_mode() {
        let path = std::env::temp_dir().join(format!("bpfstream-bench-figure-{}.svg", std::process::id()));
        let rows = vec![
            row("bpfstream-ring", Mode::Sampled, measured(20e6, Some(9.5), 0)),
            row("aya-perf", Mode::Sampled, measured(3.1e6, Some(22.6), 0)),
            row("libbpf-ring", Mode::Drain, measured(235e6, Some(4.2), 0)),
        ];
        figure(&rows, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in ["sampled: consumed", "drain: consumed", "sampled: consumer CPU", "20.0", "3.1", "22.6", "235"] {
            assert!(svg.contains(text), "{text} in the figure");
        }
        assert!(!svg.contains("parallel"), "no parallel row, no parallel panel");
        std::fs::remove_file(&path).unwrap();
        assert!(figure(&rows[..0], &path).is_err(), "nothing measured: an error, not an empty figure");
    }

    #[test]
    fn a_plain_read_bounds_the_drain_ratio() {
        let with_read = |rate: f64, read: f64| {
            let mut m = measured(rate, Some(2.0), 0);
            m.medians.plain_read_per_sec = Some(read);
            m.medians.memory_speed_fraction = Some(rate / read);
            m
        };
        let rows = vec![
            row("bpfstream-ring", Mode::Drain, with_read(440e6, 500e6)),
            row("libbpf-ring", Mode::Drain, with_read(235e6, 470e6)),
        ];
        let targets = targets(&rows);
        let drain = targets.iter().find(|t| t.name == "ring drain rate vs libbpf").unwrap();
        assert!(!drain.met && (drain.ceiling.unwrap() - 2.0).abs() < 1e-9);
        assert!(
            drain.detail.ends_with(
                "; as fractions of a plain read of the same memory right after each drain: 88% vs 50% (1.76x); \
                 a plain read after libbpf-ring's drains runs at 470.00M/s (2.00x), and 2x needs 470.00M/s"
            ),
            "{}",
            drain.detail
        );
        let line = rows[0].json().finish();
        assert!(line.contains(r#""plain_read_per_sec":500000000.000,"memory_speed_fraction":0.880"#), "{line}");
        assert!(rows[0].table_line().ends_with("flags 0; 88% of a plain read"), "{}", rows[0].table_line());
    }
}
