//! The agent's TOML file, checked whole before anything is attached: every key known, every
//! stream's `args` accepted by its tracer's parser, names unique, the output URL, its options
//! and each stream's topic valid, the metrics address one that parses (and binds, by
//! [`AgentConfig::bind_metrics`]). A refusal is one line: `FILE:LINE: reason`.
//!
//! ```toml
//! [output]                                   # optional: without it, JSON lines on stdout
//! url = "kafka://127.0.0.1:9092/bpf"
//! options = { "linger.ms" = "20" }
//!
//! [metrics]                                  # optional: without it, no metrics server
//! listen = "127.0.0.1:9464"                  # the default when [metrics] has no listen
//!
//! [[stream]]
//! name = "exec"                              # unique; [A-Za-z0-9_.-], up to 64
//! tracer = "exec"                            # exec | open | syscalls
//! args = ["-x"]                              # the tracer's own flags
//! priority = 10                              # default 0; higher is served first
//! topic = "bpf.exec"                         # with [output]: this stream's topic or subject
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::path::Path;

use bpfstream_export::{Endpoint, ExportConfig, Identity};
use serde::Deserialize;
use toml::Spanned;

use super::tracers::{self, TracerArgs};

/// Where `[metrics]` listens when it names no address: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// The longest stream name.
const MAX_NAME: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    output: Option<Spanned<OutputToml>>,
    metrics: Option<Spanned<MetricsToml>>,
    #[serde(default)]
    stream: Vec<Spanned<StreamToml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputToml {
    url: Spanned<String>,
    #[serde(default)]
    options: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsToml {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamToml {
    name: Spanned<String>,
    tracer: Spanned<String>,
    args: Option<Spanned<Vec<String>>>,
    priority: Option<Spanned<i32>>,
    topic: Option<Spanned<String>>,
}

/// A refusal: the file, the line (when one is to blame) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `[output]`: the one exporter every stream shares.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub endpoint: Endpoint,
    /// `key=value` options, each checked by [`ExportConfig::set`] (engine properties, such as
    /// librdkafka's, are checked by the client when it starts).
    pub options: Vec<(String, String)>,
    pub line: usize,
}

impl OutputConfig {
    /// The endpoint of a stream's events: the URL's, with `topic` as its topic or subject.
    pub fn endpoint_for(&self, topic: Option<&str>) -> Result<Endpoint, bpfstream_export::ExportError> {
        topic.map_or_else(|| Ok(self.endpoint.clone()), |topic| self.endpoint.with_destination(topic))
    }

    /// The options as `--output-option KEY=VALUE` takes them.
    pub fn option_args(&self) -> Vec<String> {
        self.options.iter().map(|(key, value)| format!("{key}={value}")).collect()
    }

    /// The exporter's configuration, for this host and process.
    pub fn export_config(&self) -> ExportConfig {
        let mut config = ExportConfig::new(self.endpoint.clone(), Identity::of_this_process());
        for (key, value) in &self.options {
            // Checked when the file was read.
            let _ = config.set(key, value);
        }
        config
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    pub line: usize,
}

/// A `[[stream]]` as written, to tell a changed stream from one that stays (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDefinition {
    name: String,
    tracer: String,
    args: Vec<String>,
    priority: i32,
    topic: Option<String>,
}

impl StreamDefinition {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One `[[stream]]`, its `args` parsed by its tracer's parser.
#[derive(Debug)]
pub struct StreamConfig {
    pub name: String,
    pub tracer: TracerArgs,
    /// Higher is served first (the `Poller`'s priority).
    pub priority: i32,
    /// With `[output]`: the topic or subject of this stream's events (`None`: the URL's).
    pub topic: Option<String>,
    /// The line of its `name`.
    pub line: usize,
    definition: StreamDefinition,
}

impl StreamConfig {
    /// The stream as written: equal for the same name, tracer, args, priority and topic.
    pub fn definition(&self) -> &StreamDefinition {
        &self.definition
    }
}

/// A whole, valid agent file.
#[derive(Debug)]
pub struct AgentConfig {
    /// The file, as named on the command line (for messages).
    pub file: String,
    pub output: Option<OutputConfig>,
    pub metrics: Option<MetricsConfig>,
    pub streams: Vec<StreamConfig>,
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&file, &text),
            Err(e) => Err(ConfigError { file, line: None, reason: format!("cannot read it: {e}") }),
        }
    }

    /// Checks the text of a file named `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let at = |span: Range<usize>, reason: String| ConfigError {
            file: file.to_string(),
            line: Some(line_of(text, span.start)),
            reason,
        };
        let toml: FileToml = toml::from_str(text).map_err(|e| {
            let reason = e.message().trim_end().replace('\n', "; ");
            match e.span() {
                Some(span) => at(span, reason),
                None => ConfigError { file: file.to_string(), line: None, reason },
            }
        })?;
        let output = toml.output.map(|o| output(o.into_inner(), text, &at)).transpose()?;
        let metrics = toml.metrics.map(|m| metrics(m, text, &at)).transpose()?;
        if toml.stream.is_empty() {
            let reason = "no [[stream]]: give at least one (name, tracer, args)".to_string();
            return Err(ConfigError { file: file.to_string(), line: None, reason });
        }
        let mut streams: Vec<StreamConfig> = Vec::new();
        for stream in toml.stream {
            let stream = self::stream(stream.into_inner(), output.as_ref(), text, &at)?;
            if let Some(first) = streams.iter().find(|s| s.name == stream.name) {
                let reason = format!(
                    "stream name {:?} is already used at line {}: names must be unique",
                    stream.name, first.line
                );
                return Err(ConfigError { file: file.to_string(), line: Some(stream.line), reason });
            }
            streams.push(stream);
        }
        Ok(AgentConfig { file: file.to_string(), output, metrics, streams })
    }

    /// Binds the metrics address (`None` without `[metrics]`); an address in use or not of
    /// this host is a refusal at `[metrics]`' line.
    pub fn bind_metrics(&self) -> Result<Option<TcpListener>, ConfigError> {
        let Some(metrics) = self.metrics else { return Ok(None) };
        crate::metrics::bind(metrics.listen).map(Some).map_err(|e| ConfigError {
            file: self.file.clone(),
            line: Some(metrics.line),
            reason: format!("metrics address {}: {e}", metrics.listen),
        })
    }
}

