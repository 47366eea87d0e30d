//! What a BPF object holds, read from its ELF and BTF without a kernel: its maps and their types,
//! its programs and their sections, its read-only globals with their BTF types and defaults, its
//! externs, and the record structs `BPFSTREAM_EXPORT_STRUCT` keeps in its BTF.
//!
//! ```text
//!   ELF (EM_BPF, little-endian)
//!     SEC("raw_tp/sys_enter")   program sections: each function symbol in one is a program
//!     .rodata                   read-only globals (`const volatile`): values at their symbols
//!     .maps                     map definitions (their BTF says what they are, see below)
//!     .BTF                      types:  DATASEC ".maps"    VAR events -> struct { int (*type)[27]; ... }
//!                                       DATASEC ".rodata"  VAR targ_pid -> const volatile __u32 ...
//!                                       VAR bpfstream_btf_NAME -> struct NAME (the record)
//!                                       DATASEC ".kconfig"/".ksyms", FUNC extern: externs
//!   symbols                     undefined ones are externs, for the loader to resolve
//! ```
//!
//! A map's type and size are encoded in BTF as pointers to arrays: `__uint(type, 27)` is
//! `int (*type)[27]`, so the type is the array's element count.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

use super::btf::{Btf, Kind, TypeId, LINKAGE_EXTERN};

/// `BPFSTREAM_EXPORT_STRUCT(name)` names its global `bpfstream_btf_<name>`.
pub const EXPORT_PREFIX: &str = "bpfstream_btf_";

/// `BPF_MAP_TYPE_PERF_EVENT_ARRAY` and `BPF_MAP_TYPE_RINGBUF`.
pub const MAP_PERF_EVENT_ARRAY: u32 = 4;
pub const MAP_RINGBUF: u32 = 27;

/// A map definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    pub name: String,
    /// `BPF_MAP_TYPE_*` (0 when the definition does not say).
    pub map_type: u32,
    pub max_entries: Option<u32>,
}

impl MapInfo {
    /// A ring buffer or a perf event array: a map records stream through.
    pub fn is_events(&self) -> bool {
        matches!(self.map_type, MAP_RINGBUF | MAP_PERF_EVENT_ARRAY)
    }
}

/// A program and the section it is in (which says where it attaches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    pub name: String,
    pub section: String,
}

/// A read-only global (`const volatile`), settable before loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalInfo {
    pub name: String,
    /// Its VAR's type.
    pub ty: TypeId,
    /// Its initial value in the object.
    pub default: Vec<u8>,
}

/// What kind of extern a symbol is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternKind {
    /// `__kconfig`: a kernel config value or LINUX_KERNEL_VERSION, filled in by libbpf.
    Kconfig,
    /// `__ksym`: a kernel variable's address, or a kfunc.
    Ksym,
    /// Some other undefined symbol.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternInfo {
    pub name: String,
    pub kind: ExternKind,
}

impl ExternInfo {
    /// What the loader would have to do, for the refusal.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            ExternKind::Kconfig => "a __kconfig extern, which libbpf fills in from the kernel's configuration",
            ExternKind::Ksym => "a __ksym extern, a kernel symbol or kfunc libbpf resolves",
            ExternKind::Other => "an undefined symbol",
        }
    }
}

/// A BPF object, read.
#[derive(Debug)]
pub struct ObjectInfo {
    pub btf: Btf,
    pub maps: Vec<MapInfo>,
    pub programs: Vec<ProgramInfo>,
    pub globals: Vec<GlobalInfo>,
    pub externs: Vec<ExternInfo>,
    /// Structs named by `BPFSTREAM_EXPORT_STRUCT`.
    pub exported: Vec<String>,
}

/// The `.BTF` section of an ELF object.
pub fn btf_section(bytes: &[u8]) -> Result<&[u8], String> {
    let elf = object::File::parse(bytes).map_err(|e| format!("not an ELF object ({e})"))?;
    let section = elf.section_by_name(".BTF").ok_or(
        "the object has no BTF (.BTF section): compile it with clang -g (llvm-strip -g keeps BTF), as CO-RE needs",
    )?;
    section.data().map_err(|e| format!("its .BTF section cannot be read ({e})"))
}

