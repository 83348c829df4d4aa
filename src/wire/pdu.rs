//! The Basic Header Segment (BHS) of every iSCSI PDU (RFC 7143 §11), parsed into typed
//! structs and emitted from them.
//!
//! ```text
//!  Byte/     0       |       1       |       2       |       3       |
//!     +---------------+---------------+---------------+---------------+
//!    0|.|I| Opcode    |F|  Opcode-specific fields                     |
//!     +---------------+---------------+---------------+---------------+
//!    4|TotalAHSLength | DataSegmentLength                             |
//!     +---------------+---------------+---------------+---------------+
//!    8| LUN or Opcode-specific fields                                 |
//!     +                                                               +
//!   12|                                                               |
//!     +---------------+---------------+---------------+---------------+
//!   16| Initiator Task Tag                                            |
//!     +---------------+---------------+---------------+---------------+
//!   20/ Opcode-specific fields                                        /
//!     +/                                                              /
//!   48+---------------+---------------+---------------+---------------+
//! ```
//! Parsing never panics: the BHS is a fixed 48-byte array and every AHS length is checked.

use super::WireError;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Largest CDB accepted through an Extended CDB AHS (16 + 244; SPC allows up to 260).
pub const MAX_CDB_LEN: usize = 260;
/// Reserved tag value (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// An opcode (RFC 7143 §11.2.1.2): the low six bits of byte 0. Any value parses as an
/// `Opcode`; [`Bhs::parse`] refuses the ones it does not know.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl Opcode {
    // Initiator to target.
    pub const NOP_OUT: Opcode = Opcode(0x00);
    pub const SCSI_COMMAND: Opcode = Opcode(0x01);
    pub const TASK_MGMT_REQUEST: Opcode = Opcode(0x02);
    pub const LOGIN_REQUEST: Opcode = Opcode(0x03);
    pub const TEXT_REQUEST: Opcode = Opcode(0x04);
    pub const DATA_OUT: Opcode = Opcode(0x05);
    pub const LOGOUT_REQUEST: Opcode = Opcode(0x06);
    pub const SNACK_REQUEST: Opcode = Opcode(0x10);
    // Target to initiator.
    pub const NOP_IN: Opcode = Opcode(0x20);
    pub const SCSI_RESPONSE: Opcode = Opcode(0x21);
    pub const TASK_MGMT_RESPONSE: Opcode = Opcode(0x22);
    pub const LOGIN_RESPONSE: Opcode = Opcode(0x23);
    pub const TEXT_RESPONSE: Opcode = Opcode(0x24);
    pub const DATA_IN: Opcode = Opcode(0x25);
    pub const LOGOUT_RESPONSE: Opcode = Opcode(0x26);
    pub const R2T: Opcode = Opcode(0x31);
    pub const ASYNC_MESSAGE: Opcode = Opcode(0x32);
    pub const REJECT: Opcode = Opcode(0x3f);

    /// The RFC's name of a known opcode.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Opcode::NOP_OUT => "NOP-Out",
            Opcode::SCSI_COMMAND => "SCSI Command",
            Opcode::TASK_MGMT_REQUEST => "Task Management Function Request",
            Opcode::LOGIN_REQUEST => "Login Request",
            Opcode::TEXT_REQUEST => "Text Request",
            Opcode::DATA_OUT => "SCSI Data-Out",
            Opcode::LOGOUT_REQUEST => "Logout Request",
            Opcode::SNACK_REQUEST => "SNACK Request",
            Opcode::NOP_IN => "NOP-In",
            Opcode::SCSI_RESPONSE => "SCSI Response",
            Opcode::TASK_MGMT_RESPONSE => "Task Management Function Response",
            Opcode::LOGIN_RESPONSE => "Login Response",
            Opcode::TEXT_RESPONSE => "Text Response",
            Opcode::DATA_IN => "SCSI Data-In",
            Opcode::LOGOUT_RESPONSE => "Logout Response",
            Opcode::R2T => "Ready To Transfer",
            Opcode::ASYNC_MESSAGE => "Asynchronous Message",
            Opcode::REJECT => "Reject",
            _ => return None,
        })
    }
}

