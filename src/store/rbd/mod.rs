//! Base images and client disks on Ceph RBD (cargo feature `rbd`).
//!
//! Layout in one pool:
//! - a base version is the image `isboot-base-IMAGE-vN` with the protected snapshot `base`;
//!   version N+1 (made by maintenance) is a clone of `isboot-base-IMAGE-vN@base` that was
//!   edited and then snapshotted, so versions share their unchanged objects (while it is
//!   edited it has no snapshot and is not a published version; removing version N later
//!   flattens N+1 first, which copies the objects it still shares);
//! - a client disk is the image `isboot-client-CLIENT`, a copy-on-write clone of its base
//!   version's snapshot: what the client writes lands in its clone, the base is never written.
//!   Resetting a client is removing its clone and cloning again.
//!
//! A client disk is opened with its exclusive lock taken and kept ([`RbdStore::open_client`]):
//! a second isboot server that tries to open the same disk is refused while the first one
//! lives; librbd breaks the lock of a client that is gone (its watch on the image header
//! expired) when the next server asks for it.
//!
//! Writes are durable when librbd acknowledges them: the store connects with `rbd_cache =
//! false`, so librbd acknowledges a write only once the OSDs have committed it, and FUA and
//! SYNCHRONIZE CACHE need no extra round trip (flush stays a call for the contract's sake).
//!
//! All `unsafe` (the librbd/librados C API) is in [`ffi`].

pub mod ffi;
#[cfg(test)]
mod tests;

use super::{AsyncBlockDevice, BlockDevice, IoFuture, Segment, StoreError};
use bytes::Bytes;
use ffi::{Cluster, FEATURE_DEEP_FLATTEN, FEATURE_EXCLUSIVE_LOCK, FEATURE_LAYERING, Image, IoCtx};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The RBD image a writable disk's spec names: a client disk (`POOL/isboot-client-DISK`) or
/// a version being edited (`POOL/isboot-base-IMAGE-vN`, no snapshot). Anything else (a
/// published version's `@base` snapshot, another prefix) is not a disk isboot writes.
pub fn writable_image_of_spec(spec: &str) -> Option<&str> {
    let name = spec.split_once('/')?.1;
    if name.contains(['/', '@']) {
        return None;
    }
    let rest = name
        .strip_prefix("isboot-client-")
        .or_else(|| name.strip_prefix("isboot-base-"))?;
    (!rest.is_empty()).then_some(name)
}

/// Snapshot name of a published base version.
const BASE_SNAP: &str = "base";
/// Features of every image isboot makes: clones need layering; exclusive-lock keeps two
/// servers from writing one disk.
const FEATURES: u64 = FEATURE_LAYERING | FEATURE_EXCLUSIVE_LOCK;

/// How to reach the cluster (the `[store]` section of the config, for `backend = "rbd"`).
#[derive(Debug, Clone)]
pub struct RbdConfig {
    /// ceph.conf with the monitor addresses.
    pub conf: String,
    /// Keyring with the client's cephx key (a file: the key is never on a command line).
    pub keyring: String,
    /// Ceph client name, e.g. `client.isboot`.
    pub client: String,
    /// Pool holding base versions and client disks.
    pub pool: String,
}

/// The development cluster of `scripts/ceph-dev` as `client.admin`, for tests: started when it
/// does not run (idempotent); the one named by `ISBOOT_CEPH_ID`, default `rbdtest`.
#[cfg(any(test, feature = "test-tools"))]
pub fn dev_cluster() -> RbdConfig {
    let id = std::env::var("ISBOOT_CEPH_ID").unwrap_or_else(|_| "rbdtest".into());
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ceph-dev"))
        .args(["start", &id])
        .output()
        .expect("running scripts/ceph-dev");
    assert!(
        out.status.success(),
        "scripts/ceph-dev start failed (needs ceph-mon, ceph-osd, ceph-common):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("scripts/ceph-dev start printed no {key}: {text}"))
            .to_string()
    };
    RbdConfig {
        conf: get("CEPH_CONF"),
        keyring: get("CEPH_KEYRING"),
        client: "client.admin".into(),
        pool: get("CEPH_POOL"),
    }
}

