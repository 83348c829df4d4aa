//! The IPv4 and UDP headers around a DHCP reply that is sent on the link layer (an `AF_PACKET`
//! socket, to the client's MAC): the way to unicast a reply to a client that has no address
//! yet without adding an ARP entry (which needs `CAP_NET_ADMIN`; the link-layer socket needs
//! only `CAP_NET_RAW`). Pure: the service sends the bytes.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version|  IHL  |    DSCP/ECN   |          Total Length         |  RFC 791
//! |         Identification        |Flags|     Fragment Offset     |
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! |          Source Port          |       Destination Port        |  RFC 768
//! |            Length             |           Checksum            |
//! ```

use std::net::SocketAddrV4;

/// IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// The largest payload that fits in one datagram (the IPv4 total length is 16 bits).
pub const MAX_PAYLOAD: usize = u16::MAX as usize - IPV4_HEADER_LEN - UDP_HEADER_LEN;

const PROTO_UDP: u8 = 17;
/// Time to live of the datagram (one link; 64 as Linux's default).
const TTL: u8 = 64;

/// The IPv4 datagram carrying `payload` from `src` to `dst` over UDP, checksums filled in; None
/// when the payload is longer than [`MAX_PAYLOAD`].
pub fn udp_datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let udp_len = (UDP_HEADER_LEN + payload.len()) as u16;
    let total = udp_len + IPV4_HEADER_LEN as u16;
    let ip = ipv4_header(src, dst, total, 0);
    let ip = ipv4_header(src, dst, total, checksum(&[&ip]));
    // The UDP checksum covers a pseudo-header (addresses, protocol, UDP length), the UDP
    // header and the payload. A computed 0 is sent as 0xffff (0 means "no checksum").
    let (s, d, l) = (src.ip().octets(), dst.ip().octets(), udp_len.to_be_bytes());
    let pseudo = [
        s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], 0, PROTO_UDP, l[0], l[1],
    ];
    let udp = udp_header(src.port(), dst.port(), udp_len, 0);
    let udp_sum = match checksum(&[&pseudo, &udp, payload]) {
        0 => 0xffff,
        s => s,
    };
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&ip);
    p.extend_from_slice(&udp_header(src.port(), dst.port(), udp_len, udp_sum));
    p.extend_from_slice(payload);
    Some(p)
}

/// An IPv4 header without options: Don't Fragment, identification 0 (RFC 6864 allows it for
/// datagrams that are never fragmented), TTL 64, protocol UDP.
fn ipv4_header(src: SocketAddrV4, dst: SocketAddrV4, total: u16, sum: u16) -> [u8; 20] {
    let (s, d) = (src.ip().octets(), dst.ip().octets());
    let (t, c) = (total.to_be_bytes(), sum.to_be_bytes());
    [
        0x45, 0, t[0], t[1], 0, 0, 0x40, 0, TTL, PROTO_UDP, c[0], c[1], s[0], s[1], s[2], s[3],
        d[0], d[1], d[2], d[3],
    ]
}

fn udp_header(src_port: u16, dst_port: u16, len: u16, sum: u16) -> [u8; 8] {
    let (s, d, l, c) = (
        src_port.to_be_bytes(),
        dst_port.to_be_bytes(),
        len.to_be_bytes(),
        sum.to_be_bytes(),
    );
    [s[0], s[1], d[0], d[1], l[0], l[1], c[0], c[1]]
}

/// The Internet checksum (RFC 1071) of the parts, read as one run of 16-bit big-endian words
/// (every part but the last has an even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            if let &[a, b] = w {
                sum += u32::from(u16::from_be_bytes([a, b]));
            }
        }
        if let &[last] = words.remainder() {
            sum += u32::from(last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checksum over data that holds its own checksum is 0 (RFC 1071).
    fn verifies(parts: &[&[u8]]) -> bool {
        checksum(parts) == 0
    }

    #[test]
    fn golden_datagram() {
        let src: SocketAddrV4 = "10.77.0.1:67".parse().unwrap();
        let dst: SocketAddrV4 = "10.77.0.11:68".parse().unwrap();
        let p = udp_datagram(src, dst, b"abc").unwrap();
        #[rustfmt::skip]
        let want: [u8; 31] = [
            0x45, 0x00, 0x00, 0x1f, // v4, IHL 5; total 31
            0x00, 0x00, 0x40, 0x00, // id 0; DF
            0x40, 0x11, 0x00, 0x00, // TTL 64, UDP; header checksum (checked below)
            10, 77, 0, 1,           // source
            10, 77, 0, 11,          // destination
            0x00, 0x43, 0x00, 0x44, // ports 67 -> 68
            0x00, 0x0b, 0x00, 0x00, // UDP length 11; checksum (checked below)
            b'a', b'b', b'c',
        ];
        let mut masked = p.clone();
        masked[10..12].fill(0);
        masked[26..28].fill(0);
        assert_eq!(masked, want);
        // Header checksum by hand: 0x4500 + 0x001f + 0x4000 + 0x4011 + 0x0a4d + 0x0001 +
        // 0x0a4d + 0x000b = 0xd9d6, complemented 0x2629.
        assert_eq!(&p[10..12], &[0x26, 0x29]);
        assert!(verifies(&[&p[..IPV4_HEADER_LEN]]));
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&[10, 77, 0, 1]);
        pseudo[4..8].copy_from_slice(&[10, 77, 0, 11]);
        pseudo[9] = 17;
        pseudo[10..].copy_from_slice(&11u16.to_be_bytes());
        assert!(verifies(&[&pseudo, &p[IPV4_HEADER_LEN..]]));
    }

    #[test]
    fn odd_and_empty_payloads_checksum_and_the_limit_holds() {
        let src: SocketAddrV4 = "192.0.2.1:4011".parse().unwrap();
        let dst: SocketAddrV4 = "192.0.2.200:68".parse().unwrap();
        for len in [0, 1, 2, 300, 1535] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let p = udp_datagram(src, dst, &payload).unwrap();
            assert_eq!(p.len(), 28 + len);
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
            assert!(verifies(&[&p[..IPV4_HEADER_LEN]]));
            assert_ne!(&p[26..28], &[0, 0], "a UDP checksum is always sent");
        }
        assert!(udp_datagram(src, dst, &vec![0; MAX_PAYLOAD]).is_some());
        assert!(udp_datagram(src, dst, &vec![0; MAX_PAYLOAD + 1]).is_none());
    }
}
