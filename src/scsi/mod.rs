//! SCSI block commands (SPC-4 / SBC-3) over a [`BlockDevice`]: CDB in, outcome out.
//! Knows nothing of iSCSI; the iSCSI layer turns an [`Outcome`] into response PDUs.
//!
//! Flow for one command: the transport calls [`TargetLus::plan`] with the CDB to learn the data
//! direction and how many bytes the CDB itself asks to move (so it can collect Data-Out or size
//! Data-In), then [`TargetLus::execute`] with the Data-Out bytes (empty for reads).

use crate::store::BlockDevice;
use bytes::Bytes;
use std::sync::Arc;

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// The I_T nexus a command arrives on (one iSCSI session = one nexus).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Unique for the life of the process; never reused.
    pub id: u64,
    /// iSCSI initiator port name: `<initiator name>,i,0x<ISID as 12 hex digits>` (RFC 7143 §4.2.7).
    pub initiator_port: String,
    /// iSCSI target port name: `<target name>,t,0x<TPGT as 4 hex digits>`.
    pub target_port: String,
}

/// Direction of the data phase a CDB asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Device to initiator (Data-In).
    Read,
    /// Initiator to device (Data-Out).
    Write,
}

/// What a CDB asks to transfer, learned before any data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub dir: DataDir,
    /// Bytes the CDB itself describes (transfer length x block size, or allocation /
    /// parameter list length). The transport compares this with its expected length to compute
    /// residuals, and collects at most min(expected, this) bytes of Data-Out.
    pub bytes: u64,
}

/// Result of one command.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// SCSI status (see [`status`]).
    pub status: u8,
    /// Fixed-format sense data (SPC-4 §4.5.3), present with CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Data-In, possibly several segments (zero-copy slices of a base image).
    /// Never longer than the allocation / transfer length of the CDB.
    pub data: Vec<Bytes>,
}

/// Task management functions the transport forwards (RFC 7143 §11.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskMgmt {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
}

/// Identity strings and designators a logical unit reports in INQUIRY.
#[derive(Clone, Debug)]
pub struct LuIdentity {
    /// T10 vendor identification, at most 8 ASCII characters (padded with spaces on the wire).
    pub vendor: String,
    /// Product identification, at most 16 ASCII characters.
    pub product: String,
    /// Product revision, at most 4 ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD 0x80), printable ASCII.
    pub serial: String,
    /// A stable 64-bit identifier for the NAA designator (VPD 0x83), e.g. a hash of the target
    /// name; different targets must get different values.
    pub naa_id: u64,
}

/// One logical unit: a block device plus the SCSI state that goes with it (mode pages, unit
/// attentions, reservations).
pub struct LogicalUnit {
    dev: Arc<dyn BlockDevice>,
    ident: LuIdentity,
}

impl LogicalUnit {
    pub fn new(dev: Arc<dyn BlockDevice>, ident: LuIdentity) -> LogicalUnit {
        LogicalUnit { dev, ident }
    }
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }
    pub fn identity(&self) -> &LuIdentity {
        &self.ident
    }
}

/// The logical units of one target, by LUN.
pub struct TargetLus {
    luns: Vec<(u64, Arc<LogicalUnit>)>,
}

impl TargetLus {
    pub fn new(luns: Vec<(u64, Arc<LogicalUnit>)>) -> TargetLus {
        TargetLus { luns }
    }
    /// One logical unit at LUN 0.
    pub fn single(lu: Arc<LogicalUnit>) -> TargetLus {
        TargetLus::new(vec![(0, lu)])
    }
    pub fn get(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns.iter().find(|(l, _)| *l == lun).map(|(_, lu)| lu)
    }
    pub fn luns(&self) -> impl Iterator<Item = u64> + '_ {
        self.luns.iter().map(|(l, _)| *l)
    }
}
