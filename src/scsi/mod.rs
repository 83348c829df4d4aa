//! SCSI block commands (SPC-4 / SBC-3) over a [`BlockDevice`]: CDB in, outcome out.
//! Knows nothing of iSCSI; the iSCSI layer turns an [`Outcome`] into response PDUs.
//!
//! Flow for one command: the transport calls [`TargetLus::plan`] with the CDB to learn the data
//! direction and how many bytes the CDB itself asks to move (so it can collect Data-Out or size
//! Data-In), then [`TargetLus::execute`] with the Data-Out bytes (empty for reads).
//!
//! A logical unit whose device has an asynchronous path ([`AsyncBlockDevice`], Ceph RBD) offers
//! a second route for the data-transfer commands (READ, WRITE, WRITE AND VERIFY, SYNCHRONIZE
//! CACHE, WRITE SAME, UNMAP): [`TargetLus::start_async`] decodes and admits the command and
//! returns the device operation to run ([`AsyncIo`]); the transport runs it on the device's
//! asynchronous calls and hands the result to [`AsyncIo::finish`] for the outcome. No I/O
//! happens here. Every other command, and every command of a unit without that path, answers
//! [`Start::Blocking`]: run [`TargetLus::execute`] as before.
//!
//! Residuals (for the transport): Data-In is already cut to the CDB's allocation/transfer
//! length, so for reads compare the returned length with the expected length (MODE SENSE with
//! allocation length 4 returns 4 bytes and no overflow); for writes compare `plan.bytes` with
//! the expected length.
//!
//! Behaviour worth knowing:
//! - Unit attentions are per nexus: a new nexus gets POWER ON, RESET OR BUS DEVICE RESET
//!   OCCURRED (29h/00h) on its first command other than INQUIRY / REPORT LUNS / REQUEST SENSE
//!   (as tgt does; libiscsi and Linux clear it with TEST UNIT READY at login, iPXE retries).
//!   LOGICAL UNIT RESET reports 29h/03h and target resets 29h/00h to the nexuses other than
//!   the issuer (libiscsi's Reserve6.LUNReset sends its next command on the issuer); MODE
//!   SELECT changes report 2Ah/01h to the others; persistent reservation changes report
//!   2Ah/03h, 2Ah/04h, 2Ah/05h per SPC-4 §5.13.
//! - RESERVE(6)/RELEASE(6) are per nexus and dropped by resets and [`TargetLus::nexus_gone`];
//!   persistent reservations are keyed by [`Nexus::initiator_port`] and survive both.
//! - Sense data is always fixed format (D_SENSE=0), response code 70h.
//! - Files: [`sense`] (sense data), [`cdb`] (decoding and range checks), [`inquiry`] (standard
//!   and VPD pages), [`mode`] (mode pages), [`pr`] (persistent reservations), [`rsoc`]
//!   (REPORT SUPPORTED OPERATION CODES), `exec` (per-unit state and command execution).

use crate::store::{AsyncBlockDevice, BlockDevice, Segment, StoreError};

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};

pub mod cdb;
mod exec;
pub mod inquiry;
pub mod mode;
pub mod pr;
pub mod rsoc;
pub mod sense;

pub use sense::Sense;

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
    /// Executing it never waits for the disk: a plain READ through a device whose reads only
    /// slice memory it has mapped ([`BlockDevice::reads_from_memory`]; a page fault aside).
    /// The transport may run such a command on its own thread instead of a blocking pool.
    pub nonblocking: bool,
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
    pub data: Vec<Segment>,
}

/// What [`TargetLus::start_async`] decided for one command.
pub enum Start {
    /// Answered without touching the device (refused by the admission checks, a bad
    /// parameter list, or nothing to transfer).
    Done(Outcome),
    /// Run this operation on the device's asynchronous path, then [`AsyncIo::finish`].
    Io(AsyncIo),
    /// Not for the asynchronous path: run [`TargetLus::execute`] (off the executor).
    Blocking,
}

/// One device operation of a data-transfer command (byte offsets and lengths, inside the
/// device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOp {
    Read {
        offset: u64,
        len: usize,
    },
    /// WRITE, WRITE AND VERIFY: the whole blocks of the Data-Out that arrived.
    Write {
        offset: u64,
        data: Bytes,
        durable: bool,
    },
    /// SYNCHRONIZE CACHE.
    Flush,
    /// UNMAP's ranges, or WRITE SAME with the UNMAP bit or a pattern of zeros: each
    /// `(offset, len)` reads back as zeros afterwards (LBPRZ).
    Zero {
        ranges: Vec<(u64, u64)>,
    },
    /// WRITE SAME of one block's pattern over `[offset, offset + len)`.
    WriteSame {
        offset: u64,
        len: u64,
        pattern: Vec<u8>,
    },
}

