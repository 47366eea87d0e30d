//! `bpfstream run OBJECT --describe`: what the object holds and what `run` would do with it:
//! its maps (the events map marked), its programs and where each attaches (or why it cannot),
//! its read-only globals with their types and defaults, its externs, and the record's layout.

use std::fmt::Write as _;

use super::attach::{self, UprobeTarget};
use super::btf::{Btf, Kind, Member, TypeId};
use super::object::{ObjectInfo, MAP_PERF_EVENT_ARRAY, MAP_RINGBUF};

/// Lines of the record's layout printed at most (a huge struct is cut, and says so).
const MAX_LAYOUT_LINES: usize = 400;

/// `BPF_MAP_TYPE_*` names, by number.
const MAP_TYPES: [&str; 34] = [
    "unspec",
    "hash",
    "array",
    "prog_array",
    "perf_event_array",
    "percpu_hash",
    "percpu_array",
    "stack_trace",
    "cgroup_array",
    "lru_hash",
    "lru_percpu_hash",
    "lpm_trie",
    "array_of_maps",
    "hash_of_maps",
    "devmap",
    "sockmap",
    "cpumap",
    "xskmap",
    "sockhash",
    "cgroup_storage",
    "reuseport_sockarray",
    "percpu_cgroup_storage",
    "queue",
    "stack",
    "sk_storage",
    "devmap_hash",
    "struct_ops",
    "ringbuf",
    "inode_storage",
    "task_storage",
    "bloom_filter",
    "user_ringbuf",
    "cgrp_storage",
    "arena",
];

/// What `run` chose, or why it could not.
#[derive(Debug)]
pub struct Choices<'a> {
    pub events_maps: Result<Vec<&'a str>, String>,
    pub record: Result<(TypeId, &'static str), String>,
    pub programs: &'a [String],
    pub uprobes: &'a [UprobeTarget],
}

/// The whole description.
pub fn describe(label: &str, object: &ObjectInfo, choices: &Choices<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{label}: BPF object with {} BTF types", object.btf.types().count() - 1);
    maps(&mut out, object, choices);
    programs(&mut out, object, choices);
    globals(&mut out, object);
    if !object.externs.is_empty() {
        let _ = writeln!(out, "externs (refused: the loader cannot resolve them):");
        for e in &object.externs {
            let _ = writeln!(out, "  {:<24} {}", e.name, e.describe());
        }
    }
    match &choices.record {
        Ok((id, how)) => record(&mut out, &object.btf, *id, how),
        Err(why) => {
            let _ = writeln!(out, "record: {why}");
        }
    }
    out
}

fn maps(out: &mut String, object: &ObjectInfo, choices: &Choices<'_>) {
    let _ = writeln!(out, "maps:");
    for m in &object.maps {
        let kind = MAP_TYPES.get(m.map_type as usize).copied().unwrap_or("unknown");
        let entries = m.max_entries.map_or(String::new(), |n| format!("max_entries {n}"));
        let streamed = choices.events_maps.as_ref().is_ok_and(|names| names.contains(&m.name.as_str()));
        let mark = match m.map_type {
            MAP_RINGBUF | MAP_PERF_EVENT_ARRAY if streamed => match super::counters_map(object, &m.name) {
                Some(counters) => format!("  <- streamed, drops counted in {counters}"),
                None => "  <- streamed, drops not counted".to_owned(),
            },
            _ => String::new(),
        };
        let _ = writeln!(out, "  {:<24} {kind:<18} {entries}{mark}", m.name);
    }
    if let Err(why) = &choices.events_maps {
        let _ = writeln!(out, "  (no events map chosen: {why})");
    }
}

fn programs(out: &mut String, object: &ObjectInfo, choices: &Choices<'_>) {
    let _ = writeln!(out, "programs:");
    let kprobes = attach::kernel_has_kprobes();
    for p in &object.programs {
        let skipped = !choices.programs.is_empty() && !choices.programs.contains(&p.name);
        let one = [p.name.clone()];
        let fate = match attach::plan(object, &one, choices.uprobes, kprobes) {
            _ if skipped => "not chosen (--program)".to_string(),
            Ok(points) => points.iter().map(|a| a.point.to_string()).collect::<Vec<_>>().join(", "),
            Err(why) => format!("refused: {why}"),
        };
        let _ = writeln!(out, "  {:<24} {:<32} {fate}", p.name, p.section);
    }
}

