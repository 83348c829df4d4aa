//! What a client boots next: a one-shot `next` choice (cleared when its boot script has been
//! served, or when an installer calls back), a persistent `default`, and whether its iPXE
//! script shows a menu. Stored with the client in the registry (`boot` in its entry; left out
//! while nothing is set, so registries of older versions read the same). Changed with
//! `isboot boot CLIENT ...`.

use super::Locked;
use crate::config::ConfigError;
use crate::config::names::{ClientName, ImageName};
use crate::config::registry::{Client, ClientImage};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One boot choice: `disk`, `image:NAME`, `install:NAME`, `memtest` or `local`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BootAction {
    /// The client's own iSCSI disk (what every client boots when nothing is set).
    Disk,
    /// Another image, booted reset-mode on an own overlay.
    Image(ImageName),
    /// An installer from the configuration's `[[installer]]` entries.
    Install(ImageName),
    /// memtest86+.
    Memtest,
    /// The machine's local disk.
    Local,
}

impl fmt::Display for BootAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootAction::Disk => f.write_str("disk"),
            BootAction::Image(n) => write!(f, "image:{n}"),
            BootAction::Install(n) => write!(f, "install:{n}"),
            BootAction::Memtest => f.write_str("memtest"),
            BootAction::Local => f.write_str("local"),
        }
    }
}

impl FromStr for BootAction {
    type Err = String;
    fn from_str(s: &str) -> Result<BootAction, String> {
        let named =
            |what: &str, n: &str| n.parse::<ImageName>().map_err(|e| format!("{what}: {e}"));
        match s.split_once(':') {
            None if s == "disk" => Ok(BootAction::Disk),
            None if s == "memtest" => Ok(BootAction::Memtest),
            None if s == "local" => Ok(BootAction::Local),
            Some(("image", n)) => named("image", n).map(BootAction::Image),
            Some(("install", n)) => named("installer", n).map(BootAction::Install),
            _ => Err(format!(
                "bad boot choice {s:?} (use disk, image:NAME, install:NAME, memtest or local)"
            )),
        }
    }
}

impl TryFrom<String> for BootAction {
    type Error = String;
    fn try_from(s: String) -> Result<BootAction, String> {
        s.parse()
    }
}

impl From<BootAction> for String {
    fn from(a: BootAction) -> String {
        a.to_string()
    }
}

/// A client's boot settings as stored. Every field unset = boot the disk, no menu (as before
/// menus existed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextBoot {
    /// One-shot: served once, then cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<BootAction>,
    /// Persistent choice (unset = `disk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<BootAction>,
    /// Show the menu (unset = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu: Option<bool>,
}

impl NextBoot {
    pub fn is_empty(&self) -> bool {
        *self == NextBoot::default()
    }
    /// What the client boots now: the one-shot choice, else the default, else its disk.
    pub fn effective(&self) -> BootAction {
        self.next
            .clone()
            .or_else(|| self.default.clone())
            .unwrap_or(BootAction::Disk)
    }
}

/// A change asked for by `isboot boot` (unset fields stay as they are; `clear` first drops
/// everything).
#[derive(Clone, Debug, Default)]
pub struct BootChange {
    pub clear: bool,
    pub next: Option<BootAction>,
    pub default: Option<BootAction>,
    pub menu: Option<bool>,
    /// Images the client may boot from now on (`--allow-image`): each gets its own overlay.
    pub allow: Vec<ImageName>,
    /// Images it may no longer boot (`--forbid-image`): their overlays are removed, and a
    /// next or default choice naming one goes back to the disk.
    pub forbid: Vec<ImageName>,
}

impl Locked {
    /// Change a client's boot settings; returns its updated record.
    pub fn set_boot(&mut self, which: &str, change: BootChange) -> Result<Client, ConfigError> {
        let client = self.state.client(which)?.clone();
        let name = client.name.clone();
        for i in &change.forbid {
            if client.allowed_image(i).is_none() {
                return Err(ConfigError::BadArgument(format!(
                    "client {name} is not allowed image {i} (nothing to forbid)"
                )));
            }
            let s = self
                .state
                .sessions_of(&self.state.client_image_iqn(&name, i));
            if !s.is_empty() {
                let from: Vec<String> = s.iter().map(|s| s.peer.clone()).collect();
                return Err(ConfigError::BadArgument(format!(
                    "client {name} has image {i} in use (logged in from {}): forbid it once \
                     that boot is over (power the machine off first)",
                    from.join(", ")
                )));
            }
        }
        let mut allowed: Vec<ImageName> = client
            .allowed_images
            .iter()
            .map(|a| a.image.clone())
            .filter(|i| !change.forbid.contains(i))
            .collect();
        let mut adding: Vec<ImageName> = Vec::new();
        for i in &change.allow {
            if change.forbid.contains(i) {
                return Err(ConfigError::BadArgument(format!(
                    "--allow-image {i} and --forbid-image {i} together: say one"
                )));
            }
            if !allowed.contains(i) {
                self.state.image(i)?;
                allowed.push(i.clone());
                adding.push(i.clone());
            }
        }
        for a in change.next.iter().chain(change.default.iter()) {
            self.check_action(&name, &allowed, a)?;
        }
        // New overlays first (the registry commit below makes them count).
        let mut created: Vec<ClientImage> = Vec::new();
        for i in &adding {
            match self.new_client_image(&name, i) {
                Ok(a) => created.push(a),
                Err(e) => {
                    self.forget_all(&created);
                    return Err(e);
                }
            }
        }
        let mut dropped: Vec<ClientImage> = Vec::new();
        let mut updated = None;
        for c in self.state.registry.clients.iter_mut() {
            if c.name != name {
                continue;
            }
            let (gone, kept) = std::mem::take(&mut c.allowed_images)
                .into_iter()
                .partition(|a| change.forbid.contains(&a.image));
            dropped = gone;
            c.allowed_images = kept;
            c.allowed_images.extend(created.iter().cloned());
            // A choice naming an image it may no longer boot goes back to the disk.
            let forbidden =
                |a: &BootAction| matches!(a, BootAction::Image(i) if change.forbid.contains(i));
            if change.clear {
                c.boot = NextBoot::default();
            }
            if c.boot.next.as_ref().is_some_and(forbidden) {
                c.boot.next = None;
            }
            if c.boot.default.as_ref().is_some_and(forbidden) {
                c.boot.default = None;
            }
            if change.next.is_some() {
                c.boot.next = change.next.clone();
            }
            if change.default.is_some() {
                // `--default disk` is the built-in default: store nothing.
                c.boot.default = change.default.clone().filter(|a| *a != BootAction::Disk);
            }
            if change.menu.is_some() {
                c.boot.menu = change.menu.filter(|m| *m);
            }
            updated = Some(c.clone());
        }
        let updated = updated.ok_or_else(|| ConfigError::UnknownClient(which.to_string()))?;
        if let Err(e) = self.save() {
            self.forget_all(&created);
            return Err(e);
        }
        self.forget_all(&dropped);
        Ok(updated)
    }

