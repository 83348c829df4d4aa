//! Cutting a byte stream into PDUs and putting PDUs on it (RFC 7143 §11.2).
//!
//! ```text
//!  BHS (48) | AHS (TotalAHSLength x 4) | HeaderDigest (4, if negotiated)
//!  | Data segment (DataSegmentLength) | pad to 4 | DataDigest (4, if negotiated and data)
//! ```
//! Every length comes from the peer, so each is checked against [`FrameLimits`] before any
//! buffer is sized by it.

use super::WireError;
use super::digest;
use super::pdu::{BHS_LEN, common};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest AHS accepted (an extended CDB of 244 bytes plus a bidi AHS fits easily).
pub const MAX_AHS_LEN: usize = 1024;
/// Hard cap on any data segment, whatever was negotiated (RFC 7143 allows up to 2^24 - 1).
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;

/// What the receiving side will accept, and which digests are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Our MaxRecvDataSegmentLength (or the login-phase limit).
    pub max_data: u32,
    pub header_digest: bool,
    pub data_digest: bool,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_data: 8192,
            header_digest: false,
            data_digest: false,
        }
    }
}

/// One PDU cut off the stream, digests checked and removed, padding removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

/// Padding after a data segment of `len` bytes.
#[inline]
pub fn pad_len(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

/// Cut one PDU off the front of `buf`. `Ok(None)` means more bytes are needed (nothing is
/// consumed); an error means the stream cannot be trusted any more (close the connection, or
/// Reject first where the header is intact, as the caller decides).
///
/// A data digest mismatch is reported as [`WireError::DataDigest`] *after* the PDU has been
/// consumed, so the caller can answer with a Reject and carry on (§7.8).
pub fn decode(buf: &mut BytesMut, lim: &FrameLimits) -> Result<Option<RawPdu>, WireError> {
    let Some(&bhs) = buf.first_chunk::<BHS_LEN>() else {
        return Ok(None);
    };
    let c = common(&bhs);
    let ahs_len = c.total_ahs_words as usize * 4;
    if ahs_len > MAX_AHS_LEN {
        return Err(WireError::AhsTooLong {
            len: ahs_len,
            max: MAX_AHS_LEN,
        });
    }
    if c.data_len > lim.max_data.min(MAX_DATA_SEGMENT) {
        return Err(WireError::DataSegmentTooLong {
            len: c.data_len,
            max: lim.max_data,
        });
    }
    let data_len = c.data_len as usize;
    let hd = if lim.header_digest { 4 } else { 0 };
    let dd = if lim.data_digest && data_len > 0 {
        4
    } else {
        0
    };
    let header_total = BHS_LEN + ahs_len + hd;
    let total = header_total + data_len + pad_len(data_len) + dd;
    if buf.len() < header_total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if lim.header_digest {
        // The whole header is in `buf` (checked above).
        let Some((header, rest)) = buf.split_at_checked(BHS_LEN + ahs_len) else {
            return Ok(None);
        };
        let want = digest::crc32c(header);
        let got = digest::from_wire(rest.first_chunk::<4>().copied().unwrap_or_default());
        if got != want {
            return Err(WireError::HeaderDigest { got, want });
        }
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut pdu = buf.split_to(total);
    pdu.advance(BHS_LEN);
    let ahs = pdu.split_to(ahs_len).freeze();
    pdu.advance(hd);
    let padded = pdu.split_to(data_len + pad_len(data_len));
    let mut data = padded.freeze();
    if dd == 4 {
        let want = digest::crc32c(&data);
        let got = digest::from_wire(pdu.first_chunk::<4>().copied().unwrap_or_default());
        if got != want {
            return Err(WireError::DataDigest { got, want });
        }
    }
    data.truncate(data_len);
    Ok(Some(RawPdu { bhs, ahs, data }))
}

/// `pad` (0..=3) zero bytes of padding.
fn padding(pad: usize) -> &'static [u8] {
    [0u8; 3].get(..pad).unwrap_or_default()
}

/// Append a whole PDU with a contiguous data segment to `out`.
pub fn encode(out: &mut BytesMut, bhs: &[u8; BHS_LEN], ahs: &[u8], data: &[u8], lim: &FrameLimits) {
    encode_header(out, bhs, ahs, lim.header_digest);
    out.put_slice(data);
    let pad = pad_len(data.len());
    out.put_bytes(0, pad);
    if lim.data_digest && !data.is_empty() {
        let crc = digest::crc32c_append(digest::crc32c(data), padding(pad));
        out.put_slice(&digest::to_wire(crc));
    }
}

/// Append the header part of a PDU (BHS, AHS, header digest).
pub fn encode_header(out: &mut BytesMut, bhs: &[u8; BHS_LEN], ahs: &[u8], header_digest: bool) {
    out.put_slice(bhs);
    out.put_slice(ahs);
    if header_digest {
        let crc = digest::crc32c_append(digest::crc32c(bhs), ahs);
        out.put_slice(&digest::to_wire(crc));
    }
}

/// The trailer (padding and data digest) for a data segment sent as separate `segments`
/// (zero-copy Data-In). Returns at most 7 bytes.
pub fn data_trailer<S: AsRef<[u8]>>(segments: &[S], data_digest: bool) -> ([u8; 8], usize) {
    let len: usize = segments.iter().map(|s| s.as_ref().len()).sum();
    let pad = pad_len(len);
    let mut t = [0u8; 8];
    let mut n = pad;
    if data_digest && len > 0 {
        let mut crc = digest::crc32c(&[]);
        for s in segments {
            crc = digest::crc32c_append(crc, s.as_ref());
        }
        crc = digest::crc32c_append(crc, padding(pad));
        if let Some(d) = t.get_mut(n..n + 4) {
            d.copy_from_slice(&digest::to_wire(crc));
            n += 4;
        }
    }
    (t, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pdu::{Bhs, NopOut, RESERVED_TAG};

    fn nop(data_len: u32) -> [u8; BHS_LEN] {
        Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 1,
        })
        .emit(data_len)
        .0
    }

    fn all_limits() -> Vec<FrameLimits> {
        let mut v = Vec::new();
        for hd in [false, true] {
            for dd in [false, true] {
                v.push(FrameLimits {
                    max_data: 8192,
                    header_digest: hd,
                    data_digest: dd,
                });
            }
        }
        v
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for lim in all_limits() {
            for len in [0usize, 1, 3, 4, 5, 8192] {
                let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut out = BytesMut::new();
                encode(&mut out, &nop(len as u32), &[], &data, &lim);
                out.extend_from_slice(b"next");
                let pdu = decode(&mut out, &lim).unwrap().unwrap();
                assert_eq!(pdu.data, data);
                assert_eq!(pdu.bhs, nop(len as u32));
                assert_eq!(
                    &out[..],
                    b"next",
                    "exactly one PDU consumed ({lim:?}, {len})"
                );
            }
        }
    }

    #[test]
    fn every_truncation_needs_more_and_consumes_nothing() {
        for lim in all_limits() {
            let mut whole = BytesMut::new();
            encode(&mut whole, &nop(13), &[], &[7u8; 13], &lim);
            for cut in 0..whole.len() {
                let mut part = BytesMut::from(&whole[..cut]);
                assert_eq!(decode(&mut part, &lim), Ok(None), "cut at {cut}");
                assert_eq!(part.len(), cut);
            }
        }
    }

    #[test]
    fn lengths_over_the_limits_are_refused_before_allocating() {
        let lim = FrameLimits::default();
        let mut b = BytesMut::from(&nop(8193)[..]);
        assert_eq!(
            decode(&mut b, &lim),
            Err(WireError::DataSegmentTooLong {
                len: 8193,
                max: 8192
            })
        );
        let mut h = nop(0);
        h[4] = 255; // TotalAHSLength 1020 bytes: within MAX_AHS_LEN, so "need more".
        assert_eq!(decode(&mut BytesMut::from(&h[..]), &lim), Ok(None));
        let mut h = nop(0);
        h[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let big = FrameLimits {
            max_data: 262144,
            ..lim
        };
        assert_eq!(
            decode(&mut BytesMut::from(&h[..]), &big),
            Err(WireError::DataSegmentTooLong {
                len: 0xff_ffff,
                max: 262144
            })
        );
    }

    #[test]
    fn digest_errors_are_detected() {
        let lim = FrameLimits {
            max_data: 8192,
            header_digest: true,
            data_digest: true,
        };
        let mut out = BytesMut::new();
        encode(&mut out, &nop(4), &[], b"ping", &lim);
        let mut bad_header = out.clone();
        bad_header[20] ^= 1;
        assert!(matches!(
            decode(&mut bad_header, &lim),
            Err(WireError::HeaderDigest { .. })
        ));
        let mut bad_data = out.clone();
        bad_data[52] ^= 1;
        assert!(matches!(
            decode(&mut bad_data, &lim),
            Err(WireError::DataDigest { .. })
        ));
        assert!(
            bad_data.is_empty(),
            "a PDU with a bad data digest is consumed"
        );
    }

    #[test]
    fn split_trailer_matches_contiguous_encoding() {
        let lim = FrameLimits {
            max_data: 8192,
            header_digest: false,
            data_digest: true,
        };
        let segs = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        let mut whole = BytesMut::new();
        encode(&mut whole, &nop(11), &[], b"hello world", &lim);
        let (t, n) = data_trailer(&segs, true);
        assert_eq!(&whole[BHS_LEN + 11..], &t[..n]);
    }
}
