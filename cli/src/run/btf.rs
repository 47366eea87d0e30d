//! A reader of BTF (`Documentation/bpf/btf.rst`), the type information clang -g puts in a BPF
//! object's `.BTF` section: every kind, parsed once into a table indexed by type id, safe on any
//! input (every length and offset is checked; nothing here can panic or loop forever on malformed
//! BTF: chains of types are followed at most [`MAX_DEPTH`] deep).
//!
//! ```text
//!   header (24 bytes)  magic 0xeb9f, version 1, flags, hdr_len, type_off, type_len, str_off, str_len
//!   types              struct btf_type { name_off, info, size_or_type } + kind-specific data,
//!                      one after the other; type id 1 is the first, 0 is void
//!   strings            NUL-terminated names, addressed by byte offset (0 is "")
//!
//!   info:  bit 31 kind_flag | bits 24..28 kind | bits 0..15 vlen
//! ```
//!
//! The library has a smaller reader of its own (struct layouts for `btf::Mirror`), private to it.

use std::fmt;

/// How deep a chain of typedefs, qualifiers, arrays and nested structs may go.
pub const MAX_DEPTH: usize = 64;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

/// Why BTF could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(pub String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed BTF: {}", self.0)
    }
}

impl std::error::Error for BtfError {}

fn malformed<T>(what: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(what.into()))
}

/// A type id (0: void).
pub type TypeId = u32;

/// A member of a struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ty: TypeId,
    /// From the start of the struct, in bits.
    pub bit_offset: u32,
    /// A bitfield's width in bits (struct with kind_flag set; else the INT's own `bits`).
    pub bitfield_bits: Option<u8>,
}

/// One value of an enum (ENUM or ENUM64, sign-extended as the enum says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumValue {
    pub name: String,
    pub value: i128,
}

/// What a type is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Void,
    /// `bit_offset`/`bits`: the INT encoding's own bitfield (old-style BTF bitfields).
    Int {
        size: u32,
        signed: bool,
        char: bool,
        bool: bool,
        bit_offset: u8,
        bits: u8,
    },
    Ptr(TypeId),
    Array {
        elem: TypeId,
        nelems: u32,
    },
    Struct {
        size: u32,
        members: Vec<Member>,
    },
    Union {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        signed: bool,
        values: Vec<EnumValue>,
    },
    Fwd,
    Typedef(TypeId),
    Volatile(TypeId),
    Const(TypeId),
    Restrict(TypeId),
    TypeTag(TypeId),
    Func {
        proto: TypeId,
        linkage: u32,
    },
    FuncProto,
    Var {
        ty: TypeId,
        linkage: u32,
    },
    Datasec {
        vars: Vec<SecVar>,
    },
    Float {
        size: u32,
    },
    /// `btf_decl_tag("value")` on `target` (a member of it when `component` >= 0).
    DeclTag {
        target: TypeId,
        component: i32,
    },
}

/// A variable of a DATASEC: its VAR type id and place (as clang writes them: 0 in objects,
/// where the loader takes them from the symbol table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecVar {
    pub var: TypeId,
    pub offset: u32,
    pub size: u32,
}

/// `BTF_VAR_GLOBAL_EXTERN`, `BTF_FUNC_EXTERN`.
pub const LINKAGE_EXTERN: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub name: String,
    pub kind: Kind,
}

/// Parsed BTF: the types by id.
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
}

/// Little-endian reads of a checked slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let end = self.at.checked_add(4).filter(|&end| end <= self.bytes.len());
        let Some(word) = end.and_then(|end| self.bytes.get(self.at..end)) else {
            return malformed(format!("type data cut short at byte {}", self.at));
        };
        self.at += 4;
        Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    }
}

fn header_u32(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    match bytes.get(at..at + 4) {
        Some(w) => Ok(u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        None => malformed("the header is cut short"),
    }
}

/// The part `off..off + len` of `bytes`, after the header.
fn region<'a>(bytes: &'a [u8], hdr_len: usize, off: u32, len: u32, what: &str) -> Result<&'a [u8], BtfError> {
    let start = hdr_len.checked_add(off as usize);
    let end = start.and_then(|s| s.checked_add(len as usize));
    match (start, end) {
        (Some(s), Some(e)) if e <= bytes.len() => Ok(&bytes[s..e]),
        _ => malformed(format!("the {what} section ({len} bytes at {off}) is beyond the data")),
    }
}

