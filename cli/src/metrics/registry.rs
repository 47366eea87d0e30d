//! What `/metrics` and `/healthz` read: each stream's counters, written by the thread that
//! serves the stream and read by the metrics server's thread.
//!
//! A stream's counters are published whole, as one snapshot, under a sequence lock: a scrape
//! never sees `delivered` of one snapshot next to `produced` of another (so
//! delivered + dropped <= produced holds in every scrape, and = at stop). The writer pays a few
//! plain stores per publish, no lock; a reader retries in the rare case a publish overlapped.
//!
//! ```text
//! StreamCell   seq: u64       even: stable; odd: a publish is under way
//!              words: [u64; WORDS]   the counters of StreamCounters, in field order
//! ```

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A stream's accounting, as the lifecycle knows it at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamCounters {
    /// What the BPF side tried to send (delivered + dropped, and what is still in the buffer).
    pub produced: u64,
    pub delivered: u64,
    /// Could not be written into the buffer (ring full, perf lost).
    pub dropped: u64,
    /// Delivered, but stdout never took their line (agent without `[output]`).
    pub unwritten: u64,
    /// Acknowledged by the engine.
    pub exported: u64,
    pub export_queue_full: u64,
    pub export_rejected: u64,
    /// Delivered records that had no JSON line to export (malformed).
    pub export_unencoded: u64,
    /// Still unacknowledged when the final flush ended.
    pub export_unflushed: u64,
    /// How full the buffer was at the last poll, 0 to 1.
    pub buffer_fill_ratio: f64,
    /// Events handed to the exporter, not yet acknowledged or failed.
    pub export_queue_depth: u64,
    /// Times the exporter's client connected again after losing its engine (or was replaced).
    pub export_reconnects: u64,
    pub export_link: ExportLink,
}

/// A stream's exporter and its connection to its engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportLink {
    /// Events go to stdout: no exporter series, nothing for `/healthz` to check.
    #[default]
    NoExporter,
    Connected,
    NotConnected,
}

impl ExportLink {
    fn to_word(self) -> u64 {
        match self {
            ExportLink::NoExporter => 0,
            ExportLink::Connected => 1,
            ExportLink::NotConnected => 2,
        }
    }

    fn from_word(word: u64) -> Self {
        match word {
            1 => ExportLink::Connected,
            2 => ExportLink::NotConnected,
            _ => ExportLink::NoExporter,
        }
    }
}

/// Words of a [`StreamCounters`].
const WORDS: usize = 13;

impl StreamCounters {
    fn to_words(self) -> [u64; WORDS] {
        [
            self.produced,
            self.delivered,
            self.dropped,
            self.unwritten,
            self.exported,
            self.export_queue_full,
            self.export_rejected,
            self.export_unencoded,
            self.export_unflushed,
            self.buffer_fill_ratio.to_bits(),
            self.export_queue_depth,
            self.export_reconnects,
            self.export_link.to_word(),
        ]
    }

    fn from_words(w: [u64; WORDS]) -> Self {
        StreamCounters {
            produced: w[0],
            delivered: w[1],
            dropped: w[2],
            unwritten: w[3],
            exported: w[4],
            export_queue_full: w[5],
            export_rejected: w[6],
            export_unencoded: w[7],
            export_unflushed: w[8],
            buffer_fill_ratio: f64::from_bits(w[9]),
            export_queue_depth: w[10],
            export_reconnects: w[11],
            export_link: ExportLink::from_word(w[12]),
        }
    }
}

/// One stream's cell in the registry.
#[derive(Debug)]
pub(super) struct StreamCell {
    pub(super) name: String,
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
    attached: AtomicBool,
    /// Why the stream is not attached (read only when `attached` is false).
    reason: Mutex<String>,
}

impl StreamCell {
    /// Publishes a snapshot. One writer only: [`StreamMetrics`] is its sole owner and takes
    /// `&mut self`.
    fn write(&self, words: [u64; WORDS]) {
        let seq = self.seq.load(Ordering::Relaxed); // only this writer changes it
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // The odd sequence is ordered before every word stored below: a reader that loads one
        // of those words and then runs its acquire fence sees the odd (or a later) sequence in
        // its second load, and retries (pairs with the fence in `read`).
        fence(Ordering::Release);
        for (cell, value) in self.words.iter().zip(words) {
            cell.store(value, Ordering::Relaxed);
        }
        // Release: the words are visible to a reader whose first (acquire) load sees this even
        // sequence (pairs with that load in `read`).
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A snapshot no publish was in the middle of.
    pub(super) fn read(&self) -> StreamCounters {
        loop {
            // Acquire: pairs with the writer's last store; the words of that publish are visible.
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            // Orders the loads of the words before the second load of the sequence (pairs with
            // the writer's release fence): a word of a newer publish implies a changed sequence.
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return StreamCounters::from_words(words);
            }
        }
    }