/// Base versions and client disks in one RBD pool.
pub struct RbdStore {
    io: Arc<IoCtx>,
    pool: String,
}

/// A published base version found in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolBase {
    pub image: String,
    pub version: u32,
    pub size: u64,
    /// `POOL/isboot-base-IMAGE-vN@base`.
    pub spec: String,
}

fn base_name(image: &str, version: u32) -> String {
    format!("isboot-base-{image}-v{version}")
}

fn client_name(client: &str) -> String {
    format!("isboot-client-{client}")
}

fn ceph_err(what: &str, e: io::Error) -> StoreError {
    let hint = match e.raw_os_error() {
        Some(libc::ENOENT) => " (no such image or pool)",
        Some(libc::EEXIST) => " (already exists)",
        Some(libc::EBUSY) => " (in use: open on a server, or has clones)",
        Some(libc::EROFS) => " (its lock is held by another server)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (check the keyring and the client's caps)",
        _ => "",
    };
    StoreError::Ceph {
        what: what.to_string(),
        source: e,
        hint,
    }
}

impl RbdStore {
    /// Connect to the cluster and open the pool.
    pub fn connect(cfg: &RbdConfig) -> Result<RbdStore, StoreError> {
        let cluster = Cluster::connect(
            &cfg.conf,
            &cfg.client,
            &[
                ("keyring", &cfg.keyring),
                // Acknowledged writes are committed on the OSDs (see the module doc).
                ("rbd_cache", "false"),
                // Fail instead of hanging forever when the cluster is unreachable.
                ("client_mount_timeout", "15"),
                ("rados_mon_op_timeout", "15"),
            ],
        )
        .map_err(|e| ceph_err(&format!("connecting with {}", cfg.conf), e))?;
        let io = cluster
            .ioctx(&cfg.pool)
            .map_err(|e| ceph_err(&format!("opening pool {}", cfg.pool), e))?;
        Ok(RbdStore {
            io,
            pool: cfg.pool.clone(),
        })
    }

    /// The pool's I/O context (for RADOS objects in it: the shared state).
    pub fn ioctx(&self) -> &Arc<IoCtx> {
        &self.io
    }

    /// Where version `version` of `image` lives: `POOL/isboot-base-IMAGE-vN@base` (what the
    /// registry records and the `rbd` command takes).
    pub fn base_spec(&self, image: &str, version: u32) -> String {
        format!("{}/{}@{BASE_SNAP}", self.pool, base_name(image, version))
    }

    /// Publish version `version` of `image` from `src` (a raw disk image of `size` bytes, read
    /// in order): create the version's RBD image, copy the data (`progress(done, size)` after
    /// each chunk; all-zero chunks are skipped, the image starts as zeros), then snapshot and
    /// protect it. A failed import leaves no half version behind.
    pub fn import_base(
        &self,
        image: &str,
        version: u32,
        src: &mut dyn io::Read,
        size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), StoreError> {
        let name = base_name(image, version);
        self.io
            .create(&name, size, FEATURES)
            .map_err(|e| ceph_err(&format!("creating {name}"), e))?;
        let r = (|| {
            let img = self
                .io
                .open(&name, None, false)
                .map_err(|e| ceph_err(&name, e))?;
            let mut buf = vec![0u8; 4 << 20];
            let mut done = 0u64;
            while done < size {
                let want = usize::try_from((size - done).min(buf.len() as u64)).unwrap_or(0);
                let chunk = &mut buf[..want];
                src.read_exact(chunk).map_err(StoreError::Reading)?;
                if chunk.iter().any(|&b| b != 0) {
                    img.write(done, chunk).map_err(|e| ceph_err(&name, e))?;
                }
                done += want as u64;
                progress(done, size);
            }
            img.flush().map_err(|e| ceph_err(&name, e))?;
            img.snap_create_protected(BASE_SNAP)
                .map_err(|e| ceph_err(&format!("snapshot {name}@{BASE_SNAP}"), e))
        })();
        if r.is_err() {
            let _ = self.remove_base(image, version);
        }
        r
    }