type At<'a> = &'a dyn Fn(Range<usize>, String) -> ConfigError;

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn output(toml: OutputToml, text: &str, at: At<'_>) -> Result<OutputConfig, ConfigError> {
    let url = toml.url;
    let endpoint: Endpoint = url.get_ref().parse().map_err(|e| at(url.span(), format!("[output] url: {e}")))?;
    let mut check = ExportConfig::new(endpoint.clone(), Identity::of_this_process());
    let mut options = Vec::new();
    for (key, value) in toml.options {
        let span = value.span();
        let value = match value.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(at(span, format!("[output] option {key:?}: {other} is not a string, integer or boolean")))
            }
        };
        check.set(&key, &value).map_err(|e| at(span.clone(), format!("[output] options: {e}")))?;
        options.push((key, value));
    }
    Ok(OutputConfig { endpoint, options, line: line_of(text, url.span().start) })
}

fn metrics(toml: Spanned<MetricsToml>, text: &str, at: At<'_>) -> Result<MetricsConfig, ConfigError> {
    let section = toml.span();
    let (listen, span) = match toml.into_inner().listen {
        Some(listen) => (listen.get_ref().clone(), listen.span()),
        None => (DEFAULT_METRICS_LISTEN.to_string(), section),
    };
    let address = listen.parse::<SocketAddr>().map_err(|_| {
        at(span.clone(), format!("[metrics] listen {listen:?}: give IP:PORT, e.g. 127.0.0.1:9464 or [::1]:9464"))
    })?;
    Ok(MetricsConfig { listen: address, line: line_of(text, span.start) })
}

