//! What the agent's tests share: its files, and reading its output.

use std::io::{Read, Write};
use std::path::PathBuf;

use super::{deadline, temp_dir, Running};

/// Writes `text` to a file `name` of a directory of its own.
pub fn write(name: &str, text: &str) -> PathBuf {
    let path = temp_dir(&format!("agent-{name}")).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (up to 60 s, scaled) until `agent` printed `lines` lines.
pub fn wait_for_lines(agent: &Running, lines: usize) {
    let deadline = deadline(std::time::Duration::from_secs(60));
    while agent.lines_so_far() < lines && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The summary line of `stream`, which must be the only one.
pub fn summary_of<'a>(lines: &'a [serde_json::Value], stream: &str) -> &'a serde_json::Value {
    let summaries: Vec<_> = lines.iter().filter(|l| l["type"] == "summary" && l["stream"] == stream).collect();
    assert_eq!(summaries.len(), 1, "one summary of {stream}: {lines:?}");
    summaries[0]
}

/// The counts `keys` of a summary.
pub fn counts(summary: &serde_json::Value, keys: &[&str]) -> Vec<u64> {
    keys.iter().map(|k| summary[k].as_u64().unwrap_or_else(|| panic!("{k} in {summary}"))).collect()
}

/// `GET path` over HTTP/1.0: (status, body).
pub fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_string())
}
