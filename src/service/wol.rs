//! Sending Wake-on-LAN magic packets ([`crate::boot::wol`]) on the boot interface only: the
//! socket is bound to the `[dhcp]` interface (SO_BINDTODEVICE) and sends to the limited
//! broadcast address, which never leaves that link. Without a boot interface nothing is sent.

use crate::boot::wol::{WOL_PORT, magic_packet};
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
}

/// Send one magic packet per MAC to 255.255.255.255, UDP port [`WOL_PORT`], out of
/// `interface` only.
pub fn send(interface: &str, macs: &[MacAddr]) -> Result<(), WakeError> {
    let binding = |source| WakeError::Binding {
        interface: interface.to_string(),
        source,
    };
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(binding)?;
    s.bind_device(Some(interface.as_bytes())).map_err(binding)?;
    s.set_broadcast(true).map_err(binding)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .map_err(binding)?;
    let to: socket2::SockAddr = SocketAddr::from((Ipv4Addr::BROADCAST, WOL_PORT)).into();
    for mac in macs {
        s.send_to(&magic_packet(mac), &to)
            .map_err(|source| WakeError::Sending {
                mac: *mac,
                interface: interface.to_string(),
                source,
            })?;
    }
    Ok(())
}
