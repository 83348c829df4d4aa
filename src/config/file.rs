//! `isboot.toml`: the server's configuration. Written commented by `isboot init`; the admin
//! may edit it (a running server re-reads it). Sections and keys this version does not know
//! (and the `[dhcp]` section, owned by the DHCP service) are kept as they are.

use super::ConfigError;
use super::installer::Installer;
use super::limits::Limits;
use super::names::{Iqn, Net, Subnet};
use super::store::StoreConfig;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.org.isboot";
pub const ISCSI_PORT: u16 = 3260;
/// Default address of the embedded HTTP listener's admin routes (metrics):
/// loopback only, so the boot LAN never reaches them unless the admin says so.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9260";
/// Default port of the boot routes (iPXE scripts, boot files) on `server_ip`.
pub const DEFAULT_BOOT_HTTP_PORT: u16 = 9261;

/// Seconds a client's boot menu waits before it boots the default, when `menu_timeout` is
/// not set.
pub const DEFAULT_MENU_TIMEOUT: u32 = 5;
/// Longest `menu_timeout` taken (an hour).
pub const MAX_MENU_TIMEOUT: u32 = 3600;

/// `[http] boot_listen`: where the boot routes listen. Unset: `server_ip`, port
/// [`DEFAULT_BOOT_HTTP_PORT`] (off without a `server_ip`); `"off"`: not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BootListen {
    Off,
    At(SocketAddr),
}

impl TryFrom<String> for BootListen {
    type Error = String;
    fn try_from(s: String) -> Result<BootListen, String> {
        if s == "off" {
            return Ok(BootListen::Off);
        }
        s.parse().map(BootListen::At).map_err(|_| {
            format!("bad boot_listen {s:?}: expected ADDR:PORT (e.g. \"10.0.0.1:{DEFAULT_BOOT_HTTP_PORT}\") or \"off\"")
        })
    }
}

impl From<BootListen> for String {
    fn from(b: BootListen) -> String {
        match b {
            BootListen::Off => "off".into(),
            BootListen::At(a) => a.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// This server's address on the boot network (root-paths point at it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ip: Option<Ipv4Addr>,
    /// The boot network; client addresses must lie inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
    /// Prefix of every target name: `<prefix>:<client>`.
    #[serde(default = "default_prefix")]
    pub iqn_prefix: Iqn,
    /// iSCSI listen address; None: [`Config::listen_addr`]'s default (the boot address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Seconds a client's boot menu (`isboot boot --menu on`) waits before booting its
    /// default; 0: no menu, the default boots at once. None: [`DEFAULT_MENU_TIMEOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu_timeout: Option<u32>,
    /// `[[installer]]` entries.
    #[serde(default, rename = "installer", skip_serializing_if = "Vec::is_empty")]
    pub installers: Vec<Installer>,
    /// DHCP settings (defined by the DHCP service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<toml::Value>,
    /// The embedded HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// Budgets: connections, buffered writes, TFTP slots, space.
    #[serde(default)]
    pub limits: Limits,
    /// Where base images and client disks live (`file` or `rbd`).
    #[serde(default)]
    pub store: StoreConfig,
    /// Anything else found in the file, kept.
    #[serde(flatten)]
    pub extra: toml::Table,
}

/// `[http]`: the embedded HTTP listener (`service::http`). Its admin routes (`/metrics`) listen
/// on `listen` and answer only peers inside `allow`. The status API is on the admin socket
/// (`service::secrets`), for root and group isboot only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpConfig {
    /// Address of the admin routes.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Networks whose hosts may use the admin routes (others get 403 Forbidden).
    #[serde(default = "default_http_allow")]
    pub allow: Vec<Net>,
    /// Address of the boot routes (None: [`HttpConfig::boot_addr`]'s default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_listen: Option<BootListen>,
    /// Keys of this section this version does not know, kept.
    #[serde(flatten)]
    pub extra: toml::Table,
}

fn default_http_listen() -> SocketAddr {
    DEFAULT_HTTP_LISTEN
        .parse()
        .unwrap_or_else(|_| unreachable!("constant is valid"))
}

fn default_http_allow() -> Vec<Net> {
    vec![Net::LOOPBACK_V4, Net::LOOPBACK_V6]
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: default_http_listen(),
            allow: default_http_allow(),
            boot_listen: None,
            extra: toml::Table::new(),
        }
    }
}

