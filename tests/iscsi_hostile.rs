//! Hostile and malformed input against a running `isboot export`: every case gets a protocol
//! answer or a closed connection, and the server keeps serving everyone else.

mod fixture;

use bytes::Bytes;
use fixture::*;
use isboot::initiator::{Initiator, InitiatorError, LoginOptions, read16_cdb, write16_cdb};
use isboot::wire::pdu::{
    Bhs, DataOut, LoginRequest, NopOut, RESERVED_TAG, ScsiCommand, reject_reason,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const INITIATOR: &str = "iqn.2026-11.org.isboot.test:hostile";

fn setup() -> (tempfile::TempDir, Export) {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "h.raw", 4 << 20);
    let exp = Export::start(&img, &["--login-timeout", "2"]);
    (dir, exp)
}

fn login(exp: &Export, opts: LoginOptions) -> Initiator {
    connect_ready(
        exp.addr,
        &LoginOptions {
            target: Some(exp.iqn.clone()),
            ..opts
        },
    )
}

/// The server still answers a well-behaved initiator.
fn still_serving(exp: &Export) {
    let mut i = login(
        exp,
        LoginOptions::new("iqn.2026-11.org.isboot.test:good", None),
    );
    let c = i.read16(0, 3, 1).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(&c.data[..8], &3u64.to_be_bytes());
}

fn expect_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

fn expect_reject(i: &mut Initiator, reason: u8, echoed_opcode: u8) {
    match i.recv().unwrap() {
        (Bhs::Reject(r), data) => {
            assert_eq!(r.reason, reason, "reject reason");
            assert_eq!(data.len(), 48, "the rejected header comes back");
            assert_eq!(data[0] & 0x3f, echoed_opcode);
        }
        other => panic!("expected a Reject, got {other:?}"),
    }
}

#[test]
fn truncated_header_then_close() {
    let (_d, exp) = setup();
    let mut s = TcpStream::connect(exp.addr).unwrap();
    s.write_all(&[0x43, 0x87, 0, 0, 0, 0]).unwrap();
    drop(s);
    still_serving(&exp);
}

#[test]
fn login_data_segment_over_the_limit_closes_only_that_connection() {
    let (_d, exp) = setup();
    let mut s = TcpStream::connect(exp.addr).unwrap();
    let req = LoginRequest {
        transit: true,
        cont: false,
        csg: 0,
        nsg: 1,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
    };
    // Claims 16 MiB - 1 of data; nothing is allocated for it, the connection is closed.
    let (h, _) = Bhs::LoginRequest(req).emit(0xff_ffff);
    s.write_all(&h).unwrap();
    expect_closed(&mut s);
    still_serving(&exp);
}

#[test]
fn ahs_length_that_lies_closes_the_connection() {
    let (_d, exp) = setup();
    let mut i = login(&exp, LoginOptions::new(INITIATOR, None));
    let mut cmd = ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: 1,
        lun: 0,
        itt: 77,
        expected_len: 512,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        cdb: read16_cdb(0, 1),
        ext_cdb: Vec::new(),
        bidi_read_len: None,
    };
    cmd.cdb[0] = 0x88;
    let (mut h, _) = Bhs::ScsiCommand(cmd).emit(0);
    h[4] = 2; // 8 bytes of AHS announced...
    let mut bytes = h.to_vec();
    bytes.extend_from_slice(&[0x00, 0x40, 0x01, 0x00, 0, 0, 0, 0]); // ...whose length says 64.
    i.send_bytes(&bytes).unwrap();
    expect_reject(&mut i, reject_reason::INVALID_PDU_FIELD, 0x01);
    still_serving(&exp);
}

#[test]
fn unknown_opcode_is_rejected_and_the_session_goes_on() {
    let (_d, exp) = setup();
    let mut i = login(&exp, LoginOptions::new(INITIATOR, None));
    let mut h = [0u8; 48];
    h[0] = 0x1c; // not an iSCSI opcode
    h[16..20].copy_from_slice(&5u32.to_be_bytes());
    i.send_bytes(&h).unwrap();
    expect_reject(&mut i, reject_reason::COMMAND_NOT_SUPPORTED, 0x1c);
    assert_eq!(i.read16(0, 1, 1).unwrap().status, 0);
}

