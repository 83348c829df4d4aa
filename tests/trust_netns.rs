//! Issue 12's hostile suite (SECURITY.md lists the attempts and their answers): a lab LAN in
//! network namespaces this test creates — a bridge in the server's namespace, one veth per
//! host, all deleted on drop — with `isboot serve` answering DHCP on the bridge, two clients A
//! and B logged in from their reserved addresses, an open maintenance target (`image edit`),
//! and a hostile host at another address that tries real initiators (libiscsi's tools and the
//! project's initiator) and spoofed DHCP. Every attempt must get the protocol's refusal; A's and
//! B's disks must read the same afterwards (also from a fresh login, so a reset would show),
//! the maintenance target's files must not change, and A's and B's sessions must still do I/O.
//!
//! Needs root (CI runs as root); otherwise prints SKIPPED. Each test prints one
//! `attempt: ... -> ...` line per attempt (`cargo test --test trust_netns -- --nocapture`).

mod fixture;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use fixture::netns::{Firmware, Netns, boot_msg, client_socket, in_ns, is_root, must};
use fixture::*;
use isboot::initiator::{Initiator, InitiatorError, LoginOptions};
use isboot::mac::MacAddr;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const PORTAL: SocketAddr = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 3260));
/// Disk size of every client (small: each check reads whole disks).
const DISK: usize = 4 << 20;
const BLOCK: usize = 512;

/// One host on the lab LAN: its namespace, address and MAC.
#[derive(Clone)]
struct Host {
    ns: String,
    ip: Ipv4Addr,
    mac: MacAddr,
    ifname: String,
}

/// A registered client with a live session from its own host.
struct Client {
    name: &'static str,
    host: Host,
    iqn: String,
    initiator: String,
    chap: Option<(String, Vec<u8>)>,
    session: Option<Initiator>,
    /// What its whole disk must read.
    disk: Vec<u8>,
}

impl Client {
    fn login_options(&self) -> LoginOptions {
        let mut o = LoginOptions::new(&self.initiator, Some(&self.iqn));
        o.chap = self.chap.clone();
        o
    }

    /// Log in from the client's own host and clear the unit attention.
    fn login(&self) -> Initiator {
        let o = self.login_options();
        in_ns(&self.host.ns, move || connect_ready(PORTAL, &o))
    }

    fn session(&mut self) -> &mut Initiator {
        self.session.as_mut().expect("a live session")
    }

    fn write(&mut self, lba: u64, data: &[u8]) {
        let c = self.session().write16(0, lba, data).expect("write");
        assert_eq!(c.status, 0, "{}: write status", self.name);
        let at = lba as usize * BLOCK;
        self.disk[at..at + data.len()].copy_from_slice(data);
    }
}

/// Every block of the disk behind `s`.
fn read_disk(s: &mut Initiator) -> Vec<u8> {
    let mut out = Vec::with_capacity(DISK);
    let per = 256u32;
    for lba in (0..(DISK / BLOCK) as u64).step_by(per as usize) {
        let c = s.read16(0, lba, per).expect("read");
        assert_eq!(c.status, 0, "read status at {lba}");
        out.extend_from_slice(&c.data);
    }
    out
}

/// A checksum of a disk's content for the report (the checks compare whole contents).
fn checksum(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// The lab: server, clients A and B (live sessions), the maintenance target, a hostile host.
/// Fields drop in order: the server first, the namespaces after it, the state dir last.
struct Suite {
    serve: Serve,
    a: Client,
    b: Client,
    hostile: Host,
    /// The server's namespace.
    srv: String,
    /// Client C's host: DHCP only.
    c: Option<Host>,
    /// The maintenance target of `image edit deb` and the initiator names it printed.
    maint_iqn: String,
    maint_initiators: Vec<String>,
    maint_files: BTreeMap<String, Vec<u8>>,
    dir: PathBuf,
    _net: Netns,
    _tmp: tempfile::TempDir,
}

/// Connect a veth from the server's bridge to a new namespace `role` with `ip`/24 and `mac`.
fn host(net: &mut Netns, srv: &str, br: &str, role: &str, ip: Ipv4Addr, mac: MacAddr) -> Host {
    let ns = net.ns(role);
    let (port, ifname) = (
        net.ifname(&format!("t{role}s")),
        net.ifname(&format!("t{role}c")),
    );
    must(&[
        "ip", "link", "add", &port, "netns", srv, "type", "veth", "peer", "name", &ifname, "netns",
        &ns,
    ]);
    must(&["ip", "-n", srv, "link", "set", &port, "master", br, "up"]);
    must(&[
        "ip",
        "-n",
        &ns,
        "link",
        "set",
        &ifname,
        "address",
        &mac.to_string(),
    ]);
    if !ip.is_unspecified() {
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &ifname,
        ]);
    }
    must(&["ip", "-n", &ns, "link", "set", &ifname, "up"]);
    Host {
        ns,
        ip,
        mac,
        ifname,
    }
}

/// The CHAP credentials `add-client --chap` generated for `name`, read the way an admin does
/// (`show-client NAME --json --show-secrets`: never on a command line).
fn chap_for(dir: &std::path::Path, name: &str) -> (String, Vec<u8>) {
    let (user, secret) = chap_of(dir, name).expect("add-client generates CHAP credentials");
    (user, secret.into_bytes())
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x79, 0x00, last])
}

