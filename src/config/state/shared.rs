//! The state a fleet shares (`[store] backend = "rbd"`, `shared_state = true`): the registry
//! (images, versions, clients, next-boot choices) and the CHAP secret files of its targets, as
//! one RADOS object `isboot-state` in the pool. The state directory keeps working copies of
//! them, so everything that reads the state (the server's targets, DHCP, the CLI) is unchanged.
//!
//! - **A change** ([`StateDir::lock`]) takes the directory lock, then the RADOS lock on the
//!   object (so two servers' commands take turns), copies the object into the directory when it
//!   is newer, and loads the state; [`Locked::save`] writes the files and then the object,
//!   with a compare-and-write on its generation attribute (a change that lost its RADOS lock
//!   to expiry, e.g. a command stopped for a minute, is refused rather than overwriting a newer
//!   state), and notifies the object's watchers.
//! - **A running server** watches the object ([`crate::service::shared`]): a notify (or, as a
//!   fallback, every few seconds) copies the object into its directory, and the server's
//!   one-second poll of its files reloads the targets.
//! - **A CLI command that only reads** copies the object first ([`StateDir::pull_shared`]).
//!
//! The object is JSON ([`Bundle`]); secrets are checked as CHAP records and written 0600 like
//! the directory's own, and their names as target names, so a bad object cannot write outside
//! `secrets/`. Ceph's cephx key of the pool is what guards it (the same key reads the disks).

use super::{StateDir, io_write, maint_secret_name};
use crate::config::registry::{Chap, Registry};
use crate::config::secret::{read_secret_file, remove_secret_file, secret_path, secrets_dir};
use crate::config::{ConfigError, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The RADOS object that holds the shared state.
pub const STATE_OBJECT: &str = "isboot-state";
/// Where the directory records which generation of the object its files are.
const GEN_FILE: &str = "run/shared-gen";

/// The shared state as stored in the object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Bumped by every change; the object's `isboot.gen` attribute holds the same number.
    pub generation: u64,
    /// `registry.toml`'s text.
    pub registry: String,
    /// Target name → its CHAP record.
    pub secrets: BTreeMap<String, Chap>,
}

impl Bundle {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Bundle, String> {
        let b: Bundle =
            serde_json::from_slice(bytes).map_err(|e| format!("not isboot's state: {e}"))?;
        toml::from_str::<Registry>(&b.registry)
            .map_err(|e| format!("its registry does not parse: {}", e.message()))?;
        if let Some(bad) = b.secrets.keys().find(|n| !secret_name_ok(n)) {
            return Err(format!(
                "it names a secret {bad:?}, which is no target name"
            ));
        }
        Ok(b)
    }
}

/// A target name as secret files use it: letters, digits, '-', '_', '.'; not starting with '.'.
fn secret_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The target names whose secrets the registry uses: its clients, and the maintenance target
/// of an image being edited.
fn secret_names(reg: &Registry) -> Vec<String> {
    let clients = reg.clients.iter().map(|c| c.name.to_string());
    let maint = reg
        .images
        .iter()
        .filter(|i| i.maintenance.is_some())
        .map(|i| maint_secret_name(&i.name));
    clients.chain(maint).collect()
}

impl StateDir {
    /// The generation of the shared state this directory's files are (0: none yet).
    pub fn shared_generation(&self) -> u64 {
        std::fs::read_to_string(self.path(GEN_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn set_shared_generation(&self, generation: u64) -> Result<(), ConfigError> {
        let p = self.path(GEN_FILE);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io_write(d))?;
        }
        write_atomic(&p, format!("{generation}\n").as_bytes(), 0o644)
    }

    /// This directory's registry and its targets' secrets as generation `generation`.
    pub fn local_bundle(&self, generation: u64) -> Result<Bundle, ConfigError> {
        let (registry, reg) = self.read_registry()?;
        let mut secrets = BTreeMap::new();
        for name in secret_names(&reg) {
            if let Some(chap) = read_secret_file(&secret_path(self.root(), &name), false)? {
                secrets.insert(name, chap);
            }
        }
        Ok(Bundle {
            generation,
            registry,
            secrets,
        })
    }

    /// Make this directory's registry and secrets those of `b` (secret files of targets `b`
    /// does not have are removed), and record its generation. Call with the directory lock.
    pub fn apply_bundle(&self, b: &Bundle) -> Result<(), ConfigError> {
        for (name, chap) in &b.secrets {
            crate::config::secret::write_secret_here(&secret_path(self.root(), name), chap)?;
        }
        let dir = secrets_dir(self.root());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(stem) = name.strip_suffix(".toml") {
                    if !b.secrets.contains_key(stem) {
                        remove_secret_file(&e.path())?;
                    }
                }
            }
        }
        write_atomic(
            &self.registry_path(),
            b.registry.as_bytes(),
            super::REGISTRY_MODE,
        )?;
        self.set_shared_generation(b.generation)
    }
}

#[cfg(feature = "rbd")]
pub use ceph::{Held, Shared};