    /// Remove version `version` of `image` from the pool: unprotect and remove its snapshot,
    /// then the image. Absent is fine; refused (EBUSY) while clones of it exist or a server
    /// has it open. When the next version was made from this one by maintenance (a clone of
    /// it), the next version is flattened first (a copy of the objects it still shares).
    pub fn remove_base(&self, image: &str, version: u32) -> Result<(), StoreError> {
        let name = base_name(image, version);
        match self.io.open(&name, None, false) {
            Ok(img) => match img.snap_unprotect_remove(BASE_SNAP) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && self.flatten_next(image, version) =>
                {
                    img.snap_unprotect_remove(BASE_SNAP)
                        .map_err(|e| ceph_err(&format!("removing {name}@{BASE_SNAP}"), e))?
                }
                Err(e) => return Err(ceph_err(&format!("removing {name}@{BASE_SNAP}"), e)),
            },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(ceph_err(&format!("opening {name}"), e)),
        }
        match self.io.remove(&name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(ceph_err(&format!("removing {name}"), e)),
        }
    }

    /// Flatten version `version + 1` of `image` if it is a clone (of `version`); true when
    /// it was.
    fn flatten_next(&self, image: &str, version: u32) -> bool {
        let Some(next) = version.checked_add(1) else {
            return false;
        };
        self.io
            .open(&base_name(image, next), None, false)
            .and_then(|img| img.flatten())
            .is_ok()
    }

    /// Start the next version of `image`: a writable copy-on-write clone of version `from`
    /// named as version `next` (`isboot-base-IMAGE-vNEXT`, no snapshot yet, so not
    /// published). Returns its spec `POOL/isboot-base-IMAGE-vNEXT` (served like a client
    /// disk, see [`writable_image_of_spec`]). Fails (EEXIST) while an earlier edit of that
    /// version is still in the pool.
    pub fn create_edit(&self, image: &str, from: u32, next: u32) -> Result<String, StoreError> {
        let parent = base_name(image, from);
        let name = base_name(image, next);
        match self
            .io
            .clone_image(&parent, BASE_SNAP, &name, FEATURES | FEATURE_DEEP_FLATTEN)
        {
            Ok(()) => Ok(format!("{}/{name}", self.pool)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(StoreError::Ceph {
                what: format!("{name} is still in the pool (an earlier edit of {image})"),
                source: e,
                hint: "; a server removes an aborted edit once its sessions let go of it: try \
                       again in a minute",
            }),
            Err(e) => Err(ceph_err(
                &format!("cloning {parent}@{BASE_SNAP} to {name}"),
                e,
            )),
        }
    }

    /// Publish the edit `spec` (see [`create_edit`](Self::create_edit)) as a version:
    /// snapshot and protect it. A metadata operation: the version shares every object the
    /// edit did not write with the version it was cloned from. Returns the version's spec
    /// (`POOL/isboot-base-IMAGE-vN@base`, as [`base_spec`](Self::base_spec)).
    ///
    /// The server that served the edit must have let go of it: this waits up to `wait` for
    /// the edit's exclusive lock (a server that is gone loses it once its watch expires).
    pub fn publish_edit(
        &self,
        spec: &str,
        wait: std::time::Duration,
    ) -> Result<String, StoreError> {
        let name = self.own_image(spec)?;
        let until = std::time::Instant::now() + wait;
        let img = loop {
            let img = self
                .io
                .open(name, None, false)
                .map_err(|e| ceph_err(&format!("opening {name}"), e))?;
            match img.lock_exclusive() {
                Ok(()) => break img,
                Err(_) if std::time::Instant::now() < until => {
                    drop(img);
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => {
                    let owners = img.lock_owners().unwrap_or_default().join(", ");
                    return Err(StoreError::Ceph {
                        what: format!("{name} is still open on an isboot server ({owners})"),
                        source: e,
                        hint: "; that server lets go of it once its sessions end: run the \
                               commit again",
                    });
                }
            }
        };
        img.flush().map_err(|e| ceph_err(name, e))?;
        img.snap_create_protected(BASE_SNAP)
            .map_err(|e| ceph_err(&format!("snapshot {name}@{BASE_SNAP}"), e))?;
        Ok(format!("{spec}@{BASE_SNAP}"))
    }

    /// Undo [`publish_edit`](Self::publish_edit): the snapshot goes, the edit stays.
    pub fn unpublish_edit(&self, spec: &str) -> Result<(), StoreError> {
        let name = self.own_image(spec)?;
        let img = self
            .io
            .open(name, None, false)
            .map_err(|e| ceph_err(&format!("opening {name}"), e))?;
        img.snap_unprotect_remove(BASE_SNAP)
            .map_err(|e| ceph_err(&format!("removing {name}@{BASE_SNAP}"), e))
    }

    /// Remove the writable disk `spec` (a client disk or an unpublished edit; absent is
    /// fine). A published version is never removed here: librbd refuses an image with
    /// snapshots.
    pub fn remove_disk(&self, spec: &str) -> Result<(), StoreError> {
        let name = self.own_image(spec)?;
        match self.io.remove(name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(ceph_err(&format!("removing {name}"), e)),
        }
    }

    /// The image name of a writable disk's spec in this pool.
    fn own_image<'a>(&self, spec: &'a str) -> Result<&'a str, StoreError> {
        writable_image_of_spec(spec)
            .filter(|_| spec.split_once('/').map(|(p, _)| p) == Some(self.pool.as_str()))
            .ok_or_else(|| StoreError::Ceph {
                what: format!("{spec} is not a writable isboot disk in pool {}", self.pool),
                source: io::Error::from_raw_os_error(libc::EINVAL),
                hint: "",
            })
    }

    /// Every published base version in the pool (an image `isboot-base-IMAGE-vN` with its
    /// snapshot), sorted by image and version.
    pub fn bases(&self) -> Result<Vec<PoolBase>, StoreError> {
        let mut out = Vec::new();
        for n in self
            .io
            .list()
            .map_err(|e| ceph_err("listing the pool", e))?
        {
            let Some((image, version)) = n
                .strip_prefix("isboot-base-")
                .and_then(|r| r.rsplit_once("-v"))
                .and_then(|(i, v)| Some((i.to_string(), v.parse::<u32>().ok()?)))
            else {
                continue;
            };
            // Only versions whose snapshot exists are published (an import in progress has none).
            if let Ok(img) = self.io.open(&n, Some(BASE_SNAP), true) {
                let size = img.size().map_err(|e| ceph_err(&n, e))?;
                out.push(PoolBase {
                    spec: self.base_spec(&image, version),
                    image,
                    version,
                    size,
                });
            }
        }
        out.sort_unstable_by(|a, b| (&a.image, a.version).cmp(&(&b.image, b.version)));
        Ok(out)
    }

    /// Versions of `image` published in the pool, with their sizes, oldest first.
    pub fn versions(&self, image: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        Ok(self
            .bases()?
            .into_iter()
            .filter(|b| b.image == image)
            .map(|b| (b.version, b.size))
            .collect())
    }

    /// The spec `POOL/NAME` of the image `name` in this pool.
    pub fn spec_of(&self, name: &str) -> String {
        format!("{}/{name}", self.pool)
    }

    /// Where the client disk `disk` lives: `POOL/isboot-client-DISK` (what the registry
    /// records; [`writable_image_of_spec`] turns it back into the image's name).
    pub fn client_spec(&self, disk: &str) -> String {
        format!("{}/{}", self.pool, client_name(disk))
    }

    /// Make `client`'s disk a fresh copy-on-write clone of `image` version `version`. With
    /// `replace`, an existing disk is removed first (reset); without, an existing disk is an
    /// error. Fails with "in use" while a server has the disk open.
    pub fn create_client(
        &self,
        client: &str,
        image: &str,
        version: u32,
        replace: bool,
    ) -> Result<(), StoreError> {
        let name = client_name(client);
        if replace {
            match self.io.remove(&name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(ceph_err(&format!("removing {name}"), e)),
            }
        }
        let parent = base_name(image, version);
        self.io
            .clone_image(&parent, BASE_SNAP, &name, FEATURES)
            .map_err(|e| ceph_err(&format!("cloning {parent}@{BASE_SNAP} to {name}"), e))
    }

    /// Remove `client`'s disk (absent is fine).
    pub fn remove_client(&self, client: &str) -> Result<(), StoreError> {
        self.remove_disk(&self.client_spec(client))
    }

    /// Open `client`'s disk for serving, holding its exclusive lock until the device is
    /// dropped. Refused (with who holds it) while another live server has it.
    pub fn open_client(&self, client: &str) -> Result<RbdDevice, StoreError> {
        self.open_writable(&client_name(client))
    }

    /// Open the writable disk `spec` (a client disk or an edit, see
    /// [`writable_image_of_spec`]) as [`open_client`](Self::open_client) does.
    pub fn open_disk(&self, spec: &str) -> Result<RbdDevice, StoreError> {
        self.open_writable(self.own_image(spec)?)
    }

    fn open_writable(&self, name: &str) -> Result<RbdDevice, StoreError> {
        let img = self
            .io
            .open(name, None, false)
            .map_err(|e| ceph_err(&format!("opening {name}"), e))?;
        if let Err(e) = img.lock_exclusive() {
            let owners = img.lock_owners().unwrap_or_default().join(", ");
            return Err(StoreError::Ceph {
                what: format!("{name} is served by another isboot server ({owners})"),
                source: e,
                hint: "; stop that server or wait until its lock expires",
            });
        }
        RbdDevice::new(img, false, name.to_string())
    }

    /// Open `image` version `version` read-only (its protected snapshot).
    pub fn open_base(&self, image: &str, version: u32) -> Result<RbdDevice, StoreError> {
        let name = base_name(image, version);
        let img = self
            .io
            .open(&name, Some(BASE_SNAP), true)
            .map_err(|e| ceph_err(&format!("opening {name}@{BASE_SNAP}"), e))?;
        RbdDevice::new(img, true, name)
    }
}

