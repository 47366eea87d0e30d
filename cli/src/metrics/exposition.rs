//! The registry in Prometheus' text exposition format (version 0.0.4): for each metric a
//! `# HELP` and a `# TYPE` line, then its samples, `name{label="value",...} number`. Counters end
//! in `_total`; every stream's series has a `stream` label.
//!
//! With an exporter: exported + export_failed (every cause) + export_unflushed + dropped =
//! produced, per stream, once the stream has stopped; without one: delivered + dropped =
//! produced, and unwritten counts what stdout never took.

use std::fmt::Write;

use super::process::ProcessStats;
use super::registry::{ExportLink, Registry, StreamCounters};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric of every stream: name, type, help, and its value in a snapshot (and whether the
/// stream is attached).
type PerStream = (&'static str, &'static str, &'static str, fn(&StreamCounters, bool) -> f64);

const PER_STREAM: [PerStream; 8] = [
    (
        "bpfstream_events_produced_total",
        "counter",
        "Events the BPF side tried to send (delivered, dropped or still in the buffer).",
        |c, _| c.produced as f64,
    ),
    ("bpfstream_events_delivered_total", "counter", "Events read from the buffer.", |c, _| c.delivered as f64),
    (
        "bpfstream_events_dropped_total",
        "counter",
        "Events that could not be written into the buffer (ring full, perf lost).",
        |c, _| c.dropped as f64,
    ),
    ("bpfstream_events_unwritten_total", "counter", "Delivered events whose line stdout never took.", |c, _| {
        c.unwritten as f64
    }),
    ("bpfstream_events_exported_total", "counter", "Events the engine acknowledged.", |c, _| c.exported as f64),
    (
        "bpfstream_export_unflushed_total",
        "counter",
        "Events still unacknowledged when the final flush ended.",
        |c, _| c.export_unflushed as f64,
    ),
    ("bpfstream_buffer_fill_ratio", "gauge", "How full the stream's buffer was at its last read, 0 to 1.", |c, _| {
        c.buffer_fill_ratio
    }),
    ("bpfstream_stream_attached", "gauge", "1 while the stream's programs are attached.", |_, attached| {
        f64::from(u8::from(attached))
    }),
];

/// A metric of every stream with an exporter: name, type, help, and its value in a snapshot.
type PerExporter = (&'static str, &'static str, &'static str, fn(&StreamCounters) -> f64);

const PER_EXPORTER: [PerExporter; 3] = [
    ("bpfstream_export_connected", "gauge", "1 while the stream's exporter is connected to its engine.", |c| {
        f64::from(u8::from(c.export_link == ExportLink::Connected))
    }),
    (
        "bpfstream_export_queue_depth",
        "gauge",
        "Events handed to the stream's exporter, not yet acknowledged or failed.",
        |c| c.export_queue_depth as f64,
    ),
    (
        "bpfstream_export_reconnects_total",
        "counter",
        "Times the stream's exporter connected again after losing its engine, or replaced its client.",
        |c| c.export_reconnects as f64,
    ),
];

/// A cause of `bpfstream_export_failed_total` and its count in a snapshot.
type Cause = (&'static str, fn(&StreamCounters) -> u64);

const FAILED_CAUSES: [Cause; 3] = [
    ("queue_full", |c| c.export_queue_full),
    ("rejected", |c| c.export_rejected),
    ("unencoded", |c| c.export_unencoded),
];

/// The whole `/metrics` page.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    let streams: Vec<(String, StreamCounters, bool)> = {
        let cells = registry.streams.read().unwrap_or_else(|e| e.into_inner());
        cells.iter().map(|s| (label_value(&s.name), s.read(), s.detached_reason().is_none())).collect()
    };
    for (name, kind, help, value) in PER_STREAM {
        header(&mut out, name, kind, help);
        for (stream, counters, attached) in &streams {
            sample(&mut out, name, &format!("stream=\"{stream}\""), value(counters, *attached));
        }
    }
    let name = "bpfstream_export_failed_total";
    header(&mut out, name, "counter", "Delivered events that were not exported, by cause (unflushed apart).");
    for (stream, counters, _) in &streams {
        for (cause, value) in FAILED_CAUSES {
            sample(&mut out, name, &format!("stream=\"{stream}\",cause=\"{cause}\""), value(counters) as f64);
        }
    }
    exporters(&mut out, &streams);
    process(&mut out);
    header(&mut out, "bpfstream_build_info", "gauge", "Always 1: the version of the running agent.");
    sample(&mut out, "bpfstream_build_info", &format!("version=\"{}\"", label_value(&registry.version)), 1.0);
    out
}

/// The exporter's series of the streams that have one (label value, snapshot, attached).
fn exporters(out: &mut String, streams: &[(String, StreamCounters, bool)]) {
    let exporting: Vec<_> = streams.iter().filter(|(_, c, _)| c.export_link != ExportLink::NoExporter).collect();
    for (name, kind, help, value) in PER_EXPORTER {
        header(out, name, kind, help);
        for (stream, counters, _) in &exporting {
            sample(out, name, &format!("stream=\"{stream}\""), value(counters));
        }
    }
}

/// The standard `process_*` metrics.
fn process(out: &mut String) {
    let Some(p) = ProcessStats::now() else { return };
    let metrics = [
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", p.resident_bytes as f64),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.virtual_bytes as f64),
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", p.cpu_seconds),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        ("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds as f64),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds as f64),
    ];
    for (name, kind, help, value) in metrics {
        header(out, name, kind, help);
        sample(out, name, "", value);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ =
        if labels.is_empty() { writeln!(out, "{name} {value}") } else { writeln!(out, "{name}{{{labels}}} {value}") };
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label_value(text: &str) -> String {
    text.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_follows_the_text_format() {
        let registry = Registry::new("1.2.3");
        let mut exec = registry.add_stream("exec").unwrap();
        let _other = registry.add_stream("we\"ird\\").unwrap();
        exec.set_attached();
        let counters = StreamCounters {
            produced: 10,
            delivered: 7,
            dropped: 3,
            export_rejected: 2,
            buffer_fill_ratio: 0.25,
            export_queue_depth: 5,
            export_reconnects: 1,
            export_link: ExportLink::NotConnected,
            ..Default::default()
        };
        exec.publish(&counters);
        let page = render(&registry);
        for line in [
            "# TYPE bpfstream_events_produced_total counter",
            "bpfstream_events_produced_total{stream=\"exec\"} 10",
            "bpfstream_events_dropped_total{stream=\"exec\"} 3",
            "bpfstream_events_produced_total{stream=\"we\\\"ird\\\\\"} 0",
            "bpfstream_export_failed_total{stream=\"exec\",cause=\"rejected\"} 2",
            "bpfstream_buffer_fill_ratio{stream=\"exec\"} 0.25",
            "bpfstream_stream_attached{stream=\"exec\"} 1",
            "bpfstream_stream_attached{stream=\"we\\\"ird\\\\\"} 0",
            "bpfstream_export_queue_depth{stream=\"exec\"} 5",
            "bpfstream_export_reconnects_total{stream=\"exec\"} 1",
            "bpfstream_export_connected{stream=\"exec\"} 0",
            "# TYPE process_cpu_seconds_total counter",
            "bpfstream_build_info{version=\"1.2.3\"} 1",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in:\n{page}");
        }
        assert!(!page.contains("bpfstream_export_connected{stream=\"we"), "no exporter, no exporter series:\n{page}");
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let kind = page.lines().find_map(|l| l.strip_prefix(&format!("# TYPE {name} "))).unwrap();
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{line}");
        }
    }
}
