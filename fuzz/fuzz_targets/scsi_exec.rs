//! Arbitrary CDBs and Data-Out through TargetLus::plan and execute against an in-memory disk
//! (two LUNs, one of them read-only-free). Must never panic; Data-In never exceeds the plan.
#![no_main]

#[path = "../common/mem.rs"]
mod mem;

use isboot::scsi::{DataDir, LogicalUnit, LuIdentity, Nexus, TargetLus};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fn lus() -> TargetLus {
    let ident = |s: &str| LuIdentity {
        vendor: "F".into(),
        product: "F".into(),
        revision: "1".into(),
        serial: s.into(),
        naa_id: 1,
    };
    TargetLus::new(vec![
        (
            0,
            Arc::new(LogicalUnit::new(
                Arc::new(mem::Mem::new(64 << 10)),
                ident("0"),
            )),
        ),
        (
            1,
            Arc::new(LogicalUnit::new(Arc::new(mem::Mem::new(4096)), ident("1"))),
        ),
    ])
}

fuzz_target!(|data: &[u8]| {
    // Commands: [lun byte, nexus byte, cdb len byte, cdb..., data len u16, data...]*
    let t = lus();
    let nexus = |n: u8| Nexus {
        id: n as u64 % 2,
        initiator_port: format!("iqn.a:i{},i,0x000000000001", n % 2),
        target_port: "iqn.a:t,t,0x0001".into(),
    };
    let mut rest = data;
    while rest.len() >= 3 {
        let lun = (rest[0] % 3) as u64;
        let nx = nexus(rest[1]);
        let cl = (rest[2] as usize % 33).min(rest.len() - 3);
        let cdb = &rest[3..3 + cl];
        rest = &rest[3 + cl..];
        let dl = if rest.len() >= 2 {
            u16::from_be_bytes([rest[0], rest[1]]) as usize
        } else {
            0
        };
        rest = &rest[rest.len().min(2)..];
        let dl = dl.min(rest.len());
        let dout = &rest[..dl];
        rest = &rest[dl..];
        if cdb.is_empty() {
            continue;
        }
        match t.plan(lun, cdb) {
            Ok(plan) => {
                let dout = if plan.dir == DataDir::Write {
                    &dout[..dout.len().min(plan.bytes as usize)]
                } else {
                    &[][..]
                };
                let out = t.execute(&nx, lun, cdb, dout);
                let n: usize = out.data.iter().map(|d| d.len()).sum();
                assert!(
                    n as u64 <= plan.bytes,
                    "Data-In {n} over plan {}",
                    plan.bytes
                );
            }
            Err(out) => assert_ne!(out.status, 0, "refused plan with GOOD status"),
        }
    }
});
