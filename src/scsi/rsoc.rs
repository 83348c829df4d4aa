//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): the command table with CDB usage data.

use super::cdb::op;
use super::sense::Sense;

/// One supported command: opcode, service action (if the opcode has service actions) and
/// the CDB usage data bitmap (byte 0 = opcode; a 1 bit = the device looks at that bit).
pub struct Supported {
    pub opcode: u8,
    pub sa: Option<u16>,
    pub usage: &'static [u8],
}

const fn s(opcode: u8, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        sa: None,
        usage,
    }
}
const fn sa(opcode: u8, sa: u16, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        sa: Some(sa),
        usage,
    }
}

const RW10: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00];
const RW12: [u8; 10] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00];
const RW16: [u8; 14] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00,
];

macro_rules! cdb {
    ($op:expr, $b1:expr, $rest:expr) => {{
        const R: [u8; 2 + $rest.len()] = {
            let mut r = [0u8; 2 + $rest.len()];
            r[0] = $op;
            r[1] = $b1;
            let mut i = 0;
            while i < $rest.len() {
                r[2 + i] = $rest[i];
                i += 1;
            }
            r
        };
        &R
    }};
}

/// Every command isboot implements.
pub static TABLE: &[Supported] = &[
    s(op::TEST_UNIT_READY, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0]),
    s(op::REQUEST_SENSE, &[op::REQUEST_SENSE, 0, 0, 0, 0xFF, 0]),
    s(op::READ6, &[op::READ6, 0x1F, 0xFF, 0xFF, 0xFF, 0]),
    s(op::WRITE6, &[op::WRITE6, 0x1F, 0xFF, 0xFF, 0xFF, 0]),
    s(op::INQUIRY, &[op::INQUIRY, 0x01, 0xFF, 0xFF, 0xFF, 0]),
    s(op::MODE_SELECT6, &[op::MODE_SELECT6, 0x11, 0, 0, 0xFF, 0]),
    s(op::RESERVE6, &[op::RESERVE6, 0, 0, 0, 0, 0]),
    s(op::RELEASE6, &[op::RELEASE6, 0, 0, 0, 0, 0]),
    s(
        op::MODE_SENSE6,
        &[op::MODE_SENSE6, 0x08, 0xFF, 0xFF, 0xFF, 0],
    ),
    s(
        op::START_STOP_UNIT,
        &[op::START_STOP_UNIT, 0x01, 0, 0x0F, 0xF7, 0],
    ),
    s(op::PREVENT_ALLOW, &[op::PREVENT_ALLOW, 0, 0, 0, 0x03, 0]),
    s(
        op::READ_DEFECT_DATA10,
        &[op::READ_DEFECT_DATA10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    s(
        op::READ_CAPACITY10,
        &[
            op::READ_CAPACITY10,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
            0x01,
            0,
        ],
    ),
    s(op::READ10, cdb!(op::READ10, 0x18, RW10)),
    s(op::WRITE10, cdb!(op::WRITE10, 0x18, RW10)),
    s(op::WRITE_VERIFY10, cdb!(op::WRITE_VERIFY10, 0x12, RW10)),
    s(op::VERIFY10, cdb!(op::VERIFY10, 0x16, RW10)),
    s(op::PRE_FETCH10, cdb!(op::PRE_FETCH10, 0x02, RW10)),
    s(op::SYNC_CACHE10, cdb!(op::SYNC_CACHE10, 0x06, RW10)),
    s(op::WRITE_SAME10, cdb!(op::WRITE_SAME10, 0x08, RW10)),
    s(op::UNMAP, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]),
    s(
        op::MODE_SELECT10,
        &[op::MODE_SELECT10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    s(
        op::MODE_SENSE10,
        &[op::MODE_SENSE10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_IN,
        0,
        &[op::PR_IN, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_IN,
        1,
        &[op::PR_IN, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_IN,
        2,
        &[op::PR_IN, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_IN,
        3,
        &[op::PR_IN, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        0,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        1,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        2,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        3,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        4,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        5,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    sa(
        op::PR_OUT,
        6,
        &[op::PR_OUT, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0],
    ),
    s(op::READ16, cdb!(op::READ16, 0x18, RW16)),
    s(
        op::COMPARE_AND_WRITE,
        &[
            op::COMPARE_AND_WRITE,
            0x18,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0,
            0,
        ],
    ),
    s(op::WRITE16, cdb!(op::WRITE16, 0x18, RW16)),
    s(op::ORWRITE16, cdb!(op::ORWRITE16, 0x18, RW16)),
    s(op::WRITE_VERIFY16, cdb!(op::WRITE_VERIFY16, 0x12, RW16)),
    s(op::VERIFY16, cdb!(op::VERIFY16, 0x16, RW16)),
    s(op::PRE_FETCH16, cdb!(op::PRE_FETCH16, 0x02, RW16)),
    s(op::SYNC_CACHE16, cdb!(op::SYNC_CACHE16, 0x06, RW16)),
    s(op::WRITE_SAME16, cdb!(op::WRITE_SAME16, 0x09, RW16)),
    sa(
        op::SERVICE_ACTION_IN16,
        op::SA_READ_CAPACITY16 as u16,
        cdb!(op::SERVICE_ACTION_IN16, 0x1F, RW16),
    ),
    sa(
        op::SERVICE_ACTION_IN16,
        op::SA_GET_LBA_STATUS as u16,
        cdb!(op::SERVICE_ACTION_IN16, 0x1F, RW16),
    ),
    s(
        op::REPORT_LUNS,
        &[
            op::REPORT_LUNS,
            0,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
        ],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPCODES as u16,
        &[
            op::MAINTENANCE_IN,
            0x1F,
            0x87,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
        ],
    ),
    s(op::READ12, cdb!(op::READ12, 0x18, RW12)),
    s(op::WRITE12, cdb!(op::WRITE12, 0x18, RW12)),
    s(op::WRITE_VERIFY12, cdb!(op::WRITE_VERIFY12, 0x12, RW12)),
    s(op::VERIFY12, cdb!(op::VERIFY12, 0x16, RW12)),
    s(
        op::READ_DEFECT_DATA12,
        &[
            op::READ_DEFECT_DATA12,
            0x1F,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
        ],
    ),
];

/// Opcodes whose commands are distinguished by a service action field.
fn has_service_actions(opcode: u8) -> bool {
    matches!(
        opcode,
        op::PR_IN | op::PR_OUT | op::SERVICE_ACTION_IN16 | op::MAINTENANCE_IN
    )
}

/// Command timeouts descriptor (SPC-4 §6.35.4): length 0Ah, no timeouts specified.
const TIMEOUTS: [u8; 12] = [0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Parameter data for REPORT SUPPORTED OPERATION CODES.
pub fn report(rctd: bool, options: u8, opcode: u8, sa_req: u16) -> Result<Vec<u8>, Sense> {
    let mut d = Vec::new();
    if options == 0 {
        d.extend_from_slice(&[0; 4]);
        for c in TABLE {
            d.push(c.opcode);
            d.push(0);
            d.extend_from_slice(&c.sa.unwrap_or(0).to_be_bytes());
            d.push(0);
            d.push(if rctd { 0x02 } else { 0 } | if c.sa.is_some() { 0x01 } else { 0 });
            d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            if rctd {
                d.extend_from_slice(&TIMEOUTS);
            }
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        return Ok(d);
    }
    let has_sa = has_service_actions(opcode);
    let found = match options {
        1 if has_sa => return Err(Sense::invalid_cdb(2, Some(0))),
        1 => TABLE.iter().find(|c| c.opcode == opcode),
        2 if !has_sa => return Err(Sense::invalid_cdb(2, Some(0))),
        _ if has_sa => TABLE
            .iter()
            .find(|c| c.opcode == opcode && c.sa == Some(sa_req)),
        _ => TABLE.iter().find(|c| c.opcode == opcode),
    };
    let ctdp = if rctd { 0x80 } else { 0 };
    match found {
        Some(c) => {
            d.push(0);
            d.push(ctdp | 0x03); // SUPPORT 011b: supported as the standard describes
            d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            d.extend_from_slice(c.usage);
        }
        None => {
            d.push(0);
            d.push(ctdp | 0x01); // SUPPORT 001b: not supported
            d.extend_from_slice(&[0, 0]);
        }
    }
    if rctd {
        d.extend_from_slice(&TIMEOUTS);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb;

    #[test]
    fn usage_data_matches_cdb_lengths_and_opcodes() {
        for c in TABLE {
            assert_eq!(c.usage[0], c.opcode);
            let want = match c.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(c.usage.len(), want, "opcode {:02x}", c.opcode);
            // The table's commands all decode (with a plausible CDB) to something.
            let mut cdb = c.usage.to_vec();
            cdb.iter_mut().skip(1).for_each(|b| *b = 0);
            if let Some(sa) = c.sa {
                cdb[1] = sa as u8;
            }
            let e = cdb::parse(&cdb, 1 << 20);
            assert!(
                !matches!(e, Err(s) if s == Sense::invalid_opcode()),
                "opcode {:02x} in table but not decoded",
                c.opcode
            );
        }
    }

    #[test]
    fn all_commands_format() {
        let d = report(false, 0, 0, 0).unwrap();
        assert_eq!(
            u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
            d.len() - 4
        );
        assert_eq!((d.len() - 4) % 8, 0);
        assert_eq!(
            &d[4..12],
            &[0x00, 0, 0, 0, 0, 0x00, 0, 6],
            "TEST UNIT READY first"
        );
        let d = report(true, 0, 0, 0).unwrap();
        assert_eq!((d.len() - 4) % 20, 0);
        assert_eq!(d[9], 0x02, "CTDP");
        assert_eq!(&d[12..24], &TIMEOUTS);
    }

    #[test]
    fn one_command_formats() {
        let d = report(false, 1, op::READ10, 0).unwrap();
        assert_eq!(&d[..4], &[0, 0x03, 0, 10]);
        assert_eq!(&d[4..6], &[op::READ10, 0x18]);
        assert_eq!(
            report(false, 1, op::PR_IN, 0),
            Err(Sense::invalid_cdb(2, Some(0)))
        );
        assert_eq!(
            report(false, 2, op::READ10, 0),
            Err(Sense::invalid_cdb(2, Some(0)))
        );
        let d = report(false, 2, op::SERVICE_ACTION_IN16, 0x12).unwrap();
        assert_eq!(&d[..4], &[0, 0x03, 0, 16]);
        let d = report(false, 2, op::SERVICE_ACTION_IN16, 0x11).unwrap();
        assert_eq!(d, [0, 0x01, 0, 0]);
        let d = report(true, 1, 0xC5, 0).unwrap();
        assert_eq!(&d[..4], &[0, 0x81, 0, 0]);
        assert_eq!(d.len(), 16);
    }
}