impl Suite {
    /// None (after printing SKIPPED) when not root or libiscsi's tools are missing.
    fn start() -> Option<Suite> {
        if !is_root() {
            skip("needs root to create network namespaces (CI runs as root)");
            return None;
        }
        for t in [
            "ip",
            "iscsi-ls",
            "iscsi-inq",
            "iscsi-readcapacity16",
            "iscsi-perf",
        ] {
            if !have(t) {
                skip(&format!("{t} is not installed (scripts/test installs it)"));
                return None;
            }
        }
        let mut net = Netns::new("istr");
        let srv = net.ns("srv");
        let br = net.ifname("tbr");
        must(&["ip", "-n", &srv, "link", "add", &br, "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &srv,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &br,
        ]);
        must(&["ip", "-n", &srv, "link", "set", &br, "up"]);
        let ha = host(
            &mut net,
            &srv,
            &br,
            "a",
            Ipv4Addr::new(10, 79, 0, 21),
            mac(0x21),
        );
        let hb = host(
            &mut net,
            &srv,
            &br,
            "b",
            Ipv4Addr::new(10, 79, 0, 22),
            mac(0x22),
        );
        let hh = host(
            &mut net,
            &srv,
            &br,
            "h",
            Ipv4Addr::new(10, 79, 0, 66),
            mac(0x66),
        );
        // C: a client without a reservation (its address comes from a lease), no session.
        let hc = host(&mut net, &srv, &br, "c", Ipv4Addr::UNSPECIFIED, mac(0x23));

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        isboot(
            &dir,
            &[
                "init",
                "--server-ip",
                &format!("{SERVER_IP}/24"),
                "--interface",
                &br,
                "--dhcp-range",
                "10.79.0.100-10.79.0.120",
            ],
        );
        let img = patterned_image(tmp.path(), "base.img", DISK);
        isboot(&dir, &["image", "add", "deb", img.to_str().unwrap()]);
        let base = std::fs::read(&img).unwrap();
        std::fs::remove_file(&img).unwrap();
        let client = |name: &'static str, h: &Host, extra: &[&str]| {
            let (mac, ip) = (h.mac.to_string(), h.ip.to_string());
            let mut args = vec![
                "add-client",
                "--mac",
                &mac,
                "--image",
                "deb",
                "--name",
                name,
                "--ip",
                &ip,
            ];
            args.push("--chap");
            args.extend_from_slice(extra);
            isboot(&dir, &args);
            let chap = chap_for(&dir, name);
            Client {
                name,
                host: h.clone(),
                iqn: format!("{PREFIX}:{name}"),
                initiator: initiator_of(name),
                chap: Some(chap),
                session: None,
                disk: base.clone(),
            }
        };
        // A resets at power-on: the spoofed PXE request below aims at that.
        let mut a = client("pca", &ha, &["--mode", "reset"]);
        let mut b = client("pcb", &hb, &[]);
        let (cmac, cname) = (hc.mac.to_string(), "pcc");
        isboot(
            &dir,
            &[
                "add-client",
                "--mac",
                &cmac,
                "--image",
                "deb",
                "--name",
                cname,
            ],
        );
        let edit = isboot(&dir, &["image", "edit", "deb", "--chap"]);
        let field = |k: &str| -> Vec<String> {
            edit.lines()
                .filter_map(|l| l.trim().strip_prefix(k))
                .map(|v| v.trim().to_string())
                .collect()
        };
        let maint_iqn = field("target:").pop().expect("image edit names its target");
        let maint_initiators = field("initiator:");

        let serve = Serve::start_in(Some(&srv), &dir, "info", &["--no-tftp"]);
        for c in [&mut a, &mut b] {
            c.session = Some(c.login());
            let seed = c.name.as_bytes()[2];
            c.write(0, &pattern(64 * BLOCK, seed));
            c.write(4000, &pattern(8 * BLOCK, seed ^ 0x55));
            let disk = read_disk(c.session());
            assert!(disk == c.disk, "{}: its own writes read back", c.name);
        }
        let maint_files = snapshot(&dir.join("maint"));
        Some(Suite {
            serve,
            a,
            b,
            hostile: hh,
            srv,
            c: Some(hc),
            maint_iqn,
            maint_initiators,
            maint_files,
            dir,
            _net: net,
            _tmp: tmp,
        })
    }

    /// After the attempts: A's and B's sessions still write and read, their disks read as
    /// before (through the live session, then through a fresh login, which would see a reset),
    /// the maintenance target's files are unchanged and the server is still running.
    fn finish(mut self) {
        if std::env::var_os("TRUST_NETNS_LOG").is_some() {
            println!("{}", self.serve.log_text());
        }
        for c in [&mut self.a, &mut self.b] {
            let seed = c.name.as_bytes()[2] ^ 0xaa;
            c.write(100, &pattern(4 * BLOCK, seed));
            let live = read_disk(c.session());
            assert!(
                live == c.disk,
                "{}: disk changed under its live session",
                c.name
            );
            c.session().logout().expect("logout");
            c.session = None;
            let mut fresh = c.login();
            let again = read_disk(&mut fresh);
            assert!(
                again == c.disk,
                "{}: a fresh login reads another disk (reset or overwritten)",
                c.name
            );
            fresh.logout().expect("logout");
            println!(
                "check: {} ({}) reads {:016x} as before, through its live session and a fresh login",
                c.name,
                c.host.ip,
                checksum(&c.disk)
            );
        }
        assert!(
            snapshot(&self.dir.join("maint")) == self.maint_files,
            "the maintenance target's files changed"
        );
        assert!(
            self.serve.child.try_wait().unwrap().is_none(),
            "isboot serve exited: {}",
            self.serve.log_text()
        );
        let log = self.serve.log_text();
        assert!(!log.contains("panic"), "{log}");
    }
}

// ---- attempts -------------------------------------------------------------------------------

/// What a login attempt got.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Logged in; the bytes it could read from LUN 0's first blocks.
    In,
    Refused(u8, u8),
    /// No login answer (connection refused or closed).
    Cut(String),
}

fn outcome<T>(r: Result<T, InitiatorError>) -> Outcome {
    match r {
        Ok(_) => Outcome::In,
        Err(InitiatorError::LoginRefused { class, detail }) => Outcome::Refused(class, detail),
        Err(e) => Outcome::Cut(e.to_string()),
    }
}

/// Log in from `h` with the project's initiator; on success also read a block (the harm).
fn login_from(h: &Host, o: LoginOptions) -> Outcome {
    in_ns(&h.ns, move || {
        outcome(Initiator::connect(PORTAL, &o).map(|mut i| {
            let _ = i.clear_unit_attention(0);
            let _ = i.read16(0, 0, 1);
        }))
    })
}

