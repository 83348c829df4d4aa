//! TFTP against real clients (curl, tftp-hpa, atftp) and a scripted client, on 127.0.0.1.

mod fixture;
use fixture::{have, recv_retrying, tftp_get_from as scripted_get_from};
use isboot::service::tftp::{TftpLimits, bind_tftp, run_tftp};
use isboot::tftp::packet::{self, Packet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const IPXE_DIR: &str = "/usr/lib/ipxe";

struct Server {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TFTP root with the iPXE binaries (copied, so symlinks in /usr/lib/ipxe do not matter),
/// a file beside the root that must stay unreachable, and a server on 127.0.0.1:0.
fn start_server() -> Option<Server> {
    start_server_with(TftpLimits::default())
}

fn start_server_with(limits: TftpLimits) -> Option<Server> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tftp");
    std::fs::create_dir(&root).expect("mkdir");
    for f in ["undionly.kpxe", "ipxe.efi"] {
        let src = Path::new(IPXE_DIR).join(f);
        if !src.exists() {
            println!(
                "SKIPPED: {} missing (apt-get install -y ipxe)",
                src.display()
            );
            return None;
        }
        std::fs::copy(&src, root.join(f)).expect("copy");
    }
    std::fs::write(dir.path().join("secret"), b"top secret").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).expect("symlink");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (ptx, prx) = std::sync::mpsc::channel();
    let root2 = root.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sock = bind_tftp("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            ptx.send(sock.local_addr().expect("addr").port())
                .expect("port");
            run_tftp(sock, root2, limits, async {
                let _ = rx.await;
            })
            .await
            .expect("tftp runs");
        });
    });
    let port = prx
        .recv_timeout(Duration::from_secs(10))
        .expect("server started");
    Some(Server {
        port,
        stop: Some(tx),
        thread: Some(thread),
        _dir: dir,
        root,
    })
}

fn same(a: &Path, b: &Path) {
    let x = std::fs::read(a).expect("read a");
    let y = std::fs::read(b).expect("read b");
    assert_eq!(
        x.len(),
        y.len(),
        "{} vs {}: length",
        a.display(),
        b.display()
    );
    assert!(
        x == y,
        "{} vs {}: contents differ",
        a.display(),
        b.display()
    );
}

fn curl(port: u16, file: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(out)
        .args(extra)
        .arg(format!("tftp://127.0.0.1:{port}/{file}"))
        .output()
        .expect("run curl")
}