impl std::fmt::Debug for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Opcode({n})"),
            None => write!(f, "Opcode(0x{:02x})", self.0),
        }
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Task management function codes (RFC 7143 §11.5.1).
pub mod tmf_function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Task management responses (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// Where each BHS field sits (RFC 7143 §11; the diagram above): the byte of a one-byte field,
/// the range of a longer one. Several PDUs put different fields in the same bytes; each field
/// has its own name, so `parse` and `emit` name every field once.
pub mod field {
    /// A multi-byte field (big-endian).
    pub type Field = core::ops::Range<usize>;

    // Every PDU.
    /// I bit and opcode ([`super::flag::IMMEDIATE`], [`super::flag::OPCODE`]).
    pub const OPCODE: usize = 0;
    /// F bit and the opcode-specific flags ([`super::flag`]).
    pub const FLAGS: usize = 1;
    pub const TOTAL_AHS_LEN: usize = 4;
    pub const DATA_SEGMENT_LEN: Field = 5..8;
    pub const LUN: Field = 8..16;
    pub const ITT: Field = 16..20;

    // Bytes 2 and 3.
    /// SCSI, Task Management and Logout Responses.
    pub const RESPONSE: usize = 2;
    pub const REJECT_REASON: usize = 2;
    /// SCSI Response; Data-In with the S bit.
    pub const STATUS: usize = 3;
    /// Login Request and Response.
    pub const VERSION_MAX: usize = 2;
    pub const VERSION_MIN: usize = 3;
    pub const VERSION_ACTIVE: usize = 3;

    // Login: the ISID and TSIH take the LUN's place.
    pub const ISID: Field = 8..14;
    pub const TSIH: Field = 14..16;

    // Bytes 20..24.
    pub const TTT: Field = 20..24;
    /// SCSI Command.
    pub const EXPECTED_DATA_LEN: Field = 20..24;
    /// Task Management Function Request.
    pub const REFERENCED_TASK_TAG: Field = 20..24;
    /// SCSI Response.
    pub const SNACK_TAG: Field = 20..24;
    /// Login and Logout Requests.
    pub const CID: Field = 20..22;

    // Bytes 24..32: requests carry CmdSN and ExpStatSN, responses StatSN and ExpCmdSN.
    pub const CMD_SN: Field = 24..28;
    pub const STAT_SN: Field = 24..28;
    pub const EXP_STAT_SN: Field = 28..32;
    pub const EXP_CMD_SN: Field = 28..32;

    // Bytes 32..48.
    pub const MAX_CMD_SN: Field = 32..36;
    /// Task Management Function Request.
    pub const REF_CMD_SN: Field = 32..36;
    /// SCSI Command: the first 16 bytes of the CDB.
    pub const CDB: Field = 32..48;
    pub const DATA_SN: Field = 36..40;
    pub const EXP_DATA_SN: Field = 36..40;
    pub const R2T_SN: Field = 36..40;
    /// Login Response.
    pub const STATUS_CLASS: usize = 36;
    pub const STATUS_DETAIL: usize = 37;
    /// Asynchronous Message.
    pub const ASYNC_EVENT: usize = 36;
    pub const ASYNC_VCODE: usize = 37;
    pub const PARAMETER1: Field = 38..40;
    pub const PARAMETER2: Field = 40..42;
    pub const PARAMETER3: Field = 42..44;
    pub const BUFFER_OFFSET: Field = 40..44;
    pub const BIDI_RESIDUAL: Field = 40..44;
    /// SNACK Request.
    pub const BEG_RUN: Field = 40..44;
    /// Logout Response.
    pub const TIME2WAIT: Field = 40..42;
    pub const TIME2RETAIN: Field = 42..44;
    pub const RESIDUAL: Field = 44..48;
    /// R2T.
    pub const DESIRED_DATA_LEN: Field = 44..48;
    /// SNACK Request.
    pub const RUN_LENGTH: Field = 44..48;
}

/// Bits of byte 0 ([`field::OPCODE`]) and of the flags byte ([`field::FLAGS`]).
pub mod flag {
    // Byte 0.
    pub const IMMEDIATE: u8 = 0x40;
    pub const OPCODE: u8 = 0x3f;
    // Byte 1.
    pub const FINAL: u8 = 0x80;
    /// Login: T (transit).
    pub const TRANSIT: u8 = 0x80;
    /// Login, Text: C (continue).
    pub const CONTINUE: u8 = 0x40;
    /// SCSI Command: R, W, task attribute.
    pub const READ: u8 = 0x40;
    pub const WRITE: u8 = 0x20;
    pub const ATTR: u8 = 0x07;
    /// Data-In: A (acknowledge).
    pub const ACK: u8 = 0x40;
    /// SCSI Response and Data-In: o, u, O, U, and Data-In's S (status present).
    pub const BIDI_OVERFLOW: u8 = 0x10;
    pub const BIDI_UNDERFLOW: u8 = 0x08;
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
    pub const STATUS: u8 = 0x01;
    /// Task Management function, Logout reason code.
    pub const FUNCTION: u8 = 0x7f;
    pub const SNACK_TYPE: u8 = 0x0f;
    /// Login: CSG (bits 3-2) and NSG (bits 1-0).
    pub const STAGE: u8 = 0x03;
    pub const CSG_SHIFT: u8 = 2;
}

use field::Field;

/// `N` bytes of `b` from `at` (every caller names a field inside the 48-byte header; outside
/// it, zeros).
#[inline]
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b.get(at..)
        .and_then(|s| s.first_chunk::<N>())
        .copied()
        .unwrap_or([0; N])
}
#[inline]
fn get16(b: &[u8; BHS_LEN], f: Field) -> u16 {
    u16::from_be_bytes(bytes_at(b, f.start))
}
#[inline]
fn get24(b: &[u8; BHS_LEN], f: Field) -> u32 {
    let [x, y, z] = bytes_at(b, f.start);
    u32::from_be_bytes([0, x, y, z])
}
#[inline]
fn get32(b: &[u8; BHS_LEN], f: Field) -> u32 {
    u32::from_be_bytes(bytes_at(b, f.start))
}
#[inline]
fn get64(b: &[u8; BHS_LEN], f: Field) -> u64 {
    u64::from_be_bytes(bytes_at(b, f.start))
}
/// Write `v` at `at` (a field inside the header; outside it, nothing).
#[inline]
fn put<const N: usize>(b: &mut [u8], at: usize, v: [u8; N]) {
    if let Some(d) = b.get_mut(at..).and_then(|s| s.first_chunk_mut::<N>()) {
        *d = v;
    }
}
#[inline]
fn set16(b: &mut [u8; BHS_LEN], f: Field, v: u16) {
    put(b, f.start, v.to_be_bytes());
}
#[inline]
fn set32(b: &mut [u8; BHS_LEN], f: Field, v: u32) {
    put(b, f.start, v.to_be_bytes());
}
#[inline]
fn set64(b: &mut [u8; BHS_LEN], f: Field, v: u64) {
    put(b, f.start, v.to_be_bytes());
}

/// Fields common to the BHS of every PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub opcode: Opcode,
    pub immediate: bool,
    pub total_ahs_words: u8,
    pub data_len: u32,
    pub itt: u32,
}

/// Read the fields every PDU has. Never fails: every byte pattern is some header.
pub fn common(b: &[u8; BHS_LEN]) -> Common {
    Common {
        opcode: Opcode(b[field::OPCODE] & flag::OPCODE),
        immediate: b[field::OPCODE] & flag::IMMEDIATE != 0,
        total_ahs_words: b[field::TOTAL_AHS_LEN],
        data_len: get24(b, field::DATA_SEGMENT_LEN),
        itt: get32(b, field::ITT),
    }
}

/// Set the DataSegmentLength and TotalAHSLength of an emitted header.
pub fn set_lengths(b: &mut [u8; BHS_LEN], ahs_words: u8, data_len: u32) {
    b[field::TOTAL_AHS_LEN] = ahs_words;
    let [_, d @ ..] = data_len.to_be_bytes();
    put(b, field::DATA_SEGMENT_LEN.start, d);
}

// ---------------------------------------------------------------------------------------------
// Initiator -> target PDUs.

