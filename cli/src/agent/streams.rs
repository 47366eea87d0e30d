//! A valid file run: every `[[stream]]` a plan of its tracer, made as the tracer's own command
//! makes it, named and prioritized, all of them started together (nothing attached unless every
//! one loaded) and served by the lifecycle's one poller until SIGINT/SIGTERM, then one summary
//! per stream on stdout.

use anyhow::Result;

use super::config::{AgentConfig, StreamConfig};
use crate::lifecycle::{run_plans, Console, StreamPlan};
use crate::signals::StoppedAtStart;

/// Runs the streams of `config` until stopped.
pub fn run(config: AgentConfig) -> Result<()> {
    if let Some(output) = &config.output {
        anyhow::bail!(
            "{}:{}: [output] is checked but not run by this build: remove it for JSON lines on stdout",
            config.file,
            output.line
        );
    }
    crate::writer::start()?;
    let console = Console::process();
    let plans = config.streams.into_iter().map(plan).collect::<Result<Vec<_>>>();
    match plans.and_then(|plans| run_plans(plans, None, &console)) {
        Err(e) => match e.downcast_ref::<StoppedAtStart>() {
            Some(stopped) => eprintln_lossy!("bpfstream agent: stopped while {}: nothing was traced", stopped.during),
            None => return Err(e),
        },
        Ok(_summaries) => {}
    }
    console.check()
}

/// A stream as its tracer's command makes it, its events JSON lines on stdout.
fn plan(stream: StreamConfig) -> Result<StreamPlan<'static>> {
    let StreamConfig { name, mut tracer, priority, .. } = stream;
    tracer.common_mut().json = true;
    Ok(tracer.plan()?.named(&name, priority))
}
