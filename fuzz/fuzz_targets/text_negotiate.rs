//! Text key=value parsing, then every parsed pair through an operational Negotiator (Normal or
//! Discovery, limits from the input). Must never panic; answers stay bounded.
#![no_main]

use isboot::iscsi::negotiate::{Answer, Negotiator, SessionType, TargetLimits};
use isboot::wire::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let st = if mode & 1 == 0 {
        SessionType::Normal
    } else {
        SessionType::Discovery
    };
    let mut lim = TargetLimits::default();
    if mode & 2 != 0 {
        // Odd limits (the negotiator clamps them).
        lim.max_burst_length = 512;
        lim.first_burst_length = 1 << 30;
        lim.max_recv_data_segment_length = 512;
        lim.max_outstanding_r2t = 0;
        lim.max_connections = 0;
        lim.error_recovery_level = 9;
    }
    let mut neg = Negotiator::new(lim, st);
    if mode & 4 != 0 {
        neg.announce_max_recv();
    }
    let Ok(pairs) = text::parse(rest) else { return };
    for p in &pairs {
        let _ = neg.already_negotiated(&p.key);
        match neg.negotiate(&p.key, &p.value) {
            Answer::Value(v) => assert!(v.len() <= 8192, "answer value unbounded"),
            Answer::Nothing => {}
        }
        let _ = neg.inconsistent_bursts();
    }
    let p = neg.params();
    assert!(p.first_burst_length <= p.max_burst_length || neg.inconsistent_bursts());
    // What we would send re-parses.
    let enc = text::encode(
        &pairs
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(text::parse(&enc).ok().as_ref(), Some(&pairs));
});
