//! Connection bounds of the iSCSI service on loopback: connections over the per-address and
//! the global limit are closed at accept while a good client still logs in and does I/O, a
//! discovery session that goes quiet is closed, and writers share a small write-data budget
//! without deadlock and without the budget ever being overdrawn.

mod fixture;
use fixture::{connect_from, connect_ready_from};
use isboot::initiator::{Initiator, InitiatorError, LoginOptions, write16_cdb};
use isboot::iscsi::target::StaticRegistry;
use isboot::service::budget::{self, Slots};
use isboot::service::iscsi::{ServerConfig, serve_with};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.test:bounds";

fn registry(dir: &tempfile::TempDir) -> Arc<StaticRegistry> {
    fixture::one_disk_target(dir.path(), IQN, "bounds").0
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn start(reg: Arc<StaticRegistry>, cfg: ServerConfig) -> Server {
    let (atx, arx) = std::sync::mpsc::channel();
    let (stx, srx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            atx.send(l.local_addr().expect("addr")).expect("send");
            serve_with(l, reg, cfg, async {
                let _ = srx.await;
            })
            .await
            .expect("serve");
        });
    });
    Server {
        addr: arx.recv().expect("addr"),
        stop: Some(stx),
        thread: Some(thread),
    }
}

/// Has the server closed `s` (EOF or reset), judged without blocking?
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Wait (up to 20 s) until `done` holds; false if it never did.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn connections_over_the_limits_are_refused_while_a_good_client_does_io() {
    let dir = tempfile::tempdir().expect("tmp");
    let slots = Slots::new(24, 2);
    let srv = start(
        registry(&dir),
        ServerConfig {
            connections: slots.clone(),
            ..Default::default()
        },
    );
    // 11 hostile addresses open 4 connections each and never log in: 2 per address are held
    // (until the login timeout), 2 per address are closed at accept.
    let mut hostile: Vec<TcpStream> = (10..21u8)
        .flat_map(|a| (0..4).map(move |_| a))
        .map(|a| connect_from([127, 0, 0, a], srv.addr).expect("connect"))
        .collect();
    assert!(
        eventually(|| {
            let st = slots.stats();
            st.in_use + st.refused_per_address as usize == 44
        }),
        "{:?}",
        slots.stats()
    );
    let st = slots.stats();
    assert_eq!(
        (st.in_use, st.refused_per_address, st.addresses),
        (22, 22, 11)
    );
    assert!(
        eventually(|| hostile
            .iter_mut()
            .map(closed_by_server)
            .filter(|c| *c)
            .count()
            == 22),
        "the 22 refused connections are closed by the server, the 22 others stay"
    );

    // A good client from another address logs in and writes and reads its disk.
    let opts = LoginOptions::new("iqn.2026-12.test:good", Some(IQN)).linux_profile();
    let mut good = Initiator::connect(srv.addr, &opts).expect("good client logs in");
    good.clear_unit_attention(0).expect("unit attention");
    let data: Vec<u8> = (0..8 * 512).map(|i| (i % 251) as u8).collect();
    assert_eq!(good.write16(0, 100, &data).expect("write").status, 0);
    let c = good.read16(0, 100, 8).expect("read");
    assert_eq!(c.status, 0);
    assert!(c.data == data, "read back what was written");
    assert_eq!(slots.stats().in_use, 23);

    // The global limit: one more connection fits, the next is refused although its address
    // holds none.
    let mut last = connect_from([127, 0, 0, 30], srv.addr).expect("connect");
    let mut over = connect_from([127, 0, 0, 31], srv.addr).expect("connect");
    assert!(
        eventually(|| slots.stats().refused_full == 1),
        "{:?}",
        slots.stats()
    );
    assert!(eventually(|| closed_by_server(&mut over)));
    assert!(!closed_by_server(&mut last));
    // The good client is unaffected.
    assert_eq!(good.read16(0, 100, 8).expect("read").data, data);
    good.logout().expect("logout");

    // Connections going away give their slots back.
    drop(hostile);
    drop(last);
    assert!(
        eventually(|| slots.stats().in_use == 0),
        "{:?}",
        slots.stats()
    );
    let mut again = Initiator::connect(srv.addr, &opts).expect("login after the peers left");
    again.logout().expect("logout");
}