fn globals(out: &mut String, object: &ObjectInfo) {
    let _ = writeln!(out, "read-only globals (--set NAME=VALUE):");
    for g in object.globals.iter().filter(|g| !g.name.starts_with(super::object::EXPORT_PREFIX)) {
        let value = default_text(&object.btf, g.ty, &g.default);
        let _ = writeln!(out, "  {:<24} {:<24} = {value}", g.name, object.btf.type_name(g.ty));
    }
}

/// A global's default as `--set` would take it.
fn default_text(btf: &Btf, ty: TypeId, bytes: &[u8]) -> String {
    let Ok(id) = btf.resolve(ty) else { return "?".into() };
    let int = |size: usize, signed: bool| {
        let mut word = [0u8; 16];
        let n = size.min(16).min(bytes.len());
        word[..n].copy_from_slice(&bytes[..n]);
        let raw = u128::from_le_bytes(word);
        let unused = 128 - n as u32 * 8;
        if signed && n > 0 {
            (((raw << unused) as i128) >> unused).to_string()
        } else {
            raw.to_string()
        }
    };
    match &btf.get(id).kind {
        Kind::Int { bool: true, .. } => (bytes.iter().any(|&b| b != 0)).to_string(),
        Kind::Int { size, signed, .. } => int(*size as usize, *signed),
        Kind::Enum { size, signed, values } => {
            let number = int(*size as usize, *signed);
            values.iter().find(|v| v.value.to_string() == number).map_or(number, |v| v.name.clone())
        }
        Kind::Array { elem, .. }
            if btf.resolve(*elem).is_ok_and(|e| matches!(btf.get(e).kind, Kind::Int { size: 1, .. })) =>
        {
            format!("\"{}\"", crate::output::display_bytes(crate::output::c_str(bytes)))
        }
        _ => "(not settable from the command line)".into(),
    }
}

fn record(out: &mut String, btf: &Btf, id: TypeId, how: &str) {
    let t = btf.get(id);
    let size = btf.size_of(id).map_or("?".to_string(), |s| s.to_string());
    let _ = writeln!(out, "record: {} ({size} bytes; {how})", btf.type_name(id));
    let _ = writeln!(out, "  {:>6} {:>5}  {:<24} TYPE", "OFFSET", "SIZE", "FIELD");
    let mut lines = 0;
    if let Kind::Struct { members, .. } | Kind::Union { members, .. } = &t.kind {
        layout(out, btf, id, members, 0, 1, &mut lines);
    }
    if lines > MAX_LAYOUT_LINES {
        let _ = writeln!(out, "  ... (cut at {MAX_LAYOUT_LINES} lines)");
    }
}

/// The members of a struct, those of nested structs indented below them.
fn layout(
    out: &mut String,
    btf: &Btf,
    struct_id: TypeId,
    members: &[Member],
    base_bits: u64,
    depth: usize,
    lines: &mut usize,
) {
    for (index, m) in members.iter().enumerate() {
        if *lines > MAX_LAYOUT_LINES {
            return;
        }
        let bits = base_bits + u64::from(m.bit_offset);
        let resolved = btf.resolve(m.ty).unwrap_or(0);
        let size = btf.size_of(m.ty).map_or("-".to_string(), |s| if s == 0 { "-".into() } else { s.to_string() });
        let offset = if bits % 8 == 0 && m.bitfield_bits.is_none() {
            (bits / 8).to_string()
        } else {
            format!("{}:{}", bits / 8, bits % 8)
        };
        let mut note = m.bitfield_bits.map_or(String::new(), |b| format!(" ({b}-bit bitfield)"));
        if let Some(field) = btf.member_tags(struct_id, index).find_map(|t| t.strip_prefix(super::decode::LEN_TAG)) {
            note = format!(" (variable length: {field} elements)");
        }
        *lines += 1;
        {
            let name = format!("{}{}", "  ".repeat(depth - 1), if m.name.is_empty() { "(anon)" } else { &m.name });
            let _ = writeln!(out, "  {offset:>6} {size:>5}  {name:<24} {}{note}", btf.type_name(m.ty));
        }
        if depth < 8 {
            if let Kind::Struct { members: inner, .. } | Kind::Union { members: inner, .. } = &btf.get(resolved).kind {
                layout(out, btf, resolved, inner, bits, depth + 1, lines);
            }
        }
    }
}
