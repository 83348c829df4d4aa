//! What `isboot status --json` and `isboot list-clients --json` print, and what the running
//! server's status API serves (`GET /api/v1/status`, `GET /api/v1/clients`): one schema,
//! built here from a [`State`] and, for traffic and sessions, a server's [`ServerStatus`].
//! No secrets: CHAP user names appear, secrets only in `show-client --show-secrets`.

use super::registry::{Chap, Client};
use super::state::{State, TargetKind};
use super::status::{ServerStatus, SessionStatus};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One registered client (`list-clients --json`, `GET /api/v1/clients`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    pub name: String,
    pub mac: String,
    pub ip: Option<String>,
    pub image: String,
    pub version: u64,
    /// "persistent" or "reset".
    pub mode: String,
    pub target: String,
    pub initiators: Vec<String>,
    pub root_path: Option<String>,
    pub chap: ChapView,
    /// Path of the client's overlay file (empty for a disk on Ceph RBD: see `rbd`).
    pub overlay: String,
    /// Bytes the overlay occupies on disk (0 for a disk on RBD).
    pub overlay_bytes: u64,
    /// The client's disk on Ceph RBD (`POOL/isboot-client-NAME.SERIAL`), if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<String>,
    /// Where the client's target accepts logins from, and why (the running server's view:
    /// reservation, lease, seen; without a server, the reservation only).
    pub bound: super::Bound,
    /// What the client boots next (`isboot boot`).
    pub boot: BootView,
    /// The client's overlay quota, bytes (its own, else `[limits] client_quota_mib`; none:
    /// no quota).
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// The quota is the client's own (`set-client --quota-mib`), not the `[limits]` default.
    #[serde(default)]
    pub quota_own: bool,
    /// Other images it may boot from its menu (`isboot boot --allow-image`).
    #[serde(default)]
    pub allowed_images: Vec<ClientImageView>,
}

/// Another image a client may boot (`image:NAME`): its own target and overlay, the client's
/// CHAP and address rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientImageView {
    pub image: String,
    pub version: u64,
    pub target: String,
    pub root_path: Option<String>,
    /// Path of its overlay file, and the bytes it occupies on disk.
    pub overlay: String,
    pub overlay_bytes: u64,
}

impl ClientImageView {
    pub fn of(st: &State, c: &Client) -> Vec<ClientImageView> {
        c.allowed_images
            .iter()
            .map(|a| {
                let target = st.client_image_iqn(&c.name, &a.image);
                let path = st.dir.path(&a.overlay);
                ClientImageView {
                    image: a.image.to_string(),
                    version: a.version,
                    root_path: st.config.root_path(&target),
                    target: target.to_string(),
                    overlay: path.display().to_string(),
                    overlay_bytes: on_disk(&path),
                }
            })
            .collect()
    }
}

/// A client's boot settings: `next` (one-shot, cleared once served), `default` (what it boots
/// otherwise; `disk` unless set), `menu` (whether its iPXE script shows the menu).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootView {
    pub next: Option<String>,
    pub default: String,
    pub menu: bool,
}

impl BootView {
    pub fn of(c: &Client) -> BootView {
        BootView {
            next: c.boot.next.as_ref().map(|a| a.to_string()),
            default: c
                .boot
                .default
                .as_ref()
                .map_or_else(|| "disk".to_string(), |a| a.to_string()),
            menu: c.boot.menu.unwrap_or(false),
        }
    }

    /// One line for `show-client` and `isboot boot`: `memtest once, then disk; menu off`.
    pub fn describe(&self) -> String {
        let menu = if self.menu { "on" } else { "off" };
        match &self.next {
            Some(n) => format!("{n} once, then {}; menu {menu}", self.default),
            None => format!("{}; menu {menu}", self.default),
        }
    }
}

