//! Clients: add, remove, reset (by hand, or at power-on for reset-mode clients).

use super::{Locked, State, StateDir};
use crate::config::names::{ClientName, ImageName, Iqn, MacAddr};
use crate::config::registry::{Chap, Client, ClientImage, Mode};
use crate::config::secret::{remove_secret_file, secret_path, write_secret_file};
use crate::config::{ConfigError, now_unix};
use crate::store::overlay::Overlay;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Longest CHAP secret accepted (bytes).
pub const MAX_CHAP_SECRET: usize = 255;
/// Shortest CHAP secret accepted (RFC 7143 §12.1.3 asks for at least 96 bits; isboot asks
/// for 16 bytes and generates 24 random bytes).
pub const MIN_CHAP_SECRET: usize = 16;

/// What `add-client` asks for (already parsed).
#[derive(Clone, Debug)]
pub struct AddClient {
    pub mac: MacAddr,
    pub image: ImageName,
    pub name: Option<ClientName>,
    pub ip: Option<Ipv4Addr>,
    pub mode: Mode,
    /// Allowed initiators; empty = the default `<prefix>:initiator:<name>`.
    pub initiators: Vec<Iqn>,
    pub chap: Option<Chap>,
    /// Overlay quota, MiB, instead of `[limits] client_quota_mib` (0: none).
    pub quota_mib: Option<u64>,
}

impl StateDir {
    /// A reset-mode client powered on (its PXE ROM sent DHCP): drop its overlay and move it to
    /// its image's newest version. Does nothing (returns `Ok(None)`) for persistent clients,
    /// unknown MACs, and overlays that are still empty on the newest version. Returns the
    /// client's new record when it was reset.
    pub fn power_on(&self, mac: &MacAddr) -> Result<Option<Client>, ConfigError> {
        // Cheap unlocked check first: DHCP calls this for every PXE request.
        let st = self.load()?;
        match st.registry.client_by_mac(mac) {
            Some(c) if c.mode == Mode::Reset && st.needs_power_on_reset(c) => {}
            _ => return Ok(None),
        }
        let mut l = self.lock()?;
        let c = match l.state.registry.client_by_mac(mac) {
            Some(c) if c.mode == Mode::Reset && l.state.needs_power_on_reset(c) => c.clone(),
            _ => return Ok(None),
        };
        l.reset_client(c.name.as_str(), true).map(Some)
    }
}

impl State {
    /// Reset-mode power-on has work to do: the overlay holds writes or a newer version exists.
    fn needs_power_on_reset(&self, c: &Client) -> bool {
        let newest = self
            .registry
            .image(&c.image)
            .and_then(|i| i.newest())
            .map(|v| v.number);
        // A disk on RBD is cloned again at every power-on (a metadata operation; what the
        // clone holds is not worth asking Ceph for on the DHCP path).
        if newest != Some(c.version) || c.rbd.is_some() {
            return true;
        }
        match Overlay::usage_at(&self.dir.path(&c.overlay)) {
            Ok(u) => u.data_blocks + u.zero_blocks > 0,
            Err(_) => true,
        }
    }
}

pub fn validate_chap(chap: &Chap) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError::BadArgument(m.to_string()));
    let user_ok =
        |u: &str| !u.is_empty() && u.len() <= 255 && u.bytes().all(|b| b.is_ascii_graphic());
    if !user_ok(&chap.user) {
        return bad("bad CHAP user name (1 to 255 printable characters, no spaces)");
    }
    if !(MIN_CHAP_SECRET..=MAX_CHAP_SECRET).contains(&chap.secret.len()) {
        return bad("CHAP secret must be 16 to 255 bytes long");
    }
    match (&chap.mutual_user, &chap.mutual_secret) {
        (None, None) => Ok(()),
        (Some(u), Some(s)) => {
            if !user_ok(u) {
                return bad("bad mutual CHAP user name (1 to 255 printable characters, no spaces)");
            }
            if !(MIN_CHAP_SECRET..=MAX_CHAP_SECRET).contains(&s.len()) {
                return bad("mutual CHAP secret must be 16 to 255 bytes long");
            }
            if s == &chap.secret {
                return bad("mutual CHAP secret must differ from the CHAP secret");
            }
            Ok(())
        }
        _ => bad("mutual_user and mutual_secret go together"),
    }
}

