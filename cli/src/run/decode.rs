//! Records decoded from BTF: a [`Plan`] is compiled once from the record struct (every member's
//! offset, width, signedness, bitfield, enum names, strings, nested structs and arrays unrolled
//! into one flat list of [`Op`]s with their JSON keys already written), then applied to each
//! record with no tree walk and no allocation per field: each op reads its bytes and appends its
//! key and value to the line being built.
//!
//! ```text
//!   struct ev { __u64 ts; __u32 len; char comm[4]; struct { __u8 a:3, b:5; } f; char data[] };
//!   ops:  Int  at 0  size 8   ,"ts":
//!         Int  at 8  size 4   ,"len":
//!         Str  at 12 len 4    ,"comm":           (cut at NUL; ,"comm_hex": when not UTF-8)
//!         Open {              ,"f":
//!         Bits at 16 shift 0 bits 3   "a":
//!         Bits at 16 shift 3 bits 5   ,"b":
//!         Close }
//!   tail: data at 20, one char per byte, `len` of them (btf_decl_tag("bpfstream_len:len"))
//! ```
//!
//! The tail is a trailing flexible array member: it starts at the member's offset, as C lays it
//! out (not at `sizeof`), and holds as many elements as the field its `bpfstream_len:FIELD`
//! declaration tag names says; untagged, it takes the rest of the record.

use std::fmt::Write as _;
use std::ops::Range;

use super::btf::{Btf, Kind, Member, TypeId, MAX_DEPTH};
use crate::output::{display_bytes, json_escape_bytes, json_escape_str};

/// The declaration tag that names a flexible array's length field.
pub const LEN_TAG: &str = "bpfstream_len:";

/// Most ops one record type may unroll into; a larger array is shown as hex.
const MAX_OPS: usize = 1 << 16;

/// Top-level names the JSON line uses for itself: a field so named gets a trailing `_`.
const RESERVED: [&str; 4] = ["type", "map", "stream", "cpu"];

/// How an integer's value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    Number,
    Bool,
    /// By name, from the plan's enum table `n` (the number when no name has that value).
    Enum(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    /// A little-endian integer of 1, 2, 4 or 8 bytes.
    Int {
        size: u8,
        signed: bool,
        show: Show,
    },
    Int128 {
        signed: bool,
    },
    /// `bits` bits from bit `shift` of the bytes at `at` (a bitfield).
    Bits {
        shift: u8,
        bits: u8,
        signed: bool,
        show: Show,
    },
    Float {
        size: u8,
    },
    /// A pointer: its value in hex.
    Pointer,
    /// A char array: a string cut at its first NUL.
    Str {
        len: u32,
        hex_key: Box<str>,
    },
    /// Bytes with no better form: hex.
    Hex {
        len: u32,
    },
    /// `{` or `[`, and their ends.
    Open(char),
    Close(char),
}

/// One step of a plan: the bytes at `at`, shown as `what`, after `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Op {
    at: u32,
    /// What precedes the value in JSON: `,"name":`, `"name":` (first in an object), `,` or ``.
    key: Box<str>,
    /// The same in a table cell: ` name=`, `name=`, ` ` or ``.
    label: Box<str>,
    what: What,
}

/// The variable-length tail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tail {
    /// The flexible member's offset.
    at: usize,
    elem_size: usize,
    /// Where its length is: the op of the length field (`None`: the rest of the record).
    len_field: Option<Op>,
    /// char elements: a string; else each element's ops, at offsets from the element.
    elem: TailElem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TailElem {
    Str { hex_key: Box<str> },
    Ops(Vec<Op>),
}

/// What a field is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Ops(Range<usize>),
    Tail,
}

/// How a field sits in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub width: usize,
    pub right: bool,
}

/// A top-level field of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its JSON key (the C name, with `_` after a reserved one).
    pub name: String,
    /// What precedes its value in JSON: `,"name":`.
    key: Box<str>,
    content: Content,
    pub column: Column,
}

/// Why a record cannot be decoded: too short for its type or for the length it states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A record type, compiled.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The struct's name: the JSON line's `type`.
    pub name: String,
    /// Bytes every record has (the struct's size, or the flexible member's offset).
    pub fixed: usize,
    ops: Vec<Op>,
    enums: Vec<Vec<(i128, Box<str>)>>,
    fields: Vec<Field>,
    tail: Option<Tail>,
}

/// A record type that cannot be decoded, and why (one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(text: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(text.into()))
}

/// JSON key prefix of a member (`first`: the first in its object).
fn json_key(name: &str, first: bool) -> Box<str> {
    let mut key = String::from(if first { "\"" } else { ",\"" });
    json_escape_str(&mut key, name);
    key.push_str("\":");
    key.into()
}

fn text_label(name: &str, first: bool) -> Box<str> {
    format!("{}{}=", if first { "" } else { " " }, display_bytes(name.as_bytes())).into()
}

/// Whether arrays of this (resolved) type are strings: `char`, as C writes text.
fn is_char(btf: &Btf, id: TypeId) -> bool {
    let t = btf.get(id);
    matches!(t.kind, Kind::Int { size: 1, char, .. } if char || t.name == "char")
}

