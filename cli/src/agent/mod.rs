//! `bpfstream agent`: one process per host running many streams from a TOML file, one
//! exporter, Prometheus metrics (`crate::metrics`) and container identity (`--cgroup-path`).
//!
//! - `config`: the file, checked whole (`--check`) before anything is attached;
//! - `tracers`: each stream's `tracer` and `args`, parsed by the tracer's own command-line
//!   parser.
//!
//! - `streams`: the file run, every stream on the lifecycle's one `Poller`, by priority;
//! - `reload`: SIGHUP, the file read again and the difference applied.

// Until the run loop reads every field, `--check` reads only some.
#[allow(dead_code)]
mod config;
mod reload;
mod streams;
mod tracers;

use std::path::PathBuf;

pub use config::AgentConfig;
#[allow(unused_imports)] // the run loop's types
pub use config::{ConfigError, MetricsConfig, OutputConfig, StreamConfig};
#[allow(unused_imports)]
pub use tracers::TracerArgs;

/// `bpfstream agent --config FILE | --check FILE`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct AgentArgs {
    /// Run the streams of this TOML file ([output], [metrics], [[stream]]: README, "The agent")
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check this file and exit: 0 when valid, 2 with its line and the reason otherwise (the
    /// metrics address must be free)
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

impl AgentArgs {
    /// `--check` loads nothing: it needs no privilege.
    pub fn only_checks(&self) -> bool {
        self.check.is_some()
    }
}

/// Checks the file (a refusal exits 2); `--config` then runs it.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let path = args.config.as_ref().or(args.check.as_ref()).expect("clap requires one");
    let checked = AgentConfig::load(path).and_then(|config| config.bind_metrics().map(|bound| (config, bound)));
    let (config, metrics) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            eprintln_lossy!("bpfstream agent: {e}");
            std::process::exit(2);
        }
    };
    if args.check.is_some() {
        println!("{}", describe(&config));
        return Ok(());
    }
    streams::run(path, config, metrics)
}

/// `FILE: valid: 2 streams (exec: exec, slow: syscalls); output ...; metrics on ...`.
fn describe(config: &AgentConfig) -> String {
    let streams: Vec<String> = config.streams.iter().map(|s| format!("{}: {}", s.name, s.tracer.kind())).collect();
    let output =
        config.output.as_ref().map_or("JSON lines on stdout".to_string(), |o| format!("output {}", o.endpoint));
    let metrics = config.metrics.map_or("no metrics".to_string(), |m| format!("metrics on {}", m.listen));
    format!("{}: valid: {} streams ({}); {output}; {metrics}", config.file, streams.len(), streams.join(", "))
}
