//! DHCP configuration: the `[dhcp]` section of the isboot config file.
//!
//! Exact TOML keys (all under `[dhcp]`):
//!
//! ```toml
//! [dhcp]
//! interface  = "isbr0"            # required: the only interface DHCP listens and answers on
//! server_ip  = "10.77.0.1"        # required: our address on that interface (siaddr, option 54,
//!                                 #   TFTP next-server, iSCSI portal in the root-path)
//! mode       = "full"             # "full" (we hand out addresses) or "proxy" (boot info only)
//! range      = "10.77.0.100-10.77.0.199"   # full mode: dynamic pool on the local subnet
//! netmask    = "255.255.255.0"    # default 255.255.255.0
//! router     = "10.77.0.1"        # optional, option 3
//! dns        = ["10.77.0.1"]      # optional, option 6
//! domain     = "lab"              # optional, option 15
//! lease_time = 3600               # seconds, default 3600
//! auto_enroll = false             # unknown MACs: false = ignore (default), true = enrol via hook
//! iscsi_port = 3260               # default 3260; written into the root-path when not 3260
//! lun        = 0                  # LUN in the root-path, default 0 (empty field = LUN 0)
//! lease_file = "/var/lib/isboot/dhcp-leases.json"  # optional; the service default is in the
//!                                 #   state dir (the lead decides)
//!
//! [dhcp.bootfiles]                # stage-1 boot files, relative to the TFTP root
//! bios  = "undionly.kpxe"         # option 93 arch 0
//! uefi  = "ipxe.efi"              # arch 6, 7, 9 ("snponly.efi" also works)
//! arm64 = "ipxe-arm64.efi"        # arch 11; omit to give ARM64 clients no boot offer
//! proxy_sanboot_script = "isboot-sanboot.ipxe"  # proxy mode: empty iPXE script named to
//!                                 #   iPXE beside the root-path (iPXE needs a boot file in
//!                                 #   a ProxyDHCP answer; the script returns, SAN boot follows)
//!
//! [[dhcp.relay_pools]]            # full mode, clients behind DHCP relays (giaddr)
//! range   = "10.88.0.100-10.88.0.150"
//! netmask = "255.255.255.0"       # the pool is chosen when giaddr lies in range/netmask
//! router  = "10.88.0.1"
//! dns     = ["10.88.0.1"]
//!                                 # `isboot wake` reaches a client last seen in this subnet
//!                                 # by its directed broadcast (10.88.0.255): the relay's
//!                                 # router must forward directed broadcasts
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::DhcpError;

/// Default lease time (seconds).
pub const DEFAULT_LEASE_TIME: u32 = 3600;
/// Shortest lease we will configure (seconds); shorter makes clients hammer the server.
pub const MIN_LEASE_TIME: u32 = 60;
/// Largest dynamic pool we accept (addresses), to bound the free-address search.
pub const MAX_POOL_SIZE: u32 = 65_536;

/// Whether isboot owns the subnet or only adds boot information to another server's leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// isboot hands out addresses (reserved per client, dynamic from `range`).
    #[default]
    Full,
    /// Another server hands out addresses; isboot answers PXE/iPXE clients with boot info only,
    /// on ports 67 and 4011, and never offers an address.
    Proxy,
}

impl FromStr for DhcpMode {
    type Err = DhcpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(DhcpMode::Full),
            "proxy" => Ok(DhcpMode::Proxy),
            other => Err(DhcpError::BadMode(other.to_string())),
        }
    }
}

/// An inclusive IPv4 address range, written `FIRST-LAST` in the config and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl IpRange {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Self, DhcpError> {
        let (a, b) = (u32::from(first), u32::from(last));
        if a > b {
            return Err(DhcpError::BadRange(format!(
                "{first}-{last}: first is after last"
            )));
        }
        if b - a >= MAX_POOL_SIZE {
            return Err(DhcpError::BadRange(format!(
                "{first}-{last}: more than {MAX_POOL_SIZE} addresses"
            )));
        }
        Ok(IpRange { first, last })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= u32::from(self.first) && v <= u32::from(self.last)
    }

    /// Addresses in the range, in order.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for IpRange {
    type Err = DhcpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| DhcpError::BadRange(format!("{s}: expected FIRST-LAST")))?;
        let first = a
            .trim()
            .parse()
            .map_err(|_| DhcpError::BadRange(format!("{s}: {a} is not an IPv4 address")))?;
        let last = b
            .trim()
            .parse()
            .map_err(|_| DhcpError::BadRange(format!("{s}: {b} is not an IPv4 address")))?;
        IpRange::new(first, last)
    }
}

