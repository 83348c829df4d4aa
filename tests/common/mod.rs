//! Shared helpers for integration tests: run `isboot export` on loopback, make images.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `isboot export` process on 127.0.0.1 with an ephemeral port; stopped (SIGTERM, then
/// SIGKILL) by PID on drop.
pub struct Export {
    pub child: Child,
    pub addr: SocketAddr,
    pub iqn: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Export {
    pub fn start(image: &Path, extra: &[&str]) -> Export {
        let mut child = Command::new(env!("CARGO_BIN_EXE_isboot"))
            .arg("export")
            .arg(image)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn isboot export");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("isboot export: serving") {
                    let _ = tx.send(line.clone());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("isboot export did not start");
        // "... as IQN LUN 0 on ADDR — Ctrl-C to stop"
        let iqn = line
            .split(" as ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let addr = line
            .split(" on ")
            .last()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Export {
            child,
            addr,
            iqn,
            log,
        }
    }

    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://{}/{}/{}", self.addr, self.iqn, lun)
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temp file of `size` bytes whose every 512-byte block starts with its block number and is
/// filled with a pattern derived from it.
pub fn patterned_image(dir: &Path, name: &str, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut data = vec![0u8; size];
    for (i, block) in data.chunks_mut(512).enumerate() {
        block.fill((i % 251) as u8);
        block[..8].copy_from_slice(&(i as u64).to_be_bytes());
    }
    std::fs::write(&path, &data).unwrap();
    path
}

/// Is this program installed? Tests that need it print SKIPPED and return when not.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// Log in to a target and clear the unit attention every new session starts with.
pub fn connect_ready(
    addr: SocketAddr,
    opts: &isboot::initiator::LoginOptions,
) -> isboot::initiator::Initiator {
    let mut i = isboot::initiator::Initiator::connect(addr, opts).expect("login");
    i.clear_unit_attention(0).expect("unit attention clears");
    i
}
