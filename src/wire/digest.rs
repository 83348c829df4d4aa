//! CRC32C (Castagnoli) digests as RFC 7143 §13.1 uses them: computed over the bytes as sent
//! (data digests include the padding). The CRC register goes on the wire least significant byte
//! first, which is what RFC 3720 Appendix B.4's vectors show; keep every use behind
//! [`to_wire`]/[`from_wire`] so that convention lives in one place.

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continue a CRC32C over more bytes.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The 4 bytes that go on the wire for a digest value.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// A digest value read off the wire.
pub fn from_wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_b4_test_vectors() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros -> aa 36 91 8a (as sent, i.e. LE of 0x8a9136aa).
        assert_eq!(to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        // 32 bytes of 0xff -> 43 ab a8 62.
        assert_eq!(to_wire(crc32c(&[0xffu8; 32])), [0x43, 0xab, 0xa8, 0x62]);
        // Incrementing 0..31 -> 4e 79 dd 46.
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(to_wire(crc32c(&inc)), [0x4e, 0x79, 0xdd, 0x46]);
        let (a, b) = inc.split_at(7);
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(&inc));
    }
}
