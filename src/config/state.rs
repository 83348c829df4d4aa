//! The state directory and every change to it. Readers take a [`State`] snapshot
//! ([`StateDir::load`]); writers take the directory lock ([`StateDir::lock`]), validate
//! everything, then change files so that each step is atomic and the registry rename is the
//! commit point: new files are created before the registry points at them, old files are
//! removed after it stops pointing at them.

use super::file::Config;
use super::import;
use super::names::{ClientName, ImageName, Iqn, MacAddr, Subnet};
use super::registry::{Chap, Client, Image, Maintenance, Mode, Registry, Version};
use super::status::{ServerStatus, SessionStatus};
use super::{ConfigError, now_unix, sync_dir, write_atomic};
use crate::store::base::{BaseId, BaseImage};
use crate::store::overlay::{DEFAULT_BLOCK_SIZE, Overlay};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest CHAP secret accepted (bytes).
pub const MAX_CHAP_SECRET: usize = 255;
/// Shortest CHAP secret accepted (RFC 7143 §12.1.3 asks for at least 96 bits).
pub const MIN_CHAP_SECRET: usize = 12;

/// A state directory on disk.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// A consistent snapshot of the configuration and the registry.
#[derive(Clone, Debug)]
pub struct State {
    pub dir: StateDir,
    pub config: Config,
    pub registry: Registry,
}

/// The state, with the directory lock held: the only way to change it.
pub struct Locked {
    _lock: File,
    pub state: State,
}

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
}

/// What a target serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Client(ClientName),
    Maintenance(ImageName),
}

/// Everything needed to serve one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub iqn: Iqn,
    pub kind: TargetKind,
    pub image: ImageName,
    pub version: u64,
    pub base_path: PathBuf,
    pub base_id: BaseId,
    pub overlay_path: PathBuf,
    pub initiators: Vec<Iqn>,
    pub chap: Option<Chap>,
}

/// What DHCP hands a machine that powers on (see [`State::boot_target`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTarget {
    /// Client name, or `maint-<image>` for a maintenance machine (a valid host name).
    pub name: String,
    pub target: Iqn,
    /// Initiator name for iPXE (DHCP option 203).
    pub initiator: Iqn,
    pub ip: Option<Ipv4Addr>,
    /// `iscsi:...` root-path (DHCP option 17), when `server_ip` is configured.
    pub root_path: Option<String>,
}