#[test]
fn curl_downloads_ipxe_byte_identical_default_and_blksize_1468() {
    if !have("curl") {
        println!("SKIPPED: curl not installed (apt-get install -y curl)");
        return;
    }
    let Some(s) = start_server() else { return };
    let out = tempfile::tempdir().expect("tmp");
    for f in ["undionly.kpxe", "ipxe.efi"] {
        for (tag, extra) in [
            ("default", &[][..]),
            ("1468", &["--tftp-blksize", "1468"][..]),
        ] {
            let dst = out.path().join(format!("{f}.{tag}"));
            let o = curl(s.port, f, &dst, extra);
            assert!(
                o.status.success(),
                "curl {f} {tag}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            same(&s.root.join(f), &dst);
        }
    }
}

#[test]
fn tftp_hpa_downloads_byte_identical() {
    if !have("tftp") {
        println!("SKIPPED: tftp-hpa not installed (apt-get install -y tftp-hpa)");
        return;
    }
    let Some(s) = start_server() else { return };
    let out = tempfile::tempdir().expect("tmp");
    for f in ["undionly.kpxe", "ipxe.efi"] {
        let dst = out.path().join(f);
        let o = Command::new("tftp")
            .args([
                "-m",
                "binary",
                "127.0.0.1",
                &s.port.to_string(),
                "-c",
                "get",
                f,
            ])
            .arg(&dst)
            .output()
            .expect("run tftp");
        assert!(
            o.status.success(),
            "tftp {f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        same(&s.root.join(f), &dst);
    }
}

#[test]
fn atftp_blksize_1468_windowsize_8_byte_identical() {
    if !have("atftp") {
        println!("SKIPPED: atftp not installed (apt-get install -y atftp)");
        return;
    }
    let Some(s) = start_server() else { return };
    let out = tempfile::tempdir().expect("tmp");
    for f in ["undionly.kpxe", "ipxe.efi"] {
        let dst = out.path().join(f);
        let o = Command::new("atftp")
            .args([
                "--option",
                "blksize 1468",
                "--option",
                "windowsize 8",
                "--option",
                "tsize 0",
                "--verbose",
                "--trace",
                "-g",
                "-r",
                f,
                "-l",
            ])
            .arg(&dst)
            .args(["127.0.0.1", &s.port.to_string()])
            .output()
            .expect("run atftp");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "atftp {f}: {text}");
        let oack = text
            .lines()
            .find(|l| l.starts_with("received OACK"))
            .unwrap_or_default();
        assert!(
            oack.contains("windowsize: 8") && oack.contains("blksize: 1468"),
            "atftp negotiated: {oack}"
        );
        same(&s.root.join(f), &dst);
    }
}

/// A scripted client: RRQ with options, checks the OACK, ACKs each window; returns the file.
fn scripted_get(
    port: u16,
    file: &str,
    opts: &[(&str, &str)],
    expect_window: u16,
) -> Result<Vec<u8>, (u16, String)> {
    scripted_get_from([127, 0, 0, 1], port, file, opts, expect_window)
}

#[test]
fn scripted_client_windowsize_8_and_rollover() {
    let Some(s) = start_server() else { return };
    let got = scripted_get(
        s.port,
        "ipxe.efi",
        &[("blksize", "1468"), ("windowsize", "8"), ("tsize", "0")],
        8,
    )
    .expect("get");
    assert!(
        got == std::fs::read(s.root.join("ipxe.efi")).expect("read"),
        "windowed download identical"
    );
    // More than 65535 blocks of 512 bytes (> 32 MiB): block numbers roll over to 0. Window 16
    // keeps it quick; rollover is the same code path in lockstep.
    let big: Vec<u8> = (0..(33u32 << 20) + 100).map(|i| (i % 251) as u8).collect();
    std::fs::write(s.root.join("big.bin"), &big).expect("write");
    let got = scripted_get(s.port, "big.bin", &[("windowsize", "16")], 16).expect("get big");
    assert!(got == big, "33 MiB at 512-byte blocks identical");
}

#[test]
fn curl_rollover_past_32_mib() {
    if !have("curl") {
        println!("SKIPPED: curl not installed");
        return;
    }
    let Some(s) = start_server() else { return };
    let big: Vec<u8> = (0..(33u32 << 20) + 7).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.root.join("big.bin"), &big).expect("write");
    let out = tempfile::tempdir().expect("tmp");
    let dst = out.path().join("big.bin");
    let o = curl(s.port, "big.bin", &dst, &["--tftp-blksize", "512"]);
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    same(&s.root.join("big.bin"), &dst);
}

#[test]
fn traversal_and_writes_refused_with_error_packets() {
    let Some(s) = start_server() else { return };
    for name in [
        "../secret",
        "/etc/passwd",
        "escape",
        "sub/../../secret",
        "..\\secret",
    ] {
        let e = scripted_get(s.port, name, &[], 1).expect_err(name);
        assert_eq!(e.0, 2, "{name}: access violation, got {e:?}");
    }
    let e = scripted_get(s.port, "missing.bin", &[], 1).expect_err("missing");
    assert_eq!(e.0, 1, "file not found");
    let e = scripted_get(s.port, "undionly.kpxe", &[("blksize", "4")], 1).expect_err("bad blksize");
    assert_eq!(e.0, 8, "option negotiation error");
    // Raw bad requests to the listening port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let server: SocketAddr = format!("127.0.0.1:{}", s.port).parse().expect("addr");
    let mut buf = [0u8; 600];
    for (req, code) in [
        (
            packet::request(packet::OP_WRQ, "new.bin", "octet", &[]),
            2u16,
        ),
        (packet::request(packet::OP_RRQ, "", "octet", &[]), 4),
        (
            packet::request(packet::OP_RRQ, "undionly.kpxe", "mail", &[]),
            4,
        ),
        (b"\x00\x2a\x00\x01".to_vec(), 4),
        (packet::ack(5), 4),
    ] {
        sock.send_to(&req, server).expect("send");
        let (n, _) = sock.recv_from(&mut buf).expect("error reply");
        match Packet::parse(&buf[..n]) {
            Ok(Packet::Error { code: c, .. }) => assert_eq!(c, code, "{req:?}"),
            other => panic!("{req:?}: expected ERROR, got {other:?}"),
        }
    }
    if have("curl") {
        let out = tempfile::tempdir().expect("tmp");
        let o = curl(s.port, "..%2Fsecret", &out.path().join("x"), &[]);
        assert!(!o.status.success(), "curl traversal must fail");
    }
    // The server still serves after all that.
    let got = scripted_get(s.port, "undionly.kpxe", &[], 1).expect("still serving");
    assert!(got == std::fs::read(s.root.join("undionly.kpxe")).expect("read"));
}

