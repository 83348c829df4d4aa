//! Against a real one-node Ceph: `scripts/ceph-dev start` (idempotent; the cluster named by
//! `ISBOOT_CEPH_ID`, default `rbdtest`) is run once per test binary. Every test uses names
//! of its own, so runs against a long-lived dev cluster do not collide.
//! Run: `cargo test --features rbd --lib rbd`.

use super::*;
use crate::store::concat;
use std::process::Command;
use std::sync::OnceLock;

fn cluster() -> &'static RbdConfig {
    static CFG: OnceLock<RbdConfig> = OnceLock::new();
    CFG.get_or_init(dev_cluster)
}

/// A name no other test or run uses.
fn unique(what: &str) -> String {
    format!("{what}{:08x}", rand::random::<u32>())
}

const MIB: u64 = 1 << 20;

/// A base image whose every 512-byte sector holds its own index (and a zero MiB at the end).
fn base_bytes(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for (i, s) in v[..(size - MIB) as usize].chunks_mut(512).enumerate() {
        s.fill((i % 251) as u8 + 1);
    }
    v
}

fn import(store: &RbdStore, image: &str, version: u32, data: &[u8]) {
    let mut calls = Vec::new();
    store
        .import_base(
            image,
            version,
            &mut &data[..],
            data.len() as u64,
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
    assert_eq!(calls.last(), Some(&(data.len() as u64, data.len() as u64)));
}

fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut segs = Vec::new();
    dev.read(offset, len, &mut segs).unwrap();
    concat(&segs)
}

#[test]
fn rbd_client_clone_reads_base_and_keeps_writes_private() {
    let store = RbdStore::connect(cluster()).unwrap();
    let image = unique("img");
    let data = base_bytes(8 * MIB);
    import(&store, &image, 1, &data);
    assert_eq!(store.versions(&image).unwrap(), vec![(1, 8 * MIB)]);

    let (a, b) = (unique("a"), unique("b"));
    store.create_client(&a, &image, 1, false).unwrap();
    store.create_client(&b, &image, 1, false).unwrap();
    let da = store.open_client(&a).unwrap();
    let db = store.open_client(&b).unwrap();
    assert!(da.holds_lock());
    assert_eq!(da.size(), 8 * MIB);
    assert_eq!(read(&da, 0, 8 * MIB as usize), data);

    // A write (FUA or not) by A: A reads it back, B and the base do not see it.
    let mine = vec![0xA5u8; 8192];
    da.write(4096, &mine, true).unwrap();
    da.write(5 * MIB, &mine, false).unwrap();
    da.flush().unwrap();
    assert_eq!(read(&da, 4096, 8192), mine);
    assert_eq!(read(&da, 5 * MIB, 8192), mine);
    assert_eq!(read(&db, 4096, 8192), data[4096..4096 + 8192]);
    let base = store.open_base(&image, 1).unwrap();
    assert!(base.read_only());
    assert_eq!(read(&base, 0, 8 * MIB as usize), data);
    assert!(matches!(
        base.write(0, &mine, true),
        Err(StoreError::ReadOnly)
    ));

    // UNMAP / WRITE SAME of zeros: the range reads as zeros, also where it came from the base.
    da.discard(512, 3 * 512).unwrap();
    assert_eq!(read(&da, 512, 3 * 512), vec![0u8; 3 * 512]);
    assert_eq!(read(&da, 0, 512), data[..512]);
    assert_eq!(read(&da, 2048, 2048), data[2048..4096]);
    da.discard(MIB, 2 * MIB).unwrap();
    assert_eq!(
        read(&da, MIB, 2 * MIB as usize),
        vec![0u8; 2 * MIB as usize]
    );
    assert_eq!(
        read(&db, MIB, 2 * MIB as usize),
        data[MIB as usize..3 * MIB as usize]
    );

    // Out of range is refused, not clamped.
    assert!(matches!(
        da.write(8 * MIB - 512, &mine, false),
        Err(StoreError::OutOfRange { .. })
    ));
    drop((da, db, base));
    store.remove_client(&a).unwrap();
    store.remove_client(&b).unwrap();
}

