//! The full-feature phase of one session (one connection, ErrorRecoveryLevel 0), sans-IO.
//!
//! [`Session::handle`] takes each PDU the initiator sends and returns [`Action`]s: PDUs to send,
//! SCSI commands ready to execute (all their Data-Out collected), or "close the connection".
//! The service executes commands wherever it likes (concurrently, out of order) and reports
//! each result with [`Session::complete`], which builds Data-In / SCSI Response PDUs.
//!
//! Sequence numbers: the session owns ExpCmdSN and the command window; StatSN is stamped by
//! the connection writer at send time (see [`Stamp`]), so it follows the order PDUs really
//! leave in, whatever order commands complete in.

use super::login::SessionParams;
use super::serial;
use crate::scsi::sense::{Sense, asc, key};
use crate::scsi::{DataDir, Nexus, Outcome, TargetLus, TaskMgmt, status};
use crate::store::Segment;
use crate::wire::frame::RawPdu;
use crate::wire::pdu::{
    BHS_LEN, Bhs, DataIn, DataOut, LogoutRequest, LogoutResponse, MAX_CDB_LEN, NopIn, NopOut, R2t,
    RESERVED_TAG, Reject, ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse,
    TextRequest, TextResponse, reject_reason, tmf_function, tmf_response,
};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Commands a session may have in flight (the CmdSN window).
pub const QUEUE_DEPTH: u32 = 128;
/// Largest data transfer of one command we accept (also advertised in the Block Limits VPD).
pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// How many recently finished task tags are remembered, so that Data-Out still in flight for
/// a command that already failed is dropped quietly instead of rejected.
const FINISHED_MEMORY: usize = 256;
/// Commands held back because they arrived ahead of a CmdSN gap.
const MAX_HELD: usize = QUEUE_DEPTH as usize;

/// How the connection writer fills StatSN / ExpCmdSN / MaxCmdSN (bytes 24..36) of a PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// Leave the header alone (login responses carry their own numbers).
    None,
    /// Takes the next StatSN (responses, status-bearing Data-In, Reject, NOP-In answers).
    Advance,
    /// Carries the current StatSN without advancing it (R2T, NOP-In pings).
    Current,
    /// Only ExpCmdSN/MaxCmdSN (Data-In without status).
    WindowOnly,
}

/// One PDU ready to be sent: header, how to stamp it, and its data segment as segments.
#[derive(Clone, Debug)]
pub struct OutPdu {
    pub bhs: [u8; BHS_LEN],
    pub stamp: Stamp,
    pub data: Vec<Segment>,
}

impl OutPdu {
    pub fn new(bhs: &Bhs, stamp: Stamp, data: Vec<Segment>) -> OutPdu {
        let len: usize = data.iter().map(|d| d.len()).sum();
        let (h, _ahs) = bhs.emit(len as u32);
        OutPdu {
            bhs: h,
            stamp,
            data,
        }
    }
    pub fn data_len(&self) -> usize {
        self.data.iter().map(|d| d.len()).sum()
    }
}

/// A SCSI command whose data phase is complete, to execute.
#[derive(Debug)]
pub struct ExecJob {
    pub itt: u32,
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub data_out: Bytes,
    pub dir: DataDir,
    /// The SCSI layer planned it as never blocking ([`crate::scsi::Plan::nonblocking`]).
    pub nonblocking: bool,
}

/// Memory for one write command's data, `n` zeroed bytes, given by a [`WriteBudget`] and
/// counted against it until dropped. It becomes the command's [`ExecJob::data_out`], so the
/// budget comes back (and the memory is freed) when the last reference to the data goes.
pub trait WriteMem: AsRef<[u8]> + AsMut<[u8]> + Send + 'static {}

/// Plain heap memory (sessions without a budget).
impl WriteMem for Vec<u8> {}

impl std::fmt::Debug for dyn WriteMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteMem({} bytes)", self.as_ref().len())
    }
}

pub type WriteBuf = Box<dyn WriteMem>;

/// A [`WriteBuf`] as the owner of [`ExecJob::data_out`].
struct WriteData(WriteBuf);

impl AsRef<[u8]> for WriteData {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

/// Where the memory for write data comes from (the service's global budget). A write command
/// takes its whole buffer at once before its first R2T, so every command that holds budget can
/// finish with the data its connection brings, and commands never deadlock on partial holds.
pub trait WriteBudget: Send {
    /// The most the budget can ever give one command.
    fn limit(&self) -> u64;
    /// Hold `n` bytes and give that much zeroed memory, or `None` while the budget is spent.
    fn hold(&mut self, n: u64) -> Option<WriteBuf>;
}

#[derive(Debug)]
pub enum Action {
    /// Send these PDUs, in this order, back to back.
    Send(Vec<OutPdu>),
    /// Execute this command, then call [`Session::complete`].
    Execute(ExecJob),
    /// Close the connection (after sending what was queued before this action).
    Close(SessionEnd),
}

/// Why the session itself ends its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The initiator logged out and every task is answered.
    Logout,
    /// A TARGET COLD RESET task management request was answered.
    TargetColdReset,
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionEnd::Logout => "logout",
            SessionEnd::TargetColdReset => "target cold reset",
        })
    }
}

/// Negotiated values the full-feature phase needs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Initiator's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_xmit_dsl: u32,
    /// Our MaxRecvDataSegmentLength.
    pub max_recv_dsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub cid: u16,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    /// Commands the session may have open at once, immediate ones included (the CmdSN window
    /// advertises what is free; an immediate command beyond it gets TASK SET FULL).
    pub max_tasks: u32,
}

