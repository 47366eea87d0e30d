//! Struct layouts from BTF, to check `#[repr(C)]` Rust mirrors against what clang laid out.
//!
//! A BPF object compiled with `-g` carries BTF (`.BTF` section): the type information of its
//! programs, maps and globals, including the record structs shared with userspace (a struct
//! only used through a pointer cast is kept in BTF by `BPFSTREAM_EXPORT_STRUCT(name)` of
//! `bpfstream.h`). This is a small reader of that format (`Documentation/bpf/btf.rst`): it
//! finds a struct or union by name and lists its members with byte offsets and sizes. Every
//! type declared with [`record!`](crate::record) is a [`Mirror`] and checks itself against it:
//!
//! ```
//! bpfstream::record! {
//!     pub struct Counters { pub produced: u64, pub dropped: u64, pub since_wakeup: u64, pub forced_wakeups: u64 }
//! }
//! use bpfstream::btf::Mirror;
//! # let object = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/obj/ping.ring.bpf.o")).unwrap();
//! Counters::check_btf(&object, "bpfstream_counters").unwrap();
//! ```
//!
//! It reads ELF objects (the `.BTF` section) and raw BTF such as `/sys/kernel/btf/vmlinux`. No
//! kernel is needed to read an object; BTF in objects needs clang 10+, kernel BTF Linux 5.4+.

use std::fmt;

use object::{Object, ObjectSection};

/// A struct or union as the compiler laid it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StructLayout {
    /// Its name (without `struct`).
    pub name: String,
    /// `sizeof`, in bytes.
    pub size: u64,
    /// Its members in declaration order (anonymous members have an empty name).
    pub members: Vec<Member>,
}

/// One member of a [`StructLayout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member's name.
    pub name: String,
    /// Offset from the start of the struct, in bits (a multiple of 8 except for bitfields).
    pub bit_offset: u64,
    /// Size in bytes (for a bitfield, of its declared type).
    pub size: u64,
    /// For a bitfield, its width in bits.
    pub bitfield_bits: Option<u32>,
}

impl Member {
    /// Offset in bytes (rounded down for a bitfield).
    fn offset(&self) -> u64 {
        self.bit_offset / 8
    }
}

/// Why BTF could not be read, or a layout not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BtfError {
    /// The bytes are an ELF object without a `.BTF` section.
    #[error(
        "the object has no .BTF section: compile it with clang -g (and strip with llvm-strip -g, which keeps BTF)"
    )]
    NoBtf,
    /// The bytes are neither an ELF object nor BTF.
    #[error("not an ELF object or raw BTF: {0}")]
    NotBtf(String),
    /// The BTF data is cut short or inconsistent.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// No struct or union of that name.
    #[error("no struct or union named {0:?} in the BTF (a struct only used through casts needs an anchor, e.g. an unused const volatile global of that type)")]
    NotFound(String),
    /// The struct was found and its Rust mirror differs ([`Mirror::check_btf`]).
    #[error("{rust} does not mirror struct {c}:\n  {}", problems.join("\n  "))]
    Mismatch {
        /// The C struct.
        c: String,
        /// The Rust type.
        rust: &'static str,
        /// One line per difference.
        problems: Vec<String>,
    },
}