impl DeviceOp {
    fn writes(&self) -> bool {
        !matches!(self, DeviceOp::Read { .. } | DeviceOp::Flush)
    }
}

/// A command admitted for the asynchronous path: the device, the operation, and (for writes)
/// a hold that keeps COMPARE AND WRITE and ORWRITE, which run on the blocking path, from
/// starting until this write is finished.
pub struct AsyncIo {
    device: Arc<dyn AsyncBlockDevice>,
    op: DeviceOp,
    _hold: Option<WriteHold>,
}

impl AsyncIo {
    /// The device to run [`AsyncIo::op`] on.
    pub fn device(&self) -> &Arc<dyn AsyncBlockDevice> {
        &self.device
    }
    pub fn op(&self) -> &DeviceOp {
        &self.op
    }
    /// The command's outcome from the device's result: the data read (a read), or GOOD, or
    /// CHECK CONDITION with the sense for the failure. Releases the write hold.
    pub fn finish(self, r: Result<Vec<u8>, StoreError>) -> Outcome {
        match r {
            Ok(data) if matches!(self.op, DeviceOp::Read { .. }) && !data.is_empty() => Outcome {
                status: status::GOOD,
                sense: None,
                data: vec![data.into()],
            },
            Ok(_) => Outcome::good(),
            Err(e) => exec::store_sense(&e).into(),
        }
    }
}

