//! The DHCP/proxyDHCP decision logic (RFC 2131, RFC 4578, PXE 2.1), sans-IO.

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use super::config::{DhcpConfig, DhcpMode, Pool};
use super::flood::{FloodGuard, Verdict};
use super::leases::Leases;
use super::wire::{self, ClientKind};
use super::{AddressOrigin, ClientDirectory, DhcpClient, DhcpError, DhcpHooks, MacAddr, PowerOn};
use crate::loglimit::{LogLimiter, LogLimits, LogVerdict};

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server / proxyDHCP port.
pub const PXE_PORT: u16 = 4011;
/// A firmware DISCOVER within this many seconds of the previous one from the same MAC is the
/// same boot (PXE ROM then chainloaded iPXE, or retries), not a new power-on.
pub const POWER_ON_QUIET_SECS: u64 = 60;
/// Distinct "logged once" notes kept (unknown MACs, unsupported architectures).
pub const MAX_LOGGED_ONCE: usize = 4096;

/// Where a datagram came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Local port it arrived on (67, or 4011 for proxyDHCP requests).
    pub port: u16,
    /// Its source.
    pub src: SocketAddrV4,
}

/// Where the service must send a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To a relay agent (giaddr), port 67.
    Relay(SocketAddrV4),
    /// To a configured client address (ciaddr), or back to a proxyDHCP requester.
    Unicast(SocketAddrV4),
    /// Limited broadcast 255.255.255.255:68 on the DHCP interface.
    Broadcast,
    /// Unicast to `ip` at hardware address `mac`, a client that has no address yet: the
    /// service sends it on the link layer (or through an ARP entry), or broadcasts it when
    /// it carries no secret and neither works.
    Hardware { ip: Ipv4Addr, mac: MacAddr },
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Reply {
    pub msg: Message,
    pub dest: Destination,
    /// The reply carries CHAP credentials: send it only to its destination, never broadcast.
    pub secret: bool,
}

impl Reply {
    pub fn encode(&self) -> Result<Vec<u8>, DhcpError> {
        wire::encode(&self.msg)
    }
}

/// The DHCP server state: config, leases, flood guard, and the notes that must be logged once.
pub struct DhcpServer {
    cfg: DhcpConfig,
    leases: Leases,
    flood: FloodGuard,
    logged_once: HashSet<(MacAddr, &'static str)>,
    last_power_on_reset: HashMap<MacAddr, u64>,
    /// Log lines caused by requests, limited per MAC and in total.
    logs: LogLimiter<MacAddr>,
    /// The time of the request being handled (for the log limit).
    now: u64,
}

/// What a reply is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    /// Full-mode address reply (OFFER/ACK) with `ip`.
    Address(Ipv4Addr),
    /// INFORM answer: options only.
    Inform,
    /// proxyDHCP: boot information only, never an address.
    Proxy,
}

