//! Loss as it happens. While a tracer runs, the records its buffer could not take are reported
//! at most once per [`REPORT_INTERVAL`]: one `lost` JSON line per CPU that lost some on stdout
//! (`{"type":"lost","count":N,"cpu":C,"total":T,"elapsed_s":S}`), or one `Lost N events` line on
//! stderr in table mode, like bpftrace and perf. The final summary still totals everything.
//!
//! It also follows bursts of loss (losses less than [`BURST_GAP`] apart), to say after the run
//! which `--buffer-size` would have held the worst one: the buffer was full while a burst lost
//! records, so it needed about its size plus the bytes of the records it lost.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use bpfstream::Dropped;

use crate::export::ExportSummary;
use crate::output::JsonLine;

/// At most one report per interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Losses closer together than this belong to one burst. Drop counters are read every 100 ms,
/// so one burst spans several readings.
const BURST_GAP: Duration = Duration::from_millis(300);

/// Largest buffer `--buffer-size` takes.
const MAX_BUFFER_SIZE: u64 = 1 << 30;

/// Loss reports of one run.
#[derive(Debug)]
pub struct LossReport {
    json: bool,
    /// The stream's name, which its reports carry (`"stream"`, or before `Lost` on stderr).
    stream: Option<std::sync::Arc<str>>,
    /// Perf buffers are one per CPU, so a burst fills one CPU's buffer; a ring is shared.
    per_cpu_buffers: bool,
    started: Instant,
    last_report: Option<Instant>,
    /// Lost since the last report, per CPU (`None`: not known).
    pending: BTreeMap<Option<u32>, u64>,
    total: u64,
    /// The burst in progress, per buffer, and when it last lost records.
    burst: BTreeMap<Option<u32>, u64>,
    burst_last: Option<Instant>,
    /// Most records one buffer lost in one burst.
    worst_burst: u64,
}

impl LossReport {
    pub fn new(json: bool, per_cpu_buffers: bool, stream: Option<std::sync::Arc<str>>) -> Self {
        LossReport {
            json,
            stream,
            per_cpu_buffers,
            started: Instant::now(),
            last_report: None,
            pending: BTreeMap::new(),
            total: 0,
            burst: BTreeMap::new(),
            burst_last: None,
            worst_burst: 0,
        }
    }

    pub fn add(&mut self, lost: &Dropped, now: Instant) {
        if lost.count == 0 {
            return;
        }
        if self.burst_last.is_some_and(|t| now.duration_since(t) > BURST_GAP) {
            self.burst.clear();
        }
        *self.pending.entry(lost.cpu).or_default() += lost.count;
        self.total += lost.count;
        let buffer = if self.per_cpu_buffers { lost.cpu } else { None };
        let burst = self.burst.entry(buffer).or_default();
        *burst += lost.count;
        self.worst_burst = self.worst_burst.max(*burst);
        self.burst_last = Some(now);
    }

    /// Reports what was lost since the last report, if an interval has passed since it (or
    /// `now` is the end of the run).
    /// With `--output`, each report carries the exporter's accounting so far (`export`).
    pub fn report(
        &mut self,
        now: Instant,
        end: bool,
        out: &mut impl Write,
        export: Option<&ExportSummary>,
    ) -> io::Result<()> {
        let due = end || self.last_report.is_none_or(|t| now.duration_since(t) >= REPORT_INTERVAL);
        if self.pending.is_empty() || !due {
            return Ok(());
        }
        self.last_report = Some(now);
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let pending = std::mem::take(&mut self.pending);
        if self.json {
            for (cpu, count) in pending {
                let line = JsonLine::new("lost");
                let line = match &self.stream {
                    Some(name) => line.str("stream", name),
                    None => line,
                };
                let line = line.num("count", count);
                let line = match cpu {
                    Some(cpu) => line.num("cpu", cpu),
                    None => line,
                };
                let line = line.num("total", self.total).float("elapsed_s", elapsed);
                let line = match export {
                    Some(export) => export.json(line),
                    None => line,
                };
                line.write_to(out)?;
            }
            return out.flush();
        }
        let count: u64 = pending.values().sum();
        let cpus: Vec<String> = pending.iter().filter_map(|(cpu, n)| cpu.map(|c| format!("CPU {c}: {n}"))).collect();
        let detail = if cpus.len() > 1 { format!(" ({})", cpus.join(", ")) } else { String::new() };
        let exported = export.map(ExportSummary::text).unwrap_or_default();
        let stream = self.stream.as_ref().map(|name| format!("{name}: ")).unwrap_or_default();
        writeln!(out, "{stream}Lost {count} events{detail} at {elapsed:.1} s; {} lost so far{exported}", self.total)?;
        out.flush()
    }

