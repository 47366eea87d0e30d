//! A valid file run: every `[[stream]]` a plan of its tracer, made as the tracer's own command
//! makes it, named and prioritized, all of them started together (nothing attached unless every
//! one loaded) and served by the lifecycle's one poller until SIGINT/SIGTERM, then one summary
//! per stream on stdout. With `[metrics]`, the server answers from before the first stream
//! starts until the last one's summary is published. SIGHUP reloads the file (`reload`).

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::config::{AgentConfig, OutputConfig, StreamConfig};
use super::reload::{Agent, Written};
use crate::lifecycle::{start_plans, Console, RunningStreams, StreamPlan};
use crate::metrics::{MetricsServer, Registry};
use crate::signals::StoppedAtStart;

/// Runs the streams of `config` (read from `file`) until stopped, reloading the file on SIGHUP,
/// with the metrics server on `metrics` (bound when the file was checked).
pub fn run(file: &Path, config: AgentConfig, metrics: Option<TcpListener>) -> Result<()> {
    crate::writer::start()?;
    let console = Console::process();
    let registry = Registry::new(env!("CARGO_PKG_VERSION"));
    let server = metrics.map(|listener| serve_metrics(listener, &registry)).transpose()?;
    let output = config.output.as_ref();
    let written = config.streams.iter().map(|s| Written::of(s, output)).collect();
    let plans = config.streams.into_iter().map(|s| plan(s, output, &registry)).collect::<Result<Vec<_>>>();
    match plans.and_then(|plans| start_plans(plans, &console)) {
        Err(e) => match e.downcast_ref::<StoppedAtStart>() {
            Some(stopped) => eprintln_lossy!("bpfstream agent: stopped while {}: nothing was traced", stopped.during),
            None => return Err(e),
        },
        Ok(streams) => {
            let running = RunningStreams::new(streams);
            let file = file.to_owned();
            Agent { file, written, running, metrics: config.metrics, registry, server }.run(&console)?;
        }
    }
    console.check()
}

/// The metrics server on `listener`, said on stderr.
pub(super) fn serve_metrics(listener: TcpListener, registry: &Arc<Registry>) -> Result<MetricsServer> {
    let server = MetricsServer::start(listener, registry.clone())?;
    eprintln_lossy!("Metrics on http://{}/metrics, health on /healthz", server.address());
    Ok(server)
}

/// A stream as its tracer's command makes it, its events JSON lines to `output` (to the
/// stream's topic, on the connection every stream started with it shares: made when they
/// start) or stdout, its counters in `registry`.
pub(super) fn plan(
    stream: StreamConfig,
    output: Option<&OutputConfig>,
    registry: &Arc<Registry>,
) -> Result<StreamPlan<'static>> {
    let StreamConfig { name, mut tracer, priority, topic, .. } = stream;
    let common = tracer.common_mut();
    match output {
        None => common.json = true,
        Some(o) => {
            common.output.output = Some(o.endpoint_for(topic.as_deref())?);
            common.output.output_options = o.option_args();
        }
    }
    let metrics = registry.add_stream(&name).ok_or_else(|| anyhow!("stream {name:?} is in the metrics twice"))?;
    let plan = tracer.plan()?.named(&name, priority).measured(metrics);
    Ok(if output.is_some() { plan.export_only() } else { plan })
}
