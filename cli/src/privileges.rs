//! Checks, before touching the kernel, that this process may load BPF programs and open perf
//! events, so a missing privilege is one clear line instead of an EPERM from deep inside.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability mask of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Which of CAP_BPF / CAP_PERFMON is missing (CAP_SYS_ADMIN stands in for both, as on kernels
/// before 5.8); `Ok` when all is there.
pub fn check() -> Result<(), String> {
    let Some(caps) = effective_caps() else {
        return Ok(()); // cannot tell: let the kernel decide
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {}: bpfstream loads BPF programs and opens perf events; run it as root or grant CAP_BPF and CAP_PERFMON (e.g. sudo setcap cap_bpf,cap_perfmon+ep {})",
            missing.join(" and "),
            std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "bpfstream".into())
        ))
    }
}
