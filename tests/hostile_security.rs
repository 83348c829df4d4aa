//! Security checks against `isboot serve` with clients registered through the CLI: CHAP one-way
//! and mutual the way iPXE and open-iscsi do it, refusals with their exact login status,
//! hostile CHAP values, secrets never logged and stored mode 0600, and no way to reach another
//! client's target by guessing its name.

mod fixture;

use fixture::*;
use isboot::initiator::{Initiator, LoginOptions, chap_md5};
use isboot::iscsi::chap::decode_binary;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SECRET1: &str = "pc1-initiator-secret";
const MUTUAL1: &str = "pc1-target-mutual-secret";
const SECRET2: &str = "pc2-initiator-secret";

/// Two clients: pc1 with one-way + mutual CHAP, pc2 with one-way CHAP; pc3 without CHAP.
fn lab() -> (tempfile::TempDir, std::path::PathBuf, Serve) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_with_image(tmp.path(), 4 << 20);
    let f1 = chap_file(tmp.path(), "user1", SECRET1, Some(("tgt1", MUTUAL1)));
    add_client(&dir, 1, "pc1", &["--chap-secret-file", &f1]);
    let f2 = chap_file(tmp.path(), "user2", SECRET2, None);
    add_client(&dir, 2, "pc2", &["--chap-secret-file", &f2]);
    add_client(&dir, 3, "pc3", &[]);
    // Trace level: everything the server can log, so the secret check below sees it all.
    let srv = Serve::start_with(&dir, "trace", &[]);
    (tmp, dir, srv)
}

/// How an initiator does CHAP.
struct Profile {
    auth_method: &'static str,
    chap_a: &'static str,
    /// T bit on the security-stage PDUs before the answer.
    early_transit: bool,
}

const IPXE: Profile = Profile {
    auth_method: "CHAP,None",
    chap_a: "5",
    early_transit: true,
};
const OPEN_ISCSI: Profile = Profile {
    auth_method: "CHAP,None",
    chap_a: "7,6,5",
    early_transit: false,
};

/// Security stage with CHAP up to the challenge: (login, id, challenge).
fn challenge(srv: &Serve, ini: &str, target: &str, p: &Profile) -> (RawLogin, u8, Vec<u8>) {
    let mut l = RawLogin::connect(srv.addr);
    let a = l.send(
        0,
        1,
        p.early_transit,
        &[
            ("InitiatorName", ini),
            ("SessionType", "Normal"),
            ("TargetName", target),
            ("AuthMethod", p.auth_method),
        ],
    );
    assert_status(&a, 0, 0);
    assert_eq!(a.keys.get("AuthMethod").map(String::as_str), Some("CHAP"));
    assert!(!a.transit, "no transit before CHAP");
    let a = l.send(0, 1, p.early_transit, &[("CHAP_A", p.chap_a)]);
    assert_status(&a, 0, 0);
    assert_eq!(a.keys.get("CHAP_A").map(String::as_str), Some("5"));
    let id: u8 = a.keys["CHAP_I"].parse().unwrap();
    let c = decode_binary(&a.keys["CHAP_C"], 1024, "CHAP_C").unwrap();
    assert!(c.len() >= 16);
    (l, id, c)
}

/// Operational stage to full feature phase, then a READ works.
fn finish(mut l: RawLogin) {
    let a = l.send(
        1,
        3,
        true,
        &[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "8192"),
        ],
    );
    assert_status(&a, 0, 0);
    assert!(a.transit && a.nsg == 3);
    l.ini.cmd_sn = l.cmd_sn;
    l.ini.exp_stat_sn = l.exp_stat_sn;
    let _ = l.ini.clear_unit_attention(0);
    let c = l.ini.read16(0, 1, 1).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(&c.data[..8], &1u64.to_be_bytes());
}

