//! The DHCP service: sockets on the configured interface only, feeding [`DhcpServer`].
//!
//! - Port 67, `SO_BINDTODEVICE` to `[dhcp] interface`, `SO_BROADCAST`, `SO_REUSEADDR`.
//! - Proxy mode also listens on port 4011 (PXE boot-server / proxyDHCP requests).
//! - Replies to clients without an address: an ARP entry for (yiaddr, chaddr) is added on the
//!   interface and the reply unicast, as RFC 2131 4.1 asks; when that fails (no
//!   CAP_NET_ADMIN) the reply is broadcast on the interface instead.
//! - Leases are saved (atomically, off the executor) whenever they change.

use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;

use crate::dhcp::server::{CLIENT_PORT, PXE_PORT, SERVER_PORT};
use crate::dhcp::{
    Arrival, ClientDirectory, Destination, DhcpConfig, DhcpError, DhcpHooks, DhcpMode, DhcpServer,
    Leases, MacAddr,
};

/// Receive buffer: larger than any datagram the parser accepts, so oversize ones are seen
/// whole and refused.
const RECV_BUF: usize = crate::dhcp::wire::MAX_PACKET_LEN + 512;

/// What stops the DHCP service.
#[derive(Debug, thiserror::Error)]
pub enum DhcpServiceError {
    #[error(transparent)]
    Config(#[from] DhcpError),
    #[error("DHCP interface {0:?} does not exist (check `interface` in the [dhcp] section)")]
    NoSuchInterface(String),
    #[error("binding DHCP port {port} on interface {interface}: {source}")]
    Binding {
        interface: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("receiving DHCP on {interface}: {source}")]
    Receiving {
        interface: String,
        source: std::io::Error,
    },
}

/// Open a UDP socket on `0.0.0.0:port` bound to `interface`, with broadcast enabled.
pub fn bind_interface_socket(interface: &str, port: u16) -> Result<UdpSocket, DhcpServiceError> {
    let err = |source| DhcpServiceError::Binding {
        interface: interface.to_string(),
        port,
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

fn interface_exists(name: &str) -> bool {
    crate::sys::if_index(name).is_ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run DHCP (and, in proxy mode, the port-4011 listener) on `cfg.interface` until `shutdown`
/// completes. Leases are loaded from and saved to `lease_file` (None: kept in memory only).
///
/// Refuses to start without an interface, or with one that does not exist.
pub async fn run_dhcp(
    cfg: DhcpConfig,
    lease_file: Option<PathBuf>,
    directory: Arc<dyn ClientDirectory>,
    hooks: DhcpHooks,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DhcpServiceError> {
    let (_keep, rx) = tokio::sync::watch::channel(cfg);
    run_dhcp_watched(rx, lease_file, directory, hooks, shutdown).await
}

/// The sockets for one (interface, mode).
pub struct Sockets {
    interface: String,
    mode: DhcpMode,
    s67: UdpSocket,
    s4011: Option<UdpSocket>,
    /// Replies to a client without an address go straight to its MAC through this
    /// (`CAP_NET_RAW`); without it, through an ARP entry (`CAP_NET_ADMIN`).
    link: Option<crate::sys::LinkSender>,
    /// Our address on the interface: the source of link-layer replies.
    server_ip: Ipv4Addr,
}

impl Sockets {
    /// Bind the DHCP sockets `cfg` asks for (port 67, and 4011 in proxy mode).
    pub fn open(cfg: &DhcpConfig) -> Result<Sockets, DhcpServiceError> {
        cfg.validate()?;
        if !interface_exists(&cfg.interface) {
            return Err(DhcpServiceError::NoSuchInterface(cfg.interface.clone()));
        }
        let s67 = bind_interface_socket(&cfg.interface, SERVER_PORT)?;
        let s4011 = match cfg.mode {
            DhcpMode::Proxy => Some(bind_interface_socket(&cfg.interface, PXE_PORT)?),
            DhcpMode::Full => None,
        };
        let link = crate::sys::LinkSender::open()
            .inspect_err(|e| tracing::debug!(error = %e, "no link-layer socket; unicast replies to clients without an address need an ARP entry"))
            .ok();
        tracing::info!(interface = %cfg.interface, server_ip = %cfg.server_ip, mode = ?cfg.mode, "DHCP listening");
        Ok(Sockets {
            interface: cfg.interface.clone(),
            mode: cfg.mode,
            s67,
            s4011,
            link,
            server_ip: cfg.server_ip,
        })
    }
}

/// Like [`run_dhcp`], but follows configuration changes published on `config` (for example
/// after `isboot` rewrites the config file): a new interface or mode rebinds the sockets,
/// anything else (pools, boot files, lease time, auto_enroll) applies to the next request.
/// An invalid update is logged and ignored; the running configuration stays.
pub async fn run_dhcp_watched(
    mut config: tokio::sync::watch::Receiver<DhcpConfig>,
    lease_file: Option<PathBuf>,
    directory: Arc<dyn ClientDirectory>,
    hooks: DhcpHooks,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DhcpServiceError> {
    let socks = Sockets::open(&config.borrow_and_update())?;
    run_dhcp_on(socks, config, lease_file, directory, hooks, shutdown).await
}

/// [`run_dhcp_watched`] on sockets already bound for the current configuration.
pub async fn run_dhcp_on(
    mut socks: Sockets,
    mut config: tokio::sync::watch::Receiver<DhcpConfig>,
    lease_file: Option<PathBuf>,
    directory: Arc<dyn ClientDirectory>,
    hooks: DhcpHooks,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DhcpServiceError> {
    let cfg = config.borrow_and_update().clone();
    let leases = match &lease_file {
        Some(p) => Leases::load(p)?,
        None => Leases::new(),
    };
    // Clients keep their disks across a restart: what the lease file says they hold binds
    // their targets again.
    if let Some(h) = &hooks.address {
        let now = unix_now();
        for l in leases.iter().filter(|l| l.bound && l.expires > now) {
            h.client_address(l.mac, l.ip, crate::dhcp::AddressOrigin::Lease);
        }
    }
    let mut server = DhcpServer::new(cfg, leases);
    let mut updates_open = true;
    let mut buf67 = vec![0u8; RECV_BUF];
    let mut buf4011 = vec![0u8; RECV_BUF];
    tokio::pin!(shutdown);
    loop {
        let (n, src, port) = tokio::select! {
            _ = &mut shutdown => break,
            changed = config.changed(), if updates_open => {
                if changed.is_err() {
                    updates_open = false;
                    continue;
                }
                let new = config.borrow_and_update().clone();
                apply_update(&mut server, &mut socks, new);
                continue;
            }
            r = socks.s67.recv_from(&mut buf67) => match r {
                Ok((n, src)) => (n, src, SERVER_PORT),
                Err(e) => { recv_error(&socks.interface, e)?; continue; }
            },
            r = async { match &socks.s4011 { Some(s) => s.recv_from(&mut buf4011).await, None => std::future::pending().await } } => match r {
                Ok((n, src)) => (n, src, PXE_PORT),
                Err(e) => { recv_error(&socks.interface, e)?; continue; }
            },
        };
        let SocketAddr::V4(src) = src else { continue };
        let bytes = if port == SERVER_PORT {
            &buf67[..n]
        } else {
            &buf4011[..n]
        };
        let reply = server.handle(
            directory.as_ref(),
            &hooks,
            bytes,
            Arrival { port, src },
            unix_now(),
        );
        crate::service::metrics::get().dhcp_message(
            request_type(bytes),
            reply
                .as_ref()
                .and_then(|r| r.msg.opts().msg_type())
                .map_or("ignored", type_label),
        );
        if let Some(reply) = reply {
            send_reply(&socks, port, &reply).await;
        }
        if server.take_leases_dirty()
            && let Some(path) = &lease_file
        {
            let snapshot = server.leases().clone();
            let path = path.clone();
            match tokio::task::spawn_blocking(move || snapshot.save(&path)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "saving DHCP leases failed"),
                Err(e) => tracing::error!(error = %e, "lease saving task failed"),
            }
        }
    }
    tracing::info!(interface = %socks.interface, "DHCP stopped");
    Ok(())
}

/// A DHCP message type as a metric label.
fn type_label(t: dhcproto::v4::MessageType) -> &'static str {
    use dhcproto::v4::MessageType as M;
    match t {
        M::Discover => "discover",
        M::Offer => "offer",
        M::Request => "request",
        M::Decline => "decline",
        M::Ack => "ack",
        M::Nak => "nak",
        M::Release => "release",
        M::Inform => "inform",
        _ => "other",
    }
}

/// The type of a received datagram, "malformed" when it does not parse as a DHCP request.
fn request_type(bytes: &[u8]) -> &'static str {
    match crate::dhcp::wire::parse_request(bytes) {
        Ok(m) => crate::dhcp::wire::msg_type(&m).map_or("malformed", type_label),
        Err(_) => "malformed",
    }
}

fn apply_update(server: &mut DhcpServer, socks: &mut Sockets, new: DhcpConfig) {
    if let Err(e) = new.validate() {
        tracing::error!(error = %e, "ignoring invalid DHCP configuration update");
        return;
    }
    if new.interface != socks.interface || new.mode != socks.mode {
        // Drop the old sockets first: the new ones bind the same ports.
        let old = (socks.interface.clone(), socks.mode);
        let placeholder = std::mem::replace(
            socks,
            match Sockets::open(&new) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, interface = %new.interface, "cannot move DHCP to the new interface/mode; keeping {} ({:?})", old.0, old.1);
                    return;
                }
            },
        );
        drop(placeholder);
    }
    socks.server_ip = new.server_ip;
    tracing::info!(interface = %new.interface, mode = ?new.mode, "DHCP configuration updated");
    server.set_config(new);
}

async fn send_reply(socks: &Sockets, port: u16, reply: &crate::dhcp::Reply) {
    let out = match reply.encode() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "could not encode DHCP reply");
            return;
        }
    };
    let sock = if port == PXE_PORT {
        socks.s4011.as_ref().unwrap_or(&socks.s67)
    } else {
        &socks.s67
    };
    let to = match reply.dest {
        Destination::Relay(a) | Destination::Unicast(a) => a,
        Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        Destination::Hardware { ip, mac } => {
            if send_on_link(socks, sock, ip, mac, &out) {
                return;
            }
            match crate::sys::add_arp_entry(sock, &socks.interface, ip, mac) {
                Ok(()) => SocketAddrV4::new(ip, CLIENT_PORT),
                Err(e) if reply.secret => {
                    tracing::warn!(mac = %mac, error = %e, "no ARP entry added; a reply with CHAP credentials is never broadcast, dropped");
                    return;
                }
                Err(e) => {
                    tracing::debug!(mac = %mac, error = %e, "no ARP entry added; broadcasting the reply");
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
                }
            }
        }
    };
    tracing::debug!(
        %to,
        msg_type = ?reply.msg.opts().msg_type(),
        yiaddr = %reply.msg.yiaddr(),
        xid = reply.msg.xid(),
        "sending DHCP reply"
    );
    if let Err(e) = sock.send_to(&out, to).await {
        tracing::warn!(%to, error = %e, "sending DHCP reply failed");
    }
}

