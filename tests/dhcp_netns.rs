//! DHCP in network namespaces the tests create: dhclient, scripted PXE/iPXE clients, a relay,
//! and proxy mode beside dnsmasq. Needs root (CI runs as root); otherwise prints SKIPPED.
//!
//! Each test builds its own namespaces and veth pairs with unique names and deletes them in
//! `Drop`, so a failing assertion still cleans up. The isboot DHCP server runs in-process on a
//! thread that has `setns`'d into the server namespace.
// The test harness enters network namespaces (setns) and names threads (gettid): the crate denies unsafe code elsewhere.
#![allow(unsafe_code)]

mod fixture;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use fixture::netns::{
    Firmware, Netns, boot_msg, client_socket, enter_netns, in_ns, is_root, must as run,
};
use isboot::dhcp::{
    ClientDirectory, DhcpClient, DhcpConfig, DhcpHooks, DhcpMode, MacAddr, RelayPool,
};
use isboot::service::dhcp::run_dhcp;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const WS1_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x01]);
const WS1_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const WS2_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x02]);
const UNKNOWN_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x99]);

macro_rules! require_root {
    () => {
        if !is_root() {
            println!("SKIPPED: needs root to create network namespaces (CI runs as root)");
            return;
        }
    };
}

/// Namespaces, links and processes of one test; all removed on drop.
struct Lab {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    /// Dropped after the children are stopped.
    net: Netns,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            children: Vec::new(),
            dir: tempfile::tempdir().expect("tmp"),
            net: Netns::new("isbt"),
        }
    }
    fn ns(&mut self, role: &str) -> String {
        self.net.ns(role)
    }
    /// A veth pair `<a_if>` in `a`, `<b_if>` in `b`, both up.
    fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        run(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        run(&["ip", "-n", a, "link", "set", a_if, "up"]);
        run(&["ip", "-n", b, "link", "set", b_if, "up"]);
    }
    fn ifname(&self, tag: &str) -> String {
        self.net.ifname(tag)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Is something listening on UDP `port` in the netns of /proc/<pid>/task/<tid>?
fn udp_listening(proc_net_udp: &Path, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    std::fs::read_to_string(proc_net_udp)
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").contains(&want))
            })
        })
        .unwrap_or(false)
}

fn wait_listening(proc_net_udp: &Path, port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while !udp_listening(proc_net_udp, port) {
        assert!(Instant::now() < until, "nothing listening on UDP {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Registry(Vec<(MacAddr, DhcpClient)>);
impl ClientDirectory for Registry {
    fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
        self.0
            .iter()
            .find(|(m, _)| *m == mac)
            .map(|(_, c)| c.clone())
    }
    fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.0
            .iter()
            .find(|(_, c)| c.ip == Some(ip))
            .map(|(m, _)| *m)
    }
}

fn registry() -> Arc<Registry> {
    Arc::new(Registry(vec![
        (
            WS1_MAC,
            DhcpClient {
                name: "ws1".into(),
                ip: Some(WS1_IP),
                target_iqn: "iqn.2026-11.lab:ws1".into(),
                initiator_iqn: Some("iqn.2026-11.lab:initiator-ws1".into()),
                root_path: None,
                san_filename: None,
                boot_script: None,
                chap: None,
            },
        ),
        (
            WS2_MAC,
            DhcpClient {
                name: "ws2".into(),
                ip: None,
                target_iqn: "iqn.2026-11.lab:ws2".into(),
                initiator_iqn: None,
                root_path: None,
                san_filename: None,
                boot_script: None,
                chap: None,
            },
        ),
    ]))
}

/// The isboot DHCP server running in a namespace; stopped (and joined) on drop.
struct DhcpServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DhcpServerThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_isboot(ns: &str, cfg: DhcpConfig, lease_file: Option<PathBuf>) -> DhcpServerThread {
    let (keep, watch) = tokio::sync::watch::channel(cfg);
    let t = start_isboot_watched(ns, watch, lease_file);
    drop(keep); // no updates: the server keeps its configuration
    t
}

fn start_isboot_watched(
    ns: &str,
    watch: tokio::sync::watch::Receiver<DhcpConfig>,
    lease_file: Option<PathBuf>,
) -> DhcpServerThread {
    start_isboot_with(ns, watch, lease_file, false)
}

/// Drop CAP_NET_ADMIN from the calling thread's effective and permitted sets (capabilities
/// belong to threads): what the packaged service runs without.
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with a version-3 header fills two Data structs, which `d` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    d[0].effective &= !(1 << CAP_NET_ADMIN);
    d[0].permitted &= !(1 << CAP_NET_ADMIN);
    // SAFETY: capset reads the header and two Data structs; pid 0 is this thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    assert_eq!(
        eff & (1 << CAP_NET_ADMIN),
        0,
        "CAP_NET_ADMIN still effective"
    );
}

/// Destination MACs of the frames to UDP port 68 that reach `ifname` in `ns` while `f` runs
/// (an AF_PACKET capture in a thread inside the namespace).
fn frames_to_port_68<T>(ns: &str, ifname: &str, f: impl FnOnce() -> T) -> (T, Vec<[u8; 6]>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const ETH_P_ALL: u16 = 0x0003;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ns, ifname, stop2) = (ns.to_string(), ifname.to_string(), stop.clone());
    let capture = std::thread::spawn(move || {
        enter_netns(&ns);
        // SAFETY: socket(2) with constant arguments, checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor nothing else owns.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        at.sll_family = libc::AF_PACKET as u16;
        at.sll_protocol = ETH_P_ALL.to_be();
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a valid NUL-terminated name.
        at.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        // SAFETY: `at` lives across the call; its size is passed.
        let rc = unsafe {
            libc::bind(
                raw,
                (&at as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval, which lives across the call.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        ready_tx.send(()).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::Relaxed) {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let frame = &buf[..n];
            // Ethernet II, IPv4, UDP to port 68.
            if n < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
                continue;
            }
            let udp = 14 + usize::from(frame[14] & 0x0f) * 4;
            if frame.get(udp + 2..udp + 4) == Some(&[0, 68][..]) {
                seen.push(<[u8; 6]>::try_from(&frame[..6]).unwrap());
            }
        }
        seen
    });
    ready_rx.recv().expect("capture ready");
    let out = f();
    stop.store(true, Ordering::Relaxed);
    (out, capture.join().expect("capture"))
}

