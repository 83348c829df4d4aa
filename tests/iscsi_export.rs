//! `isboot export` end to end over loopback TCP: our own initiator in both initiator profiles,
//! libiscsi's tools and QEMU's iSCSI driver.

mod fixture;

use bytes::Bytes;
use fixture::*;
use isboot::initiator::{Initiator, LoginOptions, read16_cdb, write16_cdb};

const MIB: usize = 1 << 20;
const INITIATOR: &str = "iqn.2026-11.org.isboot.test:initiator";

fn block(data: &[u8], lba: usize) -> &[u8] {
    &data[lba * 512..(lba + 1) * 512]
}

fn read_write_cycle(opts: LoginOptions) {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "disk.raw", 16 * MIB);
    let exp = Export::start(&img, &[]);
    let mut i = connect_ready(
        exp.addr,
        &LoginOptions {
            target: Some(exp.iqn.clone()),
            ..opts
        },
    );

    // READ CAPACITY(16): last LBA and block size.
    let c = i
        .command(
            0,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            &[],
            32,
        )
        .unwrap();
    assert_eq!(c.status, 0, "{c:?}");
    assert_eq!(
        u64::from_be_bytes(c.data[..8].try_into().unwrap()),
        (16 * MIB / 512 - 1) as u64
    );
    assert_eq!(u32::from_be_bytes(c.data[8..12].try_into().unwrap()), 512);

    // Reads of several sizes match the file.
    let original = std::fs::read(&img).unwrap();
    for (lba, blocks) in [(0u64, 1u32), (7, 8), (100, 128), (1000, 2048), (32767, 1)] {
        let c = i.read16(0, lba, blocks).unwrap();
        assert_eq!(c.status, 0);
        assert_eq!(c.data.len(), blocks as usize * 512);
        assert_eq!(
            &c.data[..],
            &original[lba as usize * 512..(lba as usize + blocks as usize) * 512]
        );
    }

    // Writes of several sizes (immediate, unsolicited, R2T-solicited) land in the file.
    for (lba, blocks) in [(10u64, 1usize), (200, 16), (4000, 600), (9000, 2048)] {
        let data: Vec<u8> = (0..blocks * 512)
            .map(|x| (x * 7 + lba as usize) as u8)
            .collect();
        let c = i.write16(0, lba, &data).unwrap();
        assert_eq!(c.status, 0, "write of {blocks} blocks: {c:?}");
        let back = i.read16(0, lba, blocks as u32).unwrap();
        assert_eq!(back.data, data);
        let file = std::fs::read(&img).unwrap();
        assert_eq!(
            &file[lba as usize * 512..lba as usize * 512 + data.len()],
            &data[..]
        );
    }
    // Neighbours of a write are untouched.
    let file = std::fs::read(&img).unwrap();
    assert_eq!(block(&file, 9), block(&original, 9));
    assert_eq!(block(&file, 11), block(&original, 11));

    // SYNCHRONIZE CACHE(10) succeeds.
    let c = i
        .command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(c.status, 0);
    i.logout().unwrap();
}

#[test]
fn linux_profile_reads_and_writes() {
    read_write_cycle(LoginOptions::new(INITIATOR, None).linux_profile());
}

#[test]
fn ipxe_profile_reads_and_writes() {
    read_write_cycle(LoginOptions::new(INITIATOR, None).ipxe_profile());
}

#[test]
fn pipelined_commands_complete_out_of_order_safely() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "disk.raw", 16 * MIB);
    let exp = Export::start(&img, &[]);
    let opts = LoginOptions::new(INITIATOR, Some(&exp.iqn)).linux_profile();
    let mut i = connect_ready(exp.addr, &opts);
    let original = std::fs::read(&img).unwrap();
    // 128 commands in flight: reads and writes to disjoint ranges.
    let mut expect = std::collections::HashMap::new();
    for n in 0..128u64 {
        if n % 2 == 0 {
            let itt = i
                .submit(0, &read16_cdb(n * 64, 64), Bytes::new(), 64 * 512)
                .unwrap();
            expect.insert(
                itt,
                Some(original[(n * 64 * 512) as usize..((n + 1) * 64 * 512) as usize].to_vec()),
            );
        } else {
            let data = Bytes::from(vec![n as u8; 64 * 512]);
            let itt = i
                .submit(0, &write16_cdb(n * 64, 64, n % 4 == 1), data, 0)
                .unwrap();
            expect.insert(itt, None);
        }
    }
    for _ in 0..128 {
        let c = i.wait_any().unwrap();
        assert_eq!(c.status, 0, "{c:?}");
        match expect.remove(&c.itt).expect("known ITT") {
            Some(d) => assert_eq!(c.data, d),
            None => assert!(c.data.is_empty()),
        }
    }
    assert!(expect.is_empty());
    let file = std::fs::read(&img).unwrap();
    for n in (1..128u64).step_by(2) {
        assert!(
            file[(n * 64 * 512) as usize..((n + 1) * 64 * 512) as usize]
                .iter()
                .all(|&b| b == n as u8)
        );
    }
}