fn string_at(strings: &[u8], off: u32) -> Result<String, BtfError> {
    let Some(rest) = strings.get(off as usize..) else {
        return malformed(format!("a name's offset {off} is beyond the strings"));
    };
    let Some(end) = rest.iter().position(|&b| b == 0) else {
        return malformed(format!("the name at offset {off} has no terminating NUL"));
    };
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

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

/// `BTF_INT_SIGNED`, `BTF_INT_CHAR`, `BTF_INT_BOOL` of the INT encoding.
const INT_SIGNED: u32 = 1;
const INT_CHAR: u32 = 2;
const INT_BOOL: u32 = 4;

impl Btf {
    /// Parses raw BTF (the `.BTF` section's bytes). Big-endian BTF is refused by its magic.
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        match bytes.get(..2) {
            Some([0xeb, 0x9f]) => return malformed("big-endian BTF (a bpfeb object): only little-endian is read"),
            Some(m) if u16::from_le_bytes([m[0], m[1]]) == MAGIC => {}
            _ => return malformed("no BTF magic (0xeb9f)"),
        }
        let hdr_len = header_u32(bytes, 4)? as usize;
        if hdr_len < HEADER_LEN {
            return malformed(format!("header of {hdr_len} bytes, below {HEADER_LEN}"));
        }
        let (type_off, type_len) = (header_u32(bytes, 8)?, header_u32(bytes, 12)?);
        let (str_off, str_len) = (header_u32(bytes, 16)?, header_u32(bytes, 20)?);
        let types = region(bytes, hdr_len, type_off, type_len, "type")?;
        let strings = region(bytes, hdr_len, str_off, str_len, "string")?;
        let mut reader = Reader { bytes: types, at: 0 };
        let mut parsed = vec![Type { name: String::new(), kind: Kind::Void }];
        while reader.at < types.len() {
            if types.len() - reader.at < TYPE_LEN {
                return malformed(format!("a type header cut short at byte {}", reader.at));
            }
            parsed.push(parse_type(&mut reader, strings)?);
        }
        let btf = Btf { types: parsed };
        btf.check_references()?;
        Ok(btf)
    }

    /// Every type id a type names exists.
    fn check_references(&self) -> Result<(), BtfError> {
        let n = self.types.len() as u64;
        for (id, t) in self.types.iter().enumerate() {
            let bad = referenced(&t.kind).find(|&r| u64::from(r) >= n);
            if let Some(r) = bad {
                return malformed(format!("type {id} ({}) refers to type {r}, beyond the last ({})", t.name, n - 1));
            }
        }
        Ok(())
    }

    /// The type `id` (void for an id beyond the table: every id in the table was checked).
    pub fn get(&self, id: TypeId) -> &Type {
        const VOID: &Type = &Type { name: String::new(), kind: Kind::Void };
        self.types.get(id as usize).unwrap_or(VOID)
    }

    /// Every type with its id.
    pub fn types(&self) -> impl Iterator<Item = (TypeId, &Type)> {
        self.types.iter().enumerate().map(|(id, t)| (id as TypeId, t))
    }

    /// `id` with typedefs, qualifiers and type tags stripped.
    pub fn resolve(&self, mut id: TypeId) -> Result<TypeId, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.get(id).kind {
                Kind::Typedef(t) | Kind::Volatile(t) | Kind::Const(t) | Kind::Restrict(t) | Kind::TypeTag(t) => id = t,
                _ => return Ok(id),
            }
        }
        malformed(format!("type {id}: a chain of typedefs or qualifiers deeper than {MAX_DEPTH} (a loop?)"))
    }

    /// `sizeof` of a type.
    pub fn size_of(&self, id: TypeId) -> Result<u64, BtfError> {
        self.size_at(id, 0)
    }

    fn size_at(&self, id: TypeId, depth: usize) -> Result<u64, BtfError> {
        if depth > MAX_DEPTH {
            return malformed(format!("type {id}: arrays nested deeper than {MAX_DEPTH} (a loop?)"));
        }
        let id = self.resolve(id)?;
        Ok(match &self.get(id).kind {
            Kind::Int { size, .. }
            | Kind::Struct { size, .. }
            | Kind::Union { size, .. }
            | Kind::Enum { size, .. }
            | Kind::Float { size } => u64::from(*size),
            Kind::Ptr(_) => 8,
            Kind::Array { elem, nelems } => match self.size_at(*elem, depth + 1)?.checked_mul(u64::from(*nelems)) {
                Some(size) => size,
                None => return malformed(format!("type {id}: an array too large to exist")),
            },
            other => return malformed(format!("type {id} ({}) has no size", kind_name(other))),
        })
    }

    /// The first type named `name` that `wanted` accepts.
    pub fn find(&self, name: &str, wanted: impl Fn(&Kind) -> bool) -> Option<TypeId> {
        self.types().find(|(_, t)| t.name == name && wanted(&t.kind)).map(|(id, _)| id)
    }

    /// The `btf_decl_tag` values on member `component` of `target`.
    pub fn member_tags(&self, target: TypeId, component: usize) -> impl Iterator<Item = &str> {
        self.types().filter_map(move |(_, t)| match t.kind {
            Kind::DeclTag { target: tagged, component: c } if tagged == target && c == component as i32 => {
                Some(t.name.as_str())
            }
            _ => None,
        })
    }

    /// The C spelling of a type, for people: `__u64`, `char[16]`, `struct foo`, `void *`.
    pub fn type_name(&self, id: TypeId) -> String {
        self.name_at(id, 0)
    }

    fn name_at(&self, mut id: TypeId, depth: usize) -> String {
        let mut suffix = String::new();
        for _ in 0..MAX_DEPTH {
            if depth > MAX_DEPTH {
                break;
            }
            let t = self.get(id);
            let named =
                |what: &str| if t.name.is_empty() { format!("{what} (anon)") } else { format!("{what} {}", t.name) };
            let base = match &t.kind {
                Kind::Array { elem, nelems } => {
                    suffix.push_str(&if *nelems == 0 { "[]".to_string() } else { format!("[{nelems}]") });
                    id = *elem;
                    continue;
                }
                Kind::Const(t) | Kind::Volatile(t) | Kind::Restrict(t) | Kind::TypeTag(t) => {
                    id = *t;
                    continue;
                }
                Kind::Ptr(to) => format!("{} *", self.name_at(*to, depth + 1)),
                Kind::Void => "void".into(),
                Kind::Struct { .. } | Kind::Fwd => named("struct"),
                Kind::Union { .. } => named("union"),
                Kind::Enum { .. } => named("enum"),
                _ => t.name.clone(),
            };
            return base + &suffix;
        }
        "?".into()
    }
}

