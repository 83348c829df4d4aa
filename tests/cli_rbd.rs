//! `isboot image add|list|remove` with `[store] backend = "rbd"`, against a real one-node Ceph
//! (`scripts/ceph-dev start`, idempotent; the cluster named by `ISBOOT_CEPH_ID`, default
//! `rbdtest`). What isboot put in the pool is checked with Ceph's own `rbd` command. Every test
//! uses image names of its own, so runs against a long-lived dev cluster do not collide.
//! Client disks on RBD are served by `isboot serve` over iSCSI on loopback: private clones,
//! reset and persistence, one server per disk (the clone's exclusive lock), and kill -9.
//! Run: `cargo test --features rbd --test cli_rbd rbd`.
#![cfg(feature = "rbd")]

mod fixture;
use bytes::Bytes;
use fixture::disk_io::*;
use fixture::*;
use isboot::initiator::{read16_cdb, write16_cdb};
use isboot::store::rbd::{RbdConfig, dev_cluster};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn ceph() -> &'static RbdConfig {
    static C: OnceLock<RbdConfig> = OnceLock::new();
    C.get_or_init(dev_cluster)
}

/// Ceph's `rbd` command on the test cluster.
fn rbd(args: &[&str]) -> std::process::Output {
    let c = ceph();
    Command::new("rbd")
        .args(["--conf", &c.conf, "--keyring", &c.keyring, "--id", "admin"])
        .args(args)
        .output()
        .expect("running rbd")
}

