//! A cgroup's path from its id, as events carry it (`bpf_get_current_cgroup_id()`), cached.
//!
//! ```text
//! /proc/self/mountinfo   41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
//!                              root ^  ^ mount point                        ^ file system type
//!
//! <mount point>/                         id 1   path "/"
//! <mount point>/system.slice/            id 45  path "/system.slice"
//! <mount point>/system.slice/x.scope/    id 912 path "/system.slice/x.scope"
//!                                        id = the directory's inode number = what readdir's
//!                                        d_ino says (kernfs_ino(), a 64-bit kernfs node id)
//! ```
//!
//! Paths are those of `/proc/PID/cgroup` (`0::/system.slice/x.scope`): relative to the hierarchy's
//! root, whatever the mount point. A cgroup's id is never given to another cgroup (kernfs node
//! ids grow, with a generation in the high 32 bits) and cgroup v2 directories cannot be renamed,
//! so a path once read for an id stays that cgroup's path; a cgroup removed before its path was
//! read is said to be gone, never given another cgroup's path.
//!
//! An unknown id rescans the hierarchy (readdir only: the ids come with the names); the id
//! belongs to a task that was in the cgroup when the event was written, so after a scan that
//! began later it is either found or gone. Gone ids are remembered so that a removed cgroup's
//! late events cost no scan.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::container::CgroupIdentity;

/// Most gone ids remembered; past it they are forgotten at once (and cost a scan each again).
const MAX_GONE: usize = 1 << 16;

/// What an event's cgroup id resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Found(Arc<CgroupIdentity>),
    /// Removed before its path could be read.
    Gone,
}

/// The cgroup v2 hierarchy as mounted here, and the ids seen so far.
#[derive(Debug)]
pub struct CgroupPaths {
    mount: PathBuf,
    /// The mount's root within the hierarchy (`/` unless a subtree is mounted).
    root: Vec<u8>,
    known: HashMap<u64, Arc<CgroupIdentity>>,
    gone: HashSet<u64>,
    scans: u64,
}

impl CgroupPaths {
    /// The cgroup v2 hierarchy of `/proc/self/mountinfo`; an error if none is mounted.
    pub fn new() -> Result<Self> {
        let mountinfo = std::fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let Some((root, mount)) = cgroup2_mount(&mountinfo) else {
            bail!("--cgroup-path: no cgroup v2 file system is mounted (none in /proc/self/mountinfo)");
        };
        Ok(CgroupPaths { mount, root, known: HashMap::new(), gone: HashSet::new(), scans: 0 })
    }

    /// Where the hierarchy is mounted.
    #[cfg(test)]
    fn mount(&self) -> &std::path::Path {
        &self.mount
    }

    /// How many times the hierarchy was scanned.
    #[cfg(test)]
    fn scans(&self) -> u64 {
        self.scans
    }

    /// The cgroup of `id`: from the cache, else from a fresh scan of the hierarchy.
    pub fn resolve(&mut self, id: u64) -> Resolved {
        if let Some(found) = self.known.get(&id) {
            return Resolved::Found(found.clone());
        }
        if self.gone.contains(&id) {
            return Resolved::Gone;
        }
        self.scan();
        match self.known.get(&id) {
            Some(found) => Resolved::Found(found.clone()),
            None => {
                if self.gone.len() >= MAX_GONE {
                    self.gone.clear();
                }
                self.gone.insert(id);
                Resolved::Gone
            }
        }
    }

    /// Replaces the cache with the cgroups that exist now (those removed since are forgotten:
    /// their late events are said gone, which they are). Directories removed while the scan
    /// reads them are skipped.
    fn scan(&mut self) {
        self.scans += 1;
        let mut known = HashMap::with_capacity(self.known.len() + 16);
        if let Ok(meta) = std::fs::metadata(&self.mount) {
            known.insert(meta.ino(), self.identity(&self.root));
        }
        let mut pending: Vec<(PathBuf, Vec<u8>)> = vec![(self.mount.clone(), self.root.clone())];
        while let Some((dir, path)) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let child = join(&path, name.as_bytes());
                known.insert(entry.ino(), self.reuse_or_new(entry.ino(), &child));
                pending.push((dir.join(&name), child));
            }
        }
        self.known = known;
    }

    /// The cached identity of `id` if it has one (ids are never reused), else a new one.
    fn reuse_or_new(&self, id: u64, path: &[u8]) -> Arc<CgroupIdentity> {
        match self.known.get(&id) {
            Some(known) => known.clone(),
            None => self.identity(path),
        }
    }

    fn identity(&self, path: &[u8]) -> Arc<CgroupIdentity> {
        Arc::new(CgroupIdentity::of_path(path.to_vec()))
    }
}

