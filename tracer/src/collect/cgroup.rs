//! Container identity from `/proc/PID/cgroup`, every line of it: on hybrid
//! hosts Docker and Podman with the cgroupfs driver put containers in the v1
//! hierarchies (`N:pids:/docker/<id>`) while the v2 line (`0::`) may show
//! the root. Paths start with `/..` under a private cgroup namespace.
//!
//! Layouts understood (any depth, any prefix):
//! - Docker: `docker-<id>.scope` (systemd driver), `/docker/<id>` (cgroupfs);
//! - containerd (CRI): `cri-containerd-<id>.scope`;
//! - CRI-O: `crio-<id>.scope`, `crio-<id>` (cgroupfs);
//! - Podman: `libpod-<id>.scope`, `/libpod_parent/libpod-<id>`;
//! - Kubernetes pods: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/...`
//!   (systemd driver, `_` for `-` in the uid; guaranteed pods sit right
//!   under `kubepods.slice`) and `/kubepods/<qos>/pod<uid>/<id>` (cgroupfs);
//!   a bare id in a pod has runtime `unknown` (docker and containerd look
//!   alike there).
//! - a systemd unit (`system.slice/nginx.service`): a host process whose
//!   unit is that service.
//!
//! A path of any other layout is kept as the process's cgroup, with no
//! container. Identities are cached per process lifetime: pid plus the
//! start time from `/proc/PID/stat`, so a reused pid is parsed again.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
    sync::Arc,
};

use crate::model::container::{Container, Identity, Pod, Qos, Runtime};

/// A full container id: 64 lowercase hex digits.
fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `<prefix><id><suffix>` with a full id.
fn id_between<'a>(segment: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let id = segment.strip_prefix(prefix)?.strip_suffix(suffix)?;
    is_id(id).then_some(id)
}

/// A path segment (with its parent) that names a container.
fn container_segment(parent: &str, segment: &str) -> Option<(String, Runtime)> {
    let scoped = |prefix: &str| id_between(segment, prefix, ".scope").or_else(|| id_between(segment, prefix, ""));
    let (id, runtime) = if let Some(id) = id_between(segment, "docker-", ".scope") {
        (id, Runtime::Docker)
    } else if parent == "docker" && is_id(segment) {
        (segment, Runtime::Docker)
    } else if let Some(id) = id_between(segment, "cri-containerd-", ".scope") {
        (id, Runtime::Containerd)
    } else if let Some(id) = scoped("crio-") {
        (id, Runtime::Crio)
    } else if let Some(id) = scoped("libpod-") {
        (id, Runtime::Podman)
    } else {
        return None;
    };
    Some((id.to_owned(), runtime))
}

/// A Kubernetes QoS level's cgroup: `burstable` / `besteffort` (cgroupfs)
/// or `kubepods-burstable.slice` (systemd).
fn qos_segment(segment: &str) -> Option<Qos> {
    match segment {
        "burstable" | "kubepods-burstable.slice" => Some(Qos::Burstable),
        "besteffort" | "kubepods-besteffort.slice" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// A pod's cgroup: `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice`
/// (systemd, with `_` for `-`). Returns the uid with dashes.
fn pod_segment(segment: &str) -> Option<String> {
    let uid = match segment.strip_suffix(".slice") {
        Some(slice) => slice.strip_prefix("kubepods-")?.split_once("pod")?.1,
        None => segment.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    let valid = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then_some(uid)
}

/// The container one cgroup path names, if any.
pub(crate) fn container_of(path: &str) -> Option<Container> {
    let mut parent = "";
    // Inside `kubepods`: the QoS class so far and the pod once found.
    let mut kube: Option<(Qos, Option<String>)> = None;
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != "..") {
        let pod = |kube: &Option<(Qos, Option<String>)>| match kube {
            Some((qos, Some(uid))) => Some(Pod { uid: uid.clone(), name: None, namespace: None, qos: *qos }),
            _ => None,
        };
        if let Some((id, runtime)) = container_segment(parent, segment) {
            return Some(Container { id, runtime, name: None, pod: pod(&kube) });
        }
        match &mut kube {
            None if segment == "kubepods" || segment == "kubepods.slice" => kube = Some((Qos::Guaranteed, None)),
            Some((qos, uid @ None)) => {
                if let Some(level) = qos_segment(segment) {
                    *qos = level;
                } else if let Some(found) = pod_segment(segment) {
                    *uid = Some(found);
                }
            }
            Some((_, Some(_))) if is_id(segment) => {
                return Some(Container {
                    id: segment.to_owned(),
                    runtime: Runtime::Unknown,
                    name: None,
                    pod: pod(&kube),
                });
            }
            _ => {}
        }
        parent = segment;
    }
    None
}

/// The deepest systemd service or scope in a path.
fn unit_of(path: &str) -> Option<&str> {
    path.split('/').rfind(|s| s.ends_with(".service") || s.ends_with(".scope"))
}

/// One line of `/proc/PID/cgroup`: `hierarchy-ID:controllers:path`.
struct Line<'a> {
    hierarchy: &'a str,
    controllers: &'a str,
    path: &'a str,
}

/// The lines in the order they say the most: the v2 hierarchy, systemd's
/// own v1 hierarchy, then the v1 controllers as listed.
fn lines(text: &str) -> Vec<Line<'_>> {
    let mut lines: Vec<Line<'_>> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            Some(Line { hierarchy: parts.next()?, controllers: parts.next()?, path: parts.next()? })
        })
        .collect();
    let rank = |l: &Line<'_>| match (l.hierarchy, l.controllers) {
        ("0", "") => 0,
        (_, "name=systemd") => 1,
        _ => 2,
    };
    lines.sort_by_key(rank);
    lines
}

