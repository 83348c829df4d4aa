//! [`Segment`]: one piece of data a device read produced.
//!
//! A segment always holds its bytes (usually a zero-copy slice of a memory map), so anything
//! may look at them: digests, comparisons, copies. When the bytes are also a range of a file
//! that nobody writes while it is served (a published base image, an image exported
//! read-only), the segment says which file and where, so the network layer can hand the kernel
//! that file range (`sendfile`) instead of making it copy the mapped pages into the socket.

use bytes::Bytes;
use std::fmt;
use std::fs::File;
use std::ops::{Bound, Deref, RangeBounds};
use std::sync::Arc;

/// Bytes of device data, plus their place in an immutable file when they have one.
#[derive(Clone, Default)]
pub struct Segment {
    bytes: Bytes,
    file: Option<Arc<File>>,
    /// Offset of `bytes[0]` in `file` (0 without a file).
    file_offset: u64,
}

impl Segment {
    /// `bytes`, which are also `[offset, offset + bytes.len())` of `file`. Only for files whose
    /// content does not change while segments of them exist: the sender may read the file
    /// instead of `bytes`, later.
    pub fn in_file(bytes: Bytes, file: &Arc<File>, offset: u64) -> Segment {
        Segment {
            bytes,
            file: Some(file.clone()),
            file_offset: offset,
        }
    }

    /// The bytes (always present).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The immutable file holding these bytes, and the offset of the first one in it.
    pub fn file(&self) -> Option<(&Arc<File>, u64)> {
        self.file.as_ref().map(|f| (f, self.file_offset))
    }

    /// A sub-range, keeping the file position in step.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Segment {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        Segment {
            bytes: self.bytes.slice(range),
            file: self.file.clone(),
            file_offset: self.file_offset + start as u64,
        }
    }
}

impl From<Bytes> for Segment {
    fn from(bytes: Bytes) -> Segment {
        Segment {
            bytes,
            file: None,
            file_offset: 0,
        }
    }
}

impl From<Vec<u8>> for Segment {
    fn from(v: Vec<u8>) -> Segment {
        Bytes::from(v).into()
    }
}

impl Deref for Segment {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for Segment {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.file() {
            Some((_, off)) => write!(f, "Segment({} bytes, file @{off})", self.len()),
            None => write!(f, "Segment({} bytes)", self.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn slices_keep_the_file_offset_in_step() {
        let mut t = tempfile::tempfile().unwrap();
        t.write_all(b"0123456789").unwrap();
        let f = Arc::new(t);
        let s = Segment::in_file(Bytes::from_static(b"23456789"), &f, 2);
        let sub = s.slice(3..5);
        assert_eq!(&sub[..], b"56");
        assert_eq!(sub.file().map(|(_, o)| o), Some(5));
        assert_eq!(s.slice(..).file().map(|(_, o)| o), Some(2));
        assert_eq!(s.slice(8..).len(), 0);
        let plain = Segment::from(Bytes::from_static(b"abc"));
        assert!(plain.file().is_none());
        assert!(plain.slice(1..).file().is_none());
    }
}