fn stream(
    toml: StreamToml,
    output: Option<&OutputConfig>,
    text: &str,
    at: At<'_>,
) -> Result<StreamConfig, ConfigError> {
    let name = toml.name.get_ref().clone();
    let valid_name = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if name.is_empty() || name.len() > MAX_NAME || !valid_name {
        return Err(at(toml.name.span(), format!("stream name {name:?}: 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -")));
    }
    let args = toml.args.map(|a| (a.span(), a.into_inner()));
    let (args_span, args) = args.unwrap_or_else(|| (toml.tracer.span(), Vec::new()));
    let tracer = tracers::parse(toml.tracer.get_ref(), &args).map_err(|reason| {
        let span = if reason.starts_with("unknown tracer") { toml.tracer.span() } else { args_span };
        at(span, format!("stream {name:?}: {reason}"))
    })?;
    let topic = match toml.topic {
        Some(topic) => Some(check_topic(&topic, output, &name, at)?),
        None => None,
    };
    let priority = toml.priority.map_or(0, |p| p.into_inner());
    let tracer_name = toml.tracer.into_inner();
    let definition = StreamDefinition { name: name.clone(), tracer: tracer_name, args, priority, topic: topic.clone() };
    Ok(StreamConfig { name, tracer, priority, topic, line: line_of(text, toml.name.span().start), definition })
}

