//! The file layer under an overlay: positioned reads and writes, `fdatasync`, hole punching and
//! (for real files) a read-only memory map. A trait, so the crash test can put a file that fails
//! on demand and forgets unsynced writes ([`super::fault::FaultyFile`]) under a real overlay.

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What an overlay needs from the file holding it.
pub trait OverlayFile: Send + Sync + 'static {
    /// Fill `buf` from `offset`; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset` (not durable until [`OverlayFile::sync_data`]).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every write that returned before this call durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Current length.
    fn file_len(&self) -> io::Result<u64>;
    /// Set the length (the overlay is created sparse, at its final length).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Give `[offset, offset+len)` back to the filesystem; it reads as zeros afterwards. May
    /// fail where unsupported; callers never rely on it for correctness.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// A read-only map of `[offset, offset+len)` as one [`Bytes`], when the file can be mapped.
    /// Later writes through [`OverlayFile::write_at`] show through it (unified page cache).
    fn map(&self, offset: u64, len: usize) -> Option<io::Result<Bytes>>;
}

/// A real file.
pub struct RealFile(pub File);

impl OverlayFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::sys::punch_hole(&self.0, offset, len)
    }

    fn map(&self, offset: u64, len: usize) -> Option<io::Result<Bytes>> {
        if len == 0 {
            return Some(Ok(Bytes::new()));
        }
        // The overlay only writes through `write_at` (visible through the map by the unified
        // page cache), never truncates a live overlay file, and replaces an overlay by renaming
        // a new file over it (the old inode lives while mapped): sys::map_readonly's contract.
        let map = crate::sys::map_readonly(&self.0, offset, len);
        Some(map.map(|m| super::raw::map_bytes(&Arc::new(m), 0, len)))
    }
}
