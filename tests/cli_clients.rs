//! add-client, list-clients, show-client, remove-client, reset-client, boot.

mod fixture;
use fixture::*;

#[test]
fn add_client_defaults_and_output() {
    let lab = Lab::with_image();
    let out = lab
        .run(&[
            "add-client",
            "--mac",
            "52:54:00:AB:CD:EF",
            "--image",
            "deb",
            "--ip",
            "10.7.0.21",
        ])
        .ok()
        .to_string();
    let target = "iqn.2026-11.org.isboot:52-54-00-ab-cd-ef";
    assert!(out.contains(&format!("target:    {target}")), "{out}");
    assert!(
        out.contains("initiator: iqn.2026-11.org.isboot:initiator:52-54-00-ab-cd-ef"),
        "{out}"
    );
    assert!(out.contains("ip:        10.7.0.21"), "{out}");
    assert!(
        out.contains(&format!("root-path: iscsi:10.7.0.1::::{target}")),
        "{out}"
    );
    let j: serde_json::Value =
        serde_json::from_str(lab.run(&["list-clients", "--json"]).ok()).unwrap();
    assert_eq!(j[0]["name"], "52-54-00-ab-cd-ef");
    assert_eq!(j[0]["mac"], "52:54:00:ab:cd:ef");
    assert_eq!(j[0]["mode"], "persistent");
    assert_eq!(j[0]["image"], "deb");
    assert_eq!(j[0]["version"], 1);
    let ovl = std::path::PathBuf::from(j[0]["overlay"].as_str().unwrap());
    assert!(ovl.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&ovl).unwrap().permissions().mode() & 0o777,
        0o660
    );
}

#[test]
fn add_client_with_everything() {
    let lab = Lab::with_image();
    let out = lab
        .run(&[
            "add-client",
            "--mac",
            "52-54-00-00-00-07",
            "--image",
            "deb",
            "--name",
            "Lab7",
            "--mode",
            "reset",
            "--initiator",
            "iqn.1993-08.org.debian:01:lab7",
            "--initiator",
            "iqn.2026-11.org.isboot:initiator:lab7",
            "--chap-secret-file",
            &chap_file(
                lab.tmp.path(),
                "lab7",
                "0123456789abcdef",
                Some(("srv", "fedcba9876543210")),
            ),
        ])
        .ok()
        .to_string();
    assert!(out.contains("added client lab7"), "{out}");
    assert!(out.contains("iqn.1993-08.org.debian:01:lab7"));
    let show = lab
        .run(&["show-client", "52:54:00:00:00:07"])
        .ok()
        .to_string();
    assert!(show.contains("mode:       reset"), "{show}");
    assert!(show.contains("chap:       on, user lab7, mutual"), "{show}");
    assert!(show.contains("session:    not logged in"), "{show}");
    assert!(!show.contains("0123456789abcdef"), "secret shown");
    let listed = lab.run(&["list-clients", "--json"]).ok().to_string();
    assert!(
        !listed.contains("0123456789abcdef") && !listed.contains("fedcba9876543210"),
        "secret listed"
    );
    // The secrets are kept in a file only root can read, not in the registry.
    use std::os::unix::fs::PermissionsExt;
    assert!(!lab.registry().contains("0123456789abcdef"));
    let secret_file = lab.dir.join("secrets/lab7.toml");
    assert!(
        std::fs::read_to_string(&secret_file)
            .unwrap()
            .contains("0123456789abcdef")
    );
    assert_eq!(
        std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let j: serde_json::Value =
        serde_json::from_str(lab.run(&["show-client", "lab7", "--json"]).ok()).unwrap();
    assert_eq!(j["initiators"].as_array().unwrap().len(), 2);
    assert_eq!(j["chap"]["user"], "lab7");
    assert_eq!(j["chap"]["enabled"], true);
    assert_eq!(j["chap"]["mutual"], true);
    assert!(j["chap"].get("secret").is_none());
}

#[test]
fn add_client_refuses_each_bad_argument_and_changes_nothing() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &["--ip", "10.7.0.21"]);
    let m = "52:54:00:00:00:02";
    let short = chap_file(lab.tmp.path(), "short", "0123456789ab", None);
    let same = chap_file(
        lab.tmp.path(),
        "same",
        "0123456789abcdef",
        Some(("s", "0123456789abcdef")),
    );
    let open = chap_file(lab.tmp.path(), "open", "0123456789abcdef", None);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--mac", "52:54:00:00:00", "--image", "deb"],
            "bad MAC address",
        ),
        (
            vec!["--mac", "ff:ff:ff:ff:ff:ff", "--image", "deb"],
            "bad MAC address",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--name", "bad/name"],
            "bad client name",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--name", "PC1"],
            "client name pc1 is taken",
        ),
        (
            vec![
                "--mac",
                "52-54-00-00-00-01",
                "--image",
                "deb",
                "--name",
                "x",
            ],
            "taken by client pc1",
        ),
        (vec!["--mac", m, "--image", "nope"], "unknown image nope"),
        (
            vec!["--mac", m, "--image", "deb", "--ip", "10.8.0.5"],
            "outside the subnet 10.7.0.0/24",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--ip", "10.7.0.255"],
            "outside the subnet",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--ip", "10.7.0.21"],
            "10.7.0.21 is taken by client pc1",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--ip", "10.7.0.1"],
            "taken by this server",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--ip", "10.7.0"],
            "bad IP address",
        ),
        (
            vec![
                "--mac",
                m,
                "--image",
                "deb",
                "--initiator",
                "iqn.2026-11.org.isboot:initiator:pc1",
            ],
            "is taken by client pc1",
        ),
        (
            vec![
                "--mac",
                m,
                "--image",
                "deb",
                "--initiator",
                "iqn.2026-11.org.isboot:pc1",
            ],
            "taken by client pc1's target",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--initiator", "not-an-iqn"],
            "bad iSCSI name",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--chap-secret-file", &short],
            "16 to 255 bytes",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--chap-secret-file", &same],
            "must differ",
        ),
        (
            vec!["--mac", m, "--image", "deb", "--chap-secret-file", &open],
            "chmod 600",
        ),
    ];
    for (extra, msg) in cases {
        let mut a = vec!["add-client"];
        a.extend(extra);
        lab.refused(&a, 2, msg);
    }
    // clap refuses secrets on the command line and contradictions (usage error, exit 2)
    // without touching anything.
    let before = lab.snapshot();
    for extra in [
        &["--chap-user", "u"][..],
        &["--chap-secret", "0123456789abcdef"],
        &["--no-chap", "--chap-secret-file", &short],
    ] {
        let mut a = vec!["add-client", "--mac", m, "--image", "deb"];
        a.extend_from_slice(extra);
        assert_eq!(lab.run(&a).code, 2, "{extra:?}");
    }
    assert_eq!(
        lab.run(&[
            "add-client",
            "--mac",
            m,
            "--image",
            "deb",
            "--mode",
            "sometimes"
        ])
        .code,
        2
    );
    assert_eq!(before, lab.snapshot());
}

