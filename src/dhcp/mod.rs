//! DHCP and proxyDHCP for network boot, sans-IO.
//!
//! [`DhcpServer::handle`] takes one received datagram (with the port it arrived on and its
//! source), the client directory, the hooks and the current time, and returns at most one
//! [`Reply`] with the destination the service must send it to. Nothing here touches a socket.
//!
//! Which client gets what (see `reference-lab.md`):
//! - stage 1, a PXE ROM (vendor class `PXEClient`, no iPXE user class): a boot file by option 93
//!   (0: BIOS, 6/7/9: UEFI, 11: ARM64), next-server/siaddr and options 66/67. This is the
//!   client's power-on: [`PowerOnHook::power_on`] is called.
//! - stage 2, iPXE (user class `iPXE` or option 175 present): root-path 17
//!   `iscsi:<server>::::<target-iqn>`, initiator IQN 203, hostname 12, 175.176 = 1, and no boot
//!   file at all; with CHAP, 175.190/191 (mutual: 175.192/193), but only in a reply that is not
//!   broadcast ([`Reply::secret`]: the service never falls back to broadcasting it).
//!   When the client has a [`DhcpClient::boot_script`] (the boot routes are on), its URL is the
//!   boot file instead and the root-path is left out: iPXE attaches a root-path's SAN disk
//!   *before* it runs a boot file, which would log in to the disk even for memtest or the
//!   local disk; the script `sanboot`s the disk itself. The CHAP settings stay in 175 (iPXE's
//!   iSCSI login reads `username`/`password` from its settings, wherever the root-path came
//!   from), so the script carries no secret. In proxy mode the broadcast ProxyDHCPOFFER to a
//!   client with CHAP names no boot file: iPXE boots straight from an offer with next-server +
//!   boot file, so it would never get the credentials; without them it sends its
//!   ProxyDHCPREQUEST to port 4011, and that unicast ACK carries boot file and CHAP.
//! - anything else that is a known client (the initrd's dhclient): the reserved address and
//!   the usual options, no boot file.
//! - unknown MACs: nothing, unless `auto_enroll` is on and [`EnrollHook::enroll`] adds them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod config;
pub mod flood;
pub mod leases;
pub mod link;
pub mod ra;
pub mod server;
pub mod wire;

pub use config::{BootFiles, DhcpConfig, DhcpMode, IpRange, RelayPool};
pub use leases::{Lease, Leases};
pub use server::{Arrival, Destination, DhcpServer, Reply};

use std::net::Ipv4Addr;
use std::sync::Arc;

pub use crate::mac::MacAddr;

/// Everything DHCP needs to know about one registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpClient {
    /// Client name: option 12 hostname.
    pub name: String,
    /// Reserved address; `None` = a dynamic address from the pool (full mode).
    pub ip: Option<Ipv4Addr>,
    /// The client's iSCSI target, for the root-path.
    pub target_iqn: String,
    /// Initiator IQN for option 203 (iPXE puts it into the iBFT).
    pub initiator_iqn: Option<String>,
    /// Full root-path override (default `iscsi:<server_ip>::<port>:<lun>:<target_iqn>`).
    pub root_path: Option<String>,
    /// iPXE `san-filename` (option 175.188), for UEFI clients that need an explicit loader.
    pub san_filename: Option<String>,
    /// CHAP credentials for iPXE's iSCSI login (175.190/191, mutual 175.192/193), sent only
    /// in a reply to this client's own iPXE stage that is not broadcast.
    pub chap: Option<IpxeChap>,
    /// URL of this client's iPXE script (`http://<boot_listen>/boot/<mac>.ipxe`), when the
    /// boot routes are on: the iPXE stage gets it as its boot file and no root-path (see
    /// the module doc).
    pub boot_script: Option<String>,
}

/// iPXE's `username`/`password` (and `reverse-username`/`reverse-password`) settings. Debug
/// never prints the passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct IpxeChap {
    pub username: String,
    pub password: String,
    /// Mutual CHAP: the target's user and secret.
    pub reverse: Option<(String, String)>,
}

impl std::fmt::Debug for IpxeChap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpxeChap")
            .field("username", &self.username)
            .field("password", &"<secret>")
            .field(
                "reverse",
                &self.reverse.as_ref().map(|r| (&r.0, "<secret>")),
            )
            .finish()
    }
}

impl IpxeChap {
    /// The encapsulated sub-options 190, 191 (and 192, 193), or None when a value does not
    /// fit in one sub-option.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut put = |code: u8, v: &str| -> Option<()> {
            let len = u8::try_from(v.len()).ok()?;
            out.push(code);
            out.push(len);
            out.extend_from_slice(v.as_bytes());
            Some(())
        };
        put(190, &self.username)?;
        put(191, &self.password)?;
        if let Some((u, p)) = &self.reverse {
            put(192, u)?;
            put(193, p)?;
        }
        Some(out)
    }
}

