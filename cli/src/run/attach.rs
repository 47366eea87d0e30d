//! Where each program of an object attaches, from its section name as libbpf spells them, and
//! the attaching itself:
//!
//! | section | attaches to |
//! |---|---|
//! | `tracepoint/CAT/NAME`, `tp/CAT/NAME` | a classic tracepoint (its id read in tracefs) |
//! | `raw_tp/NAME`, `raw_tracepoint/NAME` | a raw tracepoint |
//! | `tp_btf/NAME` | a BTF-typed raw tracepoint |
//! | `uprobe/PATH:SYMBOL[+OFF]`, `uretprobe/...` (`.s`: sleepable) | a user function; bare `uprobe`: `--uprobe PATH:SYMBOL` |
//! | `kprobe/FUNC[+OFF]`, `kretprobe/FUNC` | a kernel function, where the kernel has kprobes |
//!
//! Anything else is refused by name before anything is loaded. So is a section the loader (aya)
//! cannot even parse, whether its program was chosen or not: it parses the whole object.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::{BtfTracePoint, KProbe, Program, RawTracePoint, TracePoint, UProbe};
use aya::Ebpf;

use super::object::ObjectInfo;

/// `--uprobe PATH:SYMBOL[+OFFSET]`, or the same after `uprobe/` in a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UprobeTarget {
    pub path: PathBuf,
    pub symbol: String,
    pub offset: u64,
}

impl FromStr for UprobeTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not PATH:SYMBOL[+OFFSET], e.g. /usr/bin/bash:readline");
        let (path, location) = text.rsplit_once(':').ok_or_else(bad)?;
        let (symbol, offset) = match location.split_once('+') {
            None => (location, 0),
            Some((symbol, offset)) => (symbol, parse_offset(offset).ok_or_else(bad)?),
        };
        if path.is_empty() || symbol.is_empty() {
            return Err(bad());
        }
        Ok(UprobeTarget { path: path.into(), symbol: symbol.into(), offset })
    }
}

/// `+OFFSET` as libbpf writes it: decimal or 0x hex.
fn parse_offset(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => crate::values::parse_unsigned(text, "an offset").ok(),
    }
}

/// Where one program attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    Tracepoint { category: String, name: String },
    RawTracepoint(String),
    BtfTracepoint(String),
    Uprobe { ret: bool, target: UprobeTarget },
    Kprobe { ret: bool, function: String, offset: u64 },
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Tracepoint { category, name } => write!(f, "tracepoint {category}/{name}"),
            Point::RawTracepoint(name) => write!(f, "raw tracepoint {name}"),
            Point::BtfTracepoint(name) => write!(f, "BTF tracepoint {name}"),
            Point::Uprobe { ret, target } => {
                let kind = if *ret { "uretprobe" } else { "uprobe" };
                write!(f, "{kind} {}:{}", target.path.display(), target.symbol)?;
                if target.offset > 0 {
                    write!(f, "+{:#x}", target.offset)?;
                }
                Ok(())
            }
            Point::Kprobe { ret, function, .. } => {
                write!(f, "{} {function}", if *ret { "kretprobe" } else { "kprobe" })
            }
        }
    }
}

/// A program and where it attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: String,
    pub point: Point,
}

/// The section kinds `run` attaches, for refusals.
const ATTACHED: &str = "tracepoint/, tp/, raw_tp/, raw_tracepoint/, tp_btf/, uprobe, uretprobe, kprobe/, kretprobe/";

