//! `isboot serve` end to end on loopback: clients' private copy-on-write disks over iSCSI, the
//! base image untouched, changes made with the CLI while it runs, `isboot status`, restarts,
//! maintenance, and a real `kill -9` under a durable-write load.

mod fixture;
use fixture::disk_io::*;
use fixture::*;
use isboot::initiator::{Initiator, LoginOptions};
use std::net::SocketAddr;
use std::process::Command;

const P: &str = PREFIX;

fn crc(p: &std::path::Path) -> u32 {
    crc32c::crc32c(&std::fs::read(p).unwrap())
}

#[test]
fn private_disks_over_iscsi_follow_the_cli_and_survive_restarts() {
    let lab = Lab::with_image();
    let base = pattern(4 << 20, 1);
    let base_file = lab.dir.join("images/deb/v1.raw");
    let base_sum = crc(&base_file);
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    lab.add("52:54:00:00:00:02", "pc2", &["--mode", "reset"]);
    let mut srv = Serve::start(&lab.dir);

    // Two clients write different data to the same LBAs; each reads its own back.
    let mut a = client(srv.addr, "pc1");
    let mut b = client(srv.addr, "pc2");
    write(&mut a, 16, &[0xA1; 8192], false);
    write(&mut b, 16, &[0xB2; 8192], true);
    write(&mut a, 3, &[0xA1; 512], true); // partial block: copy-up
    assert_eq!(read(&mut a, 16, 16), vec![0xA1; 8192]);
    assert_eq!(read(&mut b, 16, 16), vec![0xB2; 8192]);
    let a0 = read(&mut a, 0, 8);
    assert_eq!(&a0[..1536], &base[..1536]);
    assert_eq!(&a0[1536..2048], &[0xA1; 512]);
    assert_eq!(&a0[2048..], &base[2048..4096]);
    assert_eq!(read(&mut b, 0, 8), &base[..4096]);
    let sync = a
        .command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_eq!(sync.status, 0);

    // A client cannot log in to another's target, nor see it in discovery.
    let stolen = LoginOptions::new(&format!("{P}:initiator:pc1"), Some(&format!("{P}:pc2")));
    assert!(
        Initiator::connect(srv.addr, &stolen).is_err(),
        "pc1 logged in to pc2's target"
    );
    let mut d = Initiator::connect(
        srv.addr,
        &LoginOptions::new(&format!("{P}:initiator:pc1"), None),
    )
    .unwrap();
    let seen: Vec<String> = d
        .send_targets("All")
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(seen, vec![format!("{P}:pc1")]);

    // status shows both sessions, their traffic and disks.
    eventually("status shows both sessions", || {
        let j: serde_json::Value =
            serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
        j["total_sessions"] == 2
    });
    let out = lab.run(&["status"]).ok().to_string();
    let row = out.lines().find(|l| l.starts_with("pc1")).unwrap();
    assert!(row.contains("127.0.0.1:") && row.contains("deb@1"), "{out}");
    let j: serde_json::Value = serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
    assert!(
        j["targets"][0]["bytes_written"].as_u64().unwrap() >= 8192 + 512,
        "{j}"
    );
    assert!(
        j["targets"][0]["bytes_read"].as_u64().unwrap() >= 8192,
        "{j}"
    );
    assert!(
        j["targets"][1]["overlay_bytes"].as_u64().unwrap() >= 8192,
        "{j}"
    );

    // Reset of a logged-in client: refused, then forced (its session ends), then pristine.
    // (Commands see sessions in the status file, which the server rewrites every second; the
    // status API above may be ahead of it.)
    eventually("the status file shows both sessions", || {
        std::fs::read_to_string(lab.dir.join("run/status.json"))
            .is_ok_and(|t| t.matches("\"initiator\"").count() == 2)
    });
    lab.run(&["reset-client", "pc2"])
        .fails(1, "logged in from 127.0.0.1:");
    let out = lab
        .run(&["reset-client", "pc2", "--force"])
        .ok()
        .to_string();
    assert!(out.contains("its session was ended"), "{out}");
    assert!(
        b.read16(0, 16, 16).is_err(),
        "the reset client's old session still works"
    );
    let mut b = client(srv.addr, "pc2");
    assert_eq!(read(&mut b, 16, 16), &base[16 * 512..32 * 512]);
    write(&mut b, 40, &[0xB3; 4096], true);

    // A client added while serving is served within a second or two; a removed one goes.
    lab.add("52:54:00:00:00:03", "pc3", &[]);
    eventually("pc3 is served", || {
        Initiator::connect(
            srv.addr,
            &LoginOptions::new(&format!("{P}:initiator:pc3"), Some(&format!("{P}:pc3"))),
        )
        .is_ok()
    });
    let mut c = client(srv.addr, "pc3");
    lab.run(&["remove-client", "pc3"]).ok();
    eventually("pc3's session ends", || c.read16(0, 0, 1).is_err());

    // Restart: persistent data persists; the base never changed.
    drop((a, b, d));
    srv.stop();
    assert!(
        !lab.dir.join("run/status.json").exists(),
        "a stopped server leaves its status"
    );
    assert!(lab.run(&["status"]).ok().contains("server: not running"));
    let srv = Serve::start(&lab.dir);
    let mut a = client(srv.addr, "pc1");
    let mut b = client(srv.addr, "pc2");
    assert_eq!(read(&mut a, 16, 16), vec![0xA1; 8192]);
    assert_eq!(read(&mut b, 40, 8), vec![0xB3; 4096]);
    assert_eq!(crc(&base_file), base_sum, "the base image changed");
}