/// The type ids a kind names.
fn referenced(kind: &Kind) -> Box<dyn Iterator<Item = TypeId> + '_> {
    match kind {
        Kind::Ptr(t)
        | Kind::Typedef(t)
        | Kind::Volatile(t)
        | Kind::Const(t)
        | Kind::Restrict(t)
        | Kind::TypeTag(t)
        | Kind::Func { proto: t, .. }
        | Kind::Var { ty: t, .. }
        | Kind::DeclTag { target: t, .. } => Box::new(std::iter::once(*t)),
        Kind::Array { elem, .. } => Box::new(std::iter::once(*elem)),
        Kind::Struct { members, .. } | Kind::Union { members, .. } => Box::new(members.iter().map(|m| m.ty)),
        Kind::Datasec { vars } => Box::new(vars.iter().map(|v| v.var)),
        _ => Box::new(std::iter::empty()),
    }
}

/// A kind's name, for messages.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Void => "void",
        Kind::Int { .. } => "int",
        Kind::Ptr(_) => "pointer",
        Kind::Array { .. } => "array",
        Kind::Struct { .. } => "struct",
        Kind::Union { .. } => "union",
        Kind::Enum { .. } => "enum",
        Kind::Fwd => "forward declaration",
        Kind::Typedef(_) => "typedef",
        Kind::Volatile(_) => "volatile",
        Kind::Const(_) => "const",
        Kind::Restrict(_) => "restrict",
        Kind::TypeTag(_) => "type tag",
        Kind::Func { .. } => "function",
        Kind::FuncProto => "function prototype",
        Kind::Var { .. } => "variable",
        Kind::Datasec { .. } => "data section",
        Kind::Float { .. } => "float",
        Kind::DeclTag { .. } => "declaration tag",
    }
}

