//! `bpfstream syscalls --summary`: per-syscall (or per-process) count, errors, total time and
//! latency percentiles, in the spirit of `syscount -L`. Aggregated in userspace from the very
//! records the event mode prints, so the two modes cannot disagree: a summary is a fold of the
//! stream.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Write};
use std::time::Duration;

use crate::histogram::LatencyHistogram;
use crate::output::{c_str, display_bytes, JsonLine};
use crate::tools::syscalls::{is_error, syscall_label, SyscallEvent};

/// What a summary row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Syscall,
    Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Syscall(i64),
    Process(u32),
}

/// Hashes the small integer keys with one multiply (the rustc/Fx hash): the fold runs once per
/// event, and SipHash was a tenth of the consumer's time under a syscall storm.
#[derive(Debug, Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }
}

#[derive(Debug, Default)]
struct Stats {
    errors: u64,
    latency: LatencyHistogram,
    /// Per process: the comm of its latest record.
    comm: [u8; 16],
}

/// One row of a summary table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `getppid`, or the process's comm.
    pub label: String,
    /// Syscall number, or pid.
    pub id: i64,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u128,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Records folded into rows, one interval at a time.
#[derive(Debug)]
pub struct Aggregator {
    by: GroupBy,
    stats: HashMap<Key, Stats, BuildHasherDefault<IntHasher>>,
    events: u64,
    dropped: u64,
}

impl Aggregator {
    pub fn new(by: GroupBy) -> Self {
        Aggregator { by, stats: HashMap::default(), events: 0, dropped: 0 }
    }

    pub fn add(&mut self, e: &SyscallEvent) {
        let key = match self.by {
            GroupBy::Syscall => Key::Syscall(e.nr),
            GroupBy::Process => Key::Process(e.pid),
        };
        let stats = self.stats.entry(key).or_default();
        stats.latency.record(e.duration_ns);
        stats.errors += u64::from(is_error(e.ret));
        stats.comm = e.comm;
        self.events += 1;
    }