#[cfg(feature = "rbd")]
mod ceph {
    use super::{Bundle, STATE_OBJECT};
    use crate::config::ConfigError;
    use crate::config::state::{Locked, StateDir};
    use crate::config::store::StoreConfig;
    use crate::store::rbd::RbdStore;
    use crate::store::rbd::ffi::IoCtx;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// The object's attribute with the generation (decimal), for compare-and-write.
    const GEN_XATTR: &str = "isboot.gen";
    /// The RADOS lock changes take on the object.
    const LOCK_NAME: &str = "isboot-state-change";
    /// A lock whose holder died expires after this long.
    const LOCK_SECS: i64 = 60;
    /// How long a change waits for another server's change to finish.
    const LOCK_WAIT: Duration = Duration::from_secs(30);
    /// How long a notify waits for the watchers' acknowledgements.
    const NOTIFY_MS: u64 = 3000;

    /// The pool's shared state: a connection to it.
    pub struct Shared {
        io: Arc<IoCtx>,
    }

    /// The RADOS lock on the state object, held by a [`Locked`]; released when dropped.
    pub struct Held {
        io: Arc<IoCtx>,
        cookie: String,
        /// The object's generation when the lock was taken (or last saved): the next save
        /// writes the one after it, if the object is still at it.
        pub(in crate::config::state) generation: u64,
    }

    impl Drop for Held {
        fn drop(&mut self) {
            let _ = self.io.unlock_object(STATE_OBJECT, LOCK_NAME, &self.cookie);
        }
    }

    fn ceph(what: &str, e: std::io::Error) -> ConfigError {
        ConfigError::BadArgument(format!(
            "the shared state in the Ceph pool: {what}: {e} (check [store] in isboot.toml and \
             that the cluster is up)"
        ))
    }

