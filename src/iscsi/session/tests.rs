//! Scripted-PDU tests of the full-feature phase: PDUs in, [`Action`]s out, no sockets. SCSI
//! commands the session hands out are executed against a real file-backed logical unit (or
//! held back, to test what happens while they run) and their outcomes fed back.

use super::*;
use crate::scsi::cdb::op;
use crate::scsi::{LogicalUnit, LuIdentity};
use crate::store::raw::RawFile;
use crate::store::{SECTOR, concat};
use std::io::Write;

const BLOCKS: u64 = 64;
const LUN: u64 = 0;

struct Fixture {
    _file: tempfile::NamedTempFile,
    lus: Arc<TargetLus>,
    nexus: Nexus,
    s: Session,
}

fn config() -> SessionConfig {
    SessionConfig {
        max_xmit_dsl: 8192,
        max_recv_dsl: 8192,
        max_burst: 262144,
        first_burst: 65536,
        initial_r2t: true,
        immediate_data: true,
        max_outstanding_r2t: 1,
        cid: 3,
        default_time2wait: 2,
        default_time2retain: 0,
        max_tasks: QUEUE_DEPTH,
    }
}

/// A session whose first expected CmdSN is `exp_cmd_sn`, on a disk of `bytes` (sparse) whose
/// first 64 blocks are filled with their block number.
fn fixture_sized(cfg: SessionConfig, exp_cmd_sn: u32, bytes: u64) -> Fixture {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..BLOCKS * SECTOR).map(|i| (i / SECTOR) as u8).collect();
    file.write_all(&data).unwrap();
    file.flush().unwrap();
    file.as_file().set_len(bytes.max(BLOCKS * SECTOR)).unwrap();
    let dev = RawFile::open(file.path(), false).unwrap();
    let ident = LuIdentity {
        vendor: "ISBOOT".into(),
        product: "session test".into(),
        revision: "1".into(),
        serial: "s1".into(),
        naa_id: 1,
    };
    let lus = Arc::new(TargetLus::single(Arc::new(LogicalUnit::new(
        Arc::new(dev),
        ident,
    ))));
    let nexus = Nexus {
        id: 1,
        initiator_port: "iqn.2026-11.test:i,i,0x000000000001".into(),
        target_port: "iqn.2026-11.test:t,t,0x0001".into(),
    };
    // Take the unit attention every new nexus gets, as initiators do with TEST UNIT READY.
    let ua = lus.execute(&nexus, LUN, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
    assert_eq!(ua.status, status::CHECK_CONDITION);
    let text = Box::new(NotUnderstood { max_xmit_dsl: 8192 });
    let s = Session::new(cfg, Some(lus.clone()), nexus.clone(), exp_cmd_sn, text);
    Fixture {
        _file: file,
        lus,
        nexus,
        s,
    }
}

fn fixture_with(cfg: SessionConfig, exp_cmd_sn: u32) -> Fixture {
    fixture_sized(cfg, exp_cmd_sn, 0)
}

fn fixture() -> Fixture {
    fixture_with(config(), 1)
}

impl Fixture {
    /// Execute a job the session handed out and feed its outcome back.
    fn run(&mut self, job: &ExecJob) -> Vec<Action> {
        let o = self
            .lus
            .execute(&self.nexus, job.lun, &job.cdb, &job.data_out);
        self.s.complete(job.itt, o)
    }
}

fn raw(bhs: Bhs, data: &[u8]) -> RawPdu {
    let (b, ahs) = bhs.emit(data.len() as u32);
    RawPdu {
        bhs: b,
        ahs: ahs.into(),
        data: Bytes::copy_from_slice(data),
    }
}

fn cdb10(opcode: u8, lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn command(itt: u32, cmd_sn: u32, cdb: [u8; 16], expected_len: u32) -> ScsiCommand {
    ScsiCommand {
        immediate: false,
        final_: true,
        read: false,
        write: false,
        attr: 1,
        lun: LUN,
        itt,
        expected_len,
        cmd_sn,
        exp_stat_sn: 0,
        cdb,
        ext_cdb: Vec::new(),
        bidi_read_len: None,
    }
}

fn read10(itt: u32, cmd_sn: u32, lba: u32, blocks: u16) -> RawPdu {
    let mut c = command(
        itt,
        cmd_sn,
        cdb10(op::READ10, lba, blocks),
        blocks as u32 * 512,
    );
    c.read = true;
    raw(Bhs::ScsiCommand(c), &[])
}

/// WRITE(10) with `imm` as immediate data; F set when no unsolicited Data-Out follows.
fn write10(itt: u32, cmd_sn: u32, lba: u32, blocks: u16, imm: &[u8], final_: bool) -> RawPdu {
    let mut c = command(
        itt,
        cmd_sn,
        cdb10(op::WRITE10, lba, blocks),
        blocks as u32 * 512,
    );
    c.write = true;
    c.final_ = final_;
    raw(Bhs::ScsiCommand(c), imm)
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, data: &[u8], final_: bool) -> RawPdu {
    raw(
        Bhs::DataOut(DataOut {
            final_,
            lun: LUN,
            itt,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: offset,
        }),
        data,
    )
}

fn tmf(itt: u32, cmd_sn: u32, function: u8, lun: u64, referenced: (u32, u32)) -> RawPdu {
    raw(
        Bhs::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function,
            lun,
            itt,
            referenced_tt: referenced.0,
            cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: referenced.1,
            exp_data_sn: 0,
        }),
        &[],
    )
}

