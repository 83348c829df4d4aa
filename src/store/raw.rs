//! A raw image file as a block device: reads from a shared read-only memory map (zero-copy
//! segments), writes with positioned writes, durability with `fdatasync`.

use super::{BlockDevice, SECTOR, StoreError};
use bytes::Bytes;
use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
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

pub struct RawFile {
    file: File,
    map: Arc<Mmap>,
    size: u64,
    read_only: bool,
}

impl RawFile {
    pub fn open(path: &Path, read_only: bool) -> Result<RawFile, StoreError> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| StoreError::Opening {
                path: shown.clone(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| StoreError::Opening {
                path: shown.clone(),
                source,
            })?
            .len();
        if size == 0 || size % SECTOR != 0 {
            return Err(StoreError::BadImageSize { path: shown, size });
        }
        // SAFETY: the map is read-only. The file may be written through `file` (pwrite), which
        // the kernel's unified page cache makes visible through the map; nothing truncates it
        // while it is served (base images are immutable, exported files are the admin's).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| StoreError::Mapping {
            path: shown,
            source,
        })?;
        Ok(RawFile {
            file,
            map: Arc::new(map),
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
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<Bytes>) -> Result<(), StoreError> {
        self.check_range(offset, len as u64)?;
        if len > 0 {
            out.push(map_bytes(&self.map, offset, len));
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
        // SAFETY: plain syscall on an fd we own; arguments are range-checked above.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
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