impl Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Stage-1 boot files handed to PXE ROMs, by client architecture (option 93).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootFiles {
    /// Arch 0 (x86 BIOS).
    pub bios: String,
    /// Arch 6, 7, 9 (x86/x64 UEFI). `snponly.efi` is the alternative.
    pub uefi: String,
    /// Arch 11 (ARM64 UEFI); `None` = no boot offer for ARM64 clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm64: Option<String>,
    /// Proxy mode only: the file named to iPXE (stage 2) beside its root-path. iPXE ignores a
    /// ProxyDHCP answer without next-server and boot file, and boots a boot file instead of
    /// the SAN disk; an empty iPXE script satisfies the first and, once it returns, lets iPXE
    /// go on to the SAN boot of the root-path. `isboot init` writes it into the TFTP root.
    pub proxy_sanboot_script: String,
}

/// Default name of the proxy-mode stage-2 script (see [`BootFiles::proxy_sanboot_script`]).
pub const DEFAULT_PROXY_SANBOOT_SCRIPT: &str = "isboot-sanboot.ipxe";

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".to_string(),
            uefi: "ipxe.efi".to_string(),
            arm64: None,
            proxy_sanboot_script: DEFAULT_PROXY_SANBOOT_SCRIPT.to_string(),
        }
    }
}

/// A pool for clients behind a relay agent (chosen when giaddr lies in its subnet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayPool {
    pub range: IpRange,
    #[serde(default = "default_netmask")]
    pub netmask: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
}

/// The `[dhcp]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    pub interface: String,
    pub server_ip: Ipv4Addr,
    #[serde(default)]
    pub mode: DhcpMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<IpRange>,
    #[serde(default = "default_netmask")]
    pub netmask: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default = "default_lease_time")]
    pub lease_time: u32,
    #[serde(default)]
    pub auto_enroll: bool,
    #[serde(default = "default_iscsi_port")]
    pub iscsi_port: u16,
    #[serde(default)]
    pub lun: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub bootfiles: BootFiles,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_pools: Vec<RelayPool>,
    /// Send IPv6 router advertisements ("no router here") on the interface so iPXE does not
    /// wait for IPv6 autoconfiguration. Unset: on in full mode, off in proxy mode (the
    /// network's own router speaks for IPv6 there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_ra: Option<bool>,
}

fn default_netmask() -> Ipv4Addr {
    Ipv4Addr::new(255, 255, 255, 0)
}
fn default_lease_time() -> u32 {
    DEFAULT_LEASE_TIME
}
fn default_iscsi_port() -> u16 {
    3260
}

/// A resolved pool: the subnet a reply is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub range: Option<IpRange>,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Network address (any address of the subnet & netmask).
    pub network: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask) == u32::from(self.network)
    }
}

fn netmask_ok(m: Ipv4Addr) -> bool {
    let v = u32::from(m);
    v != 0 && v.leading_ones() + v.trailing_zeros() == 32
}

impl DhcpConfig {
    /// A config with defaults for everything but the three required settings.
    pub fn new(interface: impl Into<String>, server_ip: Ipv4Addr, mode: DhcpMode) -> Self {
        DhcpConfig {
            interface: interface.into(),
            server_ip,
            mode,
            range: None,
            netmask: default_netmask(),
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_time: DEFAULT_LEASE_TIME,
            auto_enroll: false,
            iscsi_port: default_iscsi_port(),
            lun: 0,
            lease_file: None,
            bootfiles: BootFiles::default(),
            relay_pools: Vec::new(),
            ipv6_ra: None,
        }
    }

    /// Whether the service sends IPv6 router advertisements (see [`DhcpConfig::ipv6_ra`]).
    pub fn router_advertisements(&self) -> bool {
        self.ipv6_ra.unwrap_or(self.mode == DhcpMode::Full)
    }

    /// The `[dhcp]` section for `isboot init --interface IF --server-ip IP [--dhcp-range
    /// FIRST-LAST] [--dhcp-mode full|proxy] [--router IP] [--dns IP]`. In full mode without a
    /// range, a dynamic pool is suggested inside the server's /24 (see [`suggest_range`]).
    /// The result is validated.
    pub fn from_init_args(
        interface: &str,
        server_ip: Ipv4Addr,
        range: Option<&str>,
        mode: Option<&str>,
        router: Option<Ipv4Addr>,
        dns: Option<Ipv4Addr>,
    ) -> Result<DhcpConfig, DhcpError> {
        let mode = mode.map(str::parse).transpose()?.unwrap_or_default();
        let mut c = DhcpConfig::new(interface, server_ip, mode);
        c.router = router;
        c.dns = dns.into_iter().collect();
        c.range = match (range, mode) {
            (Some(r), _) => Some(r.parse()?),
            (None, DhcpMode::Full) => suggest_range(server_ip, c.netmask),
            (None, DhcpMode::Proxy) => None,
        };
        c.validate()?;
        Ok(c)
    }

