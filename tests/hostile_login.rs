//! Regression corpus of hostile logins and floods against a real `isboot export` on loopback,
//! each with the exact login status class/detail (RFC 7143 §11.13.5) the target must answer,
//! or the exact way the connection must end; the server keeps serving a good initiator after
//! each case.

mod fixture;

use fixture::*;
use isboot::initiator::{LoginOptions, write16_cdb};
use isboot::iscsi::negotiate::TargetLimits;
use isboot::wire::pdu::{Bhs, DataOut, reject_reason};
use isboot::wire::text;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const INI: &str = "iqn.2026-11.org.isboot.test:hostile-login";

fn setup() -> (tempfile::TempDir, Export) {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "h.raw", 4 << 20);
    let exp = Export::start(&img, &["--login-timeout", "2"]);
    (dir, exp)
}

fn still_serving(exp: &Export) {
    let mut i = connect_ready(
        exp.addr,
        &LoginOptions::new("iqn.2026-11.org.isboot.test:good", Some(&exp.iqn)),
    );
    let c = i.read16(0, 5, 1).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(&c.data[..8], &5u64.to_be_bytes());
}

fn leading(exp: &Export) -> Vec<(&str, &str)> {
    vec![
        ("InitiatorName", INI),
        ("SessionType", "Normal"),
        ("TargetName", exp.iqn.as_str()),
        ("AuthMethod", "None"),
    ]
}

/// One first login PDU with `keys` (security stage, transit to operational).
fn first_login(exp: &Export, keys: &[(&str, &str)]) -> LoginAnswer {
    let mut l = RawLogin::connect(exp.addr);
    l.send(0, 1, true, keys)
}

#[test]
fn login_key_names_over_63_bytes_are_initiator_errors() {
    let (_d, exp) = setup();
    // 63 bytes is the limit: an unknown key of that length is answered NotUnderstood.
    let k63 = "X".repeat(63);
    let mut keys = leading(&exp);
    keys.push((&k63, "1"));
    let a = first_login(&exp, &keys);
    assert_status(&a, 0, 0);
    assert_eq!(a.keys.get(&k63).map(String::as_str), Some("NotUnderstood"));
    for len in [64, 4097] {
        let k = "X".repeat(len);
        let mut keys = leading(&exp);
        keys.push((&k, "1"));
        let a = first_login(&exp, &keys);
        assert_status(&a, 2, 0);
    }
    still_serving(&exp);
}

#[test]
fn login_data_segment_at_the_limit_is_read_and_one_byte_over_closes() {
    let (_d, exp) = setup();
    let limit = TargetLimits::default().max_recv_data_segment_length as usize;
    // Exactly the limit: framed and answered (the text itself is over the 64 KiB text limit,
    // so the answer is an initiator error, not a closed connection).
    let mut data = Vec::new();
    for (k, v) in leading(&exp) {
        text::push(&mut data, k, v);
    }
    data.resize(limit, 0);
    let mut l = RawLogin::connect(exp.addr);
    let req = l.request(0, 1, true);
    let a = l
        .send_raw(req, &data)
        .expect("a login PDU at the limit is answered");
    assert_status(&a, 2, 0);
    // A login text at the 64 KiB text limit (padded with NULs) is accepted.
    let mut data = Vec::new();
    for (k, v) in leading(&exp) {
        text::push(&mut data, k, v);
    }
    data.resize(text::MAX_TEXT_LEN, 0);
    let mut l = RawLogin::connect(exp.addr);
    let req = l.request(0, 1, true);
    let a = l.send_raw(req, &data).expect("answered");
    assert_status(&a, 0, 0);
    // One byte over the framing limit: no answer, the connection is closed.
    let mut l = RawLogin::connect(exp.addr);
    let req = l.request(0, 1, true);
    assert!(
        l.send_raw(req, &vec![0u8; limit + 1]).is_none(),
        "a login PDU over the limit got an answer"
    );
    still_serving(&exp);
}

#[test]
fn nonzero_tsih_on_a_first_login_is_session_does_not_exist() {
    let (_d, exp) = setup();
    let mut l = RawLogin::connect(exp.addr);
    l.tsih = 0x1234;
    let a = l.send(0, 1, true, &leading(&exp));
    assert_status(&a, 2, 0x0a);
    still_serving(&exp);
}

