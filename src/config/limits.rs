//! The `[limits]` section of `isboot.toml`: every budget that bounds what peers can make the
//! server hold. Keys left out take the defaults below; `isboot serve` reads them at start.

use serde::{Deserialize, Serialize};

/// Connections to the iSCSI port served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections one address may hold (a boot takes three logins in a row: iPXE, the initrd and
/// iscsid, plus a discovery session).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Cap on buffered write data when neither the config nor the machine says less.
pub const DEFAULT_WRITE_BUFFER_MAX: u64 = 1 << 30;
/// The write-buffer budget is never smaller than one command's largest transfer (a command
/// takes its whole buffer at once; one larger than the budget could never run).
pub const MIN_WRITE_BUFFER: u64 = crate::iscsi::session::MAX_TRANSFER_BYTES;
/// Commands one session may have open at once (immediate ones included).
pub const DEFAULT_MAX_TASKS_PER_SESSION: u32 = 128;
/// A discovery session is closed after this long without a request.
pub const DEFAULT_DISCOVERY_IDLE_SECS: u64 = 60;
/// A session that holds write buffers and sends nothing for this long is closed.
pub const DEFAULT_STALLED_WRITE_SECS: u64 = 30;
/// TFTP transfers served at once.
pub const DEFAULT_TFTP_TRANSFERS: usize = 512;
/// TFTP transfers one address may hold.
pub const DEFAULT_TFTP_TRANSFERS_PER_ADDRESS: usize = 8;
/// Largest TFTP `timeout` option acknowledged (RFC 2349); larger requests get the default.
pub const DEFAULT_TFTP_MAX_TIMEOUT_SECS: u64 = 10;
/// A TFTP transfer is ended after this long, finished or not.
pub const DEFAULT_TFTP_TRANSFER_SECS: u64 = 600;
/// Free space on the state file system below which `status` and the log warn.
pub const DEFAULT_SPACE_WARNING_MIB: u64 = 1024;

/// `[limits]`. Every field is optional; the accessors give the effective value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_buffer_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_buffer_per_address_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tasks_per_session: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_idle_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_write_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_transfers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_transfers_per_address: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_max_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_transfer_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_quota_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_warning_mib: Option<u64>,
}

/// Physical memory of this machine, if the kernel says.
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The default write-buffer budget: 1 GiB or 1/8 of the memory, whichever is smaller.
pub fn default_write_buffer() -> u64 {
    physical_memory()
        .map(|m| (m / 8).min(DEFAULT_WRITE_BUFFER_MAX))
        .unwrap_or(DEFAULT_WRITE_BUFFER_MAX)
}

