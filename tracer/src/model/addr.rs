//! Address decoding and formatting: kernel byte arrays to `IpAddr`, and
//! IPv4-mapped IPv6 addresses shown as IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{AF_INET, AF_INET6};

/// An address as the kernel stores it (network order; IPv4 in the first
/// four bytes), canonicalised.
pub(crate) fn from_kernel(family: u16, bytes: &[u8; 16]) -> IpAddr {
    match family {
        AF_INET6 => canonical(IpAddr::V6(Ipv6Addr::from(*bytes))),
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4; everything else stays.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kernel_addresses() {
        let table: &[(u16, [u8; 16], &str)] = &[
            (AF_INET, [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "127.0.0.1"),
            (AF_INET6, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], "::1"),
            (AF_INET6, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3], "10.1.2.3"),
            (
                AF_INET6,
                [0x24, 0x00, 0xcb, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xa2, 0x9e, 0xfd, 0x8f],
                "2400:cb00::a29e:fd8f",
            ),
        ];
        for (family, bytes, text) in table {
            assert_eq!(from_kernel(*family, bytes).to_string(), *text);
        }
    }
}
