//! Helpers for the hostile tests: a state directory with clients served by `isboot serve`
//! (started and stopped by PID), raw login exchanges, server resource sampling.
#![allow(dead_code)]

use isboot::initiator::Initiator;
use isboot::wire::pdu::{Bhs, LoginRequest};
use isboot::wire::text;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PREFIX: &str = "iqn.2026-11.org.isboot";

/// Run the built `isboot` with `--state-dir dir`; panics on failure.
pub fn isboot(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_isboot"))
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run isboot");
    assert!(
        o.status.success(),
        "isboot {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A state directory initialised with one base image `deb` of `size` bytes (patterned).
pub fn state_with_image(tmp: &Path, size: usize) -> PathBuf {
    let dir = tmp.join("state");
    isboot(
        &dir,
        &[
            "init",
            "--server-ip",
            "10.7.0.1/24",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let img = tmp.join("base.img");
    let mut data = vec![0u8; size];
    for (i, b) in data.chunks_mut(512).enumerate() {
        b.fill((i % 251) as u8);
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    }
    std::fs::write(&img, &data).unwrap();
    isboot(&dir, &["image", "add", "deb", img.to_str().unwrap()]);
    std::fs::remove_file(&img).unwrap();
    dir
}

/// Register client `name` (MAC from `n`) on image `deb`; returns its target IQN.
pub fn add_client(dir: &Path, n: u32, name: &str, extra: &[&str]) -> String {
    let mac = format!("52:54:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff);
    let mut a = vec![
        "add-client",
        "--mac",
        &mac,
        "--image",
        "deb",
        "--name",
        name,
    ];
    a.extend_from_slice(extra);
    isboot(dir, &a);
    format!("{PREFIX}:{name}")
}

pub fn initiator_of(name: &str) -> String {
    format!("{PREFIX}:initiator:{name}")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        if esc {
            if c.is_ascii_alphabetic() {
                esc = false;
            }
        } else if c == '\x1b' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// `isboot serve` on 127.0.0.1 with an ephemeral port; SIGKILLed by PID on drop unless stopped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    pub fn start(dir: &Path) -> Serve {
        Serve::start_with(dir, "info")
    }

    pub fn start_with(dir: &Path, rust_log: &str) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_isboot"))
            .arg("--state-dir")
            .arg(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn isboot serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if let Some(rest) = line.split(" serving listen=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("isboot serve did not start")
            .parse()
            .expect("listen address");
        Serve { child, addr, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// SIGTERM, wait (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn fds(&self) -> usize {
        open_fds(self.pid())
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// The answer to one raw login request.
#[derive(Debug)]
pub struct LoginAnswer {
    pub class: u8,
    pub detail: u8,
    pub transit: bool,
    pub nsg: u8,
    pub tsih: u16,
    pub keys: HashMap<String, String>,
}

/// Raw login exchanges on one connection (no checks of our own, so anything can be sent).
pub struct RawLogin {
    pub ini: Initiator,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl RawLogin {
    pub fn connect(addr: SocketAddr) -> RawLogin {
        let ini = Initiator::connect_raw(addr).expect("connect");
        ini.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        RawLogin {
            ini,
            isid: [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
            tsih: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    pub fn request(&self, csg: u8, nsg: u8, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg: if transit { nsg } else { 0 },
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: self.tsih,
            itt: 1,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }
    }

    /// Send one login request with raw text, read one response (None if the target closed).
    pub fn send_raw(&mut self, req: LoginRequest, data: &[u8]) -> Option<LoginAnswer> {
        self.ini.send(&Bhs::LoginRequest(req), data).ok()?;
        let (bhs, d) = self.ini.recv().ok()?;
        let Bhs::LoginResponse(r) = bhs else {
            panic!("expected a login response, got {bhs:?}");
        };
        self.exp_stat_sn = r.stat_sn.wrapping_add(1);
        self.tsih = r.tsih;
        let keys = text::parse(&d)
            .expect("the target's text parses")
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        Some(LoginAnswer {
            class: r.status_class,
            detail: r.status_detail,
            transit: r.transit,
            nsg: r.nsg,
            tsih: r.tsih,
            keys,
        })
    }

    pub fn send(&mut self, csg: u8, nsg: u8, transit: bool, keys: &[(&str, &str)]) -> LoginAnswer {
        let mut d = Vec::new();
        for (k, v) in keys {
            text::push(&mut d, k, v);
        }
        let req = self.request(csg, nsg, transit);
        self.send_raw(req, &d)
            .expect("the target answered the login request")
    }
}

#[track_caller]
pub fn assert_status(a: &LoginAnswer, class: u8, detail: u8) {
    assert_eq!(
        (a.class, a.detail),
        (class, detail),
        "login status {:02x}{:02x}, want {class:02x}{detail:02x}: {a:?}",
        a.class,
        a.detail
    );
}
