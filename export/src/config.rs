//! What an exporter needs: where to, who is sending, and the `key=value` options of
//! `--output-option`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Endpoint, ExportError};

/// What to do when the engine does not answer at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectPolicy {
    /// Fail at once with a clear error (the default).
    Fail,
    /// Start anyway and keep trying in the background; events queue meanwhile (and count as
    /// `queue_full` when the queue is full).
    Retry,
}

/// Who sends: the key and headers of every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The host name (the message key).
    pub host: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// This run: the start time in nanoseconds since the epoch and the process id.
    pub run: String,
}

impl Identity {
    /// This host, booted kernel and process.
    pub fn of_this_process() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default();
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        Identity {
            host: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            run: format!("{started}-{}", std::process::id()),
        }
    }

    /// The identity of the `index`-th destination (from 0) of a shared connection: a run of
    /// its own, since each destination numbers its events from 1 (`RUN`, then `RUN.1`, ...).
    pub(crate) fn of_destination(&self, index: usize) -> Self {
        let run = if index == 0 { self.run.clone() } else { format!("{}.{index}", self.run) };
        Identity { run, ..self.clone() }
    }
}

/// An exporter's configuration: [`ExportConfig::new`], then [`ExportConfig::set`] for each
/// `key=value` option.
///
/// Options of every engine: `queue` (events between the tracer and the client, default
/// 262144) and `queue_bytes` (their bytes, default 64 MiB: whichever bound is reached first
/// counts the next event `queue_full`), `in_flight` (published and not yet acknowledged, default 8192), `connect`
/// (`fail` or `retry`), `connect_timeout` (how long the whole start may wait for the engine:
/// connection, greeting, TLS handshake, stream or topic lookup and creation; default 3 s),
/// `flush_timeout` (the final flush's deadline: by default the caller's,
/// see [`Exporter::finish_by`](crate::Exporter::finish_by), or 5 s), `create`
/// (`true`/`false`: create the stream (NATS, default true) or the topic (Kafka, default false)
/// when none exists, at start and whenever it disappears). NATS: `stream` (the name of a stream to create), `storage`
/// (`file`/`memory`), `duplicate_window`, `ack_timeout`, `user`, `password`, `token`, `creds`,
/// `tls` (`true`), `tls_ca`, `tls_cert`, `tls_key`. Kafka: `partitions` and
/// `replication_factor` (topic creation) and any librdkafka producer property
/// (`compression.type`, `linger.ms`, `batch.size`, `security.protocol`, `sasl.mechanism`,
/// `sasl.username`, `ssl.ca.location`, ...). Options that would let `exported` mean less than
/// acknowledged are refused (see [`ExportError::Option`](crate::ExportError::Option)).
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub endpoint: Endpoint,
    pub identity: Identity,
    pub queue: usize,
    pub queue_bytes: usize,
    pub in_flight: usize,
    pub connect: ConnectPolicy,
    /// How long the start may wait for the engine, all steps together.
    pub connect_timeout: Duration,
    /// `None`: the caller's deadline ([`Exporter::finish_by`](crate::Exporter::finish_by)),
    /// or 5 s ([`Exporter::finish`](crate::Exporter::finish)).
    pub flush_timeout: Option<Duration>,
    /// `None`: the engine's default (NATS creates a stream, Kafka does not create topics).
    pub create: Option<bool>,
    /// Options for the engine's client, checked when it starts.
    pub engine: Vec<(String, String)>,
}

impl ExportConfig {
    pub fn new(endpoint: Endpoint, identity: Identity) -> Self {
        ExportConfig {
            endpoint,
            identity,
            queue: 262_144,
            queue_bytes: 64 << 20,
            in_flight: 8_192,
            connect: ConnectPolicy::Fail,
            connect_timeout: Self::CONNECT_TIMEOUT,
            flush_timeout: None,
            create: None,
            engine: Vec::new(),
        }
    }