/// Whether this kernel has kprobes (the kprobe PMU, CONFIG_KPROBE_EVENTS).
pub fn kernel_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// The attachments of the chosen `programs` (every program when empty); one line per refusal.
pub fn plan(
    object: &ObjectInfo,
    programs: &[String],
    uprobes: &[UprobeTarget],
    kprobes: bool,
) -> Result<Vec<Attachment>, String> {
    if let Some(p) = object.programs.iter().find(|p| aya_obj::ProgramSection::from_str(&p.section).is_err()) {
        return Err(format!(
            "program {} is in section {:?}, which bpfstream's loader (aya) cannot load; run attaches {ATTACHED}",
            p.name, p.section
        ));
    }
    for name in programs {
        if !object.programs.iter().any(|p| &p.name == name) {
            let known: Vec<&str> = object.programs.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "--program {name}: the object has no program {name} (its programs: {})",
                known.join(", ")
            ));
        }
    }
    let chosen = object.programs.iter().filter(|p| programs.is_empty() || programs.contains(&p.name));
    let mut out = Vec::new();
    let mut bare_uprobe = false;
    for p in chosen {
        let parts: Vec<&str> = p.section.splitn(2, '/').collect();
        let points = match (parts[0], parts.get(1).copied()) {
            ("tracepoint" | "tp", Some(rest)) => match rest.split_once('/') {
                Some((category, name)) if !category.is_empty() && !name.is_empty() && !name.contains('/') => {
                    vec![Point::Tracepoint { category: category.into(), name: name.into() }]
                }
                _ => {
                    return Err(format!("program {}: section {:?} is not tracepoint/CATEGORY/NAME", p.name, p.section))
                }
            },
            ("raw_tp" | "raw_tracepoint", Some(name)) if !name.is_empty() => vec![Point::RawTracepoint(name.into())],
            ("tp_btf", Some(name)) if !name.is_empty() => vec![Point::BtfTracepoint(name.into())],
            (kind @ ("uprobe" | "uretprobe" | "uprobe.s" | "uretprobe.s"), target) => {
                let ret = kind.starts_with("uretprobe");
                match target {
                    Some(target) => {
                        let target =
                            target.parse().map_err(|e| format!("program {}: section {:?}: {e}", p.name, p.section))?;
                        vec![Point::Uprobe { ret, target }]
                    }
                    None if uprobes.is_empty() => {
                        return Err(format!(
                            "program {} ({}) names no function in its section: give --uprobe PATH:SYMBOL",
                            p.name, p.section
                        ))
                    }
                    None => {
                        bare_uprobe = true;
                        uprobes.iter().map(|t| Point::Uprobe { ret, target: t.clone() }).collect()
                    }
                }
            }
            (kind @ ("kprobe" | "kretprobe"), Some(function)) if !function.is_empty() => {
                if !kprobes {
                    return Err(format!(
                        "program {} ({}): this kernel has no kprobes (no kprobe PMU: CONFIG_KPROBE_EVENTS is off); \
                         attach to a tracepoint, raw_tp or tp_btf instead, or leave it out with --program",
                        p.name, p.section
                    ));
                }
                let (function, offset) = match function.split_once('+') {
                    Some((f, off)) => (
                        f,
                        parse_offset(off)
                            .ok_or_else(|| format!("program {}: bad offset in {:?}", p.name, p.section))?,
                    ),
                    None => (function, 0),
                };
                vec![Point::Kprobe { ret: kind == "kretprobe", function: function.into(), offset }]
            }
            _ => {
                return Err(format!(
                    "program {} is in section {:?}, which run cannot attach; it attaches {ATTACHED} \
                     (choose the programs with --program)",
                    p.name, p.section
                ))
            }
        };
        out.extend(points.into_iter().map(|point| Attachment { program: p.name.clone(), point }));
    }
    if !uprobes.is_empty() && !bare_uprobe {
        return Err(
            "--uprobe: no chosen program is a uprobe without a function in its section (SEC(\"uprobe\"))".into()
        );
    }
    if out.is_empty() {
        return Err("the object has no program to attach".into());
    }
    Ok(out)
}

/// What a program type needs beyond CAP_BPF + CAP_PERFMON, in one line (`None`: nothing).
pub fn extra_privileges(attachments: &[Attachment]) -> Option<String> {
    let mut needs = Vec::new();
    if attachments.iter().any(|a| matches!(a.point, Point::Tracepoint { .. })) {
        needs.push(
            "tracepoint/ programs read their tracepoint's id in tracefs (mounted where missing: CAP_SYS_ADMIN; \
             readable by root only: CAP_DAC_READ_SEARCH)",
        );
    }
    if attachments.iter().any(|a| matches!(a.point, Point::Uprobe { .. })) {
        needs.push("uprobes read the target file (read permission on it)");
    }
    (!needs.is_empty()).then(|| needs.join("; "))
}

/// Verifies and attaches every program of `attachments` (each program loaded once).
pub fn attach(bpf: &mut Ebpf, attachments: &[Attachment]) -> Result<()> {
    let needs_tracefs = attachments.iter().any(|a| matches!(a.point, Point::Tracepoint { .. }));
    // Held (and, if bpfstream mounted it, unmounted) until every tracepoint is attached.
    let _tracefs = if needs_tracefs { Some(crate::tracefs::Tracefs::open()?) } else { None };
    let kernel_btf = if attachments.iter().any(|a| matches!(a.point, Point::BtfTracepoint(_))) {
        Some(
            aya::Btf::from_sys_fs()
                .context("reading the kernel's BTF (/sys/kernel/btf/vmlinux) for tp_btf programs")?,
        )
    } else {
        None
    };
    let mut loaded: Vec<&str> = Vec::new();
    for a in attachments {
        let program =
            bpf.program_mut(&a.program).ok_or_else(|| anyhow!("the loader found no program {}", a.program))?;
        let first = !loaded.contains(&a.program.as_str());
        attach_one(program, &a.point, first, kernel_btf.as_ref())
            .with_context(|| format!("program {}: attaching to {}", a.program, a.point))?;
        loaded.push(&a.program);
    }
    Ok(())
}

