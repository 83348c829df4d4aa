//! A published base image version: a raw file mapped read-only once and shared (one copy in
//! page cache) by every client view built on it.

use super::raw::{MappedFile, map_bytes};
use super::{BlockDevice, SECTOR, Segment, StoreError};
use bytes::Bytes;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

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

/// A read-only base image. Reads are zero-copy slices of the shared map, which also name their
/// place in the file (a published version never changes), so they may be sent with `sendfile`.
pub struct BaseImage {
    bytes: Bytes,
    /// The image file, when the base is one (not for bases held in memory).
    file: Option<Arc<File>>,
    id: BaseId,
    version: u64,
}

impl BaseImage {
    /// Map the raw file at `path` read-only.
    pub fn open(path: &Path, id: BaseId, version: u64) -> Result<BaseImage, StoreError> {
        // A published version is never written, truncated or replaced in place while it
        // exists (a new version is a new file, renamed in once complete).
        let m = MappedFile::open(path, false)?;
        Ok(BaseImage {
            bytes: map_bytes(&m.map, 0, m.map.len()),
            file: Some(m.file),
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
