//! DHCP never answers on an interface it was not configured for. The server namespace has two
//! links with addresses, `[dhcp] interface` names one; DISCOVERs (broadcast, and unicast to the
//! server's own address) arriving on the other get no reply, while the configured one is served.
//! Needs root for the network namespaces the test creates (prints SKIPPED otherwise).

mod fixture;

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Encodable};
use fixture::netns::{Firmware, Netns, boot_msg, client_socket, enter_netns, in_ns, is_root, must};
use isboot::dhcp::{ClientDirectory, DhcpClient, DhcpConfig, DhcpHooks, DhcpMode, MacAddr};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x78, 0x00, 0x01]);

struct Dir;
impl ClientDirectory for Dir {
    fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
        (mac == MAC).then(|| DhcpClient {
            name: "ws".into(),
            ip: Some(Ipv4Addr::new(10, 78, 1, 10)),
            target_iqn: "iqn.2026-11.lab:ws".into(),
            initiator_iqn: None,
            root_path: None,
            san_filename: None,
            boot_script: None,
            chap: None,
        })
    }
    fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        (ip == Ipv4Addr::new(10, 78, 1, 10)).then_some(MAC)
    }
}

/// DISCOVER from `ns` on `ifname` to `to`; true if any BOOTREPLY with our xid came back.
fn answered(ns: &str, ifname: &str, to: SocketAddrV4, xid: u32) -> bool {
    let ifname = ifname.to_string();
    in_ns(ns, move || {
        let sock = client_socket(&ifname, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        let m = boot_msg(MAC, xid, MessageType::Discover, Firmware::Pxe(0), vec![]);
        let until = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1600];
        // Retransmit like a client would, once a second.
        let mut next_send = Instant::now();
        while Instant::now() < until {
            if Instant::now() >= next_send {
                sock.send_to(&m.to_vec().unwrap(), to).unwrap();
                next_send += Duration::from_secs(1);
            }
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Ok(r) = Message::from_bytes(&buf[..n])
                && r.xid() == xid
                && r.opcode() == dhcproto::v4::Opcode::BootReply
            {
                return true;
            }
        }
        false
    })
}

#[test]
fn dhcp_never_answers_on_an_interface_that_was_not_configured() {
    if !is_root() {
        println!("SKIPPED: needs root to create network namespaces");
        return;
    }
    let mut net = Netns::new("isbh");
    let (s, ca, cb) = (net.ns("s"), net.ns("a"), net.ns("b"));
    let (vsa, vca, vsb, vcb) = (
        net.ifname("hsa"),
        net.ifname("hca"),
        net.ifname("hsb"),
        net.ifname("hcb"),
    );
    for (sv, cv, cns) in [(&vsa, &vca, &ca), (&vsb, &vcb, &cb)] {
        must(&[
            "ip", "link", "add", sv, "netns", &s, "type", "veth", "peer", "name", cv, "netns", cns,
        ]);
        must(&["ip", "-n", &s, "link", "set", sv, "up"]);
        must(&["ip", "-n", cns, "link", "set", cv, "up"]);
    }
    // Both server links have addresses; the client side of B has one too, so it can unicast.
    must(&["ip", "-n", &s, "addr", "add", "10.78.1.1/24", "dev", &vsa]);
    must(&["ip", "-n", &s, "addr", "add", "10.78.2.1/24", "dev", &vsb]);
    must(&["ip", "-n", &cb, "addr", "add", "10.78.2.50/24", "dev", &vcb]);
    must(&[
        "ip",
        "-n",
        &cb,
        "link",
        "set",
        &vcb,
        "address",
        "52:54:00:78:00:01",
    ]);
    must(&[
        "ip",
        "-n",
        &ca,
        "link",
        "set",
        &vca,
        "address",
        "52:54:00:78:00:01",
    ]);

    let mut cfg = DhcpConfig::new(&vsa, Ipv4Addr::new(10, 78, 1, 1), DhcpMode::Full);
    cfg.range = Some("10.78.1.100-10.78.1.120".parse().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sns = s.clone();
    let server = std::thread::spawn(move || {
        enter_netns(&sns);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(isboot::service::dhcp::run_dhcp(
                cfg,
                None,
                Arc::new(Dir),
                DhcpHooks::default(),
                async {
                    let _ = stop_rx.await;
                },
            ))
            .expect("run_dhcp");
    });
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    // The configured interface answers (retrying until the server is up).
    let until = Instant::now() + Duration::from_secs(15);
    let mut xid = 0x4242_0000;
    while !answered(&ca, &vca, bcast, xid) {
        assert!(
            Instant::now() < until,
            "no answer on the configured interface"
        );
        xid += 1;
    }
    // The other interface: no answer to a broadcast, nor to unicast at the server's address there.
    assert!(
        !answered(&cb, &vcb, bcast, 0x5151_0001),
        "answered a broadcast on an unconfigured interface"
    );
    assert!(
        !answered(
            &cb,
            &vcb,
            SocketAddrV4::new(Ipv4Addr::new(10, 78, 2, 1), 67),
            0x5151_0002
        ),
        "answered a unicast on an unconfigured interface"
    );
    // Still serving the configured one.
    assert!(answered(&ca, &vca, bcast, 0x6161_0001));
    let _ = stop_tx.send(());
    server.join().unwrap();
}
