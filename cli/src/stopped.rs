//! The summary of a tracer that a stop signal ended during its start (connecting to an engine,
//! loading its programs), before its first event: the stop is honoured like any other, with a
//! summary of what happened (nothing: 0 events, 0 produced) where the run's would have gone,
//! and exit 0.

use std::time::{Duration, Instant};

use bpfstream_export::{Connection, ExportStats};
use clap::ValueEnum;

use crate::export::ExportSummary;
use crate::lifecycle::CommonArgs;
use crate::output::{display_bytes, JsonLine};
use crate::writer::{stderr_queue, stdout_queue};

/// How long the empty summary may wait for a blocked stdout before it goes to stderr.
const SUMMARY_WAIT: Duration = Duration::from_millis(300);

/// Prints the empty summary of a run of `args` stopped while `during`, `elapsed` after it began.
pub fn print_summary(args: &CommonArgs, during: &str, elapsed: Duration) {
    let export = args.output.output.as_ref().map(|endpoint| ExportSummary {
        endpoint: endpoint.to_string(),
        stats: ExportStats::default(),
        unencoded: 0,
        connection: Connection::default(),
    });
    let by = Instant::now() + SUMMARY_WAIT;
    if args.json {
        let buffer = args.buffer.and_then(|b| b.to_possible_value()).map_or("ring".into(), |v| v.get_name().to_owned());
        let mut line = JsonLine::new("summary")
            .num("events", 0)
            .num("dropped", 0)
            .num("unwritten", 0)
            .num("produced", 0)
            .num("unaccounted", 0)
            .str("buffer", &buffer)
            .num("buffer_bytes", 0);
        if let Some(export) = &export {
            line = export.json(line);
        }
        let line = line.str("stopped_at_start", during).num("bytes", 0).float("duration_s", elapsed.as_secs_f64());
        let line = line.float("events_per_sec", 0.0).finish_line();
        if !stdout_queue().write_by(line.clone(), by) {
            stderr_queue().write_by(line, by);
        }
        return;
    }
    let exported = export.as_ref().map(ExportSummary::text).unwrap_or_default();
    let text = format!(
        "0 events, 0 dropped in {:.1} s; produced 0{exported}; stopped while {}: nothing was traced\n",
        elapsed.as_secs_f64(),
        display_bytes(during.as_bytes())
    );
    stderr_queue().write_by(text.into_bytes(), by);
}
