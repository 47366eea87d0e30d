//! Where events go: `kafka://HOST:PORT[,HOST:PORT...]/TOPIC` or `nats://HOST:PORT/SUBJECT`.

use std::fmt;
use std::str::FromStr;

use crate::ExportError;

/// The engine an [`Exporter`](crate::Exporter) ships to, parsed from an `--output` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Kafka topic on one or more bootstrap brokers.
    Kafka { brokers: Vec<String>, topic: String },
    /// A NATS subject, published through JetStream.
    Nats { server: String, subject: String },
}

impl Endpoint {
    /// `kafka` or `nats`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Endpoint::Kafka { .. } => "kafka",
            Endpoint::Nats { .. } => "nats",
        }
    }

    /// The topic or subject.
    pub fn destination(&self) -> &str {
        match self {
            Endpoint::Kafka { topic, .. } => topic,
            Endpoint::Nats { subject, .. } => subject,
        }
    }

    /// Whether `other` is on the same engine (brokers or server), whatever its destination.
    pub fn same_engine(&self, other: &Endpoint) -> bool {
        match (self, other) {
            (Endpoint::Kafka { brokers, .. }, Endpoint::Kafka { brokers: others, .. }) => brokers == others,
            (Endpoint::Nats { server, .. }, Endpoint::Nats { server: other, .. }) => server == other,
            _ => false,
        }
    }

    /// The same engine, with `destination` as its topic or subject (checked as in a URL).
    pub fn with_destination(&self, destination: &str) -> Result<Endpoint, ExportError> {
        let url = match self {
            Endpoint::Kafka { brokers, .. } => format!("kafka://{}/{destination}", brokers.join(",")),
            Endpoint::Nats { server, .. } => format!("nats://{server}/{destination}"),
        };
        url.parse()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Kafka { brokers, topic } => write!(f, "kafka://{}/{topic}", brokers.join(",")),
            Endpoint::Nats { server, subject } => write!(f, "nats://{server}/{subject}"),
        }
    }
}

fn bad(url: &str, why: impl fmt::Display) -> ExportError {
    ExportError::Url(format!("{url:?}: {why}"))
}

/// `HOST:PORT` with a host name, an IPv4 address or a bracketed IPv6 address (`[::1]:4222`),
/// and a port from 1 to 65535.
fn host_port(url: &str, text: &str) -> Result<String, ExportError> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad(url, format!("{text:?} has no :PORT")))?;
    if !valid_host(host) {
        return Err(bad(
            url,
            format!("{host:?} is not a host name (labels of 1-63 of A-Z a-z 0-9 - _, 253 in all), an IPv4 address or an [IPv6] address"),
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_string()),
        _ => Err(bad(url, format!("{port:?} is not a port (1-65535)"))),
    }
}

/// A DNS name (RFC 1123 labels; `_` too, as container networks use it), an IPv4 address (which
/// has the same shape) or an IPv6 address in brackets.
fn valid_host(host: &str) -> bool {
    if let Some(inside) = host.strip_prefix('[') {
        return inside.strip_suffix(']').is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (1..=253).contains(&host.len()) && host.split('.').all(label_ok)
}

/// A Kafka topic name: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_topic(url: &str, topic: &str) -> Result<(), ExportError> {
    let charset = topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if topic.is_empty() || topic.len() > 249 || !charset || topic == "." || topic == ".." {
        return Err(bad(url, format!("{topic:?} is not a Kafka topic (1-249 of A-Z a-z 0-9 . _ -)")));
    }
    Ok(())
}

/// A NATS subject to publish to: dot-separated non-empty tokens, no wildcards or spaces.
fn check_subject(url: &str, subject: &str) -> Result<(), ExportError> {
    let token_ok = |t: &str| !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|b| b <= b' ' || b == 0x7f);
    if !subject.split('.').all(token_ok) {
        return Err(bad(
            url,
            format!("{subject:?} is not a NATS subject to publish to (tokens like a.b.c, no wildcards)"),
        ));
    }
    Ok(())
}