fn io_write(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Writing {
        path: path.to_path_buf(),
        source,
    }
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("isboot.toml")
    }
    pub fn registry_path(&self) -> PathBuf {
        self.root.join("registry.toml")
    }
    pub fn status_path(&self) -> PathBuf {
        self.root.join("run").join("status.json")
    }
    pub fn tftp_dir(&self) -> PathBuf {
        self.root.join("tftp")
    }
    /// A path stored relative to the state directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Fail with [`ConfigError::NotWritable`] unless files can be created in the directory.
    pub fn check_writable(&self) -> Result<(), ConfigError> {
        let probe = self.root.join(format!(".probe.{}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(source) => Err(ConfigError::NotWritable {
                path: self.root.clone(),
                source,
            }),
        }
    }

    /// Create the directory layout and a commented config file.
    pub fn init(
        &self,
        server: Option<(Ipv4Addr, u8)>,
        iqn_prefix: Option<Iqn>,
        listen: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        if self.config_path().exists() {
            return Err(ConfigError::AlreadyInitialised(self.root.clone()));
        }
        let mut config = Config::default();
        if let Some((ip, prefix)) = server {
            config.server_ip = Some(ip);
            config.subnet = Some(Subnet::of(ip, prefix).map_err(ConfigError::BadArgument)?);
        }
        if let Some(p) = iqn_prefix {
            config.iqn_prefix = p;
        }
        if let Some(l) = listen {
            config.listen = l;
        }
        let existed = self.root.exists();
        std::fs::create_dir_all(&self.root).map_err(|source| ConfigError::NotWritable {
            path: self.root.clone(),
            source,
        })?;
        if let Err(e) = self.check_writable() {
            if !existed {
                let _ = std::fs::remove_dir(&self.root);
            }
            return Err(e);
        }
        for d in ["images", "overlays", "maint", "run", "tftp"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).map_err(io_write(&p))?;
        }
        let lock = self.root.join(".lock");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_write(&lock))?;
        let reg = toml::to_string(&Registry::default()).unwrap_or_default();
        write_atomic(&self.registry_path(), reg.as_bytes(), 0o600)?;
        // The config file last: its presence means "initialised".
        write_atomic(&self.config_path(), config.render().as_bytes(), 0o644)?;
        Ok(config)
    }

    /// Read the configuration and registry.
    pub fn load(&self) -> Result<State, ConfigError> {
        let cp = self.config_path();
        if !cp.exists() {
            return Err(ConfigError::NotInitialised(self.root.clone()));
        }
        let config = Config::load(&cp)?;
        let rp = self.registry_path();
        let text = std::fs::read_to_string(&rp).map_err(|source| ConfigError::Reading {
            path: rp.clone(),
            source,
        })?;
        let registry: Registry = toml::from_str(&text).map_err(|e| ConfigError::Parsing {
            path: rp,
            message: e.to_string().trim().replace('\n', " "),
        })?;
        Ok(State {
            dir: self.clone(),
            config,
            registry,
        })
    }

    /// Take the directory lock (waiting for another command to finish) and read the state.
    pub fn lock(&self) -> Result<Locked, ConfigError> {
        if !self.config_path().exists() {
            return Err(ConfigError::NotInitialised(self.root.clone()));
        }
        self.check_writable()?;
        let lp = self.root.join(".lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lp)
            .map_err(|source| ConfigError::NotWritable {
                path: self.root.clone(),
                source,
            })?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ConfigError::Writing {
                path: lp,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Locked {
            _lock: f,
            state: self.load()?,
        })
    }

    /// Publish `staged` (a raw file in `images/`, e.g. an image rebuilt by
    /// `isboot image prepare`) as the next version of image `name`. Refused while the image is
    /// in maintenance. The file is renamed into place, not copied.
    pub fn image_publish(&self, name: &ImageName, staged: &Path) -> Result<Version, ConfigError> {
        let mut l = self.lock()?;
        let img = l.state.image(name)?;
        if img.maintenance.is_some() {
            return Err(ConfigError::MaintenanceOpen(name.to_string()));
        }
        let number = img.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
        let size = std::fs::metadata(staged)
            .map_err(|source| ConfigError::Reading {
                path: staged.to_path_buf(),
                source,
            })?
            .len();
        let dir_rel = format!("images/{name}");
        let rel = format!("{dir_rel}/v{number}.raw");
        let dest = self.path(&rel);
        let file = File::open(staged).map_err(io_write(staged))?;
        file.sync_all().map_err(io_write(staged))?;
        std::fs::rename(staged, &dest).map_err(io_write(&dest))?;
        let dir = self.path(&dir_rel);
        sync_dir(&dir).map_err(io_write(&dir))?;
        let v = Version {
            number,
            id: BaseId::random().map_err(io_write(&dest))?.to_string(),
            file: rel,
            size,
            created: now_unix(),
        };
        let img = l
            .state
            .registry
            .images
            .iter_mut()
            .find(|i| &i.name == name)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))?;
        img.versions.push(v.clone());
        if let Err(e) = l.save() {
            let _ = std::fs::rename(&dest, staged);
            return Err(e);
        }
        Ok(v)
    }

    /// The file of the newest version of image `name`.
    pub fn newest_version_file(&self, name: &ImageName) -> Result<PathBuf, ConfigError> {
        let state = self.load()?;
        let img = state.image(name)?;
        let v = img
            .versions
            .iter()
            .max_by_key(|v| v.number)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))?;
        Ok(self.path(&v.file))
    }

    /// Import `file` as a new image with version 1. The copy runs without the directory
    /// lock (other commands, and a running server's power-on resets, are not held up by a
    /// long import); the name is checked before and again when the result is published.
    pub fn image_add(
        &self,
        name: &ImageName,
        file: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Version, ConfigError> {
        {
            let l = self.lock()?;
            if l.state.registry.image(name).is_some() {
                return Err(ConfigError::ImageExists(name.to_string()));
            }
        }
        let images = self.root.join("images");
        std::fs::create_dir_all(&images).map_err(io_write(&images))?;
        let staged = images.join(format!(".import-{name}-{}.raw", std::process::id()));
        let size = import::import(file, &staged, progress)?;
        let res = (|| {
            let mut l = self.lock()?;
            if l.state.registry.image(name).is_some() {
                return Err(ConfigError::ImageExists(name.to_string()));
            }
            let dir_rel = format!("images/{name}");
            let dir = self.path(&dir_rel);
            std::fs::create_dir_all(&dir).map_err(io_write(&dir))?;
            sync_dir(&images).map_err(io_write(&images))?;
            let rel = format!("{dir_rel}/v1.raw");
            let dest = self.path(&rel);
            std::fs::rename(&staged, &dest).map_err(io_write(&dest))?;
            sync_dir(&dir).map_err(io_write(&dir))?;
            sync_dir(&images).map_err(io_write(&images))?;
            let v = Version {
                number: 1,
                id: BaseId::random().map_err(io_write(&dest))?.to_string(),
                file: rel.clone(),
                size,
                created: now_unix(),
            };
            l.state.registry.images.push(Image {
                name: name.clone(),
                versions: vec![v.clone()],
                maintenance: None,
            });
            if let Err(e) = l.save() {
                let _ = std::fs::remove_file(&dest);
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
            Ok(v)
        })();
        let _ = std::fs::remove_file(&staged);
        res
    }

    /// Publish the maintenance view of `name` as its next version. Refused while the
    /// maintenance target is logged in (unless `force`). The merge runs without the directory
    /// lock; the result is published only if the maintenance session is still the same one
    /// and nobody logged in to it meanwhile.
    pub fn image_commit(
        &self,
        name: &ImageName,
        force: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Version, ConfigError> {
        let (m, number) = {
            let l = self.lock()?;
            let m = l.maintenance(name, force, true)?;
            let img = l.state.image(name)?;
            (
                m,
                img.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1,
            )
        };
        let state = self.load()?;
        let base = state.open_base(name, m.from_version)?;
        let ov = Overlay::open_at(&self.path(&m.overlay), base, true)?;
        let dir = self.path(&format!("images/{name}"));
        let staged = dir.join(format!(".v{number}.raw.tmp{}", std::process::id()));
        let size = crate::store::BlockDevice::size(&ov);
        let merged = (|| {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&staged)
                .map_err(io_write(&staged))?;
            ov.write_merged(&f, |done| progress(done, size))?;
            Ok::<(), ConfigError>(())
        })();
        drop(ov);
        let res = merged.and_then(|()| {
            let mut l = self.lock()?;
            let now = l.state.image(name)?.maintenance.clone();
            if now.as_ref().map(|n| &n.overlay) != Some(&m.overlay) {
                return Err(ConfigError::NoMaintenance(name.to_string()));
            }
            if !force {
                let s = l.state.sessions_of(&l.state.maintenance_iqn(name));
                if !s.is_empty() {
                    let from: Vec<String> = s.iter().map(|s| s.peer.clone()).collect();
                    return Err(ConfigError::LoggedIn {
                        what: format!(
                            "maintenance target of {name} (it logged in during the commit)"
                        ),
                        from: from.join(", "),
                    });
                }
            }
            let number = l
                .state
                .image(name)?
                .versions
                .iter()
                .map(|v| v.number)
                .max()
                .unwrap_or(0)
                + 1;
            let rel = format!("images/{name}/v{number}.raw");
            let dest = self.path(&rel);
            std::fs::rename(&staged, &dest).map_err(io_write(&dest))?;
            sync_dir(&dir).map_err(io_write(&dir))?;
            let v = Version {
                number,
                id: BaseId::random().map_err(io_write(&dest))?.to_string(),
                file: rel.clone(),
                size,
                created: now_unix(),
            };
            if let Some(i) = l.state.registry.image_mut(name) {
                i.versions.push(v.clone());
                i.maintenance = None;
            }
            l.save_or_forget(&[&rel])?;
            l.forget(&m.overlay);
            Ok(v)
        });
        let _ = std::fs::remove_file(&staged);
        res
    }

    /// Claim the state directory for one `isboot serve` (two servers would open the same
    /// overlays twice). Held until the returned file is dropped.
    pub fn lock_server(&self) -> Result<File, ConfigError> {
        let run = self.root.join("run");
        std::fs::create_dir_all(&run).map_err(io_write(&run))?;
        let p = run.join("serve.pid");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_write(&p))?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(&p)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(ConfigError::ServerRunning(if pid.is_empty() {
                "?".into()
            } else {
                pid
            }));
        }
        use std::io::Write;
        f.set_len(0).map_err(io_write(&p))?;
        writeln!(f, "{}", std::process::id()).map_err(io_write(&p))?;
        Ok(f)
    }

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
    pub fn target_iqn(&self, name: &ClientName) -> Iqn {
        self.config
            .iqn_prefix
            .join(name.as_str())
            .unwrap_or_else(|_| self.config.iqn_prefix.clone())
    }
    pub fn default_initiator(&self, name: &str) -> Iqn {
        self.config
            .iqn_prefix
            .join(&format!("initiator:{name}"))
            .unwrap_or_else(|_| self.config.iqn_prefix.clone())
    }
    pub fn maintenance_iqn(&self, image: &ImageName) -> Iqn {
        self.config
            .iqn_prefix
            .join(&format!("maint:{image}"))
            .unwrap_or_else(|_| self.config.iqn_prefix.clone())
    }

    pub fn client_root_path(&self, c: &Client) -> Option<String> {
        self.config.root_path(&self.target_iqn(&c.name))
    }

    /// What a machine with this MAC boots: the maintenance target of an image being edited on
    /// it, else its client target.
    pub fn boot_target(&self, mac: &MacAddr) -> Option<BootTarget> {
        for img in &self.registry.images {
            if let Some(m) = &img.maintenance {
                if m.mac.as_ref() == Some(mac) {
                    let target = self.maintenance_iqn(&img.name);
                    return Some(BootTarget {
                        name: format!("maint-{}", img.name),
                        initiator: m.initiators.first().cloned().unwrap_or_else(|| {
                            self.default_initiator(&format!("maint:{}", img.name))
                        }),
                        ip: self.registry.client_by_mac(mac).and_then(|c| c.ip),
                        root_path: self.config.root_path(&target),
                        target,
                    });
                }
            }
        }
        let c = self.registry.client_by_mac(mac)?;
        let target = self.target_iqn(&c.name);
        Some(BootTarget {
            name: c.name.to_string(),
            initiator: c
                .initiators
                .first()
                .cloned()
                .unwrap_or_else(|| self.default_initiator(c.name.as_str())),
            ip: c.ip,
            root_path: self.config.root_path(&target),
            target,
        })
    }

    /// Sessions of the target `iqn` according to a running server, if any.
    pub fn sessions_of(&self, iqn: &Iqn) -> Vec<SessionStatus> {
        ServerStatus::load_live(&self.dir.status_path())
            .and_then(|s| s.target(iqn.as_str()).map(|t| t.sessions.clone()))
            .unwrap_or_default()
    }

    /// Every target to serve.
    pub fn targets(&self) -> Vec<TargetSpec> {
        let mut out = Vec::new();
        for c in &self.registry.clients {
            let Some(v) = self
                .registry
                .image(&c.image)
                .and_then(|i| i.version(c.version))
            else {
                continue;
            };
            let Some(id) = BaseId::parse(&v.id) else {
                continue;
            };
            out.push(TargetSpec {
                iqn: self.target_iqn(&c.name),
                kind: TargetKind::Client(c.name.clone()),
                image: c.image.clone(),
                version: c.version,
                base_path: self.dir.path(&v.file),
                base_id: id,
                overlay_path: self.dir.path(&c.overlay),
                initiators: c.initiators.clone(),
                chap: c.chap.clone(),
            });
        }
        for img in &self.registry.images {
            let Some(m) = &img.maintenance else { continue };
            let Some(v) = img.version(m.from_version) else {
                continue;
            };
            let Some(id) = BaseId::parse(&v.id) else {
                continue;
            };
            out.push(TargetSpec {
                iqn: self.maintenance_iqn(&img.name),
                kind: TargetKind::Maintenance(img.name.clone()),
                image: img.name.clone(),
                version: m.from_version,
                base_path: self.dir.path(&v.file),
                base_id: id,
                overlay_path: self.dir.path(&m.overlay),
                initiators: m.initiators.clone(),
                chap: None,
            });
        }
        out
    }

    /// The newest published version number of `image`.
    pub fn newest_version(&self, image: &ImageName) -> Option<u64> {
        self.registry
            .image(image)
            .and_then(|i| i.newest())
            .map(|v| v.number)
    }

    /// Names of clients on `image` (any version when `version` is `None`).
    pub fn clients_using(&self, image: &ImageName, version: Option<u64>) -> Vec<String> {
        self.registry
            .clients
            .iter()
            .filter(|c| &c.image == image && version.is_none_or(|v| v == c.version))
            .map(|c| c.name.to_string())
            .collect()
    }

    fn image(&self, name: &ImageName) -> Result<&Image, ConfigError> {
        self.registry
            .image(name)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))
    }

    fn client(&self, which: &str) -> Result<&Client, ConfigError> {
        self.registry
            .find_client(which)
            .ok_or_else(|| ConfigError::UnknownClient(which.to_string()))
    }

    fn open_base(&self, image: &ImageName, number: u64) -> Result<Arc<BaseImage>, ConfigError> {
        let v = self
            .image(image)?
            .version(number)
            .ok_or_else(|| ConfigError::UnknownImage(format!("{image} version {number}")))?;
        let id = BaseId::parse(&v.id).ok_or_else(|| ConfigError::Parsing {
            path: self.dir.registry_path(),
            message: format!("image {image} version {number} has a bad id"),
        })?;
        Ok(Arc::new(BaseImage::open(
            &self.dir.path(&v.file),
            id,
            number,
        )?))
    }

    /// Reset-mode power-on has work to do: the overlay holds writes or a newer version exists.
    fn needs_power_on_reset(&self, c: &Client) -> bool {
        let newest = self
            .registry
            .image(&c.image)
            .and_then(|i| i.newest())
            .map(|v| v.number);
        if newest != Some(c.version) {
            return true;
        }
        match Overlay::usage_at(&self.dir.path(&c.overlay)) {
            Ok(u) => u.data_blocks + u.zero_blocks > 0,
            Err(_) => true,
        }
    }
}