#[test]
fn rbd_reset_recloned_persistent_kept() {
    let store = RbdStore::connect(cluster()).unwrap();
    let image = unique("img");
    let data = base_bytes(4 * MIB);
    import(&store, &image, 1, &data);
    let c = unique("c");
    store.create_client(&c, &image, 1, false).unwrap();
    let marker = vec![0x5Au8; 4096];
    {
        let d = store.open_client(&c).unwrap();
        d.write(0, &marker, true).unwrap();
    }
    // Persistent: reopening (e.g. on another server) finds the write.
    {
        let d = store.open_client(&c).unwrap();
        assert_eq!(read(&d, 0, 4096), marker);
    }
    // A second clone under the same name is refused; reset replaces it with a fresh clone.
    assert!(store.create_client(&c, &image, 1, false).is_err());
    store.create_client(&c, &image, 1, true).unwrap();
    let d = store.open_client(&c).unwrap();
    assert_eq!(read(&d, 0, 4096), data[..4096]);
    // The disk cannot be reset (removed) while a server serves it.
    assert!(store.create_client(&c, &image, 1, true).is_err());
    drop(d);
    store.remove_client(&c).unwrap();
}

#[test]
fn rbd_exclusive_lock_second_server_refused_until_first_closes() {
    let server_a = RbdStore::connect(cluster()).unwrap();
    let server_b = RbdStore::connect(cluster()).unwrap();
    let image = unique("img");
    import(&server_a, &image, 1, &base_bytes(2 * MIB));
    let c = unique("c");
    server_a.create_client(&c, &image, 1, false).unwrap();

    let on_a = server_a.open_client(&c).unwrap();
    on_a.write(0, &[1u8; 512], true).unwrap();
    let refused = server_b
        .open_client(&c)
        .err()
        .expect("B must be refused while A serves");
    assert!(
        refused
            .to_string()
            .contains("served by another isboot server"),
        "{refused}"
    );
    // A keeps its lock and keeps serving after B's attempt.
    assert!(on_a.holds_lock());
    on_a.write(512, &[2u8; 512], true).unwrap();

    drop(on_a);
    let on_b = server_b.open_client(&c).unwrap();
    assert!(on_b.holds_lock());
    assert_eq!(read(&on_b, 0, 1024), [[1u8; 512], [2u8; 512]].concat());
    drop(on_b);
    server_a.remove_client(&c).unwrap();
}

#[test]
fn rbd_missing_pool_or_image_is_a_clear_error() {
    let mut cfg = cluster().clone();
    cfg.pool = unique("nopool");
    let e = RbdStore::connect(&cfg).err().expect("no such pool");
    assert!(e.to_string().contains("opening pool"), "{e}");
    let store = RbdStore::connect(cluster()).unwrap();
    let e = store
        .open_client(&unique("ghost"))
        .err()
        .expect("no such disk");
    assert!(e.to_string().contains("no such image"), "{e}");
    let e = store
        .create_client(&unique("c"), &unique("noimg"), 1, false)
        .expect_err("no such base");
    assert!(e.to_string().contains("cloning"), "{e}");
}

/// The child half of the takeover test: holds `ISBOOT_RBD_HOLD`'s disk until killed.
#[test]
#[ignore = "run by rbd_lock_of_a_killed_server_is_taken_over"]
fn rbd_lock_holder_child() {
    let Ok(client) = std::env::var("ISBOOT_RBD_HOLD") else {
        return;
    };
    let store = RbdStore::connect(cluster()).unwrap();
    let dev = store.open_client(&client).unwrap();
    dev.write(0, &[7u8; 512], true).unwrap();
    println!("HOLDING");
    std::thread::sleep(std::time::Duration::from_secs(600));
}