/// `parent/name`, without doubling the root's slash.
fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = parent.to_vec();
    if path.last() != Some(&b'/') {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// The (root, mount point) of the first cgroup2 mount of a mountinfo text, preferring one of
/// the whole hierarchy (root `/`). Fields: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`, with spaces and the like as `\040` octal.
fn cgroup2_mount(mountinfo: &[u8]) -> Option<(Vec<u8>, PathBuf)> {
    let mounts = mountinfo.split(|&b| b == b'\n').filter_map(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let dash = fields.iter().position(|f| *f == b"-")?;
        (fields.get(dash + 1) == Some(&&b"cgroup2"[..]) && dash >= 5)
            .then(|| (unescape(fields[3]), PathBuf::from(OsString::from_vec(unescape(fields[4])))))
    });
    let mounts: Vec<_> = mounts.collect();
    mounts.iter().find(|(root, _)| root == b"/").or(mounts.first()).cloned()
}

/// Undoes mountinfo's `\NNN` octal escapes.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_read_from_mountinfo() {
        let hybrid = b"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some((b"/".to_vec(), PathBuf::from("/sys/fs/cgroup/unified"))));
        let subtree_first = b"50 1 0:38 /a\\040b /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n\
            51 1 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(subtree_first), Some((b"/".to_vec(), PathBuf::from("/sys/fs/cgroup"))));
        let subtree_only = b"50 1 0:38 /a\\040b /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(subtree_only), Some((b"/a b".to_vec(), PathBuf::from("/mnt/my cg"))));
        assert_eq!(cgroup2_mount(b"32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
        assert_eq!(cgroup2_mount(b""), None);
    }

    #[test]
    fn paths_join_below_the_root() {
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(join(b"/a", b"b"), b"/a/b");
        assert_eq!(unescape(b"\\134x\\04"), b"\\x\\04");
    }

    /// A cgroup made and removed by the test resolves to its path while it exists (and from the
    /// cache after), an id first asked for after its removal is gone, and the root is `/`.
    #[test]
    fn ids_resolve_to_paths_or_gone() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making cgroups needs root");
            return;
        }
        let mut paths = CgroupPaths::new().unwrap();
        let name = format!("bpfstream-paths-{}", std::process::id());
        let (first, second) = (paths.mount().join(&name), paths.mount().join(format!("{name}-2")));
        std::fs::create_dir(&first).unwrap();
        let first_id = std::fs::metadata(&first).unwrap().ino();
        let expected = format!("/{name}");
        let found = paths.resolve(first_id);
        assert!(matches!(&found, Resolved::Found(c) if c.path == expected.as_bytes()), "{found:?}");
        std::fs::remove_dir(&first).unwrap();
        assert_eq!(paths.resolve(first_id), found, "cached: the path it had");
        std::fs::create_dir(&second).unwrap();
        let second_id = std::fs::metadata(&second).unwrap().ino();
        std::fs::remove_dir(&second).unwrap();
        let scans = paths.scans();
        assert_eq!(paths.resolve(second_id), Resolved::Gone, "removed before it was resolved");
        assert_eq!(paths.resolve(second_id), Resolved::Gone);
        assert_eq!(paths.scans(), scans + 1, "a gone id costs one scan");
        assert_eq!(paths.resolve(first_id), Resolved::Gone, "forgotten by the scan, and gone");
        assert!(matches!(paths.resolve(1), Resolved::Found(c) if c.path == b"/"));
    }
}
