//! Image maintenance: a writable overlay on an image's newest version (`image edit`),
//! published as the next version (`image commit`) or dropped (`image abort`).

use super::{Locked, StateDir, io_write, maint_secret_name, seal_base};
use crate::config::names::{ImageName, Iqn, MacAddr};
use crate::config::registry::{Maintenance, Version};
use crate::config::secret::{generate_chap, remove_secret_file, secret_path, write_secret_file};
use crate::config::{ConfigError, now_unix, sync_dir};
use crate::store::base::BaseId;
use crate::store::overlay::Overlay;
use std::fs::OpenOptions;

impl StateDir {
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
            let published = seal_base(&dest)?;
            sync_dir(&dir).map_err(io_write(&dir))?;
            let v = Version {
                number,
                id: BaseId::random().map_err(io_write(&dest))?.to_string(),
                file: rel.clone(),
                size,
                created: now_unix(),
                published: Some(published),
                rbd: None,
            };
            if let Some(i) = l.state.registry.image_mut(name) {
                i.versions.push(v.clone());
                i.maintenance = None;
            }
            l.save_or_forget(&[&rel])?;
            l.forget(&m.overlay);
            l.forget_maintenance_secret(name);
            Ok(v)
        });
        let _ = std::fs::remove_file(&staged);
        res
    }
}

impl Locked {
    /// Open maintenance: a writable overlay on the newest version, served as
    /// `<prefix>:maint:<image>`; with `chap`, the target asks for a generated CHAP secret.
    /// It accepts logins from this host, `addrs` and the address DHCP learns for `mac`.
    pub fn image_edit(
        &mut self,
        name: &ImageName,
        mac: Option<MacAddr>,
        addrs: Vec<std::net::Ipv4Addr>,
        initiators: Vec<Iqn>,
        chap: bool,
    ) -> Result<Maintenance, ConfigError> {
        let img = self.state.image(name)?.clone();
        if img.maintenance.is_some() {
            return Err(ConfigError::MaintenanceOpen(name.to_string()));
        }
        let newest = img
            .newest()
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))?;
        newest.file_only(name)?;
        let from = newest.number;
        let initiators = if initiators.is_empty() {
            vec![self.state.default_initiator(&format!("maint:{name}"))]
        } else {
            initiators
        };
        // With `chap`, a fresh secret for this maintenance session (the registry commit makes
        // it count); without, no stale one from an earlier session.
        let secret_name = maint_secret_name(name);
        let path = secret_path(self.state.dir.root(), &secret_name);
        if chap {
            write_secret_file(&path, &generate_chap(&secret_name)?)?;
        } else {
            remove_secret_file(&path)?;
        }
        let rel = self.new_overlay("maint", name.as_str(), name, from)?;
        let m = Maintenance {
            from_version: from,
            overlay: rel.clone(),
            initiators,
            mac,
            from: addrs,
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
            self.state.wait_flushed(name)?;
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
        self.forget_maintenance_secret(name);
        Ok(m)
    }

    /// Best effort: the session is gone already; a secret left behind is replaced or
    /// removed when the next session of this image starts.
    fn forget_maintenance_secret(&self, name: &ImageName) {
        let _ = remove_secret_file(&secret_path(
            self.state.dir.root(),
            &maint_secret_name(name),
        ));
    }
}