#[track_caller]
fn refused(what: &str, got: Outcome, want: (u8, u8)) {
    println!("attempt: {what} -> {got:?}");
    assert_eq!(
        got,
        Outcome::Refused(want.0, want.1),
        "{what}: want login status {:02x}{:02x}",
        want.0,
        want.1
    );
}

/// RFC 7143 §11.13.5: 0201 authentication failure.
const AUTH_FAILURE: (u8, u8) = (0x02, 0x01);
/// A name the target does not allow: the same 0201 (SECURITY.md: every "not you" is one
/// answer, so a caller learns nothing about which names, targets or addresses exist).
const NOT_AUTHORIZED: (u8, u8) = AUTH_FAILURE;

/// A libiscsi tool run from `h`: (exit code, stdout + stderr).
fn libiscsi(h: &Host, tool: &str, args: &[&str]) -> (i32, String) {
    let o = Command::new("ip")
        .args(["netns", "exec", &h.ns, tool])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

/// `iscsi://[user%secret@]server/iqn/0`.
fn url(iqn: &str, chap: Option<&(String, Vec<u8>)>) -> String {
    let cred = chap
        .map(|(u, s)| format!("{u}%{}@", String::from_utf8_lossy(s)))
        .unwrap_or_default();
    format!("iscsi://{cred}{PORTAL}/{iqn}/0")
}

/// `qemu-io` (QEMU's iSCSI block driver) from the hostile host writes 4 KiB at the start of
/// A's disk, stating A's initiator name, with `chap` if any: it must fail at login with `reason`.
fn qemu_write_refused(what: &str, s: &Suite, chap: Option<&(String, Vec<u8>)>, reason: &str) {
    let mut opts = format!(
        "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={PORTAL},\
         file.target={},file.lun=0,file.initiator-name={}",
        s.a.iqn, s.a.initiator
    );
    let mut args = Vec::new();
    if let Some((user, secret)) = chap {
        let sf = s.dir.with_file_name("qemu-secret");
        std::fs::write(&sf, secret).unwrap();
        opts.push_str(&format!(",file.user={user},file.password-secret=sec0"));
        args.extend([
            "--object".to_string(),
            format!("secret,id=sec0,file={}", sf.display()),
        ]);
    }
    args.extend(["--image-opts", &opts, "-c", "write -P 0xee 0 4096"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = libiscsi(&s.hostile, "qemu-io", &args);
    let first = text.lines().next().unwrap_or_default();
    println!("attempt: {what} (qemu-io) -> exit {code}: {first}");
    assert_ne!(code, 0, "{what}: qemu-io wrote A's disk: {text}");
    assert!(
        text.contains(reason),
        "{what}: qemu-io should fail with {reason:?}: {text}"
    );
}

/// A libiscsi tool must fail at login with `reason` (libiscsi's words for the login status).
#[track_caller]
fn tool_refused(what: &str, h: &Host, tool: &str, args: &[&str], reason: &str) {
    let (code, text) = libiscsi(h, tool, args);
    let first = text.lines().next().unwrap_or_default();
    println!("attempt: {what} ({tool}) -> exit {code}: {first}");
    assert_ne!(code, 0, "{what}: {tool} succeeded: {text}");
    assert!(
        text.contains(reason),
        "{what}: {tool} should fail with {reason:?}: {text}"
    );
}

/// 020a: the TSIH names no session (of this initiator).
const NO_SUCH_SESSION: (u8, u8) = (0x02, 0x0a);
/// A login from an address other than the client's own: 0201 too (SECURITY.md), so a thief
/// does not even learn that the stolen secret was right.
const BOUND_ELSEWHERE: (u8, u8) = AUTH_FAILURE;

/// Libiscsi's words for the login statuses above.
const LIBISCSI_AUTH_FAILURE: &str = "Authentication failure";
const LIBISCSI_BOUND_ELSEWHERE: &str = "Authentication failure";

#[test]
fn stated_names_known_iqns_and_wrong_chap_are_refused() {
    let Some(s) = Suite::start() else { return };
    let h = &s.hostile;
    let wrong = |c: &Client| (c.chap.clone().unwrap().0, b"not-the-secret-0123".to_vec());
    for c in [&s.a, &s.b] {
        // The client's own initiator name and target IQN, no CHAP.
        let mut o = LoginOptions::new(&c.initiator, Some(&c.iqn));
        refused(
            &format!("{}'s initiator name, no CHAP", c.name),
            login_from(h, o.clone()),
            AUTH_FAILURE,
        );
        o.chap = Some(wrong(c));
        refused(
            &format!("{}'s initiator name, wrong CHAP secret", c.name),
            login_from(h, o),
            AUTH_FAILURE,
        );
        // Another initiator name that knows the IQN.
        let o = LoginOptions::new("iqn.2026-11.org.isboot:initiator:hostile", Some(&c.iqn));
        refused(
            &format!("a made-up initiator name at {}'s IQN", c.name),
            login_from(h, o),
            NOT_AUTHORIZED,
        );
        // libiscsi, stating the client's initiator name, without and with a wrong secret.
        for (cred, how) in [(None, "no CHAP"), (Some(wrong(c)), "wrong CHAP")] {
            let u = url(&c.iqn, cred.as_ref());
            let what = format!("{}'s initiator name, {how}", c.name);
            for tool in ["iscsi-inq", "iscsi-readcapacity16"] {
                tool_refused(
                    &what,
                    h,
                    tool,
                    &["-i", &c.initiator, &u],
                    LIBISCSI_AUTH_FAILURE,
                );
            }
        }
    }
    let wrong_a = wrong(&s.a);
    for (how, chap) in [("no CHAP", None), ("wrong CHAP", Some(&wrong_a))] {
        qemu_write_refused(
            &format!("write A's disk as A's initiator name, {how}"),
            &s,
            chap,
            LIBISCSI_AUTH_FAILURE,
        );
    }
    // From A's own address (where attacker B stands once it forges A's MAC and IP) with A's
    // credentials but another initiator name, while A's session is live.
    let mut o = s.a.login_options();
    o.initiator_name = format!("{PREFIX}:initiator:impostor");
    refused(
        "another initiator name with A's CHAP secret, from A's address, A live",
        login_from(&s.a.host, o),
        NOT_AUTHORIZED,
    );
    // A's credentials at B's target, from the hostile host and from A's own: a client never
    // reaches another client's disk.
    for from in [h, &s.a.host] {
        let at = if from.ip == h.ip {
            "the hostile address"
        } else {
            "A's own address"
        };
        let mut o = LoginOptions::new(&s.a.initiator, Some(&s.b.iqn));
        o.chap = s.a.chap.clone();
        refused(
            &format!("A's name and CHAP secret at B's target, from {at}"),
            login_from(from, o.clone()),
            NOT_AUTHORIZED,
        );
        o.initiator_name = s.b.initiator.clone();
        refused(
            &format!("B's name with A's CHAP secret at B's target, from {at}"),
            login_from(from, o),
            AUTH_FAILURE,
        );
    }
    s.finish();
}

/// Libiscsi's tools with A's stolen CHAP credentials in the URL, from the hostile address.
fn stolen_with_libiscsi(s: &Suite, what: &str, want: &str) {
    let h = &s.hostile;
    let u = url(&s.a.iqn, s.a.chap.as_ref());
    for tool in ["iscsi-inq", "iscsi-readcapacity16"] {
        tool_refused(what, h, tool, &["-i", &s.a.initiator, &u], want);
    }
}

#[test]
fn stolen_credentials_from_another_address_are_refused() {
    let Some(s) = Suite::start() else { return };
    let h = &s.hostile;
    refused(
        "A's initiator name and stolen CHAP secret, from the hostile address",
        login_from(h, s.a.login_options()),
        BOUND_ELSEWHERE,
    );
    stolen_with_libiscsi(
        &s,
        "A's initiator name and stolen CHAP secret",
        LIBISCSI_BOUND_ELSEWHERE,
    );
    // QEMU's iSCSI driver (libiscsi underneath) tries to write A's disk with them.
    qemu_write_refused(
        "write A's disk with stolen credentials",
        &s,
        s.a.chap.as_ref(),
        LIBISCSI_BOUND_ELSEWHERE,
    );
    s.finish();
}

/// The way attacker B gets credentials: DHCP as A's iPXE (A's MAC). While A runs, whatever the
/// reply hands out is useless from the hostile address, and A's disk is not reset.
#[test]
fn credentials_from_a_spoofed_ipxe_dhcp_are_useless_elsewhere() {
    let Some(s) = Suite::start() else { return };
    let h = &s.hostile;
    wait_log(&s.serve, "DHCP listening");
    let (offer, ack) = dhcp_dora(h, s.a.host.mac, 0x1600, true);
    let settings: Vec<(u8, Vec<u8>)> = [offer, ack]
        .iter()
        .flatten()
        .flat_map(ipxe_settings)
        .collect();
    let get = |code: u8| {
        settings
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.clone())
    };
    println!(
        "attempt: DHCP as A's iPXE from the hostile host -> CHAP user {}, secret {}",
        if get(190).is_some() {
            "handed out"
        } else {
            "withheld"
        },
        if get(191).is_some() {
            "handed out"
        } else {
            "withheld"
        },
    );
    if let (Some(user), Some(secret)) = (get(190), get(191)) {
        let mut o = LoginOptions::new(&s.a.initiator, Some(&s.a.iqn));
        o.chap = Some((String::from_utf8_lossy(&user).into_owned(), secret));
        refused(
            "A's credentials from a spoofed iPXE DHCP, from the hostile address",
            login_from(h, o),
            BOUND_ELSEWHERE,
        );
    }
    s.finish();
}

/// One scripted login up to full feature phase, stopping at the first refusal: the statuses
/// the target answered (the CHAP challenge itself is random and left out).
fn login_transcript(
    from: &Host,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
    tsih: u16,
    chap: Option<(String, Vec<u8>)>,
) -> Vec<(u8, u8)> {
    let (initiator, target) = (initiator.to_string(), target.to_string());
    in_ns(&from.ns, move || {
        let mut l = RawLogin::connect(PORTAL);
        l.isid = isid;
        l.tsih = tsih;
        let mut seen = Vec::new();
        let mut step = |l: &mut RawLogin, csg: u8, nsg: u8, t: bool, keys: &[(&str, &str)]| {
            let mut d = Vec::new();
            for (k, v) in keys {
                isboot::wire::text::push(&mut d, k, v);
            }
            let req = l.request(csg, nsg, t);
            let a = l.send_raw(req, &d);
            let st = a.as_ref().map_or((0xff, 0xff), |a| (a.class, a.detail));
            seen.push(st);
            a.filter(|a| a.class == 0)
        };
        let auth = if chap.is_some() { "CHAP" } else { "None" };
        let leading = [
            ("InitiatorName", initiator.as_str()),
            ("SessionType", "Normal"),
            ("TargetName", target.as_str()),
            ("AuthMethod", auth),
        ];
        let Some(_) = step(&mut l, 0, 1, chap.is_none(), &leading) else {
            return seen;
        };
        if let Some((user, secret)) = &chap {
            let Some(c) = step(&mut l, 0, 1, false, &[("CHAP_A", "5")]) else {
                return seen;
            };
            let id: u8 = c.keys["CHAP_I"].parse().unwrap();
            let challenge = hex::decode(c.keys["CHAP_C"].trim_start_matches("0x")).unwrap();
            let r = isboot::initiator::chap_md5(id, secret, &challenge);
            let r = format!("0x{}", hex::encode(r));
            if step(&mut l, 0, 1, true, &[("CHAP_N", user), ("CHAP_R", &r)]).is_none() {
                return seen;
            }
        }
        step(&mut l, 1, 3, true, &[("ErrorRecoveryLevel", "0")]);
        seen
    })
}

#[test]
fn session_reinstatement_and_tsih_guessing_are_refused() {
    let Some(s) = Suite::start() else { return };
    let h = &s.hostile;
    let isid = LoginOptions::new("x", None).isid; // A's ISID: the initiator's default
    let a_tsih = s.a.session.as_ref().unwrap().negotiated.tsih;
    let b_tsih = s.b.session.as_ref().unwrap().negotiated.tsih;
    let guesses = [a_tsih, b_tsih, a_tsih ^ 0x5a5a, 0xffff];
    for (how, chap) in [("no CHAP", None), ("A's stolen CHAP", s.a.chap.clone())] {
        let mut answers = Vec::new();
        for tsih in guesses {
            let t = login_transcript(h, &s.a.initiator, &s.a.iqn, isid, tsih, chap.clone());
            println!(
                "attempt: A's name and ISID, {how}, TSIH {tsih:#06x}, hostile address -> {t:02x?}"
            );
            assert_eq!(t.last(), Some(&NO_SUCH_SESSION), "TSIH {tsih:#06x}, {how}");
            answers.push(t);
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{how}: existing and made-up TSIHs must get the same answers: {answers:02x?}"
        );
    }
    // Client B (a lab user with valid credentials of its own) tries to join A's session.
    let t = login_transcript(
        &s.b.host,
        &s.b.initiator,
        &s.a.iqn,
        isid,
        a_tsih,
        s.b.chap.clone(),
    );
    println!("attempt: B's own credentials, A's TSIH, from B's address -> {t:02x?}");
    assert_ne!(t.last(), Some(&(0, 0)), "B joined A's session: {t:02x?}");
    // Targets that exist and do not exist get the same answer.
    let mut by_target = Vec::new();
    for target in [s.a.iqn.clone(), format!("{PREFIX}:no-such-client")] {
        let t = login_transcript(h, &s.a.initiator, &target, isid, 0, None);
        println!("attempt: A's name, no CHAP, target {target} -> {t:02x?}");
        assert_ne!(t.last(), Some(&(0, 0)));
        by_target.push(t);
    }
    assert_eq!(by_target[0], by_target[1], "existing vs made-up target");
    s.finish();
}

/// Log lines of the probe a login from a client's own address makes of its disk's live
/// sessions (service/iscsi/handler.rs).
const PROBE_ANSWERED: &str = "answered a probe";
const PROBE_SILENT: &str = "session did not answer a probe";
const PROBE_GONE: &str = "probed sessions ended";

/// Attacker B's last door (SECURITY.md, "one user of a disk"): B stands at A's address with
/// A's name and CHAP secret (which it can get from DHCP as A's iPXE) — here, logins from A's own
/// host — while A runs and answers the target's pings. Each login waits for a probe of A's
/// session, A answers, the login is refused; A keeps its disk and its session.
#[test]
fn a_second_login_beside_a_running_client_is_refused() {
    let Some(mut s) = Suite::start() else { return };
    let host = s.a.host.clone();
    let base = s.a.login_options();
    let mut attempts = Vec::new();
    // A new boot's first login (iPXE's ISID format), and session reinstatement (A's own ISID).
    let mut o = base.clone();
    o.isid = [0x40, 0x00, 0x27, 0x23, 0x0b, 0x0b];
    attempts.push(("a new ISID", o));
    attempts.push(("A's session's own ISID (reinstatement)", base));
    let sess = s.a.session.as_mut().expect("A's session");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answered, got) = std::thread::scope(|sc| {
        // A, running: idle between commands, answering pings (as open-iscsi does).
        let pinger = sc.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += sess.answer_pings(Duration::from_millis(200))?;
            }
            Ok::<_, InitiatorError>(n)
        });
        let got: Vec<_> = attempts
            .into_iter()
            .map(|(how, o)| {
                let t0 = Instant::now();
                let got = login_from(&host, o);
                (
                    format!("{how}, A running, refused after {:.0?}", t0.elapsed()),
                    got,
                )
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (pinger.join().unwrap(), got)
    });
    for (how, got) in got {
        refused(
            &format!("A's name, CHAP secret and address, {how}"),
            got,
            AUTH_FAILURE,
        );
    }
    let answered = answered.expect("A's session stays up while it answers");
    assert!(answered >= 2, "A answered each login's probe: {answered}");
    let log = s.serve.log_text();
    assert_eq!(log.matches(PROBE_ANSWERED).count(), 2, "{log}");
    assert!(!log.contains(PROBE_SILENT), "{log}");
    s.finish();
}