#[test]
fn cmdsn_outside_the_window_is_ignored() {
    let (_d, exp) = setup();
    let mut i = login(&exp, LoginOptions::new(INITIATOR, None));
    let good = i.cmd_sn;
    i.cmd_sn = good.wrapping_add(1000); // beyond MaxCmdSN
    i.submit(0, &read16_cdb(0, 1), Bytes::new(), 512).unwrap();
    i.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    match i.wait_any() {
        Err(InitiatorError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected no answer, got {other:?}"),
    }
    i.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    i.cmd_sn = good.wrapping_sub(1); // below ExpCmdSN: also ignored
    i.submit(0, &read16_cdb(0, 1), Bytes::new(), 512).unwrap();
    i.cmd_sn = good;
    let c = i.read16(0, 2, 1).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(&c.data[..8], &2u64.to_be_bytes());
}

#[test]
fn reused_itt_and_stray_data_out_are_rejected() {
    let (_d, exp) = setup();
    // iPXE profile: InitialR2T=Yes, so a WRITE waits for its R2T with the task open.
    let mut i = login(&exp, LoginOptions::new(INITIATOR, None).ipxe_profile());
    let itt = i
        .submit(
            0,
            &write16_cdb(0, 16, false),
            Bytes::from(vec![1u8; 8192]),
            0,
        )
        .unwrap();
    let r2t = match i.recv().unwrap() {
        (Bhs::R2t(r), _) => r,
        other => panic!("expected R2T, got {other:?}"),
    };
    assert_eq!(
        (r2t.itt, r2t.buffer_offset, r2t.desired_len),
        (itt, 0, 8192)
    );
    // A second command with the same ITT.
    let mut dup = ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: 1,
        lun: 0,
        itt,
        expected_len: 512,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        cdb: read16_cdb(0, 1),
        ext_cdb: Vec::new(),
        bidi_read_len: None,
    };
    i.cmd_sn = i.cmd_sn.wrapping_add(1);
    i.send(&Bhs::ScsiCommand(dup.clone()), &[]).unwrap();
    expect_reject(&mut i, reject_reason::TASK_IN_PROGRESS, 0x01);
    // Data-Out with a TTT we never gave out.
    let stray = DataOut {
        final_: true,
        lun: 0,
        itt,
        ttt: 0xdead,
        exp_stat_sn: i.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
    };
    i.send(&Bhs::DataOut(stray), &[0u8; 512]).unwrap();
    expect_reject(&mut i, reject_reason::INVALID_PDU_FIELD, 0x05);
    // Data-Out for the right TTT but beyond the burst it asked for.
    let beyond = DataOut {
        final_: true,
        lun: 0,
        itt,
        ttt: r2t.ttt,
        exp_stat_sn: i.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 8192,
    };
    i.send(&Bhs::DataOut(beyond), &[0u8; 512]).unwrap();
    expect_reject(&mut i, reject_reason::PROTOCOL_ERROR, 0x05);
    // Data-Out for a command that does not exist.
    let ghost = DataOut {
        final_: true,
        lun: 0,
        itt: 9999,
        ttt: RESERVED_TAG,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
    };
    i.send(&Bhs::DataOut(ghost), &[0u8; 512]).unwrap();
    expect_reject(&mut i, reject_reason::INVALID_PDU_FIELD, 0x05);
    // The real data completes the write.
    let ok = DataOut {
        final_: true,
        lun: 0,
        itt,
        ttt: r2t.ttt,
        exp_stat_sn: i.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
    };
    i.send(&Bhs::DataOut(ok), &[1u8; 8192]).unwrap();
    let c = i.wait_any().unwrap();
    assert_eq!((c.itt, c.status), (itt, 0));
    dup.itt = 4242;
    let _ = dup;
    let back = i.read16(0, 0, 16).unwrap();
    assert!(back.data.iter().all(|&b| b == 1));
}

#[test]
fn lba_ranges_that_wrap_or_pass_the_end_are_refused() {
    let (_d, exp) = setup();
    let mut i = login(&exp, LoginOptions::new(INITIATOR, None));
    let blocks = (4u64 << 20) / 512;
    for (lba, n) in [
        (u64::MAX, 2u32),
        (u64::MAX - 1, 8),
        (blocks - 1, 2),
        (blocks, 1),
    ] {
        let c = i.read16(0, lba, n).unwrap();
        assert_eq!(c.status, 2, "lba {lba} n {n}");
        assert_eq!(c.sense[2] & 0x0f, 0x05, "ILLEGAL REQUEST");
        assert_eq!((c.sense[12], c.sense[13]), (0x21, 0x00), "LBA OUT OF RANGE");
        let c = i.write16(0, lba, &vec![0u8; n as usize * 512]).unwrap();
        assert_eq!(c.status, 2);
        assert_eq!((c.sense[12], c.sense[13]), (0x21, 0x00));
    }
    still_serving(&exp);
}

