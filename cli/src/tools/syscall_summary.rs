//! `bpfstream syscalls --summary`: per-syscall (or per-process) count, errors, total time and
//! latency percentiles, in the spirit of `syscount -L`, counted in the kernel: the BPF program
//! folds every call into its row of the `stats` map (`struct syscall_stats`, one copy per CPU),
//! so no call is lost to a full buffer whatever the rate. The rows are cumulative since attach;
//! each interval is the difference between two readings, so nothing is reset under a writer.
//!
//! ```text
//!   stats (BPF_MAP_TYPE_PERCPU_HASH, key: syscall nr as u32, or tgid)
//!   key -> [ CPU 0: count errors total_ns max_ns comm[16] buckets[1152] ]
//!          [ CPU 1: ...                                                  ]
//!   stats_early (same keys, preallocated): the calls that found no row yet
//!   key -> [ CPU 0: count errors total_ns max_ns ] [ CPU 1: ... ]
//! ```

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Result;
use aya::maps::{Map, MapData, PerCpuHashMap};

use crate::histogram::{LatencyHistogram, BUCKETS, RELATIVE_ERROR};
use crate::output::{c_str, display_bytes, JsonLine};
use crate::tools::syscalls::syscall_label;

bpfstream::record! {
    /// `struct syscall_counts` of bpf/syscalls.h.
    #[derive(Debug, Default)]
    pub struct KernelCounts {
        pub count: u64,
        pub errors: u64,
        pub total_ns: u64,
        pub max_ns: u64,
    }

    /// `struct syscall_stats` of bpf/syscalls.h: one summary row as one CPU counted it.
    #[derive(Debug)]
    pub struct KernelStats {
        pub counts: KernelCounts,
        pub comm: [u8; 16],
        pub buckets: [u64; BUCKETS],
    }
}

// SAFETY: #[repr(C)] of integers and byte arrays without padding (the layouts are checked
// against the object's BTF in the tests below): every bit pattern is a valid value.
unsafe impl aya::Pod for KernelCounts {}
// SAFETY: as above.
unsafe impl aya::Pod for KernelStats {}

/// What a summary row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Syscall,
    Process,
}

/// `--sort`: the order of the rows (and what `--top` keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Most total time first
    Time,
    /// Most calls first
    Count,
}

/// One row of the kernel's table summed over CPUs, cumulative since attach.
#[derive(Debug, Clone, Default)]
struct Cumulative {
    count: u64,
    errors: u64,
    total_ns: u128,
    /// The largest of all calls.
    max: u64,
    /// The calls with a bucket; its maximum is theirs.
    latency: LatencyHistogram,
    comm: [u8; 16],
}

impl Cumulative {
    /// A row from its per-CPU copies and its calls that found no row (`unbucketed`).
    fn sum(per_cpu: &[KernelStats], unbucketed: &[KernelCounts]) -> Self {
        let mut row = Cumulative::default();
        for c in per_cpu.iter().map(|cpu| &cpu.counts).chain(unbucketed) {
            row.count += c.count;
            row.errors += c.errors;
            row.total_ns += u128::from(c.total_ns);
            row.max = row.max.max(c.max_ns);
        }
        for cpu in per_cpu {
            row.latency.add_counts(&cpu.buckets);
            if row.comm[0] == 0 {
                row.comm = cpu.comm;
            }
        }
        row.latency.set_max(per_cpu.iter().map(|cpu| cpu.counts.max_ns).max().unwrap_or(0));
        row
    }
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
    /// Whether `max_ns` is exact: always on the first reading, and in later intervals when the
    /// row's maximum rose; otherwise it is the top of the highest bucket used in the interval.
    pub max_exact: bool,
}