impl HttpConfig {
    /// May `peer` use the admin routes?
    pub fn allows(&self, peer: std::net::IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(peer))
    }

    /// Where the boot routes listen: `boot_listen`, else `server_ip`:[`DEFAULT_BOOT_HTTP_PORT`];
    /// None when off or without a `server_ip`.
    pub fn boot_addr(&self, server_ip: Option<Ipv4Addr>) -> Option<SocketAddr> {
        match self.boot_listen {
            Some(BootListen::Off) => None,
            Some(BootListen::At(a)) => Some(a),
            None => server_ip.map(|ip| SocketAddr::from((ip, DEFAULT_BOOT_HTTP_PORT))),
        }
    }

    /// The address boot URLs name for routes bound to `bound`: `bound` itself, or, when it is
    /// unspecified (`0.0.0.0:PORT`), `server_ip` (the boot interface's address) with its port.
    /// None for an unspecified address without a `server_ip`: no URL a client can reach.
    pub fn boot_url_addr(bound: SocketAddr, server_ip: Option<Ipv4Addr>) -> Option<SocketAddr> {
        if bound.ip().is_unspecified() {
            server_ip.map(|ip| SocketAddr::from((ip, bound.port())))
        } else {
            Some(bound)
        }
    }

    fn render(&self, s: &mut String, server_ip: Option<Ipv4Addr>) {
        s.push_str(
            "\n# The embedded HTTP listener: Prometheus metrics (GET /metrics). The status API\n",
        );
        s.push_str(
            "# (GET /api/v1/status, /api/v1/clients) is on <state dir>/run/admin.sock instead,\n",
        );
        s.push_str("# for root and group isboot only.\n[http]\n");
        s.push_str(&format!(
            "# Address and port of those admin routes. Default \"{DEFAULT_HTTP_LISTEN}\" (this host\n"
        ));
        s.push_str(
            "# only); set e.g. \"0.0.0.0:9260\" for a Prometheus server elsewhere, and add it to\n",
        );
        s.push_str("# `allow`.\n");
        s.push_str(&format!("listen = \"{}\"\n", self.listen));
        s.push_str("# Networks whose hosts may use them; anyone else gets 403 Forbidden.\n");
        s.push_str("# Default [\"127.0.0.0/8\", \"::1/128\"].\n");
        let nets: Vec<String> = self.allow.iter().map(|n| format!("\"{n}\"")).collect();
        s.push_str(&format!("allow = [{}]\n", nets.join(", ")));
        s.push_str(
            "# Address and port of the boot routes, for the machines on the boot network: their\n",
        );
        s.push_str(
            "# iPXE scripts (GET /boot/<mac>.ipxe, each served only to its client's address),\n",
        );
        s.push_str(
            "# boot files from <state>/boot-files/ (GET /files/...) and the installers' callback\n",
        );
        s.push_str(&format!(
            "# (POST /done/<mac>). Default: server_ip, port {DEFAULT_BOOT_HTTP_PORT}; off without a server_ip;\n"
        ));
        s.push_str("# \"off\" turns them off.\n");
        match self.boot_listen {
            Some(b) => s.push_str(&format!("boot_listen = \"{}\"\n", String::from(b))),
            None => s.push_str(&format!(
                "# boot_listen = \"{}:{DEFAULT_BOOT_HTTP_PORT}\"\n",
                server_ip.unwrap_or(Ipv4Addr::new(192, 168, 50, 1)),
            )),
        }
        if !self.extra.is_empty() {
            s.push_str(&toml::to_string(&self.extra).unwrap_or_default());
        }
    }
}