#[test]
fn rbd_lock_of_a_killed_server_is_taken_over() {
    use std::io::BufRead;
    let store = RbdStore::connect(cluster()).unwrap();
    let image = unique("img");
    import(&store, &image, 1, &base_bytes(2 * MIB));
    let c = unique("c");
    store.create_client(&c, &image, 1, false).unwrap();

    // "Server A": another process holding the disk, killed with SIGKILL (no unlock, no close).
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::rbd::tests::rbd_lock_holder_child"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("ISBOOT_RBD_HOLD", &c)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("HOLDING"))),
        "the holder did not start"
    );
    let refused = store.open_client(&c).err().expect("refused while A lives");
    assert!(
        refused.to_string().contains("another isboot server"),
        "{refused}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // "Server B": once A's watch has expired, B takes the lock over and finds A's write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let dev = loop {
        match store.open_client(&c) {
            Ok(d) => break d,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => panic!("lock never taken over: {e}"),
        }
    };
    assert!(dev.holds_lock());
    assert_eq!(read(&dev, 0, 512), vec![7u8; 512]);
    drop(dev);
    store.remove_client(&c).unwrap();
}

// ---- the asynchronous path (rbd_aio_*) ----------------------------------------------------

/// A runtime with one thread: an operation that blocked its thread on Ceph would stall every
/// other one, so these tests would hang instead of pass.
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh clone of a new 8 MiB base: (store, base image name, client name, device, base data).
fn async_clone() -> (RbdStore, String, String, Arc<RbdDevice>, Vec<u8>) {
    let store = RbdStore::connect(cluster()).unwrap();
    let image = unique("aio");
    let data = base_bytes(8 * MIB);
    import(&store, &image, 1, &data);
    let c = unique("c");
    store.create_client(&c, &image, 1, false).unwrap();
    let dev = Arc::new(store.open_client(&c).unwrap());
    (store, image, c, dev, data)
}

#[test]
fn rbd_async_reads_and_writes_in_flight_match_a_model_and_the_sync_path() {
    let (store, image, c, dev, data) = async_clone();
    let mut model = data.clone();
    // 16 writes in flight at once, disjoint, of different sizes (some across 4 MiB objects).
    let writes: Vec<(u64, Vec<u8>)> = (0..16u64)
        .map(|i| {
            let off = i * 512 * 1024 + (i % 3) * 4096;
            let len = 512 * (1 + (i as usize * 37) % 200);
            (off, vec![0x30 + i as u8; len])
        })
        .collect();
    for (off, w) in &writes {
        model[*off as usize..*off as usize + w.len()].copy_from_slice(w);
    }
    let rt = one_thread();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (off, w) in writes.clone() {
            let d = dev.clone();
            set.spawn(async move { d.write_async(off, w).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        dev.flush_async().await.unwrap();
        // 32 reads in flight at once, against the model.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..32u64 {
            let d = dev.clone();
            let off = (i * 256 * 1024 + i * 512) % (8 * MIB - 64 * 1024);
            let len = 512 * (1 + (i as usize * 13) % 120);
            set.spawn(async move { (off, d.read_async(off, len).await) });
        }
        while let Some(r) = set.join_next().await {
            let (off, got) = r.unwrap();
            let got = got.unwrap();
            assert!(
                got == model[off as usize..off as usize + got.len()],
                "async read at {off} differs from the model"
            );
        }
        // WRITE SAME and zeroes.
        dev.write_same_async(6 * MIB, 8192, vec![0x7E; 512])
            .await
            .unwrap();
        model[6 * MIB as usize..6 * MIB as usize + 8192].fill(0x7E);
        dev.write_zeroes_async(7 * MIB + 512, 3 * 512)
            .await
            .unwrap();
        model[7 * MIB as usize + 512..7 * MIB as usize + 4 * 512].fill(0);
        let all = dev.read_async(0, 8 * MIB as usize).await.unwrap();
        assert!(all == model, "the whole disk differs from the model");
    });
    // The synchronous path reads the same; a sibling clone and the base are unchanged.
    assert!(read(&*dev, 0, 8 * MIB as usize) == model);
    let sib = unique("s");
    store.create_client(&sib, &image, 1, false).unwrap();
    let s = store.open_client(&sib).unwrap();
    assert!(read(&s, 0, 8 * MIB as usize) == data);
    let base = store.open_base(&image, 1).unwrap();
    assert!(read(&base, 0, 8 * MIB as usize) == data);
    drop((dev, s, base));
    store.remove_client(&c).unwrap();
    store.remove_client(&sib).unwrap();
}

