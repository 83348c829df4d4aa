//! CHAP for iSCSI (RFC 7143 §12.1.3, RFC 1994), target side, MD5 only.
//!
//! ```text
//!  I -> T  CHAP_A=<A1,A2,...>
//!  T -> I  CHAP_A=5  CHAP_I=<id>  CHAP_C=<challenge>
//!  I -> T  CHAP_N=<user>  CHAP_R=<MD5(id | secret | challenge)>
//!          [CHAP_I=<id2>  CHAP_C=<challenge2>]             (mutual)
//!  T -> I  [CHAP_N=<mutual user>  CHAP_R=<MD5(id2 | mutual secret | challenge2)>]
//! ```
//! Binary values are `0x` hex or `0b` base64 (§6.1). Every decoded length is checked against a
//! named limit before decoding. Secrets never reach `Debug` output or logs.

use super::negotiate::parse_number;
use super::target::ChapConfig;
use base64::Engine;
use md5::{Digest, Md5};
use std::fmt;

/// CHAP algorithm number for MD5 (RFC 1994, IANA PPP authentication algorithms).
pub const CHAP_MD5: u64 = 5;
/// Length of the challenges we send.
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge we accept from an initiator (RFC 7143 §12.1.3: 1024 bytes).
pub const MAX_CHALLENGE_LEN: usize = 1024;
/// An MD5 response is exactly this long.
pub const MD5_LEN: usize = 16;
/// Longest CHAP_A list / CHAP_N we accept.
pub const MAX_CHAP_TEXT: usize = 255;

/// Why a CHAP exchange failed. Every variant becomes login status 0201 (authentication
/// failure).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("no acceptable CHAP algorithm in CHAP_A (only MD5 = 5 is supported)")]
    NoAcceptableAlgorithm,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0} longer than allowed")]
    TooLong(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} out of sequence")]
    OutOfSequence(&'static str),
    #[error("CHAP_R has {0} bytes, MD5 needs 16")]
    ResponseLength(usize),
    #[error("unknown CHAP user")]
    WrongUser,
    #[error("wrong CHAP response")]
    WrongResponse,
    #[error("initiator challenge equals ours (reflection)")]
    Reflection,
    #[error("mutual CHAP requested but no mutual secret is configured")]
    NoMutualSecret,
    #[error("mutual CHAP secret equals the initiator's secret")]
    SameSecretBothWays,
}

/// Decode a binary value (`0x`/`0X` hex, `0b`/`0B` base64) of at most `max` bytes. The encoded
/// length is checked before anything is decoded.
pub fn decode_binary(v: &str, max: usize, what: &'static str) -> Result<Vec<u8>, ChapError> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.len().div_ceil(2) > max {
            return Err(ChapError::TooLong(what));
        }
        if h.is_empty() {
            return Err(ChapError::Malformed(what));
        }
        // An odd number of digits has an implied leading zero.
        let padded;
        let h = if h.len() % 2 == 1 {
            padded = format!("0{h}");
            padded.as_str()
        } else {
            h
        };
        hex::decode(h).map_err(|_| ChapError::Malformed(what))
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        // 4 characters carry 3 bytes.
        if b.len() / 4 * 3 > max + 2 {
            return Err(ChapError::TooLong(what));
        }
        // Padding is optional on input (some initiators leave it out).
        let out = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(b)
            .map_err(|_| ChapError::Malformed(what))?;
        if out.is_empty() {
            return Err(ChapError::Malformed(what));
        }
        if out.len() > max {
            return Err(ChapError::TooLong(what));
        }
        Ok(out)
    } else {
        Err(ChapError::Malformed(what))
    }
}

/// `0x`-prefixed lower-case hex.
pub fn encode_hex(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// RFC 1994: MD5(identifier | secret | challenge).
pub fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; MD5_LEN] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum State {
    /// Waiting for CHAP_A.
    Start,
    /// Challenge sent; waiting for CHAP_N / CHAP_R.
    Challenged { id: u8, challenge: Vec<u8> },
    /// Initiator authenticated (and target too, if asked).
    Done,
}

/// The target side of one CHAP exchange.
pub struct ChapServer {
    state: State,
}

impl fmt::Debug for ChapServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.state {
            State::Start => "Start",
            State::Challenged { .. } => "Challenged",
            State::Done => "Done",
        };
        f.debug_struct("ChapServer").field("state", &s).finish()
    }
}

/// The initiator's answer to our challenge (values as received).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChapAnswer<'a> {
    pub n: Option<&'a str>,
    pub r: Option<&'a str>,
    pub i: Option<&'a str>,
    pub c: Option<&'a str>,
}

