//! Every BPF object in `bpf/obj/` loads, passes the verifier and attaches on the running kernel:
//! each program of each object in both transports, attached where its ELF section says
//! (`tracepoint/CATEGORY/NAME`, `raw_tp/NAME`, `tp_btf/NAME`, `uprobe`), ring objects once per wakeup policy
//! (a load-time constant the verifier prunes by, so each policy is another program to verify). The objects are listed from the
//! directory, so an object added there is checked without being named here; an object or a
//! section kind this test has no rule for fails it. Run on every kernel of the matrix
//! (`scripts/kernel-matrix`), this is what "loads on 6.1, 6.12 and their PREEMPT_RT variants"
//! rests on.

mod common;

/// The binary's `eprintln_lossy!`, for the tracefs module shared with it.
macro_rules! eprintln_lossy {
    ($($arg:tt)*) => { eprintln!($($arg)*) };
}
#[path = "../../core/src/tracefs.rs"]
#[allow(dead_code)] // only Tracefs::open is needed here
mod tracefs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use bpfstream::WakeupPolicy;
use common::{assert_nothing_left, id_watermarks, kernel_test};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// The tools (and examples) with objects in `bpf/obj/`, each built as `TOOL.ring.bpf.o` and
/// `TOOL.perf.bpf.o`.
const TOOLS: [&str; 8] = ["bench", "exec", "execsnoop", "lab_degrade", "lab_load", "open", "ping", "syscalls"];

/// Where uprobes of objects without a fixed target (`SEC("uprobe")`) are attached.
#[no_mangle]
#[inline(never)]
pub extern "C" fn bpfstream_objects_probe() {
    std::hint::black_box(());
}

fn object_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf/obj")
}

/// The object files, by name.
fn objects() -> BTreeSet<String> {
    std::fs::read_dir(object_dir())
        .expect("bpf/obj/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".o"))
        .collect()
}

#[test]
fn every_object_is_one_of_the_tools_in_both_transports() {
    let expected: BTreeSet<String> =
        TOOLS.iter().flat_map(|t| [format!("{t}.ring.bpf.o"), format!("{t}.perf.bpf.o")]).collect();
    assert_eq!(objects(), expected, "bpf/obj/ and TOOLS differ: add the new tool to TOOLS");
}

/// Program name → ELF section name, for every program (function symbol) of the object.
fn program_sections(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let elf = object::File::parse(bytes)?;
    let mut out = Vec::new();
    for symbol in elf.symbols().filter(|s| s.kind() == SymbolKind::Text && s.is_global()) {
        let Some(index) = symbol.section_index() else { continue };
        out.push((symbol.name()?.to_owned(), elf.section_by_index(index)?.name()?.to_owned()));
    }
    Ok(out)
}

/// Every wakeup policy, as the tools set them (`--wakeup`, the bench's sampled mode).
const POLICIES: [WakeupPolicy; 5] = [
    WakeupPolicy::Adaptive,
    WakeupPolicy::EveryRecord,
    WakeupPolicy::Never,
    WakeupPolicy::EveryRecords(500),
    WakeupPolicy::Bytes(8000),
];

fn load(file: &str, bytes: &[u8], policy: WakeupPolicy) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    // Maps aya has no userspace type for (task storage) are still created for the programs.
    loader.allow_unsupported_maps();
    let ring_bytes = file.contains(".ring.").then_some(64 << 10);
    let options = bpfstream::Options { wakeup: policy, buffer_bytes: ring_bytes, ..bpfstream::Options::default() };
    bpfstream::aya::load(loader, bytes, &options).map_err(|e| anyhow!("{e:?}")) // Debug: aya's Display hides the cause
}

/// Verifies and attaches `program` where `section` says.
fn attach(bpf: &mut Ebpf, program: &str, section: &str) -> Result<()> {
    let p = bpf.program_mut(program).ok_or_else(|| anyhow!("aya found no program {program}"))?;
    let parts: Vec<&str> = section.split('/').collect();
    match parts[..] {
        ["tracepoint" | "tp", category, name] => {
            let p: &mut TracePoint = p.try_into()?;
            p.load().context("verifying")?;
            p.attach(category, name)?;
        }
        ["raw_tp" | "raw_tracepoint", name] => {
            let p: &mut RawTracePoint = p.try_into()?;
            p.load().context("verifying")?;
            p.attach(name)?;
        }
        ["tp_btf", name] => {
            let p: &mut BtfTracePoint = p.try_into()?;
            p.load(name, &aya::Btf::from_sys_fs()?).context("verifying")?;
            p.attach()?;
        }
        ["uprobe"] => {
            let p: &mut UProbe = p.try_into()?;
            p.load().context("verifying")?;
            p.attach("bpfstream_objects_probe", std::env::current_exe()?, UProbeScope::CallingProcess)?;
        }
        _ => bail!("no attach rule for section {section:?}: add one to this test"),
    }
    Ok(())
}

/// Loads `file` with `policy` and attaches each of its programs; returns their names.
fn load_and_attach(file: &str, policy: WakeupPolicy) -> Result<Vec<String>> {
    let bytes = std::fs::read(object_dir().join(file))?;
    let sections = program_sections(&bytes)?;
    let mut bpf = load(file, &bytes, policy).context("loading")?;
    let loaded: BTreeSet<String> = bpf.programs().map(|(name, _)| name.to_owned()).collect();
    let found: BTreeSet<String> = sections.iter().map(|(name, _)| name.clone()).collect();
    if loaded != found {
        bail!("aya loaded programs {loaded:?}, the ELF symbols say {found:?}");
    }
    for (program, section) in &sections {
        attach(&mut bpf, program, section).with_context(|| format!("{program} in {section}"))?;
    }
    bpfstream_objects_probe(); // fires the uprobes (and keeps the symbol in the binary)
    Ok(found.into_iter().collect())
}

#[test]
fn every_program_of_every_object_loads_and_attaches() {
    let Some(_kernel) = kernel_test() else { return };
    let _tracefs = tracefs::Tracefs::open().unwrap(); // classic tracepoints (bench, lab)
    let before = id_watermarks();
    let mut failures = Vec::new();
    let mut names = Vec::new();
    for file in objects() {
        // The perf variants ignore the wakeup policy (perf wakes by its watermark).
        let policies = if file.contains(".ring.") { &POLICIES[..] } else { &POLICIES[..1] };
        for &policy in policies {
            match load_and_attach(&file, policy) {
                Ok(programs) => {
                    eprintln!("{file} ({policy:?}): {} attached", programs.join(", "));
                    names.extend(programs);
                }
                Err(e) => failures.push(format!("{file} ({policy:?}): {e:#}")),
            }
        }
    }
    assert!(failures.is_empty(), "on Linux {}:\n{}", kernel_release(), failures.join("\n"));
    names.sort();
    names.dedup();
    let names: Vec<&str> = names.iter().map(|n| &n[..n.len().min(15)]).collect();
    assert_nothing_left(before, &names);
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}