/// The row for `key` between two cumulative readings (`None` if it counted nothing since).
fn row_between(key: u32, by: GroupBy, now: &Cumulative, before: Option<&Cumulative>) -> Option<Row> {
    let count = now.count - before.map_or(0, |b| b.count);
    if count == 0 {
        return None;
    }
    // A maximum since attach is this interval's only if it rose in this interval.
    let max_exact = before.is_none_or(|b| now.max > b.max);
    let bucketed_max_exact = before.is_none_or(|b| now.latency.max() > b.latency.max());
    let mut latency = now.latency.clone();
    if let Some(b) = before {
        latency.subtract(&b.latency);
    }
    if !bucketed_max_exact {
        latency.set_max(latency.highest_bucket_top());
    }
    let (label, id) = match by {
        GroupBy::Syscall => {
            let nr = i64::from(key as i32);
            (syscall_label(nr).into_owned(), nr)
        }
        GroupBy::Process => (display_bytes(c_str(&now.comm)), i64::from(key)),
    };
    Some(Row {
        label,
        id,
        count,
        errors: now.errors - before.map_or(0, |b| b.errors),
        total_ns: now.total_ns - before.map_or(0, |b| b.total_ns),
        p50_ns: latency.quantile(0.50),
        p99_ns: latency.quantile(0.99),
        max_ns: if max_exact { now.max } else { latency.max() },
        max_exact,
    })
}

fn sort_rows(rows: &mut [Row], sort: SortBy) {
    rows.sort_by(|a, b| {
        let (first, second) = match sort {
            SortBy::Time => (b.total_ns.cmp(&a.total_ns), b.count.cmp(&a.count)),
            SortBy::Count => (b.count.cmp(&a.count), b.total_ns.cmp(&a.total_ns)),
        };
        first.then(second).then(a.id.cmp(&b.id))
    });
}

/// The kernel's summary table and our previous reading of it.
pub struct StatsTable {
    map: PerCpuHashMap<MapData, u32, KernelStats>,
    unbucketed: PerCpuHashMap<MapData, u32, KernelCounts>,
    by: GroupBy,
    sort: SortBy,
    previous: HashMap<u32, Cumulative>,
}

impl StatsTable {
    /// The table from the maps `stats` and `stats_early`.
    pub fn new(map: Map, unbucketed: Map, by: GroupBy, sort: SortBy) -> Result<Self> {
        let (map, unbucketed) = (map.try_into()?, unbucketed.try_into()?);
        Ok(StatsTable { map, unbucketed, by, sort, previous: HashMap::new() })
    }

    /// The rows that counted calls since the last call (since attach on the first), sorted.
    pub fn take_rows(&mut self) -> Result<Vec<Row>> {
        let mut unbucketed = HashMap::new();
        for entry in self.unbucketed.iter() {
            let (key, per_cpu) = entry?;
            unbucketed.insert(key, per_cpu.to_vec());
        }
        let mut rows = Vec::new();
        let mut read = |key: u32, per_cpu: &[KernelStats], unbucketed: &[KernelCounts]| {
            let now = Cumulative::sum(per_cpu, unbucketed);
            rows.extend(row_between(key, self.by, &now, self.previous.get(&key)));
            self.previous.insert(key, now);
        };
        for entry in self.map.iter() {
            let (key, per_cpu) = entry?;
            read(key, &per_cpu, unbucketed.remove(&key).as_deref().unwrap_or_default());
        }
        // Rows that never got their histogram.
        for (key, counts) in unbucketed {
            read(key, &[], &counts);
        }
        sort_rows(&mut rows, self.sort);
        Ok(rows)
    }