impl Limits {
    pub fn max_connections(&self) -> usize {
        self.max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
            .max(1)
    }
    pub fn max_connections_per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
            .max(1)
    }
    /// Bytes of write data buffered at once, over all connections.
    pub fn write_buffer(&self) -> u64 {
        match self.write_buffer_mib {
            Some(m) => m.saturating_mul(1 << 20),
            None => default_write_buffer(),
        }
        .max(MIN_WRITE_BUFFER)
    }
    /// Bytes of write data the sessions from one peer address may hold at once: a quarter
    /// of [`Limits::write_buffer`] by default, never below the largest single write nor above
    /// the whole.
    pub fn write_buffer_per_address(&self) -> u64 {
        let whole = self.write_buffer();
        match self.write_buffer_per_address_mib {
            Some(m) => m.saturating_mul(1 << 20),
            None => whole / 4,
        }
        .max(MIN_WRITE_BUFFER)
        .min(whole)
    }
    pub fn max_tasks_per_session(&self) -> u32 {
        self.max_tasks_per_session
            .unwrap_or(DEFAULT_MAX_TASKS_PER_SESSION)
            .max(1)
    }
    pub fn discovery_idle_secs(&self) -> u64 {
        self.discovery_idle_secs
            .unwrap_or(DEFAULT_DISCOVERY_IDLE_SECS)
            .max(1)
    }
    pub fn stalled_write_secs(&self) -> u64 {
        self.stalled_write_secs
            .unwrap_or(DEFAULT_STALLED_WRITE_SECS)
            .max(1)
    }
    pub fn tftp_transfers(&self) -> usize {
        self.tftp_transfers.unwrap_or(DEFAULT_TFTP_TRANSFERS).max(1)
    }
    pub fn tftp_transfers_per_address(&self) -> usize {
        self.tftp_transfers_per_address
            .unwrap_or(DEFAULT_TFTP_TRANSFERS_PER_ADDRESS)
            .max(1)
    }
    pub fn tftp_max_timeout_secs(&self) -> u64 {
        self.tftp_max_timeout_secs
            .unwrap_or(DEFAULT_TFTP_MAX_TIMEOUT_SECS)
            .clamp(1, 255)
    }
    pub fn tftp_transfer_secs(&self) -> u64 {
        self.tftp_transfer_secs
            .unwrap_or(DEFAULT_TFTP_TRANSFER_SECS)
            .max(1)
    }
    /// Bytes one client's overlay may hold (None: no quota).
    pub fn client_quota(&self) -> Option<u64> {
        self.client_quota_mib
            .filter(|&m| m > 0)
            .map(|m| m.saturating_mul(1 << 20))
    }
    pub fn space_warning(&self) -> u64 {
        self.space_warning_mib
            .unwrap_or(DEFAULT_SPACE_WARNING_MIB)
            .saturating_mul(1 << 20)
    }

    /// The `[limits]` section as `isboot.toml` carries it: every key with its comment, set keys
    /// as values and the others commented out with their default.
    pub fn render(&self) -> String {
        fn key<T: std::fmt::Display>(s: &mut String, name: &str, set: Option<T>, default: &str) {
            match set {
                Some(v) => s.push_str(&format!("{name} = {v}\n")),
                None => s.push_str(&format!("# {name} = {default}\n")),
            }
        }
        let mut s = String::from(
            "[limits]\n\
             # What peers can make the server hold. Read when `isboot serve` starts.\n\
             # iSCSI connections served at once, and per peer address.\n",
        );
        key(
            &mut s,
            "max_connections",
            self.max_connections,
            &DEFAULT_MAX_CONNECTIONS.to_string(),
        );
        key(
            &mut s,
            "max_connections_per_address",
            self.max_connections_per_address,
            &DEFAULT_MAX_CONNECTIONS_PER_ADDRESS.to_string(),
        );
        s.push_str(
            "# Write data buffered at once over all connections, MiB. When it is spent, no\n\
             # connection gets a new R2T or has its socket read until data is written out.\n\
             # Default: 1024 or 1/8 of the memory, whichever is smaller; at least 32 (the\n\
             # largest single write, which takes its whole buffer at once).\n",
        );
        key(&mut s, "write_buffer_mib", self.write_buffer_mib, "1024");
        s.push_str(
            "# Of that, what the sessions from one peer address may hold, MiB, so peers on one\n\
             # address cannot starve the others. Default: a quarter of write_buffer_mib; at\n\
             # least 32, at most write_buffer_mib. Peers on several addresses can still hold\n\
             # the whole until stalled_write_secs closes their sessions.\n",
        );
        key(
            &mut s,
            "write_buffer_per_address_mib",
            self.write_buffer_per_address_mib,
            "256",
        );
        s.push_str(
            "# Commands one session may have open at once (immediate ones included); more\n\
             # are answered TASK SET FULL.\n",
        );
        key(
            &mut s,
            "max_tasks_per_session",
            self.max_tasks_per_session,
            &DEFAULT_MAX_TASKS_PER_SESSION.to_string(),
        );
        s.push_str("# A discovery session is closed after this many seconds without a request.\n");
        key(
            &mut s,
            "discovery_idle_secs",
            self.discovery_idle_secs,
            &DEFAULT_DISCOVERY_IDLE_SECS.to_string(),
        );
        s.push_str(
            "# A session that holds write buffers and sends nothing for this many seconds is\n\
             # closed (its buffers are given back).\n",
        );
        key(
            &mut s,
            "stalled_write_secs",
            self.stalled_write_secs,
            &DEFAULT_STALLED_WRITE_SECS.to_string(),
        );
        s.push_str("# TFTP transfers at once, and per peer address.\n");
        key(
            &mut s,
            "tftp_transfers",
            self.tftp_transfers,
            &DEFAULT_TFTP_TRANSFERS.to_string(),
        );
        key(
            &mut s,
            "tftp_transfers_per_address",
            self.tftp_transfers_per_address,
            &DEFAULT_TFTP_TRANSFERS_PER_ADDRESS.to_string(),
        );
        s.push_str(
            "# Largest TFTP timeout option accepted, seconds (a larger one is not acknowledged\n\
             # and the server's 1 s is used); every transfer ends after tftp_transfer_secs.\n",
        );
        key(
            &mut s,
            "tftp_max_timeout_secs",
            self.tftp_max_timeout_secs,
            &DEFAULT_TFTP_MAX_TIMEOUT_SECS.to_string(),
        );
        key(
            &mut s,
            "tftp_transfer_secs",
            self.tftp_transfer_secs,
            &DEFAULT_TFTP_TRANSFER_SECS.to_string(),
        );
        s.push_str(
            "# Data one client's overlay may hold, MiB. A write that needs more space gets\n\
             # SPACE ALLOCATION FAILED (the client sees ENOSPC) until the client trims or is\n\
             # reset; other clients go on. Applies to running clients when the file changes.\n\
             # A client's own quota (add-client / set-client --quota-mib) overrides it.\n\
             # Default (and 0): no quota.\n",
        );
        key(&mut s, "client_quota_mib", self.client_quota_mib, "0");
        s.push_str(
            "# Free space on the state file system below which `status` and the log warn, MiB.\n",
        );
        key(
            &mut s,
            "space_warning_mib",
            self.space_warning_mib,
            &DEFAULT_SPACE_WARNING_MIB.to_string(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[limits]` section of a rendered config.
    fn parse(text: &str) -> Limits {
        toml::from_str::<toml::Table>(text)
            .expect("toml")
            .get("limits")
            .cloned()
            .expect("section")
            .try_into()
            .expect("limits")
    }

    #[test]
    fn defaults_render_commented_and_parse_back() {
        let l = Limits::default();
        let text = l.render();
        assert!(text.contains("# max_connections = 1024\n"));
        let back = parse(&text);
        assert_eq!(back, l);
        assert_eq!(l.tftp_transfers_per_address(), 8);
        assert!(l.write_buffer() <= DEFAULT_WRITE_BUFFER_MAX && l.write_buffer() > 0);
        assert!(text.contains("# write_buffer_per_address_mib = 256\n"));
    }

    #[test]
    fn the_per_address_write_share_stays_between_one_write_and_the_whole() {
        let l = |whole: u64, share: Option<u64>| {
            Limits {
                write_buffer_mib: Some(whole),
                write_buffer_per_address_mib: share,
                ..Default::default()
            }
            .write_buffer_per_address()
                >> 20
        };
        assert_eq!(l(1024, None), 256, "a quarter");
        assert_eq!(l(64, None), 32, "at least the largest write");
        assert_eq!(l(64, Some(1)), 32);
        assert_eq!(l(64, Some(100)), 64, "at most the whole");
        assert_eq!(l(512, Some(200)), 200);
    }

    #[test]
    fn set_values_round_trip_and_unknown_keys_are_refused() {
        let l = Limits {
            write_buffer_mib: Some(64),
            tftp_max_timeout_secs: Some(1000),
            ..Default::default()
        };
        let text = l.render();
        assert!(text.contains("\nwrite_buffer_mib = 64\n"));
        let back = parse(&text);
        assert_eq!(back, l);
        assert_eq!(back.write_buffer(), 64 << 20);
        assert_eq!(
            back.tftp_max_timeout_secs(),
            255,
            "clamped to the RFC's range"
        );
        assert!(toml::from_str::<Limits>("max_conections = 3").is_err());
    }
}
