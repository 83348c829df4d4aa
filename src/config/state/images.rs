//! Images and their versions: import, publish, remove, prune.

use super::{Locked, StateDir, io_write, seal_base};
use crate::config::names::ImageName;
use crate::config::registry::{Image, Version};
use crate::config::{ConfigError, import, now_unix, sync_dir};
use crate::store::base::BaseId;

use std::path::{Path, PathBuf};

impl StateDir {
    /// Publish `staged` (a raw file in `images/`, e.g. an image rebuilt by
    /// `isboot image prepare`) as the next version of image `name`. Refused while the image is
    /// in maintenance. The file is renamed into place, not copied.
    pub fn image_publish(&self, name: &ImageName, staged: &Path) -> Result<Version, ConfigError> {
        let mut l = self.lock()?;
        let img = l.state.image(name)?;
        if img.maintenance.is_some() {
            return Err(ConfigError::MaintenanceOpen(name.to_string()));
        }
        let number = img.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
        let size = std::fs::metadata(staged)
            .map_err(|source| ConfigError::Reading {
                path: staged.to_path_buf(),
                source,
            })?
            .len();
        let v = self.place_version_file(staged, name, number, size)?;
        let img = l
            .state
            .registry
            .images
            .iter_mut()
            .find(|i| &i.name == name)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))?;
        img.versions.push(v.clone());
        if let Err(e) = l.save() {
            let _ = std::fs::rename(self.path(&v.file), staged);
            return Err(e);
        }
        Ok(v)
    }

    /// The file of the newest version of image `name`.
    pub fn newest_version_file(&self, name: &ImageName) -> Result<PathBuf, ConfigError> {
        let state = self.load()?;
        let img = state.image(name)?;
        let v = img
            .versions
            .iter()
            .max_by_key(|v| v.number)
            .ok_or_else(|| ConfigError::UnknownImage(name.to_string()))?;
        v.file_only(name)?;
        Ok(self.path(&v.file))
    }

    /// Import `file` as a new image with version 1. The copy runs without the directory
    /// lock (other commands, and a running server's power-on resets, are not held up by a
    /// long import); the name is checked before and again when the result is published.
    pub fn image_add(
        &self,
        name: &ImageName,
        file: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Version, ConfigError> {
        {
            let l = self.lock()?;
            if l.state.registry.image(name).is_some() {
                return Err(ConfigError::ImageExists(name.to_string()));
            }
        }
        let images = self.root.join("images");
        std::fs::create_dir_all(&images).map_err(io_write(&images))?;
        let staged = images.join(format!(".import-{name}-{}.raw", std::process::id()));
        let size = import::import(file, &staged, progress)?;
        let res = (|| {
            let mut l = self.lock()?;
            if l.state.registry.image(name).is_some() {
                return Err(ConfigError::ImageExists(name.to_string()));
            }
            let dir_rel = format!("images/{name}");
            let dir = self.path(&dir_rel);
            std::fs::create_dir_all(&dir).map_err(io_write(&dir))?;
            sync_dir(&images).map_err(io_write(&images))?;
            let rel = format!("{dir_rel}/v1.raw");
            let dest = self.path(&rel);
            std::fs::rename(&staged, &dest).map_err(io_write(&dest))?;
            let published = seal_base(&dest)?;
            sync_dir(&dir).map_err(io_write(&dir))?;
            sync_dir(&images).map_err(io_write(&images))?;
            let v = Version {
                number: 1,
                id: BaseId::random().map_err(io_write(&dest))?.to_string(),
                file: rel.clone(),
                size,
                created: now_unix(),
                published: Some(published),
                rbd: None,
            };
            l.state.registry.images.push(Image {
                name: name.clone(),
                versions: vec![v.clone()],
                maintenance: None,
            });
            if let Err(e) = l.save() {
                let _ = std::fs::remove_file(&dest);
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
            Ok(v)
        })();
        let _ = std::fs::remove_file(&staged);
        res
    }
}

impl Locked {
    /// Remove an image and all its versions; refused while a client or maintenance uses it.
    pub fn image_remove(&mut self, name: &ImageName) -> Result<Image, ConfigError> {
        let img = self.state.image(name)?.clone();
        let mut users = self.state.clients_using(name, None);
        users.extend(self.state.clients_allowing(name));
        if img.maintenance.is_some() {
            users.push("an open maintenance session (image abort)".into());
        }
        if !users.is_empty() {
            return Err(ConfigError::ImageInUse {
                image: name.to_string(),
                users: users.join(", "),
            });
        }
        self.state.registry.images.retain(|i| &i.name != name);
        self.save()?;
        for v in img.versions.iter().filter(|v| !v.file.is_empty()) {
            self.forget(&v.file);
        }
        let _ = std::fs::remove_dir(self.state.dir.path(&format!("images/{name}")));
        Ok(img)
    }

    /// Delete versions no client uses, except each image's newest and a version under
    /// maintenance. Returns what was deleted.
    pub fn image_prune(
        &mut self,
        only: Option<&ImageName>,
    ) -> Result<Vec<(ImageName, Version)>, ConfigError> {
        if let Some(n) = only {
            self.state.image(n)?;
        }
        let mut gone = Vec::new();
        let mut files = Vec::new();
        let used: Vec<(ImageName, u64)> = self
            .state
            .registry
            .clients
            .iter()
            .flat_map(|c| {
                let other = c
                    .allowed_images
                    .iter()
                    .map(|a| (a.image.clone(), a.version));
                std::iter::once((c.image.clone(), c.version)).chain(other)
            })
            .collect();
        for img in self.state.registry.images.iter_mut() {
            if only.is_some_and(|n| n != &img.name) {
                continue;
            }
            let newest = img.newest().map(|v| v.number);
            let maint = img.maintenance.as_ref().map(|m| m.from_version);
            let name = img.name.clone();
            img.versions.retain(|v| {
                let keep = Some(v.number) == newest
                    || Some(v.number) == maint
                    || used.iter().any(|(i, n)| i == &name && *n == v.number);
                if !keep {
                    gone.push((name.clone(), v.clone()));
                    if !v.file.is_empty() {
                        files.push(v.file.clone());
                    }
                }
                keep
            });
        }
        if gone.is_empty() {
            return Ok(gone);
        }
        self.save()?;
        for f in &files {
            self.forget(f);
        }
        Ok(gone)
    }
}
