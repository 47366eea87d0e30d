//! SIGHUP: the agent reads its file again, checks it whole as `--check` does (its metrics
//! address may be the one already bound), and applies the difference between rounds of the one
//! poller:
//!
//! - a stream of the same name, written the same (tracer, args, priority, topic) and exporting to
//!   the same `[output]` (URL and options) keeps running: its programs attached, its buffer,
//!   its place in it and its counts; its summary at the stop covers the whole run;
//! - a stream no longer in the file stops as at the stop (detach, exact drain, its summary now);
//!   a changed one stops so, then starts as written now; a changed `[output]` changes every
//!   stream that exports;
//! - a new stream starts alone: one that cannot load, attach or connect is one line naming it,
//!   nothing of it attached, the others run on, and `/healthz` says 503 naming it until a
//!   reload starts it (each reload tries it again) or removes it;
//! - a changed `[metrics]` address: the old server is closed and the new one bound.
//!
//! A file that is not valid changes nothing: one line on stderr, and the running configuration
//! stays. A stop during a reload is honoured once the stopping streams' drain is over (itself
//! bounded) and before the next stream to start loads.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use bpfstream_export::Endpoint;

use super::config::{AgentConfig, ConfigError, MetricsConfig, OutputConfig, StreamConfig, StreamDefinition};
use super::streams::{plan, serve_metrics};
use crate::lifecycle::{start_plans, Console, RunningStreams};
use crate::metrics::{MetricsServer, Registry};
use crate::signals::{self, Signal};

/// A running stream as its file wrote it, with the exporter it was started with.
#[derive(Debug, PartialEq)]
pub(super) struct Written {
    definition: StreamDefinition,
    output: Option<(Endpoint, Vec<(String, String)>)>,
}

impl Written {
    pub(super) fn of(stream: &StreamConfig, output: Option<&OutputConfig>) -> Self {
        let output = output.map(|o| (o.endpoint.clone(), o.options.clone()));
        Written { definition: stream.definition().clone(), output }
    }
}

/// The agent once started: its file, what runs of it, and the metrics server.
pub(super) struct Agent {
    pub(super) file: PathBuf,
    pub(super) written: Vec<Written>,
    pub(super) running: RunningStreams,
    pub(super) metrics: Option<MetricsConfig>,
    pub(super) registry: Arc<Registry>,
    pub(super) server: Option<MetricsServer>,
}

impl Agent {
    /// Serves the streams until SIGINT/SIGTERM, reloading the file at each SIGHUP, then stops
    /// them all (each one's summary).
    pub(super) fn run(mut self, console: &Console) -> Result<()> {
        let served = loop {
            let hangup = self.running.serve(None, console, &|| signals::take(Signal::Hangup));
            match hangup.and_then(|reload| if reload { self.reload(console).map(|()| true) } else { Ok(false) }) {
                Ok(true) => continue,
                ended => break ended,
            }
        };
        let stopped = self.running.stop_all(console);
        served?;
        stopped.map(drop)
    }

    /// Applies the file as it is now, or refuses it in one line.
    fn reload(&mut self, console: &Console) -> Result<()> {
        let (config, listener) = match self.check() {
            Ok(checked) => checked,
            Err(e) => {
                eprintln_lossy!("bpfstream agent: reload refused: {e}; still running the previous configuration");
                return Ok(());
            }
        };
        let wanted: Vec<Written> = config.streams.iter().map(|s| Written::of(s, config.output.as_ref())).collect();
        let stopping: Vec<&str> =
            self.written.iter().filter(|w| !wanted.contains(w)).map(|w| w.definition.name()).collect();
        let stopped = stopping.len();
        self.running.stop(&stopping, console)?;
        self.written.retain(|w| wanted.contains(w));
        let kept = self.written.len();
        self.rebind(config.metrics, listener)?;
        let started = self.start_new(config, console);
        eprintln_lossy!(
            "bpfstream agent: reloaded {}: kept {kept}, started {started}, stopped {stopped}",
            self.file.display()
        );
        Ok(())
    }

    /// The file, checked whole; its metrics address bound unless it is the one in use.
    fn check(&self) -> Result<(AgentConfig, Option<TcpListener>), ConfigError> {
        let config = AgentConfig::load(&self.file)?;
        let bound = self.server.as_ref().map(MetricsServer::address);
        let listener = match config.metrics {
            Some(m) if Some(m.listen) == bound || Some(m.listen) == self.metrics.map(|old| old.listen) => None,
            _ => config.bind_metrics()?,
        };
        Ok((config, listener))
    }

    /// Closes the metrics server if `[metrics]` is gone, or moves it to `listener`, newly bound.
    fn rebind(&mut self, metrics: Option<MetricsConfig>, listener: Option<TcpListener>) -> Result<()> {
        if metrics.is_none() || listener.is_some() {
            self.server = None;
        }
        if let Some(listener) = listener {
            self.server = Some(serve_metrics(listener, &self.registry)?);
        }
        self.metrics = metrics;
        Ok(())
    }

    /// Starts each stream of `config` not running yet, alone; returns how many started. Those
    /// that did not are unhealthy until a reload starts or removes them.
    fn start_new(&mut self, config: AgentConfig, console: &Console) -> usize {
        let output = config.output.as_ref();
        let mut started = 0;
        let mut not_started = Vec::new();
        for stream in config.streams {
            let written = Written::of(&stream, output);
            if self.written.contains(&written) {
                continue;
            }
            if signals::stop_requested() {
                break;
            }
            let name = stream.name.clone();
            match plan(stream, output, &self.registry).and_then(|plan| start_plans(vec![plan], console)) {
                Ok(streams) => {
                    self.running.add(streams);
                    self.written.push(written);
                    started += 1;
                }
                Err(e) => {
                    let reason = crate::limits::explain(&e);
                    eprintln_lossy!("bpfstream agent: stream {name:?} not started: {reason}; the others run on");
                    not_started.push((name, reason));
                }
            }
        }
        self.registry.set_not_started(not_started);
        started
    }
}
