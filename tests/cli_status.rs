//! `isboot status`, from the state dir alone and from what a running server publishes.

mod fixture;
use fixture::*;

#[test]
fn status_without_a_server() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    let out = lab.run(&["status"]).ok().to_string();
    assert!(out.contains("server: not running"), "{out}");
    let row = out.lines().find(|l| l.starts_with("pc1")).unwrap();
    assert!(
        row.contains("not logged in") && row.contains("deb@1"),
        "{row}"
    );
    assert!(out.lines().any(|l| l.starts_with("TOTAL")), "{out}");
    let j: serde_json::Value = serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
    assert_eq!(j["server_running"], false);
    assert_eq!(j["targets"][0]["logged_in"], false);
    assert!(j["targets"][0]["overlay_bytes"].as_u64().unwrap() > 0);
    assert!(j["state_fs"]["free_bytes"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["targets"][0]["quota_bytes"], serde_json::Value::Null);
}

/// The quota and the state file system's free space, with the warning when it is low.
#[test]
fn status_shows_quotas_and_free_space() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    let cfg_path = lab.dir.join("isboot.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let cfg = cfg
        .replace("# client_quota_mib = 0", "client_quota_mib = 3")
        .replace(
            "# space_warning_mib = 1024",
            "space_warning_mib = 1073741824",
        );
    assert!(cfg.contains("client_quota_mib = 3") && cfg.contains("space_warning_mib = 10"));
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = lab.run(&["status"]).ok().to_string();
    assert!(
        out.lines()
            .any(|l| l.starts_with("state file system: ") && l.contains("LOW: below 1024.0 TiB")),
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with("pc1")).unwrap();
    assert!(row.contains("0 B/3.0 MiB"), "{row}");
    let j: serde_json::Value = serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
    assert_eq!(j["targets"][0]["quota_bytes"], 3 << 20);
    assert_eq!(j["targets"][0]["overlay_data_bytes"], 0);
    assert_eq!(j["state_fs"]["low"], true);
    assert_eq!(j["state_fs"]["warning_bytes"], 1u64 << 50);
}

/// A client's own quota (`add-client --quota-mib`, `set-client --quota-mib`) overrides
/// `[limits] client_quota_mib` in show-client, list-clients and status; `default` goes back.
#[test]
fn a_clients_own_quota_overrides_the_config() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &["--quota-mib", "5"]);
    lab.add("52:54:00:00:00:02", "pc2", &[]);
    let cfg_path = lab.dir.join("isboot.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace("# client_quota_mib = 0", "client_quota_mib = 3"),
    )
    .unwrap();
    let shown = |name: &str| {
        let out = lab.run(&["show-client", name]).ok().to_string();
        out.lines()
            .find(|l| l.starts_with("quota:"))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    assert!(
        shown("pc1").contains("5.0 MiB (the client's own)"),
        "{}",
        shown("pc1")
    );
    assert!(
        shown("pc2").contains("3.0 MiB ([limits] client_quota_mib)"),
        "{}",
        shown("pc2")
    );
    let quotas = || {
        let j: serde_json::Value =
            serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
        let l: serde_json::Value =
            serde_json::from_str(lab.run(&["list-clients", "--json"]).ok()).unwrap();
        assert_eq!(l[0]["quota_bytes"], j["targets"][0]["quota_bytes"]);
        (
            j["targets"][0]["quota_bytes"].clone(),
            j["targets"][1]["quota_bytes"].clone(),
        )
    };
    use serde_json::json;
    assert_eq!(quotas(), (json!(5u64 << 20), json!(3u64 << 20)));
    let row = lab.run(&["status"]).ok().to_string();
    assert!(
        row.lines()
            .any(|l| l.starts_with("pc1") && l.contains("0 B/5.0 MiB")),
        "{row}"
    );

    let out = lab
        .run(&["set-client", "pc2", "--quota-mib", "0"])
        .ok()
        .to_string();
    assert!(
        out.contains("client pc2: quota none (the client's own)"),
        "{out}"
    );
    assert_eq!(quotas().1, serde_json::Value::Null);
    lab.run(&["set-client", "pc1", "--quota-mib", "default"])
        .ok();
    assert_eq!(quotas(), (json!(3u64 << 20), serde_json::Value::Null));
    lab.refused(
        &["set-client", "pc1", "--quota-mib", "lots"],
        2,
        "bad --quota-mib \"lots\"",
    );
}