#[test]
fn missing_names_and_bad_session_types() {
    let (_d, exp) = setup();
    let t = exp.iqn.as_str();
    // No InitiatorName / no TargetName in a Normal session: missing parameter (0207).
    let a = first_login(
        &exp,
        &[
            ("SessionType", "Normal"),
            ("TargetName", t),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 7);
    let a = first_login(
        &exp,
        &[
            ("InitiatorName", INI),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 7);
    // No SessionType means Normal, so still no TargetName: 0207.
    let a = first_login(&exp, &[("InitiatorName", INI), ("AuthMethod", "None")]);
    assert_status(&a, 2, 7);
    // SessionType garbage: session type not supported (0209).
    for st in [
        "Sideways",
        "",
        "normal",
        "Normal,Discovery",
        &"N".repeat(300),
    ] {
        let a = first_login(
            &exp,
            &[
                ("InitiatorName", INI),
                ("SessionType", st),
                ("TargetName", t),
                ("AuthMethod", "None"),
            ],
        );
        assert_status(&a, 2, 9);
    }
    still_serving(&exp);
}

#[test]
fn over_long_iscsi_names_are_refused() {
    let (_d, exp) = setup();
    // iSCSI names are at most 223 bytes (RFC 7143 §4.2.7.1).
    let long_ini = format!("iqn.2026-11.org.isboot.test:{}", "a".repeat(200));
    assert!(long_ini.len() > 223);
    let a = first_login(
        &exp,
        &[
            ("InitiatorName", &long_ini),
            ("SessionType", "Normal"),
            ("TargetName", &exp.iqn),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 0);
    let long_target = format!("{}{}", exp.iqn, "b".repeat(8000));
    let a = first_login(
        &exp,
        &[
            ("InitiatorName", INI),
            ("SessionType", "Normal"),
            ("TargetName", &long_target),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 0);
    // Within the name limit but unknown: the one "not you" answer, 0201 (SECURITY.md).
    let a = first_login(
        &exp,
        &[
            ("InitiatorName", INI),
            ("SessionType", "Normal"),
            ("TargetName", &format!("{}x", exp.iqn)),
            ("AuthMethod", "None"),
        ],
    );
    assert_status(&a, 2, 1);
    still_serving(&exp);
}

#[test]
fn first_burst_over_max_burst_is_an_initiator_error() {
    let (_d, exp) = setup();
    let mut l = RawLogin::connect(exp.addr);
    let a = l.send(0, 1, true, &leading(&exp));
    assert_status(&a, 0, 0);
    let a = l.send(
        1,
        3,
        true,
        &[
            ("MaxBurstLength", "16384"),
            ("FirstBurstLength", "65536"),
            ("InitialR2T", "No"),
        ],
    );
    assert_status(&a, 2, 0);
    still_serving(&exp);
}

#[test]
fn data_out_flood_without_a_command_is_rejected_pdu_by_pdu() {
    let (_d, exp) = setup();
    let mut i = connect_ready(exp.addr, &LoginOptions::new(INI, Some(&exp.iqn)));
    let payload = vec![0xa5u8; 8192];
    let mut rejects = 0u32;
    let start_rss = rss_kib(exp.child.id() as i32);
    let mut max_rss = start_rss;
    for round in 0..100u32 {
        // 64 Data-Outs for tasks that do not exist, then read their 64 Rejects.
        for k in 0..64u32 {
            let d = DataOut {
                final_: k % 2 == 0,
                lun: 0,
                itt: 0x1000_0000 + round * 64 + k,
                ttt: k,
                exp_stat_sn: i.exp_stat_sn,
                data_sn: 0,
                buffer_offset: k * 8192,
            };
            i.send(&Bhs::DataOut(d), &payload).unwrap();
        }
        for _ in 0..64 {
            match i.recv().unwrap() {
                (Bhs::Reject(r), data) => {
                    assert_eq!(r.reason, reject_reason::INVALID_PDU_FIELD, "reject reason");
                    assert_eq!(data[0] & 0x3f, 0x05, "the Data-Out header comes back");
                    i.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    rejects += 1;
                }
                other => panic!("expected a Reject, got {other:?}"),
            }
        }
        max_rss = max_rss.max(rss_kib(exp.child.id() as i32));
    }
    assert_eq!(rejects, 6400);
    eprintln!(
        "Data-Out flood: 6400 PDUs (50 MiB) rejected; server RSS {start_rss} -> max {max_rss} KiB"
    );
    // The session still works after the flood.
    let c = i
        .command(0, &write16_cdb(8, 1, true), &[7u8; 512], 0)
        .unwrap();
    assert_eq!(c.status, 0);
    let c = i.read16(0, 8, 1).unwrap();
    assert_eq!(c.data, vec![7u8; 512]);
    still_serving(&exp);
}

#[test]
fn ten_thousand_connections_that_never_log_in_time_out_with_bounded_fds() {
    let (_d, exp) = setup(); // --login-timeout 2
    let pid = exp.child.id() as i32;
    let base_fds = open_fds(pid);
    let mut conns = Vec::with_capacity(10_000);
    let mut peak = base_fds;
    let started = Instant::now();
    // From one address (not the good initiator's 127.0.0.1): the per-address connection limit
    // (16 by default) closes all but 16 of them at accept, the rest at the login timeout.
    for n in 0..10_000 {
        let mut s = connect_from([127, 0, 0, 2], exp.addr).expect("connect");
        if n % 2 == 0 {
            // Half send a partial login header first, the rest send nothing.
            s.write_all(&[0x43, 0x87, 0, 0]).unwrap();
        }
        conns.push(s);
        if n % 500 == 0 {
            peak = peak.max(open_fds(pid));
        }
    }
    let opened = started.elapsed();
    // A good initiator can still log in while they are all open.
    still_serving(&exp);
    // Every one of them is closed by the target (EOF or reset) within the timeout + slack.
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in &mut conns {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection not closed by the login timeout: {other:?}"),
        }
    }
    drop(conns);
    // And the server's fds go back to what they were.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now_fds = open_fds(pid);
    while now_fds > base_fds + 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now_fds = open_fds(pid);
    }
    eprintln!(
        "10000 idle connections opened in {opened:?}; server fds: {base_fds} before, peak seen {peak}, {now_fds} after"
    );
    assert!(
        now_fds <= base_fds + 8,
        "server fds {now_fds} after, {base_fds} before"
    );
    assert!(
        peak <= base_fds + 10_000 + 8,
        "more fds than connections: {peak}"
    );
    still_serving(&exp);
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let (_d, exp) = setup(); // --login-timeout 2
    let pid = exp.child.id();
    // Lower the server's fd limit to 64 while it runs.
    let o = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=64:64"])
        .output()
        .expect("prlimit");
    if !o.status.success() {
        skip("prlimit --pid failed");
        return;
    }
    // 300 idle connections: far more than the server can accept with 64 fds (from 30
    // addresses, 10 each: within the per-address connection limit).
    let conns: Vec<TcpStream> = (0..300u32)
        .filter_map(|n| connect_from([127, 0, 1, 10 + (n % 30) as u8], exp.addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("server fds with the limit at 64: {}", open_fds(pid as i32));
    drop(conns);
    // Once the idle ones are gone (closed by us, or timed out), a good initiator logs in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match isboot::initiator::Initiator::connect(
            exp.addr,
            &LoginOptions::new("iqn.2026-11.org.isboot.test:good", Some(&exp.iqn)),
        ) {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "server did not recover: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    assert!(exp.child.id() == pid);
    let log = exp.log_text();
    assert!(
        log.contains("accept failed"),
        "the fd exhaustion was not seen/logged"
    );
    still_serving(&exp);
}

#[test]
fn full_feature_data_segment_at_our_limit_and_one_byte_over() {
    use isboot::wire::pdu::{NopOut, RESERVED_TAG};
    let (_d, exp) = setup();
    let limit = TargetLimits::default().max_recv_data_segment_length as usize;
    // The project's initiator declares MaxRecvDataSegmentLength=262144 too, so the echo fits.
    let mut i = connect_ready(exp.addr, &LoginOptions::new(INI, Some(&exp.iqn)));
    let nop = |i: &isboot::initiator::Initiator, itt: u32| NopOut {
        immediate: true,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
    };
    let ping: Vec<u8> = (0..limit).map(|k| (k % 253) as u8).collect();
    i.send(&Bhs::NopOut(nop(&i, 0x77)), &ping).unwrap();
    match i.recv().unwrap() {
        (Bhs::NopIn(r), data) => {
            assert_eq!(r.itt, 0x77);
            assert_eq!(&data[..], &ping[..], "NOP-In echoes the whole ping");
            i.exp_stat_sn = r.stat_sn.wrapping_add(1);
        }
        other => panic!("expected NOP-In, got {other:?}"),
    }
    // One byte over: the connection is closed, nothing else.
    let mut over = ping.clone();
    over.push(0);
    i.send(&Bhs::NopOut(nop(&i, 0x78)), &over).unwrap();
    i.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match i.recv() {
        Err(isboot::initiator::InitiatorError::Closed) => {}
        Err(isboot::initiator::InitiatorError::Io(e))
            if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    still_serving(&exp);
}

#[test]
fn export_takes_the_per_address_connection_limit_from_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "h.raw", 4 << 20);
    let exp = Export::start(&img, &["--max-connections-per-address", "2"]);
    let opts = |n: u32| {
        LoginOptions::new(
            &format!("iqn.2026-11.org.isboot.test:limit{n}"),
            Some(&exp.iqn),
        )
    };
    let a = connect_ready(exp.addr, &opts(1));
    let _b = connect_ready(exp.addr, &opts(2));
    assert!(
        isboot::initiator::Initiator::connect(exp.addr, &opts(3)).is_err(),
        "a third connection from 127.0.0.1 is refused"
    );
    // Another address has its own two.
    let _c = connect_ready_from([127, 0, 0, 2], exp.addr, &opts(4));
    // A connection that goes gives its place back.
    drop(a);
    let until = Instant::now() + Duration::from_secs(10);
    while isboot::initiator::Initiator::connect(exp.addr, &opts(5)).is_err() {
        assert!(Instant::now() < until, "the place came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}