fn start_isboot_with(
    ns: &str,
    watch: tokio::sync::watch::Receiver<DhcpConfig>,
    lease_file: Option<PathBuf>,
    without_net_admin: bool,
) -> DhcpServerThread {
    let cfg = watch.borrow().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (ttx, trx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let mode = cfg.mode;
    drop(cfg);
    let thread = std::thread::spawn(move || {
        enter_netns(&ns);
        if without_net_admin {
            drop_net_admin();
        }
        // SAFETY: gettid has no preconditions.
        ttx.send(unsafe { libc::gettid() }).expect("tid");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            isboot::service::dhcp::run_dhcp_watched(
                watch,
                lease_file,
                registry(),
                DhcpHooks::default(),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("run_dhcp");
        });
    });
    let tid = trx.recv().expect("tid");
    let net_udp = PathBuf::from(format!("/proc/{}/task/{tid}/net/udp", std::process::id()));
    wait_listening(&net_udp, 67);
    if mode == DhcpMode::Proxy {
        wait_listening(&net_udp, 4011);
    }
    DhcpServerThread {
        stop: Some(tx),
        thread: Some(thread),
    }
}

fn full_config(ifname: &str) -> DhcpConfig {
    let mut c = DhcpConfig::new(ifname, SERVER_IP, DhcpMode::Full);
    c.range = Some("10.77.0.100-10.77.0.120".parse().expect("range"));
    c.router = Some(SERVER_IP);
    c.dns = vec![SERVER_IP];
    c.lease_time = 600;
    c.relay_pools.push(RelayPool {
        range: "10.88.0.100-10.88.0.120".parse().expect("range"),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(Ipv4Addr::new(10, 88, 0, 1)),
        dns: vec![],
    });
    c
}

/// Server namespace `s` with `vs<id>` = 10.77.0.1/24, client namespace `c` with `vc<id>`
/// (no address, MAC as given).
fn two_namespaces(lab: &mut Lab, client_mac: MacAddr) -> (String, String, String, String) {
    let s = lab.ns("s");
    let c = lab.ns("c");
    let (vs, vc) = (lab.ifname("vs"), lab.ifname("vc"));
    lab.veth(&s, &vs, &c, &vc);
    run(&["ip", "-n", &s, "addr", "add", "10.77.0.1/24", "dev", &vs]);
    run(&[
        "ip",
        "-n",
        &c,
        "link",
        "set",
        &vc,
        "address",
        &client_mac.to_string(),
    ]);
    (s, c, vs, vc)
}

// ------------------------------------------------------------------ dhclient

/// Run dhclient once in `ns` on `ifname`; returns the environment of its BOUND hook, or None
/// when it gave up.
fn dhclient(lab: &mut Lab, ns: &str, ifname: &str, timeout_s: u32) -> Option<String> {
    let tag = lab.children.len();
    let dump = lab.path(&format!("dhclient{tag}.env"));
    let script = lab.path(&format!("dhclient{tag}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep '^new_' >> {d}\necho \"reason=$reason\" >> {d}\nexit 0\n",
            d = dump.display()
        ),
    )
    .expect("script");
    run(&["chmod", "+x", script.to_str().expect("utf8")]);
    let conf = lab.path(&format!("dhclient{tag}.conf"));
    std::fs::write(
        &conf,
        format!("timeout {timeout_s};\nretry 1;\ninitial-interval 1;\nrequest subnet-mask, routers, domain-name-servers, host-name, root-path;\n"),
    )
    .expect("conf");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "dhclient", "-d", "-1", "-v"])
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(lab.path(&format!("dhclient{tag}.leases")))
        .arg("-pf")
        .arg(lab.path(&format!("dhclient{tag}.pid")))
        .arg("-sf")
        .arg(&script)
        .arg(ifname)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dhclient");
    lab.children.push(child);
    let until = Instant::now() + Duration::from_secs(u64::from(timeout_s) + 15);
    loop {
        let text = std::fs::read_to_string(&dump).unwrap_or_default();
        if text.contains("reason=BOUND") {
            return Some(text);
        }
        let exited = lab
            .children
            .last_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .is_some();
        if exited || Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn env_value(env: &str, key: &str) -> Option<String> {
    env.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('\'').to_string())
    })
}

#[test]
fn dhclient_known_mac_gets_reserved_address_and_options() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    let leases = lab.path("leases.json");
    let _srv = start_isboot(&s, full_config(&vs), Some(leases.clone()));
    let env = dhclient(&mut lab, &c, &vc, 20).expect("dhclient got a lease");
    assert_eq!(
        env_value(&env, "new_ip_address").as_deref(),
        Some("10.77.0.10"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_subnet_mask").as_deref(),
        Some("255.255.255.0"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_routers").as_deref(),
        Some("10.77.0.1"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_domain_name_servers").as_deref(),
        Some("10.77.0.1"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_host_name").as_deref(),
        Some("ws1"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_root_path").as_deref(),
        Some("iscsi:10.77.0.1::::iqn.2026-11.lab:ws1"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_dhcp_server_identifier").as_deref(),
        Some("10.77.0.1"),
        "{env}"
    );
    assert!(
        env_value(&env, "new_filename").is_none(),
        "no boot file for the OS: {env}"
    );
    let saved = std::fs::read_to_string(&leases).expect("lease file written");
    assert!(
        saved.contains("52:54:00:77:00:01") && saved.contains("10.77.0.10"),
        "{saved}"
    );
}

/// dhclient does not set the broadcast flag, so its replies are unicast to its MAC and the
/// address it is being given (RFC 2131 4.1). The server sends them on the link layer
/// (`AF_PACKET`, `CAP_NET_RAW`), so it runs without `CAP_NET_ADMIN` (the packaged service
/// does) and adds no ARP entry.
#[test]
fn replies_to_a_client_without_an_address_are_unicast_without_cap_net_admin() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    let (_keep, watch) = tokio::sync::watch::channel(full_config(&vs));
    let _srv = start_isboot_with(&s, watch, None, true);
    let (env, frames) = frames_to_port_68(&c, &vc, || dhclient(&mut lab, &c, &vc, 20));
    let env = env.expect("dhclient got a lease from a server without CAP_NET_ADMIN");
    assert_eq!(
        env_value(&env, "new_ip_address").as_deref(),
        Some("10.77.0.10"),
        "{env}"
    );
    // The offer and the ack, both to the client's MAC, none broadcast.
    assert!(
        frames.len() >= 2,
        "replies seen on the client's link: {frames:?}"
    );
    assert!(
        frames.iter().all(|m| *m == WS1_MAC.0),
        "a reply was not unicast to the client's MAC: {frames:?}"
    );
    let neigh = Command::new("ip")
        .args(["-n", &s, "neigh", "show", "10.77.0.10"])
        .output()
        .expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        !neigh.contains("52:54:00:77:00:01"),
        "the server added an ARP entry: {neigh}"
    );
}

#[test]
fn dhclient_dynamic_client_gets_a_pool_address() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS2_MAC);
    let _srv = start_isboot(&s, full_config(&vs), None);
    let env = dhclient(&mut lab, &c, &vc, 20).expect("dhclient got a lease");
    assert_eq!(
        env_value(&env, "new_ip_address").as_deref(),
        Some("10.77.0.100"),
        "{env}"
    );
}

#[test]
fn dhclient_unknown_mac_gets_nothing() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, UNKNOWN_MAC);
    let _srv = start_isboot(&s, full_config(&vs), None);
    assert!(
        dhclient(&mut lab, &c, &vc, 5).is_none(),
        "an unknown MAC must not get a lease"
    );
}

