//! Image versions on Ceph RBD (`[store] backend = "rbd"`, cargo feature `rbd`): `image add`
//! imports into the shared pool, `image remove` / `prune` take versions out of it again. The
//! registry records where each version lives (`Version::rbd`); the pool is shared by every
//! isboot server that points at it, so a name another server has published is refused.

use super::{Locked, StateDir, io_write};
use crate::config::names::ImageName;
use crate::config::registry::{Image, Version};
use crate::config::store::StoreConfig;
use crate::config::{ConfigError, import};
use crate::store::StoreError;
use crate::store::rbd::{PoolBase, RbdStore};
use std::io::Seek;

/// Where a version lives, for `image list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Listed in the registry and found in the pool with this size.
    Pool(u64),
    /// Listed in the registry, not (or no longer) in the pool.
    Missing,
}

impl StateDir {
    /// Import `file` into the RBD pool as version 1 of a new image `name` (qcow2, VMDK and
    /// VHDX are converted to a raw file in the state directory first, removed afterwards).
    /// The copy runs without the directory lock; a failed import, or a name taken meanwhile
    /// (here or by another server sharing the pool), leaves nothing in the pool.
    pub fn image_add_rbd(
        &self,
        name: &ImageName,
        file: &std::path::Path,
        store: &StoreConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Version, ConfigError> {
        {
            let l = self.lock()?;
            if l.state.registry.image(name).is_some() {
                return Err(ConfigError::ImageExists(name.to_string()));
            }
        }
        let (src, size, format) = import::probe(file)?;
        let pool = RbdStore::connect(&store.rbd_config())?;
        let mut staged = None;
        let res = (|| {
            let (mut src, size) = if format == import::Format::Raw {
                (src, size)
            } else {
                let images = self.root.join("images");
                std::fs::create_dir_all(&images).map_err(io_write(&images))?;
                let path = images.join(format!(".import-{name}-{}.raw", std::process::id()));
                staged = Some(path.clone());
                // Converting reports its own progress; the copy into the pool reports again.
                let size = import::import(file, &path, progress)?;
                let f = std::fs::File::open(&path).map_err(|source| ConfigError::Reading {
                    path: path.clone(),
                    source,
                })?;
                (f, size)
            };
            src.seek(std::io::SeekFrom::Start(0))
                .map_err(|source| ConfigError::Reading {
                    path: file.to_path_buf(),
                    source,
                })?;
            match pool.import_base(name.as_str(), 1, &mut src, size, progress) {
                Ok(()) => {}
                Err(StoreError::Ceph { source, .. })
                    if source.raw_os_error() == Some(libc::EEXIST) =>
                {
                    return Err(ConfigError::BadArgument(format!(
                        "image {name} already exists in the Ceph pool {} (published by another \
                         isboot server sharing the pool; `isboot image list` shows it)",
                        store.pool()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            Ok(size)
        })();
        if let Some(p) = &staged {
            let _ = std::fs::remove_file(p);
        }
        let size = res?;
        let spec = pool.base_spec(name.as_str(), 1);
        let publish = (|| {
            let mut l = self.lock()?;
            if l.state.registry.image(name).is_some() {
                return Err(ConfigError::ImageExists(name.to_string()));
            }
            let v = self.rbd_version(1, spec.clone(), size)?;
            l.state.registry.images.push(Image {
                name: name.clone(),
                versions: vec![v.clone()],
                maintenance: None,
            });
            l.save()?;
            Ok(v)
        })();
        if publish.is_err() {
            let _ = pool.remove_base(name.as_str(), 1);
        }
        publish
    }
}

impl Locked {
    /// Clone `image` version `version` (on RBD) as a new disk for client `stem`, named
    /// `isboot-client-STEM.SERIAL` (a reset makes a new name, so a server that still has the
    /// old disk open never stands in the way). Returns the clone's spec for the registry.
    pub(super) fn new_rbd_disk(
        &mut self,
        stem: &str,
        image: &ImageName,
        version: u64,
    ) -> Result<String, ConfigError> {
        let number = u32::try_from(version)
            .map_err(|_| ConfigError::UnknownImage(format!("{image} version {version}")))?;
        let pool = RbdStore::connect(&self.state.config.store.rbd_config())?;
        let disk = format!("{stem}.{}", self.state.registry.next_serial());
        pool.create_client(&disk, image.as_str(), number, false)?;
        Ok(pool.client_spec(&disk))
    }
}

impl Locked {
    /// Start the next version of `image` on RBD: a clone of version `from` (see
    /// [`RbdStore::create_edit`]). Returns the edit's spec for the registry.
    pub(super) fn new_rbd_edit(
        &mut self,
        image: &ImageName,
        from: u64,
    ) -> Result<String, ConfigError> {
        let img = self.state.image(image)?;
        let next = img.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
        let number = |n: u64| {
            u32::try_from(n).map_err(|_| ConfigError::UnknownImage(format!("{image} version {n}")))
        };
        let pool = RbdStore::connect(&self.state.config.store.rbd_config())?;
        Ok(pool.create_edit(image.as_str(), number(from)?, number(next)?)?)
    }
}

/// Publish the edit `spec` as a version (snapshot and protect it: a metadata operation);
/// returns the version's spec.
pub fn publish_edit(store: &StoreConfig, spec: &str) -> Result<String, ConfigError> {
    // The server closes a disk at most a minute after its last session (RBD_CLOSE_WAIT).
    let wait = std::time::Duration::from_secs(75);
    Ok(RbdStore::connect(&store.rbd_config())?.publish_edit(spec, wait)?)
}

/// Take back [`publish_edit`] when the registry could not record the version (best effort):
/// the snapshot goes, the edit and its writes stay.
pub fn unpublish_edit(store: &StoreConfig, spec: &str) {
    if let Ok(p) = RbdStore::connect(&store.rbd_config()) {
        let _ = p.unpublish_edit(spec);
    }
}

/// Remove the writable disk `spec` (a client's clone or an unpublished edit) from the pool
/// (best effort: a disk a running server has open is refused here and removed by that server
/// when it lets go of it; anything else is a warning naming the `rbd` command).
pub fn remove_disk(store: &StoreConfig, spec: &str) {
    let r = RbdStore::connect(&store.rbd_config()).and_then(|p| p.remove_disk(spec));
    match r {
        Ok(()) => {}
        Err(StoreError::Ceph { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
            eprintln!(
                "isboot: note: disk {spec} is still open on a server, which removes it when it \
                 lets go of it; if that server is gone: rbd rm {spec} (once its lock has \
                 expired)"
            )
        }
        Err(e) => eprintln!(
            "isboot: warning: disk {spec} stays in the Ceph pool ({e}); remove it with: rbd rm \
             {spec}"
        ),
    }
}

/// Take the versions `gone` (already out of the registry) out of the pool. Returns one
/// warning line per version that stays, with the `rbd` commands that remove it by hand.
pub fn remove_from_pool(store: &StoreConfig, gone: &[(ImageName, Version)]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, v) in gone {
        let Some(spec) = &v.rbd else { continue };
        let (pool_name, image) = spec.split_once('/').unwrap_or((store.pool(), spec));
        let image = image.strip_suffix("@base").unwrap_or(image);
        let mut cfg = store.rbd_config();
        cfg.pool = pool_name.to_string();
        let r = u32::try_from(v.number)
            .map_err(|_| "version number out of range".to_string())
            .and_then(|n| {
                RbdStore::connect(&cfg)
                    .and_then(|p| p.remove_base(name.as_str(), n))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            warnings.push(format!(
                "version {} of {name} stays in the Ceph pool ({e}); remove it with: rbd snap \
                 unprotect {spec} && rbd snap rm {spec} && rbd rm {pool_name}/{image}",
                v.number
            ));
        }
    }
    warnings
}

/// The pool's side of `image list`.
pub struct PoolView {
    /// Where each registry version of an RBD image is: (image, version, place).
    pub places: Vec<(ImageName, u64, Place)>,
    /// The bases in the pool this registry does not list (published by another server).
    pub others: Vec<PoolBase>,
}

/// What the pool says about `images` (a registry's), and what else it holds.
pub fn pool_view(store: &StoreConfig, images: &[Image]) -> Result<PoolView, ConfigError> {
    let pool = RbdStore::connect(&store.rbd_config())?;
    let bases = pool.bases()?;
    let mut places = Vec::new();
    for i in images {
        for v in i.versions.iter().filter(|v| v.rbd.is_some()) {
            let found = bases
                .iter()
                .find(|b| b.image == i.name.as_str() && u64::from(b.version) == v.number)
                .filter(|b| v.rbd.as_deref() == Some(b.spec.as_str()));
            let place = found.map_or(Place::Missing, |b| Place::Pool(b.size));
            places.push((i.name.clone(), v.number, place));
        }
    }
    let others = bases
        .into_iter()
        .filter(|b| {
            !images.iter().any(|i| {
                i.name.as_str() == b.image
                    && i.versions.iter().any(|v| {
                        v.number == u64::from(b.version)
                            && v.rbd.as_deref() == Some(b.spec.as_str())
                    })
            })
        })
        .collect();
    Ok(PoolView { places, others })
}