impl Locked {
    pub fn add_client(&mut self, req: AddClient) -> Result<Client, ConfigError> {
        let st = &self.state;
        let name = req.name.clone().unwrap_or_else(|| {
            req.mac
                .dashed()
                .parse()
                .unwrap_or_else(|_| unreachable!("a dashed MAC is a valid name"))
        });
        if st.registry.clients.iter().any(|c| c.name == name) {
            return Err(ConfigError::NameTaken(name.to_string()));
        }
        if let Some(c) = st.registry.client_by_mac(&req.mac) {
            return Err(ConfigError::MacTaken {
                mac: req.mac,
                client: c.name.to_string(),
            });
        }
        let image = st.image(&req.image)?;
        let newest = image
            .newest()
            .ok_or_else(|| ConfigError::UnknownImage(format!("{} (no versions)", req.image)))?;
        let version = newest.number;
        if let Some(ip) = req.ip {
            check_client_ip(st, ip, None)?;
        }
        let initiators = if req.initiators.is_empty() {
            vec![st.default_initiator(name.as_str())]
        } else {
            let mut v = req.initiators.clone();
            v.dedup();
            v
        };
        let target = st.target_iqn(&name);
        for i in &initiators {
            if i == &target {
                return Err(ConfigError::IqnTaken {
                    iqn: i.to_string(),
                    by: format!("client {name}'s target"),
                });
            }
            if let Some(c) = st
                .registry
                .clients
                .iter()
                .find(|c| c.initiators.contains(i))
            {
                return Err(ConfigError::IqnTaken {
                    iqn: i.to_string(),
                    by: format!("client {}", c.name),
                });
            }
            if let Some(c) = st
                .registry
                .clients
                .iter()
                .find(|c| &st.target_iqn(&c.name) == i)
            {
                return Err(ConfigError::IqnTaken {
                    iqn: i.to_string(),
                    by: format!("client {}'s target", c.name),
                });
            }
        }
        if let Some(ch) = &req.chap {
            validate_chap(ch)?;
        }
        // The secret file first (the registry commit makes it count); a stale one from an
        // earlier client of this name must not turn CHAP on for a `--no-chap` client.
        let secret = secret_path(self.state.dir.root(), name.as_str());
        match &req.chap {
            Some(ch) => write_secret_file(&secret, ch)?,
            None => remove_secret_file(&secret)?,
        }
        let (rel, rbd) = self.new_client_disk(name.as_str(), &req.image, version)?;
        let client = Client {
            name,
            mac: req.mac,
            ip: req.ip,
            image: req.image,
            version,
            mode: req.mode,
            initiators,
            overlay: rel.clone(),
            rbd,
            created: now_unix(),
            // Secrets live in secrets/<name>.toml; `chap` in the registry is the old place.
            chap: None,
            boot: Default::default(),
            quota_mib: req.quota_mib,
            allowed_images: Vec::new(),
        };
        self.state.registry.clients.push(client.clone());
        if let Err(e) = self.save() {
            self.forget_client_disk(&client);
            return Err(e);
        }
        Ok(client)
    }