// ------------------------------------------------------------------ scripted clients

/// Send `msg` to `to` and collect replies with its xid for `wait` (or until `enough` replies).
fn exchange(
    sock: &UdpSocket,
    msg: &Message,
    to: SocketAddrV4,
    wait: Duration,
    enough: usize,
) -> Vec<(SocketAddr, Message)> {
    sock.send_to(&msg.to_vec().expect("encode"), to)
        .expect("send");
    let mut got = Vec::new();
    let until = Instant::now() + wait;
    let mut buf = [0u8; 1600];
    while Instant::now() < until && got.len() < enough {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && let Ok(m) = Message::from_bytes(&buf[..n])
            && m.xid() == msg.xid()
            && m.opcode() == dhcproto::v4::Opcode::BootReply
        {
            got.push((from, m));
        }
    }
    got
}

fn opt_bytes(m: &Message, code: u8) -> Option<Vec<u8>> {
    let o = m.opts().get(OptionCode::from(code))?;
    let mut v = Vec::new();
    o.encode(&mut dhcproto::Encoder::new(&mut v))
        .expect("encode");
    Some(v[2..].to_vec())
}

fn fname(m: &Message) -> String {
    m.fname()
        .map(|f| {
            String::from_utf8_lossy(f)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default()
}

const BCAST67: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

#[test]
fn scripted_pxe_stage1_and_ipxe_stage2() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    let _srv = start_isboot(&s, full_config(&vs), None);
    in_ns(&c, move || {
        let sock = client_socket(&vc, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        // Malformed datagrams first: the server must shrug them off and keep answering.
        let junk: [&[u8]; 3] = [b"\x01\x01\x06", &[0u8; 300], &[0xffu8; 1400]];
        for j in junk {
            sock.send_to(j, BCAST67).expect("send junk");
        }
        for (arch, file) in [(0u16, "undionly.kpxe"), (7, "ipxe.efi")] {
            let xid = 0x5000 + u32::from(arch);
            let d = boot_msg(
                WS1_MAC,
                xid,
                MessageType::Discover,
                Firmware::Pxe(arch),
                vec![],
            );
            let r = exchange(&sock, &d, BCAST67, Duration::from_secs(5), 1);
            let (_, offer) = r.first().unwrap_or_else(|| panic!("arch {arch}: no OFFER"));
            assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
            assert_eq!(offer.yiaddr(), WS1_IP);
            assert_eq!(offer.siaddr(), SERVER_IP, "next-server");
            assert_eq!(fname(offer), file, "arch {arch}");
            assert_eq!(opt_bytes(offer, 67), Some(file.as_bytes().to_vec()));
            assert_eq!(opt_bytes(offer, 66), Some(b"10.77.0.1".to_vec()));
            let req = boot_msg(
                WS1_MAC,
                xid,
                MessageType::Request,
                Firmware::Pxe(arch),
                vec![
                    DhcpOption::ServerIdentifier(SERVER_IP),
                    DhcpOption::RequestedIpAddress(WS1_IP),
                ],
            );
            let r = exchange(&sock, &req, BCAST67, Duration::from_secs(5), 1);
            let (_, ack) = r.first().unwrap_or_else(|| panic!("arch {arch}: no ACK"));
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            assert_eq!(ack.yiaddr(), WS1_IP);
            assert_eq!(fname(ack), file);
        }
        // Stage 2: iPXE.
        for arch in [0u16, 7] {
            let xid = 0x6000 + u32::from(arch);
            let d = boot_msg(
                WS1_MAC,
                xid,
                MessageType::Discover,
                Firmware::Ipxe(arch),
                vec![],
            );
            let r = exchange(&sock, &d, BCAST67, Duration::from_secs(5), 1);
            let (_, offer) = r.first().expect("iPXE OFFER");
            let req = boot_msg(
                WS1_MAC,
                xid,
                MessageType::Request,
                Firmware::Ipxe(arch),
                vec![
                    DhcpOption::ServerIdentifier(SERVER_IP),
                    DhcpOption::RequestedIpAddress(WS1_IP),
                ],
            );
            let r = exchange(&sock, &req, BCAST67, Duration::from_secs(5), 1);
            let (_, ack) = r.first().expect("iPXE ACK");
            for m in [offer, ack] {
                assert_eq!(m.yiaddr(), WS1_IP);
                assert_eq!(
                    opt_bytes(m, 17),
                    Some(b"iscsi:10.77.0.1::::iqn.2026-11.lab:ws1".to_vec())
                );
                assert_eq!(
                    opt_bytes(m, 203),
                    Some(b"iqn.2026-11.lab:initiator-ws1".to_vec())
                );
                assert_eq!(opt_bytes(m, 12), Some(b"ws1".to_vec()));
                assert_eq!(opt_bytes(m, 175), Some(vec![176, 1, 1]));
                assert_eq!(fname(m), "", "no boot file for iPXE");
                assert!(opt_bytes(m, 67).is_none());
            }
        }
        // An unknown MAC's PXE ROM gets nothing.
        let d = boot_msg(
            UNKNOWN_MAC,
            0x7000,
            MessageType::Discover,
            Firmware::Pxe(7),
            vec![],
        );
        assert!(exchange(&sock, &d, BCAST67, Duration::from_secs(2), 1).is_empty());
    });
}

#[test]
fn only_the_configured_interface_is_answered() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    // A second link into the server namespace, with an address in the same subnet family, that
    // nobody named in the config.
    let c2 = lab.ns("c2");
    let (vs2, vc2) = (lab.ifname("ws"), lab.ifname("wc"));
    lab.veth(&s, &vs2, &c2, &vc2);
    run(&["ip", "-n", &s, "addr", "add", "10.78.0.1/24", "dev", &vs2]);
    run(&[
        "ip",
        "-n",
        &c2,
        "link",
        "set",
        &vc2,
        "address",
        &WS1_MAC.to_string(),
    ]);
    let _srv = start_isboot(&s, full_config(&vs), None);
    let d = boot_msg(
        WS1_MAC,
        0xb001,
        MessageType::Discover,
        Firmware::Pxe(0),
        vec![],
    );
    let d2 = d.clone();
    let other = in_ns(&c2, move || {
        let sock = client_socket(&vc2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        exchange(&sock, &d2, BCAST67, Duration::from_secs(3), 1)
    });
    assert!(other.is_empty(), "answered on an interface nobody named");
    let mine = in_ns(&c, move || {
        let sock = client_socket(&vc, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        exchange(&sock, &d, BCAST67, Duration::from_secs(5), 1)
    });
    assert_eq!(mine.len(), 1, "the configured interface is answered");
}

#[test]
fn floods_and_junk_do_not_stall_the_server() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    let _srv = start_isboot(&s, full_config(&vs), None);
    in_ns(&c, move || {
        let sock = client_socket(&vc, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        let flood = boot_msg(
            WS2_MAC,
            0xf100,
            MessageType::Discover,
            Firmware::Pxe(0),
            vec![],
        )
        .to_vec()
        .expect("encode");
        let mut truncated = flood.clone();
        truncated.truncate(250);
        let mut no_cookie = flood.clone();
        no_cookie[236] = 0;
        let mut huge55 = flood[..240].to_vec();
        huge55.extend_from_slice(&[53, 1, 1]);
        for _ in 0..5 {
            huge55.extend_from_slice(&[55, 255]);
            huge55.extend(std::iter::repeat_n(1u8, 255));
        }
        for i in 0..3000 {
            let p: &[u8] = match i % 4 {
                0 => &flood,
                1 => &truncated,
                2 => &no_cookie,
                _ => &huge55,
            };
            let _ = sock.send_to(p, BCAST67);
        }
        // The flooding MAC is cut off; another client is still served. Its first DISCOVER may
        // be dropped by a full socket queue while the server works through the flood, so it
        // retransmits, as DHCP clients do.
        let d = boot_msg(
            WS1_MAC,
            0xf200,
            MessageType::Discover,
            Firmware::Pxe(0),
            vec![],
        );
        let offer = (0..5)
            .find_map(|_| {
                exchange(&sock, &d, BCAST67, Duration::from_secs(2), 1)
                    .into_iter()
                    .next()
            })
            .map(|(_, m)| m)
            .expect("served after the flood");
        assert_eq!(offer.yiaddr(), WS1_IP);
    });
}

#[test]
fn relay_requests_get_the_relay_pool() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, MacAddr([0x52, 0x54, 0, 0x88, 0, 1]));
    // The client namespace plays the relay agent on 10.88.0.1; the server reaches it on-link.
    run(&["ip", "-n", &c, "addr", "add", "10.88.0.1/24", "dev", &vc]);
    run(&["ip", "-n", &c, "addr", "add", "10.77.0.2/24", "dev", &vc]);
    run(&["ip", "-n", &s, "route", "add", "10.88.0.0/24", "dev", &vs]);
    let _srv = start_isboot(&s, full_config(&vs), None);
    in_ns(&c, move || {
        let sock = client_socket(&vc, SocketAddrV4::new(Ipv4Addr::new(10, 88, 0, 1), 67));
        let to = SocketAddrV4::new(SERVER_IP, 67);
        for (mac, expect_ip) in [
            (WS2_MAC, Ipv4Addr::new(10, 88, 0, 100)),
            (WS1_MAC, Ipv4Addr::new(10, 88, 0, 101)),
        ] {
            let xid = 0x8800 + u32::from(mac.0[5]);
            let mut d = boot_msg(mac, xid, MessageType::Discover, Firmware::Pxe(0), vec![]);
            d.set_giaddr(Ipv4Addr::new(10, 88, 0, 1))
                .set_hops(1)
                .set_flags(Flags::default());
            let r = exchange(&sock, &d, to, Duration::from_secs(5), 1);
            let (from, offer) = r.first().expect("OFFER relayed back to the relay");
            assert_eq!(*from, SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 67)));
            assert_eq!(offer.yiaddr(), expect_ip, "address from the relay's pool");
            assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 88, 0, 1));
            assert_eq!(
                opt_bytes(offer, 3),
                Some(vec![10, 88, 0, 1]),
                "relay pool's router"
            );
            assert_eq!(opt_bytes(offer, 1), Some(vec![255, 255, 255, 0]));
            let mut req = boot_msg(
                mac,
                xid,
                MessageType::Request,
                Firmware::Pxe(0),
                vec![
                    DhcpOption::ServerIdentifier(SERVER_IP),
                    DhcpOption::RequestedIpAddress(expect_ip),
                ],
            );
            req.set_giaddr(Ipv4Addr::new(10, 88, 0, 1))
                .set_hops(1)
                .set_flags(Flags::default());
            let r = exchange(&sock, &req, to, Duration::from_secs(5), 1);
            let (_, ack) = r.first().expect("ACK via relay");
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            assert_eq!(ack.yiaddr(), expect_ip);
        }
        // A relay on a network without a pool: nothing.
        let mut d = boot_msg(
            WS1_MAC,
            0x8900,
            MessageType::Discover,
            Firmware::Pxe(0),
            vec![],
        );
        d.set_giaddr(Ipv4Addr::new(10, 99, 0, 1));
        assert!(exchange(&sock, &d, to, Duration::from_secs(2), 1).is_empty());
    });
}

