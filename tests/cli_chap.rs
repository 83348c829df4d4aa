//! CHAP secrets: `add-client` generates a secret into a 0600 file in a 0750 directory (by
//! default; `--chap` says so explicitly), nothing prints it without `show-client
//! --show-secrets`, a client added with `--no-chap` is warned about and shown by status and
//! list-clients, `set-client` turns CHAP on or off (also for clients registered before secret
//! files), and `image edit` makes a secret for its maintenance target unless `--no-chap`.

mod fixture;

use fixture::*;
use std::os::unix::fs::PermissionsExt;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn json(r: &str) -> serde_json::Value {
    serde_json::from_str(r).unwrap()
}

/// The row of `status --json` whose `key` is `value`.
fn status_row(lab: &Lab, key: &str, value: &str) -> serde_json::Value {
    let sj = json(lab.run(&["status", "--json"]).ok());
    sj["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t[key] == value)
        .unwrap_or_else(|| panic!("no status row with {key} = {value}: {sj}"))
        .clone()
}

#[test]
fn add_client_generates_a_private_secret_that_only_show_secrets_prints() {
    let lab = Lab::with_image();
    let added = lab.run(&[
        "add-client",
        "--mac",
        "52:54:00:00:00:01",
        "--image",
        "deb",
        "--name",
        "pc1",
    ]);
    assert!(!added.stderr.contains("warning"), "{}", added.stderr);
    let added = added.ok().to_string();
    assert!(added.contains("chap:      on, user pc1"), "{added}");
    assert!(added.contains("show-client pc1 --show-secrets"), "{added}");
    let file = lab.dir.join("secrets/pc1.toml");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&lab.dir.join("secrets")), 0o750);
    let shown = json(
        lab.run(&["show-client", "pc1", "--json", "--show-secrets"])
            .ok(),
    );
    let secret = shown["chap"]["secret"].as_str().unwrap().to_string();
    assert_eq!(shown["chap"]["user"], "pc1");
    // 24 random bytes, base64url: 32 characters, and in the file.
    assert_eq!(secret.len(), 32, "{secret}");
    assert!(std::fs::read_to_string(&file).unwrap().contains(&secret));
    assert!(!lab.registry().contains(&secret));
    let text = lab
        .run(&["show-client", "pc1", "--show-secrets"])
        .ok()
        .to_string();
    assert!(text.contains(&format!("secret:     {secret}")), "{text}");
    // Another client gets another secret.
    lab.add("52:54:00:00:00:02", "pc2", &["--chap"]);
    let other = json(
        lab.run(&["show-client", "pc2", "--json", "--show-secrets"])
            .ok(),
    );
    assert_ne!(other["chap"]["secret"].as_str().unwrap(), secret);
    // Nothing else prints it.
    let mut out = added;
    for a in [
        &["show-client", "pc1"][..],
        &["show-client", "pc1", "--json"],
        &["list-clients"],
        &["list-clients", "--json"],
        &["status"],
        &["status", "--json"],
    ] {
        let r = lab.run(a);
        out += r.ok();
        out += &r.stderr;
    }
    assert!(!out.contains(&secret), "secret printed: {out}");
    let j = json(lab.run(&["show-client", "pc1", "--json"]).ok());
    assert_eq!(
        j["chap"],
        serde_json::json!({"enabled": true, "user": "pc1", "mutual": false})
    );
    // Removing the client removes its secret.
    lab.run(&["remove-client", "pc1"]).ok();
    assert!(!file.exists());
}