    /// A fresh overlay for client `name`'s image `image` on its newest version (file versions
    /// only: an image on Ceph RBD is refused).
    pub(super) fn new_client_image(
        &mut self,
        name: &ClientName,
        image: &ImageName,
    ) -> Result<ClientImage, ConfigError> {
        let v = self
            .state
            .image(image)?
            .newest()
            .ok_or_else(|| ConfigError::UnknownImage(format!("{image} (no versions)")))?;
        let version = v.number;
        // An overlay file, or for an image on Ceph RBD a clone of the version's snapshot.
        let (overlay, rbd) =
            self.new_client_disk(&format!("{name}.image.{image}"), image, version)?;
        Ok(ClientImage {
            image: image.clone(),
            version,
            overlay,
            rbd,
        })
    }

    /// Remove the overlays of `images` (best effort; the registry does not point at them).
    fn forget_all(&self, images: &[ClientImage]) {
        for a in images {
            self.forget_client_image(a);
        }
    }

    /// Use up client `name`'s one-shot choice when `used(choice)` says so (its script was
    /// served, or its installer called back); the admin may have set another one meanwhile,
    /// which `used` then leaves alone. Returns the choice cleared.
    pub fn take_next(
        &mut self,
        name: &ClientName,
        used: impl Fn(&BootAction) -> bool,
    ) -> Result<Option<BootAction>, ConfigError> {
        let mut taken = None;
        for c in self.state.registry.clients.iter_mut() {
            if c.name == *name && c.boot.next.as_ref().is_some_and(&used) {
                taken = c.boot.next.take();
            }
        }
        if taken.is_some() {
            self.save()?;
        }
        Ok(taken)
    }

    /// A choice can only name what exists, and an image only one client `name` is allowed.
    fn check_action(
        &self,
        name: &ClientName,
        allowed: &[ImageName],
        a: &BootAction,
    ) -> Result<(), ConfigError> {
        match a {
            BootAction::Image(n) => {
                self.state.image(n)?;
                if !allowed.contains(n) {
                    return Err(ConfigError::BadArgument(format!(
                        "client {name} may not boot image {n}: allow it first (isboot boot \
                         {name} --allow-image {n})"
                    )));
                }
                Ok(())
            }
            BootAction::Install(n) => {
                if self.state.config.installer(n).is_some() {
                    return Ok(());
                }
                let known: Vec<&str> = self
                    .state
                    .config
                    .installers
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect();
                Err(ConfigError::BadArgument(if known.is_empty() {
                    format!(
                        "no installer named {n}: isboot.toml has no [[installer]] entries (add one; the file has a commented example)"
                    )
                } else {
                    format!(
                        "no installer named {n} in isboot.toml (its [[installer]] entries: {})",
                        known.join(", ")
                    )
                }))
            }
            BootAction::Disk | BootAction::Memtest | BootAction::Local => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        for s in [
            "disk",
            "memtest",
            "local",
            "image:deb12",
            "install:debian12",
        ] {
            let a: BootAction = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "image:Deb".parse::<BootAction>().unwrap(),
            BootAction::Image("deb".parse().unwrap())
        );
        for bad in [
            "",
            "Disk",
            "image:",
            "image:a b",
            "install:-x",
            "shell",
            "disk:x",
        ] {
            assert!(bad.parse::<BootAction>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn effective_choice_and_storage() {
        let mut b = NextBoot::default();
        assert!(b.is_empty());
        assert_eq!(b.effective(), BootAction::Disk);
        b.default = Some(BootAction::Local);
        assert_eq!(b.effective(), BootAction::Local);
        b.next = Some(BootAction::Memtest);
        assert_eq!(b.effective(), BootAction::Memtest);
        let text = toml::to_string(&b).unwrap();
        assert_eq!(text, "next = \"memtest\"\ndefault = \"local\"\n");
        assert_eq!(toml::from_str::<NextBoot>(&text).unwrap(), b);
        assert!(toml::from_str::<NextBoot>("next = \"shell\"\n").is_err());
    }
}
