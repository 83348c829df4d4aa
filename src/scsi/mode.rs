//! Mode parameters (SPC-4 §7.5, SBC-3 §6.5): MODE SENSE data and MODE SELECT parsing.
//!
//! Pages: Caching (08h, WCE changeable), Control (0Ah), Informational Exceptions Control
//! (1Ch). Saved values are not implemented.

use super::sense::{Sense, asc, key};
use crate::store::SECTOR;

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFO_EXCEPTIONS: u8 = 0x1C;
pub const PAGE_ALL: u8 = 0x3F;

/// Page control field of MODE SENSE.
pub const PC_CURRENT: u8 = 0;
pub const PC_CHANGEABLE: u8 = 1;
pub const PC_DEFAULT: u8 = 2;
pub const PC_SAVED: u8 = 3;

/// The changeable mode parameters of one logical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeParams {
    /// Write cache enable (caching page byte 2 bit 2).
    pub wce: bool,
}

impl Default for ModeParams {
    fn default() -> Self {
        ModeParams { wce: true }
    }
}

/// Pages in the order MODE SENSE(3Fh) returns them.
const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFO_EXCEPTIONS];

/// A page's bytes for page control `pc` (current, changeable mask, or default).
fn page(code: u8, pc: u8, params: &ModeParams) -> Vec<u8> {
    let cur = match pc {
        PC_DEFAULT => ModeParams::default(),
        _ => *params,
    };
    match code {
        PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = PAGE_CACHING;
            p[1] = 18;
            if pc == PC_CHANGEABLE {
                p[2] = 0x04; // only WCE may change
            } else if cur.wce {
                p[2] = 0x04;
            }
            p
        }
        PAGE_CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_CONTROL;
            p[1] = 10;
            if pc != PC_CHANGEABLE {
                p[2] = 0x00; // TST 000b, D_SENSE=0 (fixed format sense)
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                p[5] = 0x00;
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // BUSY TIMEOUT: unlimited
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_INFO_EXCEPTIONS;
            p[1] = 10;
            p
        }
    }
}

/// Mode parameter data for MODE SENSE(6)/(10): header, optional block descriptor, pages.
#[allow(clippy::too_many_arguments)]
pub fn sense(
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pc: u8,
    code: u8,
    subpage: u8,
    params: &ModeParams,
    capacity: u64,
    read_only: bool,
) -> Result<Vec<u8>, Sense> {
    if pc == PC_SAVED {
        return Err(
            Sense::new(key::ILLEGAL_REQUEST, asc::SAVING_PARAMETERS_NOT_SUPPORTED)
                .at_cdb(2, Some(6)),
        );
    }
    let mut pages = Vec::new();
    if code == PAGE_ALL {
        if subpage != 0 && subpage != 0xFF {
            return Err(Sense::invalid_cdb(3, None));
        }
        for c in PAGES {
            pages.extend_from_slice(&page(c, pc, params));
        }
    } else if PAGES.contains(&code) {
        if subpage != 0 {
            return Err(Sense::invalid_cdb(3, None));
        }
        pages = page(code, pc, params);
    } else {
        return Err(Sense::invalid_cdb(2, Some(5)));
    }

    let long = ten && llbaa;
    let desc: Vec<u8> = if dbd {
        Vec::new()
    } else if long {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&capacity.to_be_bytes());
        d[12..16].copy_from_slice(&(SECTOR as u32).to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let n = u32::try_from(capacity).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&n.to_be_bytes());
        d[5..8].copy_from_slice(&(SECTOR as u32).to_be_bytes()[1..4]);
        d
    };
    // DEVICE-SPECIFIC PARAMETER: WP (bit 7), DPOFUA (bit 4).
    let dsp = if read_only { 0x80 } else { 0 } | 0x10;
    let mut out = Vec::with_capacity(8 + desc.len() + pages.len());
    if ten {
        let len = (6 + desc.len() + pages.len()) as u16;
        out.extend_from_slice(&len.to_be_bytes());
        out.push(0); // medium type
        out.push(dsp);
        out.push(if long { 0x01 } else { 0 }); // LONGLBA
        out.push(0);
        out.extend_from_slice(&(desc.len() as u16).to_be_bytes());
    } else {
        out.push((3 + desc.len() + pages.len()) as u8);
        out.push(0);
        out.push(dsp);
        out.push(desc.len() as u8);
    }
    out.extend_from_slice(&desc);
    out.extend_from_slice(&pages);
    Ok(out)
}

