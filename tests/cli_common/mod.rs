//! Helpers shared by the CLI tests: run the built `isboot` binary on a temporary state dir,
//! snapshot the state dir to prove refused commands change nothing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    /// Assert success and return stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }
    /// Assert failure with `code`, a one-line error containing `msg`.
    #[track_caller]
    pub fn fails(&self, code: i32, msg: &str) {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(msg),
            "expected {msg:?} in stderr: {}",
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "error is not one line: {}",
            self.stderr
        );
        assert!(self.stderr.starts_with("isboot: "), "{}", self.stderr);
    }
}

pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Lab {
    /// A fresh temp dir with an uninitialised state dir path.
    pub fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        Lab { tmp, dir }
    }

    /// Initialised with server 10.7.0.1/24 and a 4 MiB raw image "deb".
    pub fn with_image() -> Lab {
        let lab = Lab::new();
        lab.run(&["init", "--server-ip", "10.7.0.1/24"]).ok();
        let img = lab.file("deb.img", &pattern(4 << 20, 1));
        lab.run(&["image", "add", "deb", img.to_str().unwrap()])
            .ok();
        lab
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_isboot"));
        c.args(args)
            .env("ISBOOT_STATE_DIR", &self.dir)
            .env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    }

    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        snapshot(&self.dir)
    }

    /// Run a command that must be refused with `code` and `msg`, and change nothing.
    #[track_caller]
    pub fn refused(&self, args: &[&str], code: i32, msg: &str) {
        let before = self.snapshot();
        self.run(args).fails(code, msg);
        let after = self.snapshot();
        assert!(
            before == after,
            "{args:?} changed the state dir: {:?} -> {:?}",
            before.keys(),
            after.keys()
        );
    }

    pub fn registry(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.toml")).unwrap()
    }

    pub fn add(&self, mac: &str, name: &str, extra: &[&str]) {
        let mut a = vec!["add-client", "--mac", mac, "--image", "deb", "--name", name];
        a.extend_from_slice(extra);
        self.run(&a).ok();
    }

    /// Pretend a live `isboot serve` publishes that `target` has a session from `peer`.
    pub fn fake_session(&self, target: &str, peer: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let s = serde_json::json!({
            "pid": std::process::id(),
            "updated": now,
            "listen": "127.0.0.1:3260",
            "targets": [{
                "iqn": target, "kind": "client", "name": "x", "image": "deb", "base_version": 1,
                "sessions": [{"initiator": "iqn.2026-11.org.isboot:initiator:x", "peer": peer}],
                "bytes_read": 123456789u64, "bytes_written": 4096u64, "overlay_bytes": 0u64
            }]
        });
        std::fs::create_dir_all(self.dir.join("run")).unwrap();
        std::fs::write(
            self.dir.join("run/status.json"),
            serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
    }
}

/// Deterministic bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i as u8))
        .collect()
}

/// Every file under `root` (relative path -> content), without the lock file.
pub fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    fn walk(root: &Path, d: &Path, m: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                m.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, m);
            } else if rel != ".lock" {
                m.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    walk(root, root, &mut m);
    m
}

/// Makes a directory immutable (even root cannot create files in it) until dropped.
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn new(p: &Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Immutable(p.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}