    /// Check the settings belong together. Called by the service before it starts, and by
    /// `isboot init` before it writes the config.
    pub fn validate(&self) -> Result<(), DhcpError> {
        if self.interface.trim().is_empty() {
            return Err(DhcpError::NoInterface);
        }
        if self.server_ip.is_unspecified() || self.server_ip.is_broadcast() {
            return Err(DhcpError::BadConfig(format!(
                "server_ip {} is not a usable address",
                self.server_ip
            )));
        }
        if !netmask_ok(self.netmask) {
            return Err(DhcpError::BadConfig(format!(
                "netmask {} is not a netmask",
                self.netmask
            )));
        }
        if self.lease_time < MIN_LEASE_TIME {
            return Err(DhcpError::BadConfig(format!(
                "lease_time {} is below the minimum of {MIN_LEASE_TIME} s",
                self.lease_time
            )));
        }
        let local = self.local_pool();
        if let Some(r) = self.range {
            if !local.contains(r.first) || !local.contains(r.last) {
                return Err(DhcpError::BadConfig(format!(
                    "range {r} is not inside the subnet of server_ip {}/{}",
                    self.server_ip, self.netmask
                )));
            }
            if r.contains(self.server_ip) {
                return Err(DhcpError::BadConfig(format!(
                    "range {r} contains server_ip {}",
                    self.server_ip
                )));
            }
        }
        for p in &self.relay_pools {
            if !netmask_ok(p.netmask) {
                return Err(DhcpError::BadConfig(format!(
                    "relay pool netmask {} is not a netmask",
                    p.netmask
                )));
            }
            let m = u32::from(p.netmask);
            if u32::from(p.range.first) & m != u32::from(p.range.last) & m {
                return Err(DhcpError::BadConfig(format!(
                    "relay pool range {} spans more than one subnet of netmask {}",
                    p.range, p.netmask
                )));
            }
        }
        Ok(())
    }

    /// The pool for clients on our own link.
    pub fn local_pool(&self) -> Pool {
        Pool {
            range: self.range,
            netmask: self.netmask,
            router: self.router,
            dns: self.dns.clone(),
            network: Ipv4Addr::from(u32::from(self.server_ip) & u32::from(self.netmask)),
        }
    }

    /// The subnet (network, netmask) of the relay pool that `ip` lies in, when `ip` is behind a
    /// relay agent rather than on the boot interface's own subnet.
    pub fn relay_subnet_of(&self, ip: Ipv4Addr) -> Option<(Ipv4Addr, Ipv4Addr)> {
        if self.local_pool().contains(ip) {
            return None;
        }
        self.relay_pools.iter().find_map(|p| {
            let mask = u32::from(p.netmask);
            let network = u32::from(p.range.first) & mask;
            (u32::from(ip) & mask == network).then(|| (Ipv4Addr::from(network), p.netmask))
        })
    }

    /// The pool for a request: the local one when `giaddr` is 0, else the relay pool whose
    /// subnet contains `giaddr` (None: we do not serve that relay's network).
    pub fn pool_for(&self, giaddr: Ipv4Addr) -> Option<Pool> {
        if giaddr.is_unspecified() {
            return Some(self.local_pool());
        }
        let local = self.local_pool();
        if local.contains(giaddr) {
            return Some(local);
        }
        self.relay_pools.iter().find_map(|p| {
            let network = Ipv4Addr::from(u32::from(p.range.first) & u32::from(p.netmask));
            let pool = Pool {
                range: Some(p.range),
                netmask: p.netmask,
                router: p.router,
                dns: p.dns.clone(),
                network,
            };
            pool.contains(giaddr).then_some(pool)
        })
    }
}

