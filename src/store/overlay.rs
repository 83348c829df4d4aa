//! A client's copy-on-write view: a private overlay file over a shared read-only base image.
//!
//! # On-disk format (version 1)
//!
//! One sparse file, all integers little-endian:
//!
//! ```text
//!  offset  size  field
//!  ------  ----  ---------------------------------------------------------------
//!       0     8  magic "ISBOOTOV"
//!       8     4  format version (1)
//!      12     4  block size B in bytes (power of two, 512 ..= 1 MiB; default 4096)
//!      16     8  device size S in bytes (= base image size, multiple of 512)
//!      24     8  base version number (informative: shown by `isboot status`)
//!      32    16  base id (random id of the base version this overlay was made on)
//!      48     8  map offset      (= 4096)
//!      56     8  map length M    (= ceil(ceil(S/B) / 32) * 8, rounded up to 4096)
//!      64     8  data offset D   (= map offset + M, rounded up to max(B, 4096))
//!      72     4  CRC32C of bytes 0..72
//!      76  4020  zero
//!    4096     M  allocation map: u64 words, 2 bits per block; block k is bits
//!                2*(k%32)..2*(k%32)+2 of word k/32:
//!                  0 = BASE  read from the base image
//!                  1 = DATA  read from the data region
//!                  2 = ZERO  reads as zeros (discarded)
//!                  3 = (invalid; the file is refused)
//!       D  n*B   data region: block k at D + k*B (identity mapped, sparse; the last block
//!                may extend past S, the excess is never read)
//! ```
//!
//! # Durability
//!
//! The data of a block reaches stable storage before any map entry that says DATA for it:
//! a write puts the data in the data region (a block whose state is not DATA is always written
//! whole, merged with its old content: copy-up), then changes the in-memory map and marks its
//! map page dirty. [`Overlay::flush`] snapshots the dirty map pages, `fdatasync`s the file
//! (data), writes the snapshots, `fdatasync`s again (map). A map entry observed in the
//! snapshot was set after its data write returned, so that data is covered by the first sync.
//! A block whose on-disk state is not DATA never has its data region trusted, so a crash
//! before the map entry is durable shows the old content; the data region of a DATA block is
//! overwritten in place, so a torn write shows, sector by sector, old or new data. A write with
//! `durable` is followed by a sync (just of the data when the map already says DATA on disk for
//! every block it touched, otherwise a full flush). After any I/O error the overlay refuses
//! writes and flushes (an `fdatasync` error may have dropped dirty pages) until reopened.
//!
//! # Concurrency
//!
//! Every method takes `&self`. Reads take no lock: the map is an array of atomic words and a
//! block's state changes in one atomic step, after its data is in place, so a read sees the
//! old or the new content. Writes and discards lock their blocks (1024 stripes, taken in
//! order) because copy-up is read-modify-write. Flushes are serialised, so a flush that
//! returns covers every write that returned before it was called.

use super::base::{BaseId, BaseImage};
use super::file::{OverlayFile, RealFile};
use super::{BlockDevice, SECTOR, Segment, StoreError};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub const MAGIC: [u8; 8] = *b"ISBOOTOV";
pub const FORMAT_VERSION: u32 = 1;
/// Bytes reserved for the header at the start of the file.
pub const HEADER_LEN: u64 = 4096;
/// Bytes of the header covered by its checksum (the CRC sits right after them).
const HEADER_CRC_AT: usize = 72;
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Largest device an overlay may describe (bounds the map read when opening a file): 16 TiB.
pub const MAX_DEVICE_SIZE: u64 = 1 << 44;
/// Unit in which map changes are written back.
const MAP_PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = MAP_PAGE / 8;
const BLOCKS_PER_WORD: u64 = 32;
/// Lock stripes serialising writes to the same block (copy-up is read-modify-write).
const STRIPES: usize = 1024;

const ST_BASE: u64 = 0;
const ST_DATA: u64 = 1;
const ST_ZERO: u64 = 2;

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Why an overlay file's header (or its map) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("{len} bytes, need {HEADER_CRC_AT_END}")]
    TooShort { len: usize },
    #[error("not an isboot overlay (bad magic)")]
    BadMagic,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("format version {0}, this isboot reads {FORMAT_VERSION}")]
    UnsupportedVersion(u32),
    #[error("block size {0} is not a power of two in 512..=1048576")]
    BadBlockSize(u32),
    #[error("device size {0} is not a positive multiple of 512 <= 16 TiB")]
    BadDeviceSize(u64),
    #[error("region offsets do not match the block size and device size")]
    RegionMismatch,
    #[error("file is {len} bytes, the header needs {need}")]
    FileTooShort { len: u64, need: u64 },
    #[error("map word {0} holds an invalid entry")]
    InvalidMapEntry(usize),
    #[error("device too large to map")]
    TooLargeToMap,
}

/// Bytes of the header that must be present: the checksummed part and the CRC.
const HEADER_CRC_AT_END: usize = HEADER_CRC_AT + 4;