/// Writes of a logical unit in flight on the asynchronous path.
#[derive(Default)]
struct InFlight {
    writes: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    /// Count one more write, unless the unit's I/O lock is held exclusively (a COMPARE AND
    /// WRITE or ORWRITE is running): then `None`, and the caller takes the blocking path,
    /// which waits for the lock.
    fn hold(self: &Arc<Self>, io: &RwLock<()>) -> Option<WriteHold> {
        let _shared = io.try_read().ok()?;
        *self.writes.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Some(WriteHold(self.clone()))
    }
    /// Wait until no write is in flight (called with the I/O lock held exclusively, so none
    /// starts meanwhile).
    fn wait_idle(&self) {
        let mut n = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct WriteHold(Arc<InFlight>);

impl Drop for WriteHold {
    fn drop(&mut self) {
        let mut n = self.0.writes.lock().unwrap_or_else(PoisonError::into_inner);
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
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
///
/// Locking: per-nexus and reservation state sits behind one mutex that the common READ/WRITE
/// path does not take: while no reservation exists, the medium is present, and the command
/// comes from the nexus that last passed the full admission check and has no unit attention
/// pending, commands go straight to the device (one atomic load of `fast_nexus`). Writes take
/// `io` shared; COMPARE AND WRITE and ORWRITE take it exclusive, which makes them atomic
/// against every other write.
pub struct LogicalUnit {
    dev: Arc<dyn BlockDevice>,
    /// The same device's asynchronous path, when it has one.
    aio: Option<Arc<dyn AsyncBlockDevice>>,
    /// Its writes in flight (see [`AsyncIo`]).
    in_flight: Arc<InFlight>,
    ident: LuIdentity,
    removable: bool,
    state: Mutex<exec::LuState>,
    /// Id of the nexus allowed to skip the state lock, or `exec::NO_FAST_NEXUS`.
    fast_nexus: AtomicU64,
    /// Write cache enabled (caching mode page); false makes every write durable.
    wce: AtomicBool,
    io: RwLock<()>,
}

impl LogicalUnit {
    pub fn new(dev: Arc<dyn BlockDevice>, ident: LuIdentity) -> LogicalUnit {
        LogicalUnit {
            dev,
            aio: None,
            in_flight: Arc::default(),
            ident,
            removable: false,
            state: Mutex::new(exec::LuState::default()),
            fast_nexus: AtomicU64::new(exec::NO_FAST_NEXUS),
            wce: AtomicBool::new(mode::ModeParams::default().wce),
            io: RwLock::new(()),
        }
    }
    /// Report removable medium (INQUIRY RMB=1): START STOP UNIT with LOEJ ejects and loads,
    /// PREVENT ALLOW MEDIUM REMOVAL is honoured. Off by default (a boot disk is not removable).
    pub fn with_removable(mut self, removable: bool) -> LogicalUnit {
        self.removable = removable;
        self
    }
    /// Serve the data-transfer commands through `aio`, the asynchronous path of the same
    /// device ([`TargetLus::start_async`]).
    pub fn with_async(mut self, aio: Arc<dyn AsyncBlockDevice>) -> LogicalUnit {
        self.aio = Some(aio);
        self
    }
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }
    pub fn identity(&self) -> &LuIdentity {
        &self.ident
    }
    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.dev.size() / crate::store::SECTOR
    }
}

/// The logical units of one target, by LUN.
///
/// LUNs are plain numbers (0..16383 are encoded with SAM peripheral/flat addressing in REPORT
/// LUNS; larger values are reported as their 8-byte big-endian form).
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

    /// Direction and byte count the CDB asks for, and whether executing it may block.
    /// Err(outcome) = CHECK CONDITION to return
    /// before any data phase (invalid opcode, invalid field in CDB, LBA out of range, LUN not
    /// supported, write protected, ...).
    pub fn plan(&self, lun: u64, cdb: &[u8]) -> Result<Plan, Outcome> {
        match self.get(lun) {
            Some(lu) => lu.plan(cdb),
            None => exec::plan_no_lun(cdb),
        }
    }

    /// Run the command. Blocking (does file I/O).
    ///
    /// `data_out` is the Data-Out the transport collected. When it is shorter than
    /// `plan.bytes` (the initiator's expected length was smaller): block-data commands (WRITE,
    /// WRITE AND VERIFY, VERIFY with BYTCHK, ORWRITE) process the whole blocks that arrived and
    /// return GOOD (the transport reports the overflow residual); WRITE SAME and COMPARE AND
    /// WRITE need their complete data and fail with INVALID FIELD IN CDB; parameter lists
    /// (MODE SELECT, UNMAP, PERSISTENT RESERVE OUT) are parsed as far as they go and a
    /// truncated structure is PARAMETER LIST LENGTH ERROR. Bytes beyond `plan.bytes` are ignored.
    /// Data-In is never longer than `plan.bytes`.
    pub fn execute(&self, nexus: &Nexus, lun: u64, cdb: &[u8], data_out: &[u8]) -> Outcome {
        if cdb.first() == Some(&cdb::op::REPORT_LUNS) {
            return exec::report_luns(self, cdb);
        }
        match self.get(lun) {
            Some(lu) => lu.execute(nexus, cdb, data_out),
            None => exec::execute_no_lun(cdb),
        }
    }

    /// Decode and admit a command for the unit's asynchronous device path (module doc):
    /// [`Start::Io`] for READ, WRITE, WRITE AND VERIFY, SYNCHRONIZE CACHE, WRITE SAME and UNMAP
    /// on a unit that has one, [`Start::Done`] when the command is answered without the device,
    /// [`Start::Blocking`] for everything else. `data_out` as for [`TargetLus::execute`].
    pub fn start_async(&self, nexus: &Nexus, lun: u64, cdb: &[u8], data_out: &Bytes) -> Start {
        if cdb.first() == Some(&cdb::op::REPORT_LUNS) {
            return Start::Blocking;
        }
        match self.get(lun) {
            Some(lu) => lu.start_async(nexus, cdb, data_out),
            None => Start::Blocking,
        }
    }

    /// Task management effects on SCSI state (unit attentions, reservations, ...). Returns
    /// true if the function is supported for that LUN.
    pub fn task_mgmt(&self, nexus: &Nexus, lun: u64, f: TaskMgmt) -> bool {
        match f {
            TaskMgmt::TargetWarmReset | TaskMgmt::TargetColdReset => {
                for (_, lu) in &self.luns {
                    lu.task_mgmt(nexus, f);
                }
                true
            }
            _ => match self.get(lun) {
                Some(lu) => lu.task_mgmt(nexus, f),
                None => false,
            },
        }
    }

    /// The nexus is gone (session closed): drop per-nexus state (pending unit attentions,
    /// RESERVE(6) held by it, medium removal prevention) but not persistent reservation
    /// registrations.
    pub fn nexus_gone(&self, nexus: &Nexus) {
        for (_, lu) in &self.luns {
            lu.nexus_gone(nexus);
        }
    }
}

#[cfg(test)]
mod tests;
