//! `registry.toml`: images with their versions, and clients. Machine-written (by the CLI and,
//! for reset-mode power-ons, by `isboot serve`), mode 0600 because it holds CHAP secrets.

use super::names::{ClientName, ImageName, Iqn, MacAddr};
use super::secret::Secret;
use super::state::NextBoot;
use crate::store::base::Published;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// What happens to a client's writes when it powers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Writes are kept across reboots; the client stays on the base version its overlay was
    /// made on until it is reset.
    #[default]
    Persistent,
    /// Writes are dropped at every power-on, and the client moves to the newest version.
    Reset,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Persistent => "persistent",
            Mode::Reset => "reset",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Source of unique serial numbers for overlay file names.
    #[serde(default)]
    pub serial: u64,
    #[serde(default, rename = "image")]
    pub images: Vec<Image>,
    #[serde(default, rename = "client")]
    pub clients: Vec<Client>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            serial: 1,
            images: Vec::new(),
            clients: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: ImageName,
    /// Published versions, oldest first.
    #[serde(default, rename = "version")]
    pub versions: Vec<Version>,
    /// Open maintenance session (`isboot image edit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

impl Image {
    pub fn newest(&self) -> Option<&Version> {
        self.versions.iter().max_by_key(|v| v.number)
    }
    pub fn version(&self, n: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == n)
    }
}

/// One published, immutable version of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub number: u64,
    /// Random id (hex) recorded in every overlay made on this version.
    pub id: String,
    /// Raw file, relative to the state directory (empty for a version on Ceph RBD).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    /// The file as published (inode:size:mtime_ns): the server refuses to open a file that
    /// differs (replaced or changed since). Absent in registries written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    /// A version on Ceph RBD (`[store] backend = "rbd"`): `POOL/isboot-base-NAME-vN@base`, a
    /// protected snapshot in the shared pool, instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<String>,
}

impl Version {
    /// `Err` (one line) for a version on Ceph RBD: image prepare works on file versions only
    /// (client disks and edits of RBD versions are clones in the pool).
    pub fn file_only(&self, image: &ImageName) -> Result<(), crate::config::ConfigError> {
        match &self.rbd {
            None => Ok(()),
            Some(spec) => Err(crate::config::ConfigError::BadArgument(format!(
                "image {image} version {} is on Ceph RBD ({spec}); this needs a file version \
                 (image edit/commit work on RBD; see docs/scale-out.md)",
                self.number
            ))),
        }
    }
}

/// A writable view of an image's newest version being prepared as its next version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// The version the overlay sits on.
    pub from_version: u64,
    /// Overlay file, relative to the state directory (empty on RBD, see `rbd`).
    pub overlay: String,
    /// Initiators allowed to log in to the maintenance target.
    pub initiators: Vec<Iqn>,
    /// The machine that boots the maintenance target (DHCP hands it the maintenance root-path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Addresses the admin named for the maintenance machine (`image edit --from`): its
    /// target accepts logins from them as well as from 127.0.0.1 and the `mac`'s address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<std::net::Ipv4Addr>,
    pub started: u64,
    /// On Ceph RBD: the edit, a clone of `from_version` named as the next version
    /// (`POOL/isboot-base-IMAGE-vN`); `overlay` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<String>,
    /// An RBD edit being committed: no longer served (the server lets go of its lock, so
    /// `image commit` can snapshot it); a failed commit clears it, `image abort` drops it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub committing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub name: ClientName,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    pub image: ImageName,
    /// Base version the overlay was made on.
    pub version: u64,
    pub mode: Mode,
    /// Initiator names allowed to log in to this client's target.
    pub initiators: Vec<Iqn>,
    /// Overlay file, relative to the state directory (empty for a disk on Ceph RBD).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub overlay: String,
    /// A disk on Ceph RBD (a client of an RBD version): `POOL/isboot-client-NAME.SERIAL`, a
    /// copy-on-write clone of the version's snapshot, instead of an overlay file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<String>,
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
    /// Next-boot choice, default choice and menu (`isboot boot`).
    #[serde(default, skip_serializing_if = "NextBoot::is_empty")]
    pub boot: NextBoot,
    /// Data this client's overlay may hold, MiB, instead of `[limits] client_quota_mib`
    /// (0: no quota for this client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_mib: Option<u64>,
    /// Other images this client may boot from its menu (`isboot boot --allow-image`), each on
    /// its own overlay, reset at the client's power-on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_images: Vec<ClientImage>,
}

/// Another image a client may boot (`image:NAME`): its own target
/// (`<prefix>:<client>:image:<image>`) with the client's CHAP and address rules, on an
/// overlay of its own that the client's power-on resets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientImage {
    pub image: ImageName,
    /// Base version the overlay was made on.
    pub version: u64,
    /// Overlay file, relative to the state directory (empty for a clone on Ceph RBD).
    pub overlay: String,
    /// Its copy-on-write clone `POOL/isboot-client-CLIENT.image.IMAGE.SERIAL`, for an image on
    /// Ceph RBD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<String>,
}