impl ObjectInfo {
    /// Reads an object; the error is one line that says what is wrong with it.
    pub fn read(bytes: &[u8]) -> Result<ObjectInfo, String> {
        if !bytes.starts_with(b"\x7fELF") {
            return Err("not an ELF object (a BPF object is what clang -target bpf -c writes)".into());
        }
        let elf = object::File::parse(bytes).map_err(|e| format!("not a readable ELF object ({e})"))?;
        if elf.architecture() != object::Architecture::Bpf {
            return Err(format!("an ELF object for {:?}, not BPF (clang -target bpf)", elf.architecture()));
        }
        if !elf.is_little_endian() {
            return Err("a big-endian BPF object (bpfeb): this machine runs little-endian BPF (bpfel)".into());
        }
        let btf = Btf::parse(btf_section(bytes)?).map_err(|e| format!("its BTF is unreadable ({e})"))?;
        let maps = maps(&elf, &btf)?;
        Ok(ObjectInfo {
            maps,
            programs: programs(&elf),
            globals: globals(&elf, &btf),
            externs: externs(&elf, &btf),
            exported: exported(&btf),
            btf,
        })
    }

    pub fn map(&self, name: &str) -> Option<&MapInfo> {
        self.maps.iter().find(|m| m.name == name)
    }

    pub fn global(&self, name: &str) -> Option<&GlobalInfo> {
        self.globals.iter().find(|g| g.name == name)
    }
}

