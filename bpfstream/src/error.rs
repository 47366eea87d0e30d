//! The library's error type.

use std::io;

/// Everything that can go wrong while setting up or reading a buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{call} failed: {source}{}", permission_hint(source))]
    Sys {
        /// The call (or step) that failed.
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The fd is not a map of the type the consumer reads.
    #[error("wrong map type: expected {expected}, got {actual}")]
    WrongMapType {
        /// The map type the consumer needs.
        expected: String,
        /// What the fd is.
        actual: String,
    },
    /// A record header that the protocol cannot produce: the consumer stops before it instead
    /// of reading out of bounds or looping.
    #[error("corrupt {transport} buffer: record at position {position} (length {length}): {reason}")]
    Corrupt {
        /// `ring` or `perf`.
        transport: &'static str,
        /// Position of the bad record (free-running byte counter).
        position: u64,
        /// The length it claimed.
        length: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The buffer already has a consumer in this process (one consumer per ring: a second one
    /// would free records the first still lends out).
    #[error("{what} already has a consumer in this process: drop it before opening another")]
    AlreadyConsumed {
        /// The buffer.
        what: String,
    },
    /// A record too short for the type it is decoded as ([`FromRecord`](crate::FromRecord)).
    /// In a stream it is one item: the record was consumed (it counts as delivered) and the
    /// stream goes on after it.
    #[error("record of {actual} bytes is too short for {type_name} ({needed} bytes)")]
    Malformed {
        /// The type being decoded.
        type_name: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes the record has.
        actual: usize,
    },
    /// A size the kernel would reject.
    #[error("invalid {what} {value}: must be {valid}")]
    InvalidSize {
        /// What was being sized.
        what: &'static str,
        /// The rejected value.
        value: u64,
        /// What is valid.
        valid: &'static str,
    },
    /// The kernel or the setup lacks something the consumer needs.
    #[error("{0}")]
    Unsupported(String),
    /// aya could not load the BPF object ([`aya::load`](crate::aya::load)).
    #[cfg(feature = "aya")]
    #[error("loading the BPF object: {0}")]
    Load(#[source] ::aya::EbpfError),
}

impl Error {
    pub(crate) fn sys(call: &'static str, source: io::Error) -> Self {
        Error::Sys { call, source }
    }
}

fn permission_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (run as root, or grant CAP_BPF and CAP_PERFMON)",
        _ => "",
    }
}
