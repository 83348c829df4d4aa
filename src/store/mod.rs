//! Block storage behind each logical unit.
//!
//! [`BlockDevice`] hides what backs a LUN: a raw image file ([`raw::RawFile`]), or a client's
//! copy-on-write view of a shared base image. Knows nothing of SCSI or iSCSI.
//!
//! Reads hand out [`Segment`]s so that a device backed by a memory map can give the network
//! layer slices of the map itself (no copy), and, for files that do not change while served,
//! the file range too (so the network layer may `sendfile` it); writes take a slice.

use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;

pub mod base;
#[cfg(test)]
mod crash_test;
#[cfg(any(test, feature = "test-tools"))]
pub mod fault;
pub mod file;
pub mod overlay;
pub mod raw;
#[cfg(feature = "rbd")]
pub mod rbd;
pub mod segment;

pub use segment::Segment;

/// Logical block size every device in isboot exposes.
pub const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O range {offset}+{len} is past the end of the device ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("device is read-only")]
    ReadOnly,
    #[error("opening {path}: {source}")]
    Opening { path: String, source: io::Error },
    #[error("mapping {path}: {source}")]
    Mapping { path: String, source: io::Error },
    #[error("image {path} is {size} bytes, not a multiple of {SECTOR}")]
    BadImageSize { path: String, size: u64 },
    #[error("reading: {0}")]
    Reading(io::Error),
    #[error("writing: {0}")]
    Writing(io::Error),
    #[error("flushing: {0}")]
    Flushing(io::Error),
    #[error("discarding: {0}")]
    Discarding(io::Error),
    #[error("overlay header: {0}")]
    BadOverlayHeader(#[from] overlay::HeaderError),
    #[error("overlay was made on base {found}, not on {expected}")]
    OverlayBaseMismatch { expected: String, found: String },
    #[error("reading overlay map: {0}")]
    ReadingOverlayMap(io::Error),
    #[error("writing overlay map: {0}")]
    WritingOverlayMap(io::Error),
    #[error("creating overlay {path}: {source}")]
    CreatingOverlay { path: String, source: io::Error },
    #[error("overlay failed an earlier I/O and refuses writes until reopened")]
    OverlayFailed,
    /// The file system holding the overlay is full (or a quota is): this write failed, the
    /// overlay stays usable and takes writes again once there is space.
    #[error("no space left for the overlay: {0}")]
    NoSpace(io::Error),
    /// The overlay holds as much data as its quota allows: this write, which needs more, failed
    /// and changed nothing; the overlay stays usable.
    #[error("the overlay's quota of {quota} bytes is used up")]
    QuotaExceeded { quota: u64 },
    /// A librados/librbd call failed: what isboot was doing, the errno, and what to check.
    #[cfg(feature = "rbd")]
    #[error("ceph: {what}: {source}{hint}")]
    Ceph {
        what: String,
        source: io::Error,
        hint: &'static str,
    },
    /// The base image file changed under the server: its clients get errors, not a mix of
    /// old and new data.
    #[error("the base image {0}")]
    BaseChanged(base::BaseChange),
    /// The base file is not the one published: it was replaced or changed since (seen when it
    /// is opened, by [`base::Published`]).
    #[error(
        "base image {path} is not the file that was published ({differs}): it was \
         replaced or changed since, and overlays made on it would mix its data with the old \
         base's. Put the published file back, or publish the new file as a new version \
         (isboot image publish) and reset the clients on this one"
    )]
    NotAsPublished { path: String, differs: String },
}

impl StoreError {
    /// A failed write: [`StoreError::NoSpace`] when the file system was full (ENOSPC, EDQUOT),
    /// else [`StoreError::Writing`].
    pub fn writing(e: io::Error) -> StoreError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::NoSpace(e),
            _ => StoreError::Writing(e),
        }
    }
}

/// A byte-addressed block device. Offsets and lengths passed in by the SCSI layer are always
/// multiples of [`SECTOR`] and inside `size()`; implementations still check and return
/// [`StoreError::OutOfRange`] rather than panic.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes (a multiple of [`SECTOR`]).
    fn size(&self) -> u64;
    /// True when writes are refused.
    fn read_only(&self) -> bool;
    /// True when [`read`](BlockDevice::read) only slices memory the device has mapped (the
    /// page cache of its files), so a read never waits for the disk beyond a page fault. The
    /// transport runs such reads without handing them to a blocking pool. Default: false.
    fn reads_from_memory(&self) -> bool {
        false
    }
    /// Append the bytes `[offset, offset + len)` to `out`, as one or more segments.
    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError>;
    /// Write `data` at `offset`. With `durable`, the data is on stable storage before this
    /// returns (FUA, or write cache off); otherwise it is durable after the next [`flush`].
    ///
    /// [`flush`]: BlockDevice::flush
    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<(), StoreError>;
    /// Make every write that returned before this call durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Deallocate `[offset, offset + len)`; afterwards it reads back as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError>;
    /// Check a range against `size()`.
    fn check_range(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(StoreError::OutOfRange { offset, len, size }),
        }
    }
}

/// A device operation in flight on an [`AsyncBlockDevice`].
pub type IoFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// The asynchronous path of a device whose I/O completes elsewhere (Ceph RBD: librbd's
/// `rbd_aio_*` calls). Each call checks its range, starts the operation at once and returns a
/// future that the operation's completion wakes: no thread waits for it. A future owns what the
/// operation needs (its buffer), so dropping it does not cancel the operation or free memory the
/// operation still uses. Offsets and lengths are bytes, as in [`BlockDevice`].
pub trait AsyncBlockDevice: Send + Sync + 'static {
    /// Read `[offset, offset + len)`.
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<Vec<u8>>;
    /// Write `data` at `offset`; with `durable`, on stable storage once the future is ready.
    fn write_at(&self, offset: u64, data: Bytes, durable: bool) -> IoFuture<()>;
    /// Make every write that completed before this call durable.
    fn flush_all(&self) -> IoFuture<()>;
    /// Make `[offset, offset + len)` read as zeros (UNMAP, WRITE SAME of zeros).
    fn zero_at(&self, offset: u64, len: u64) -> IoFuture<()>;
    /// Fill `[offset, offset + len)` with copies of `pattern` (`len` a multiple of its length).
    fn write_same_at(&self, offset: u64, len: u64, pattern: Vec<u8>) -> IoFuture<()>;
}

/// Copy segments into one contiguous buffer (tests and small control reads).
pub fn concat<S: AsRef<[u8]>>(segs: &[S]) -> Vec<u8> {
    let mut v = Vec::with_capacity(segs.iter().map(|s| s.as_ref().len()).sum());
    for s in segs {
        v.extend_from_slice(s.as_ref());
    }
    v
}