impl Default for ChapServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ChapServer {
    pub fn new() -> ChapServer {
        ChapServer {
            state: State::Start,
        }
    }

    /// Has the initiator authenticated?
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Is a challenge outstanding?
    pub fn challenged(&self) -> bool {
        matches!(self.state, State::Challenged { .. })
    }

    /// Answer CHAP_A with a fresh random identifier and challenge.
    pub fn offer(&mut self, algorithms: &str) -> Result<Vec<(String, String)>, ChapError> {
        self.offer_with(
            algorithms,
            rand::random(),
            rand::random::<[u8; CHALLENGE_LEN]>(),
        )
    }

    fn offer_with(
        &mut self,
        algorithms: &str,
        id: u8,
        challenge: [u8; CHALLENGE_LEN],
    ) -> Result<Vec<(String, String)>, ChapError> {
        if !matches!(self.state, State::Start) {
            return Err(ChapError::OutOfSequence("CHAP_A"));
        }
        if algorithms.len() > MAX_CHAP_TEXT {
            return Err(ChapError::TooLong("CHAP_A"));
        }
        if !algorithms
            .split(',')
            .any(|a| parse_number(a) == Some(CHAP_MD5))
        {
            return Err(ChapError::NoAcceptableAlgorithm);
        }
        let keys = vec![
            ("CHAP_A".to_string(), CHAP_MD5.to_string()),
            ("CHAP_I".to_string(), id.to_string()),
            ("CHAP_C".to_string(), encode_hex(&challenge)),
        ];
        self.state = State::Challenged {
            id,
            challenge: challenge.to_vec(),
        };
        Ok(keys)
    }

    /// Check the initiator's CHAP_N / CHAP_R against `cfg`; when it also sent CHAP_I / CHAP_C
    /// (mutual CHAP), return our CHAP_N / CHAP_R.
    pub fn verify(
        &mut self,
        cfg: &ChapConfig,
        ans: ChapAnswer<'_>,
    ) -> Result<Vec<(String, String)>, ChapError> {
        let State::Challenged { id, challenge } = &self.state else {
            return Err(ChapError::OutOfSequence("CHAP_R"));
        };
        let n = ans.n.ok_or(ChapError::Missing("CHAP_N"))?;
        let r = ans.r.ok_or(ChapError::Missing("CHAP_R"))?;
        if n.len() > MAX_CHAP_TEXT {
            return Err(ChapError::TooLong("CHAP_N"));
        }
        let r = decode_binary(r, MD5_LEN, "CHAP_R")?;
        if r.len() != MD5_LEN {
            return Err(ChapError::ResponseLength(r.len()));
        }
        // Check the mutual request before revealing anything about the one-way result.
        let mutual = match (ans.i, ans.c) {
            (None, None) => None,
            (Some(_), None) => return Err(ChapError::Missing("CHAP_C")),
            (None, Some(_)) => return Err(ChapError::Missing("CHAP_I")),
            (Some(i), Some(c)) => {
                let i = parse_number(i)
                    .filter(|i| *i <= 255)
                    .ok_or(ChapError::Malformed("CHAP_I"))? as u8;
                let c = decode_binary(c, MAX_CHALLENGE_LEN, "CHAP_C")?;
                if constant_time_eq(&c, challenge) {
                    return Err(ChapError::Reflection);
                }
                Some((i, c))
            }
        };
        let want = md5_response(*id, &cfg.secret, challenge);
        let user_ok = constant_time_eq(n.as_bytes(), cfg.user.as_bytes());
        let resp_ok = constant_time_eq(&r, &want);
        if !user_ok {
            return Err(ChapError::WrongUser);
        }
        if !resp_ok {
            return Err(ChapError::WrongResponse);
        }
        let mut out = Vec::new();
        if let Some((i, c)) = mutual {
            let Some((muser, msecret)) = &cfg.mutual else {
                return Err(ChapError::NoMutualSecret);
            };
            if constant_time_eq(msecret, &cfg.secret) {
                return Err(ChapError::SameSecretBothWays);
            }
            out.push(("CHAP_N".to_string(), muser.clone()));
            out.push((
                "CHAP_R".to_string(),
                encode_hex(&md5_response(i, msecret, &c)),
            ));
        }
        self.state = State::Done;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mutual: bool) -> ChapConfig {
        ChapConfig {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
            mutual: mutual.then(|| ("target".to_string(), b"target-secret!".to_vec())),
        }
    }