/// Await an operation that returns no data, started (or refused) already; a failure to start
/// it or a negative result is `err` of the errno.
async fn finish(
    op: Result<ffi::Aio, StoreError>,
    err: fn(io::Error) -> StoreError,
) -> Result<(), StoreError> {
    let (r, _) = op?.await;
    if r < 0 {
        return Err(err(ffi::aio_err(r)));
    }
    Ok(())
}

/// A block device on one RBD image.
pub struct RbdDevice {
    img: Image,
    size: u64,
    read_only: bool,
    name: String,
    space: Space,
}

/// What a writable image holds of its own, in whole objects (a clone allocates an object by
/// copy-up when it is first written), and the quota on it.
struct Space {
    /// Bytes of one object (a power of two).
    obj_size: u64,
    /// The objects held by the image itself (found at open, or claimed by a write since).
    held: Mutex<Held>,
    /// Most bytes of objects the image may hold (`u64::MAX`: no quota).
    quota: AtomicU64,
    /// The last write that needed a new object was refused for the quota.
    over: AtomicBool,
}

/// One bit per object, and how many are set.
struct Held {
    bits: Vec<u64>,
    count: u64,
}

impl Held {
    fn has(&self, k: u64) -> bool {
        self.bits
            .get((k / 64) as usize)
            .is_none_or(|w| w & (1 << (k % 64)) != 0)
    }