fn parse_type(r: &mut Reader<'_>, strings: &[u8]) -> Result<Type, BtfError> {
    let name = string_at(strings, r.u32()?)?;
    let info = r.u32()?;
    let size_or_type = r.u32()?;
    let vlen = info & 0xffff;
    let kind_flag = info >> 31 == 1;
    let kind = match (info >> 24) & 0x1f {
        kind::INT => {
            let encoding = r.u32()?;
            let (bit_offset, bits) = ((encoding >> 16) & 0xff, encoding & 0xff);
            if !matches!(size_or_type, 1 | 2 | 4 | 8 | 16) || bits == 0 || bit_offset + bits > size_or_type * 8 {
                return malformed(format!("int {name:?}: size {size_or_type}, {bits} bits at bit {bit_offset}"));
            }
            let flags = encoding >> 24;
            Kind::Int {
                size: size_or_type,
                signed: flags & INT_SIGNED != 0,
                char: flags & INT_CHAR != 0,
                bool: flags & INT_BOOL != 0,
                bit_offset: bit_offset as u8,
                bits: bits as u8,
            }
        }
        kind::PTR => Kind::Ptr(size_or_type),
        kind::ARRAY => {
            let elem = r.u32()?;
            let _index = r.u32()?;
            Kind::Array { elem, nelems: r.u32()? }
        }
        kind::STRUCT => Kind::Struct { size: size_or_type, members: members(r, strings, vlen, kind_flag)? },
        kind::UNION => Kind::Union { size: size_or_type, members: members(r, strings, vlen, kind_flag)? },
        kind::ENUM => {
            let mut values = Vec::with_capacity(vlen as usize);
            for _ in 0..vlen {
                let name = string_at(strings, r.u32()?)?;
                let raw = r.u32()?;
                let value = if kind_flag { i128::from(raw as i32) } else { i128::from(raw) };
                values.push(EnumValue { name, value });
            }
            enum_kind(&name, size_or_type, kind_flag, values)?
        }
        kind::ENUM64 => {
            let mut values = Vec::with_capacity(vlen as usize);
            for _ in 0..vlen {
                let name = string_at(strings, r.u32()?)?;
                let raw = u64::from(r.u32()?) | u64::from(r.u32()?) << 32;
                let value = if kind_flag { i128::from(raw as i64) } else { i128::from(raw) };
                values.push(EnumValue { name, value });
            }
            enum_kind(&name, size_or_type, kind_flag, values)?
        }
        kind::FWD => Kind::Fwd,
        kind::TYPEDEF => Kind::Typedef(size_or_type),
        kind::VOLATILE => Kind::Volatile(size_or_type),
        kind::CONST => Kind::Const(size_or_type),
        kind::RESTRICT => Kind::Restrict(size_or_type),
        kind::TYPE_TAG => Kind::TypeTag(size_or_type),
        kind::FUNC => Kind::Func { proto: size_or_type, linkage: vlen },
        kind::FUNC_PROTO => {
            for _ in 0..vlen {
                r.u32()?;
                r.u32()?;
            }
            Kind::FuncProto
        }
        kind::VAR => Kind::Var { ty: size_or_type, linkage: r.u32()? },
        kind::DATASEC => {
            let mut vars = Vec::with_capacity(vlen as usize);
            for _ in 0..vlen {
                vars.push(SecVar { var: r.u32()?, offset: r.u32()?, size: r.u32()? });
            }
            Kind::Datasec { vars }
        }
        kind::FLOAT => match size_or_type {
            2 | 4 | 8 | 12 | 16 => Kind::Float { size: size_or_type },
            size => return malformed(format!("float {name:?} of {size} bytes")),
        },
        kind::DECL_TAG => Kind::DeclTag { target: size_or_type, component: r.u32()? as i32 },
        other => return malformed(format!("unknown kind {other} (type {name:?})")),
    };
    Ok(Type { name, kind })
}