/// Client lookup, implemented by the registry (config/store) side.
pub trait ClientDirectory: Send + Sync {
    /// The registered client with this MAC, if any.
    fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient>;
    /// The MAC of the client that has `ip` reserved, if any (dynamic allocation skips it).
    fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr>;
}

/// What a client's power-on did to its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOn {
    /// A reset-mode client's disk was reset: a new boot starts pristine.
    Reset,
    /// Nothing to do: a persistent client, or a disk that is already pristine.
    Unchanged,
    /// The client's disk has a live session: nothing was reset. A DHCP packet, which anyone
    /// on the LAN can send with any MAC in it, never takes a running client's disk away.
    InUse,
    /// Another server of the fleet serves the client's disk (client disks on Ceph RBD): that
    /// server does the power-on work; this one leaves the disk alone.
    Elsewhere,
}

/// Called on a client's power-on (its boot firmware's DHCPDISCOVER, at most once per
/// [`server::POWER_ON_QUIET_SECS`] after a reset).
pub trait PowerOnHook: Send + Sync {
    fn power_on(&self, mac: MacAddr, client: &DhcpClient) -> PowerOn;
}

impl<F: Fn(MacAddr, &DhcpClient) -> PowerOn + Send + Sync> PowerOnHook for F {
    fn power_on(&self, mac: MacAddr, client: &DhcpClient) -> PowerOn {
        self(mac, client)
    }
}

/// Called for an unknown MAC when `auto_enroll` is on; returns the new client, or None to
/// ignore the MAC after all.
pub trait EnrollHook: Send + Sync {
    fn enroll(&self, mac: MacAddr) -> Option<DhcpClient>;
}

impl<F: Fn(MacAddr) -> Option<DhcpClient> + Send + Sync> EnrollHook for F {
    fn enroll(&self, mac: MacAddr) -> Option<DhcpClient> {
        self(mac)
    }
}

/// Called when DHCP learns the address a registered client holds: the lease it acknowledged
/// (full mode, and every bound lease at start) or, in proxy mode, the address the client's
/// boot request came from. The iSCSI side binds the client's target to it.
pub trait AddressHook: Send + Sync {
    fn client_address(&self, mac: MacAddr, ip: Ipv4Addr, how: AddressOrigin);
}

/// How DHCP learned a client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressOrigin {
    /// isboot acknowledged this lease (full mode).
    Lease,
    /// The client's boot request came from it (proxy mode: another server assigns addresses).
    Seen,
}

impl<F: Fn(MacAddr, Ipv4Addr, AddressOrigin) + Send + Sync> AddressHook for F {
    fn client_address(&self, mac: MacAddr, ip: Ipv4Addr, how: AddressOrigin) {
        self(mac, ip, how)
    }
}

/// The hooks the DHCP server calls into the rest of isboot.
#[derive(Clone, Default)]
pub struct DhcpHooks {
    pub power_on: Option<Arc<dyn PowerOnHook>>,
    pub enroll: Option<Arc<dyn EnrollHook>>,
    pub address: Option<Arc<dyn AddressHook>>,
}

/// What went wrong in the DHCP layer.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "no DHCP interface configured: set `interface` in the [dhcp] section of the config (or run `isboot init --interface IF --server-ip IP`); isboot never answers DHCP on an interface nobody named"
    )]
    NoInterface,
    #[error("bad DHCP range {0}")]
    BadRange(String),
    #[error("bad DHCP mode {0:?}: expected \"full\" or \"proxy\"")]
    BadMode(String),
    #[error("bad DHCP configuration: {0}")]
    BadConfig(String),
    #[error("DHCP packet of {0} bytes is shorter than the fixed header and magic cookie")]
    PacketTooShort(usize),
    #[error("DHCP packet of {0} bytes is longer than the limit")]
    PacketTooLong(usize),
    #[error("DHCP packet has no magic cookie")]
    NoMagicCookie,
    #[error("DHCP packet is not a BOOTREQUEST")]
    NotARequest,
    #[error("DHCP hardware type {htype} / length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("DHCP option {code} at offset {offset} is truncated")]
    TruncatedOption { code: u8, offset: usize },
    #[error("DHCP option {code} has a bad length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("DHCP parameter request list has {0} entries, more than the limit")]
    ParameterListTooLong(usize),
    #[error("DHCP packet has no message type")]
    NoMessageType,
    #[error("decoding DHCP packet: {0}")]
    Decoding(String),
    #[error("encoding DHCP reply: {0}")]
    Encoding(String),
    #[error("reading lease file {0}: {1}")]
    ReadingLeases(std::path::PathBuf, std::io::Error),
    #[error("parsing lease file {0}: {1}")]
    ParsingLeases(std::path::PathBuf, String),
    #[error("writing lease file {0}: {1}")]
    WritingLeases(std::path::PathBuf, std::io::Error),
}
