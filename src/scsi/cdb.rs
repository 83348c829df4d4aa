//! CDB decoding: opcode constants and a validated [`Command`] for each supported CDB.
//!
//! Decoding never panics: every byte access is checked against the CDB length first, and a
//! CDB shorter than its opcode's fixed length is an INVALID FIELD IN CDB. Range checks that
//! need the device size (LBA out of range, maximum transfer length) happen here too, so that
//! [`super::TargetLus::plan`] can refuse a command before any data phase.

use super::sense::Sense;
use crate::store::SECTOR;

pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ6: u8 = 0x08;
    pub const WRITE6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT6: u8 = 0x15;
    pub const RESERVE6: u8 = 0x16;
    pub const RELEASE6: u8 = 0x17;
    pub const MODE_SENSE6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_DEFECT_DATA10: u8 = 0x37;
    pub const READ_CAPACITY10: u8 = 0x25;
    pub const READ10: u8 = 0x28;
    pub const WRITE10: u8 = 0x2A;
    pub const WRITE_VERIFY10: u8 = 0x2E;
    pub const VERIFY10: u8 = 0x2F;
    pub const PRE_FETCH10: u8 = 0x34;
    pub const SYNC_CACHE10: u8 = 0x35;
    pub const WRITE_SAME10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT10: u8 = 0x55;
    pub const MODE_SENSE10: u8 = 0x5A;
    pub const PR_IN: u8 = 0x5E;
    pub const PR_OUT: u8 = 0x5F;
    pub const READ16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE16: u8 = 0x8A;
    pub const ORWRITE16: u8 = 0x8B;
    pub const WRITE_VERIFY16: u8 = 0x8E;
    pub const VERIFY16: u8 = 0x8F;
    pub const PRE_FETCH16: u8 = 0x90;
    pub const SYNC_CACHE16: u8 = 0x91;
    pub const WRITE_SAME16: u8 = 0x93;
    pub const SERVICE_ACTION_IN16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ12: u8 = 0xA8;
    pub const WRITE12: u8 = 0xAA;
    pub const WRITE_VERIFY12: u8 = 0xAE;
    pub const VERIFY12: u8 = 0xAF;
    pub const READ_DEFECT_DATA12: u8 = 0xB7;

    /// SERVICE ACTION IN(16) service actions.
    pub const SA_READ_CAPACITY16: u8 = 0x10;
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service action.
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
}

/// Largest READ/WRITE/VERIFY transfer, in blocks (16 MiB). Reported as MAXIMUM TRANSFER
/// LENGTH in the Block Limits VPD page; longer transfers are refused before any data phase so
/// the transport never buffers more than this for one command.
pub const MAX_TRANSFER_BLOCKS: u32 = 32768;
/// Largest WRITE SAME, in blocks, reported as MAXIMUM WRITE SAME LENGTH. Not above
/// [`MAX_TRANSFER_BLOCKS`]: initiators (and libiscsi's tests) read back a whole WRITE SAME range
/// with one READ.
pub const MAX_WRITE_SAME_BLOCKS: u64 = MAX_TRANSFER_BLOCKS as u64;
/// Largest COMPARE AND WRITE, in blocks, reported as MAXIMUM COMPARE AND WRITE LENGTH.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;
/// Largest UNMAP parameter list accepted, in descriptors (MAXIMUM UNMAP BLOCK DESCRIPTOR
/// COUNT) and in blocks per command (MAXIMUM UNMAP LBA COUNT).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 1024;
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;

/// A block range checked against the device: `lba + blocks <= capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u64,
}

impl Extent {
    pub fn offset(&self) -> u64 {
        self.lba * SECTOR
    }
    pub fn bytes(&self) -> u64 {
        self.blocks * SECTOR
    }
}

/// What a decoded CDB asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ReportLuns {
        alloc: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    Read {
        ext: Extent,
    },
    Write {
        ext: Extent,
        fua: bool,
    },
    WriteVerify {
        ext: Extent,
    },
    /// `bytchk`: 0 = medium check only, 1 = compare `blocks` blocks, 3 = compare one block
    /// against every block.
    Verify {
        ext: Extent,
        bytchk: u8,
    },
    PreFetch {
        ext: Extent,
    },
    SyncCache,
    WriteSame {
        ext: Extent,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    CompareAndWrite {
        ext: Extent,
        fua: bool,
    },
    OrWrite {
        ext: Extent,
        fua: bool,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        ten: bool,
        sp: bool,
        param_len: u32,
    },
    StartStop {
        start: bool,
        loej: bool,
        power: u8,
        no_flush: bool,
    },
    PreventAllow {
        prevent: bool,
    },
    Reserve6,
    Release6,
    PrIn {
        sa: u8,
        alloc: u32,
    },
    PrOut {
        sa: u8,
        scope: u8,
        kind: u8,
        param_len: u32,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
        alloc: u32,
    },
    /// READ DEFECT DATA: `flags` is the REQ_PLIST/REQ_GLIST/format byte.
    ReadDefectData {
        twelve: bool,
        flags: u8,
        alloc: u32,
    },
}

