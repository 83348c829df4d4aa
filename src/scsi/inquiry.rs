//! INQUIRY data: the standard page (SPC-4 §6.6.2) and the vital product data pages
//! (SPC-4 §7.8, SBC-3 §6.6).

use super::LuIdentity;
use super::cdb::{
    MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
    MAX_WRITE_SAME_BLOCKS,
};
use super::sense::Sense;

/// Peripheral device type: direct access block device.
const TYPE_DISK: u8 = 0x00;
/// Peripheral qualifier 011b + device type 1Fh: no logical unit at this LUN.
pub const NO_LUN: u8 = 0x7F;

/// Length of the standard INQUIRY data isboot returns (through the version descriptors).
pub const STANDARD_LEN: usize = 96;

/// Version descriptors (SPC-4 table 142): SAM-5, iSCSI (no version), SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// VPD pages supported, in ascending order (page 00h lists them).
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Copy `s` into `dst` as printable ASCII, space padded; other characters become '_'.
fn ascii_field(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = if (0x20..0x7F).contains(&c) { c } else { b'_' };
    }
}

/// Standard INQUIRY data (96 bytes).
pub fn standard(ident: &LuIdentity, removable: bool, qualifier_type: u8) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_LEN];
    d[0] = qualifier_type;
    d[1] = if removable { 0x80 } else { 0 }; // RMB
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (STANDARD_LEN - 5) as u8; // ADDITIONAL LENGTH
    d[5] = 0; // SCCS, ACC, TPGS, 3PC, PROTECT: none
    d[6] = 0; // ENCSERV, MULTIP
    d[7] = 0x02; // CMDQUE
    ascii_field(&mut d[8..16], &ident.vendor);
    ascii_field(&mut d[16..32], &ident.product);
    ascii_field(&mut d[32..36], &ident.revision);
    // 36..56 vendor specific, 56..58 reserved: zero.
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Everything the VPD pages describe.
pub struct VpdContext<'a> {
    pub ident: &'a LuIdentity,
    /// iSCSI target port name of the nexus asking (`<target name>,t,0x<TPGT>`).
    pub target_port: &'a str,
    pub read_only: bool,
}

fn vpd_header(page: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + body.len());
    d.push(TYPE_DISK);
    d.push(page);
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