impl Plan {
    /// Compiles the plan of `struct_id` (a struct or union of `btf`).
    pub fn compile(btf: &Btf, struct_id: TypeId) -> Result<Plan, PlanError> {
        let id = btf.resolve(struct_id).map_err(|e| PlanError(e.to_string()))?;
        let t = btf.get(id);
        let (size, members) = match &t.kind {
            Kind::Struct { size, members } | Kind::Union { size, members } => (*size as usize, members),
            other => return fail(format!("{} is a {}, not a struct", t.name, super::btf::kind_name(other))),
        };
        let mut compiler = Compiler { btf, ops: Vec::new(), enums: Vec::new() };
        let mut fields = Vec::new();
        let mut tail = None;
        let mut fixed = size;
        let flat = compiler.flatten(members, 0, 0)?;
        for (index, (member, bit_base)) in flat.iter().enumerate() {
            let name = if RESERVED.contains(&member.name.as_str()) {
                format!("{}_", member.name)
            } else {
                member.name.clone()
            };
            let key = json_key(&name, false);
            let last = index + 1 == flat.len();
            if last && is_flexible(btf, member.ty) {
                let at = usize::try_from((bit_base + u64::from(member.bit_offset)) / 8).unwrap_or(usize::MAX);
                tail = Some(compiler.tail(member, at, &key, id, members, &flat)?);
                fixed = at;
                fields.push(Field { name, key, content: Content::Tail, column: Column { width: 0, right: false } });
                continue;
            }
            if member.name.is_empty() {
                continue; // unnamed padding bitfields
            }
            let start = compiler.ops.len();
            compiler.member(&key, "", member, *bit_base, 0, 0)?;
            let content = start..compiler.ops.len();
            let column = compiler.column(&compiler.ops[content.clone()], &name);
            fields.push(Field { name, key, content: Content::Ops(content), column });
        }
        for &tag_member in &tagged_members(btf, id) {
            let is_tail = flat.last().is_some_and(|(m, _)| m.name == members[tag_member].name) && tail.is_some();
            if !is_tail {
                let name = &members[tag_member].name;
                return fail(format!(
                    "{name} has a {LEN_TAG} tag but is not the struct's trailing flexible array member"
                ));
            }
        }
        let plan = Plan { name: t.name.clone(), fixed, ops: compiler.ops, enums: compiler.enums, fields, tail };
        plan.check_bounds(size)?;
        Ok(plan)
    }

    /// Every op reads inside the struct (BTF that says otherwise is malformed).
    fn check_bounds(&self, size: usize) -> Result<(), PlanError> {
        for op in &self.ops {
            let end = op.at as usize + op.width();
            if end > size {
                return fail(format!(
                    "a member of {} reads bytes {}..{end}, beyond its {size} bytes",
                    self.name, op.at
                ));
            }
        }
        Ok(())
    }

    /// The top-level fields, in output order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Keeps only the fields `names`, in that order (`--fields`).
    pub fn select(&mut self, names: &[String]) -> Result<(), String> {
        let mut chosen = Vec::with_capacity(names.len());
        for name in names {
            let wanted = |f: &&Field| f.name == *name || f.name.strip_suffix('_') == Some(name);
            match self.fields.iter().find(wanted) {
                Some(field) => chosen.push(field.clone()),
                None => {
                    let known: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
                    return Err(format!(
                        "--fields: {} has no field {name:?} (its fields: {})",
                        self.name,
                        known.join(",")
                    ));
                }
            }
        }
        self.fields = chosen;
        Ok(())
    }

    /// The offset of the top-level `__u64` field `name`, if there is one (e.g. `ts_ns`).
    pub fn u64_field(&self, name: &str) -> Option<usize> {
        let field = self.fields.iter().find(|f| f.name == name)?;
        let Content::Ops(range) = &field.content else { return None };
        match &self.ops[range.clone()] {
            [op @ Op { what: What::Int { size: 8, signed: false, show: Show::Number }, .. }] => Some(op.at as usize),
            _ => None,
        }
    }

    /// The number of tail elements of `record`, once it is known to hold its type.
    pub fn check(&self, record: &[u8]) -> Result<usize, Malformed> {
        if record.len() < self.fixed {
            return Err(Malformed);
        }
        let Some(tail) = &self.tail else { return Ok(0) };
        let room = (record.len() - tail.at) / tail.elem_size;
        match &tail.len_field {
            None => Ok(room),
            Some(op) => match usize::try_from(read_int(record, op)) {
                Ok(count) if count <= room => Ok(count),
                _ => Err(Malformed),
            },
        }
    }

    /// Appends the fields of `record` (checked: `tail` is [`check`](Self::check)'s count) to a
    /// JSON object being written, each as `,"name":value`.
    pub fn json(&self, record: &[u8], tail: usize, out: &mut String) {
        for field in &self.fields {
            match &field.content {
                Content::Ops(range) => {
                    for op in &self.ops[range.clone()] {
                        self.json_op(op, record, 0, out);
                    }
                }
                Content::Tail => self.json_tail(&field.key, record, tail, out),
            }
        }
    }

    fn json_tail(&self, key: &str, record: &[u8], count: usize, out: &mut String) {
        let Some(tail) = &self.tail else { return };
        out.push_str(key);
        match &tail.elem {
            TailElem::Str { hex_key } => json_str(out, bytes(record, tail.at, count), hex_key),
            TailElem::Ops(ops) => {
                out.push('[');
                for i in 0..count {
                    let base = tail.at + i * tail.elem_size;
                    for (j, op) in ops.iter().enumerate() {
                        if j == 0 && i > 0 {
                            out.push(',');
                        }
                        self.json_op(op, record, base, out);
                    }
                }
                out.push(']');
            }
        }
    }

    fn json_op(&self, op: &Op, record: &[u8], base: usize, out: &mut String) {
        out.push_str(&op.key);
        let at = base + op.at as usize;
        match &op.what {
            What::Int { show, .. } | What::Bits { show, .. } => {
                let value = read_value(record, base, op);
                match self.enum_name(*show, value) {
                    Some(name) => {
                        out.push('"');
                        out.push_str(name);
                        out.push('"');
                    }
                    None => push_value(out, *show, value),
                }
            }
            What::Str { len, hex_key } => json_str(out, bytes(record, at, *len as usize), hex_key),
            What::Pointer | What::Hex { .. } | What::Int128 { .. } | What::Float { .. } => {
                let quoted = matches!(op.what, What::Pointer | What::Hex { .. });
                if quoted {
                    out.push('"');
                }
                self.scalar_text(op, record, base, out);
                if quoted {
                    out.push('"');
                }
            }
            What::Open(c) | What::Close(c) => out.push(*c),
        }
    }