/// The overlay header (see the module documentation for its layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub block_size: u32,
    pub size: u64,
    pub base_version: u64,
    pub base_id: BaseId,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Header {
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size as u64)
    }
    fn words(&self) -> usize {
        self.blocks().div_ceil(BLOCKS_PER_WORD) as usize
    }
    pub fn map_offset(&self) -> u64 {
        HEADER_LEN
    }
    pub fn map_len(&self) -> u64 {
        align_up(self.words() as u64 * 8, MAP_PAGE as u64).max(MAP_PAGE as u64)
    }
    pub fn data_offset(&self) -> u64 {
        align_up(
            self.map_offset() + self.map_len(),
            (self.block_size as u64).max(4096),
        )
    }
    /// Length of the (sparse) file.
    pub fn file_len(&self) -> u64 {
        self.data_offset() + self.blocks() * self.block_size as u64
    }

    fn validate(&self) -> Result<(), HeaderError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(HeaderError::BadBlockSize(bs));
        }
        if self.size == 0 || self.size % SECTOR != 0 || self.size > MAX_DEVICE_SIZE {
            return Err(HeaderError::BadDeviceSize(self.size));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_version.to_le_bytes());
        b[32..48].copy_from_slice(&self.base_id.0);
        b[48..56].copy_from_slice(&self.map_offset().to_le_bytes());
        b[56..64].copy_from_slice(&self.map_len().to_le_bytes());
        b[64..72].copy_from_slice(&self.data_offset().to_le_bytes());
        let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
        b[72..76].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        if b.len() < HEADER_CRC_AT_END {
            return Err(HeaderError::TooShort { len: b.len() });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if b[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
        if u32_at(72) != crc {
            return Err(HeaderError::BadChecksum);
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[32..48]);
        let h = Header {
            block_size: u32_at(12),
            size: u64_at(16),
            base_version: u64_at(24),
            base_id: BaseId(id),
        };
        h.validate()?;
        if u64_at(48) != h.map_offset()
            || u64_at(56) != h.map_len()
            || u64_at(64) != h.data_offset()
        {
            return Err(HeaderError::RegionMismatch);
        }
        Ok(h)
    }
}

/// Counts of blocks by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayUsage {
    pub block_size: u32,
    pub blocks: u64,
    /// Blocks whose data lives in the overlay.
    pub data_blocks: u64,
    /// Blocks discarded (read as zeros).
    pub zero_blocks: u64,
}

/// A client's view: overlay over base. Safe to share between threads.
pub struct Overlay {
    file: Arc<dyn OverlayFile>,
    base: Arc<BaseImage>,
    hdr: Header,
    bs: u64,
    /// Current map (what reads use).
    state: Box<[AtomicU64]>,
    /// Map as last written to stable storage.
    persisted: Box<[AtomicU64]>,
    /// Map pages changed since the last flush.
    dirty: Mutex<BTreeSet<usize>>,
    flush_lock: Mutex<()>,
    stripes: Box<[Mutex<()>]>,
    /// The data region mapped read-only (real files), for zero-copy reads.
    data_map: Option<Bytes>,
    read_only: bool,
    failed: AtomicBool,
    /// What the log calls it (its path, when opened from one).
    name: String,
    /// The file system was full at the last write (logged once until a write succeeds).
    out_of_space: AtomicBool,
    /// Blocks in state DATA (kept by [`Overlay::set`]): what the quota counts.
    data_blocks: AtomicU64,
    /// Blocks writes under way have claimed against the quota, not yet DATA.
    claimed: AtomicU64,
    /// Most blocks in state DATA allowed (0: no quota); see [`Overlay::set_quota`].
    quota_blocks: AtomicU64,
    /// A write was refused for the quota (logged once until a write that needs space works).
    over_quota: AtomicBool,
}