impl From<&SessionParams> for SessionConfig {
    fn from(p: &SessionParams) -> SessionConfig {
        SessionConfig {
            max_xmit_dsl: p.max_xmit_dsl,
            max_recv_dsl: p.max_recv_dsl,
            max_burst: p.max_burst_length,
            first_burst: p.first_burst_length,
            initial_r2t: p.initial_r2t,
            immediate_data: p.immediate_data,
            max_outstanding_r2t: p.max_outstanding_r2t,
            cid: p.cid,
            default_time2wait: p.default_time2wait,
            default_time2retain: p.default_time2retain,
            max_tasks: QUEUE_DEPTH,
        }
    }
}

#[derive(Debug)]
struct R2tState {
    ttt: u32,
    end: u32,
    next: u32,
    data_sn: u32,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for write budget: no buffer, no R2T yet; unsolicited data is kept as it came.
    Waiting,
    /// Collecting Data-Out (its buffer is held from the write budget).
    Collecting,
    /// Handed to the executor.
    Executing,
}

#[derive(Debug)]
struct Task {
    lun: u64,
    immediate: bool,
    phase: Phase,
    aborted: bool,
    dir: DataDir,
    /// Expected Data Transfer Length from the command PDU.
    edtl: u32,
    /// Bytes the CDB asked for.
    cdb_bytes: u64,
    /// Write data wanted: min(edtl, cdb_bytes) bytes.
    want: u32,
    /// Write data buffer: `want` bytes (held from the budget) once the budget gave them.
    buf: Option<WriteBuf>,
    /// Unsolicited data that came while waiting for budget, with its offsets.
    pending: Vec<(u32, Bytes)>,
    /// While waiting: how much unsolicited data it may bring (counted in
    /// `Session::waiting_unsolicited`).
    unsolicited_due: u32,
    cdb: Vec<u8>,
    unsolicited_open: bool,
    unsol_end: u32,
    unsol_data_sn: u32,
    /// Next offset to ask for with an R2T.
    next_r2t: u32,
    r2t_sn: u32,
    r2ts: Vec<R2tState>,
}

struct PendingTmf {
    waiting: HashSet<u32>,
    response: OutPdu,
    close_after: bool,
}

struct PendingLogout {
    response: OutPdu,
}

/// Answers Text Requests in the full-feature phase (SendTargets and friends).
pub trait TextHandler: Send {
    /// Returns response headers and data segments for one Text Request PDU.
    fn text(&mut self, req: &TextRequest, data: &[u8]) -> Vec<(TextResponse, Vec<u8>)>;
}

/// The full-feature phase of one session.
pub struct Session {
    cfg: SessionConfig,
    lus: Option<Arc<TargetLus>>,
    nexus: Nexus,
    exp_cmd_sn: u32,
    in_flight: u32,
    held: BTreeMap<u32, RawPdu>,
    tasks: HashMap<u32, Task>,
    finished: VecDeque<u32>,
    next_ttt: u32,
    /// The TTT of the last ping the initiator answered, until taken.
    answered_ping: Option<u32>,
    pending_tmf: Vec<PendingTmf>,
    logout: Option<PendingLogout>,
    text: Box<dyn TextHandler>,
    /// Where write buffers come from (`None`: unbounded).
    budget: Option<Box<dyn WriteBudget>>,
    /// Write commands waiting for budget, oldest first.
    waiting: VecDeque<u32>,
    /// Unsolicited data the waiting commands may bring (kept outside the budget).
    waiting_unsolicited: u64,
}

/// Most unsolicited data (immediate data, unsolicited Data-Out) one session keeps for write
/// commands that wait for budget: that data is held as it came, outside the write budget, so
/// it is capped here (four full first bursts of 256 KiB). A waiting command that could bring
/// more is answered TASK SET FULL, which initiators retry.
pub const MAX_WAITING_UNSOLICITED: u64 = 1 << 20;

impl Session {
    /// `exp_cmd_sn` is the CmdSN the first full-feature command will carry.
    pub fn new(
        cfg: SessionConfig,
        lus: Option<Arc<TargetLus>>,
        nexus: Nexus,
        exp_cmd_sn: u32,
        text: Box<dyn TextHandler>,
    ) -> Session {
        Session {
            cfg,
            lus,
            nexus,
            exp_cmd_sn,
            in_flight: 0,
            held: BTreeMap::new(),
            tasks: HashMap::new(),
            finished: VecDeque::new(),
            next_ttt: 1,
            answered_ping: None,
            pending_tmf: Vec::new(),
            logout: None,
            text,
            budget: None,
            waiting: VecDeque::new(),
            waiting_unsolicited: 0,
        }
    }

    /// Take write buffers from `budget` from now on.
    pub fn set_write_budget(&mut self, budget: Box<dyn WriteBudget>) {
        self.budget = Some(budget);
    }

    /// Write commands wait for budget and no data is due for any other command: read nothing
    /// more from the connection until budget comes back (then call [`Session::retry_budget`]).
    /// While a command collects data, reading goes on, so its data can come in and it can
    /// finish.
    pub fn budget_blocked(&self) -> bool {
        !self.waiting.is_empty()
            && !self
                .tasks
                .values()
                .any(|t| matches!(t.phase, Phase::Collecting))
    }

    /// Some command holds a write buffer and waits for Data-Out from the initiator.
    pub fn holds_write_buffers(&self) -> bool {
        self.tasks
            .values()
            .any(|t| matches!(t.phase, Phase::Collecting))
    }