/// NOP-Out (§11.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Command (§11.3). `cdb` holds the first 16 bytes; `ext_cdb` the rest from an Extended
/// CDB AHS (empty when absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
    pub ext_cdb: Vec<u8>,
    /// Expected bidirectional read data length, from a Bidirectional Read AHS.
    pub bidi_read_len: Option<u32>,
}

impl ScsiCommand {
    /// Copy the whole CDB into `buf`, returning the used part (an extension longer than
    /// `buf` has room for, which parsing refuses, is cut).
    pub fn full_cdb<'a>(&self, buf: &'a mut [u8; MAX_CDB_LEN]) -> &'a [u8] {
        let (head, tail) = buf.split_at_mut(16);
        head.copy_from_slice(&self.cdb);
        let n = self.ext_cdb.len().min(tail.len());
        for (d, s) in tail.iter_mut().zip(&self.ext_cdb) {
            *d = *s;
        }
        buf.get(..16 + n).unwrap_or_default()
    }
}

/// Task Management Function Request (§11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (§11.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request (§11.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out (§11.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout Request (§11.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (§11.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snack {
    pub kind: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

// ---------------------------------------------------------------------------------------------
// Target -> initiator PDUs.

/// NOP-In (§11.19).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Response (§11.4). The data segment carries SenseLength + sense data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

/// Task Management Function Response (§11.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Response (§11.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Text Response (§11.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-In (§11.8). `status` is meaningful only with `status_present` (S bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub status_present: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

/// Logout Response (§11.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (§11.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// Asynchronous Message (§11.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

/// Reject (§11.17). The data segment carries the complete header of the rejected PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// Any PDU header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    Snack(Snack),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

/// AHS types (§11.2.2).
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LEN: u8 = 2;

