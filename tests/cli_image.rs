//! `isboot image ...`: add, list, remove, edit, commit, abort, prune.

mod fixture;
use fixture::*;
use isboot::store::BlockDevice;
use isboot::store::base::{BaseId, BaseImage};
use isboot::store::overlay::Overlay;
use std::sync::Arc;

#[test]
fn add_imports_raw_with_progress_and_lists_it() {
    let lab = Lab::new();
    lab.run(&["init"]).ok();
    let data = pattern(3 << 20, 9);
    let img = lab.file("a.img", &data);
    let r = lab.run(&["image", "add", "Alpha", img.to_str().unwrap()]);
    assert!(r.ok().contains("image alpha version 1"), "{}", r.stdout);
    assert!(
        r.stderr.contains("100%"),
        "no progress on stderr: {}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(lab.dir.join("images/alpha/v1.raw")).unwrap(),
        data
    );
    let list = lab.run(&["image", "list"]).ok().to_string();
    assert!(list.contains("alpha") && list.contains("3.0 MiB"), "{list}");
    let j: serde_json::Value =
        serde_json::from_str(lab.run(&["image", "list", "--json"]).ok()).unwrap();
    assert_eq!(j[0]["name"], "alpha");
    assert_eq!(j[0]["versions"][0]["version"], 1);
    assert_eq!(j[0]["versions"][0]["size"], 3 << 20);
}

#[test]
fn add_refuses_bad_arguments_and_changes_nothing() {
    let lab = Lab::with_image();
    let img = lab.file("b.img", &pattern(1 << 20, 2));
    let p = img.to_str().unwrap();
    lab.refused(&["image", "add", "deb", p], 2, "image deb already exists");
    lab.refused(&["image", "add", "bad name", p], 2, "bad image name");
    lab.refused(
        &["image", "add", "new", "/nonexistent/x.img"],
        2,
        "cannot read",
    );
    let odd = lab.file("odd.img", &[1u8; 1000]);
    lab.refused(
        &["image", "add", "odd", odd.to_str().unwrap()],
        2,
        "multiple of 512",
    );
    let dir = lab.tmp.path().to_str().unwrap().to_string();
    lab.refused(&["image", "add", "dir", &dir], 2, "not a regular file");
}

#[test]
fn add_converts_qcow2_only_with_qemu_img() {
    let lab = Lab::with_image();
    // A qcow2 header; with no qemu-img on PATH the import fails cleanly.
    let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
    q.resize(4096, 0);
    let f = lab.file("x.qcow2", &q);
    let before = lab.snapshot();
    let r = lab.run_env(
        &["image", "add", "q", f.to_str().unwrap()],
        &[("PATH", "/nonexistent")],
    );
    r.fails(1, "needs qemu-img, which is not installed");
    assert_eq!(before, lab.snapshot());
    // With qemu-img installed, a real qcow2 converts.
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok()
    {
        let raw = lab.file("src.raw", &pattern(2 << 20, 4));
        let qc = lab.tmp.path().join("src.qcow2");
        to_qcow2(&raw, &qc);
        lab.run(&["image", "add", "q", qc.to_str().unwrap()]).ok();
        assert_eq!(
            std::fs::read(lab.dir.join("images/q/v1.raw")).unwrap(),
            pattern(2 << 20, 4)
        );
    }
}

#[test]
fn remove_refuses_while_in_use() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    lab.refused(&["image", "remove", "deb"], 1, "in use by pc1");
    lab.refused(&["image", "remove", "nope"], 2, "unknown image nope");
    lab.run(&["remove-client", "pc1"]).ok();
    lab.run(&["image", "edit", "deb"]).ok();
    lab.refused(&["image", "remove", "deb"], 1, "maintenance");
    lab.run(&["image", "abort", "deb"]).ok();
    assert!(
        lab.run(&["image", "remove", "deb"])
            .ok()
            .contains("removed image deb")
    );
    assert!(!lab.dir.join("images/deb").exists());
    assert!(lab.run(&["image", "list"]).ok().contains("no images"));
}