#[test]
fn rbd_async_error_paths() {
    let (store, image, c, dev, _) = async_clone();
    let rt = one_thread();
    rt.block_on(async {
        assert!(matches!(
            dev.read_async(8 * MIB - 512, 1024).await,
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write_async(8 * MIB, vec![1; 512]).await,
            Err(StoreError::OutOfRange { .. })
        ));
        // A pattern that does not fill the range a whole number of times, or an empty one.
        for p in [vec![1u8; 3000], Vec::new()] {
            match dev.write_same_async(0, 4096, p).await {
                Err(StoreError::Writing(e)) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidInput)
                }
                other => panic!("bad pattern: {other:?}"),
            }
        }
        let base = store.open_base(&image, 1).unwrap();
        assert!(matches!(
            base.write_async(0, vec![1; 512]).await,
            Err(StoreError::ReadOnly)
        ));
        assert!(matches!(
            base.write_zeroes_async(0, 512).await,
            Err(StoreError::ReadOnly)
        ));
        // librbd's own refusals come back through the completion: a snapshot opened for
        // writing past isboot's check gets EROFS; a write-same librbd cannot split, EINVAL.
        let name = base_name(&image, 1);
        let img = store.io.open(&name, Some(BASE_SNAP), false).unwrap();
        let snap = RbdDevice::new(img, false, name).unwrap();
        match snap.write_async(0, vec![1; 512]).await {
            Err(StoreError::Writing(e)) => assert_eq!(e.raw_os_error(), Some(libc::EROFS)),
            other => panic!("write to a snapshot: {other:?}"),
        }
        let r = match dev.img.aio_writesame(0, 1000, vec![1; 512]) {
            Ok(op) => op.await.0,
            Err(e) => -(e.raw_os_error().unwrap() as isize),
        };
        assert_eq!(r, -(libc::EINVAL as isize));
    });
    drop(dev);
    store.remove_client(&c).unwrap();
}

#[test]
fn rbd_async_dropped_write_still_lands_and_close_waits_for_a_read_in_flight() {
    let (store, _image, c, dev, data) = async_clone();
    let rt = one_thread();
    let mine = vec![0xD7u8; 64 * 1024];
    rt.block_on(async {
        // Poll the write once (it is submitted to librbd), then drop the future: a cancelled
        // SCSI command. librbd still owns the buffer and finishes the write.
        let fut = dev.write_async(3 * MIB, mine.clone());
        let _ = tokio::time::timeout(std::time::Duration::ZERO, fut).await;
        dev.flush_async().await.unwrap();
        assert!(dev.read_async(3 * MIB, mine.len()).await.unwrap() == mine);
        // A read in flight when its future is dropped and the device closed.
        let fut = dev.read_async(0, 4 * MIB as usize);
        let _ = tokio::time::timeout(std::time::Duration::ZERO, fut).await;
    });
    drop(dev);
    // Closed cleanly: the disk opens again (its lock was released) and holds the write.
    let dev = store.open_client(&c).unwrap();
    assert!(read(&dev, 3 * MIB, mine.len()) == mine);
    assert!(read(&dev, 0, 3 * MIB as usize) == data[..3 * MIB as usize]);
    drop(dev);
    store.remove_client(&c).unwrap();
}