impl StructLayout {
    /// Checks a Rust type (`rust`, `size` bytes, `fields` as in [`check_layout`]) against this
    /// struct: its size and, for every C member, a field of the same name at the same offset
    /// with the same size (and no field the C struct lacks).
    fn check(&self, rust: &'static str, size: usize, fields: &[(&str, usize, usize)]) -> Result<(), BtfError> {
        let mut problems = Vec::new();
        if self.size != size as u64 {
            problems.push(format!("size: C {} bytes, Rust {size} bytes", self.size));
        }
        for m in &self.members {
            let name = m.name.as_str();
            let Some(&(_, offset, size)) = fields.iter().find(|f| f.0.trim_start_matches("r#") == name) else {
                problems.push(format!("C member {name:?} (offset {}) has no Rust field", m.offset()));
                continue;
            };
            if let Some(bits) = m.bitfield_bits {
                problems.push(format!("C member {name:?} is a {bits}-bit bitfield, which Rust cannot mirror"));
            } else if m.offset() != offset as u64 || m.size != size as u64 {
                problems.push(format!(
                    "{name}: C offset {} size {}, Rust offset {offset} size {size}",
                    m.offset(),
                    m.size
                ));
            }
        }
        for (field, offset, _) in fields {
            if !self.members.iter().any(|m| m.name == field.trim_start_matches("r#")) {
                problems.push(format!("Rust field {field:?} (offset {offset}) is not in the C struct"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BtfError::Mismatch { c: self.name.clone(), rust, problems })
        }
    }
}

/// A `#[repr(C)]` Rust type that mirrors a C struct: [`record!`](crate::record) implements it,
/// so a record type checks itself against the object it will be read from.
///
/// ```
/// bpfstream::record! {
///     pub struct Counters { pub produced: u64, pub dropped: u64, pub since_wakeup: u64, pub forced_wakeups: u64 }
/// }
/// use bpfstream::btf::Mirror;
/// # let object = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/obj/ping.ring.bpf.o")).unwrap();
/// Counters::check_btf(&object, "bpfstream_counters").unwrap();
/// ```
pub trait Mirror {
    /// Checks the type against `struct c_name` in `btf` (an ELF object's `.BTF` section, or raw
    /// BTF): same size, and every member at the same offset with the same size. In BPF C,
    /// `BPFSTREAM_EXPORT_STRUCT(c_name)` keeps a struct in the object's BTF.
    fn check_btf(btf: &[u8], c_name: &str) -> Result<(), BtfError>;
}

/// Checks a `#[repr(C)]` Rust type against `struct c_name` in `btf` (an ELF object's `.BTF`
/// section, or raw BTF): the type is named `rust` (for the error), is `size` bytes, and has
/// `fields`, each as (name, byte offset, size) in declaration order (`r#type` matches the C
/// member `type`). [`record!`](crate::record) calls it for its types' [`Mirror::check_btf`];
/// call it for a type declared otherwise.
///
/// ```
/// #[repr(C)]
/// struct Counters { produced: u64, dropped: u64, since_wakeup: u64, forced_wakeups: u64 }
/// use std::mem::{offset_of, size_of};
/// let fields = [
///     ("produced", offset_of!(Counters, produced), 8),
///     ("dropped", offset_of!(Counters, dropped), 8),
///     ("since_wakeup", offset_of!(Counters, since_wakeup), 8),
///     ("forced_wakeups", offset_of!(Counters, forced_wakeups), 8),
/// ];
/// # let object = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/obj/ping.ring.bpf.o")).unwrap();
/// bpfstream::btf::check_layout(&object, "bpfstream_counters", "Counters", size_of::<Counters>(), &fields)?;
/// # Ok::<(), bpfstream::btf::BtfError>(())
/// ```
pub fn check_layout(
    btf: &[u8],
    c_name: &str,
    rust: &'static str,
    size: usize,
    fields: &[(&str, usize, usize)],
) -> Result<(), BtfError> {
    struct_layout(btf, c_name)?.check(rust, size, fields)
}

/// Finds the struct or union `name` in `btf`: an ELF object's `.BTF` section, or raw BTF.
pub(crate) fn struct_layout(btf: &[u8], name: &str) -> Result<StructLayout, BtfError> {
    Btf::parse(btf)?.struct_layout(name)
}

/// The names of the `BPF_MAP_TYPE_RINGBUF` maps an object defines in its `.maps` section
/// (libbpf's BTF-defined maps), borrowed from the object.
#[cfg(feature = "aya")]
pub(crate) fn ring_buffer_maps(object: &[u8]) -> Result<Vec<&str>, BtfError> {
    Btf::parse(object)?.ring_buffer_maps()
}

/// The names and values of the enum `name` in `btf` (an ELF object's `.BTF` section, or raw
/// BTF), in declaration order: to check Rust constants against a C enum.
#[cfg(test)]
pub(crate) fn enum_values(btf: &[u8], name: &str) -> Result<Vec<(String, i64)>, BtfError> {
    Btf::parse(btf)?.enum_values(name)
}

/// The `.BTF` section of an ELF object, or the bytes themselves if they are raw BTF.
fn btf_bytes(data: &[u8]) -> Result<&[u8], BtfError> {
    if data.starts_with(b"\x7fELF") {
        let file = object::File::parse(data).map_err(|e| BtfError::NotBtf(e.to_string()))?;
        let section = file.section_by_name(".BTF").ok_or(BtfError::NoBtf)?;
        return section.data().map_err(|e| BtfError::Malformed(e.to_string()));
    }
    Ok(data)
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// One `struct btf_type` and where its kind-specific data starts.
#[derive(Debug, Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Offset of the data following the 12-byte header, in the type section.
    extra: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

/// Parsed BTF: the type table (index = type id - 1) over the section's bytes.
struct Btf<'a> {
    types_data: &'a [u8],
    strings: &'a [u8],
    types: Vec<Type>,
    big_endian: bool,
}

impl fmt::Debug for Btf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf").field("types", &self.types.len()).finish()
    }
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed(what.into())
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let data = btf_bytes(data)?;
        let big_endian = match data.get(..2) {
            Some(m) if u16::from_le_bytes([m[0], m[1]]) == MAGIC => false,
            Some(m) if u16::from_be_bytes([m[0], m[1]]) == MAGIC => true,
            _ => return Err(BtfError::NotBtf("no BTF magic 0xeb9f".into())),
        };
        if data.len() < HEADER_LEN {
            return Err(malformed("header cut short"));
        }
        let word = |at: usize| read_u32(data, at, big_endian).ok_or_else(|| malformed("header cut short"));
        let hdr_len = word(4)? as usize;
        let (type_off, type_len, str_off, str_len) =
            (word(8)? as usize, word(12)? as usize, word(16)? as usize, word(20)? as usize);
        let range = |off: usize, len: usize, what: &str| {
            let start = hdr_len.checked_add(off).ok_or_else(|| malformed(format!("{what} offset overflows")))?;
            let end = start.checked_add(len).ok_or_else(|| malformed(format!("{what} length overflows")))?;
            data.get(start..end).ok_or_else(|| malformed(format!("{what} section runs past the data")))
        };
        let mut btf = Btf {
            types_data: range(type_off, type_len, "type")?,
            strings: range(str_off, str_len, "string")?,
            types: Vec::new(),
            big_endian,
        };
        btf.index_types()?;
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        read_u32(self.types_data, at, self.big_endian).ok_or_else(|| malformed("type data cut short"))
    }

    fn index_types(&mut self) -> Result<(), BtfError> {
        let mut at = 0;
        while at < self.types_data.len() {
            let t = Type {
                name_off: self.u32_at(at)?,
                info: self.u32_at(at + 4)?,
                size_or_type: self.u32_at(at + 8)?,
                extra: at + 12,
            };
            let extra_len = match t.kind() {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * t.vlen(),
                kind::ENUM | kind::FUNC_PROTO => 8 * t.vlen(),
                other => return Err(malformed(format!("unknown BTF kind {other} (type id {})", self.types.len() + 1))),
            };
            at = t.extra + extra_len;
            if at > self.types_data.len() {
                return Err(malformed("type data cut short"));
            }
            self.types.push(t);
        }
        Ok(())
    }

    fn string(&self, offset: u32) -> Result<&'a str, BtfError> {
        let rest = self.strings.get(offset as usize..).ok_or_else(|| malformed("string offset out of range"))?;
        let end = rest.iter().position(|&b| b == 0).ok_or_else(|| malformed("unterminated string"))?;
        std::str::from_utf8(&rest[..end]).map_err(|_| malformed("string is not UTF-8"))
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| malformed(format!("type id {id} out of range")))
    }

    /// `sizeof` of type `id`, following typedefs, qualifiers and array element types
    /// iteratively (at most 64 steps, as BTF from a bad file can loop, e.g. an array of itself)
    /// with checked arithmetic (element counts of a bad file can overflow).
    fn size_of(&self, id: u32) -> Result<u64, BtfError> {
        let overflow = || malformed(format!("the size of type id {id} overflows"));
        let mut id = id;
        // The product of the element counts of the arrays passed so far.
        let mut elements: u64 = 1;
        for _ in 0..64 {
            if id == 0 {
                return Ok(0); // void
            }
            let t = self.get(id)?;
            let size = match t.kind() {
                kind::INT | kind::ENUM | kind::ENUM64 | kind::STRUCT | kind::UNION | kind::FLOAT | kind::DATASEC => {
                    u64::from(t.size_or_type)
                }
                kind::PTR => 8, // BPF is a 64-bit target
                kind::ARRAY => {
                    let count = u64::from(self.u32_at(t.extra + 8)?);
                    elements = elements.checked_mul(count).ok_or_else(overflow)?;
                    id = self.u32_at(t.extra)?;
                    continue;
                }
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type;
                    continue;
                }
                other => return Err(malformed(format!("type id {id} (kind {other}) has no size"))),
            };
            return elements.checked_mul(size).ok_or_else(overflow);
        }
        Err(malformed("type chain too deep (a loop?)"))
    }

    /// See [`ring_buffer_maps`](crate::btf::ring_buffer_maps). A map is a variable of the
    /// `.maps` data section whose type is a struct with a member `type`, declared by
    /// `__uint(type, N)` as a pointer to an array of `N` elements.
    #[cfg(feature = "aya")]
    fn ring_buffer_maps(&self) -> Result<Vec<&'a str>, BtfError> {
        const RINGBUF: u32 = 27; // BPF_MAP_TYPE_RINGBUF
        let Some(section) = self
            .types
            .iter()
            .find(|t| t.kind() == kind::DATASEC && self.string(t.name_off).is_ok_and(|n| n == ".maps"))
        else {
            return Ok(Vec::new());
        };
        let mut rings = Vec::new();
        for i in 0..section.vlen() {
            let var = self.get(self.u32_at(section.extra + 12 * i)?)?;
            let map = self.get(var.size_or_type)?;
            if var.kind() != kind::VAR || map.kind() != kind::STRUCT {
                continue;
            }
            for m in 0..map.vlen() {
                let at = map.extra + 12 * m;
                if self.string(self.u32_at(at)?)? != "type" {
                    continue;
                }
                let pointer = self.get(self.u32_at(at + 4)?)?;
                let array = self.get(pointer.size_or_type)?;
                if pointer.kind() == kind::PTR
                    && array.kind() == kind::ARRAY
                    && self.u32_at(array.extra + 8)? == RINGBUF
                {
                    rings.push(self.string(var.name_off)?);
                }
            }
        }
        Ok(rings)
    }

    #[cfg(test)]
    fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let found =
            self.types.iter().find(|t| t.kind() == kind::ENUM && self.string(t.name_off).is_ok_and(|n| n == name));
        let t = found.ok_or_else(|| BtfError::NotFound(name.to_owned()))?;
        (0..t.vlen())
            .map(|i| {
                let at = t.extra + 8 * i;
                let value = self.u32_at(at + 4)?;
                // kind_flag: the values are signed.
                let value = if t.kind_flag() { i64::from(value as i32) } else { i64::from(value) };
                Ok((self.string(self.u32_at(at)?)?.to_owned(), value))
            })
            .collect()
    }

    fn struct_layout(&self, name: &str) -> Result<StructLayout, BtfError> {
        let found = self.types.iter().find(|t| {
            matches!(t.kind(), kind::STRUCT | kind::UNION) && self.string(t.name_off).is_ok_and(|n| n == name)
        });
        let t = found.ok_or_else(|| BtfError::NotFound(name.to_owned()))?;
        let mut members = Vec::with_capacity(t.vlen());
        for i in 0..t.vlen() {
            let at = t.extra + 12 * i;
            let member_type = self.u32_at(at + 4)?;
            let offset = self.u32_at(at + 8)?;
            let (bit_offset, bitfield) = if t.kind_flag() { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
            members.push(Member {
                name: self.string(self.u32_at(at)?)?.to_owned(),
                bit_offset: u64::from(bit_offset),
                size: self.size_of(member_type)?,
                bitfield_bits: (bitfield != 0 || bit_offset % 8 != 0).then_some(bitfield),
            });
        }
        Ok(StructLayout { name: name.to_owned(), size: u64::from(t.size_or_type), members })
    }
}

