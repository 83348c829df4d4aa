//! A published base image version: a raw file mapped read-only once and shared (one copy in
//! page cache) by every client view built on it.

use super::raw::{MappedFile, map_bytes};
use super::{BlockDevice, SECTOR, Segment, StoreError};
use bytes::Bytes;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Identifies one base image version; recorded in every overlay made on it, so an overlay is
/// never opened over a different base.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BaseId(pub [u8; 16]);

impl BaseId {
    /// A fresh random id (from the kernel's random source).
    pub fn random() -> std::io::Result<BaseId> {
        let mut b = [0u8; 16];
        let mut f = File::open("/dev/urandom")?;
        std::io::Read::read_exact(&mut f, &mut b)?;
        Ok(BaseId(b))
    }

    pub fn parse(s: &str) -> Option<BaseId> {
        let v = hex::decode(s).ok()?;
        Some(BaseId(v.try_into().ok()?))
    }
}

impl fmt::Display for BaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseId({self})")
    }
}

/// How a base file changed under the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseChange {
    /// Someone opened it for writing or truncated it (its read lease was broken).
    Written,
    /// It is shorter than when it was opened.
    Truncated,
    /// Its size or modification time changed.
    Modified,
    /// Another file stands at its path.
    Replaced,
}

impl fmt::Display for BaseChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaseChange::Written => "was opened for writing or truncated",
            BaseChange::Truncated => "was truncated",
            BaseChange::Modified => "was modified in place",
            BaseChange::Replaced => "was replaced by another file",
        })
    }
}

impl BaseChange {
    const ALL: [BaseChange; 4] = [
        BaseChange::Written,
        BaseChange::Truncated,
        BaseChange::Modified,
        BaseChange::Replaced,
    ];
}

/// What identifies a base file: where it lives (device, inode), its size and modification
/// time, as seen when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// What a base file was when it was published, recorded beside its version in the registry
/// and compared when the server opens the file again (after a restart, say): inode, size and
/// modification time (ns). A replacement (`cp` over it, `mv`, a restore) changes at least one
/// of them, so an overlay is never opened over a file other than the one it was made on. Not
/// a content hash on purpose: checking one would read every base in full at every start.
/// The device number is left out: it may differ after a reboot on the same file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Published {
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl Published {
    /// The stamp of the file at `path` now.
    pub fn of(path: &Path) -> std::io::Result<Published> {
        Ok(Published::from(&Identity::of(&std::fs::metadata(path)?)))
    }

    /// The file's stamp differs from this one: say what differs, in words.
    fn differences(&self, now: &Published) -> String {
        let mut d = Vec::new();
        if now.inode != self.inode {
            d.push(format!("inode {}, published {}", now.inode, self.inode));
        }
        if now.size != self.size {
            d.push(format!("size {}, published {}", now.size, self.size));
        }
        if now.mtime_ns != self.mtime_ns {
            d.push("modification time changed".to_owned());
        }
        d.join("; ")
    }
}

impl From<&Identity> for Published {
    fn from(i: &Identity) -> Published {
        Published {
            inode: i.ino,
            size: i.size,
            mtime_ns: i128::from(i.mtime.0) * 1_000_000_000 + i128::from(i.mtime.1),
        }
    }
}

/// `inode:size:mtime_ns`, as written in the registry.
impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.inode, self.size, self.mtime_ns)
    }
}