#[test]
fn no_chap_is_warned_and_listed_and_set_client_turns_it_on() {
    let lab = Lab::with_image();
    let r = lab.run(&[
        "add-client",
        "--mac",
        "52:54:00:00:00:03",
        "--image",
        "deb",
        "--name",
        "open1",
        "--no-chap",
    ]);
    assert!(r.stderr.contains("warning: CHAP is off"), "{}", r.stderr);
    assert!(r.stderr.contains("set-client NAME --chap"), "{}", r.stderr);
    assert!(r.ok().contains("chap:      OFF"));
    assert!(!lab.dir.join("secrets/open1.toml").exists());
    lab.add("52:54:00:00:00:04", "safe1", &["--chap"]);
    let list = lab.run(&["list-clients"]).ok().to_string();
    assert!(list.contains("1 client runs without CHAP: open1"), "{list}");
    let status = lab.run(&["status"]).ok().to_string();
    assert!(
        status.contains("1 client runs without CHAP: open1"),
        "{status}"
    );
    let sj = json(lab.run(&["status", "--json"]).ok());
    assert_eq!(sj["clients_without_chap"], serde_json::json!(["open1"]));
    let chap_of = |n: &str| {
        sj["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()["chap"]
            .clone()
    };
    assert_eq!(chap_of("open1"), false);
    assert_eq!(chap_of("safe1"), true);
    let lj = json(lab.run(&["list-clients", "--json"]).ok());
    assert_eq!(lj[0]["chap"]["enabled"], false);
    // set-client: on (generated), then off again.
    let on = lab.run(&["set-client", "open1", "--chap"]).ok().to_string();
    assert!(on.contains("chap:      on, user open1"), "{on}");
    assert_eq!(mode(&lab.dir.join("secrets/open1.toml")), 0o600);
    let sj = json(lab.run(&["status", "--json"]).ok());
    assert_eq!(sj["clients_without_chap"], serde_json::json!([]));
    let r = lab.run(&["set-client", "safe1", "--no-chap"]);
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
    assert!(!lab.dir.join("secrets/safe1.toml").exists());
    lab.refused(&["set-client", "safe1"], 2, "say what to change");
    lab.refused(&["set-client", "nobody", "--chap"], 2, "unknown client");
}

#[test]
fn a_client_from_before_keeps_its_registry_credentials_until_set_client_moves_them() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:05", "old1", &["--no-chap"]);
    lab.add("52:54:00:00:00:06", "old2", &["--no-chap"]);
    // A registry written by an older isboot: CHAP in the registry for old1, none for old2.
    let mut v: toml::Value = toml::from_str(&lab.registry()).unwrap();
    for c in v["client"].as_array_mut().unwrap() {
        if c["name"].as_str() == Some("old1") {
            c.as_table_mut().unwrap().insert(
                "chap".into(),
                toml::Value::Table(
                    toml::from_str("user = \"legacy\"\nsecret = \"legacy-secret-0123\"").unwrap(),
                ),
            );
        }
    }
    let p = lab.dir.join("registry.toml");
    std::fs::write(&p, toml::to_string(&v).unwrap()).unwrap();
    let j = json(lab.run(&["show-client", "old1", "--json"]).ok());
    assert_eq!(j["chap"]["user"], "legacy");
    assert_eq!(j["chap"]["enabled"], true);
    let sj = json(lab.run(&["status", "--json"]).ok());
    assert_eq!(sj["clients_without_chap"], serde_json::json!(["old2"]));
    // set-client moves it to a fresh secret file and out of the registry.
    lab.run(&["set-client", "old1", "--chap"]).ok();
    assert!(!lab.registry().contains("legacy-secret-0123"));
    let j = json(
        lab.run(&["show-client", "old1", "--json", "--show-secrets"])
            .ok(),
    );
    assert_eq!(j["chap"]["user"], "old1");
    assert_ne!(j["chap"]["secret"], "legacy-secret-0123");
}

#[test]
fn image_edit_generates_a_maintenance_secret_and_drops_it_at_abort() {
    let lab = Lab::with_image();
    let out = lab.run(&["image", "edit", "deb"]).ok().to_string();
    let file = lab.dir.join("secrets/maint-deb.toml");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .unwrap()
        .trim_end_matches('"');
    assert_eq!(secret.len(), 32);
    assert!(!out.contains(secret));
    assert_eq!(status_row(&lab, "kind", "maintenance")["chap"], true);
    lab.run(&["image", "abort", "deb"]).ok();
    assert!(!file.exists());
    // With --no-chap: no secret, a warning, and status says so.
    let r = lab.run(&["image", "edit", "deb", "--no-chap"]);
    assert!(
        r.stderr
            .contains("warning: CHAP is off for the maintenance target"),
        "{}",
        r.stderr
    );
    let out = r.ok().to_string();
    assert!(out.contains("chap:      OFF"), "{out}");
    assert!(!file.exists());
    assert_eq!(status_row(&lab, "kind", "maintenance")["chap"], false);
}