    fn hold(&mut self, k: u64) {
        if let Some(w) = self.bits.get_mut((k / 64) as usize) {
            self.count += u64::from(*w & (1 << (k % 64)) == 0);
            *w |= 1 << (k % 64);
        }
    }
}

impl Space {
    /// The objects `img` (`size` bytes) holds itself; none for a read-only snapshot.
    fn of(img: &Image, size: u64, read_only: bool, name: &str) -> Result<Space, StoreError> {
        let obj_size = img.object_size().map_err(|e| ceph_err(name, e))?;
        if !obj_size.is_power_of_two() {
            return Err(ceph_err(
                name,
                io::Error::other(format!("object size {obj_size} is not a power of two")),
            ));
        }
        let objects = size.div_ceil(obj_size);
        let mut held = Held {
            bits: vec![0u64; usize::try_from(objects.div_ceil(64)).unwrap_or(0)],
            count: 0,
        };
        if !read_only {
            let extents = img
                .own_extents(size)
                .map_err(|e| ceph_err(&format!("counting the objects of {name}"), e))?;
            for (off, len) in extents {
                Self::objects(obj_size, off, len).for_each(|k| held.hold(k));
            }
        }
        Ok(Space {
            obj_size,
            held: Mutex::new(held),
            quota: AtomicU64::new(u64::MAX),
            over: AtomicBool::new(false),
        })
    }