/// A default dynamic pool for a subnet: hosts .100-.199, else .200-.249, else .10-.99 of the
/// subnet, the first that fits the netmask and does not hold `server_ip`.
pub fn suggest_range(server_ip: Ipv4Addr, netmask: Ipv4Addr) -> Option<IpRange> {
    let m = u32::from(netmask);
    let net = u32::from(server_ip) & m;
    let hosts = !m; // broadcast offset
    [(100u32, 199u32), (200, 249), (10, 99)]
        .into_iter()
        .find_map(|(a, b)| {
            if b >= hosts {
                return None;
            }
            let r = IpRange::new(Ipv4Addr::from(net + a), Ipv4Addr::from(net + b)).ok()?;
            (!r.contains(server_ip)).then_some(r)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_round_trip() {
        let text = r#"
interface = "isbr0"
server_ip = "10.77.0.1"
mode = "full"
range = "10.77.0.100-10.77.0.199"
router = "10.77.0.1"
dns = ["10.77.0.1"]
lease_time = 600
[bootfiles]
bios = "undionly.kpxe"
uefi = "snponly.efi"
arm64 = "ipxe-arm64.efi"
[[relay_pools]]
range = "10.88.0.100-10.88.0.150"
router = "10.88.0.1"
"#;
        let c: DhcpConfig = toml::from_str(text).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.mode, DhcpMode::Full);
        assert_eq!(
            c.range.map(|r| r.to_string()).as_deref(),
            Some("10.77.0.100-10.77.0.199")
        );
        assert_eq!(c.bootfiles.uefi, "snponly.efi");
        assert_eq!(c.lease_time, 600);
        let back: DhcpConfig = toml::from_str(&toml::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
    }

    #[test]
    fn proxy_minimal_config() {
        let c: DhcpConfig =
            toml::from_str("interface = \"eth1\"\nserver_ip = \"192.168.1.5\"\nmode = \"proxy\"\n")
                .expect("parses");
        assert_eq!(c.mode, DhcpMode::Proxy);
        assert_eq!(c.bootfiles, BootFiles::default());
        c.validate().expect("valid");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!("10.0.0.9-10.0.0.1".parse::<IpRange>().is_err());
        assert!("10.0.0.1".parse::<IpRange>().is_err());
        assert!("10.0.0.1-x".parse::<IpRange>().is_err());
        assert!("1.0.0.0-2.0.0.0".parse::<IpRange>().is_err());
        let mut c = DhcpConfig::new("", Ipv4Addr::new(10, 0, 0, 1), DhcpMode::Full);
        assert!(matches!(c.validate(), Err(DhcpError::NoInterface)));
        c.interface = "eth0".into();
        c.range = Some("10.0.1.10-10.0.1.20".parse().expect("range"));
        assert!(c.validate().is_err(), "range outside the subnet");
        c.range = Some("10.0.0.1-10.0.0.20".parse().expect("range"));
        assert!(c.validate().is_err(), "range holds server_ip");
        c.range = Some("10.0.0.10-10.0.0.20".parse().expect("range"));
        c.netmask = Ipv4Addr::new(255, 0, 255, 0);
        assert!(c.validate().is_err(), "bad netmask");
    }

    #[test]
    fn init_args() {
        let ip = Ipv4Addr::new(10, 77, 0, 1);
        let c =
            DhcpConfig::from_init_args("isbr0", ip, None, None, Some(ip), Some(ip)).expect("ok");
        assert_eq!(c.mode, DhcpMode::Full);
        assert_eq!(
            c.range.map(|r| r.to_string()).as_deref(),
            Some("10.77.0.100-10.77.0.199")
        );
        assert_eq!(c.dns, vec![ip]);
        let c = DhcpConfig::from_init_args(
            "isbr0",
            Ipv4Addr::new(10, 77, 0, 150),
            None,
            Some("full"),
            None,
            None,
        )
        .expect("ok");
        assert_eq!(
            c.range.map(|r| r.to_string()).as_deref(),
            Some("10.77.0.200-10.77.0.249")
        );
        let c =
            DhcpConfig::from_init_args("eth1", ip, None, Some("proxy"), None, None).expect("ok");
        assert!(c.range.is_none());
        assert!(DhcpConfig::from_init_args("eth1", ip, None, Some("both"), None, None).is_err());
        assert!(
            DhcpConfig::from_init_args("eth1", ip, Some("10.77.1.5-10.77.1.9"), None, None, None)
                .is_err()
        );
        assert!(DhcpConfig::from_init_args("", ip, None, None, None, None).is_err());
        let c =
            DhcpConfig::from_init_args("eth1", ip, Some("10.77.0.20-10.77.0.30"), None, None, None)
                .expect("ok");
        let text = toml::to_string(&c).expect("toml");
        assert!(text.contains("range = \"10.77.0.20-10.77.0.30\""), "{text}");
    }

    #[test]
    fn pool_by_giaddr() {
        let mut c = DhcpConfig::new("eth0", Ipv4Addr::new(10, 0, 0, 1), DhcpMode::Full);
        c.relay_pools.push(RelayPool {
            range: "10.9.0.50-10.9.0.60".parse().expect("range"),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 9, 0, 1)),
            dns: vec![],
        });
        assert_eq!(
            c.pool_for(Ipv4Addr::UNSPECIFIED).map(|p| p.network),
            Some(Ipv4Addr::new(10, 0, 0, 0))
        );
        let p = c.pool_for(Ipv4Addr::new(10, 9, 0, 1)).expect("relay pool");
        assert_eq!(p.router, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert!(c.pool_for(Ipv4Addr::new(10, 7, 0, 1)).is_none());
    }
}