/// The other side of that rule: a client whose old session cannot answer gets its disk back
/// at its next login. Silent (the initiator no longer answers, TCP still acknowledges): the new
/// login waits for the probe to give up, the old session is ended. Rebooted (the machine's new
/// IP stack does not know the old connection; its reset never reached the server): the probe
/// meets that stack, which resets the connection, and the login goes through at once.
#[test]
fn a_rebooted_client_replaces_its_old_session() {
    let Some(mut s) = Suite::start() else { return };
    let login = |s: &Suite, isid: [u8; 6]| {
        let mut o = s.a.login_options();
        o.isid = isid; // open-iscsi's format: a login of the OS, not of a new boot's iPXE
        in_ns(&s.a.host.ns, move || connect_ready(PORTAL, &o))
    };
    let mut old = s.a.session.take().expect("A's session");
    let t0 = Instant::now();
    let silent = login(&s, [0x00, 0x02, 0x3d, 0x00, 0x00, 0x0b]);
    println!(
        "attempt: A's login beside its own silent session -> In after {:.0?}",
        t0.elapsed()
    );
    let log = s.serve.log_text();
    assert_eq!(log.matches(PROBE_SILENT).count(), 1, "{log}");
    assert!(
        old.read16(0, 0, 1).is_err(),
        "the silent session was ended for the new login"
    );
    // A reboots: link down, its stack forgets the connection, link up. (First a pause for
    // A's delayed ACK of the last response: were it lost with the link, the server's
    // retransmission after link-up would meet the new stack and be reset before the login.)
    std::thread::sleep(Duration::from_millis(500));
    let (ns, ifname) = (&s.a.host.ns, &s.a.host.ifname);
    must(&["ip", "-n", ns, "link", "set", ifname, "down"]);
    silent.abandon().expect("close with a reset");
    must(&["ip", "-n", ns, "link", "set", ifname, "up"]);
    // Until the link carries frames (else the login's first SYN is lost and retried after 1 s,
    // which the time printed below would include).
    let until = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", ifname])
            .output()
            .expect("ip link show")
            .stdout,
    )
    .contains("state UP")
    {
        assert!(Instant::now() < until, "A's link did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let fresh = login(&s, [0x00, 0x02, 0x3d, 0x00, 0x00, 0x0c]);
    let took = t0.elapsed();
    // The login is in; the server's lines about the old connection may still be on their way.
    let log = s.serve.wait_log(Duration::from_secs(10), |l| {
        l.matches(PROBE_GONE).count() == 1 || l.contains("Connection reset by peer")
    });
    let by_probe = log.matches(PROBE_GONE).count() == 1;
    println!(
        "attempt: A's login after a reboot beside its forgotten session -> In after {took:.0?} (old connection reset {})",
        if by_probe {
            "at the probe"
        } else {
            "before the login"
        }
    );
    assert!(
        by_probe || log.contains("Connection reset by peer"),
        "the new stack reset the old connection: {log}"
    );
    assert_eq!(
        log.matches(PROBE_SILENT).count(),
        1,
        "no wait for the rebooted client: {log}"
    );
    s.a.session = Some(fresh);
    s.finish();
}

/// A discovery session from `h`: Ok(targets listed) or the login outcome.
fn discover(
    h: &Host,
    initiator: &str,
    chap: Option<(String, Vec<u8>)>,
) -> Result<Vec<String>, Outcome> {
    let mut o = LoginOptions::new(initiator, None);
    o.chap = chap;
    in_ns(&h.ns, move || {
        let mut i = Initiator::connect(PORTAL, &o).map_err(|e| outcome::<()>(Err(e)))?;
        let t = i
            .send_targets("All")
            .map_err(|e| Outcome::Cut(e.to_string()))?;
        Ok(t.into_iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v)
            .collect())
    })
}

