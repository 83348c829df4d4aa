//! Any datagram into the DHCP server, in full and proxy mode, on both ports: never a panic,
//! and every reply encodes.
#![no_main]

use isboot::dhcp::{
    Arrival, ClientDirectory, DhcpClient, DhcpConfig, DhcpHooks, DhcpMode, DhcpServer, Leases,
    MacAddr,
};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};

struct EveryoneKnown;
impl ClientDirectory for EveryoneKnown {
    fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
        Some(DhcpClient {
            name: format!("c{}", mac.0[5]),
            ip: (mac.0[5] & 1 == 0).then(|| Ipv4Addr::new(10, 0, 0, 20 + (mac.0[5] >> 2))),
            target_iqn: "iqn.2026-11.fuzz:t".into(),
            initiator_iqn: Some("iqn.2026-11.fuzz:i".into()),
            root_path: None,
            san_filename: (mac.0[4] & 1 == 1).then(|| "\\EFI\\BOOT\\BOOTX64.EFI".to_string()),
            // Some clients have a boot script (the boot routes on), some the root-path.
            boot_script: (mac.0[2] & 1 == 1)
                .then(|| format!("http://10.0.0.1:9261/boot/{}.ipxe", mac.dashed())),
            // Some clients carry CHAP credentials, so the iPXE-stage option path is fuzzed too.
            chap: (mac.0[3] & 1 == 1).then(|| isboot::dhcp::IpxeChap {
                username: "c".into(),
                password: "0123456789abcdef".into(),
                reverse: (mac.0[3] & 2 == 2).then(|| ("t".into(), "fedcba9876543210".into())),
            }),
        })
    }
    fn by_ip(&self, _: Ipv4Addr) -> Option<MacAddr> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = isboot::dhcp::wire::parse_request(data);
    for mode in [DhcpMode::Full, DhcpMode::Proxy] {
        let mut cfg = DhcpConfig::new("fuzz0", Ipv4Addr::new(10, 0, 0, 1), mode);
        cfg.range = Some("10.0.0.100-10.0.0.110".parse().expect("range"));
        let mut s = DhcpServer::new(cfg, Leases::new());
        for port in [67, 4011] {
            let arrival = Arrival {
                port,
                src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 68),
            };
            if let Some(r) = s.handle(&EveryoneKnown, &DhcpHooks::default(), data, arrival, 1_000) {
                r.encode().expect("replies always encode");
            }
        }
    }
});
