//! Command execution for one logical unit: unit attentions, reservations, and the SPC/SBC
//! commands over the [`BlockDevice`](crate::store::BlockDevice).

use super::cdb::{self, Command, Extent, op};
use super::inquiry::{self, VpdContext};
use super::mode::{self, ModeParams};
use super::pr::{Access, PrError, PrState, ProutParams};
use super::sense::{Sense, asc, key};
use super::{
    AsyncIo, DataDir, DeviceOp, LogicalUnit, LuIdentity, Nexus, Outcome, Plan, Start, TargetLus,
    TaskMgmt, rsoc,
};
use crate::store::{SECTOR, Segment, StoreError};
use bytes::Bytes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

/// Unit attentions queued per nexus at most; older ones are dropped beyond this.
const MAX_PENDING_UA: usize = 16;
/// GET LBA STATUS examines at most this many blocks (1 MiB) per command.
const LBA_STATUS_SCAN_BLOCKS: u64 = 2048;
/// GET LBA STATUS returns at most this many descriptors.
const LBA_STATUS_MAX_DESCRIPTORS: usize = 64;
/// WRITE SAME writes its pattern in chunks of this many blocks (1 MiB).
const WRITE_SAME_CHUNK_BLOCKS: u64 = 2048;

struct NexusState {
    port: String,
    ua: VecDeque<asc::Code>,
}

/// Mutable SCSI state of one logical unit (behind `LogicalUnit::state`).
pub(super) struct LuState {
    nexuses: HashMap<u64, NexusState>,
    /// Nexus holding a RESERVE(6) reservation.
    reserve6: Option<u64>,
    pr: PrState,
    mode: ModeParams,
    /// Nexuses preventing medium removal (removable units only).
    prevent: HashSet<u64>,
    /// Medium present (removable units can eject it).
    loaded: bool,
    /// The nexus that last passed the full admission checks.
    last: Option<u64>,
}

/// `LogicalUnit::fast_nexus` value when no nexus may skip the state lock.
pub(super) const NO_FAST_NEXUS: u64 = u64::MAX;

impl Default for LuState {
    fn default() -> Self {
        LuState {
            nexuses: HashMap::new(),
            reserve6: None,
            pr: PrState::default(),
            mode: ModeParams::default(),
            prevent: HashSet::new(),
            loaded: true,
            last: None,
        }
    }
}

impl LuState {
    fn post(ua: &mut VecDeque<asc::Code>, code: asc::Code) {
        if code.0 == asc::POWER_ON_RESET.0 {
            // A reset supersedes every other pending unit attention.
            ua.clear();
        }
        if !ua.contains(&code) {
            if ua.len() >= MAX_PENDING_UA {
                ua.pop_front();
            }
            ua.push_back(code);
        }
    }
    fn post_others(&mut self, except: u64, code: asc::Code) {
        for (id, n) in self.nexuses.iter_mut() {
            if *id != except {
                Self::post(&mut n.ua, code);
            }
        }
    }
    fn post_port(&mut self, port: &str, code: asc::Code) {
        for n in self.nexuses.values_mut().filter(|n| n.port == port) {
            Self::post(&mut n.ua, code);
        }
    }
    /// The nexus that may skip the state lock: the one most recently admitted, while no
    /// reservation exists, the medium is present and it has no unit attention pending.
    fn fast_nexus(&self) -> u64 {
        let restricted = !self.loaded || self.reserve6.is_some() || self.pr.reserved();
        match self.last {
            Some(id) if !restricted && self.nexuses.get(&id).is_some_and(|n| n.ua.is_empty()) => id,
            _ => NO_FAST_NEXUS,
        }
    }
}

/// How a command interacts with RESERVE(6) held by another nexus: true = allowed.
fn allowed_under_reserve6(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::RequestSense { .. }
            | Command::Release6
            | Command::TestUnitReady
            | Command::ReportSupportedOpcodes { .. }
            | Command::ReadCapacity10
            | Command::ReadCapacity16 { .. }
            | Command::PreventAllow { prevent: false }
    )
}

/// Reservation class of a command (SPC-4 table 72, SBC-3 table 13).
fn access(cmd: &Command) -> Access {
    use Command as C;
    match cmd {
        C::Read { .. }
        | C::Verify { .. }
        | C::PreFetch { .. }
        | C::ModeSense { .. }
        | C::GetLbaStatus { .. }
        | C::ReadDefectData { .. } => Access::Read,
        C::Write { .. }
        | C::WriteVerify { .. }
        | C::WriteSame { .. }
        | C::Unmap { .. }
        | C::CompareAndWrite { .. }
        | C::OrWrite { .. }
        | C::SyncCache
        | C::ModeSelect { .. }
        | C::StartStop { .. }
        | C::PreventAllow { prevent: true } => Access::Write,
        _ => Access::Allowed,
    }
}

