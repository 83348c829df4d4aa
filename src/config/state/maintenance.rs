//! Image maintenance: a writable overlay on an image's newest version (`image edit`),
//! published as the next version (`image commit`) or dropped (`image abort`).

use super::{Locked, StateDir, io_write, maint_secret_name};
use crate::config::names::{ImageName, Iqn, MacAddr};
use crate::config::registry::{Maintenance, Version};
use crate::config::secret::{generate_chap, remove_secret_file, secret_path, write_secret_file};
use crate::config::{ConfigError, now_unix};
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
        let (m, size) = {
            let l = self.lock()?;
            let m = l.maintenance(name, force, true)?;
            let img = l.state.image(name)?;
            let size = img.version(m.from_version).map_or(0, |v| v.size);
            (m, size)
        };
        if let Some(spec) = m.rbd.clone() {
            return self.commit_rbd(name, &m, &spec, size, force, progress);
        }
        let state = self.load()?;
        let base = state.open_base(name, m.from_version)?;
        let ov = Overlay::open_at(&self.path(&m.overlay), base, true)?;
        let dir = self.path(&format!("images/{name}"));
        let staged = dir.join(format!(
            ".commit-of-v{}.raw.tmp{}",
            m.from_version,
            std::process::id()
        ));
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
            self.publish_version(name, &m, force, |number| {
                self.place_version_file(&staged, name, number, size)
            })
        });
        let _ = std::fs::remove_file(&staged);
        res
    }

    /// Commit an edit on RBD: mark it committing (the server stops serving it and lets go of
    /// its lock), snapshot it (a metadata operation: the new version shares what the edit did
    /// not write with the version it was cloned from), then record it. A failure serves the
    /// edit again.
    fn commit_rbd(
        &self,
        name: &ImageName,
        m: &Maintenance,
        spec: &str,
        size: u64,
        force: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Version, ConfigError> {
        #[cfg(feature = "rbd")]
        {
            let store = self.load()?.config.store.clone();
            self.mark_committing(name, m, true)?;
            let published = match super::rbd::publish_edit(&store, spec) {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.mark_committing(name, m, false);
                    return Err(e);
                }
            };
            progress(size, size);
            let res = self.publish_version(name, m, force, |number| {
                if !spec.ends_with(&format!("-v{number}")) {
                    return Err(ConfigError::BadArgument(format!(
                        "the edit {spec} of {name} is not its next version ({number}): abort \
                         it and edit again"
                    )));
                }
                self.rbd_version(number, published.clone(), size)
            });
            if res.is_err() {
                super::rbd::unpublish_edit(&store, spec);
                let _ = self.mark_committing(name, m, false);
            }
            res
        }
        #[cfg(not(feature = "rbd"))]
        {
            let _ = (m, size, force, progress);
            Err(ConfigError::BadArgument(format!(
                "the edit of {name} is on Ceph RBD ({spec}): committing it needs an isboot \
                 built with --features rbd"
            )))
        }
    }

    /// Set or clear the committing mark of the edit `m` of `name`, if it is still the open one.
    #[cfg(feature = "rbd")]
    fn mark_committing(
        &self,
        name: &ImageName,
        m: &Maintenance,
        on: bool,
    ) -> Result<(), ConfigError> {
        let mut l = self.lock()?;
        match l
            .state
            .registry
            .image_mut(name)
            .and_then(|i| i.maintenance.as_mut())
        {
            Some(now) if now.rbd == m.rbd && now.overlay == m.overlay => {
                if now.committing == on {
                    return Ok(());
                }
                now.committing = on;
            }
            _ => return Err(ConfigError::NoMaintenance(name.to_string())),
        }
        l.save()
    }

    /// Record the next version of `name` made by `make(number)` and close the maintenance
    /// `m`, if it is still the open one and (unless `force`) nobody logged in to it meanwhile.
    fn publish_version(
        &self,
        name: &ImageName,
        m: &Maintenance,
        force: bool,
        make: impl FnOnce(u64) -> Result<Version, ConfigError>,
    ) -> Result<Version, ConfigError> {
        let mut l = self.lock()?;
        let now = l.state.image(name)?.maintenance.clone();
        if now.as_ref().map(|n| (&n.overlay, &n.rbd)) != Some((&m.overlay, &m.rbd)) {
            return Err(ConfigError::NoMaintenance(name.to_string()));
        }
        if !force {
            not_logged_in(&l.state, name, " (it logged in during the commit)")?;
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
        let v = make(number)?;
        if let Some(i) = l.state.registry.image_mut(name) {
            i.versions.push(v.clone());
            i.maintenance = None;
        }
        l.save_or_forget(&[&v.file])?;
        l.forget(&m.overlay);
        l.forget_maintenance_secret(name);
        Ok(v)
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
        let from = newest.number;
        let on_rbd = newest.rbd.is_some();
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
        let (rel, rbd) = if on_rbd {
            (String::new(), Some(self.new_edit_on_rbd(name, from)?))
        } else {
            (self.new_overlay("maint", name.as_str(), name, from)?, None)
        };
        let m = Maintenance {
            from_version: from,
            overlay: rel.clone(),
            initiators,
            mac,
            from: addrs,
            started: now_unix(),
            rbd,
            committing: false,
        };
        if let Some(i) = self.state.registry.image_mut(name) {
            i.maintenance = Some(m.clone());
        }
        if let Err(e) = self.save_or_forget(&[&rel]) {
            self.forget_edit_on_rbd(&m);
            return Err(e);
        }
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
            not_logged_in(&self.state, name, "")?;
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
        self.forget_edit_on_rbd(&m);
        self.forget_maintenance_secret(name);
        Ok(m)
    }

    /// A clone of version `from` on RBD to edit (see [`RbdStore::create_edit`]).
    ///
    /// [`RbdStore::create_edit`]: crate::store::rbd::RbdStore::create_edit
    fn new_edit_on_rbd(&mut self, name: &ImageName, from: u64) -> Result<String, ConfigError> {
        #[cfg(feature = "rbd")]
        return self.new_rbd_edit(name, from);
        #[cfg(not(feature = "rbd"))]
        Err(ConfigError::BadArgument(format!(
            "image {name} version {from} is on Ceph RBD: editing it needs an isboot built with \
             --features rbd"
        )))
    }

    /// Remove an edit on RBD the registry no longer names (best effort; a server that has it
    /// open removes it when it lets go of it).
    fn forget_edit_on_rbd(&self, m: &Maintenance) {
        #[cfg(feature = "rbd")]
        if let Some(spec) = &m.rbd {
            super::rbd::remove_disk(&self.state.config.store, spec);
        }
        #[cfg(not(feature = "rbd"))]
        let _ = m;
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

/// `Err` while the maintenance target of `name` has sessions (`when` is added to the message).
fn not_logged_in(state: &super::State, name: &ImageName, when: &str) -> Result<(), ConfigError> {
    let s = state.sessions_of(&state.maintenance_iqn(name));
    if s.is_empty() {
        return Ok(());
    }
    let from: Vec<String> = s.iter().map(|s| s.peer.clone()).collect();
    Err(ConfigError::LoggedIn {
        what: format!("maintenance target of {name}{when}"),
        from: from.join(", "),
    })
}