#[test]
fn status_shows_what_the_server_publishes() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    lab.add("52:54:00:00:00:02", "pc2", &[]);
    lab.fake_session("iqn.2026-11.org.isboot:pc1", "10.7.0.21:40000");
    let out = lab.run(&["status"]).ok().to_string();
    assert!(
        out.contains("server: running, listening on 127.0.0.1:3260"),
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with("pc1")).unwrap();
    assert!(
        row.contains("10.7.0.21:40000") && row.contains("117.7 MiB") && row.contains("4.0 KiB"),
        "{row}"
    );
    assert!(
        out.lines()
            .find(|l| l.starts_with("pc2"))
            .unwrap()
            .contains("not logged in")
    );
    let total = out.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert!(
        total.contains("1 session") && total.contains("117.7 MiB"),
        "{total}"
    );
    let j: serde_json::Value = serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
    assert_eq!(j["server_running"], true);
    assert_eq!(j["total_sessions"], 1);
    assert_eq!(j["total_bytes_read"], 123456789);
    assert_eq!(j["targets"][0]["sessions"][0]["peer"], "10.7.0.21:40000");
    // A disk the server could not write to is flagged.
    let p = lab.dir.join("run/status.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["targets"][0]["failed"] = serde_json::json!(true);
    std::fs::write(&p, v.to_string()).unwrap();
    let out = lab.run(&["status"]).ok().to_string();
    assert!(
        out.lines()
            .find(|l| l.starts_with("pc1"))
            .unwrap()
            .contains("DISK ERROR"),
        "{out}"
    );
    assert!(
        !out.lines()
            .find(|l| l.starts_with("pc2"))
            .unwrap()
            .contains("DISK ERROR"),
        "{out}"
    );
    let j: serde_json::Value = serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
    assert_eq!(j["targets"][0]["disk_error"], true);
    // A status file from a dead server (pid 0 / old) is ignored.
    let stale = std::fs::read_to_string(lab.dir.join("run/status.json"))
        .unwrap()
        .replace("\"updated\":", "\"updated\":1,\"x\":");
    std::fs::write(lab.dir.join("run/status.json"), stale).unwrap();
    assert!(lab.run(&["status"]).ok().contains("server: not running"));
}

/// A reader that goes away (`isboot status | head -1`) ends the output, not the command: no
/// panic, the command's own exit status; a command that changes state still does all of it.
/// Any other write error (a full disk behind `> file`) is one line and exit status 1.
#[test]
fn a_closed_or_full_stdout_is_not_a_panic() {
    use std::process::Stdio;
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    let closed = || {
        // A pipe whose reader is gone before isboot writes: every write gets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Stdio::from(writer)
    };
    let run_closed = |args: &[&str]| {
        let out = isboot_cmd(&lab.dir)
            .args(args)
            .stdout(closed())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list-clients"],
        &["list-clients", "--json"],
        &["show-client", "pc1"],
    ] {
        let (code, stderr) = run_closed(args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // The work is done even though nobody read what it printed, nor its warning on stderr
    // (CHAP off), which goes into a closed pipe too.
    let status = isboot_cmd(&lab.dir)
        .args(["add-client", "--mac", "52:54:00:00:00:02", "--image", "deb"])
        .args(["--name", "pc2", "--no-chap"])
        .stdout(closed())
        .stderr(closed())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        lab.run(&["show-client", "pc2"])
            .ok()
            .contains("52:54:00:00:00:02")
    );

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = isboot_cmd(&lab.dir)
        .args(["list-clients"])
        .stdout(full)
        .output()
        .unwrap();
    Run::from(out).fails(1, "cannot write the output: No space left on device");
}