#[test]
fn discovery_lists_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "my_disk.raw", MIB);
    let exp = Export::start(&img, &[]);
    assert_eq!(exp.iqn, "iqn.2026-11.org.isboot:my-disk");
    let mut i = Initiator::connect(exp.addr, &LoginOptions::new(INITIATOR, None)).unwrap();
    let t = i.send_targets("All").unwrap();
    assert_eq!(t[0], ("TargetName".to_string(), exp.iqn.clone()));
    assert_eq!(t[1].0, "TargetAddress");
    assert!(t[1].1.starts_with(&exp.addr.to_string()), "{:?}", t[1]);
    i.logout().unwrap();
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "ro.raw", MIB);
    let exp = Export::start(&img, &["--read-only"]);
    let mut i = connect_ready(
        exp.addr,
        &LoginOptions::new(INITIATOR, Some(&exp.iqn)).linux_profile(),
    );
    let c = i.write16(0, 0, &[1u8; 512]).unwrap();
    assert_eq!(c.status, 2);
    assert_eq!(c.sense[2] & 0x0f, 0x07, "DATA PROTECT");
    assert_eq!((c.sense[12], c.sense[13]), (0x27, 0x00), "WRITE PROTECTED");
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&img).unwrap());
    assert_eq!(&std::fs::read(&img).unwrap()[..8], &0u64.to_be_bytes());
}

#[test]
/// The one "not you" answer (0201), as for a target bound elsewhere (SECURITY.md).
fn unknown_target_is_refused_like_any_other_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "d.raw", MIB);
    let exp = Export::start(&img, &[]);
    let err = Initiator::connect(
        exp.addr,
        &LoginOptions::new(INITIATOR, Some("iqn.2026-11.org.isboot:nope")),
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            isboot::initiator::InitiatorError::LoginRefused {
                class: 2,
                detail: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_with_a_session_open() {
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "d.raw", MIB);
    let mut exp = Export::start(&img, &[]);
    let mut i = connect_ready(exp.addr, &LoginOptions::new(INITIATOR, Some(&exp.iqn)));
    assert_eq!(i.read16(0, 0, 1).unwrap().status, 0);
    assert_eq!(exp.stop(), Some(0), "log:\n{}", exp.log_text());
    // The initiator is told the target drops the connection, then sees it closed.
    let mut saw_async = false;
    loop {
        match i.recv() {
            Ok((isboot::wire::pdu::Bhs::AsyncMessage(a), _)) => {
                assert_eq!(a.event, 3);
                saw_async = true;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(saw_async);
}

#[test]
fn libiscsi_tools_see_the_lun() {
    if !have("iscsi-inq") {
        return skip("libiscsi-bin is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "tools.raw", 8 * MIB);
    let exp = Export::start(&img, &[]);
    let ls = run("iscsi-ls", &["-s", &format!("iscsi://{}", exp.addr)]);
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "iscsi-ls: {out} {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(out.contains(&exp.iqn), "{out}");
    assert!(out.contains("Lun:0"), "{out}");
    let inq = run("iscsi-inq", &[&exp.url(0)]);
    let out = String::from_utf8_lossy(&inq.stdout);
    assert!(inq.status.success(), "{out}");
    assert!(out.contains("ISBOOT"), "{out}");
    let rc = run("iscsi-readcapacity16", &[&exp.url(0)]);
    let out = String::from_utf8_lossy(&rc.stdout);
    assert!(rc.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "RETURNED LOGICAL BLOCK ADDRESS:{}",
            8 * MIB / 512 - 1
        )),
        "{out}"
    );
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
}

#[test]
fn qemu_reads_the_whole_lun_and_writes_through() {
    if !have("qemu-img")
        || !std::path::Path::new("/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so").exists()
    {
        return skip("qemu-img with qemu-block-extra (iSCSI driver) is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = patterned_image(dir.path(), "q.raw", 32 * MIB);
    let exp = Export::start(&img, &[]);
    let out = dir.path().join("copy.raw");
    let r = run(
        "qemu-img",
        &["convert", "-O", "raw", &exp.url(0), out.to_str().unwrap()],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(),
        "copy differs"
    );
    let w = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xab 1M 1M", &exp.url(0)],
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let file = std::fs::read(&img).unwrap();
    assert!(file[MIB..2 * MIB].iter().all(|&b| b == 0xab));
    // Block 4096 just past the write: its fill byte (after the 8-byte block number) is intact.
    assert_eq!(file[2 * MIB + 8], ((2 * MIB / 512) % 251) as u8);
}