/// Commands that need the medium (NOT READY / MEDIUM NOT PRESENT while ejected).
fn needs_medium(cmd: &Command) -> bool {
    use Command as C;
    matches!(
        cmd,
        C::TestUnitReady
            | C::ReadCapacity10
            | C::ReadCapacity16 { .. }
            | C::Read { .. }
            | C::Write { .. }
            | C::WriteVerify { .. }
            | C::Verify { .. }
            | C::PreFetch { .. }
            | C::SyncCache
            | C::WriteSame { .. }
            | C::Unmap { .. }
            | C::CompareAndWrite { .. }
            | C::OrWrite { .. }
            | C::GetLbaStatus { .. }
            | C::ReadDefectData { .. }
    )
}

fn writes_medium(cmd: &Command) -> bool {
    use Command as C;
    matches!(
        cmd,
        C::Write { .. }
            | C::WriteVerify { .. }
            | C::WriteSame { .. }
            | C::Unmap { .. }
            | C::CompareAndWrite { .. }
            | C::OrWrite { .. }
    )
}

fn plan_of(cmd: &Command) -> Plan {
    use Command as C;
    let (dir, bytes) = match *cmd {
        C::Read { ext } => (DataDir::Read, ext.bytes()),
        C::Write { ext, .. } | C::WriteVerify { ext } | C::OrWrite { ext, .. } => {
            (DataDir::Write, ext.bytes())
        }
        C::Verify { ext, bytchk: 1 } => (DataDir::Write, ext.bytes()),
        C::Verify { ext, bytchk: 3 } => (DataDir::Write, if ext.blocks > 0 { SECTOR } else { 0 }),
        C::WriteSame { ndob: false, .. } => (DataDir::Write, SECTOR),
        C::Unmap { param_len } => (DataDir::Write, param_len as u64),
        C::CompareAndWrite { ext, .. } => (DataDir::Write, 2 * ext.bytes()),
        C::ModeSelect { param_len, .. } | C::PrOut { param_len, .. } => {
            (DataDir::Write, param_len as u64)
        }
        C::RequestSense { alloc }
        | C::Inquiry { alloc, .. }
        | C::ReportLuns { alloc }
        | C::ReadCapacity16 { alloc }
        | C::GetLbaStatus { alloc, .. }
        | C::ModeSense { alloc, .. }
        | C::PrIn { alloc, .. }
        | C::ReportSupportedOpcodes { alloc, .. }
        | C::ReadDefectData { alloc, .. } => (DataDir::Read, alloc as u64),
        C::ReadCapacity10 => (DataDir::Read, 8),
        _ => (DataDir::None, 0),
    };
    if bytes == 0 {
        Plan {
            dir: DataDir::None,
            bytes: 0,
            nonblocking: false,
        }
    } else {
        Plan {
            dir,
            bytes,
            nonblocking: false,
        }
    }
}

pub(super) fn store_sense(e: &StoreError) -> Sense {
    if let StoreError::NoSpace(_) | StoreError::QuotaExceeded { .. } = e {
        // Thin provisioning's answer (SBC-4 4.7.3.6): Linux turns it into ENOSPC for the
        // file system above, not an I/O error on a failing disk. The device logs it.
        return Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED);
    }
    if let StoreError::BaseChanged(_) = e {
        // Every read and write of the disk fails alike; the base logged why, once.
        return Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR);
    }
    tracing::warn!(error = %e, "block device I/O failed");
    match e {
        StoreError::OutOfRange { .. } => Sense::lba_out_of_range(),
        StoreError::ReadOnly => Sense::write_protected(),
        StoreError::Reading(_) => Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR),
        StoreError::Writing(_) | StoreError::Flushing(_) | StoreError::Discarding(_) => {
            Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR)
        }
        _ => Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE),
    }
}

fn io(r: Result<(), StoreError>) -> Outcome {
    match r {
        Ok(()) => Outcome::good(),
        Err(e) => store_sense(&e).into(),
    }
}

/// WRITE SAME's one-block pattern from its Data-Out (INVALID FIELD IN CDB when it is short).
fn same_pattern(ext: Extent, data: &[u8]) -> Result<&[u8], Outcome> {
    if data.len() >= SECTOR as usize {
        Ok(&data[..SECTOR as usize])
    } else {
        Err(Sense::invalid_cdb(if ext.blocks > 0xFFFF { 10 } else { 7 }, None).into())
    }
}

