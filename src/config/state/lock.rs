//! The locks: the directory lock every change takes, and the lock one `isboot serve` holds.

use super::{Locked, StateDir, io_write};
use crate::config::ConfigError;
use std::fs::{File, OpenOptions};

impl StateDir {
    /// Take the directory lock (waiting for another command to finish) and read the state.
    /// With a shared state (`[store] shared_state`), also take its lock in the pool and bring
    /// the directory up to it first ([`super::shared`]).
    pub fn lock(&self) -> Result<Locked, ConfigError> {
        let f = self.dir_lock()?;
        #[cfg_attr(not(feature = "rbd"), allow(unused_mut))]
        let mut state = self.load()?;
        #[cfg(feature = "rbd")]
        let shared = if state.config.store.shared_state() {
            let before = self.shared_generation();
            let held = super::shared::Shared::connect(&state.config.store)?.hold(self)?;
            if self.shared_generation() != before {
                // The pool had a newer state: it is in the files now.
                state = self.load()?;
            }
            Some(held)
        } else {
            None
        };
        Ok(Locked {
            _lock: f,
            state,
            #[cfg(feature = "rbd")]
            shared,
        })
    }

    /// The directory lock alone (waiting for another command to finish).
    pub(crate) fn dir_lock(&self) -> Result<File, ConfigError> {
        if !self.config_path().exists() {
            return Err(ConfigError::NotInitialised(self.root.clone()));
        }
        self.check_writable()?;
        let lp = self.root.join(".lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lp)
            .map_err(|source| ConfigError::NotWritable {
                path: self.root.clone(),
                source,
            })?;
        crate::config::take_dir_group(&f, &self.root);
        if let Err(source) = crate::sys::lock_exclusive(&f) {
            return Err(ConfigError::Writing { path: lp, source });
        }
        Ok(f)
    }

    /// Claim the state directory for one `isboot serve` (two servers would open the same
    /// overlays twice). Held until the returned file is dropped.
    pub fn lock_server(&self) -> Result<File, ConfigError> {
        let run = self.root.join("run");
        std::fs::create_dir_all(&run).map_err(io_write(&run))?;
        let p = run.join("serve.pid");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_write(&p))?;
        if !crate::sys::try_lock_exclusive(&f).map_err(io_write(&p))? {
            let pid = std::fs::read_to_string(&p)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(ConfigError::ServerRunning(if pid.is_empty() {
                "?".into()
            } else {
                pid
            }));
        }
        use std::io::Write;
        f.set_len(0).map_err(io_write(&p))?;
        writeln!(f, "{}", std::process::id()).map_err(io_write(&p))?;
        Ok(f)
    }
}
