//! `isboot init`, the state dir checks every verb makes, `serve` argument errors, and help.

mod fixture;
use fixture::*;

#[test]
fn init_writes_a_commented_config_and_refuses_twice() {
    let lab = Lab::new();
    let out = lab
        .run(&["init", "--server-ip", "192.168.50.1/24"])
        .ok()
        .to_string();
    assert!(out.contains("initialised"), "{out}");
    let cfg = std::fs::read_to_string(lab.dir.join("isboot.toml")).unwrap();
    assert!(cfg.contains("server_ip = \"192.168.50.1\""));
    assert!(cfg.contains("subnet = \"192.168.50.0/24\""));
    assert!(cfg.contains("iqn_prefix = \"iqn.2026-11.org.isboot\""));
    // Not every address: the boot network's own (commented, as a default).
    assert!(cfg.contains("# listen = \"192.168.50.1:3260\""), "{cfg}");
    let top = cfg.split("[http]").next().unwrap();
    assert!(!top.lines().any(|l| l.starts_with("listen")), "{cfg}");
    assert!(out.contains("listen:     192.168.50.1:3260"), "{out}");
    assert!(
        cfg.lines().filter(|l| l.starts_with('#')).count() >= 8,
        "config is not commented:\n{cfg}"
    );
    for d in ["images", "overlays", "maint", "run", "tftp"] {
        assert!(lab.dir.join(d).is_dir(), "{d}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.dir.join("registry.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    lab.refused(&["init"], 2, "already initialised");
}

#[test]
fn init_options_and_bad_arguments() {
    let lab = Lab::new();
    lab.run(&[
        "init",
        "--iqn-prefix",
        "iqn.2020-01.net.example",
        "--listen",
        "127.0.0.1:3261",
    ])
    .ok();
    let cfg = std::fs::read_to_string(lab.dir.join("isboot.toml")).unwrap();
    assert!(cfg.contains("iqn_prefix = \"iqn.2020-01.net.example\""));
    assert!(cfg.contains("listen = \"127.0.0.1:3261\""));
    assert!(
        cfg.contains("# server_ip"),
        "unset server_ip is shown commented out"
    );
    for (args, msg) in [
        (vec!["init", "--server-ip", "300.1.1.1"], "bad --server-ip"),
        (vec!["init", "--server-ip", "10.0.0.1/40"], "prefix length"),
        (vec!["init", "--iqn-prefix", "nope"], "bad iSCSI name"),
        (
            vec!["init", "--iqn-prefix", "eui.02004567A425678D"],
            "iqn. form",
        ),
        (vec!["init", "--listen", "localhost"], "bad --listen"),
    ] {
        let fresh = Lab::new();
        fresh.run(&args).fails(2, msg);
        assert!(!fresh.dir.exists(), "{args:?} created the state dir");
    }
}

#[test]
fn every_verb_refuses_an_uninitialised_state_dir() {
    let lab = Lab::new();
    for args in [
        vec!["image", "list"],
        vec!["image", "add", "x", "/dev/null"],
        vec!["add-client", "--mac", "52:54:00:00:00:01", "--image", "x"],
        vec!["list-clients"],
        vec!["show-client", "x"],
        vec!["remove-client", "x"],
        vec!["reset-client", "x"],
        vec!["status"],
        vec!["serve", "--listen", "127.0.0.1:0"],
    ] {
        lab.run(&args).fails(2, "not initialised");
    }
    assert!(!lab.dir.exists());
}

#[test]
fn a_state_dir_that_is_not_writable_is_a_bad_argument() {
    let lab = Lab::with_image();
    let Some(_guard) = Immutable::new(&lab.dir) else {
        eprintln!("chattr +i unsupported here; skipping");
        return;
    };
    lab.refused(
        &["add-client", "--mac", "52:54:00:00:00:01", "--image", "deb"],
        2,
        "not writable",
    );
    lab.refused(&["image", "remove", "deb"], 2, "not writable");
    // Reading still works.
    assert!(lab.run(&["image", "list"]).ok().contains("deb"));
    // init under a directory nobody may write to.
    let parent = lab.tmp.path().join("ro");
    std::fs::create_dir(&parent).unwrap();
    let _g2 = Immutable::new(&parent).unwrap();
    let other = Lab {
        tmp: tempfile::tempdir().unwrap(),
        dir: parent.join("state"),
    };
    other.run(&["init"]).fails(2, "not writable");
}

#[test]
fn serve_refuses_bad_listen_addresses() {
    let lab = Lab::with_image();
    lab.refused(&["serve", "--listen", "nowhere"], 2, "bad --listen");
}

#[test]
fn help_reads_well() {
    let lab = Lab::new();
    let top = lab.run(&["--help"]).ok().to_string();
    for verb in [
        "init",
        "image",
        "add-client",
        "list-clients",
        "show-client",
        "remove-client",
        "reset-client",
        "serve",
        "status",
        "export",
    ] {
        assert!(top.contains(verb), "--help lacks {verb}:\n{top}");
    }
    assert!(top.contains("Exit status"));
    let verbs: &[(&[&str], &str)] = &[
        (&["init"], "--server-ip"),
        (&["image"], "prune"),
        (&["image", "add"], "qcow2"),
        (&["image", "list"], "--json"),
        (&["image", "remove"], "refused while any client uses it"),
        (&["image", "edit"], "--mac"),
        (&["image", "commit"], "--force"),
        (&["image", "abort"], "--force"),
        (&["image", "prune"], "newest version is always kept"),
        (&["add-client"], "--chap-secret-file"),
        (&["set-client"], "--no-chap"),
        (&["list-clients"], "--json"),
        (&["show-client"], "name or MAC"),
        (&["remove-client"], "--keep-overlay"),
        (&["reset-client"], "--force"),
        (&["serve"], "--listen"),
        (&["status"], "--json"),
        (&["export"], "--read-only"),
    ];
    for (v, needle) in verbs {
        let mut a = v.to_vec();
        a.push("--help");
        let out = lab.run(&a).ok().to_string();
        assert!(
            out.contains(needle),
            "{v:?} --help lacks {needle:?}:\n{out}"
        );
        assert!(out.contains("Usage: isboot"), "{out}");
    }
    // A missing required argument is a usage error (exit 2).
    assert_eq!(lab.run(&["add-client"]).code, 2);
    assert_eq!(lab.run(&["frobnicate"]).code, 2);
}

#[test]
fn store_section_is_commented_and_checked() {
    let lab = Lab::new();
    lab.run(&["init"]).ok();
    let path = lab.dir.join("isboot.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    assert!(cfg.contains("[store]\n"), "{cfg}");
    assert!(cfg.contains("# backend = \"file\""), "{cfg}");
    assert!(cfg.contains("# pool = \"isboot\""), "{cfg}");
    // A Ceph key without backend = "rbd" is a mistake the admin hears about.
    let with_pool = cfg.replace("# pool = \"isboot\"", "pool = \"fleet\"");
    std::fs::write(&path, &with_pool).unwrap();
    lab.refused(&["image", "list"], 1, "only apply to backend = \"rbd\"");
    let rbd = cfg.replace("# backend = \"file\"", "backend = \"rbd\"");
    std::fs::write(&path, &rbd).unwrap();
    if cfg!(feature = "rbd") {
        // Parsed, but nothing serves from RBD yet: the commands that put or serve disks say so.
        lab.refused(&["serve"], 1, "not served yet");
        lab.refused(
            &["image", "add", "img", "/nonexistent"],
            1,
            "not served yet",
        );
    } else {
        // This build has no RBD store: every command says so, none runs.
        lab.refused(&["image", "list"], 1, "--features rbd");
        lab.refused(&["serve"], 1, "--features rbd");
    }
}