#[test]
fn status_and_show_client_say_where_each_target_accepts_logins_from() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &["--ip", "10.7.0.21"]);
    lab.add("52:54:00:00:00:02", "pc2", &[]);
    lab.run(&["image", "edit", "deb", "--from", "10.7.0.99"])
        .ok();
    let bound = |name: &str| status_row(&lab, "name", name)["bound"].clone();
    assert_eq!(
        bound("pc1"),
        serde_json::json!({"only": [{"ip": "10.7.0.21", "origin": "reservation"}]})
    );
    // No [dhcp] section here and no --ip: pc2's target takes any address (a server that
    // runs DHCP binds it to the lease instead; the netns suite checks that).
    assert_eq!(bound("pc2"), serde_json::json!("any"));
    assert_eq!(
        bound("deb"),
        serde_json::json!({"only": [
            {"ip": "127.0.0.1", "origin": "localhost"},
            {"ip": "10.7.0.99", "origin": "stated"}
        ]})
    );
    let text = lab.run(&["status"]).ok().to_string();
    assert!(text.contains("10.7.0.21 (reservation)"), "{text}");
    assert!(text.contains("any address (no [dhcp], no --ip)"), "{text}");
    let shown = lab.run(&["show-client", "pc1"]).ok().to_string();
    assert!(
        shown.contains("logins:     from 10.7.0.21 (reservation)"),
        "{shown}"
    );
    let j = json(lab.run(&["list-clients", "--json"]).ok());
    assert_eq!(j[1]["bound"], serde_json::json!("any"));
    // The admin states pc2's address; a taken one is refused; `none` clears it.
    let out = lab
        .run(&["set-client", "pc2", "--ip", "10.7.0.22"])
        .ok()
        .to_string();
    assert!(
        out.contains("accepts logins from 10.7.0.22 (reservation)"),
        "{out}"
    );
    lab.refused(&["set-client", "pc2", "--ip", "10.7.0.21"], 2, "client pc1");
    lab.refused(&["set-client", "pc2", "--ip", "10.7.0.1"], 2, "this server");
    lab.refused(&["set-client", "pc2", "--ip", "bogus"], 2, "bad IP address");
    let j = json(lab.run(&["show-client", "pc2", "--json"]).ok());
    assert_eq!(j["ip"], "10.7.0.22");
    assert_eq!(
        j["bound"],
        serde_json::json!({"only": [{"ip": "10.7.0.22", "origin": "reservation"}]})
    );
    lab.run(&["set-client", "pc2", "--ip", "none"]).ok();
    let j = json(lab.run(&["show-client", "pc2", "--json"]).ok());
    assert_eq!(j["ip"], serde_json::Value::Null);
    assert_eq!(j["bound"], serde_json::json!("any"));
}

/// A member of the state directory's group who is not root (the admin's own account on a
/// packaged server) may run show-client: it says CHAP is on without calling the unreadable
/// secret file an error, and `--show-secrets` fails in one line that says who may read it.
#[test]
fn a_group_member_is_told_the_secret_is_for_root_only() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("SKIPPED: needs root to run the CLI as another user");
        return;
    }
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &["--chap"]);
    let secret_file = lab.dir.join("secrets/pc1.toml");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    // The temp dir above the state dir is root's 0700: open it so only the state dir's own
    // modes decide. The member: uid nobody, primary group the state directory's group.
    std::fs::set_permissions(lab.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let gid = std::fs::metadata(&lab.dir).unwrap().gid();
    let member = |args: &[&str]| {
        let mut c = isboot_cmd(&lab.dir);
        c.args(args).uid(65534).gid(gid);
        Run::from(c.output().unwrap())
    };
    let text = member(&["show-client", "pc1"]).ok().to_string();
    assert!(
        text.contains(
            "chap:       on (its secret file is for root and the isboot service's user only)"
        ),
        "{text}"
    );
    let shown = json(member(&["show-client", "pc1", "--json"]).ok());
    assert_eq!(shown["chap"]["enabled"], true, "{shown}");
    assert_eq!(shown["chap"]["restricted"], true, "{shown}");
    assert!(shown["chap"].get("error").is_none(), "{shown}");
    let refused = member(&["show-client", "pc1", "--show-secrets"]);
    refused.fails(1, "sudo isboot show-client pc1 --show-secrets");
    for line in secret.lines().filter(|l| l.starts_with("secret")) {
        let value = line.split('"').nth(1).unwrap();
        assert!(!refused.stdout.contains(value) && !refused.stderr.contains(value));
    }
    // Root still sees it, and the field is absent when it is not restricted.
    let root = json(
        lab.run(&["show-client", "pc1", "--json", "--show-secrets"])
            .ok(),
    );
    assert!(root["chap"].get("restricted").is_none(), "{root}");
    assert_eq!(root["chap"]["user"], "pc1");
}
