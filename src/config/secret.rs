//! CHAP secrets: a type that never prints, generated from the OS random source, and the
//! per-target secret files (`<state dir>/secrets/<target>.toml`, mode 0600 and owned by the state directory's
//! owner, directory 0750).
//!
//! A secret file is small TOML: `user`, `secret`, and optionally `mutual_user` and
//! `mutual_secret` (the target's own credentials for mutual CHAP). Secrets never appear on a
//! command line (`--chap-secret-file` reads an admin's own file, refused unless 0600 or
//! stricter), never in logs, and in output only with `show-client --show-secrets`.

use super::registry::Chap;
use super::{ConfigError, write_atomic};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Random bytes in a generated secret (RFC 7143 §12.1.3 asks for at least 96 bits).
pub const GENERATED_SECRET_BYTES: usize = 24;

/// A CHAP secret. `Debug` and `Display` print `<secret>`; [`Secret::expose`] is the only way
/// to the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// 24 bytes from the OS random source, base64url without padding (32 characters).
    pub fn generate() -> Result<Secret, ConfigError> {
        use base64::Engine;
        let mut b = [0u8; GENERATED_SECRET_BYTES];
        getrandom::fill(&mut b)
            .map_err(|e| ConfigError::BadArgument(format!("the OS random source failed: {e}")))?;
        Ok(Secret(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        ))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Generated CHAP credentials for a target named `user` (the client or maintenance name).
pub fn generate_chap(user: &str) -> Result<Chap, ConfigError> {
    Ok(Chap {
        user: user.to_string(),
        secret: Secret::generate()?,
        mutual_user: None,
        mutual_secret: None,
    })
}

/// The directory holding the secret files.
pub fn secrets_dir(root: &Path) -> PathBuf {
    root.join("secrets")
}

/// The secret file of the target called `name` (client name, or `maint-<image>`).
pub fn secret_path(root: &Path, name: &str) -> PathBuf {
    secrets_dir(root).join(format!("{name}.toml"))
}

/// Who may write the secret files of a state directory directly: root, and the user that owns
/// the directory (the service's user `isboot` with the Debian package). Anyone else (a member
/// of group `isboot`) asks the running service ([`crate::service::secrets`]), so the files stay
/// 0600 and owned by the service's user.
fn writes_directly(root: &Path) -> bool {
    let me = rustix::process::geteuid();
    me.is_root() || std::fs::metadata(root).is_ok_and(|m| m.uid() == me.as_raw())
}

/// The state directory and target name of a secret file path (`<root>/secrets/<name>.toml`).
fn root_and_name(path: &Path) -> (PathBuf, String) {
    let root = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (root, name)
}

/// Write `chap` to `path` (0600, owned by the state directory's owner) in a 0750 directory.
/// Root's files are handed to that owner; a user who is neither root nor the owner has the
/// running service write them (refused with a clear error when none answers).
pub fn write_secret_file(path: &Path, chap: &Chap) -> Result<(), ConfigError> {
    let (root, name) = root_and_name(path);
    if !writes_directly(&root) {
        return crate::service::secrets::ask_service(&root, &name, Some(chap))
            .map_err(ConfigError::BadArgument);
    }
    write_secret_here(path, chap)
}

/// [`write_secret_file`] by this process (root or the state directory's owner); what the
/// service runs for a member of group `isboot`.
pub fn write_secret_here(path: &Path, chap: &Chap) -> Result<(), ConfigError> {
    let (root, _) = root_and_name(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let werr = |source| ConfigError::Writing {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(werr)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(werr)?;
    let text = format!(
        "# CHAP credentials of one isboot target. Keep this file 0600.\n{}",
        toml::to_string(chap).map_err(|e| ConfigError::BadArgument(e.to_string()))?
    );
    write_atomic(path, text.as_bytes(), 0o600)?;
    // Root's files go to the directory's owner (the service's user), who must read them.
    let owner = std::fs::metadata(&root).map_err(werr)?;
    if rustix::process::geteuid().is_root() && owner.uid() != 0 {
        for p in [dir, path] {
            std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).map_err(werr)?;
        }
    }
    Ok(())
}

/// Read a secret file; `Ok(None)` when there is none. With `strict`, a file that group or
/// others may read is refused (an admin's `--chap-secret-file`).
pub fn read_secret_file(path: &Path, strict: bool) -> Result<Option<Chap>, ConfigError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !strict => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Reading {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if strict && meta.mode() & 0o077 != 0 {
        return Err(ConfigError::BadArgument(format!(
            "{} is readable by others (mode {:o}): chmod 600 it first",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Reading {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| ConfigError::Parsing {
            path: path.to_path_buf(),
            // The parser quotes the offending line, which may hold the secret: say where only.
            message: e
                .span()
                .map(|s| format!("bad TOML at byte {} (expected user, secret)", s.start))
                .unwrap_or_else(|| "bad TOML (expected user, secret)".into()),
        })
}

/// Remove a secret file if it exists (through the running service for a user who may not
/// write the directory, see [`write_secret_file`]).
pub fn remove_secret_file(path: &Path) -> Result<(), ConfigError> {
    let (root, name) = root_and_name(path);
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ if !writes_directly(&root) => {
            return crate::service::secrets::ask_service(&root, &name, None)
                .map_err(ConfigError::BadArgument);
        }
        _ => {}
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ConfigError::Writing {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_are_random() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(format!("{a}"), "<secret>");
        assert_eq!(format!("{a:?}"), "<secret>");
        let c = generate_chap("pc1").unwrap();
        assert!(!format!("{c:?}").contains(c.secret.expose()));
    }

    #[test]
    fn secret_files_are_private_and_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let p = secret_path(t.path(), "pc1");
        assert!(read_secret_file(&p, false).unwrap().is_none());
        let mut c = generate_chap("pc1").unwrap();
        c.mutual_user = Some("srv".into());
        c.mutual_secret = Some(Secret::generate().unwrap());
        write_secret_file(&p, &c).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let d = secrets_dir(t.path());
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o750);
        assert_eq!(read_secret_file(&p, true).unwrap(), Some(c));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_file(&p, true).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::write(&p, "user = \"x\"\nsecret = \n").unwrap();
        let e = read_secret_file(&p, false).unwrap_err().to_string();
        assert!(!e.contains("secret ="), "{e}");
    }
}
