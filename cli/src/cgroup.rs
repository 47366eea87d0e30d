//! `--cgroup PATH`: a cgroup v2 directory as the kernel-side filter sees it. The BPF side
//! (`bpfstream_filter.h`) compares the current task's ancestor at the cgroup's depth with the
//! cgroup's id, so the cgroup's own tasks and those of every cgroup below it match.
//!
//! ```text
//! /sys/fs/cgroup            depth 0 (the root; on the cgroup2 file system, statfs magic
//! /sys/fs/cgroup/a          depth 1  CGROUP2_SUPER_MAGIC)
//! /sys/fs/cgroup/a/b        depth 2  id = the directory's inode number (kernfs node id)
//! ```
//!
//! Depths count from the root of the cgroup2 mount, which is the hierarchy's root outside a
//! cgroup namespace.

use std::path::{Path, PathBuf};

/// `CGROUP2_SUPER_MAGIC` of include/uapi/linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup to filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// What `bpf_get_current_cgroup_id()` returns for its tasks.
    pub id: u64,
    /// Its depth below the root cgroup.
    pub level: u32,
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: an all-zero statfs is valid output space; statfs(2) reads a NUL-terminated path.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fs` lives across the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut fs) };
    rc == 0 && fs.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Parses `--cgroup PATH`: an existing directory of a cgroup v2 file system.
pub fn parse_cgroup(text: &str) -> Result<Cgroup, String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(text).map_err(|e| format!("{text}: {e}"))?;
    let meta = std::fs::metadata(&path).map_err(|e| format!("{text}: {e}"))?;
    if !meta.is_dir() || !is_cgroup2(&path) {
        return Err(format!(
            "{text} is not a cgroup v2 directory (give one under the cgroup2 mount, e.g. /sys/fs/cgroup/system.slice)"
        ));
    }
    let level = path.ancestors().skip(1).take_while(|p| is_cgroup2(p)).count();
    Ok(Cgroup { id: meta.ino(), level: level as u32, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroup2_directories_are_accepted() {
        for bad in ["/tmp", "/no/such/dir", ""] {
            assert!(parse_cgroup(bad).is_err(), "{bad}");
        }
        if is_cgroup2(Path::new("/sys/fs/cgroup")) {
            let root = parse_cgroup("/sys/fs/cgroup").unwrap();
            assert_eq!(root.level, 0);
            assert_eq!(root.id, 1, "the root cgroup's id");
        }
    }
}