#[test]
fn a_quiet_discovery_session_is_closed() {
    let dir = tempfile::tempdir().expect("tmp");
    let srv = start(
        registry(&dir),
        ServerConfig {
            discovery_idle: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let opts = LoginOptions::new("iqn.2026-12.test:discover", None);
    let mut d = Initiator::connect(srv.addr, &opts).expect("discovery login");
    let targets = d.send_targets("All").expect("SendTargets");
    assert!(targets.iter().any(|(k, v)| k == "TargetName" && v == IQN));
    d.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // Nothing more is sent: the server closes the session (before its first NOP-In ping,
    // due after 10 s), and the initiator sees the connection end.
    match d.recv() {
        Err(InitiatorError::Closed) => {}
        Err(InitiatorError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the quiet discovery session: {other:?}"),
    }
}

#[test]
fn writers_share_a_small_write_budget_and_all_finish() {
    const WRITE: usize = 64 * 1024;
    const LIMIT: u64 = 160 * 1024;
    let dir = tempfile::tempdir().expect("tmp");
    let write_budget = budget::Bytes::new(LIMIT);
    let srv = start(
        registry(&dir),
        ServerConfig {
            write_budget: write_budget.clone(),
            ..Default::default()
        },
    );
    // The budget is spent when the writers start: every connection must stop and wait.
    let all = write_budget.try_take(LIMIT).expect("all of it");
    let addr = srv.addr;
    // Four writers with three 64 KiB WRITEs in flight each (immediate and unsolicited data,
    // as open-iscsi sends it), one more as iPXE writes (everything on R2T).
    let writers: Vec<_> = (0..5u8)
        .map(|w| {
            std::thread::spawn(move || {
                let name = format!("iqn.2026-12.test:writer{w}");
                let opts = LoginOptions::new(&name, Some(IQN));
                let opts = if w == 4 {
                    opts.ipxe_profile()
                } else {
                    opts.linux_profile()
                };
                let mut c = Initiator::connect(addr, &opts).expect("login");
                c.clear_unit_attention(0).expect("unit attention");
                let chunks: Vec<(u64, Vec<u8>)> = (0..3u64)
                    .map(|i| {
                        let lba = (u64::from(w) * 3 + i) * (WRITE as u64 / 512);
                        (lba, fixture::pattern(WRITE, w * 3 + i as u8 + 1))
                    })
                    .collect();
                for (lba, data) in &chunks {
                    let cdb = write16_cdb(*lba, (WRITE / 512) as u32, false);
                    c.submit(0, &cdb, bytes::Bytes::from(data.clone()), 0)
                        .expect("submit");
                }
                for _ in &chunks {
                    assert_eq!(c.wait_any().expect("completes").status, 0, "writer {w}");
                }
                for (lba, data) in &chunks {
                    let r = c.read16(0, *lba, (WRITE / 512) as u32).expect("read");
                    assert!(r.data == *data, "writer {w} reads back what it wrote");
                }
                c.logout().expect("logout");
            })
        })
        .collect();
    assert!(
        eventually(|| write_budget.stats().waits >= 5),
        "every writer's connection waits for budget: {:?}",
        write_budget.stats()
    );
    drop(all);
    for w in writers {
        w.join().expect("writer finished");
    }
    let st = write_budget.stats();
    assert!(st.peak <= LIMIT, "never overdrawn: {st:?}");
    assert!(
        eventually(|| write_budget.stats().in_use == 0),
        "all given back"
    );
}

/// Peers on one address that announce WRITEs and withhold the data hold only their address's
/// share of the write budget: a writer from another address gets the rest and finishes.
#[test]
fn withheld_writes_from_one_address_do_not_starve_another() {
    use isboot::wire::pdu::Bhs;
    const WRITE: usize = 64 * 1024;
    const LIMIT: u64 = 640 * 1024;
    const SHARE: u64 = 256 * 1024;
    const HOSTILE: [u8; 4] = [127, 0, 0, 2];
    let dir = tempfile::tempdir().expect("tmp");
    let write_budget = budget::Bytes::shared(LIMIT, SHARE);
    let srv = start(
        registry(&dir),
        ServerConfig {
            write_budget: write_budget.clone(),
            // Longer than the test: only the share keeps the hostile peers from the rest.
            stalled_write: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    // Three sessions from one address announce four 64 KiB WRITEs each (768 KiB, more than
    // the whole budget), as iPXE sends them (data only on R2T), and answer no R2T.
    let hostile: Vec<Initiator> = (0..3u32)
        .map(|s| {
            let name = format!("iqn.2026-12.test:withholder{s}");
            let opts = LoginOptions::new(&name, Some(IQN)).ipxe_profile();
            let mut c = connect_ready_from(HOSTILE, srv.addr, &opts);
            for n in 0..4u32 {
                let lba = u64::from(s * 4 + n) * (WRITE as u64 / 512);
                let cdb = write16_cdb(lba, (WRITE / 512) as u32, false);
                c.submit(0, &cdb, bytes::Bytes::from(vec![0xA5u8; WRITE]), 0)
                    .expect("submit");
            }
            c
        })
        .collect();
    let hostile_ip = std::net::IpAddr::from(HOSTILE);
    assert!(
        eventually(|| write_budget.held_by(hostile_ip) == SHARE),
        "the hostile address holds its whole share: {} of {SHARE}, {:?}",
        write_budget.held_by(hostile_ip),
        write_budget.stats()
    );
    assert_eq!(write_budget.stats().in_use, SHARE, "and no more");

    // A writer from another address: four 64 KiB WRITEs in flight (open-iscsi's way) to the
    // last 256 KiB of the 1 MiB disk; all complete and read back while the hostile peers
    // still hold their share.
    let opts = LoginOptions::new("iqn.2026-12.test:good", Some(IQN)).linux_profile();
    let mut good = connect_ready_from([127, 0, 0, 3], srv.addr, &opts);
    good.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let chunks: Vec<(u64, Vec<u8>)> = (0..4u64)
        .map(|i| {
            (
                (12 + i) * (WRITE as u64 / 512),
                fixture::pattern(WRITE, i as u8 + 1),
            )
        })
        .collect();
    for (lba, data) in &chunks {
        let cdb = write16_cdb(*lba, (WRITE / 512) as u32, false);
        good.submit(0, &cdb, bytes::Bytes::from(data.clone()), 0)
            .expect("submit");
    }
    for _ in &chunks {
        assert_eq!(good.wait_any().expect("completes").status, 0);
    }
    for (lba, data) in &chunks {
        let r = good.read16(0, *lba, (WRITE / 512) as u32).expect("read");
        assert!(r.data == *data, "reads back what it wrote");
    }
    good.logout().expect("logout");
    assert_eq!(write_budget.held_by(hostile_ip), SHARE, "still held");
    assert!(
        write_budget.stats().peak <= LIMIT,
        "{:?}",
        write_budget.stats()
    );
    // The hostile peers were asked for data only for the commands their share holds (all
    // are read before any goes, which would give its share to the others).
    let mut hostile = hostile;
    let mut asked = std::collections::HashSet::new();
    for (s, c) in hostile.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        while let Ok((bhs, _)) = c.recv() {
            if let Bhs::R2t(r) = bhs {
                asked.insert((s, r.itt));
            }
        }
    }
    assert_eq!(asked.len(), (SHARE / WRITE as u64) as usize, "{asked:?}");
    drop(hostile);
    assert!(
        eventually(|| write_budget.stats().in_use == 0),
        "given back when they go: {:?}",
        write_budget.stats()
    );
}

/// A target `IQN:name` whose disk is a fresh overlay in `dir` over `base`.
fn overlay_target(
    name: &str,
    base: &Arc<isboot::store::base::BaseImage>,
    dir: &std::path::Path,
) -> Arc<isboot::iscsi::target::TargetConfig> {
    quota_target(name, base, dir, None)
}

/// [`overlay_target`] with an overlay quota of `quota` bytes.
fn quota_target(
    name: &str,
    base: &Arc<isboot::store::base::BaseImage>,
    dir: &std::path::Path,
    quota: Option<u64>,
) -> Arc<isboot::iscsi::target::TargetConfig> {
    use isboot::iscsi::target::{TargetConfig, TargetStats};
    use isboot::scsi::{LogicalUnit, LuIdentity, TargetLus};
    use isboot::store::overlay::Overlay;
    let path = dir.join(format!("{name}.ovl"));
    drop(Overlay::create_at(&path, base.clone(), 4096).expect("create overlay"));
    let ov = Overlay::open_at(&path, base.clone(), false).expect("open overlay");
    ov.set_quota(quota);
    Arc::new(TargetConfig {
        iqn: format!("{IQN}:{name}"),
        lus: Arc::new(TargetLus::single(Arc::new(LogicalUnit::new(
            Arc::new(ov),
            LuIdentity {
                vendor: "ISBOOT".into(),
                product: "TEST".into(),
                revision: "0001".into(),
                serial: name.into(),
                naa_id: 9,
            },
        )))),
        allowed_initiators: Vec::new(),
        chap: None,
        listed: true,
        stats: Arc::new(TargetStats::default()),
    })
}

/// A base image over the file `name` (4 MiB) made in `dir`.
fn base_image(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, Arc<isboot::store::base::BaseImage>) {
    use isboot::store::base::{BaseId, BaseImage};
    let path = fixture::patterned_image(dir, name, 4 << 20);
    let base = BaseImage::open(&path, BaseId::random().expect("id"), 1).expect("base");
    (path, Arc::new(base))
}

/// Log in to `IQN:name` (open-iscsi's keys) and take the unit attention.
fn login(addr: SocketAddr, name: &str) -> Initiator {
    let opts = LoginOptions::new(
        &format!("iqn.2026-12.test:{name}"),
        Some(&format!("{IQN}:{name}")),
    )
    .linux_profile();
    let mut c = Initiator::connect(addr, &opts).expect("login");
    c.clear_unit_attention(0).expect("unit attention");
    c
}

/// A tmpfs of `size` mounted on `at` (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = fixture::run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "isboot-test",
                &at.display().to_string(),
            ],
        );
        assert!(out.status.success(), "mount: {out:?}");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = fixture::run("umount", &["-l", &self.0.display().to_string()]);
    }
}

