//! Which sockets a trace or the agent reports: `--pid`, `--comm`, `--port`,
//! `--remote`, `--container`. A repeated flag means OR; different flags
//! combine with AND.

use std::net::IpAddr;

use thiserror::Error;

use super::container::Container;

#[derive(Debug, Error, PartialEq)]
pub(crate) enum CidrError {
    #[error("invalid CIDR '{0}': expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32")]
    Syntax(String),
    #[error("invalid CIDR '{0}': prefix length too long for the address family")]
    Prefix(String),
}

/// An IP network. An IPv4 network also matches IPv4-mapped IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::Syntax(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::Syntax(text.to_owned()));
                }
                p.parse::<u8>().map_err(|_| CidrError::Prefix(text.to_owned()))?
            }
        };
        if prefix > max {
            return Err(CidrError::Prefix(text.to_owned()));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_match(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = prefix % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

impl Cidr {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = super::addr::canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

/// The user's filters; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) pids: Vec<u32>,
    pub(crate) comms: Vec<String>,
    pub(crate) ports: Vec<u16>,
    pub(crate) remotes: Vec<Cidr>,
    /// Container names, `namespace/pod/container` labels or id prefixes;
    /// host processes never match.
    pub(crate) containers: Vec<String>,
}

/// What a filter looks at in one socket.
pub(crate) struct SocketFacts<'a> {
    pub(crate) pid: u32,
    pub(crate) comm: &'a str,
    pub(crate) local_port: u16,
    pub(crate) remote_port: u16,
    pub(crate) remote_addr: IpAddr,
    /// The owner's container, if it runs in one (and it is known).
    pub(crate) container: Option<&'a Container>,
}

impl Filter {
    pub(crate) fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.comms.is_empty()
            && self.ports.is_empty()
            && self.remotes.is_empty()
            && self.containers.is_empty()
    }

    pub(crate) fn matches(&self, socket: &SocketFacts<'_>) -> bool {
        (self.pids.is_empty() || self.pids.contains(&socket.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == socket.comm))
            && (self.ports.is_empty()
                || self.ports.contains(&socket.local_port)
                || self.ports.contains(&socket.remote_port))
            && (self.remotes.is_empty() || self.remotes.iter().any(|c| c.contains(socket.remote_addr)))
            && (self.containers.is_empty()
                || socket.container.is_some_and(|c| self.containers.iter().any(|wanted| c.matches(wanted))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pid: u32, comm: &str, lport: u16, rport: u16, remote: &str) -> SocketFacts<'static> {
        SocketFacts {
            pid,
            comm: Box::leak(comm.to_owned().into_boxed_str()),
            local_port: lport,
            remote_port: rport,
            remote_addr: remote.parse().expect("ip"),
            container: None,
        }
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("2001:db8::/32".parse::<Cidr>().is_ok());
        assert!("10.1.2.3".parse::<Cidr>().is_ok());
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix("10.0.0.0/33".into())));
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
        assert!("10.0.0.0/-1".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_matches_v4_and_mapped_v6() {
        let net: Cidr = "127.0.0.0/8".parse().expect("cidr");
        assert!(net.contains("127.1.2.3".parse().expect("ip")));
        assert!(net.contains("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!net.contains("128.0.0.1".parse().expect("ip")));
        assert!(!net.contains("::1".parse().expect("ip")));
        let odd: Cidr = "10.128.0.0/9".parse().expect("cidr");
        assert!(odd.contains("10.200.0.1".parse().expect("ip")));
        assert!(!odd.contains("10.100.0.1".parse().expect("ip")));
        let v6: Cidr = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.contains("2001:db8::1".parse().expect("ip")));
    }

    #[test]
    fn repeated_flags_or_different_flags_and() {
        let filter = Filter { pids: vec![1, 2], ports: vec![80], ..Filter::default() };
        assert!(filter.matches(&facts(1, "a", 80, 5000, "1.1.1.1")));
        assert!(filter.matches(&facts(2, "a", 5000, 80, "1.1.1.1")));
        assert!(!filter.matches(&facts(3, "a", 80, 5000, "1.1.1.1")));
        assert!(!filter.matches(&facts(1, "a", 81, 5000, "1.1.1.1")));
        assert!(Filter::default().matches(&facts(9, "x", 1, 2, "::1")));
        let by_comm = Filter { comms: vec!["curl".into()], ..Filter::default() };
        assert!(by_comm.matches(&facts(9, "curl", 1, 2, "::1")));
        assert!(!by_comm.matches(&facts(9, "curl2", 1, 2, "::1")));
    }

    #[test]
    fn container_filter_matches_name_or_id_prefix_never_the_host() {
        use crate::model::container::Runtime;
        let web = Container { id: "ab".repeat(32), runtime: Runtime::Podman, name: Some("web".into()), pod: None };
        let filter = Filter { containers: vec!["web".into(), "cdef".into()], ..Filter::default() };
        assert!(!filter.is_empty());
        let mut socket = facts(1, "a", 80, 5000, "1.1.1.1");
        assert!(!filter.matches(&socket), "a host process");
        socket.container = Some(&web);
        assert!(filter.matches(&socket));
        let by_id = Filter { containers: vec!["abab".into()], ..Filter::default() };
        assert!(by_id.matches(&socket));
        let other = Filter { containers: vec!["db".into()], ..Filter::default() };
        assert!(!other.matches(&socket));
    }
}