#[test]
fn chap_one_way_and_mutual_with_ipxe_and_open_iscsi_settings() {
    let (_t, _d, srv) = lab();
    let t1 = format!("{PREFIX}:pc1");
    let i1 = initiator_of("pc1");
    for p in [&IPXE, &OPEN_ISCSI] {
        // One-way.
        let (mut l, id, c) = challenge(&srv, &i1, &t1, p);
        let r = format!("0x{}", hex::encode(chap_md5(id, SECRET1.as_bytes(), &c)));
        let a = l.send(0, 1, true, &[("CHAP_N", "user1"), ("CHAP_R", &r)]);
        assert_status(&a, 0, 0);
        assert!(a.transit);
        finish(l);
        // Mutual: the target proves it knows the mutual secret.
        let (mut l, id, c) = challenge(&srv, &i1, &t1, p);
        let r = format!("0x{}", hex::encode(chap_md5(id, SECRET1.as_bytes(), &c)));
        let my_c = [0x5au8; 16];
        let a = l.send(
            0,
            1,
            true,
            &[
                ("CHAP_N", "user1"),
                ("CHAP_R", &r),
                ("CHAP_I", "77"),
                ("CHAP_C", &format!("0x{}", hex::encode(my_c))),
            ],
        );
        assert_status(&a, 0, 0);
        assert_eq!(a.keys.get("CHAP_N").map(String::as_str), Some("tgt1"));
        let got = decode_binary(&a.keys["CHAP_R"], 16, "CHAP_R").unwrap();
        assert_eq!(got, chap_md5(77, MUTUAL1.as_bytes(), &my_c));
        finish(l);
    }
    // The project's initiator with both profiles.
    for o in [
        LoginOptions::new(&i1, Some(&t1)).ipxe_profile(),
        LoginOptions::new(&i1, Some(&t1)).linux_profile(),
    ] {
        let o = LoginOptions {
            chap: Some(("user1".into(), SECRET1.as_bytes().to_vec())),
            ..o
        };
        let mut i = Initiator::connect(srv.addr, &o).expect("CHAP login");
        i.clear_unit_attention(0).unwrap();
        assert_eq!(i.read16(0, 2, 1).unwrap().status, 0);
    }
}

/// Builds the answer keys from the CHAP identifier and challenge.
type KeysFor<'a> = dyn Fn(u8, &[u8]) -> Vec<(String, String)> + 'a;