/// Whether and how a target authenticates its initiator. Secrets only with
/// [`ChapView::reveal`] (`show-client --show-secrets`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapView {
    pub enabled: bool,
    pub user: Option<String>,
    pub mutual: bool,
    /// The secret file could not be read: the target is not served until it is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The user who asked may not read the secret file (root and the service's user only,
    /// mode 0600): CHAP is on, its user and secrets are not known here. Not an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restricted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

impl ChapView {
    /// The CHAP state of a target, without secrets.
    pub fn of(st: &State, name: &str, legacy: Option<&Chap>) -> ChapView {
        let (chap, error, restricted) = match st.chap_of(name, legacy) {
            Ok(c) => (c, None, false),
            Err(e) if e.is_permission_denied() => (None, None, true),
            Err(e) => (None, Some(e.to_string()), false),
        };
        ChapView {
            enabled: chap.is_some() || error.is_some() || restricted,
            user: chap.as_ref().map(|c| c.user.clone()),
            mutual: chap.as_ref().is_some_and(|c| c.mutual_secret.is_some()),
            error,
            restricted,
            secret: None,
            mutual_user: None,
            mutual_secret: None,
        }
    }

    /// The same, with the secrets (only for `show-client --show-secrets`).
    pub fn reveal(st: &State, name: &str, legacy: Option<&Chap>) -> ChapView {
        let mut v = ChapView::of(st, name, legacy);
        if let Ok(Some(c)) = st.chap_of(name, legacy) {
            v.secret = Some(c.secret.expose().to_string());
            v.mutual_user = c.mutual_user.clone();
            v.mutual_secret = c.mutual_secret.as_ref().map(|s| s.expose().to_string());
        }
        v
    }
}

/// Bytes a file occupies on disk (0 when it cannot be read).
fn on_disk(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl ClientView {
    /// Client `c`, with where its target accepts logins from as `live` (a running server's
    /// status) says, else from the state files.
    pub fn of(st: &State, c: &Client, live: Option<&ServerStatus>) -> ClientView {
        // A disk on RBD has no overlay file (its `overlay` is empty: not the directory).
        let path = (c.rbd.is_none()).then(|| st.dir.path(&c.overlay));
        let target = st.target_iqn(&c.name);
        let bound = live.and_then(|s| s.target(target.as_str())).map_or_else(
            || st.bound_offline(&TargetKind::Client(c.name.clone())),
            |t| t.bound.clone(),
        );
        ClientView {
            name: c.name.to_string(),
            mac: c.mac.to_string(),
            ip: c.ip.map(|i| i.to_string()),
            image: c.image.to_string(),
            version: c.version,
            mode: c.mode.to_string(),
            target: target.to_string(),
            initiators: c.initiators.iter().map(|i| i.to_string()).collect(),
            root_path: st.client_root_path(c),
            chap: ChapView::of(st, c.name.as_str(), c.chap.as_ref()),
            overlay: path
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            overlay_bytes: path.as_deref().map_or(0, on_disk),
            rbd: c.rbd.clone(),
            bound,
            boot: BootView::of(c),
            quota_bytes: st.client_quota(&c.name),
            quota_own: c.quota_mib.is_some(),
            allowed_images: ClientImageView::of(st, c),
        }
    }

    /// Every registered client, in registry order.
    pub fn all(st: &State, live: Option<&ServerStatus>) -> Vec<ClientView> {
        st.registry
            .clients
            .iter()
            .map(|c| ClientView::of(st, c, live))
            .collect()
    }
}

/// One served disk (a client's, or an image's maintenance disk) in [`StatusView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    /// Client name, or image name for a maintenance disk.
    pub name: String,
    /// "client", "maintenance" or "image" (a client's other image, named `CLIENT:IMAGE`).
    pub kind: String,
    pub target: String,
    pub logged_in: bool,
    pub sessions: Vec<SessionStatus>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub overlay_bytes: u64,
    /// Bytes of data the overlay holds: what the quota counts.
    pub overlay_data_bytes: u64,
    /// The client's overlay quota, if one is set (`[limits] client_quota_mib`).
    pub quota_bytes: Option<u64>,
    /// Its last write that needed space was refused for the quota (live server only).
    pub over_quota: bool,
    pub image: String,
    pub base_version: u64,
    /// The server's view of this disk hit an I/O error and refuses writes.
    pub disk_error: bool,
    /// The target asks for CHAP.
    pub chap: bool,
    /// Where the target accepts logins from, and why (from the running server, else from the
    /// state files: reservations and stated addresses only).
    pub bound: super::Bound,
}