/// A stream's `topic`: a topic or subject the `[output]` engine takes.
fn check_topic(
    topic: &Spanned<String>,
    output: Option<&OutputConfig>,
    name: &str,
    at: At<'_>,
) -> Result<String, ConfigError> {
    let Some(output) = output else {
        return Err(at(topic.span(), format!("stream {name:?}: topic without [output]: give an [output] url")));
    };
    match output.endpoint_for(Some(topic.get_ref())) {
        Ok(_) => Ok(topic.get_ref().clone()),
        Err(e) => Err(at(topic.span(), format!("stream {name:?}: topic: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[output]                                   # optional; per-stream `topic` overrides its topic/subject
url = "kafka://127.0.0.1:9092/bpf"
options = { "linger.ms" = "20", queue = 1000 }

[metrics]
listen = "127.0.0.1:9464"

[[stream]]
name = "exec"
tracer = "exec"
args = ["-x"]
priority = 10
topic = "bpf.exec"

[[stream]]
name = "slow"
tracer = "syscalls"
args = ["--min-duration", "10ms"]
"#;

    fn refused(text: &str) -> String {
        AgentConfig::parse("agent.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_is_valid() {
        let config = AgentConfig::parse("agent.toml", EXAMPLE).unwrap();
        let output = config.output.as_ref().unwrap();
        assert_eq!(output.endpoint.to_string(), "kafka://127.0.0.1:9092/bpf");
        assert_eq!(output.line, 3);
        assert_eq!(output.export_config().queue, 1000);
        assert_eq!(config.metrics, Some(MetricsConfig { listen: "127.0.0.1:9464".parse().unwrap(), line: 7 }));
        let [exec, slow] = &config.streams[..] else { panic!() };
        assert_eq!(
            (exec.name.as_str(), exec.priority, exec.topic.as_deref(), exec.line),
            ("exec", 10, Some("bpf.exec"), 10)
        );
        assert!(matches!(&exec.tracer, TracerArgs::Exec(a) if a.failed));
        assert!(matches!(&slow.tracer, TracerArgs::Syscalls(a) if a.min_duration.is_some()));
        assert_eq!((slow.priority, slow.topic.as_deref()), (0, None));
        let again = AgentConfig::parse("agent.toml", EXAMPLE).unwrap();
        assert!(exec.definition() == again.streams[0].definition() && exec.definition() != slow.definition());
        let changed = AgentConfig::parse("agent.toml", &EXAMPLE.replace("\"-x\"", "\"-x\", \"-U\"")).unwrap();
        assert!(exec.definition() != changed.streams[0].definition());
        assert!(slow.definition() == changed.streams[1].definition());
    }

    #[test]
    fn bad_input_is_one_line_with_its_line() {
        let cases = [
            (EXAMPLE.replace("priority = 10", "priority = 10\ncolour = 1"), "agent.toml:14: unknown field `colour`"),
            (
                EXAMPLE.replace("name = \"slow\"", "name = \"exec\""),
                "agent.toml:17: stream name \"exec\" is already used at line 10",
            ),
            (
                EXAMPLE.replace("\"-x\"", "\"-x\", \"--min-duration\", \"1ms\""),
                "agent.toml:12: stream \"exec\": unexpected argument '--min-duration'",
            ),
            (
                EXAMPLE.replace("\"10ms\"", "\"10ms\", \"--json\""),
                "agent.toml:19: stream \"slow\": --json is the agent's",
            ),
            (
                EXAMPLE.replace("\"10ms\"", "\"10ms\", \"-d\", \"5\""),
                "agent.toml:19: stream \"slow\": -d/--duration is the agent's",
            ),
            (
                EXAMPLE.replace("tracer = \"exec\"", "tracer = \"exce\""),
                "agent.toml:11: stream \"exec\": unknown tracer \"exce\"",
            ),
            (
                EXAMPLE.replace("kafka://127.0.0.1:9092/bpf", "kafka://127.0.0.1/bpf"),
                "agent.toml:3: [output] url: bad output URL",
            ),
            (
                EXAMPLE.replace("queue = 1000", "queue = 0"),
                "agent.toml:4: [output] options: bad output option: queue=\"0\"",
            ),
            (EXAMPLE.replace("queue = 1000", "queue = [1]"), "agent.toml:4: [output] option \"queue\": [1] is not"),
            (EXAMPLE.replace("\"bpf.exec\"", "\"bpf exec\""), "agent.toml:14: stream \"exec\": topic: bad output URL"),
            (
                EXAMPLE.replace("127.0.0.1:9464", "localhost:9464"),
                "agent.toml:7: [metrics] listen \"localhost:9464\": give IP:PORT",
            ),
            (
                EXAMPLE.replace("name = \"slow\"", "name = \"slow one\""),
                "agent.toml:17: stream name \"slow one\": 1 to 64",
            ),
            (
                EXAMPLE.replace("priority = 10", "priority = \"high\""),
                "agent.toml:13: invalid type: string \"high\", expected i32",
            ),
            (EXAMPLE.replace("[output]", "[outptu]"), "agent.toml:2: unknown field `outptu`"),
            (EXAMPLE.replace("tracer = \"syscalls\"", ""), "agent.toml:16: missing field `tracer`"),
            ("[output\n".to_string(), "agent.toml:1: "),
            ("[metrics]\n".to_string(), "agent.toml: no [[stream]]"),
        ];
        for (text, expected) in cases {
            let error = refused(&text);
            assert!(error.starts_with(expected), "expected {expected:?}, got {error:?}");
            assert!(!error.contains('\n'), "{error}");
        }
        let no_output = format!("[metrics]{}", EXAMPLE.split("[metrics]").nth(1).unwrap());
        assert!(
            refused(&no_output).starts_with("agent.toml:9: stream \"exec\": topic without [output]"),
            "{}",
            refused(&no_output)
        );
    }

    #[test]
    fn metrics_listen_on_loopback_by_default() {
        let config = AgentConfig::parse("a", "[metrics]\n[[stream]]\nname = \"e\"\ntracer = \"exec\"\n").unwrap();
        assert_eq!(config.metrics.unwrap().listen, DEFAULT_METRICS_LISTEN.parse().unwrap());
        let config = AgentConfig::parse("a", "[[stream]]\nname = \"e\"\ntracer = \"exec\"\n").unwrap();
        assert!(config.metrics.is_none() && config.output.is_none());
    }

    #[test]
    fn an_address_in_use_is_refused_at_its_line() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let text = format!(
            "[[stream]]\nname = \"e\"\ntracer = \"exec\"\n[metrics]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        );
        let error = AgentConfig::parse("a", &text).unwrap().bind_metrics().unwrap_err().to_string();
        assert!(error.starts_with("a:5: metrics address 127.0.0.1:") && error.contains("in use"), "{error}");
        drop(taken);
    }
}