    /// The objects `[offset, offset + len)` touches.
    fn objects(obj_size: u64, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        offset / obj_size..(offset + len - 1) / obj_size + 1
    }

    /// Claim the objects of `[offset, offset + len)` the image does not hold yet, before a
    /// write that allocates them is sent: refused with [`StoreError::QuotaExceeded`] (nothing
    /// sent, nothing claimed) when they would take the image past its quota. A write that
    /// then fails keeps its claim (librbd may have made the object already): the count errs
    /// on the side of the quota.
    fn claim(&self, offset: u64, len: u64, name: &str) -> Result<(), StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let range = Self::objects(self.obj_size, offset, len);
        let new = range.clone().filter(|&k| !held.has(k)).count() as u64;
        if new == 0 {
            return Ok(());
        }
        let quota = self.quota.load(Ordering::Acquire);
        if (held.count + new).saturating_mul(self.obj_size) > quota {
            let e = StoreError::QuotaExceeded { quota };
            if !self.over.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "{name}: {e}: this client's writes to parts of its disk it has not written \
                     yet fail with SPACE ALLOCATION FAILED (its file system sees ENOSPC; other \
                     clients are not affected) until its quota is raised (isboot set-client \
                     --quota-mib) or it is reset (isboot reset-client); on RBD a discard does \
                     not give space back"
                );
            }
            return Err(e);
        }
        range.for_each(|k| held.hold(k));
        self.over.store(false, Ordering::Release);
        Ok(())
    }

    /// Zeroing `[offset, offset + len)` of an image `size` bytes long: an object it covers
    /// only in part is copied up (the rest of it must still read the parent's data), so it is
    /// held from now on; counted, never refused (zeroing is not charged, but what it holds
    /// must not go unseen until the next open). Objects it covers whole allocate nothing.
    fn zeroed(&self, offset: u64, len: u64, size: u64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset.saturating_add(len);
        for k in Self::objects(self.obj_size, offset, len) {
            let (start, stop) = (k * self.obj_size, ((k + 1) * self.obj_size).min(size));
            if offset <= start && end >= stop {
                continue;
            }
            held.hold(k);
        }
    }

    fn held_bytes(&self) -> u64 {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.count.saturating_mul(self.obj_size)
    }
}