    impl Shared {
        /// Connect to the pool of `store` (one connection per process and pool, reused).
        pub fn connect(store: &StoreConfig) -> Result<Arc<Shared>, ConfigError> {
            static CONNECTED: Mutex<Vec<(String, Arc<Shared>)>> = Mutex::new(Vec::new());
            let cfg = store.rbd_config();
            let key = format!("{}\0{}\0{}", cfg.conf, cfg.client, cfg.pool);
            let mut all = CONNECTED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, s)) = all.iter().find(|(k, _)| *k == key) {
                return Ok(s.clone());
            }
            let store = RbdStore::connect(&cfg)?;
            let s = Arc::new(Shared {
                io: store.ioctx().clone(),
            });
            all.push((key, s.clone()));
            Ok(s)
        }

        pub fn ioctx(&self) -> &Arc<IoCtx> {
            &self.io
        }

        /// The object's state, if it exists.
        pub fn read(&self) -> Result<Option<Bundle>, ConfigError> {
            // Taking the lock creates the object: empty means no state yet.
            let bytes = match self.io.read_object(STATE_OBJECT) {
                Ok(Some(b)) if !b.is_empty() => b,
                Ok(_) => return Ok(None),
                Err(e) => return Err(ceph(&format!("reading {STATE_OBJECT}"), e)),
            };
            Bundle::decode(&bytes)
                .map(Some)
                .map_err(|e| ConfigError::BadArgument(format!("{STATE_OBJECT} in the pool: {e}")))
        }

        /// Copy the object into `dir` when it is newer than the directory's files (call with
        /// the directory lock); the object's generation (0: no object yet).
        pub fn pull_into(&self, dir: &StateDir) -> Result<u64, ConfigError> {
            match self.read()? {
                Some(b) => {
                    if b.generation > dir.shared_generation() {
                        dir.apply_bundle(&b)?;
                    }
                    Ok(b.generation)
                }
                None => Ok(0),
            }
        }

        /// Bring `dir` up to the object, taking the directory lock; the generation it copied,
        /// if it copied one.
        pub fn refresh(&self, dir: &StateDir) -> Result<Option<u64>, ConfigError> {
            let _lock = dir.dir_lock()?;
            let before = dir.shared_generation();
            let now = self.pull_into(dir)?;
            Ok((now > before).then_some(now))
        }

        /// Take the change lock (waiting up to 30 s for another server's change), then bring
        /// `dir` up to the object.
        pub fn hold(&self, dir: &StateDir) -> Result<Held, ConfigError> {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            // One cookie per change: two changes of one process take turns too.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let cookie = format!("{host}:{}:{n}", std::process::id());
            let start = Instant::now();
            loop {
                let got = self
                    .io
                    .try_lock_object(STATE_OBJECT, LOCK_NAME, &cookie, "isboot change", LOCK_SECS)
                    .map_err(|e| ceph("taking its lock", e))?;
                if got {
                    break;
                }
                if start.elapsed() > LOCK_WAIT {
                    return Err(ConfigError::BadArgument(format!(
                        "another isboot server has been changing the shared state for over \
                         {}s; try again (a server that died releases it within {LOCK_SECS}s)",
                        LOCK_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Released by its Drop if the pull fails.
            let mut held = Held {
                io: self.io.clone(),
                cookie,
                generation: 0,
            };
            held.generation = self.pull_into(dir)?;
            Ok(held)
        }

        /// Write `dir`'s files to the object as the next generation after `held`'s, if the
        /// object is still at that generation, and tell the other servers.
        pub fn push(&self, dir: &StateDir, held: &mut Held) -> Result<(), ConfigError> {
            let next = held.generation + 1;
            let b = dir.local_bundle(next)?;
            // The lock made the object if there was none; its first state has no attribute.
            let prev = match held.generation {
                0 => String::new(),
                g => g.to_string(),
            };
            match self.io.replace_object(
                STATE_OBJECT,
                &b.encode(),
                GEN_XATTR,
                prev.as_bytes(),
                next.to_string().as_bytes(),
            ) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                    return Err(ConfigError::BadArgument(
                        "the shared state changed on another server while this command ran \
                         (its lock expired): nothing of this change reached the pool; run the \
                         command again"
                            .into(),
                    ));
                }
                Err(e) => return Err(ceph(&format!("writing {STATE_OBJECT}"), e)),
            }
            held.generation = next;
            dir.set_shared_generation(next)?;
            if let Err(e) = self.io.notify(STATE_OBJECT, NOTIFY_MS) {
                // The others still pick it up by their periodic read.
                tracing::warn!("shared state: notifying the other servers: {e}");
            }
            Ok(())
        }
    }

    impl Locked {
        /// After the files are written: the shared state's part of a save.
        pub(in crate::config::state) fn push_shared(&mut self) -> Result<(), ConfigError> {
            let Some(held) = self.shared.as_mut() else {
                return Ok(());
            };
            let s = Shared::connect(&self.state.config.store)?;
            s.push(&self.state.dir, held)
        }
    }
}

impl StateDir {
    /// Bring this directory's files up to the pool's shared state (when `[store]
    /// shared_state` is on), under the directory lock.
    /// A config that does not load is left to the command to report.
    pub fn pull_shared(&self) -> Result<(), ConfigError> {
        let Ok(config) = crate::config::Config::load(&self.config_path()) else {
            return Ok(());
        };
        if !config.store.shared_state() {
            return Ok(());
        }
        #[cfg(feature = "rbd")]
        ceph::Shared::connect(&config.store)?.refresh(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::generate_chap;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let d = StateDir::new(t.path());
        d.init(None, None, None).unwrap();
        (t, d)
    }

    #[test]
    fn a_bundle_round_trips_through_another_directory() {
        let (_ta, a) = dir();
        let (_tb, b) = dir();
        let reg = "serial = 7\n".to_string();
        std::fs::write(a.registry_path(), &reg).unwrap();
        let got = a.local_bundle(3).unwrap();
        assert_eq!(got.generation, 3);
        assert_eq!(got.registry, reg);
        assert!(got.secrets.is_empty());
        let mut with = got.clone();
        with.secrets
            .insert("pc1".into(), generate_chap("pc1").unwrap());
        // A secret file of a target the bundle does not have goes.
        let stale = secret_path(b.root(), "old");
        crate::config::secret::write_secret_here(&stale, &generate_chap("old").unwrap()).unwrap();
        let decoded = Bundle::decode(&with.encode()).unwrap();
        assert_eq!(decoded, with);
        b.apply_bundle(&decoded).unwrap();
        assert_eq!(std::fs::read_to_string(b.registry_path()).unwrap(), reg);
        assert_eq!(b.shared_generation(), 3);
        assert!(!stale.exists());
        let p = secret_path(b.root(), "pc1");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            read_secret_file(&p, true).unwrap().as_ref(),
            with.secrets.get("pc1")
        );
    }

    #[test]
    fn a_bad_object_is_refused_before_anything_is_written() {
        let ok = Bundle {
            generation: 1,
            registry: String::new(),
            secrets: BTreeMap::new(),
        };
        assert!(Bundle::decode(&ok.encode()).is_ok());
        for name in ["../../etc/x", ".hidden", "a/b", ""] {
            let mut b = ok.clone();
            b.secrets.insert(name.into(), generate_chap("x").unwrap());
            let e = Bundle::decode(&b.encode()).unwrap_err();
            assert!(e.contains("no target name"), "{name}: {e}");
        }
        let mut b = ok.clone();
        b.registry = "serial = \"x\"".into();
        assert!(
            Bundle::decode(&b.encode())
                .unwrap_err()
                .contains("registry")
        );
        assert!(
            Bundle::decode(b"{}")
                .unwrap_err()
                .contains("not isboot's state")
        );
        assert!(Bundle::decode(b"\xff").is_err());
    }

    #[test]
    fn only_the_registrys_targets_secrets_are_shared() {
        let (_t, a) = dir();
        crate::config::secret::write_secret_here(
            &secret_path(a.root(), "gone"),
            &generate_chap("gone").unwrap(),
        )
        .unwrap();
        assert!(a.local_bundle(1).unwrap().secrets.is_empty());
    }
}
