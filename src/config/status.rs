//! `run/status.json`: what a running `isboot serve` publishes every second (sessions and
//! counters per target), read by `isboot status` and by commands that must know whether a
//! client is logged in.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// A status file older than this is from a server that is gone.
pub const STALE_AFTER_SECS: u64 = 5;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub pid: u32,
    /// Unix seconds of the last update.
    pub updated: u64,
    /// Unix milliseconds taken before the targets were looked at (a status with
    /// `updated_ms > t` describes the server after time `t`).
    #[serde(default)]
    pub updated_ms: u64,
    pub listen: String,
    /// Where the admin HTTP routes (metrics, status API) listen, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Where the boot routes (iPXE scripts, boot files) listen, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_http: Option<String>,
    pub targets: Vec<TargetStatus>,
    /// Space on the state directory's file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_fs: Option<Space>,
}

/// Space on the state directory's file system (where the overlays grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Bytes free for isboot (what an unprivileged writer may still use).
    pub free_bytes: u64,
    pub size_bytes: u64,
    /// `[limits] space_warning_mib` in bytes: below it, `status` and the log warn.
    pub warning_bytes: u64,
    /// Free space is below the warning threshold.
    pub low: bool,
}

impl Space {
    /// The file system holding `dir` now, against the threshold `warning_bytes`.
    pub fn of(dir: &Path, warning_bytes: u64) -> Option<Space> {
        let fs = rustix::fs::statvfs(dir).ok()?;
        let free_bytes = fs.f_bavail.saturating_mul(fs.f_frsize);
        Some(Space {
            free_bytes,
            size_bytes: fs.f_blocks.saturating_mul(fs.f_frsize),
            warning_bytes,
            low: free_bytes < warning_bytes,
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub iqn: String,
    /// "client" or "maintenance".
    pub kind: String,
    /// Client name, or image name for a maintenance target.
    pub name: String,
    pub image: String,
    pub base_version: u64,
    pub sessions: Vec<SessionStatus>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Bytes the overlay file occupies on disk.
    pub overlay_bytes: u64,
    /// Bytes of data the overlay holds (its written blocks): what the quota counts.
    #[serde(default)]
    pub overlay_data_bytes: u64,
    /// The overlay's quota (`[limits] client_quota_mib`), if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// The last write that needed space was refused for the quota.
    #[serde(default)]
    pub over_quota: bool,
    /// The server holds map changes for this overlay not yet flushed to its file.
    #[serde(default)]
    pub unflushed: bool,
    /// The overlay hit an I/O error (a full disk, say) and refuses writes until `isboot serve`
    /// restarts or the client is reset.
    #[serde(default)]
    pub failed: bool,
    /// Where the target accepts logins from, and why.
    #[serde(default)]
    pub bound: super::Bound,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub initiator: String,
    pub peer: String,
}

impl ServerStatus {
    /// The status a running server published, if the file exists, parses and is fresh (its
    /// writer is alive and wrote it recently).
    pub fn load_live(path: &Path) -> Option<ServerStatus> {
        let text = std::fs::read_to_string(path).ok()?;
        let s: ServerStatus = serde_json::from_str(&text).ok()?;
        s.is_live(super::now_unix()).then_some(s)
    }

    pub fn is_live(&self, now: u64) -> bool {
        let alive = crate::sys::process_exists(self.pid);
        alive && now.saturating_sub(self.updated) <= STALE_AFTER_SECS
    }

    pub fn target(&self, iqn: &str) -> Option<&TargetStatus> {
        self.targets
            .iter()
            .find(|t| t.iqn.eq_ignore_ascii_case(iqn))
    }
}
