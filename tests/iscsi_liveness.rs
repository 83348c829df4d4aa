//! Connection liveness: an initiator that stops answering NOP-In pings but whose TCP is alive
//! (open-iscsi while iscsid restarts or the initrd hands over to the real root) keeps its
//! session; a peer that vanishes from the network (powered off) is dropped by TCP keepalive /
//! TCP_USER_TIMEOUT, so its session does not linger.
// The test harness enters network namespaces (setns): the crate denies unsafe code elsewhere.
#![allow(unsafe_code)]

mod fixture;

use isboot::initiator::{Initiator, LoginOptions};
use isboot::iscsi::target::{StaticRegistry, TargetStats};
use isboot::service::iscsi::{ServerConfig, serve_with};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.test:liveness";

fn target(dir: &tempfile::TempDir) -> (Arc<StaticRegistry>, Arc<TargetStats>) {
    fixture::one_disk_target(dir.path(), IQN, "liveness")
}

/// Short timers: ping after 1 s of silence, give up on a dead peer after ~2 s more.
fn quick() -> ServerConfig {
    ServerConfig {
        idle_ping: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Serve on `bind` from a thread (entering `netns` first, if given); returns the address and
/// a stop handle.
fn start(
    bind: SocketAddr,
    netns: Option<String>,
    reg: Arc<StaticRegistry>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (atx, arx) = std::sync::mpsc::channel();
    let (stx, srx) = tokio::sync::oneshot::channel::<()>();
    let h = std::thread::spawn(move || {
        if let Some(ns) = netns {
            enter_netns(&ns);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(bind).await.expect("bind");
            atx.send(l.local_addr().expect("addr")).expect("send");
            serve_with(l, reg, quick(), async {
                let _ = srx.await;
            })
            .await
            .expect("serve");
        });
    });
    (arx.recv().expect("addr"), stx, h)
}

fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

fn opts() -> LoginOptions {
    LoginOptions::new("iqn.2026-12.test:initiator", Some(IQN)).linux_profile()
}

#[test]
fn an_initiator_that_does_not_answer_pings_keeps_its_session_while_tcp_is_alive() {
    let dir = tempfile::tempdir().expect("tmp");
    let (reg, stats) = target(&dir);
    let (addr, stop, h) = start("127.0.0.1:0".parse().expect("addr"), None, reg);
    let mut ini = Initiator::connect(addr, &opts()).expect("login");
    assert_eq!(stats.sessions().len(), 1);
    // Several ping rounds go by unanswered (the initiator reads nothing meanwhile).
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        stats.sessions().len(),
        1,
        "session kept although pings went unanswered"
    );
    let mut c = ini.read16(0, 0, 8).expect("read after the silence");
    if c.status == 2 {
        // The first command after login reports the power-on unit attention.
        c = ini.read16(0, 0, 8).expect("read after the unit attention");
    }
    assert_eq!(c.status, 0);
    assert_eq!(c.data.len(), 8 * 512);
    drop(ini);
    let _ = stop.send(());
    h.join().expect("server thread");
}

fn is_root() -> bool {
    isboot::sys::is_root()
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn a_peer_that_vanishes_from_the_network_is_dropped() {
    if !is_root() {
        println!("SKIPPED: needs root to create network namespaces (CI runs as root)");
        return;
    }
    let id = std::process::id() % 100_000;
    let (s, c) = (format!("isbl-{id}-s"), format!("isbl-{id}-c"));
    let _ns = Namespaces(vec![s.clone(), c.clone()]);
    let (vs, vc) = (format!("lvs{id}"), format!("lvc{id}"));
    ip(&["netns", "add", &s]);
    ip(&["netns", "add", &c]);
    ip(&[
        "link", "add", &vs, "netns", &s, "type", "veth", "peer", "name", &vc, "netns", &c,
    ]);
    ip(&["-n", &s, "addr", "add", "10.79.0.1/24", "dev", &vs]);
    ip(&["-n", &c, "addr", "add", "10.79.0.2/24", "dev", &vc]);
    ip(&["-n", &s, "link", "set", &vs, "up"]);
    ip(&["-n", &c, "link", "set", &vc, "up"]);

    let dir = tempfile::tempdir().expect("tmp");
    let (reg, stats) = target(&dir);
    let (addr, stop, h) = start(
        "10.79.0.1:3260".parse().expect("addr"),
        Some(s.clone()),
        reg,
    );
    let cns = c.clone();
    // Log in from the client namespace and keep the connection open (never read again).
    let ini = std::thread::spawn(move || {
        enter_netns(&cns);
        Initiator::connect(addr, &opts()).expect("login")
    })
    .join()
    .expect("client thread");
    assert_eq!(stats.sessions().len(), 1);
    // The client vanishes: its link goes down, nothing it receives is acknowledged.
    ip(&["-n", &c, "link", "set", &vc, "down"]);
    let t0 = Instant::now();
    while !stats.sessions().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the session of a vanished peer lingers"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "vanished peer dropped after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    drop(ini);
    let _ = stop.send(());
    h.join().expect("server thread");
}