    /// The values shown the same way in JSON and tables (a pointer and hex unquoted here).
    fn scalar_text(&self, op: &Op, record: &[u8], base: usize, out: &mut String) {
        let at = base + op.at as usize;
        match op.what {
            What::Pointer => {
                let _ = write!(out, "{:#x}", u64::from_le_bytes(array(record, at)));
            }
            What::Hex { len } => push_hex(out, bytes(record, at, len as usize)),
            What::Int128 { signed } => {
                let raw = u128::from_le_bytes(array(record, at));
                let mut num = itoa::Buffer::new();
                out.push_str(if signed { num.format(raw as i128) } else { num.format(raw) });
            }
            What::Float { size } => {
                let value = if size == 4 {
                    f64::from(f32::from_le_bytes(array(record, at)))
                } else {
                    f64::from_le_bytes(array(record, at))
                };
                if value.is_finite() {
                    let _ = write!(out, "{value}");
                } else {
                    out.push_str("null");
                }
            }
            _ => {}
        }
    }

    fn enum_name(&self, show: Show, value: Value) -> Option<&str> {
        let Show::Enum(table) = show else { return None };
        let names = self.enums.get(table as usize)?;
        let wanted = value.as_i128();
        names.binary_search_by_key(&wanted, |(v, _)| *v).ok().map(|i| &*names[i].1)
    }

    /// The table cell of `field` for `record` (checked), escaped as the tracers' tables are.
    pub fn cell(&self, field: &Field, record: &[u8], tail: usize, out: &mut String) {
        match &field.content {
            Content::Ops(range) => {
                for op in &self.ops[range.clone()] {
                    self.text_op(op, record, 0, out);
                }
            }
            Content::Tail => {
                let Some(t) = &self.tail else { return };
                match &t.elem {
                    TailElem::Str { .. } => push_display(out, c_str(bytes(record, t.at, tail))),
                    TailElem::Ops(ops) => {
                        out.push('[');
                        for i in 0..tail {
                            for (j, op) in ops.iter().enumerate() {
                                if j == 0 && i > 0 {
                                    out.push(' ');
                                }
                                self.text_op(op, record, t.at + i * t.elem_size, out);
                            }
                        }
                        out.push(']');
                    }
                }
            }
        }
    }

    fn text_op(&self, op: &Op, record: &[u8], base: usize, out: &mut String) {
        out.push_str(&op.label);
        match &op.what {
            What::Int { show, .. } | What::Bits { show, .. } => {
                let value = read_value(record, base, op);
                match self.enum_name(*show, value) {
                    Some(name) => out.push_str(name),
                    None => push_value(out, *show, value),
                }
            }
            What::Str { len, .. } => push_display(out, c_str(bytes(record, base + op.at as usize, *len as usize))),
            What::Open(c) | What::Close(c) => out.push(*c),
            _ => self.scalar_text(op, record, base, out),
        }
    }
}

/// Whether a member is a flexible array (`T name[]` or `T name[0]`).
fn is_flexible(btf: &Btf, ty: TypeId) -> bool {
    btf.resolve(ty).is_ok_and(|id| matches!(btf.get(id).kind, Kind::Array { nelems: 0, .. }))
}

/// Indexes of the members of `struct_id` with a length tag.
fn tagged_members(btf: &Btf, struct_id: TypeId) -> Vec<usize> {
    let (Kind::Struct { members, .. } | Kind::Union { members, .. }) = &btf.get(struct_id).kind else {
        return Vec::new();
    };
    (0..members.len()).filter(|&i| btf.member_tags(struct_id, i).any(|t| t.starts_with(LEN_TAG))).collect()
}

/// An integer as read: its bits, and whether to read them as signed.
#[derive(Debug, Clone, Copy)]
struct Value {
    raw: u64,
    signed: bool,
}

impl Value {
    fn as_i128(self) -> i128 {
        if self.signed {
            i128::from(self.raw as i64)
        } else {
            i128::from(self.raw)
        }
    }
}

fn push_value(out: &mut String, show: Show, value: Value) {
    if show == Show::Bool {
        out.push_str(if value.raw != 0 { "true" } else { "false" });
        return;
    }
    let mut num = itoa::Buffer::new();
    out.push_str(if value.signed { num.format(value.raw as i64) } else { num.format(value.raw) });
}

/// `N` bytes at `at` (zeros past the end: plans are checked to read inside the record).
fn array<const N: usize>(record: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(bytes) = record.get(at..at.saturating_add(N)) {
        out.copy_from_slice(bytes);
    }
    out
}

/// `len` bytes at `at`, or what there is of them.
fn bytes(record: &[u8], at: usize, len: usize) -> &[u8] {
    let start = at.min(record.len());
    &record[start..at.saturating_add(len).min(record.len())]
}

fn c_str(bytes: &[u8]) -> &[u8] {
    crate::output::c_str(bytes)
}

/// The integer an `Int` or `Bits` op reads, sign-extended when signed.
fn read_value(record: &[u8], base: usize, op: &Op) -> Value {
    let at = base + op.at as usize;
    match op.what {
        What::Int { size, signed, .. } => {
            let raw = match size {
                1 => u64::from(record.get(at).copied().unwrap_or(0)),
                2 => u64::from(u16::from_le_bytes(array(record, at))),
                4 => u64::from(u32::from_le_bytes(array(record, at))),
                _ => u64::from_le_bytes(array(record, at)),
            };
            Value { raw: if signed { sign_extend(raw, u32::from(size) * 8) } else { raw }, signed }
        }
        What::Bits { shift, bits, signed, .. } => {
            let window = u128::from_le_bytes(array::<16>(&pad_window(record, at), 0));
            let raw = (window >> shift) as u64 & mask(bits);
            Value { raw: if signed { sign_extend(raw, u32::from(bits)) } else { raw }, signed }
        }
        _ => Value { raw: 0, signed: false },
    }
}

