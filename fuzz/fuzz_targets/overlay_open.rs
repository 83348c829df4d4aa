//! Opening an overlay whose file content is arbitrary: header decode, map decode, and then a
//! read of every block and a write+flush if it opened. With flag bits the input is fixed up
//! (base id/size, header CRC) so the fuzzer reaches the map decoder. Must never panic.
#![no_main]

use bytes::Bytes;
use isboot::store::BlockDevice;
use isboot::store::base::{BaseId, BaseImage};
use isboot::store::fault::FaultyFile;
use isboot::store::overlay::{HEADER_LEN, Header, Overlay};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const BASE_SIZE: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if rest.len() > 1 << 20 {
        return;
    }
    let base = Arc::new(
        BaseImage::from_bytes(
            Bytes::from(vec![7u8; BASE_SIZE as usize]),
            BaseId([9; 16]),
            1,
        )
        .unwrap(),
    );
    let mut img = rest.to_vec();
    if mode & 1 != 0 && img.len() >= 76 {
        img[32..48].copy_from_slice(&[9; 16]);
        img[16..24].copy_from_slice(&BASE_SIZE.to_le_bytes());
    }
    if mode & 2 != 0 && img.len() >= 76 {
        let crc = crc32c::crc32c(&img[..72]);
        img[72..76].copy_from_slice(&crc.to_le_bytes());
    }
    if mode & 4 != 0 && img.len() >= 76 {
        // A valid header over the base, the fuzzer's bytes as the map.
        let h = Header {
            block_size: 512u32 << (img[12] % 12),
            size: BASE_SIZE,
            base_version: 1,
            base_id: BaseId([9; 16]),
        };
        let enc = h.encode();
        let mut v = enc.clone();
        v.resize(HEADER_LEN as usize, 0);
        v.extend_from_slice(&img);
        img = v;
    }
    let _ = Header::decode(&img);
    let file = Arc::new(FaultyFile::from_image(img, 1));
    let Ok(ov) = Overlay::open(file, base, mode & 8 != 0) else {
        return;
    };
    assert_eq!(ov.size(), BASE_SIZE);
    let mut out = Vec::new();
    ov.read(0, BASE_SIZE as usize, &mut out)
        .expect("an opened overlay reads");
    let n: usize = out.iter().map(|b| b.len()).sum();
    assert_eq!(n as u64, BASE_SIZE);
    if !ov.read_only() {
        ov.write(4096, &[1u8; 512], true).expect("write");
        let mut out = Vec::new();
        ov.read(4096, 512, &mut out).unwrap();
        assert!(out.iter().flat_map(|b| b.iter()).all(|&b| b == 1));
    }
});
