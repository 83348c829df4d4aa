//! The state directory and every change to it. Readers take a [`State`] snapshot
//! ([`StateDir::load`]); writers take the directory lock ([`StateDir::lock`]), validate
//! everything, then change files so that each step is atomic and the registry rename is the
//! commit point: new files are created before the registry points at them, old files are
//! removed after it stops pointing at them.

//!
//! Files, by what they own: `clients.rs` (add, remove, reset, power-on), `images.rs` (import,
//! publish, remove, prune), `maintenance.rs` (edit, commit, abort), `lock.rs` (the directory
//! lock and the one-server lock), `poll.rs` (what a running server reports in its status
//! file), `nextboot.rs` (what a client boots next: `isboot boot`). This file: the directory layout, loading, and what every change shares.

mod binding;
mod clients;
mod images;
mod lock;
mod maintenance;
mod nextboot;
mod poll;
#[cfg(feature = "rbd")]
pub mod rbd;
pub mod shared;

pub use binding::{Bound, BoundAddress, Origin};
pub use clients::{AddClient, MAX_CHAP_SECRET, MIN_CHAP_SECRET, validate_chap};
pub use nextboot::{BootAction, BootChange, NextBoot};

use super::file::Config;
use super::names::{ClientName, ImageName, Iqn, MacAddr, Subnet};
use super::registry::{Chap, Client, ClientImage, Image, Registry, Version};
use super::secret::{read_secret_file, secret_path};
use super::{ConfigError, now_unix, sync_dir, write_atomic};
use crate::store::base::{BaseId, BaseImage, Published};
use crate::store::overlay::{DEFAULT_BLOCK_SIZE, Overlay};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The shared state's lock in the pool, when the state is shared.
    #[cfg(feature = "rbd")]
    shared: Option<shared::Held>,
}

/// What a target serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Client(ClientName),
    Maintenance(ImageName),
    /// Another image a client may boot from its menu (`isboot boot --allow-image`).
    ClientImage(ClientName, ImageName),
}

impl TargetKind {
    /// Its kind and name as `isboot status` shows them: `client pc1`, `maintenance deb`,
    /// `image pc1:deb2`.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            TargetKind::Client(n) => ("client", n.to_string()),
            TargetKind::Maintenance(i) => ("maintenance", i.to_string()),
            TargetKind::ClientImage(n, i) => ("image", format!("{n}:{i}")),
        }
    }

    /// The client whose disk (or other image) this is; None for a maintenance target.
    pub fn client(&self) -> Option<&ClientName> {
        match self {
            TargetKind::Client(n) | TargetKind::ClientImage(n, _) => Some(n),
            TargetKind::Maintenance(_) => None,
        }
    }
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
    /// The base file as published, when the registry recorded it.
    pub base_published: Option<Published>,
    pub overlay_path: PathBuf,
    /// A client disk on Ceph RBD (`POOL/isboot-client-NAME.SERIAL`) served instead of an
    /// overlay (then `base_path` and `overlay_path` are empty).
    pub rbd: Option<String>,
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
    /// CHAP credentials for iPXE (175.190-193), only in the reply to this MAC's iPXE stage.
    pub chap: Option<Chap>,
}

/// The secret file name (without `.toml`) of an image's maintenance target.
/// The registry's mode: the service's user and group `isboot` (whose members run the CLI)
/// read and replace it; nobody else reads it.
pub const REGISTRY_MODE: u32 = 0o660;

/// The mode of the state directory and its subdirectories: the owner and the group (the
/// service's user and group `isboot`) create files in it; set-group-ID, so every file and
/// directory made in it belongs to that group, whoever of them makes it.
pub const STATE_DIR_MODE: u32 = 0o2770;

/// The mode of a published base image file: nobody writes it, ever (a new version is a new
/// file). Who may read it is settled by the state directory's mode ([`STATE_DIR_MODE`]);
/// the service's user reads it whichever member of group `isboot` published it.
pub const BASE_MODE: u32 = 0o444;

/// Make the base file at `path`, just renamed into place, read-only ([`BASE_MODE`]) and return
/// what identifies it from now on (recorded in its [`Version`](crate::config::Version)).
fn seal_base(path: &Path) -> Result<Published, ConfigError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(BASE_MODE))
        .map_err(io_write(path))?;
    Published::of(path).map_err(|source| ConfigError::Reading {
        path: path.to_path_buf(),
        source,
    })
}

