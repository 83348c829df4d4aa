//! Read throughput through a client's copy-on-write view against reading the raw base image.
//!
//! Each read hands its segments to a consumer that copies them into a buffer (as a socket
//! write would), so zero-copy segments and copied ones are compared on equal terms.
//!
//! Cases, at 4 KiB, 64 KiB and 1 MiB reads walking a 64 MiB image:
//! - `raw-mmap`: memcpy straight out of a read-only map of the base file (the floor);
//! - `raw-file`: the base file as a `RawFile` device;
//! - `view-base`: an overlay with nothing in it (every read from the shared base);
//! - `view-half`: half the blocks in the overlay, in alternating 64 KiB runs (how a client's
//!   writes cluster);
//! - `view-alt`: every other 4 KiB block in the overlay (the worst mix: a segment per block),
//!   to compare with
//! - `raw-alt`: the raw map read with the same pattern (every other 4 KiB block from a region
//!   32 MiB away): interleaving two memory regions page by page defeats the CPU's prefetchers,
//!   and this control shows that cost is the access pattern's, not the view's.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use isboot::store::base::{BaseId, BaseImage};
use isboot::store::overlay::Overlay;
use isboot::store::raw::RawFile;
use isboot::store::{BlockDevice, Segment};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const IMAGE: usize = 64 << 20;

fn consume(segs: &[Segment], dst: &mut [u8]) -> usize {
    let mut o = 0;
    for s in segs {
        dst[o..o + s.len()].copy_from_slice(s);
        o += s.len();
    }
    o
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.raw");
    let data: Vec<u8> = (0..IMAGE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    std::fs::write(&path, &data).unwrap();
    let raw = RawFile::open(&path, true).unwrap();
    let map = raw.map().clone();
    let base = Arc::new(BaseImage::open(&path, BaseId([3; 16]), 1).unwrap());
    let empty = Overlay::create_at(&dir.path().join("a.ovl"), base.clone(), 4096).unwrap();
    let half = Overlay::create_at(&dir.path().join("b.ovl"), base.clone(), 4096).unwrap();
    let alt = Overlay::create_at(&dir.path().join("c.ovl"), base.clone(), 4096).unwrap();
    let run = vec![0x5Au8; 64 << 10];
    for k in (0..IMAGE / run.len()).step_by(2) {
        half.write((k * run.len()) as u64, &run, false).unwrap();
    }
    half.flush().unwrap();
    let block = vec![0xA5u8; 4096];
    for k in (0..IMAGE / 4096).step_by(2) {
        alt.write((k * 4096) as u64, &block, false).unwrap();
    }
    alt.flush().unwrap();

    let mut g = c.benchmark_group("read");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for size in [4usize << 10, 64 << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut dst = vec![0u8; size];
        let steps = (IMAGE / size) as u64;
        g.bench_with_input(BenchmarkId::new("raw-mmap", size), &size, |b, &n| {
            let mut i = 0u64;
            b.iter(|| {
                let o = ((i % steps) * n as u64) as usize;
                i += 1;
                dst.copy_from_slice(&map[o..o + n]);
                black_box(&mut dst);
            })
        });
        g.bench_with_input(BenchmarkId::new("raw-alt", size), &size, |b, &n| {
            let mut i = 0u64;
            b.iter(|| {
                let o = ((i % (steps / 2)) * n as u64) as usize;
                i += 1;
                for (j, chunk) in dst.chunks_mut(4096).enumerate() {
                    let src = o
                        + j * 4096
                        + if (o / 4096 + j) % 2 == 0 {
                            0
                        } else {
                            IMAGE / 2
                        };
                    chunk.copy_from_slice(&map[src..src + chunk.len()]);
                }
                black_box(&mut dst);
            })
        });
        let devs: [(&str, &dyn BlockDevice); 4] = [
            ("raw-file", &raw),
            ("view-base", &empty),
            ("view-half", &half),
            ("view-alt", &alt),
        ];
        for (name, dev) in devs {
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &n| {
                let mut i = 0u64;
                let mut segs = Vec::with_capacity(n / 4096 + 1);
                b.iter(|| {
                    let o = (i % steps) * n as u64;
                    i += 1;
                    segs.clear();
                    dev.read(o, n, &mut segs).unwrap();
                    black_box(consume(&segs, &mut dst));
                    black_box(&mut dst);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