#[test]
fn configuration_updates_apply_without_restart() {
    require_root!();
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    let (tx, rx) = tokio::sync::watch::channel(full_config(&vs));
    let _srv = start_isboot_watched(&s, rx, None);
    let ask = move |xid: u32| {
        let vc = vc.clone();
        in_ns(&c, move || {
            let sock = client_socket(&vc, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
            let d = boot_msg(
                WS1_MAC,
                xid,
                MessageType::Discover,
                Firmware::Pxe(0),
                vec![],
            );
            exchange(&sock, &d, BCAST67, Duration::from_secs(2), 1)
                .into_iter()
                .next()
                .map(|(_, m)| m)
        })
    };
    assert_eq!(fname(&ask(0xc001).expect("offer")), "undionly.kpxe");
    // New BIOS boot file: applies to the next request.
    let mut cfg = full_config(&vs);
    cfg.bootfiles.bios = "undionly.kkpxe".into();
    tx.send(cfg.clone()).expect("update");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        // A request racing the rebind may be lost; clients retransmit, so does this one.
        if ask(0xc002).is_some_and(|m| fname(&m) == "undionly.kkpxe") {
            break;
        }
        assert!(Instant::now() < until, "update not applied");
    }
    // Switch to proxy mode: port 4011 gets bound, offers carry no address.
    cfg.mode = DhcpMode::Proxy;
    tx.send(cfg.clone()).expect("update");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = ask(0xc003)
            && m.yiaddr() == Ipv4Addr::UNSPECIFIED
        {
            assert_eq!(fname(&m), "undionly.kkpxe");
            break;
        }
        assert!(Instant::now() < until, "mode change not applied");
    }
    // An invalid update is ignored; the server keeps answering.
    cfg.interface = String::new();
    tx.send(cfg).expect("update");
    assert!(ask(0xc004).is_some());
}