fn validate_chap(chap: &Chap) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError::BadArgument(m.to_string()));
    let user_ok =
        |u: &str| !u.is_empty() && u.len() <= 255 && u.bytes().all(|b| b.is_ascii_graphic());
    if !user_ok(&chap.user) {
        return bad("bad CHAP user name (1 to 255 printable characters, no spaces)");
    }
    if !(MIN_CHAP_SECRET..=MAX_CHAP_SECRET).contains(&chap.secret.len()) {
        return bad("CHAP secret must be 12 to 255 bytes long");
    }
    match (&chap.mutual_user, &chap.mutual_secret) {
        (None, None) => Ok(()),
        (Some(u), Some(s)) => {
            if !user_ok(u) {
                return bad("bad mutual CHAP user name (1 to 255 printable characters, no spaces)");
            }
            if !(MIN_CHAP_SECRET..=MAX_CHAP_SECRET).contains(&s.len()) {
                return bad("mutual CHAP secret must be 12 to 255 bytes long");
            }
            if s == &chap.secret {
                return bad("mutual CHAP secret must differ from the CHAP secret");
            }
            Ok(())
        }
        _ => bad("--mutual-user and --mutual-secret go together"),
    }
}

impl Locked {
    fn save(&self) -> Result<(), ConfigError> {
        let text = toml::to_string(&self.state.registry)
            .map_err(|e| ConfigError::BadArgument(format!("cannot encode registry: {e}")))?;
        write_atomic(&self.state.dir.registry_path(), text.as_bytes(), 0o600)
    }

