//! What a running `isboot serve` reports in its status file (rewritten every second), as
//! the commands that must not disturb a live session read it.

use super::State;
use crate::config::ConfigError;
use crate::config::names::{ImageName, Iqn};
use crate::config::status::{ServerStatus, SessionStatus};

impl State {
    /// Sessions of the target `iqn` according to a running server, if any.
    pub fn sessions_of(&self, iqn: &Iqn) -> Vec<SessionStatus> {
        ServerStatus::load_live(&self.dir.status_path())
            .and_then(|s| s.target(iqn.as_str()).map(|t| t.sessions.clone()))
            .unwrap_or_default()
    }

    /// Wait until a running server shows the maintenance disk of `name` idle and flushed. A
    /// session that just ended may have left map changes in the server's memory (it flushes
    /// overlays nobody uses every second): wait for a status the server wrote after this point
    /// that shows the maintenance disk idle and flushed. Without a running server there is
    /// nothing to wait for.
    pub(super) fn wait_flushed(&self, name: &ImageName) -> Result<(), ConfigError> {
        let iqn = self.maintenance_iqn(name);
        let path = self.dir.status_path();
        let t0 = crate::config::now_unix_ms();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Some(s) = ServerStatus::load_live(&path) {
            if s.updated_ms > t0 {
                match s.target(iqn.as_str()) {
                    Some(t) if !t.sessions.is_empty() => {
                        let from: Vec<String> = t.sessions.iter().map(|s| s.peer.clone()).collect();
                        return Err(ConfigError::LoggedIn {
                            what: format!("maintenance target of {name}"),
                            from: from.join(", "),
                        });
                    }
                    Some(t) if t.unflushed => {}
                    _ => break,
                }
            }
            if std::time::Instant::now() > until {
                return Err(ConfigError::Unflushed(name.to_string()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }
}