/// Apply a MODE SELECT parameter list to `params`. Only WCE may change; every other byte must
/// equal the current value. Errors point into the parameter list.
pub fn select(ten: bool, data: &[u8], params: &ModeParams) -> Result<ModeParams, Sense> {
    let hdr = if ten { 8 } else { 4 };
    if data.is_empty() {
        return Ok(*params);
    }
    if data.len() < hdr {
        return Err(Sense::param_list_length());
    }
    let bdl = if ten {
        u16::from_be_bytes([data[6], data[7]]) as usize
    } else {
        data[3] as usize
    };
    let long = ten && data[4] & 0x01 != 0;
    let want_bdl = if long { 16 } else { 8 };
    if bdl != 0 && bdl != want_bdl {
        return Err(Sense::invalid_param(if ten { 6 } else { 3 }, None));
    }
    if data.len() < hdr + bdl {
        return Err(Sense::param_list_length());
    }
    if bdl != 0 {
        let d = &data[hdr..hdr + bdl];
        let blen = if long {
            u32::from_be_bytes([d[12], d[13], d[14], d[15]])
        } else {
            u32::from_be_bytes([0, d[5], d[6], d[7]])
        };
        // Only the current block length may be given (the block count is ignored).
        if blen != SECTOR as u32 {
            let at = hdr + if long { 12 } else { 5 };
            return Err(Sense::invalid_param(at as u16, None));
        }
    }
    let mut new = *params;
    let mut at = hdr + bdl;
    while at < data.len() {
        if data.len() < at + 2 {
            return Err(Sense::param_list_length());
        }
        let code = data[at] & 0x3F;
        if data[at] & 0x40 != 0 {
            // SPF: no subpages are supported.
            return Err(Sense::invalid_param(at as u16, Some(6)));
        }
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_param(at as u16, Some(5)));
        }
        let cur = page(code, PC_CURRENT, &new);
        let mask = page(code, PC_CHANGEABLE, &new);
        let len = data[at + 1] as usize + 2;
        if len != cur.len() {
            return Err(Sense::invalid_param((at + 1) as u16, None));
        }
        if data.len() < at + len {
            return Err(Sense::param_list_length());
        }
        let got = &data[at..at + len];
        // Byte 0 carries PS (reserved in MODE SELECT, ignored) and the page code.
        for i in 2..len {
            let diff = (got[i] ^ cur[i]) & !mask[i];
            if diff != 0 {
                let bit = 7 - diff.leading_zeros() as u8;
                return Err(Sense::invalid_param((at + i) as u16, Some(bit)));
            }
        }
        if code == PAGE_CACHING {
            new.wce = got[2] & 0x04 != 0;
        }
        at += len;
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 2048;

    #[test]
    fn golden_mode_sense6_caching_with_block_descriptor() {
        let d = sense(
            false,
            false,
            false,
            PC_CURRENT,
            PAGE_CACHING,
            0,
            &ModeParams::default(),
            CAP,
            false,
        )
        .unwrap();
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[3 + 8 + 20, 0x00, 0x10, 8][..],              // header: length, medium, DPOFUA, BDL
            &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00],          // 2048 blocks of 512 bytes
            &[0x08, 18, 0x04, 0, 0, 0, 0, 0, 0, 0],         // caching page: WCE
            &[0; 10],
        ].concat();
        assert_eq!(d, want);
    }

    #[test]
    fn golden_mode_sense10_all_pages_dbd_read_only() {
        let d = sense(
            true,
            true,
            false,
            PC_CURRENT,
            PAGE_ALL,
            0,
            &ModeParams { wce: false },
            CAP,
            true,
        )
        .unwrap();
        assert_eq!(&d[..8], &[0, 6 + 20 + 12 + 12, 0, 0x90, 0, 0, 0, 0]);
        assert_eq!(&d[8..11], &[0x08, 18, 0x00], "WCE clear");
        #[rustfmt::skip]
        assert_eq!(&d[28..40], &[0x0A, 10, 0x00, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0]);
        assert_eq!(&d[40..52], &[0x1C, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.len(), 52);
    }

    #[test]
    fn long_lba_block_descriptor() {
        let d = sense(
            true,
            false,
            true,
            PC_CURRENT,
            PAGE_CONTROL,
            0,
            &ModeParams::default(),
            CAP,
            false,
        )
        .unwrap();
        assert_eq!(d[4], 0x01, "LONGLBA");
        assert_eq!(&d[6..8], &[0, 16]);
        assert_eq!(&d[8..16], &CAP.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
    }

    #[test]
    fn changeable_and_default_and_saved() {
        let p = ModeParams { wce: false };
        let ch = sense(
            false,
            true,
            false,
            PC_CHANGEABLE,
            PAGE_ALL,
            0,
            &p,
            CAP,
            false,
        )
        .unwrap();
        assert_eq!(&ch[4..7], &[0x08, 18, 0x04]);
        assert!(ch[7..24].iter().all(|&b| b == 0));
        assert_eq!(&ch[24..26], &[0x0A, 10]);
        assert!(
            ch[26..36].iter().all(|&b| b == 0),
            "control page not changeable"
        );
        assert_eq!(&ch[36..38], &[0x1C, 10]);
        assert!(ch[38..48].iter().all(|&b| b == 0), "IE page not changeable");
        let def = sense(
            false,
            true,
            false,
            PC_DEFAULT,
            PAGE_CACHING,
            0,
            &p,
            CAP,
            false,
        )
        .unwrap();
        assert_eq!(def[6], 0x04, "default WCE=1");
        let e = sense(
            false,
            true,
            false,
            PC_SAVED,
            PAGE_CACHING,
            0,
            &p,
            CAP,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, asc::SAVING_PARAMETERS_NOT_SUPPORTED);
    }

    #[test]
    fn unsupported_page_and_subpage() {
        let p = ModeParams::default();
        let e = sense(false, true, false, PC_CURRENT, 0x01, 0, &p, CAP, false).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(2, Some(5)));
        let e = sense(
            false,
            true,
            false,
            PC_CURRENT,
            PAGE_CACHING,
            1,
            &p,
            CAP,
            false,
        )
        .unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(3, None));
        assert!(
            sense(
                false, true, false, PC_CURRENT, PAGE_ALL, 0xFF, &p, CAP, false
            )
            .is_ok()
        );
    }

    fn caching_select(b2: u8) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0];
        let mut pg = page(PAGE_CACHING, PC_CURRENT, &ModeParams::default());
        pg[2] = b2;
        v.extend_from_slice(&pg);
        v
    }

    #[test]
    fn select_changes_wce_only() {
        let p = ModeParams::default();
        assert_eq!(
            select(false, &caching_select(0x00), &p),
            Ok(ModeParams { wce: false })
        );
        assert_eq!(
            select(false, &caching_select(0x04), &p),
            Ok(ModeParams { wce: true })
        );
        // RCD (bit 0) is not changeable.
        assert_eq!(
            select(false, &caching_select(0x05), &p),
            Err(Sense::invalid_param(6, Some(0)))
        );
    }

    #[test]
    fn select_refuses_bad_lists() {
        let p = ModeParams::default();
        assert_eq!(select(false, &[], &p), Ok(p));
        assert_eq!(select(false, &[0, 0], &p), Err(Sense::param_list_length()));
        let mut v = caching_select(0);
        v.truncate(10);
        assert_eq!(select(false, &v, &p), Err(Sense::param_list_length()));
        let mut v = caching_select(0);
        v[4] = 0x01; // unsupported page
        assert_eq!(select(false, &v, &p), Err(Sense::invalid_param(4, Some(5))));
        let mut v = caching_select(0);
        v[5] = 10; // wrong page length
        assert_eq!(select(false, &v, &p), Err(Sense::invalid_param(5, None)));
        // Block descriptor with a different block length.
        let mut v = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        v.extend_from_slice(&page(PAGE_CACHING, PC_CURRENT, &p));
        assert_eq!(select(false, &v, &p), Err(Sense::invalid_param(9, None)));
        // Control page: any change refused.
        let mut v = vec![0, 0, 0, 0];
        let mut c = page(PAGE_CONTROL, PC_CURRENT, &p);
        c[2] |= 0x04; // D_SENSE
        v.extend_from_slice(&c);
        assert_eq!(select(false, &v, &p), Err(Sense::invalid_param(6, Some(2))));
    }

    #[test]
    fn select10_with_block_descriptor() {
        let p = ModeParams::default();
        let mut v = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0];
        let mut pg = page(PAGE_CACHING, PC_CURRENT, &p);
        pg[2] = 0;
        v.extend_from_slice(&pg);
        assert_eq!(select(true, &v, &p), Ok(ModeParams { wce: false }));
    }
}
