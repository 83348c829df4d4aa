//! A raw image file as a block device: reads from a shared read-only memory map (zero-copy
//! segments), writes with positioned writes, durability with `fdatasync`.

use super::{BlockDevice, SECTOR, Segment, StoreError};
use bytes::Bytes;
use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A slice of a shared memory map, owned, so it can back a [`Bytes`].
pub struct MapSlice {
    pub map: Arc<Mmap>,
    pub start: usize,
    pub len: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// `[offset, offset+len)` of `map` as a zero-copy [`Bytes`]. The caller has range-checked.
pub fn map_bytes(map: &Arc<Mmap>, offset: u64, len: usize) -> Bytes {
    Bytes::from_owner(MapSlice {
        map: map.clone(),
        start: offset as usize,
        len,
    })
}

/// A file opened and mapped whole, read-only, after checking its size: what [`RawFile`] and
/// [`super::base::BaseImage`] both serve from.
pub(crate) struct MappedFile {
    pub file: Arc<File>,
    pub map: Arc<Mmap>,
    pub size: u64,
}

impl MappedFile {
    /// Open `path` (for writing too with `writable`) and map all of it read-only. The size must
    /// be a non-zero multiple of [`SECTOR`].
    ///
    /// The caller promises what makes the map sound: nothing truncates the file while it is
    /// mapped (a published base version never changes; an exported file is the admin's, and
    /// isboot only writes it in place through `file`, which the unified page cache makes
    /// visible through the map).
    pub fn open(path: &Path, writable: bool) -> Result<MappedFile, StoreError> {
        let shown = path.display().to_string();
        let opening = |source| StoreError::Opening {
            path: shown.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(opening)?;
        let size = file.metadata().map_err(opening)?.len();
        if size == 0 || size % SECTOR != 0 || usize::try_from(size).is_err() {
            return Err(StoreError::BadImageSize { path: shown, size });
        }
        // The contract above is sys::map_readonly's: the file is never truncated while
        // mapped, and in-place writes go through the page cache the map shows.
        let map = crate::sys::map_whole_readonly(&file).map_err(|source| StoreError::Mapping {
            path: shown,
            source,
        })?;
        Ok(MappedFile {
            file: Arc::new(file),
            map: Arc::new(map),
            size,
        })
    }
}

pub struct RawFile {
    file: Arc<File>,
    map: Arc<Mmap>,
    size: u64,
    read_only: bool,
}

impl RawFile {
    pub fn open(path: &Path, read_only: bool) -> Result<RawFile, StoreError> {
        let MappedFile { file, map, size } = MappedFile::open(path, !read_only)?;
        Ok(RawFile {
            file,
            map,
            size,
            read_only,
        })
    }

    /// The shared read-only map of the whole file.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }
}

impl BlockDevice for RawFile {
    /// Reads are slices of the file's mapping.
    fn reads_from_memory(&self) -> bool {
        true
    }
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError> {
        self.check_range(offset, len as u64)?;
        if len > 0 {
            let bytes = map_bytes(&self.map, offset, len);
            // Only a read-only export may be sent from the file: a writable one can change
            // under a READ whose pages are still queued in the socket.
            out.push(if self.read_only {
                Segment::in_file(bytes, &self.file, offset)
            } else {
                bytes.into()
            });
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        self.check_range(offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(StoreError::Writing)?;
        if durable {
            self.file.sync_data().map_err(StoreError::Flushing)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(StoreError::Flushing)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if crate::sys::punch_hole(&*self.file, offset, len).is_ok() {
            return Ok(());
        }
        // Filesystems without hole punching: write zeros.
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(StoreError::Discarding)?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::concat;
    use std::io::Write;

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn reads_writes_and_discards() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let f = image(&data);
        let dev = RawFile::open(f.path(), false).unwrap();
        assert_eq!(dev.size(), 4096);
        let mut out = Vec::new();
        dev.read(512, 1024, &mut out).unwrap();
        assert_eq!(concat(&out), &data[512..1536]);
        dev.write(1024, &[0xAB; 512], true).unwrap();
        out.clear();
        dev.read(1024, 512, &mut out).unwrap();
        assert_eq!(concat(&out), vec![0xAB; 512]);
        dev.discard(0, 2048).unwrap();
        out.clear();
        dev.read(0, 4096, &mut out).unwrap();
        let all = concat(&out);
        assert!(all[..2048].iter().all(|&b| b == 0));
        assert_eq!(&all[2048..], &data[2048..]);
    }

    #[test]
    fn refuses_out_of_range_and_read_only_writes() {
        let f = image(&[1u8; 1024]);
        let dev = RawFile::open(f.path(), true).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            dev.read(512, 1024, &mut out),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.read(u64::MAX, 1, &mut out),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write(0, &[0; 512], false),
            Err(StoreError::ReadOnly)
        ));
    }

    #[test]
    fn only_read_only_files_are_named_in_reads() {
        let f = image(&[3u8; 4096]);
        let mut out = Vec::new();
        let ro = RawFile::open(f.path(), true).unwrap();
        ro.read(512, 1024, &mut out).unwrap();
        assert_eq!(out[0].file().map(|(_, o)| o), Some(512));
        // A writable export can change under a read still queued in the socket.
        out.clear();
        let rw = RawFile::open(f.path(), false).unwrap();
        rw.read(512, 1024, &mut out).unwrap();
        assert!(out[0].file().is_none());
        assert_eq!(concat(&out), vec![3u8; 1024]);
    }

    #[test]
    fn refuses_bad_sizes() {
        let f = image(&[1u8; 1000]);
        assert!(matches!(
            RawFile::open(f.path(), true),
            Err(StoreError::BadImageSize { .. })
        ));
        let f = image(&[]);
        assert!(matches!(
            RawFile::open(f.path(), true),
            Err(StoreError::BadImageSize { .. })
        ));
    }
}