fn programs(elf: &object::File<'_>) -> Vec<ProgramInfo> {
    let mut out = Vec::new();
    for section in elf.sections() {
        let Ok(name) = section.name() else { continue };
        if section.kind() != SectionKind::Text || section.size() == 0 || name.starts_with(".text") {
            continue;
        }
        for symbol in elf.symbols() {
            let in_section = symbol.section_index() == Some(section.index());
            if in_section && symbol.kind() == object::SymbolKind::Text {
                match symbol.name() {
                    Ok(program) if !program.is_empty() => {
                        out.push(ProgramInfo { name: program.to_owned(), section: name.to_owned() })
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// Maps from BTF (`.maps`) and legacy `maps` sections (`struct bpf_map_def`).
fn maps(elf: &object::File<'_>, btf: &Btf) -> Result<Vec<MapInfo>, String> {
    let mut out = Vec::new();
    for var in datasec_vars(btf, ".maps") {
        let (name, ty) = var;
        let def = btf.resolve(ty).map_err(|e| format!("map {name}: {e}"))?;
        let Kind::Struct { members, .. } = &btf.get(def).kind else {
            return Err(format!("map {name}: its BTF definition is not a struct"));
        };
        let field = |wanted: &str| members.iter().find(|m| m.name == wanted).and_then(|m| encoded_number(btf, m.ty));
        out.push(MapInfo { name, map_type: field("type").unwrap_or(0), max_entries: field("max_entries") });
    }
    for section in elf.sections().filter(|s| s.name().is_ok_and(|n| n.starts_with("maps"))) {
        let data = section.data().unwrap_or_default();
        for symbol in elf.symbols().filter(|s| s.section_index() == Some(section.index())) {
            let Ok(name) = symbol.name() else { continue };
            let word = |at: u64| {
                let at = usize::try_from(symbol.address().saturating_add(at)).ok()?;
                let bytes = data.get(at..at.checked_add(4)?)?;
                Some(u32::from_le_bytes(bytes.try_into().ok()?))
            };
            if !name.is_empty() {
                // struct bpf_map_def { type, key_size, value_size, max_entries, map_flags }
                out.push(MapInfo { name: name.to_owned(), map_type: word(0).unwrap_or(0), max_entries: word(12) });
            }
        }
    }
    Ok(out)
}

/// `int (*name)[N]`: N (the BTF-defined maps' encoding of numbers).
fn encoded_number(btf: &Btf, ty: TypeId) -> Option<u32> {
    let Kind::Ptr(to) = btf.get(btf.resolve(ty).ok()?).kind else { return None };
    match btf.get(btf.resolve(to).ok()?).kind {
        Kind::Array { nelems, .. } => Some(nelems),
        _ => None,
    }
}

/// The (name, type) of every VAR of the DATASEC `section`.
fn datasec_vars<'a>(btf: &'a Btf, section: &'a str) -> impl Iterator<Item = (String, TypeId)> + 'a {
    btf.types()
        .filter(move |(_, t)| t.name == section)
        .filter_map(|(_, t)| match &t.kind {
            Kind::Datasec { vars } => Some(vars),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match btf.get(v.var) {
            t @ super::btf::Type { kind: Kind::Var { ty, .. }, .. } => Some((t.name.clone(), *ty)),
            _ => None,
        })
}

/// `.rodata` globals: their types from BTF, their places and defaults from the symbol table.
fn globals(elf: &object::File<'_>, btf: &Btf) -> Vec<GlobalInfo> {
    let Some(section) = elf.section_by_name(".rodata") else { return Vec::new() };
    let data = section.data().unwrap_or_default();
    let mut out = Vec::new();
    for (name, ty) in datasec_vars(btf, ".rodata") {
        let symbol = elf.symbols().find(|s| s.section_index() == Some(section.index()) && s.name() == Ok(&name));
        let size = btf.size_of(ty).ok().and_then(|s| usize::try_from(s).ok());
        let default = match (symbol, size) {
            (Some(symbol), Some(size)) => usize::try_from(symbol.address())
                .ok()
                .and_then(|at| data.get(at..at.checked_add(size)?))
                .map_or_else(|| vec![0; size.min(1 << 16)], <[u8]>::to_vec),
            _ => Vec::new(),
        };
        out.push(GlobalInfo { name, ty, default });
    }
    out
}

fn externs(elf: &object::File<'_>, btf: &Btf) -> Vec<ExternInfo> {
    let in_section = |name: &str, section: &str| datasec_vars(btf, section).any(|(n, _)| n == name);
    let extern_func = |name: &str| {
        btf.types().any(|(_, t)| t.name == name && matches!(t.kind, Kind::Func { linkage: LINKAGE_EXTERN, .. }))
    };
    let mut out = Vec::new();
    for symbol in elf.symbols().filter(|s| s.is_undefined()) {
        let Ok(name) = symbol.name() else { continue };
        if name.is_empty() {
            continue;
        }
        let kind = if in_section(name, ".kconfig") {
            ExternKind::Kconfig
        } else if in_section(name, ".ksyms") || extern_func(name) {
            ExternKind::Ksym
        } else {
            ExternKind::Other
        };
        out.push(ExternInfo { name: name.to_owned(), kind });
    }
    out
}

/// The structs `BPFSTREAM_EXPORT_STRUCT(name)` anchored, in order.
fn exported(btf: &Btf) -> Vec<String> {
    let mut out = Vec::new();
    for (_, t) in btf.types() {
        let (Some(name), Kind::Var { ty, .. }) = (t.name.strip_prefix(EXPORT_PREFIX), &t.kind) else { continue };
        let is_struct =
            btf.resolve(*ty).is_ok_and(|r| matches!(btf.get(r).kind, Kind::Struct { .. } | Kind::Union { .. }));
        if is_struct && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects;

    #[test]
    fn the_syscalls_object_reads_whole() {
        let object = ObjectInfo::read(objects::SYSCALLS.ring).unwrap();
        let events = object.map("events").unwrap();
        assert_eq!((events.map_type, events.is_events()), (MAP_RINGBUF, true));
        assert_eq!(object.map("bpfstream_stats").unwrap().max_entries, Some(1));
        assert_eq!(object.maps.iter().filter(|m| m.is_events()).count(), 1);
        let sections: Vec<_> = object.programs.iter().map(|p| (p.name.as_str(), p.section.as_str())).collect();
        assert_eq!(sections, [("syscall_enter", "raw_tp/sys_enter"), ("syscall_exit", "raw_tp/sys_exit")]);
        assert_eq!(object.exported, ["syscall_event", "syscall_stats"]);
        assert!(object.externs.is_empty());
        let policy = object.global("bpfstream_wakeup_policy").unwrap();
        assert_eq!(object.btf.type_name(policy.ty), "enum bpfstream_wakeup");
        assert_eq!(object.global("targ_comm").unwrap().default, [0; 16]);
        let perf = ObjectInfo::read(objects::SYSCALLS.perf).unwrap();
        assert_eq!(perf.map("events").unwrap().map_type, MAP_PERF_EVENT_ARRAY);
    }

    #[test]
    fn bad_objects_are_one_line_errors() {
        assert!(ObjectInfo::read(b"#!/bin/sh\n").unwrap_err().starts_with("not an ELF object"));
        assert!(ObjectInfo::read(b"\x7fELF\x02\x01").unwrap_err().starts_with("not a readable ELF object"));
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(ObjectInfo::read(&own).unwrap_err().contains("not BPF"), "the test binary is x86-64");
        let mut unbtf = objects::OPEN.ring.to_vec();
        rename_section(&mut unbtf, b".BTF\0", b".XTF\0");
        assert!(ObjectInfo::read(&unbtf).unwrap_err().starts_with("the object has no BTF"));
    }

    /// Renames every section ending in `from` (e.g. `.BTF` and `.rel.BTF`) in the section names.
    fn rename_section(bytes: &mut [u8], from: &[u8], to: &[u8]) {
        for at in 0..bytes.len() - from.len() {
            if &bytes[at..at + from.len()] == from {
                bytes[at..at + to.len()].copy_from_slice(to);
            }
        }
    }
}