/// `GET path` from `addr` (HTTP/1.1): status code and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_on(std::net::TcpStream::connect(addr).unwrap(), path)
}

/// `GET path` on the admin socket of state directory `dir`.
fn sock_get(dir: &std::path::Path, path: &str) -> (u16, String) {
    let s = std::os::unix::net::UnixStream::connect(dir.join("run").join("admin.sock")).unwrap();
    http_get_on(s, path)
}

fn http_get_on(mut s: impl std::io::Read + std::io::Write, path: &str) -> (u16, String) {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    // Small bodies come in one chunk at most; unwrap chunked encoding if used.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut b = String::new();
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            b.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        b
    } else {
        body.to_string()
    };
    (code, body)
}

/// The value of the sample `name` (with its labels, as printed) in a metrics text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_and_the_status_api_on_the_admin_routes() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &["--quota-mib", "5"]);
    lab.add("52:54:00:00:00:02", "pc2", &[]);
    let mut srv = Serve::start(&lab.dir);
    let mut a = client(srv.addr, "pc1");
    write(&mut a, 16, &[0xA1; 8192], true);
    assert_eq!(read(&mut a, 16, 16), vec![0xA1; 8192]);
    // A login to a target that does not exist is refused, and counted with its reason.
    let o = LoginOptions::new(&format!("{P}:initiator:pc1"), Some(&format!("{P}:nobody")));
    assert!(Initiator::connect(srv.addr, &o).is_err());

    let (code, m) = http_get(srv.http, "/metrics");
    assert_eq!(code, 200);
    let pc1 = "{client=\"pc1\",kind=\"client\"}";
    assert!(
        sample(&m, &format!("isboot_client_read_bytes_total{pc1}")).unwrap() >= 8192.0,
        "{m}"
    );
    assert!(
        sample(&m, &format!("isboot_client_written_bytes_total{pc1}")).unwrap() >= 8192.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, &format!("isboot_client_sessions{pc1}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "isboot_sessions"), Some(1.0), "{m}");
    assert!(
        sample(&m, &format!("isboot_client_overlay_bytes{pc1}")).unwrap() > 0.0,
        "{m}"
    );
    assert!(
        sample(&m, "isboot_iscsi_read_latency_seconds_count").unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "isboot_iscsi_write_latency_seconds_count").unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "isboot_iscsi_logins_total{result=\"accepted\",reason=\"ok\"}"
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "isboot_iscsi_logins_total{result=\"refused\",reason=\"unknown_target\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // pc1's quota (its own; pc2 has none) and the data it counts: 8 KiB written at 8 KiB,
    // two 4 KiB overlay blocks.
    let pc2 = "{client=\"pc2\",kind=\"client\"}";
    assert_eq!(
        sample(&m, &format!("isboot_client_quota_bytes{pc1}")),
        Some((5u64 << 20) as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, &format!("isboot_client_quota_bytes{pc2}")),
        None,
        "{m}"
    );
    assert_eq!(
        sample(&m, &format!("isboot_client_overlay_data_bytes{pc1}")),
        Some(8192.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, &format!("isboot_client_over_quota{pc1}")),
        Some(0.0),
        "{m}"
    );
    // The state file system as statvfs(2) sees it (free space moves with other writers on
    // this machine: within 256 MiB), and the warning threshold's default, 1024 MiB.
    let fs = rustix::fs::statvfs(&lab.dir).unwrap();
    assert_eq!(
        sample(&m, "isboot_state_fs_size_bytes"),
        Some((fs.f_blocks * fs.f_frsize) as f64),
        "{m}"
    );
    let free = sample(&m, "isboot_state_fs_available_bytes").unwrap();
    assert!(
        (free - (fs.f_bavail * fs.f_frsize) as f64).abs() < (256u64 << 20) as f64,
        "{free} vs {} free now",
        fs.f_bavail * fs.f_frsize
    );
    assert_eq!(
        sample(&m, "isboot_state_fs_warning_bytes"),
        Some((1024u64 << 20) as f64),
        "{m}"
    );
    // The write-data budget ([limits] write_buffer_mib, default at least 32 MiB): the write
    // above held its 8 KiB from it and gave them back.
    assert!(
        sample(&m, "isboot_write_budget_limit_bytes").unwrap() >= (32 << 20) as f64,
        "{m}"
    );
    // Given back when the command's last reference goes, which can be just after its status
    // went out (seen once at load 8-9): scrape again until it is.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut now = m.clone();
    while sample(&now, "isboot_write_budget_in_use_bytes") != Some(0.0)
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        now = http_get(srv.http, "/metrics").1;
    }
    assert_eq!(
        sample(&now, "isboot_write_budget_in_use_bytes"),
        Some(0.0),
        "{now}"
    );
    assert!(
        sample(&m, "isboot_write_budget_peak_bytes").unwrap() >= 8192.0,
        "{m}"
    );
    assert!(
        m.contains("# TYPE isboot_client_read_bytes_total counter"),
        "{m}"
    );

    // The status API serves what the CLI prints (one schema); `isboot status` asks it. It is
    // on the admin socket (root and group isboot), not on the loopback TCP listener.
    let (code, api) = sock_get(&lab.dir, "/api/v1/status");
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let cli: serde_json::Value = serde_json::from_str(lab.run(&["status", "--json"]).ok()).unwrap();
    assert_eq!(api["server_running"], true);
    assert_eq!(api["targets"][0]["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(api["targets"][0]["name"], cli["targets"][0]["name"]);
    assert_eq!(api["total_bytes_read"], cli["total_bytes_read"]);
    // Boot settings are part of the client schema, and the API follows a change.
    lab.run(&["boot", "pc1", "--next", "memtest"]).ok();
    eventually("the API shows the next-boot choice", || {
        let (_, c) = sock_get(&lab.dir, "/api/v1/clients");
        c.contains("\"next\":\"memtest\"")
    });
    let (code, clients) = sock_get(&lab.dir, "/api/v1/clients");
    assert_eq!(code, 200);
    let clients: serde_json::Value = serde_json::from_str(&clients).unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(lab.run(&["list-clients", "--json"]).ok()).unwrap();
    assert_eq!(clients, listed);
    assert_eq!(sock_get(&lab.dir, "/api/v1/nothing").0, 404);
    assert_eq!(http_get(srv.http, "/api/v1/status").0, 404);
    assert_eq!(http_get(srv.http, "/api/v1/clients").0, 404);

    // Only hosts in [http] allow get answers: with loopback left out, 403; `isboot status`
    // does not depend on it (the admin socket).
    let cfg = std::fs::read_to_string(lab.dir.join("isboot.toml")).unwrap();
    let cfg = cfg.replace(
        "allow = [\"127.0.0.0/8\", \"::1/128\"]",
        "allow = [\"192.0.2.1/32\"]",
    );
    std::fs::write(lab.dir.join("isboot.toml"), cfg).unwrap();
    eventually("the new allow list applies", || {
        http_get(srv.http, "/metrics").0 == 403
    });
    let r = lab.run(&["status"]);
    assert!(r.ok().contains("server: running"), "{}", r.stdout);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    drop(a);
    srv.stop();
}

#[test]
fn maintenance_publishes_a_version_fresh_clients_boot_and_old_ones_keep_working() {
    let lab = Lab::with_image();
    let base = pattern(4 << 20, 1);
    lab.add("52:54:00:00:00:01", "old", &[]);
    let srv = Serve::start(&lab.dir);
    let mut old = client(srv.addr, "old");
    write(&mut old, 100, &[0x0D; 4096], true);

    lab.run(&["image", "edit", "deb", "--no-chap"]).ok();
    let maint = format!("{P}:maint:deb");
    eventually("the maintenance target is served", || {
        Initiator::connect(
            srv.addr,
            &LoginOptions::new(&format!("{P}:initiator:maint:deb"), Some(&maint)),
        )
        .is_ok()
    });
    // Only the maintenance initiator gets in.
    assert!(
        Initiator::connect(
            srv.addr,
            &LoginOptions::new(&format!("{P}:initiator:old"), Some(&maint))
        )
        .is_err()
    );
    let mut m = login(srv.addr, &format!("{P}:initiator:maint:deb"), &maint);
    write(&mut m, 8, &[0x77; 4096], false);
    write(&mut m, 2000, &[0x78; 1024], false);
    m.logout().unwrap();
    drop(m);
    // commit waits for the server to flush the maintenance disk, then publishes version 2.
    let out = lab.run(&["image", "commit", "deb"]).ok().to_string();
    assert!(out.contains("published deb version 2"), "{out}");

    // A fresh reset-mode client boots version 2.
    lab.add("52:54:00:00:00:02", "fresh", &["--mode", "reset"]);
    eventually("fresh is served", || {
        Initiator::connect(
            srv.addr,
            &LoginOptions::new(&format!("{P}:initiator:fresh"), Some(&format!("{P}:fresh"))),
        )
        .is_ok()
    });
    let mut f = client(srv.addr, "fresh");
    assert_eq!(read(&mut f, 8, 8), vec![0x77; 4096]);
    assert_eq!(read(&mut f, 2000, 2), vec![0x78; 1024]);
    assert_eq!(read(&mut f, 100, 8), &base[100 * 512..108 * 512]);
    // The persistent client stays on version 1 with its data, in the same session.
    assert_eq!(read(&mut old, 100, 8), vec![0x0D; 4096]);
    assert_eq!(read(&mut old, 8, 8), &base[8 * 512..16 * 512]);
    write(&mut old, 101, &[0x0E; 512], true);
    assert_eq!(read(&mut old, 101, 1), vec![0x0E; 512]);
}

#[test]
fn kill9_of_serve_under_load_loses_no_acknowledged_durable_write() {
    let rounds = kill_rounds(4);
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    let acked = kill9_rounds(&lab.dir, "pc1", rounds, &pattern(4 << 20, 1));
    assert!(acked > 0, "no FUA write was acknowledged");
    eprintln!(
        "kill -9 of isboot serve: {rounds} kills, {acked} acknowledged FUA writes, 0 mismatches"
    );
}

/// `serve --read-trace` writes one line per READ with the initiator's queue depth, and
/// `isboot-replay` replays such a trace from one session per client.
#[test]
fn read_trace_records_reads_and_replays_them() {
    let lab = Lab::with_image();
    lab.add("52:54:00:00:00:01", "pc1", &[]);
    lab.add("52:54:00:00:00:02", "pc2", &[]);
    let trace = lab.dir.join("trace.csv");
    let mut srv = Serve::start_with(&lab.dir, "warn", &["--read-trace", trace.to_str().unwrap()]);
    let mut a = client(srv.addr, "pc1");
    read(&mut a, 16, 8);
    // Three reads in flight at once, then a write (not traced).
    for lba in [100u64, 200, 300] {
        a.submit(
            0,
            &isboot::initiator::read16_cdb(lba, 4),
            bytes::Bytes::new(),
            2048,
        )
        .unwrap();
    }
    for _ in 0..3 {
        assert_eq!(a.wait_any().unwrap().status, 0);
    }
    write(&mut a, 8, &[0x5A; 512], false);
    read(&mut a, 0, 1);
    let rows = |text: &str, target: &str| -> Vec<(u64, u64, u64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("us,"))
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[2] == target)
            .map(|f| {
                (
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].parse().unwrap(),
                )
            })
            .collect()
    };
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains("\nus,session,target,lba,blocks,depth\n"),
        "{text}"
    );
    assert_eq!(
        rows(&text, &format!("{P}:pc1")),
        vec![(16, 8, 1), (100, 4, 1), (200, 4, 2), (300, 4, 3), (0, 1, 1)],
        "{text}"
    );
    drop(a);

    // Replay pc1's reads from pc1 and pc2 at once: 5 reads each; the data is the same on
    // both (pc1's write at LBA 8 is outside every traced read).
    let out = Command::new(env!("CARGO_BIN_EXE_isboot-replay"))
        .args(["--portal", &srv.addr.to_string(), "--checksum"])
        .args(["--trace", trace.to_str().unwrap()])
        .args(["--trace-target", &format!("{P}:pc1")])
        .args(["--initiator", &format!("{P}:initiator:pc{{n}}")])
        .args([
            "--target",
            &format!("{P}:pc1"),
            "--target",
            &format!("{P}:pc2"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("RESULT sessions=2 reads=10 bytes=21504 "),
        "{stdout}"
    );
    assert!(stdout.contains(" errors=0 sum="), "{stdout}");
    srv.stop();
}