impl DhcpServer {
    pub fn new(cfg: DhcpConfig, leases: Leases) -> Self {
        DhcpServer {
            cfg,
            leases,
            flood: FloodGuard::default(),
            logged_once: HashSet::new(),
            last_power_on_reset: HashMap::new(),
            logs: LogLimiter::new(LogLimits::default()),
            now: 0,
        }
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// Apply a new configuration (already validated); leases are kept.
    pub fn set_config(&mut self, cfg: DhcpConfig) {
        self.cfg = cfg;
        self.logged_once.clear();
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// True once after the lease table changed (the service then saves it).
    pub fn take_leases_dirty(&mut self) -> bool {
        self.leases.take_dirty()
    }

    fn log_once(&mut self, mac: MacAddr, what: &'static str) -> bool {
        if self.logged_once.len() >= MAX_LOGGED_ONCE {
            self.logged_once.clear();
        }
        self.logged_once.insert((mac, what)) && self.may_log(mac)
    }

    /// May a line about a request from `mac` be logged (rate limit per MAC and in total)?
    fn may_log(&mut self, mac: MacAddr) -> bool {
        match self.logs.check(&mac, self.now) {
            LogVerdict::Suppress => false,
            LogVerdict::Log { suppressed: 0 } => true,
            LogVerdict::Log { suppressed } => {
                tracing::info!(mac = %mac, suppressed, "log lines about this MAC were left out (rate limit)");
                true
            }
        }
    }

    /// Handle one received datagram. `now` is Unix time in seconds.
    pub fn handle(
        &mut self,
        dir: &dyn ClientDirectory,
        hooks: &DhcpHooks,
        bytes: &[u8],
        arrival: Arrival,
        now: u64,
    ) -> Option<Reply> {
        let msg = match wire::parse_request(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(src = %arrival.src, error = %e, "dropping malformed DHCP packet");
                return None;
            }
        };
        let mac = wire::mac_of(&msg);
        self.now = now;
        match self.flood.check(mac, now) {
            Verdict::Accept => {}
            Verdict::DropAndWarn => {
                if self.may_log(mac) {
                    tracing::warn!(mac = %mac, "DHCP flood: more than {} requests in {} s, dropping", super::flood::MAX_REQUESTS_PER_WINDOW, super::flood::WINDOW_SECS);
                }
                return None;
            }
            Verdict::DropQuietly => return None,
        }
        self.leases.expire(now);
        let kind = wire::classify(&msg);
        let mtype = wire::msg_type(&msg)?;
        let client = match dir.by_mac(mac) {
            Some(c) => c,
            None => {
                let enrolled = if self.cfg.auto_enroll {
                    hooks.enroll.as_ref().and_then(|h| h.enroll(mac))
                } else {
                    None
                };
                match enrolled {
                    Some(c) => {
                        if self.may_log(mac) {
                            tracing::info!(mac = %mac, client = %c.name, "auto-enrolled unknown MAC");
                        }
                        c
                    }
                    None => {
                        // In proxy mode the network's other hosts are none of our business:
                        // only unknown boot firmware is worth an info line.
                        let notable = kind.is_firmware() || self.cfg.mode == DhcpMode::Full;
                        if notable && self.log_once(mac, "unknown") {
                            tracing::info!(mac = %mac, kind = ?kind, "ignoring DHCP from unknown MAC (not a registered client; add it with isboot add-client, or set auto_enroll)");
                        } else if !notable {
                            tracing::trace!(mac = %mac, "ignoring non-boot DHCP from unknown MAC");
                        }
                        return None;
                    }
                }
            }
        };
        if mtype == MessageType::Discover && kind.is_firmware() {
            self.note_firmware_discover(mac, &client, hooks, now);
        }
        let reply = match self.cfg.mode {
            DhcpMode::Full => self.full(&msg, mtype, kind, mac, &client, dir, arrival, now),
            DhcpMode::Proxy => self.proxy(&msg, mtype, kind, mac, &client, arrival),
        };
        if let (Some(h), Some(r)) = (&hooks.address, &reply) {
            let src = *arrival.src.ip();
            match self.cfg.mode {
                DhcpMode::Full
                    if r.msg.opts().msg_type() == Some(MessageType::Ack)
                        && !r.msg.yiaddr().is_unspecified() =>
                {
                    h.client_address(mac, r.msg.yiaddr(), AddressOrigin::Lease)
                }
                // A boot-server request sent from the address the client says it holds.
                DhcpMode::Proxy
                    if arrival.port == PXE_PORT && !src.is_unspecified() && msg.ciaddr() == src =>
                {
                    h.client_address(mac, src, AddressOrigin::Seen)
                }
                _ => {}
            }
        }
        reply
    }

    fn note_firmware_discover(
        &mut self,
        mac: MacAddr,
        client: &DhcpClient,
        hooks: &DhcpHooks,
        now: u64,
    ) {
        // Only a reset opens the quiet window: requests that reset nothing (a spoofed one
        // against a running client, say) never keep the client's real power-on from its reset.
        let quiet = self
            .last_power_on_reset
            .get(&mac)
            .is_some_and(|&t| t <= now && now - t < POWER_ON_QUIET_SECS);
        if quiet {
            return;
        }
        if self.last_power_on_reset.len() > MAX_LOGGED_ONCE {
            self.last_power_on_reset
                .retain(|_, t| now.saturating_sub(*t) < POWER_ON_QUIET_SECS);
        }
        let Some(h) = &hooks.power_on else { return };
        match h.power_on(mac, client) {
            PowerOn::Reset => {
                if self.may_log(mac) {
                    tracing::info!(mac = %mac, client = %client.name, "client power-on (boot firmware DHCPDISCOVER)");
                }
                self.last_power_on_reset.insert(mac, now);
            }
            PowerOn::Unchanged => {
                tracing::debug!(mac = %mac, client = %client.name, "client power-on (boot firmware DHCPDISCOVER), disk unchanged");
            }
            PowerOn::Elsewhere => {
                tracing::debug!(mac = %mac, client = %client.name, "client power-on (boot firmware DHCPDISCOVER), disk served by another isboot server: it does the power-on work");
            }
            PowerOn::InUse => {
                if self.log_once(mac, "power-on in use") {
                    tracing::warn!(mac = %mac, client = %client.name, "boot firmware DHCPDISCOVER for a client whose disk is in use: not reset (a running client keeps its disk; if it really rebooted, its new boot's login resets it)");
                }
            }
        }
    }

    /// The stage-1 boot file for an architecture, or None (logged once per MAC).
    fn bootfile_for(&mut self, mac: MacAddr, arch: Option<u16>) -> Option<String> {
        let b = &self.cfg.bootfiles;
        let file = match arch.unwrap_or(0) {
            0 => Some(b.bios.clone()),
            6 | 7 | 9 => Some(b.uefi.clone()),
            11 => b.arm64.clone(),
            _ => None,
        };
        if file.is_none() && self.log_once(mac, "arch") {
            tracing::warn!(mac = %mac, arch = ?arch, "no boot file for this client architecture (option 93); not offering boot");
        }
        file
    }

    // ---------------------------------------------------------------- full mode

    #[allow(clippy::too_many_arguments)]
    fn full(
        &mut self,
        msg: &Message,
        mtype: MessageType,
        kind: ClientKind,
        mac: MacAddr,
        client: &DhcpClient,
        dir: &dyn ClientDirectory,
        arrival: Arrival,
        now: u64,
    ) -> Option<Reply> {
        if arrival.port == PXE_PORT {
            // Boot-server requests on 4011 only matter in proxy mode.
            return None;
        }
        let giaddr = msg.giaddr();
        let Some(pool) = self.cfg.pool_for(giaddr) else {
            if self.log_once(mac, "relay") {
                tracing::warn!(mac = %mac, %giaddr, "DHCP via a relay whose network has no pool; ignoring");
            }
            return None;
        };
        if let ClientKind::PxeRom { arch } = kind
            && self.bootfile_for(mac, arch).is_none()
        {
            // A PXE ROM we have nothing to boot with: no offer at all (logged once).
            return None;
        }
        let ours = wire::server_id(msg);
        match mtype {
            MessageType::Discover => {
                let ip = self.choose_ip(mac, client, &pool, wire::requested_ip(msg), dir, now)?;
                self.leases.offer(mac, ip, Some(&client.name), now);
                self.build(
                    msg,
                    MessageType::Offer,
                    kind,
                    mac,
                    client,
                    &pool,
                    Purpose::Address(ip),
                )
            }
            MessageType::Request => {
                if let Some(sid) = ours
                    && sid != self.cfg.server_ip
                {
                    // SELECTING another server's offer.
                    self.leases.drop_offer(&mac);
                    return None;
                }
                let ciaddr = msg.ciaddr();
                let wanted = if ours.is_some() || ciaddr.is_unspecified() {
                    wire::requested_ip(msg)
                } else {
                    Some(ciaddr)
                };
                let Some(wanted) = wanted else {
                    return self.nak(msg, "REQUEST without requested address or ciaddr");
                };
                if !pool.contains(wanted) {
                    return self.nak(msg, "requested address is not on the client's network");
                }
                let expected = self.known_ip(mac, client, &pool, dir, now);
                let ok = match expected {
                    Some(ip) => ip == wanted,
                    None => {
                        // No record (lost lease file, or INIT-REBOOT from elsewhere): accept a
                        // free pool address, refuse the rest.
                        pool.range.is_some_and(|r| r.contains(wanted))
                            && self.free_for(wanted, mac, dir, now)
                    }
                };
                if !ok {
                    return self.nak(msg, "requested address is not this client's");
                }
                self.leases
                    .bind(mac, wanted, Some(&client.name), now, self.cfg.lease_time);
                if self.may_log(mac) {
                    tracing::info!(mac = %mac, client = %client.name, ip = %wanted, kind = ?kind, "DHCPACK");
                }
                self.build(
                    msg,
                    MessageType::Ack,
                    kind,
                    mac,
                    client,
                    &pool,
                    Purpose::Address(wanted),
                )
            }
            MessageType::Decline => {
                if ours.is_some_and(|s| s != self.cfg.server_ip) {
                    return None;
                }
                if let Some(ip) = wire::requested_ip(msg) {
                    if self.leases.decline(&mac, ip, now) {
                        if self.may_log(mac) {
                            tracing::warn!(mac = %mac, %ip, "DHCPDECLINE: address in use by another host; holding it back");
                        }
                    } else if self.log_once(mac, "foreign decline") {
                        tracing::warn!(mac = %mac, %ip, "DHCPDECLINE for an address that was not offered or leased to this MAC: ignored");
                    }
                }
                None
            }
            MessageType::Release => {
                if ours.is_some_and(|s| s != self.cfg.server_ip) {
                    return None;
                }
                if self.leases.release(&mac, msg.ciaddr()) && self.may_log(mac) {
                    tracing::info!(mac = %mac, ip = %msg.ciaddr(), "DHCPRELEASE");
                }
                None
            }
            MessageType::Inform => {
                if msg.ciaddr().is_unspecified() && giaddr.is_unspecified() {
                    return None;
                }
                self.build(
                    msg,
                    MessageType::Ack,
                    kind,
                    mac,
                    client,
                    &pool,
                    Purpose::Inform,
                )
            }
            _ => None,
        }
    }

    fn free_for(&self, ip: Ipv4Addr, mac: MacAddr, dir: &dyn ClientDirectory, now: u64) -> bool {
        ip != self.cfg.server_ip
            && !self.leases.ip_taken(ip, &mac, now)
            && dir.by_ip(ip).is_none_or(|owner| owner == mac)
    }

    /// The address this client is entitled to without choosing a new one: its reservation on
    /// this network, else its current lease or offer.
    fn known_ip(
        &self,
        mac: MacAddr,
        client: &DhcpClient,
        pool: &Pool,
        dir: &dyn ClientDirectory,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = client.ip
            && pool.contains(ip)
        {
            return Some(ip);
        }
        let l = self.leases.get(&mac, now)?;
        (pool.contains(l.ip)
            && pool.range.is_some_and(|r| r.contains(l.ip))
            && self.free_for(l.ip, mac, dir, now))
        .then_some(l.ip)
    }

    fn choose_ip(
        &mut self,
        mac: MacAddr,
        client: &DhcpClient,
        pool: &Pool,
        requested: Option<Ipv4Addr>,
        dir: &dyn ClientDirectory,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.known_ip(mac, client, pool, dir, now) {
            return Some(ip);
        }
        let range = pool.range?;
        let candidates = self.leases.last_ip(&mac).into_iter().chain(requested);
        for ip in candidates {
            if range.contains(ip) && self.free_for(ip, mac, dir, now) {
                return Some(ip);
            }
        }
        // One pass over the lease table, not one per candidate address.
        let taken = self.leases.taken_ips(&mac, now);
        let found = range.iter().find(|ip| {
            *ip != self.cfg.server_ip
                && !taken.contains(ip)
                && dir.by_ip(*ip).is_none_or(|owner| owner == mac)
        });
        if found.is_none() && self.log_once(mac, "exhausted") {
            tracing::warn!(mac = %mac, %range, "DHCP pool exhausted");
        }
        found
    }

    fn nak(&mut self, req: &Message, why: &str) -> Option<Reply> {
        let mac = wire::mac_of(req);
        if self.may_log(mac) {
            tracing::info!(mac = %mac, why, "DHCPNAK");
        }
        let mut m = reply_skeleton(req);
        m.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Nak));
        opts.insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        opts.insert(DhcpOption::Message(why.to_string()));
        let dest = if !req.giaddr().is_unspecified() {
            m.set_flags(Flags::default().set_broadcast());
            Destination::Relay(SocketAddrV4::new(req.giaddr(), SERVER_PORT))
        } else {
            Destination::Broadcast
        };
        Some(Reply {
            msg: m,
            dest,
            secret: false,
        })
    }

    // ---------------------------------------------------------------- proxy mode

    fn proxy(
        &mut self,
        msg: &Message,
        mtype: MessageType,
        kind: ClientKind,
        mac: MacAddr,
        client: &DhcpClient,
        arrival: Arrival,
    ) -> Option<Reply> {
        if !kind.is_firmware() {
            return None; // the OS's DHCP client is the address server's business
        }
        let pool = self.cfg.local_pool();
        let reply_type = match (arrival.port, mtype) {
            (SERVER_PORT, MessageType::Discover) => MessageType::Offer,
            (PXE_PORT, MessageType::Request | MessageType::Inform | MessageType::Discover) => {
                MessageType::Ack
            }
            _ => return None,
        };
        let mut reply = self.build(msg, reply_type, kind, mac, client, &pool, Purpose::Proxy)?;
        if arrival.port == PXE_PORT {
            reply.dest = Destination::Unicast(arrival.src);
        }
        Some(reply)
    }

    // ---------------------------------------------------------------- replies

    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        req: &Message,
        reply_type: MessageType,
        kind: ClientKind,
        mac: MacAddr,
        client: &DhcpClient,
        pool: &Pool,
        purpose: Purpose,
    ) -> Option<Reply> {
        let mut m = reply_skeleton(req);
        let mut secret = false;
        let server_ip = self.cfg.server_ip;
        // Stage-1 boot file first: a PXE ROM whose architecture we cannot boot gets no offer.
        let bootfile = match kind {
            ClientKind::PxeRom { arch } => self.bootfile_for(mac, arch),
            _ => None,
        };
        if matches!(kind, ClientKind::PxeRom { .. }) && bootfile.is_none() {
            return None;
        }
        let opts_mut = m.opts_mut();
        opts_mut.insert(DhcpOption::MessageType(reply_type));
        opts_mut.insert(DhcpOption::ServerIdentifier(server_ip));
        match purpose {
            Purpose::Address(ip) => {
                m.set_yiaddr(ip);
                if reply_type == MessageType::Offer {
                    m.set_ciaddr(Ipv4Addr::UNSPECIFIED);
                }
                let lease = self.cfg.lease_time;
                let o = m.opts_mut();
                o.insert(DhcpOption::AddressLeaseTime(lease));
                o.insert(DhcpOption::Renewal(lease / 2));
                o.insert(DhcpOption::Rebinding(lease / 8 * 7));
                self.network_options(&mut m, pool);
            }
            Purpose::Inform => {
                m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
                self.network_options(&mut m, pool);
            }
            Purpose::Proxy => {
                m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
                m.set_ciaddr(Ipv4Addr::UNSPECIFIED);
                let o = m.opts_mut();
                o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                // PXE vendor options: discovery control (6) = 8: boot the file in this reply,
                // no boot-server discovery or menu.
                o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
                if let Some(DhcpOption::ClientMachineIdentifier(uuid)) =
                    req.opts().get(OptionCode::ClientMachineIdentifier)
                {
                    o.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
                }
            }
        }
        match kind {
            ClientKind::PxeRom { .. } => {
                if let Some(file) = bootfile {
                    m.set_siaddr(server_ip);
                    m.set_fname_str(&file);
                    let o = m.opts_mut();
                    o.insert(DhcpOption::TFTPServerName(
                        server_ip.to_string().into_bytes(),
                    ));
                    o.insert(DhcpOption::BootfileName(file.into_bytes()));
                }
            }
            ClientKind::Ipxe { .. } => {
                // Proxy mode, a client with CHAP: the broadcast ProxyDHCPOFFER names no boot
                // file. iPXE boots straight from an offer that has next-server + boot file, and
                // that broadcast cannot carry the credentials; without them it asks on port 4011
                // (ProxyDHCPREQUEST from its address), whose unicast ACK carries file and CHAP.
                let defer = purpose == Purpose::Proxy
                    && reply_type == MessageType::Offer
                    && client.chap.is_some();
                if defer {
                    self.name_options(&mut m, client);
                } else if let Some(url) = &client.boot_script {
                    // The client's script decides what boots, and SAN-boots the disk itself.
                    self.name_options(&mut m, client);
                    m.set_siaddr(server_ip);
                    if url.len() < 128 {
                        m.set_fname_str(url);
                    }
                    m.opts_mut()
                        .insert(DhcpOption::BootfileName(url.clone().into_bytes()));
                } else {
                    self.san_options(&mut m, client);
                }
                if purpose == Purpose::Proxy && client.boot_script.is_none() && !defer {
                    // iPXE drops a ProxyDHCP answer without next-server + boot file; name the
                    // empty script, after which iPXE SAN-boots the root-path.
                    let script = self.cfg.bootfiles.proxy_sanboot_script.clone();
                    m.set_siaddr(server_ip);
                    m.set_fname_str(&script);
                    let o = m.opts_mut();
                    o.insert(DhcpOption::TFTPServerName(
                        server_ip.to_string().into_bytes(),
                    ));
                    o.insert(DhcpOption::BootfileName(script.into_bytes()));
                }
                let mut enc = Vec::new();
                if purpose != Purpose::Proxy {
                    enc.extend_from_slice(&[176, 1, 1]); // no-pxedhcp: do not wait for proxyDHCP
                }
                if let Some(f) = &client.san_filename
                    && f.len() <= 255
                {
                    enc.push(188);
                    enc.push(f.len() as u8);
                    enc.extend_from_slice(f.as_bytes());
                }
                // CHAP credentials only where the reply goes to this client alone: a broadcast
                // (iPXE's DISCOVER answered by a proxy, a broadcast flag) reaches every host.
                if let Some(chap) = &client.chap {
                    let alone = destination(req, &m, mac) != Destination::Broadcast;
                    match chap.encode() {
                        Some(c) if alone && enc.len() + c.len() <= 255 => {
                            enc.extend_from_slice(&c);
                            secret = true;
                        }
                        Some(_) if !alone => {}
                        _ => {
                            tracing::warn!(mac = %mac, "CHAP credentials too long for DHCP option 175; iPXE gets none");
                        }
                    }
                }
                if !enc.is_empty() {
                    m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                        OptionCode::Unknown(175),
                        enc,
                    )));
                }
            }
            ClientKind::Plain => {
                // The initrd's dhclient: address and names; root-path for `netroot=dhcp`.
                self.san_options(&mut m, client);
            }
        }
        let dest = destination(req, &m, mac);
        Some(Reply {
            msg: m,
            dest,
            secret,
        })
    }

    fn network_options(&self, m: &mut Message, pool: &Pool) {
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask(pool.netmask));
        if let Some(r) = pool.router {
            o.insert(DhcpOption::Router(vec![r]));
        }
        if !pool.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
        if let Some(d) = &self.cfg.domain {
            o.insert(DhcpOption::DomainName(d.clone()));
        }
    }

    /// Root-path 17, hostname 12, initiator IQN 203.
    fn san_options(&self, m: &mut Message, client: &DhcpClient) {
        let root = client
            .root_path
            .clone()
            .unwrap_or_else(|| root_path(&self.cfg, &client.target_iqn));
        if !client.target_iqn.is_empty() || client.root_path.is_some() {
            m.opts_mut().insert(DhcpOption::RootPath(root));
        }
        self.name_options(m, client);
    }

    /// Hostname 12, initiator IQN 203.
    fn name_options(&self, m: &mut Message, client: &DhcpClient) {
        let o = m.opts_mut();
        if !client.name.is_empty() {
            o.insert(DhcpOption::Hostname(client.name.clone()));
        }
        if let Some(iqn) = &client.initiator_iqn
            && iqn.len() <= 255
        {
            o.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(203),
                iqn.clone().into_bytes(),
            )));
        }
    }
}

