//! iPXE (QEMU's NIC option ROM, under SeaBIOS) logs in to `isboot export` and `sanboot`s a
//! disk whose boot sector prints a marker on the serial port: proof that iPXE accepts the
//! target, reads its capacity and boots from it.
//!
//! User-mode networking: QEMU's slirp hands iPXE a TFTP script that sanboots
//! `iscsi:10.0.2.2::PORT::IQN`; 10.0.2.2 is the host's loopback.

mod fixture;

use fixture::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "ISBOOT-SANBOOT-OK";

/// A 16-bit boot sector: write MARKER to COM1, then halt.
fn boot_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    let code: &[u8] = &[
        0xfa, // cli
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xfc, // cld
        0xbe, 0x17, 0x7c, // mov si, 0x7c17 (the message)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8 (COM1)
        0xac, // next: lodsb
        0x08, 0xc0, // or al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next
        0xf4, // done: hlt
        0xeb, 0xfd, // jmp done
    ];
    s[..code.len()].copy_from_slice(code);
    let msg = format!("{MARKER}\r\n\0");
    s[0x17..0x17 + msg.len()].copy_from_slice(msg.as_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

#[test]
fn ipxe_sanboots_from_isboot_export() {
    if !have("qemu-system-x86_64")
        || !std::path::Path::new("/usr/lib/ipxe/qemu/efi-e1000.rom").exists()
            && !std::path::Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists()
    {
        return skip("qemu-system-x86 with iPXE ROMs is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("boot.raw");
    let mut data = vec![0u8; 8 << 20];
    data[..512].copy_from_slice(&boot_sector());
    std::fs::write(&img, &data).unwrap();
    let exp = Export::start(&img, &["--read-only"]);
    let tftp = dir.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!(
            "#!ipxe\nsanboot iscsi:10.0.2.2::{}::{}\n",
            exp.addr.port(),
            exp.iqn
        ),
    )
    .unwrap();
    let serial = dir.path().join("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
        ])
        .args(["-boot", "n"])
        .arg("-nic")
        .arg(format!(
            "user,model=e1000,tftp={},bootfile=boot.ipxe",
            tftp.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut found = false;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .contains(MARKER)
        {
            found = true;
            break;
        }
        if let Ok(Some(_)) = qemu.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let log = exp.log_text();
    assert!(
        found,
        "no marker on serial.\nserial:\n{}\nisboot:\n{log}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    assert!(log.contains("session started"), "{log}");
}