pub fn maint_secret_name(image: &ImageName) -> String {
    format!("maint-{image}")
}

impl StateDir {
    /// Move `staged` (a raw file in this directory) into place as version `number` of `name`
    /// (`images/NAME/vN.raw`), durably and read-only, and return the registry's entry for it
    /// (not yet saved).
    fn place_version_file(
        &self,
        staged: &Path,
        name: &ImageName,
        number: u64,
        size: u64,
    ) -> Result<Version, ConfigError> {
        let dir_rel = format!("images/{name}");
        let rel = format!("{dir_rel}/v{number}.raw");
        let dest = self.path(&rel);
        let file = File::open(staged).map_err(io_write(staged))?;
        file.sync_all().map_err(io_write(staged))?;
        std::fs::rename(staged, &dest).map_err(io_write(&dest))?;
        let published = seal_base(&dest)?;
        let dir = self.path(&dir_rel);
        sync_dir(&dir).map_err(io_write(&dir))?;
        Ok(Version {
            number,
            id: BaseId::random().map_err(io_write(&dest))?.to_string(),
            file: rel,
            size,
            created: now_unix(),
            published: Some(published),
            rbd: None,
        })
    }

    /// The registry's entry for version `number` on RBD (`spec`: `POOL/IMAGE@SNAP`).
    #[cfg(feature = "rbd")]
    fn rbd_version(&self, number: u64, spec: String, size: u64) -> Result<Version, ConfigError> {
        Ok(Version {
            number,
            id: BaseId::random()
                .map_err(io_write(&self.registry_path()))?
                .to_string(),
            file: String::new(),
            size,
            created: now_unix(),
            published: None,
            rbd: Some(spec),
        })
    }
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
        config.listen = listen;
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
        // Group access for the directory's owner group (`isboot` with the package), when this
        // user owns it: an admin's own directory elsewhere keeps the mode it has.
        let mine = |p: &Path| {
            std::fs::metadata(p).is_ok_and(|m| m.uid() == rustix::process::geteuid().as_raw())
        };
        let group_dir = |p: &Path| -> Result<(), ConfigError> {
            if mine(p) {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(STATE_DIR_MODE))
                    .map_err(io_write(p))?;
            }
            Ok(())
        };
        if !existed {
            group_dir(&self.root)?;
        }
        for d in ["images", "overlays", "maint", "run", "tftp"] {
            let p = self.root.join(d);
            std::fs::create_dir_all(&p).map_err(io_write(&p))?;
            group_dir(&p)?;
        }
        let lock = self.root.join(".lock");
        let lock_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_write(&lock))?;
        super::take_dir_group(&lock_file, &self.root);
        let reg = toml::to_string(&Registry::default()).unwrap_or_default();
        write_atomic(&self.registry_path(), reg.as_bytes(), REGISTRY_MODE)?;
        // The config file last: its presence means "initialised".
        write_atomic(&self.config_path(), config.render().as_bytes(), 0o644)?;
        Ok(config)
    }

    /// `registry.toml`: its text and what it says.
    pub fn read_registry(&self) -> Result<(String, Registry), ConfigError> {
        let rp = self.registry_path();
        let text = std::fs::read_to_string(&rp).map_err(|source| ConfigError::Reading {
            path: rp.clone(),
            source,
        })?;
        let registry = toml::from_str(&text).map_err(|e| ConfigError::Parsing {
            path: rp,
            message: e.to_string().trim().replace('\n', " "),
        })?;
        Ok((text, registry))
    }

    /// Read the configuration and registry.
    pub fn load(&self) -> Result<State, ConfigError> {
        let cp = self.config_path();
        if !cp.exists() {
            return Err(ConfigError::NotInitialised(self.root.clone()));
        }
        let config = Config::load(&cp)?;
        let (_, registry) = self.read_registry()?;
        Ok(State {
            dir: self.clone(),
            config,
            registry,
        })
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

    /// The target of image `image` for client `name`: `<prefix>:<client>:image:<image>`
    /// (names have no ':', so it clashes with no client's or maintenance target).
    pub fn client_image_iqn(&self, name: &ClientName, image: &ImageName) -> Iqn {
        self.config
            .iqn_prefix
            .join(&format!("{name}:image:{image}"))
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
                        chap: self.chap_of(&maint_secret_name(&img.name), None).ok()?,
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
            chap: self.chap_of(c.name.as_str(), c.chap.as_ref()).ok()?,
            target,
        })
    }

    /// A target's CHAP credentials: its secret file `secrets/<name>.toml`, else (a client
    /// added before secret files existed) what the registry holds, else none (CHAP off).
    /// An unreadable secret file is an error, never "CHAP off".
    pub fn chap_of(&self, name: &str, legacy: Option<&Chap>) -> Result<Option<Chap>, ConfigError> {
        match read_secret_file(&secret_path(self.dir.root(), name), false)? {
            Some(c) => Ok(Some(c)),
            None => Ok(legacy.cloned()),
        }
    }

    /// Client names whose targets run without CHAP, in registry order.
    pub fn clients_without_chap(&self) -> Vec<String> {
        self.registry
            .clients
            .iter()
            .filter(|c| matches!(self.chap_of(c.name.as_str(), c.chap.as_ref()), Ok(None)))
            .map(|c| c.name.to_string())
            .collect()
    }

    /// Every target to serve.
    pub fn targets(&self) -> Vec<TargetSpec> {
        let mut out = Vec::new();
        for c in &self.registry.clients {
            let Some(v) = self
                .registry
                .image(&c.image)
                .and_then(|i| i.version(c.version))
                // A client of an RBD version is served from its clone; one without is not.
                .filter(|v| v.rbd.is_some() == c.rbd.is_some())
            else {
                continue;
            };
            let Some(id) = BaseId::parse(&v.id) else {
                continue;
            };
            // A secret file that cannot be read: the target is not served (never CHAP off).
            let Ok(chap) = self.chap_of(c.name.as_str(), c.chap.as_ref()) else {
                continue;
            };
            out.push(TargetSpec {
                iqn: self.target_iqn(&c.name),
                kind: TargetKind::Client(c.name.clone()),
                image: c.image.clone(),
                version: c.version,
                base_path: self.dir.path(&v.file),
                base_id: id,
                base_published: v.published,
                overlay_path: self.dir.path(&c.overlay),
                rbd: c.rbd.clone(),
                initiators: c.initiators.clone(),
                chap: chap.clone(),
            });
            // The other images it may boot: the client's initiators and CHAP, own overlays
            // (file versions only).
            for a in &c.allowed_images {
                let Some((v, id)) = self.client_image_base(a) else {
                    continue;
                };
                out.push(TargetSpec {
                    iqn: self.client_image_iqn(&c.name, &a.image),
                    kind: TargetKind::ClientImage(c.name.clone(), a.image.clone()),
                    image: a.image.clone(),
                    version: a.version,
                    base_path: self.dir.path(&v.file),
                    base_id: id,
                    base_published: v.published,
                    overlay_path: self.dir.path(&a.overlay),
                    rbd: a.rbd.clone(),
                    initiators: c.initiators.clone(),
                    chap: chap.clone(),
                });
            }
        }
        for img in &self.registry.images {
            let Some(m) = img.maintenance.as_ref().filter(|m| !m.committing) else {
                continue;
            };
            // An edit on RBD is served from its clone; one on a file version from its overlay.
            let Some(v) = img
                .version(m.from_version)
                .filter(|v| v.rbd.is_some() == m.rbd.is_some())
            else {
                continue;
            };
            let Some(id) = BaseId::parse(&v.id) else {
                continue;
            };
            let Ok(chap) = self.chap_of(&maint_secret_name(&img.name), None) else {
                continue;
            };
            out.push(TargetSpec {
                iqn: self.maintenance_iqn(&img.name),
                kind: TargetKind::Maintenance(img.name.clone()),
                image: img.name.clone(),
                version: m.from_version,
                base_path: self.dir.path(&v.file),
                base_id: id,
                base_published: v.published,
                overlay_path: self.dir.path(&m.overlay),
                rbd: m.rbd.clone(),
                initiators: m.initiators.clone(),
                chap,
            });
        }
        out
    }

    /// The base version a client's other image is served on, with a good id (None: not
    /// served; a version on Ceph RBD is served from the clone, a file version from the file).
    pub fn client_image_base(&self, a: &ClientImage) -> Option<(&super::Version, BaseId)> {
        self.registry
            .image(&a.image)
            .and_then(|i| i.version(a.version))
            .filter(|v| v.rbd.is_some() == a.rbd.is_some())
            .and_then(|v| Some((v, BaseId::parse(&v.id)?)))
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

    /// Names of clients allowed to boot `image` as another image (`--allow-image`).
    pub fn clients_allowing(&self, image: &ImageName) -> Vec<String> {
        self.registry
            .clients
            .iter()
            .filter(|c| c.allowed_image(image).is_some())
            .map(|c| format!("{} (isboot boot {} --forbid-image {image})", c.name, c.name))
            .collect()
    }

    fn image(&self, name: &ImageName) -> Result<&Image, ConfigError> {
        self.registry
            .image(name)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))
    }

    /// The overlay quota of client `name`, bytes: its own `quota_mib` if set (0: none), else
    /// `[limits] client_quota_mib`.
    pub fn client_quota(&self, name: &ClientName) -> Option<u64> {
        match self.registry.clients.iter().find(|c| &c.name == name) {
            Some(Client {
                quota_mib: Some(m), ..
            }) => Some(*m)
                .filter(|&m| m > 0)
                .map(|m| m.saturating_mul(1 << 20)),
            _ => self.config.limits.client_quota(),
        }
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
        v.file_only(image)?;
        let id = BaseId::parse(&v.id).ok_or_else(|| ConfigError::Parsing {
            path: self.dir.registry_path(),
            message: format!("image {image} version {number} has a bad id"),
        })?;
        Ok(Arc::new(BaseImage::open_published(
            &self.dir.path(&v.file),
            id,
            number,
            v.published.as_ref(),
        )?))
    }
}

