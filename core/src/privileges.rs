//! Checks, before touching the kernel, that this process may load BPF programs and open perf
//! events, so a missing privilege is one clear line that names the capability, instead of an
//! EPERM from deep inside. CAP_SYS_ADMIN stands in for both, as on kernels before 5.8.

const CAP_IPC_LOCK: u32 = 14;
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

/// The most perf buffer memory per CPU this process can map: without CAP_IPC_LOCK the kernel
/// lets a user lock `perf_event_mlock_kb` (516 KiB by default) for perf buffers, data and one
/// metadata page each (`perf_mmap()`; beyond it RLIMIT_MEMLOCK applies, which may be small).
/// Kernels differ on whether that allowance is per CPU, so the budget takes it for all CPUs'
/// buffers together. `None`: no limit.
pub fn perf_buffer_budget() -> Option<u64> {
    let caps = effective_caps()?;
    if caps & (1 << CAP_IPC_LOCK) != 0 {
        return None;
    }
    let kb: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_mlock_kb").ok()?.trim().parse().ok()?;
    let cpus = crate::host::online_cpus().map_or(1, |c| c.len().max(1)) as u64;
    let page = crate::host::page_size() as u64;
    let data = (kb * 1024 / cpus).saturating_sub(page);
    Some(prev_power_of_two(data.max(page)))
}

/// Explains a permission error from opening perf buffers of `per_cpu` bytes.
pub fn perf_permission_hint(per_cpu: u64) -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    if paranoid.trim().parse::<i32>().is_ok_and(|p| p > 2) {
        return format!(
            "kernel.perf_event_paranoid is {} (a distribution's restriction, e.g. Debian's): perf events need \
             more than CAP_PERFMON here; use the ring buffer (--buffer ring, the default), run as root, or set \
             kernel.perf_event_paranoid to 2",
            paranoid.trim()
        );
    }
    perf_mmap_hint(per_cpu)
}

/// The OS error of a failed buffer set-up (`mmap failed: Operation not permitted`) without the
/// library's generic hint, for callers that give the real cause themselves.
pub fn os_error(error: &bpfstream::Error) -> String {
    match error {
        bpfstream::Error::Sys { call, source } => format!("{call} failed: {source}"),
        other => other.to_string(),
    }
}

/// Explains an EPERM from mapping perf buffers of `per_cpu` bytes.
fn perf_mmap_hint(per_cpu: u64) -> String {
    let budget = perf_buffer_budget().map_or(String::new(), |b| format!(" (here {})", crate::size::human_bytes(b)));
    format!(
        "perf buffers of {} per CPU are more memory than this user may lock for perf events \
         (/proc/sys/kernel/perf_event_mlock_kb per CPU, then RLIMIT_MEMLOCK): give a smaller --buffer-size{budget}, \
         or grant CAP_IPC_LOCK",
        crate::size::human_bytes(per_cpu)
    )
}

fn prev_power_of_two(n: u64) -> u64 {
    1 << (63 - n.leading_zeros())
}