/// First differing byte between `segs` (device data) and `want`, as an offset.
fn first_difference(segs: &[Segment], want: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    for s in segs {
        let n = s.len().min(want.len().saturating_sub(at));
        if let Some(i) = s[..n]
            .iter()
            .zip(&want[at..at + n])
            .position(|(a, b)| a != b)
        {
            return Some((at + i) as u64);
        }
        at += n;
    }
    None
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl LogicalUnit {
    fn lock(&self) -> MutexGuard<'_, LuState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publish which nexus may take the lock-free path (call after every state change).
    fn publish_fast_path(&self, st: &LuState) {
        self.fast_nexus.store(st.fast_nexus(), Ordering::Release);
    }

    fn decode(&self, cdb: &[u8]) -> Result<Command, Sense> {
        let cmd = cdb::parse(cdb, self.blocks())?;
        if writes_medium(&cmd) && self.dev.read_only() {
            return Err(Sense::write_protected());
        }
        Ok(cmd)
    }

    pub(super) fn plan(&self, cdb: &[u8]) -> Result<Plan, Outcome> {
        let cmd = self.decode(cdb)?;
        let mut plan = plan_of(&cmd);
        plan.nonblocking = plan.dir == DataDir::Read
            && matches!(cmd, Command::Read { .. })
            && self.dev.reads_from_memory();
        Ok(plan)
    }

    /// Unit attention, medium and reservation checks that need the state lock.
    fn gate(&self, nexus: &Nexus, cmd: &Command) -> Result<(), Outcome> {
        let mut st = self.lock();
        let reports_ua = !matches!(
            cmd,
            Command::Inquiry { .. } | Command::ReportLuns { .. } | Command::RequestSense { .. }
        );
        let ns = st.nexuses.entry(nexus.id).or_insert_with(|| NexusState {
            port: nexus.initiator_port.clone(),
            ua: VecDeque::from([asc::POWER_ON_RESET]),
        });
        if reports_ua && let Some(code) = ns.ua.pop_front() {
            self.publish_fast_path(&st);
            return Err(Sense::unit_attention(code).into());
        }
        if !st.loaded && needs_medium(cmd) {
            return Err(Sense::new(key::NOT_READY, asc::MEDIUM_NOT_PRESENT).into());
        }
        if let Some(holder) = st.reserve6
            && holder != nexus.id
            && !allowed_under_reserve6(cmd)
        {
            return Err(Outcome::reservation_conflict());
        }
        if st.pr.conflicts(&nexus.initiator_port, access(cmd)) {
            return Err(Outcome::reservation_conflict());
        }
        st.last = Some(nexus.id);
        self.publish_fast_path(&st);
        Ok(())
    }

    pub(super) fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Outcome {
        let cmd = match self.decode(cdb) {
            Ok(c) => c,
            Err(s) => return s.into(),
        };
        let fast = nexus.id != NO_FAST_NEXUS && self.fast_nexus.load(Ordering::Acquire) == nexus.id;
        if !fast && let Err(o) = self.gate(nexus, &cmd) {
            return o;
        }
        let plan = plan_of(&cmd);
        let data_out = &data_out[..data_out.len().min(plan.bytes as usize)];
        use Command as C;
        match cmd {
            C::Read { ext } => self.read(ext),
            C::Write { ext, fua } => self.write(ext, data_out, fua),
            C::WriteVerify { ext } => self.write(ext, data_out, true),
            C::Verify { ext, bytchk } => self.verify(ext, bytchk, data_out),
            C::TestUnitReady | C::PreFetch { .. } => Outcome::good(),
            C::SyncCache => io(self.dev.flush()),
            C::WriteSame { ext, unmap, ndob } => self.write_same(ext, unmap, ndob, data_out),
            C::Unmap { param_len } => self.unmap(param_len, data_out),
            C::CompareAndWrite { ext, fua } => self.compare_and_write(ext, fua, data_out),
            C::OrWrite { ext, fua } => self.or_write(ext, fua, data_out),
            C::GetLbaStatus { lba, alloc } => self.get_lba_status(lba, alloc),
            C::RequestSense { alloc } => self.request_sense(nexus, alloc),
            C::Inquiry { evpd, page, alloc } => self.inquiry(nexus, evpd, page, alloc),
            C::ReadDefectData {
                twelve,
                flags,
                alloc,
            } => {
                // A virtual disk has no defects: the list asked for, valid and empty.
                let valid = flags & 0x18;
                let format = flags & 0x07;
                let d = if twelve {
                    vec![0, valid | format, 0, 0, 0, 0, 0, 0]
                } else {
                    vec![0, valid | format, 0, 0]
                };
                Outcome::with_data(d, alloc as usize)
            }
            // Not reached: `TargetLus::execute` answers REPORT LUNS for the whole target.
            C::ReportLuns { .. } => Sense::invalid_opcode().into(),
            C::ReadCapacity10 => self.read_capacity10(),
            C::ReadCapacity16 { alloc } => self.read_capacity16(alloc),
            C::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => {
                let params = ModeParams {
                    wce: self.wce.load(Ordering::Acquire),
                };
                let caps = self.blocks();
                match mode::sense(
                    ten,
                    dbd,
                    llbaa,
                    pc,
                    page,
                    subpage,
                    &params,
                    caps,
                    self.dev.read_only(),
                ) {
                    Ok(d) => Outcome::with_data(d, alloc as usize),
                    Err(s) => s.into(),
                }
            }
            C::ModeSelect { ten, sp, .. } => self.mode_select(nexus, ten, sp, data_out),
            C::StartStop {
                start,
                loej,
                power,
                no_flush,
            } => self.start_stop(start, loej, power, no_flush),
            C::PreventAllow { prevent } => self.prevent_allow(nexus, prevent),
            C::Reserve6 | C::Release6 => self.reserve6(nexus, cmd == C::Reserve6),
            C::PrIn { sa, alloc } => Outcome::with_data(self.lock().pr.read(sa), alloc as usize),
            C::PrOut {
                sa,
                scope,
                kind,
                param_len,
            } => self.pr_out(nexus, sa, scope, kind, param_len, data_out),
            C::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                sa,
                alloc,
            } => match rsoc::report(rctd, options, opcode, sa) {
                Ok(d) => Outcome::with_data(d, alloc as usize),
                Err(s) => s.into(),
            },
        }
    }

    /// The asynchronous route of [`TargetLus::start_async`]: the same decoding, admission
    /// checks and parameter validation as [`LogicalUnit::execute`], ending in the device
    /// operation instead of running it.
    pub(super) fn start_async(&self, nexus: &Nexus, cdb: &[u8], data_out: &Bytes) -> Start {
        let Some(device) = &self.aio else {
            return Start::Blocking;
        };
        let cmd = match self.decode(cdb) {
            Ok(c) => c,
            Err(s) => return Start::Done(s.into()),
        };
        use Command as C;
        if !matches!(
            cmd,
            C::Read { .. }
                | C::Write { .. }
                | C::WriteVerify { .. }
                | C::SyncCache
                | C::WriteSame { .. }
                | C::Unmap { .. }
        ) {
            return Start::Blocking;
        }
        let fast = nexus.id != NO_FAST_NEXUS && self.fast_nexus.load(Ordering::Acquire) == nexus.id;
        if !fast && let Err(o) = self.gate(nexus, &cmd) {
            return Start::Done(o);
        }
        let plan = plan_of(&cmd);
        let data = data_out.slice(..data_out.len().min(plan.bytes as usize));
        let op = match cmd {
            C::Read { ext } if ext.blocks > 0 => DeviceOp::Read {
                offset: ext.offset(),
                len: ext.bytes() as usize,
            },
            C::Write { ext, fua: _ } | C::WriteVerify { ext } => {
                // WRITE AND VERIFY is always durable, as on the blocking path.
                let fua = !matches!(cmd, C::Write { fua: false, .. });
                match (data.len() as u64 / SECTOR).min(ext.blocks) {
                    0 => return Start::Done(Outcome::good()),
                    blocks => DeviceOp::Write {
                        offset: ext.offset(),
                        data: data.slice(..(blocks * SECTOR) as usize),
                        durable: self.durable(fua),
                    },
                }
            }
            C::SyncCache => DeviceOp::Flush,
            C::WriteSame { ext, unmap, ndob } => {
                let zero = unmap || ndob;
                let pattern = if zero {
                    &[][..]
                } else {
                    match same_pattern(ext, &data) {
                        Ok(p) => p,
                        Err(o) => return Start::Done(o),
                    }
                };
                if ext.blocks == 0 {
                    return Start::Done(Outcome::good());
                }
                if zero || pattern.iter().all(|&b| b == 0) {
                    DeviceOp::Zero {
                        ranges: vec![(ext.offset(), ext.bytes())],
                    }
                } else {
                    DeviceOp::WriteSame {
                        offset: ext.offset(),
                        len: ext.bytes(),
                        pattern: pattern.to_vec(),
                    }
                }
            }
            C::Unmap { param_len } => match self.unmap_ranges(param_len, &data) {
                Err(o) => return Start::Done(o),
                Ok(r) if r.is_empty() => return Start::Done(Outcome::good()),
                Ok(r) => DeviceOp::Zero {
                    ranges: r.iter().map(|e| (e.offset(), e.bytes())).collect(),
                },
            },
            _ => return Start::Done(Outcome::good()),
        };
        let hold = if op.writes() {
            match self.in_flight.hold(&self.io) {
                Some(h) => Some(h),
                None => return Start::Blocking,
            }
        } else {
            None
        };
        Start::Io(AsyncIo {
            device: device.clone(),
            op,
            _hold: hold,
        })
    }

    /// Take the I/O lock exclusively and wait for the writes in flight on the asynchronous
    /// path (COMPARE AND WRITE, ORWRITE: atomic against every other write).
    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        let g = self.io.write().unwrap_or_else(PoisonError::into_inner);
        self.in_flight.wait_idle();
        g
    }

    fn durable(&self, fua: bool) -> bool {
        fua || !self.wce.load(Ordering::Relaxed)
    }

    fn read(&self, ext: Extent) -> Outcome {
        let mut o = Outcome {
            status: super::status::GOOD,
            sense: None,
            data: Vec::with_capacity(1),
        };
        if ext.blocks == 0 {
            return o;
        }
        match self
            .dev
            .read(ext.offset(), ext.bytes() as usize, &mut o.data)
        {
            Ok(()) => o,
            Err(e) => store_sense(&e).into(),
        }
    }

    fn read_vec(&self, ext: Extent) -> Result<Vec<Segment>, Sense> {
        let mut segs = Vec::new();
        if ext.blocks > 0 {
            self.dev
                .read(ext.offset(), ext.bytes() as usize, &mut segs)
                .map_err(|e| store_sense(&e))?;
        }
        Ok(segs)
    }

    fn write(&self, ext: Extent, data: &[u8], fua: bool) -> Outcome {
        // Whole blocks that arrived (a short Data-Out writes only what the initiator sent).
        let blocks = (data.len() as u64 / SECTOR).min(ext.blocks);
        if blocks == 0 {
            return Outcome::good();
        }
        let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
        io(self.dev.write(
            ext.offset(),
            &data[..(blocks * SECTOR) as usize],
            self.durable(fua),
        ))
    }

    fn verify(&self, ext: Extent, bytchk: u8, data: &[u8]) -> Outcome {
        match bytchk {
            0 => Outcome::good(),
            1 => {
                let blocks = (data.len() as u64 / SECTOR).min(ext.blocks);
                let ext = Extent {
                    lba: ext.lba,
                    blocks,
                };
                match self.read_vec(ext) {
                    Ok(segs) => match first_difference(&segs, &data[..ext.bytes() as usize]) {
                        Some(at) => Sense::miscompare(at).into(),
                        None => Outcome::good(),
                    },
                    Err(s) => s.into(),
                }
            }
            _ => {
                if ext.blocks == 0 || data.len() < SECTOR as usize {
                    return Outcome::good();
                }
                let pattern = &data[..SECTOR as usize];
                let segs = match self.read_vec(ext) {
                    Ok(s) => s,
                    Err(s) => return s.into(),
                };
                let all = crate::store::concat(&segs);
                for (i, block) in all.chunks(SECTOR as usize).enumerate() {
                    if let Some(j) = block.iter().zip(pattern).position(|(a, b)| a != b) {
                        return Sense::miscompare((i * SECTOR as usize + j) as u64).into();
                    }
                }
                Outcome::good()
            }
        }
    }

    fn write_same(&self, ext: Extent, unmap: bool, ndob: bool, data: &[u8]) -> Outcome {
        if unmap {
            let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
            return io(self.dev.discard(ext.offset(), ext.bytes()));
        }
        let zero = [0u8; SECTOR as usize];
        let pattern: &[u8] = if ndob {
            &zero
        } else {
            match same_pattern(ext, data) {
                Ok(p) => p,
                Err(o) => return o,
            }
        };
        let chunk_blocks = ext.blocks.min(WRITE_SAME_CHUNK_BLOCKS);
        let chunk = pattern.repeat(chunk_blocks as usize);
        let durable = self.durable(false);
        let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
        let mut done = 0;
        while done < ext.blocks {
            let n = (ext.blocks - done).min(chunk_blocks);
            let r = self.dev.write(
                (ext.lba + done) * SECTOR,
                &chunk[..(n * SECTOR) as usize],
                durable,
            );
            if let Err(e) = r {
                return store_sense(&e).into();
            }
            done += n;
        }
        Outcome::good()
    }

    fn unmap(&self, param_len: u32, data: &[u8]) -> Outcome {
        let ranges = match self.unmap_ranges(param_len, data) {
            Ok(r) => r,
            Err(o) => return o,
        };
        let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
        for ext in ranges {
            if let Err(e) = self.dev.discard(ext.offset(), ext.bytes()) {
                return store_sense(&e).into();
            }
        }
        Outcome::good()
    }

    /// The non-empty ranges of an UNMAP parameter list, checked (none when `param_len` is 0).
    fn unmap_ranges(&self, param_len: u32, data: &[u8]) -> Result<Vec<Extent>, Outcome> {
        if param_len == 0 {
            return Ok(Vec::new());
        }
        if data.len() < 8 {
            return Err(Sense::param_list_length().into());
        }
        let bd_len = be16(data, 2) as usize;
        let n = bd_len.min(data.len() - 8) / 16;
        if n > cdb::MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param(2, None).into());
        }
        let caps = self.blocks();
        let mut ranges = Vec::with_capacity(n);
        let mut total = 0u64;
        for i in 0..n {
            let d = &data[8 + 16 * i..24 + 16 * i];
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
            let count = u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4])) as u64;
            let ext = cdb::extent(lba, count, caps).map_err(Outcome::from)?;
            total += count;
            if total > cdb::MAX_UNMAP_BLOCKS as u64 {
                return Err(Sense::invalid_param((8 + 16 * i + 8) as u16, None).into());
            }
            if count > 0 {
                ranges.push(ext);
            }
        }
        Ok(ranges)
    }

    fn compare_and_write(&self, ext: Extent, fua: bool, data: &[u8]) -> Outcome {
        let n = ext.bytes() as usize;
        if ext.blocks == 0 {
            return Outcome::good();
        }
        if data.len() < 2 * n {
            return Sense::invalid_cdb(13, None).into();
        }
        let _exclusive = self.exclusive();
        let segs = match self.read_vec(ext) {
            Ok(s) => s,
            Err(s) => return s.into(),
        };
        if let Some(at) = first_difference(&segs, &data[..n]) {
            return Sense::miscompare(at).into();
        }
        io(self
            .dev
            .write(ext.offset(), &data[n..2 * n], self.durable(fua)))
    }

    fn or_write(&self, ext: Extent, fua: bool, data: &[u8]) -> Outcome {
        let blocks = (data.len() as u64 / SECTOR).min(ext.blocks);
        if blocks == 0 {
            return Outcome::good();
        }
        let ext = Extent {
            lba: ext.lba,
            blocks,
        };
        let _exclusive = self.exclusive();
        let mut cur = match self.read_vec(ext) {
            Ok(s) => crate::store::concat(&s),
            Err(s) => return s.into(),
        };
        for (c, d) in cur.iter_mut().zip(data) {
            *c |= d;
        }
        io(self.dev.write(ext.offset(), &cur, self.durable(fua)))
    }

    /// GET LBA STATUS. The device interface has no allocation query; since unmapped blocks
    /// read as zeros (LBPRZ), a block that reads as all zeros is reported deallocated and any
    /// other block mapped.
    fn get_lba_status(&self, lba: u64, alloc: u32) -> Outcome {
        let blocks = (self.blocks() - lba).min(LBA_STATUS_SCAN_BLOCKS);
        let all = match self.read_vec(Extent { lba, blocks }) {
            Ok(s) => crate::store::concat(&s),
            Err(s) => return s.into(),
        };
        // Descriptors that fit in the allocation length (at least one) are all that is built.
        let fit = (alloc as usize)
            .saturating_sub(8)
            .div_ceil(16)
            .clamp(1, LBA_STATUS_MAX_DESCRIPTORS);
        let mut descs: Vec<(u64, u32, u8)> = Vec::new();
        for (i, block) in all.chunks(SECTOR as usize).enumerate() {
            let state = if block.iter().all(|&b| b == 0) { 1 } else { 0 };
            match descs.last_mut() {
                Some((_, n, s)) if *s == state => *n += 1,
                _ => {
                    if descs.len() == fit {
                        break;
                    }
                    descs.push((lba + i as u64, 1, state));
                }
            }
        }
        let mut d = Vec::with_capacity(8 + 16 * descs.len());
        d.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for (start, n, state) in descs {
            d.extend_from_slice(&start.to_be_bytes());
            d.extend_from_slice(&n.to_be_bytes());
            d.extend_from_slice(&[state, 0, 0, 0]);
        }
        Outcome::with_data(d, alloc as usize)
    }

    fn request_sense(&self, nexus: &Nexus, alloc: u32) -> Outcome {
        let mut st = self.lock();
        let ua = st.nexuses.get_mut(&nexus.id).and_then(|n| n.ua.pop_front());
        self.publish_fast_path(&st);
        let sense = match ua {
            Some(code) => Sense::unit_attention(code),
            None if !st.loaded => Sense::new(key::NOT_READY, asc::MEDIUM_NOT_PRESENT),
            None => Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL),
        };
        Outcome::with_data(sense.to_fixed().to_vec(), alloc as usize)
    }

    fn inquiry(&self, nexus: &Nexus, evpd: bool, page: u8, alloc: u32) -> Outcome {
        let data = if evpd {
            let ctx = VpdContext {
                ident: &self.ident,
                target_port: &nexus.target_port,
                read_only: self.dev.read_only(),
            };
            match inquiry::vpd(page, &ctx) {
                Ok(d) => d,
                Err(s) => return s.into(),
            }
        } else {
            inquiry::standard(&self.ident, self.removable, 0)
        };
        Outcome::with_data(data, alloc as usize)
    }

    fn read_capacity10(&self) -> Outcome {
        let last = self.blocks().saturating_sub(1);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&(SECTOR as u32).to_be_bytes());
        Outcome::with_data(d, 8)
    }

    fn read_capacity16(&self, alloc: u32) -> Outcome {
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&(SECTOR as u32).to_be_bytes());
        // LBPME (thin provisioning: discard supported) and LBPRZ (unmapped reads as zeros).
        if !self.dev.read_only() {
            d[14] = 0x80 | 0x40;
        }
        Outcome::with_data(d, alloc as usize)
    }

    /// MODE SELECT; `data` is the parameter list (already cut to PARAMETER LIST LENGTH).
    fn mode_select(&self, nexus: &Nexus, ten: bool, sp: bool, data: &[u8]) -> Outcome {
        if sp {
            return Sense::invalid_cdb(1, Some(0)).into();
        }
        let mut st = self.lock();
        let new = match mode::select(ten, data, &st.mode) {
            Ok(m) => m,
            Err(s) => return s.into(),
        };
        if new != st.mode {
            st.mode = new;
            self.wce.store(new.wce, Ordering::Release);
            st.post_others(nexus.id, asc::MODE_PARAMETERS_CHANGED);
            self.publish_fast_path(&st);
        }
        Outcome::good()
    }

    fn start_stop(&self, start: bool, loej: bool, power: u8, no_flush: bool) -> Outcome {
        if power != 0 {
            // Power condition changes have no effect on this device.
            return Outcome::good();
        }
        if !start
            && !no_flush
            && let Err(e) = self.dev.flush()
        {
            return store_sense(&e).into();
        }
        if self.removable && loej {
            let mut st = self.lock();
            // Medium removal prevention blocks loading as well as ejecting.
            if !st.prevent.is_empty() {
                return Sense::new(key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED).into();
            }
            st.loaded = start;
            self.publish_fast_path(&st);
        }
        Outcome::good()
    }

    fn prevent_allow(&self, nexus: &Nexus, prevent: bool) -> Outcome {
        if self.removable {
            let mut st = self.lock();
            if prevent {
                st.prevent.insert(nexus.id);
            } else {
                st.prevent.remove(&nexus.id);
            }
        }
        Outcome::good()
    }

    fn reserve6(&self, nexus: &Nexus, reserve: bool) -> Outcome {
        let mut st = self.lock();
        if st.pr.reserved() {
            // SPC-4 5.13.3: with a persistent reservation, RESERVE/RELEASE are a no-op for
            // its holder and a conflict for everyone else.
            return if st.pr.is_holder(&nexus.initiator_port) {
                Outcome::good()
            } else {
                Outcome::reservation_conflict()
            };
        }
        if reserve {
            match st.reserve6 {
                Some(h) if h != nexus.id => return Outcome::reservation_conflict(),
                _ => st.reserve6 = Some(nexus.id),
            }
        } else if st.reserve6 == Some(nexus.id) {
            st.reserve6 = None;
        }
        self.publish_fast_path(&st);
        Outcome::good()
    }

    fn pr_out(
        &self,
        nexus: &Nexus,
        sa: u8,
        scope: u8,
        kind: u8,
        param_len: u32,
        data: &[u8],
    ) -> Outcome {
        let p = match ProutParams::parse(param_len, data) {
            Ok(p) => p,
            Err(s) => return s.into(),
        };
        let mut st = self.lock();
        match st.pr.out(&nexus.initiator_port, sa, scope, kind, &p) {
            Ok(uas) => {
                tracing::debug!(
                    initiator = %nexus.initiator_port,
                    service_action = sa,
                    reservation_type = kind,
                    "persistent reservation changed"
                );
                for (port, code) in uas {
                    st.post_port(&port, code);
                }
                self.publish_fast_path(&st);
                Outcome::good()
            }
            Err(PrError::Conflict) => Outcome::reservation_conflict(),
            Err(PrError::Check(s)) => s.into(),
        }
    }

    pub(super) fn task_mgmt(&self, nexus: &Nexus, f: TaskMgmt) -> bool {
        let code = match f {
            TaskMgmt::AbortTask | TaskMgmt::AbortTaskSet | TaskMgmt::ClearTaskSet => return true,
            TaskMgmt::ClearAca => return false,
            TaskMgmt::LogicalUnitReset => asc::BUS_DEVICE_RESET,
            TaskMgmt::TargetWarmReset | TaskMgmt::TargetColdReset => asc::POWER_ON_RESET,
        };
        tracing::info!(nexus = nexus.id, initiator = %nexus.initiator_port, function = ?f, "reset");
        let mut st = self.lock();
        st.reserve6 = None;
        st.prevent.clear();
        st.mode = ModeParams::default();
        self.wce.store(st.mode.wce, Ordering::Release);
        // The other nexuses learn of the reset. The issuer knows already and is not told:
        // initiators (libiscsi's suite among them) send their next command on that nexus
        // expecting GOOD. (SAM-5 would tell it too; libiscsi's MultipathIO.Reset, run only
        // with two paths, expects that.)
        st.post_others(nexus.id, code);
        self.publish_fast_path(&st);
        true
    }

    pub(super) fn nexus_gone(&self, nexus: &Nexus) {
        let mut st = self.lock();
        st.nexuses.remove(&nexus.id);
        if st.reserve6 == Some(nexus.id) {
            st.reserve6 = None;
        }
        st.prevent.remove(&nexus.id);
        if st.last == Some(nexus.id) {
            st.last = None;
        }
        self.publish_fast_path(&st);
    }
}

