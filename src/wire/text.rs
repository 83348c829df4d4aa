//! Text data segments of Login and Text PDUs (RFC 7143 §6.1): `key=value` pairs, each ended by
//! a NUL byte.
//!
//! Parsing is lenient about what the values mean (negotiation decides) and strict about form:
//! every pair needs a `=`, keys are printable ASCII, and sizes are capped by named limits.

use super::WireError;
use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{take_till, take_until};

/// RFC 7143 §6.1: key names are at most 63 bytes.
pub const MAX_KEY_LEN: usize = 63;
/// Upper bound for any one value we accept (binary CHAP values may be long; §6.1 allows large
/// binary values, we stop at 8 KiB which covers a 1024-byte challenge in hex or base64).
pub const MAX_VALUE_LEN: usize = 8192;
/// Cap on one text exchange's accumulated data (several PDUs joined with the C bit).
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Cap on the number of pairs in one exchange.
pub const MAX_PAIRS: usize = 4096;

/// One `key=value` pair as received. `value` is kept as raw bytes; most keys need UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub key: String,
    pub value: String,
}

fn pair(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    let (rest, key) = take_until("=").parse(input)?;
    // `rest` starts with the '=' take_until stopped at.
    let rest = rest.get(1..).unwrap_or_default();
    let (rest, value) = take_till(|b| b == 0).parse(rest)?;
    Ok((rest, (key, value)))
}

/// Parse a complete text segment. A trailing pair without its NUL is accepted (some initiators
/// omit the last one); an empty segment gives no pairs.
pub fn parse(mut data: &[u8]) -> Result<Vec<Pair>, WireError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(WireError::Text("text data too long"));
    }
    let mut pairs = Vec::new();
    while !data.is_empty() {
        // Padding NULs between pairs are tolerated.
        if let Some((0, rest)) = data.split_first() {
            data = rest;
            continue;
        }
        let (rest, (k, v)) = match pair(data) {
            Ok(x) => x,
            Err(_) => return Err(WireError::Text("pair without '='")),
        };
        if k.is_empty() {
            return Err(WireError::Text("empty key"));
        }
        if k.len() > MAX_KEY_LEN {
            return Err(WireError::Text("key longer than 63 bytes"));
        }
        if !k.iter().all(|b| b.is_ascii_graphic()) {
            return Err(WireError::Text("key is not printable ASCII"));
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(WireError::Text("value too long"));
        }
        if pairs.len() >= MAX_PAIRS {
            return Err(WireError::Text("too many keys"));
        }
        let value = std::str::from_utf8(v).map_err(|_| WireError::Text("value is not UTF-8"))?;
        pairs.push(Pair {
            key: String::from_utf8_lossy(k).into_owned(),
            value: value.to_owned(),
        });
        data = rest;
    }
    Ok(pairs)
}

/// Append `key=value\0`.
pub fn push(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Encode a list of pairs.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        push(&mut out, k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_tolerates_missing_last_nul() {
        let p = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0AuthMethod=None").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].key, "InitiatorName");
        assert_eq!(p[0].value, "iqn.x");
        assert_eq!(p[2].value, "None");
        assert!(parse(b"").unwrap().is_empty());
        assert_eq!(parse(b"A=\0").unwrap()[0].value, "");
        assert_eq!(parse(b"A=b=c\0").unwrap()[0].value, "b=c");
    }

    #[test]
    fn rejects_bad_form() {
        assert!(parse(b"novalue\0").is_err());
        assert!(parse(b"=x\0").is_err());
        let long_key = format!("{}=1\0", "k".repeat(64));
        assert!(parse(long_key.as_bytes()).is_err());
        let ok_key = format!("{}=1\0", "k".repeat(63));
        assert!(parse(ok_key.as_bytes()).is_ok());
        let long_val = format!("K={}\0", "v".repeat(MAX_VALUE_LEN + 1));
        assert!(parse(long_val.as_bytes()).is_err());
        assert!(parse(b"K=\xff\0").is_err());
    }

    #[test]
    fn caps_pair_count() {
        let mut many = Vec::new();
        for _ in 0..MAX_PAIRS + 1 {
            many.extend_from_slice(b"a=b\0");
        }
        assert!(parse(&many).is_err());
        many.truncate(MAX_PAIRS * 4);
        assert_eq!(parse(&many).unwrap().len(), MAX_PAIRS);
    }

    #[test]
    fn round_trips() {
        let pairs = vec![
            ("A".to_string(), "1".to_string()),
            ("B".into(), "x,y".into()),
        ];
        let enc = encode(&pairs);
        assert_eq!(enc, b"A=1\0B=x,y\0");
        let back: Vec<(String, String)> = parse(&enc)
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        assert_eq!(back, pairs);
    }
}
