//! Any datagram as a TFTP packet, and as input to a running transfer: never a panic.
#![no_main]

use isboot::tftp::packet::Packet;
use isboot::tftp::transfer::{Prepared, Transfer, TransferLimits, negotiate};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let parsed = Packet::parse(data);
    let limits = TransferLimits::default();
    if let Ok(Packet::Rrq(req)) = &parsed {
        let _ = negotiate(req, 12_345, &limits);
    }
    // Feed the datagram (split at every 4 bytes, like a stream of ACKs) into a transfer.
    let file: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let req = isboot::tftp::Request {
        filename: "f".into(),
        mode: "octet".into(),
        options: vec![("windowsize".into(), "4".into())],
    };
    let negotiated = negotiate(&req, file.len() as u64, &limits).expect("fixed options negotiate");
    let now = Instant::now();
    let (mut t, _) = Transfer::start(
        Prepared {
            source: Box::new(file),
            len: 3000,
            negotiated,
        },
        &limits,
        now,
    );
    for (i, chunk) in data.chunks(4).enumerate() {
        let _ = t.on_datagram(chunk, now + Duration::from_millis(i as u64));
        let _ = t.on_timeout(t.deadline());
    }
});
