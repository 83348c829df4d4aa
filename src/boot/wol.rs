//! Wake-on-LAN magic packet (AMD "Magic Packet" format): six 0xFF bytes, then the target MAC
//! sixteen times; 102 bytes, sent as a UDP datagram (port 9 by convention).

use crate::dhcp::DhcpConfig;
use crate::mac::MacAddr;
use std::net::Ipv4Addr;

/// Length of a magic packet without a SecureOn password.
pub const MAGIC_LEN: usize = 6 + 16 * 6;

/// The conventional destination port (discard).
pub const WOL_PORT: u16 = 9;

/// Builds the magic packet that wakes `mac`.
pub fn magic_packet(mac: &MacAddr) -> [u8; MAGIC_LEN] {
    let mut p = [0xFFu8; MAGIC_LEN];
    for chunk in p.chunks_exact_mut(6).skip(1) {
        chunk.copy_from_slice(&mac.0);
    }
    p
}

/// Where a client's magic packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeRoute {
    /// The limited broadcast on the boot interface: the client is on the boot LAN (or its
    /// address is not known).
    BootLink,
    /// The directed broadcast of the relay subnet the client was last seen in (its fixed
    /// address or its last DHCP lease lies in a `[[dhcp.relay_pools]]` subnet). The packet is
    /// routed to that subnet's router, which must forward directed broadcasts (RFC 1812
    /// 5.3.5.2; Linux: `net.ipv4.conf.*.bc_forwarding`, most routers: `ip directed-broadcast`).
    Relay {
        network: Ipv4Addr,
        netmask: Ipv4Addr,
    },
}

impl WakeRoute {
    /// The route for a client last seen at `ip` (None: unknown), given the `[dhcp]` config.
    pub fn of(ip: Option<Ipv4Addr>, dhcp: &DhcpConfig) -> WakeRoute {
        match ip.and_then(|ip| dhcp.relay_subnet_of(ip)) {
            Some((network, netmask)) => WakeRoute::Relay { network, netmask },
            None => WakeRoute::BootLink,
        }
    }

    /// The address the packet is sent to: 255.255.255.255 on the boot link, else the relay
    /// subnet's broadcast address.
    pub fn destination(&self) -> Ipv4Addr {
        match *self {
            WakeRoute::BootLink => Ipv4Addr::BROADCAST,
            WakeRoute::Relay { network, netmask } => {
                Ipv4Addr::from(u32::from(network) | !u32::from(netmask))
            }
        }
    }
}

/// Is `bytes` a magic packet for `mac`? (Used by the receiving side of tests and diagnostics.)
pub fn is_magic_for(bytes: &[u8], mac: &MacAddr) -> bool {
    bytes.len() >= MAGIC_LEN && bytes.get(..MAGIC_LEN) == Some(&magic_packet(mac)[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_layout() {
        let mac = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        let p = magic_packet(&mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &mac.0, "repetition {i}");
        }
        assert!(is_magic_for(&p, &mac));
        assert!(!is_magic_for(
            &p,
            &MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57])
        ));
        assert!(!is_magic_for(&p[..101], &mac));
    }

    #[test]
    fn relayed_clients_get_their_subnets_directed_broadcast() {
        let mut cfg: DhcpConfig = toml::from_str(
            r#"
            interface = "br0"
            server_ip = "10.77.0.1"
            netmask = "255.255.255.0"
            [[relay_pools]]
            range = "10.88.4.100-10.88.4.200"
            netmask = "255.255.252.0"
            "#,
        )
        .unwrap();
        let ip = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        // On the boot LAN, unknown, or in no pool: the boot link.
        assert_eq!(WakeRoute::of(ip("10.77.0.20"), &cfg), WakeRoute::BootLink);
        assert_eq!(WakeRoute::of(None, &cfg), WakeRoute::BootLink);
        assert_eq!(WakeRoute::of(ip("192.0.2.9"), &cfg), WakeRoute::BootLink);
        // Anywhere in the relay pool's subnet (not only its range): that subnet's broadcast.
        let r = WakeRoute::of(ip("10.88.5.7"), &cfg);
        assert_eq!(
            r,
            WakeRoute::Relay {
                network: "10.88.4.0".parse().unwrap(),
                netmask: "255.255.252.0".parse().unwrap()
            }
        );
        assert_eq!(r.destination(), "10.88.7.255".parse::<Ipv4Addr>().unwrap());
        assert_eq!(WakeRoute::BootLink.destination(), Ipv4Addr::BROADCAST);
        cfg.relay_pools.clear();
        assert_eq!(WakeRoute::of(ip("10.88.5.7"), &cfg), WakeRoute::BootLink);
    }
}
