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
            // Unique per (write, sector); a repeated word keeps the long runs cheap.
            let w = TestRng(t.wrapping_mul(0x1000_0000_01B3) ^ s as u64)
                .next_u64()
                .to_le_bytes();
            let mut v = vec![0u8; SECTOR];
            for c in v.chunks_exact_mut(8) {
                c.copy_from_slice(&w);
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
                let mut data = Vec::with_capacity(n * SECTOR);
                for s in first..first + n {
                    data.extend_from_slice(&sector_content(tag, s, &base_bytes));
                }
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

/// Child side of [`kill9_at_random_points_loses_no_durable_write`]: random writes, discards and
/// flushes against a real overlay file, each announced on stdout before it starts ("W"/"Z") and
/// acknowledged after it returns ("D" durable write, "A" plain write, "F" flush).
#[test]
#[ignore = "run by kill9_at_random_points_loses_no_durable_write as a child process"]
fn kill9_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var("ISBOOT_KILL9_DIR") else {
        return;
    };
    let seed: u64 = std::env::var("ISBOOT_KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = std::path::PathBuf::from(dir);
    let base = Arc::new(BaseImage::open(&dir.join("base.raw"), BaseId([2; 16]), 1).unwrap());
    let ov = Overlay::open_at(&dir.join("c.ovl"), base, false).unwrap();
    let sectors = ov.size() as usize / SECTOR;
    let mut rng = TestRng(seed);
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for op in 1u64.. {
        let tag = (seed << 24) | op;
        let n = (1 + rng.below(24) as usize).min(sectors);
        let first = rng.below((sectors - n + 1) as u64) as usize;
        match rng.below(20) {
            0..=15 => {
                let durable = rng.below(4) == 0;
                let mut data = Vec::with_capacity(n * SECTOR);
                for s in first..first + n {
                    data.extend_from_slice(&sector_content(tag, s, &[]));
                }
                writeln!(out, "W {tag} {first} {n}").unwrap();
                out.flush().unwrap();
                ov.write((first * SECTOR) as u64, &data, durable).unwrap();
                writeln!(out, "{} {tag} {first} {n}", if durable { "D" } else { "A" }).unwrap();
            }
            16..=17 => {
                writeln!(out, "Z {tag} {first} {n}").unwrap();
                out.flush().unwrap();
                ov.discard((first * SECTOR) as u64, (n * SECTOR) as u64)
                    .unwrap();
            }
            _ => {
                ov.flush().unwrap();
                writeln!(out, "F").unwrap();
            }
        }
        out.flush().unwrap();
    }
}

/// A real `kill -9` of a process writing to a real overlay file, at random moments; after
/// each, reopen and check every sector against the model (no acknowledged durable write lost,
/// no sector showing content never written to it). `ISBOOT_KILL9_ROUNDS` sets the count.
#[test]
fn kill9_at_random_points_loses_no_durable_write() {
    use std::io::BufRead;
    let rounds: u64 = std::env::var("ISBOOT_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let size = 48 * 4096 + 2048;
    let mut rng = TestRng(0x5EED);
    let base_bytes: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(tmp.path().join("base.raw"), &base_bytes).unwrap();
    let base = Arc::new(BaseImage::open(&tmp.path().join("base.raw"), BaseId([2; 16]), 1).unwrap());
    drop(Overlay::create_at(&tmp.path().join("c.ovl"), base.clone(), 4096).unwrap());
    let sectors = size / SECTOR;
    let mut model = Model::new(sectors);
    let exe = std::env::current_exe().unwrap();
    let mut acked_durable = 0u64;
    for round in 1..=rounds {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "store::crash_test::kill9_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ISBOOT_KILL9_DIR", tmp.path())
            .env("ISBOOT_KILL9_SEED", round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if l.ends_with("READY") {
                    let _ = tx.send(());
                }
                lines.push(l);
            }
            lines
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("child did not start");
        std::thread::sleep(std::time::Duration::from_millis(1 + rng.below(40)));
        child.kill().unwrap();
        child.wait().unwrap();
        for l in reader.join().unwrap() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            match (f.first().copied(), num(1), num(2), num(3)) {
                (Some("W"), Some(t), Some(a), Some(n)) => model.maybe(a as usize, n as usize, t),
                (Some("Z"), Some(_), Some(a), Some(n)) => model.maybe(a as usize, n as usize, ZERO),
                (Some("D"), Some(t), Some(a), Some(n)) => {
                    model.durable(a as usize, n as usize, t);
                    acked_durable += 1;
                }
                (Some("F"), ..) => model.flushed(),
                _ => {}
            }
        }
        let ov = Overlay::open_at(&tmp.path().join("c.ovl"), base.clone(), false).unwrap();
        let mut out = Vec::new();
        ov.read(0, size, &mut out).unwrap();
        let got = concat(&out);
        for s in 0..sectors {
            let have = &got[s * SECTOR..(s + 1) * SECTOR];
            let found = std::iter::once(model.durable[s])
                .chain(model.maybe[s].iter().copied())
                .find(|&t| sector_content(t, s, &base_bytes) == have);
            match found {
                // What survived is the starting point of the next round.
                Some(t) => {
                    model.durable[s] = t;
                    model.maybe[s].clear();
                }
                None => panic!(
                    "round {round}: sector {s} holds neither its durable content nor any later write"
                ),
            }
        }
    }
    assert!(
        acked_durable > 0,
        "the child never got a durable write acknowledged"
    );
    eprintln!("kill -9 test: {rounds} kills, {acked_durable} acknowledged durable writes checked");
}

