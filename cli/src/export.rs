//! `--output URL`: every event's JSON line also goes to Kafka or NATS JetStream
//! (`bpfstream-export`), counted as `exported` only once the engine acknowledged it. A tracer's
//! printer holds a [`Tee`]: it builds each event's JSON line when either stdout (`--json`) or
//! the exporter wants it, reports export losses as they happen, and after the drain hands the
//! summary its [`ExportSummary`].

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use bpfstream_export::{
    Connection, Endpoint, ErrorReporter, ExportConfig, ExportError, ExportStats, Exporter, Identity,
};

use crate::output::{display_bytes, JsonLine};
use crate::signals::StoppedAtStart;

/// `--output` and `--output-option` (every tracer).
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Also ship every event's JSON line to kafka://HOST:PORT/TOPIC or nats://HOST:PORT/SUBJECT
    /// (JetStream); an event counts as exported only once the engine acknowledged it
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub output: Option<Endpoint>,
    /// A KEY=VALUE option of --output (repeatable): queue=N, in_flight=N, connect=fail|retry,
    /// connect_timeout=DURATION (how long the start waits for the engine: connection, greeting,
    /// TLS, stream or topic; default 3s), flush_timeout=DURATION (the final flush shares the 1 s
    /// stop by default: what is not acknowledged then is export_unflushed; e.g. flush_timeout=30s
    /// waits longer), create=true|false (also makes the stream or topic again if it
    /// disappears); NATS: stream, storage, user, password, token, creds, tls, tls_ca, tls_cert,
    /// tls_key (these turn TLS on); Kafka: any librdkafka property (compression.type, linger.ms,
    /// batch.size, security.protocol, sasl.*, ssl.*), partitions, replication_factor. Refused:
    /// what would make exported mean less than acknowledged (acks other than all,
    /// enable.idempotence=false, ack_timeout=0, bootstrap.servers: brokers go in the URL)
    #[arg(long = "output-option", value_name = "KEY=VALUE", requires = "output")]
    pub output_options: Vec<String>,
}

fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    text.parse().map_err(|e: bpfstream_export::ExportError| e.to_string())
}

/// How often at most a `lost` line reports events that could not be exported.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Sends each event's JSON line to stdout (`--json`) and/or the exporter.
#[derive(Debug)]
pub struct Tee {
    json: bool,
    /// `--output` until [`connect`] gives it its exporter.
    wanted: Option<OutputArgs>,
    exporter: Option<Exporter>,
    /// Delivered records that could not be decoded into a JSON line (so never offered).
    unencoded: u64,
    reported_failed: u64,
    last_report: Instant,
    /// The stream's name, which its `lost` lines carry.
    stream: Option<std::sync::Arc<str>>,
    /// Its map, when a run streams several of one object, which its `lost` lines carry too.
    map: Option<String>,
}

impl Tee {
    /// Stdout with `--json`, and the `--output` exporter once [`connect`] connected it.
    pub fn new(args: &OutputArgs, json: bool) -> Self {
        let wanted = args.output.is_some().then(|| args.clone());
        let last_report = Instant::now();
        Tee { json, wanted, exporter: None, unencoded: 0, reported_failed: 0, last_report, stream: None, map: None }
    }

    /// Names the stream whose events these are, and their map when several stream.
    pub fn set_names(&mut self, stream: Option<std::sync::Arc<str>>, map: Option<&str>) {
        self.stream = stream;
        self.map = map.map(str::to_owned);
    }

    /// Whether events' lines go to stdout (`--json`).
    pub fn writes_stdout(&self) -> bool {
        self.json
    }

    /// Whether events need their JSON line.
    pub fn active(&self) -> bool {
        self.json || self.exporter.is_some() || self.wanted.is_some()
    }

    /// One event: its line to stdout with `--json`, and (without the newline) to the exporter.
    pub fn emit(&mut self, out: &mut impl Write, line: JsonLine) -> io::Result<()> {
        let mut text = line.finish();
        if let Some(exporter) = &mut self.exporter {
            exporter.send(text.as_bytes());
        }
        let written = if self.json {
            text.push('\n');
            out.write_all(text.as_bytes())
        } else {
            Ok(())
        };
        JsonLine::recycle(text);
        written
    }

    /// A delivered record that had no JSON line (malformed): not exported.
    pub fn unencoded(&mut self) {
        self.unencoded += u64::from(self.exporter.is_some());
    }

    /// At most once per second: a `lost` line (JSON) or `Lost N events` on stderr when events
    /// failed to export since the last report.
    pub fn tick(&mut self, out: &mut impl Write) -> io::Result<()> {
        let Some(exporter) = &self.exporter else { return Ok(()) };
        if self.last_report.elapsed() < REPORT_INTERVAL {
            return Ok(());
        }
        self.last_report = Instant::now();
        let stats = exporter.stats();
        let failed = stats.export_failed() + self.unencoded;
        let count = failed - self.reported_failed;
        if count == 0 {
            return Ok(());
        }
        self.reported_failed = failed;
        if self.json {
            let line = match &self.stream {
                Some(name) => JsonLine::new("lost").str("stream", name),
                None => JsonLine::new("lost"),
            };
            let line = match &self.map {
                Some(map) => line.str("map", map),
                None => line,
            };
            let line = line.num("count", count).str("cause", "export");
            return stats_fields(line, &stats, self.unencoded).write_to(out);
        }
        let stream = self.stream.as_ref().map(|name| format!("{name}: ")).unwrap_or_default();
        let map = self.map.as_ref().map(|map| format!("map {map}: ")).unwrap_or_default();
        eprintln_lossy!(
            "{stream}{map}Lost {count} events exporting to {}: {} exported, {} export_failed so far ({} queue full)",
            display_bytes(exporter.endpoint().to_string().as_bytes()),
            stats.exported,
            failed,
            stats.queue_full
        );
        Ok(())
    }