/// Parses the text of `/proc/PID/cgroup`.
pub(crate) fn identify(text: &str) -> Identity {
    let lines = lines(text);
    if let Some((line, container)) = lines.iter().find_map(|l| Some((l, container_of(l.path)?))) {
        return Identity { cgroup: line.path.to_owned(), unit: None, container: Some(container) };
    }
    if let Some((line, unit)) = lines.iter().find_map(|l| Some((l, unit_of(l.path)?))) {
        return Identity { cgroup: line.path.to_owned(), unit: Some(unit.to_owned()), container: None };
    }
    let below_root = lines.iter().find(|l| l.path.split('/').any(|s| !s.is_empty() && s != ".."));
    let cgroup = below_root.or(lines.first()).map(|l| l.path.to_owned()).unwrap_or_else(|| "/".to_owned());
    Identity { cgroup, unit: None, container: None }
}

/// The process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the pid, it names one process lifetime.
pub(crate) fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_start_time(&text)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The name (field 2) may hold spaces and parentheses: fields after the
    // last ')' start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Identities per process lifetime, parsed once each.
#[derive(Default)]
pub(crate) struct Identities {
    by_pid: HashMap<u32, (u64, Arc<Identity>)>,
}

impl Identities {
    /// The identity of `pid` as it is now; parsed on the first sight of
    /// this process lifetime. `None` when the process is gone (the model
    /// keeps what it last knew).
    pub(crate) fn lookup(&mut self, proc_root: &Path, pid: u32) -> Option<Arc<Identity>> {
        let started = start_time(proc_root, pid)?;
        if let Some((known_start, identity)) = self.by_pid.get(&pid) {
            if *known_start == started {
                return Some(identity.clone());
            }
        }
        let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        let identity = Arc::new(identify(&text));
        self.by_pid.insert(pid, (started, identity.clone()));
        Some(identity)
    }

    /// Replaces a cached identity (the same process, now with names).
    pub(crate) fn update(&mut self, pid: u32, identity: Arc<Identity>) {
        if let Some(entry) = self.by_pid.get_mut(&pid) {
            entry.1 = identity;
        }
    }