fn default_prefix() -> Iqn {
    DEFAULT_IQN_PREFIX
        .parse()
        .unwrap_or_else(|_| unreachable!("constant is valid"))
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server_ip: None,
            subnet: None,
            iqn_prefix: default_prefix(),
            listen: None,
            menu_timeout: None,
            installers: Vec::new(),
            dhcp: None,
            http: HttpConfig::default(),
            limits: Limits::default(),
            store: StoreConfig::default(),
            extra: toml::Table::new(),
        }
    }
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parsing {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        if !c.iqn_prefix.as_str().starts_with("iqn.") {
            return Err(ConfigError::Parsing {
                path: path.to_path_buf(),
                message: format!("iqn_prefix {} must be an iqn. name", c.iqn_prefix),
            });
        }
        c.store.validate().map_err(|message| ConfigError::Parsing {
            path: path.to_path_buf(),
            message,
        })?;
        super::installer::validate(&c.installers).map_err(|message| ConfigError::Parsing {
            path: path.to_path_buf(),
            message,
        })?;
        if c.menu_timeout.is_some_and(|t| t > MAX_MENU_TIMEOUT) {
            return Err(ConfigError::Parsing {
                path: path.to_path_buf(),
                message: format!("menu_timeout must be 0 (no menu) to {MAX_MENU_TIMEOUT} seconds"),
            });
        }
        if let (Some(ip), Some(net)) = (c.server_ip, c.subnet) {
            if !net.contains(ip) {
                return Err(ConfigError::Parsing {
                    path: path.to_path_buf(),
                    message: format!("server_ip {ip} is outside subnet {net}"),
                });
            }
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Reading {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The file's text: every known key with a comment, then `[dhcp]` and unknown sections.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# isboot configuration. Read by every isboot command; `isboot serve` re-reads it\n",
        );
        s.push_str("# when it changes. Keys left out take the default shown in their comment.\n\n");
        s.push_str(
            "# This server's IPv4 address on the boot network; root-paths handed to clients\n",
        );
        s.push_str("# point at it.\n");
        match self.server_ip {
            Some(ip) => s.push_str(&format!("server_ip = \"{ip}\"\n\n")),
            None => s.push_str("# server_ip = \"192.168.50.1\"\n\n"),
        }
        s.push_str("# The boot network. `isboot add-client --ip` refuses addresses outside it.\n");
        match self.subnet {
            Some(n) => s.push_str(&format!("subnet = \"{n}\"\n\n")),
            None => s.push_str("# subnet = \"192.168.50.0/24\"\n\n"),
        }
        s.push_str(
            "# Prefix of every target name: a client's target is <iqn_prefix>:<client name>,\n",
        );
        s.push_str("# its initiator name <iqn_prefix>:initiator:<client name>. Default\n");
        s.push_str(&format!("# \"{DEFAULT_IQN_PREFIX}\".\n"));
        s.push_str(&format!("iqn_prefix = \"{}\"\n\n", self.iqn_prefix));
        s.push_str(
            "# Address and port the iSCSI target listens on. Default: server_ip, port 3260\n",
        );
        s.push_str(
            "# (the boot network only; 127.0.0.1:3260 without a server_ip). \"0.0.0.0:3260\"\n",
        );
        s.push_str("# would offer the targets on every network this host is on.\n");
        match self.listen {
            Some(l) => s.push_str(&format!("listen = \"{l}\"\n")),
            None => s.push_str(&format!("# listen = \"{}\"\n", self.listen_addr())),
        }
        s.push_str(
            "\n# Seconds a client's boot menu (isboot boot CLIENT --menu on) waits before it boots\n",
        );
        s.push_str(&format!(
            "# the client's default choice; 0: no menu, the default boots at once. Default {DEFAULT_MENU_TIMEOUT}.\n"
        ));
        match self.menu_timeout {
            Some(t) => s.push_str(&format!("menu_timeout = {t}\n")),
            None => s.push_str(&format!("# menu_timeout = {DEFAULT_MENU_TIMEOUT}\n")),
        }
        let mut rest = self.extra.clone();
        if let Some(d) = &self.dhcp {
            rest.insert("dhcp".into(), d.clone());
        }
        // Plain keys first (TOML puts them before any table), then tables.
        let (plain, tables): (toml::Table, toml::Table) = rest
            .into_iter()
            .partition(|(_, v)| !matches!(v, toml::Value::Table(_)));
        if !plain.is_empty() {
            s.push_str("\n# Other settings.\n");
            s.push_str(&toml::to_string(&plain).unwrap_or_default());
        }
        self.http.render(&mut s, self.server_ip);
        if !tables.is_empty() {
            s.push('\n');
            s.push_str(&toml::to_string(&tables).unwrap_or_default());
        }
        s.push('\n');
        s.push_str(&self.limits.render());
        s.push('\n');
        s.push_str(&self.store.render());
        super::installer::render(&self.installers, &mut s);
        s
    }

    /// Seconds the boot menu waits (0: no menu).
    pub fn menu_timeout(&self) -> u32 {
        self.menu_timeout.unwrap_or(DEFAULT_MENU_TIMEOUT)
    }

    /// The `[[installer]]` entry named `name`.
    pub fn installer(&self, name: &super::ImageName) -> Option<&Installer> {
        self.installers.iter().find(|i| i.name == *name)
    }

    /// Where the iSCSI target listens: `listen` when set, else this server's address on the
    /// boot network (`server_ip`) port 3260, else loopback. Never every address by default: a
    /// host on another network of the server must not reach the clients' disks.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            SocketAddr::from((self.server_ip.unwrap_or(Ipv4Addr::LOCALHOST), ISCSI_PORT))
        })
    }

    /// This server's iSCSI portal on the boot network: `server_ip` and the iSCSI port (what
    /// root-paths name, and its identity in a fleet). `None` without a `server_ip`.
    pub fn portal(&self) -> Option<std::net::SocketAddrV4> {
        Some(std::net::SocketAddrV4::new(
            self.server_ip?,
            self.listen_addr().port(),
        ))
    }

    /// `iscsi:<server>::<port>:0:<target>` as iPXE's `sanboot` takes it (port left out when
    /// it is 3260). `None` without a `server_ip`.
    pub fn root_path(&self, target: &Iqn) -> Option<String> {
        self.portal()
            .map(|p| crate::config::fleet::root_path_at(p, target.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_and_parse_back() {
        let c = Config::default();
        let text = c.render();
        assert!(text.contains("iqn_prefix = \"iqn.2026-11.org.isboot\""));
        assert!(text.contains("# server_ip"));
        assert_eq!(Config::parse(&text, Path::new("x")).unwrap(), c);
    }

    #[test]
    fn boot_urls_name_a_reachable_address() {
        let ip = Some(Ipv4Addr::new(10, 0, 0, 1));
        let any: SocketAddr = "0.0.0.0:9261".parse().unwrap();
        let at: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        // Bound to every address: URLs say the boot interface's, with the bound port.
        assert_eq!(
            HttpConfig::boot_url_addr(any, ip),
            Some("10.0.0.1:9261".parse().unwrap())
        );
        assert_eq!(HttpConfig::boot_url_addr(any, None), None);
        // Bound to one address: that one, whatever server_ip says.
        assert_eq!(HttpConfig::boot_url_addr(at, ip), Some(at));
        assert_eq!(HttpConfig::boot_url_addr(at, None), Some(at));
    }

    #[test]
    fn listens_on_the_boot_address_unless_told() {
        let mut c = Config::default();
        assert_eq!(c.listen_addr().to_string(), "127.0.0.1:3260");
        c.server_ip = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(c.listen_addr().to_string(), "10.0.0.1:3260");
        assert!(c.render().contains("# listen = \"10.0.0.1:3260\""));
        let text = "server_ip = \"10.0.0.1\"\nlisten = \"0.0.0.0:3261\"\n";
        let c = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(c.listen_addr().to_string(), "0.0.0.0:3261");
        assert_eq!(
            c.root_path(&"iqn.2026-11.org.isboot:pc1".parse().unwrap())
                .unwrap(),
            "iscsi:10.0.0.1::3261::iqn.2026-11.org.isboot:pc1"
        );
        assert_eq!(Config::parse(&c.render(), Path::new("x")).unwrap(), c);
    }

    #[test]
    fn boot_routes_listen_on_the_boot_address() {
        let mut c = Config::default();
        assert_eq!(c.http.boot_addr(c.server_ip), None);
        assert!(c.render().contains("# boot_listen = \"192.168.50.1:9261\""));
        c.server_ip = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            c.http.boot_addr(c.server_ip).unwrap().to_string(),
            "10.0.0.1:9261"
        );
        assert!(c.render().contains("# boot_listen = \"10.0.0.1:9261\""));
        for (v, want) in [("off", None), ("10.0.0.1:80", Some("10.0.0.1:80"))] {
            let text = format!("server_ip = \"10.0.0.1\"\n[http]\nboot_listen = \"{v}\"\n");
            let c = Config::parse(&text, Path::new("x")).unwrap();
            assert_eq!(
                c.http
                    .boot_addr(c.server_ip)
                    .map(|a| a.to_string())
                    .as_deref(),
                want
            );
            assert!(c.render().contains(&format!("\nboot_listen = \"{v}\"\n")));
            assert_eq!(Config::parse(&c.render(), Path::new("x")).unwrap(), c);
        }
        let e = Config::parse("[http]\nboot_listen = \"on\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("ADDR:PORT"), "{e}");
    }

    #[test]
    fn unknown_keys_and_dhcp_section_round_trip() {
        let text = "server_ip = \"10.0.0.1\"\nsubnet = \"10.0.0.0/24\"\nfuture_key = 3\n\n[dhcp]\nmode = \"proxy\"\nrange = [\"10.0.0.100\", \"10.0.0.200\"]\n\n[tftp]\nroot = \"x\"\n";
        let c = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(
            c.dhcp
                .as_ref()
                .and_then(|d| d.get("mode"))
                .and_then(|m| m.as_str()),
            Some("proxy")
        );
        assert!(c.extra.contains_key("future_key") && c.extra.contains_key("tftp"));
        let again = Config::parse(&c.render(), Path::new("x")).unwrap();
        assert_eq!(again, c);
        assert_eq!(
            c.root_path(&"iqn.2026-11.org.isboot:pc1".parse().unwrap())
                .unwrap(),
            "iscsi:10.0.0.1::::iqn.2026-11.org.isboot:pc1"
        );
    }

    #[test]
    fn refuses_bad_values() {
        assert!(Config::parse("iqn_prefix = \"nope\"", Path::new("x")).is_err());
        assert!(Config::parse("iqn_prefix = \"eui.02004567A425678D\"", Path::new("x")).is_err());
        assert!(Config::parse("listen = \"x\"", Path::new("x")).is_err());
        assert!(
            Config::parse(
                "server_ip = \"10.0.1.1\"\nsubnet = \"10.0.0.0/24\"",
                Path::new("x")
            )
            .is_err()
        );
    }
}
