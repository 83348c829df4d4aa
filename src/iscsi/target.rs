//! What the iSCSI layer needs to know about the targets it serves, and what it reports back.
//!
//! A [`TargetRegistry`] is asked, at every login, which targets exist and who may use them; the
//! answer may change between two logins (a client added or removed while `isboot serve` runs).

use crate::scsi::TargetLus;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// CHAP secrets for one target. `mutual` is the (user, secret) the target answers with when the
/// initiator asks it to authenticate itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapConfig {
    pub user: String,
    pub secret: Vec<u8>,
    pub mutual: Option<(String, Vec<u8>)>,
}

/// Secrets never reach logs: Debug shows the user names only.
impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .field("mutual_user", &self.mutual.as_ref().map(|m| &m.0))
            .finish()
    }
}

/// One target as the iSCSI layer serves it.
pub struct TargetConfig {
    /// Target name (IQN), compared case-insensitively as RFC 3722 normalises.
    pub iqn: String,
    /// The logical units behind it.
    pub lus: Arc<TargetLus>,
    /// Initiator names allowed to log in and to see this target in SendTargets; empty = any.
    pub allowed_initiators: Vec<String>,
    /// CHAP required when set.
    pub chap: Option<ChapConfig>,
    /// Shown to discovery sessions (SendTargets) of initiators it accepts; false for
    /// maintenance targets, which nobody discovers.
    pub listed: bool,
    /// Counters and live sessions, for `isboot status`.
    pub stats: Arc<TargetStats>,
}

impl TargetConfig {
    /// May `initiator` use this target?
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

/// Where the iSCSI layer looks targets up. Implemented by `isboot export` (one fixed target)
/// and by the state directory's client registry (`isboot serve`).
pub trait TargetRegistry: Send + Sync + 'static {
    /// The target named `iqn`, if it exists (whoever asks).
    fn lookup(&self, iqn: &str) -> Option<Arc<TargetConfig>>;
    /// Every target (SendTargets filters them with [`TargetConfig::allows`]).
    fn all(&self) -> Vec<Arc<TargetConfig>>;
    /// A login to `iqn` with `isid` has been accepted and its session is about to start: the
    /// registry may start the target afresh first (a reset-mode client's new boot, see
    /// [`boot_firmware_isid`]). Returns true when it did; the caller looks the target up again.
    fn login_accepted(&self, _iqn: &str, _isid: [u8; 6]) -> bool {
        false
    }
    /// The addresses target `iqn` accepts logins and discovery from (see
    /// [`super::access::Binding`]). `isboot export` and plain registries: any.
    fn binding(&self, _iqn: &str) -> super::access::Binding {
        super::access::Binding::Any
    }
    /// Is target `iqn` one machine's disk ("one user at a time", [`super::access::one_user`])?
    /// `isboot export` serves a LUN that several initiators may share (SCSI reservations):
    /// no.
    fn exclusive(&self, _iqn: &str) -> bool {
        false
    }
}

/// Is `isid` the one iPXE uses (IANA enterprise-number format, RFC 7143 10.12.5, with Fen
/// Systems' number 10019)? iPXE logs in once per boot, at its start; the initrd and the OS
/// (open-iscsi) use the OUI format.
pub fn boot_firmware_isid(isid: [u8; 6]) -> bool {
    // Type 01b (IANA EN) in the top two bits, then the 22-bit enterprise number.
    isid[0] & 0xc0 == 0x40
        && u32::from_be_bytes([isid[0] & 0x3f, isid[1], isid[2], isid[3]]) == 10019
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipxe_isid_is_recognised() {
        // iPXE: 0x40000000 | 10019, random qualifier.
        assert!(boot_firmware_isid([0x40, 0x00, 0x27, 0x23, 0x12, 0x34]));
        // open-iscsi's default (OUI format, 00:02:3d).
        assert!(!boot_firmware_isid([0x00, 0x02, 0x3d, 0x00, 0x00, 0x01]));
        assert!(!boot_firmware_isid([0x80, 0x00, 0x27, 0x23, 0x00, 0x00]));
        assert!(!boot_firmware_isid([0x40, 0x00, 0x27, 0x24, 0x00, 0x00]));
    }

    #[test]
    fn chap_debug_hides_secrets() {
        let c = ChapConfig {
            user: "u".into(),
            secret: b"topsecret123".to_vec(),
            mutual: Some(("m".into(), b"othersecret45".to_vec())),
        };
        let d = format!("{c:?}");
        assert!(!d.contains("topsecret") && !d.contains("othersecret") && !d.contains("116, 111"));
        assert!(d.contains("\"u\"") && d.contains("\"m\""));
    }
}

/// A registry holding a fixed list of targets.
pub struct StaticRegistry(pub Vec<Arc<TargetConfig>>);

impl TargetRegistry for StaticRegistry {
    fn lookup(&self, iqn: &str) -> Option<Arc<TargetConfig>> {
        self.0
            .iter()
            .find(|t| t.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }
    fn all(&self) -> Vec<Arc<TargetConfig>> {
        self.0.clone()
    }
}

/// One logged-in session, as shown by `isboot status`.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub initiator: String,
    pub peer: SocketAddr,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// Set by [`TargetStats::drop_sessions`]; the session's connection closes when it sees it.
    pub kill: Arc<AtomicBool>,
}

/// Live counters of one target.
#[derive(Default)]
pub struct TargetStats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub commands: AtomicU64,
    sessions: Mutex<Vec<SessionInfo>>,
    /// Woken when `drop_sessions` is called.
    pub kick: tokio::sync::Notify,
}

impl TargetStats {
    pub fn add_session(&self, s: SessionInfo) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
    }
    pub fn remove_session(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != id);
    }
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Ask every session of this target to close its connection (reset-client --force, remove).
    pub fn drop_sessions(&self) {
        for s in self.sessions() {
            s.kill.store(true, Ordering::SeqCst);
        }
        self.kick.notify_waiters();
    }
}