#[test]
fn list_and_show() {
    let lab = Lab::with_image();
    assert!(lab.run(&["list-clients"]).ok().contains("no clients"));
    assert_eq!(lab.run(&["list-clients", "--json"]).ok().trim(), "[]");
    lab.add("52:54:00:00:00:01", "pc1", &["--ip", "10.7.0.21"]);
    lab.add("52:54:00:00:00:02", "pc2", &["--mode", "reset"]);
    let t = lab.run(&["list-clients"]).ok().to_string();
    assert!(t.lines().next().unwrap().starts_with("NAME"));
    assert!(
        t.contains("pc1")
            && t.contains("10.7.0.21")
            && t.contains("deb@1")
            && t.contains("persistent"),
        "{t}"
    );
    assert!(t.contains("pc2") && t.contains("reset"), "{t}");
    assert!(
        lab.run(&["show-client", "pc2"])
            .ok()
            .contains("mac:        52:54:00:00:00:02")
    );
    lab.run(&["show-client", "pc9"])
        .fails(2, "unknown client pc9");
}

#[test]
fn remove_client_with_and_without_its_overlay() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    lab.add("52:54:00:00:00:02", "pc2", &[]);
    lab.refused(&["remove-client", "pc3"], 2, "unknown client pc3");
    let out = lab
        .run(&["remove-client", "52:54:00:00:00:01", "--keep-overlay"])
        .ok()
        .to_string();
    assert!(out.contains("removed client pc1"), "{out}");
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("kept its overlay: "))
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&kept).exists());
    lab.run(&["remove-client", "pc2"]).ok();
    let left: Vec<_> = std::fs::read_dir(lab.dir.join("overlays"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(left.len(), 1, "pc2's overlay should be gone, pc1's kept");
    assert!(!lab.registry().contains("pc2"));
    // The name and MAC are free again.
    lab.add("52:54:00:00:00:02", "pc2", &[]);
}

#[test]
fn reset_client_drops_writes_and_respects_sessions() {
    use isboot::store::BlockDevice;
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    let j: serde_json::Value =
        serde_json::from_str(lab.run(&["show-client", "pc1", "--json"]).ok()).unwrap();
    let ovl = std::path::PathBuf::from(j["overlay"].as_str().unwrap());
    // Write through a view the way the server would.
    {
        let reg: toml::Table = toml::from_str(&lab.registry()).unwrap();
        let v = &reg["image"][0]["version"][0];
        let base = std::sync::Arc::new(
            isboot::store::base::BaseImage::open(
                &lab.dir.join(v["file"].as_str().unwrap()),
                isboot::store::base::BaseId::parse(v["id"].as_str().unwrap()).unwrap(),
                1,
            )
            .unwrap(),
        );
        let ov = isboot::store::overlay::Overlay::open_at(&ovl, base, false).unwrap();
        ov.write(0, &[7u8; 8192], true).unwrap();
    }
    lab.refused(&["reset-client", "pc9"], 2, "unknown client pc9");
    lab.fake_session("iqn.2026-11.org.isboot:pc1", "10.7.0.21:40000");
    lab.refused(
        &["reset-client", "pc1"],
        1,
        "client pc1 is logged in from 10.7.0.21:40000; use --force",
    );
    // The "server" ends the session half a second after the registry changes.
    let status = lab.dir.join("run/status.json");
    let reg_path = lab.dir.join("registry.toml");
    let before = std::fs::read(&reg_path).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if std::fs::read(&reg_path).unwrap() != before {
                std::thread::sleep(std::time::Duration::from_millis(500));
                let s = std::fs::read_to_string(&status).unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&s).unwrap();
                v["targets"][0]["sessions"] = serde_json::json!([]);
                std::fs::write(&status, v.to_string()).unwrap();
                return true;
            }
        }
        false
    });
    let out = lab
        .run(&["reset-client", "pc1", "--force"])
        .ok()
        .to_string();
    assert!(
        out.contains("reset client pc1: fresh disk on deb version 1"),
        "{out}"
    );
    assert!(server.join().unwrap());
    assert!(out.contains("its session was ended"), "{out}");
    assert!(!ovl.exists(), "old overlay kept");
    let j2: serde_json::Value =
        serde_json::from_str(lab.run(&["show-client", "pc1", "--json"]).ok()).unwrap();
    let fresh = std::path::PathBuf::from(j2["overlay"].as_str().unwrap());
    assert_ne!(fresh, ovl);
    let u = isboot::store::overlay::Overlay::usage_at(&fresh).unwrap();
    assert_eq!(u.data_blocks + u.zero_blocks, 0);
}

