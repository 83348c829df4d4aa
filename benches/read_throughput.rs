//! End-to-end read throughput over loopback TCP: `service::iscsi` on 127.0.0.1:0 serving a
//! raw image, driven by the project's own initiator doing READ(16) at queue depth 1, 8 and 32
//! with 4 KiB, 64 KiB and 1 MiB blocks; plus 8 sessions at once (a small boot storm).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isboot::initiator::{Initiator, LoginOptions, read16_cdb};
use isboot::iscsi::target::{StaticRegistry, TargetConfig, TargetStats};
use isboot::scsi::{LogicalUnit, LuIdentity, TargetLus};
use isboot::store::raw::RawFile;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const IMAGE: u64 = 256 << 20;
const IQN: &str = "iqn.2026-11.org.isboot:bench";

struct Server {
    addr: SocketAddr,
    _file: tempfile::NamedTempFile,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn server() -> Server {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    for _ in 0..IMAGE >> 20 {
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
    let dev = RawFile::open(file.path(), true).unwrap();
    let ident = LuIdentity {
        vendor: "ISBOOT".into(),
        product: "BENCH".into(),
        revision: "1".into(),
        serial: "1".into(),
        naa_id: 1,
    };
    let lu = Arc::new(LogicalUnit::new(Arc::new(dev), ident));
    let target = Arc::new(TargetConfig {
        iqn: IQN.into(),
        lus: Arc::new(TargetLus::single(lu)),
        allowed_initiators: Vec::new(),
        chap: None,
        listed: true,
        stats: Arc::new(TargetStats::default()),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let reg = Arc::new(StaticRegistry(vec![target]));
            isboot::service::iscsi::serve(l, reg, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    Server {
        addr,
        _file: file,
        _stop: stop_tx,
    }
}

fn session(addr: SocketAddr, n: u8) -> Initiator {
    let mut o =
        LoginOptions::new(&format!("iqn.2026-11.org.isboot.bench:i{n}"), Some(IQN)).linux_profile();
    o.isid[5] = n;
    let mut i = Initiator::connect(addr, &o).unwrap();
    i.clear_unit_attention(0).unwrap();
    i.keep_data = false;
    i
}

/// Read `count` blocks of `bs` bytes, keeping `qd` in flight, walking the image sequentially
/// from `start`.
fn run(i: &mut Initiator, bs: u32, qd: usize, count: usize, start: u64) -> u64 {
    let blocks = bs / 512;
    let span = IMAGE / 512 / blocks as u64;
    let mut next = start;
    let mut submitted = 0;
    let mut done = 0;
    while done < count {
        while submitted < count && submitted - done < qd {
            let lba = (next % span) * blocks as u64;
            i.submit(0, &read16_cdb(lba, blocks), Bytes::new(), bs)
                .unwrap();
            next += 1;
            submitted += 1;
        }
        let c = i.wait_any().unwrap();
        assert_eq!(c.status, 0);
        done += 1;
    }
    count as u64 * bs as u64
}

fn bench(c: &mut Criterion) {
    let srv = server();
    let mut g = c.benchmark_group("read_throughput");
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(10);
    let mut i = session(srv.addr, 1);
    for bs in [4096u32, 65536, 1 << 20] {
        for qd in [1usize, 8, 32] {
            let count = ((32u64 << 20) / bs as u64).clamp(64, 2048) as usize;
            g.throughput(Throughput::Bytes(count as u64 * bs as u64));
            let mut pos = 0u64;
            g.bench_function(format!("bs{}k_qd{qd}", bs / 1024), |b| {
                b.iter(|| {
                    pos += count as u64;
                    run(&mut i, bs, qd, count, pos)
                })
            });
        }
    }
    // Boot storm: 8 sessions at once, each 64 KiB reads at QD 8 over the same base.
    let mut sessions: Vec<Initiator> = (0..8).map(|n| session(srv.addr, 10 + n)).collect();
    let per = 256usize;
    g.throughput(Throughput::Bytes(8 * per as u64 * 65536));
    g.bench_function("storm_8_sessions_bs64k_qd8", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for (n, i) in sessions.iter_mut().enumerate() {
                    s.spawn(move || run(i, 65536, 8, per, n as u64 * 97));
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