/// `isboot status --json`, `GET /api/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub server_running: bool,
    /// The iSCSI listen address of the running server.
    pub listen: Option<String>,
    pub targets: Vec<StatusRow>,
    pub total_sessions: usize,
    pub total_bytes_read: u64,
    pub total_bytes_written: u64,
    pub total_overlay_bytes: u64,
    /// Space on the state directory's file system, where the overlays grow.
    pub state_fs: Option<super::Space>,
    /// Clients whose targets run without CHAP (`add-client --no-chap`, or added before CHAP
    /// was the default; `isboot set-client NAME --chap` turns it on).
    pub clients_without_chap: Vec<String>,
}

impl StatusView {
    /// The disks `st` defines, with sessions and traffic from `live` (the running server's
    /// status; None when no server runs).
    pub fn of(st: &State, live: Option<&ServerStatus>) -> StatusView {
        let rows: Vec<StatusRow> = st
            .targets()
            .into_iter()
            .map(|spec| {
                let t = live.and_then(|s| s.target(spec.iqn.as_str()));
                let (kind, name) = spec.kind.describe();
                StatusRow {
                    name,
                    kind: kind.into(),
                    target: spec.iqn.to_string(),
                    logged_in: t.is_some_and(|t| !t.sessions.is_empty()),
                    sessions: t.map(|t| t.sessions.clone()).unwrap_or_default(),
                    bytes_read: t.map_or(0, |t| t.bytes_read),
                    bytes_written: t.map_or(0, |t| t.bytes_written),
                    // A disk on RBD has no overlay file (its path is the directory's).
                    overlay_bytes: match &spec.rbd {
                        Some(_) => 0,
                        None => on_disk(&spec.overlay_path),
                    },
                    overlay_data_bytes: match (t, &spec.rbd) {
                        (Some(t), _) => t.overlay_data_bytes,
                        (None, Some(_)) => 0,
                        (None, None) => {
                            crate::store::overlay::Overlay::usage_at(&spec.overlay_path)
                                .map_or(0, |u| u.data_blocks * u64::from(u.block_size))
                        }
                    },
                    quota_bytes: match (t, &spec.kind) {
                        (Some(t), _) => t.quota_bytes,
                        (None, kind) => kind.client().and_then(|n| st.client_quota(n)),
                    },
                    over_quota: t.is_some_and(|t| t.over_quota),
                    image: spec.image.to_string(),
                    base_version: spec.version,
                    disk_error: t.is_some_and(|t| t.failed),
                    chap: spec.chap.is_some(),
                    bound: t.map_or_else(|| st.bound_offline(&spec.kind), |t| t.bound.clone()),
                }
            })
            .collect();
        StatusView {
            server_running: live.is_some(),
            listen: live.map(|s| s.listen.clone()),
            total_sessions: rows.iter().map(|r| r.sessions.len()).sum(),
            total_bytes_read: rows.iter().map(|r| r.bytes_read).sum(),
            total_bytes_written: rows.iter().map(|r| r.bytes_written).sum(),
            total_overlay_bytes: rows.iter().map(|r| r.overlay_bytes).sum(),
            state_fs: super::Space::of(st.dir.root(), st.config.limits.space_warning()),
            targets: rows,
            clients_without_chap: st.clients_without_chap(),
        }
    }
}
