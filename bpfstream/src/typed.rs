//! Decoding records into `#[repr(C)]` Rust types, safely.
//!
//! A record's bytes are copied into the value (`read_unaligned`), never reinterpreted in place:
//! perf payloads start 4-byte aligned (after the u32 size), so a reference to a `u64` field
//! inside them would be misaligned. Lengths are checked; a short record is an error, and in a
//! typed stream a [`Event::Malformed`] item rather than a silent skip.
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
//!
//! Then consume typed events with a handler built by [`events`] (blocking), or a typed async
//! stream ([`EventStream::typed`](crate::stream::EventStream::typed), feature `tokio`); check the
//! mirror against the C struct with [`crate::btf`]. Records of variable length (a fixed header
//! and a tail) decode with [`FromRecord::from_record_prefix`] in a closure
//! `FnMut(Record<'_>) -> Result<T, TypedError>` given to [`decoding`] (blocking) or
//! [`EventStream::with_decoder`](crate::stream::EventStream::with_decoder).
//!
//! No kernel needed: this module only reads bytes.

use std::mem::size_of;

use crate::{Flow, Item, Lost, Record};

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

/// A decoded item: what typed handlers and async streams hand over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// A record, decoded.
    Record(T),
    /// Records lost before reaching the buffer (perf LOST records, ring drop counters).
    Lost(Lost),
    /// A record the decoder rejected (too short for its type). It was consumed: it counts as
    /// delivered, and this item is how it is reported.
    Malformed(TypedError),
}

/// A record copied out of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// The payload (for perf buffers, with up to 7 bytes of trailing padding).
    pub data: Vec<u8>,
    /// The CPU whose buffer held it (perf buffers); `None` for a ring buffer.
    pub cpu: Option<u32>,
}

/// Adapts a handler of decoded [`Event`]s into a handler of raw [`Item`]s, for
/// [`EventSource::consume`](crate::EventSource::consume), [`Poller::add`](crate::Poller::add) and
/// the like: `decoder` turns each record into a value while it is still in the kernel's memory
/// (so only what the value needs is copied), e.g. a header and a variable-length tail
/// ([`FromRecord::from_record_prefix`]). The handler may borrow local state.
///
/// ```
/// use bpfstream::sim::SimRing;
/// use bpfstream::{decoding, Event, FromRecord, Item, Record};
///
/// let ring = SimRing::new(4096);
/// ring.output(&7u64.to_ne_bytes()).unwrap();
/// ring.output(&[1, 2]).unwrap(); // too short for a u64
/// let (mut sum, mut malformed) = (0, 0);
/// let mut handler = decoding(|r: Record<'_>| u64::from_record(r.data), |event: Event<u64>| match event {
///     Event::Record(v) => sum += v,
///     Event::Malformed(_) => malformed += 1,
///     Event::Lost(_) => {}
/// });
/// ring.consumer()?.consume(|data: &[u8]| handler(Item::Record(Record { data, cpu: None })))?;
/// drop(handler);
/// assert_eq!((sum, malformed), (7, 1));
/// # Ok::<(), bpfstream::Error>(())
/// ```
pub fn decoding<T, F: Flow>(
    mut decoder: impl FnMut(Record<'_>) -> Result<T, TypedError>,
    mut handler: impl FnMut(Event<T>) -> F,
) -> impl FnMut(Item<'_>) -> F {
    move |item: Item<'_>| {
        handler(match item {
            Item::Record(record) => match decoder(record) {
                Ok(value) => Event::Record(value),
                Err(error) => Event::Malformed(error),
            },
            Item::Lost(lost) => Event::Lost(lost),
        })
    }
}

/// [`decoding`] into `E` ([`FromRecord`]): a handler of `Event<E>`.
pub fn events<E: FromRecord, F: Flow>(handler: impl FnMut(Event<E>) -> F) -> impl FnMut(Item<'_>) -> F {
    decoding(|r: Record<'_>| E::from_record(r.data), handler)
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
            fn layout() -> (usize, ::std::vec::Vec<(&'static str, usize, usize)>) {
                let fields = ::std::vec![$((
                    ::core::stringify!($field),
                    ::core::mem::offset_of!($name, $field),
                    ::core::mem::size_of::<$ty>(),
                )),*];
                (::core::mem::size_of::<$name>(), fields)
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
    fn short_records_are_errors() {
        let err = Header::from_record(&[0u8; 15]).unwrap_err();
        assert_eq!((err.needed, err.actual), (16, 15));
    }

    #[test]
    fn typed_handlers_pass_losses_and_report_short_records() {
        let mut seen = Vec::new();
        let mut handler = events::<Header, _>(|e: Event<Header>| seen.push(e));
        let mut whole = [0u8; 19]; // a perf payload: 16 bytes and padding
        whole[..8].copy_from_slice(&5u64.to_ne_bytes());
        let lost = Lost { count: 3, cpu: Some(1), origin: crate::LossOrigin::PerfLostRecord };
        handler(Item::Record(Record { data: &whole, cpu: Some(1) }));
        handler(Item::Lost(lost));
        handler(Item::Record(Record { data: &whole[..12], cpu: Some(0) }));
        drop(handler);
        assert_eq!(
            seen,
            [
                Event::Record(Header { ts: 5, pid: 0, len: 0 }),
                Event::Lost(lost),
                Event::Malformed(TypedError { type_name: std::any::type_name::<Header>(), needed: 16, actual: 12 }),
            ]
        );
    }
}