impl FromStr for Endpoint {
    type Err = ExportError;

    fn from_str(url: &str) -> Result<Self, ExportError> {
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| bad(url, "use kafka://HOST:PORT/TOPIC or nats://HOST:PORT/SUBJECT"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| bad(url, format!("no /{} after the address", destination_word(scheme))))?;
        match scheme {
            "kafka" => {
                let brokers = authority.split(',').map(|b| host_port(url, b)).collect::<Result<Vec<_>, _>>()?;
                check_topic(url, path)?;
                Ok(Endpoint::Kafka { brokers, topic: path.to_string() })
            }
            "nats" => {
                let server = host_port(url, authority)?;
                check_subject(url, path)?;
                Ok(Endpoint::Nats { server, subject: path.to_string() })
            }
            other => Err(bad(url, format!("unknown scheme {other:?}: use kafka:// or nats://"))),
        }
    }
}

fn destination_word(scheme: &str) -> &'static str {
    if scheme == "nats" {
        "SUBJECT"
    } else {
        "TOPIC"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints() {
        let k: Endpoint = "kafka://127.0.0.1:9092,b2:9093/bpf.events-1".parse().unwrap();
        assert_eq!(
            k,
            Endpoint::Kafka { brokers: vec!["127.0.0.1:9092".into(), "b2:9093".into()], topic: "bpf.events-1".into() }
        );
        let n: Endpoint = "nats://localhost:4222/bpf.events".parse().unwrap();
        assert_eq!(n, Endpoint::Nats { server: "localhost:4222".into(), subject: "bpf.events".into() });
        assert_eq!(n.to_string(), "nats://localhost:4222/bpf.events");
        assert_eq!(k.with_destination("other").unwrap().to_string(), "kafka://127.0.0.1:9092,b2:9093/other");
        assert!(n.with_destination("a.*").is_err(), "a destination is checked as in a URL");
        assert!(n.same_engine(&n.with_destination("other").unwrap()) && !n.same_engine(&k));
        for good in ["nats://[::1]:4222/s", "nats://nats_1.svc-a.example:4222/s", "kafka://10.0.0.1:9092/t"] {
            assert!(good.parse::<Endpoint>().is_ok(), "{good}");
        }
        let long = format!("nats://{}:4222/s", vec!["a".repeat(63); 4].join("."));
        assert!(long.parse::<Endpoint>().unwrap_err().to_string().contains("not a host"), "255 characters");
        let long_label = format!("nats://{}:4222/s", "a".repeat(64));
        assert!(long_label.parse::<Endpoint>().is_err());
        let host_1200 = format!("nats://{}:4222/s", "h".repeat(1200));
        assert!(host_1200.parse::<Endpoint>().is_err());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("http://h:1/t", "unknown scheme"),
            ("kafka:/h:1/t", "use kafka://"),
            ("kafka://h:1", "no /TOPIC"),
            ("kafka://h/t", "no :PORT"),
            ("kafka://h:0/t", "not a port"),
            ("kafka://h:70000/t", "not a port"),
            ("kafka://:9092/t", "not a host"),
            ("nats://[::1:14222/x", "not a host"),
            ("nats://::1:14222/x", "not a host"),
            ("nats://[::g]:14222/x", "not a host"),
            ("nats://a..b:1/x", "not a host"),
            ("nats://-a:1/x", "not a host"),
            ("nats://a b:1/x", "not a host"),
            ("kafka://h:1/", "not a Kafka topic"),
            ("kafka://h:1/a/b", "not a Kafka topic"),
            ("nats://h:1/a.*", "not a NATS subject"),
            ("nats://h:1/a..b", "not a NATS subject"),
            ("nats://h:1/", "not a NATS subject"),
        ] {
            let err = url.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