#[test]
fn discovery_shows_strangers_nothing() {
    let Some(s) = Suite::start() else { return };
    let h = &s.hostile;
    for (how, name, chap) in [
        ("no CHAP, A's initiator name", &s.a.initiator, None),
        (
            "no CHAP, a made-up name",
            &"iqn.2026-11.org.isboot:initiator:hostile".to_string(),
            None,
        ),
        ("A's stolen CHAP", &s.a.initiator, s.a.chap.clone()),
    ] {
        let got = discover(h, name, chap);
        println!("attempt: SendTargets discovery, {how}, hostile address -> {got:?}");
        match got {
            Err(Outcome::Refused(0x02, _)) => {}
            other => panic!("discovery from the hostile address ({how}): {other:?}"),
        }
    }
    for (how, args) in [
        (
            "no CHAP",
            vec![
                "-i".to_string(),
                s.a.initiator.clone(),
                format!("iscsi://{PORTAL}"),
            ],
        ),
        (
            "A's stolen CHAP",
            vec![
                "-i".to_string(),
                s.a.initiator.clone(),
                format!(
                    "iscsi://{}%{}@{PORTAL}",
                    s.a.chap.as_ref().unwrap().0,
                    String::from_utf8_lossy(&s.a.chap.as_ref().unwrap().1)
                ),
            ],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = libiscsi(h, "iscsi-ls", &args);
        println!(
            "attempt: discovery, {how} (iscsi-ls) -> exit {code}: {}",
            text.lines().next().unwrap_or_default()
        );
        assert_ne!(code, 0, "iscsi-ls listed targets: {text}");
        assert!(!text.contains(PREFIX), "iscsi-ls saw a target name: {text}");
    }
    // A itself, from its address with its credentials, sees its own target and nothing else.
    let own = discover(&s.a.host, &s.a.initiator, s.a.chap.clone());
    println!("check: SendTargets from A's address with A's CHAP -> {own:?}");
    assert_eq!(own, Ok(vec![s.a.iqn.clone()]));
    s.finish();
}

#[test]
fn the_maintenance_target_is_closed_to_the_lan() {
    let Some(s) = Suite::start() else { return };
    let h = &s.hostile;
    let mut names = s.maint_initiators.clone();
    names.push(s.a.initiator.clone());
    for name in &names {
        let o = LoginOptions::new(name, Some(&s.maint_iqn));
        let got = login_from(h, o.clone());
        println!("attempt: maintenance target as {name}, no CHAP -> {got:?}");
        assert!(matches!(got, Outcome::Refused(0x02, _)), "{got:?}");
        let mut o = o;
        o.chap = s.a.chap.clone();
        let got = login_from(h, o);
        println!("attempt: maintenance target as {name}, A's CHAP -> {got:?}");
        assert!(matches!(got, Outcome::Refused(0x02, _)), "{got:?}");
        let u = url(&s.maint_iqn, None);
        let (code, text) = libiscsi(h, "iscsi-inq", &["-i", name, &u]);
        println!(
            "attempt: maintenance target as {name} (iscsi-inq) -> exit {code}: {}",
            text.lines().next().unwrap_or_default()
        );
        assert_ne!(code, 0, "{text}");
        assert!(text.contains("Login Failed"), "{text}");
    }
    s.finish();
}

// ---- DHCP from the hostile host -----------------------------------------------------------

/// A firmware DHCP message for `mac` (a BIOS PXE ROM, or iPXE when `ipxe`).
fn dhcp_msg(mac: MacAddr, xid: u32, t: MessageType, ipxe: bool, extra: Vec<DhcpOption>) -> Message {
    let fw = if ipxe {
        Firmware::Ipxe(0)
    } else {
        Firmware::Pxe(0)
    };
    boot_msg(mac, xid, t, fw, extra)
}

const BCAST67: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

/// Send `m` from `h`; the first reply with its xid within 3 s, if `want_reply`.
fn dhcp_send(h: &Host, m: Message, want_reply: bool) -> Option<Message> {
    let h = h.clone();
    in_ns(&h.ns.clone(), move || {
        let sock = client_socket(&h.ifname, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        sock.send_to(&m.to_vec().expect("encode"), BCAST67)
            .expect("send");
        let until = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1600];
        while want_reply && Instant::now() < until {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Ok(r) = Message::from_bytes(&buf[..n])
                && r.xid() == m.xid()
                && r.opcode() == dhcproto::v4::Opcode::BootReply
            {
                return Some(r);
            }
        }
        None
    })
}

/// Sub-options of option 175 in `m` (iPXE's encapsulated settings), as (code, value).
fn ipxe_settings(m: &Message) -> Vec<(u8, Vec<u8>)> {
    let Some(o) = m.opts().get(OptionCode::Unknown(175)) else {
        return Vec::new();
    };
    let mut raw = Vec::new();
    o.encode(&mut dhcproto::Encoder::new(&mut raw))
        .expect("encode");
    let mut body = &raw[2..];
    let mut out = Vec::new();
    while let [code, len, rest @ ..] = body {
        let n = (*len as usize).min(rest.len());
        out.push((*code, rest[..n].to_vec()));
        body = &rest[n..];
    }
    out
}

/// DISCOVER then REQUEST for `mac` from `h`: the OFFER and ACK it got.
fn dhcp_dora(h: &Host, mac: MacAddr, xid: u32, ipxe: bool) -> (Option<Message>, Option<Message>) {
    dhcp_dora_flags(h, mac, xid, ipxe, true)
}

/// The same, with or without the broadcast flag (iPXE sends none).
fn dhcp_dora_flags(
    h: &Host,
    mac: MacAddr,
    xid: u32,
    ipxe: bool,
    broadcast: bool,
) -> (Option<Message>, Option<Message>) {
    let flags = |mut m: Message| {
        if !broadcast {
            m.set_flags(Flags::default());
        }
        m
    };
    let offer = dhcp_send(
        h,
        flags(dhcp_msg(mac, xid, MessageType::Discover, ipxe, vec![])),
        true,
    );
    let Some(o) = &offer else { return (None, None) };
    let req = dhcp_msg(
        mac,
        xid,
        MessageType::Request,
        ipxe,
        vec![
            DhcpOption::ServerIdentifier(SERVER_IP),
            DhcpOption::RequestedIpAddress(o.yiaddr()),
        ],
    );
    let ack = dhcp_send(h, flags(req), true);
    (offer, ack)
}

fn wait_log(serve: &Serve, what: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    while !serve.log_text().contains(what) {
        assert!(
            Instant::now() < until,
            "no {what:?} in: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The OFFER and ACK that reached `h` for an iPXE-like (no broadcast flag) DORA.
fn dhcp_dora_unicast(h: &Host, mac: MacAddr, xid: u32, ipxe: bool) -> Vec<Message> {
    let (offer, ack) = dhcp_dora_flags(h, mac, xid, ipxe, false);
    [offer, ack].into_iter().flatten().collect()
}

/// iPXE's settings 175.190..=193 (CHAP user, secret, mutual user, mutual secret) in `ms`.
fn chap_settings(ms: &[Message]) -> Vec<(u8, Vec<u8>)> {
    ms.iter()
        .flat_map(ipxe_settings)
        .filter(|(c, _)| (190..=193).contains(c))
        .collect()
}

/// iPXE's own DHCP (user class iPXE, no broadcast flag) gets its client's CHAP credentials at
/// the client's hardware address; the PXE ROM's stage, broadcasts and other MACs get none.
#[test]
fn ipxe_stage_dhcp_hands_each_client_only_its_own_credentials() {
    let Some(s) = Suite::start() else { return };
    wait_log(&s.serve, "DHCP listening");
    for c in [&s.a, &s.b] {
        let got = chap_settings(&dhcp_dora_unicast(&c.host, c.host.mac, 0x1700, true));
        let (user, secret) = c.chap.clone().expect("CHAP is on by default");
        println!(
            "check: {}'s own iPXE-stage DHCP -> {} CHAP settings (its own: {})",
            c.name,
            got.len(),
            got.contains(&(190, user.clone().into_bytes())) && got.contains(&(191, secret.clone()))
        );
        assert!(got.contains(&(190, user.into_bytes())), "{}: user", c.name);
        assert!(got.contains(&(191, secret)), "{}: secret", c.name);
        let other = if c.name == s.a.name { &s.b } else { &s.a };
        let theirs = other.chap.clone().unwrap().1;
        assert!(
            !got.iter().any(|(_, v)| *v == theirs),
            "{}: got another client's secret",
            c.name
        );
    }
    // The PXE ROM's stage (B: persistent, so its power-on resets nothing): no credentials.
    let pxe = chap_settings(&dhcp_dora_unicast(&s.b.host, s.b.host.mac, 0x1701, false));
    println!("attempt: PXE-stage DHCP with B's MAC -> CHAP settings {pxe:?}");
    assert!(pxe.is_empty(), "a PXE-stage reply carried CHAP settings");
    // iPXE-stage with A's MAC from the hostile host, broadcast flag set: what reaches it.
    let (offer, ack) = dhcp_dora(&s.hostile, s.a.host.mac, 0x1702, true);
    let seen = chap_settings(&[offer, ack].into_iter().flatten().collect::<Vec<_>>());
    println!(
        "attempt: iPXE DHCP with A's MAC, broadcast, from the hostile host -> CHAP settings {}",
        seen.len()
    );
    assert!(seen.is_empty(), "CHAP settings in a broadcast reply");
    s.finish();
}

const RESET_LOG: &str = "power-on: reset-mode client starts from a pristine disk";

#[test]
fn spoofed_pxe_requests_do_not_reset_a_live_disk() {
    let Some(s) = Suite::start() else { return };
    wait_log(&s.serve, "DHCP listening");
    let h = &s.hostile;
    for xid in [0x1201, 0x1202, 0x1203] {
        let (offer, ack) = dhcp_dora(h, s.a.host.mac, xid, false);
        let creds: Vec<u8> = [&offer, &ack]
            .iter()
            .filter_map(|m| m.as_ref())
            .flat_map(ipxe_settings)
            .map(|(c, _)| c)
            .filter(|c| (190..=193).contains(c))
            .collect();
        println!(
            "attempt: PXE DISCOVER/REQUEST with A's MAC from the hostile host -> offer {}, ack {}, CHAP options {creds:?}",
            offer.is_some(),
            ack.is_some()
        );
        assert!(creds.is_empty(), "a PXE-stage answer carried CHAP settings");
    }
    assert!(
        !s.serve.log_text().contains(RESET_LOG),
        "a spoofed PXE request reset A's disk under its live session"
    );
    s.finish();
}

#[test]
fn spoofed_pxe_requests_do_not_keep_a_disk_from_its_next_reset() {
    let Some(mut s) = Suite::start() else { return };
    wait_log(&s.serve, "DHCP listening");
    for xid in [0x1301, 0x1302] {
        dhcp_dora(&s.hostile, s.a.host.mac, xid, false);
    }
    println!("attempt: PXE requests with A's MAC while A runs, then A powers off and on");
    // A powers off: its session ends. Its real power-on must give it a pristine disk. (The
    // server drops the session just after the Logout Response: wait for it, or A's power-on
    // would meet a live session and be deferred to its next iPXE login.)
    let ended = s.serve.log_text().matches("session ended").count();
    s.a.session.take().unwrap().logout().expect("logout");
    let until = Instant::now() + Duration::from_secs(20);
    while s.serve.log_text().matches("session ended").count() <= ended {
        assert!(
            Instant::now() < until,
            "A's session did not end after its logout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, ack) = dhcp_dora(&s.a.host.clone(), s.a.host.mac, 0x1310, false);
    assert_eq!(ack.map(|a| a.yiaddr()), Some(s.a.host.ip), "A's own DHCP");
    wait_log(&s.serve, RESET_LOG);
    let mut fresh = s.a.login();
    let disk = read_disk(&mut fresh);
    let base = {
        let img = patterned_image(s.dir.parent().unwrap(), "check.img", DISK);
        std::fs::read(img).unwrap()
    };
    assert!(
        disk == base,
        "A's power-on after the spoofed requests did not reset its disk"
    );
    fresh.logout().expect("logout");
    s.a.disk = base;
    s.a.session = Some(s.a.login());
    s.finish();
}

/// An iPXE REQUEST for `ip` (INIT-REBOOT: no server identifier, so no new power-on): the
/// address the server acknowledged, if any.
fn dhcp_renew(h: &Host, mac: MacAddr, ip: Ipv4Addr, xid: u32) -> Option<Ipv4Addr> {
    let req = dhcp_msg(
        mac,
        xid,
        MessageType::Request,
        true,
        vec![DhcpOption::RequestedIpAddress(ip)],
    );
    dhcp_send(h, req, true)
        .filter(|m| m.opts().msg_type() == Some(MessageType::Ack))
        .map(|m| m.yiaddr())
}

/// DHCPDECLINE of `ip` from `from` with `chaddr`.
fn decline(from: &Host, chaddr: MacAddr, ip: Ipv4Addr) {
    let d = dhcp_msg(
        chaddr,
        0x1400,
        MessageType::Decline,
        true,
        vec![
            DhcpOption::ServerIdentifier(SERVER_IP),
            DhcpOption::RequestedIpAddress(ip),
        ],
    );
    dhcp_send(from, d, false);
}

#[test]
fn dhcp_decline_of_a_reserved_address_takes_nothing_away() {
    let Some(s) = Suite::start() else { return };
    wait_log(&s.serve, "DHCP listening");
    let (h, a) = (&s.hostile, &s.a.host);
    for (who, from, chaddr) in [
        ("the hostile host, its own MAC", h, h.mac),
        ("client B's host, B's MAC", &s.b.host, s.b.host.mac),
        ("the hostile host, A's MAC", h, a.mac),
    ] {
        decline(from, chaddr, a.ip);
        let got = dhcp_renew(a, a.mac, a.ip, 0x1410);
        println!("attempt: DHCPDECLINE of A's address from {who} -> A then gets {got:?}");
        assert_eq!(got, Some(a.ip), "A's address after a DECLINE from {who}");
    }
    s.finish();
}

#[test]
fn dhcp_decline_of_another_clients_lease_is_ignored() {
    let Some(s) = Suite::start() else { return };
    wait_log(&s.serve, "DHCP listening");
    let c = s.c.clone().expect("client C");
    let (_, ack) = dhcp_dora(&c, c.mac, 0x1500, true);
    let lease = ack.expect("C gets a lease").yiaddr();
    for (who, from, chaddr) in [
        ("the hostile host, its own MAC", &s.hostile, s.hostile.mac),
        ("client B's host, B's MAC", &s.b.host, s.b.host.mac),
    ] {
        decline(from, chaddr, lease);
        let got = dhcp_renew(&c, c.mac, lease, 0x1510);
        println!("attempt: DHCPDECLINE of C's leased {lease} from {who} -> C then gets {got:?}");
        assert_eq!(got, Some(lease), "C's lease after a DECLINE from {who}");
    }
    s.finish();
}

#[test]
fn serve_listens_on_the_boot_address_only() {
    let Some(s) = Suite::start() else { return };
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.join("run/status.json")).unwrap()).unwrap();
    println!(
        "check: isboot serve without --listen listens on {}",
        status["listen"]
    );
    assert_eq!(status["listen"].as_str(), Some(PORTAL.to_string().as_str()));
    // Nothing on the server's other addresses (here: its loopback).
    let lo = in_ns(&s.srv, || {
        std::net::TcpStream::connect_timeout(
            &"127.0.0.1:3260".parse().unwrap(),
            Duration::from_secs(2),
        )
        .map(|_| ())
        .map_err(|e| e.kind())
    });
    println!("attempt: connect to 127.0.0.1:3260 inside the server's namespace -> {lo:?}");
    assert_eq!(lo, Err(std::io::ErrorKind::ConnectionRefused));
    s.finish();
}