/// Up to 16 bytes from `at`, zero-padded.
fn pad_window(record: &[u8], at: usize) -> [u8; 16] {
    let mut window = [0u8; 16];
    let have = bytes(record, at, 16);
    window[..have.len()].copy_from_slice(have);
    window
}

fn read_int(record: &[u8], op: &Op) -> u64 {
    let value = read_value(record, 0, op);
    if value.signed && (value.raw as i64) < 0 {
        u64::MAX // a negative length: more than any record holds
    } else {
        value.raw
    }
}

fn mask(bits: u8) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

fn sign_extend(raw: u64, bits: u32) -> u64 {
    if bits >= 64 {
        return raw;
    }
    let shift = 64 - bits;
    (((raw << shift) as i64) >> shift) as u64
}

/// A JSON string of a C string field; a `_hex` twin when it is not UTF-8.
fn json_str(out: &mut String, field: &[u8], hex_key: &str) {
    let text = c_str(field);
    out.push('"');
    let lossy = json_escape_bytes(out, text);
    out.push('"');
    if lossy {
        out.push_str(hex_key);
        out.push('"');
        push_hex(out, text);
        out.push('"');
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// Text for a table, as the tracers escape it; printable ASCII (nearly always) goes as is.
fn push_display(out: &mut String, bytes: &[u8]) {
    let plain = bytes.iter().all(|&b| (b.is_ascii_graphic() && b != b'\\') || b == b' ');
    match std::str::from_utf8(bytes) {
        Ok(text) if plain => out.push_str(text),
        _ => out.push_str(&display_bytes(bytes)),
    }
}

impl Op {
    /// Bytes it reads from `at`.
    fn width(&self) -> usize {
        match &self.what {
            What::Int { size, .. } => usize::from(*size),
            What::Int128 { .. } => 16,
            What::Bits { shift, bits, .. } => (usize::from(*shift) + usize::from(*bits)).div_ceil(8),
            What::Float { size } => usize::from(*size),
            What::Pointer => 8,
            What::Str { len, .. } | What::Hex { len } => *len as usize,
            What::Open(_) | What::Close(_) => 0,
        }
    }
}

/// Builds the ops of a struct, member by member.
struct Compiler<'a> {
    btf: &'a Btf,
    ops: Vec<Op>,
    enums: Vec<Vec<(i128, Box<str>)>>,
}

impl<'a> Compiler<'a> {
    /// The members of a struct with those of its anonymous struct and union members in their
    /// place (C reads them as the parent's), each with the bit offset of the struct it is in.
    fn flatten(&self, members: &'a [Member], bit_base: u64, depth: usize) -> Result<Vec<(&'a Member, u64)>, PlanError> {
        if depth > MAX_DEPTH {
            return fail(format!("anonymous members nested deeper than {MAX_DEPTH}"));
        }
        let btf: &'a Btf = self.btf;
        let mut out = Vec::with_capacity(members.len());
        for member in members {
            if member.name.is_empty() && member.bitfield_bits.is_none() {
                if let Kind::Struct { members: inner, .. } | Kind::Union { members: inner, .. } =
                    &btf.get(self.resolve(member.ty)?).kind
                {
                    out.extend(self.flatten(inner, bit_base + u64::from(member.bit_offset), depth + 1)?);
                    continue;
                }
            }
            out.push((member, bit_base));
        }
        Ok(out)
    }

    fn resolve(&self, ty: TypeId) -> Result<TypeId, PlanError> {
        self.btf.resolve(ty).map_err(|e| PlanError(e.to_string()))
    }

    /// The ops of one member at `bit_base` + its offset (`base_at`: bytes of enclosing arrays).
    fn member(
        &mut self,
        key: &str,
        label: &str,
        member: &Member,
        bit_base: u64,
        base_at: usize,
        depth: usize,
    ) -> Result<(), PlanError> {
        let bit_offset = bit_base + u64::from(member.bit_offset);
        let id = self.resolve(member.ty)?;
        let int_bits = match self.btf.get(id).kind {
            Kind::Int { bit_offset, bits, size, .. } if u32::from(bits) < size * 8 || bit_offset > 0 => {
                Some((bit_offset, bits))
            }
            _ => None,
        };
        if let Some(bits) = member.bitfield_bits.or(int_bits.map(|(_, b)| b)) {
            let bit = bit_offset + u64::from(int_bits.map_or(0, |(o, _)| o));
            return self.bitfield(key, label, &member.name, id, base_at as u64 * 8 + bit, bits);
        }
        if bit_offset % 8 != 0 {
            return fail(format!(
                "member {} is at bit {bit_offset}, not on a byte, and is not a bitfield",
                member.name
            ));
        }
        self.value(key, label, id, base_at + (bit_offset / 8) as usize, depth)
    }

    fn bitfield(
        &mut self,
        key: &str,
        label: &str,
        name: &str,
        id: TypeId,
        bit: u64,
        bits: u8,
    ) -> Result<(), PlanError> {
        let (signed, show) = match &self.btf.get(id).kind {
            Kind::Int { signed, bool, .. } => (*signed, if *bool { Show::Bool } else { Show::Number }),
            Kind::Enum { signed, .. } => (*signed, self.enum_table(id)),
            other => return fail(format!("bitfield {name} is a {}", super::btf::kind_name(other))),
        };
        if bits == 0 || bits > 64 {
            return fail(format!("bitfield {name} of {bits} bits"));
        }
        let at = u32::try_from(bit / 8).map_err(|_| PlanError(format!("bitfield {name} is too far in")))?;
        self.push(key, label, at as usize, What::Bits { shift: (bit % 8) as u8, bits, signed, show })
    }

    fn push(&mut self, key: &str, label: &str, at: usize, what: What) -> Result<(), PlanError> {
        if self.ops.len() >= MAX_OPS {
            return fail(format!("the record type has more than {MAX_OPS} values to show"));
        }
        let at = u32::try_from(at).map_err(|_| PlanError("a member beyond 4 GiB".into()))?;
        self.ops.push(Op { at, key: key.into(), label: label.into(), what });
        Ok(())
    }

    /// The ops of a value of (resolved) type `id` at byte `at`.
    fn value(&mut self, key: &str, label: &str, id: TypeId, at: usize, depth: usize) -> Result<(), PlanError> {
        if depth > MAX_DEPTH {
            return fail(format!("types nested deeper than {MAX_DEPTH}"));
        }
        let btf: &'a Btf = self.btf;
        let what = match &btf.get(id).kind {
            Kind::Int { size: 16, signed, .. } => What::Int128 { signed: *signed },
            Kind::Int { size, signed, bool, .. } => {
                What::Int { size: *size as u8, signed: *signed, show: if *bool { Show::Bool } else { Show::Number } }
            }
            Kind::Enum { size, signed, .. } => {
                What::Int { size: *size as u8, signed: *signed, show: self.enum_table(id) }
            }
            Kind::Float { size: size @ (4 | 8) } => What::Float { size: *size as u8 },
            Kind::Float { size } => What::Hex { len: *size },
            Kind::Ptr(_) => What::Pointer,
            Kind::Array { elem, nelems } => return self.array(key, label, *elem, *nelems, at, depth),
            Kind::Struct { members, .. } | Kind::Union { members, .. } => {
                return self.compound(key, label, members, at, depth);
            }
            other => {
                return fail(format!(
                    "a member's type {} ({}) has no value to show",
                    self.btf.type_name(id),
                    super::btf::kind_name(other)
                ))
            }
        };
        self.push(key, label, at, what)
    }

    fn compound(
        &mut self,
        key: &str,
        label: &str,
        members: &'a [Member],
        at: usize,
        depth: usize,
    ) -> Result<(), PlanError> {
        self.push(key, label, at, What::Open('{'))?;
        let flat = self.flatten(members, 0, depth)?;
        let mut first = true;
        for (member, bit_base) in flat {
            if member.name.is_empty() {
                continue;
            }
            self.member(
                &json_key(&member.name, first),
                &text_label(&member.name, first),
                member,
                bit_base,
                at,
                depth + 1,
            )?;
            first = false;
        }
        self.push("", "", at, What::Close('}'))
    }

    fn array(
        &mut self,
        key: &str,
        label: &str,
        elem: TypeId,
        nelems: u32,
        at: usize,
        depth: usize,
    ) -> Result<(), PlanError> {
        let elem = self.resolve(elem)?;
        let elem_size = self.btf.size_of(elem).map_err(|e| PlanError(e.to_string()))? as usize;
        if is_char(self.btf, elem) {
            let hex_key = hex_key(key);
            return self.push(key, label, at, What::Str { len: nelems, hex_key });
        }
        let too_large = || PlanError(format!("an array of {nelems} elements of {elem_size} bytes"));
        let total = elem_size.checked_mul(nelems as usize).and_then(|t| u32::try_from(t).ok()).ok_or_else(too_large)?;
        self.push(key, label, at, What::Open('['))?;
        let start = self.ops.len();
        if nelems > 0 {
            self.value("", "", elem, at, depth + 1)?;
        }
        let per_elem = self.ops.len() - start;
        if per_elem.saturating_mul(nelems as usize) + self.ops.len() > MAX_OPS {
            self.ops.truncate(start - 1);
            return self.push(key, label, at, What::Hex { len: total });
        }
        for i in 1..nelems as usize {
            for j in 0..per_elem {
                let mut op = self.ops[start + j].clone();
                // i * elem_size < total, which fits a u32
                op.at = op.at.checked_add((i * elem_size) as u32).ok_or_else(too_large)?;
                if j == 0 {
                    (op.key, op.label) = (",".into(), " ".into());
                }
                self.ops.push(op);
            }
        }
        self.push("", "", at, What::Close(']'))
    }

    /// The enum table of `id`, sorted by value (the first name of a value kept).
    fn enum_table(&mut self, id: TypeId) -> Show {
        let Kind::Enum { values, .. } = &self.btf.get(id).kind else { return Show::Number };
        let mut table: Vec<(i128, Box<str>)> = Vec::with_capacity(values.len());
        for v in values {
            let mut name = String::new();
            json_escape_str(&mut name, &v.name);
            table.push((v.value, name.into()));
        }
        table.sort_by_key(|(v, _)| *v);
        table.dedup_by_key(|(v, _)| *v);
        self.enums.push(table);
        Show::Enum(self.enums.len() as u32 - 1)
    }

    /// The tail of a flexible member at byte `at`; its length field named by its tag.
    fn tail(
        &mut self,
        member: &Member,
        at: usize,
        key: &str,
        struct_id: TypeId,
        members: &[Member],
        flat: &[(&Member, u64)],
    ) -> Result<Tail, PlanError> {
        let Kind::Array { elem, .. } = self.btf.get(self.resolve(member.ty)?).kind else { return fail("not an array") };
        let elem = self.resolve(elem)?;
        let elem_size = self.btf.size_of(elem).map_err(|e| PlanError(e.to_string()))? as usize;
        if elem_size == 0 {
            return fail(format!("flexible member {} has elements of size 0", member.name));
        }
        let index = members.iter().position(|m| std::ptr::eq(m, member));
        let tag = index.and_then(|i| self.btf.member_tags(struct_id, i).find_map(|t| t.strip_prefix(LEN_TAG)));
        let len_field = match tag {
            None => None,
            Some(name) => Some(self.len_field(name, &member.name, flat)?),
        };
        let elem = if is_char(self.btf, elem) {
            TailElem::Str { hex_key: hex_key(key) }
        } else {
            let mut inner = Compiler { btf: self.btf, ops: Vec::new(), enums: std::mem::take(&mut self.enums) };
            inner.value("", "", elem, 0, 1)?;
            self.enums = inner.enums;
            TailElem::Ops(inner.ops)
        };
        Ok(Tail { at, elem_size, len_field, elem })
    }

    /// The op that reads the length field `name` of the flexible member `of`.
    fn len_field(&mut self, name: &str, of: &str, flat: &[(&Member, u64)]) -> Result<Op, PlanError> {
        let Some((member, bit_base)) = flat.iter().find(|(m, _)| m.name == name) else {
            return fail(format!("{of}'s tag {LEN_TAG}{name} names no member of the struct"));
        };
        let saved = self.ops.len();
        self.member("", "", member, *bit_base, 0, 0)?;
        let op = self.ops.pop().filter(|_| self.ops.len() == saved);
        match op {
            Some(
                op @ Op { what: What::Int { show: Show::Number, .. } | What::Bits { show: Show::Number, .. }, .. },
            ) => Ok(op),
            _ => {
                self.ops.truncate(saved);
                fail(format!("{of}'s length field {name} is not an integer"))
            }
        }
    }

    /// The table column of a field's ops, sized by its type.
    fn column(&self, ops: &[Op], name: &str) -> Column {
        let (width, right) = match ops {
            [op] => match &op.what {
                What::Int { size, signed, show: Show::Number } => {
                    (digits(u32::from(*size) * 8) + usize::from(*signed), true)
                }
                What::Bits { bits, signed, show: Show::Number, .. } => {
                    (digits(u32::from(*bits)) + usize::from(*signed), true)
                }
                What::Int { show: Show::Bool, .. } | What::Bits { show: Show::Bool, .. } => (5, false),
                What::Int { show: Show::Enum(t), .. } | What::Bits { show: Show::Enum(t), .. } => {
                    (self.enums[*t as usize].iter().map(|(_, n)| n.chars().count()).max().unwrap_or(0).min(24), false)
                }
                What::Int128 { signed } => (39 + usize::from(*signed), true),
                What::Float { .. } => (12, true),
                What::Pointer => (18, false),
                What::Str { len, .. } => ((*len as usize).min(32), false),
                _ => (0, false),
            },
            _ => (0, false),
        };
        Column { width: width.max(name.chars().count()), right }
    }
}

/// Decimal digits of the largest unsigned value of `bits` bits.
fn digits(bits: u32) -> usize {
    let max = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    itoa::Buffer::new().format(max).len()
}

/// `,"name_hex":` from `,"name":`.
fn hex_key(key: &str) -> Box<str> {
    let base = key.strip_suffix("\":").unwrap_or(key);
    let base = base.strip_prefix(',').unwrap_or(base);
    format!(",{base}_hex\":").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::object::ObjectInfo;

    /// bpf/tests/run_kinds.bpf.c: a field of every kind, and a variable-length tail.
    const KINDS: &[u8] = aya::include_bytes_aligned!("../../../bpf/obj/tests/run_kinds.ring.bpf.o");

    fn plan_of(object: &[u8], name: &str) -> Plan {
        let object = ObjectInfo::read(object).unwrap();
        let id = object.btf.find(name, |k| matches!(k, Kind::Struct { .. })).unwrap();
        Plan::compile(&object.btf, id).unwrap()
    }

    /// A record of struct kinds_event (offsets from its BTF, as clang laid it out) with `data`.
    fn kinds_record(data: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 110];
        let mut put = |at: usize, bytes: &[u8]| r[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &[255, 0xff]);
        put(2, &65535u16.to_le_bytes());
        put(4, &i16::MIN.to_le_bytes());
        put(8, &1007u32.to_le_bytes());
        put(12, &i32::MIN.to_le_bytes());
        put(16, &u64::MAX.to_le_bytes());
        put(24, &(-5i64).to_le_bytes());
        put(32, &[1]);
        put(36, &(-3i32).to_le_bytes()); // BLUE
        put(40, &7u32.to_le_bytes());
        put(44, b"hello\0\0\0");
        put(52, b"\xffa\xfe\0");
        for (i, n) in [1u32, 2, 3].iter().enumerate() {
            put(56 + 4 * i, &n.to_le_bytes());
        }
        for (i, p) in [1i16, -1, 2, -2].iter().enumerate() {
            put(68 + 2 * i, &p.to_le_bytes());
        }
        put(80, &0x0403_0201u32.to_le_bytes());
        put(84, &[10, 20]);
        put(88, &0xdead_beefu64.to_le_bytes());
        // low:3 = 5, mid:13 = 4097 from bit 3, high:16 = 65535 from bit 16
        put(96, &(5u32 | 4097 << 3 | 65535 << 16).to_le_bytes());
        put(100, &(0b10000u32).to_le_bytes()); // neg:5 = -16
        put(104, &99u32.to_le_bytes());
        put(108, &(data.len() as u16).to_le_bytes());
        r.extend_from_slice(data);
        r
    }

    fn json(plan: &Plan, record: &[u8]) -> String {
        let tail = plan.check(record).unwrap();
        let mut out = String::new();
        plan.json(record, tail, &mut out);
        out
    }

    #[test]
    fn every_kind_of_field_decodes_to_json() {
        let plan = plan_of(KINDS, "kinds_event");
        assert_eq!((plan.name.as_str(), plan.fixed), ("kinds_event", 110), "the tail starts at its offset, not sizeof");
        let expected = concat!(
            r#","u8":255,"s8":-1,"u16":65535,"s16":-32768,"u32":1007,"s32":-2147483648,"u64":18446744073709551615,"#,
            r#""s64":-5,"flag":true,"color":"BLUE","unnamed_color":7,"text":"hello","#,
            r#""bytes":"\\xffa\\xfe","bytes_hex":"ff61fe","numbers":[1,2,3],"points":[{"x":1,"y":-1},{"x":2,"y":-2}],"#,
            r#""origin":{"x":0,"y":0},"word":{"u":67305985,"b":[1,2,3,4]},"inner_a":10,"inner_b":20,"#,
            r#""ptr":"0xdeadbeef","low":5,"mid":4097,"high":65535,"neg":-16,"type_":99,"data_len":3,"data":"abc""#
        );
        assert_eq!(json(&plan, &kinds_record(b"abc")), expected);
        let line = crate::output::JsonLine::new(&plan.name).raw(|b| plan.json(&kinds_record(b""), 0, b)).finish();
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (&parsed["type"], &parsed["data"], &parsed["type_"]),
            (&"kinds_event".into(), &"".into(), &99.into())
        );
    }

    #[test]
    fn records_short_of_their_type_or_their_length_are_malformed() {
        let plan = plan_of(KINDS, "kinds_event");
        let whole = kinds_record(b"abcd");
        assert_eq!(plan.check(&whole), Ok(4));
        assert_eq!(plan.check(&whole[..113]), Err(Malformed), "data_len says 4, 3 are there");
        assert_eq!(plan.check(&whole[..109]), Err(Malformed), "shorter than the fixed part");
        assert_eq!(plan.check(&[]), Err(Malformed));
        let mut padded = whole.clone();
        padded.extend_from_slice(&[0; 6]); // perf pads samples to 8 bytes
        assert_eq!(json(&plan, &padded), json(&plan, &whole));
    }

    #[test]
    fn table_cells_escape_as_the_tracers_do() {
        let plan = plan_of(KINDS, "kinds_event");
        let mut record = kinds_record(b"a\x1b[2Jb");
        record[44..52].copy_from_slice(b"we\\ird\n\0");
        let cell = |name: &str| {
            let field = plan.fields().iter().find(|f| f.name == name).unwrap();
            let mut out = String::new();
            plan.cell(field, &record, plan.check(&record).unwrap(), &mut out);
            out
        };
        assert_eq!(cell("text"), "we\\\\ird\\x0a");
        assert_eq!(cell("bytes"), "\\xffa\\xfe");
        assert_eq!(cell("data"), "a\\x1b[2Jb");
        assert_eq!(cell("color"), "BLUE");
        assert_eq!(cell("points"), "[{x=1 y=-1} {x=2 y=-2}]");
        assert_eq!(cell("ptr"), "0xdeadbeef");
        assert_eq!(cell("neg"), "-16");
        let column = |name: &str| plan.fields().iter().find(|f| f.name == name).unwrap().column;
        assert_eq!(column("u32"), Column { width: 10, right: true });
        assert_eq!(column("s64"), Column { width: 21, right: true });
        assert_eq!(column("text"), Column { width: 8, right: false });
    }

    #[test]
    fn fields_can_be_picked_and_ordered() {
        let mut plan = plan_of(KINDS, "kinds_event");
        plan.select(&["data".into(), "type".into(), "u8".into()]).unwrap();
        assert_eq!(json(&plan, &kinds_record(b"xy")), r#","data":"xy","type_":99,"u8":255"#);
        let err = plan.select(&["nope".into()]).unwrap_err();
        assert!(err.starts_with("--fields: kinds_event has no field \"nope\""), "{err}");
    }

    /// A record type's size and its fields' (name, byte offset, size), as `record!` laid it
    /// out (each field's size read from a zeroed value, which any `Plain` type has).
    macro_rules! layout {
        ($t:ty { $($field:ident),* $(,)? }) => {{
            use bpfstream::FromRecord;
            let zero = <$t>::from_record(&[0u8; std::mem::size_of::<$t>()]).unwrap();
            let fields = vec![$((stringify!($field), std::mem::offset_of!($t, $field), std::mem::size_of_val(&zero.$field))),*];
            (std::mem::size_of::<$t>(), fields)
        }};
    }

    /// The bytes of a record from its Rust mirror's layout and a value per field.
    fn record_bytes(
        (size, layout): (usize, Vec<(&str, usize, usize)>),
        values: &[(&str, Vec<u8>)],
        tail: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![0u8; size];
        for (name, bytes) in values {
            let (_, at, len) = layout.iter().find(|f| f.0 == *name).unwrap();
            out[*at..*at + len].copy_from_slice(&bytes[..*len]);
        }
        out.extend_from_slice(tail);
        out
    }

    fn decoded(plan: &Plan, record: &[u8]) -> serde_json::Value {
        let line = crate::output::JsonLine::new(&plan.name)
            .raw(|b| plan.json(record, plan.check(record).unwrap(), b))
            .finish();
        serde_json::from_str(&line).unwrap()
    }

    /// What `run` decodes from the tracers' records is what their own typed decoders read.
    #[test]
    fn the_tracers_records_decode_as_the_tracers_read_them() {
        use crate::tools::{exec, open, syscalls};
        use bpfstream::FromRecord;
        let le = |v: i64| v.to_le_bytes().to_vec();
        let comm = b"c\xffmm\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();

        let plan = plan_of(crate::objects::SYSCALLS.ring, "syscall_event");
        let values = [
            ("ts_ns", le(11)),
            ("duration_ns", le(12)),
            ("ret", le(-2)),
            ("nr", le(257)),
            ("pid", le(13)),
            ("tid", le(14)),
            ("comm", comm.clone()),
            ("cgroup_id", le(15)),
        ];
        let layout = layout!(syscalls::SyscallEvent { ts_ns, duration_ns, ret, nr, pid, tid, comm, cgroup_id });
        let record = record_bytes(layout, &values, b"");
        let (e, v) = (syscalls::SyscallEvent::from_record(&record).unwrap(), decoded(&plan, &record));
        assert_eq!(
            (v["ts_ns"].as_u64(), v["duration_ns"].as_u64(), v["ret"].as_i64(), v["nr"].as_i64()),
            (Some(e.ts_ns), Some(e.duration_ns), Some(e.ret), Some(e.nr))
        );
        assert_eq!(
            (v["pid"].as_u64(), v["tid"].as_u64(), v["cgroup_id"].as_u64()),
            (Some(e.pid.into()), Some(e.tid.into()), Some(e.cgroup_id))
        );
        assert_eq!((&v["comm"], &v["comm_hex"]), (&"c\\xffmm".into(), &"63ff6d6d".into()));

        let plan = plan_of(crate::objects::OPEN.ring, "open_event");
        let name = b"/tmp/a name";
        let values = [
            ("ts_ns", le(1)),
            ("ret", le(-13)),
            ("flags", le(0o100)),
            ("cgroup_id", le(2)),
            ("pid", le(3)),
            ("tid", le(4)),
            ("uid", le(5)),
            ("nr", le(257)),
            ("filename_len", le(name.len() as i64)),
            ("truncated", le(0)),
            ("comm", comm.clone()),
        ];
        let layout =
            layout!(open::OpenEvent { ts_ns, ret, flags, cgroup_id, pid, tid, uid, nr, filename_len, truncated, comm });
        let record = record_bytes(layout, &values, name);
        let (o, v) = (open::decode(&record).unwrap(), decoded(&plan, &record));
        assert_eq!(
            (v["ret"].as_i64(), v["flags"].as_u64(), v["uid"].as_u64(), v["nr"].as_u64()),
            (Some(o.header.ret), Some(o.header.flags), Some(o.header.uid.into()), Some(o.header.nr.into()))
        );
        assert_eq!(v["filename"].as_str().map(str::as_bytes), Some(o.filename));

        let plan = plan_of(crate::objects::EXEC.ring, "exec_event");
        let (file, args) = (b"/bin/true", b"true\0-x\0");
        let values = [
            ("ts_ns", le(1)),
            ("cgroup_id", le(2)),
            ("ret", le(-2)),
            ("pid", le(3)),
            ("ppid", le(4)),
            ("uid", le(5)),
            ("argc", le(2)),
            ("filename_len", le(file.len() as i64)),
            ("args_len", le(args.len() as i64)),
            ("comm", comm),
        ];
        let layout =
            layout!(exec::ExecEvent { ts_ns, cgroup_id, ret, pid, ppid, uid, argc, filename_len, args_len, comm });
        let record = record_bytes(layout, &values, &[&file[..], &args[..]].concat());
        let (x, v) = (exec::decode(&record).unwrap(), decoded(&plan, &record));
        assert_eq!(
            (v["ret"].as_i64(), v["ppid"].as_u64(), v["argc"].as_u64()),
            (Some(x.header.ret.into()), Some(x.header.ppid.into()), Some(x.header.argc.into()))
        );
        assert_eq!(
            v["filename"].as_str().map(str::as_bytes),
            Some(x.filename),
            "the first variable part; the arguments are not in BTF"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Plans compiled from any change to real BTF, and applied to any record, never panic.
        #[test]
        fn plans_from_mutated_btf_never_panic(
            edits in proptest::collection::vec((0usize..1 << 20, proptest::num::u8::ANY), 1..6),
            record in proptest::collection::vec(proptest::num::u8::ANY, 0..160),
        ) {
            let mut bytes = crate::run::object::btf_section(KINDS).unwrap().to_vec();
            for (at, value) in edits {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            let Ok(btf) = crate::run::btf::Btf::parse(&bytes) else { return Ok(()) };
            for (id, t) in btf.types() {
                if !matches!(t.kind, Kind::Struct { .. } | Kind::Union { .. }) {
                    continue;
                }
                let Ok(plan) = Plan::compile(&btf, id) else { continue };
                if let Ok(tail) = plan.check(&record) {
                    let mut out = String::new();
                    plan.json(&record, tail, &mut out);
                    for field in plan.fields() {
                        plan.cell(field, &record, tail, &mut out);
                    }
                }
            }
        }
    }

    #[test]
    fn hostile_struct_layouts_are_errors() {
        use crate::run::btf::Btf;
        // struct s { int a; } whose member lies beyond its 2 bytes
        let strings = b"\0int\0s\0a\0";
        let types = [1, 1 << 24, 4, 1 << 24 | 32, 5, 4 << 24 | 1, 2, 7, 1, 0];
        let btf = Btf::parse(&crate::run::btf::tests::raw_btf(&types, strings)).unwrap();
        let err = Plan::compile(&btf, 2).unwrap_err();
        assert!(err.0.contains("beyond its 2 bytes"), "{err}");
        // anonymous structs nested at bit 0xfffffff0 of each other: offsets past 2^32 bits
        let far = 0xffff_fff0;
        let anon = |inner: u32| [0, 4 << 24 | 1, 4, 0, inner, far];
        let mut types = vec![1, 1 << 24, 4, 1 << 24 | 32, 0, 4 << 24 | 1, 4, 7, 1, far];
        types.extend(anon(2));
        types.extend([5, 4 << 24 | 1, 4, 0, 3, far]);
        let btf = Btf::parse(&crate::run::btf::tests::raw_btf(&types, strings)).unwrap();
        assert!(Plan::compile(&btf, 4).is_err());
        // an array of 2^20 arrays of 2^20 ints
        let types = [
            1,
            1 << 24,
            4,
            1 << 24 | 32,
            0,
            3 << 24,
            0,
            1,
            1,
            1 << 20,
            0,
            3 << 24,
            0,
            2,
            1,
            1 << 20,
            5,
            4 << 24 | 1,
            4,
            7,
            3,
            0,
        ];
        let btf = Btf::parse(&crate::run::btf::tests::raw_btf(&types, strings)).unwrap();
        assert!(Plan::compile(&btf, 4).is_err());
    }
}