fn read_u32(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example objects ship in the crate's package (the workspace's bpf/obj does not).
    static PING_RING: &[u8] = include_bytes!("../examples/obj/ping.ring.bpf.o");
    static PING_PERF: &[u8] = include_bytes!("../examples/obj/ping.perf.bpf.o");

    /// A hand-built BTF blob: `struct pair { int a; char b[3]; unsigned c:4; }` with a bitfield.
    fn hand_made() -> Vec<u8> {
        let strings = b"\0int\0pair\0a\0b\0c\0char\0".to_vec();
        let word = |v: u32| v.to_le_bytes();
        let mut types = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, flag: bool, size: u32, extra: &[u32]| {
            types.extend(word(name));
            types.extend(word((u32::from(flag) << 31) | (kind << 24) | vlen));
            types.extend(word(size));
            for &e in extra {
                types.extend(word(e));
            }
        };
        ty(1, kind::INT, 0, false, 4, &[32]); // 1: int
        ty(16, kind::INT, 0, false, 1, &[8]); // 2: char
        ty(0, kind::ARRAY, 0, false, 0, &[2, 1, 3]); // 3: char[3]
                                                     // 4: struct pair, kind_flag set: member offsets carry bitfield sizes.
        ty(5, kind::STRUCT, 3, true, 8, &[10, 1, 0, 12, 3, 32, 14, 1, (4 << 24) | 56]);
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_le_bytes());
        blob.extend([1, 0]);
        blob.extend(word(HEADER_LEN as u32));
        blob.extend(word(0));
        blob.extend(word(types.len() as u32));
        blob.extend(word(types.len() as u32));
        blob.extend(word(strings.len() as u32));
        blob.extend(types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn reads_members_offsets_sizes_and_bitfields_from_raw_btf() {
        let layout = struct_layout(&hand_made(), "pair").unwrap();
        assert_eq!((layout.name.as_str(), layout.size), ("pair", 8));
        let got: Vec<_> =
            layout.members.iter().map(|m| (m.name.as_str(), m.bit_offset, m.size, m.bitfield_bits)).collect();
        assert_eq!(got, [("a", 0, 4, None), ("b", 32, 3, None), ("c", 56, 4, Some(4))]);
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error_not_a_panic() {
        let blob = hand_made();
        for cut in 0..blob.len() {
            let _ = struct_layout(&blob[..cut], "pair");
        }
        assert!(matches!(struct_layout(b"hello", "x"), Err(BtfError::NotBtf(_))));
        assert!(matches!(struct_layout(&blob[..30], "pair"), Err(BtfError::Malformed(_))));
        assert_eq!(struct_layout(&blob, "nope"), Err(BtfError::NotFound("nope".into())));
    }

    /// `hand_made()` with the array's element type and count replaced.
    fn with_array(elem: u32, count: u32) -> Vec<u8> {
        let mut blob = hand_made();
        // Type 3 (the array) starts after type 1 (16 bytes) and type 2 (16 bytes).
        let at = HEADER_LEN + 32 + 12;
        blob[at..at + 4].copy_from_slice(&elem.to_le_bytes());
        blob[at + 8..at + 12].copy_from_slice(&count.to_le_bytes());
        blob
    }

    #[test]
    fn a_self_referencing_array_or_an_overflowing_size_is_an_error() {
        // An array of one of itself: a loop.
        let err = struct_layout(&with_array(3, 1), "pair").unwrap_err();
        assert!(err.to_string().contains("too deep"), "{err}");
        // An array of 2^32 - 1 of itself: the size overflows u64 on the third step.
        let err = struct_layout(&with_array(3, u32::MAX), "pair").unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        let large = struct_layout(&with_array(1, u32::MAX), "pair").unwrap().members[1].size;
        assert_eq!(large, 4 * u64::from(u32::MAX), "int[2^32 - 1]");
    }

    proptest::proptest! {
        /// Random bytes anywhere in a valid blob (and random cuts): an answer or an error,
        /// never a panic, a stack overflow or a hang.
        #[test]
        fn malformed_btf_is_an_error_not_a_crash(
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 1..12),
            cut in 0usize..200,
        ) {
            let mut blob = hand_made();
            for (at, byte) in edits {
                let at = at % blob.len();
                blob[at] = byte;
            }
            let end = blob.len() - cut % blob.len();
            let _ = struct_layout(&blob[..end], "pair");
            let _ = struct_layout(&blob, "pair");
        }
    }

    #[test]
    fn mismatches_are_listed() {
        crate::record! {
            struct Wrong { produced: u64, dropped: u32, extra: u32 }
        }
        let err = Wrong::check_btf(PING_RING, "bpfstream_counters").unwrap_err();
        let BtfError::Mismatch { c, rust, problems } = &err else { panic!("{err}") };
        assert_eq!((c.as_str(), *rust), ("bpfstream_counters", std::any::type_name::<Wrong>()));
        assert_eq!(
            problems,
            &[
                "size: C 32 bytes, Rust 16 bytes",
                "dropped: C offset 8 size 8, Rust offset 8 size 4",
                "C member \"since_wakeup\" (offset 16) has no Rust field",
                "C member \"forced_wakeups\" (offset 24) has no Rust field",
                "Rust field \"extra\" (offset 12) is not in the C struct",
            ]
        );
    }

    #[test]
    fn record_types_check_themselves() {
        crate::record! {
            struct Good { produced: u64, dropped: u64, since_wakeup: u64, forced_wakeups: u64 }
            struct Short { produced: u64, dropped: u64 }
            struct Keyword { r#type: u32, cpu: u32, pad: [u64; 3] }
        }
        Good::check_btf(PING_PERF, "bpfstream_counters").unwrap();
        let err = Keyword::check_btf(PING_PERF, "bpfstream_counters").unwrap_err();
        assert!(err.to_string().contains(r#"Rust field "r#type" (offset 0)"#), "{err}");
        let err = Short::check_btf(PING_PERF, "bpfstream_counters").unwrap_err();
        assert!(matches!(&err, BtfError::Mismatch { problems, .. } if problems.len() == 3), "{err}");
        assert_eq!(Good::check_btf(PING_PERF, "nope").unwrap_err(), BtfError::NotFound("nope".into()));
    }

    #[test]
    #[cfg(feature = "aya")]
    fn ring_buffer_maps_are_found_by_their_type() {
        assert_eq!(ring_buffer_maps(PING_RING).unwrap(), ["events"]);
        assert!(ring_buffer_maps(PING_PERF).unwrap().is_empty());
    }

    #[test]
    fn kernel_btf_has_task_struct() {
        // Raw BTF, when the kernel exposes it (5.4+ with CONFIG_DEBUG_INFO_BTF).
        let Ok(vmlinux) = std::fs::read("/sys/kernel/btf/vmlinux") else { return };
        let task = struct_layout(&vmlinux, "task_struct").unwrap();
        assert!(task.size > 1000);
        assert!(task.members.iter().any(|m| m.name == "pid" && m.size == 4));
    }
}