impl Bhs {
    /// Parse a header and its additional header segments (already cut off the stream).
    pub fn parse(b: &[u8; BHS_LEN], ahs: &[u8]) -> Result<Bhs, WireError> {
        let c = common(b);
        let f = b[field::FLAGS] & flag::FINAL != 0;
        let lun = get64(b, field::LUN);
        let itt = c.itt;
        let pdu = match c.opcode {
            Opcode::NOP_OUT => Bhs::NopOut(NopOut {
                immediate: c.immediate,
                lun,
                itt,
                ttt: get32(b, field::TTT),
                cmd_sn: get32(b, field::CMD_SN),
                exp_stat_sn: get32(b, field::EXP_STAT_SN),
            }),
            Opcode::SCSI_COMMAND => {
                let cdb: [u8; 16] = bytes_at(b, field::CDB.start);
                let mut cmd = ScsiCommand {
                    immediate: c.immediate,
                    final_: f,
                    read: b[field::FLAGS] & flag::READ != 0,
                    write: b[field::FLAGS] & flag::WRITE != 0,
                    attr: b[field::FLAGS] & flag::ATTR,
                    lun,
                    itt,
                    expected_len: get32(b, field::EXPECTED_DATA_LEN),
                    cmd_sn: get32(b, field::CMD_SN),
                    exp_stat_sn: get32(b, field::EXP_STAT_SN),
                    cdb,
                    ext_cdb: Vec::new(),
                    bidi_read_len: None,
                };
                parse_ahs(ahs, &mut cmd)?;
                Bhs::ScsiCommand(cmd)
            }
            Opcode::TASK_MGMT_REQUEST => Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: c.immediate,
                function: b[field::FLAGS] & flag::FUNCTION,
                lun,
                itt,
                referenced_tt: get32(b, field::REFERENCED_TASK_TAG),
                cmd_sn: get32(b, field::CMD_SN),
                exp_stat_sn: get32(b, field::EXP_STAT_SN),
                ref_cmd_sn: get32(b, field::REF_CMD_SN),
                exp_data_sn: get32(b, field::EXP_DATA_SN),
            }),
            Opcode::LOGIN_REQUEST => {
                let isid: [u8; 6] = bytes_at(b, field::ISID.start);
                Bhs::LoginRequest(LoginRequest {
                    transit: f,
                    cont: b[field::FLAGS] & flag::CONTINUE != 0,
                    csg: (b[field::FLAGS] >> flag::CSG_SHIFT) & flag::STAGE,
                    nsg: b[field::FLAGS] & flag::STAGE,
                    version_max: b[field::VERSION_MAX],
                    version_min: b[field::VERSION_MIN],
                    isid,
                    tsih: get16(b, field::TSIH),
                    itt,
                    cid: get16(b, field::CID),
                    cmd_sn: get32(b, field::CMD_SN),
                    exp_stat_sn: get32(b, field::EXP_STAT_SN),
                })
            }
            Opcode::TEXT_REQUEST => Bhs::TextRequest(TextRequest {
                immediate: c.immediate,
                final_: f,
                cont: b[field::FLAGS] & flag::CONTINUE != 0,
                lun,
                itt,
                ttt: get32(b, field::TTT),
                cmd_sn: get32(b, field::CMD_SN),
                exp_stat_sn: get32(b, field::EXP_STAT_SN),
            }),
            Opcode::DATA_OUT => Bhs::DataOut(DataOut {
                final_: f,
                lun,
                itt,
                ttt: get32(b, field::TTT),
                exp_stat_sn: get32(b, field::EXP_STAT_SN),
                data_sn: get32(b, field::DATA_SN),
                buffer_offset: get32(b, field::BUFFER_OFFSET),
            }),
            Opcode::LOGOUT_REQUEST => Bhs::LogoutRequest(LogoutRequest {
                immediate: c.immediate,
                reason: b[field::FLAGS] & flag::FUNCTION,
                itt,
                cid: get16(b, field::CID),
                cmd_sn: get32(b, field::CMD_SN),
                exp_stat_sn: get32(b, field::EXP_STAT_SN),
            }),
            Opcode::SNACK_REQUEST => Bhs::Snack(Snack {
                kind: b[field::FLAGS] & flag::SNACK_TYPE,
                lun,
                itt,
                ttt: get32(b, field::TTT),
                exp_stat_sn: get32(b, field::EXP_STAT_SN),
                beg_run: get32(b, field::BEG_RUN),
                run_length: get32(b, field::RUN_LENGTH),
            }),
            Opcode::NOP_IN => Bhs::NopIn(NopIn {
                lun,
                itt,
                ttt: get32(b, field::TTT),
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
            }),
            Opcode::SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: b[field::FLAGS] & flag::BIDI_OVERFLOW != 0,
                bidi_underflow: b[field::FLAGS] & flag::BIDI_UNDERFLOW != 0,
                overflow: b[field::FLAGS] & flag::OVERFLOW != 0,
                underflow: b[field::FLAGS] & flag::UNDERFLOW != 0,
                response: b[field::RESPONSE],
                status: b[field::STATUS],
                itt,
                snack_tag: get32(b, field::SNACK_TAG),
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
                exp_data_sn: get32(b, field::EXP_DATA_SN),
                bidi_residual: get32(b, field::BIDI_RESIDUAL),
                residual: get32(b, field::RESIDUAL),
            }),
            Opcode::TASK_MGMT_RESPONSE => Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: b[field::RESPONSE],
                itt,
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
            }),
            Opcode::LOGIN_RESPONSE => {
                let isid: [u8; 6] = bytes_at(b, field::ISID.start);
                Bhs::LoginResponse(LoginResponse {
                    transit: f,
                    cont: b[field::FLAGS] & flag::CONTINUE != 0,
                    csg: (b[field::FLAGS] >> flag::CSG_SHIFT) & flag::STAGE,
                    nsg: b[field::FLAGS] & flag::STAGE,
                    version_max: b[field::VERSION_MAX],
                    version_active: b[field::VERSION_ACTIVE],
                    isid,
                    tsih: get16(b, field::TSIH),
                    itt,
                    stat_sn: get32(b, field::STAT_SN),
                    exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                    max_cmd_sn: get32(b, field::MAX_CMD_SN),
                    status_class: b[field::STATUS_CLASS],
                    status_detail: b[field::STATUS_DETAIL],
                })
            }
            Opcode::TEXT_RESPONSE => Bhs::TextResponse(TextResponse {
                final_: f,
                cont: b[field::FLAGS] & flag::CONTINUE != 0,
                lun,
                itt,
                ttt: get32(b, field::TTT),
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
            }),
            Opcode::DATA_IN => Bhs::DataIn(DataIn {
                final_: f,
                ack: b[field::FLAGS] & flag::ACK != 0,
                overflow: b[field::FLAGS] & flag::OVERFLOW != 0,
                underflow: b[field::FLAGS] & flag::UNDERFLOW != 0,
                status_present: b[field::FLAGS] & flag::STATUS != 0,
                // Without the S bit the status byte is reserved.
                status: if b[field::FLAGS] & flag::STATUS != 0 {
                    b[field::STATUS]
                } else {
                    0
                },
                lun,
                itt,
                ttt: get32(b, field::TTT),
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
                data_sn: get32(b, field::DATA_SN),
                buffer_offset: get32(b, field::BUFFER_OFFSET),
                residual: get32(b, field::RESIDUAL),
            }),
            Opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse(LogoutResponse {
                response: b[field::RESPONSE],
                itt,
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
                time2wait: get16(b, field::TIME2WAIT),
                time2retain: get16(b, field::TIME2RETAIN),
            }),
            Opcode::R2T => Bhs::R2t(R2t {
                lun,
                itt,
                ttt: get32(b, field::TTT),
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
                r2t_sn: get32(b, field::R2T_SN),
                buffer_offset: get32(b, field::BUFFER_OFFSET),
                desired_len: get32(b, field::DESIRED_DATA_LEN),
            }),
            Opcode::ASYNC_MESSAGE => Bhs::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
                event: b[field::ASYNC_EVENT],
                vcode: b[field::ASYNC_VCODE],
                param1: get16(b, field::PARAMETER1),
                param2: get16(b, field::PARAMETER2),
                param3: get16(b, field::PARAMETER3),
            }),
            Opcode::REJECT => Bhs::Reject(Reject {
                reason: b[field::REJECT_REASON],
                stat_sn: get32(b, field::STAT_SN),
                exp_cmd_sn: get32(b, field::EXP_CMD_SN),
                max_cmd_sn: get32(b, field::MAX_CMD_SN),
                data_sn: get32(b, field::DATA_SN),
            }),
            Opcode(other) => return Err(WireError::UnknownOpcode(other)),
        };
        Ok(pdu)
    }

    /// The opcode of this header.
    pub fn opcode(&self) -> Opcode {
        match self {
            Bhs::NopOut(_) => Opcode::NOP_OUT,
            Bhs::ScsiCommand(_) => Opcode::SCSI_COMMAND,
            Bhs::TaskMgmtRequest(_) => Opcode::TASK_MGMT_REQUEST,
            Bhs::LoginRequest(_) => Opcode::LOGIN_REQUEST,
            Bhs::TextRequest(_) => Opcode::TEXT_REQUEST,
            Bhs::DataOut(_) => Opcode::DATA_OUT,
            Bhs::LogoutRequest(_) => Opcode::LOGOUT_REQUEST,
            Bhs::Snack(_) => Opcode::SNACK_REQUEST,
            Bhs::NopIn(_) => Opcode::NOP_IN,
            Bhs::ScsiResponse(_) => Opcode::SCSI_RESPONSE,
            Bhs::TaskMgmtResponse(_) => Opcode::TASK_MGMT_RESPONSE,
            Bhs::LoginResponse(_) => Opcode::LOGIN_RESPONSE,
            Bhs::TextResponse(_) => Opcode::TEXT_RESPONSE,
            Bhs::DataIn(_) => Opcode::DATA_IN,
            Bhs::LogoutResponse(_) => Opcode::LOGOUT_RESPONSE,
            Bhs::R2t(_) => Opcode::R2T,
            Bhs::AsyncMessage(_) => Opcode::ASYNC_MESSAGE,
            Bhs::Reject(_) => Opcode::REJECT,
        }
    }

    /// Emit the 48-byte header with the given data segment length, and the AHS bytes (only a
    /// SCSI Command with an extended CDB or bidi read length has any).
    pub fn emit(&self, data_len: u32) -> ([u8; BHS_LEN], Vec<u8>) {
        let mut b = [0u8; BHS_LEN];
        let mut ahs = Vec::new();
        b[field::OPCODE] = self.opcode().0;
        let imm = |b: &mut [u8; BHS_LEN], i: bool| {
            if i {
                b[field::OPCODE] |= flag::IMMEDIATE
            }
        };
        let fbit = |x: bool| if x { flag::FINAL } else { 0 };
        let bit = |x: bool, m: u8| if x { m } else { 0 };
        match self {
            Bhs::NopOut(p) => {
                imm(&mut b, p.immediate);
                b[field::FLAGS] = flag::FINAL;
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::CMD_SN, p.cmd_sn);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Bhs::ScsiCommand(p) => {
                imm(&mut b, p.immediate);
                b[field::FLAGS] = fbit(p.final_)
                    | bit(p.read, flag::READ)
                    | bit(p.write, flag::WRITE)
                    | (p.attr & flag::ATTR);
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::EXPECTED_DATA_LEN, p.expected_len);
                set32(&mut b, field::CMD_SN, p.cmd_sn);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
                put(&mut b, field::CDB.start, p.cdb);
                if !p.ext_cdb.is_empty() {
                    let l = (p.ext_cdb.len() + 1) as u16;
                    ahs.extend_from_slice(&l.to_be_bytes());
                    ahs.push(AHS_EXTENDED_CDB);
                    ahs.push(0);
                    ahs.extend_from_slice(&p.ext_cdb);
                    while ahs.len() % 4 != 0 {
                        ahs.push(0);
                    }
                }
                if let Some(r) = p.bidi_read_len {
                    ahs.extend_from_slice(&5u16.to_be_bytes());
                    ahs.push(AHS_BIDI_READ_LEN);
                    ahs.push(0);
                    ahs.extend_from_slice(&r.to_be_bytes());
                }
            }
            Bhs::TaskMgmtRequest(p) => {
                imm(&mut b, p.immediate);
                b[field::FLAGS] = flag::FINAL | (p.function & flag::FUNCTION);
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::REFERENCED_TASK_TAG, p.referenced_tt);
                set32(&mut b, field::CMD_SN, p.cmd_sn);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
                set32(&mut b, field::REF_CMD_SN, p.ref_cmd_sn);
                set32(&mut b, field::EXP_DATA_SN, p.exp_data_sn);
            }
            Bhs::LoginRequest(p) => {
                b[field::OPCODE] |= flag::IMMEDIATE; // Login requests are always immediate.
                b[field::FLAGS] = fbit(p.transit)
                    | bit(p.cont, flag::CONTINUE)
                    | ((p.csg & flag::STAGE) << flag::CSG_SHIFT)
                    | (p.nsg & flag::STAGE);
                b[field::VERSION_MAX] = p.version_max;
                b[field::VERSION_MIN] = p.version_min;
                put(&mut b, field::ISID.start, p.isid);
                set16(&mut b, field::TSIH, p.tsih);
                set32(&mut b, field::ITT, p.itt);
                set16(&mut b, field::CID, p.cid);
                set32(&mut b, field::CMD_SN, p.cmd_sn);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Bhs::TextRequest(p) => {
                imm(&mut b, p.immediate);
                b[field::FLAGS] = fbit(p.final_) | bit(p.cont, flag::CONTINUE);
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::CMD_SN, p.cmd_sn);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Bhs::DataOut(p) => {
                b[field::FLAGS] = fbit(p.final_);
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
                set32(&mut b, field::DATA_SN, p.data_sn);
                set32(&mut b, field::BUFFER_OFFSET, p.buffer_offset);
            }
            Bhs::LogoutRequest(p) => {
                imm(&mut b, p.immediate);
                b[field::FLAGS] = flag::FINAL | (p.reason & flag::FUNCTION);
                set32(&mut b, field::ITT, p.itt);
                set16(&mut b, field::CID, p.cid);
                set32(&mut b, field::CMD_SN, p.cmd_sn);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
            }
            Bhs::Snack(p) => {
                b[field::FLAGS] = flag::FINAL | (p.kind & flag::SNACK_TYPE);
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::EXP_STAT_SN, p.exp_stat_sn);
                set32(&mut b, field::BEG_RUN, p.beg_run);
                set32(&mut b, field::RUN_LENGTH, p.run_length);
            }
            Bhs::NopIn(p) => {
                b[field::FLAGS] = flag::FINAL;
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
            }
            Bhs::ScsiResponse(p) => {
                b[field::FLAGS] = flag::FINAL
                    | bit(p.bidi_overflow, flag::BIDI_OVERFLOW)
                    | bit(p.bidi_underflow, flag::BIDI_UNDERFLOW)
                    | bit(p.overflow, flag::OVERFLOW)
                    | bit(p.underflow, flag::UNDERFLOW);
                b[field::RESPONSE] = p.response;
                b[field::STATUS] = p.status;
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::SNACK_TAG, p.snack_tag);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                set32(&mut b, field::EXP_DATA_SN, p.exp_data_sn);
                set32(&mut b, field::BIDI_RESIDUAL, p.bidi_residual);
                set32(&mut b, field::RESIDUAL, p.residual);
            }
            Bhs::TaskMgmtResponse(p) => {
                b[field::FLAGS] = flag::FINAL;
                b[field::RESPONSE] = p.response;
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
            }
            Bhs::LoginResponse(p) => {
                b[field::FLAGS] = fbit(p.transit)
                    | bit(p.cont, flag::CONTINUE)
                    | ((p.csg & flag::STAGE) << flag::CSG_SHIFT)
                    | (p.nsg & flag::STAGE);
                b[field::VERSION_MAX] = p.version_max;
                b[field::VERSION_ACTIVE] = p.version_active;
                put(&mut b, field::ISID.start, p.isid);
                set16(&mut b, field::TSIH, p.tsih);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                b[field::STATUS_CLASS] = p.status_class;
                b[field::STATUS_DETAIL] = p.status_detail;
            }
            Bhs::TextResponse(p) => {
                b[field::FLAGS] = fbit(p.final_) | bit(p.cont, flag::CONTINUE);
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
            }
            Bhs::DataIn(p) => {
                b[field::FLAGS] = fbit(p.final_)
                    | bit(p.ack, flag::ACK)
                    | bit(p.overflow, flag::OVERFLOW)
                    | bit(p.underflow, flag::UNDERFLOW)
                    | bit(p.status_present, flag::STATUS);
                if p.status_present {
                    b[field::STATUS] = p.status;
                }
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                set32(&mut b, field::DATA_SN, p.data_sn);
                set32(&mut b, field::BUFFER_OFFSET, p.buffer_offset);
                set32(&mut b, field::RESIDUAL, p.residual);
            }
            Bhs::LogoutResponse(p) => {
                b[field::FLAGS] = flag::FINAL;
                b[field::RESPONSE] = p.response;
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                set16(&mut b, field::TIME2WAIT, p.time2wait);
                set16(&mut b, field::TIME2RETAIN, p.time2retain);
            }
            Bhs::R2t(p) => {
                b[field::FLAGS] = flag::FINAL;
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, p.itt);
                set32(&mut b, field::TTT, p.ttt);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                set32(&mut b, field::R2T_SN, p.r2t_sn);
                set32(&mut b, field::BUFFER_OFFSET, p.buffer_offset);
                set32(&mut b, field::DESIRED_DATA_LEN, p.desired_len);
            }
            Bhs::AsyncMessage(p) => {
                b[field::FLAGS] = flag::FINAL;
                set64(&mut b, field::LUN, p.lun);
                set32(&mut b, field::ITT, RESERVED_TAG);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                b[field::ASYNC_EVENT] = p.event;
                b[field::ASYNC_VCODE] = p.vcode;
                set16(&mut b, field::PARAMETER1, p.param1);
                set16(&mut b, field::PARAMETER2, p.param2);
                set16(&mut b, field::PARAMETER3, p.param3);
            }
            Bhs::Reject(p) => {
                b[field::FLAGS] = flag::FINAL;
                b[field::REJECT_REASON] = p.reason;
                set32(&mut b, field::ITT, RESERVED_TAG);
                set32(&mut b, field::STAT_SN, p.stat_sn);
                set32(&mut b, field::EXP_CMD_SN, p.exp_cmd_sn);
                set32(&mut b, field::MAX_CMD_SN, p.max_cmd_sn);
                set32(&mut b, field::DATA_SN, p.data_sn);
            }
        }
        let words = (ahs.len() / 4) as u8;
        set_lengths(&mut b, words, data_len);
        (b, ahs)
    }
}