    /// Turn CHAP on (with these credentials) or off (`None`) for a client. Credentials an old
    /// registry held move to the client's secret file.
    pub fn set_client_chap(&mut self, which: &str, chap: Option<Chap>) -> Result<(), ConfigError> {
        let name = self.state.client(which)?.name.clone();
        if let Some(ch) = &chap {
            validate_chap(ch)?;
        }
        let path = secret_path(self.state.dir.root(), name.as_str());
        match &chap {
            Some(ch) => write_secret_file(&path, ch)?,
            None => remove_secret_file(&path)?,
        }
        let mut changed = false;
        for x in self.state.registry.clients.iter_mut() {
            if x.name == name && x.chap.is_some() {
                x.chap = None;
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Set or clear a client's reserved address (`set-client --ip`): DHCP hands it out in full
    /// mode, and in every mode its target accepts logins from it.
    pub fn set_client_ip(
        &mut self,
        which: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<Client, ConfigError> {
        let name = self.state.client(which)?.name.clone();
        if let Some(ip) = ip {
            check_client_ip(&self.state, ip, Some(&name))?;
        }
        self.change_client(&name, |c| c.ip = ip)
    }

    /// Apply `change` to the record of client `name` and save the registry.
    fn change_client(
        &mut self,
        name: &ClientName,
        change: impl FnOnce(&mut Client),
    ) -> Result<Client, ConfigError> {
        let c = self
            .state
            .registry
            .clients
            .iter_mut()
            .find(|x| &x.name == name)
            .ok_or_else(|| ConfigError::UnknownClient(name.to_string()))?;
        change(c);
        let out = c.clone();
        self.save()?;
        Ok(out)
    }

    /// Set a client's overlay quota, MiB (0: none), or with `None` go back to
    /// `[limits] client_quota_mib` (`set-client --quota-mib`). A running server applies it
    /// when it reloads the registry.
    pub fn set_client_quota(
        &mut self,
        which: &str,
        quota_mib: Option<u64>,
    ) -> Result<Client, ConfigError> {
        let name = self.state.client(which)?.name.clone();
        self.change_client(&name, |c| c.quota_mib = quota_mib)
    }

    /// Remove a client; with `keep_overlay` its overlay file stays (its path is returned).
    pub fn remove_client(
        &mut self,
        which: &str,
        keep_overlay: bool,
    ) -> Result<(Client, Option<PathBuf>), ConfigError> {
        let c = self.state.client(which)?.clone();
        if keep_overlay && let Some(spec) = &c.rbd {
            return Err(ConfigError::BadArgument(format!(
                "client {}'s disk is on Ceph RBD ({spec}), not an overlay file to keep: copy it \
                 first (rbd cp {spec} POOL/NAME), then remove the client without --keep-overlay",
                c.name
            )));
        }
        self.state.registry.clients.retain(|x| x.name != c.name);
        self.save()?;
        // Best effort: the client is gone already; a secret left behind is replaced or removed
        // when a client of this name is added again.
        let _ = remove_secret_file(&secret_path(self.state.dir.root(), c.name.as_str()));
        // Its other images' overlays go with it (they are reset at every power-on anyway).
        for a in &c.allowed_images {
            self.forget_client_image(a);
        }
        if keep_overlay {
            Ok((c.clone(), Some(self.state.dir.path(&c.overlay))))
        } else {
            self.forget_client_disk(&c);
            Ok((c, None))
        }
    }

    /// Client `name`'s power-on for its other image `image` (`isboot boot --allow-image`):
    /// a fresh overlay on that image's newest version. The caller has checked that nobody is
    /// logged in to it. Returns the new record.
    pub fn reset_client_image(
        &mut self,
        name: &ClientName,
        image: &ImageName,
    ) -> Result<ClientImage, ConfigError> {
        let c = self
            .state
            .registry
            .client(name)
            .ok_or_else(|| ConfigError::UnknownClient(name.to_string()))?;
        let old = c.allowed_image(image).cloned().ok_or_else(|| {
            ConfigError::BadArgument(format!("client {name} is not allowed image {image}"))
        })?;
        let fresh = self.new_client_image(name, image)?;
        for c in self.state.registry.clients.iter_mut() {
            if &c.name == name {
                for a in c.allowed_images.iter_mut() {
                    if &a.image == image {
                        *a = fresh.clone();
                    }
                }
            }
        }
        if let Err(e) = self.save() {
            self.forget_client_image(&fresh);
            return Err(e);
        }
        self.forget_client_image(&old);
        Ok(fresh)
    }

    /// Drop a client's writes: a fresh overlay on its image's newest version. Refused while the
    /// client is logged in to a running server, unless `force` (the server then ends its
    /// sessions when it sees the change).
    pub fn reset_client(&mut self, which: &str, force: bool) -> Result<Client, ConfigError> {
        let c = self.state.client(which)?.clone();
        if !force {
            let s = self.state.sessions_of(&self.state.target_iqn(&c.name));
            if !s.is_empty() {
                let from: Vec<String> = s.iter().map(|s| s.peer.clone()).collect();
                return Err(ConfigError::LoggedIn {
                    what: format!("client {}", c.name),
                    from: from.join(", "),
                });
            }
        }
        let newest = self
            .state
            .image(&c.image)?
            .newest()
            .map(|v| v.number)
            .ok_or_else(|| ConfigError::UnknownImage(c.image.to_string()))?;
        let (rel, rbd) = self.new_client_disk(c.name.as_str(), &c.image, newest)?;
        let mut updated = c.clone();
        updated.overlay = rel.clone();
        updated.rbd = rbd;
        updated.version = newest;
        for x in self.state.registry.clients.iter_mut() {
            if x.name == c.name {
                *x = updated.clone();
            }
        }
        if let Err(e) = self.save() {
            self.forget_client_disk(&updated);
            return Err(e);
        }
        self.forget_client_disk(&c);
        Ok(updated)
    }
}

/// May `ip` be the reserved address of a client (`except`: the client being changed)?
fn check_client_ip(
    st: &State,
    ip: Ipv4Addr,
    except: Option<&ClientName>,
) -> Result<(), ConfigError> {
    if let Some(net) = st.config.subnet {
        if !net.host(ip) {
            return Err(ConfigError::IpOutsideSubnet { ip, subnet: net });
        }
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(ConfigError::BadArgument(format!(
            "{ip} cannot be a client address"
        )));
    }
    if st.config.server_ip == Some(ip) {
        return Err(ConfigError::IpTaken {
            ip,
            by: "this server".into(),
        });
    }
    if let Some(c) = st
        .registry
        .clients
        .iter()
        .find(|c| c.ip == Some(ip) && Some(&c.name) != except)
    {
        return Err(ConfigError::IpTaken {
            ip,
            by: format!("client {}", c.name),
        });
    }
    Ok(())
}