/// Verifies `program` (when `load`) and attaches it to `point`.
fn attach_one(program: &mut Program, point: &Point, load: bool, btf: Option<&aya::Btf>) -> Result<()> {
    let verifying = "verifying it";
    match point {
        Point::Tracepoint { category, name } => {
            let p: &mut TracePoint = program.try_into()?;
            if load {
                p.load().context(verifying)?;
            }
            p.attach(category, name)?;
        }
        Point::RawTracepoint(name) => {
            let p: &mut RawTracePoint = program.try_into()?;
            if load {
                p.load().context(verifying)?;
            }
            p.attach(name)?;
        }
        Point::BtfTracepoint(name) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            if load {
                p.load(name, btf.ok_or_else(|| anyhow!("no kernel BTF"))?).context(verifying)?;
            }
            p.attach()?;
        }
        Point::Uprobe { target, .. } => {
            let p: &mut UProbe = program.try_into()?;
            if load {
                p.load().context(verifying)?;
            }
            let location = match target.offset {
                0 => UProbeAttachLocation::Symbol(&target.symbol),
                offset => UProbeAttachLocation::SymbolOffset(&target.symbol, offset),
            };
            p.attach(location, &target.path, UProbeScope::AllProcesses)?;
        }
        Point::Kprobe { function, offset, .. } => {
            let p: &mut KProbe = program.try_into()?;
            if load {
                p.load().context(verifying)?;
            }
            p.attach(function, *offset)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::object::ProgramInfo;

    fn object_with(sections: &[(&str, &str)]) -> ObjectInfo {
        let mut object = ObjectInfo::read(crate::objects::SYSCALLS.ring).unwrap();
        object.programs = sections
            .iter()
            .map(|(name, section)| ProgramInfo { name: (*name).into(), section: (*section).into() })
            .collect();
        object
    }

    fn target(text: &str) -> UprobeTarget {
        text.parse().unwrap()
    }

    #[test]
    fn sections_say_where_programs_attach() {
        let object = object_with(&[
            ("a", "tracepoint/syscalls/sys_enter_openat"),
            ("b", "tp/sched/sched_switch"),
            ("c", "raw_tp/sys_enter"),
            ("d", "raw_tracepoint/sys_exit"),
            ("e", "tp_btf/sched_process_exec"),
            ("f", "uprobe//usr/bin/bash:readline"),
            ("g", "uretprobe/libc.so.6:malloc+0x10"),
            ("h", "kprobe/do_nanosleep"),
        ]);
        let plan = plan(&object, &[], &[], true).unwrap();
        let points: Vec<String> = plan.iter().map(|a| a.point.to_string()).collect();
        assert_eq!(
            points,
            [
                "tracepoint syscalls/sys_enter_openat",
                "tracepoint sched/sched_switch",
                "raw tracepoint sys_enter",
                "raw tracepoint sys_exit",
                "BTF tracepoint sched_process_exec",
                "uprobe /usr/bin/bash:readline",
                "uretprobe libc.so.6:malloc+0x10",
                "kprobe do_nanosleep",
            ]
        );
        let no_kprobes = super::plan(&object, &[], &[], false).unwrap_err();
        assert!(no_kprobes.starts_with("program h (kprobe/do_nanosleep): this kernel has no kprobes"), "{no_kprobes}");
        let chosen = super::plan(&object, &["c".into()], &[], false).unwrap();
        assert_eq!(chosen, [Attachment { program: "c".into(), point: Point::RawTracepoint("sys_enter".into()) }]);
    }

    #[test]
    fn bare_uprobes_take_their_targets_from_the_command_line() {
        let object = object_with(&[("p", "uprobe"), ("r", "uretprobe")]);
        let err = plan(&object, &[], &[], false).unwrap_err();
        assert_eq!(err, "program p (uprobe) names no function in its section: give --uprobe PATH:SYMBOL");
        let targets = [target("/bin/x:f"), target("/bin/y:g+16")];
        let plan = plan(&object, &[], &targets, false).unwrap();
        assert_eq!(plan.len(), 4);
        assert_eq!(
            plan[3].point,
            Point::Uprobe { ret: true, target: UprobeTarget { path: "/bin/y".into(), symbol: "g".into(), offset: 16 } }
        );
        let not_bare = object_with(&[("p", "uprobe//bin/x:f")]);
        assert!(super::plan(&not_bare, &[], &targets, false).unwrap_err().starts_with("--uprobe: no chosen program"));
        for bad in ["nocolon", ":f", "/bin/x:", "/bin/x:f+zz"] {
            assert!(bad.parse::<UprobeTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn what_cannot_attach_is_refused_by_name() {
        let xdp = object_with(&[("ok", "raw_tp/sys_enter"), ("net", "xdp")]);
        let err = plan(&xdp, &[], &[], false).unwrap_err();
        assert!(err.starts_with("program net is in section \"xdp\", which run cannot attach"), "{err}");
        assert_eq!(plan(&xdp, &["ok".into()], &[], false).unwrap().len(), 1, "--program leaves it out");
        let unknown = object_with(&[("ok", "raw_tp/sys_enter"), ("u", "usdt/libc:probe")]);
        let err = plan(&unknown, &["ok".into()], &[], false).unwrap_err();
        assert!(err.contains("which bpfstream's loader (aya) cannot load"), "{err}");
        let err = plan(&xdp, &["nope".into()], &[], false).unwrap_err();
        assert_eq!(err, "--program nope: the object has no program nope (its programs: ok, net)");
        let bad_tp = object_with(&[("t", "tracepoint/justone")]);
        assert!(plan(&bad_tp, &[], &[], false).unwrap_err().contains("is not tracepoint/CATEGORY/NAME"));
    }
}