    /// The start's deadline without the `connect_timeout` option.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

    /// Applies one `key=value` option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ExportError> {
        match key {
            "queue" => self.queue = parse_count(key, value)?,
            "queue_bytes" => self.queue_bytes = parse_count(key, value)?,
            "in_flight" => self.in_flight = parse_count(key, value)?,
            "flush_timeout" => self.flush_timeout = Some(parse_duration(key, value)?),
            "connect_timeout" => self.connect_timeout = parse_positive_duration(key, value)?,
            "create" => self.create = Some(parse_bool(key, value)?),
            "connect" => {
                self.connect = match value {
                    "fail" => ConnectPolicy::Fail,
                    "retry" => ConnectPolicy::Retry,
                    _ => return Err(ExportError::Option(format!("connect={value:?}: use fail or retry"))),
                }
            }
            _ => self.engine.push((key.to_string(), value.to_string())),
        }
        Ok(())
    }

    /// Applies `key=value` text (as given to `--output-option`).
    pub fn set_text(&mut self, option: &str) -> Result<(), ExportError> {
        match option.split_once('=') {
            Some((key, value)) if !key.is_empty() => self.set(key, value),
            _ => Err(ExportError::Option(format!("{option:?} is not key=value"))),
        }
    }
}

fn parse_count(key: &str, value: &str) -> Result<usize, ExportError> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ExportError::Option(format!("{key}={value:?}: give a positive count"))),
    }
}

pub(crate) fn parse_bool(key: &str, value: &str) -> Result<bool, ExportError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ExportError::Option(format!("{key}={value:?}: give true or false"))),
    }
}

/// `250ms`, `5s`, `2m` or plain seconds (`1.5`).
pub(crate) fn parse_duration(key: &str, value: &str) -> Result<Duration, ExportError> {
    let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => f64::NAN,
    };
    match number.parse::<f64>().map(|n| n * scale) {
        Ok(secs) if (0.0..1e9).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(ExportError::Option(format!("{key}={value:?}: give a duration such as 500ms, 5s or 2m"))),
    }
}

/// A duration that is not zero (a zero deadline would fail or time out everything).
pub(crate) fn parse_positive_duration(key: &str, value: &str) -> Result<Duration, ExportError> {
    match parse_duration(key, value)? {
        d if d.is_zero() => Err(ExportError::Option(format!("{key}={value:?}: give a duration above zero"))),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ExportConfig {
        ExportConfig::new("nats://h:1/s".parse().unwrap(), Identity::of_this_process())
    }

    #[test]
    fn options_set_the_exporter_or_pass_to_the_engine() {
        let mut c = config();
        for o in [
            "queue=10",
            "queue_bytes=4096",
            "connect=retry",
            "connect_timeout=10s",
            "flush_timeout=250ms",
            "create=false",
            "linger.ms=5",
        ] {
            c.set_text(o).unwrap();
        }
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!((c.queue, c.queue_bytes, c.connect, c.create), (10, 4096, ConnectPolicy::Retry, Some(false)));
        assert_eq!(c.flush_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.engine, vec![("linger.ms".to_string(), "5".to_string())]);
        for bad in [
            "queue=0",
            "queue=x",
            "queue_bytes=0",
            "connect=maybe",
            "flush_timeout=5h",
            "connect_timeout=0",
            "connect_timeout=0ms",
            "create=perhaps",
            "novalue",
            "=v",
        ] {
            assert!(config().set_text(bad).unwrap_err().is_usage(), "{bad}");
        }
    }

    #[test]
    fn identity_names_host_boot_and_run() {
        let id = Identity::of_this_process();
        assert!(!id.host.is_empty() && id.boot_id.len() == 36, "{id:?}");
        assert!(id.run.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(id.of_destination(0), id);
        assert_eq!(id.of_destination(2).run, format!("{}.2", id.run));
    }
}
