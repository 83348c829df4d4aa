//! `isboot image add|list|remove` with `[store] backend = "rbd"`, against a real one-node Ceph
//! (`scripts/ceph-dev start`, idempotent; the cluster named by `ISBOOT_CEPH_ID`, default
//! `rbdtest`). What isboot put in the pool is checked with Ceph's own `rbd` command. Every test
//! uses image names of its own, so runs against a long-lived dev cluster do not collide.
//! Run: `cargo test --features rbd --test cli_rbd rbd`.
#![cfg(feature = "rbd")]

mod fixture;
use fixture::*;
use isboot::store::rbd::{RbdConfig, dev_cluster};
use std::process::Command;
use std::sync::OnceLock;

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
fn rbd_bad_input_and_file_only_commands_leave_nothing_in_the_pool() {
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

    // Commands that need a file version refuse an RBD version in one line, changing nothing.
    let good = lab.file("good.img", &disk(5));
    lab.run(&["image", "add", &name, good.to_str().unwrap()])
        .ok();
    lab.refused(
        &[
            "add-client",
            "--mac",
            "52:54:00:00:00:01",
            "--image",
            &name,
            "--no-chap",
        ],
        2,
        "is on Ceph RBD",
    );
    lab.refused(&["image", "edit", &name], 2, "is on Ceph RBD");
    lab.run(&["image", "remove", &name]).ok();
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
