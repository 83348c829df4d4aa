//! Fixed-format sense data (SPC-4 §4.5.3) and the sense keys / additional sense codes isboot
//! reports.
//!
//! ```text
//! byte 0      VALID(7) | RESPONSE CODE (70h current)
//! byte 2      SENSE KEY (3-0)
//! bytes 3-6   INFORMATION (big endian; meaningful when VALID)
//! byte 7      ADDITIONAL SENSE LENGTH (10: bytes 8..17 follow)
//! bytes 8-11  COMMAND-SPECIFIC INFORMATION
//! byte 12/13  ADDITIONAL SENSE CODE / QUALIFIER
//! bytes 15-17 SENSE KEY SPECIFIC: SKSV(7) C/D(6) BPV(3) BIT POINTER(2-0), FIELD POINTER (16-17)
//! ```

use super::{Outcome, status};

/// Length of the fixed-format sense data isboot returns.
pub const FIXED_SENSE_LEN: usize = 18;

/// Sense keys (SPC-4 table 28).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense code and qualifier pairs (SPC-4 table 30), as `(ASC, ASCQ)`.
pub mod asc {
    pub type Code = (u8, u8);
    pub const NO_ADDITIONAL: Code = (0x00, 0x00);
    pub const WRITE_ERROR: Code = (0x0C, 0x00);
    pub const UNRECOVERED_READ_ERROR: Code = (0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Code = (0x1A, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Code = (0x1D, 0x00);
    pub const INVALID_OPCODE: Code = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Code = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Code = (0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Code = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Code = (0x26, 0x00);
    pub const INVALID_RELEASE_OF_PR: Code = (0x26, 0x04);
    pub const WRITE_PROTECTED: Code = (0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Code = (0x27, 0x07);
    pub const POWER_ON_RESET: Code = (0x29, 0x00);
    pub const POWER_ON_OCCURRED: Code = (0x29, 0x01);
    pub const BUS_DEVICE_RESET: Code = (0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Code = (0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Code = (0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Code = (0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Code = (0x2A, 0x05);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Code = (0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Code = (0x3A, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Code = (0x44, 0x00);
    pub const DATA_PHASE_ERROR: Code = (0x4B, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: Code = (0x53, 0x02);
}

/// Where in the CDB or parameter list an invalid field sits (sense-key specific bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the field is in the CDB; false: in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit of the byte (0..=7) the field starts at, if known.
    pub bit: Option<u8>,
}

/// One sense condition before encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub code: asc::Code,
    /// INFORMATION field (set VALID); values above u32::MAX cannot be encoded and are dropped.
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub const fn new(key: u8, code: asc::Code) -> Sense {
        Sense {
            key,
            code,
            info: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, pointing at byte 0 of the CDB.
    pub const fn invalid_opcode() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_OPCODE).at_cdb(0, None)
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB with a pointer to `byte` (and `bit`).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB).at_cdb(byte, bit)
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST with a pointer to `byte`.
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: key::ILLEGAL_REQUEST,
            code: asc::INVALID_FIELD_IN_PARAMETER_LIST,
            info: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    pub const fn param_list_length() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    pub const fn lba_out_of_range() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)
    }

    pub const fn write_protected() -> Sense {
        Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED)
    }

    pub const fn lun_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED)
    }

    pub const fn unit_attention(code: asc::Code) -> Sense {
        Sense::new(key::UNIT_ATTENTION, code)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION; INFORMATION = offset of the first
    /// byte that differs.
    pub const fn miscompare(offset: u64) -> Sense {
        Sense {
            key: key::MISCOMPARE,
            code: asc::MISCOMPARE_DURING_VERIFY,
            info: Some(offset),
            field: None,
        }
    }

    pub const fn at_cdb(mut self, byte: u16, bit: Option<u8>) -> Sense {
        self.field = Some(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        });
        self
    }

    /// Encode as fixed-format sense data (18 bytes).
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key & 0x0F;
        if let Some(info) = self.info
            && let Ok(v) = u32::try_from(info)
        {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&v.to_be_bytes());
        }
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.code.0;
        b[13] = self.code.1;
        if let Some(f) = self.field {
            b[15] = 0x80;
            if f.in_cdb {
                b[15] |= 0x40;
            }
            if let Some(bit) = f.bit {
                b[15] |= 0x08 | (bit & 0x07);
            }
            b[16..18].copy_from_slice(&f.byte.to_be_bytes());
        }
        b
    }
}

impl Outcome {
    pub fn good() -> Outcome {
        Outcome {
            status: status::GOOD,
            sense: None,
            data: Vec::new(),
        }
    }

    /// GOOD with one Data-In segment (control commands), truncated to `alloc` bytes.
    pub fn with_data(mut data: Vec<u8>, alloc: usize) -> Outcome {
        data.truncate(alloc);
        let mut o = Outcome::good();
        if !data.is_empty() {
            o.data.push(data.into());
        }
        o
    }

    /// CHECK CONDITION with fixed-format sense data.
    pub fn check(sense: Sense) -> Outcome {
        Outcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense.to_fixed().to_vec()),
            data: Vec::new(),
        }
    }

    pub fn reservation_conflict() -> Outcome {
        Outcome {
            status: status::RESERVATION_CONFLICT,
            sense: None,
            data: Vec::new(),
        }
    }
}

impl From<Sense> for Outcome {
    fn from(s: Sense) -> Outcome {
        Outcome::check(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_invalid_field_in_cdb_with_bit_pointer() {
        let s = Sense::invalid_cdb(1, Some(5)).to_fixed();
        #[rustfmt::skip]
        let want = [
            0x70,                   // current error, fixed format, VALID=0
            0x00,                   // obsolete
            0x05,                   // ILLEGAL REQUEST
            0, 0, 0, 0,             // INFORMATION
            10,                     // additional sense length
            0, 0, 0, 0,             // command-specific information
            0x24, 0x00,             // INVALID FIELD IN CDB
            0x00,                   // FRU
            0x80 | 0x40 | 0x08 | 5, // SKSV, C/D=CDB, BPV, bit 5
            0x00, 0x01,             // field pointer: byte 1
        ];
        assert_eq!(s, want);
    }

    #[test]
    fn golden_miscompare_with_information() {
        let s = Sense::miscompare(0x1234).to_fixed();
        assert_eq!(s[0], 0xF0, "VALID set");
        assert_eq!(s[2], 0x0E);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!((s[12], s[13]), (0x1D, 0x00));
        assert_eq!(s[15], 0, "no sense-key specific data");
    }

    #[test]
    fn information_too_large_is_not_valid() {
        let s = Sense {
            info: Some(1 << 40),
            ..Sense::lba_out_of_range()
        }
        .to_fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(&s[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn parameter_list_pointer_has_cd_clear() {
        let s = Sense::invalid_param(20, None).to_fixed();
        assert_eq!(s[15], 0x80);
        assert_eq!(&s[16..18], &[0, 20]);
        assert_eq!((s[12], s[13]), (0x26, 0x00));
    }
}