    /// Give budget to the commands waiting for it, oldest first, and solicit their data.
    pub fn retry_budget(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(&itt) = self.waiting.front() {
            let want = match self.tasks.get(&itt) {
                Some(t) if matches!(t.phase, Phase::Waiting) => t.want,
                _ => {
                    self.waiting.pop_front();
                    continue;
                }
            };
            let Some(hold) = self.budget.as_mut().and_then(|b| b.hold(u64::from(want))) else {
                break;
            };
            self.waiting.pop_front();
            if let Some(t) = self.tasks.get_mut(&itt) {
                t.buf = Some(hold);
                let due = u64::from(std::mem::take(&mut t.unsolicited_due));
                self.waiting_unsolicited = self.waiting_unsolicited.saturating_sub(due);
                for (off, d) in std::mem::take(&mut t.pending) {
                    copy_in(&mut t.buf, off, &d, want);
                }
                t.phase = Phase::Collecting;
            }
            self.advance_write(itt, &mut out);
        }
        out
    }

    pub fn nexus(&self) -> &Nexus {
        &self.nexus
    }

    /// Current (ExpCmdSN, MaxCmdSN) to advertise.
    pub fn window(&self) -> (u32, u32) {
        // Immediate commands take no CmdSN but hold a task: they count against the window too.
        let open = u32::try_from(self.tasks.len())
            .unwrap_or(u32::MAX)
            .max(self.in_flight);
        let free = self.cfg.max_tasks.max(1).saturating_sub(open);
        (
            self.exp_cmd_sn,
            self.exp_cmd_sn.wrapping_sub(1).wrapping_add(free),
        )
    }

    /// The CmdSN range accepted: numbered commands only (immediate ones may have taken part of
    /// what [`Session::window`] advertised after the initiator saw it, and a command sent
    /// within an advertised window must not be dropped). Numbered commands thus stay within
    /// `max_tasks`, immediate ones within another `max_tasks` (TASK SET FULL beyond).
    fn accept_window(&self) -> (u32, u32) {
        let free = self.cfg.max_tasks.max(1).saturating_sub(self.in_flight);
        (
            self.exp_cmd_sn,
            self.exp_cmd_sn.wrapping_sub(1).wrapping_add(free),
        )
    }