#[track_caller]
fn rbd_ok(args: &[&str]) -> Vec<u8> {
    let o = rbd(args);
    assert!(
        o.status.success(),
        "rbd {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// The images in the pool.
fn pool_images() -> Vec<String> {
    String::from_utf8(rbd_ok(&["ls", &ceph().pool]))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An image name no other test or run uses.
fn unique(what: &str) -> String {
    format!("{what}{:08x}", rand::random::<u32>())
}

/// A state directory whose `[store]` is the test cluster's pool (as client.admin).
fn rbd_lab() -> Lab {
    let lab = Lab::new();
    lab.run(&["init", "--server-ip", "10.7.0.1/24"]).ok();
    let c = ceph();
    let path = lab.dir.join("isboot.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (key, value) in [
        ("backend", "rbd"),
        ("ceph_conf", c.conf.as_str()),
        ("pool", c.pool.as_str()),
        ("client", "client.admin"),
        ("keyring", c.keyring.as_str()),
    ] {
        let at = text
            .find(&format!("\n# {key} = "))
            .unwrap_or_else(|| panic!("no commented {key} in isboot.toml:\n{text}"));
        let end = text[at + 1..].find('\n').unwrap() + at + 1;
        text.replace_range(at + 1..end, &format!("{key} = \"{value}\""));
    }
    std::fs::write(&path, text).unwrap();
    lab
}

/// A 5 MiB disk image: patterned, with an all-zero MiB in the middle.
fn disk(seed: u8) -> Vec<u8> {
    let mut d = pattern(5 << 20, seed);
    d[2 << 20..3 << 20].fill(0);
    d
}

fn spec(name: &str) -> String {
    format!("{}/isboot-base-{name}-v1@base", ceph().pool)
}

/// The bytes of `spec` as Ceph's own `rbd export` reads them.
fn export(spec: &str) -> Vec<u8> {
    rbd_ok(&["export", "--no-progress", spec, "-"])
}

fn list_json(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(lab.run(&["image", "list", "--json"]).ok()).unwrap()
}

/// The `image list --json` entry of version 1 of `name`.
fn listed(lab: &Lab, name: &str) -> serde_json::Value {
    let j = list_json(lab);
    let img = j
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {j}"));
    img["versions"][0].clone()
}

#[test]
fn rbd_image_add_imports_a_protected_version_that_another_server_sees() {
    let a = rbd_lab();
    let name = unique("deb");
    let data = disk(3);
    let file = a.file("deb.img", &data);
    let r = a.run(&["image", "add", &name, file.to_str().unwrap()]);
    assert!(
        r.ok().contains(&format!(
            "image {name} version 1: 5.0 MiB (Ceph RBD {})",
            spec(&name)
        )),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("100%"), "no progress: {}", r.stderr);
    // The registry says where the version lives; the state directory holds no copy.
    assert!(
        a.registry().contains(&format!("rbd = \"{}\"", spec(&name))),
        "{}",
        a.registry()
    );
    assert!(!a.dir.join("images").join(&name).exists());
    // Ceph reads back exactly the file; the snapshot is protected (clones can be made of it).
    assert!(
        export(&spec(&name)) == data,
        "rbd export differs from the file"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&rbd_ok(&["info", "--format", "json", &spec(&name)])).unwrap();
    assert_eq!(info["protected"], "true", "{info}");
    // Listed with the size Ceph reports and where it is.
    let list = a.run(&["image", "list"]).ok().to_string();
    let line = list.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(
        line.contains("5.0 MiB") && line.ends_with(&spec(&name)),
        "{list}"
    );
    let v = listed(&a, &name);
    assert_eq!(v["location"], "rbd");
    assert_eq!(v["rbd"], spec(&name));
    assert_eq!(v["size"], 5 << 20);

    // A second server's state directory on the same pool sees it...
    let b = rbd_lab();
    let list = b.run(&["image", "list"]).ok().to_string();
    let line = list.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(line.contains("in the pool only"), "{list}");
    let v = listed(&b, &name);
    assert_eq!(v["location"], "pool-only");
    assert_eq!(v["size"], 5 << 20);
    assert!(v.get("created").is_none(), "{v}");
    // ...and cannot publish the name again: refused, nothing changed on either side.
    let other = b.file("other.img", &disk(9));
    b.refused(
        &["image", "add", &name, other.to_str().unwrap()],
        2,
        "already exists in the Ceph pool",
    );
    assert!(!b.registry().contains(&name));
    assert!(
        export(&spec(&name)) == data,
        "the first server's version changed"
    );
    a.run(&["image", "remove", &name]).ok();
}

#[test]
fn rbd_bad_input_leaves_nothing_in_the_pool() {
    let lab = rbd_lab();
    let name = unique("bad");
    let odd = lab.file("odd.img", &[1u8; 1000]);
    lab.refused(
        &["image", "add", &name, odd.to_str().unwrap()],
        2,
        "multiple of 512",
    );
    lab.refused(
        &["image", "add", &name, "/nonexistent/x.img"],
        2,
        "cannot read",
    );
    let prefix = format!("isboot-base-{name}-");
    assert!(!pool_images().iter().any(|i| i.starts_with(&prefix)));
}

#[test]
fn rbd_version_is_missing_once_its_snapshot_is_deleted_outside_isboot() {
    let lab = rbd_lab();
    let name = unique("gone");
    let file = lab.file("g.img", &disk(7));
    lab.run(&["image", "add", &name, file.to_str().unwrap()])
        .ok();
    let s = spec(&name);
    rbd_ok(&["snap", "unprotect", &s]);
    rbd_ok(&["snap", "rm", "--no-progress", &s]);
    let list = lab.run(&["image", "list"]).ok().to_string();
    let line = list.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(line.contains("MISSING from the pool"), "{list}");
    assert_eq!(listed(&lab, &name)["location"], "missing");
    // Removing it still works (nothing left to unprotect) and clears the image.
    lab.run(&["image", "remove", &name]).ok();
    assert!(!pool_images().contains(&format!("isboot-base-{name}-v1")));
}

#[test]
fn rbd_image_remove_clears_the_pool_or_names_the_rbd_commands() {
    let lab = rbd_lab();
    let name = unique("rm");
    let file = lab.file("r.img", &disk(8));
    lab.run(&["image", "add", &name, file.to_str().unwrap()])
        .ok();
    let base = format!("isboot-base-{name}-v1");
    assert!(pool_images().contains(&base));
    lab.run(&["image", "remove", &name]).ok();
    assert!(!pool_images().contains(&base));
    assert!(!lab.registry().contains(&name));

    // A version the pool cannot let go (a clone made of it outside isboot): the registry
    // forgets it, and the warning names the commands that remove it by hand.
    lab.run(&["image", "add", &name, file.to_str().unwrap()])
        .ok();
    let clone = format!("{}/{name}-clone", ceph().pool);
    rbd_ok(&["clone", &spec(&name), &clone]);
    let r = lab.run(&["image", "remove", &name]);
    r.ok();
    assert!(
        r.stderr.contains("stays in the Ceph pool")
            && r.stderr
                .contains(&format!("rbd snap unprotect {}", spec(&name))),
        "{}",
        r.stderr
    );
    assert!(!lab.registry().contains(&name));
    rbd_ok(&["rm", "--no-progress", &clone]);
    rbd_ok(&["snap", "unprotect", &spec(&name)]);
    rbd_ok(&["snap", "rm", "--no-progress", &spec(&name)]);
    rbd_ok(&["rm", "--no-progress", &format!("{}/{base}", ceph().pool)]);
}

#[test]
fn rbd_qcow2_is_converted_to_raw_first_and_the_copy_removed() {
    if !have("qemu-img") {
        return skip("qemu-img is not installed (apt-get install qemu-utils)");
    }
    let lab = rbd_lab();
    let name = unique("qc");
    let data = disk(11);
    let raw = lab.file("src.raw", &data);
    let qc = lab.tmp.path().join("src.qcow2");
    to_qcow2(&raw, &qc);
    lab.run(&["image", "add", &name, qc.to_str().unwrap()]).ok();
    assert!(
        export(&spec(&name)) == data,
        "rbd export differs from the qcow2's data"
    );
    let leftovers: Vec<_> = std::fs::read_dir(lab.dir.join("images"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    lab.run(&["image", "remove", &name]).ok();
}

/// A base image of the given content in the pool, and a state directory on it.
fn rbd_lab_with(data: &[u8]) -> (Lab, String) {
    let lab = rbd_lab();
    let name = unique("srv");
    let file = lab.file("base.img", data);
    lab.run(&["image", "add", &name, file.to_str().unwrap()])
        .ok();
    (lab, name)
}

/// `add-client` of a client named `name` (unique: clone names are per pool) on `image`.
fn add_rbd_client(lab: &Lab, mac: &str, image: &str, name: &str, extra: &[&str]) {
    let mut a = vec![
        "add-client",
        "--mac",
        mac,
        "--image",
        image,
        "--name",
        name,
        "--no-chap",
    ];
    a.extend_from_slice(extra);
    lab.run(&a).ok();
}

/// The RBD disk the registry records for client `name`: `POOL/isboot-client-NAME.SERIAL`.
fn disk_spec(lab: &Lab, name: &str) -> String {
    let reg = lab.registry();
    let key = format!("rbd = \"{}/isboot-client-{name}.", ceph().pool);
    let at = reg
        .find(&key)
        .unwrap_or_else(|| panic!("no RBD disk for {name}: {reg}"));
    let v = &reg[at + "rbd = \"".len()..];
    v[..v.find('"').unwrap()].to_string()
}

/// Remove `spec` from the pool with `rbd rm` once Ceph lets it go (a killed server's watch
/// on it expires after a few seconds).
fn rm_eventually(spec: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while in_pool(spec) {
        if rbd(&["rm", "--no-progress", spec]).status.success() {
            return;
        }
        assert!(std::time::Instant::now() < until, "{spec} stays busy");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn in_pool(spec: &str) -> bool {
    pool_images().contains(&spec.split_once('/').unwrap().1.to_string())
}

/// UNMAP of `blocks` blocks at `lba`.
fn unmap(i: &mut isboot::initiator::Initiator, lba: u64, blocks: u32) {
    let mut p = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    p.extend_from_slice(&lba.to_be_bytes());
    p.extend_from_slice(&blocks.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    let c = i
        .command(0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .unwrap();
    assert_eq!(c.status, 0, "{c:?}");
}

/// WRITE SAME(10) of `block` (512 bytes) over `blocks` blocks at `lba`; `unmap` sets its
/// UNMAP bit.
fn write_same(
    i: &mut isboot::initiator::Initiator,
    lba: u32,
    blocks: u16,
    block: &[u8],
    unmap: bool,
) {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    let flags = if unmap { 0x08 } else { 0 };
    let cdb = [0x41, flags, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0];
    let c = i.command(0, &cdb, block, 0).unwrap();
    assert_eq!(c.status, 0, "{c:?}");
}

#[test]
fn rbd_clients_are_private_clones_served_over_iscsi_reset_and_persistent() {
    let data = disk(21);
    let (lab, image) = rbd_lab_with(&data);
    let base = spec(&image);
    let (a, b) = (unique("pa"), unique("pb"));
    add_rbd_client(&lab, "52:54:00:00:00:01", &image, &a, &[]);
    add_rbd_client(&lab, "52:54:00:00:00:02", &image, &b, &["--mode", "reset"]);
    // Each client's disk is a clone of the version's snapshot; no overlay file.
    let (sa, sb) = (disk_spec(&lab, &a), disk_spec(&lab, &b));
    assert!(in_pool(&sa) && in_pool(&sb), "{:?}", pool_images());
    // show-client and list-clients name the clone, not an overlay file.
    let shown = lab.run(&["show-client", &a]).ok().to_string();
    assert!(shown.contains(&format!("disk:       {sa} ")), "{shown}");
    assert!(!shown.contains("overlay:"), "{shown}");
    let clients: serde_json::Value =
        serde_json::from_str(lab.run(&["list-clients", "--json"]).ok()).unwrap();
    let ja = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == a.as_str())
        .unwrap_or_else(|| panic!("{a} not listed: {clients}"));
    assert_eq!(ja["rbd"], sa.as_str(), "{ja}");
    assert_eq!(ja["overlay_bytes"], 0, "{ja}");
    let info = String::from_utf8(rbd_ok(&["info", &sa])).unwrap();
    assert!(
        info.contains(&format!("parent: {base}")),
        "{sa} is not a clone of {base}: {info}"
    );
    assert!(
        !lab.dir.join("overlays").exists()
            || std::fs::read_dir(lab.dir.join("overlays"))
                .unwrap()
                .next()
                .is_none()
    );

    let mut srv = Serve::start(&lab.dir);
    let mut ia = client(srv.addr, &a);
    let mut ib = client(srv.addr, &b);
    // A's writes, checked against a model of its disk.
    let mut model = data.clone();
    let mut put = |lba: usize, bytes: &[u8]| {
        model[lba * 512..lba * 512 + bytes.len()].copy_from_slice(bytes);
    };
    write(&mut ia, 16, &[0xA1; 8192], false);
    put(16, &[0xA1; 8192]);
    write(&mut ib, 16, &[0xB2; 8192], true);
    write(&mut ia, 3, &[0xA1; 512], true);
    put(3, &[0xA1; 512]);
    unmap(&mut ia, 40, 8);
    put(40, &[0; 8 * 512]);
    write_same(&mut ia, 64, 16, &[0x5A; 512], false);
    put(64, &[0x5A; 16 * 512]);
    write_same(&mut ia, 96, 8, &[0; 512], true);
    put(96, &[0; 8 * 512]);
    // Past the first object (4 MiB): the clone copies up another parent object.
    write(&mut ia, 9000, &[0xA4; 4096], true);
    put(9000, &[0xA4; 4096]);
    sync_cache(&mut ia);
    assert!(
        read(&mut ia, 0, 128) == model[..128 * 512],
        "A reads back its model"
    );
    assert_eq!(read(&mut ia, 9000, 8), vec![0xA4; 4096]);
    // B never sees A's writes.
    assert!(read(&mut ib, 0, 16) == data[..16 * 512]);
    assert_eq!(read(&mut ib, 16, 16), vec![0xB2; 8192]);
    assert!(read(&mut ib, 40, 64) == data[40 * 512..104 * 512]);
    // Ceph's own view: A's clone is the model, the base is unchanged.
    assert!(
        export(&sa) == model,
        "rbd export of {sa} differs from the model"
    );
    assert!(export(&base) == data, "the base changed");

    // Reset (forced: B is logged in): a new clone; B's session ends; the old clone leaves the
    // pool once the server has let go of it.
    lab.run(&["reset-client", &b, "--force"]).ok();
    let sb2 = disk_spec(&lab, &b);
    assert_ne!(sb, sb2);
    eventually("B's old session ends", || ib.read16(0, 0, 1).is_err());
    let mut ib = client_when_served(srv.addr, &b, Duration::from_secs(20));
    assert!(
        read(&mut ib, 16, 16) == data[16 * 512..32 * 512],
        "B is pristine"
    );
    eventually("the old clone leaves the pool", || !in_pool(&sb));
    write(&mut ib, 16, &[0xB3; 512], true);

    // Restart: the persistent client keeps its writes.
    drop((ia, ib));
    srv.stop();
    let mut srv = Serve::start(&lab.dir);
    let mut ia = client_when_served(srv.addr, &a, Duration::from_secs(30));
    assert!(
        read(&mut ia, 0, 128) == model[..128 * 512],
        "A's writes survived a restart"
    );

    // Removing a served client ends its session and takes its clone out of the pool.
    lab.run(&["remove-client", &a]).ok();
    eventually("A's session ends", || ia.read16(0, 0, 1).is_err());
    eventually("A's clone leaves the pool", || !in_pool(&sa));
    srv.stop();
    lab.run(&["remove-client", &b]).ok();
    assert!(!in_pool(&sb2));
    lab.run(&["image", "remove", &image]).ok();
}

#[test]
fn rbd_a_second_server_refuses_a_served_disk_and_takes_it_over_once_the_first_is_gone() {
    let data = disk(23);
    let (first, image) = rbd_lab_with(&data);
    let c = unique("pc");
    add_rbd_client(&first, "52:54:00:00:00:03", &image, &c, &[]);
    let mut a = Serve::start(&first.dir);
    let mut on_a = client(a.addr, &c);
    write(&mut on_a, 8, &[0xC3; 4096], true);

    // A second server on the same pool (its own state directory, with the same registry).
    let second = rbd_lab();
    std::fs::copy(
        first.dir.join("registry.toml"),
        second.dir.join("registry.toml"),
    )
    .unwrap();
    let mut b = Serve::start(&second.dir);
    let refused = "is served by another isboot server";
    b.wait_log(Duration::from_secs(20), |l| l.contains(refused));
    assert!(!can_login(b.addr, &c), "B served a disk A holds");
    std::thread::sleep(Duration::from_secs(2));
    let log = b.log_text();
    assert_eq!(
        log.matches(refused).count(),
        1,
        "one line, not one per retry: {log}"
    );
    // A goes on serving it.
    assert_eq!(read(&mut on_a, 8, 8), vec![0xC3; 4096]);
    write(&mut on_a, 16, &[0xC4; 512], true);

    // A dies; the client's next login on B gets its disk, with what it wrote on A.
    a.kill9();
    let mut on_b = client_when_served(b.addr, &c, Duration::from_secs(60));
    assert_eq!(read(&mut on_b, 8, 8), vec![0xC3; 4096]);
    assert_eq!(read(&mut on_b, 16, 1), vec![0xC4; 512]);
    write(&mut on_b, 24, &[0xC5; 512], true);
    assert!(
        b.log_text().contains("serving target now"),
        "{}",
        b.log_text()
    );

    drop(on_b);
    b.stop();
    let disk = disk_spec(&first, &c);
    second.run(&["remove-client", &c]).ok();
    rm_eventually(&disk);
    first.run(&["remove-client", &c]).ok();
    first.run(&["image", "remove", &image]).ok();
}

#[test]
fn rbd_kill9_of_serve_under_load_loses_no_acknowledged_durable_write() {
    let rounds = kill_rounds(2);
    let data = disk(25);
    let (lab, image) = rbd_lab_with(&data);
    let c = unique("pk");
    add_rbd_client(&lab, "52:54:00:00:00:04", &image, &c, &[]);
    let acked = kill9_rounds(&lab.dir, &c, rounds, &data);
    assert!(acked > 0, "no FUA write was acknowledged");
    eprintln!(
        "kill -9 of isboot serve on RBD: {rounds} rounds, {acked} acknowledged FUA writes, 0 mismatches"
    );
    let disk = disk_spec(&lab, &c);
    lab.run(&["remove-client", &c]).ok();
    rm_eventually(&disk);
    lab.run(&["image", "remove", &image]).ok();
}

/// Threads of process `pid` now.
fn threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads in /proc/{pid}/status"))
}

/// One command of a batch, on its own slot of the disk, and what it should answer.
enum InFlight {
    /// Data a read returns (the model before the batch: nothing else touches the slot).
    Read(Vec<u8>),
    /// GOOD, no data.
    Good,
    /// CHECK CONDITION, MISCOMPARE (a COMPARE AND WRITE whose compare data differs).
    Miscompare,
}

/// Many commands in flight at once on an RBD disk, served on librbd's asynchronous calls:
/// batches of 40 commands (READ, WRITE with and without FUA, WRITE SAME of a pattern, of zeros
/// and with the UNMAP bit, UNMAP, SYNCHRONIZE CACHE; in the last third also COMPARE AND WRITE,
/// which runs on the blocking path and waits for the writes in flight) are all submitted
/// before the first answer is read, each on its own slot of the disk so the outcome does not
/// depend on their order; every answer is checked against a model, then the whole disk over
/// iSCSI and with `rbd export`. Over the batches without COMPARE AND WRITE the server's thread
/// count stays flat: commands in flight on RBD do not each hold a blocking-pool thread. (While
/// a COMPARE AND WRITE holds the disk, writes that arrive wait for it on the blocking path.)
#[test]
fn rbd_many_commands_in_flight_on_the_async_path_match_a_model() {
    const SLOT: u64 = 160; // blocks per slot: 64 slots on the 5 MiB disk
    const BATCH: usize = 40;
    const BATCHES: usize = 30;
    let data = disk(27);
    let (lab, image) = rbd_lab_with(&data);
    let c = unique("pm");
    add_rbd_client(&lab, "52:54:00:00:00:05", &image, &c, &[]);
    let mut srv = Serve::start(&lab.dir);
    let mut i = client(srv.addr, &c);
    let pid = srv.daemon.pid();
    let threads_at_start = threads(pid);
    let mut most_threads = threads_at_start;
    let mut model = data.clone();
    let slots = (model.len() as u64 / 512 / SLOT) as usize;
    let seed: u64 = rand::random::<u64>() | 1;
    eprintln!("seed {seed}");
    let mut x = seed;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let (mut writes, mut reads, mut caws) = (0, 0, 0);
    for batch in 0..BATCHES {
        let with_caw = batch >= BATCHES * 2 / 3;
        // Distinct slots for this batch's commands.
        let mut order: Vec<usize> = (0..slots).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, rnd(k as u64 + 1) as usize);
        }
        let mut expect = std::collections::HashMap::new();
        let mut after = model.clone();
        for (n, &slot) in order.iter().take(BATCH).enumerate() {
            let first = slot as u64 * SLOT;
            let lba = first + rnd(SLOT / 2);
            let blocks = 1 + rnd(SLOT / 2) as u32;
            let at = lba as usize * 512;
            let end = at + blocks as usize * 512;
            let fill = (batch * BATCH + n) as u8 | 1;
            let lb = lba.to_be_bytes();
            let (itt, want) = match n % 8 {
                0 | 1 => {
                    reads += 1;
                    let itt = i
                        .submit(0, &read16_cdb(lba, blocks), Bytes::new(), blocks * 512)
                        .unwrap();
                    (itt, InFlight::Read(model[at..end].to_vec()))
                }
                2 | 3 | 7 if n % 8 != 7 || !with_caw => {
                    writes += 1;
                    let bytes: Vec<u8> = (0..blocks as usize * 512)
                        .map(|k| fill ^ (k / 7) as u8)
                        .collect();
                    after[at..end].copy_from_slice(&bytes);
                    let cdb = write16_cdb(lba, blocks, n % 8 != 2);
                    (i.submit(0, &cdb, bytes.into(), 0).unwrap(), InFlight::Good)
                }
                4 => {
                    // WRITE SAME(16): a pattern, zeros, or the UNMAP bit.
                    let kind = rnd(3);
                    let block = if kind == 0 {
                        vec![fill; 512]
                    } else {
                        vec![0; 512]
                    };
                    after[at..end].copy_from_slice(&block.repeat(blocks as usize));
                    let nb = blocks.to_be_bytes();
                    let flags = if kind == 2 { 0x08 } else { 0 };
                    let mut cdb = vec![0x93, flags];
                    cdb.extend_from_slice(&lb);
                    cdb.extend_from_slice(&nb);
                    cdb.extend_from_slice(&[0, 0]);
                    (i.submit(0, &cdb, block.into(), 0).unwrap(), InFlight::Good)
                }
                5 => {
                    after[at..end].fill(0);
                    let mut p = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
                    p.extend_from_slice(&lb);
                    p.extend_from_slice(&blocks.to_be_bytes());
                    p.extend_from_slice(&[0; 4]);
                    let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
                    (i.submit(0, &cdb, p.into(), 0).unwrap(), InFlight::Good)
                }
                6 => {
                    let cdb = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    (i.submit(0, &cdb, Bytes::new(), 0).unwrap(), InFlight::Good)
                }
                _ => {
                    // COMPARE AND WRITE of up to 8 blocks; every other batch's with stale data.
                    caws += 1;
                    let blocks = blocks.min(8);
                    let end = at + blocks as usize * 512;
                    let mut buf = model[at..end].to_vec();
                    let stale = batch % 2 == 1;
                    if stale {
                        buf[blocks as usize * 512 - 1] ^= 0xFF;
                    }
                    let new = vec![fill; blocks as usize * 512];
                    buf.extend_from_slice(&new);
                    if !stale {
                        after[at..end].copy_from_slice(&new);
                    }
                    let mut cdb = vec![0x89, 0];
                    cdb.extend_from_slice(&lb);
                    cdb.extend_from_slice(&[0, 0, 0, blocks as u8, 0, 0]);
                    let want = if stale {
                        InFlight::Miscompare
                    } else {
                        InFlight::Good
                    };
                    (i.submit(0, &cdb, buf.into(), 0).unwrap(), want)
                }
            };
            expect.insert(itt, want);
        }
        while !expect.is_empty() {
            let done = i.wait_any().unwrap();
            let want = expect
                .remove(&done.itt)
                .unwrap_or_else(|| panic!("answer for unknown ITT {}", done.itt));
            match want {
                InFlight::Read(d) => {
                    assert_eq!(done.status, 0, "{done:?}");
                    assert!(
                        done.data == d,
                        "batch {batch}: a read differs from the model"
                    );
                }
                InFlight::Good => assert_eq!(done.status, 0, "batch {batch}: {done:?}"),
                InFlight::Miscompare => {
                    assert_eq!(done.status, 2, "{done:?}");
                    assert_eq!(done.sense.get(2).map(|k| k & 0x0F), Some(0x0E), "{done:?}");
                }
            }
        }
        model = after;
        if !with_caw {
            most_threads = most_threads.max(threads(pid));
        }
    }
    assert!(
        read(&mut i, 0, (model.len() / 512) as u32) == model,
        "the disk read over iSCSI differs from the model"
    );
    let spec = disk_spec(&lab, &c);
    assert!(
        export(&spec) == model,
        "rbd export of {spec} differs from the model"
    );
    // The blocking path would have started a pool thread per command in flight (up to 40 at
    // once); librbd's completions need none.
    assert!(
        most_threads < threads_at_start + 12,
        "the server went from {threads_at_start} to {most_threads} threads"
    );
    eprintln!(
        "{BATCHES} batches of {BATCH} commands in flight ({reads} reads, {writes} writes, {caws} compare-and-writes): threads {threads_at_start} -> at most {most_threads}"
    );
    drop(i);
    srv.stop();
    lab.run(&["remove-client", &c]).ok();
    rm_eventually(&spec);
    lab.run(&["image", "remove", &image]).ok();
}

/// Remove the pool's shared state object (`[store] shared_state`): one per pool, so the tests
/// that share state start and end without one.
fn remove_shared_state() {
    let c = ceph();
    let _ = Command::new("rados")
        .args(["--conf", &c.conf, "--keyring", &c.keyring, "--id", "admin"])
        .args(["-p", &c.pool, "rm", "isboot-state"])
        .output()
        .expect("running rados");
}

/// The tests that share state take turns: there is one state object (and one fleet) per
/// pool. Held for the whole test; the state object is removed when it is taken.
fn shared_pool() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let g = TURN.lock().unwrap_or_else(|e| e.into_inner());
    remove_shared_state();
    g
}

/// [`rbd_lab`] with `shared_state = true`.
fn rbd_lab_shared() -> Lab {
    let lab = rbd_lab();
    let path = lab.dir.join("isboot.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\n# shared_state = false\n"), "{text}");
    std::fs::write(
        &path,
        text.replace("\n# shared_state = false\n", "\nshared_state = true\n"),
    )
    .unwrap();
    lab
}

/// Two servers sharing one pool's state: an image added on A and a client added on B (no
/// registry copied by hand) is served by the running server A, from the clone B made; A's
/// `list-clients` names it; removing it on A takes it out of B's view too.
#[test]
fn rbd_shared_state_a_client_added_on_b_is_served_by_a() {
    let _turn = shared_pool();
    let data = disk(31);
    let (a, b) = (rbd_lab_shared(), rbd_lab_shared());
    let image = unique("shr");
    let file = a.file("base.img", &data);
    a.run(&["image", "add", &image, file.to_str().unwrap()])
        .ok();
    let mut on_a = Serve::start(&a.dir);
    let c = unique("pc");
    add_rbd_client(&b, "52:54:00:00:00:31", &image, &c, &[]);
    // A learns of it through its watch (no command run on A) and serves B's clone.
    let mut i = client_when_served(on_a.addr, &c, Duration::from_secs(30));
    assert_eq!(read(&mut i, 0, 8), data[..4096].to_vec());
    write(&mut i, 8, &[0x31; 4096], true);
    assert_eq!(
        export(&disk_spec(&b, &c))[8 * 512..8 * 512 + 4096],
        [0x31; 4096]
    );
    let listed = a.run(&["list-clients", "--json"]).ok().to_string();
    assert!(listed.contains(&c), "{listed}");
    drop(i);
    on_a.stop();
    a.run(&["remove-client", &c]).ok();
    let seen = b.run(&["list-clients", "--json"]).ok().to_string();
    assert!(!seen.contains(&c), "B still lists {c}: {seen}");
    b.run(&["image", "remove", &image]).ok();
    remove_shared_state();
}

/// Log in to the maintenance target of `image` (no CHAP, from this host) once it is served.
fn maint_when_served(addr: std::net::SocketAddr, image: &str) -> isboot::initiator::Initiator {
    let target = format!("{PREFIX}:maint:{image}");
    let initiator = format!("{PREFIX}:initiator:maint:{image}");
    let o = isboot::initiator::LoginOptions::new(&initiator, Some(&target)).linux_profile();
    eventually("the edit is served", || {
        isboot::initiator::Initiator::connect(addr, &o).is_ok()
    });
    login(addr, &initiator, &target)
}

/// Run `args` once the server's status no longer shows the maintenance session (refused
/// with "logged in" until then); anything else must succeed.
fn once_logged_out(lab: &Lab, args: &[&str]) -> String {
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = lab.run(args);
        if r.code != 0 && r.stderr.contains("logged in") && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        return r.ok().to_string();
    }
}

#[test]
fn rbd_image_edit_clones_the_next_version_commit_snapshots_it_and_abort_drops_it() {
    let data = disk(25);
    let (lab, image) = rbd_lab_with(&data);
    let v1 = spec(&image);
    let edit = format!("{}/isboot-base-{image}-v2", ceph().pool);
    let mut srv = Serve::start(&lab.dir);

    // The edit is a clone of v1 named as v2, without a snapshot: not a version yet.
    let out = lab
        .run(&["image", "edit", &image, "--no-chap"])
        .ok()
        .to_string();
    assert!(
        out.contains("editing") && out.contains("version 1"),
        "{out}"
    );
    assert!(in_pool(&edit), "{:?}", pool_images());
    let info = String::from_utf8(rbd_ok(&["info", &edit])).unwrap();
    assert!(info.contains(&format!("parent: {v1}")), "{info}");
    assert!(!list_json(&lab).to_string().contains(&format!("{edit}@")));

    // The admin's machine writes the update through the maintenance target.
    let mut m = maint_when_served(srv.addr, &image);
    let mut model = data.clone();
    write(&mut m, 8, &[0x3C; 4096], true);
    model[8 * 512..8 * 512 + 4096].copy_from_slice(&[0x3C; 4096]);
    write(&mut m, 9000, &[0x3D; 512], false);
    model[9000 * 512..9001 * 512].copy_from_slice(&[0x3D; 512]);
    sync_cache(&mut m);
    // A second server sharing nothing but the pool cannot open the edit while it is served.
    let held = String::from_utf8(rbd_ok(&["lock", "ls", &edit])).unwrap();
    assert!(
        !held.trim().is_empty(),
        "the serving server holds the edit's lock"
    );
    drop(m);

    // Commit: the edit becomes version 2 (a snapshot; v1 unchanged), the target goes.
    once_logged_out(&lab, &["image", "commit", &image]);
    let v2 = format!("{edit}@base");
    assert!(export(&v2) == model, "version 2 is what the edit wrote");
    assert!(export(&v1) == data, "version 1 changed");
    let list = list_json(&lab).to_string();
    assert!(list.contains(&v2), "{list}");
    // A new client gets version 2 and reads the update.
    let c = unique("pe");
    add_rbd_client(&lab, "52:54:00:00:00:07", &image, &c, &[]);
    let info = String::from_utf8(rbd_ok(&["info", &disk_spec(&lab, &c)])).unwrap();
    assert!(info.contains(&format!("parent: {v2}")), "{info}");
    let mut ic = client_when_served(srv.addr, &c, Duration::from_secs(20));
    assert!(read(&mut ic, 0, 16) == model[..16 * 512]);
    assert_eq!(read(&mut ic, 9000, 1), vec![0x3D; 512]);
    drop(ic);

    // Abort: the next edit (named v3) leaves the pool once the server lets go of it.
    lab.run(&["image", "edit", &image, "--no-chap"]).ok();
    let edit3 = format!("{}/isboot-base-{image}-v3", ceph().pool);
    let mut m = maint_when_served(srv.addr, &image);
    write(&mut m, 8, &[0x77; 512], true);
    drop(m);
    once_logged_out(&lab, &["image", "abort", &image]);
    eventually("the aborted edit leaves the pool", || !in_pool(&edit3));
    assert!(export(&v2) == model, "the abort left version 2 alone");

    // Prune of v1 (v2 is its clone): v2 is flattened first and keeps its data.
    srv.stop();
    let out = lab.run(&["image", "prune", &image]).ok().to_string();
    assert!(
        out.contains("removed") && out.contains("version 1"),
        "{out}"
    );
    assert!(!pool_images().contains(&format!("isboot-base-{image}-v1")));
    assert!(export(&v2) == model, "version 2 after its parent went");
    lab.run(&["remove-client", &c]).ok();
    lab.run(&["image", "remove", &image]).ok();
    assert!(
        !pool_images().iter().any(|i| i.contains(&image)),
        "{:?}",
        pool_images()
    );
}

/// `isboot fleet --json` on `lab`: the live servers (portal, disks held, whether it is `lab`'s).
fn fleet(lab: &Lab) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(lab.run(&["fleet", "--json"]).ok()).unwrap();
    v["servers"].as_array().unwrap().clone()
}

/// Wait (up to `secs`) until `cond` holds for `lab`'s look at the fleet; returns that look.
#[track_caller]
fn fleet_when(
    lab: &Lab,
    secs: u64,
    what: &str,
    cond: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let f = fleet(lab);
        if cond(&f) {
            return f;
        }
        assert!(std::time::Instant::now() < until, "{what}: {f:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The portal of the fleet's server that holds client `c`'s disk.
fn holder(f: &[serde_json::Value], c: &str) -> Option<String> {
    f.iter()
        .find(|s| s["disks"].as_array().unwrap().iter().any(|d| d == c))
        .map(|s| s["portal"].as_str().unwrap().to_string())
}

/// Two servers on one pool with shared state are a fleet: each sees the other (`isboot
/// fleet`), a new client's disk is opened only by the server the choice names (the least
/// loaded: four clients added one by one end up two on each), the other refuses its login and
/// says why once; when one server is killed the other sees it gone and opens its disks, with
/// what was written through the dead one.
#[test]
fn rbd_fleet_spreads_the_disks_and_the_survivor_takes_them_over() {
    let _turn = shared_pool();
    let data = disk(41);
    let (a, b) = (rbd_lab_shared(), rbd_lab_shared());
    let image = unique("flt");
    let file = a.file("base.img", &data);
    a.run(&["image", "add", &image, file.to_str().unwrap()])
        .ok();
    let mut on_a = Serve::start(&a.dir);
    let mut on_b = Serve::start(&b.dir);
    let (pa, pb) = (
        format!("10.7.0.1:{}", on_a.addr.port()),
        format!("10.7.0.1:{}", on_b.addr.port()),
    );
    let f = fleet_when(&a, 30, "A and B in the fleet", |f| f.len() == 2);
    assert!(
        f.iter()
            .any(|s| s["portal"] == pa.as_str() && s["me"] == true),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|s| s["portal"] == pb.as_str() && s["me"] == false),
        "{f:?}"
    );

    let clients: Vec<String> = (0..4).map(|_| unique("pc")).collect();
    for (i, c) in clients.iter().enumerate() {
        add_rbd_client(&a, &format!("52:54:00:00:04:{i:02x}"), &image, c, &[]);
        fleet_when(&b, 30, &format!("{c} held by one server"), |f| {
            holder(f, c).is_some()
        });
    }
    let f = fleet(&a);
    for s in &f {
        assert_eq!(
            s["disks"].as_array().unwrap().len(),
            2,
            "least loaded: {f:?}"
        );
    }
    // Each disk is served by its holder only; the other says why, once.
    let on = |c: &str| holder(&fleet(&a), c).unwrap();
    let addr_of = |p: &str| if p == pa { on_a.addr } else { on_b.addr };
    let not_addr_of = |p: &str| if p == pa { on_b.addr } else { on_a.addr };
    for c in &clients {
        let mut i = client_when_served(addr_of(&on(c)), c, Duration::from_secs(20));
        assert_eq!(read(&mut i, 0, 8), data[..4096].to_vec());
        assert!(!can_login(not_addr_of(&on(c)), c), "{c} served by both");
    }
    // The other server says why it leaves the disk alone: when the choice is made and when
    // the holder is known, not at every look.
    std::thread::sleep(Duration::from_secs(3));
    for c in &clients {
        let log = if on(c) == pa {
            on_b.log_text()
        } else {
            on_a.log_text()
        };
        let n = log
            .lines()
            .filter(|l| l.contains("not opening the disk here") && l.contains(&format!(":{c}")))
            .count();
        assert!((1..=2).contains(&n), "{c}: {n} lines: {log}");
    }

    // A written disk on A; A is killed: B sees it gone and serves all four.
    let on_a_clients: Vec<&String> = clients.iter().filter(|c| on(c) == pa).collect();
    let mut i = client(on_a.addr, on_a_clients[0]);
    write(&mut i, 8, &[0x41; 4096], true);
    drop(i);
    on_a.kill9();
    let f = fleet_when(&b, 60, "B alone, holding every disk", |f| {
        f.len() == 1
            && clients
                .iter()
                .all(|c| holder(f, c).as_deref() == Some(pb.as_str()))
    });
    assert_eq!(f[0]["me"], true);
    let mut i = client_when_served(on_b.addr, on_a_clients[0], Duration::from_secs(30));
    assert_eq!(read(&mut i, 8, 8), vec![0x41; 4096]);
    drop(i);

    on_b.stop();
    let disks: Vec<String> = clients.iter().map(|c| disk_spec(&a, c)).collect();
    for c in &clients {
        a.run(&["remove-client", c]).ok();
    }
    for d in &disks {
        rm_eventually(d);
    }
    a.run(&["image", "remove", &image]).ok();
    remove_shared_state();
}

/// Another image a client may boot from its menu (`isboot boot --allow-image`) on an RBD
/// image: its own copy-on-write clone of that image's newest version (not a file), served
/// with the client's initiator name; other clients cannot log in to it; forbidding it removes
/// the clone from the pool once the server lets go.
#[test]
fn rbd_another_image_on_rbd_is_a_clone_of_its_own() {
    let data = disk(51);
    let (lab, image) = rbd_lab_with(&data);
    let other = unique("oth");
    let odata = disk(52);
    let ofile = lab.file("other.img", &odata);
    lab.run(&["image", "add", &other, ofile.to_str().unwrap()])
        .ok();
    let (c, d) = (unique("pc"), unique("pc"));
    add_rbd_client(&lab, "52:54:00:00:05:01", &image, &c, &[]);
    add_rbd_client(&lab, "52:54:00:00:05:02", &image, &d, &[]);
    lab.run(&["boot", &c, "--allow-image", &other]).ok();
    let reg = lab.registry();
    let key = format!("{}/isboot-client-{c}.image.{other}.", ceph().pool);
    let at = reg.find(&key).unwrap_or_else(|| panic!("no clone: {reg}"));
    let clone = reg[at..at + reg[at..].find('"').unwrap()].to_string();
    assert!(in_pool(&clone), "{clone} not in the pool");
    // It is a clone of the other image's snapshot, not a copy.
    let info = String::from_utf8(rbd_ok(&["info", &clone])).unwrap();
    assert!(
        info.contains(&format!(
            "parent: {}/isboot-base-{other}-v1@base",
            ceph().pool
        )),
        "{info}"
    );

    let mut srv = Serve::start(&lab.dir);
    let target = format!("{PREFIX}:{c}:image:{other}");
    let mine = format!("{PREFIX}:initiator:{c}");
    let o = isboot::initiator::LoginOptions::new(&mine, Some(&target)).linux_profile();
    eventually("the other image is served", || {
        isboot::initiator::Initiator::connect(srv.addr, &o).is_ok()
    });
    let mut i = login(srv.addr, &mine, &target);
    assert_eq!(read(&mut i, 0, 8), odata[..4096].to_vec());
    write(&mut i, 8, &[0x52; 4096], true);
    assert_eq!(export(&clone)[8 * 512..8 * 512 + 4096], [0x52; 4096]);
    assert_eq!(
        export(&spec(&other))[8 * 512..8 * 512 + 4096],
        odata[8 * 512..8 * 512 + 4096],
        "the image itself is never written"
    );
    // Another client's initiator name is refused there.
    let theirs = format!("{PREFIX}:initiator:{d}");
    let o = isboot::initiator::LoginOptions::new(&theirs, Some(&target));
    assert!(isboot::initiator::Initiator::connect(srv.addr, &o).is_err());
    drop(i);

    // Forbidden: the target goes, and its clone leaves the pool.
    eventually("forbidden once logged out", || {
        lab.run(&["boot", &c, "--forbid-image", &other]).code == 0
    });
    rm_eventually_gone(&clone);
    srv.stop();
    for x in [&c, &d] {
        let disk = disk_spec(&lab, x);
        lab.run(&["remove-client", x]).ok();
        rm_eventually(&disk);
    }
    lab.run(&["image", "remove", &other]).ok();
    lab.run(&["image", "remove", &image]).ok();
}

/// Wait (up to 30 s) until `spec` is no longer in the pool (isboot removed it).
fn rm_eventually_gone(spec: &str) {
    eventually(&format!("{spec} removed from the pool"), || !in_pool(spec));
}