fn enum_kind(name: &str, size: u32, signed: bool, values: Vec<EnumValue>) -> Result<Kind, BtfError> {
    match size {
        1 | 2 | 4 | 8 => Ok(Kind::Enum { size, signed, values }),
        _ => malformed(format!("enum {name:?} of {size} bytes")),
    }
}

fn members(r: &mut Reader<'_>, strings: &[u8], vlen: u32, kind_flag: bool) -> Result<Vec<Member>, BtfError> {
    let mut out = Vec::with_capacity(vlen as usize);
    for _ in 0..vlen {
        let name = string_at(strings, r.u32()?)?;
        let ty = r.u32()?;
        let offset = r.u32()?;
        let (bit_offset, bitfield_bits) = if kind_flag {
            // bits 24..31: the bitfield's width (0: not a bitfield); bits 0..23: the offset
            let bits = (offset >> 24) as u8;
            (offset & 0xff_ffff, (bits > 0).then_some(bits))
        } else {
            (offset, None)
        };
        out.push(Member { name, ty, bit_offset, bitfield_bits });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Raw BTF from a header, type data and strings.
    pub(crate) fn raw_btf(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_len = (types.len() * 4) as u32;
        let mut out = Vec::new();
        for word in [u32::from(MAGIC) | 1 << 16, HEADER_LEN as u32, 0, type_len, type_len, strings.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        for word in types {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(strings);
        out
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        kind << 24 | vlen | u32::from(kind_flag) << 31
    }

    #[test]
    fn every_kind_parses() {
        let strings = b"\0int\0s\0a\0b\0E\0X\0Y\0v\0.rodata\0tag\0f\0";
        let at = |name: &str| {
            strings.windows(name.len() + 2).position(|w| w[1..].starts_with(name.as_bytes()) && w[0] == 0).unwrap()
                as u32
                + 1
        };
        let types = [
            // 1: int, signed, 4 bytes
            at("int"),
            info(kind::INT, 0, false),
            4,
            INT_SIGNED << 24 | 32,
            // 2: struct s { int a; int b:3 } (kind_flag: bitfield widths in offsets)
            at("s"),
            info(kind::STRUCT, 2, true),
            8,
            at("a"),
            1,
            0,
            at("b"),
            1,
            3 << 24 | 32,
            // 3: int[4]
            0,
            info(kind::ARRAY, 0, false),
            0,
            1,
            1,
            4,
            // 4: enum E { X = -1, Y = 7 } (signed)
            at("E"),
            info(kind::ENUM, 2, true),
            4,
            at("X"),
            u32::MAX,
            at("Y"),
            7,
            // 5: const int, 6: pointer to 5, 7: typedef v = 3
            0,
            info(kind::CONST, 0, false),
            1,
            0,
            info(kind::PTR, 0, false),
            5,
            at("v"),
            info(kind::TYPEDEF, 0, false),
            3,
            // 8: var v of 7, 9: datasec .rodata { 8 }
            at("v"),
            info(kind::VAR, 0, false),
            7,
            1,
            at(".rodata"),
            info(kind::DATASEC, 1, false),
            0,
            8,
            0,
            16,
            // 10: decl tag on member 1 of 2, 11: float, 12: enum64 with one value
            at("tag"),
            info(kind::DECL_TAG, 0, false),
            2,
            1,
            at("f"),
            info(kind::FLOAT, 0, false),
            8,
            at("E"),
            info(kind::ENUM64, 1, false),
            8,
            at("X"),
            1,
            2,
        ];
        let btf = Btf::parse(&raw_btf(&types, strings)).unwrap();
        assert_eq!(
            btf.get(1).kind,
            Kind::Int { size: 4, signed: true, char: false, bool: false, bit_offset: 0, bits: 32 }
        );
        let Kind::Struct { size: 8, members } = &btf.get(2).kind else { panic!("{:?}", btf.get(2)) };
        assert_eq!(members[1], Member { name: "b".into(), ty: 1, bit_offset: 32, bitfield_bits: Some(3) });
        assert_eq!(btf.size_of(7).unwrap(), 16);
        assert_eq!(btf.resolve(7).unwrap(), 3);
        assert_eq!(btf.type_name(7), "v");
        assert_eq!(btf.type_name(3), "int[4]");
        assert_eq!(btf.type_name(6), "int *");
        let Kind::Enum { values, .. } = &btf.get(4).kind else { panic!() };
        assert_eq!((values[0].value, values[1].value), (-1, 7));
        assert_eq!(btf.member_tags(2, 1).collect::<Vec<_>>(), ["tag"]);
        assert_eq!(btf.get(11).kind, Kind::Float { size: 8 });
        let Kind::Enum { values, size: 8, .. } = &btf.get(12).kind else { panic!() };
        assert_eq!(values[0].value, 1 | 2 << 32);
        assert_eq!(btf.find("s", |k| matches!(k, Kind::Struct { .. })), Some(2));
    }

    #[test]
    fn loops_and_bad_references_are_errors_not_hangs() {
        // 1: typedef to 2, 2: typedef to 1
        let loop_types = [0, info(kind::TYPEDEF, 0, false), 2, 0, info(kind::TYPEDEF, 0, false), 1];
        let btf = Btf::parse(&raw_btf(&loop_types, b"\0")).unwrap();
        assert!(btf.resolve(1).is_err());
        assert!(btf.size_of(1).is_err());
        // an array of itself
        let array = [0, info(kind::ARRAY, 0, false), 0, 1, 1, 2];
        assert!(Btf::parse(&raw_btf(&array, b"\0")).unwrap().size_of(1).is_err());
        // a pointer to an array of itself
        let ptr_loop = [0, info(kind::PTR, 0, false), 2, 0, info(kind::ARRAY, 0, false), 0, 1, 1, 1];
        let btf = Btf::parse(&raw_btf(&ptr_loop, b"\0")).unwrap();
        assert!(btf.type_name(1).starts_with('?'), "cut at the depth limit: {}", btf.type_name(1));
        let dangling = [0, info(kind::PTR, 0, false), 9];
        assert!(Btf::parse(&raw_btf(&dangling, b"\0")).unwrap_err().0.contains("refers to type 9"));
        let bad_name = [77, info(kind::PTR, 0, false), 0];
        assert!(Btf::parse(&raw_btf(&bad_name, b"\0")).is_err());
        let cut = [0, info(kind::STRUCT, 3, false), 4, 0, 0];
        assert!(Btf::parse(&raw_btf(&cut, b"\0")).is_err());
        assert!(Btf::parse(b"").is_err() && Btf::parse(&[0x9f, 0xeb, 1]).is_err());
        assert!(Btf::parse(&[0xeb, 0x9f, 1, 0]).unwrap_err().0.contains("big-endian"));
    }

    /// A real object's BTF, as clang wrote it.
    fn object_btf() -> Vec<u8> {
        crate::run::object::btf_section(crate::objects::EXEC.ring).unwrap().to_vec()
    }

    #[test]
    fn a_real_object_parses() {
        let btf = Btf::parse(&object_btf()).unwrap();
        let id = btf.find("exec_event", |k| matches!(k, Kind::Struct { .. })).unwrap();
        assert_eq!(btf.size_of(id).unwrap(), 56);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any change to real BTF parses or is an error; what parses can be walked whole.
        #[test]
        fn mutated_btf_never_panics(edits in proptest::collection::vec((0usize..1 << 20, proptest::num::u8::ANY), 1..8)) {
            let mut bytes = object_btf();
            for (at, value) in edits {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            if let Ok(btf) = Btf::parse(&bytes) {
                for (id, _) in btf.types() {
                    let _ = btf.size_of(id);
                    let _ = btf.type_name(id);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if bytes.len() >= 2 {
                bytes[0] = 0x9f;
                bytes[1] = 0xeb;
            }
            let _ = Btf::parse(&bytes);
        }
    }
}
