//! Decoding records into `#[repr(C)]` Rust types, safely.
//!
//! A record's bytes are copied into the value (`read_unaligned`), never reinterpreted in place:
//! perf payloads start 4-byte aligned (after the u32 size), so a reference to a `u64` field
//! inside them would be misaligned. Lengths are checked; a short record is an error.
//!
//! Declare a record type with [`record!`](crate::record), which adds `#[repr(C)]` and proves
//! at compile time that every field is plain data:
//!
//! ```
//! bpfstream::record! {
//!     /// struct event { __u32 pid; char comm[16]; } in the BPF program's header
//!     #[derive(Debug)]
//!     pub struct Event {
//!         pub pid: u32,
//!         pub comm: [u8; 16],
//!     }
//! }
//! use bpfstream::FromRecord;
//! let mut bytes = vec![0u8; 20];
//! bytes[..4].copy_from_slice(&42u32.to_ne_bytes());
//! let event = Event::from_record(&bytes).unwrap();
//! assert_eq!(event.pid, 42);
//! assert!(Event::from_record(&bytes[..3]).is_err());
//! ```

use std::mem::size_of;

/// Types for which every bit pattern of their size is a valid value (integers, floats, arrays
/// of them, and `#[repr(C)]` structs of them declared with [`record!`](crate::record)).
///
/// # Safety
///
/// Every `size_of::<Self>()`-byte pattern must be a valid `Self`: no `bool`, `char`, enums,
/// references, pointers to be dereferenced, or `NonZero`/niche types.
pub unsafe trait Plain: Copy + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: primitive numbers accept every bit pattern.
        unsafe impl Plain for $t {}
    )* };
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

// SAFETY: an array of plain values is plain.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// A record too short for the type it is decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record of {actual} bytes is too short for {type_name} ({needed} bytes)")]
pub struct TypedError {
    /// The type being decoded.
    pub type_name: &'static str,
    /// Bytes it needs.
    pub needed: usize,
    /// Bytes the record has.
    pub actual: usize,
}

/// Decoding from a record's bytes.
pub trait FromRecord: Sized {
    /// Decodes a value from the start of `data` (extra bytes, such as perf padding, are
    /// ignored).
    fn from_record(data: &[u8]) -> Result<Self, TypedError> {
        Self::from_record_prefix(data).map(|(value, _)| value)
    }

    /// Decodes a fixed-size header from the start of `data` and returns the bytes after it:
    /// the variable-length tail of a record.
    fn from_record_prefix(data: &[u8]) -> Result<(Self, &[u8]), TypedError>;
}

impl<T: Plain> FromRecord for T {
    fn from_record_prefix(data: &[u8]) -> Result<(Self, &[u8]), TypedError> {
        let needed = size_of::<T>();
        if data.len() < needed {
            return Err(TypedError { type_name: std::any::type_name::<T>(), needed, actual: data.len() });
        }
        // SAFETY: `data` has at least size_of::<T>() readable bytes; read_unaligned makes no
        // alignment assumption; `T: Plain` accepts any bit pattern.
        let value = unsafe { data.as_ptr().cast::<T>().read_unaligned() };
        Ok((value, &data[needed..]))
    }
}

/// Declares `#[repr(C)]` structs whose fields are all [`Plain`], and implements [`Plain`] (and
/// so [`FromRecord`]) for them. A field of any other type is a compile error.
#[macro_export]
macro_rules! record {
    ($(
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    )*) => { $(
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty ),*
        }

        // SAFETY: #[repr(C)] and every field is Plain (checked below), so every bit pattern is
        // a valid value; padding bytes carry no validity requirement.
        unsafe impl $crate::typed::Plain for $name {}

        const _: () = {
            const fn assert_plain<T: $crate::typed::Plain>() {}
            $( assert_plain::<$ty>(); )*
        };
    )* };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::record! {
        #[derive(Debug, PartialEq)]
        struct Header {
            ts: u64,
            pid: u32,
            len: u32,
        }
    }

    #[test]
    fn decodes_from_unaligned_bytes_and_returns_the_tail() {
        let mut buf = [0u8; 1 + 16 + 3];
        buf[1..9].copy_from_slice(&7u64.to_ne_bytes());
        buf[9..13].copy_from_slice(&9u32.to_ne_bytes());
        buf[13..17].copy_from_slice(&3u32.to_ne_bytes());
        buf[17..].copy_from_slice(b"abc");
        let (h, tail) = Header::from_record_prefix(&buf[1..]).unwrap();
        assert_eq!(h, Header { ts: 7, pid: 9, len: 3 });
        assert_eq!(tail, b"abc");
    }

    #[test]
    fn short_records_are_errors() {
        let err = Header::from_record(&[0u8; 15]).unwrap_err();
        assert_eq!((err.needed, err.actual), (16, 15));
    }
}