impl Client {
    /// The allowed image `name`, if it is one.
    pub fn allowed_image(&self, name: &ImageName) -> Option<&ClientImage> {
        self.allowed_images.iter().find(|i| &i.image == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chap {
    pub user: String,
    pub secret: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<Secret>,
}

impl Registry {
    pub fn image(&self, name: &ImageName) -> Option<&Image> {
        self.images.iter().find(|i| &i.name == name)
    }
    pub fn image_mut(&mut self, name: &ImageName) -> Option<&mut Image> {
        self.images.iter_mut().find(|i| &i.name == name)
    }
    /// A client by name or MAC address (`which` as typed on the command line).
    pub fn find_client(&self, which: &str) -> Option<&Client> {
        if let Ok(mac) = which.parse::<MacAddr>() {
            if let Some(c) = self.clients.iter().find(|c| c.mac == mac) {
                return Some(c);
            }
        }
        let l = which.to_ascii_lowercase();
        self.clients.iter().find(|c| c.name.as_str() == l)
    }
    pub fn client(&self, name: &ClientName) -> Option<&Client> {
        self.clients.iter().find(|c| &c.name == name)
    }
    pub fn client_by_mac(&self, mac: &MacAddr) -> Option<&Client> {
        self.clients.iter().find(|c| &c.mac == mac)
    }
    pub fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }
    /// True when the RBD image `spec` (`POOL/NAME`) is something this registry uses: a
    /// client's disk, an open edit, or a published version (`POOL/NAME@base`).
    pub fn names_rbd(&self, spec: &str) -> bool {
        let version = |v: &Version| {
            v.rbd
                .as_deref()
                .and_then(|r| r.split_once('@'))
                .is_some_and(|(image, _)| image == spec)
        };
        self.clients.iter().any(|c| {
            c.rbd.as_deref() == Some(spec)
                || c.allowed_images
                    .iter()
                    .any(|a| a.rbd.as_deref() == Some(spec))
        }) || self.images.iter().any(|i| {
            i.versions.iter().any(version)
                || i.maintenance
                    .as_ref()
                    .is_some_and(|m| m.rbd.as_deref() == Some(spec))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let r = Registry {
            serial: 7,
            images: vec![Image {
                name: "debian".parse().unwrap(),
                versions: vec![Version {
                    number: 1,
                    id: "00".repeat(16),
                    file: "images/debian/v1.raw".into(),
                    size: 4096,
                    created: 5,
                    published: Some(Published {
                        inode: 12,
                        size: 4096,
                        mtime_ns: 1_765_000_000_123_456_789,
                    }),
                    rbd: None,
                }],
                maintenance: Some(Maintenance {
                    from_version: 1,
                    overlay: "maint/debian.3.ovl".into(),
                    initiators: vec!["iqn.2026-11.org.isboot:initiator:maint".parse().unwrap()],
                    mac: None,
                    from: vec![],
                    started: 6,
                    rbd: None,
                    committing: false,
                }),
            }],
            clients: vec![Client {
                name: "pc1".parse().unwrap(),
                mac: "52:54:00:00:00:01".parse().unwrap(),
                ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                image: "debian".parse().unwrap(),
                version: 1,
                mode: Mode::Reset,
                initiators: vec!["iqn.2026-11.org.isboot:initiator:pc1".parse().unwrap()],
                overlay: "overlays/pc1.2.ovl".into(),
                rbd: None,
                created: 5,
                chap: Some(Chap {
                    user: "u".into(),
                    secret: Secret::new("s".repeat(12)),
                    mutual_user: None,
                    mutual_secret: None,
                }),
                boot: NextBoot {
                    next: Some("memtest".parse().unwrap()),
                    default: None,
                    menu: Some(true),
                },
                quota_mib: Some(512),
                allowed_images: vec![ClientImage {
                    image: "deb2".parse().unwrap(),
                    version: 1,
                    overlay: "overlays/pc1.image.deb2.7.ovl".into(),
                    rbd: None,
                }],
            }],
        };
        let text = toml::to_string(&r).unwrap();
        assert_eq!(toml::from_str::<Registry>(&text).unwrap(), r);
        assert_eq!(r.find_client("PC1").unwrap().name.as_str(), "pc1");
        assert_eq!(
            r.find_client("52-54-00-00-00-01").unwrap().name.as_str(),
            "pc1"
        );
        assert!(r.find_client("pc2").is_none());
        // A hand-damaged file is refused, not half-read.
        assert!(toml::from_str::<Registry>(&text.replace("52:54:00:00:00:01", "52:54")).is_err());
    }
}