#[test]
fn many_transfers_at_once() {
    let Some(s) = start_server() else { return };
    let want = std::fs::read(s.root.join("ipxe.efi")).expect("read");
    let port = s.port;
    // From 8 source addresses: one address may hold only 8 transfers by default.
    let threads: Vec<_> = (0..24u8)
        .map(|i| {
            std::thread::spawn(move || {
                let src = [127, 0, 0, 10 + i % 8];
                let opts: Vec<(&str, &str)> = match i % 3 {
                    0 => vec![],
                    1 => vec![("blksize", "1468")],
                    _ => vec![("blksize", "1024"), ("windowsize", "4")],
                };
                let window = if i % 3 == 2 { 4 } else { 1 };
                scripted_get_from(src, port, "ipxe.efi", &opts, window).expect("download")
            })
        })
        .collect();
    for t in threads {
        assert!(
            t.join().expect("thread") == want,
            "concurrent download identical"
        );
    }
}

/// A peer that asks for long timeouts and never acknowledges holds at most its share of the
/// transfer slots, and only until its transfers time out at the server's pace; other peers are
/// served meanwhile.
#[test]
fn a_silent_peer_holds_its_share_of_slots_only_briefly() {
    use isboot::service::budget::Slots;
    let limits = TftpLimits {
        slots: Slots::new(16, 4),
        ..TftpLimits::default()
    };
    let stats = limits.slots.clone();
    let Some(s) = start_server_with(limits) else {
        return;
    };
    let server: SocketAddr = format!("127.0.0.1:{}", s.port).parse().expect("addr");
    let mut buf = [0u8; 2048];
    let mut held = Vec::new();
    let mut busy = 0;
    for _ in 0..10 {
        let sock = std::net::UdpSocket::bind("127.0.0.50:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let rrq = packet::request(
            packet::OP_RRQ,
            "ipxe.efi",
            "octet",
            &[("timeout", "255"), ("tsize", "0")],
        );
        sock.send_to(&rrq, server).expect("send");
        let (n, _) = recv_retrying(&sock, &mut buf).expect("answer");
        match Packet::parse(&buf[..n]).expect("parse") {
            Packet::Oack { options } => {
                assert!(
                    options.iter().all(|(k, _)| k != "timeout"),
                    "timeout 255 over the cap must not be acknowledged: {options:?}"
                );
                held.push(sock);
            }
            Packet::Error { message, .. } => {
                assert!(message.contains("busy"), "{message}");
                busy += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((held.len(), busy), (4, 6), "4 slots for one address");
    assert_eq!(stats.stats().refused_per_address, 6);
    // Another address is served while the silent one holds its share.
    let want = std::fs::read(s.root.join("undionly.kpxe")).expect("read");
    let got = scripted_get_from([127, 0, 0, 51], s.port, "undionly.kpxe", &[], 1).expect("get");
    assert!(got == want);
    // The silent transfers end with the server's "timed out" error (default 1 s timeout,
    // not 255 s), which frees the slots.
    for sock in &held {
        let err = loop {
            let (n, _) = recv_retrying(sock, &mut buf).expect("retransmission or error");
            if let Packet::Error { message, .. } = Packet::parse(&buf[..n]).expect("parse") {
                break message;
            }
        };
        assert!(err.contains("timed out"), "{err}");
    }
    // The slot is given back when the transfer's task ends, just after its last datagram.
    for _ in 0..1000 {
        if stats.stats().in_use == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = scripted_get_from([127, 0, 0, 50], s.port, "undionly.kpxe", &[], 1)
        .expect("slots given back");
    assert!(got == want);
}
