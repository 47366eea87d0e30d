//! How a stream is set up: [`Options`], the one set of settings for either transport, read by
//! [`EventSource::open`](crate::EventSource::open) and both halves of [`crate::aya`].

use std::time::Duration;

use crate::{Error, PerfWakeup, WakeupPolicy};

/// The default buffer size: 256 KiB (a ring's data; a perf buffer's data per CPU).
pub(crate) const DEFAULT_BUFFER_BYTES: u64 = 256 << 10;

/// The largest buffer: 2 GiB (a ring's size is a u32 power of two; a perf buffer's watermark
/// and record offsets are 32-bit).
const MAX_BUFFER_BYTES: u64 = 1 << 31;

/// How a stream is set up, for either transport. Every field has a default
/// (`Options::default()`), so set only what differs:
///
/// ```
/// use bpfstream::{Options, WakeupPolicy};
/// let options = Options { buffer_bytes: Some(4 << 20), wakeup: WakeupPolicy::Bytes(64 << 10), ..Options::default() };
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// When the ring producers wake the consumer (default: [`WakeupPolicy::Adaptive`], the
    /// kernel's own). [`crate::aya::load`] sets the object's globals to it, and the source
    /// expects those wakeups: give both the same options. Perf buffers ignore it.
    pub wakeup: WakeupPolicy,
    /// The buffer's size in bytes: a ring's data, which all CPUs share (set on the map when the
    /// object is loaded, by [`crate::aya::load`]; a source opened on a ring map takes the map's
    /// size), or a perf buffer's data per CPU (set when the source is opened). Rounded up to a
    /// power-of-two number of pages; at most 2 GiB. Default (`None`): 256 KiB, which is also
    /// what `bpfstream.h` gives a ring map.
    pub buffer_bytes: Option<u64>,
    /// When a perf buffer's CPUs wake the consumer (default `None`: once a quarter of the
    /// buffer is waiting). Whatever it is, a consumer that waits with a timeout bounds the delay
    /// by that timeout. Ring buffers ignore it.
    pub perf_wakeup: Option<PerfWakeup>,
    /// How often the drop counters of `bpfstream.h` are read while streaming (default 100 ms;
    /// one system call each). [`EventSource::finish`](crate::EventSource::finish) reads them
    /// whatever this says.
    pub counter_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wakeup: WakeupPolicy::Adaptive,
            buffer_bytes: None,
            perf_wakeup: None,
            counter_interval: Duration::from_millis(100),
        }
    }
}

impl Options {
    /// [`buffer_bytes`](Self::buffer_bytes) as the kernel takes it: a power-of-two multiple of
    /// the page size, or an [`Error::InvalidSize`].
    pub(crate) fn buffer_size(&self, page: u64) -> Result<u64, Error> {
        let asked = self.buffer_bytes.unwrap_or(DEFAULT_BUFFER_BYTES);
        match asked.max(page).checked_next_power_of_two() {
            Some(bytes) if asked > 0 && bytes <= MAX_BUFFER_BYTES => Ok(bytes),
            _ => Err(Error::InvalidSize {
                what: "buffer size in bytes",
                value: asked,
                valid: "from 1 to 2 GiB (rounded up to a power-of-two number of pages)",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(bytes: Option<u64>) -> Result<u64, Error> {
        Options { buffer_bytes: bytes, ..Options::default() }.buffer_size(4096)
    }

    #[test]
    fn sizes_round_up_to_a_power_of_two_number_of_pages() {
        assert_eq!(size(None).unwrap(), 256 << 10);
        assert_eq!(size(Some(1)).unwrap(), 4096);
        assert_eq!(size(Some(4097)).unwrap(), 8192);
        assert_eq!(size(Some(1_000_000)).unwrap(), 1 << 20);
        assert_eq!(size(Some(1 << 31)).unwrap(), 1 << 31);
        for bad in [0, (1 << 31) + 1, u64::MAX] {
            assert!(matches!(size(Some(bad)), Err(Error::InvalidSize { .. })), "{bad}");
        }
    }
}