    /// The accounting so far (`None` without `--output`).
    pub fn so_far(&self) -> Option<ExportSummary> {
        let exporter = self.exporter.as_ref()?;
        let endpoint = exporter.endpoint().to_string();
        let connection = exporter.connection();
        Some(ExportSummary { endpoint, stats: exporter.stats(), unencoded: self.unencoded, connection })
    }

    /// After the drain: the final flush until `deadline` (the stop's budget; the
    /// `flush_timeout` option replaces it), then the accounting.
    pub fn finish(&mut self, deadline: Instant) -> Option<ExportSummary> {
        let exporter = self.exporter.take()?;
        let endpoint = exporter.endpoint().to_string();
        let connection = exporter.connection();
        Some(ExportSummary { endpoint, stats: exporter.finish_by(deadline), unencoded: self.unencoded, connection })
    }
}

/// Connects the `--output` of every tee that has one: one connection per engine and options,
/// shared by the tees that ship to it, each to its own topic or subject with its own queue and
/// accounting. Bad options exit 2 like any usage error; an engine that cannot be reached is an
/// error (unless `connect=retry`); a stop signal meanwhile ends the start at once
/// ([`StoppedAtStart`](crate::signals::StoppedAtStart)).
pub fn connect<'t>(tees: impl IntoIterator<Item = &'t mut Tee>) -> Result<()> {
    let mut engines: Vec<(OutputArgs, Vec<String>, Vec<&mut Tee>)> = Vec::new();
    for tee in tees {
        let Some(wanted) = tee.wanted.take() else { continue };
        let destination = wanted.output.as_ref().map_or_else(String::new, |e| e.destination().to_owned());
        match engines.iter_mut().find(|(args, ..)| same_engine(args, &wanted)) {
            Some((_, destinations, tees)) => {
                destinations.push(destination);
                tees.push(tee);
            }
            None => engines.push((wanted, vec![destination], vec![tee])),
        }
    }
    for (args, destinations, tees) in engines {
        for (tee, exporter) in tees.into_iter().zip(start_exporters(&args, destinations)?) {
            tee.exporter = Some(exporter);
        }
    }
    Ok(())
}

fn same_engine(a: &OutputArgs, b: &OutputArgs) -> bool {
    let (Some(x), Some(y)) = (&a.output, &b.output) else { return false };
    x.same_engine(y) && a.output_options == b.output_options
}

/// One connection to `args`' engine, an exporter for each of `destinations`.
fn start_exporters(args: &OutputArgs, destinations: Vec<String>) -> Result<Vec<Exporter>> {
    let endpoint = args.output.as_ref().expect("a tee that wants an output has one");
    let mut config = ExportConfig::new(endpoint.clone(), Identity::of_this_process());
    let configured = args.output_options.iter().try_for_each(|option| config.set_text(option));
    let routes = destinations.into_iter().map(|d| (d, report_errors())).collect();
    let exporters = configured.and_then(|()| Exporter::start_shared(config, routes, &crate::signals::stop_requested));
    let url = display_bytes(endpoint.to_string().as_bytes());
    match exporters {
        Ok(exporters) => Ok(exporters),
        Err(e) if e.is_usage() => clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit(),
        Err(ExportError::Cancelled) => Err(StoppedAtStart { during: format!("connecting to {url}") }.into()),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("--output {url}"))),
    }
}

/// Publishing errors on stderr.
fn report_errors() -> ErrorReporter {
    Box::new(|error: &str| eprintln_lossy!("bpfstream: export: {error}"))
}

/// `exported`, `export_failed` and their breakdown.
fn stats_fields(line: JsonLine, stats: &ExportStats, unencoded: u64) -> JsonLine {
    line.num("exported", stats.exported)
        .num("export_failed", stats.export_failed() + unencoded)
        .num("export_queue_full", stats.queue_full)
        .num("export_rejected", stats.rejected)
        .num("export_unflushed", stats.unflushed)
        .num("export_unencoded", unencoded)
        .num("export_retries", stats.retries)
}

/// The exporter's part of a tracer's summary.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub endpoint: String,
    pub stats: ExportStats,
    pub unencoded: u64,
    /// The client's connection to its engine then (after the drain: as the final flush began).
    pub connection: Connection,
}

impl ExportSummary {
    pub fn exported(&self) -> u64 {
        self.stats.exported
    }

    pub fn export_failed(&self) -> u64 {
        self.stats.export_failed() + self.unencoded
    }

    /// The summary object's fields.
    pub fn json(&self, line: JsonLine) -> JsonLine {
        stats_fields(line.str("output", &self.endpoint), &self.stats, self.unencoded)
    }

    /// The summary line's part (the URL escaped as a table's text: a subject may hold any
    /// character, a bidi control too).
    pub fn text(&self) -> String {
        let s = &self.stats;
        format!(
            "; {} exported to {}, {} export_failed ({} queue full, {} rejected, {} unflushed, {} unencoded), {} retries",
            s.exported,
            display_bytes(self.endpoint.as_bytes()),
            self.export_failed(),
            s.queue_full,
            s.rejected,
            s.unflushed,
            self.unencoded,
            s.retries
        )
    }

    /// Delivered events neither exported nor counted as export_failed (always 0).
    pub fn unaccounted(&self, delivered: u64) -> i128 {
        i128::from(delivered) - i128::from(self.exported()) - i128::from(self.export_failed())
    }
}