/// Walk the AHS list of a SCSI Command (§11.2.2). Each AHS is AHSLength (2 bytes: the length
/// of the AHS-Specific field that starts at byte 3, excluding padding), AHSType (1 byte), the
/// AHS-Specific field, then padding to a multiple of 4 bytes.
fn parse_ahs(mut ahs: &[u8], cmd: &mut ScsiCommand) -> Result<(), WireError> {
    while !ahs.is_empty() {
        let Some(&[l0, l1, kind, _]) = ahs.first_chunk::<4>() else {
            return Err(WireError::BadAhs);
        };
        let len = u16::from_be_bytes([l0, l1]) as usize;
        let kind = kind & 0x3f;
        // The AHS-specific field starts at byte 3 and is `len` bytes long.
        let body_end = 3 + len;
        let padded = body_end.div_ceil(4) * 4;
        let (Some(body), Some(rest)) = (ahs.get(3..body_end), ahs.get(padded..)) else {
            return Err(WireError::BadAhs);
        };
        if len == 0 {
            return Err(WireError::BadAhs);
        }
        // The first byte of each AHS-specific field is reserved.
        let field = body.get(1..).unwrap_or_default();
        match kind {
            AHS_EXTENDED_CDB => {
                // CDB bytes 16..
                if 16 + field.len() > MAX_CDB_LEN || !cmd.ext_cdb.is_empty() {
                    return Err(WireError::BadAhs);
                }
                cmd.ext_cdb = field.to_vec();
            }
            AHS_BIDI_READ_LEN => match field.first_chunk::<4>() {
                Some(v) if len == 5 => cmd.bidi_read_len = Some(u32::from_be_bytes(*v)),
                _ => return Err(WireError::BadAhs),
            },
            _ => return Err(WireError::BadAhs),
        }
        ahs = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; BHS_LEN] {
        let v: Vec<u8> = s
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// A Login Request as open-iscsi sends it first (captured layout, annotated).
    #[test]
    fn golden_login_request() {
        let b = hex("43 87 00 00 00 00 01 2c \
             00 02 3d 00 00 00 00 00 \
             00 00 00 00 00 00 00 00 \
             00 00 00 01 00 00 00 00 \
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
        // 43: I=1, opcode 0x03. 87: T=1 C=0 CSG=1 (operational) NSG=3 (full feature).
        // 00 00: version max/min. 00 00 01 2c: no AHS, data segment 300 bytes.
        // ISID 00 02 3d 00 00 00, TSIH 0. ITT 0. CID 0. CmdSN 1. ExpStatSN 0.
        let p = Bhs::parse(&b, &[]).unwrap();
        let Bhs::LoginRequest(l) = &p else {
            panic!("{p:?}")
        };
        assert!(l.transit && !l.cont);
        assert_eq!((l.csg, l.nsg), (1, 3));
        assert_eq!(l.isid, [0x00, 0x02, 0x3d, 0, 0, 0]);
        assert_eq!(l.cmd_sn, 1);
        assert_eq!(common(&b).data_len, 300);
        assert_eq!(p.emit(300).0, b);
    }

    /// A READ(10) of 8 blocks at LBA 0x1234, 4096 bytes expected.
    #[test]
    fn golden_scsi_command_read10() {
        let b = hex("01 c1 00 00 00 00 00 00 \
             00 00 00 00 00 00 00 00 \
             00 00 00 2a 00 00 10 00 \
             00 00 00 07 00 00 00 05 \
             28 00 00 00 12 34 00 00 08 00 00 00 00 00 00 00");
        // 01: SCSI Command. c1: F=1 R=1 W=0 ATTR=1 (simple). LUN 0. ITT 0x2a. EDTL 4096.
        // CmdSN 7, ExpStatSN 5, CDB 28 00 00001234 00 0008 00.
        let p = Bhs::parse(&b, &[]).unwrap();
        let Bhs::ScsiCommand(c) = &p else { panic!() };
        assert!(c.final_ && c.read && !c.write);
        assert_eq!(c.attr, 1);
        assert_eq!(c.itt, 0x2a);
        assert_eq!(c.expected_len, 4096);
        assert_eq!((c.cmd_sn, c.exp_stat_sn), (7, 5));
        assert_eq!(&c.cdb[..10], &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        assert_eq!(p.emit(0), (b, vec![]));
    }

    /// A final Data-In with status: 512 bytes at offset 8192, DataSN 2, GOOD, underflow 0.
    #[test]
    fn golden_data_in_with_status() {
        let p = Bhs::DataIn(DataIn {
            final_: true,
            ack: false,
            overflow: false,
            underflow: true,
            status_present: true,
            status: 0,
            lun: 0,
            itt: 9,
            ttt: RESERVED_TAG,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 131,
            data_sn: 2,
            buffer_offset: 8192,
            residual: 512,
        });
        let want = hex("25 83 00 00 00 00 02 00 \
             00 00 00 00 00 00 00 00 \
             00 00 00 09 ff ff ff ff \
             00 00 00 03 00 00 00 04 \
             00 00 00 83 00 00 00 02 00 00 20 00 00 00 02 00");
        assert_eq!(p.emit(512).0, want);
        assert_eq!(Bhs::parse(&want, &[]).unwrap(), p);
    }

    /// Login Response refusing with 02/03 (target not found).
    #[test]
    fn golden_login_response_refusal() {
        let p = Bhs::LoginResponse(LoginResponse {
            transit: false,
            cont: false,
            csg: 0,
            nsg: 0,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 1,
            stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            status_class: 2,
            status_detail: 3,
        });
        let want = hex("23 00 00 00 00 00 00 00 \
             80 00 00 00 00 01 00 00 \
             00 00 00 01 00 00 00 00 \
             00 00 00 00 00 00 00 01 \
             00 00 00 01 02 03 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(p.emit(0).0, want);
    }

    fn samples() -> Vec<Bhs> {
        vec![
            Bhs::NopOut(NopOut {
                immediate: true,
                lun: 1 << 48,
                itt: 1,
                ttt: RESERVED_TAG,
                cmd_sn: 2,
                exp_stat_sn: 3,
            }),
            Bhs::ScsiCommand(ScsiCommand {
                immediate: false,
                final_: true,
                read: true,
                write: true,
                attr: 2,
                lun: 0,
                itt: 5,
                expected_len: 65536,
                cmd_sn: 10,
                exp_stat_sn: 11,
                cdb: [0x7f, 0, 0, 0, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0],
                ext_cdb: (0..17).collect(),
                bidi_read_len: Some(4096),
            }),
            Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: 1,
                lun: 0,
                itt: 7,
                referenced_tt: 5,
                cmd_sn: 9,
                exp_stat_sn: 8,
                ref_cmd_sn: 4,
                exp_data_sn: 0,
            }),
            Bhs::LoginRequest(LoginRequest {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
                version_max: 0,
                version_min: 0,
                isid: [1, 2, 3, 4, 5, 6],
                tsih: 0,
                itt: 0,
                cid: 1,
                cmd_sn: 0,
                exp_stat_sn: 0,
            }),
            Bhs::TextRequest(TextRequest {
                immediate: true,
                final_: true,
                cont: false,
                lun: 0,
                itt: 3,
                ttt: RESERVED_TAG,
                cmd_sn: 4,
                exp_stat_sn: 5,
            }),
            Bhs::DataOut(DataOut {
                final_: true,
                lun: 0,
                itt: 5,
                ttt: 0x100,
                exp_stat_sn: 6,
                data_sn: 1,
                buffer_offset: 8192,
            }),
            Bhs::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: 0,
                itt: 9,
                cid: 0,
                cmd_sn: 12,
                exp_stat_sn: 13,
            }),
            Bhs::Snack(Snack {
                kind: 1,
                lun: 0,
                itt: 2,
                ttt: 3,
                exp_stat_sn: 4,
                beg_run: 5,
                run_length: 6,
            }),
            Bhs::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: 77,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
            }),
            Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: true,
                overflow: false,
                underflow: true,
                response: 0,
                status: 2,
                itt: 5,
                snack_tag: 0,
                stat_sn: 6,
                exp_cmd_sn: 7,
                max_cmd_sn: 8,
                exp_data_sn: 1,
                bidi_residual: 2,
                residual: 512,
            }),
            Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: 1,
                itt: 7,
                stat_sn: 8,
                exp_cmd_sn: 9,
                max_cmd_sn: 10,
            }),
            Bhs::LoginResponse(LoginResponse {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_active: 0,
                isid: [1, 2, 3, 4, 5, 6],
                tsih: 0x1234,
                itt: 0,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                status_class: 0,
                status_detail: 0,
            }),
            Bhs::TextResponse(TextResponse {
                final_: true,
                cont: false,
                lun: 0,
                itt: 3,
                ttt: RESERVED_TAG,
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
            }),
            Bhs::DataIn(DataIn {
                final_: false,
                ack: false,
                overflow: false,
                underflow: false,
                status_present: false,
                status: 0,
                lun: 0,
                itt: 5,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: 1,
                max_cmd_sn: 2,
                data_sn: 0,
                buffer_offset: 0,
                residual: 0,
            }),
            Bhs::LogoutResponse(LogoutResponse {
                response: 0,
                itt: 9,
                stat_sn: 14,
                exp_cmd_sn: 13,
                max_cmd_sn: 140,
                time2wait: 2,
                time2retain: 20,
            }),
            Bhs::R2t(R2t {
                lun: 0,
                itt: 5,
                ttt: 0x10,
                stat_sn: 6,
                exp_cmd_sn: 7,
                max_cmd_sn: 8,
                r2t_sn: 0,
                buffer_offset: 65536,
                desired_len: 262144,
            }),
            Bhs::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                event: 1,
                vcode: 0,
                param1: 0,
                param2: 2,
                param3: 20,
            }),
            Bhs::Reject(Reject {
                reason: reject_reason::PROTOCOL_ERROR,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn: 0,
            }),
        ]
    }

    #[test]
    fn every_pdu_round_trips() {
        let s = samples();
        assert_eq!(s.len(), 18, "one sample per opcode");
        for p in s {
            let (b, ahs) = p.emit(48);
            assert_eq!(common(&b).data_len, 48);
            assert_eq!(common(&b).total_ahs_words as usize * 4, ahs.len());
            assert_eq!(Bhs::parse(&b, &ahs).unwrap(), p, "{:?}", p.opcode());
        }
    }

    #[test]
    fn unknown_opcodes_and_bad_ahs_are_errors_not_panics() {
        for op in 0u8..0x40 {
            let mut b = [0u8; BHS_LEN];
            b[0] = op;
            let known = [
                0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
                0x26, 0x31, 0x32, 0x3f,
            ];
            assert_eq!(
                Bhs::parse(&b, &[]).is_ok(),
                known.contains(&op),
                "opcode {op:#x}"
            );
        }
        let mut b = [0u8; BHS_LEN];
        b[0] = Opcode::SCSI_COMMAND.0;
        // AHS length pointing past the end, zero length, unknown type, short header.
        for ahs in [
            &[0x00, 0x40, 0x01, 0x00][..],
            &[0x00, 0x00, 0x01, 0x00],
            &[0x00, 0x01, 0x09, 0x00],
            &[0x00, 0x05],
            &[0x00, 0x04, 0x02, 0x00, 0, 0, 0, 0],
        ] {
            assert_eq!(Bhs::parse(&b, ahs), Err(WireError::BadAhs), "{ahs:?}");
        }
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;
    use crate::wire::frame::{self, FrameLimits};
    use bytes::BytesMut;

    /// Inputs the fuzzers found (tests/regressions/pdu/*.bin; first byte = digest mode): each
    /// must frame and parse without panicking, and re-emit to the same header.
    #[test]
    fn fuzz_found_inputs_round_trip() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/regressions/pdu");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            let (&mode, rest) = data.split_first().unwrap();
            let lim = FrameLimits {
                max_data: 65536,
                header_digest: mode & 1 != 0,
                data_digest: mode & 2 != 0,
            };
            let mut buf = BytesMut::from(rest);
            while let Ok(Some(pdu)) = frame::decode(&mut buf, &lim) {
                if let Ok(bhs) = Bhs::parse(&pdu.bhs, &pdu.ahs) {
                    let (h, ahs) = bhs.emit(pdu.data.len() as u32);
                    assert_eq!(Bhs::parse(&h, &ahs), Ok(bhs));
                }
            }
            n += 1;
        }
        assert!(n > 0);
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// A SCSI Command (READ(10) of 8 blocks at LBA 0x1234, 4096 bytes expected), byte by byte.
    const SCSI_COMMAND: [u8; BHS_LEN] = [
        0x01, // opcode 0x01 (I bit clear)
        0xc1, // F, R, task attribute 1 (simple)
        0x00, 0x00, // reserved
        0x00, // TotalAHSLength
        0x00, 0x00, 0x00, // DataSegmentLength 0
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN (encoded LUN 1)
        0x00, 0x00, 0x00, 0x2a, // Initiator Task Tag 42
        0x00, 0x00, 0x10, 0x00, // Expected Data Transfer Length 4096
        0x00, 0x00, 0x00, 0x07, // CmdSN 7
        0x00, 0x00, 0x00, 0x05, // ExpStatSN 5
        0x28, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, // CDB: READ(10) LBA 0x1234,
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //      8 blocks, padded to 16
    ];

    /// A SCSI Data-In with status (phase collapse), byte by byte.
    const DATA_IN: [u8; BHS_LEN] = [
        0x25, // opcode 0x25
        0x83, // F, U (underflow), S (status present)
        0x00, // reserved
        0x00, // status GOOD
        0x00, // TotalAHSLength
        0x00, 0x02, 0x00, // DataSegmentLength 512
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN
        0x00, 0x00, 0x00, 0x2a, // Initiator Task Tag 42
        0xff, 0xff, 0xff, 0xff, // Target Transfer Tag (reserved)
        0x00, 0x00, 0x00, 0x09, // StatSN 9
        0x00, 0x00, 0x00, 0x08, // ExpCmdSN 8
        0x00, 0x00, 0x00, 0x87, // MaxCmdSN 135
        0x00, 0x00, 0x00, 0x03, // DataSN 3
        0x00, 0x00, 0x06, 0x00, // Buffer Offset 1536
        0x00, 0x00, 0x0e, 0x00, // Residual Count 3584
    ];

    fn scsi_command() -> ScsiCommand {
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: 1,
            lun: 0x0001_0000_0000_0000,
            itt: 42,
            expected_len: 4096,
            cmd_sn: 7,
            exp_stat_sn: 5,
            cdb,
            ext_cdb: Vec::new(),
            bidi_read_len: None,
        }
    }

    fn data_in() -> DataIn {
        DataIn {
            final_: true,
            ack: false,
            overflow: false,
            underflow: true,
            status_present: true,
            status: 0,
            lun: 0x0001_0000_0000_0000,
            itt: 42,
            ttt: RESERVED_TAG,
            stat_sn: 9,
            exp_cmd_sn: 8,
            max_cmd_sn: 135,
            data_sn: 3,
            buffer_offset: 1536,
            residual: 3584,
        }
    }

    #[test]
    fn scsi_command_matches_its_golden_bytes() {
        assert_eq!(
            Bhs::parse(&SCSI_COMMAND, &[]),
            Ok(Bhs::ScsiCommand(scsi_command()))
        );
        assert_eq!(
            Bhs::ScsiCommand(scsi_command()).emit(0),
            (SCSI_COMMAND, Vec::new())
        );
    }

    #[test]
    fn data_in_matches_its_golden_bytes() {
        assert_eq!(Bhs::parse(&DATA_IN, &[]), Ok(Bhs::DataIn(data_in())));
        assert_eq!(Bhs::DataIn(data_in()).emit(512), (DATA_IN, Vec::new()));
        let c = common(&DATA_IN);
        assert_eq!((c.opcode, c.data_len, c.itt), (Opcode::DATA_IN, 512, 42));
        assert_eq!(format!("{:?}", c.opcode), "Opcode(SCSI Data-In)");
        assert_eq!(format!("{:?}", Opcode(0x3e)), "Opcode(0x3e)");
    }
}
