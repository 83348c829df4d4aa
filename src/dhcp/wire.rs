//! Checking a received DHCP datagram before dhcproto sees it, and reading the few fields the
//! boot logic needs.
//!
//! dhcproto does not check the magic cookie, stops silently at the first bad option, and has
//! `debug_assert!`s and unchecked subtractions on some option lengths (and `chaddr()` panics
//! when hlen > 16). So every datagram is first walked here, with every length checked against
//! the end of the buffer and against the limits below; only a packet that passes is decoded.

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

use super::{DhcpError, MacAddr};

/// Fixed BOOTP header (236 bytes) plus the 4-byte magic cookie.
pub const MIN_PACKET_LEN: usize = 240;
/// Largest datagram accepted (a full Ethernet frame's worth of UDP payload, rounded up).
pub const MAX_PACKET_LEN: usize = 1536;
/// Largest parameter request list (option 55) accepted: one entry per option code.
pub const MAX_PARAMETER_REQUEST: usize = 255;
/// Offset of the magic cookie.
const COOKIE_OFFSET: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Option codes whose value length dhcproto asserts on or subtracts from; checked here so
/// hostile lengths are refused instead of tripping an assertion. (code, min, max)
const FIXED_LENGTHS: &[(u8, usize, usize)] = &[
    (53, 1, 1),    // message type
    (80, 0, 0),    // rapid commit
    (81, 3, 255),  // client FQDN: flags, rcode1, rcode2, name
    (93, 2, 254),  // client system architecture: list of u16
    (94, 3, 3),    // client network interface identifier
    (151, 1, 255), // bulk leasequery status code
    (152, 4, 4),
    (153, 4, 4),
    (154, 4, 4),
    (155, 4, 4),
];

/// Walk the datagram: header, cookie, every option's length; refuse what does not fit.
pub fn check_packet(bytes: &[u8]) -> Result<(), DhcpError> {
    if bytes.len() > MAX_PACKET_LEN {
        return Err(DhcpError::PacketTooLong(bytes.len()));
    }
    let Some(fixed) = bytes.first_chunk::<MIN_PACKET_LEN>() else {
        return Err(DhcpError::PacketTooShort(bytes.len()));
    };
    // op, htype, hlen (RFC 2131 §2).
    let &[op, htype, hlen, ..] = fixed;
    if op != 1 {
        return Err(DhcpError::NotARequest);
    }
    if htype != 1 || hlen != 6 {
        return Err(DhcpError::NotEthernet { htype, hlen });
    }
    if fixed.get(COOKIE_OFFSET..COOKIE_OFFSET + 4) != Some(&MAGIC[..]) {
        return Err(DhcpError::NoMagicCookie);
    }
    // (code, accumulated length) of the current run of same-code options (RFC 3396
    // concatenation, which dhcproto applies to consecutive repeats).
    let mut run: Option<(u8, usize)> = None;
    let mut pos = MIN_PACKET_LEN;
    let mut saw_type = false;
    while let Some(&code) = bytes.get(pos) {
        if code == 0 {
            finish_run(run.take())?;
            pos += 1;
            continue;
        }
        if code == 255 {
            break;
        }
        let len = *bytes
            .get(pos + 1)
            .ok_or(DhcpError::TruncatedOption { code, offset: pos })? as usize;
        if pos + 2 + len > bytes.len() {
            return Err(DhcpError::TruncatedOption { code, offset: pos });
        }
        if code == 53 {
            saw_type = true;
        }
        run = match run {
            Some((c, acc)) if c == code => Some((c, acc + len)),
            other => {
                finish_run(other)?;
                Some((code, len))
            }
        };
        pos += 2 + len;
    }
    finish_run(run)?;
    if !saw_type {
        return Err(DhcpError::NoMessageType);
    }
    Ok(())
}

fn finish_run(run: Option<(u8, usize)>) -> Result<(), DhcpError> {
    let Some((code, len)) = run else {
        return Ok(());
    };
    if code == 55 && len > MAX_PARAMETER_REQUEST {
        return Err(DhcpError::ParameterListTooLong(len));
    }
    if let Some(&(_, min, max)) = FIXED_LENGTHS.iter().find(|(c, _, _)| *c == code) {
        if len < min || len > max || (code == 93 && len % 2 != 0) {
            return Err(DhcpError::BadOptionLength { code, len });
        }
    }
    Ok(())
}