/// A client quota on a clone counts the objects the clone holds itself (allocated by copy-up
/// when first written): a quota of N objects lets writes take N, refuses the write that
/// would take one more (sync and async, WRITE SAME too) and changes nothing, keeps rewrites
/// of held objects working, and counts the same after the disk is opened again.
#[test]
fn rbd_quota_counts_the_clones_own_objects_and_refuses_the_next_one() {
    let store = RbdStore::connect(cluster()).unwrap();
    let image = unique("qimg");
    let data = base_bytes(32 * MIB);
    import(&store, &image, 1, &data);
    let client = unique("q");
    store.create_client(&client, &image, 1, false).unwrap();
    let obj = {
        let d = store.open_client(&client).unwrap();
        // A fresh clone holds nothing of its own (everything reads from the parent).
        assert_eq!(
            (d.held_bytes(), d.quota(), d.over_quota()),
            (0, None, false)
        );
        assert_eq!(d.object_size(), 4 * MIB, "the default object size");
        d.object_size()
    };
    let d = store.open_client(&client).unwrap();
    d.set_quota(Some(2 * obj));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Object 0 by the blocking path, object 3 by the asynchronous one: 2 objects held.
    d.write(4096, &[0x11; 4096], true).unwrap();
    rt.block_on(d.write_async(3 * obj + 512, vec![0x33u8; 1024]))
        .unwrap();
    assert_eq!(d.held_bytes(), 2 * obj);
    assert!(!d.over_quota());
    // A third object: refused on every write path, nothing written.
    let refused = |r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::QuotaExceeded { quota }) if quota == 2 * obj),
            "{r:?}"
        );
    };
    refused(d.write(5 * obj, &[0x55; 4096], true));
    refused(rt.block_on(d.write_async(5 * obj, vec![0x55u8; 4096])));
    refused(rt.block_on(d.write_same_async(6 * obj, 8192, vec![0x66; 512])));
    // One write across a held object and a new one is refused whole.
    refused(d.write(obj - 4096, &[0x77; 8192], false));
    assert!(d.over_quota());
    assert_eq!(d.held_bytes(), 2 * obj);
    let at = |o: u64| o as usize;
    assert_eq!(
        read(&d, 5 * obj, 4096),
        data[at(5 * obj)..at(5 * obj) + 4096]
    );
    assert_eq!(
        read(&d, 6 * obj, 8192),
        data[at(6 * obj)..at(6 * obj) + 8192]
    );
    assert_eq!(
        read(&d, obj - 4096, 8192),
        data[at(obj) - 4096..at(obj) + 4096]
    );
    // Rewrites inside the held objects still work, by every path.
    d.write(obj - 8192, &[0x12; 4096], true).unwrap();
    rt.block_on(d.write_async(3 * obj, vec![0x34u8; 4096]))
        .unwrap();
    rt.block_on(d.write_same_async(3 * obj + 8192, 4096, vec![0x35; 512]))
        .unwrap();
    assert!(
        d.over_quota(),
        "only a write that takes a new object clears the flag"
    );
    assert_eq!(read(&d, obj - 8192, 4096), vec![0x12; 4096]);
    assert_eq!(read(&d, 3 * obj + 8192, 4096), vec![0x35; 4096]);
    // Zeroing is not charged (and gives nothing back).
    rt.block_on(d.write_zeroes_async(0, 8192)).unwrap();
    assert_eq!(d.held_bytes(), 2 * obj);
    // Raised by one object: the next new object is taken, the one after refused.
    d.set_quota(Some(3 * obj));
    d.write(5 * obj, &[0x55; 4096], true).unwrap();
    assert!(!d.over_quota());
    let r = d.write(6 * obj, &[0x66; 4096], true);
    assert!(
        matches!(r, Err(StoreError::QuotaExceeded { quota }) if quota == 3 * obj),
        "{r:?}"
    );
    // Zeroing part of an object the clone does not hold copies it up (the rest must still
    // read the base): held from now on, not refused; zeroing a whole object holds nothing.
    rt.block_on(d.write_zeroes_async(7 * obj + 4096, 4096))
        .unwrap();
    assert_eq!(d.held_bytes(), 4 * obj);
    d.discard(6 * obj, obj).unwrap();
    assert_eq!(d.held_bytes(), 4 * obj);
    drop(d);

    // Opened again: librbd lists the same 4 objects as the clone's own.
    let d = store.open_client(&client).unwrap();
    assert_eq!(d.held_bytes(), 4 * obj);
    assert_eq!(read(&d, 5 * obj, 4096), vec![0x55; 4096]);
    drop(d);
    store.remove_client(&client).unwrap();
    store.remove_base(&image, 1).unwrap();
}