    fn new_overlay(
        &mut self,
        sub: &str,
        stem: &str,
        image: &ImageName,
        version: u64,
    ) -> Result<String, ConfigError> {
        let base = self.state.open_base(image, version)?;
        let serial = self.state.registry.next_serial();
        let rel = format!("{sub}/{stem}.{serial}.ovl");
        let path = self.state.dir.path(&rel);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io_write(d))?;
        }
        Overlay::create_at(&path, base, DEFAULT_BLOCK_SIZE)?;
        Ok(rel)
    }

    /// Remove a file the registry no longer points at (best effort: an orphan wastes space,
    /// nothing more).
    fn forget(&self, rel: &str) {
        let p = self.state.dir.path(rel);
        if std::fs::remove_file(&p).is_ok() {
            if let Some(d) = p.parent() {
                let _ = sync_dir(d);
            }
        }
    }

    /// Save the registry; on failure remove files created for it.
    fn save_or_forget(&self, created: &[&str]) -> Result<(), ConfigError> {
        let r = self.save();
        if r.is_err() {
            for rel in created {
                self.forget(rel);
            }
        }
        r
    }

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
        let version = image
            .newest()
            .map(|v| v.number)
            .ok_or_else(|| ConfigError::UnknownImage(format!("{} (no versions)", req.image)))?;
        if let Some(ip) = req.ip {
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
            if let Some(c) = st.registry.clients.iter().find(|c| c.ip == Some(ip)) {
                return Err(ConfigError::IpTaken {
                    ip,
                    by: format!("client {}", c.name),
                });
            }
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
        let rel = self.new_overlay("overlays", name.as_str(), &req.image, version)?;
        let client = Client {
            name,
            mac: req.mac,
            ip: req.ip,
            image: req.image,
            version,
            mode: req.mode,
            initiators,
            overlay: rel.clone(),
            created: now_unix(),
            chap: req.chap,
        };
        self.state.registry.clients.push(client.clone());
        self.save_or_forget(&[&rel])?;
        Ok(client)
    }

    /// Remove a client; with `keep_overlay` its overlay file stays (its path is returned).
    pub fn remove_client(
        &mut self,
        which: &str,
        keep_overlay: bool,
    ) -> Result<(Client, Option<PathBuf>), ConfigError> {
        let c = self.state.client(which)?.clone();
        self.state.registry.clients.retain(|x| x.name != c.name);
        self.save()?;
        if keep_overlay {
            Ok((c.clone(), Some(self.state.dir.path(&c.overlay))))
        } else {
            self.forget(&c.overlay);
            Ok((c, None))
        }
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
        let rel = self.new_overlay("overlays", c.name.as_str(), &c.image, newest)?;
        let mut updated = c.clone();
        updated.overlay = rel.clone();
        updated.version = newest;
        for x in self.state.registry.clients.iter_mut() {
            if x.name == c.name {
                *x = updated.clone();
            }
        }
        self.save_or_forget(&[&rel])?;
        self.forget(&c.overlay);
        Ok(updated)
    }

    /// Remove an image and all its versions; refused while a client or maintenance uses it.
    pub fn image_remove(&mut self, name: &ImageName) -> Result<Image, ConfigError> {
        let img = self.state.image(name)?.clone();
        let mut users = self.state.clients_using(name, None);
        if img.maintenance.is_some() {
            users.push("an open maintenance session (image abort)".into());
        }
        if !users.is_empty() {
            return Err(ConfigError::ImageInUse {
                image: name.to_string(),
                users: users.join(", "),
            });
        }
        self.state.registry.images.retain(|i| &i.name != name);
        self.save()?;
        for v in &img.versions {
            self.forget(&v.file);
        }
        let _ = std::fs::remove_dir(self.state.dir.path(&format!("images/{name}")));
        Ok(img)
    }

    /// Open maintenance: a writable overlay on the newest version, served as
    /// `<prefix>:maint:<image>`.
    pub fn image_edit(
        &mut self,
        name: &ImageName,
        mac: Option<MacAddr>,
        initiators: Vec<Iqn>,
    ) -> Result<Maintenance, ConfigError> {
        let img = self.state.image(name)?.clone();
        if img.maintenance.is_some() {
            return Err(ConfigError::MaintenanceOpen(name.to_string()));
        }
        let from = img
            .newest()
            .map(|v| v.number)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))?;
        let initiators = if initiators.is_empty() {
            vec![self.state.default_initiator(&format!("maint:{name}"))]
        } else {
            initiators
        };
        let rel = self.new_overlay("maint", name.as_str(), name, from)?;
        let m = Maintenance {
            from_version: from,
            overlay: rel.clone(),
            initiators,
            mac,
            started: now_unix(),
        };
        if let Some(i) = self.state.registry.image_mut(name) {
            i.maintenance = Some(m.clone());
        }
        self.save_or_forget(&[&rel])?;
        Ok(m)
    }

    /// The open maintenance of `name`; unless `force`, refused while logged in, and with
    /// `settle`, after the running server has flushed it.
    fn maintenance(
        &self,
        name: &ImageName,
        force: bool,
        settle: bool,
    ) -> Result<Maintenance, ConfigError> {
        let img = self.state.image(name)?;
        let m = img
            .maintenance
            .clone()
            .ok_or_else(|| ConfigError::NoMaintenance(name.to_string()))?;
        if !force {
            let s = self.state.sessions_of(&self.state.maintenance_iqn(name));
            if !s.is_empty() {
                let from: Vec<String> = s.iter().map(|s| s.peer.clone()).collect();
                return Err(ConfigError::LoggedIn {
                    what: format!("maintenance target of {name}"),
                    from: from.join(", "),
                });
            }
        }
        if !force && settle {
            // A session that just ended may have left map changes in the server's memory
            // (it flushes overlays nobody uses every second): wait for a status the server
            // wrote after this point that shows the maintenance disk idle and flushed.
            let iqn = self.state.maintenance_iqn(name);
            let path = self.state.dir.status_path();
            let t0 = super::now_unix_ms();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while let Some(s) = ServerStatus::load_live(&path) {
                if s.updated_ms > t0 {
                    match s.target(iqn.as_str()) {
                        Some(t) if !t.sessions.is_empty() => {
                            let from: Vec<String> =
                                t.sessions.iter().map(|s| s.peer.clone()).collect();
                            return Err(ConfigError::LoggedIn {
                                what: format!("maintenance target of {name}"),
                                from: from.join(", "),
                            });
                        }
                        Some(t) if t.unflushed => {}
                        _ => break,
                    }
                }
                if std::time::Instant::now() > until {
                    return Err(ConfigError::Unflushed(name.to_string()));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Ok(m)
    }

    /// Drop the maintenance view and its writes.
    pub fn image_abort(
        &mut self,
        name: &ImageName,
        force: bool,
    ) -> Result<Maintenance, ConfigError> {
        let m = self.maintenance(name, force, false)?;
        if let Some(i) = self.state.registry.image_mut(name) {
            i.maintenance = None;
        }
        self.save()?;
        self.forget(&m.overlay);
        Ok(m)
    }

    /// Delete versions no client uses, except each image's newest and a version under
    /// maintenance. Returns what was deleted.
    pub fn image_prune(
        &mut self,
        only: Option<&ImageName>,
    ) -> Result<Vec<(ImageName, u64)>, ConfigError> {
        if let Some(n) = only {
            self.state.image(n)?;
        }
        let mut gone = Vec::new();
        let mut files = Vec::new();
        let used: Vec<(ImageName, u64)> = self
            .state
            .registry
            .clients
            .iter()
            .map(|c| (c.image.clone(), c.version))
            .collect();
        for img in self.state.registry.images.iter_mut() {
            if only.is_some_and(|n| n != &img.name) {
                continue;
            }
            let newest = img.newest().map(|v| v.number);
            let maint = img.maintenance.as_ref().map(|m| m.from_version);
            let name = img.name.clone();
            img.versions.retain(|v| {
                let keep = Some(v.number) == newest
                    || Some(v.number) == maint
                    || used.iter().any(|(i, n)| i == &name && *n == v.number);
                if !keep {
                    gone.push((name.clone(), v.number));
                    files.push(v.file.clone());
                }
                keep
            });
        }
        if gone.is_empty() {
            return Ok(gone);
        }
        self.save()?;
        for f in &files {
            self.forget(f);
        }
        Ok(gone)
    }
}