/// Check and decode a received datagram.
pub fn parse_request(bytes: &[u8]) -> Result<Message, DhcpError> {
    check_packet(bytes)?;
    let msg = Message::from_bytes(bytes).map_err(|e| DhcpError::Decoding(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(DhcpError::NotARequest);
    }
    if msg.opts().msg_type().is_none() {
        return Err(DhcpError::NoMessageType);
    }
    Ok(msg)
}

/// Encode a reply.
pub fn encode(msg: &Message) -> Result<Vec<u8>, DhcpError> {
    msg.to_vec().map_err(|e| DhcpError::Encoding(e.to_string()))
}

/// The client's MAC (valid after [`check_packet`]: hlen is 6).
pub fn mac_of(msg: &Message) -> MacAddr {
    MacAddr(msg.chaddr().first_chunk::<6>().copied().unwrap_or_default())
}

/// Which kind of DHCP client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A PXE ROM (vendor class `PXEClient`, not iPXE): stage 1. `arch` is option 93
    /// (None when the ROM did not send it; treated as BIOS).
    PxeRom { arch: Option<u16> },
    /// iPXE (user class `iPXE`, or option 175 present): stage 2.
    Ipxe { arch: Option<u16> },
    /// Anything else (an OS's DHCP client).
    Plain,
}

impl ClientKind {
    pub fn is_firmware(&self) -> bool {
        !matches!(self, ClientKind::Plain)
    }
}

/// Does this user class (option 77) say iPXE? iPXE sends the bare string `iPXE`; RFC 3004
/// clients send length-prefixed entries; both are accepted.
fn user_class_is_ipxe(uc: &[u8]) -> bool {
    if uc == b"iPXE" {
        return true;
    }
    let mut rest = uc;
    while let Some((&len, tail)) = rest.split_first() {
        let Some((entry, next)) = tail.split_at_checked(len as usize) else {
            return false;
        };
        if entry == b"iPXE" {
            return true;
        }
        rest = next;
    }
    false
}

/// Classify a request by its options 60, 77, 93 and 175.
pub fn classify(msg: &Message) -> ClientKind {
    let opts = msg.opts();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    let ipxe_user_class = matches!(
        opts.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(uc)) if user_class_is_ipxe(uc)
    );
    let has_175 = opts.get(OptionCode::Unknown(175)).is_some();
    if ipxe_user_class || has_175 {
        return ClientKind::Ipxe { arch };
    }
    let pxe_vendor = matches!(
        opts.get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"PXEClient")
    );
    if pxe_vendor {
        return ClientKind::PxeRom { arch };
    }
    ClientKind::Plain
}

/// The DHCP message type (present after [`parse_request`]).
pub fn msg_type(msg: &Message) -> Option<MessageType> {
    msg.opts().msg_type()
}

/// The requested IP address (option 50).
pub fn requested_ip(msg: &Message) -> Option<std::net::Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

