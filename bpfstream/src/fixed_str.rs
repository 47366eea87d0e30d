//! NUL-terminated strings in fixed arrays (`char comm[16]`, `char path[256]`), as record fields.

use std::borrow::Cow;
use std::fmt;

/// A C `char name[N]` field: the string is the bytes before the first NUL (all `N` bytes if
/// there is none, as `bpf_get_current_comm` may leave a 16-byte name). Use it in a
/// [`record!`](crate::record) struct where the C struct has the array; it has the array's size
/// and alignment, so layout checks against BTF hold.
///
/// ```
/// bpfstream::record! {
///     pub struct Exec { pub pid: u32, pub comm: bpfstream::FixedStr<16> }
/// }
/// use bpfstream::FromRecord;
/// let mut bytes = [0u8; 20];
/// bytes[4..8].copy_from_slice(b"bash");
/// let exec = Exec::from_record(&bytes).unwrap();
/// assert_eq!(exec.comm.as_bytes(), b"bash");
/// assert_eq!(exec.comm.to_string(), "bash");
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedStr<const N: usize>(pub [u8; N]);

// SAFETY: a transparent wrapper of a byte array: every bit pattern is a valid value.
unsafe impl<const N: usize> crate::Plain for FixedStr<N> {}

impl<const N: usize> FixedStr<N> {
    /// The bytes before the first NUL.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(N);
        &self.0[..end]
    }

    /// The string, with invalid UTF-8 replaced by U+FFFD (kernel names are bytes, not UTF-8).
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        FixedStr([0; N])
    }
}

impl<const N: usize> fmt::Display for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_str_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::FixedStr;

    #[test]
    fn the_string_ends_at_the_first_nul_or_the_array() {
        assert_eq!(FixedStr(*b"ls\0junk").as_bytes(), b"ls");
        assert_eq!(FixedStr(*b"abcd").as_bytes(), b"abcd");
        assert_eq!(FixedStr([0u8; 4]).as_bytes(), b"");
        assert_eq!(format!("{:?}", FixedStr(*b"a\xffb\0")), "\"a\u{fffd}b\"");
        assert_eq!(std::mem::size_of::<FixedStr<16>>(), 16);
    }
}