    /// Calls counted since attach, over every row.
    pub fn counted(&self) -> u64 {
        self.previous.values().map(|r| r.count).sum()
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
    /// Table durations in milliseconds (`-m`) instead of microseconds.
    pub millis: bool,
    pub printed: u64,
}

impl IntervalWriter {
    pub fn write(&mut self, out: &mut impl Write, mut rows: Vec<Row>, elapsed: Duration) -> io::Result<()> {
        let calls: u64 = rows.iter().map(|r| r.count).sum();
        let shown = rows.len();
        if let Some(top) = self.top {
            rows.truncate(top);
        }
        self.printed += 1;
        if self.json {
            JsonLine::new("syscall_interval")
                .num("interval", self.printed)
                .float("elapsed_s", elapsed.as_secs_f64())
                .num("events", calls)
                .num("rows", shown)
                .float("percentile_error", RELATIVE_ERROR)
                .write_to(out)?;
            return rows.iter().try_for_each(|r| self.json_row(out, r));
        }
        let error = RELATIVE_ERROR * 100.0;
        writeln!(out, "[{:.1} s] {calls} syscalls (percentiles within {error:.1} %)", elapsed.as_secs_f64())?;
        let first = match self.by {
            GroupBy::Syscall => format!("{:<22}", "SYSCALL"),
            GroupBy::Process => format!("{:<7} {:<16}", "PID", "COMM"),
        };
        let unit = if self.millis { "ms" } else { "us" };
        let (p50, p99, max) = (format!("P50({unit})"), format!("P99({unit})"), format!("MAX({unit})"));
        writeln!(out, "{first} {:>10} {:>8} {:>12} {p50:>10} {p99:>10} {max:>10}", "COUNT", "ERRORS", "TOTAL(ms)")?;
        let scale = if self.millis { 1e6 } else { 1e3 };
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
                r.p50_ns as f64 / scale,
                r.p99_ns as f64 / scale,
                r.max_ns as f64 / scale
            )?;
        }
        writeln!(out)
    }

    fn json_row(&self, out: &mut impl Write, r: &Row) -> io::Result<()> {
        let line = JsonLine::new("syscall_stats").num("interval", self.printed);
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
            .boolean("max_exact", r.max_exact)
            .write_to(out)
    }
}

#[cfg(test)]
mod tests {
    use bpfstream::btf::Mirror;

    use super::*;
    use crate::objects;

    #[test]
    fn kernel_stats_mirror_the_struct_clang_laid_out() {
        for object in [objects::SYSCALLS.ring, objects::SYSCALLS.perf] {
            KernelStats::check_btf(object, "syscall_stats").unwrap();
            KernelCounts::check_btf(object, "syscall_counts").unwrap();
        }
    }

    #[test]
    fn a_row_takes_the_memory_the_tracing_line_states() {
        assert_eq!(std::mem::size_of::<KernelStats>().div_ceil(1024), 10, "9 KiB and a bit, per row and CPU");
        assert!(crate::tools::syscalls::SUMMARY_WHAT.contains("(9 KiB per row and CPU, up to 1024 rows)"));
    }

    fn cpu_row(durations: &[u64], errors: u64, comm: &[u8]) -> KernelStats {
        let counts = KernelCounts {
            count: durations.len() as u64,
            errors,
            total_ns: durations.iter().sum(),
            max_ns: durations.iter().copied().max().unwrap_or(0),
        };
        let mut row = KernelStats { counts, comm: [0; 16], buckets: [0; BUCKETS] };
        row.comm[..comm.len()].copy_from_slice(comm);
        for &d in durations {
            row.buckets[crate::histogram::bucket_of(d)] += 1;
        }
        row
    }

