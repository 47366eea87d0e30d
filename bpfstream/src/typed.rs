//! Decoding records into `#[repr(C)]` Rust types, safely.
//!
//! A record's bytes are copied into the value (`read_unaligned`), never reinterpreted in place:
//! perf payloads start 4-byte aligned (after the u32 size), so a reference to a `u64` field
//! inside them would be misaligned. Lengths are checked: a short record is an
//! [`Error::Malformed`], never a silent skip.
//!
//! Declare a record type with [`record!`](crate::record), which adds `#[repr(C)]` and proves
//! at compile time that every field is plain data:
//!
//! ```
//! bpfstream::record! {
//!     /// struct event { __u32 pid; char comm[16]; } in the BPF program's header
//!     #[derive(Debug)]
//!     pub struct Exec {
//!         pub pid: u32,
//!         pub comm: [u8; 16],
//!     }
//! }
//! use bpfstream::FromRecord;
//! let mut bytes = vec![0u8; 20];
//! bytes[..4].copy_from_slice(&42u32.to_ne_bytes());
//! let exec = Exec::from_record(&bytes).unwrap();
//! assert_eq!(exec.pid, 42);
//! assert!(Exec::from_record(&bytes[..3]).is_err());
//! ```
//!
//! A record of variable length (a fixed header and a tail) decodes with
//! [`FromRecord::from_record_prefix`]. No kernel needed: this module only reads bytes.

use std::mem::size_of;

use crate::{Error, Record};

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

/// Decoding from a record's bytes.
pub trait FromRecord: Sized {
    /// Decodes a value from the start of `data` (extra bytes, such as perf padding, are
    /// ignored); a record too short is an [`Error::Malformed`].
    fn from_record(data: &[u8]) -> Result<Self, Error> {
        Self::from_record_prefix(data).map(|(value, _)| value)
    }

    /// Decodes a fixed-size header from the start of `data` and returns the bytes after it:
    /// the variable-length tail of a record.
    fn from_record_prefix(data: &[u8]) -> Result<(Self, &[u8]), Error>;
}

impl<T: Plain> FromRecord for T {
    fn from_record_prefix(data: &[u8]) -> Result<(Self, &[u8]), Error> {
        let needed = size_of::<T>();
        if data.len() < needed {
            return Err(Error::Malformed { type_name: std::any::type_name::<T>(), needed, actual: data.len() });
        }
        // SAFETY: `data` has at least size_of::<T>() readable bytes; read_unaligned makes no
        // alignment assumption; `T: Plain` accepts any bit pattern.
        let value = unsafe { data.as_ptr().cast::<T>().read_unaligned() };
        Ok((value, &data[needed..]))
    }
}

/// A record copied out of the buffer (`OwnedRecord::from(record)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// The payload (for perf buffers, with up to 7 bytes of trailing padding).
    pub data: Vec<u8>,
    /// The CPU whose buffer held it (perf buffers); `None` for a ring buffer.
    pub cpu: Option<u32>,
}

impl From<Record<'_>> for OwnedRecord {
    fn from(record: Record<'_>) -> Self {
        OwnedRecord { data: record.data.to_vec(), cpu: record.cpu }
    }
}

/// Declares `#[repr(C)]` structs whose fields are all [`Plain`], and implements [`Plain`] (and
/// so [`FromRecord`]) for them, and [`Mirror`](crate::btf::Mirror) (to check the layout against
/// the C struct in a BPF object's BTF). A field of any other type is a compile error; a C
/// `char name[N]` string is a [`FixedStr<N>`](crate::FixedStr).
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
        unsafe impl $crate::Plain for $name {}

        const _: () = {
            const fn assert_plain<T: $crate::Plain>() {}
            $( assert_plain::<$ty>(); )*
        };

        impl $crate::btf::Mirror for $name {
            fn check_btf(btf: &[u8], c_name: &str) -> ::core::result::Result<(), $crate::btf::BtfError> {
                $crate::btf::check_layout(
                    btf,
                    c_name,
                    ::core::any::type_name::<$name>(),
                    ::core::mem::size_of::<$name>(),
                    &[$((
                        ::core::stringify!($field),
                        ::core::mem::offset_of!($name, $field),
                        ::core::mem::size_of::<$ty>(),
                    )),*],
                )
            }
        }
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
    fn short_records_are_malformed() {
        let err = Header::from_record(&[0u8; 15]).unwrap_err();
        assert!(matches!(err, Error::Malformed { needed: 16, actual: 15, .. }), "{err}");
        let record = Record { data: &[1, 2, 3], cpu: Some(2) };
        assert_eq!(OwnedRecord::from(record), OwnedRecord { data: vec![1, 2, 3], cpu: Some(2) });
    }
}
