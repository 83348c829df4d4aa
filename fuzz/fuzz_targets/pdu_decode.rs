//! Any byte stream through the PDU framer (with and without digests), every PDU header parser,
//! and the text key=value parser. Must never panic; whatever parses must re-emit identically.
#![no_main]

use bytes::BytesMut;
use isboot::wire::frame::{self, FrameLimits};
use isboot::wire::pdu::Bhs;
use isboot::wire::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let lim = FrameLimits {
        max_data: 65536,
        header_digest: mode & 1 != 0,
        data_digest: mode & 2 != 0,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(pdu)) = frame::decode(&mut buf, &lim) {
        if let Ok(bhs) = Bhs::parse(&pdu.bhs, &pdu.ahs) {
            let (h, ahs) = bhs.emit(pdu.data.len() as u32);
            assert_eq!(Bhs::parse(&h, &ahs).as_ref(), Ok(&bhs));
        }
        let _ = text::parse(&pdu.data);
    }
});