    /// Forgets processes no longer of interest.
    pub(crate) fn retain<S: std::hash::BuildHasher>(&mut self, pids: &HashSet<u32, S>) {
        self.by_pid.retain(|pid, _| pids.contains(pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4e1b1dfcb9b8f21ff7e9a5c5a3e2d6a3b8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
    const UID: &str = "0a3c6b2e-5d4f-4e1a-9b8c-7d6e5f4a3b2c";

    /// (the file, expected cgroup, unit, container id, runtime, pod uid, qos)
    struct Case {
        name: &'static str,
        text: String,
        cgroup: String,
        unit: Option<String>,
        container: Option<(Runtime, Option<Qos>)>,
    }

    fn v2(path: &str) -> String {
        format!("0::{path}\n")
    }

    /// A hybrid host: v1 controllers at `v1`, systemd's hierarchy and v2
    /// somewhere else.
    fn hybrid(v1: &str, systemd: &str, unified: &str) -> String {
        format!(
            "12:pids:{v1}\n11:memory:{v1}\n10:cpu,cpuacct:{v1}\n9:devices:{v1}\n1:name=systemd:{systemd}\n0::{unified}\n"
        )
    }

    fn cases() -> Vec<Case> {
        let uid_ = UID.replace('-', "_");
        let case = |name, text: String, cgroup: String, unit: Option<&str>, container| Case {
            name,
            text,
            cgroup,
            unit: unit.map(str::to_owned),
            container,
        };
        vec![
            case(
                "docker, systemd driver, v2",
                v2(&format!("/system.slice/docker-{ID}.scope")),
                format!("/system.slice/docker-{ID}.scope"),
                None,
                Some((Runtime::Docker, None)),
            ),
            case(
                "docker, cgroupfs driver, hybrid: v1 has it, v2 shows the root",
                hybrid(&format!("/docker/{ID}"), &format!("/docker/{ID}"), "/"),
                format!("/docker/{ID}"),
                None,
                Some((Runtime::Docker, None)),
            ),
            case(
                "docker, cgroupfs, only the v1 controllers know",
                hybrid(&format!("/docker/{ID}"), "/", "/"),
                format!("/docker/{ID}"),
                None,
                Some((Runtime::Docker, None)),
            ),
            case(
                "containerd CRI, systemd driver, burstable pod",
                v2(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                )),
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                None,
                Some((Runtime::Containerd, Some(Qos::Burstable))),
            ),
            case(
                "containerd CRI, systemd driver, guaranteed pod",
                v2(&format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope")),
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                None,
                Some((Runtime::Containerd, Some(Qos::Guaranteed))),
            ),
            case(
                "CRI-O, systemd driver, besteffort pod",
                v2(&format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                )),
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                ),
                None,
                Some((Runtime::Crio, Some(Qos::BestEffort))),
            ),
            case(
                "CRI-O, cgroupfs driver",
                v2(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                None,
                Some((Runtime::Crio, Some(Qos::Burstable))),
            ),
            case(
                "kubernetes, cgroupfs driver, bare id (docker or containerd), hybrid",
                hybrid(&format!("/kubepods/besteffort/pod{UID}/{ID}"), "/", "/"),
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                None,
                Some((Runtime::Unknown, Some(Qos::BestEffort))),
            ),
            case(
                "kubernetes, cgroupfs driver, guaranteed, bare id",
                v2(&format!("/kubepods/pod{UID}/{ID}")),
                format!("/kubepods/pod{UID}/{ID}"),
                None,
                Some((Runtime::Unknown, Some(Qos::Guaranteed))),
            ),
            case(
                "kubernetes with docker, systemd driver",
                v2(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ID}.scope"
                )),
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ID}.scope"
                ),
                None,
                Some((Runtime::Docker, Some(Qos::Burstable))),
            ),
            case(
                "podman, systemd driver, v2 (a sub-cgroup of the scope)",
                v2(&format!("/machine.slice/libpod-{ID}.scope/container")),
                format!("/machine.slice/libpod-{ID}.scope/container"),
                None,
                Some((Runtime::Podman, None)),
            ),
            case(
                "podman, cgroupfs driver, hybrid (as on these machines)",
                hybrid(&format!("/libpod_parent/libpod-{ID}"), &format!("/libpod_parent/libpod-{ID}"), &format!("/libpod_parent/libpod-{ID}")),
                format!("/libpod_parent/libpod-{ID}"),
                None,
                Some((Runtime::Podman, None)),
            ),
            case(
                "rootless podman under the user's manager",
                v2(&format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope")),
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                None,
                Some((Runtime::Podman, None)),
            ),
            case(
                "private cgroup namespace: /.. prefixes",
                v2(&format!("/../../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope")),
                format!("/../../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                None,
                Some((Runtime::Containerd, Some(Qos::BestEffort))),
            ),
            case(
                "private cgroup namespace, docker cgroupfs",
                hybrid(&format!("/../docker/{ID}"), "/", "/"),
                format!("/../docker/{ID}"),
                None,
                Some((Runtime::Docker, None)),
            ),
            case(
                "systemd service: a host process with its unit",
                v2("/system.slice/nginx.service"),
                "/system.slice/nginx.service".into(),
                Some("nginx.service"),
                None,
            ),
            case(
                "systemd service, hybrid (systemd's v1 hierarchy)",
                hybrid("/system.slice/nginx.service", "/system.slice/nginx.service", "/system.slice/nginx.service"),
                "/system.slice/nginx.service".into(),
                Some("nginx.service"),
                None,
            ),
            case(
                "a user session",
                v2("/user.slice/user-1000.slice/session-3.scope"),
                "/user.slice/user-1000.slice/session-3.scope".into(),
                Some("session-3.scope"),
                None,
            ),
            case(
                "conmon is podman's monitor on the host, not the container",
                v2(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                Some(&format!("libpod-conmon-{ID}.scope")),
                None,
            ),
            case(
                "unknown layout: kept as the path",
                "4:memory:/process_api/4f12b5b662e5537d68f897ec55f6bf06\n1:cpu:/\n0::/\n".into(),
                "/process_api/4f12b5b662e5537d68f897ec55f6bf06".into(),
                None,
                None,
            ),
            case(
                "a short id is not a container id",
                v2("/docker/4e1b1dfcb9b8"),
                "/docker/4e1b1dfcb9b8".into(),
                None,
                None,
            ),
            case("the root", v2("/"), "/".into(), None, None),
            case("nothing", String::new(), "/".into(), None, None),
        ]
    }

    #[test]
    fn parses_every_layout() {
        for case in cases() {
            let identity = identify(&case.text);
            assert_eq!(identity.cgroup, case.cgroup, "{}", case.name);
            assert_eq!(identity.unit, case.unit, "{}", case.name);
            let got = identity.container.as_ref().map(|c| (c.runtime, c.pod.as_ref().map(|p| p.qos)));
            assert_eq!(got, case.container, "{}", case.name);
            if let Some(container) = &identity.container {
                assert_eq!(container.id, ID, "{}", case.name);
                assert_eq!(container.name, None, "{}", case.name);
                if let Some(pod) = &container.pod {
                    assert_eq!(pod.uid, UID, "{}", case.name);
                    assert_eq!((&pod.name, &pod.namespace), (&None, &None), "{}", case.name);
                }
            }
        }
    }

    #[test]
    fn garbage_is_kept_not_dropped() {
        let identity = identify("not a cgroup line\n3:blkio:/some/where\n");
        assert_eq!(identity, Identity { cgroup: "/some/where".into(), unit: None, container: None });
        assert_eq!(pod_segment("podzzz"), None);
        assert_eq!(pod_segment("kubepods-burstable.slice"), None);
        assert_eq!(container_of(&format!("/kubepods/pod{UID}")), None);
    }

    #[test]
    fn start_time_is_field_22_after_a_tricky_name() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1234 56";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn identities_are_parsed_once_per_process_lifetime() {
        let root = std::env::temp_dir().join(format!("tracer-cgroup-test-{}", std::process::id()));
        let dir = root.join("77");
        fs::create_dir_all(&dir).expect("mkdir");
        let stat = |start: u64| format!("77 (x) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0");
        fs::write(dir.join("stat"), stat(100)).expect("write");
        fs::write(dir.join("cgroup"), v2("/system.slice/a.service")).expect("write");
        let mut cache = Identities::default();
        assert_eq!(cache.lookup(&root, 77).and_then(|i| i.unit.clone()).as_deref(), Some("a.service"));
        // The same process moved: still what it was when first seen.
        fs::write(dir.join("cgroup"), v2("/system.slice/b.service")).expect("write");
        assert_eq!(cache.lookup(&root, 77).and_then(|i| i.unit.clone()).as_deref(), Some("a.service"));
        // The pid reused by another process: parsed again.
        fs::write(dir.join("stat"), stat(200)).expect("write");
        assert_eq!(cache.lookup(&root, 77).and_then(|i| i.unit.clone()).as_deref(), Some("b.service"));
        assert!(cache.lookup(&root, 78).is_none());
        cache.retain(&HashSet::new());
        assert!(cache.by_pid.is_empty());
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