fn count_usage(hdr: &Header, words: &[AtomicU64]) -> OverlayUsage {
    let mut u = OverlayUsage {
        block_size: hdr.block_size,
        blocks: hdr.blocks(),
        ..OverlayUsage::default()
    };
    for (i, w) in words.iter().enumerate() {
        let mut w = w.load(Ordering::Acquire);
        let first = i as u64 * BLOCKS_PER_WORD;
        if first + BLOCKS_PER_WORD > u.blocks {
            w &= (1u64 << (2 * (u.blocks - first))) - 1;
        }
        let data = w & !(w >> 1) & 0x5555_5555_5555_5555;
        let zero = (w >> 1) & !w & 0x5555_5555_5555_5555;
        u.data_blocks += data.count_ones() as u64;
        u.zero_blocks += zero.count_ones() as u64;
    }
    u
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Overlay {
    /// Initialise `file` as an empty overlay over `base` (everything reads from the base).
    pub fn create(
        file: Arc<dyn OverlayFile>,
        base: Arc<BaseImage>,
        block_size: u32,
    ) -> Result<Overlay, StoreError> {
        let hdr = Header {
            block_size,
            size: base.size(),
            base_version: base.version(),
            base_id: base.id(),
        };
        hdr.validate()?;
        file.set_len(0).map_err(StoreError::Writing)?;
        file.set_len(hdr.file_len()).map_err(StoreError::Writing)?;
        file.write_at(&hdr.encode(), 0)
            .map_err(StoreError::Writing)?;
        file.sync_data().map_err(StoreError::Flushing)?;
        Overlay::open(file, base, false)
    }

    /// Open an existing overlay; it must have been made on `base`.
    pub fn open(
        file: Arc<dyn OverlayFile>,
        base: Arc<BaseImage>,
        read_only: bool,
    ) -> Result<Overlay, StoreError> {
        let mut hb = vec![0u8; HEADER_LEN as usize];
        file.read_at(&mut hb, 0).map_err(StoreError::Reading)?;
        let hdr = Header::decode(&hb)?;
        if hdr.base_id != base.id() || hdr.size != base.size() {
            return Err(StoreError::OverlayBaseMismatch {
                expected: format!("{} ({} bytes)", base.id(), base.size()),
                found: format!("{} ({} bytes)", hdr.base_id, hdr.size),
            });
        }
        let flen = file.file_len().map_err(StoreError::Reading)?;
        if flen < hdr.file_len() {
            return Err(HeaderError::FileTooShort {
                len: flen,
                need: hdr.file_len(),
            }
            .into());
        }
        let words = hdr.words();
        let mut raw = vec![0u8; words * 8];
        file.read_at(&mut raw, hdr.map_offset())
            .map_err(StoreError::ReadingOverlayMap)?;
        if !read_only {
            // Allocate the map's pages now (writing back what is there), so that a file
            // system that fills up later fails data writes (one command each), not the
            // map's flush (which would fail the overlay). Best effort: a full file system
            // now shows at the first flush instead.
            let _ = file.write_at(&raw, hdr.map_offset());
        }
        let blocks = hdr.blocks();
        let mut state = Vec::with_capacity(words);
        let mut persisted = Vec::with_capacity(words);
        for (i, c) in raw.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            let mut w = u64::from_le_bytes(a);
            // Bits for blocks past the end are ignored (and cleared).
            let first = i as u64 * BLOCKS_PER_WORD;
            if first + BLOCKS_PER_WORD > blocks {
                let valid = blocks - first;
                w &= (1u64 << (2 * valid)) - 1;
            }
            // 0b11 in any entry is invalid.
            if (w & (w >> 1)) & 0x5555_5555_5555_5555 != 0 {
                return Err(HeaderError::InvalidMapEntry(i).into());
            }
            state.push(AtomicU64::new(w));
            persisted.push(AtomicU64::new(w));
        }
        let data_len = usize::try_from(blocks * hdr.block_size as u64)
            .map_err(|_| HeaderError::TooLargeToMap)?;
        let data_map = match file.map(hdr.data_offset(), data_len) {
            Some(Ok(b)) => Some(b),
            Some(Err(source)) => {
                return Err(StoreError::Mapping {
                    path: "overlay data region".into(),
                    source,
                });
            }
            None => None,
        };
        let stripes = (0..STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Overlay {
            bs: hdr.block_size as u64,
            file,
            base,
            hdr,
            state: state.into(),
            persisted: persisted.into(),
            dirty: Mutex::new(BTreeSet::new()),
            flush_lock: Mutex::new(()),
            stripes,
            data_map,
            read_only,
            failed: AtomicBool::new(false),
            name: "overlay".into(),
            out_of_space: AtomicBool::new(false),
            data_blocks: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            quota_blocks: AtomicU64::new(0),
            over_quota: AtomicBool::new(false),
        })
        .inspect(|o| {
            o.data_blocks
                .store(o.usage().data_blocks, Ordering::Release);
        })
    }

    /// Create a fresh overlay file at `path` atomically (temp file, fsync, rename, fsync of
    /// the directory); replaces any file there (open views of the old one keep working on the
    /// old inode).
    pub fn create_at(
        path: &Path,
        base: Arc<BaseImage>,
        block_size: u32,
    ) -> Result<Overlay, StoreError> {
        let shown = path.display().to_string();
        let err = |source| StoreError::CreatingOverlay {
            path: shown.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        // Mode 0660 (less the umask): a client's disk is private to the service's user and
        // group (the CLI run by a member of group isboot creates it, the service writes it).
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o660)
            .open(&tmp)
            .map_err(err)?;
        let file: Arc<dyn OverlayFile> = Arc::new(RealFile(f));
        let ov = match Overlay::create(file, base, block_size) {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(ov)
    }

    /// Open the overlay file at `path` over `base`.
    pub fn open_at(
        path: &Path,
        base: Arc<BaseImage>,
        read_only: bool,
    ) -> Result<Overlay, StoreError> {
        let shown = path.display().to_string();
        let f = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| StoreError::Opening {
                path: shown.clone(),
                source,
            })?;
        let mut ov = Overlay::open(Arc::new(RealFile(f)), base, read_only)?;
        ov.name = shown;
        Ok(ov)
    }

    /// Block counts of the overlay file at `path`, from its header and map (no base needed).
    pub fn usage_at(path: &Path) -> Result<OverlayUsage, StoreError> {
        let shown = path.display().to_string();
        let f = File::open(path).map_err(|source| StoreError::Opening {
            path: shown,
            source,
        })?;
        let f = RealFile(f);
        let mut hb = vec![0u8; HEADER_LEN as usize];
        f.read_at(&mut hb, 0).map_err(StoreError::Reading)?;
        let hdr = Header::decode(&hb)?;
        let flen = f.file_len().map_err(StoreError::Reading)?;
        if flen < hdr.file_len() {
            return Err(HeaderError::FileTooShort {
                len: flen,
                need: hdr.file_len(),
            }
            .into());
        }
        let mut raw = vec![0u8; hdr.words() * 8];
        f.read_at(&mut raw, hdr.map_offset())
            .map_err(StoreError::ReadingOverlayMap)?;
        let words: Vec<AtomicU64> = raw
            .chunks_exact(8)
            .map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect();
        Ok(count_usage(&hdr, &words))
    }

    /// True after an I/O error: writes and flushes are refused until the overlay is reopened.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// True when map changes are waiting for a flush.
    pub fn has_unflushed(&self) -> bool {
        !lock(&self.dirty).is_empty()
    }

    pub fn header(&self) -> &Header {
        &self.hdr
    }

    pub fn base(&self) -> &Arc<BaseImage> {
        &self.base
    }

    pub fn usage(&self) -> OverlayUsage {
        count_usage(&self.hdr, &self.state)
    }

    /// Bytes of data the overlay holds (its DATA blocks): what [`Overlay::set_quota`] limits.
    pub fn data_bytes(&self) -> u64 {
        self.data_blocks
            .load(Ordering::Acquire)
            .saturating_mul(self.bs)
    }

    /// Limit the data this overlay holds to `bytes` (rounded down to whole blocks, at least
    /// one; `None`: no limit). A write that needs blocks past it fails with
    /// [`StoreError::QuotaExceeded`] and changes nothing; rewrites of blocks the overlay
    /// already holds still work, and a discard or a reset makes room. Takes effect at once.
    pub fn set_quota(&self, bytes: Option<u64>) {
        let blocks = bytes.map_or(0, |b| (b / self.bs).max(1));
        self.quota_blocks.store(blocks, Ordering::Release);
    }

    /// The quota in bytes, if one is set.
    pub fn quota(&self) -> Option<u64> {
        match self.quota_blocks.load(Ordering::Acquire) {
            0 => None,
            b => Some(b.saturating_mul(self.bs)),
        }
    }

    /// True when the last write that needed space was refused for the quota.
    pub fn over_quota(&self) -> bool {
        self.over_quota.load(Ordering::Acquire)
    }

    /// Claim the blocks of `first..=last` not yet DATA against the quota (the caller holds
    /// their stripe locks, so none changes meanwhile); give them back with [`Overlay::unclaim`]
    /// once the write is done (then they are DATA, or the write failed). Each writer adds its
    /// claim before it reads the others' claims and the DATA count, so of two racing writers
    /// the later one sees the earlier: together they never pass the quota.
    fn claim(&self, first: u64, last: u64) -> Result<u64, StoreError> {
        let quota = self.quota_blocks.load(Ordering::Acquire);
        if quota == 0 {
            return Ok(0);
        }
        let new = (first..=last).filter(|&k| self.get(k) != ST_DATA).count() as u64;
        if new == 0 {
            return Ok(0);
        }
        self.claimed.fetch_add(new, Ordering::AcqRel);
        let used = self.claimed.load(Ordering::Acquire) + self.data_blocks.load(Ordering::Acquire);
        if used <= quota {
            return Ok(new);
        }
        self.claimed.fetch_sub(new, Ordering::AcqRel);
        let e = StoreError::QuotaExceeded {
            quota: quota.saturating_mul(self.bs),
        };
        if !self.over_quota.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "{}: {e}: this client's writes that need new space fail with SPACE ALLOCATION \
                 FAILED (its file system sees ENOSPC; other clients are not affected) until it \
                 frees space (fstrim, discard) or is reset (isboot reset-client); [limits] \
                 client_quota_mib sets the quota",
                self.name
            );
        }
        Err(e)
    }

    fn unclaim(&self, n: u64) {
        if n > 0 {
            self.claimed.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn get(&self, k: u64) -> u64 {
        (self.state[(k / BLOCKS_PER_WORD) as usize].load(Ordering::Acquire)
            >> ((k % BLOCKS_PER_WORD) * 2))
            & 3
    }

    fn persisted_get(&self, k: u64) -> u64 {
        (self.persisted[(k / BLOCKS_PER_WORD) as usize].load(Ordering::Acquire)
            >> ((k % BLOCKS_PER_WORD) * 2))
            & 3
    }

    /// Set block `k`'s state in one atomic step (no reader sees an intermediate value), and
    /// keep the count of DATA blocks.
    fn set(&self, k: u64, v: u64) -> bool {
        let sh = (k % BLOCKS_PER_WORD) * 2;
        let w = &self.state[(k / BLOCKS_PER_WORD) as usize];
        let old = (w
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
                Some((x & !(3 << sh)) | (v << sh))
            })
            .unwrap_or_else(|x| x)
            >> sh)
            & 3;
        if old != ST_DATA && v == ST_DATA {
            self.data_blocks.fetch_add(1, Ordering::AcqRel);
        } else if old == ST_DATA && v != ST_DATA {
            self.data_blocks.fetch_sub(1, Ordering::AcqRel);
        }
        old != v
    }

    fn mark_dirty(&self, first: u64, last: u64) {
        let p0 = (first / BLOCKS_PER_WORD) as usize / WORDS_PER_PAGE;
        let p1 = (last / BLOCKS_PER_WORD) as usize / WORDS_PER_PAGE;
        let mut d = lock(&self.dirty);
        for p in p0..=p1 {
            d.insert(p);
        }
    }

    /// Length of block `k` inside the device (the last block may be short).
    fn block_len(&self, k: u64) -> u64 {
        (self.hdr.size - k * self.bs).min(self.bs)
    }

    fn lock_blocks(&self, first: u64, last: u64) -> Vec<MutexGuard<'_, ()>> {
        let n = last - first + 1;
        let mut idx: Vec<usize> = if n >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|k| (k % STRIPES as u64) as usize)
                .collect()
        };
        idx.sort_unstable();
        idx.into_iter().map(|i| lock(&self.stripes[i])).collect()
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        self.base.unchanged()?;
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::OverlayFailed);
        }
        Ok(())
    }

    /// A write found the file system full: say so once, with what to do.
    fn out_of_space(&self, e: &StoreError) {
        if !self.out_of_space.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "{}: {e}; this disk's writes fail with SPACE ALLOCATION FAILED (its client sees \
                 ENOSPC; other disks are not affected) until space is freed on the state file \
                 system (see `df` and `isboot status`; remove unused image versions or reset \
                 clients whose overlays grew)",
                self.name
            );
        }
    }

    /// A write succeeded: if the file system was full before, say that it is no longer.
    fn space_back(&self) {
        if self.out_of_space.load(Ordering::Acquire)
            && self.out_of_space.swap(false, Ordering::AcqRel)
        {
            tracing::info!("{}: writes succeed again (space was freed)", self.name);
        }
    }

    fn fail<T>(&self, e: StoreError) -> Result<T, StoreError> {
        self.failed.store(true, Ordering::Release);
        Err(e)
    }

    /// Current content of block `k` (`len` bytes), for copy-up.
    fn block_content(&self, k: u64) -> Result<Vec<u8>, StoreError> {
        let len = self.block_len(k) as usize;
        let off = (k * self.bs) as usize;
        match self.get(k) {
            ST_BASE => Ok(self.base.bytes()[off..off + len].to_vec()),
            ST_DATA => {
                let mut v = vec![0u8; len];
                self.read_data(k * self.bs, &mut v)?;
                Ok(v)
            }
            _ => Ok(vec![0u8; len]),
        }
    }

    fn read_data(&self, dev_off: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        match &self.data_map {
            Some(m) => {
                let o = dev_off as usize;
                buf.copy_from_slice(&m[o..o + buf.len()]);
                Ok(())
            }
            None => self
                .file
                .read_at(buf, self.hdr.data_offset() + dev_off)
                .map_err(StoreError::Reading),
        }
    }

    /// Write block `k` whole: its current content with the part of `data` (at `offset`) that
    /// falls in it.
    fn copy_up(&self, k: u64, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let bstart = k * self.bs;
        let mut buf = self.block_content(k)?;
        let bend = bstart + buf.len() as u64;
        let end = offset + data.len() as u64;
        let (a, b) = (offset.max(bstart), end.min(bend));
        buf[(a - bstart) as usize..(b - bstart) as usize]
            .copy_from_slice(&data[(a - offset) as usize..(b - offset) as usize]);
        self.file
            .write_at(&buf, self.hdr.data_offset() + bstart)
            .map_err(StoreError::writing)
    }

    /// Write `data` at `offset` with the blocks `first..=last` locked. Returns whether the map
    /// changed.
    fn write_locked(
        &self,
        offset: u64,
        data: &[u8],
        first: u64,
        last: u64,
    ) -> Result<bool, StoreError> {
        let bs = self.bs;
        let end = offset + data.len() as u64;
        let dbase = self.hdr.data_offset();
        // Partial first/last blocks whose data is not in the overlay are copied up whole;
        // everything between is written in place with one positioned write.
        let mut lo = offset;
        let mut hi = end;
        let (fs, fe) = (first * bs, first * bs + self.block_len(first));
        if (offset > fs || end < fe) && self.get(first) != ST_DATA {
            self.copy_up(first, offset, data)?;
            lo = fe.min(end);
        }
        if last != first {
            let (ls, le) = (last * bs, last * bs + self.block_len(last));
            if end < le && self.get(last) != ST_DATA {
                self.copy_up(last, offset, data)?;
                hi = ls;
            }
        }
        if lo < hi {
            self.file
                .write_at(
                    &data[(lo - offset) as usize..(hi - offset) as usize],
                    dbase + lo,
                )
                .map_err(StoreError::writing)?;
        }
        let mut changed = false;
        for k in first..=last {
            changed |= self.set(k, ST_DATA);
        }
        if changed {
            self.mark_dirty(first, last);
        }
        Ok(changed)
    }

    /// Make the blocks `first..=last` (just written) durable.
    fn make_durable(&self, first: u64, last: u64) -> Result<(), StoreError> {
        if (first..=last).all(|k| self.persisted_get(k) == ST_DATA) {
            return match self.file.sync_data() {
                Ok(()) => Ok(()),
                Err(e) => self.fail(StoreError::Flushing(e)),
            };
        }
        self.flush()
    }

    fn flush_inner(&self) -> Result<(), StoreError> {
        let _f = lock(&self.flush_lock);
        let pages = std::mem::take(&mut *lock(&self.dirty));
        let words = self.state.len();
        let snaps: Vec<(usize, Vec<u64>)> = pages
            .iter()
            .map(|&p| {
                let w0 = p * WORDS_PER_PAGE;
                let w1 = (w0 + WORDS_PER_PAGE).min(words);
                (
                    p,
                    self.state[w0..w1]
                        .iter()
                        .map(|w| w.load(Ordering::Acquire))
                        .collect(),
                )
            })
            .collect();
        self.file.sync_data().map_err(StoreError::Flushing)?;
        if snaps.is_empty() {
            return Ok(());
        }
        for (p, ws) in &snaps {
            let bytes: Vec<u8> = ws.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.file
                .write_at(&bytes, self.hdr.map_offset() + (p * MAP_PAGE) as u64)
                .map_err(StoreError::WritingOverlayMap)?;
        }
        self.file.sync_data().map_err(StoreError::Flushing)?;
        for (p, ws) in snaps {
            for (i, w) in ws.into_iter().enumerate() {
                self.persisted[p * WORDS_PER_PAGE + i].store(w, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Write the merged view (base + overlay) to `dest` as a raw image, leaving all-zero
    /// MiB-chunks as holes. `progress` is called with the bytes done so far.
    pub fn write_merged(
        &self,
        dest: &File,
        mut progress: impl FnMut(u64),
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let size = self.size();
        dest.set_len(size).map_err(StoreError::Writing)?;
        let chunk = 1u64 << 20;
        let mut off = 0;
        let mut segs = Vec::new();
        while off < size {
            let n = chunk.min(size - off);
            segs.clear();
            self.read(off, n as usize, &mut segs)?;
            let mut o = off;
            for s in &segs {
                if s.iter().any(|&b| b != 0) {
                    dest.write_all_at(s, o).map_err(StoreError::Writing)?;
                }
                o += s.len() as u64;
            }
            off += n;
            progress(off);
        }
        dest.sync_all().map_err(StoreError::Flushing)
    }
}

impl BlockDevice for Overlay {
    /// Base blocks come from the base's mapping, data blocks from the mapped data region
    /// (a file that cannot be mapped, as in the crash tests, is read with `pread`).
    fn reads_from_memory(&self) -> bool {
        self.base.reads_from_memory() && self.data_map.is_some()
    }
    fn size(&self) -> u64 {
        self.hdr.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError> {
        self.check_range(offset, len as u64)?;
        // A disk over a changed base is refused whole (its overlay was made on the old one).
        self.base.unchanged()?;
        let end = offset + len as u64;
        let bs = self.bs;
        let mut pos = offset;
        while pos < end {
            let k = pos / bs;
            let st = self.get(k);
            // Extend the run while the state stays the same.
            let mut j = k + 1;
            while j * bs < end && self.get(j) == st {
                j += 1;
            }
            let run_end = (j * bs).min(end);
            let (a, b) = (pos as usize, run_end as usize);
            match st {
                ST_BASE => out.push(self.base.segment(a, b)),
                ST_DATA => match &self.data_map {
                    Some(m) => out.push(m.slice(a..b).into()),
                    None => {
                        let mut v = vec![0u8; b - a];
                        self.read_data(pos, &mut v)?;
                        out.push(v.into());
                    }
                },
                _ => {
                    let mut z = b - a;
                    while z > 0 {
                        let n = z.min(ZEROS.len());
                        out.push(Bytes::from_static(&ZEROS[..n]).into());
                        z -= n;
                    }
                }
            }
            pos = run_end;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<(), StoreError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return if durable { self.flush() } else { Ok(()) };
        }
        let first = offset / self.bs;
        let last = (offset + data.len() as u64 - 1) / self.bs;
        {
            let _g = self.lock_blocks(first, last);
            let claimed = self.claim(first, last)?;
            let written = self.write_locked(offset, data, first, last);
            self.unclaim(claimed);
            match written {
                Ok(_) => {
                    self.space_back();
                    if claimed > 0 && self.over_quota.swap(false, Ordering::AcqRel) {
                        tracing::info!("{}: writes fit in the quota again", self.name);
                    }
                }
                // Nothing of it is in the map: the blocks read as before (a block written in
                // place may hold part of the new data, as a disk may after a failed write).
                // The overlay stays usable; later writes succeed once there is space.
                Err(e @ StoreError::NoSpace(_)) => {
                    self.out_of_space(&e);
                    return Err(e);
                }
                Err(e) => return self.fail(e),
            }
        }
        if durable {
            self.make_durable(first, last)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::OverlayFailed);
        }
        match self.flush_inner() {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let bs = self.bs;
        let end = offset + len;
        let first = offset / bs;
        let last = (end - 1) / bs;
        let _g = self.lock_blocks(first, last);
        let mut changed = false;
        let mut punch: Option<(u64, u64)> = None;
        let dbase = self.hdr.data_offset();
        for k in first..=last {
            let bstart = k * bs;
            let bend = bstart + self.block_len(k);
            let (a, b) = (offset.max(bstart), end.min(bend));
            if a > bstart || b < bend {
                // Partial block: zero the range (copy-up).
                if self.get(k) != ST_ZERO {
                    let z = vec![0u8; (b - a) as usize];
                    match self.write_locked(a, &z, k, k) {
                        Ok(c) => changed |= c,
                        Err(e) => return self.fail(e),
                    }
                }
                continue;
            }
            let was_data = self.get(k) == ST_DATA;
            changed |= self.set(k, ST_ZERO);
            if was_data {
                punch = match punch {
                    Some((s, e)) if e == bstart => Some((s, bstart + bs)),
                    Some((s, e)) => {
                        let _ = self.file.punch_hole(dbase + s, e - s);
                        Some((bstart, bstart + bs))
                    }
                    None => Some((bstart, bstart + bs)),
                };
            }
        }
        if let Some((s, e)) = punch {
            // Space reclamation only: a ZERO block's data region is never read.
            let _ = self.file.punch_hole(dbase + s, e - s);
        }
        if changed {
            self.mark_dirty(first, last);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::concat;

    fn base_bytes(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 + i / 4096) as u8).collect()
    }

    fn mem_base(size: usize) -> Arc<BaseImage> {
        Arc::new(BaseImage::from_bytes(Bytes::from(base_bytes(size)), BaseId([7; 16]), 1).unwrap())
    }

    fn read_all(d: &dyn BlockDevice) -> Vec<u8> {
        let mut out = Vec::new();
        d.read(0, d.size() as usize, &mut out).unwrap();
        concat(&out)
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = Header {
            block_size: 4096,
            size: 10 << 20,
            base_version: 3,
            base_id: BaseId([9; 16]),
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"ISBOOTOV");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[0, 0x10, 0, 0]);
        assert_eq!(&b[16..24], &(10u64 << 20).to_le_bytes());
        assert_eq!(&b[48..56], &4096u64.to_le_bytes());
        // 2560 blocks -> 80 words -> 640 bytes -> one map page.
        assert_eq!(&b[56..64], &4096u64.to_le_bytes());
        assert_eq!(&b[64..72], &8192u64.to_le_bytes());
        assert_eq!(Header::decode(&b).unwrap(), h);
        for i in 0..76 {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(
                Header::decode(&c).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        for n in 0..76 {
            assert!(Header::decode(&b[..n]).is_err());
        }
        let bad = Header {
            block_size: 3000,
            ..h.clone()
        };
        assert!(bad.validate().is_err());
    }

    /// A quota counts the blocks the overlay holds: a write that needs one more fails whole
    /// and changes nothing, rewrites of held blocks still work, a discard makes room, the
    /// count survives a reopen, and no quota means no limit.
    #[test]
    fn a_quota_fails_only_writes_that_need_new_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64 * 4096;
        let base = mem_base(size);
        let mut model = base_bytes(size);
        let path = dir.path().join("q.ovl");
        let ov = Overlay::create_at(&path, base.clone(), 4096).unwrap();
        ov.set_quota(Some(4 * 4096 + 100));
        assert_eq!(ov.quota(), Some(4 * 4096));
        ov.write(0, &[1; 3 * 4096], false).unwrap();
        model[..3 * 4096].fill(1);
        // Two new blocks, one left: refused whole, nothing of it lands.
        let e = ov.write(10 * 4096, &[2; 2 * 4096], false).unwrap_err();
        assert!(
            matches!(e, StoreError::QuotaExceeded { quota } if quota == 4 * 4096),
            "{e}"
        );
        assert!(ov.over_quota());
        assert_eq!(read_all(&ov), model);
        // A partial write into a held block and a rewrite need nothing new.
        ov.write(512, &[3; 512], false).unwrap();
        model[512..1024].fill(3);
        ov.write(4096, &[4; 2 * 4096], false).unwrap();
        model[4096..3 * 4096].fill(4);
        ov.write(10 * 4096, &[5; 4096], false).unwrap();
        model[10 * 4096..11 * 4096].fill(5);
        assert!(!ov.over_quota(), "a write that needed space worked");
        assert_eq!(ov.data_bytes(), 4 * 4096);
        assert!(ov.write(20 * 4096, &[6; 512], false).is_err());
        // A discard gives blocks back.
        ov.discard(0, 2 * 4096).unwrap();
        model[..2 * 4096].fill(0);
        assert_eq!(ov.data_bytes(), 2 * 4096);
        ov.write(20 * 4096, &[6; 2 * 4096], false).unwrap();
        model[20 * 4096..22 * 4096].fill(6);
        assert_eq!(read_all(&ov), model);
        ov.flush().unwrap();
        drop(ov);
        let ov = Overlay::open_at(&path, base, false).unwrap();
        assert_eq!(ov.data_bytes(), 4 * 4096, "counted again at open");
        assert_eq!(ov.quota(), None);
        ov.write(30 * 4096, &[7; 8 * 4096], false).unwrap();
        model[30 * 4096..38 * 4096].fill(7);
        assert_eq!(read_all(&ov), model);
    }

    #[test]
    fn only_base_blocks_name_the_base_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.raw");
        std::fs::write(&path, base_bytes(16 * 4096)).unwrap();
        let base = Arc::new(BaseImage::open(&path, BaseId([7; 16]), 1).unwrap());
        let ov = Overlay::create_at(&dir.path().join("c.ovl"), base, 4096).unwrap();
        ov.write(4 * 4096, &[9u8; 4096], false).unwrap();
        ov.discard(8 * 4096, 4096).unwrap();
        let mut out = Vec::new();
        ov.read(4096, 10 * 4096, &mut out).unwrap();
        // (bytes, offset in the base file or None) for each segment, in order.
        let got: Vec<(usize, Option<u64>)> = out
            .iter()
            .map(|s| (s.len(), s.file().map(|(_, o)| o)))
            .collect();
        assert_eq!(
            got,
            vec![
                (3 * 4096, Some(4096)),
                (4096, None),
                (3 * 4096, Some(5 * 4096)),
                (4096, None),
                (2 * 4096, Some(9 * 4096)),
            ]
        );
        let mut model = base_bytes(16 * 4096);
        model[4 * 4096..5 * 4096].fill(9);
        model[8 * 4096..9 * 4096].fill(0);
        assert_eq!(concat(&out), &model[4096..11 * 4096]);
    }

    #[test]
    fn merges_reads_copies_up_and_discards_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64 * 4096 + 1024; // short last block
        let base = mem_base(size);
        let mut model = base_bytes(size);
        let path = dir.path().join("c.ovl");
        let ov = Overlay::create_at(&path, base.clone(), 4096).unwrap();
        assert_eq!(read_all(&ov), model);
        let put = |ov: &Overlay, off: usize, data: &[u8], model: &mut Vec<u8>| {
            ov.write(off as u64, data, false).unwrap();
            model[off..off + data.len()].copy_from_slice(data);
        };
        put(&ov, 512, &[1; 512], &mut model); // partial block 0: copy-up
        put(&ov, 4096 * 3 - 512, &[2; 9216], &mut model); // spans partial, full, partial
        put(&ov, size - 512, &[3; 512], &mut model); // partial short last block
        put(&ov, 4096 * 10, &[4; 4096], &mut model); // whole block
        put(&ov, 4096 * 10 + 1024, &[5; 512], &mut model); // in place in a DATA block
        assert_eq!(read_all(&ov), model);
        ov.discard(4096 * 2 + 512, 4096 * 3).unwrap();
        model[4096 * 2 + 512..4096 * 5 + 512].fill(0);
        assert_eq!(read_all(&ov), model);
        // Odd offsets and lengths.
        for (o, l) in [
            (0, 1),
            (511, 3),
            (4095, 2),
            (4096 * 3 - 7, 9000),
            (size - 1, 1),
        ] {
            let mut out = Vec::new();
            ov.read(o as u64, l, &mut out).unwrap();
            assert_eq!(concat(&out), &model[o..o + l], "read {o}+{l}");
        }
        let u = ov.usage();
        assert!(u.data_blocks > 0 && u.zero_blocks == 2);
        ov.flush().unwrap();
        drop(ov);
        let ov = Overlay::open_at(&path, base.clone(), false).unwrap();
        assert_eq!(read_all(&ov), model);
        assert_eq!(ov.usage(), u);
        // The merged image is what the view reads.
        let merged = dir.path().join("m.raw");
        let f = File::create(&merged).unwrap();
        ov.write_merged(&f, |_| {}).unwrap();
        assert_eq!(std::fs::read(&merged).unwrap(), model);
    }

    #[test]
    fn unflushed_writes_are_not_in_the_map_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let base = mem_base(16 * 4096);
        let path = dir.path().join("c.ovl");
        let ov = Overlay::create_at(&path, base.clone(), 4096).unwrap();
        ov.write(0, &[9; 4096], false).unwrap();
        ov.write(4096, &[8; 4096], true).unwrap();
        // Reopen without flushing the first write's map entry: block 1 is durable, block 0
        // may show either; our map only went to disk with the durable write's flush, which
        // covered both, so both show.
        let ov2 = Overlay::open_at(&path, base.clone(), true).unwrap();
        let all = read_all(&ov2);
        assert_eq!(&all[4096..8192], &[8; 4096]);
        ov.write(8192, &[7; 4096], false).unwrap();
        let ov3 = Overlay::open_at(&path, base.clone(), true).unwrap();
        assert_eq!(&read_all(&ov3)[8192..12288], &base.bytes()[8192..12288]);
    }

    #[test]
    fn refuses_a_different_base_and_damaged_maps() {
        let dir = tempfile::tempdir().unwrap();
        let base = mem_base(8 * 4096);
        let path = dir.path().join("c.ovl");
        drop(Overlay::create_at(&path, base.clone(), 4096).unwrap());
        let other = Arc::new(
            BaseImage::from_bytes(Bytes::from(vec![0u8; 8 * 4096]), BaseId([8; 16]), 2).unwrap(),
        );
        assert!(matches!(
            Overlay::open_at(&path, other, false),
            Err(StoreError::OverlayBaseMismatch { .. })
        ));
        let mut raw = std::fs::read(&path).unwrap();
        raw[4096] = 0xff; // entries of 0b11
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(
            Overlay::open_at(&path, base, false),
            Err(StoreError::BadOverlayHeader(_))
        ));
    }

    #[test]
    fn concurrent_writers_to_shared_blocks_keep_every_sector() {
        let base = mem_base(64 * 4096);
        let file = Arc::new(crate::store::fault::FaultyFile::new(1));
        let ov = Arc::new(Overlay::create(file, base, 4096).unwrap());
        // 8 threads, each owns sector t of every block: copy-ups race on every block.
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let ov = ov.clone();
                std::thread::spawn(move || {
                    for k in 0..64u64 {
                        ov.write(k * 4096 + t as u64 * 512, &[t + 1; 512], k % 16 == 0)
                            .unwrap();
                    }
                    ov.flush().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = read_all(&*ov);
        for k in 0..64 {
            for t in 0..8u8 {
                let o = k * 4096 + t as usize * 512;
                assert!(
                    all[o..o + 512].iter().all(|&b| b == t + 1),
                    "block {k} sector {t}"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Random writes, discards, flushes and reopens on a real (mapped) file, any offset and
        /// length in sectors: every read matches a plain byte-array model.
        #[test]
        fn behaves_like_a_byte_array(
            ops in proptest::collection::vec((0u8..10, 0u64..200, 1u64..40, proptest::prelude::any::<u8>()), 1..60),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let size = 50 * 4096 + 1536;
            let base = mem_base(size);
            let path = dir.path().join("p.ovl");
            let mut ov = Overlay::create_at(&path, base.clone(), 4096).unwrap();
            let mut model = base_bytes(size);
            let sectors = size as u64 / 512;
            for (kind, at, n, byte) in ops {
                let at = at.min(sectors - 1);
                let n = n.min(sectors - at);
                let (o, l) = ((at * 512) as usize, (n * 512) as usize);
                match kind {
                    0..=4 => {
                        ov.write(o as u64, &vec![byte; l], byte % 3 == 0).unwrap();
                        model[o..o + l].fill(byte);
                    }
                    5 => {
                        ov.discard(o as u64, l as u64).unwrap();
                        model[o..o + l].fill(0);
                    }
                    6 => ov.flush().unwrap(),
                    7 => {
                        ov.flush().unwrap();
                        drop(ov);
                        ov = Overlay::open_at(&path, base.clone(), false).unwrap();
                    }
                    _ => {
                        let mut out = Vec::new();
                        ov.read(o as u64, l, &mut out).unwrap();
                        proptest::prop_assert_eq!(concat(&out), &model[o..o + l]);
                    }
                }
            }
            proptest::prop_assert_eq!(read_all(&ov), model);
        }
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    /// A version-1 header, byte by byte (little-endian), as `Header::encode` must write it.
    fn valid_header() -> Vec<u8> {
        let mut h = vec![
            0x49, 0x53, 0x42, 0x4f, 0x4f, 0x54, 0x4f, 0x56, // magic "ISBOOTOV"
            0x01, 0x00, 0x00, 0x00, // format version 1
            0x00, 0x10, 0x00, 0x00, // block size 4096
            0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, // device size 1 MiB (256 blocks)
            0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // base version 7
            0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, // base id (16 bytes)
            0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, //
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // map offset 4096
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // map length 4096 (8 words)
            0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // data offset 8192
            0x08, 0x2a, 0xce, 0xd9, // CRC32C of bytes 0..72
        ];
        h.resize(HEADER_LEN as usize, 0); // zero up to 4096
        h
    }

    fn header() -> Header {
        let mut id = [0u8; 16];
        for (b, v) in id.iter_mut().zip(0xa0u8..) {
            *b = v;
        }
        Header {
            block_size: 4096,
            size: 1 << 20,
            base_version: 7,
            base_id: BaseId(id),
        }
    }

    #[test]
    fn golden_header_decodes_and_encodes() {
        assert_eq!(Header::decode(&valid_header()), Ok(header()));
        assert_eq!(header().encode(), valid_header());
        assert_eq!(header().file_len(), 8192 + (1 << 20));
    }

    #[test]
    fn each_bad_header_has_its_error() {
        let mut h = valid_header();
        h[0] = b'X';
        assert_eq!(Header::decode(&h), Err(HeaderError::BadMagic));

        let mut h = valid_header();
        h[24] = 8; // base version, covered by the checksum
        assert_eq!(Header::decode(&h), Err(HeaderError::BadChecksum));

        let mut h = valid_header();
        h[8] = 2; // version 2, with its checksum
        h[72..76].copy_from_slice(&[0x0e, 0x1b, 0xdd, 0x45]);
        assert_eq!(Header::decode(&h), Err(HeaderError::UnsupportedVersion(2)));

        assert_eq!(
            Header::decode(&valid_header()[..75]),
            Err(HeaderError::TooShort { len: 75 })
        );

        let reencode = |f: &dyn Fn(&mut Header)| {
            let mut hd = header();
            f(&mut hd);
            // encode() writes offsets from the (bad) values; decode must refuse them.
            Header::decode(&hd.encode())
        };
        assert_eq!(
            reencode(&|h| h.block_size = 3000),
            Err(HeaderError::BadBlockSize(3000))
        );
        assert_eq!(
            reencode(&|h| h.size = 1000),
            Err(HeaderError::BadDeviceSize(1000))
        );

        let mut h = valid_header();
        h[64] = 0x00;
        h[65] = 0x30; // data offset 12288
        let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
        h[72..76].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::decode(&h), Err(HeaderError::RegionMismatch));
    }

    #[test]
    fn errors_keep_their_messages() {
        let e = StoreError::from(HeaderError::UnsupportedVersion(2));
        assert_eq!(
            e.to_string(),
            "overlay header: format version 2, this isboot reads 1"
        );
        assert_eq!(
            HeaderError::TooShort { len: 10 }.to_string(),
            "10 bytes, need 76"
        );
    }
}
