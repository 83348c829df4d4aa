//! The `[store]` section of `isboot.toml`: where base images and client disks live. `file`
//! (the default) is this server's state directory; `rbd` is a Ceph pool that several isboot
//! servers share (an isboot built with the cargo feature `rbd`; see docs/scale-out.md).
//! Parsing only checks the values; connecting to the cluster is the store's job.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_CEPH_CONF: &str = "/etc/ceph/ceph.conf";
pub const DEFAULT_POOL: &str = "isboot";
pub const DEFAULT_CLIENT: &str = "client.isboot";
pub const DEFAULT_KEYRING: &str = "/etc/ceph/ceph.client.isboot.keyring";
/// Longest pool name accepted (Ceph itself takes longer ones; isboot has no use for them).
const MAX_POOL_LEN: usize = 100;

/// Which store holds the disks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Base versions and overlays as files in the state directory.
    #[default]
    File,
    /// Base versions as RBD snapshots, client disks as their clones, in one Ceph pool.
    Rbd,
}

/// `[store]`. Every field is optional; the accessors give the effective value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_conf: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<PathBuf>,
    /// Keep clients, images and secrets in the pool too (`config::state::shared`), so every
    /// server pointed at the pool sees every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_state: Option<bool>,
}

impl StoreConfig {
    pub fn backend(&self) -> Backend {
        self.backend.unwrap_or_default()
    }

    pub fn ceph_conf(&self) -> &Path {
        self.ceph_conf
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CEPH_CONF))
    }

    pub fn pool(&self) -> &str {
        self.pool.as_deref().unwrap_or(DEFAULT_POOL)
    }

    pub fn client(&self) -> &str {
        self.client.as_deref().unwrap_or(DEFAULT_CLIENT)
    }

    pub fn keyring(&self) -> &Path {
        self.keyring
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_KEYRING))
    }

    /// Whether the state is shared through the pool (`shared_state = true`, RBD only).
    pub fn shared_state(&self) -> bool {
        self.backend() == Backend::Rbd && self.shared_state.unwrap_or(false)
    }

    /// The cluster and pool of `backend = "rbd"`, for the RBD store.
    #[cfg(feature = "rbd")]
    pub fn rbd_config(&self) -> crate::store::rbd::RbdConfig {
        crate::store::rbd::RbdConfig {
            conf: self.ceph_conf().to_string_lossy().into_owned(),
            keyring: self.keyring().to_string_lossy().into_owned(),
            client: self.client().to_string(),
            pool: self.pool().to_string(),
        }
    }

    /// Check the values; the error is one line naming the key and what to do.
    pub fn validate(&self) -> Result<(), String> {
        let ceph_keys: Vec<&str> = [
            ("ceph_conf", self.ceph_conf.is_some()),
            ("pool", self.pool.is_some()),
            ("client", self.client.is_some()),
            ("keyring", self.keyring.is_some()),
            ("shared_state", self.shared_state.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if self.backend() == Backend::File {
            if !ceph_keys.is_empty() {
                return Err(format!(
                    "[store] {} only apply to backend = \"rbd\"; set backend = \"rbd\" or \
                     comment them out",
                    ceph_keys.join(", ")
                ));
            }
            return Ok(());
        }
        if !cfg!(feature = "rbd") {
            return Err(
                "[store] backend = \"rbd\" needs an isboot built with the rbd feature \
                        (cargo build --release --features rbd, with librbd-dev installed); \
                        this one was built without it"
                    .into(),
            );
        }
        absolute_file("ceph_conf", self.ceph_conf())?;
        absolute_file("keyring", self.keyring()).map_err(|e| {
            format!("{e} (the path of a keyring file: the key itself never goes in isboot.toml)")
        })?;
        let pool = self.pool();
        if pool.is_empty()
            || pool.len() > MAX_POOL_LEN
            || !pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "[store] pool {pool:?} is not a pool name isboot uses: 1 to {MAX_POOL_LEN} \
                 letters, digits, '-', '_' or '.'"
            ));
        }
        let client = self.client();
        let name_ok = client.strip_prefix("client.").is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
        if !name_ok {
            return Err(format!(
                "[store] client {client:?} is not a Ceph client name: \"client.\" and then \
                 letters, digits, '-', '_' or '.' (e.g. \"{DEFAULT_CLIENT}\")"
            ));
        }
        Ok(())
    }

    /// The section's text, every key with a comment; keys left out are shown commented with
    /// their default.
    pub fn render(&self) -> String {
        fn key(s: &mut String, name: &str, set: Option<String>, default: &str) {
            match set {
                Some(v) => s.push_str(&format!("{name} = {v}\n")),
                None => s.push_str(&format!("# {name} = \"{default}\"\n")),
            }
        }
        fn quoted(v: &str) -> String {
            toml::Value::String(v.to_string()).to_string()
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| quoted(&p.to_string_lossy()));
        let mut s = String::from(
            "[store]\n\
             # Where base images and client disks live. \"file\" (default): this server's\n\
             # state directory. \"rbd\": a Ceph pool that several isboot servers share (an\n\
             # isboot built with --features rbd; see docs/scale-out.md). The keys below\n\
             # apply to \"rbd\" only.\n",
        );
        let backend = self.backend.map(|b| {
            quoted(match b {
                Backend::File => "file",
                Backend::Rbd => "rbd",
            })
        });
        key(&mut s, "backend", backend, "file");
        s.push_str("# Ceph configuration file with the monitor addresses.\n");
        key(
            &mut s,
            "ceph_conf",
            path(&self.ceph_conf),
            DEFAULT_CEPH_CONF,
        );
        s.push_str("# Pool holding the base versions (snapshots) and the client disks (clones).\n");
        key(
            &mut s,
            "pool",
            self.pool.as_deref().map(quoted),
            DEFAULT_POOL,
        );
        s.push_str(
            "# Ceph user isboot connects as; caps: mon 'profile rbd', osd 'profile rbd\n\
             # pool=<pool>'.\n",
        );
        key(
            &mut s,
            "client",
            self.client.as_deref().map(quoted),
            DEFAULT_CLIENT,
        );
        s.push_str(
            "# Keyring file with that user's key (mode 0600). The key itself never goes in\n\
             # this file or on a command line.\n",
        );
        key(&mut s, "keyring", path(&self.keyring), DEFAULT_KEYRING);
        s.push_str(
            "# true: clients, images, secrets and next-boot choices live in the pool too (one\n\
             # RADOS object, isboot-state), so every isboot server pointed at this pool sees a\n\
             # change made on any of them within seconds. A server that joins adopts the\n\
             # pool's state (start it with a fresh `isboot init`). Anyone with the pool's key\n\
             # can read the CHAP secrets in it, as they can read the disks.\n",
        );
        match self.shared_state {
            Some(v) => s.push_str(&format!("shared_state = {v}\n")),
            None => s.push_str("# shared_state = false\n"),
        }
        s
    }
}