fn logout(itt: u32, cmd_sn: u32, reason: u8, cid: u16) -> RawPdu {
    raw(
        Bhs::LogoutRequest(LogoutRequest {
            immediate: true,
            reason,
            itt,
            cid,
            cmd_sn,
            exp_stat_sn: 0,
        }),
        &[],
    )
}

fn nop_out(itt: u32, cmd_sn: u32, immediate: bool, data: &[u8]) -> RawPdu {
    raw(
        Bhs::NopOut(NopOut {
            immediate,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: 0,
        }),
        data,
    )
}

/// What the session asked for, decoded.
#[derive(Debug, Default)]
struct Out {
    sent: Vec<(Bhs, Stamp, Vec<u8>)>,
    jobs: Vec<ExecJob>,
    closed: Option<SessionEnd>,
}

fn decode(actions: Vec<Action>) -> Out {
    let mut out = Out::default();
    for a in actions {
        assert!(out.closed.is_none(), "nothing may follow Close");
        match a {
            Action::Send(pdus) => {
                for p in pdus {
                    let bhs = Bhs::parse(&p.bhs, &[]).unwrap();
                    out.sent.push((bhs, p.stamp, concat(&p.data)));
                }
            }
            Action::Execute(j) => out.jobs.push(j),
            Action::Close(why) => out.closed = Some(why),
        }
    }
    out
}

fn one_job(out: Out) -> ExecJob {
    assert!(out.sent.is_empty(), "{:?}", out.sent);
    assert_eq!(out.jobs.len(), 1, "{:?}", out.jobs);
    out.jobs.into_iter().next().unwrap()
}

fn rejected(out: &Out) -> Vec<u8> {
    out.sent
        .iter()
        .filter_map(|(b, _, _)| match b {
            Bhs::Reject(r) => Some(r.reason),
            _ => None,
        })
        .collect()
}

fn scsi_response(out: &Out) -> (ScsiResponse, Vec<u8>) {
    out.sent
        .iter()
        .find_map(|(b, _, d)| match b {
            Bhs::ScsiResponse(r) => Some((*r, d.clone())),
            _ => None,
        })
        .expect("a SCSI Response")
}

fn tmf_answer(out: &Out) -> u8 {
    match out.sent.as_slice() {
        [(Bhs::TaskMgmtResponse(r), Stamp::Advance, _)] => r.response,
        other => panic!("expected one TMF response, got {other:?}"),
    }
}

/// (sense key, ASC, ASCQ) of a SCSI Response's sense data (2-byte length first).
fn sense_of(data: &[u8]) -> (u8, u8, u8) {
    assert_eq!(
        u16::from_be_bytes([data[0], data[1]]) as usize,
        data.len() - 2
    );
    (data[4] & 0x0f, data[14], data[15])
}