// ------------------------------------------------------------------ proxy beside dnsmasq

/// dnsmasq as the network's address server (10.77.0.150-160) on `iface` in `ns`; returns once
/// it listens on port 67.
fn spawn_dnsmasq(lab: &mut Lab, ns: &str, iface: &str) {
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
        ])
        .arg(format!("--interface={iface}"))
        .arg("--dhcp-range=10.77.0.150,10.77.0.160,255.255.255.0,10m")
        .arg(format!(
            "--dhcp-leasefile={}",
            lab.path("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", lab.path("dnsmasq.pid").display()))
        .arg("--dhcp-authoritative")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    let dnsmasq_pid = dnsmasq.id();
    lab.children.push(dnsmasq);
    wait_listening(Path::new(&format!("/proc/{dnsmasq_pid}/net/udp")), 67);
}

fn have_dnsmasq() -> bool {
    Command::new("sh")
        .args(["-c", "command -v dnsmasq"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn proxy_mode_beside_dnsmasq_never_offers_an_address() {
    require_root!();
    if Command::new("sh")
        .args(["-c", "command -v dnsmasq"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        println!("SKIPPED: dnsmasq not installed (apt-get install -y dnsmasq-base)");
        return;
    }
    let mut lab = Lab::new();
    // A switch namespace with a bridge; isboot, dnsmasq and the client each on a port.
    let sw = lab.ns("w");
    let s = lab.ns("s");
    let d = lab.ns("d");
    let c = lab.ns("c");
    run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
    run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
    let mut ends = Vec::new();
    for (tag, ns) in [("ps", &s), ("pd", &d), ("pc", &c)] {
        let inner = lab.ifname(tag);
        let outer = lab.ifname(&format!("b{tag}"));
        lab.veth(ns, &inner, &sw, &outer);
        run(&["ip", "-n", &sw, "link", "set", &outer, "master", "br0"]);
        ends.push(inner);
    }
    let (ps, pd, pc) = (ends[0].clone(), ends[1].clone(), ends[2].clone());
    run(&["ip", "-n", &s, "addr", "add", "10.77.0.1/24", "dev", &ps]);
    run(&["ip", "-n", &d, "addr", "add", "10.77.0.2/24", "dev", &pd]);
    run(&[
        "ip",
        "-n",
        &c,
        "link",
        "set",
        &pc,
        "address",
        &WS1_MAC.to_string(),
    ]);
    spawn_dnsmasq(&mut lab, &d, &pd);
    let mut cfg = DhcpConfig::new(&ps, SERVER_IP, DhcpMode::Proxy);
    cfg.bootfiles.uefi = "snponly.efi".into();
    let _srv = start_isboot(&s, cfg, None);
    let pc2 = pc.clone();
    let leased = in_ns(&c, move || {
        let sock = client_socket(&pc2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        // Stage 1, UEFI PXE ROM: an address offer from dnsmasq, a boot offer from isboot.
        let disc = boot_msg(
            WS1_MAC,
            0x9001,
            MessageType::Discover,
            Firmware::Pxe(7),
            vec![],
        );
        let r = exchange(&sock, &disc, BCAST67, Duration::from_secs(6), 2);
        let from = |ip: Ipv4Addr| {
            r.iter()
                .find(|(f, _)| f.ip() == std::net::IpAddr::V4(ip))
                .map(|(_, m)| m.clone())
        };
        let addr_offer = from(Ipv4Addr::new(10, 77, 0, 2)).expect("dnsmasq offers an address");
        let boot_offer = from(SERVER_IP).expect("isboot sends a proxy offer");
        let yiaddr = addr_offer.yiaddr();
        assert!(
            (150..=160).contains(&yiaddr.octets()[3]),
            "dnsmasq pool: {yiaddr}"
        );
        assert_eq!(boot_offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            boot_offer.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "proxy never offers an address"
        );
        assert!(opt_bytes(&boot_offer, 51).is_none() && opt_bytes(&boot_offer, 1).is_none());
        assert_eq!(opt_bytes(&boot_offer, 60), Some(b"PXEClient".to_vec()));
        assert_eq!(fname(&boot_offer), "snponly.efi");
        assert_eq!(boot_offer.siaddr(), SERVER_IP);
        // Take dnsmasq's address; isboot stays silent on the REQUEST.
        let req = boot_msg(
            WS1_MAC,
            0x9001,
            MessageType::Request,
            Firmware::Pxe(7),
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 0, 2)),
                DhcpOption::RequestedIpAddress(yiaddr),
            ],
        );
        let r = exchange(&sock, &req, BCAST67, Duration::from_secs(3), 3);
        assert!(
            r.iter()
                .all(|(f, _)| f.ip() != std::net::IpAddr::V4(SERVER_IP)),
            "isboot answered a REQUEST for dnsmasq"
        );
        let (_, ack) = r.first().expect("dnsmasq ACK");
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        yiaddr
    });
    // The client configures its address and asks the proxy on port 4011, as PXE/iPXE do.
    run(&[
        "ip",
        "-n",
        &c,
        "addr",
        "add",
        &format!("{leased}/24"),
        "dev",
        &pc,
    ]);
    in_ns(&c, move || {
        let sock = client_socket(&pc, SocketAddrV4::new(leased, 68));
        let to4011 = SocketAddrV4::new(SERVER_IP, 4011);
        let mut r4011 = boot_msg(
            WS1_MAC,
            0x9002,
            MessageType::Request,
            Firmware::Pxe(7),
            vec![],
        );
        r4011.set_ciaddr(leased).set_flags(Flags::default());
        let r = exchange(&sock, &r4011, to4011, Duration::from_secs(5), 1);
        let (from, ack) = r.first().expect("proxy ACK from port 4011");
        assert_eq!(*from, SocketAddr::V4(to4011));
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(fname(ack), "snponly.efi");
        // Stage 2: iPXE's proxy request gets the SAN boot information, still no address.
        let mut ipxe = boot_msg(
            WS1_MAC,
            0x9003,
            MessageType::Request,
            Firmware::Ipxe(7),
            vec![],
        );
        ipxe.set_ciaddr(leased).set_flags(Flags::default());
        let r = exchange(&sock, &ipxe, to4011, Duration::from_secs(5), 1);
        let (_, ack) = r.first().expect("iPXE proxy ACK");
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            opt_bytes(ack, 17),
            Some(b"iscsi:10.77.0.1::::iqn.2026-11.lab:ws1".to_vec())
        );
        assert_eq!(
            opt_bytes(ack, 203),
            Some(b"iqn.2026-11.lab:initiator-ws1".to_vec())
        );
        assert_eq!(
            fname(ack),
            "isboot-sanboot.ipxe",
            "the empty script iPXE needs beside root-path"
        );
        assert_eq!(ack.siaddr(), SERVER_IP);
    });
}

// ------------------------------------------------------------------ IPv6 router advertisements

/// Wait until `ifname` in `ns` has a link-local address that is no longer tentative (DAD).
fn wait_link_local(ns: &str, ifname: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let o = Command::new("ip")
            .args([
                "-n", ns, "-6", "addr", "show", "dev", ifname, "scope", "link",
            ])
            .output()
            .expect("ip");
        let t = String::from_utf8_lossy(&o.stdout);
        if t.contains("fe80::") && !t.contains("tentative") {
            return;
        }
        assert!(
            Instant::now() < until,
            "no usable link-local address on {ifname}: {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The RA service in `ns`, on a thread; stopped on drop.
fn start_ra(ns: &str, cfg: DhcpConfig) -> DhcpServerThread {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        enter_netns(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (_keep, watch) = tokio::sync::watch::channel(cfg);
        rt.block_on(isboot::service::ra::run_ra_watched(watch, async {
            let _ = rx.await;
        }));
    });
    DhcpServerThread {
        stop: Some(tx),
        thread: Some(thread),
    }
}

/// rdisc6 (ndisc6), a real router-discovery client: solicits on `ifname` in `ns` and prints
/// the first advertisement it accepts (it drops any whose hop limit is not 255).
fn rdisc6(ns: &str, ifname: &str) -> Option<String> {
    let o = Command::new("ip")
        .args([
            "netns", "exec", ns, "rdisc6", "-1", "-n", "-r", "3", "-w", "1000", ifname,
        ])
        .output()
        .expect("rdisc6");
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn have_rdisc6() -> bool {
    Command::new("rdisc6")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Server and client namespaces on one veth link, both link-local addresses usable; None (and
/// SKIPPED) without rdisc6.
fn ipv6_link() -> Option<(Lab, String, String, String, String)> {
    if !have_rdisc6() {
        println!("SKIPPED: rdisc6 is not installed (apt-get install ndisc6)");
        return None;
    }
    let mut lab = Lab::new();
    let (s, c, vs, vc) = two_namespaces(&mut lab, WS1_MAC);
    wait_link_local(&s, &vs);
    wait_link_local(&c, &vc);
    Some((lab, s, c, vs, vc))
}

#[test]
fn full_mode_answers_router_solicitations_with_no_router_no_prefix() {
    require_root!();
    let Some((_lab, s, c, vs, vc)) = ipv6_link() else {
        return;
    };
    let cfg = full_config(&vs);
    assert!(cfg.router_advertisements(), "on by default in full mode");
    let _ra = start_ra(&s, cfg);
    let out = rdisc6(&c, &vc).expect("an RA in answer to the solicitation");
    let field = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            .unwrap_or_else(|| panic!("no {name:?} in rdisc6 output:\n{out}"))
    };
    assert_eq!(field("Router lifetime"), "0 (0x00000000) seconds", "{out}");
    assert_eq!(field("Stateful address conf."), "No", "{out}");
    assert_eq!(field("Stateful other conf."), "No", "{out}");
    assert!(!out.contains("Prefix"), "no prefix advertised:\n{out}");
    assert!(
        out.contains("from fe80::"),
        "sent from a link-local address:\n{out}"
    );
}

#[test]
fn no_router_advertisements_in_proxy_mode_or_when_turned_off() {
    require_root!();
    let Some((_lab, s, c, vs, vc)) = ipv6_link() else {
        return;
    };
    let proxy = DhcpConfig::new(vs.clone(), SERVER_IP, DhcpMode::Proxy);
    assert!(
        !proxy.router_advertisements(),
        "off by default in proxy mode"
    );
    let mut off = full_config(&vs);
    off.ipv6_ra = Some(false);
    for cfg in [proxy, off] {
        let _ra = start_ra(&s, cfg);
        assert_eq!(rdisc6(&c, &vc), None, "no RA expected");
    }
}

// ------------------------------------------------------------------ QEMU: PXE chain to sanboot

/// DHCP + TFTP (root with the iPXE binaries) on `ifname` in `ns`, and a TCP probe on
/// 10.77.0.1:3260 that reports the text of the first iSCSI Login request it receives (proof
/// that iPXE got the root-path and is sanbooting with option 203's initiator name).
/// Server logs on the test's output when RUST_LOG is set.
fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn start_boot_server(
    ns: &str,
    cfg: DhcpConfig,
    tftp_root: PathBuf,
) -> (DhcpServerThread, std::sync::mpsc::Receiver<String>) {
    init_logs();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (ttx, trx) = std::sync::mpsc::channel();
    let (login_tx, login_rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        enter_netns(&ns);
        // SAFETY: gettid has no preconditions.
        ttx.send(unsafe { libc::gettid() }).expect("tid");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
            let mut s1 = stop_tx.subscribe();
            let mut s2 = stop_tx.subscribe();
            let tftp_sock = isboot::service::tftp::bind_tftp(SocketAddr::from((SERVER_IP, 69)))
                .await
                .expect("tftp bind");
            let tftp = isboot::service::tftp::run_tftp(
                tftp_sock,
                tftp_root,
                Default::default(),
                async move {
                    let _ = s1.recv().await;
                },
            );
            let dhcp = run_dhcp(cfg, None, registry(), DhcpHooks::default(), async move {
                let _ = s2.recv().await;
            });
            let probe = async move {
                let l = tokio::net::TcpListener::bind((SERVER_IP, 3260))
                    .await
                    .expect("probe bind");
                loop {
                    let Ok((mut conn, _)) = l.accept().await else {
                        continue;
                    };
                    let tx = login_tx.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        // BHS (48 bytes) then the data segment of key=value\0 pairs.
                        while buf.len() < 48 + 512 {
                            match tokio::time::timeout(
                                Duration::from_secs(5),
                                conn.read(&mut chunk),
                            )
                            .await
                            {
                                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => break,
                            }
                            if buf.len() >= 48 {
                                let dlen = usize::from(buf[5]) << 16
                                    | usize::from(buf[6]) << 8
                                    | usize::from(buf[7]);
                                if buf.len() >= 48 + dlen {
                                    break;
                                }
                            }
                        }
                        if buf.len() > 48 && buf[0] & 0x3f == 0x03 {
                            let text = String::from_utf8_lossy(&buf[48..]).replace('\0', "\n");
                            let _ = tx.send(text);
                        }
                    });
                }
            };
            let stop = async move {
                let _ = rx.await;
                let _ = stop_tx.send(());
            };
            tokio::select! {
                _ = async { tokio::join!(tftp, dhcp, stop) } => {}
                _ = probe => {}
            }
        });
    });
    let tid = trx.recv().expect("tid");
    let net_udp = PathBuf::from(format!("/proc/{}/task/{tid}/net/udp", std::process::id()));
    wait_listening(&net_udp, 67);
    wait_listening(&net_udp, 69);
    (
        DhcpServerThread {
            stop: Some(tx),
            thread: Some(thread),
        },
        login_rx,
    )
}

