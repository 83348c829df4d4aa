//! A sequence of Login Request PDUs (headers and text from the fuzzer) driving the login state
//! machine against a registry with an open target and a CHAP-protected one. Must never panic,
//! never answer with more than the login limit in one PDU, and stop after a refusal.
#![no_main]

use isboot::iscsi::login::{Login, LoginOutcome, SessionTable};
use isboot::iscsi::negotiate::TargetLimits;
use isboot::iscsi::target::{ChapConfig, StaticRegistry, TargetConfig, TargetStats};
use isboot::scsi::{LogicalUnit, LuIdentity, TargetLus};
use isboot::store::BlockDevice;
use isboot::wire::pdu::{BHS_LEN, Bhs};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

/// An empty in-memory device: login never touches it.
struct Null;
impl BlockDevice for Null {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read(
        &self,
        _: u64,
        len: usize,
        out: &mut Vec<isboot::store::Segment>,
    ) -> Result<(), isboot::store::StoreError> {
        out.push(vec![0u8; len].into());
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), isboot::store::StoreError> {
        Err(isboot::store::StoreError::ReadOnly)
    }
    fn flush(&self) -> Result<(), isboot::store::StoreError> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), isboot::store::StoreError> {
        Err(isboot::store::StoreError::ReadOnly)
    }
}

struct Table;
impl SessionTable for Table {
    fn new_session(&self, _: &str, _: [u8; 6], _: Option<&str>) -> u16 {
        7
    }
    fn owns(&self, tsih: u16, _: &str, _: [u8; 6]) -> bool {
        tsih == 7
    }
}

fn registry() -> Arc<StaticRegistry> {
    static R: OnceLock<Arc<StaticRegistry>> = OnceLock::new();
    R.get_or_init(|| {
        let target = |iqn: &str, chap: Option<ChapConfig>| {
            let ident = LuIdentity {
                vendor: "F".into(),
                product: "F".into(),
                revision: "1".into(),
                serial: "1".into(),
                naa_id: 1,
            };
            Arc::new(TargetConfig {
                iqn: iqn.into(),
                lus: Arc::new(TargetLus::single(Arc::new(LogicalUnit::new(
                    Arc::new(Null),
                    ident,
                )))),
                allowed_initiators: vec!["iqn.a:i".into()],
                chap,
                listed: true,
                stats: Arc::new(TargetStats::default()),
            })
        };
        Arc::new(StaticRegistry(vec![
            target("iqn.a:open", None),
            target(
                "iqn.a:chap",
                Some(ChapConfig {
                    user: "u".into(),
                    secret: b"secretsecret".to_vec(),
                    mutual: Some(("m".into(), b"mutualsecret".to_vec())),
                }),
            ),
        ]))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut login = Login::new(registry(), TargetLimits::default());
    let mut rest = data;
    // Each step: 48 header bytes, 2 bytes of text length, then the text.
    while rest.len() >= BHS_LEN + 2 {
        let mut h = [0u8; BHS_LEN];
        h.copy_from_slice(&rest[..BHS_LEN]);
        h[0] = 0x43; // always a Login Request
        let n = u16::from_be_bytes([rest[BHS_LEN], rest[BHS_LEN + 1]]) as usize;
        rest = &rest[BHS_LEN + 2..];
        let text = &rest[..n.min(rest.len())];
        rest = &rest[text.len()..];
        let Ok(Bhs::LoginRequest(req)) = Bhs::parse(&h, &[]) else {
            return;
        };
        let step = login.handle(&req, text, &Table);
        for (_, d) in &step.responses {
            assert!(d.len() <= 8192, "login response data over the login limit");
        }
        match step.outcome {
            LoginOutcome::Continue => {}
            LoginOutcome::Done(_) | LoginOutcome::Failed => return,
            // StaticRegistry's targets are shared LUNs: never probed.
            LoginOutcome::Probe(_) => panic!("a probe for a shared LUN"),
        }
    }
});