impl From<Published> for String {
    fn from(p: Published) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Published {
    type Error = String;
    fn try_from(s: String) -> Result<Published, String> {
        let bad = || format!("{s:?} is not inode:size:mtime_ns");
        let mut it = s.split(':');
        let (Some(i), Some(z), Some(m), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        Ok(Published {
            inode: i.parse().map_err(|_| bad())?,
            size: z.parse().map_err(|_| bad())?,
            mtime_ns: m.parse().map_err(|_| bad())?,
        })
    }
}

/// A base file opened from a path, watched for changes ([`check_all`]).
pub struct Watched {
    path: PathBuf,
    file: Arc<File>,
    identity: Identity,
    /// 0 while unchanged, else 1 + the index of the [`BaseChange`] in `BaseChange::ALL`.
    changed: AtomicU8,
    leased: AtomicBool,
}

/// Every base file opened in this process (dead entries are dropped as [`check_all`] runs).
static WATCHED: Mutex<Vec<Weak<Watched>>> = Mutex::new(Vec::new());

impl Watched {
    fn changed(&self) -> Option<BaseChange> {
        let i = self.changed.load(Ordering::Acquire);
        BaseChange::ALL.get(usize::from(i).checked_sub(1)?).copied()
    }

    /// Compare the file with what it was at open; the first change found sticks.
    fn check(&self) -> Option<BaseChange> {
        if let Some(c) = self.changed() {
            return Some(c);
        }
        let id = self.identity;
        let found = if self.leased.load(Ordering::Acquire)
            && crate::sys::lease_breaking(&self.file).unwrap_or(false)
        {
            Some(BaseChange::Written)
        } else {
            match self.file.metadata().map(|m| Identity::of(&m)) {
                Ok(now) if now.size < id.size => Some(BaseChange::Truncated),
                Ok(now) if now != id => Some(BaseChange::Modified),
                _ => match std::fs::metadata(&self.path) {
                    Ok(m) if (m.dev(), m.ino()) != (id.dev, id.ino) => Some(BaseChange::Replaced),
                    _ => None,
                },
            }
        };
        let c = found?;
        let i = BaseChange::ALL.iter().position(|x| *x == c).unwrap_or(0) as u8 + 1;
        if self.changed.swap(i, Ordering::AcqRel) == 0 {
            tracing::error!(
                "base image {} {c} while clients use it: their disks answer MEDIUM ERROR from \
                 now on instead of mixing old and new data. A published base is never changed \
                 in place: put the file back as it was and restart the server, or publish a \
                 new version and reset the clients that used it",
                self.path.display()
            );
        }
        Some(c)
    }

    /// Let go of the read lease (after a change was seen), so the writer waiting for it goes on.
    pub fn release_lease(&self) {
        if self.leased.swap(false, Ordering::AcqRel) {
            let _ = crate::sys::release_lease(&self.file);
        }
    }
}

/// Check every base file opened in this process against what it was at open, and mark the
/// changed ones (their reads fail from then on). With `lease`, also take a read lease on each
/// one not yet leased: a process that then opens one for writing or truncates it waits (up to
/// the kernel's lease-break-time, 45 s by default) for the lease, which shows here as
/// [`BaseChange::Written`], before any byte changes: so no read meets a truncated map. Returns
/// the bases found changed while leased: let their leases go ([`Watched::release_lease`])
/// once reads that began before the mark have finished. Call with `lease` only where SIGIO is
/// handled (a lease break sends it; its default action ends the process).
pub fn check_all(lease: bool) -> Vec<Arc<Watched>> {
    let live: Vec<Arc<Watched>> = {
        let mut w = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|x| x.strong_count() > 0);
        w.iter().filter_map(Weak::upgrade).collect()
    };
    let mut release = Vec::new();
    for w in live {
        if w.check().is_some() {
            if w.leased.load(Ordering::Acquire) {
                release.push(w);
            }
        } else if lease
            && !w.leased.swap(true, Ordering::AcqRel)
            && crate::sys::take_read_lease(&w.file).is_err()
        {
            // Not the owner, or open for writing elsewhere: changes are still seen, by
            // comparing the file at every check.
            w.leased.store(false, Ordering::Release);
        }
    }
    release
}

/// A read-only base image. Reads are zero-copy slices of the shared map, which also name their
/// place in the file (a published version never changes), so they may be sent with `sendfile`.
pub struct BaseImage {
    bytes: Bytes,
    /// The image file, when the base is one (not for bases held in memory).
    file: Option<Arc<File>>,
    /// The file as opened, watched for changes.
    watched: Option<Arc<Watched>>,
    id: BaseId,
    version: u64,
}

impl BaseImage {
    /// Map the raw file at `path` read-only.
    pub fn open(path: &Path, id: BaseId, version: u64) -> Result<BaseImage, StoreError> {
        BaseImage::open_published(path, id, version, None)
    }

