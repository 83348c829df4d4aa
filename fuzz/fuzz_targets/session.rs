//! The full-feature session fed arbitrary PDUs. SCSI jobs it asks for are executed against an
//! in-memory disk (now or a few PDUs later, as the input decides) and their outcomes fed back.
//! Must never panic; never sends a data segment over the initiator's limit; the number of
//! tasks in flight stays bounded.
#![no_main]

#[path = "../common/mem.rs"]
mod mem;

use bytes::Bytes;
use isboot::iscsi::session::{Action, ExecJob, NotUnderstood, QUEUE_DEPTH, Session, SessionConfig};
use isboot::scsi::{LogicalUnit, LuIdentity, Nexus, TargetLus};
use isboot::wire::frame::RawPdu;
use isboot::wire::pdu::BHS_LEN;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const MAX_XMIT: u32 = 8192;

/// Checks what the session asks for and queues its jobs; true when it closed the connection.
fn run(actions: Vec<Action>, jobs: &mut Vec<ExecJob>) -> bool {
    let mut closed = false;
    for a in actions {
        match a {
            Action::Send(pdus) => {
                for p in &pdus {
                    assert!(
                        p.data_len() <= MAX_XMIT as usize,
                        "data segment {} over MaxRecvDataSegmentLength",
                        p.data_len()
                    );
                }
            }
            Action::Execute(j) => jobs.push(j),
            Action::Close(_) => closed = true,
        }
    }
    closed
}

fuzz_target!(|data: &[u8]| {
    let ident = LuIdentity {
        vendor: "F".into(),
        product: "F".into(),
        revision: "1".into(),
        serial: "1".into(),
        naa_id: 1,
    };
    let lus = Arc::new(TargetLus::single(Arc::new(LogicalUnit::new(
        Arc::new(mem::Mem::new(256 << 10)),
        ident,
    ))));
    let nexus = Nexus {
        id: 1,
        initiator_port: "iqn.a:i,i,0x800000000001".into(),
        target_port: "iqn.a:t,t,0x0001".into(),
    };
    let Some((&cfgb, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = SessionConfig {
        max_xmit_dsl: MAX_XMIT,
        max_recv_dsl: 8192,
        max_burst: if cfgb & 1 != 0 { 16384 } else { 262144 },
        first_burst: if cfgb & 1 != 0 { 8192 } else { 65536 },
        initial_r2t: cfgb & 2 != 0,
        immediate_data: cfgb & 4 != 0,
        max_outstanding_r2t: 1 + (cfgb >> 4) as u32 % 4,
        cid: 0,
        default_time2wait: 2,
        default_time2retain: 0,
        max_tasks: if cfgb & 8 != 0 { 4 } else { isboot::iscsi::session::QUEUE_DEPTH },
    };
    let mut s = Session::new(
        cfg,
        Some(lus.clone()),
        nexus.clone(),
        1,
        Box::new(NotUnderstood {
            max_xmit_dsl: MAX_XMIT,
        }),
    );
    let mut jobs: Vec<ExecJob> = Vec::new();
    // Each PDU: mode byte, 48 header bytes, AHS words byte, u16 data length, AHS, data.
    while rest.len() > 1 + BHS_LEN + 3 {
        let mode = rest[0];
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&rest[1..1 + BHS_LEN]);
        let ahs_len = (rest[1 + BHS_LEN] as usize % 8) * 4;
        let dlen = u16::from_be_bytes([rest[2 + BHS_LEN], rest[3 + BHS_LEN]]) as usize;
        rest = &rest[4 + BHS_LEN..];
        let ahs_len = ahs_len.min(rest.len());
        let ahs = Bytes::copy_from_slice(&rest[..ahs_len]);
        rest = &rest[ahs_len..];
        let dlen = dlen.min(rest.len()).min(8192);
        let pdu_data = Bytes::copy_from_slice(&rest[..dlen]);
        rest = &rest[dlen..];
        // As the framer would deliver it: lengths in the header match.
        bhs[4] = (ahs.len() / 4) as u8;
        bhs[5..8].copy_from_slice(&(pdu_data.len() as u32).to_be_bytes()[1..]);
        if mode & 1 != 0 {
            // Steer the CmdSN into the window so commands get past the window check.
            bhs[24..28].copy_from_slice(&s.window().0.to_be_bytes());
        }
        let actions = s.handle(RawPdu {
            bhs,
            ahs,
            data: pdu_data,
        });
        if run(actions, &mut jobs) {
            return;
        }
        if mode & 2 != 0 {
            for j in std::mem::take(&mut jobs) {
                let out = lus.execute(&nexus, j.lun, &j.cdb, &j.data_out);
                let actions = s.complete(j.itt, out);
                if run(actions, &mut jobs) {
                    return;
                }
            }
        }
        assert!(
            s.in_flight() <= 2 * QUEUE_DEPTH as usize + 256,
            "tasks unbounded: {}",
            s.in_flight()
        );
    }
    while let Some(j) = jobs.pop() {
        let out = lus.execute(&nexus, j.lun, &j.cdb, &j.data_out);
        let actions = s.complete(j.itt, out);
        if run(actions, &mut jobs) {
            return;
        }
    }
});