fn absolute_file(key: &str, p: &Path) -> Result<(), String> {
    let text = p.to_string_lossy();
    if !p.is_absolute() || text.contains('\0') || text.ends_with('/') {
        return Err(format!(
            "[store] {key} {text:?} must be the absolute path of a file"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreConfig, String> {
        let c: StoreConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn default_is_the_file_store_and_renders_commented() {
        let c = parse("").unwrap();
        assert_eq!(c.backend(), Backend::File);
        let text = c.render();
        assert!(text.contains("# backend = \"file\""), "{text}");
        assert!(text.contains("# keyring = \"/etc/ceph/ceph.client.isboot.keyring\""));
        assert_eq!(parse(text.trim_start_matches("[store]\n")).unwrap(), c);
    }

    #[test]
    fn ceph_keys_without_the_rbd_backend_are_refused() {
        let e = parse("pool = \"fleet\"").unwrap_err();
        assert!(e.contains("pool only apply to backend = \"rbd\""), "{e}");
        let e = parse("backend = \"file\"\nkeyring = \"/k\"\nclient = \"client.x\"").unwrap_err();
        assert!(e.contains("client, keyring only apply"), "{e}");
    }

    #[test]
    fn unknown_backend_or_key_is_refused() {
        assert!(
            parse("backend = \"nfs\"")
                .unwrap_err()
                .contains("unknown variant")
        );
        assert!(
            parse("keyfile = \"/k\"")
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[cfg(not(feature = "rbd"))]
    #[test]
    fn rbd_backend_needs_the_feature() {
        let e = parse("backend = \"rbd\"").unwrap_err();
        assert!(e.contains("--features rbd"), "{e}");
    }

    #[cfg(feature = "rbd")]
    #[test]
    fn rbd_backend_values_are_checked_and_round_trip() {
        let text = "backend = \"rbd\"\nceph_conf = \"/etc/ceph/fleet.conf\"\npool = \"lab-1\"\n\
                    client = \"client.isboot-a\"\nkeyring = \"/etc/isboot/ceph.keyring\"\n";
        let c = parse(text).unwrap();
        assert_eq!(c.backend(), Backend::Rbd);
        assert_eq!(c.pool(), "lab-1");
        assert_eq!(c.client(), "client.isboot-a");
        assert_eq!(c.keyring(), Path::new("/etc/isboot/ceph.keyring"));
        assert_eq!(
            parse(c.render().trim_start_matches("[store]\n")).unwrap(),
            c
        );
        // Defaults for everything but the backend.
        let d = parse("backend = \"rbd\"").unwrap();
        assert_eq!(d.ceph_conf(), Path::new(DEFAULT_CEPH_CONF));
        assert_eq!(d.client(), DEFAULT_CLIENT);

        let bad = |extra: &str| parse(&format!("backend = \"rbd\"\n{extra}")).unwrap_err();
        assert!(bad("pool = \"a/b\"").contains("not a pool name"));
        assert!(bad("pool = \"\"").contains("not a pool name"));
        assert!(bad("client = \"isboot\"").contains("not a Ceph client name"));
        assert!(bad("client = \"client.\"").contains("not a Ceph client name"));
        assert!(bad("ceph_conf = \"ceph.conf\"").contains("absolute path"));
        let e = bad("keyring = \"AQBxyz==\"");
        assert!(
            e.contains("the key itself never goes in isboot.toml"),
            "{e}"
        );
    }
}