    /// Commands accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// A NOP-In ping (ITT reserved, TTT set so the initiator must answer) and its TTT, which
    /// [`Session::take_answered_ping`] reports once the initiator's NOP-Out echoes it.
    pub fn ping(&mut self) -> (u32, OutPdu) {
        let ttt = self.alloc_ttt();
        let pdu = OutPdu::new(
            &Bhs::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            }),
            Stamp::Current,
            Vec::new(),
        );
        (ttt, pdu)
    }

    /// The TTT of a ping the initiator answered since the last call (each answer is reported
    /// once; the caller asks after every PDU it hands to [`Session::handle`]).
    pub fn take_answered_ping(&mut self) -> Option<u32> {
        self.answered_ping.take()
    }

    fn alloc_ttt(&mut self) -> u32 {
        next_tag(&mut self.next_ttt)
    }

    /// Handle one PDU from the initiator.
    pub fn handle(&mut self, pdu: RawPdu) -> Vec<Action> {
        let mut out = Vec::new();
        self.dispatch(pdu, &mut out);
        // Commands held behind a CmdSN gap may now be deliverable.
        while let Some(held) = self.held.remove(&self.exp_cmd_sn) {
            self.dispatch(held, &mut out);
        }
        out
    }

    fn dispatch(&mut self, pdu: RawPdu, out: &mut Vec<Action>) {
        let bhs = match Bhs::parse(&pdu.bhs, &pdu.ahs) {
            Ok(b) => b,
            Err(crate::wire::WireError::UnknownOpcode(_)) => {
                out.push(reject(reject_reason::COMMAND_NOT_SUPPORTED, &pdu.bhs));
                return;
            }
            Err(_) => {
                out.push(reject(reject_reason::INVALID_PDU_FIELD, &pdu.bhs));
                return;
            }
        };
        // Numbered requests go through the CmdSN window first.
        let numbered = match &bhs {
            Bhs::NopOut(p) => Some((p.immediate, p.cmd_sn)),
            Bhs::ScsiCommand(p) => Some((p.immediate, p.cmd_sn)),
            Bhs::TaskMgmtRequest(p) => Some((p.immediate, p.cmd_sn)),
            Bhs::TextRequest(p) => Some((p.immediate, p.cmd_sn)),
            Bhs::LogoutRequest(p) => Some((p.immediate, p.cmd_sn)),
            _ => None,
        };
        if let Some((immediate, cmd_sn)) = numbered {
            // A NOP-Out answering our ping (ITT reserved) carries no command.
            let is_ping_reply = matches!(&bhs, Bhs::NopOut(n) if n.itt == RESERVED_TAG);
            if !immediate && !is_ping_reply {
                let (exp, max) = self.accept_window();
                if !serial::in_window(cmd_sn, exp, max) {
                    // Outside the window (none free, or not yet in it): silently ignored
                    // (RFC 7143 §4.2.2.1).
                    return;
                }
                if cmd_sn != exp {
                    if self.held.len() < MAX_HELD {
                        self.held.insert(cmd_sn, pdu);
                    }
                    return;
                }
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            }
        }
        if self.logout.is_some() {
            // After a Logout request, nothing new is started.
            if !matches!(bhs, Bhs::DataOut(_)) {
                out.push(reject(reject_reason::WAITING_FOR_LOGOUT, &pdu.bhs));
                return;
            }
        }
        match bhs {
            Bhs::NopOut(n) => self.nop_out(n, pdu.data, out),
            Bhs::ScsiCommand(c) => self.scsi_command(c, &pdu.bhs, pdu.data, out),
            Bhs::DataOut(d) => self.data_out(d, &pdu.bhs, pdu.data, out),
            Bhs::TaskMgmtRequest(t) => self.task_mgmt(t, out),
            Bhs::TextRequest(t) => {
                let resps = self.text.text(&t, &pdu.data);
                let pdus = resps
                    .into_iter()
                    .map(|(h, d)| {
                        OutPdu::new(&Bhs::TextResponse(h), Stamp::Advance, vec![d.into()])
                    })
                    .collect();
                out.push(Action::Send(pdus));
            }
            Bhs::LogoutRequest(l) => self.logout(l, out),
            Bhs::Snack(_) => out.push(reject(reject_reason::SNACK_REJECT, &pdu.bhs)),
            // A login in full-feature phase, or a target-only opcode.
            _ => out.push(reject(reject_reason::PROTOCOL_ERROR, &pdu.bhs)),
        }
    }

    fn nop_out(&mut self, n: NopOut, data: Bytes, out: &mut Vec<Action>) {
        if n.itt == RESERVED_TAG {
            // Answer to our ping (or an unsolicited NOP-Out needing no reply).
            if n.ttt != RESERVED_TAG {
                self.answered_ping = Some(n.ttt);
            }
            return;
        }
        let reply = Bhs::NopIn(NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        });
        // Echo the ping data, within what the initiator can receive.
        let mut data = data;
        data.truncate(self.cfg.max_xmit_dsl as usize);
        out.push(Action::Send(vec![OutPdu::new(
            &reply,
            Stamp::Advance,
            vec![data.into()],
        )]));
    }

    /// A command counted as received without arriving (aborted before it came): when it is
    /// the next expected one, move ExpCmdSN past it so later commands are not held forever.
    fn ignore_cmd_sn(&mut self, cmd_sn: u32) {
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
    }

    fn remember_finished(&mut self, itt: u32) {
        if self.finished.len() >= FINISHED_MEMORY {
            self.finished.pop_front();
        }
        self.finished.push_back(itt);
    }

    fn scsi_command(
        &mut self,
        c: ScsiCommand,
        raw: &[u8; BHS_LEN],
        imm: Bytes,
        out: &mut Vec<Action>,
    ) {
        let Some(lus) = self.lus.clone() else {
            // Discovery sessions carry no SCSI commands.
            out.push(reject(reject_reason::PROTOCOL_ERROR, raw));
            return;
        };
        if self.tasks.contains_key(&c.itt) {
            out.push(reject(reject_reason::TASK_IN_PROGRESS, raw));
            return;
        }
        let immediate_open = self.tasks.values().filter(|t| t.immediate).count();
        if c.immediate && immediate_open >= self.cfg.max_tasks.max(1) as usize {
            // No task slot left for a command that skips the CmdSN window: TASK SET FULL
            // (SAM-5 §5.3.1), answered without keeping anything of it.
            out.extend(self.task_set_full(c.itt, c.expected_len));
            return;
        }
        if !imm.is_empty()
            && (!c.write
                || !self.cfg.immediate_data
                || imm.len() as u64 > c.expected_len as u64
                || imm.len() as u32 > self.cfg.first_burst)
        {
            out.push(reject(reject_reason::PROTOCOL_ERROR, raw));
            return;
        }
        if !c.immediate {
            self.in_flight += 1;
        }
        let mut cdb_buf = [0u8; MAX_CDB_LEN];
        let cdb = c.full_cdb(&mut cdb_buf).to_vec();
        let mut task = Task {
            lun: c.lun,
            immediate: c.immediate,
            phase: Phase::Collecting,
            aborted: false,
            dir: DataDir::None,
            edtl: c.expected_len,
            cdb_bytes: 0,
            want: 0,
            buf: None,
            pending: Vec::new(),
            unsolicited_due: 0,
            cdb,
            unsolicited_open: c.write && !c.final_,
            unsol_end: imm.len() as u32,
            unsol_data_sn: 0,
            next_r2t: 0,
            r2t_sn: 0,
            r2ts: Vec::new(),
        };
        let plan = match lus.plan(c.lun, &task.cdb) {
            Ok(p) => p,
            Err(outcome) => {
                self.tasks.insert(c.itt, task);
                out.extend(self.respond(c.itt, outcome));
                return;
            }
        };
        task.dir = plan.dir;
        task.cdb_bytes = plan.bytes;
        if plan.bytes > MAX_TRANSFER_BYTES {
            self.tasks.insert(c.itt, task);
            out.extend(self.respond(
                c.itt,
                Outcome::check(Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)),
            ));
            return;
        }
        if c.write && c.expected_len > 0 && plan.bytes == 0 {
            // Data-out announced for a CDB that transfers none is refused (a COMPARE AND
            // WRITE of 256 blocks, say, whose one-byte count wrapped to 0). Other
            // disagreements are residuals (RFC 7143 11.4.5): the CDB's length is written.
            self.tasks.insert(c.itt, task);
            out.extend(self.respond(
                c.itt,
                Outcome::check(Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)),
            ));
            return;
        }
        match plan.dir {
            DataDir::Write => {
                // At most MAX_TRANSFER_BYTES (checked above).
                let want = if c.write {
                    (c.expected_len as u64).min(plan.bytes) as u32
                } else {
                    0
                };
                task.want = want;
                let limit = self.budget.as_ref().map_or(u64::MAX, |b| b.limit());
                if u64::from(want) > limit {
                    // More than the whole budget could ever hold: waiting would be forever.
                    self.tasks.insert(c.itt, task);
                    out.extend(self.respond(
                        c.itt,
                        Outcome::check(Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)),
                    ));
                    return;
                }
                let buf = match (&mut self.budget, want) {
                    (_, 0) => Some(None),
                    (None, _) => Some(Some(Box::new(vec![0u8; want as usize]) as WriteBuf)),
                    // Commands of this session that wait already go first.
                    (Some(_), _) if !self.waiting.is_empty() => None,
                    (Some(b), _) => b.hold(u64::from(want)).map(Some),
                };
                match buf {
                    Some(buf) => {
                        task.buf = buf;
                        copy_in(&mut task.buf, 0, &imm, want);
                    }
                    None => {
                        let due = match task.unsolicited_open {
                            true => self.cfg.first_burst.min(c.expected_len),
                            false => imm.len() as u32,
                        };
                        let kept = self.waiting_unsolicited + u64::from(due);
                        if due > 0 && kept > MAX_WAITING_UNSOLICITED {
                            // Its data would pass what the session keeps for waiting
                            // commands; data still sent for it is dropped as for any
                            // finished task.
                            self.tasks.insert(c.itt, task);
                            self.finish(c.itt);
                            out.extend(self.task_set_full(c.itt, c.expected_len));
                            return;
                        }
                        self.waiting_unsolicited = kept;
                        task.unsolicited_due = due;
                        task.phase = Phase::Waiting;
                        if !imm.is_empty() {
                            // A copy: a slice would keep the whole read buffer it is in.
                            task.pending.push((0, Bytes::copy_from_slice(&imm)));
                        }
                        self.waiting.push_back(c.itt);
                    }
                }
                self.tasks.insert(c.itt, task);
                self.advance_write(c.itt, out);
            }
            DataDir::Read | DataDir::None => {
                task.phase = Phase::Executing;
                let job = ExecJob {
                    itt: c.itt,
                    lun: c.lun,
                    cdb: task.cdb.clone(),
                    data_out: Bytes::new(),
                    dir: plan.dir,
                    nonblocking: plan.nonblocking,
                };
                self.tasks.insert(c.itt, task);
                out.push(Action::Execute(job));
            }
        }
    }

    /// Issue R2Ts while allowed, or hand the command to the executor once all data is in.
    fn advance_write(&mut self, itt: u32, out: &mut Vec<Action>) {
        let max_burst = self.cfg.max_burst;
        let max_out = self.cfg.max_outstanding_r2t.max(1) as usize;
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        if t.unsolicited_open || !matches!(t.phase, Phase::Collecting) {
            return;
        }
        let want = t.want;
        // Solicit what the unsolicited data did not bring.
        t.next_r2t = t.next_r2t.max(t.unsol_end.min(want));
        let mut pdus = Vec::new();
        while t.r2ts.len() < max_out && t.next_r2t < want {
            let ttt = next_tag(&mut self.next_ttt);
            let off = t.next_r2t;
            let len = max_burst.min(want - off);
            t.r2ts.push(R2tState {
                ttt,
                end: off + len,
                next: off,
                data_sn: 0,
            });
            pdus.push(OutPdu::new(
                &Bhs::R2t(R2t {
                    lun: t.lun,
                    itt,
                    ttt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    r2t_sn: t.r2t_sn,
                    buffer_offset: off,
                    desired_len: len,
                }),
                Stamp::Current,
                Vec::new(),
            ));
            t.r2t_sn = t.r2t_sn.wrapping_add(1);
            t.next_r2t = off + len;
        }
        if !pdus.is_empty() {
            out.push(Action::Send(pdus));
        }
        if t.r2ts.is_empty() && t.next_r2t >= want {
            t.phase = Phase::Executing;
            out.push(Action::Execute(ExecJob {
                itt,
                lun: t.lun,
                cdb: t.cdb.clone(),
                data_out: t
                    .buf
                    .take()
                    .map_or_else(Bytes::new, |b| Bytes::from_owner(WriteData(b))),
                dir: DataDir::Write,
                nonblocking: false,
            }));
        }
    }

    fn data_out(&mut self, d: DataOut, raw: &[u8; BHS_LEN], data: Bytes, out: &mut Vec<Action>) {
        let first_burst = self.cfg.first_burst;
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            if !self.finished.contains(&d.itt) {
                out.push(reject(reject_reason::INVALID_PDU_FIELD, raw));
            }
            return;
        };
        if !matches!(t.phase, Phase::Collecting | Phase::Waiting) || t.dir != DataDir::Write {
            out.push(reject(reject_reason::PROTOCOL_ERROR, raw));
            return;
        }
        let want = t.want;
        let end = d.buffer_offset.checked_add(data.len() as u32);
        if d.ttt == RESERVED_TAG {
            // Unsolicited data: in order, within the first burst.
            let limit = first_burst.min(t.edtl);
            let in_place = t.unsolicited_open && d.buffer_offset == t.unsol_end;
            let Some(end) = end.filter(|e| in_place && *e <= limit) else {
                out.push(reject(reject_reason::PROTOCOL_ERROR, raw));
                return;
            };
            if d.data_sn != t.unsol_data_sn {
                return self.data_sn_error(d.itt, raw, out);
            }
            if matches!(t.phase, Phase::Waiting) {
                t.pending
                    .push((d.buffer_offset, Bytes::copy_from_slice(&data)));
            } else {
                copy_in(&mut t.buf, d.buffer_offset, &data, want);
            }
            t.unsol_end = end;
            t.unsol_data_sn = t.unsol_data_sn.wrapping_add(1);
            if d.final_ || end == limit {
                t.unsolicited_open = false;
            }
        } else {
            // Solicited data: in order, within the R2T it answers.
            let Some(i) = t.r2ts.iter().position(|r| r.ttt == d.ttt) else {
                out.push(reject(reject_reason::INVALID_PDU_FIELD, raw));
                return;
            };
            let Some(r) = t.r2ts.get_mut(i) else {
                return;
            };
            let in_place = d.buffer_offset == r.next;
            let Some(end) = end.filter(|e| in_place && *e <= r.end) else {
                out.push(reject(reject_reason::PROTOCOL_ERROR, raw));
                return;
            };
            if d.data_sn != r.data_sn {
                return self.data_sn_error(d.itt, raw, out);
            }
            r.next = end;
            r.data_sn = r.data_sn.wrapping_add(1);
            let complete = r.next == r.end;
            copy_in(&mut t.buf, d.buffer_offset, &data, want);
            if complete {
                t.r2ts.remove(i);
            }
        }
        self.advance_write(d.itt, out);
    }

    /// A Data-Out out of DataSN order: ERL 0 cannot recover it. Reject the PDU and end the
    /// command with ABORTED COMMAND / DATA PHASE ERROR.
    fn data_sn_error(&mut self, itt: u32, raw: &[u8; BHS_LEN], out: &mut Vec<Action>) {
        out.push(reject(reject_reason::PROTOCOL_ERROR, raw));
        out.extend(self.respond(
            itt,
            Outcome::check(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR)),
        ));
    }

    /// The executor finished a command.
    pub fn complete(&mut self, itt: u32, outcome: Outcome) -> Vec<Action> {
        let mut out = Vec::new();
        let aborted = self.tasks.get(&itt).is_some_and(|t| t.aborted);
        if aborted {
            self.finish(itt);
        } else {
            out.extend(self.respond(itt, outcome));
        }
        self.settle_waiters(itt, &mut out);
        out
    }

    /// Remove a task and release its window slot.
    fn finish(&mut self, itt: u32) -> Option<Task> {
        let t = self.tasks.remove(&itt)?;
        if matches!(t.phase, Phase::Waiting) {
            self.waiting.retain(|&w| w != itt);
            self.waiting_unsolicited = self
                .waiting_unsolicited
                .saturating_sub(u64::from(t.unsolicited_due));
        }
        if !t.immediate {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.remember_finished(itt);
        Some(t)
    }

    /// Task `itt` is gone: answer the TMF requests that were waiting only for it, and a
    /// logout that was waiting for the last task.
    fn settle_waiters(&mut self, itt: u32, out: &mut Vec<Action>) {
        for p in &mut self.pending_tmf {
            p.waiting.remove(&itt);
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_tmf)
            .into_iter()
            .partition(|p| p.waiting.is_empty());
        self.pending_tmf = waiting;
        for p in ready {
            out.push(Action::Send(vec![p.response]));
            if p.close_after {
                out.push(Action::Close(SessionEnd::TargetColdReset));
            }
        }
        self.release_logout(out);
    }

    /// A logout waits until every task is answered; send its response when none is left.
    fn release_logout(&mut self, out: &mut Vec<Action>) {
        if self.tasks.is_empty()
            && let Some(l) = self.logout.take()
        {
            out.push(Action::Send(vec![l.response]));
            out.push(Action::Close(SessionEnd::Logout));
        }
    }

    /// The answer to a command refused for lack of a task slot: status TASK SET FULL, no data,
    /// nothing kept.
    fn task_set_full(&self, itt: u32, edtl: u32) -> Vec<Action> {
        let resp = Bhs::ScsiResponse(ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow: false,
            underflow: edtl > 0,
            response: 0,
            status: status::TASK_SET_FULL,
            itt,
            snack_tag: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            exp_data_sn: 0,
            bidi_residual: 0,
            residual: edtl,
        });
        vec![Action::Send(vec![OutPdu::new(
            &resp,
            Stamp::Advance,
            Vec::new(),
        )])]
    }

    /// Build the PDUs that answer a command, and retire it.
    fn respond(&mut self, itt: u32, o: Outcome) -> Vec<Action> {
        let Some(t) = self.finish(itt) else {
            return Vec::new();
        };
        let mut pdus = Vec::new();
        let good = o.status == status::GOOD && o.sense.is_none();
        let (mut overflow, mut underflow, mut residual) = (false, false, 0u32);
        let mut data_sn = 0u32;
        match t.dir {
            DataDir::Read => {
                let produced: u64 = o.data.iter().map(|d| d.len() as u64).sum();
                let edtl = t.edtl as u64;
                if produced > edtl {
                    overflow = true;
                    residual = (produced - edtl).min(u32::MAX as u64) as u32;
                } else if produced < edtl {
                    underflow = true;
                    residual = (edtl - produced) as u32;
                }
                let send = produced.min(edtl) as usize;
                data_sn = self.data_in(
                    itt,
                    t.lun,
                    &o,
                    send,
                    good,
                    (overflow, underflow, residual),
                    &mut pdus,
                );
                if good && send > 0 {
                    return vec![Action::Send(pdus)];
                }
            }
            DataDir::Write => {
                let edtl = t.edtl as u64;
                if t.cdb_bytes > edtl {
                    overflow = true;
                    residual = (t.cdb_bytes - edtl).min(u32::MAX as u64) as u32;
                } else if t.cdb_bytes < edtl {
                    underflow = true;
                    residual = (edtl - t.cdb_bytes) as u32;
                }
            }
            DataDir::None => {
                if t.edtl > 0 {
                    underflow = true;
                    residual = t.edtl;
                }
            }
        }
        let mut sense_data = Vec::new();
        if let Some(s) = &o.sense {
            sense_data.extend_from_slice(&(s.len() as u16).to_be_bytes());
            sense_data.extend_from_slice(s);
        }
        pdus.push(OutPdu::new(
            &Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: false,
                overflow,
                underflow,
                response: 0,
                status: o.status,
                itt,
                snack_tag: 0,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                exp_data_sn: data_sn,
                bidi_residual: 0,
                residual,
            }),
            Stamp::Advance,
            if sense_data.is_empty() {
                Vec::new()
            } else {
                vec![sense_data.into()]
            },
        ));
        vec![Action::Send(pdus)]
    }

    /// Split `send` bytes of `o.data` into Data-In PDUs. With `good`, the last one carries the
    /// status (phase collapse). Returns the number of Data-In PDUs built.
    #[allow(clippy::too_many_arguments)]
    fn data_in(
        &self,
        itt: u32,
        lun: u64,
        o: &Outcome,
        send: usize,
        good: bool,
        (overflow, underflow, residual): (bool, bool, u32),
        pdus: &mut Vec<OutPdu>,
    ) -> u32 {
        let mdsl = self.cfg.max_xmit_dsl.max(512) as usize;
        let burst = self.cfg.max_burst.max(512) as usize;
        let mut segs = o.data.iter();
        let mut cur: Option<Segment> = None;
        let mut offset = 0usize;
        let mut data_sn = 0u32;
        let mut in_burst = 0usize;
        while offset < send {
            let room = mdsl.min(send - offset).min(burst - in_burst);
            let mut chunk = Vec::new();
            let mut got = 0;
            while got < room {
                let seg = match cur.take() {
                    Some(s) => s,
                    None => match segs.next() {
                        Some(s) => s.clone(),
                        None => break,
                    },
                };
                if seg.is_empty() {
                    continue;
                }
                let take = (room - got).min(seg.len());
                chunk.push(seg.slice(..take));
                if take < seg.len() {
                    cur = Some(seg.slice(take..));
                }
                got += take;
            }
            if got == 0 {
                break;
            }
            in_burst += got;
            let last = offset + got >= send;
            let end_of_burst = last || in_burst >= burst;
            if in_burst >= burst {
                in_burst = 0;
            }
            let with_status = last && good;
            pdus.push(OutPdu::new(
                &Bhs::DataIn(DataIn {
                    final_: end_of_burst,
                    ack: false,
                    overflow: with_status && overflow,
                    underflow: with_status && underflow,
                    status_present: with_status,
                    status: if with_status { o.status } else { 0 },
                    lun,
                    itt,
                    ttt: RESERVED_TAG,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    data_sn,
                    buffer_offset: offset as u32,
                    residual: if with_status { residual } else { 0 },
                }),
                if with_status {
                    Stamp::Advance
                } else {
                    Stamp::WindowOnly
                },
                chunk,
            ));
            data_sn += 1;
            offset += got;
        }
        data_sn
    }

    fn task_mgmt(&mut self, t: TaskMgmtRequest, out: &mut Vec<Action>) {
        let respond = |response: u8| tmf_response_pdu(t.itt, response);
        let Some(lus) = self.lus.clone() else {
            out.push(Action::Send(vec![respond(tmf_response::NOT_SUPPORTED)]));
            return;
        };
        let (kind, all_luns) = match tmf_kind(t.function) {
            Ok(k) => k,
            Err(r) => return out.push(Action::Send(vec![respond(r)])),
        };
        if !all_luns && lus.get(t.lun).is_none() {
            let r = tmf_response::LUN_DOES_NOT_EXIST;
            return out.push(Action::Send(vec![respond(r)]));
        }
        let victims = match self.tmf_victims(&t, kind, all_luns) {
            Ok(v) => v,
            Err(r) => return out.push(Action::Send(vec![respond(r)])),
        };
        let waiting = self.abort_tasks(victims, t.itt);
        let supported = if all_luns {
            let luns: Vec<u64> = lus.luns().collect();
            luns.iter()
                .map(|l| lus.task_mgmt(&self.nexus, *l, kind))
                .collect::<Vec<bool>>()
                .iter()
                .all(|ok| *ok)
        } else {
            lus.task_mgmt(&self.nexus, t.lun, kind)
        };
        let response = respond(if supported {
            tmf_response::COMPLETE
        } else {
            tmf_response::NOT_SUPPORTED
        });
        let close_after = kind == TaskMgmt::TargetColdReset;
        if waiting.is_empty() {
            out.push(Action::Send(vec![response]));
            if close_after {
                out.push(Action::Close(SessionEnd::TargetColdReset));
            }
        } else {
            self.pending_tmf.push(PendingTmf {
                waiting,
                response,
                close_after,
            });
        }
        // Aborting may have released logout waiters.
        self.release_logout(out);
    }

    /// The tasks a task management request aborts, or the response to give at once.
    fn tmf_victims(
        &mut self,
        t: &TaskMgmtRequest,
        kind: TaskMgmt,
        all_luns: bool,
    ) -> Result<Vec<u32>, u8> {
        Ok(match kind {
            TaskMgmt::AbortTask => match self.tasks.get(&t.referenced_tt) {
                Some(task) if task.lun == t.lun => vec![t.referenced_tt],
                Some(_) => return Err(tmf_response::TASK_DOES_NOT_EXIST),
                None => return Err(self.abort_unreceived(t)),
            },
            TaskMgmt::ClearAca => Vec::new(),
            _ if all_luns => self.tasks.keys().copied().collect(),
            _ => self
                .tasks
                .iter()
                .filter(|(_, task)| task.lun == t.lun)
                .map(|(k, _)| *k)
                .collect(),
        })
    }

    /// ABORT TASK for a task we do not have. RFC 7143 §11.5.1: a task not received yet (its
    /// RefCmdSN inside the window and older than this request) counts as received and aborted;
    /// one already answered (RefCmdSN below ExpCmdSN) does not exist. Returns the response.
    fn abort_unreceived(&mut self, t: &TaskMgmtRequest) -> u8 {
        let (exp, _) = self.window();
        let not_yet_received = serial::le(exp, t.ref_cmd_sn) && serial::lt(t.ref_cmd_sn, t.cmd_sn);
        if self.held.remove(&t.ref_cmd_sn).is_some() || not_yet_received {
            self.ignore_cmd_sn(t.ref_cmd_sn);
        }
        if not_yet_received {
            tmf_response::COMPLETE
        } else {
            tmf_response::TASK_DOES_NOT_EXIST
        }
    }

    /// Abort `victims` (never the TMF request `tmf_itt` itself): those still collecting data
    /// end now, those executing are returned, to be waited for.
    fn abort_tasks(&mut self, victims: Vec<u32>, tmf_itt: u32) -> HashSet<u32> {
        let mut waiting = HashSet::new();
        for itt in victims {
            if itt == tmf_itt {
                continue;
            }
            let executing = match self.tasks.get_mut(&itt) {
                Some(task) => {
                    task.aborted = true;
                    matches!(task.phase, Phase::Executing)
                }
                None => false,
            };
            if executing {
                waiting.insert(itt);
            } else {
                self.finish(itt);
            }
        }
        waiting
    }

    fn logout(&mut self, l: LogoutRequest, out: &mut Vec<Action>) {
        let mk = |response: u8, t2w: u16, t2r: u16| {
            OutPdu::new(
                &Bhs::LogoutResponse(LogoutResponse {
                    response,
                    itt: l.itt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    time2wait: t2w,
                    time2retain: t2r,
                }),
                Stamp::Advance,
                Vec::new(),
            )
        };
        match l.reason {
            // Close the session, or close this connection.
            0 | 1 => {
                if l.reason == 1 && l.cid != self.cfg.cid {
                    out.push(Action::Send(vec![mk(1, 0, 0)]));
                    return;
                }
                // Tasks still collecting data (or waiting for budget) will never get it: drop them.
                let collecting: Vec<u32> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| matches!(t.phase, Phase::Collecting | Phase::Waiting))
                    .map(|(k, _)| *k)
                    .collect();
                for itt in collecting {
                    self.finish(itt);
                }
                let response = mk(0, 0, 0);
                if self.tasks.is_empty() {
                    out.push(Action::Send(vec![response]));
                    out.push(Action::Close(SessionEnd::Logout));
                } else {
                    self.logout = Some(PendingLogout { response });
                }
            }
            // Remove the connection for recovery: needs ErrorRecoveryLevel 2.
            2 => out.push(Action::Send(vec![mk(2, 0, 0)])),
            _ => out.push(reject(reject_reason::PROTOCOL_ERROR, &l_raw(&l))),
        }
    }
}