/// A SCSI name string designator body: UTF-8, NUL terminated, padded to a multiple of 4.
fn name_string(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().filter(|&c| c != 0).collect();
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn designator(out: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, id: &[u8]) {
    out.push(proto_codeset);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

/// NAA 3h (locally assigned) designator value: 4 bits of NAA, 60 bits from `naa_id`.
pub fn naa_locally_assigned(naa_id: u64) -> [u8; 8] {
    ((3u64 << 60) | (naa_id & ((1 << 60) - 1))).to_be_bytes()
}

/// A VPD page, or INVALID FIELD IN CDB for an unsupported page code.
pub fn vpd(page: u8, ctx: &VpdContext<'_>) -> Result<Vec<u8>, Sense> {
    Ok(match page {
        0x00 => vpd_header(0x00, VPD_PAGES.to_vec()),
        0x80 => {
            let mut s = vec![0u8; ctx.ident.serial.len().clamp(1, 252)];
            ascii_field(&mut s, &ctx.ident.serial);
            vpd_header(0x80, s)
        }
        0x83 => {
            let mut b = Vec::new();
            // NAA (binary, LU association, type 3).
            designator(&mut b, 0x01, 0x03, &naa_locally_assigned(ctx.ident.naa_id));
            // T10 vendor ID (ASCII, LU association, type 1): vendor (8) + serial.
            let mut t10 = vec![0u8; 8];
            ascii_field(&mut t10, &ctx.ident.vendor);
            let mut serial = vec![0u8; ctx.ident.serial.len().min(200)];
            ascii_field(&mut serial, &ctx.ident.serial);
            t10.extend_from_slice(&serial);
            designator(&mut b, 0x02, 0x01, &t10);
            // Relative target port (binary, PIV, target port association, type 4): port 1.
            designator(&mut b, 0x51, 0x80 | 0x10 | 0x04, &[0, 0, 0, 1]);
            if !ctx.target_port.is_empty() {
                // Target port name (iSCSI, UTF-8, PIV, target port association, SCSI name
                // string).
                let port = name_string(ctx.target_port);
                if port.len() <= 252 {
                    designator(&mut b, 0x53, 0x80 | 0x10 | 0x08, &port);
                }
                // Target device name: the port name without ",t,0x....".
                let device = ctx
                    .target_port
                    .split(",t,")
                    .next()
                    .unwrap_or(ctx.target_port);
                let device = name_string(device);
                if device.len() <= 252 {
                    designator(&mut b, 0x53, 0x80 | 0x20 | 0x08, &device);
                }
            }
            vpd_header(0x83, b)
        }
        0xB0 => {
            // Block Limits (SBC-3 §6.6.3), page length 3Ch.
            let mut b = vec![0u8; 0x3C];
            b[0] = 0x00; // WSNZ=0: WRITE SAME with zero blocks runs to the last block
            b[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
            b[2..4].copy_from_slice(&8u16.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
            b[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
            // OPTIMAL TRANSFER LENGTH stays 0 (none): the base is served from page cache, and
            // Linux turns a reported optimum into read-ahead (2x it): 1 MiB made a diskless
            // boot read ~10% more than it needed and boot slower under load.
            if !ctx.read_only {
                b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                // OPTIMAL UNMAP GRANULARITY: 4 KiB, the overlay allocation unit (a hint;
                // smaller discards work too and read back as zeros).
                b[24..28].copy_from_slice(&8u32.to_be_bytes());
            }
            b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            vpd_header(0xB0, b)
        }
        0xB1 => {
            // Block Device Characteristics: non-rotating medium.
            let mut b = vec![0u8; 0x3C];
            b[0..2].copy_from_slice(&1u16.to_be_bytes());
            vpd_header(0xB1, b)
        }
        0xB2 => {
            // Logical Block Provisioning: thin provisioned; UNMAP, WRITE SAME(16) and
            // WRITE SAME(10) with UNMAP; unmapped blocks read as zeros.
            let lbp = if ctx.read_only {
                0
            } else {
                0x80 | 0x40 | 0x20 | 0x04
            };
            vpd_header(0xB2, vec![0, lbp, 0x02, 0])
        }
        _ => return Err(Sense::invalid_cdb(2, None)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> LuIdentity {
        LuIdentity {
            vendor: "ISBOOT".into(),
            product: "overlay disk".into(),
            revision: "0.1".into(),
            serial: "c0ffee01".into(),
            naa_id: 0x0123_4567_89AB_CDEF,
        }
    }

    #[test]
    fn golden_standard_inquiry() {
        let d = standard(&ident(), false, 0);
        #[rustfmt::skip]
        let head = [
            0x00,       // PQ 0, direct access block device
            0x00,       // RMB=0
            0x06,       // SPC-4
            0x12,       // HISUP, response data format 2
            91,         // additional length (96 - 5)
            0x00, 0x00,
            0x02,       // CMDQUE
        ];
        assert_eq!(&d[..8], &head);
        assert_eq!(&d[8..16], b"ISBOOT  ");
        assert_eq!(&d[16..32], b"overlay disk    ");
        assert_eq!(&d[32..36], b"0.1 ");
        assert_eq!(
            &d[58..66],
            &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
        );
        assert!(d[66..].iter().all(|&b| b == 0));
        assert_eq!(d.len(), 96);
    }

    #[test]
    fn non_ascii_identity_is_sanitised() {
        let mut id = ident();
        id.vendor = "é\u{1}VERYLONGVENDOR".into();
        let d = standard(&id, true, 0);
        assert_eq!(d[1], 0x80);
        assert!(d[8..16].iter().all(|&b| (0x20..0x7F).contains(&b)));
    }

    fn ctx<'a>(id: &'a LuIdentity, ro: bool) -> VpdContext<'a> {
        VpdContext {
            ident: id,
            target_port: "iqn.2026-11.test:disk,t,0x0001",
            read_only: ro,
        }
    }

    #[test]
    fn golden_supported_pages_and_serial() {
        let id = ident();
        assert_eq!(
            vpd(0, &ctx(&id, false)).unwrap(),
            [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
        );
        assert_eq!(
            vpd(0x80, &ctx(&id, false)).unwrap(),
            b"\x00\x80\x00\x08c0ffee01"
        );
    }

    #[test]
    fn device_identification_designators() {
        let id = ident();
        let d = vpd(0x83, &ctx(&id, false)).unwrap();
        assert_eq!(&d[..2], &[0, 0x83]);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 4);
        // First designator: NAA 3h, binary, LU association.
        assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 0x08]);
        assert_eq!(&d[8..16], &[0x31, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
        // Second: T10 vendor id "ISBOOT  c0ffee01".
        assert_eq!(&d[16..20], &[0x02, 0x01, 0x00, 16]);
        assert_eq!(&d[20..36], b"ISBOOT  c0ffee01");
        // Third: relative target port 1.
        assert_eq!(&d[36..44], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
        // Fourth: target port name, NUL terminated, multiple of 4.
        assert_eq!(&d[44..46], &[0x53, 0x98]);
        let n = d[47] as usize;
        assert_eq!(n % 4, 0);
        assert_eq!(&d[48..48 + 30], b"iqn.2026-11.test:disk,t,0x0001");
        assert_eq!(d[48 + 30], 0);
        // Fifth: target device name.
        let at = 48 + n;
        assert_eq!(&d[at..at + 2], &[0x53, 0xA8]);
        assert_eq!(&d[at + 4..at + 4 + 21], b"iqn.2026-11.test:disk");
    }

    #[test]
    fn golden_block_limits() {
        let id = ident();
        let d = vpd(0xB0, &ctx(&id, false)).unwrap();
        assert_eq!(d.len(), 64);
        assert_eq!(&d[..4], &[0, 0xB0, 0, 0x3C]);
        assert_eq!(d[4], 0x00, "WSNZ");
        assert_eq!(d[5], 128, "max compare and write");
        assert_eq!(&d[8..12], &32768u32.to_be_bytes());
        assert_eq!(
            &d[12..16],
            &[0; 4],
            "no optimal transfer length (no read-ahead hint)"
        );
        assert_eq!(
            &d[20..24],
            &(1u32 << 20).to_be_bytes(),
            "max unmap LBA count"
        );
        assert_eq!(&d[24..28], &1024u32.to_be_bytes(), "max unmap descriptors");
        assert_eq!(&d[28..32], &8u32.to_be_bytes(), "optimal unmap granularity");
        assert_eq!(&d[36..44], &32768u64.to_be_bytes(), "max write same length");
        let ro = vpd(0xB0, &ctx(&id, true)).unwrap();
        assert_eq!(&ro[20..28], &[0; 8], "no unmap on a read-only unit");
    }

    #[test]
    fn golden_characteristics_and_provisioning() {
        let id = ident();
        let d = vpd(0xB1, &ctx(&id, false)).unwrap();
        assert_eq!(&d[..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
        assert_eq!(
            vpd(0xB2, &ctx(&id, false)).unwrap(),
            [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]
        );
        assert_eq!(
            vpd(0xB2, &ctx(&id, true)).unwrap(),
            [0, 0xB2, 0, 4, 0, 0, 0x02, 0]
        );
    }

    #[test]
    fn unknown_page_is_invalid_field() {
        let id = ident();
        assert_eq!(
            vpd(0x86, &ctx(&id, false)).unwrap_err(),
            Sense::invalid_cdb(2, None)
        );
    }
}
