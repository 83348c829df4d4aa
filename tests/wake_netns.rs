//! `isboot wake` in network namespaces the test creates: the magic packets leave on the boot
//! interface (a bridge in the server's namespace) and a listener on the other end of a veth
//! pair receives exactly the 102 bytes for each MAC. Without a boot interface it refuses.
//! The namespace part needs root (CI runs as root); otherwise it prints SKIPPED.
// The test harness enters network namespaces (setns): the crate denies unsafe code elsewhere.
#![allow(unsafe_code)]

mod fixture;
use fixture::netns::{Netns, client_socket, in_ns, is_root, must};
use fixture::*;
use isboot::boot::wol::{MAGIC_LEN, magic_packet};
use isboot::mac::MacAddr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

const MAC1: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x78, 0x00, 0x01]);
const MAC2: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x78, 0x00, 0x02]);

fn add(dir: &std::path::Path, mac: MacAddr, name: &str) {
    isboot(
        dir,
        &[
            "add-client",
            "--mac",
            &mac.to_string(),
            "--image",
            "deb",
            "--name",
            name,
            "--no-chap",
        ],
    );
}

#[test]
fn wake_without_boot_interface_is_refused() {
    let lab = Lab::with_image();
    lab.add("52:54:00:78:00:01", "pc1", &["--no-chap"]);
    lab.refused(&["wake", "pc1"], 2, "no boot interface");
    lab.refused(&["wake", "nobody"], 2, "no boot interface");
}

#[test]
fn magic_packets_on_the_boot_interface() {
    if !is_root() {
        println!("SKIPPED: needs root to create network namespaces (CI runs as root)");
        return;
    }
    let mut net = Netns::new("isbw");
    let srv = net.ns("srv");
    let pc = net.ns("pc");
    let br = net.ifname("wbr");
    let port = net.ifname("wsp");
    let nic = net.ifname("wpc");
    must(&["ip", "-n", &srv, "link", "add", &br, "type", "bridge"]);
    must(&["ip", "-n", &srv, "addr", "add", "10.78.0.1/24", "dev", &br]);
    must(&["ip", "-n", &srv, "link", "set", &br, "up"]);
    must(&[
        "ip", "link", "add", &port, "netns", &srv, "type", "veth", "peer", "name", &nic, "netns",
        &pc,
    ]);
    must(&["ip", "-n", &srv, "link", "set", &port, "master", &br]);
    must(&["ip", "-n", &srv, "link", "set", &port, "up"]);
    must(&["ip", "-n", &pc, "addr", "add", "10.78.0.10/24", "dev", &nic]);
    must(&["ip", "-n", &pc, "link", "set", &nic, "up"]);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    isboot(
        &dir,
        &["init", "--server-ip", "10.78.0.1/24", "--interface", &br],
    );
    let img = patterned_image(tmp.path(), "base.img", 1 << 20);
    isboot(&dir, &["image", "add", "deb", img.to_str().unwrap()]);
    add(&dir, MAC1, "pc1");
    add(&dir, MAC2, "pc2");

    // The listener: UDP port 9 on the client's side of the link.
    let nic2 = nic.clone();
    let rx = in_ns(&pc, move || {
        client_socket(&nic2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9))
    });
    // `isboot wake ARGS` in the server's namespace.
    let wake_in_srv = |args: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &srv,
                env!("CARGO_BIN_EXE_isboot"),
                "--state-dir",
            ])
            .arg(&dir)
            .arg("wake")
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let wake = |args: &[&str]| {
        let o = wake_in_srv(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let recv = || {
        let mut buf = [0u8; 1500];
        let (n, from) = rx.recv_from(&mut buf).expect("a magic packet");
        assert_eq!(
            from.ip().to_string(),
            "10.78.0.1",
            "sent from the boot address"
        );
        buf[..n].to_vec()
    };
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();

    let out = wake(&["pc2"]);
    assert!(out.contains(&format!("woke pc2 ({MAC2}) on {br}")), "{out}");
    let got = recv();
    assert_eq!(got.len(), MAGIC_LEN);
    assert_eq!(got, magic_packet(&MAC2));

    let out = wake(&["--all"]);
    assert!(
        out.contains("woke pc1") && out.contains("woke pc2"),
        "{out}"
    );
    let mut got = [recv(), recv()];
    got.sort();
    let mut want = [magic_packet(&MAC1).to_vec(), magic_packet(&MAC2).to_vec()];
    want.sort();
    assert_eq!(got, want);

    // A boot interface that does not exist: a clear error, nothing sent.
    let text = std::fs::read_to_string(dir.join("isboot.toml")).unwrap();
    std::fs::write(
        dir.join("isboot.toml"),
        text.replace(
            &format!("interface = \"{br}\""),
            "interface = \"isbw-none0\"",
        ),
    )
    .unwrap();
    let o = wake_in_srv(&["pc1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot send on the boot interface isbw-none0"),
        "{err}"
    );
    rx.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    assert!(rx.recv_from(&mut [0u8; 200]).is_err(), "nothing was sent");
}