impl RbdDevice {
    fn new(img: Image, read_only: bool, name: String) -> Result<RbdDevice, StoreError> {
        let size = img.size().map_err(|e| ceph_err(&name, e))?;
        if size % super::SECTOR != 0 {
            return Err(StoreError::BadImageSize { path: name, size });
        }
        let space = Space::of(&img, size, read_only, &name)?;
        Ok(RbdDevice {
            img,
            size,
            read_only,
            name,
            space,
        })
    }

    /// Limit what the image holds of its own to `bytes` (`None`: no limit), counted in whole
    /// objects as a clone allocates them. A write that touches an object the image does not
    /// hold yet fails with [`StoreError::QuotaExceeded`] when that object would pass the
    /// quota; writes within objects it holds still work. Takes effect at once. A discard does
    /// not give space back (the object stays the image's, RBD keeps it to hide the parent's
    /// data).
    pub fn set_quota(&self, bytes: Option<u64>) {
        self.space
            .quota
            .store(bytes.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The quota in bytes, if one is set.
    pub fn quota(&self) -> Option<u64> {
        match self.space.quota.load(Ordering::Acquire) {
            u64::MAX => None,
            q => Some(q),
        }
    }

    /// True when the last write that needed a new object was refused for the quota.
    pub fn over_quota(&self) -> bool {
        self.space.over.load(Ordering::Acquire)
    }

    /// Bytes of the objects the image holds itself (what the quota counts): found at open,
    /// plus the objects writes took since.
    pub fn held_bytes(&self) -> u64 {
        self.space.held_bytes()
    }

    /// Size of one of the image's objects, bytes: the quota's unit.
    pub fn object_size(&self) -> u64 {
        self.space.obj_size
    }

    /// The RBD image's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read `len` bytes at `offset` on librbd's asynchronous API: the read is submitted now,
    /// no thread waits on Ceph, and librbd's completion wakes the task awaiting the result.
    pub fn read_async(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send + 'static {
        let op = match self.check_range(offset, len as u64) {
            Err(e) => Err(e),
            Ok(()) if len == 0 => Ok(None),
            Ok(()) => self
                .img
                .aio_read(offset, len)
                .map(Some)
                .map_err(StoreError::Reading),
        };
        async move {
            let Some(aio) = op? else {
                return Ok(Vec::new());
            };
            let (r, buf) = aio.await;
            match usize::try_from(r) {
                Ok(n) if n == len => Ok(buf),
                Ok(n) => Err(StoreError::Reading(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short RBD read: {n} of {len} bytes"),
                ))),
                Err(_) => Err(StoreError::Reading(ffi::aio_err(r))),
            }
        }
    }

    /// Write `data` at `offset` asynchronously (submitted now); durable once it returns
    /// (`rbd_cache` is off). The buffer belongs to the operation: a caller that stops waiting
    /// (a dropped future) does not stop the write, and the memory stays valid until librbd is
    /// done with it.
    pub fn write_async(
        &self,
        offset: u64,
        data: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let data = data.into();
        let op = match self.allocating(offset, data.len() as u64) {
            Err(e) => Err(e),
            Ok(()) if data.is_empty() => Ok(None),
            Ok(()) => self
                .img
                .aio_write(offset, data)
                .map(Some)
                .map_err(StoreError::writing),
        };
        async move {
            match op? {
                Some(aio) => finish(Ok(aio), StoreError::writing).await,
                None => Ok(()),
            }
        }
    }

    /// Flush asynchronously (SYNCHRONIZE CACHE; with `rbd_cache` off every acknowledged write
    /// is already durable).
    pub fn flush_async(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        finish(
            self.img.aio_flush().map_err(StoreError::Flushing),
            StoreError::Flushing,
        )
    }

    /// Make `[offset, offset + len)` read as zeros asynchronously (UNMAP, WRITE SAME of zeros).
    pub fn write_zeroes_async(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = self
            .writable(offset, len)
            .and_then(|()| self.usize_len(offset, len))
            .and_then(|n| {
                self.space.zeroed(offset, len, self.size);
                self.img
                    .aio_write_zeroes(offset, n)
                    .map_err(StoreError::Discarding)
            });
        finish(op, StoreError::Discarding)
    }

    /// Fill `[offset, offset + len)` with copies of `pattern` asynchronously (WRITE SAME);
    /// `len` must be a multiple of the pattern's length.
    pub fn write_same_async(
        &self,
        offset: u64,
        len: u64,
        pattern: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = self
            .writable(offset, len)
            .and_then(|()| self.usize_len(offset, len))
            .and_then(|n| {
                if pattern.is_empty() || n % pattern.len() != 0 {
                    return Err(StoreError::Writing(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "a {}-byte pattern does not fill {len} bytes a whole number of times",
                            pattern.len()
                        ),
                    )));
                }
                self.space.claim(offset, len, &self.name)?;
                self.img
                    .aio_writesame(offset, n, pattern)
                    .map_err(StoreError::writing)
            });
        finish(op, StoreError::writing)
    }

    fn writable(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        self.check_range(offset, len)
    }

    /// Check a write of data to `[offset, offset + len)` and claim the objects it allocates
    /// against the quota (WRITE, WRITE SAME, and through them COMPARE AND WRITE and WRITE AND
    /// VERIFY, on the blocking and the asynchronous path). Zeroing (UNMAP, WRITE SAME of
    /// zeros) is not charged nor refused.
    fn allocating(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.writable(offset, len)?;
        self.space.claim(offset, len, &self.name)
    }

    fn usize_len(&self, offset: u64, len: u64) -> Result<usize, StoreError> {
        usize::try_from(len).map_err(|_| StoreError::OutOfRange {
            offset,
            len,
            size: self.size,
        })
    }

    /// True while this device holds its image's exclusive lock.
    pub fn holds_lock(&self) -> bool {
        self.img.is_lock_owner().unwrap_or(false)
    }
}