/// Send `out` to `mac` at `ip` (a client without an address yet) as a UDP datagram from
/// `sock`'s port, through the link-layer socket. False when there is none or it failed: the
/// caller falls back to an ARP entry.
fn send_on_link(socks: &Sockets, sock: &UdpSocket, ip: Ipv4Addr, mac: MacAddr, out: &[u8]) -> bool {
    let Some(link) = &socks.link else {
        return false;
    };
    let port = sock.local_addr().map_or(SERVER_PORT, |a| a.port());
    let src = SocketAddrV4::new(socks.server_ip, port);
    let dst = SocketAddrV4::new(ip, CLIENT_PORT);
    let Some(datagram) = crate::dhcp::link::udp_datagram(src, dst, out) else {
        return false;
    };
    match link.send_ipv4(&socks.interface, mac, &datagram) {
        Ok(()) => {
            tracing::debug!(%dst, %mac, "DHCP reply sent on the link layer");
            true
        }
        Err(e) => {
            tracing::debug!(%mac, error = %e, "link-layer send failed; trying an ARP entry");
            false
        }
    }
}

/// Transient receive errors (ICMP errors reported on the socket) are logged; others stop the
/// service.
fn recv_error(interface: &str, e: std::io::Error) -> Result<(), DhcpServiceError> {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock => {
            tracing::debug!(error = %e, "transient DHCP receive error");
            Ok(())
        }
        _ => Err(DhcpServiceError::Receiving {
            interface: interface.to_string(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{DhcpClient, MacAddr};

    struct NoClients;
    impl ClientDirectory for NoClients {
        fn by_mac(&self, _: MacAddr) -> Option<DhcpClient> {
            None
        }
        fn by_ip(&self, _: Ipv4Addr) -> Option<MacAddr> {
            None
        }
    }

    #[tokio::test]
    async fn refuses_without_interface() {
        let cfg = DhcpConfig::new("", Ipv4Addr::new(10, 0, 0, 1), DhcpMode::Full);
        let r = run_dhcp(
            cfg,
            None,
            Arc::new(NoClients),
            DhcpHooks::default(),
            async {},
        )
        .await;
        let e = r.expect_err("must refuse");
        assert!(matches!(
            e,
            DhcpServiceError::Config(DhcpError::NoInterface)
        ));
        assert!(
            e.to_string().contains("interface"),
            "explains what to set: {e}"
        );
        let cfg = DhcpConfig::new("isb-nonexist0", Ipv4Addr::new(10, 0, 0, 1), DhcpMode::Full);
        let r = run_dhcp(
            cfg,
            None,
            Arc::new(NoClients),
            DhcpHooks::default(),
            async {},
        )
        .await;
        assert!(matches!(r, Err(DhcpServiceError::NoSuchInterface(_))));
    }
}
