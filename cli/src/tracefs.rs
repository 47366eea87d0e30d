//! Classic tracepoints are attached by id, read from tracefs, which a fresh machine may not
//! have mounted. Mount it (we are root by then) before anything looks for it.

use std::path::Path;

use anyhow::{bail, Result};

const TRACEFS: &str = "/sys/kernel/tracing";

fn mounted(path: &Path) -> bool {
    path.join("events").is_dir()
}

/// Makes sure tracefs is reachable at /sys/kernel/tracing (or the old debugfs location),
/// mounting it when missing.
pub fn ensure_mounted() -> Result<()> {
    if mounted(Path::new(TRACEFS)) || mounted(Path::new("/sys/kernel/debug/tracing")) {
        return Ok(());
    }
    let source = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with NUL-terminated static strings and no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it failed ({err}); mount it with: mount -t tracefs tracefs {TRACEFS}"
        );
    }
    if !mounted(Path::new(TRACEFS)) {
        bail!("mounted tracefs at {TRACEFS} but it has no events/ directory; is CONFIG_FTRACE enabled?");
    }
    Ok(())
}
