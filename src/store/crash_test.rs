//! Crash test: random writes, discards and flushes against an overlay on a [`FaultyFile`] that
//! fails after a random number of operations; then a crash (kill -9 or power cut), a reopen,
//! and a sector-by-sector comparison with a model that knows which content is durable and which
//! may or may not have survived. Zero mismatches allowed.
//!
//! Default: 1200 crash points (a few seconds). `ISBOOT_CRASH_POINTS=100000` for a long run;
//! `ISBOOT_CRASH_SEED` to replay one.

use super::base::{BaseId, BaseImage};
use super::fault::{CrashMode, FaultyFile, TestRng};
use super::overlay::Overlay;
use super::{BlockDevice, concat};
use bytes::Bytes;
use std::sync::Arc;

const SECTOR: usize = 512;
/// Tag of the base image's content.
const BASE: u64 = 0;
/// Tag of zeros (discard).
const ZERO: u64 = u64::MAX;

fn sector_content(tag: u64, s: usize, base: &[u8]) -> Vec<u8> {
    match tag {
        BASE => base[s * SECTOR..(s + 1) * SECTOR].to_vec(),
        ZERO => vec![0; SECTOR],
        t => {
            let mut r = TestRng(t.wrapping_mul(0x1000_0000_01B3) ^ s as u64);
            let mut v = Vec::with_capacity(SECTOR);
            while v.len() < SECTOR {
                v.extend_from_slice(&r.next_u64().to_le_bytes());
            }
            v
        }
    }
}

/// Per sector: the content that is certainly durable, and content that may have survived.
struct Model {
    durable: Vec<u64>,
    maybe: Vec<Vec<u64>>,
}

impl Model {
    fn new(sectors: usize) -> Model {
        Model {
            durable: vec![BASE; sectors],
            maybe: vec![Vec::new(); sectors],
        }
    }
    fn maybe(&mut self, first: usize, n: usize, tag: u64) {
        for s in first..first + n {
            self.maybe[s].push(tag);
        }
    }
    fn durable(&mut self, first: usize, n: usize, tag: u64) {
        for s in first..first + n {
            self.durable[s] = tag;
            self.maybe[s].clear();
        }
    }
    fn flushed(&mut self) {
        for (d, m) in self.durable.iter_mut().zip(self.maybe.iter_mut()) {
            if let Some(&t) = m.last() {
                *d = t;
            }
            m.clear();
        }
    }
}

/// One crash point. Returns mismatching sectors (as messages).
fn crash_point(seed: u64) -> Vec<String> {
    let mut rng = TestRng(seed);
    // 40..72 blocks of 4 KiB, sometimes with a short last block.
    let blocks = 40 + rng.below(32) as usize;
    let size = blocks * 4096 - if rng.below(2) == 0 { 0 } else { 1536 };
    let sectors = size / SECTOR;
    let mut b = vec![0u8; size];
    for c in b.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    let base_bytes = b.clone();
    let base = Arc::new(BaseImage::from_bytes(Bytes::from(b), BaseId([1; 16]), 1).unwrap());
    let file = Arc::new(FaultyFile::new(seed ^ 0xABCD));
    let ov = Overlay::create(file.clone(), base.clone(), 4096).unwrap();
    file.fail_after(1 + rng.below(400));
    let mut model = Model::new(sectors);
    for op in 0..600u64 {
        let tag = (seed << 20) | (op + 1);
        match rng.below(20) {
            0..=13 => {
                let cap = if rng.below(4) == 0 { 40 } else { 10 };
                let n = 1 + rng.below(cap) as usize;
                let n = n.min(sectors);
                let first = rng.below((sectors - n + 1) as u64) as usize;
                let durable = rng.below(5) == 0;
                let data: Vec<u8> = (first..first + n)
                    .flat_map(|s| sector_content(tag, s, &base_bytes))
                    .collect();
                let r = ov.write((first * SECTOR) as u64, &data, durable);
                match r {
                    Ok(()) if durable => model.durable(first, n, tag),
                    Ok(()) => model.maybe(first, n, tag),
                    Err(_) => {
                        model.maybe(first, n, tag);
                        break;
                    }
                }
            }
            14..=16 => {
                let n = 1 + rng.below(24) as usize;
                let n = n.min(sectors);
                let first = rng.below((sectors - n + 1) as u64) as usize;
                let r = ov.discard((first * SECTOR) as u64, (n * SECTOR) as u64);
                model.maybe(first, n, ZERO);
                if r.is_err() {
                    break;
                }
            }
            _ => match ov.flush() {
                Ok(()) => model.flushed(),
                Err(_) => break,
            },
        }
    }
    drop(ov);
    let mode = if rng.below(2) == 0 {
        CrashMode::Kill
    } else {
        CrashMode::PowerCut
    };
    let image = file.crash(mode);
    let file2 = Arc::new(FaultyFile::from_image(image, seed));
    let ov2 = match Overlay::open(file2, base, false) {
        Ok(o) => o,
        Err(e) => return vec![format!("seed {seed}: reopen after {mode:?} failed: {e}")],
    };
    let mut out = Vec::new();
    ov2.read(0, size, &mut out).unwrap();
    let got = concat(&out);
    let mut bad = Vec::new();
    for s in 0..sectors {
        let have = &got[s * SECTOR..(s + 1) * SECTOR];
        let ok = std::iter::once(&model.durable[s])
            .chain(model.maybe[s].iter())
            .any(|&t| sector_content(t, s, &base_bytes) == have);
        if !ok {
            bad.push(format!(
                "seed {seed} {mode:?}: sector {s} holds neither its durable content nor any later write"
            ));
        }
    }
    // The reopened overlay is usable.
    if ov2.write(0, &[0xEE; 4096], true).is_err() {
        bad.push(format!("seed {seed}: write after reopen failed"));
    }
    bad
}

#[test]
fn crash_at_random_points_loses_no_durable_write_and_shows_no_garbage() {
    let points: u64 = std::env::var("ISBOOT_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    let seeds: Vec<u64> = match std::env::var("ISBOOT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(s) => vec![s],
        None => (1..=points).collect(),
    };
    let mut bad = Vec::new();
    for &seed in &seeds {
        bad.extend(crash_point(seed));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches over {} crash points, first: {:?}",
        bad.len(),
        seeds.len(),
        &bad[..bad.len().min(5)]
    );
    eprintln!("crash test: {} crash points, 0 mismatches", seeds.len());
}

/// The model would notice a broken overlay: one that records the map before the data.
#[test]
fn the_model_catches_lost_durable_writes() {
    let mut m = Model::new(4);
    m.durable(0, 1, 5);
    m.maybe(0, 1, 6);
    let base = vec![0u8; 4 * SECTOR];
    let have = sector_content(7, 0, &base);
    let ok = std::iter::once(&m.durable[0])
        .chain(m.maybe[0].iter())
        .any(|&t| sector_content(t, 0, &base) == have);
    assert!(!ok);
    m.flushed();
    assert_eq!(m.durable[0], 6);
}
