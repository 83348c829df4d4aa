//! Wake-on-LAN magic packet (AMD "Magic Packet" format): six 0xFF bytes, then the target MAC
//! sixteen times; 102 bytes, sent as a UDP datagram (port 9 by convention).

use crate::mac::MacAddr;

/// Length of a magic packet without a SecureOn password.
pub const MAGIC_LEN: usize = 6 + 16 * 6;

/// The conventional destination port (discard).
pub const WOL_PORT: u16 = 9;

/// Builds the magic packet that wakes `mac`.
pub fn magic_packet(mac: &MacAddr) -> [u8; MAGIC_LEN] {
    let mut p = [0xFFu8; MAGIC_LEN];
    for chunk in p.chunks_exact_mut(6).skip(1) {
        chunk.copy_from_slice(&mac.0);
    }
    p
}

/// Is `bytes` a magic packet for `mac`? (Used by the receiving side of tests and diagnostics.)
pub fn is_magic_for(bytes: &[u8], mac: &MacAddr) -> bool {
    bytes.len() >= MAGIC_LEN && bytes.get(..MAGIC_LEN) == Some(&magic_packet(mac)[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_layout() {
        let mac = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        let p = magic_packet(&mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &mac.0, "repetition {i}");
        }
        assert!(is_magic_for(&p, &mac));
        assert!(!is_magic_for(
            &p,
            &MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57])
        ));
        assert!(!is_magic_for(&p[..101], &mac));
    }
}