fn need(cdb: &[u8], len: usize) -> Result<(), Sense> {
    if cdb.len() < len {
        // The CDB is shorter than its opcode requires: point at the first missing byte.
        return Err(Sense::invalid_cdb(cdb.len() as u16, None));
    }
    // NACA in the CONTROL byte: ACA is not supported (SAM-5 5.9.1.2).
    if cdb[len - 1] & 0x04 != 0 {
        return Err(Sense::invalid_cdb((len - 1) as u16, Some(2)));
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Check `[lba, lba + blocks)` against the capacity (21h/00h on overflow or past the end).
pub fn extent(lba: u64, blocks: u64, capacity: u64) -> Result<Extent, Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= capacity && lba <= capacity => Ok(Extent { lba, blocks }),
        _ => Err(Sense {
            info: Some(lba),
            ..Sense::lba_out_of_range()
        }),
    }
}

/// Protection fields (RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT, bits 7-5 of byte 1) must be 0:
/// the device has no protection information.
fn no_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(5)));
    }
    Ok(())
}

fn transfer(lba: u64, blocks: u64, capacity: u64, len_byte: u16) -> Result<Extent, Sense> {
    let ext = extent(lba, blocks, capacity)?;
    if blocks > MAX_TRANSFER_BLOCKS as u64 {
        return Err(Sense::invalid_cdb(len_byte, None));
    }
    Ok(ext)
}