#[test]
fn boot_choices_are_stored_shown_and_cleared() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    let boot = |who: &str| -> serde_json::Value {
        let j: serde_json::Value =
            serde_json::from_str(lab.run(&["show-client", who, "--json"]).ok()).unwrap();
        j["boot"].clone()
    };
    let fresh = serde_json::json!({"next": null, "default": "disk", "menu": false});
    assert_eq!(boot("pc1"), fresh);
    // Nothing stored for a client that never had a setting (older registries read the same).
    assert!(
        !lab.registry().contains("[client.boot]"),
        "{}",
        lab.registry()
    );

    let out = lab
        .run(&["boot", "pc1", "--next", "memtest", "--menu", "on"])
        .ok()
        .to_string();
    assert!(
        out.contains("boot:      memtest once, then disk; menu on"),
        "{out}"
    );
    // Another image only once allowed (then it has its own disk, listed with the client).
    lab.refused(
        &["boot", "pc1", "--default", "image:deb"],
        2,
        "allow it first (isboot boot pc1 --allow-image deb)",
    );
    let out = lab
        .run(&[
            "boot",
            "52:54:00:00:00:01",
            "--allow-image",
            "deb",
            "--default",
            "image:deb",
        ])
        .ok()
        .to_string();
    assert!(out.contains(":pc1:image:deb)"), "{out}");
    assert!(
        out.contains("memtest once, then image:deb; menu on"),
        "{out}"
    );
    assert_eq!(
        boot("pc1"),
        serde_json::json!({"next": "memtest", "default": "image:deb", "menu": true})
    );
    let shown = lab.run(&["show-client", "pc1"]).ok().to_string();
    assert!(
        shown.contains("boot:       memtest once, then image:deb; menu on"),
        "{shown}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(lab.run(&["list-clients", "--json"]).ok()).unwrap();
    assert_eq!(listed[0]["boot"], boot("pc1"));

    // Refusals change nothing.
    lab.refused(&["boot", "pc1"], 2, "say what to change");
    lab.refused(&["boot", "pc9", "--next", "disk"], 2, "unknown client pc9");
    lab.refused(
        &["boot", "pc1", "--next", "image:nope"],
        2,
        "unknown image nope",
    );
    lab.refused(
        &["boot", "pc1", "--default", "install:nosuch"],
        2,
        "no installer named nosuch",
    );
    let before = lab.snapshot();
    for bad in ["shell", "image:", "disk:x", "image:a/b"] {
        assert_eq!(lab.run(&["boot", "pc1", "--next", bad]).code, 2, "{bad}");
    }
    assert_eq!(lab.run(&["boot", "pc1", "--menu", "maybe"]).code, 2);
    assert!(before == lab.snapshot());

    // --default disk and --menu off are the built-in defaults; --clear forgets everything.
    lab.run(&["boot", "pc1", "--default", "disk", "--menu", "off"])
        .ok();
    assert_eq!(
        boot("pc1"),
        serde_json::json!({"next": "memtest", "default": "disk", "menu": false})
    );
    lab.run(&["boot", "pc1", "--clear"]).ok();
    assert_eq!(boot("pc1"), fresh);
    assert!(
        !lab.registry().contains("[client.boot]"),
        "{}",
        lab.registry()
    );
    // --clear with a new choice: cleared first, then set.
    lab.run(&["boot", "pc1", "--clear", "--next", "local"]).ok();
    assert_eq!(
        boot("pc1"),
        serde_json::json!({"next": "local", "default": "disk", "menu": false})
    );
}
