//! Errors that come from a resource limit of the process rather than from the kernel's BPF
//! support say which limit it was and what to do: a descriptor limit (`ulimit -n`) too low to
//! create the maps shows as "failed to create map `stats`" otherwise.

use std::error::Error;

/// What a tracer's start opens at most: maps, programs, links, BTF, the buffer's epoll and
/// perf events (one per CPU), the exporter's sockets and librdkafka's pipes.
const DESCRIPTORS_NEEDED: u64 = 64;

/// `error` and every source below it, each once (many errors repeat their source's text).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The line to print for the error that ended the run: its chain (each text once), and which
/// limit of the process caused it when one did.
pub fn explain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    let says = |errno: i32| text.contains(&format!("(os error {errno})"));
    if says(libc::EMFILE) || says(libc::ENFILE) {
        return format!("{text}; the process ran out of file descriptors: {}", descriptor_hint());
    }
    match address_space_limit() {
        Some(limit) if says(libc::ENOMEM) || says(libc::EAGAIN) => {
            format!("{text}; the address-space limit (ulimit -v) is {} KiB: raise it", limit >> 10)
        }
        _ => text,
    }
}

/// The address-space limit (`ulimit -v`), if there is one.
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) fills the struct we own.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (known && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The descriptor limit, and what to raise it to.
fn descriptor_hint() -> String {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) fills the struct we own.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let cpus = crate::host::online_cpus().map_or(1, |c| c.len()) as u64;
    let needed = DESCRIPTORS_NEEDED + cpus;
    match known {
        true => format!(
            "the limit (ulimit -n) is {}, and a tracer needs about {needed}: raise it (ulimit -n 1024)",
            limit.rlim_cur
        ),
        false => format!("a tracer needs about {needed} (ulimit -n): raise the limit"),
    }
}
