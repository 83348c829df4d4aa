//! TFTP packets (RFC 1350, options RFC 2347): parse and emit, never panicking on input.
//!
//! ```text
//!  RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
//!  DATA     | 03    | block (2) | data (0..blksize) |
//!  ACK      | 04    | block (2) |
//!  ERROR    | 05    | code (2)  | message | 0 |
//!  OACK     | 06    | opt1 | 0 | value1 | 0 | ...
//! ```

use super::TftpError;

/// Largest request (RRQ/WRQ) accepted: RFC 2347 limits requests to 512 octets.
pub const MAX_REQUEST_LEN: usize = 512;
/// Most options accepted in one request.
pub const MAX_OPTIONS: usize = 16;
/// Largest filename accepted.
pub const MAX_FILENAME_LEN: usize = 255;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionNegotiation = 8,
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    /// Lower-cased mode ("octet", "netascii", ...).
    pub mode: String,
    /// (lower-cased name, value) in the order received.
    pub options: Vec<(String, String)>,
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: String },
    Oack { options: Vec<(String, String)> },
}

fn take_str<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a str, &'a [u8]), TftpError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(TftpError::Unterminated(what))?;
    let (text, rest) = buf.split_at(nul);
    let s = std::str::from_utf8(text).map_err(|_| TftpError::NotText(what))?;
    // `rest` starts with the NUL.
    Ok((s, rest.get(1..).unwrap_or_default()))
}

fn parse_request(body: &[u8]) -> Result<Request, TftpError> {
    let (filename, rest) = take_str(body, "filename")?;
    if filename.is_empty() {
        return Err(TftpError::NoFilename);
    }
    if filename.len() > MAX_FILENAME_LEN {
        return Err(TftpError::FilenameTooLong(filename.len()));
    }
    let (mode, mut rest) = take_str(rest, "mode")?;
    if mode.is_empty() {
        return Err(TftpError::BadMode(String::new()));
    }
    let mut options = Vec::new();
    while !rest.is_empty() {
        // Some clients pad with trailing NULs; tolerate an empty tail of zeros.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let (name, r) = take_str(rest, "option name")?;
        let (value, r) = take_str(r, "option value")?;
        if options.len() >= MAX_OPTIONS {
            return Err(TftpError::TooManyOptions);
        }
        options.push((name.to_ascii_lowercase(), value.to_string()));
        rest = r;
    }
    Ok(Request {
        filename: filename.to_string(),
        mode: mode.to_ascii_lowercase(),
        options,
    })
}

impl<'a> Packet<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Packet<'a>, TftpError> {
        let Some((op, body)) = buf.split_first_chunk::<2>() else {
            return Err(TftpError::Truncated(buf.len()));
        };
        let op = u16::from_be_bytes(*op);
        // DATA, ACK and ERROR: a 2-byte block number or error code, then the rest.
        let numbered = || -> Result<(u16, &'a [u8]), TftpError> {
            match body.split_first_chunk::<2>() {
                Some((n, rest)) => Ok((u16::from_be_bytes(*n), rest)),
                None => Err(TftpError::Truncated(buf.len())),
            }
        };
        match op {
            OP_RRQ | OP_WRQ => {
                if buf.len() > MAX_REQUEST_LEN {
                    return Err(TftpError::RequestTooLong(buf.len()));
                }
                let r = parse_request(body)?;
                Ok(if op == OP_RRQ {
                    Packet::Rrq(r)
                } else {
                    Packet::Wrq(r)
                })
            }
            OP_DATA => {
                let (block, data) = numbered()?;
                Ok(Packet::Data { block, data })
            }
            OP_ACK => Ok(Packet::Ack {
                block: numbered()?.0,
            }),
            OP_ERROR => {
                let (code, msg) = numbered()?;
                let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
                let text = msg.get(..end.min(512)).unwrap_or_default();
                Ok(Packet::Error {
                    code,
                    message: String::from_utf8_lossy(text).into_owned(),
                })
            }
            OP_OACK => {
                let mut options = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (name, r) = take_str(rest, "option name")?;
                    let (value, r) = take_str(r, "option value")?;
                    if options.len() >= MAX_OPTIONS {
                        return Err(TftpError::TooManyOptions);
                    }
                    options.push((name.to_ascii_lowercase(), value.to_string()));
                    rest = r;
                }
                Ok(Packet::Oack { options })
            }
            other => Err(TftpError::UnknownOpcode(other)),
        }
    }
}