/// Plan for a command to a LUN with no logical unit.
pub(super) fn plan_no_lun(cdb: &[u8]) -> Result<Plan, Outcome> {
    match cdb.first() {
        Some(&op::INQUIRY) | Some(&op::REPORT_LUNS) | Some(&op::REQUEST_SENSE) => {
            cdb::parse(cdb, 0)
                .map(|c| plan_of(&c))
                .map_err(Outcome::from)
        }
        _ => Err(Sense::lun_not_supported().into()),
    }
}

/// INQUIRY / REQUEST SENSE / other commands to a LUN with no logical unit.
pub(super) fn execute_no_lun(cdb: &[u8]) -> Outcome {
    match cdb::parse(cdb, 0) {
        Ok(Command::Inquiry {
            evpd: false, alloc, ..
        }) => {
            let blank = LuIdentity {
                vendor: String::new(),
                product: String::new(),
                revision: String::new(),
                serial: String::new(),
                naa_id: 0,
            };
            Outcome::with_data(
                inquiry::standard(&blank, false, inquiry::NO_LUN),
                alloc as usize,
            )
        }
        Ok(Command::RequestSense { alloc }) => Outcome::with_data(
            Sense::lun_not_supported().to_fixed().to_vec(),
            alloc as usize,
        ),
        Ok(Command::Inquiry { .. }) | Ok(_) => Sense::lun_not_supported().into(),
        Err(s) if matches!(cdb.first(), Some(&op::INQUIRY) | Some(&op::REQUEST_SENSE)) => s.into(),
        Err(_) => Sense::lun_not_supported().into(),
    }
}

/// REPORT LUNS (SPC-4 §6.33), answered for the whole target.
pub(super) fn report_luns(t: &TargetLus, cdb: &[u8]) -> Outcome {
    let alloc = match cdb::parse(cdb, 0) {
        Ok(Command::ReportLuns { alloc }) => alloc,
        Ok(_) => return Sense::invalid_opcode().into(),
        Err(s) => return s.into(),
    };
    let mut luns: Vec<u64> = t.luns().collect();
    luns.sort_unstable();
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for lun in luns {
        d.extend_from_slice(&encode_lun(lun));
    }
    Outcome::with_data(d, alloc as usize)
}

/// SAM-5 LUN encoding: peripheral device addressing below 256, flat space below 16384.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    if lun < 256 {
        [0, lun as u8, 0, 0, 0, 0, 0, 0]
    } else if lun < 16384 {
        [0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0, 0, 0]
    } else {
        lun.to_be_bytes()
    }
}