fn overlay_path(lab: &Lab, sub: &str) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(lab.dir.join(sub))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

fn base_of(lab: &Lab, version: u64) -> Arc<BaseImage> {
    let reg: toml::Table = toml::from_str(&lab.registry()).unwrap();
    let v = reg["image"][0]["version"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["number"].as_integer() == Some(version as i64))
        .unwrap();
    let id = BaseId::parse(v["id"].as_str().unwrap()).unwrap();
    Arc::new(BaseImage::open(&lab.dir.join(v["file"].as_str().unwrap()), id, version).unwrap())
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `isboot export` never opens a published base for writing, even as root (who may write a
/// 0444 file): neither one read-only on disk nor one a registry lists (a base published
/// before bases were made read-only). It says what to do instead.
#[test]
fn export_refuses_to_write_into_a_published_base() {
    let lab = Lab::with_image();
    let v1 = lab.dir.join("images/deb/v1.raw");
    assert_eq!(mode(&v1), 0o444);
    let before = std::fs::read(&v1).unwrap();
    let p = v1.to_str().unwrap();
    // One line (export's errors start "isboot export:"), saying what to do.
    let refused = |why: &str| {
        let r = lab.run(&["export", p, "--listen", "127.0.0.1:0"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.starts_with("isboot export: ")
                && r.stderr.contains(why)
                && r.stderr
                    .contains("export it read-only (--read-only), or copy it"),
            "{}",
            r.stderr
        );
    };
    refused("is read-only on disk (mode 0444");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused("is version 1 of the published isboot image deb");
    assert_eq!(std::fs::read(&v1).unwrap(), before);
}

fn read(dev: &dyn BlockDevice, off: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    dev.read(off, len, &mut out).unwrap();
    isboot::store::concat(&out)
}

#[test]
fn edit_commit_publishes_a_new_version_and_persistent_clients_keep_theirs() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "old", &[]);
    // The persistent client writes to its disk.
    {
        let ov =
            Overlay::open_at(&overlay_path(&lab, "overlays"), base_of(&lab, 1), false).unwrap();
        ov.write(0, &[0x11; 4096], true).unwrap();
    }
    lab.refused(&["image", "commit", "deb"], 1, "not being edited");
    lab.refused(&["image", "edit", "nope"], 2, "unknown image");
    lab.refused(&["image", "edit", "deb", "--mac", "zz"], 2, "bad MAC");
    let out = lab
        .run(&["image", "edit", "deb", "--mac", "52:54:00:00:00:99"])
        .ok()
        .to_string();
    assert!(out.contains("iqn.2026-11.org.isboot:maint:deb"), "{out}");
    assert!(
        out.contains("root-path: iscsi:10.7.0.1::::iqn.2026-11.org.isboot:maint:deb"),
        "{out}"
    );
    lab.refused(&["image", "edit", "deb"], 1, "already being edited");
    // The admin's maintenance machine writes an update.
    {
        let ov = Overlay::open_at(&overlay_path(&lab, "maint"), base_of(&lab, 1), false).unwrap();
        ov.write(8192, &[0x22; 1024], false).unwrap();
        ov.flush().unwrap();
    }
    // Refused while the maintenance machine is logged in, unless --force.
    lab.fake_session("iqn.2026-11.org.isboot:maint:deb", "10.7.0.99:51000");
    lab.refused(
        &["image", "commit", "deb"],
        1,
        "logged in from 10.7.0.99:51000",
    );
    std::fs::remove_file(lab.dir.join("run/status.json")).unwrap();
    let r = lab.run(&["image", "commit", "deb"]);
    assert!(r.ok().contains("published deb version 2"), "{}", r.stdout);
    assert!(
        std::fs::read_dir(lab.dir.join("maint"))
            .unwrap()
            .next()
            .is_none(),
        "maintenance overlay left behind"
    );
    let mut expect = pattern(4 << 20, 1);
    expect[8192..9216].fill(0x22);
    assert_eq!(
        std::fs::read(lab.dir.join("images/deb/v2.raw")).unwrap(),
        expect
    );
    assert_eq!(
        std::fs::read(lab.dir.join("images/deb/v1.raw")).unwrap(),
        pattern(4 << 20, 1),
        "v1 changed"
    );
    // Both versions are read-only on disk and their identity is in the registry.
    for v in [1, 2] {
        let f = lab.dir.join(format!("images/deb/v{v}.raw"));
        assert_eq!(mode(&f), 0o444, "v{v}");
        assert!(
            lab.registry().contains(&format!(
                "published = \"{}\"",
                isboot::store::base::Published::of(&f).unwrap()
            )),
            "v{v}: {}",
            lab.registry()
        );
    }
    // A fresh reset-mode client gets v2; the persistent client stays on v1 with its data.
    lab.add("52:54:00:00:00:02", "fresh", &["--mode", "reset"]);
    let j: serde_json::Value =
        serde_json::from_str(lab.run(&["list-clients", "--json"]).ok()).unwrap();
    assert_eq!(j[0]["name"], "old");
    assert_eq!(j[0]["version"], 1);
    assert_eq!(j[1]["version"], 2);
    let old = Overlay::open_at(
        std::path::Path::new(j[0]["overlay"].as_str().unwrap()),
        base_of(&lab, 1),
        true,
    )
    .unwrap();
    assert_eq!(read(&old, 0, 4096), vec![0x11; 4096]);
    assert_eq!(
        read(&old, 8192, 1024),
        pattern(4 << 20, 1)[8192..9216].to_vec()
    );
    let list = lab.run(&["image", "list"]).ok().to_string();
    assert!(
        list.lines().any(|l| l.contains(" 1 ") && l.contains("old")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains(" 2 ") && l.contains("fresh")),
        "{list}"
    );
    // v1 is in use: prune keeps it. After resetting "old" (to v2) it goes.
    assert!(
        lab.run(&["image", "prune"])
            .ok()
            .contains("nothing to prune")
    );
    lab.run(&["reset-client", "old"]).ok();
    assert!(
        lab.run(&["image", "prune", "deb"])
            .ok()
            .contains("removed deb version 1")
    );
    assert!(!lab.dir.join("images/deb/v1.raw").exists());
    lab.refused(&["image", "prune", "nope"], 2, "unknown image");
}

#[test]
fn abort_drops_the_maintenance_writes() {
    let lab = Lab::with_image();
    lab.refused(&["image", "abort", "deb"], 1, "not being edited");
    lab.run(&[
        "image",
        "edit",
        "deb",
        "--initiator",
        "iqn.2026-11.org.isboot:admin",
    ])
    .ok();
    let reg = lab.registry();
    assert!(reg.contains("iqn.2026-11.org.isboot:admin"), "{reg}");
    lab.fake_session("iqn.2026-11.org.isboot:maint:deb", "10.7.0.5:1000");
    lab.refused(&["image", "abort", "deb"], 1, "logged in");
    assert!(
        lab.run(&["image", "abort", "deb", "--force"])
            .ok()
            .contains("dropped")
    );
    assert!(
        std::fs::read_dir(lab.dir.join("maint"))
            .unwrap()
            .next()
            .is_none()
    );
    let list = lab.run(&["image", "list", "--json"]).ok().to_string();
    assert!(list.contains("\"maintenance\": null"), "{list}");
}

#[test]
fn prepare_refuses_unknown_images_and_publishes_nothing_when_the_rebuild_fails() {
    let lab = Lab::with_image();
    lab.refused(&["image", "prepare", "nope"], 2, "nope");
    if !isboot::sys::is_root() {
        eprintln!("SKIPPED: image prepare needs root");
        return;
    }
    // The fixture image is not a partitioned disk: the rebuild script fails, and the image
    // keeps its one version, with no staged copy left behind.
    let before = lab.snapshot();
    let r = lab.run(&["image", "prepare", "deb"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("isboot: the initrd rebuild failed"),
        "{}",
        r.stderr
    );
    assert_eq!(
        lab.snapshot(),
        before,
        "a failed prepare changed the state dir"
    );
}