#[test]
fn commands_run_in_cmdsn_order_and_the_window_moves() {
    let mut f = fixture();
    assert_eq!(f.s.window(), (1, QUEUE_DEPTH));
    let job = one_job(decode(f.s.handle(read10(0x10, 1, 0, 1))));
    assert_eq!(
        (job.itt, job.dir, job.nonblocking),
        (0x10, DataDir::Read, true)
    );
    // Accepted and not answered: ExpCmdSN moved on, the window shrank by one.
    assert_eq!(f.s.window(), (2, QUEUE_DEPTH));
    assert_eq!(f.s.in_flight(), 1);
    let out = decode(f.run(&job));
    match out.sent.as_slice() {
        [(Bhs::DataIn(d), Stamp::Advance, data)] => {
            assert!(d.final_ && d.status_present);
            assert_eq!((d.itt, d.data_sn, d.buffer_offset), (0x10, 0, 0));
            assert_eq!(data, &vec![0u8; 512]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.s.window(), (2, 1 + QUEUE_DEPTH));
    assert_eq!(f.s.in_flight(), 0);
}

#[test]
fn commands_ahead_of_a_cmdsn_gap_are_held_until_it_fills() {
    let mut f = fixture();
    // CmdSN 2 and 3 arrive before 1: held, nothing runs.
    assert!(f.s.handle(read10(0x12, 2, 2, 1)).is_empty());
    assert!(f.s.handle(read10(0x13, 3, 3, 1)).is_empty());
    assert_eq!(f.s.window().0, 1);
    // A command outside the window is dropped silently (RFC 7143 §4.2.2.1).
    assert!(f.s.handle(read10(0x99, 1 + QUEUE_DEPTH, 0, 1)).is_empty());
    // The gap fills: all three run, in CmdSN order.
    let out = decode(f.s.handle(read10(0x11, 1, 1, 1)));
    let itts: Vec<u32> = out.jobs.iter().map(|j| j.itt).collect();
    assert_eq!(itts, [0x11, 0x12, 0x13]);
    assert_eq!(f.s.window().0, 4);
    // The next one runs at once.
    assert_eq!(decode(f.s.handle(read10(0x14, 4, 0, 1))).jobs.len(), 1);
}

#[test]
fn held_commands_are_released_across_the_cmdsn_wrap() {
    // Held CmdSNs 2^32-1 and 0: the smallest key is not the next one in serial order.
    let mut f = fixture_with(config(), u32::MAX - 1);
    assert!(f.s.handle(read10(0x22, 0, 0, 1)).is_empty());
    assert!(f.s.handle(read10(0x21, u32::MAX, 0, 1)).is_empty());
    let out = decode(f.s.handle(read10(0x20, u32::MAX - 1, 0, 1)));
    let itts: Vec<u32> = out.jobs.iter().map(|j| j.itt).collect();
    assert_eq!(itts, [0x20, 0x21, 0x22]);
    assert_eq!(f.s.window().0, 1);
}

#[test]
fn immediate_commands_take_no_cmdsn_but_a_window_slot_while_open() {
    let mut f = fixture();
    // An immediate NOP-Out carries the current CmdSN without consuming it; it is answered
    // with its data echoed.
    let out = decode(f.s.handle(nop_out(0x30, 1, true, b"ping")));
    match out.sent.as_slice() {
        [(Bhs::NopIn(n), Stamp::Advance, data)] => {
            assert_eq!((n.itt, n.ttt), (0x30, RESERVED_TAG));
            assert_eq!(data, b"ping");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.s.window(), (1, QUEUE_DEPTH));
    // An immediate SCSI command runs at once and leaves the window alone.
    let mut c = command(0x31, 1, cdb10(op::READ10, 0, 1), 512);
    c.immediate = true;
    c.read = true;
    let job = one_job(decode(f.s.handle(raw(Bhs::ScsiCommand(c), &[]))));
    // While it is open it holds a task, and the advertised window says so.
    assert_eq!(f.s.window(), (1, QUEUE_DEPTH - 1));
    assert_eq!(decode(f.run(&job)).sent.len(), 1);
    assert_eq!(f.s.window(), (1, QUEUE_DEPTH));
    // A non-immediate NOP-Out does take its CmdSN.
    assert_eq!(
        decode(f.s.handle(nop_out(0x32, 1, false, b""))).sent.len(),
        1
    );
    assert_eq!(f.s.window().0, 2);
    // The initiator's answer to our ping (ITT reserved) is not answered.
    assert!(f.s.handle(nop_out(RESERVED_TAG, 2, false, b"")).is_empty());
    assert_eq!(f.s.window().0, 2);
}

#[test]
fn a_ping_asks_for_an_answer_and_carries_the_current_statsn() {
    let mut f = fixture();
    let (ta, a) = f.s.ping();
    let (tb, b) = f.s.ping();
    assert_eq!(a.stamp, Stamp::Current);
    let ttt = |p: &OutPdu| match Bhs::parse(&p.bhs, &[]).unwrap() {
        Bhs::NopIn(n) => {
            assert_eq!(n.itt, RESERVED_TAG);
            n.ttt
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(ttt(&a), RESERVED_TAG);
    assert_ne!(ttt(&a), ttt(&b));
    assert_eq!((ttt(&a), ttt(&b)), (ta, tb), "ping() names the TTT it sent");
}

#[test]
fn an_answered_ping_is_reported_once_by_its_ttt() {
    let mut f = fixture();
    let (ttt, _) = f.s.ping();
    assert_eq!(f.s.take_answered_ping(), None, "nothing answered yet");
    // An unsolicited NOP-Out (TTT reserved) answers no ping.
    assert!(f.s.handle(nop_out(RESERVED_TAG, 1, true, b"")).is_empty());
    assert_eq!(f.s.take_answered_ping(), None);
    let answer = raw(
        Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: RESERVED_TAG,
            ttt,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }),
        b"",
    );
    assert!(f.s.handle(answer).is_empty(), "an answer gets no reply");
    assert_eq!(f.s.take_answered_ping(), Some(ttt));
    assert_eq!(f.s.take_answered_ping(), None, "reported once");
}

#[test]
fn reads_are_split_into_data_in_pdus_with_status_on_the_last() {
    let mut cfg = config();
    cfg.max_xmit_dsl = 512;
    cfg.max_burst = 1024;
    let mut f = fixture_with(cfg, 1);
    let job = one_job(decode(f.s.handle(read10(0x40, 1, 4, 4))));
    let out = decode(f.run(&job));
    assert_eq!(out.sent.len(), 4);
    for (i, (bhs, stamp, data)) in out.sent.iter().enumerate() {
        let Bhs::DataIn(d) = bhs else {
            panic!("{bhs:?}")
        };
        let last = i == 3;
        assert_eq!(d.data_sn, i as u32);
        assert_eq!(d.buffer_offset, i as u32 * 512);
        // F ends each 1024-byte burst; status only on the last PDU.
        assert_eq!(d.final_, i % 2 == 1);
        assert_eq!(d.status_present, last);
        assert_eq!(
            *stamp,
            if last {
                Stamp::Advance
            } else {
                Stamp::WindowOnly
            }
        );
        assert_eq!(data, &vec![4 + i as u8; 512]);
    }
}

#[test]
fn writes_are_solicited_with_r2ts_in_order() {
    let mut cfg = config();
    cfg.max_burst = 1024;
    cfg.immediate_data = false;
    let mut f = fixture_with(cfg, 1);
    // 4 blocks = 2048 bytes, max burst 1024, one R2T outstanding at a time.
    let out = decode(f.s.handle(write10(0x50, 1, 8, 4, &[], true)));
    let r2t = |out: &Out| match out.sent.as_slice() {
        [(Bhs::R2t(r), Stamp::Current, _)] => *r,
        other => panic!("expected one R2T, got {other:?}"),
    };
    let first = r2t(&out);
    assert_eq!((first.itt, first.r2t_sn), (0x50, 0));
    assert_eq!((first.buffer_offset, first.desired_len), (0, 1024));
    // Answer it in two Data-Out PDUs.
    let half = vec![0xA1u8; 512];
    assert!(
        f.s.handle(data_out(0x50, first.ttt, 0, 0, &half, false))
            .is_empty()
    );
    let out = decode(f.s.handle(data_out(0x50, first.ttt, 1, 512, &half, true)));
    let second = r2t(&out);
    assert_eq!(second.r2t_sn, 1);
    assert_eq!((second.buffer_offset, second.desired_len), (1024, 1024));
    assert_ne!(second.ttt, first.ttt);
    let rest = vec![0xB2u8; 1024];
    let job = one_job(decode(
        f.s.handle(data_out(0x50, second.ttt, 0, 1024, &rest, true)),
    ));
    assert_eq!(job.dir, DataDir::Write);
    assert!(!job.nonblocking);
    assert_eq!(&job.data_out[..1024], &[0xA1; 1024][..]);
    assert_eq!(&job.data_out[1024..], &rest[..]);
    let (resp, sense) = scsi_response(&decode(f.run(&job)));
    assert_eq!((resp.status, resp.itt), (status::GOOD, 0x50));
    assert!(sense.is_empty());
}

#[test]
fn immediate_and_unsolicited_data_come_first_then_r2ts_for_the_rest() {
    let mut cfg = config();
    cfg.initial_r2t = false;
    cfg.first_burst = 1024;
    let mut f = fixture_with(cfg, 1);
    // 2048 bytes: 512 immediate, 512 unsolicited Data-Out (first burst 1024), 1024 by R2T.
    let imm = vec![1u8; 512];
    assert!(f.s.handle(write10(0x60, 1, 0, 4, &imm, false)).is_empty());
    let out = decode(f.s.handle(data_out(0x60, RESERVED_TAG, 0, 512, &[2u8; 512], true)));
    let r = match out.sent.as_slice() {
        [(Bhs::R2t(r), _, _)] => *r,
        other => panic!("{other:?}"),
    };
    assert_eq!((r.buffer_offset, r.desired_len), (1024, 1024));
    let job = one_job(decode(f.s.handle(data_out(
        0x60,
        r.ttt,
        0,
        1024,
        &[3u8; 1024],
        true,
    ))));
    assert_eq!(&job.data_out[..512], &[1u8; 512][..]);
    assert_eq!(&job.data_out[512..1024], &[2u8; 512][..]);
    assert_eq!(&job.data_out[1024..], &[3u8; 1024][..]);
}

#[test]
fn a_data_sn_gap_rejects_the_pdu_and_fails_the_command() {
    let mut f = fixture();
    let out = decode(f.s.handle(write10(0x70, 1, 0, 2, &[], true)));
    let Some((Bhs::R2t(r), _, _)) = out.sent.first() else {
        panic!("{out:?}")
    };
    let r = *r;
    // DataSN 1 where 0 is due: ERL 0 cannot recover.
    let out = decode(f.s.handle(data_out(0x70, r.ttt, 1, 0, &[0u8; 512], false)));
    assert_eq!(rejected(&out), [reject_reason::PROTOCOL_ERROR]);
    let (resp, sense) = scsi_response(&out);
    assert_eq!((resp.itt, resp.status), (0x70, status::CHECK_CONDITION));
    assert_eq!(
        sense_of(&sense),
        (key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR.0, 0)
    );
    assert!(out.jobs.is_empty());
    // The task is gone; its late Data-Out is dropped quietly, and the window slot is free.
    assert!(
        f.s.handle(data_out(0x70, r.ttt, 0, 0, &[0u8; 512], false))
            .is_empty()
    );
    assert_eq!(f.s.in_flight(), 0);
    assert_eq!(f.s.window(), (2, 1 + QUEUE_DEPTH));
}

#[test]
fn data_out_outside_its_r2t_is_a_protocol_error() {
    let mut f = fixture();
    let out = decode(f.s.handle(write10(0x71, 1, 0, 2, &[], true)));
    let Some((Bhs::R2t(r), _, _)) = out.sent.first() else {
        panic!("{out:?}")
    };
    let r = *r;
    // Wrong offset, then past the R2T's end, then an unknown TTT.
    let out = decode(f.s.handle(data_out(0x71, r.ttt, 0, 512, &[0u8; 512], false)));
    assert_eq!(rejected(&out), [reject_reason::PROTOCOL_ERROR]);
    let out = decode(f.s.handle(data_out(0x71, r.ttt, 0, 0, &[0u8; 1536], false)));
    assert_eq!(rejected(&out), [reject_reason::PROTOCOL_ERROR]);
    let out = decode(f.s.handle(data_out(0x71, 0x0bad, 0, 0, &[0u8; 512], false)));
    assert_eq!(rejected(&out), [reject_reason::INVALID_PDU_FIELD]);
    // The task still takes the right data.
    let job = one_job(decode(f.s.handle(data_out(
        0x71,
        r.ttt,
        0,
        0,
        &[7u8; 1024],
        true,
    ))));
    assert_eq!(job.data_out.len(), 1024);
}

#[test]
fn data_out_announced_for_a_cdb_without_data_is_refused() {
    let mut f = fixture();
    let (a, q) = asc::INVALID_FIELD_IN_CDB;
    // WRITE(10) of 0 blocks with data announced (a count that wrapped, say).
    for (n, edtl) in [512u32, 3 * 512].into_iter().enumerate() {
        let itt = 0x90 + n as u32;
        let mut c = command(itt, 1 + n as u32, cdb10(op::WRITE10, 4, 0), edtl);
        c.write = true;
        let out = decode(f.s.handle(raw(Bhs::ScsiCommand(c), &[])));
        let (resp, sense) = scsi_response(&out);
        assert_eq!((resp.itt, resp.status), (itt, status::CHECK_CONDITION));
        assert_eq!(sense_of(&sense), (key::ILLEGAL_REQUEST, a, q));
        assert!(out.jobs.is_empty(), "nothing written");
        assert_eq!(f.s.in_flight(), 0);
    }
    // The same command with a matching length is solicited as usual.
    let out = decode(f.s.handle(write10(0x9f, 3, 4, 2, &[], true)));
    assert!(
        matches!(out.sent.as_slice(), [(Bhs::R2t(_), _, _)]),
        "{:?}",
        out.sent
    );
}

#[test]
fn a_transfer_over_the_limit_is_refused_before_any_data() {
    let mut f = fixture_sized(config(), 1, 2 * MAX_TRANSFER_BYTES);
    let blocks = (MAX_TRANSFER_BYTES / 512 + 1) as u32;
    let mut cdb = [0u8; 16];
    cdb[0] = op::READ16;
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let mut c = command(0x80, 1, cdb, 4096);
    c.read = true;
    let out = decode(f.s.handle(raw(Bhs::ScsiCommand(c), &[])));
    let (resp, sense) = scsi_response(&out);
    assert_eq!(resp.status, status::CHECK_CONDITION);
    let (a, q) = asc::INVALID_FIELD_IN_CDB;
    assert_eq!(sense_of(&sense), (key::ILLEGAL_REQUEST, a, q));
    assert!(out.jobs.is_empty());
    assert_eq!(f.s.in_flight(), 0);
}

#[test]
fn abort_task_waits_for_an_executing_command_and_drops_its_response() {
    let mut f = fixture();
    let job = one_job(decode(f.s.handle(read10(0x90, 1, 0, 1))));
    // Executing: the TMF response waits for it.
    assert!(
        f.s.handle(tmf(0x91, 2, tmf_function::ABORT_TASK, LUN, (0x90, 1)))
            .is_empty()
    );
    // It completes: no SCSI response for it, the TMF answer goes out.
    let out = decode(f.run(&job));
    assert_eq!(tmf_answer(&out), tmf_response::COMPLETE);
    assert_eq!(f.s.in_flight(), 0);
}

#[test]
fn abort_task_of_a_command_not_yet_received_counts_it_as_received() {
    let mut f = fixture();
    // CmdSN 2 is held behind the gap at 1; CmdSN 1 is aborted before it arrives.
    assert!(f.s.handle(read10(0xa2, 2, 0, 1)).is_empty());
    let out = decode(f.s.handle(tmf(0xa3, 3, tmf_function::ABORT_TASK, LUN, (0xa1, 1))));
    assert_eq!(tmf_answer(&out), tmf_response::COMPLETE);
    // ExpCmdSN moved past the aborted command, which releases the one held behind it.
    let itts: Vec<u32> = out.jobs.iter().map(|j| j.itt).collect();
    assert_eq!(itts, [0xa2]);
    assert_eq!(f.s.window().0, 3);
    // A reference to a command already answered: no such task.
    let out = decode(f.s.handle(tmf(0xa4, 3, tmf_function::ABORT_TASK, LUN, (0x55, 0))));
    assert_eq!(tmf_answer(&out), tmf_response::TASK_DOES_NOT_EXIST);
}

#[test]
fn lun_reset_ends_commands_still_collecting_data_at_once() {
    let mut f = fixture();
    let out = decode(f.s.handle(write10(0xb0, 1, 0, 2, &[], true)));
    let Some((Bhs::R2t(r), _, _)) = out.sent.first() else {
        panic!("{out:?}")
    };
    let r = *r;
    let out = decode(f.s.handle(tmf(0xb1, 2, tmf_function::LOGICAL_UNIT_RESET, LUN, (0, 0))));
    assert_eq!(tmf_answer(&out), tmf_response::COMPLETE);
    assert_eq!(f.s.in_flight(), 0);
    // Its Data-Out, still on the way, is dropped without a Reject.
    assert!(
        f.s.handle(data_out(0xb0, r.ttt, 0, 0, &[0u8; 1024], true))
            .is_empty()
    );
}

#[test]
fn task_management_refusals() {
    let mut f = fixture();
    let answer = |f: &mut Fixture, function: u8, lun: u64| {
        tmf_answer(&decode(f.s.handle(tmf(0xc0, 1, function, lun, (0, 0)))))
    };
    assert_eq!(
        answer(&mut f, tmf_function::LOGICAL_UNIT_RESET, 9),
        tmf_response::LUN_DOES_NOT_EXIST
    );
    assert_eq!(
        answer(&mut f, tmf_function::TASK_REASSIGN, LUN),
        tmf_response::REASSIGNMENT_NOT_SUPPORTED
    );
    assert_eq!(answer(&mut f, 0x7f, LUN), tmf_response::REJECTED);
}

#[test]
fn target_cold_reset_answers_then_closes() {
    let mut f = fixture();
    let out = decode(f.s.handle(tmf(0xd0, 1, tmf_function::TARGET_COLD_RESET, LUN, (0, 0))));
    assert_eq!(out.closed, Some(SessionEnd::TargetColdReset));
    match out.sent.as_slice() {
        [(Bhs::TaskMgmtResponse(r), _, _)] => assert_eq!(r.response, tmf_response::COMPLETE),
        other => panic!("{other:?}"),
    }
}

#[test]
fn logout_waits_for_running_commands_and_refuses_new_ones() {
    let mut f = fixture();
    let job = one_job(decode(f.s.handle(read10(0xe0, 1, 0, 1))));
    // Logout while a command runs: no answer yet.
    assert!(f.s.handle(logout(0xe1, 2, 0, 3)).is_empty());
    // Nothing new starts meanwhile.
    let out = decode(f.s.handle(read10(0xe2, 2, 0, 1)));
    assert_eq!(rejected(&out), [reject_reason::WAITING_FOR_LOGOUT]);
    assert!(out.jobs.is_empty());
    // The command completes: its data, then the logout response, then close.
    let out = decode(f.run(&job));
    assert_eq!(out.closed, Some(SessionEnd::Logout));
    match out.sent.as_slice() {
        [
            (Bhs::DataIn(d), _, _),
            (Bhs::LogoutResponse(l), Stamp::Advance, _),
        ] => {
            assert_eq!(d.itt, 0xe0);
            assert_eq!((l.itt, l.response), (0xe1, 0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn logout_drops_commands_still_collecting_data() {
    let mut f = fixture();
    let _ = f.s.handle(write10(0xe5, 1, 0, 2, &[], true));
    let out = decode(f.s.handle(logout(0xe6, 2, 0, 3)));
    assert_eq!(out.closed, Some(SessionEnd::Logout));
    assert!(matches!(out.sent.as_slice(), [(Bhs::LogoutResponse(l), _, _)] if l.response == 0));
}

#[test]
fn logout_of_another_connection_or_for_recovery_is_refused() {
    let mut f = fixture();
    let answer = |out: Out| match out.sent.as_slice() {
        [(Bhs::LogoutResponse(l), _, _)] if out.closed.is_none() => l.response,
        other => panic!("{other:?}"),
    };
    // Close connection 9: not ours (CID 3), "CID not found".
    assert_eq!(answer(decode(f.s.handle(logout(0xf0, 1, 1, 9)))), 1);
    // Remove for recovery: needs ErrorRecoveryLevel 2.
    assert_eq!(answer(decode(f.s.handle(logout(0xf1, 1, 2, 3)))), 2);
    // Closing our own connection works.
    let out = decode(f.s.handle(logout(0xf2, 1, 1, 3)));
    assert_eq!(out.closed, Some(SessionEnd::Logout));
}

#[test]
fn pdus_the_target_never_takes_are_rejected() {
    let mut f = fixture();
    let snack = raw(
        Bhs::Snack(crate::wire::pdu::Snack {
            kind: 0,
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            exp_stat_sn: 0,
            beg_run: 0,
            run_length: 0,
        }),
        &[],
    );
    assert_eq!(
        rejected(&decode(f.s.handle(snack))),
        [reject_reason::SNACK_REJECT]
    );
    // A target-only opcode (a NOP-In) from the initiator.
    let nop_in = raw(
        Bhs::NopIn(NopIn {
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        }),
        &[],
    );
    assert_eq!(
        rejected(&decode(f.s.handle(nop_in))),
        [reject_reason::PROTOCOL_ERROR]
    );
    // A task tag already in use.
    let _ = one_job(decode(f.s.handle(read10(0x5, 1, 0, 1))));
    let out = decode(f.s.handle(read10(0x5, 2, 0, 1)));
    assert_eq!(rejected(&out), [reject_reason::TASK_IN_PROGRESS]);
}

#[test]
fn open_tasks_are_capped_immediate_commands_included() {
    let mut cfg = config();
    cfg.max_tasks = 4;
    let mut f = fixture_with(cfg, 1);
    // Four immediate commands, none answered yet: each takes a task slot.
    let mut jobs = Vec::new();
    for itt in 0..4 {
        let mut c = command(0x40 + itt, 1, cdb10(op::READ10, 0, 1), 512);
        c.immediate = true;
        c.read = true;
        jobs.push(one_job(decode(f.s.handle(raw(Bhs::ScsiCommand(c), &[])))));
    }
    assert_eq!(
        f.s.window(),
        (1, 0),
        "MaxCmdSN = ExpCmdSN - 1: nothing free"
    );
    // A fifth immediate command is answered TASK SET FULL and kept nowhere.
    let mut c = command(0x50, 1, cdb10(op::READ10, 0, 1), 512);
    c.immediate = true;
    c.read = true;
    let out = decode(f.s.handle(raw(Bhs::ScsiCommand(c), &[])));
    assert!(out.jobs.is_empty());
    let (r, data) = scsi_response(&out);
    assert_eq!(
        (r.itt, r.status, r.residual),
        (0x50, status::TASK_SET_FULL, 512)
    );
    assert!(r.underflow && data.is_empty());
    assert_eq!(f.s.in_flight(), 4);
    // Numbered commands still have their own window (an initiator may have sent them within
    // a MaxCmdSN it saw before the immediate ones arrived), up to max_tasks of them.
    for sn in 1..=4u32 {
        jobs.push(one_job(decode(f.s.handle(read10(0x60 + sn, sn, 0, 1)))));
    }
    assert!(
        f.s.handle(read10(0x70, 5, 0, 1)).is_empty(),
        "beyond the numbered window: ignored (RFC 7143 4.2.2.1)"
    );
    assert_eq!(f.s.in_flight(), 8, "at most 2 x max_tasks open");
    for j in &jobs {
        assert!(!decode(f.run(j)).sent.is_empty());
    }
    assert_eq!(f.s.in_flight(), 0);
    assert_eq!(f.s.window(), (5, 8));
    // CmdSN 5 was dropped, not held: sent again, it runs.
    assert_eq!(decode(f.s.handle(read10(0x70, 5, 0, 1))).jobs.len(), 1);
}

/// The only R2T of `out`.
fn only_r2t(out: &Out) -> R2t {
    match out.sent.as_slice() {
        [(Bhs::R2t(r), _, _)] => *r,
        other => panic!("expected one R2T: {other:?}"),
    }
}

#[test]
fn write_buffers_come_from_the_budget_and_commands_wait_for_it() {
    let budget = crate::service::budget::Bytes::new(16 * 1024);
    let mut cfg = config();
    cfg.initial_r2t = false;
    let mut f = fixture_with(cfg, 1);
    f.s.set_write_budget(Box::new(budget.clone()));
    let a: Vec<u8> = (0..24 * 512).map(|i| (i % 253) as u8).collect();
    let b: Vec<u8> = (0..16 * 512).map(|i| (i % 127) as u8 ^ 0x5a).collect();

    // A (12 KiB) fits: its buffer is held and the rest of its data solicited.
    let out = decode(f.s.handle(write10(1, 1, 0, 24, &a[..4096], true)));
    let r = only_r2t(&out);
    assert_eq!((r.buffer_offset, r.desired_len), (4096, 8192));
    assert_eq!(budget.stats().in_use, 12 * 1024);
    // B (8 KiB) does not: no R2T, its immediate and unsolicited data are kept as they come.
    let out = decode(f.s.handle(write10(2, 2, 32, 16, &b[..1024], false)));
    assert!(out.sent.is_empty() && out.jobs.is_empty(), "{out:?}");
    assert!(
        decode(f.s.handle(data_out(2, RESERVED_TAG, 0, 1024, &b[1024..2048], true)))
            .sent
            .is_empty()
    );
    assert!(
        !f.s.budget_blocked(),
        "A still collects: the connection keeps reading"
    );
    assert_eq!(budget.stats().in_use, 12 * 1024);

    // A's data completes it; now only B is left, waiting: read nothing more.
    let job_a = one_job(decode(f.s.handle(data_out(
        1,
        r.ttt,
        0,
        4096,
        &a[4096..],
        true,
    ))));
    assert!(f.s.budget_blocked());
    assert!(f.s.retry_budget().is_empty(), "A's buffer is still held");
    let done = decode(f.run(&job_a));
    assert_eq!(scsi_response(&done).0.status, status::GOOD);
    drop(job_a);
    assert_eq!(budget.stats().in_use, 0, "given back with A's data");

    // B gets its buffer and an R2T for what the unsolicited data did not bring.
    let out = decode(f.s.retry_budget());
    let r = only_r2t(&out);
    assert_eq!((r.itt, r.buffer_offset, r.desired_len), (2, 2048, 6144));
    assert!(!f.s.budget_blocked());
    let job_b = one_job(decode(f.s.handle(data_out(
        2,
        r.ttt,
        0,
        2048,
        &b[2048..],
        true,
    ))));
    assert_eq!(
        job_b.data_out.as_ref(),
        &b[..],
        "unsolicited data kept while waiting"
    );
    assert_eq!(scsi_response(&decode(f.run(&job_b))).0.status, status::GOOD);
    drop(job_b);
    let st = budget.stats();
    assert_eq!((st.in_use, st.peak), (0, 12 * 1024));

    // Both are on the disk.
    let read = |lba: u32, blocks: u16| {
        f.lus
            .execute(&f.nexus, LUN, &cdb10(op::READ10, lba, blocks), &[])
            .data
    };
    assert_eq!(concat(&read(0, 24)), a);
    assert_eq!(concat(&read(32, 16)), b);
}

#[test]
fn a_write_waiting_for_budget_is_dropped_with_its_task() {
    let budget = crate::service::budget::Bytes::new(8 * 1024);
    let mut f = fixture();
    f.s.set_write_budget(Box::new(budget.clone()));
    let held = budget.try_take(8 * 1024).expect("all of it");
    assert!(
        decode(f.s.handle(write10(1, 1, 0, 4, &[7; 512], true)))
            .sent
            .is_empty()
    );
    assert!(f.s.budget_blocked());
    // ABORT TASK ends it at once; nothing waits any more.
    let out = decode(f.s.handle(tmf(2, 2, tmf_function::ABORT_TASK, LUN, (1, 1))));
    assert!(matches!(
        out.sent.as_slice(),
        [(Bhs::TaskMgmtResponse(_), _, _)]
    ));
    assert!(!f.s.budget_blocked());
    drop(held);
    assert!(f.s.retry_budget().is_empty());
    // A command larger than the whole budget is refused, not left waiting forever.
    let out = decode(f.s.handle(write10(3, 2, 0, 32, &[], true)));
    let (r, sense) = scsi_response(&out);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(sense_of(&sense).0, key::ILLEGAL_REQUEST);
    assert_eq!(budget.stats().in_use, 0);
}

#[test]
fn unsolicited_data_kept_for_waiting_writes_is_capped_per_session() {
    let mut cfg = config();
    cfg.first_burst = 256 * 1024;
    cfg.initial_r2t = false;
    let budget = crate::service::budget::Bytes::new(1024 * 1024);
    let mut f = fixture_sized(cfg, 1, 8 << 20);
    f.s.set_write_budget(Box::new(budget.clone()));
    let held = budget.try_take(1024 * 1024).expect("all of it");
    // Four 512 KiB WRITEs that may each bring a 256 KiB first burst wait: 1 MiB of it kept.
    for i in 0..4u32 {
        let out = decode(f.s.handle(write10(10 + i, 1 + i, i * 1024, 1024, &[1; 512], false)));
        assert!(out.sent.is_empty(), "command {i} waits: {:?}", out.sent);
    }
    // The fifth could bring more than the session keeps for waiting commands.
    let out = decode(f.s.handle(write10(14, 5, 4096, 1024, &[1; 512], false)));
    let (r, _) = scsi_response(&out);
    assert_eq!((r.itt, r.status), (14, status::TASK_SET_FULL));
    // Its unsolicited data, still coming, is dropped without a Reject.
    let late = decode(f.s.handle(data_out(14, RESERVED_TAG, 0, 512, &[1; 512], true)));
    assert!(late.sent.is_empty(), "{:?}", late.sent);
    // A waiting write that brings no unsolicited data is not limited by it.
    let mut c = command(15, 6, cdb10(op::WRITE10, 5120, 8), 8 * 512);
    c.write = true;
    assert!(
        decode(f.s.handle(raw(Bhs::ScsiCommand(c), &[])))
            .sent
            .is_empty()
    );
    // Once waiting writes have their buffers, their part of the cap is free again.
    drop(held);
    let out = decode(f.s.retry_budget());
    assert!(
        out.sent.is_empty(),
        "their first bursts are still open: no R2T yet"
    );
    assert_eq!(
        budget.stats().in_use,
        1024 * 1024,
        "the first two have buffers"
    );
    let out = decode(f.s.handle(write10(16, 7, 6144, 1024, &[1; 512], false)));
    assert!(out.sent.is_empty(), "it waits again: {:?}", out.sent);
}