    /// `None` while attached, else why not.
    pub(super) fn detached_reason(&self) -> Option<String> {
        // Relaxed: a flag with no data behind it but the reason, which its own lock orders.
        if self.attached.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Every stream's metrics, read by [`super::MetricsServer`].
#[derive(Debug)]
pub struct Registry {
    pub(super) version: String,
    /// In the order they were added; taken for writing only when a stream comes or goes.
    pub(super) streams: RwLock<Vec<Arc<StreamCell>>>,
    /// The file's streams that did not start at the last reload, and why.
    not_started: Mutex<Vec<(String, String)>>,
}

impl Registry {
    /// An empty registry; `version` goes into `bpfstream_build_info`.
    pub fn new(version: &str) -> Arc<Self> {
        Arc::new(Registry { version: version.to_string(), streams: RwLock::default(), not_started: Mutex::default() })
    }

    /// Adds a stream, not yet attached, with zero counters; its series last as long as the
    /// returned handle. `None` if a stream of that name is in the registry already.
    pub fn add_stream(self: &Arc<Self>, name: &str) -> Option<StreamMetrics> {
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        if streams.iter().any(|s| s.name == name) {
            return None;
        }
        let cell = Arc::new(StreamCell {
            name: name.to_string(),
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
            attached: AtomicBool::new(false),
            reason: Mutex::new("starting".to_string()),
        });
        streams.push(cell.clone());
        Some(StreamMetrics { registry: self.clone(), cell })
    }

    /// The streams of the file that did not start (name, why), in place of those of the last
    /// reload: `/healthz` says 503 with them until a reload starts or removes them.
    pub fn set_not_started(&self, streams: Vec<(String, String)>) {
        *self.not_started.lock().unwrap_or_else(|e| e.into_inner()) = streams;
    }

    /// `Ok` while every stream of the file runs, is attached and its exporter (if any)
    /// connected; else why not, one reason per line.
    pub fn health(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        let not_started = self.not_started.lock().unwrap_or_else(|e| e.into_inner());
        if streams.is_empty() && not_started.is_empty() {
            reasons.push("no stream".to_string());
        }
        for (name, reason) in not_started.iter() {
            reasons.push(format!("stream {name}: not started: {reason}"));
        }
        for stream in streams.iter() {
            if let Some(reason) = stream.detached_reason() {
                reasons.push(format!("stream {}: not attached: {reason}", stream.name));
            }
            if stream.read().export_link == ExportLink::NotConnected {
                reasons.push(format!("stream {}: exporter not connected to its engine", stream.name));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("\n"))
        }
    }
}

/// A stream's handle on its metrics: the one writer of its counters. Dropping it removes the
/// stream's series.
#[derive(Debug)]
pub struct StreamMetrics {
    registry: Arc<Registry>,
    cell: Arc<StreamCell>,
}

impl StreamMetrics {
    /// Publishes the stream's counters, all at once (a few stores; call it once per batch).
    pub fn publish(&mut self, counters: &StreamCounters) {
        self.cell.write(counters.to_words());
    }

    /// The stream's programs are attached and its buffer is read.
    pub fn set_attached(&mut self) {
        self.cell.attached.store(true, Ordering::Relaxed);
    }

    /// The stream is not attached (any more), and why: `/healthz` says 503 with the reason.
    pub fn set_detached(&mut self, reason: &str) {
        *self.cell.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_string();
        self.cell.attached.store(false, Ordering::Relaxed);
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        let mut streams = self.registry.streams.write().unwrap_or_else(|e| e.into_inner());
        streams.retain(|s| !Arc::ptr_eq(s, &self.cell));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_sees_whole_snapshots() {
        let registry = Registry::new("test");
        let mut stream = registry.add_stream("s").unwrap();
        let cell = registry.streams.read().unwrap()[0].clone();
        // Bounded both ways, and small: on an emulated machine each read the writer overlaps is
        // retried, and a reader behind a writer that never pauses crawls.
        let reader = std::thread::spawn(move || {
            for _ in 0..20_000 {
                let c = cell.read();
                assert_eq!(c.delivered + c.dropped, c.produced, "{c:?}");
                assert_eq!(c.exported, c.delivered, "{c:?}");
            }
        });
        for n in 0..200_000u64 {
            let c =
                StreamCounters { produced: 3 * n, delivered: 2 * n, dropped: n, exported: 2 * n, ..Default::default() };
            stream.publish(&c);
            if reader.is_finished() {
                break;
            }
        }
        reader.join().unwrap();
    }

    #[test]
    fn health_names_what_is_wrong() {
        let registry = Registry::new("test");
        assert_eq!(registry.health(), Err("no stream".into()));
        let mut exec = registry.add_stream("exec").unwrap();
        assert!(registry.add_stream("exec").is_none(), "one series per name");
        assert_eq!(registry.health(), Err("stream exec: not attached: starting".into()));
        exec.set_attached();
        assert_eq!(registry.health(), Ok(()));
        let mut counters = StreamCounters { export_link: ExportLink::NotConnected, ..Default::default() };
        exec.publish(&counters);
        assert_eq!(registry.health(), Err("stream exec: exporter not connected to its engine".into()));
        registry.set_not_started(vec![("open".into(), "no such file".into())]);
        let both = "stream open: not started: no such file\nstream exec: exporter not connected to its engine";
        assert_eq!(registry.health(), Err(both.into()));
        registry.set_not_started(Vec::new());
        counters.export_link = ExportLink::Connected;
        exec.publish(&counters);
        assert_eq!(registry.health(), Ok(()));
        exec.set_detached("its programs were detached");
        assert_eq!(registry.health(), Err("stream exec: not attached: its programs were detached".into()));
        drop(exec);
        assert!(registry.streams.read().unwrap().is_empty(), "its series are gone with it");
    }
}