/// What a TMF function code asks for, and whether it covers every LUN; or the response that
/// refuses it.
fn tmf_kind(function: u8) -> Result<(TaskMgmt, bool), u8> {
    Ok(match function {
        tmf_function::ABORT_TASK => (TaskMgmt::AbortTask, false),
        tmf_function::ABORT_TASK_SET => (TaskMgmt::AbortTaskSet, false),
        tmf_function::CLEAR_ACA => (TaskMgmt::ClearAca, false),
        tmf_function::CLEAR_TASK_SET => (TaskMgmt::ClearTaskSet, false),
        tmf_function::LOGICAL_UNIT_RESET => (TaskMgmt::LogicalUnitReset, false),
        tmf_function::TARGET_WARM_RESET => (TaskMgmt::TargetWarmReset, true),
        tmf_function::TARGET_COLD_RESET => (TaskMgmt::TargetColdReset, true),
        tmf_function::TASK_REASSIGN => return Err(tmf_response::REASSIGNMENT_NOT_SUPPORTED),
        _ => return Err(tmf_response::REJECTED),
    })
}

fn tmf_response_pdu(itt: u32, response: u8) -> OutPdu {
    OutPdu::new(
        &Bhs::TaskMgmtResponse(TaskMgmtResponse {
            response,
            itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        }),
        Stamp::Advance,
        Vec::new(),
    )
}