impl Locked {
    fn save(&mut self) -> Result<(), ConfigError> {
        let text = toml::to_string(&self.state.registry)
            .map_err(|e| ConfigError::BadArgument(format!("cannot encode registry: {e}")))?;
        write_atomic(
            &self.state.dir.registry_path(),
            text.as_bytes(),
            REGISTRY_MODE,
        )?;
        #[cfg(feature = "rbd")]
        self.push_shared()?;
        Ok(())
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

    /// A new disk for client `stem` on `image` version `version`: an overlay file (its path
    /// relative to the state directory, and `None`), or for a version on Ceph RBD a clone in
    /// the pool (an empty path and the clone's spec).
    fn new_client_disk(
        &mut self,
        stem: &str,
        image: &ImageName,
        version: u64,
    ) -> Result<(String, Option<String>), ConfigError> {
        let v = self
            .state
            .image(image)?
            .version(version)
            .ok_or_else(|| ConfigError::UnknownImage(format!("{image} version {version}")))?;
        let Some(_base) = &v.rbd else {
            return Ok((self.new_overlay("overlays", stem, image, version)?, None));
        };
        #[cfg(feature = "rbd")]
        return Ok((
            String::new(),
            Some(self.new_rbd_disk(stem, image, version)?),
        ));
        #[cfg(not(feature = "rbd"))]
        Err(ConfigError::BadArgument(format!(
            "image {image} version {version} is on Ceph RBD ({_base}): client disks on it need \
             an isboot built with --features rbd"
        )))
    }

    /// Remove a client's disk once the registry no longer points at it (best effort): its
    /// overlay file, or its clone in the pool (a clone a running server still has open is
    /// removed by that server when it closes it).
    fn forget_client_disk(&self, c: &Client) {
        if !c.overlay.is_empty() {
            self.forget(&c.overlay);
        }
        #[cfg(feature = "rbd")]
        if let Some(spec) = &c.rbd {
            rbd::remove_disk(&self.state.config.store, spec);
        }
    }

    /// Remove a client's other image once the registry no longer points at it (best effort):
    /// its overlay file or its clone.
    fn forget_client_image(&self, a: &ClientImage) {
        self.forget(&a.overlay);
        #[cfg(feature = "rbd")]
        if let Some(spec) = &a.rbd {
            rbd::remove_disk(&self.state.config.store, spec);
        }
    }

    /// Remove a file the registry no longer points at (best effort: an orphan wastes space,
    /// nothing more).
    fn forget(&self, rel: &str) {
        if rel.is_empty() {
            return; // a disk on RBD has no file
        }
        let p = self.state.dir.path(rel);
        if std::fs::remove_file(&p).is_ok() {
            if let Some(d) = p.parent() {
                let _ = sync_dir(d);
            }
        }
    }

    /// Save the registry; on failure remove files created for it.
    fn save_or_forget(&mut self, created: &[&str]) -> Result<(), ConfigError> {
        let r = self.save();
        if r.is_err() {
            for rel in created {
                self.forget(rel);
            }
        }
        r
    }
}
