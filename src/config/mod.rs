//! The state directory: configuration, client registry, images and their versions, overlays.
//!
//! ```text
//! <state dir>/                      (default /var/lib/isboot, env ISBOOT_STATE_DIR)
//!   isboot.toml                     configuration (commented; the admin may edit it)
//!   registry.toml                   images, versions, clients (mode 0600)
//!   secrets/<target>.toml           CHAP credentials per target (0600, directory 0700)
//!   images/<image>/v<N>.raw         published base versions (immutable)
//!   overlays/<client>.<serial>.ovl  per-client copy-on-write overlays
//!   maint/<image>.<serial>.ovl      maintenance overlay while `image edit` is open
//!   run/status.json                 written every second by `isboot serve`
//!   tftp/                           TFTP root
//!   .lock                           flock(2) serialising changes
//! ```
//! Every change is atomic: files are written to a temp name, fsynced, renamed into place, and
//! the directory fsynced. Commands validate everything before changing anything. No sockets
//! here; `service::registry` turns a [`State`] into iSCSI targets.

pub mod file;
pub mod fleet;
pub mod import;
pub mod installer;
pub mod limits;
pub mod names;
pub mod registry;
pub mod report;
pub mod secret;
pub mod state;
pub mod status;
pub mod store;

pub use file::{BootListen, Config, HttpConfig};
pub use installer::{AnswerKind, Installer};
pub use names::{ClientName, ImageName, Iqn, MacAddr, Net, Subnet};
pub use registry::{Chap, Client, ClientImage, Image, Maintenance, Mode, Registry, Version};
pub use report::{BootView, ChapView, ClientImageView, ClientView, StatusRow, StatusView};
pub use secret::Secret;
pub use state::{
    AddClient, BootAction, BootChange, BootTarget, Bound, BoundAddress, NextBoot, Origin, State,
    StateDir, TargetKind, TargetSpec, maint_secret_name,
};
pub use status::{ServerStatus, SessionStatus, Space, TargetStatus};
pub use store::{Backend, StoreConfig};

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors of the config layer. [`ConfigError::is_bad_argument`] tells the CLI which exit code
/// to use (2: the command line asked for something invalid; 1: anything else).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    BadArgument(String),
    #[error("client name {0} is taken")]
    NameTaken(String),
    #[error("MAC address {mac} is taken by client {client}")]
    MacTaken { mac: MacAddr, client: String },
    #[error("iSCSI name {iqn} is taken by {by}")]
    IqnTaken { iqn: String, by: String },
    #[error("IP address {ip} is taken by {by}")]
    IpTaken { ip: std::net::Ipv4Addr, by: String },
    #[error("IP address {ip} is outside the subnet {subnet}")]
    IpOutsideSubnet {
        ip: std::net::Ipv4Addr,
        subnet: Subnet,
    },
    #[error("unknown image {0}")]
    UnknownImage(String),
    #[error("unknown client {0}")]
    UnknownClient(String),
    #[error("image {0} already exists")]
    ImageExists(String),
    #[error("state directory {path} is not writable: {source}")]
    NotWritable { path: PathBuf, source: io::Error },
    #[error("state directory {0} is not initialised (run `isboot init`)")]
    NotInitialised(PathBuf),
    #[error("state directory {0} is already initialised")]
    AlreadyInitialised(PathBuf),
    #[error("image {image} is in use by {users}")]
    ImageInUse { image: String, users: String },
    #[error("{what} is logged in from {from}; use --force to end its session")]
    LoggedIn { what: String, from: String },
    #[error("image {0} is already being edited (commit or abort it first)")]
    MaintenanceOpen(String),
    #[error("image {0} is not being edited (run `isboot image edit {0}` first)")]
    NoMaintenance(String),
    #[error("another isboot serve (pid {0}) is running on this state directory")]
    ServerRunning(String),
    #[error("isboot serve has not flushed the maintenance disk of {0} yet; try again")]
    Unflushed(String),
    #[error("reading {path}: {source}")]
    Reading { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {message}")]
    Parsing { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Writing { path: PathBuf, source: io::Error },
    #[error("importing {path}: {message}")]
    Importing { path: PathBuf, message: String },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl ConfigError {
    /// True for errors caused by what the command line asked (exit code 2).
    pub fn is_bad_argument(&self) -> bool {
        matches!(
            self,
            ConfigError::BadArgument(_)
                | ConfigError::NameTaken(_)
                | ConfigError::MacTaken { .. }
                | ConfigError::IqnTaken { .. }
                | ConfigError::IpTaken { .. }
                | ConfigError::IpOutsideSubnet { .. }
                | ConfigError::UnknownImage(_)
                | ConfigError::UnknownClient(_)
                | ConfigError::ImageExists(_)
                | ConfigError::NotWritable { .. }
                | ConfigError::NotInitialised(_)
                | ConfigError::AlreadyInitialised(_)
        )
    }

    /// True when a file could not be read because this user may not read it (EACCES).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, ConfigError::Reading { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied)
    }
}

/// fsync a directory (makes a rename or unlink in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `data` atomically: write `.name.tmp`, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Writing {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given at creation is masked by the umask; set it exactly.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        take_dir_group(&f, dir);
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(err)
}

/// Give `file` (just created in `dir`) the group of `dir`, as a set-group-ID directory would:
/// in the state directory that is group `isboot`, so the service's user and the group's
/// members keep access to what root or a member creates (systemd's StateDirectory= leaves the
/// top directory without the set-group-ID bit). Best effort: a user outside that group keeps
/// its own, and the directory's mode keeps everyone else out.
pub fn take_dir_group(file: &File, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Ok(f)) = (std::fs::metadata(dir), file.metadata()) else {
        return;
    };
    if d.gid() != f.gid() {
        let _ = std::os::unix::fs::fchown(file, None::<u32>, Some(d.gid()));
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