/// Take the next target transfer tag from `next` (never 0 or the reserved tag).
fn next_tag(next: &mut u32) -> u32 {
    let t = *next;
    *next = next.wrapping_add(1);
    if *next == RESERVED_TAG {
        *next = 1;
    }
    t
}

/// A Reject PDU carrying the rejected header.
fn reject(reason: u8, bhs: &[u8; BHS_LEN]) -> Action {
    let r = Bhs::Reject(Reject {
        reason,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        data_sn: 0,
    });
    Action::Send(vec![OutPdu::new(
        &r,
        Stamp::Advance,
        vec![Bytes::copy_from_slice(bhs).into()],
    )])
}

fn l_raw(l: &LogoutRequest) -> [u8; BHS_LEN] {
    Bhs::LogoutRequest(*l).emit(0).0
}

/// Copy `data` to `buf` at `offset`, cut to the first `want` bytes of `buf`.
fn copy_in(buf: &mut Option<WriteBuf>, offset: u32, data: &[u8], want: u32) {
    let Some(buf) = buf.as_mut() else {
        return;
    };
    let buf: &mut [u8] = (**buf).as_mut();
    let start = offset as usize;
    let want = (want as usize).min(buf.len());
    if start >= want {
        return;
    }
    let n = data.len().min(want - start);
    if let (Some(dst), Some(src)) = (buf.get_mut(start..start + n), data.get(..n)) {
        dst.copy_from_slice(src);
    }
}

/// A text handler for Normal sessions: every key is answered NotUnderstood, except
/// SendTargets, which the service's discovery handler answers when it is plugged in.
pub struct NotUnderstood {
    pub max_xmit_dsl: u32,
}

impl TextHandler for NotUnderstood {
    fn text(&mut self, req: &TextRequest, data: &[u8]) -> Vec<(TextResponse, Vec<u8>)> {
        let mut resp = Vec::new();
        if let Ok(pairs) = crate::wire::text::parse(data) {
            for p in pairs {
                crate::wire::text::push(&mut resp, &p.key, "NotUnderstood");
            }
        }
        resp.truncate(self.max_xmit_dsl as usize);
        vec![(
            TextResponse {
                final_: true,
                cont: false,
                lun: req.lun,
                itt: req.itt,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            },
            resp,
        )]
    }
}

#[cfg(test)]
mod tests;
