//! What /proc tells about TCP sockets: the tables of every network namespace
//! that has processes (`/proc/PID/net/tcp{,6}`), which process holds which
//! socket inode (`/proc/*/fd`, as `ss -p` does), process names, and TIME_WAIT
//! counts. The /proc root is a parameter so the parsers are testable.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use crate::model::{addr::canonical, ProcSocket, Tuple};

fn numeric_dirs(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc_root) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Parses `net:[4026531840]`-style links.
fn bracketed_number(link: &str, prefix: &str) -> Option<u64> {
    link.strip_prefix(prefix)?.strip_prefix(":[")?.strip_suffix(']')?.parse().ok()
}

/// One pid per network namespace that has processes: (netns inode, pid).
pub(crate) fn namespaces(proc_root: &Path) -> Vec<(u32, u32)> {
    let mut seen = HashMap::new();
    for pid in numeric_dirs(proc_root) {
        let Ok(link) = fs::read_link(proc_root.join(pid.to_string()).join("ns/net")) else { continue };
        if let Some(inode) = link.to_str().and_then(|l| bracketed_number(l, "net")) {
            seen.entry(inode as u32).or_insert(pid);
        }
    }
    seen.into_iter().collect()
}

fn hex_ipv4(text: &str) -> Option<Ipv4Addr> {
    let word = u32::from_str_radix(text, 16).ok()?;
    // The kernel prints the network-order word as a native integer.
    Some(Ipv4Addr::from(word.to_ne_bytes()))
}

fn hex_ipv6(text: &str) -> Option<Ipv6Addr> {
    if text.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let word = u32::from_str_radix(text.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

fn hex_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let ip = if addr.len() == 8 { IpAddr::V4(hex_ipv4(addr)?) } else { IpAddr::V6(hex_ipv6(addr)?) };
    Some(SocketAddr::new(canonical(ip), u16::from_str_radix(port, 16).ok()?))
}

/// Parses the text of `/proc/net/tcp` or `/proc/net/tcp6`: (tuple, state, inode).
pub(crate) fn parse_tcp_table(text: &str, netns: u32) -> Vec<(Tuple, u8, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = hex_endpoint(fields.get(1)?)?;
            let remote = hex_endpoint(fields.get(2)?)?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((Tuple { netns, local, remote }, state, inode))
        })
        .collect()
}

/// Socket inode -> owning pid, from every process's fd table. When several
/// processes hold a socket (fork), the lowest pid wins.
pub(crate) fn socket_owners(proc_root: &Path, wanted: Option<&HashSet<u64>>) -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    for pid in numeric_dirs(proc_root) {
        let fd_dir = proc_root.join(pid.to_string()).join("fd");
        let Ok(entries) = fs::read_dir(&fd_dir) else { continue };
        for entry in entries.flatten() {
            let Ok(link) = fs::read_link(entry.path()) else { continue };
            let Some(inode) = link.to_str().and_then(|l| bracketed_number(l, "socket")) else { continue };
            if wanted.is_some_and(|w| !w.contains(&inode)) {
                continue;
            }
            owners.entry(inode).and_modify(|p: &mut u32| *p = (*p).min(pid)).or_insert(pid);
        }
    }
    owners
}

/// Every TCP socket in every network namespace that has processes, with its
/// owner where a process holds it.
pub(crate) fn scan_sockets(proc_root: &Path) -> Vec<ProcSocket> {
    let mut sockets = Vec::new();
    for (netns, pid) in namespaces(proc_root) {
        for table in ["net/tcp", "net/tcp6"] {
            let Ok(text) = fs::read_to_string(proc_root.join(pid.to_string()).join(table)) else { continue };
            for (tuple, state, inode) in parse_tcp_table(&text, netns) {
                sockets.push(ProcSocket { tuple, state, inode, pid: None });
            }
        }
    }
    let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
    let owners = socket_owners(proc_root, Some(&inodes));
    for socket in &mut sockets {
        socket.pid = owners.get(&socket.inode).copied();
    }
    sockets
}

/// TIME_WAIT sockets on the host: the `tw` count of every namespace's
/// `/proc/PID/net/sockstat`.
pub(crate) fn time_wait_count(proc_root: &Path) -> u64 {
    namespaces(proc_root)
        .into_iter()
        .filter_map(|(_, pid)| fs::read_to_string(proc_root.join(pid.to_string()).join("net/sockstat")).ok())
        .map(|text| parse_sockstat_tw(&text))
        .sum()
}

pub(crate) fn parse_sockstat_tw(text: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "tw")?;
            words.get(at + 1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The process's name as `/proc/PID/comm` shows it (without the newline).
pub(crate) fn read_comm(proc_root: &Path, pid: u32) -> Option<String> {
    let bytes = fs::read(proc_root.join(pid.to_string()).join("comm")).ok()?;
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    Some(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D431 08 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_tcp_table(v4, 7);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0.local.to_string(), "127.0.0.1:8080");
        assert_eq!((rows[0].1, rows[0].2), (10, 12345));
        assert_eq!(rows[1].0.remote.to_string(), "127.0.0.1:54321");
        assert_eq!(rows[1].1, 8);

        let v6 = "header\n   0: 00000000000000000000000001000000:0050 0000000000000000FFFF00000100007F:C350 01 0:0 0:0 0 0 0 999 1\n";
        let rows = parse_tcp_table(v6, 7);
        assert_eq!(rows[0].0.local.to_string(), "[::1]:80");
        assert_eq!(rows[0].0.remote.to_string(), "127.0.0.1:50000");
        assert_eq!(rows[0].2, 999);
    }

    #[test]
    fn ignores_garbage_lines() {
        assert!(parse_tcp_table("h\nnonsense\n 0: zz:zz\n", 1).is_empty());
    }

    #[test]
    fn reads_time_wait_from_sockstat() {
        let text = "sockets: used 100\nTCP: inuse 5 orphan 0 tw 42 alloc 7 mem 1\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), 42);
        assert_eq!(parse_sockstat_tw("garbage"), 0);
    }

    #[test]
    fn parses_links() {
        assert_eq!(bracketed_number("socket:[123]", "socket"), Some(123));
        assert_eq!(bracketed_number("net:[4026531840]", "net"), Some(4026531840));
        assert_eq!(bracketed_number("pipe:[1]", "socket"), None);
    }
}