#[test]
fn wrong_chap_credentials_and_hostile_chap_values_are_authentication_failures() {
    let (_t, _d, srv) = lab();
    let t1 = format!("{PREFIX}:pc1");
    let i1 = initiator_of("pc1");
    let answer = |keys: &KeysFor<'_>| {
        let (mut l, id, c) = challenge(&srv, &i1, &t1, &IPXE);
        let k = keys(id, &c);
        let k: Vec<(&str, &str)> = k.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        l.send(0, 1, true, &k)
    };
    let hexr =
        |id: u8, c: &[u8], s: &str| format!("0x{}", hex::encode(chap_md5(id, s.as_bytes(), c)));
    // Wrong secret, another client's secret, wrong user: 0201.
    for (user, secret) in [
        ("user1", "not-the-secret-at-all"),
        ("user1", SECRET2),
        ("user2", SECRET2),
        ("user9", SECRET1),
    ] {
        let a = answer(&|id, c| {
            vec![
                ("CHAP_N".into(), user.into()),
                ("CHAP_R".into(), hexr(id, c, secret)),
            ]
        });
        assert_status(&a, 2, 1);
    }
    // Over-long CHAP_R in hex and in base64.
    let a = answer(&|_, _| {
        vec![
            ("CHAP_N".into(), "user1".into()),
            ("CHAP_R".into(), format!("0x{}", "ab".repeat(2000))),
        ]
    });
    assert_status(&a, 2, 1);
    let a = answer(&|_, _| {
        vec![
            ("CHAP_N".into(), "user1".into()),
            ("CHAP_R".into(), format!("0b{}", "QUJD".repeat(1500))),
        ]
    });
    assert_status(&a, 2, 1);
    // CHAP_R of 17 bytes (one too many) and 15 (one too few).
    for n in [15, 17] {
        let a = answer(&|_, _| {
            vec![
                ("CHAP_N".into(), "user1".into()),
                ("CHAP_R".into(), format!("0x{}", "ab".repeat(n))),
            ]
        });
        assert_status(&a, 2, 1);
    }
    // Mutual CHAP with a CHAP_C over 1,024 bytes, even with the right response.
    let a = answer(&|id, c| {
        vec![
            ("CHAP_N".into(), "user1".into()),
            ("CHAP_R".into(), hexr(id, c, SECRET1)),
            ("CHAP_I".into(), "1".into()),
            ("CHAP_C".into(), format!("0x{}", "cd".repeat(1025))),
        ]
    });
    assert_status(&a, 2, 1);
    // Reflection: our own challenge sent back to us.
    let a = answer(&|id, c| {
        vec![
            ("CHAP_N".into(), "user1".into()),
            ("CHAP_R".into(), hexr(id, c, SECRET1)),
            ("CHAP_I".into(), id.to_string()),
            ("CHAP_C".into(), format!("0x{}", hex::encode(c))),
        ]
    });
    assert_status(&a, 2, 1);
    // Unsupported CHAP_A only (SHA-1, SHA-256, garbage).
    for alg in ["6", "7,6", "0x80", "md5", &"5".repeat(300)] {
        let mut l = RawLogin::connect(srv.addr);
        let a = l.send(
            0,
            1,
            true,
            &[
                ("InitiatorName", &i1),
                ("SessionType", "Normal"),
                ("TargetName", &t1),
                ("AuthMethod", "CHAP"),
            ],
        );
        assert_status(&a, 0, 0);
        let a = l.send(0, 1, true, &[("CHAP_A", alg)]);
        assert_status(&a, 2, 1);
    }
    // Skipping CHAP on a CHAP client: AuthMethod=None only is refused.
    let mut l = RawLogin::connect(srv.addr);
    let a = l.send(
        0,
        1,
        true,
        &[
            ("InitiatorName", &i1),
            ("SessionType", "Normal"),
            ("TargetName", &t1),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 1);
    // The right one still works after all that.
    let (mut l, id, c) = challenge(&srv, &i1, &t1, &IPXE);
    let a = l.send(
        0,
        1,
        true,
        &[("CHAP_N", "user1"), ("CHAP_R", &hexr(id, &c, SECRET1))],
    );
    assert_status(&a, 0, 0);
    finish(l);
}

#[test]
fn secrets_are_never_logged_and_files_holding_them_are_0600() {
    let (_t, dir, mut srv) = lab();
    let t1 = format!("{PREFIX}:pc1");
    let i1 = initiator_of("pc1");
    // A good mutual login and failed ones, so every CHAP path logs what it logs.
    let (mut l, id, c) = challenge(&srv, &i1, &t1, &OPEN_ISCSI);
    let r = format!("0x{}", hex::encode(chap_md5(id, SECRET1.as_bytes(), &c)));
    let a = l.send(
        0,
        1,
        true,
        &[
            ("CHAP_N", "user1"),
            ("CHAP_R", &r),
            ("CHAP_I", "9"),
            ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10"),
        ],
    );
    assert_status(&a, 0, 0);
    finish(l);
    let (mut l, _, _) = challenge(&srv, &i1, &t1, &IPXE);
    let a = l.send(
        0,
        1,
        true,
        &[
            ("CHAP_N", "user1"),
            ("CHAP_R", &format!("0x{}", hex::encode(SECRET1))),
        ],
    );
    assert_status(&a, 2, 1);
    // The CLI shows and changes clients: nothing prints a secret either.
    let shown = isboot(&dir, &["show-client", "pc1"])
        + &isboot(&dir, &["show-client", "pc1", "--json"])
        + &isboot(&dir, &["list-clients"])
        + &isboot(&dir, &["list-clients", "--json"])
        + &isboot(&dir, &["status"])
        + &isboot(&dir, &["status", "--json"]);
    // Only --show-secrets prints them.
    let asked = isboot(&dir, &["show-client", "pc1", "--json", "--show-secrets"]);
    assert!(
        asked.contains(SECRET1) && asked.contains(MUTUAL1),
        "{asked}"
    );
    isboot(&dir, &["reset-client", "pc2"]);
    srv.stop();
    let log = srv.log_text();
    // The log did record the logins (so the check below looks at something real).
    assert!(log.contains("login"), "the server logged no login: {log}");
    for s in [SECRET1, MUTUAL1, SECRET2] {
        for form in [s.to_string(), hex::encode(s), hex::encode(s).to_uppercase()] {
            assert!(!log.contains(&form), "secret {form} in the server log");
            assert!(!shown.contains(&form), "secret {form} printed by the CLI");
        }
    }
    // Every file in the state directory that holds a secret is 0600.
    let mut holders = Vec::new();
    visit(&dir, &mut |p| {
        let Ok(data) = std::fs::read(p) else { return };
        let has = [SECRET1, MUTUAL1, SECRET2]
            .iter()
            .any(|s| data.windows(s.len()).any(|w| w == s.as_bytes()));
        if has {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                0o600,
                "{} holds a secret with mode {mode:o}",
                p.display()
            );
            holders.push(p.to_path_buf());
        }
    });
    assert!(!holders.is_empty(), "no file holds the secrets?");
    let sd = std::fs::metadata(dir.join("secrets"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        sd, 0o750,
        "the secrets directory (group isboot may list, not read)"
    );
}