    /// Most records one buffer lost in one burst (0: nothing was lost).
    pub fn worst_burst(&self) -> u64 {
        self.worst_burst
    }
}

/// The `--buffer-size` that would have held a burst that lost `lost` records of about
/// `record_bytes` each from a full buffer of `size` bytes (per CPU for perf): a power of two,
/// `None` beyond the largest buffer (the consumer cannot keep up, whatever the buffer).
pub fn buffer_for_burst(size: u64, lost: u64, record_bytes: u64) -> Option<u64> {
    // + 8: the ring's record header (perf's is 8 bytes too, plus a 4-byte size).
    let needed = size.checked_add(lost.checked_mul(record_bytes.checked_add(8)?)?)?.checked_next_power_of_two()?;
    (needed <= MAX_BUFFER_SIZE).then_some(needed)
}

/// The summary's words on the worst burst: `; --buffer-size 8M would have held ...`.
pub fn burst_text(lost: u64, buffer_size: Option<u64>) -> String {
    match buffer_size {
        Some(size) => format!("; --buffer-size {} would have held the worst burst ({lost} lost)", size_arg(size)),
        None => format!("; no buffer would have held the worst burst ({lost} lost): the reader fell behind"),
    }
}

/// `8M`: a power-of-two size as `--buffer-size` takes it.
fn size_arg(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfstream::DropOrigin;

    fn lost(count: u64, cpu: u32) -> Dropped {
        Dropped { count, cpu: Some(cpu), origin: DropOrigin::DropCounter }
    }

    #[test]
    fn reports_at_most_once_per_interval_per_cpu() {
        let mut report = LossReport::new(true, false, None);
        let t0 = report.started;
        let mut out = Vec::new();
        report.add(&lost(5, 0), t0);
        report.report(t0, false, &mut out, None).unwrap();
        report.add(&lost(2, 1), t0 + Duration::from_millis(100));
        report.add(&lost(3, 1), t0 + Duration::from_millis(200));
        report.report(t0 + Duration::from_millis(200), false, &mut out, None).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text, "{\"type\":\"lost\",\"count\":5,\"cpu\":0,\"total\":5,\"elapsed_s\":0.000}\n", "not yet due");
        report.report(t0 + Duration::from_millis(1000), false, &mut out, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().nth(1),
            Some("{\"type\":\"lost\",\"count\":5,\"cpu\":1,\"total\":10,\"elapsed_s\":1.000}")
        );
        let mut out = Vec::new();
        report.report(t0 + Duration::from_millis(3000), true, &mut out, None).unwrap();
        assert!(out.is_empty(), "nothing new to report");
    }

    #[test]
    fn a_named_stream_says_its_name_on_every_report() {
        let mut report = LossReport::new(true, false, Some("exec".into()));
        let t0 = report.started;
        let mut out = Vec::new();
        report.add(&lost(5, 0), t0);
        report.report(t0, false, &mut out, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"lost\",\"stream\":\"exec\",\"count\":5,\"cpu\":0,\"total\":5,\"elapsed_s\":0.000}\n"
        );
        let mut report = LossReport::new(false, false, Some("exec".into()));
        let mut out = Vec::new();
        report.add(&lost(5, 0), t0);
        report.report(t0, true, &mut out, None).unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("exec: Lost 5 events at "));
    }

    #[test]
    fn bursts_are_per_buffer_and_end_after_a_gap() {
        let t0 = Instant::now();
        let mut ring = LossReport::new(false, false, None);
        ring.add(&lost(100, 0), t0);
        ring.add(&lost(50, 1), t0 + Duration::from_millis(100));
        ring.add(&lost(10, 0), t0 + Duration::from_secs(5));
        assert_eq!(ring.worst_burst(), 150, "one shared ring: the CPUs' losses add up");
        let mut perf = LossReport::new(false, true, None);
        perf.add(&lost(100, 0), t0);
        perf.add(&lost(50, 1), t0 + Duration::from_millis(100));
        perf.add(&lost(70, 1), t0 + Duration::from_millis(200));
        assert_eq!(perf.worst_burst(), 120, "per-CPU buffers: the worst CPU");
    }

    #[test]
    fn buffer_for_a_burst() {
        assert_eq!(buffer_for_burst(256 << 10, 4096, 56), Some(512 << 10));
        assert_eq!(buffer_for_burst(256 << 10, 100_000, 56), Some(8 << 20));
        assert_eq!(buffer_for_burst(1 << 30, 1, 56), None);
        assert_eq!(buffer_for_burst(4096, u64::MAX, 56), None);
        assert_eq!(burst_text(7, Some(8 << 20)), "; --buffer-size 8M would have held the worst burst (7 lost)");
        assert_eq!(size_arg(1 << 30), "1G");
        assert_eq!(size_arg(512 << 10), "512K");
    }
}
