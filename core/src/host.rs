//! What the CLI needs to know of the machine it runs on: the page size (buffer sizes are whole
//! pages) and the online CPUs (perf buffers, pinned producers).

use anyhow::{anyhow, Result};

/// The page size in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects; _SC_PAGESIZE cannot fail on Linux.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The online CPUs, from `/sys/devices/system/cpu/online`.
pub fn online_cpus() -> Result<Vec<u32>> {
    aya::util::online_cpus().map_err(|(what, e)| anyhow!("reading the online CPUs ({what}): {e}"))
}