fn visit(p: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            visit(&path, f);
        } else if ft.is_file() && e.metadata().map(|m| m.len() < (1 << 20)).unwrap_or(false) {
            f(&path);
        }
    }
}

#[test]
fn a_client_cannot_reach_another_clients_target_by_guessing_its_name() {
    let (_t, _d, srv) = lab();
    let t2 = format!("{PREFIX}:pc2");
    let t3 = format!("{PREFIX}:pc3");
    let i1 = initiator_of("pc1");
    let i3 = initiator_of("pc3");
    // pc1's initiator name on pc3's (no CHAP) target: refused, 0201 (every "not you" is one
    // answer, SECURITY.md).
    let mut l = RawLogin::connect(srv.addr);
    let a = l.send(
        0,
        1,
        true,
        &[
            ("InitiatorName", &i1),
            ("SessionType", "Normal"),
            ("TargetName", &t3),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 1);
    // pc1's initiator with pc1's CHAP credentials on pc2's target: refused before CHAP.
    let mut l = RawLogin::connect(srv.addr);
    let a = l.send(
        0,
        1,
        true,
        &[
            ("InitiatorName", &i1),
            ("SessionType", "Normal"),
            ("TargetName", &t2),
            ("AuthMethod", "CHAP,None"),
        ],
    );
    assert_status(&a, 2, 1);
    // Guessed names that do not exist: the same 0201, whatever the initiator.
    for guess in [
        format!("{PREFIX}:pc4"),
        format!("{PREFIX}:pc3 "),
        format!("{PREFIX}:"),
    ] {
        let mut l = RawLogin::connect(srv.addr);
        let a = l.send(
            0,
            1,
            true,
            &[
                ("InitiatorName", &i3),
                ("SessionType", "Normal"),
                ("TargetName", &guess),
                ("AuthMethod", "None"),
            ],
        );
        assert!(
            (a.class, a.detail) == (2, 1) || (a.class, a.detail) == (2, 0),
            "guess {guess:?}: {a:?}"
        );
    }
    // Names compare case-insensitively (RFC 3722), and the ACL still applies to the folded name.
    let mut l = RawLogin::connect(srv.addr);
    let a = l.send(
        0,
        1,
        true,
        &[
            ("InitiatorName", &i1),
            ("SessionType", "Normal"),
            ("TargetName", &format!("{PREFIX}:PC3")),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 1);
    // Discovery from pc3's initiator lists only pc3's target.
    let mut d =
        Initiator::connect(srv.addr, &LoginOptions::new(&i3, None)).expect("discovery login");
    let listed: Vec<String> = d
        .send_targets("All")
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(listed, vec![t3.clone()]);
    // And pc3 itself gets in.
    let mut i =
        Initiator::connect(srv.addr, &LoginOptions::new(&i3, Some(&t3))).expect("pc3 logs in");
    i.clear_unit_attention(0).unwrap();
    assert_eq!(i.read16(0, 0, 1).unwrap().status, 0);
}