impl AsyncBlockDevice for RbdDevice {
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<Vec<u8>> {
        Box::pin(self.read_async(offset, len))
    }
    /// Durable either way: librbd acknowledges committed writes (`rbd_cache` is off).
    fn write_at(&self, offset: u64, data: Bytes, _durable: bool) -> IoFuture<()> {
        Box::pin(self.write_async(offset, data))
    }
    fn flush_all(&self) -> IoFuture<()> {
        Box::pin(self.flush_async())
    }
    fn zero_at(&self, offset: u64, len: u64) -> IoFuture<()> {
        Box::pin(self.write_zeroes_async(offset, len))
    }
    fn write_same_at(&self, offset: u64, len: u64, pattern: Vec<u8>) -> IoFuture<()> {
        Box::pin(self.write_same_async(offset, len, pattern))
    }
}

impl BlockDevice for RbdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError> {
        self.check_range(offset, len as u64)?;
        if len > 0 {
            let mut buf = vec![0u8; len];
            self.img
                .read(offset, &mut buf)
                .map_err(StoreError::Reading)?;
            out.push(buf.into());
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], _durable: bool) -> Result<(), StoreError> {
        self.allocating(offset, data.len() as u64)?;
        // Durable once acknowledged (rbd_cache is off): FUA needs nothing more. A full pool or
        // a pool quota (ENOSPC, EDQUOT) is NoSpace, like a full file system under an overlay.
        self.img.write(offset, data).map_err(StoreError::writing)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.img.flush().map_err(StoreError::Flushing)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.writable(offset, len)?;
        let n = self.usize_len(offset, len)?;
        self.space.zeroed(offset, len, self.size);
        self.img
            .write_zeroes(offset, n)
            .map_err(StoreError::Discarding)
    }
}
