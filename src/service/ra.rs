//! The IPv6 router-advertisement service: a raw ICMPv6 socket on the DHCP interface that
//! answers router solicitations with the empty advertisement of [`crate::dhcp::ra`], so iPXE
//! does not wait ~13 s for IPv6 autoconfiguration.
//!
//! It runs beside DHCP on the same interface (never on another one) and only when
//! [`DhcpConfig::router_advertisements`] is on. Trouble here (no IPv6 on the link, no
//! CAP_NET_RAW) is logged and never stops DHCP, TFTP or iSCSI: the cost is the wait, not the
//! boot. Solicitations are not checked for hop limit 255 (that needs the IPv6 header); an
//! off-link one can at most trigger one more rate-limited "no router here".

use crate::dhcp::DhcpConfig;
use crate::dhcp::ra::{Schedule, is_router_solicitation, router_advertisement};
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// A raw ICMPv6 socket bound to `interface`, in the all-routers group, sending with hop limit
/// 255 (receivers drop neighbour-discovery messages with any other, RFC 4861 6.1.2).
pub fn open_socket(interface: &str) -> io::Result<(UdpSocket, u32)> {
    let index = crate::sys::if_index(interface)?;
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&ALL_ROUTERS, index)?;
    s.set_nonblocking(true)?;
    // A datagram socket in all but name: tokio's UdpSocket drives recv_from/send_to on it.
    let std: std::net::UdpSocket = std::os::fd::OwnedFd::from(s).into();
    Ok((UdpSocket::from_std(std)?, index))
}

/// Advertise on the interface of `config` while [`DhcpConfig::router_advertisements`] is on,
/// following changes of the config, until `shutdown`.
pub async fn run_ra_watched(
    mut config: watch::Receiver<DhcpConfig>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let cfg = config.borrow_and_update().clone();
        let active = if cfg.router_advertisements() {
            match open_socket(&cfg.interface) {
                Ok(s) => {
                    info!(interface = %cfg.interface, "IPv6 router advertisements on (no router, no prefix: iPXE need not wait for IPv6)");
                    Some(s)
                }
                Err(e) => {
                    warn!(interface = %cfg.interface, error = %e, "IPv6 router advertisements off (iPXE will wait ~13 s for IPv6 autoconf; set ipv6_ra = false in [dhcp] to silence this)");
                    None
                }
            }
        } else {
            None
        };
        let advertise = async {
            match &active {
                Some((sock, index)) => advertise(sock, *index).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(advertise);
        tokio::select! {
            _ = &mut shutdown => return,
            changed = config.changed() => {
                if changed.is_err() {
                    // No more updates: keep going as configured until shutdown.
                    tokio::select! { _ = &mut shutdown => return, _ = &mut advertise => return }
                }
            }
            _ = &mut advertise => return,
        }
    }
}

async fn advertise(sock: &UdpSocket, index: u32) {
    let ra = router_advertisement();
    let to = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    let mut schedule = Schedule::new();
    let mut buf = [0u8; 1500];
    let mut quiet_send_errors = false;
    loop {
        let now = Instant::now();
        if schedule.due(now) {
            match sock.send_to(&ra, to).await {
                Ok(_) => {
                    debug!("sent router advertisement");
                    quiet_send_errors = false;
                }
                // e.g. EADDRNOTAVAIL while the link-local address is still tentative (DAD)
                Err(e) if !quiet_send_errors => {
                    debug!(error = %e, "router advertisement not sent; will retry");
                    quiet_send_errors = true;
                }
                Err(_) => {}
            }
        }
        let wait = schedule
            .next_wakeup(Instant::now())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if is_router_solicitation(&buf[..n]) {
                        debug!(%from, "router solicitation");
                        schedule.solicitation();
                    }
                }
                Err(e) => {
                    warn!(error = %e, "receiving ICMPv6 failed; router advertisements stop");
                    std::future::pending::<()>().await;
                }
            },
        }
    }
}
