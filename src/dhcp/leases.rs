//! The lease table: who holds which dynamic or reserved address until when, persisted to a
//! JSON file written atomically (temp file, fsync, rename) so leases survive a restart.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{DhcpError, MacAddr};

/// How long an offered (not yet requested) address is held for its client, in seconds.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address stays out of the pool, in seconds (RFC 2131 leaves it open).
pub const DECLINE_HOLD_SECS: u64 = 600;
/// Largest lease file accepted on load.
pub const MAX_LEASE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Written `aa:bb:cc:dd:ee:ff`; any address (it is what the client put in chaddr).
    #[serde(with = "crate::mac::any")]
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Unix time (seconds) when the lease or offer ends.
    pub expires: u64,
    /// false: only offered; true: acknowledged.
    pub bound: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    leases: Vec<Lease>,
    #[serde(default)]
    declined: Vec<(Ipv4Addr, u64)>,
}

/// The lease table.
#[derive(Debug, Default, Clone)]
pub struct Leases {
    by_mac: HashMap<MacAddr, Lease>,
    declined: HashMap<Ipv4Addr, u64>,
    dirty: bool,
}

impl Leases {
    pub fn new() -> Self {
        Self::default()
    }

    /// Load from `path`; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<Self, DhcpError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(e) => return Err(DhcpError::ReadingLeases(path.to_path_buf(), e)),
        };
        if meta.len() > MAX_LEASE_FILE_BYTES {
            return Err(DhcpError::ParsingLeases(
                path.to_path_buf(),
                format!(
                    "{} bytes is more than the limit of {MAX_LEASE_FILE_BYTES}",
                    meta.len()
                ),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| DhcpError::ReadingLeases(path.to_path_buf(), e))?;
        let file: LeaseFile = serde_json::from_str(&text)
            .map_err(|e| DhcpError::ParsingLeases(path.to_path_buf(), e.to_string()))?;
        let mut by_mac = HashMap::new();
        for l in file.leases {
            by_mac.insert(l.mac, l);
        }
        Ok(Leases {
            by_mac,
            declined: file.declined.into_iter().collect(),
            dirty: false,
        })
    }

    /// Save to `path` atomically: write `path.tmp`, fsync, rename over `path`, fsync the dir.
    pub fn save(&self, path: &Path) -> Result<(), DhcpError> {
        let err = |e| DhcpError::WritingLeases(path.to_path_buf(), e);
        let mut leases: Vec<Lease> = self.by_mac.values().cloned().collect();
        leases.sort_by_key(|l| u32::from(l.ip));
        let mut declined: Vec<(Ipv4Addr, u64)> =
            self.declined.iter().map(|(a, b)| (*a, *b)).collect();
        declined.sort();
        let text = serde_json::to_string_pretty(&LeaseFile { leases, declined })
            .map_err(|e| err(std::io::Error::other(e)))?;
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// True once after any change that should be persisted.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The lease or offer for `mac`, if still valid at `now`.
    pub fn get(&self, mac: &MacAddr, now: u64) -> Option<&Lease> {
        self.by_mac.get(mac).filter(|l| l.expires > now)
    }

    /// All leases (valid or not), for status output.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// Is `ip` held by another MAC's valid lease/offer, or declined, at `now`?
    pub fn ip_taken(&self, ip: Ipv4Addr, mac: &MacAddr, now: u64) -> bool {
        if self.declined.get(&ip).is_some_and(|&until| until > now) {
            return true;
        }
        self.by_mac
            .iter()
            .any(|(m, l)| m != mac && l.ip == ip && l.expires > now)
    }

    /// Addresses held by other MACs' valid leases/offers, or declined, at `now`.
    pub fn taken_ips(&self, mac: &MacAddr, now: u64) -> std::collections::HashSet<Ipv4Addr> {
        let mut set: std::collections::HashSet<Ipv4Addr> = self
            .declined
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ip, _)| *ip)
            .collect();
        set.extend(
            self.by_mac
                .iter()
                .filter(|(m, l)| *m != mac && l.expires > now)
                .map(|(_, l)| l.ip),
        );
        set
    }

    /// Record an offer held for [`OFFER_HOLD_SECS`] (does not shorten a longer bound lease on
    /// the same address).
    pub fn offer(&mut self, mac: MacAddr, ip: Ipv4Addr, client: Option<&str>, now: u64) {
        if let Some(l) = self.by_mac.get(&mac)
            && l.ip == ip
            && l.bound
            && l.expires > now
        {
            return;
        }
        self.by_mac.insert(
            mac,
            Lease {
                mac,
                ip,
                expires: now + OFFER_HOLD_SECS,
                bound: false,
                client: client.map(str::to_string),
            },
        );
        self.dirty = true;
    }

    /// Record an acknowledged lease.
    pub fn bind(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        client: Option<&str>,
        now: u64,
        lease_secs: u32,
    ) {
        self.by_mac.insert(
            mac,
            Lease {
                mac,
                ip,
                expires: now + u64::from(lease_secs),
                bound: true,
                client: client.map(str::to_string),
            },
        );
        self.dirty = true;
    }

    /// Forget `mac`'s offer if it is only an offer (the client chose another server).
    pub fn drop_offer(&mut self, mac: &MacAddr) {
        if self.by_mac.get(mac).is_some_and(|l| !l.bound) {
            self.by_mac.remove(mac);
            self.dirty = true;
        }
    }

    /// DHCPRELEASE: end `mac`'s lease if it is for `ip`.
    pub fn release(&mut self, mac: &MacAddr, ip: Ipv4Addr) -> bool {
        if self.by_mac.get(mac).is_some_and(|l| l.ip == ip) {
            self.by_mac.remove(mac);
            self.dirty = true;
            return true;
        }
        false
    }

    /// DHCPDECLINE: `ip`, offered or leased to `mac`, is in use by someone else; keep it out of
    /// the pool for a while. Honoured only for the address `mac` holds (RFC 2131 4.3.3: the
    /// client declines what it was given), so no host can take another client's address away
    /// by declining it. Returns whether it was honoured.
    pub fn decline(&mut self, mac: &MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        if self.by_mac.get(mac).is_none_or(|l| l.ip != ip) {
            return false;
        }
        self.by_mac.remove(mac);
        self.declined.insert(ip, now + DECLINE_HOLD_SECS);
        self.dirty = true;
        true
    }

    /// Drop expired offers and declines (bound leases are kept, so an address comes back to the
    /// same MAC when possible).
    pub fn expire(&mut self, now: u64) {
        let before = (self.by_mac.len(), self.declined.len());
        self.by_mac.retain(|_, l| l.bound || l.expires > now);
        self.declined.retain(|_, until| *until > now);
        if before != (self.by_mac.len(), self.declined.len()) {
            self.dirty = true;
        }
    }

    /// The last address `mac` held, even if the lease ran out (to give it back when free).
    pub fn last_ip(&self, mac: &MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).map(|l| l.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    #[test]
    fn offer_bind_release_decline() {
        let ip = Ipv4Addr::new(10, 0, 0, 50);
        let mut l = Leases::new();
        l.offer(A, ip, Some("a"), 1000);
        assert!(l.ip_taken(ip, &B, 1000));
        assert!(!l.ip_taken(ip, &A, 1000));
        assert!(
            !l.ip_taken(ip, &B, 1000 + OFFER_HOLD_SECS),
            "offer runs out"
        );
        l.bind(A, ip, Some("a"), 1000, 3600);
        assert!(l.ip_taken(ip, &B, 4000));
        assert!(!l.release(&A, Ipv4Addr::new(10, 0, 0, 51)));
        assert!(l.release(&A, ip));
        assert!(l.get(&A, 1000).is_none());
        assert!(!l.decline(&A, ip, 2000), "A holds nothing any more");
        assert!(!l.ip_taken(ip, &A, 2000));
        l.bind(A, ip, Some("a"), 2000, 3600);
        assert!(!l.decline(&B, ip, 2000), "B cannot decline A's lease");
        assert_eq!(l.get(&A, 2000).map(|l| l.ip), Some(ip));
        assert!(l.decline(&A, ip, 2000));
        assert!(l.ip_taken(ip, &A, 2000));
        l.expire(2000 + DECLINE_HOLD_SECS);
        assert!(!l.ip_taken(ip, &A, 2000 + DECLINE_HOLD_SECS));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.json");
        assert_eq!(
            Leases::load(&path)
                .expect("missing file is empty")
                .iter()
                .count(),
            0
        );
        let mut l = Leases::new();
        l.bind(A, Ipv4Addr::new(10, 0, 0, 50), Some("a"), 1000, 3600);
        l.offer(B, Ipv4Addr::new(10, 0, 0, 60), Some("b"), 1000);
        assert!(l.decline(&B, Ipv4Addr::new(10, 0, 0, 60), 1000));
        l.save(&path).expect("save");
        assert!(!path.with_extension("json.tmp").exists());
        let back = Leases::load(&path).expect("load");
        assert_eq!(
            back.get(&A, 1001).map(|l| l.ip),
            Some(Ipv4Addr::new(10, 0, 0, 50))
        );
        assert!(back.ip_taken(Ipv4Addr::new(10, 0, 0, 60), &A, 1001));
    }

    #[test]
    fn corrupt_lease_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.json");
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            Leases::load(&path),
            Err(DhcpError::ParsingLeases(..))
        ));
        std::fs::write(
            &path,
            r#"{"leases":[{"mac":"zz","ip":"10.0.0.1","expires":1,"bound":true}]}"#,
        )
        .expect("write");
        assert!(matches!(
            Leases::load(&path),
            Err(DhcpError::ParsingLeases(..))
        ));
    }
}