#[test]
fn nop_out_is_answered_with_its_data() {
    let (_d, exp) = setup();
    let mut i = login(&exp, LoginOptions::new(INITIATOR, None));
    let n = NopOut {
        immediate: true,
        lun: 0,
        itt: 31,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
    };
    i.send(&Bhs::NopOut(n), b"hello ping").unwrap();
    match i.recv().unwrap() {
        (Bhs::NopIn(r), d) => {
            assert_eq!((r.itt, r.ttt), (31, RESERVED_TAG));
            assert_eq!(&d[..], b"hello ping");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn connections_that_never_log_in_are_timed_out() {
    let (_d, exp) = setup();
    // From 20 addresses, 10 each: within the per-address connection limit (16).
    let mut idle: Vec<TcpStream> = (0..200u32)
        .map(|n| fixture::connect_from([127, 0, 1, 10 + (n % 20) as u8], exp.addr).unwrap())
        .collect();
    // Half of them start a login and stall mid-PDU.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(&[0x43, 0x87, 0, 0, 0, 0, 0, 0x10]).unwrap();
    }
    still_serving(&exp);
    for s in idle.iter_mut() {
        expect_closed(s); // --login-timeout 2
    }
    still_serving(&exp);
}

#[test]
fn thousands_of_unknown_login_keys_get_a_bounded_answer() {
    let (_d, exp) = setup();
    let mut keys = Vec::new();
    for n in 0..2048 {
        keys.push((format!("X-k{n}"), "b".to_string()));
    }
    let mut opts = LoginOptions::new(INITIATOR, Some(&exp.iqn));
    opts.keys = keys;
    // Either the login completes (every key NotUnderstood) or it is refused cleanly.
    match Initiator::connect(exp.addr, &opts) {
        Ok(mut i) => {
            i.clear_unit_attention(0).unwrap();
            for n in [0, 1000, 2047] {
                assert_eq!(
                    i.negotiated
                        .keys
                        .get(&format!("X-k{n}"))
                        .map(String::as_str),
                    Some("NotUnderstood")
                );
            }
            assert_eq!(i.read16(0, 0, 1).unwrap().status, 0);
        }
        Err(InitiatorError::LoginRefused { class, .. }) => assert_eq!(class, 2),
        Err(e) => panic!("{e}"),
    }
    still_serving(&exp);
}

/// Hostile writers on `exp`: `sessions` sessions announce `per_session` WRITEs of 8 MiB each
/// and withhold the last 4 KiB of each (see [`withhold_writes`]).
fn withholding_writers(exp: &Export, sessions: usize, per_session: u32) -> Vec<Initiator> {
    let mut held: Vec<Initiator> = (0..sessions)
        .map(|s| {
            let name = format!("iqn.2026-11.org.isboot.test:withholder{s}");
            login(exp, withholder_options(&name, &exp.iqn))
        })
        .collect();
    withhold_writes(&mut held, per_session, 8 << 20, (512 << 20) / 512).expect("withheld");
    held
}

#[test]
fn withheld_write_data_stays_within_the_write_budget() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    // 4 sessions x 8 WRITEs x 8 MiB = 256 MiB announced, all but 4 KiB of each sent if asked.
    let rss_growth = |budget_mib: &str| {
        let exp = Export::start(&img, &["--write-buffer-mib", budget_mib]);
        let good = |exp: &Export| {
            let mut i = login(
                exp,
                LoginOptions::new("iqn.2026-11.org.isboot.test:good", None),
            );
            assert_eq!(i.read16(0, 3, 1).unwrap().status, 0, "a good client reads");
        };
        good(&exp);
        let before = exp.rss_kib();
        let held = withholding_writers(&exp, 4, 8);
        good(&exp);
        let grew = exp.rss_kib().saturating_sub(before);
        eprintln!("write budget {budget_mib} MiB: RSS {before} KiB -> +{grew} KiB");
        drop(held);
        grew
    };
    let small = rss_growth("32");
    assert!(
        small < (32 + 32) * 1024,
        "RSS grew by {small} KiB with a 32 MiB write budget"
    );
    // The same load with room for all of it: the measure sees the data it holds.
    let large = rss_growth("1024");
    assert!(
        large > 128 * 1024,
        "RSS grew by only {large} KiB with a 1 GiB budget"
    );
}