fn qemu_lab(lab: &mut Lab) -> Option<(String, String, PathBuf)> {
    if Command::new("sh")
        .args(["-c", "command -v qemu-system-x86_64"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        println!("SKIPPED: qemu-system-x86_64 not installed");
        return None;
    }
    let root = lab.path("tftp");
    let done =
        isboot::tftp::ipxe::populate_root(&root, Path::new(isboot::tftp::ipxe::DEBIAN_IPXE_DIR))
            .expect("populate");
    if ["undionly.kpxe", "ipxe.efi"]
        .iter()
        .any(|f| done.missing.iter().any(|m| m == f))
    {
        println!("SKIPPED: {}", done.advice().unwrap_or_default());
        return None;
    }
    let s = lab.ns("s");
    let tap = lab.ifname("tp");
    run(&["ip", "-n", &s, "tuntap", "add", "dev", &tap, "mode", "tap"]);
    run(&["ip", "-n", &s, "link", "set", &tap, "up"]);
    run(&["ip", "-n", &s, "addr", "add", "10.77.0.1/24", "dev", &tap]);
    Some((s, tap, root))
}

fn qemu(lab: &mut Lab, ns: &str, args: &[String]) {
    let log = std::fs::File::create(lab.path("qemu.log")).expect("log");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", lab.path("serial.log").display()))
        .args(args)
        .stdout(Stdio::from(log.try_clone().expect("dup")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn qemu");
    lab.children.push(child);
}

fn wait_login(lab: &mut Lab, rx: &std::sync::mpsc::Receiver<String>, secs: u64) -> String {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(t) = rx.recv_timeout(Duration::from_millis(500)) {
            return t;
        }
        let exited = lab
            .children
            .last_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if exited.is_some() || Instant::now() > until {
            let log = std::fs::read_to_string(lab.path("qemu.log")).unwrap_or_default();
            let serial = std::fs::read(lab.path("serial.log")).unwrap_or_default();
            let serial = String::from_utf8_lossy(&serial);
            let tail: String = serial
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "no iSCSI login from the VM (qemu exit {exited:?}); qemu log:\n{log}\nserial tail:\n{tail}"
            );
        }
    }
}

/// Wait until the VM's serial console shows `want` (iPXE prints its boot decisions there).
fn serial_shows(lab: &Lab, want: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(lab.path("serial.log")).unwrap_or_default())
                .into_owned();
        if text.contains(want) || Instant::now() > until {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "slow: boots QEMU under TCG (run with --ignored)"]
fn qemu_bios_ipxe_rom_reaches_sanboot() {
    require_root!();
    let mut lab = Lab::new();
    let Some((s, tap, root)) = qemu_lab(&mut lab) else {
        return;
    };
    let (_srv, logins) = start_boot_server(&s, full_config(&tap), root);
    qemu(
        &mut lab,
        &s,
        &[
            "-machine".into(),
            "pc".into(),
            "-boot".into(),
            "n".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("e1000,netdev=n0,mac={}", WS1_MAC),
        ],
    );
    let text = wait_login(&mut lab, &logins, 240);
    assert!(
        text.contains("InitiatorName=iqn.2026-11.lab:initiator-ws1"),
        "{text}"
    );
    assert!(text.contains("TargetName=iqn.2026-11.lab:ws1"), "{text}");
}

#[test]
#[ignore = "slow: boots QEMU under TCG (run with --ignored)"]
fn qemu_uefi_pxe_tftp_ipxe_reaches_sanboot() {
    require_root!();
    let code = Path::new("/usr/share/OVMF/OVMF_CODE.fd");
    let vars = Path::new("/usr/share/OVMF/OVMF_VARS.fd");
    if !code.exists() || !vars.exists() {
        println!("SKIPPED: OVMF not installed (apt-get install -y ovmf)");
        return;
    }
    let mut lab = Lab::new();
    let Some((s, tap, root)) = qemu_lab(&mut lab) else {
        return;
    };
    let my_vars = lab.path("vars.fd");
    std::fs::copy(vars, &my_vars).expect("copy vars");
    // The only iPXE this VM can run is the one served over TFTP under this name.
    std::fs::create_dir_all(root.join("efi")).expect("mkdir");
    std::fs::rename(root.join("ipxe.efi"), root.join("efi/isboot-ipxe.efi")).expect("rename");
    let mut cfg = full_config(&tap);
    cfg.bootfiles.uefi = "efi/isboot-ipxe.efi".into();
    let (_srv, logins) = start_boot_server(&s, cfg, root);
    qemu(
        &mut lab,
        &s,
        &[
            "-machine".into(),
            "q35".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", my_vars.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            // romfile= empty: OVMF's own PXE (stage 1), so the path goes through TFTP.
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,romfile=,mac={}", WS1_MAC),
        ],
    );
    let text = wait_login(&mut lab, &logins, 400);
    assert!(
        text.contains("InitiatorName=iqn.2026-11.lab:initiator-ws1"),
        "{text}"
    );
    assert!(text.contains("TargetName=iqn.2026-11.lab:ws1"), "{text}");
    let serial = serial_shows(&lab, "Root path: iscsi:10.77.0.1::::iqn.2026-11.lab:ws1");
    assert!(
        serial.contains("Root path: iscsi:10.77.0.1::::iqn.2026-11.lab:ws1"),
        "{serial}"
    );
    assert!(
        !serial.contains("Filename:"),
        "no boot file for iPXE in full mode: {serial}"
    );
}

#[test]
#[ignore = "slow: boots QEMU under TCG (run with --ignored)"]
fn qemu_uefi_proxy_mode_beside_dnsmasq_reaches_sanboot() {
    require_root!();
    let code = Path::new("/usr/share/OVMF/OVMF_CODE.fd");
    let vars = Path::new("/usr/share/OVMF/OVMF_VARS.fd");
    if !code.exists() || !vars.exists() || !have_dnsmasq() {
        println!("SKIPPED: needs OVMF and dnsmasq (apt-get install -y ovmf dnsmasq-base)");
        return;
    }
    let mut lab = Lab::new();
    let Some((s, tap, root)) = qemu_lab(&mut lab) else {
        return;
    };
    // Re-plumb: the VM's tap goes on a bridge in a switch namespace, with isboot (proxy) and
    // dnsmasq (addresses) on their own ports.
    run(&["ip", "-n", &s, "link", "del", &tap]);
    let sw = lab.ns("w");
    let d = lab.ns("d");
    run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
    run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
    let (ps, pd) = (lab.ifname("ps"), lab.ifname("pd"));
    for (ns, inner, tag) in [(&s, &ps, "bps"), (&d, &pd, "bpd")] {
        let outer = lab.ifname(tag);
        lab.veth(ns, inner, &sw, &outer);
        run(&["ip", "-n", &sw, "link", "set", &outer, "master", "br0"]);
    }
    let vm_tap = lab.ifname("vt");
    run(&[
        "ip", "-n", &sw, "tuntap", "add", "dev", &vm_tap, "mode", "tap",
    ]);
    run(&["ip", "-n", &sw, "link", "set", &vm_tap, "master", "br0"]);
    run(&["ip", "-n", &sw, "link", "set", &vm_tap, "up"]);
    run(&["ip", "-n", &s, "addr", "add", "10.77.0.1/24", "dev", &ps]);
    run(&["ip", "-n", &d, "addr", "add", "10.77.0.2/24", "dev", &pd]);
    spawn_dnsmasq(&mut lab, &d, &pd);
    let my_vars = lab.path("vars.fd");
    std::fs::copy(vars, &my_vars).expect("copy vars");
    let cfg = DhcpConfig::new(&ps, SERVER_IP, DhcpMode::Proxy);
    let (_srv, logins) = start_boot_server(&s, cfg, root);
    qemu(
        &mut lab,
        &sw,
        &[
            "-machine".into(),
            "q35".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", my_vars.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={vm_tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,romfile=,mac={}", WS1_MAC),
        ],
    );
    let text = wait_login(&mut lab, &logins, 150);
    assert!(
        text.contains("InitiatorName=iqn.2026-11.lab:initiator-ws1"),
        "{text}"
    );
    assert!(text.contains("TargetName=iqn.2026-11.lab:ws1"), "{text}");
    let serial = serial_shows(&lab, "Root path: iscsi:10.77.0.1::::iqn.2026-11.lab:ws1");
    assert!(
        serial.contains("Root path: iscsi:10.77.0.1::::iqn.2026-11.lab:ws1"),
        "{serial}"
    );
    assert!(serial.contains("Filename: isboot-sanboot.ipxe"), "{serial}");
    let leases = std::fs::read_to_string(lab.path("dnsmasq.leases")).unwrap_or_default();
    assert!(
        leases.contains("52:54:00:77:00:01"),
        "the address came from dnsmasq: {leases}"
    );
}
