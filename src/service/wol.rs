//! Sending Wake-on-LAN magic packets ([`crate::boot::wol`]). A client on the boot LAN gets
//! one on the boot interface only: the socket is bound to the `[dhcp]` interface
//! (SO_BINDTODEVICE) and sends to the limited broadcast address, which never leaves that link.
//! A client last seen behind a DHCP relay gets one sent to its relay subnet's directed broadcast
//! address ([`WakeRoute::Relay`]), routed like any packet to that subnet; only subnets of the
//! configured `[[dhcp.relay_pools]]` are ever sent to. Without a boot interface nothing is sent.

use crate::boot::wol::{WOL_PORT, WakeRoute, magic_packet};
use crate::mac::MacAddr;
use std::net::{Ipv4Addr, SocketAddr};

/// Why magic packets could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error(
        "cannot send on the boot interface {interface}: {source} (Wake-on-LAN goes out on [dhcp] interface only; it needs root or CAP_NET_RAW, and the interface must exist)"
    )]
    Binding {
        interface: String,
        source: std::io::Error,
    },
    #[error("sending the magic packet for {mac} on {interface}: {source}")]
    Sending {
        mac: MacAddr,
        interface: String,
        source: std::io::Error,
    },
    #[error(
        "sending the magic packet for {mac} to its relay subnet's broadcast {to}: {source} (this server needs a route to that subnet, and its router must forward directed broadcasts)"
    )]
    SendingRelayed {
        mac: MacAddr,
        to: Ipv4Addr,
        source: std::io::Error,
    },
}

/// Send one magic packet per client to UDP port [`WOL_PORT`]: on `interface` only for
/// [`WakeRoute::BootLink`], to the relay subnet's broadcast address for [`WakeRoute::Relay`].
pub fn send(interface: &str, targets: &[(MacAddr, WakeRoute)]) -> Result<(), WakeError> {
    let binding = |source| WakeError::Binding {
        interface: interface.to_string(),
        source,
    };
    let udp = || {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
    };
    let link = udp().map_err(binding)?;
    link.bind_device(Some(interface.as_bytes()))
        .map_err(binding)?;
    link.set_broadcast(true).map_err(binding)?;
    link.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .map_err(binding)?;
    let mut routed: Option<socket2::Socket> = None;
    for (mac, route) in targets {
        let to = route.destination();
        let dest: socket2::SockAddr = SocketAddr::from((to, WOL_PORT)).into();
        match route {
            WakeRoute::BootLink => {
                link.send_to(&magic_packet(mac), &dest)
                    .map_err(|source| WakeError::Sending {
                        mac: *mac,
                        interface: interface.to_string(),
                        source,
                    })?;
            }
            WakeRoute::Relay { .. } => {
                let relayed = |source| WakeError::SendingRelayed {
                    mac: *mac,
                    to,
                    source,
                };
                let s = match &routed {
                    Some(s) => s,
                    None => {
                        let s = udp().map_err(relayed)?;
                        s.set_broadcast(true).map_err(relayed)?;
                        routed.insert(s)
                    }
                };
                s.send_to(&magic_packet(mac), &dest).map_err(relayed)?;
            }
        }
    }
    Ok(())
}
