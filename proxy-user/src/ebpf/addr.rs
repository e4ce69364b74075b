//! Conversions between `std::net` addresses and the contract's normal form: 16-byte IPv6 in
//! network byte order as four in-memory words, IPv4 as v4-mapped, ports in host byte order.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// `ip` in the contract's form. IPv4 and v4-mapped IPv6 give the same words, so a v4 peer finds a
/// record written by a v6 socket that connected to a v4-mapped VIP, and vice versa.
pub(crate) fn to_words(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let b = v6.octets();
    // Native-endian words reproduce the network-order bytes in memory, which is what the kernel
    // side stores (it copies `user_ip6` words as they are).
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// The inverse of [`to_words`]: v4-mapped addresses come back as IPv4.
pub(crate) fn from_words(words: [u32; 4]) -> IpAddr {
    let mut b = [0u8; 16];
    for (chunk, word) in b.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A socket address from contract words and a host-order port.
pub(crate) fn socket_addr(words: [u32; 4], port: u16) -> SocketAddr {
    match from_words(words) {
        IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, port)),
        IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn v4_and_v4_mapped_share_words() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 96, 0, 10).to_ipv6_mapped());
        assert_eq!(to_words(v4), to_words(mapped));
        assert_eq!(from_words(to_words(mapped)), v4);
    }

    #[test]
    fn words_are_network_order_in_memory() {
        let words = to_words(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(words[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(words[3].to_ne_bytes(), [10, 96, 0, 10]);
    }

    #[test]
    fn native_v6_round_trips() {
        let ip: IpAddr = "fd00::1234"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(from_words(to_words(ip)), ip);
        assert_eq!(
            socket_addr(to_words(ip), 80),
            SocketAddr::new(ip, 80),
            "v6 socket address"
        );
    }
}