    fn challenge(keys: &[(String, String)]) -> (u8, Vec<u8>) {
        let i = keys.iter().find(|k| k.0 == "CHAP_I").unwrap();
        let c = keys.iter().find(|k| k.0 == "CHAP_C").unwrap();
        (
            i.1.parse().unwrap(),
            decode_binary(&c.1, MAX_CHALLENGE_LEN, "c").unwrap(),
        )
    }

    #[test]
    fn rfc1994_md5_vector() {
        // MD5 of 0x01 | "secret" | 16 zero bytes, computed independently.
        let mut h = Md5::new();
        h.update([1u8]);
        h.update(b"secret");
        h.update([0u8; 16]);
        let want: [u8; 16] = h.finalize().into();
        assert_eq!(md5_response(1, b"secret", &[0; 16]), want);
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0102", 16, "x").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("0X102", 16, "x").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("0bAQI=", 16, "x").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("0BAQI=", 16, "x").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("0bAQI", 16, "x").unwrap(), vec![1, 2]);
        assert!(decode_binary("0x", 16, "x").is_err());
        assert!(decode_binary("0xzz", 16, "x").is_err());
        assert!(decode_binary("0b!!", 16, "x").is_err());
        assert!(decode_binary("1234", 16, "x").is_err());
        assert_eq!(
            decode_binary(&format!("0x{}", "00".repeat(17)), 16, "x"),
            Err(ChapError::TooLong("x"))
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode([0u8; 17]);
        assert_eq!(
            decode_binary(&format!("0b{b64}"), 16, "x"),
            Err(ChapError::TooLong("x"))
        );
    }

    #[test]
    fn one_way_and_mutual() {
        let c = cfg(true);
        let mut s = ChapServer::new();
        let keys = s.offer("7,5").unwrap();
        assert_eq!(keys[0], ("CHAP_A".into(), "5".into()));
        let (id, ch) = challenge(&keys);
        assert_eq!(ch.len(), CHALLENGE_LEN);
        let r = encode_hex(&md5_response(id, b"initiator-secret", &ch));
        let my_c = [9u8; 20];
        let out = s
            .verify(
                &c,
                ChapAnswer {
                    n: Some("alice"),
                    r: Some(&r),
                    i: Some("77"),
                    c: Some(&encode_hex(&my_c)),
                },
            )
            .unwrap();
        assert!(s.done());
        assert_eq!(out[0], ("CHAP_N".into(), "target".into()));
        assert_eq!(
            out[1].1,
            encode_hex(&md5_response(77, b"target-secret!", &my_c))
        );
    }

    #[test]
    fn refusals() {
        let mut s = ChapServer::new();
        assert_eq!(s.offer("6,7"), Err(ChapError::NoAcceptableAlgorithm));
        let mut s = ChapServer::new();
        let keys = s.offer("5").unwrap();
        let (id, ch) = challenge(&keys);
        let good = encode_hex(&md5_response(id, b"initiator-secret", &ch));
        let ans = |n, r| ChapAnswer {
            n: Some(n),
            r: Some(r),
            ..Default::default()
        };
        let c = cfg(false);
        assert_eq!(s.verify(&c, ans("bob", &good)), Err(ChapError::WrongUser));
        let bad = encode_hex(&md5_response(id, b"wrong", &ch));
        assert_eq!(
            s.verify(&c, ans("alice", &bad)),
            Err(ChapError::WrongResponse)
        );
        assert_eq!(
            s.verify(&c, ans("alice", "0x0102")),
            Err(ChapError::ResponseLength(2))
        );
        // Reflection: the initiator sends our own challenge back.
        let refl = ChapAnswer {
            n: Some("alice"),
            r: Some(&good),
            i: Some("1"),
            c: Some(&keys[2].1),
        };
        assert_eq!(s.verify(&cfg(true), refl), Err(ChapError::Reflection));
        // Mutual without a configured mutual secret.
        let m = ChapAnswer {
            n: Some("alice"),
            r: Some(&good),
            i: Some("1"),
            c: Some("0x0102030405"),
        };
        assert_eq!(s.verify(&c, m), Err(ChapError::NoMutualSecret));
        let long_c = format!("0x{}", "ab".repeat(MAX_CHALLENGE_LEN + 1));
        let m = ChapAnswer {
            c: Some(&long_c),
            ..m
        };
        assert_eq!(s.verify(&cfg(true), m), Err(ChapError::TooLong("CHAP_C")));
        // Still challenged, so a correct answer works after all these failures.
        assert!(s.verify(&c, ans("alice", &good)).unwrap().is_empty());
    }

    #[test]
    fn debug_hides_everything_secret() {
        let mut s = ChapServer::new();
        s.offer("5").unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("Challenged") && !d.contains("0x"));
    }
}
