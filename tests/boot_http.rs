//! The boot routes of `isboot serve` on loopback, fetched with curl from several 127.0.0.x
//! source addresses: a client's iPXE script only to its own address (403 for anyone else, and
//! for a client with no known address), the one-shot choice used up when served, the
//! installer callback, and boot files with byte ranges and no way out of `boot-files/`;
//! installers' files (ranges) and their answer files, only to their client.

mod fixture;
use fixture::disk_io::{eventually, read, write};
use fixture::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const MAC_A: &str = "52:54:00:00:00:01";
const MAC_B: &str = "52:54:00:00:00:02";

/// `curl` from source address `from`: (HTTP status, body).
fn curl(from: &str, args: &[&str]) -> (u16, Vec<u8>) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--path-as-is", "--interface", from, "-o", "-"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = o.stdout;
    let nl = out.iter().rposition(|b| *b == b'\n').expect("status line");
    let code = String::from_utf8_lossy(&out[nl + 1..]).parse().unwrap();
    (code, out[..nl].to_vec())
}

fn get(from: &str, url: &str) -> (u16, String) {
    let (c, b) = curl(from, &[url]);
    (c, String::from_utf8_lossy(&b).into_owned())
}

/// The boot routes' address, from the running server's status.
fn boot_addr(dir: &Path) -> SocketAddr {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<serde_json::Value> = std::fs::read_to_string(dir.join("run/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(a) = v.as_ref().and_then(|v| v["boot_http"].as_str()) {
            return a.parse().unwrap();
        }
        assert!(Instant::now() < until, "no boot_http in the status");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A state directory in `tmp/state` serving on 127.0.0.1 with its boot routes on 127.0.0.1:0,
/// `extra` appended to its config, and one image `deb`.
fn boot_state(tmp: &Path, extra: &str) -> std::path::PathBuf {
    let dir = tmp.join("state");
    isboot(
        &dir,
        &[
            "init",
            "--server-ip",
            "127.0.0.1/8",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let cfg = dir.join("isboot.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("# boot_listen = "), "{text}");
    // init may have found Debian's installer; these tests set their own.
    let text = match text.find("\n[[installer]]") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    std::fs::write(
        &cfg,
        text.replace("[http]\n", "[http]\nboot_listen = \"127.0.0.1:0\"\n") + extra,
    )
    .unwrap();
    let img = patterned_image(tmp, "base.img", 1 << 20);
    isboot(&dir, &["image", "add", "deb", img.to_str().unwrap()]);
    dir
}

/// Client pca (MAC_A) on image deb, reserved at 127.0.0.2; `chap` is --chap or --no-chap.
fn add_pca(dir: &Path, chap: &str) {
    isboot(
        dir,
        &[
            "add-client",
            "--mac",
            MAC_A,
            "--image",
            "deb",
            "--name",
            "pca",
            "--ip",
            "127.0.0.2",
            chap,
        ],
    );
}

/// Client pcb (MAC_B) on image deb, with `extra` arguments.
fn add_pcb(dir: &Path, extra: &[&str]) {
    let mut args = vec![
        "add-client",
        "--mac",
        MAC_B,
        "--image",
        "deb",
        "--name",
        "pcb",
    ];
    args.extend_from_slice(extra);
    isboot(dir, &args);
}

#[test]
fn scripts_only_to_their_client_files_with_ranges() {
    if !have("curl") {
        return skip("curl not installed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = boot_state(tmp.path(), "");
    // pca reserved at 127.0.0.2; pcb with no address at all.
    add_pca(&dir, "--no-chap");
    add_pcb(&dir, &["--no-chap"]);
    let files = dir.join("boot-files/memtest");
    std::fs::create_dir_all(&files).unwrap();
    let blob = pattern(10_000, 7);
    std::fs::write(files.join("memtest86+x64.bin"), &blob).unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "outside").unwrap();

    let mut srv = Serve::start(&dir);
    let boot = boot_addr(&dir);
    assert_eq!(boot.ip().to_string(), "127.0.0.1");
    let url = |p: &str| format!("http://{boot}{p}");

    // A's script from another address: 403, and the refusal is logged.
    let (code, body) = get("127.0.0.3", &url(&format!("/boot/{MAC_A}.ipxe")));
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("iscsi:"), "{body}");
    // From A's own address: the script, booting A's disk (no menu by default).
    let (code, body) = get("127.0.0.2", &url(&format!("/boot/{MAC_A}.ipxe")));
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("#!ipxe\ngoto disk\n"), "{body}");
    assert!(body.contains(":pca ||"), "{body}");
    assert!(
        !body.contains("password") && !body.contains("username"),
        "{body}"
    );
    // The admin routes are not on the boot address.
    assert_eq!(get("127.0.0.2", &url("/metrics")).0, 404);
    // B has no known address: nobody gets its script, not even this host.
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.4"] {
        assert_eq!(
            get(from, &url(&format!("/boot/{MAC_B}.ipxe"))).0,
            403,
            "{from}"
        );
    }
    // An unknown MAC gets the same answer as a stranger.
    assert_eq!(
        get("127.0.0.2", &url("/boot/52:54:00:00:00:09.ipxe")).0,
        403
    );
    assert_eq!(get("127.0.0.2", &url("/boot/nonsense.ipxe")).0, 403);

    // One-shot: memtest once with the menu on, then the disk again.
    isboot(&dir, &["boot", "pca", "--next", "memtest", "--menu", "on"]);
    let a = url(&format!("/boot/{MAC_A}.ipxe"));
    let until = Instant::now() + Duration::from_secs(10);
    let body = loop {
        // A stranger's fetch neither gets it nor uses it up.
        assert_eq!(get("127.0.0.3", &a).0, 403);
        let (code, body) = get("127.0.0.2", &a);
        assert_eq!(code, 200);
        if body.contains("--default memtest") {
            break body;
        }
        // The server re-reads the registry within a second.
        assert!(Instant::now() < until, "memtest never served: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("menu isboot\n"), "{body}");
    assert!(
        body.contains(&format!(
            "chain http://{boot}/files/memtest/memtest86+x64.bin"
        )),
        "{body}"
    );
    let (code, body) = get("127.0.0.2", &a);
    assert_eq!(code, 200);
    assert!(
        body.contains("--default disk"),
        "one-shot not used up: {body}"
    );
    let shown = isboot(&dir, &["show-client", "pca", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert!(v["boot"]["next"].is_null(), "{shown}");
    assert_eq!(v["boot"]["menu"], true, "{shown}");

    // The installer callback: only from A's address, and only with an install pending.
    let (code, _) = curl(
        "127.0.0.3",
        &["-X", "POST", &url(&format!("/done/{MAC_A}"))],
    );
    assert_eq!(code, 403);
    let (code, body) = curl(
        "127.0.0.2",
        &["-X", "POST", &url(&format!("/done/{MAC_A}"))],
    );
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));

    // Boot files: whole, a byte range, and nothing outside boot-files/.
    let f = url("/files/memtest/memtest86+x64.bin");
    let (code, body) = curl("127.0.0.4", &[&f]);
    assert_eq!((code, body.len()), (200, blob.len()));
    assert_eq!(body, blob);
    let (code, body) = curl("127.0.0.4", &["-r", "100-1123", &f]);
    assert_eq!(code, 206);
    assert_eq!(body, blob[100..1124]);
    for p in [
        "/files/../isboot.toml",
        "/files/../../secret.txt",
        "/files/memtest/../../registry.toml",
        "/files/%2e%2e/isboot.toml",
        "/files/..%2fisboot.toml",
    ] {
        let (code, body) = get("127.0.0.4", &url(p));
        assert!(code == 404 || code == 400, "{p}: {code} {body}");
        assert!(
            !body.contains("server_ip") && !body.contains("outside"),
            "{p}: {body}"
        );
    }

    srv.stop();
    let log = srv.log_text();
    assert!(
        log.contains("peer=127.0.0.3") && log.contains("script refused"),
        "{log}"
    );
    assert!(log.contains("script served"), "{log}");
}

#[test]
fn installer_files_and_answers_only_to_their_client() {
    if !have("curl") {
        return skip("curl not installed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let kernel = pattern(300_000, 3);
    let initrd = pattern(200_000, 5);
    std::fs::write(tmp.path().join("linux"), &kernel).unwrap();
    std::fs::write(tmp.path().join("initrd.gz"), &initrd).unwrap();
    let t = tmp.path().display();
    let extra = format!(
        "\n[[installer]]\nname = \"debian12\"\nlabel = \"Install Debian 12\"\nkernel = \"{t}/linux\"\ninitrd = \"{t}/initrd.gz\"\ncmdline = \"console=ttyS0,115200\"\nanswer = \"preseed\"\n[installer.vars]\nearly_command = \"echo ISBOOT-MARK > /dev/ttyS0\"\n\n[[installer]]\nname = \"rocky\"\nkernel = \"{t}/linux\"\ninitrd = \"{t}/initrd.gz\"\nanswer = \"kickstart\"\n"
    );
    let dir = boot_state(tmp.path(), &extra);
    add_pca(&dir, "--chap");
    let (_user, secret) = chap_of(&dir, "pca").expect("pca has CHAP");
    // The admin's kickstart template for rocky does not render.
    std::fs::create_dir_all(dir.join("templates/rocky")).unwrap();
    std::fs::write(
        dir.join("templates/rocky/ks.cfg.j2"),
        "text\n{{ no_such_var }}\n",
    )
    .unwrap();

    // An unknown installer is refused in one line, and nothing changes.
    let o = isboot_cmd(&dir)
        .args(["boot", "pca", "--next", "install:nosuch"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no installer named nosuch") && err.contains("debian12, rocky"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    isboot(&dir, &["boot", "pca", "--next", "install:debian12"]);

    let mut srv = Serve::start(&dir);
    let boot = boot_addr(&dir);
    let url = |p: &str| format!("http://{boot}{p}");
    let script = url(&format!("/boot/{MAC_A}.ipxe"));
    let answer = url("/answer/52-54-00-00-00-01/debian12/preseed.cfg");

    // The script boots the installer, over HTTP, with the answer-file arguments; it holds no
    // secret; another address gets 403.
    assert_eq!(get("127.0.0.3", &script).0, 403);
    let until = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (code, body) = get("127.0.0.2", &script);
        assert_eq!(code, 200, "{body}");
        if body.contains("goto install-debian12") {
            break body;
        }
        assert!(Instant::now() < until, "install never served: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        body.starts_with("#!ipxe\ngoto install-debian12\n"),
        "{body}"
    );
    let want = format!(
        ":install-debian12\nkernel http://{boot}/install/debian12/kernel initrd=initrd console=ttyS0,115200 auto=true priority=critical interface=auto url={answer} || goto failed\ninitrd http://{boot}/install/debian12/initrd || goto failed\nboot || goto failed\n"
    );
    assert!(body.contains(&want), "{body}");
    assert!(body.contains(":install-rocky\n"), "{body}");
    assert!(!body.contains(&secret), "{body}");

    // The preseed: 403 elsewhere, rendered for pca at its address, no secret.
    let (code, body) = get("127.0.0.3", &answer);
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("pca"), "{body}");
    let (code, body) = get("127.0.0.2", &answer);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("d-i preseed/early_command string echo ISBOOT-MARK > /dev/ttyS0\n"),
        "{body}"
    );
    assert!(
        body.contains("d-i netcfg/get_hostname string pca\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!("http://{boot}/done/52-54-00-00-00-01")),
        "{body}"
    );
    assert!(!body.contains(&secret), "{body}");
    // A file the installer does not have, an unknown installer: 404.
    for p in [
        "/answer/52-54-00-00-00-01/debian12/ks.cfg",
        "/answer/52-54-00-00-00-01/nosuch/preseed.cfg",
        "/answer/52-54-00-00-00-01/debian12/..%2f..%2fisboot.toml",
    ] {
        let (code, body) = get("127.0.0.2", &url(p));
        assert_eq!(code, 404, "{p}: {body}");
    }
    // A broken template: 500 naming it.
    let (code, body) = get("127.0.0.2", &url("/answer/52-54-00-00-00-01/rocky/ks.cfg"));
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("templates/rocky/ks.cfg.j2"), "{body}");

    // The installer's files: any host, whole and by range; nothing else.
    let k = url("/install/debian12/kernel");
    let (code, body) = curl("127.0.0.4", &[&k]);
    assert_eq!((code, body.len()), (200, kernel.len()));
    assert_eq!(body, kernel);
    let (code, body) = curl("127.0.0.4", &["-r", "4096-69631", &k]);
    assert_eq!(code, 206);
    assert_eq!(body, kernel[4096..69632]);
    let (code, body) = curl("127.0.0.4", &[&url("/install/debian12/initrd")]);
    assert_eq!((code, body == initrd), (200, true));
    for p in [
        "/install/debian12/iso",
        "/install/nosuch/kernel",
        "/install/debian12/cmdline",
    ] {
        assert_eq!(get("127.0.0.4", &url(p)).0, 404, "{p}");
    }

    // The install stays until its callback (a reboot lands in the installer again) ...
    assert!(
        get("127.0.0.2", &script)
            .1
            .contains("goto install-debian12")
    );
    let done = url(&format!("/done/{MAC_A}"));
    assert_eq!(curl("127.0.0.3", &["-X", "POST", &done]).0, 403);
    let (code, body) = curl("127.0.0.2", &["-X", "POST", "--data", "done", &done]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // ... which ends it: the disk again.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get("127.0.0.2", &script);
        assert_eq!(code, 200);
        if body.starts_with("#!ipxe\ngoto disk\n") {
            break;
        }
        assert!(Instant::now() < until, "install not ended: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let v: serde_json::Value =
        serde_json::from_str(&isboot(&dir, &["show-client", "pca", "--json"])).unwrap();
    assert!(v["boot"]["next"].is_null(), "{v}");

    srv.stop();
    let log = srv.log_text();
    assert!(log.contains("answer file refused"), "{log}");
    assert!(log.contains("answer file served"), "{log}");
    assert!(log.contains("ks.cfg.j2"), "{log}");
    assert!(!log.contains(&secret), "{log}");
}

/// Login to `target` from loopback address `from` as pca's initiator with CHAP `chap`.
fn login_from(
    from: [u8; 4],
    iscsi: SocketAddr,
    target: &str,
    chap: &(String, String),
) -> Result<isboot::initiator::Initiator, String> {
    let mut o =
        isboot::initiator::LoginOptions::new(&initiator_of("pca"), Some(target)).ipxe_profile();
    o.chap = Some((chap.0.clone(), chap.1.as_bytes().to_vec()));
    let s = connect_from(from, iscsi).map_err(|e| e.to_string())?;
    let mut i = isboot::initiator::Initiator::from_stream(s).map_err(|e| e.to_string())?;
    i.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    i.login(&o).map_err(|e| e.to_string())?;
    Ok(i)
}

/// Another image (`image:NAME`): refused until allowed; then the script of that client (and
/// only its) names the image's own target, which takes the client's CHAP from the client's
/// address only, serves the other image's data, and is gone when forbidden.
#[test]
fn other_images_only_to_their_client_with_its_chap() {
    if !have("curl") {
        return skip("curl not installed");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = boot_state(tmp.path(), "");
    let deb2 = tmp.path().join("deb2.img");
    let deb2_data = pattern(1 << 20, 99);
    std::fs::write(&deb2, &deb2_data).unwrap();
    isboot(&dir, &["image", "add", "deb2", deb2.to_str().unwrap()]);
    add_pca(&dir, "--chap");
    add_pcb(&dir, &["--ip", "127.0.0.5", "--chap"]);
    let run = |args: &[&str]| Run::from(isboot_cmd(&dir).args(args).output().unwrap());
    run(&["boot", "pca", "--next", "image:deb2"]).fails(2, "isboot boot pca --allow-image deb2");
    run(&["boot", "pca", "--allow-image", "nosuch"]).fails(2, "nosuch");
    let out = isboot(
        &dir,
        &[
            "boot",
            "pca",
            "--allow-image",
            "deb2",
            "--next",
            "image:deb2",
            "--menu",
            "on",
        ],
    );
    let target = format!("{PREFIX}:pca:image:deb2");
    assert!(
        out.contains(&target) && out.contains("image:deb2 once"),
        "{out}"
    );
    let shown = isboot(&dir, &["show-client", "pca", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["allowed_images"][0]["image"], "deb2", "{shown}");
    assert_eq!(v["allowed_images"][0]["target"], target.as_str(), "{shown}");
    let list = isboot(&dir, &["list-clients", "--json"]);
    assert!(list.contains(&target), "{list}");
    // Removing an image a client may boot is refused, saying how to forbid it.
    run(&["image", "remove", "deb2"]).fails(1, "isboot boot pca --forbid-image deb2");

    let mut srv = Serve::start(&dir);
    let boot = boot_addr(&dir);
    let script = |mac: &str| format!("http://{boot}/boot/{mac}.ipxe");
    // The status API (admin socket) lists it with the client, and serves it as a target of
    // kind "image".
    let api = |path: &str| {
        let sock = dir.join("run/admin.sock");
        let o = std::process::Command::new("curl")
            .args(["-sSf", "--unix-socket", sock.to_str().unwrap()])
            .arg(format!("http://isboot{path}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let clients = api("/api/v1/clients");
    assert!(clients.contains(&target), "{clients}");
    let status = api("/api/v1/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let row = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target.as_str())
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        (&row["kind"], &row["name"]),
        (&"image".into(), &"pca:deb2".into())
    );
    assert_eq!(row["chap"], true, "{status}");

    // Nobody else gets pca's script (nor uses up its choice); pcb's names no image.
    assert_eq!(get("127.0.0.3", &script(MAC_A)).0, 403);
    let (code, b) = get("127.0.0.5", &script(MAC_B));
    assert_eq!(code, 200, "{b}");
    assert!(!b.contains("image") && !b.contains(":pca"), "{b}");
    let (code, body) = get("127.0.0.2", &script(MAC_A));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("item image-deb2 Image deb2\n"), "{body}");
    assert!(body.contains("choose --default image-deb2 "), "{body}");
    assert!(
        body.contains(":image-deb2\nsanboot iscsi:127.0.0.1:"),
        "{body}"
    );
    assert!(
        body.contains(&format!(":{target} || goto failed\n")),
        "{body}"
    );
    assert!(
        !body.contains("password") && !body.contains("username"),
        "{body}"
    );
    // Used up: the next fetch boots the disk, and still offers the image.
    let (_, body) = get("127.0.0.2", &script(MAC_A));
    assert!(
        body.contains("--default disk ") && body.contains("item image-deb2"),
        "{body}"
    );

    // The image's target: pca's CHAP from pca's address only.
    let a = chap_of(&dir, "pca").expect("pca has CHAP");
    let b = chap_of(&dir, "pcb").expect("pcb has CHAP");
    let e = login_from([127, 0, 0, 3], srv.addr, &target, &a).err();
    assert!(e.is_some(), "pca's CHAP from another address was accepted");
    let e = login_from([127, 0, 0, 2], srv.addr, &target, &b).err();
    assert!(e.is_some(), "pcb's CHAP was accepted for pca's image");
    let mut i = login_from([127, 0, 0, 2], srv.addr, &target, &a).expect("pca's own login");
    i.clear_unit_attention(0).unwrap();
    assert_eq!(read(&mut i, 0, 8), deb2_data[..4096]);
    write(&mut i, 8, &[7u8; 512], true);
    i.logout().unwrap();
    // pca's own disk is untouched (another target, another image).
    let mut d = login_from([127, 0, 0, 2], srv.addr, &format!("{PREFIX}:pca"), &a).unwrap();
    d.clear_unit_attention(0).unwrap();
    assert_ne!(read(&mut d, 0, 8), deb2_data[..4096]);
    d.logout().unwrap();

    // Forbidden: the script offers it no more, and its target is gone.
    let out = isboot(&dir, &["boot", "pca", "--forbid-image", "deb2"]);
    assert!(!out.contains(&target), "{out}");
    eventually("the image target goes", || {
        login_from([127, 0, 0, 2], srv.addr, &target, &a).is_err()
    });
    let (_, body) = get("127.0.0.2", &script(MAC_A));
    assert!(!body.contains("image-deb2"), "{body}");
    srv.stop();
    let log = srv.log_text();
    assert!(log.contains("boot=image:deb2"), "{log}");
}
