//! A process's place among cgroups and containers (DESIGN.md "Containers"):
//! its cgroup path, its systemd unit, and the container (and Kubernetes
//! pod) it runs in. Parsed by the collector from `/proc/PID/cgroup`, named
//! where a container runtime could be asked; plain data here.

/// The container runtime a cgroup layout (or a runtime's answer) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// A container id with no runtime in its path (Kubernetes with the
    /// cgroupfs driver, for docker or containerd).
    Unknown,
}

impl Runtime {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// A Kubernetes pod's QoS class, from its cgroup's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// The Kubernetes pod a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pod {
    /// The pod UID with dashes (the systemd driver's `_` turned back).
    pub(crate) uid: String,
    /// From the runtime's `io.kubernetes.pod.name` label; `None` when no
    /// runtime could be asked.
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) qos: Qos,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Container {
    /// The full id (64 hex digits).
    pub(crate) id: String,
    pub(crate) runtime: Runtime,
    /// The runtime's name for it (for Kubernetes, the
    /// `io.kubernetes.container.name` label); `None` when no runtime could
    /// be asked.
    pub(crate) name: Option<String>,
    pub(crate) pod: Option<Pod>,
}

impl Container {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub(crate) fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// The Prometheus `container` label: `namespace/pod/container` for
    /// Kubernetes, else the container's name, else its short id.
    pub(crate) fn label(&self) -> String {
        if let Some(Pod { name: Some(pod), namespace: Some(namespace), .. }) = &self.pod {
            if let Some(name) = &self.name {
                return format!("{namespace}/{pod}/{name}");
            }
        }
        match &self.name {
            Some(name) => name.clone(),
            None => self.short_id().to_owned(),
        }
    }

    /// `--container NAME|ID-PREFIX`: the container's name, its
    /// `namespace/pod/container` label, or a prefix of its id.
    pub(crate) fn matches(&self, wanted: &str) -> bool {
        if wanted.is_empty() {
            return false;
        }
        self.name.as_deref() == Some(wanted) || self.label() == wanted || self.id.starts_with(wanted)
    }
}

/// What `/proc/PID/cgroup` says about a process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Identity {
    /// The cgroup path that says the most (the container's, else the
    /// systemd unit's, else the first one below the root), as the kernel
    /// shows it (with `/..` under a private cgroup namespace).
    pub(crate) cgroup: String,
    /// The systemd unit of a host process (`nginx.service`,
    /// `session-3.scope`); `None` for containers and processes outside any
    /// unit.
    pub(crate) unit: Option<String>,
    /// `None` for host processes (systemd services included).
    pub(crate) container: Option<Container>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: Option<&str>, pod: Option<(&str, &str)>) -> Container {
        Container {
            id: "0123456789abcdef".repeat(4),
            runtime: Runtime::Containerd,
            name: name.map(str::to_owned),
            pod: pod.map(|(namespace, name)| Pod {
                uid: "u".into(),
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                qos: Qos::Burstable,
            }),
        }
    }

    #[test]
    fn label_prefers_kubernetes_then_name_then_short_id() {
        assert_eq!(container(Some("web"), Some(("shop", "web-7d9f"))).label(), "shop/web-7d9f/web");
        assert_eq!(container(Some("web"), None).label(), "web");
        assert_eq!(container(None, None).label(), "0123456789ab");
        // A pod without a container name: the name or id alone.
        assert_eq!(container(None, Some(("shop", "web-7d9f"))).label(), "0123456789ab");
    }

    #[test]
    fn matches_name_label_or_id_prefix() {
        let c = container(Some("web"), Some(("shop", "web-7d9f")));
        assert!(c.matches("web"));
        assert!(c.matches("shop/web-7d9f/web"));
        assert!(c.matches("0123"));
        assert!(c.matches(&c.id.clone()));
        assert!(!c.matches("123"));
        assert!(!c.matches("we"));
        assert!(!c.matches(""));
    }
}
