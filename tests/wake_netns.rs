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

/// `isboot --state-dir DIR wake ARGS` run in network namespace `ns`.
fn wake_in(ns: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_isboot"),
            "--state-dir",
        ])
        .arg(dir)
        .arg("wake")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
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
    let wake_in_srv = |args: &[&str]| wake_in(&srv, &dir, args);
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

/// A client last seen behind a DHCP relay (its lease lies in a `[[dhcp.relay_pools]]` subnet)
/// is woken through its subnet's directed broadcast: the server routes it to the relay's
/// router, which forwards it as a link broadcast (`bc_forwarding`, RFC 1812 5.3.5.2), and a
/// listener on that subnet receives exactly the magic packet.
#[test]
fn magic_packets_reach_a_client_behind_a_relay() {
    if !is_root() {
        println!("SKIPPED: needs root to create network namespaces (CI runs as root)");
        return;
    }
    const MAC3: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x78, 0x00, 0x03]);
    let mut net = Netns::new("isbr");
    let srv = net.ns("srv");
    let rt = net.ns("rt");
    let pc = net.ns("pc");
    let br = net.ifname("rbr");
    let (s_up, r_down) = (net.ifname("rsu"), net.ifname("rrd"));
    let (r_lan, nic) = (net.ifname("rrl"), net.ifname("rpc"));
    // The boot LAN (a bridge with no one on it) and a routed link to the relay's router.
    must(&["ip", "-n", &srv, "link", "add", &br, "type", "bridge"]);
    must(&["ip", "-n", &srv, "addr", "add", "10.79.0.1/24", "dev", &br]);
    must(&["ip", "-n", &srv, "link", "set", &br, "up"]);
    for (a, a_ns, b, b_ns) in [(&s_up, &srv, &r_down, &rt), (&r_lan, &rt, &nic, &pc)] {
        must(&[
            "ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
        ]);
    }
    for (ns, ifname, addr) in [
        (&srv, &s_up, "10.79.1.1/30"),
        (&rt, &r_down, "10.79.1.2/30"),
        (&rt, &r_lan, "10.89.0.1/24"),
        (&pc, &nic, "10.89.0.10/24"),
    ] {
        must(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname]);
        must(&["ip", "-n", ns, "link", "set", ifname, "up"]);
    }
    must(&[
        "ip",
        "-n",
        &srv,
        "route",
        "add",
        "10.89.0.0/24",
        "via",
        "10.79.1.2",
    ]);
    for key in [
        "net.ipv4.ip_forward".to_string(),
        "net.ipv4.conf.all.bc_forwarding".to_string(),
        format!("net.ipv4.conf.{r_down}.bc_forwarding"),
        format!("net.ipv4.conf.{r_lan}.bc_forwarding"),
    ] {
        must(&[
            "ip",
            "netns",
            "exec",
            &rt,
            "sysctl",
            "-qw",
            &format!("{key}=1"),
        ]);
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    isboot(
        &dir,
        &["init", "--server-ip", "10.79.0.1/24", "--interface", &br],
    );
    let toml = dir.join("isboot.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(
        "\n[[dhcp.relay_pools]]\nrange = \"10.89.0.100-10.89.0.200\"\nnetmask = \"255.255.255.0\"\n",
    );
    std::fs::write(&toml, text).unwrap();
    let img = patterned_image(tmp.path(), "base.img", 1 << 20);
    isboot(&dir, &["image", "add", "deb", img.to_str().unwrap()]);
    add(&dir, MAC1, "pc1");
    add(&dir, MAC3, "pc3");
    // pc3's last lease, as the DHCP service records it, in the relay subnet.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut leases = isboot::dhcp::Leases::new();
    leases.bind(MAC3, Ipv4Addr::new(10, 89, 0, 150), Some("pc3"), now, 3600);
    leases
        .save(&dir.join(isboot::service::boot::LEASES_FILE))
        .unwrap();

    let nic2 = nic.clone();
    let rx = in_ns(&pc, move || {
        client_socket(&nic2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9))
    });
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let o = wake_in(&srv, &dir, &["pc1", "pc3"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains(&format!("woke pc1 ({MAC1}) on {br}")), "{out}");
    assert!(
        out.contains(&format!(
            "woke pc3 ({MAC3}) behind a relay: sent to 10.89.0.255"
        )),
        "{out}"
    );
    // Only pc3's packet crosses the router; pc1's stays on the boot bridge.
    let mut buf = [0u8; 1500];
    let (n, from) = rx.recv_from(&mut buf).expect("pc3's magic packet");
    assert_eq!(from.ip().to_string(), "10.79.1.1", "routed from the server");
    assert_eq!(&buf[..n], &magic_packet(&MAC3)[..]);
    rx.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    assert!(
        rx.recv_from(&mut buf).is_err(),
        "only one packet reached the relay subnet"
    );
}