/// As the crash test above, with four threads writing at once: thread t owns the sectors
/// s with s % 4 == t, so every block is shared and copy-ups, in-place writes, flushes and
/// map snapshots race. Each thread's model counts only its own acknowledgements.
#[test]
fn concurrent_writers_crash_at_random_points() {
    const T: usize = 4;
    let points: u64 = std::env::var("ISBOOT_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(150, |p: u64| (p / 8).max(1));
    for seed in 1..=points {
        let mut rng = TestRng(seed ^ 0xC0C0);
        let size = 16 * 4096;
        let sectors = size / SECTOR;
        let base_bytes: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        let base = Arc::new(
            BaseImage::from_bytes(Bytes::from(base_bytes.clone()), BaseId([4; 16]), 1).unwrap(),
        );
        let file = Arc::new(FaultyFile::new(seed));
        let ov = Arc::new(Overlay::create(file.clone(), base.clone(), 4096).unwrap());
        file.fail_after(20 + rng.below(300));
        let model = Arc::new(std::sync::Mutex::new(Model::new(sectors)));
        let threads: Vec<_> = (0..T)
            .map(|t| {
                let (ov, model) = (ov.clone(), model.clone());
                let mut rng = TestRng(seed * 31 + t as u64);
                std::thread::spawn(move || {
                    for op in 0..200u64 {
                        let tag = (seed << 24) | ((t as u64) << 16) | (op + 1);
                        let s = (rng.below((sectors / T) as u64) as usize) * T + t;
                        match rng.below(10) {
                            0..=6 => {
                                let durable = rng.below(4) == 0;
                                let r = ov.write(
                                    (s * SECTOR) as u64,
                                    &sector_content(tag, s, &[]),
                                    durable,
                                );
                                let mut m = model.lock().unwrap();
                                match r {
                                    Ok(()) if durable => m.durable(s, 1, tag),
                                    _ => m.maybe(s, 1, tag),
                                }
                                if r.is_err() {
                                    return;
                                }
                            }
                            7 => {
                                let r = ov.discard((s * SECTOR) as u64, SECTOR as u64);
                                model.lock().unwrap().maybe(s, 1, ZERO);
                                if r.is_err() {
                                    return;
                                }
                            }
                            _ => {
                                // Writes this thread saw acknowledged before the flush began.
                                let snapshot: Vec<(usize, u64)> = {
                                    let m = model.lock().unwrap();
                                    (t..sectors)
                                        .step_by(T)
                                        .filter_map(|s| m.maybe[s].last().map(|&v| (s, v)))
                                        .collect()
                                };
                                if ov.flush().is_err() {
                                    return;
                                }
                                let mut m = model.lock().unwrap();
                                for (s, v) in snapshot {
                                    // Durable now; anything written after stays "maybe".
                                    if let Some(i) = m.maybe[s].iter().position(|&x| x == v) {
                                        m.durable[s] = v;
                                        m.maybe[s].drain(..=i);
                                    }
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        drop(ov);
        let mode = if rng.below(2) == 0 {
            CrashMode::Kill
        } else {
            CrashMode::PowerCut
        };
        let ov2 = Overlay::open(
            Arc::new(FaultyFile::from_image(file.crash(mode), seed)),
            base,
            false,
        )
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after {mode:?}: {e}"));
        let mut out = Vec::new();
        ov2.read(0, size, &mut out).unwrap();
        let got = concat(&out);
        let m = model.lock().unwrap();
        for s in 0..sectors {
            let have = &got[s * SECTOR..(s + 1) * SECTOR];
            let ok = std::iter::once(&m.durable[s])
                .chain(m.maybe[s].iter())
                .any(|&t| sector_content(t, s, &base_bytes) == have);
            assert!(
                ok,
                "seed {seed} {mode:?}: sector {s} holds neither its durable content nor a later write"
            );
        }
    }
}