/// Emit a DATA packet.
pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&OP_DATA.to_be_bytes());
    v.extend_from_slice(&block.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Emit an ACK packet.
pub fn ack(block: u16) -> Vec<u8> {
    let mut v = OP_ACK.to_be_bytes().to_vec();
    v.extend_from_slice(&block.to_be_bytes());
    v
}

/// Emit an ERROR packet.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut v = OP_ERROR.to_be_bytes().to_vec();
    v.extend_from_slice(&(code as u16).to_be_bytes());
    v.extend(message.bytes().filter(|&b| b != 0).take(255));
    v.push(0);
    v
}

/// Emit an OACK packet.
pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut v = OP_OACK.to_be_bytes().to_vec();
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Emit a request (used by tests and tools).
pub fn request(op: u16, filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = op.to_be_bytes().to_vec();
    for s in [filename, mode] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden RRQ: opcode 1, "undionly.kpxe", "octet", blksize 1468, tsize 0.
    const GOLDEN_RRQ: &[u8] =
        b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00";

    #[test]
    fn golden_rrq() {
        let p = Packet::parse(GOLDEN_RRQ).expect("parses");
        assert_eq!(
            p,
            Packet::Rrq(Request {
                filename: "undionly.kpxe".into(),
                mode: "octet".into(),
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into())
                ],
            })
        );
        assert_eq!(
            request(
                OP_RRQ,
                "undionly.kpxe",
                "octet",
                &[("blksize", "1468"), ("tsize", "0")]
            ),
            GOLDEN_RRQ
        );
    }

    #[test]
    fn golden_small_packets() {
        assert_eq!(ack(0x0102), b"\x00\x04\x01\x02");
        assert_eq!(data(1, b"hi"), b"\x00\x03\x00\x01hi");
        assert_eq!(
            error(ErrorCode::FileNotFound, "no"),
            b"\x00\x05\x00\x01no\x00"
        );
        assert_eq!(
            oack(&[("tsize".into(), "5".into())]),
            b"\x00\x06tsize\x005\x00"
        );
        assert_eq!(
            Packet::parse(b"\x00\x04\xff\xff").expect("ack"),
            Packet::Ack { block: 65535 }
        );
        assert_eq!(
            Packet::parse(b"\x00\x03\x00\x07abc").expect("data"),
            Packet::Data {
                block: 7,
                data: b"abc"
            }
        );
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x02denied\x00").expect("error"),
            Packet::Error {
                code: 2,
                message: "denied".into()
            }
        );
    }

    #[test]
    fn every_prefix_is_an_error_or_a_packet_never_a_panic() {
        for n in 0..GOLDEN_RRQ.len() {
            let _ = Packet::parse(&GOLDEN_RRQ[..n]);
        }
        assert!(matches!(
            Packet::parse(&GOLDEN_RRQ[..5]),
            Err(TftpError::Unterminated("filename"))
        ));
    }

    #[test]
    fn bad_requests() {
        assert!(matches!(
            Packet::parse(b"\x00\x01\x00octet\x00"),
            Err(TftpError::NoFilename)
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01f\x00\x00"),
            Err(TftpError::BadMode(_))
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x09"),
            Err(TftpError::UnknownOpcode(9))
        ));
        assert!(matches!(
            Packet::parse(b"\x00"),
            Err(TftpError::Truncated(1))
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x04\x01"),
            Err(TftpError::Truncated(3))
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(TftpError::Unterminated("option value"))
        ));
        assert!(matches!(
            Packet::parse(b"\x00\x01\xff\xfe\x00octet\x00"),
            Err(TftpError::NotText("filename"))
        ));
        let mut long = b"\x00\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', 600));
        long.extend_from_slice(b"\x00octet\x00");
        assert!(matches!(
            Packet::parse(&long),
            Err(TftpError::RequestTooLong(_))
        ));
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..20 {
            many.extend_from_slice(format!("o{i}\x001\x00").as_bytes());
        }
        assert!(matches!(
            Packet::parse(&many),
            Err(TftpError::TooManyOptions)
        ));
        // Mode and option names are case-insensitive.
        match Packet::parse(b"\x00\x01f\x00OCTET\x00BlkSize\x00512\x00\x00\x00") {
            Ok(Packet::Rrq(r)) => {
                assert_eq!(r.mode, "octet");
                assert_eq!(r.options, vec![("blksize".to_string(), "512".to_string())]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