/// The server identifier (option 54).
pub fn server_id(msg: &Message) -> Option<std::net::Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, Flags};
    use std::net::Ipv4Addr;

    /// A DISCOVER with the given options, encoded.
    pub(crate) fn packet(mac: [u8; 6], opts: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.set_flags(Flags::default());
        for o in opts {
            m.opts_mut().insert(o);
        }
        m.to_vec().expect("encodes")
    }

    fn discover() -> Vec<u8> {
        packet(
            [2, 0, 0, 0, 0, 1],
            vec![DhcpOption::MessageType(MessageType::Discover)],
        )
    }

    #[test]
    fn good_packet_parses() {
        let m = parse_request(&discover()).expect("parses");
        assert_eq!(msg_type(&m), Some(MessageType::Discover));
        assert_eq!(mac_of(&m), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(classify(&m), ClientKind::Plain);
    }

    #[test]
    fn every_truncated_prefix_is_an_error_not_a_panic() {
        let p = packet(
            [2, 0, 0, 0, 0, 1],
            vec![
                DhcpOption::MessageType(MessageType::Discover),
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture(0)),
            ],
        );
        for n in 0..p.len() {
            let _ = parse_request(&p[..n]);
        }
        // Dropping the End option keeps a valid packet; cutting inside an option does not.
        assert!(parse_request(&p[..p.len() - 1]).is_ok());
        assert!(matches!(
            parse_request(&p[..p.len() - 3]),
            Err(DhcpError::TruncatedOption { .. })
        ));
    }

    #[test]
    fn missing_cookie_refused() {
        let mut p = discover();
        p[236] = 0;
        assert!(matches!(parse_request(&p), Err(DhcpError::NoMagicCookie)));
    }

    #[test]
    fn option_length_past_end_refused() {
        let mut p = discover();
        p.truncate(243); // cookie + 53,1,1
        p.extend_from_slice(&[60, 200, b'P', b'X']);
        assert!(matches!(
            parse_request(&p),
            Err(DhcpError::TruncatedOption { code: 60, .. })
        ));
        let mut q = discover();
        q.truncate(243);
        q.push(12); // code with no length byte
        assert!(matches!(
            parse_request(&q),
            Err(DhcpError::TruncatedOption { code: 12, .. })
        ));
    }

    #[test]
    fn huge_parameter_request_list_refused() {
        let mut p = discover();
        p.truncate(243);
        // Two concatenated option-55 chunks of 200 bytes each: 400 entries.
        for _ in 0..2 {
            p.push(55);
            p.push(200);
            p.extend(std::iter::repeat_n(1u8, 200));
        }
        p.push(255);
        assert!(matches!(
            parse_request(&p),
            Err(DhcpError::ParameterListTooLong(400))
        ));
    }

    #[test]
    fn hostile_fixed_lengths_refused() {
        for (code, len) in [
            (94u8, 2u8),
            (93, 1),
            (93, 3),
            (151, 0),
            (81, 1),
            (80, 1),
            (53, 2),
        ] {
            let mut p = discover();
            p.truncate(243);
            p.push(code);
            p.push(len);
            p.extend(std::iter::repeat_n(0u8, len as usize));
            p.push(255);
            assert!(
                matches!(parse_request(&p), Err(DhcpError::BadOptionLength { .. })),
                "code {code} len {len}"
            );
        }
    }

    #[test]
    fn bad_header_refused() {
        let mut p = discover();
        p[2] = 17; // hlen > 16 would make dhcproto's chaddr() panic
        assert!(matches!(
            parse_request(&p),
            Err(DhcpError::NotEthernet { .. })
        ));
        let mut p = discover();
        p[0] = 2;
        assert!(matches!(parse_request(&p), Err(DhcpError::NotARequest)));
        let big = vec![0u8; MAX_PACKET_LEN + 1];
        assert!(matches!(
            parse_request(&big),
            Err(DhcpError::PacketTooLong(_))
        ));
        let mut p = discover();
        p.truncate(240);
        p.push(255);
        assert!(matches!(parse_request(&p), Err(DhcpError::NoMessageType)));
    }

    #[test]
    fn classify_clients() {
        let mac = [2, 0, 0, 0, 0, 1];
        let pxe = packet(
            mac,
            vec![
                DhcpOption::MessageType(MessageType::Discover),
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003010".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture(7)),
            ],
        );
        assert_eq!(
            classify(&parse_request(&pxe).expect("ok")),
            ClientKind::PxeRom { arch: Some(7) }
        );
        let ipxe = packet(
            mac,
            vec![
                DhcpOption::MessageType(MessageType::Discover),
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture(0)),
                DhcpOption::UserClass(b"iPXE".to_vec()),
            ],
        );
        assert_eq!(
            classify(&parse_request(&ipxe).expect("ok")),
            ClientKind::Ipxe { arch: Some(0) }
        );
        let rfc3004 = packet(
            mac,
            vec![
                DhcpOption::MessageType(MessageType::Discover),
                DhcpOption::UserClass(b"\x03foo\x04iPXE".to_vec()),
            ],
        );
        assert!(matches!(
            classify(&parse_request(&rfc3004).expect("ok")),
            ClientKind::Ipxe { .. }
        ));
        let with175 = packet(
            mac,
            vec![
                DhcpOption::MessageType(MessageType::Discover),
                DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                    OptionCode::Unknown(175),
                    vec![177, 5, 1, 0x80, 0x86, 0x10, 0x0e],
                )),
            ],
        );
        assert!(matches!(
            classify(&parse_request(&with175).expect("ok")),
            ClientKind::Ipxe { .. }
        ));
    }
}