#[test]
fn a_full_state_file_system_fails_only_the_writes_that_need_space() {
    if !fixture::netns::is_root() {
        return fixture::skip("mounting a tmpfs needs root");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (base_path, base) = base_image(dir.path(), "base.raw");
    let fs = Tmpfs::mount(&dir.path().join("state"), "1m");
    let target = |name: &str| overlay_target(name, &base, &fs.0);
    let reg = Arc::new(StaticRegistry(vec![target("a"), target("b")]));
    let srv = start(reg, ServerConfig::default());
    let login = |name: &str| {
        let opts = LoginOptions::new(
            &format!("iqn.2026-12.test:{name}"),
            Some(&format!("{IQN}:{name}")),
        )
        .linux_profile();
        let mut c = Initiator::connect(srv.addr, &opts).expect("login");
        c.clear_unit_attention(0).expect("unit attention");
        c
    };
    let (mut a, mut b) = (login("a"), login("b"));
    let a1 = fixture::pattern(64 * 1024, 1);
    let b1 = fixture::pattern(64 * 1024, 2);
    assert_eq!(a.write16(0, 0, &a1).expect("write").status, 0);
    assert_eq!(b.write16(0, 0, &b1).expect("write").status, 0);

    // Something else fills the file system.
    let filler = fs.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0x55u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    // A's write that needs space fails with SPACE ALLOCATION FAILED WRITE PROTECT...
    let a2 = fixture::pattern(64 * 1024, 3);
    let c = a.write16(0, 1024, &a2).expect("answered");
    assert_eq!(c.status, 2, "CHECK CONDITION");
    let (k, asc, ascq) = (c.sense[2] & 0x0f, c.sense[12], c.sense[13]);
    assert_eq!((k, asc, ascq), (0x07, 0x27, 0x07), "sense {:02x?}", c.sense);
    // ... what it acknowledged before is intact, and B, whose blocks are allocated, keeps
    // rewriting and reading them.
    assert!(a.read16(0, 0, 128).expect("read").data == a1);
    let b2 = fixture::pattern(64 * 1024, 4);
    assert_eq!(b.write16(0, 0, &b2).expect("write").status, 0);
    assert!(b.read16(0, 0, 128).expect("read").data == b2);
    let base_bytes = std::fs::read(&base_path).expect("base");
    assert!(a.read16(0, 2048, 8).expect("read").data == base_bytes[2048 * 512..2056 * 512]);

    // Space comes back: A's writes succeed again, without a restart.
    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(a.write16(0, 1024, &a2).expect("write").status, 0);
    assert!(a.read16(0, 1024, 128).expect("read").data == a2);
    assert!(a.read16(0, 0, 128).expect("read").data == a1);
    a.logout().expect("logout");
    b.logout().expect("logout");
    drop(srv);
}

/// A client whose overlay holds its quota gets SPACE ALLOCATION FAILED for the write that
/// needs more, and only for that command: its rewrites, its reads and the other client go
/// on; after it trims (UNMAP) its writes work again, without a restart.
#[test]
fn a_full_quota_fails_only_that_clients_writes_until_it_trims() {
    let dir = tempfile::tempdir().expect("tmp");
    let (base_path, base) = base_image(dir.path(), "base.raw");
    let reg = Arc::new(StaticRegistry(vec![
        quota_target("q", &base, dir.path(), Some(128 * 1024)),
        overlay_target("o", &base, dir.path()),
    ]));
    let srv = start(reg, ServerConfig::default());
    let (mut q, mut o) = (login(srv.addr, "q"), login(srv.addr, "o"));
    let q1 = fixture::pattern(128 * 1024, 1);
    assert_eq!(q.write16(0, 0, &q1).expect("write").status, 0);
    let q2 = fixture::pattern(4096, 2);
    let c = q.write16(0, 1024, &q2).expect("answered");
    assert_eq!(c.status, 2, "CHECK CONDITION");
    let (k, asc, ascq) = (c.sense[2] & 0x0f, c.sense[12], c.sense[13]);
    assert_eq!((k, asc, ascq), (0x07, 0x27, 0x07), "sense {:02x?}", c.sense);
    // Nothing of it landed; what was acknowledged is there; a rewrite needs no new space.
    let base_bytes = std::fs::read(&base_path).expect("base");
    assert!(q.read16(0, 1024, 8).expect("read").data == base_bytes[1024 * 512..1032 * 512]);
    assert!(q.read16(0, 0, 256).expect("read").data == q1);
    let q3 = fixture::pattern(4096, 3);
    assert_eq!(q.write16(0, 8, &q3).expect("write").status, 0);
    // The other client writes past q's quota.
    let o1 = fixture::pattern(512 * 1024, 4);
    assert_eq!(o.write16(0, 0, &o1).expect("write").status, 0);
    assert!(o.read16(0, 0, 1024).expect("read").data == o1);
    // q trims its first 64 KiB (UNMAP, one descriptor): its write goes through.
    let mut unmap = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    unmap.extend_from_slice(&0u64.to_be_bytes());
    unmap.extend_from_slice(&128u32.to_be_bytes());
    unmap.extend_from_slice(&[0; 4]);
    let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(q.command(0, &cdb, &unmap, 0).expect("unmap").status, 0);
    assert_eq!(q.write16(0, 1024, &q2).expect("write").status, 0);
    assert!(q.read16(0, 1024, 8).expect("read").data == q2);
    assert!(q.read16(0, 128, 128).expect("read").data == q1[64 * 1024..]);
    q.logout().expect("logout");
    o.logout().expect("logout");
    drop(srv);
}

#[test]
fn a_base_changed_underneath_fails_its_clients_and_no_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let (trunc_path, trunc) = base_image(dir.path(), "truncated.raw");
    let (swap_path, swap) = base_image(dir.path(), "replaced.raw");
    let (_, good) = base_image(dir.path(), "good.raw");
    let reg = Arc::new(StaticRegistry(vec![
        overlay_target("t", &trunc, dir.path()),
        overlay_target("r", &swap, dir.path()),
        overlay_target("g", &good, dir.path()),
    ]));
    drop((trunc, swap, good));
    let srv = start(
        reg,
        ServerConfig {
            base_check: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let (mut t, mut r, mut g) = (
        login(srv.addr, "t"),
        login(srv.addr, "r"),
        login(srv.addr, "g"),
    );
    let want = std::fs::read(&trunc_path).expect("base");
    for c in [&mut t, &mut r, &mut g] {
        let w = fixture::pattern(4096, 9);
        assert_eq!(c.write16(0, 8, &w).expect("write").status, 0);
        assert!(c.read16(0, 0, 8).expect("read").data == want[..4096]);
    }
    let medium_error = |c: &mut Initiator| {
        let x = c.read16(0, 0, 8).expect("answered");
        x.status == 2 && x.sense.get(2).map(|k| k & 0x0f) == Some(0x03)
    };

    // Truncated to half while its client reads: the client gets MEDIUM ERROR (for the half
    // that is still there too), the server does not die of SIGBUS.
    let truncating = std::thread::spawn(move || {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&trunc_path)
            .expect("open for writing");
        f.set_len(2 << 20).expect("truncate");
    });
    assert!(
        eventually(|| medium_error(&mut t)),
        "the truncated base's client gets errors"
    );
    truncating.join().expect("the truncation went ahead");
    assert!(medium_error(&mut t), "and keeps getting them");
    let w = t.write16(0, 8, &[1; 512]).expect("answered");
    assert_eq!(w.status, 2, "writes too");

    // Replaced by a file of the same size (what a `cp` to a temporary name and `mv` does).
    let other = dir.path().join("other.raw");
    std::fs::write(&other, vec![0xEEu8; 4 << 20]).expect("other");
    std::fs::rename(&other, &swap_path).expect("replace");
    assert!(
        eventually(|| medium_error(&mut r)),
        "the replaced base's client gets errors"
    );

    // The third image keeps serving, data intact.
    assert!(g.read16(0, 0, 8).expect("read").data == want[..4096]);
    assert!(g.read16(0, 8, 8).expect("read").data == fixture::pattern(4096, 9));
    g.logout().expect("logout");
}

#[test]
fn a_writer_that_withholds_its_data_is_closed_and_its_buffer_given_back() {
    use isboot::wire::pdu::Bhs;
    const WRITE: usize = 64 * 1024;
    let dir = tempfile::tempdir().expect("tmp");
    let write_budget = budget::Bytes::new(1 << 20);
    let srv = start(
        registry(&dir),
        ServerConfig {
            write_budget: write_budget.clone(),
            stalled_write: Duration::from_secs(1),
            ..Default::default()
        },
    );
    // As iPXE writes: everything on R2T.
    let opts = LoginOptions::new("iqn.2026-12.test:stall", Some(IQN)).ipxe_profile();
    let mut c = Initiator::connect(srv.addr, &opts).expect("login");
    c.clear_unit_attention(0).expect("unit attention");
    let cdb = write16_cdb(0, (WRITE / 512) as u32, false);
    c.submit(0, &cdb, bytes::Bytes::from(vec![1u8; WRITE]), 0)
        .expect("submit");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The R2T comes; it is never answered.
    let (bhs, _) = c.recv().expect("R2T");
    assert!(matches!(bhs, Bhs::R2t(_)), "{bhs:?}");
    assert_eq!(
        write_budget.stats().in_use,
        WRITE as u64,
        "its buffer is held"
    );
    loop {
        match c.recv() {
            Ok((Bhs::NopIn(_), _)) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(InitiatorError::Closed) => break,
            Err(InitiatorError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected the server to close the stalled session: {e:?}"),
        }
    }
    assert!(
        eventually(|| write_budget.stats().in_use == 0),
        "given back: {:?}",
        write_budget.stats()
    );
}