/// `iscsi:<server>::<port>:<lun>:<iqn>`, with the port and LUN fields empty at their defaults
/// (3260, LUN 0).
pub fn root_path(cfg: &DhcpConfig, target_iqn: &str) -> String {
    let port = if cfg.iscsi_port == 3260 {
        String::new()
    } else {
        cfg.iscsi_port.to_string()
    };
    let lun = if cfg.lun == 0 {
        String::new()
    } else {
        cfg.lun.to_string()
    };
    format!("iscsi:{}::{}:{}:{}", cfg.server_ip, port, lun, target_iqn)
}

/// A BOOTREPLY echoing xid, flags, ciaddr, giaddr and chaddr of `req`.
fn reply_skeleton(req: &Message) -> Message {
    let mut m = Message::new_with_id(
        req.xid(),
        req.ciaddr(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    m.set_opcode(Opcode::BootReply);
    m.set_htype(req.htype());
    m.set_flags(req.flags());
    // RFC 6842: echo the client identifier; RFC 3046: echo the relay agent information.
    for code in [
        OptionCode::ClientIdentifier,
        OptionCode::RelayAgentInformation,
    ] {
        if let Some(o) = req.opts().get(code) {
            m.opts_mut().insert(o.clone());
        }
    }
    m
}

/// RFC 2131 section 4.1: relay first, then ciaddr, then broadcast flag, else unicast to the
/// new address at the client's hardware address.
fn destination(req: &Message, reply: &Message, mac: MacAddr) -> Destination {
    if !req.giaddr().is_unspecified() {
        return Destination::Relay(SocketAddrV4::new(req.giaddr(), SERVER_PORT));
    }
    if !req.ciaddr().is_unspecified() {
        return Destination::Unicast(SocketAddrV4::new(req.ciaddr(), CLIENT_PORT));
    }
    if req.flags().broadcast() || reply.yiaddr().is_unspecified() {
        return Destination::Broadcast;
    }
    Destination::Hardware {
        ip: reply.yiaddr(),
        mac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::config::RelayPool;
    use crate::dhcp::{EnrollHook, PowerOnHook};
    use dhcproto::Encodable;
    use dhcproto::v4::Architecture;
    use std::sync::{Arc, Mutex};

    const KNOWN: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const DYN: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
    const UNKNOWN: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 9]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);

    struct Dir;
    impl ClientDirectory for Dir {
        fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
            match mac {
                KNOWN => Some(DhcpClient {
                    name: "ws1".into(),
                    ip: Some(RESERVED),
                    target_iqn: "iqn.2026-11.lab:ws1".into(),
                    initiator_iqn: Some("iqn.2026-11.lab:init-ws1".into()),
                    root_path: None,
                    san_filename: None,
                    boot_script: None,
                    chap: None,
                }),
                DYN => Some(DhcpClient {
                    name: "ws2".into(),
                    ip: None,
                    target_iqn: "iqn.2026-11.lab:ws2".into(),
                    initiator_iqn: None,
                    root_path: None,
                    san_filename: None,
                    boot_script: None,
                    chap: None,
                }),
                _ => None,
            }
        }
        fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
            (ip == RESERVED).then_some(KNOWN)
        }
    }

    fn cfg(mode: DhcpMode) -> DhcpConfig {
        let mut c = DhcpConfig::new("veth0", SERVER, mode);
        if mode == DhcpMode::Full {
            c.range = Some("10.77.0.10-10.77.0.12".parse().expect("range"));
            c.router = Some(SERVER);
            c.dns = vec![SERVER];
        }
        c.relay_pools.push(RelayPool {
            range: "10.88.0.100-10.88.0.110".parse().expect("range"),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 88, 0, 1)),
            dns: vec![],
        });
        c.validate().expect("valid");
        c
    }

    #[derive(Clone, Copy)]
    enum Who {
        Pxe(u16),
        Ipxe(u16),
        Linux,
    }

    fn req(mac: MacAddr, t: MessageType, who: Who, extra: Vec<DhcpOption>) -> Message {
        let mut m = Message::new_with_id(
            0xabcd,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(t));
        match who {
            Who::Pxe(a) | Who::Ipxe(a) => {
                o.insert(DhcpOption::ClassIdentifier(
                    format!("PXEClient:Arch:{a:05}:UNDI:002001").into_bytes(),
                ));
                o.insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
                if matches!(who, Who::Ipxe(_)) {
                    o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
                    o.insert(DhcpOption::Unknown(UnknownOption::new(
                        OptionCode::Unknown(175),
                        vec![177, 1, 1],
                    )));
                }
            }
            Who::Linux => {}
        }
        for x in extra {
            o.insert(x);
        }
        m
    }

    fn at(port: u16) -> Arrival {
        Arrival {
            port,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
        }
    }

    fn send(
        s: &mut DhcpServer,
        hooks: &DhcpHooks,
        m: &Message,
        port: u16,
        now: u64,
    ) -> Option<Reply> {
        let bytes = m.to_vec().expect("encode");
        let r = s.handle(&Dir, hooks, &bytes, at(port), now);
        if let Some(r) = &r {
            // Every reply must encode and decode cleanly.
            let b = r.encode().expect("encodes");
            let back = <Message as dhcproto::Decodable>::from_bytes(&b).expect("decodes");
            assert_eq!(back.xid(), m.xid());
        }
        r
    }

    fn opt(m: &Message, code: u8) -> Option<Vec<u8>> {
        let o = m.opts().get(OptionCode::from(code))?;
        let mut v = Vec::new();
        o.encode(&mut dhcproto::Encoder::new(&mut v))
            .expect("encode opt");
        Some(v[2..].to_vec())
    }

    fn fname(m: &Message) -> String {
        m.fname()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default()
    }

    #[test]
    fn stage1_bootfile_by_arch() {
        let hooks = DhcpHooks::default();
        let mut c = cfg(DhcpMode::Full);
        c.bootfiles.uefi = "snponly.efi".into();
        let mut s = DhcpServer::new(c, Leases::new());
        for (arch, file) in [
            (0u16, Some("undionly.kpxe")),
            (7, Some("snponly.efi")),
            (9, Some("snponly.efi")),
            (6, Some("snponly.efi")),
            (11, None),
            (2, None),
        ] {
            let r = send(
                &mut s,
                &hooks,
                &req(KNOWN, MessageType::Discover, Who::Pxe(arch), vec![]),
                67,
                1000,
            );
            let Some(f) = file else {
                assert!(r.is_none(), "arch {arch}: no boot file, so no offer at all");
                continue;
            };
            let r = r.expect("known client gets an offer");
            assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
            assert_eq!(r.msg.yiaddr(), RESERVED);
            assert_eq!(fname(&r.msg), f, "arch {arch}");
            assert_eq!(r.msg.siaddr(), SERVER);
            assert_eq!(opt(&r.msg, 67), Some(f.as_bytes().to_vec()));
            assert_eq!(opt(&r.msg, 66), Some(b"10.77.0.1".to_vec()));
            assert!(opt(&r.msg, 17).is_none(), "no root-path in stage 1");
        }
    }

    #[test]
    fn stage1_arm64_when_configured() {
        let mut c = cfg(DhcpMode::Full);
        c.bootfiles.arm64 = Some("ipxe-arm64.efi".into());
        let mut s = DhcpServer::new(c, Leases::new());
        let r = send(
            &mut s,
            &DhcpHooks::default(),
            &req(KNOWN, MessageType::Discover, Who::Pxe(11), vec![]),
            67,
            1,
        )
        .expect("offer");
        assert_eq!(fname(&r.msg), "ipxe-arm64.efi");
    }

    #[test]
    fn stage2_ipxe_gets_root_path_and_no_bootfile() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let hooks = DhcpHooks::default();
        let offer = send(
            &mut s,
            &hooks,
            &req(KNOWN, MessageType::Discover, Who::Ipxe(0), vec![]),
            67,
            1000,
        )
        .expect("offer");
        let ack = send(
            &mut s,
            &hooks,
            &req(
                KNOWN,
                MessageType::Request,
                Who::Ipxe(0),
                vec![
                    DhcpOption::ServerIdentifier(SERVER),
                    DhcpOption::RequestedIpAddress(RESERVED),
                ],
            ),
            67,
            1001,
        )
        .expect("ack");
        for r in [&offer, &ack] {
            assert_eq!(r.msg.yiaddr(), RESERVED);
            assert_eq!(
                opt(&r.msg, 17),
                Some(b"iscsi:10.77.0.1::::iqn.2026-11.lab:ws1".to_vec())
            );
            assert_eq!(opt(&r.msg, 203), Some(b"iqn.2026-11.lab:init-ws1".to_vec()));
            assert_eq!(opt(&r.msg, 12), Some(b"ws1".to_vec()));
            assert_eq!(opt(&r.msg, 175), Some(vec![176, 1, 1]));
            assert_eq!(fname(&r.msg), "");
            assert!(opt(&r.msg, 67).is_none());
            assert_eq!(opt(&r.msg, 1), Some(vec![255, 255, 255, 0]));
            assert_eq!(opt(&r.msg, 3), Some(SERVER.octets().to_vec()));
        }
        assert_eq!(ack.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(opt(&ack.msg, 51), Some(3600u32.to_be_bytes().to_vec()));
        assert_eq!(
            ack.dest,
            Destination::Hardware {
                ip: RESERVED,
                mac: KNOWN
            }
        );
    }

    /// Two clients with CHAP: A (one-way), B (mutual).
    struct ChapDir;
    const PW_A: &str = "secret-of-a-0123456789abcdef";
    const PW_B: &str = "secret-of-b-0123456789abcdef";
    impl ClientDirectory for ChapDir {
        fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
            let (name, ip, reverse) = match mac {
                KNOWN => ("a", RESERVED, None),
                DYN => (
                    "b",
                    Ipv4Addr::new(10, 77, 0, 11),
                    Some(("srv".to_string(), "target-secret-0123456789".to_string())),
                ),
                _ => return None,
            };
            Some(DhcpClient {
                name: name.into(),
                ip: Some(ip),
                target_iqn: format!("iqn.2026-11.lab:{name}"),
                initiator_iqn: None,
                root_path: None,
                san_filename: None,
                boot_script: None,
                chap: Some(crate::dhcp::IpxeChap {
                    username: name.into(),
                    password: if name == "a" { PW_A } else { PW_B }.into(),
                    reverse,
                }),
            })
        }
        fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
            (ip == RESERVED).then_some(KNOWN)
        }
    }

    /// iPXE's DHCP REQUEST from `mac` (arch `arch`) that holds or asks for `ip`, with the port
    /// and source address it arrives with: in full mode a broadcast REQUEST to 67 naming the
    /// server and `ip`; in proxy mode the ProxyDHCP REQUEST to 4011 from `ip`.
    fn ipxe_request(
        mode: DhcpMode,
        mac: MacAddr,
        ip: Ipv4Addr,
        arch: u16,
    ) -> (Message, u16, Ipv4Addr) {
        match mode {
            DhcpMode::Full => {
                let opts = vec![
                    DhcpOption::ServerIdentifier(SERVER),
                    DhcpOption::RequestedIpAddress(ip),
                ];
                let r = req(mac, MessageType::Request, Who::Ipxe(arch), opts);
                (r, 67, Ipv4Addr::UNSPECIFIED)
            }
            DhcpMode::Proxy => {
                let mut r = req(mac, MessageType::Request, Who::Ipxe(arch), vec![]);
                r.set_ciaddr(ip);
                (r, 4011, ip)
            }
        }
    }

    fn send_to(
        s: &mut DhcpServer,
        m: &Message,
        port: u16,
        src: Ipv4Addr,
        now: u64,
    ) -> Option<Reply> {
        let bytes = m.to_vec().expect("encode");
        let arrival = Arrival {
            port,
            src: SocketAddrV4::new(src, CLIENT_PORT),
        };
        s.handle(&ChapDir, &DhcpHooks::default(), &bytes, arrival, now)
    }

    /// 175's sub-options 190..=193 (iPXE's username, password, reverse-username, -password).
    fn credentials(m: &Message) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(v) = opt(m, 175) else { return out };
        let mut rest = &v[..];
        while rest.len() >= 2 {
            let (code, len) = (rest[0], rest[1] as usize);
            if (190..=193).contains(&code) {
                out.push((code, rest[2..2 + len].to_vec()));
            }
            rest = &rest[2 + len..];
        }
        out
    }

    #[test]
    fn chap_credentials_only_to_the_clients_own_ipxe_stage_and_never_broadcast() {
        let a_creds = vec![(190, b"a".to_vec()), (191, PW_A.as_bytes().to_vec())];
        for mode in [DhcpMode::Full, DhcpMode::Proxy] {
            let mut s = DhcpServer::new(cfg(mode), Leases::new());
            // The PXE ROM's stage: boot file, no credentials (DISCOVER and REQUEST).
            for (t, now) in [(MessageType::Discover, 1), (MessageType::Request, 2)] {
                let extra = vec![DhcpOption::RequestedIpAddress(RESERVED)];
                if let Some(r) = send_to(
                    &mut s,
                    &req(KNOWN, t, Who::Pxe(7), extra),
                    67,
                    Ipv4Addr::UNSPECIFIED,
                    now,
                ) {
                    assert!(credentials(&r.msg).is_empty(), "{mode:?} PXE {t:?}");
                    assert!(!r.secret);
                }
            }
            // A Linux DHCP client with A's MAC: none.
            if let Some(r) = send_to(
                &mut s,
                &req(KNOWN, MessageType::Discover, Who::Linux, vec![]),
                67,
                Ipv4Addr::UNSPECIFIED,
                3,
            ) {
                assert!(credentials(&r.msg).is_empty());
            }
            // iPXE asking with the broadcast flag: the reply is broadcast, so no credentials.
            let mut bc = req(KNOWN, MessageType::Discover, Who::Ipxe(7), vec![]);
            bc.set_flags(Flags::default().set_broadcast());
            if let Some(r) = send_to(&mut s, &bc, 67, Ipv4Addr::UNSPECIFIED, 4) {
                assert_eq!(r.dest, Destination::Broadcast);
                assert!(credentials(&r.msg).is_empty(), "{mode:?}: broadcast");
                assert!(!r.secret);
            }
            let (r, port, src) = ipxe_request(mode, KNOWN, RESERVED, 7);
            let ipxe = send_to(&mut s, &r, port, src, 5).expect("iPXE-stage ACK");
            assert_ne!(ipxe.dest, Destination::Broadcast);
            assert!(ipxe.secret, "{mode:?}: the service must not broadcast it");
            assert_eq!(credentials(&ipxe.msg), a_creds, "{mode:?}");
            // B's iPXE stage gets B's credentials (mutual: 192/193 too), never A's.
            let (r, port, src) = ipxe_request(mode, DYN, Ipv4Addr::new(10, 77, 0, 11), 7);
            let b = send_to(&mut s, &r, port, src, 6).expect("B's ACK");
            assert_eq!(
                credentials(&b.msg),
                vec![
                    (190, b"b".to_vec()),
                    (191, PW_B.as_bytes().to_vec()),
                    (192, b"srv".to_vec()),
                    (193, b"target-secret-0123456789".to_vec()),
                ],
                "{mode:?}"
            );
            // An unknown MAC gets nothing at all.
            let mut u = req(UNKNOWN, MessageType::Request, Who::Ipxe(7), vec![]);
            u.set_ciaddr(RESERVED);
            assert!(send_to(&mut s, &u, 4011, RESERVED, 7).is_none());
        }
    }

    /// [`ChapDir`]'s clients with the boot routes on: each has its script URL.
    struct ScriptDir;
    const SCRIPT_A: &str = "http://10.77.0.1:9261/boot/52-54-00-00-00-01.ipxe";
    impl ClientDirectory for ScriptDir {
        fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
            ChapDir.by_mac(mac).map(|c| DhcpClient {
                boot_script: Some(format!("http://10.77.0.1:9261/boot/{}.ipxe", mac.dashed())),
                ..c
            })
        }
        fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
            ChapDir.by_ip(ip)
        }
    }

    #[test]
    fn proxy_offer_to_ipxe_with_chap_names_no_boot_file_so_it_asks_on_4011() {
        let a_creds = vec![(190, b"a".to_vec()), (191, PW_A.as_bytes().to_vec())];
        let hooks = DhcpHooks::default();
        let mut s = DhcpServer::new(cfg(DhcpMode::Proxy), Leases::new());
        let offer = |s: &mut DhcpServer, dir: &dyn ClientDirectory| {
            let d = req(KNOWN, MessageType::Discover, Who::Ipxe(7), vec![]);
            let arrival = Arrival {
                port: 67,
                src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            };
            s.handle(dir, &hooks, &d.to_vec().expect("enc"), arrival, 1)
                .expect("proxy offer")
        };
        // With CHAP: a PXE offer (iPXE keeps it) without next-server and boot file, so iPXE
        // sends its ProxyDHCPREQUEST; no credentials in the broadcast.
        let o = offer(&mut s, &ScriptDir);
        assert_eq!(o.dest, Destination::Broadcast);
        assert_eq!(opt(&o.msg, 60), Some(b"PXEClient".to_vec()));
        assert_eq!(fname(&o.msg), "");
        assert!(opt(&o.msg, 67).is_none() && o.msg.siaddr().is_unspecified());
        assert!(credentials(&o.msg).is_empty() && !o.secret);
        // The 4011 request from its address: script and credentials, unicast.
        let (r, port, src) = ipxe_request(DhcpMode::Proxy, KNOWN, RESERVED, 7);
        let arrival = Arrival {
            port,
            src: SocketAddrV4::new(src, CLIENT_PORT),
        };
        let ack = s
            .handle(&ScriptDir, &hooks, &r.to_vec().expect("enc"), arrival, 2)
            .expect("ProxyDHCPACK");
        assert_eq!(ack.dest, Destination::Unicast(arrival.src));
        assert_eq!(fname(&ack.msg), SCRIPT_A);
        assert_eq!(credentials(&ack.msg), a_creds);
        assert!(ack.secret);
        // Without CHAP nothing is withheld: the offer names the boot file as before.
        let o = offer(&mut s, &Dir);
        assert_eq!(fname(&o.msg), "isboot-sanboot.ipxe");
        assert_eq!(o.msg.siaddr(), SERVER);
    }

    #[test]
    fn boot_routes_on_ipxe_gets_its_script_and_no_root_path() {
        assert_eq!(KNOWN.dashed(), "52-54-00-00-00-01", "SCRIPT_A names KNOWN");
        let a_creds = vec![(190, b"a".to_vec()), (191, PW_A.as_bytes().to_vec())];
        for mode in [DhcpMode::Full, DhcpMode::Proxy] {
            let mut s = DhcpServer::new(cfg(mode), Leases::new());
            let hooks = DhcpHooks::default();
            let mut ask = |m: &Message, port: u16, src: Ipv4Addr, now: u64| {
                let arrival = Arrival {
                    port,
                    src: SocketAddrV4::new(src, CLIENT_PORT),
                };
                s.handle(&ScriptDir, &hooks, &m.to_vec().expect("enc"), arrival, now)
            };
            // The PXE ROM still gets the first iPXE binary over TFTP.
            let rom = ask(
                &req(KNOWN, MessageType::Discover, Who::Pxe(0), vec![]),
                67,
                Ipv4Addr::UNSPECIFIED,
                1,
            )
            .expect("ROM offer");
            assert_eq!(fname(&rom.msg), "undionly.kpxe", "{mode:?}");
            let (r, port, src) = ipxe_request(mode, KNOWN, RESERVED, 0);
            let ipxe = ask(&r, port, src, 2).expect("iPXE-stage ACK");
            // The script is the boot file; no root-path, so iPXE attaches no disk before
            // running it; CHAP and the initiator name stay iPXE settings for the script's
            // sanboot.
            assert_eq!(fname(&ipxe.msg), SCRIPT_A, "{mode:?}");
            assert_eq!(opt(&ipxe.msg, 67), Some(SCRIPT_A.as_bytes().to_vec()));
            assert_eq!(ipxe.msg.siaddr(), SERVER);
            assert!(opt(&ipxe.msg, 17).is_none(), "{mode:?}: no root-path");
            assert_eq!(opt(&ipxe.msg, 12), Some(b"a".to_vec()));
            assert_eq!(credentials(&ipxe.msg), a_creds, "{mode:?}");
            assert!(ipxe.secret);
            let b = ipxe.encode().expect("encodes");
            assert!(
                !String::from_utf8_lossy(&b).contains("isboot-sanboot.ipxe"),
                "{mode:?}: the empty proxy script is not named"
            );
            // The initrd's dhclient still gets the root-path (netroot=dhcp).
            if mode == DhcpMode::Full {
                let l = ask(
                    &req(KNOWN, MessageType::Discover, Who::Linux, vec![]),
                    67,
                    Ipv4Addr::UNSPECIFIED,
                    3,
                )
                .expect("dhclient offer");
                assert_eq!(
                    opt(&l.msg, 17),
                    Some(b"iscsi:10.77.0.1::::iqn.2026-11.lab:a".to_vec())
                );
                assert_eq!(fname(&l.msg), "");
            }
        }
    }

    #[test]
    fn ipxe_chap_debug_hides_passwords_and_long_values_do_not_encode() {
        let c = crate::dhcp::IpxeChap {
            username: "u".into(),
            password: PW_A.into(),
            reverse: Some(("r".into(), PW_B.into())),
        };
        let d = format!("{c:?}");
        assert!(!d.contains(PW_A) && !d.contains(PW_B), "{d}");
        let long = crate::dhcp::IpxeChap {
            username: "u".repeat(256),
            password: PW_A.into(),
            reverse: None,
        };
        assert!(long.encode().is_none());
    }

    #[test]
    fn linux_dhclient_same_ip_no_bootfile() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let r = send(
            &mut s,
            &DhcpHooks::default(),
            &req(KNOWN, MessageType::Discover, Who::Linux, vec![]),
            67,
            5,
        )
        .expect("offer");
        assert_eq!(r.msg.yiaddr(), RESERVED);
        assert_eq!(fname(&r.msg), "");
        assert!(opt(&r.msg, 175).is_none());
    }

    #[test]
    fn unknown_mac_gets_nothing_unless_enrolled() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let d = req(UNKNOWN, MessageType::Discover, Who::Pxe(0), vec![]);
        assert!(send(&mut s, &DhcpHooks::default(), &d, 67, 1).is_none());
        let enrolled = Arc::new(Mutex::new(Vec::new()));
        let e2 = enrolled.clone();
        let hook = move |mac: MacAddr| -> Option<DhcpClient> {
            e2.lock().expect("lock").push(mac);
            Some(DhcpClient {
                name: "new".into(),
                ip: None,
                target_iqn: "iqn.x:new".into(),
                initiator_iqn: None,
                root_path: None,
                san_filename: None,
                boot_script: None,
                chap: None,
            })
        };
        let hooks = DhcpHooks {
            power_on: None,
            enroll: Some(Arc::new(hook) as Arc<dyn EnrollHook>),
            address: None,
        };
        assert!(
            send(&mut s, &hooks, &d, 67, 2).is_none(),
            "auto_enroll off: hook not used"
        );
        assert!(enrolled.lock().expect("lock").is_empty());
        let mut c = cfg(DhcpMode::Full);
        c.auto_enroll = true;
        let mut s = DhcpServer::new(c, Leases::new());
        let r = send(&mut s, &hooks, &d, 67, 3).expect("enrolled client gets an offer");
        assert_eq!(enrolled.lock().expect("lock").as_slice(), &[UNKNOWN]);
        assert_eq!(
            r.msg.yiaddr(),
            Ipv4Addr::new(10, 77, 0, 11),
            "dynamic, skipping the reserved .10"
        );
    }

    #[test]
    fn power_on_hook_once_per_boot() {
        let calls = Arc::new(Mutex::new(0u32));
        let c2 = calls.clone();
        let hook = move |_mac: MacAddr, _c: &DhcpClient| {
            *c2.lock().expect("lock") += 1;
            PowerOn::Reset
        };
        let hooks = DhcpHooks {
            power_on: Some(Arc::new(hook) as Arc<dyn PowerOnHook>),
            enroll: None,
            address: None,
        };
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        send(
            &mut s,
            &hooks,
            &req(KNOWN, MessageType::Discover, Who::Pxe(0), vec![]),
            67,
            1000,
        );
        send(
            &mut s,
            &hooks,
            &req(KNOWN, MessageType::Discover, Who::Pxe(0), vec![]),
            67,
            1004,
        ); // retry
        send(
            &mut s,
            &hooks,
            &req(KNOWN, MessageType::Discover, Who::Ipxe(0), vec![]),
            67,
            1010,
        ); // chainloaded
        send(
            &mut s,
            &hooks,
            &req(KNOWN, MessageType::Discover, Who::Linux, vec![]),
            67,
            1050,
        ); // initrd
        assert_eq!(*calls.lock().expect("lock"), 1);
        send(
            &mut s,
            &hooks,
            &req(KNOWN, MessageType::Discover, Who::Ipxe(0), vec![]),
            67,
            2000,
        ); // reboot, iPXE ROM
        assert_eq!(*calls.lock().expect("lock"), 2);
    }

    /// Power-on requests that reset nothing (the disk is in use, or already pristine) do not
    /// open the quiet window: a spoofed request against a running client never keeps that
    /// client's real power-on from its reset.
    #[test]
    fn only_a_reset_opens_the_quiet_window() {
        let answers = Arc::new(Mutex::new(vec![
            PowerOn::Reset,
            PowerOn::Unchanged,
            PowerOn::InUse,
            PowerOn::InUse,
        ]));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (a2, c2) = (answers.clone(), calls.clone());
        let hook = move |_mac: MacAddr, _c: &DhcpClient| {
            let a = a2.lock().expect("lock").pop().unwrap_or(PowerOn::Unchanged);
            c2.lock().expect("lock").push(a);
            a
        };
        let hooks = DhcpHooks {
            power_on: Some(Arc::new(hook) as Arc<dyn PowerOnHook>),
            enroll: None,
            address: None,
        };
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let pxe = req(KNOWN, MessageType::Discover, Who::Pxe(0), vec![]);
        // In use, in use (a spoofer, 5 s apart), nothing to do, then the real power-on resets;
        // a retry right after the reset is quiet.
        for t in [1000, 1005, 1010, 1015, 1020] {
            send(&mut s, &hooks, &pxe, 67, t);
        }
        assert_eq!(
            calls.lock().expect("lock").as_slice(),
            &[
                PowerOn::InUse,
                PowerOn::InUse,
                PowerOn::Unchanged,
                PowerOn::Reset
            ]
        );
        send(&mut s, &hooks, &pxe, 67, 1015 + POWER_ON_QUIET_SECS);
        assert_eq!(calls.lock().expect("lock").len(), 5, "after the window");
    }

    #[test]
    fn decline_is_honoured_only_for_the_senders_own_address() {
        let hooks = DhcpHooks::default();
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let off = send(
            &mut s,
            &hooks,
            &req(DYN, MessageType::Discover, Who::Linux, vec![]),
            67,
            100,
        )
        .expect("offer");
        let ip = off.msg.yiaddr();
        // Another registered client declines DYN's offered address: ignored.
        let decline = |mac| {
            req(
                mac,
                MessageType::Decline,
                Who::Linux,
                vec![
                    DhcpOption::ServerIdentifier(SERVER),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            )
        };
        send(&mut s, &hooks, &decline(KNOWN), 67, 101);
        let again = send(
            &mut s,
            &hooks,
            &req(DYN, MessageType::Discover, Who::Linux, vec![]),
            67,
            102,
        )
        .expect("offer");
        assert_eq!(again.msg.yiaddr(), ip, "KNOWN's DECLINE took nothing away");
    }

    #[test]
    fn request_states_ack_and_nak() {
        let hooks = DhcpHooks::default();
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        // INIT-REBOOT with the wrong address: NAK, broadcast.
        let r = send(
            &mut s,
            &hooks,
            &req(
                KNOWN,
                MessageType::Request,
                Who::Linux,
                vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 77, 0, 11))],
            ),
            67,
            10,
        )
        .expect("nak");
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(r.dest, Destination::Broadcast);
        // Off-network address: NAK.
        let r = send(
            &mut s,
            &hooks,
            &req(
                KNOWN,
                MessageType::Request,
                Who::Linux,
                vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                    192, 168, 1, 5,
                ))],
            ),
            67,
            10,
        )
        .expect("nak");
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Nak));
        // Selecting another server: silence.
        assert!(
            send(
                &mut s,
                &hooks,
                &req(
                    KNOWN,
                    MessageType::Request,
                    Who::Linux,
                    vec![
                        DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 0, 2)),
                        DhcpOption::RequestedIpAddress(RESERVED)
                    ]
                ),
                67,
                10
            )
            .is_none()
        );
        // Renewal: ciaddr set, unicast reply to ciaddr.
        let mut renew = req(KNOWN, MessageType::Request, Who::Linux, vec![]);
        renew.set_ciaddr(RESERVED);
        let r = send(&mut s, &hooks, &renew, 67, 20).expect("ack");
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.ciaddr(), RESERVED);
        assert_eq!(
            r.dest,
            Destination::Unicast(SocketAddrV4::new(RESERVED, 68))
        );
        // Broadcast flag honoured.
        let mut d = req(KNOWN, MessageType::Discover, Who::Linux, vec![]);
        d.set_flags(Flags::default().set_broadcast());
        assert_eq!(
            send(&mut s, &hooks, &d, 67, 30).expect("offer").dest,
            Destination::Broadcast
        );
    }

    #[test]
    fn dynamic_lease_cycle_and_persistence() {
        let hooks = DhcpHooks::default();
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let off = send(
            &mut s,
            &hooks,
            &req(DYN, MessageType::Discover, Who::Linux, vec![]),
            67,
            100,
        )
        .expect("offer");
        let ip = off.msg.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(10, 77, 0, 11));
        let ack = send(
            &mut s,
            &hooks,
            &req(
                DYN,
                MessageType::Request,
                Who::Linux,
                vec![
                    DhcpOption::ServerIdentifier(SERVER),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            ),
            67,
            101,
        )
        .expect("ack");
        assert_eq!(ack.msg.opts().msg_type(), Some(MessageType::Ack));
        assert!(s.take_leases_dirty());
        // Restart with the saved table: same address.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("l.json");
        s.leases().save(&path).expect("save");
        let mut s2 = DhcpServer::new(cfg(DhcpMode::Full), Leases::load(&path).expect("load"));
        let off2 = send(
            &mut s2,
            &hooks,
            &req(DYN, MessageType::Discover, Who::Linux, vec![]),
            67,
            200,
        )
        .expect("offer");
        assert_eq!(off2.msg.yiaddr(), ip);
        // DECLINE: the address is held back, the next offer is another one.
        send(
            &mut s2,
            &hooks,
            &req(
                DYN,
                MessageType::Decline,
                Who::Linux,
                vec![
                    DhcpOption::ServerIdentifier(SERVER),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            ),
            67,
            201,
        );
        let off3 = send(
            &mut s2,
            &hooks,
            &req(DYN, MessageType::Discover, Who::Linux, vec![]),
            67,
            202,
        )
        .expect("offer");
        assert_eq!(off3.msg.yiaddr(), Ipv4Addr::new(10, 77, 0, 12));
        // RELEASE then pool exhaustion: .10 reserved, .11 declined, .12 leased to DYN.
        send(
            &mut s2,
            &hooks,
            &req(
                DYN,
                MessageType::Request,
                Who::Linux,
                vec![
                    DhcpOption::ServerIdentifier(SERVER),
                    DhcpOption::RequestedIpAddress(off3.msg.yiaddr()),
                ],
            ),
            67,
            203,
        )
        .expect("ack");
        let mut rel = req(
            DYN,
            MessageType::Release,
            Who::Linux,
            vec![DhcpOption::ServerIdentifier(SERVER)],
        );
        rel.set_ciaddr(off3.msg.yiaddr());
        assert!(send(&mut s2, &hooks, &rel, 67, 204).is_none());
        assert!(s2.leases().get(&DYN, 205).is_none());
    }

    #[test]
    fn client_id_and_relay_info_are_echoed() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let mut info = dhcproto::v4::relay::RelayAgentInformation::default();
        info.insert(dhcproto::v4::relay::RelayInfo::AgentCircuitId(
            b"port7".to_vec(),
        ));
        let mut d = req(
            KNOWN,
            MessageType::Discover,
            Who::Linux,
            vec![
                DhcpOption::ClientIdentifier(vec![1, 0x52, 0x54, 0, 0, 0, 1]),
                DhcpOption::RelayAgentInformation(info),
            ],
        );
        d.set_giaddr(Ipv4Addr::new(10, 77, 0, 254));
        let r = send(&mut s, &DhcpHooks::default(), &d, 67, 1).expect("offer");
        assert_eq!(opt(&r.msg, 61), Some(vec![1, 0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(
            opt(&r.msg, 82),
            Some(vec![1, 5, b'p', b'o', b'r', b't', b'7'])
        );
        assert_eq!(
            r.msg.yiaddr(),
            RESERVED,
            "relay on the local subnet: local pool"
        );
    }

    #[test]
    fn inform_gets_options_without_address() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let mut m = req(KNOWN, MessageType::Inform, Who::Linux, vec![]);
        m.set_ciaddr(RESERVED);
        let r = send(&mut s, &DhcpHooks::default(), &m, 67, 1).expect("ack");
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(opt(&r.msg, 51).is_none());
        assert_eq!(
            r.dest,
            Destination::Unicast(SocketAddrV4::new(RESERVED, 68))
        );
    }

    #[test]
    fn relay_picks_pool_by_giaddr() {
        let hooks = DhcpHooks::default();
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let mut d = req(KNOWN, MessageType::Discover, Who::Pxe(0), vec![]);
        d.set_giaddr(Ipv4Addr::new(10, 88, 0, 1));
        let r = send(&mut s, &hooks, &d, 67, 1).expect("offer via relay");
        assert_eq!(
            r.msg.yiaddr(),
            Ipv4Addr::new(10, 88, 0, 100),
            "reservation is on another network: pool address"
        );
        assert_eq!(r.msg.giaddr(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(opt(&r.msg, 3), Some(vec![10, 88, 0, 1]));
        assert_eq!(
            r.dest,
            Destination::Relay(SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 1), 67))
        );
        assert_eq!(fname(&r.msg), "undionly.kpxe");
        let mut d = req(KNOWN, MessageType::Discover, Who::Pxe(0), vec![]);
        d.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
        assert!(
            send(&mut s, &hooks, &d, 67, 2).is_none(),
            "relay network without a pool"
        );
    }

    #[test]
    fn proxy_never_offers_an_address() {
        let hooks = DhcpHooks::default();
        let mut s = DhcpServer::new(cfg(DhcpMode::Proxy), Leases::new());
        let r = send(
            &mut s,
            &hooks,
            &req(
                KNOWN,
                MessageType::Discover,
                Who::Pxe(7),
                vec![DhcpOption::ClientMachineIdentifier(vec![0; 17])],
            ),
            67,
            1,
        )
        .expect("proxy offer");
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(fname(&r.msg), "ipxe.efi");
        assert_eq!(opt(&r.msg, 60), Some(b"PXEClient".to_vec()));
        assert_eq!(opt(&r.msg, 97), Some(vec![0; 17]));
        assert!(opt(&r.msg, 51).is_none() && opt(&r.msg, 1).is_none());
        assert_eq!(r.dest, Destination::Broadcast);
        // REQUEST on 67 belongs to the address server.
        assert!(
            send(
                &mut s,
                &hooks,
                &req(
                    KNOWN,
                    MessageType::Request,
                    Who::Pxe(7),
                    vec![DhcpOption::RequestedIpAddress(RESERVED)]
                ),
                67,
                2
            )
            .is_none()
        );
        // REQUEST on 4011: ACK, back to the sender.
        let mut r4011 = req(KNOWN, MessageType::Request, Who::Ipxe(7), vec![]);
        r4011.set_ciaddr(Ipv4Addr::new(10, 77, 0, 150));
        let bytes = r4011.to_vec().expect("enc");
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 150), 68);
        let r = s
            .handle(&Dir, &hooks, &bytes, Arrival { port: 4011, src }, 3)
            .expect("proxy ack");
        assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.dest, Destination::Unicast(src));
        assert_eq!(
            opt(&r.msg, 17),
            Some(b"iscsi:10.77.0.1::::iqn.2026-11.lab:ws1".to_vec())
        );
        assert!(opt(&r.msg, 175).is_none(), "no no-pxedhcp in proxy mode");
        assert_eq!(
            fname(&r.msg),
            "isboot-sanboot.ipxe",
            "iPXE needs PXE options in a ProxyDHCPACK"
        );
        assert_eq!(r.msg.siaddr(), SERVER);
        // Linux dhclient: nothing; unsupported arch: nothing.
        assert!(
            send(
                &mut s,
                &hooks,
                &req(KNOWN, MessageType::Discover, Who::Linux, vec![]),
                67,
                4
            )
            .is_none()
        );
        assert!(
            send(
                &mut s,
                &hooks,
                &req(KNOWN, MessageType::Discover, Who::Pxe(2), vec![]),
                67,
                5
            )
            .is_none()
        );
    }

    #[test]
    fn flood_from_one_mac_is_dropped() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let d = req(KNOWN, MessageType::Discover, Who::Linux, vec![]);
        let answered = (0..100)
            .filter(|_| send(&mut s, &DhcpHooks::default(), &d, 67, 50).is_some())
            .count();
        assert_eq!(
            answered,
            crate::dhcp::flood::MAX_REQUESTS_PER_WINDOW as usize
        );
    }

    #[test]
    fn log_lines_from_forged_macs_are_limited() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let limits = LogLimits::default();
        // Each forged MAC is new ("logged once" per MAC); together they hit the total limit.
        for i in 0..1000u32 {
            let b = i.to_be_bytes();
            let d = req(
                MacAddr([2, 0, b[0], b[1], b[2], b[3]]),
                MessageType::Discover,
                Who::Pxe(0),
                vec![],
            );
            assert!(send(&mut s, &DhcpHooks::default(), &d, 67, 100).is_none());
        }
        assert!(!s.may_log(KNOWN), "total spent: further lines are left out");
        // A registered client's own requests: at most per_key lines per window.
        let r = req(KNOWN, MessageType::Request, Who::Linux, vec![]);
        s.now = 100 + limits.window_secs;
        let logged = (0..limits.per_key + 5).filter(|_| s.may_log(KNOWN)).count();
        assert_eq!(logged, limits.per_key as usize);
        let _ = send(
            &mut s,
            &DhcpHooks::default(),
            &r,
            67,
            100 + 2 * limits.window_secs,
        );
        assert!(s.may_log(KNOWN), "a new window logs again");
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = DhcpServer::new(cfg(DhcpMode::Full), Leases::new());
        let good = req(KNOWN, MessageType::Discover, Who::Ipxe(7), vec![])
            .to_vec()
            .expect("enc");
        let mut x: u32 = 12345;
        for i in 0..3000u32 {
            let mut p = good.clone();
            for _ in 0..(i % 7 + 1) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let pos = (x as usize >> 8) % p.len();
                p[pos] = (x >> 3) as u8;
            }
            p.truncate(240 + (x as usize % (p.len() - 239)));
            let _ = s.handle(&Dir, &DhcpHooks::default(), &p, at(67), u64::from(i) * 20);
        }
    }
}
