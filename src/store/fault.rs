//! A file that lives in memory, models a page cache in front of a disk, and fails on demand:
//! the store's crash tests put a real [`super::overlay::Overlay`] on it.
//!
//! Writes land in the "cache" (what reads see); `sync_data` makes the cache durable. After a
//! set number of operations every operation fails with EIO (the failing write applies a random
//! prefix of its sectors first, a torn write). [`FaultyFile::crash`] then yields the bytes a
//! reboot would find: after a `kill -9` everything written reached the kernel and survives; after
//! a power cut each sector written since the last sync holds, at random, its durable content or
//! any version written to it since.

use super::file::OverlayFile;
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

const SECTOR: usize = 512;

/// How the process died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// The process was killed: the kernel keeps every write it accepted.
    Kill,
    /// The machine lost power: unsynced sectors hold any version, independently.
    PowerCut,
}

/// SplitMix64: a small deterministic generator for tests.
#[derive(Clone, Debug)]
pub struct TestRng(pub u64);

impl TestRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

struct Inner {
    cache: Vec<u8>,
    durable: Vec<u8>,
    /// Sector -> versions written since the last sync, oldest first.
    pending: HashMap<usize, Vec<Vec<u8>>>,
    /// Operations left before everything fails; `None` = never fail.
    budget: Option<u64>,
    ops: u64,
    rng: TestRng,
}

pub struct FaultyFile {
    inner: Mutex<Inner>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Inner {
    fn tick(&mut self) -> io::Result<()> {
        self.ops += 1;
        match &mut self.budget {
            Some(0) => Err(eio()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn apply(&mut self, buf: &[u8], offset: usize) {
        let end = offset + buf.len();
        if self.cache.len() < end {
            self.cache.resize(end, 0);
            self.durable.resize(end, 0);
        }
        self.cache[offset..end].copy_from_slice(buf);
        if buf.is_empty() {
            return;
        }
        for s in offset / SECTOR..=(end - 1) / SECTOR {
            let a = s * SECTOR;
            let b = (a + SECTOR).min(self.cache.len());
            let v = self.cache[a..b].to_vec();
            self.pending.entry(s).or_default().push(v);
        }
    }
}

impl FaultyFile {
    pub fn new(seed: u64) -> FaultyFile {
        FaultyFile::from_image(Vec::new(), seed)
    }

    /// A file whose durable content is `image` (what a reboot found).
    pub fn from_image(image: Vec<u8>, seed: u64) -> FaultyFile {
        FaultyFile {
            inner: Mutex::new(Inner {
                cache: image.clone(),
                durable: image,
                pending: HashMap::new(),
                budget: None,
                ops: 0,
                rng: TestRng(seed),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let `n` more operations succeed, then fail every one.
    pub fn fail_after(&self, n: u64) {
        self.lock().budget = Some(n);
    }

    /// Operations attempted so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The bytes a restart finds after the process dies now.
    pub fn crash(&self, mode: CrashMode) -> Vec<u8> {
        let mut g = self.lock();
        match mode {
            CrashMode::Kill => g.cache.clone(),
            CrashMode::PowerCut => {
                let mut img = g.durable.clone();
                let mut sectors: Vec<usize> = g.pending.keys().copied().collect();
                sectors.sort_unstable();
                for s in sectors {
                    let n = g.pending[&s].len() as u64;
                    let pick = g.rng.below(n + 1) as usize;
                    if pick > 0 {
                        let v = g.pending[&s][pick - 1].clone();
                        img[s * SECTOR..s * SECTOR + v.len()].copy_from_slice(&v);
                    }
                }
                img
            }
        }
    }
}

impl OverlayFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut g = self.lock();
        g.tick()?;
        let off = usize::try_from(offset).map_err(|_| eio())?;
        buf.fill(0);
        if off < g.cache.len() {
            let n = (g.cache.len() - off).min(buf.len());
            buf[..n].copy_from_slice(&g.cache[off..off + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.lock();
        let off = usize::try_from(offset).map_err(|_| eio())?;
        if let Err(e) = g.tick() {
            // Torn: a random whole-sector prefix made it to the cache.
            let sectors = buf.len().div_ceil(SECTOR) as u64;
            let keep = (g.rng.below(sectors + 1) as usize * SECTOR).min(buf.len());
            g.apply(&buf[..keep], off);
            return Err(e);
        }
        g.apply(buf, off);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut g = self.lock();
        g.tick()?;
        let pending = std::mem::take(&mut g.pending);
        for s in pending.keys() {
            let a = s * SECTOR;
            let b = (a + SECTOR).min(g.cache.len());
            let v = g.cache[a..b].to_vec();
            g.durable[a..b].copy_from_slice(&v);
        }
        Ok(())
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.lock().cache.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut g = self.lock();
        g.tick()?;
        let len = usize::try_from(len).map_err(|_| eio())?;
        let g = &mut *g;
        for buf in [&mut g.cache, &mut g.durable] {
            // vec![0; n] gets zeroed pages from the allocator; resize() writes every byte.
            let mut v = vec![0u8; len];
            let keep = buf.len().min(len);
            v[..keep].copy_from_slice(&buf[..keep]);
            *buf = v;
        }
        g.pending.retain(|s, _| s * SECTOR < len);
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut g = self.lock();
        g.tick()?;
        let off = usize::try_from(offset).map_err(|_| eio())?;
        let end = usize::try_from(offset.saturating_add(len))
            .map_err(|_| eio())?
            .min(g.cache.len());
        if off < end {
            let z = vec![0u8; end - off];
            g.apply(&z, off);
        }
        Ok(())
    }

    fn map(&self, _offset: u64, _len: usize) -> Option<io::Result<Bytes>> {
        None
    }
}
