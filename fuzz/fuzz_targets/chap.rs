//! The CHAP server: binary value decoding (hex and base64), CHAP_A offers, and verification of
//! arbitrary CHAP_N/R/I/C answers, one-way and mutual. Must never panic.
#![no_main]

use isboot::iscsi::chap::{self, ChapAnswer, ChapServer};
use isboot::iscsi::target::ChapConfig;
use libfuzzer_sys::fuzz_target;

fn field<'a>(parts: &mut std::str::SplitN<'a, char>) -> Option<&'a str> {
    parts.next().filter(|s| !s.is_empty())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = s.splitn(5, '\n');
    let a = parts.next().unwrap_or("");
    let n = field(&mut parts);
    let r = field(&mut parts);
    let i = field(&mut parts);
    let c = field(&mut parts);
    for v in [n, r, i, c].into_iter().flatten() {
        if let Ok(b) = chap::decode_binary(v, chap::MAX_CHALLENGE_LEN, "X") {
            assert!(b.len() <= chap::MAX_CHALLENGE_LEN);
        }
    }
    let cfg = ChapConfig {
        user: "user".into(),
        secret: b"secretsecret".to_vec(),
        mutual: (mode & 1 != 0).then(|| ("target".into(), b"mutualsecret".to_vec())),
    };
    let mut srv = ChapServer::new();
    if mode & 2 != 0 {
        // Verify before any challenge: out of sequence, never accepted.
        assert!(srv.verify(&cfg, ChapAnswer { n, r, i, c }).is_err());
    }
    let Ok(offer) = srv.offer(a) else { return };
    assert!(srv.challenged());
    let _ = offer;
    if srv.verify(&cfg, ChapAnswer { n, r, i, c }).is_ok() {
        // Only the right user with an MD5 response can pass; the fuzzer cannot know the
        // random challenge, so a pass here would be a bypass.
        panic!("CHAP verified without knowing the challenge");
    }
    assert!(!srv.done());
});
