//! `--cgroup-path`: every event's cgroup by path, and the container and pod it shows.
//!
//! Container runtimes name a container's cgroup after its 64-hex id; kubelet names a pod's
//! after its UID (`_` for `-` in systemd slice names):
//!
//! ```text
//! docker, systemd driver      /system.slice/docker-<id>.scope
//! docker, cgroupfs driver     /docker/<id>
//! containerd (CRI), systemd   /kubepods.slice/kubepods-burstable.slice/
//!                               kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//! containerd, cgroupfs        /kubepods/besteffort/pod<uid>/<id>
//! CRI-O                       .../kubepods-pod<uid>.slice/crio-<id>.scope   (crio-conmon-<id>: its monitor, no container)
//! podman                      /machine.slice/libpod-<id>.scope, .../user@1000.service/user.slice/libpod-<id>.scope
//! ```
//!
//! The deepest component that names a container wins (a container in a container is the inner
//! one; `docker-<id>.scope/init.scope` is still that container). A pod UID is read only below a
//! `kubepods` component: a UUID, or the 32-hex hash kubelet gives static pods.

use crate::cgroup_paths::{CgroupPaths, Resolved};
use crate::output::JsonLine;

/// `--cgroup-path` (every tracer, and a stream's `args`).
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerArgs {
    /// Add each event's cgroup v2 path ("cgroup", or "cgroup_gone":true when it was removed
    /// before its path was read) and, where the path shows them, "container_id" (docker,
    /// containerd, CRI-O, podman) and "pod_uid" (Kubernetes) to JSON lines and --output
    #[arg(long)]
    pub cgroup_path: bool,
}

/// A cgroup's path and what it says of the container and pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// As in `/proc/PID/cgroup`: `/system.slice/docker-<id>.scope`.
    pub path: Vec<u8>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

impl CgroupIdentity {
    pub fn of_path(path: Vec<u8>) -> Self {
        let text = String::from_utf8_lossy(&path);
        let components: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
        let container_id = components.iter().rev().find_map(|c| container_id(c)).map(str::to_string);
        let kubepods = components.iter().position(|c| c.starts_with("kubepods"));
        let pod_uid = kubepods.and_then(|first| components[first..].iter().rev().find_map(|c| pod_uid(c)));
        CgroupIdentity { path, container_id, pod_uid }
    }
}

/// The runtimes' prefixes of a container's cgroup name.
const CONTAINER_PREFIXES: [&str; 5] = ["docker-", "cri-containerd-", "crio-", "libpod-", ""];

/// The container id a cgroup directory's name gives, if it names one.
fn container_id(name: &str) -> Option<&str> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    CONTAINER_PREFIXES.iter().find_map(|prefix| name.strip_prefix(prefix).filter(|id| is_hex(id, 64)))
}

/// The pod UID of `pod<uid>`, `kubepods-pod<uid_>.slice` or `kubepods-<qos>-pod<uid_>.slice`.
fn pod_uid(name: &str) -> Option<String> {
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let (before, uid) = name.rsplit_once("pod")?;
    let qos_ok = matches!(before, "" | "kubepods-" | "kubepods-burstable-" | "kubepods-besteffort-");
    let uid = uid.replace('_', "-");
    (qos_ok && (is_uuid(&uid) || is_hex(&uid, 32))).then_some(uid)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `8-4-4-4-12` lowercase hex digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| is_hex(g, len))
}

/// The fields `--cgroup-path` adds to each event's JSON line (none without it).
#[derive(Debug)]
pub struct ContainerFields {
    paths: Option<CgroupPaths>,
}

impl ContainerFields {
    /// With `--cgroup-path`, finds the cgroup v2 mount (an error if there is none).
    pub fn new(args: &ContainerArgs) -> anyhow::Result<Self> {
        let paths = if args.cgroup_path { Some(CgroupPaths::new()?) } else { None };
        Ok(ContainerFields { paths })
    }

    /// A tracer's own command: the fields go to JSON lines, so `--cgroup-path` without `--json`
    /// or `--output` is a usage error (exit 2).
    pub fn for_tracer(args: &ContainerArgs, json_lines: bool) -> anyhow::Result<Self> {
        if args.cgroup_path && !json_lines {
            let text = "--cgroup-path adds fields to JSON lines: give it with --json or --output\n";
            clap::Error::raw(clap::error::ErrorKind::MissingRequiredArgument, text).exit();
        }
        Self::new(args)
    }

    /// `line` with the event's `cgroup`, `container_id` and `pod_uid` (or `cgroup_gone`).
    pub fn add(&mut self, line: JsonLine, cgroup_id: u64) -> JsonLine {
        let Some(paths) = &mut self.paths else { return line };
        let identity = match paths.resolve(cgroup_id) {
            Resolved::Found(identity) => identity,
            Resolved::Gone => return line.boolean("cgroup_gone", true),
        };
        let line = line.bytes("cgroup", &identity.path);
        let line = match &identity.container_id {
            Some(id) => line.str("container_id", id),
            None => line,
        };
        match &identity.pod_uid {
            Some(uid) => line.str("pod_uid", uid),
            None => line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn identity(path: &str) -> (Option<String>, Option<String>) {
        let c = CgroupIdentity::of_path(path.as_bytes().to_vec());
        (c.container_id, c.pod_uid)
    }

    #[test]
    fn runtimes_name_their_containers_cgroups() {
        let uid = "0f4c2d1e-9a8b-4c7d-8e6f-5a4b3c2d1e0f";
        let uid_ = uid.replace('-', "_");
        let id = Some(ID.to_string());
        let pod = Some(uid.to_string());
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), id.clone(), None),
            (format!("/docker/{ID}"), id.clone(), None),
            (format!("/system.slice/docker-{ID}.scope/init.scope"), id.clone(), None),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                id.clone(),
                pod.clone(),
            ),
            (format!("/kubepods/besteffort/pod{uid}/{ID}"), id.clone(), pod.clone()),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"), id.clone(), pod.clone()),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"), None, pod.clone()),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice"), None, pod.clone()),
            (format!("/machine.slice/libpod-{ID}.scope/container"), id.clone(), None),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), id.clone(), None),
            (format!("/kubepods/pod{}/{ID}", "8c3b0e1d2f4a5b6c7d8e9f0a1b2c3d4e"), id.clone(), Some("8c3b0e1d2f4a5b6c7d8e9f0a1b2c3d4e".into())),
            ("/system.slice/ssh.service".into(), None, None),
            ("/".into(), None, None),
            (format!("/system.slice/pod{uid}"), None, None),
            (format!("/docker/{}", &ID[1..]), None, None),
            (format!("/docker/{}", ID.to_uppercase()), None, None),
            (format!("/system.slice/podman-{ID}.scope"), None, None),
        ];
        for (path, container, pod) in cases {
            assert_eq!(identity(&path), (container, pod), "{path}");
        }
    }

    #[test]
    fn the_deepest_container_wins() {
        let inner = "a".repeat(64);
        assert_eq!(identity(&format!("/docker/{ID}/docker/{inner}")).0, Some(inner));
    }

    #[test]
    fn without_the_flag_lines_are_unchanged() {
        let mut fields = ContainerFields::new(&ContainerArgs { cgroup_path: false }).unwrap();
        assert_eq!(fields.add(JsonLine::new("x").num("a", 1), 1).finish(), r#"{"type":"x","a":1}"#);
    }
}