    /// Map the raw file at `path` read-only, refused ([`StoreError::NotAsPublished`]) unless
    /// it is still the file `published` describes (when given).
    pub fn open_published(
        path: &Path,
        id: BaseId,
        version: u64,
        published: Option<&Published>,
    ) -> Result<BaseImage, StoreError> {
        // A published version is never written, truncated or replaced in place while it
        // exists (a new version is a new file, renamed in once complete).
        let m = MappedFile::open(path, false)?;
        let identity = m
            .file
            .metadata()
            .map(|meta| Identity::of(&meta))
            .map_err(|source| StoreError::Opening {
                path: path.display().to_string(),
                source,
            })?;
        if let Some(p) = published {
            let now = Published::from(&identity);
            if now != *p {
                return Err(StoreError::NotAsPublished {
                    path: path.display().to_string(),
                    differs: p.differences(&now),
                });
            }
        }
        let watched = Arc::new(Watched {
            path: path.to_path_buf(),
            file: m.file.clone(),
            identity,
            changed: AtomicU8::new(0),
            leased: AtomicBool::new(false),
        });
        WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&watched));
        Ok(BaseImage {
            bytes: map_bytes(&m.map, 0, m.map.len()),
            file: Some(m.file),
            watched: Some(watched),
            id,
            version,
        })
    }

    /// A base held in memory (tests, benches).
    pub fn from_bytes(bytes: Bytes, id: BaseId, version: u64) -> Result<BaseImage, StoreError> {
        let size = bytes.len() as u64;
        if size == 0 || size % SECTOR != 0 {
            return Err(StoreError::BadImageSize {
                path: "(memory)".into(),
                size,
            });
        }
        Ok(BaseImage {
            bytes,
            file: None,
            watched: None,
            id,
            version,
        })
    }

    pub fn id(&self) -> BaseId {
        self.id
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bytes of the image file in the page cache now (`mincore`); `None` for a base held in
    /// memory. Costs one system call per 256 MiB of image: sample it, never per request.
    pub fn cached_bytes(&self) -> Option<std::io::Result<u64>> {
        self.file.as_ref()?;
        Some(crate::sys::resident_bytes(&self.bytes))
    }

    /// `Err` once the file was seen changed ([`check_all`]): nothing of it may be served.
    pub fn unchanged(&self) -> Result<(), StoreError> {
        match self.watched.as_ref().and_then(|w| w.changed()) {
            Some(c) => Err(StoreError::BaseChanged(c)),
            None => Ok(()),
        }
    }

    /// The whole image; slice it for zero-copy segments.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// `[start, end)` of the image as a zero-copy segment that knows its place in the file.
    /// The caller has range-checked.
    pub fn segment(&self, start: usize, end: usize) -> Segment {
        let bytes = self.bytes.slice(start..end);
        match &self.file {
            Some(f) => Segment::in_file(bytes, f, start as u64),
            None => bytes.into(),
        }
    }
}

impl BlockDevice for BaseImage {
    /// Reads are slices of the image's mapping.
    fn reads_from_memory(&self) -> bool {
        true
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError> {
        self.check_range(offset, len as u64)?;
        self.unchanged()?;
        if len > 0 {
            let o = offset as usize;
            out.push(self.segment(o, o + len));
        }
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_file(dir: &Path, name: &str) -> (PathBuf, BaseImage) {
        let p = dir.join(name);
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let b = BaseImage::open(&p, BaseId::default(), 1).unwrap();
        (p, b)
    }

    #[test]
    fn a_base_file_changed_after_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, in_place) = base_file(dir.path(), "a");
        let (p2, replaced) = base_file(dir.path(), "b");
        let (_p3, kept) = base_file(dir.path(), "c");
        check_all(false);
        let mut out = Vec::new();
        assert!(in_place.read(0, 512, &mut out).is_ok());
        // Written in place (same size; the modification time moves on)...
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p1, vec![8u8; 8192]).unwrap();
        // ... and replaced by another file of the same size.
        let tmp = dir.path().join("b.new");
        std::fs::write(&tmp, vec![7u8; 8192]).unwrap();
        std::fs::rename(&tmp, &p2).unwrap();
        check_all(false);
        assert!(matches!(
            in_place.read(0, 512, &mut out),
            Err(StoreError::BaseChanged(BaseChange::Modified))
        ));
        assert!(matches!(
            replaced.read(0, 512, &mut out),
            Err(StoreError::BaseChanged(BaseChange::Replaced))
        ));
        assert!(
            kept.read(0, 512, &mut out).is_ok(),
            "the others keep serving"
        );
    }
}
