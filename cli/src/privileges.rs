//! Checks, before touching the kernel, that this process may load BPF programs and open perf
//! events, so a missing privilege is one clear line that names the capability, instead of an
//! EPERM from deep inside. CAP_SYS_ADMIN stands in for both, as on kernels before 5.8.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability mask of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// The capabilities bpfstream needs that this process lacks, by name (`None`: cannot tell).
fn missing() -> Option<Vec<&'static str>> {
    let caps = effective_caps()?;
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Some(Vec::new());
    }
    Some(
        [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|&(c, _)| !has(c))
            .map(|(_, n)| n)
            .collect(),
    )
}

/// `Ok` when CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) are there or it cannot be told;
/// otherwise the one line to print.
pub fn check() -> Result<(), String> {
    match missing() {
        Some(missing) if !missing.is_empty() => Err(format!(
            "missing {}: bpfstream loads BPF programs and opens perf events; run it as root or grant CAP_BPF and \
             CAP_PERFMON (e.g. sudo setcap cap_bpf,cap_perfmon+ep {})",
            missing.join(" and "),
            std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "bpfstream".into())
        )),
        _ => Ok(()),
    }
}

/// What to add to an EPERM from the kernel: the capability missing, or, with both there, what
/// else refuses BPF (the kernel's lockdown, or a security module).
pub fn eperm_hint() -> String {
    match missing() {
        Some(missing) if !missing.is_empty() => format!(" (missing {})", missing.join(" and ")),
        Some(_) => " (CAP_BPF and CAP_PERFMON are there: the kernel's lockdown or a security module refuses it)".into(),
        None => " (run as root, or grant CAP_BPF and CAP_PERFMON)".into(),
    }
}