    #[test]
    fn rows_sum_cpus_and_intervals_are_differences() {
        let first = Cumulative::sum(&[cpu_row(&[1000, 1010], 1, b""), cpu_row(&[3000], 0, b"")], &[]);
        let row = row_between(110, GroupBy::Syscall, &first, None).unwrap();
        assert_eq!((row.label.as_str(), row.id, row.count, row.errors, row.total_ns), ("getppid", 110, 3, 1, 5010));
        assert_eq!((row.max_ns, row.max_exact), (3000, true));
        assert!((1000..=1016).contains(&row.p50_ns), "{}", row.p50_ns);
        assert_eq!(row.p99_ns, 3000);

        let second = Cumulative::sum(&[cpu_row(&[1000, 1010, 2000], 1, b""), cpu_row(&[3000], 0, b"")], &[]);
        let row = row_between(110, GroupBy::Syscall, &second, Some(&first)).unwrap();
        assert_eq!((row.count, row.errors, row.total_ns), (1, 0, 2000));
        assert!(!row.max_exact, "the maximum since attach (3000) is older");
        assert!((2000..=2000 + 2000 / 32).contains(&row.max_ns), "{}", row.max_ns);
        assert!(row.p50_ns <= row.max_ns && (row.p50_ns as f64 - 2000.0).abs() <= 2000.0 / 64.0);
        assert!(row_between(110, GroupBy::Syscall, &second, Some(&second)).is_none(), "nothing new");

        let unknown = row_between(u32::MAX, GroupBy::Syscall, &second, None).unwrap();
        assert_eq!((unknown.label.as_str(), unknown.id), ("syscall_-1", -1));
        let process = Cumulative::sum(&[cpu_row(&[5], 0, b""), cpu_row(&[5], 0, b"worker")], &[]);
        let row = row_between(4242, GroupBy::Process, &process, None).unwrap();
        assert_eq!((row.label.as_str(), row.id), ("worker", 4242));

        // Calls that found no row yet count in full, but for the histogram.
        let early = KernelCounts { count: 2, errors: 1, total_ns: 9_000, max_ns: 8_000 };
        let row = Cumulative::sum(&[cpu_row(&[1000], 0, b"")], &[early, KernelCounts::default()]);
        let row = row_between(0, GroupBy::Syscall, &row, None).unwrap();
        assert_eq!((row.count, row.errors, row.total_ns, row.max_ns), (3, 1, 10_000, 8_000));
        assert_eq!(row.p50_ns, 1000, "percentiles of the calls in the histogram");
        let only_early = row_between(7, GroupBy::Syscall, &Cumulative::sum(&[], &[early]), None).unwrap();
        assert_eq!((only_early.count, only_early.max_ns, only_early.p99_ns), (2, 8_000, 0));
    }

    fn row(id: i64, count: u64, total_ns: u128) -> Row {
        let label = id.to_string();
        Row { label, id, count, errors: 0, total_ns, p50_ns: 0, p99_ns: 0, max_ns: 0, max_exact: true }
    }

    #[test]
    fn rows_sort_by_time_or_count() {
        let mut rows = vec![row(1, 10, 500), row(2, 1, 9000), row(3, 10, 500), row(4, 20, 100)];
        sort_rows(&mut rows, SortBy::Time);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 1, 3, 4]);
        sort_rows(&mut rows, SortBy::Count);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [4, 1, 3, 2]);
    }

    #[test]
    fn json_rows_carry_the_contract_fields() {
        let mut writer = IntervalWriter { by: GroupBy::Syscall, json: true, top: None, millis: false, printed: 0 };
        let mut out = Vec::new();
        let mut r = row(110, 1, 500);
        r.label = "getppid".into();
        (r.p50_ns, r.p99_ns, r.max_ns) = (500, 500, 500);
        writer.write(&mut out, vec![r], Duration::from_secs(1)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"type":"syscall_interval","interval":1,"elapsed_s":1.000,"events":1,"rows":1,"percentile_error":0.016}"#
        );
        assert_eq!(
            lines[1],
            r#"{"type":"syscall_stats","interval":1,"syscall":"getppid","nr":110,"count":1,"errors":0,"total_ns":500,"p50_ns":500,"p99_ns":500,"max_ns":500,"max_exact":true}"#
        );
    }

    #[test]
    fn top_keeps_the_first_rows_and_millis_scales_the_table() {
        let mut writer = IntervalWriter { by: GroupBy::Syscall, json: false, top: Some(1), millis: true, printed: 0 };
        let mut out = Vec::new();
        let mut first = row(35, 1, 9_000_000);
        first.label = "nanosleep".into();
        first.max_ns = 9_000_000;
        writer.write(&mut out, vec![first, row(110, 1, 500)], Duration::from_secs(2)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "[2.0 s] 2 syscalls (percentiles within 1.6 %)");
        assert!(lines[1].starts_with("SYSCALL") && lines[1].ends_with("MAX(ms)"), "{}", lines[1]);
        assert!(lines[2].starts_with("nanosleep") && lines[2].ends_with(" 9.000"), "{}", lines[2]);
        assert_eq!(lines.len(), 4, "one row and a blank line: {text}");
    }
}
