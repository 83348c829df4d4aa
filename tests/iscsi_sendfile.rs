//! Data-In sent with sendfile(2) straight from immutable files: a read-only raw export and a
//! client's overlay over a base image file. The server runs in-process with every file-backed
//! segment sent by sendfile (threshold 1 byte); the project's initiator reads large ranges,
//! with and without header and data digests (a digest turns sendfile off, so both paths run),
//! and the bytes must match the file, or for the overlay, the base with the writes applied
//! (overlay blocks inside a range otherwise sent from the base file come from the overlay).

use bytes::Bytes;
use isboot::initiator::{Initiator, LoginOptions, read16_cdb};
use isboot::iscsi::target::{StaticRegistry, TargetConfig, TargetStats};
use isboot::scsi::{LogicalUnit, LuIdentity, TargetLus};
use isboot::service::iscsi::{ServerConfig, serve_with};
use isboot::store::BlockDevice;
use isboot::store::base::{BaseId, BaseImage};
use isboot::store::overlay::Overlay;
use isboot::store::raw::RawFile;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

const MIB: usize = 1 << 20;
const SIZE: usize = 8 * MIB;
const IQN: &str = "iqn.2026-11.org.isboot.test:sendfile";

/// Every 512-byte block starts with its number and is filled with a byte derived from it.
fn patterned(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; SIZE];
    for (i, b) in data.chunks_mut(512).enumerate() {
        b.fill((i * 7 % 251) as u8);
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// A server for `dev` on 127.0.0.1, in its own runtime thread; stops when dropped.
struct Server {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn serve(dev: Arc<dyn BlockDevice>) -> Server {
    let ident = LuIdentity {
        vendor: "ISBOOT".into(),
        product: "SENDFILE".into(),
        revision: "1".into(),
        serial: "1".into(),
        naa_id: 1,
    };
    let target = Arc::new(TargetConfig {
        iqn: IQN.into(),
        lus: Arc::new(TargetLus::single(Arc::new(LogicalUnit::new(dev, ident)))),
        allowed_initiators: Vec::new(),
        chap: None,
        listed: true,
        stats: Arc::new(TargetStats::default()),
    });
    let cfg = ServerConfig {
        sendfile_min: Some(1),
        ..Default::default()
    };
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
            serve_with(l, reg, cfg, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    Server {
        addr: rx.recv().unwrap(),
        _stop: stop_tx,
    }
}

fn login(addr: SocketAddr, digests: bool) -> Initiator {
    let mut o = LoginOptions::new("iqn.2026-11.org.isboot.test:ini", Some(IQN)).linux_profile();
    if digests {
        o.keys.push(("HeaderDigest".into(), "CRC32C".into()));
        o.keys.push(("DataDigest".into(), "CRC32C".into()));
    }
    let mut i = Initiator::connect(addr, &o).unwrap();
    let want = if digests { "CRC32C" } else { "None" };
    assert_eq!(i.negotiated.keys["DataDigest"], want);
    i.clear_unit_attention(0).unwrap();
    i
}

/// Read the whole device in 1 MiB commands, 8 in flight, then a few unaligned ranges, and
/// compare every byte with `want`.
fn check_reads(i: &mut Initiator, want: &[u8]) {
    let blocks = (MIB / 512) as u32;
    let mut expect = HashMap::new();
    for n in 0..SIZE / MIB {
        let lba = (n * MIB / 512) as u64;
        let itt = i
            .submit(0, &read16_cdb(lba, blocks), Bytes::new(), MIB as u32)
            .unwrap();
        expect.insert(itt, n * MIB);
        if expect.len() == 8 || n == SIZE / MIB - 1 {
            while !expect.is_empty() {
                let c = i.wait_any().unwrap();
                assert_eq!(c.status, 0, "{c:?}");
                let at = expect.remove(&c.itt).expect("known ITT");
                assert!(
                    c.data == want[at..at + MIB],
                    "1 MiB read at byte {at} differs"
                );
            }
        }
    }
    for (lba, blocks) in [(1u64, 2047u32), (4095, 3), (7, 4096 + 129), (16383, 1)] {
        let c = i.read16(0, lba, blocks).unwrap();
        assert_eq!(c.status, 0);
        let at = lba as usize * 512;
        assert!(
            c.data == want[at..at + blocks as usize * 512],
            "read of {blocks} blocks at LBA {lba} differs"
        );
    }
}

#[test]
fn read_only_export_sends_the_file_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let data = patterned(&path);
    let srv = serve(Arc::new(RawFile::open(&path, true).unwrap()));
    for digests in [false, true] {
        let mut i = login(srv.addr, digests);
        check_reads(&mut i, &data);
        i.logout().unwrap();
    }
}

#[test]
fn overlay_blocks_inside_a_base_range_come_from_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("base.raw");
    let mut model = patterned(&base_path);
    let base = Arc::new(BaseImage::open(&base_path, BaseId([3; 16]), 1).unwrap());
    let ov = Overlay::create_at(&dir.path().join("client.ovl"), base, 4096).unwrap();
    let srv = serve(Arc::new(ov));
    let mut i = login(srv.addr, false);
    // Whole overlay blocks, a partial one (copy-up), a run across 1 MiB boundaries, and the
    // first and last blocks of the device.
    for (lba, blocks, fill) in [
        (8u64, 8usize, 0xA1u8),
        (1001, 1, 0xB2),
        (2040, 40, 0xC3),
        (0, 8, 0xD4),
        ((SIZE / 512 - 8) as u64, 8, 0xE5),
    ] {
        let d = vec![fill; blocks * 512];
        let c = i.write16(0, lba, &d).unwrap();
        assert_eq!(c.status, 0, "{c:?}");
        model[lba as usize * 512..lba as usize * 512 + d.len()].copy_from_slice(&d);
    }
    check_reads(&mut i, &model);
    i.logout().unwrap();
    let mut i = login(srv.addr, true);
    check_reads(&mut i, &model);
    i.logout().unwrap();
    // The base file itself is untouched.
    assert!(std::fs::read(&base_path).unwrap() == patterned(&dir.path().join("again.raw")));
}