    /// Records lost in this interval (ring full, perf lost): the rows miss them.
    pub fn lost(&mut self, count: u64) {
        self.dropped += count;
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The rows so far, by total time (then count) descending, and a fresh start.
    pub fn take_rows(&mut self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .stats
            .drain()
            .map(|(key, s)| {
                let (label, id) = match key {
                    Key::Syscall(nr) => (syscall_label(nr).into_owned(), nr),
                    Key::Process(pid) => (display_bytes(c_str(&s.comm)), i64::from(pid)),
                };
                Row {
                    label,
                    id,
                    count: s.latency.count(),
                    errors: s.errors,
                    total_ns: s.latency.sum(),
                    p50_ns: s.latency.quantile(0.50),
                    p99_ns: s.latency.quantile(0.99),
                    max_ns: s.latency.max(),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(b.count.cmp(&a.count)).then(a.id.cmp(&b.id)));
        self.events = 0;
        self.dropped = 0;
        rows
    }
}

/// Writes one interval: a header line and a table, or JSON lines (`syscall_interval`, then one
/// `syscall_stats` per row).
#[derive(Debug)]
pub struct IntervalWriter {
    pub by: GroupBy,
    pub json: bool,
    /// Rows shown per interval (all when `None`).
    pub top: Option<usize>,
    pub printed: u64,
}

impl IntervalWriter {
    pub fn write(&mut self, out: &mut impl Write, agg: &mut Aggregator, elapsed: Duration) -> io::Result<()> {
        let (events, dropped) = (agg.events(), agg.dropped());
        let mut rows = agg.take_rows();
        let shown = rows.len();
        if let Some(top) = self.top {
            rows.truncate(top);
        }
        self.printed += 1;
        let index = self.printed;
        if self.json {
            JsonLine::new("syscall_interval")
                .num("interval", index)
                .float("elapsed_s", elapsed.as_secs_f64())
                .num("events", events)
                .num("dropped", dropped)
                .num("rows", shown)
                .write_to(out)?;
            for r in &rows {
                let line = JsonLine::new("syscall_stats").num("interval", index);
                let line = match self.by {
                    GroupBy::Syscall => line.str("syscall", &r.label).num("nr", r.id),
                    GroupBy::Process => line.num("pid", r.id).str("comm", &r.label),
                };
                line.num("count", r.count)
                    .num("errors", r.errors)
                    .num("total_ns", r.total_ns)
                    .num("p50_ns", r.p50_ns)
                    .num("p99_ns", r.p99_ns)
                    .num("max_ns", r.max_ns)
                    .write_to(out)?;
            }
            return Ok(());
        }
        let lost = if dropped > 0 { format!(", {dropped} DROPPED (rows below miss them)") } else { String::new() };
        writeln!(out, "[{:.1} s] {events} syscalls{lost}", elapsed.as_secs_f64())?;
        let first = match self.by {
            GroupBy::Syscall => format!("{:<22}", "SYSCALL"),
            GroupBy::Process => format!("{:<7} {:<16}", "PID", "COMM"),
        };
        writeln!(
            out,
            "{first} {:>10} {:>8} {:>12} {:>10} {:>10} {:>10}",
            "COUNT", "ERRORS", "TOTAL(ms)", "P50(us)", "P99(us)", "MAX(us)"
        )?;
        for r in &rows {
            let first = match self.by {
                GroupBy::Syscall => format!("{:<22}", r.label),
                GroupBy::Process => format!("{:<7} {:<16}", r.id, r.label),
            };
            writeln!(
                out,
                "{first} {:>10} {:>8} {:>12.3} {:>10.3} {:>10.3} {:>10.3}",
                r.count,
                r.errors,
                r.total_ns as f64 / 1e6,
                r.p50_ns as f64 / 1e3,
                r.p99_ns as f64 / 1e3,
                r.max_ns as f64 / 1e3
            )?;
        }
        writeln!(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pid: u32, nr: i64, ret: i64, duration_ns: u64, comm: &[u8]) -> SyscallEvent {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        SyscallEvent { ts_ns: 1, duration_ns, ret, nr, pid, tid: pid, comm: c, cgroup_id: 1 }
    }

    #[test]
    fn rows_fold_the_stream_and_reset_each_interval() {
        let mut agg = Aggregator::new(GroupBy::Syscall);
        for i in 0..100 {
            agg.add(&event(7, 110, 1, 1000 + i, b"w"));
        }
        for _ in 0..5 {
            agg.add(&event(7, 257, -2, 3000, b"w"));
        }
        agg.add(&event(7, 35, 0, 200_000_000, b"w"));
        agg.add(&event(7, 9999, 0, 10, b"w"));
        agg.lost(3);
        assert_eq!((agg.events(), agg.dropped()), (107, 3));
        let rows = agg.take_rows();
        let labels: Vec<_> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["nanosleep", "getppid", "openat", "syscall_9999"], "by total time");
        let getppid = &rows[1];
        assert_eq!((getppid.count, getppid.errors, getppid.max_ns), (100, 0, 1099));
        assert_eq!(getppid.total_ns, (1000..1100u128).sum::<u128>());
        assert!((1049..=1049 + 33).contains(&getppid.p50_ns), "{}", getppid.p50_ns);
        assert_eq!((rows[2].count, rows[2].errors), (5, 5));
        assert_eq!(rows[0].max_ns, 200_000_000);
        assert!(agg.take_rows().is_empty());
        assert_eq!((agg.events(), agg.dropped()), (0, 0));
    }

    #[test]
    fn by_process_keys_on_pid_with_latest_comm() {
        let mut agg = Aggregator::new(GroupBy::Process);
        agg.add(&event(1, 0, 0, 10, b"old"));
        agg.add(&event(1, 1, -9, 10, b"new"));
        agg.add(&event(2, 0, 0, 5, b"other"));
        let rows = agg.take_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].id, rows[0].label.as_str(), rows[0].count, rows[0].errors), (1, "new", 2, 1));
    }

    #[test]
    fn json_rows_carry_the_contract_fields() {
        let mut agg = Aggregator::new(GroupBy::Syscall);
        agg.add(&event(7, 110, 1, 500, b"w"));
        let mut writer = IntervalWriter { by: GroupBy::Syscall, json: true, top: None, printed: 0 };
        let mut out = Vec::new();
        writer.write(&mut out, &mut agg, Duration::from_secs(1)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"type":"syscall_interval","interval":1,"elapsed_s":1.000,"events":1,"dropped":0,"rows":1}"#
        );
        assert_eq!(
            lines[1],
            r#"{"type":"syscall_stats","interval":1,"syscall":"getppid","nr":110,"count":1,"errors":0,"total_ns":500,"p50_ns":500,"p99_ns":500,"max_ns":500}"#
        );
    }

    #[test]
    fn top_keeps_the_rows_with_most_time_and_says_how_many_there_were() {
        let mut agg = Aggregator::new(GroupBy::Syscall);
        agg.add(&event(7, 110, 1, 500, b"w"));
        agg.add(&event(7, 35, 0, 9000, b"w"));
        let mut writer = IntervalWriter { by: GroupBy::Syscall, json: false, top: Some(1), printed: 0 };
        let mut out = Vec::new();
        writer.write(&mut out, &mut agg, Duration::from_secs(2)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "[2.0 s] 2 syscalls");
        assert!(lines[1].starts_with("SYSCALL"));
        assert!(lines[2].starts_with("nanosleep") && lines[2].contains(" 9.000"), "{}", lines[2]);
        assert_eq!(lines.len(), 4, "one row and a blank line: {text}");
    }
}
