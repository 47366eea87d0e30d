//! Classic tracepoints are attached by id, read from tracefs. bpfstream reads tracefs where it
//! is mounted, mounts it only where it is not (a fresh machine), never over an existing mount,
//! and unmounts what it mounted as soon as the attach is done (the attached events do not need
//! the mount). A tracefs it cannot read (mode 0700 at /sys/kernel/tracing, for a user with only
//! CAP_BPF and CAP_PERFMON) is an error that names the capability that reads it.

use std::io::ErrorKind;
use std::path::Path;

use anyhow::{bail, Result};

const TRACEFS: &str = "/sys/kernel/tracing";
const OLD_TRACEFS: &str = "/sys/kernel/debug/tracing";

/// Whether `/proc/self/mountinfo` lists a tracefs mounted at `path`. Mount points with spaces
/// are octal-escaped there; these two have none.
fn tracefs_mounted_at(mountinfo: &str, path: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4);
        let fs_type = line.split(" - ").nth(1).and_then(|rest| rest.split(' ').next());
        mount_point == Some(path) && fs_type == Some("tracefs")
    })
}

/// A reachable tracefs, unmounted on drop if bpfstream mounted it.
#[derive(Debug)]
pub struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    /// Finds tracefs where it is mounted, or mounts it at /sys/kernel/tracing.
    pub fn open() -> Result<Tracefs> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for root in [TRACEFS, OLD_TRACEFS] {
            if tracefs_mounted_at(&mountinfo, root) {
                readable(root)?;
                return Ok(Tracefs { mounted_here: false });
            }
        }
        mount()?;
        let tracefs = Tracefs { mounted_here: true };
        if !Path::new(TRACEFS).join("events").is_dir() {
            bail!("mounted tracefs at {TRACEFS} but it has no events/ directory; is CONFIG_FTRACE enabled?");
        }
        Ok(tracefs)
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if !self.mounted_here {
            return;
        }
        // SAFETY: umount2(2) with a NUL-terminated static path.
        if unsafe { libc::umount2(c"/sys/kernel/tracing".as_ptr(), 0) } != 0 {
            let err = std::io::Error::last_os_error();
            eprintln_lossy!("warning: could not unmount the tracefs bpfstream mounted at {TRACEFS}: {err}");
        }
    }
}

/// Fails with the missing capability when tracefs is mounted but this process cannot read it.
fn readable(root: &str) -> Result<()> {
    match std::fs::read_dir(Path::new(root).join("events")) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "missing CAP_DAC_READ_SEARCH: this tracer attaches classic tracepoints, whose ids are read from \
             tracefs, and {root} is readable by root only; run as root or also grant CAP_DAC_READ_SEARCH"
        ),
        Err(e) => bail!("cannot read tracefs at {root}: {e}"),
    }
}

fn mount() -> Result<()> {
    let source = c"tracefs";
    // SAFETY: mount(2) with NUL-terminated static strings and no data argument.
    let rc =
        unsafe { libc::mount(source.as_ptr(), c"/sys/kernel/tracing".as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == ErrorKind::PermissionDenied {
        bail!(
            "missing CAP_SYS_ADMIN: tracefs is not mounted and mounting it needs CAP_SYS_ADMIN; mount it once with: \
             mount -t tracefs tracefs {TRACEFS}"
        );
    }
    bail!("tracefs is not mounted and mounting it failed ({err}); mount it with: mount -t tracefs tracefs {TRACEFS}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tracefs_mount_counts() {
        let info = "22 1 0:21 / /sys rw - sysfs sysfs rw\n\
                    40 22 0:12 / /sys/kernel/tracing rw,nosuid - tracefs tracefs rw\n\
                    41 22 0:7 / /sys/kernel/debug rw - debugfs debugfs rw\n";
        assert!(tracefs_mounted_at(info, TRACEFS));
        assert!(!tracefs_mounted_at(info, OLD_TRACEFS));
        assert!(!tracefs_mounted_at("40 22 0:12 / /sys/kernel/tracing rw - sysfs none rw\n", TRACEFS));
        assert!(!tracefs_mounted_at("", TRACEFS));
    }
}