/// Decode `cdb` for a device of `capacity` blocks.
pub fn parse(cdb: &[u8], capacity: u64) -> Result<Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    use Command as C;
    Ok(match opcode {
        op::TEST_UNIT_READY => {
            need(cdb, 6)?;
            C::TestUnitReady
        }
        op::REQUEST_SENSE => {
            need(cdb, 6)?;
            if cdb[1] & 0x01 != 0 {
                // DESC: descriptor-format sense is not supported.
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            C::RequestSense {
                alloc: cdb[4] as u32,
            }
        }
        op::INQUIRY => {
            need(cdb, 6)?;
            let evpd = cdb[1] & 0x01 != 0;
            if cdb[1] & 0x02 != 0 {
                return Err(Sense::invalid_cdb(1, Some(1)));
            }
            if !evpd && cdb[2] != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            C::Inquiry {
                evpd,
                page: cdb[2],
                alloc: be16(cdb, 3) as u32,
            }
        }
        op::REPORT_LUNS => {
            need(cdb, 12)?;
            if cdb[2] > 2 {
                return Err(Sense::invalid_cdb(2, None));
            }
            let alloc = be32(cdb, 6);
            if alloc < 16 {
                return Err(Sense::invalid_cdb(6, None));
            }
            C::ReportLuns { alloc }
        }
        op::READ_CAPACITY10 => {
            need(cdb, 10)?;
            let pmi = cdb[8] & 0x01 != 0;
            if !pmi && be32(cdb, 2) != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            C::ReadCapacity10
        }
        op::SERVICE_ACTION_IN16 => {
            need(cdb, 16)?;
            match cdb[1] & 0x1F {
                op::SA_READ_CAPACITY16 => C::ReadCapacity16 {
                    alloc: be32(cdb, 10),
                },
                op::SA_GET_LBA_STATUS => {
                    let lba = be64(cdb, 2);
                    if lba >= capacity {
                        return Err(Sense {
                            info: Some(lba),
                            ..Sense::lba_out_of_range()
                        });
                    }
                    C::GetLbaStatus {
                        lba,
                        alloc: be32(cdb, 10),
                    }
                }
                _ => return Err(Sense::invalid_cdb(1, Some(4))),
            }
        }
        op::READ6 | op::WRITE6 => {
            need(cdb, 6)?;
            let lba = (be24(cdb, 1) & 0x1F_FFFF) as u64;
            let blocks = match cdb[4] {
                0 => 256,
                n => n as u64,
            };
            let ext = transfer(lba, blocks, capacity, 4)?;
            if opcode == op::READ6 {
                C::Read { ext }
            } else {
                C::Write { ext, fua: false }
            }
        }
        op::READ10 | op::WRITE10 | op::READ12 | op::WRITE12 | op::READ16 | op::WRITE16 => {
            let (lba, blocks, len_at) = rw_fields(cdb, opcode)?;
            no_protect(cdb)?;
            let ext = transfer(lba, blocks, capacity, len_at)?;
            let fua = cdb[1] & 0x08 != 0;
            match opcode {
                op::READ10 | op::READ12 | op::READ16 => C::Read { ext },
                _ => C::Write { ext, fua },
            }
        }
        op::WRITE_VERIFY10 | op::WRITE_VERIFY12 | op::WRITE_VERIFY16 => {
            let (lba, blocks, len_at) = rw_fields(cdb, opcode)?;
            no_protect(cdb)?;
            // BYTCHK (bits 2-1): 00b and 01b defined; 1xb reserved.
            if cdb[1] & 0x04 != 0 {
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            C::WriteVerify {
                ext: transfer(lba, blocks, capacity, len_at)?,
            }
        }
        op::VERIFY10 | op::VERIFY12 | op::VERIFY16 => {
            let (lba, blocks, len_at) = rw_fields(cdb, opcode)?;
            no_protect(cdb)?;
            let bytchk = (cdb[1] >> 1) & 0x03;
            if bytchk == 2 {
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            C::Verify {
                ext: transfer(lba, blocks, capacity, len_at)?,
                bytchk,
            }
        }
        op::PRE_FETCH10 | op::PRE_FETCH16 => {
            let (lba, blocks) = if opcode == op::PRE_FETCH10 {
                need(cdb, 10)?;
                (be32(cdb, 2) as u64, be16(cdb, 7) as u64)
            } else {
                need(cdb, 16)?;
                (be64(cdb, 2), be32(cdb, 10) as u64)
            };
            C::PreFetch {
                ext: extent(lba, blocks, capacity)?,
            }
        }
        op::SYNC_CACHE10 | op::SYNC_CACHE16 => {
            let (lba, blocks) = if opcode == op::SYNC_CACHE10 {
                need(cdb, 10)?;
                (be32(cdb, 2) as u64, be16(cdb, 7) as u64)
            } else {
                need(cdb, 16)?;
                (be64(cdb, 2), be32(cdb, 10) as u64)
            };
            extent(lba, blocks, capacity)?;
            C::SyncCache
        }
        op::WRITE_SAME10 | op::WRITE_SAME16 => {
            let (lba, blocks, len_at) = if opcode == op::WRITE_SAME10 {
                need(cdb, 10)?;
                (be32(cdb, 2) as u64, be16(cdb, 7) as u64, 7)
            } else {
                need(cdb, 16)?;
                (be64(cdb, 2), be32(cdb, 10) as u64, 10)
            };
            no_protect(cdb)?;
            let mut ext = extent(lba, blocks, capacity)?;
            // ANCHOR (bit 4): anchored blocks are not supported (ANC_SUP=0).
            if cdb[1] & 0x10 != 0 {
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            // WSNZ=0: a zero NUMBER OF LOGICAL BLOCKS means "through the last block".
            if blocks == 0 {
                ext.blocks = capacity - lba;
            }
            if ext.blocks > MAX_WRITE_SAME_BLOCKS {
                return Err(Sense::invalid_cdb(len_at, None));
            }
            let unmap = cdb[1] & 0x08 != 0;
            // NDOB (WRITE SAME(16) only): no Data-Out buffer, the pattern is zeros.
            let ndob = opcode == op::WRITE_SAME16 && cdb[1] & 0x01 != 0;
            if opcode == op::WRITE_SAME10 && cdb[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            C::WriteSame { ext, unmap, ndob }
        }
        op::UNMAP => {
            need(cdb, 10)?;
            // ANCHOR (byte 1 bit 0) is not supported.
            if cdb[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            C::Unmap {
                param_len: be16(cdb, 7) as u32,
            }
        }
        op::COMPARE_AND_WRITE => {
            need(cdb, 16)?;
            no_protect(cdb)?;
            let blocks = cdb[13];
            let ext = extent(be64(cdb, 2), blocks as u64, capacity)?;
            if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
                return Err(Sense::invalid_cdb(13, None));
            }
            C::CompareAndWrite {
                ext,
                fua: cdb[1] & 0x08 != 0,
            }
        }
        op::ORWRITE16 => {
            need(cdb, 16)?;
            no_protect(cdb)?;
            let ext = transfer(be64(cdb, 2), be32(cdb, 10) as u64, capacity, 10)?;
            C::OrWrite {
                ext,
                fua: cdb[1] & 0x08 != 0,
            }
        }
        op::MODE_SENSE6 | op::MODE_SENSE10 => {
            let ten = opcode == op::MODE_SENSE10;
            need(cdb, if ten { 10 } else { 6 })?;
            let alloc = if ten {
                be16(cdb, 7) as u32
            } else {
                cdb[4] as u32
            };
            C::ModeSense {
                ten,
                dbd: cdb[1] & 0x08 != 0,
                llbaa: ten && cdb[1] & 0x10 != 0,
                pc: cdb[2] >> 6,
                page: cdb[2] & 0x3F,
                subpage: cdb[3],
                alloc,
            }
        }
        op::MODE_SELECT6 | op::MODE_SELECT10 => {
            let ten = opcode == op::MODE_SELECT10;
            need(cdb, if ten { 10 } else { 6 })?;
            let param_len = if ten {
                be16(cdb, 7) as u32
            } else {
                cdb[4] as u32
            };
            C::ModeSelect {
                ten,
                sp: cdb[1] & 0x01 != 0,
                param_len,
            }
        }
        op::START_STOP_UNIT => {
            need(cdb, 6)?;
            C::StartStop {
                start: cdb[4] & 0x01 != 0,
                loej: cdb[4] & 0x02 != 0,
                no_flush: cdb[4] & 0x04 != 0,
                power: cdb[4] >> 4,
            }
        }
        op::PREVENT_ALLOW => {
            need(cdb, 6)?;
            C::PreventAllow {
                prevent: cdb[4] & 0x03 != 0,
            }
        }
        op::RESERVE6 => {
            need(cdb, 6)?;
            // Third-party and extent reservations (obsolete) are not supported.
            if cdb[1] & 0x13 != 0 {
                return Err(Sense::invalid_cdb(1, None));
            }
            C::Reserve6
        }
        op::RELEASE6 => {
            need(cdb, 6)?;
            if cdb[1] & 0x13 != 0 {
                return Err(Sense::invalid_cdb(1, None));
            }
            C::Release6
        }
        op::PR_IN => {
            need(cdb, 10)?;
            let sa = cdb[1] & 0x1F;
            if sa > 3 {
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            C::PrIn {
                sa,
                alloc: be16(cdb, 7) as u32,
            }
        }
        op::PR_OUT => {
            need(cdb, 10)?;
            let sa = cdb[1] & 0x1F;
            if sa > 6 {
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            C::PrOut {
                sa,
                scope: cdb[2] >> 4,
                kind: cdb[2] & 0x0F,
                param_len: be32(cdb, 5),
            }
        }
        op::MAINTENANCE_IN => {
            need(cdb, 12)?;
            if cdb[1] & 0x1F != op::SA_REPORT_SUPPORTED_OPCODES {
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            let options = cdb[2] & 0x07;
            if options > 3 {
                return Err(Sense::invalid_cdb(2, Some(0)));
            }
            C::ReportSupportedOpcodes {
                rctd: cdb[2] & 0x80 != 0,
                options,
                opcode: cdb[3],
                sa: be16(cdb, 4),
                alloc: be32(cdb, 6),
            }
        }
        op::READ_DEFECT_DATA10 => {
            need(cdb, 10)?;
            C::ReadDefectData {
                twelve: false,
                flags: cdb[2] & 0x1F,
                alloc: be16(cdb, 7) as u32,
            }
        }
        op::READ_DEFECT_DATA12 => {
            need(cdb, 12)?;
            C::ReadDefectData {
                twelve: true,
                flags: cdb[1] & 0x1F,
                alloc: be32(cdb, 6),
            }
        }
        _ => return Err(Sense::invalid_opcode()),
    })
}

/// LBA, transfer length and the byte holding the length, for the 10/12/16-byte
/// READ/WRITE-shaped CDBs (READ, WRITE, WRITE AND VERIFY, VERIFY): the opcode's group
/// (high bits) gives the CDB length.
fn rw_fields(cdb: &[u8], opcode: u8) -> Result<(u64, u64, u16), Sense> {
    Ok(match opcode & 0xF0 {
        0x20 => {
            need(cdb, 10)?;
            (be32(cdb, 2) as u64, be16(cdb, 7) as u64, 7)
        }
        0xA0 => {
            need(cdb, 12)?;
            (be32(cdb, 2) as u64, be32(cdb, 6) as u64, 6)
        }
        _ => {
            need(cdb, 16)?;
            (be64(cdb, 2), be32(cdb, 10) as u64, 10)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{asc, key};

    const CAP: u64 = 2048;

    #[test]
    fn read10_decodes_and_checks_range() {
        let cdb = [op::READ10, 0, 0, 0, 0x07, 0xF8, 0, 0, 8, 0];
        assert_eq!(
            parse(&cdb, CAP),
            Ok(Command::Read {
                ext: Extent {
                    lba: 2040,
                    blocks: 8
                }
            })
        );
        let cdb = [op::READ10, 0, 0, 0, 0x07, 0xF9, 0, 0, 8, 0];
        let e = parse(&cdb, CAP).unwrap_err();
        assert_eq!(
            (e.key, e.code),
            (key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn read16_lba_overflow_is_out_of_range() {
        let mut cdb = [0u8; 16];
        cdb[0] = op::READ16;
        cdb[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        cdb[13] = 2;
        assert_eq!(parse(&cdb, CAP).unwrap_err().code, asc::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn zero_length_transfers_are_valid_and_read6_zero_means_256() {
        let cdb = [op::WRITE10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse(&cdb, CAP),
            Ok(Command::Write {
                ext: Extent { lba: 0, blocks: 0 },
                fua: false
            })
        );
        let cdb = [op::READ6, 0, 0, 0, 0, 0];
        assert_eq!(
            parse(&cdb, CAP),
            Ok(Command::Read {
                ext: Extent {
                    lba: 0,
                    blocks: 256
                }
            })
        );
    }

    #[test]
    fn protect_fields_and_naca_are_refused() {
        let cdb = [op::READ10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            parse(&cdb, CAP).unwrap_err(),
            Sense::invalid_cdb(1, Some(5))
        );
        let cdb = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0x04];
        assert_eq!(
            parse(&cdb, CAP).unwrap_err(),
            Sense::invalid_cdb(5, Some(2))
        );
    }

    #[test]
    fn short_cdb_is_invalid_field_not_panic() {
        for op in 0..=255u8 {
            for len in 0..16 {
                let mut cdb = vec![0u8; len];
                if len > 0 {
                    cdb[0] = op;
                }
                let _ = parse(&cdb, CAP);
            }
        }
        let e = parse(&[op::READ16, 0, 0], CAP).unwrap_err();
        assert_eq!(e.code, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn unknown_opcode_is_invalid_opcode() {
        assert_eq!(
            parse(&[0xC0, 0, 0, 0, 0, 0], CAP).unwrap_err(),
            Sense::invalid_opcode()
        );
    }

    #[test]
    fn transfer_longer_than_limit_is_refused() {
        let mut cdb = [0u8; 16];
        cdb[0] = op::READ16;
        cdb[10..14].copy_from_slice(&(MAX_TRANSFER_BLOCKS + 1).to_be_bytes());
        let e = parse(&cdb, u64::MAX).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(10, None));
    }

    #[test]
    fn write_same_zero_blocks_and_anchor_are_refused_after_range_check() {
        // Zero blocks: through the end of the device, within MAXIMUM WRITE SAME LENGTH.
        let cdb = [op::WRITE_SAME10, 0, 0, 0, 0x07, 0xF0, 0, 0, 0, 0];
        assert_eq!(
            parse(&cdb, CAP),
            Ok(Command::WriteSame {
                ext: Extent {
                    lba: 2032,
                    blocks: 16
                },
                unmap: false,
                ndob: false
            })
        );
        let cdb = [op::WRITE_SAME10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse(&cdb, CAP).is_ok());
        assert_eq!(
            parse(&cdb, 1 << 20).unwrap_err(),
            Sense::invalid_cdb(7, None)
        );
        // LBA past the end wins over the zero length.
        let cdb = [op::WRITE_SAME10, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0];
        assert_eq!(parse(&cdb, CAP).unwrap_err().code, asc::LBA_OUT_OF_RANGE);
        let cdb = [op::WRITE_SAME10, 0x10, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            parse(&cdb, CAP).unwrap_err(),
            Sense::invalid_cdb(1, Some(4))
        );
    }

    #[test]
    fn get_lba_status_past_end_is_out_of_range() {
        let mut cdb = [0u8; 16];
        cdb[0] = op::SERVICE_ACTION_IN16;
        cdb[1] = op::SA_GET_LBA_STATUS;
        cdb[2..10].copy_from_slice(&CAP.to_be_bytes());
        cdb[13] = 24;
        assert_eq!(parse(&cdb, CAP).unwrap_err().code, asc::LBA_OUT_OF_RANGE);
        cdb[2..10].copy_from_slice(&(CAP - 1).to_be_bytes());
        assert!(parse(&cdb, CAP).is_ok());
    }
}
