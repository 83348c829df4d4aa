//! The state-changing and reporting verbs.

use super::progress::{Progress, human};
use super::{
    AddClientArgs, BootArgs, CliError, ImageCommand, InitArgs, ModeArg, OnOff, SetClientArgs,
    WakeArgs,
};
use crate::boot::wol::WakeRoute;
use crate::config::secret::{generate_chap, read_secret_file, secret_path};
use crate::config::{
    AddClient, BootChange, BootView, Chap, ChapView, ClientImageView, ClientName, ClientView,
    ImageName, Iqn, MacAddr, Mode, ServerStatus, StateDir, StatusView,
};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};

type R = Result<(), CliError>;

fn bad(m: impl Into<String>) -> CliError {
    CliError::Bad(m.into())
}

fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, CliError> {
    s.parse::<T>().map_err(CliError::Bad)
}

fn parse_iqns(v: &[String]) -> Result<Vec<Iqn>, CliError> {
    v.iter().map(|s| parse::<Iqn>(s)).collect()
}

fn json<T: Serialize>(v: &T) -> R {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Failed(e.to_string()))?;
    outln!("{s}");
    Ok(())
}

pub fn init(dir: &StateDir, a: InitArgs) -> R {
    let server = match &a.server_ip {
        None => None,
        Some(s) => {
            let (ip, len) = match s.split_once('/') {
                Some((ip, l)) => (
                    ip,
                    l.parse::<u8>()
                        .map_err(|_| bad(format!("bad prefix length in --server-ip {s:?}")))?,
                ),
                None => (s.as_str(), 24),
            };
            let ip: Ipv4Addr = ip.parse().map_err(|_| {
                bad(format!(
                    "bad --server-ip {s:?} (expected an IPv4 address like 192.168.50.1/24)"
                ))
            })?;
            if !(1..=30).contains(&len) {
                return Err(bad(format!(
                    "bad prefix length /{len} in --server-ip (1..=30)"
                )));
            }
            Some((ip, len))
        }
    };
    let prefix: Iqn = parse(&a.iqn_prefix)?;
    if !prefix.as_str().starts_with("iqn.") {
        return Err(bad(format!(
            "bad --iqn-prefix {prefix}: target names need the iqn. form (iqn.YYYY-MM.<reversed domain>)"
        )));
    }
    let listen: Option<SocketAddr> = match &a.listen {
        None => None,
        Some(l) => Some(
            l.parse()
                .map_err(|_| bad(format!("bad --listen {l:?} (expected ADDR:PORT)")))?,
        ),
    };
    // DHCP settings are checked before anything is written: a refused init changes nothing.
    let dhcp = match &a.interface {
        None => None,
        Some(ifname) => {
            let Some((ip, _)) = server else {
                return Err(bad(
                    "--interface needs --server-ip (this server's address on that network)"
                        .to_string(),
                ));
            };
            let cfg = crate::dhcp::config::DhcpConfig::from_init_args(
                ifname,
                ip,
                a.dhcp_range.as_deref(),
                a.dhcp_mode.as_deref(),
                a.router,
                a.dns,
            )
            .map_err(|e| bad(e.to_string()))?;
            Some(cfg)
        }
    };
    let mut c = dir.init(server, Some(prefix), listen)?;
    if let Some(cfg) = &dhcp {
        c.dhcp = Some(
            toml::Value::try_from(cfg)
                .map_err(|e| CliError::Failed(format!("writing the [dhcp] section: {e}")))?,
        );
        crate::config::write_atomic(&dir.config_path(), c.render().as_bytes(), 0o644)?;
        let mode = match cfg.mode {
            crate::dhcp::config::DhcpMode::Full => "full",
            crate::dhcp::config::DhcpMode::Proxy => "proxy",
        };
        outln!(
            "  DHCP:       {mode} mode on {} (isboot serve answers there only)",
            cfg.interface
        );
        let got = crate::tftp::ipxe::populate_root(
            &dir.tftp_dir(),
            std::path::Path::new(crate::tftp::ipxe::DEBIAN_IPXE_DIR),
        )
        .map_err(|e| {
            CliError::Failed(format!(
                "filling the TFTP root {}: {e}",
                dir.tftp_dir().display()
            ))
        })?;
        outln!("  TFTP root:  {}", dir.tftp_dir().display());
        if !got.missing.is_empty() {
            outln!(
                "  note: {} not found in {}; install Debian's ipxe package (apt-get install ipxe) and run `isboot init` again in a fresh state dir, or copy them into the TFTP root",
                got.missing.join(", "),
                crate::tftp::ipxe::DEBIAN_IPXE_DIR
            );
        }
    }
    // Boot menu entries from Debian's packages, when installed.
    let netboot = std::path::Path::new(crate::config::installer::DEBIAN12_NETBOOT_DIR);
    if netboot.join("linux").is_file() && netboot.join("initrd.gz").is_file() {
        c.installers
            .push(crate::config::installer::debian12(netboot));
        crate::config::write_atomic(&dir.config_path(), c.render().as_bytes(), 0o644)?;
        outln!(
            "  installer:  debian12 (debian-installer-12-netboot-amd64; isboot boot CLIENT --next install:debian12)"
        );
    }
    let memtest = dir.path(crate::service::menu::BOOT_FILES_DIR);
    match crate::service::menu::populate_memtest(
        &memtest,
        std::path::Path::new(crate::service::menu::MEMTEST_SOURCE_DIR),
    ) {
        Ok(0) => outln!(
            "  note: memtest86+ not found in {}; install Debian's memtest86+ package for the menu's memory test (apt-get install memtest86+) and copy its memtest86+x64.bin/.efi into {}/memtest/",
            crate::service::menu::MEMTEST_SOURCE_DIR,
            memtest.display()
        ),
        Ok(_) => outln!("  memtest:    {}/memtest/", memtest.display()),
        Err(e) => {
            return Err(CliError::Failed(format!(
                "copying memtest86+ into {}: {e}",
                memtest.display()
            )));
        }
    }
    outln!("initialised {}", dir.root().display());
    outln!("  config:     {}", dir.config_path().display());
    outln!("  iqn prefix: {}", c.iqn_prefix);
    if let (Some(ip), Some(net)) = (c.server_ip, c.subnet) {
        outln!("  server ip:  {ip} (subnet {net})");
    }
    outln!("  listen:     {}", c.listen_addr());
    Ok(())
}

#[derive(Serialize)]
struct VersionView {
    version: u64,
    size: u64,
    /// Absent for a version only the pool knows (published by another server).
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    file: String,
    /// "file" (the state directory), "rbd" (in the pool), "missing" (listed, not in the
    /// pool), "pool-only" (in the pool, not listed here: another server published it).
    location: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rbd: Option<String>,
    clients: Vec<String>,
}

impl VersionView {
    fn where_text(&self) -> String {
        let spec = self.rbd.as_deref().unwrap_or_default();
        match self.location {
            "file" => "file".into(),
            "missing" => format!("MISSING from the pool ({spec})"),
            "pool-only" => format!("in the pool only ({spec})"),
            _ => spec.to_string(),
        }
    }
}

#[derive(Serialize)]
struct ImageView {
    name: String,
    versions: Vec<VersionView>,
    maintenance: Option<MaintView>,
}

#[derive(Serialize)]
struct MaintView {
    target: String,
    from_version: u64,
    initiators: Vec<String>,
    mac: Option<String>,
}

pub fn image(dir: &StateDir, c: ImageCommand) -> R {
    match c {
        ImageCommand::Add(a) => {
            let name: ImageName = parse(&a.name)?;
            let store = dir.load()?.config.store;
            let mut p = Progress::new(format!("importing {name}"));
            if store.backend() == crate::config::store::Backend::Rbd {
                return image_add_rbd(dir, &name, &a.file, &store, &mut p);
            }
            let v = dir.image_add(&name, &a.file, &mut |d, t| p.update(d, t))?;
            outln!(
                "image {name} version {}: {} ({})",
                v.number,
                human(v.size),
                dir.path(&v.file).display()
            );
            Ok(())
        }
        ImageCommand::List(a) => {
            let st = dir.load()?;
            let views: Vec<ImageView> = st
                .registry
                .images
                .iter()
                .map(|i| ImageView {
                    name: i.name.to_string(),
                    versions: i
                        .versions
                        .iter()
                        .map(|v| VersionView {
                            version: v.number,
                            size: v.size,
                            created: Some(v.created),
                            file: v.file.clone(),
                            location: if v.rbd.is_some() { "rbd" } else { "file" },
                            rbd: v.rbd.clone(),
                            clients: st.clients_using(&i.name, Some(v.number)),
                        })
                        .collect(),
                    maintenance: i.maintenance.as_ref().map(|m| MaintView {
                        target: st.maintenance_iqn(&i.name).to_string(),
                        from_version: m.from_version,
                        initiators: m.initiators.iter().map(|i| i.to_string()).collect(),
                        mac: m.mac.map(|m| m.to_string()),
                    }),
                })
                .collect();
            let views = pool_sizes(&st, views);
            if a.json {
                return json(&views);
            }
            if views.is_empty() {
                outln!("no images (add one with `isboot image add NAME FILE`)");
                return Ok(());
            }
            outln!(
                "{:<20} {:>7} {:>10}  {:<16} WHERE",
                "IMAGE",
                "VERSION",
                "SIZE",
                "CLIENTS"
            );
            for i in &views {
                for v in &i.versions {
                    let clients = if v.clients.is_empty() {
                        "-".to_string()
                    } else {
                        v.clients.join(",")
                    };
                    outln!(
                        "{:<20} {:>7} {:>10}  {:<16} {}",
                        i.name,
                        v.version,
                        human(v.size),
                        clients,
                        v.where_text()
                    );
                }
                if let Some(m) = &i.maintenance {
                    outln!(
                        "{:<20} {:>7} {:>10}  (being edited on version {} as {})",
                        i.name,
                        "edit",
                        "-",
                        m.from_version,
                        m.target
                    );
                }
            }
            Ok(())
        }
        ImageCommand::Remove(a) => {
            let name: ImageName = parse(&a.name)?;
            let img = dir.lock()?.image_remove(&name)?;
            let gone: Vec<_> = img
                .versions
                .iter()
                .map(|v| (name.clone(), v.clone()))
                .collect();
            remove_from_pool(dir, &gone);
            outln!(
                "removed image {name} ({} version{})",
                img.versions.len(),
                if img.versions.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        ImageCommand::Prepare(a) => super::prepare::run(dir, &a),
        ImageCommand::Edit(a) => {
            let name: ImageName = parse(&a.name)?;
            let mac = a.mac.as_deref().map(parse::<MacAddr>).transpose()?;
            let initiators = parse_iqns(&a.initiators)?;
            let mut l = dir.lock()?;
            let chap = !a.no_chap;
            let m = l.image_edit(&name, mac, a.from.clone(), initiators, chap)?;
            let st = &l.state;
            let target = st.maintenance_iqn(&name);
            outln!("editing {name} version {} (writable)", m.from_version);
            outln!("  target:    {target}");
            let secret_name = crate::config::maint_secret_name(&name);
            if chap {
                outln!(
                    "  chap:      user {secret_name}, secret in {} (0600; iPXE gets it by DHCP when --mac is given)",
                    secret_path(dir.root(), &secret_name).display()
                );
            } else {
                outln!("  chap:      OFF (--no-chap)");
                errln!(
                    "isboot: warning: CHAP is off for the maintenance target: a host at an accepted address that states its initiator name can write the next version of {name}"
                );
            }
            for i in &m.initiators {
                outln!("  initiator: {i}");
            }
            if let Some(mac) = m.mac {
                outln!("  machine:   {mac}");
            }
            let kind = crate::config::TargetKind::Maintenance(name.clone());
            outln!("  logins:    from {}", st.bound_offline(&kind).describe());
            if let Some(rp) = st.config.root_path(&target) {
                outln!("  root-path: {rp}");
            }
            outln!("when done: isboot image commit {name}   (or: isboot image abort {name})");
            Ok(())
        }
        ImageCommand::Commit(a) => {
            let name: ImageName = parse(&a.name)?;
            let mut p = Progress::new(format!("publishing {name}"));
            let v = dir.image_commit(&name, a.force, &mut |d, t| p.update(d, t))?;
            outln!("published {name} version {}: {}", v.number, human(v.size));
            Ok(())
        }
        ImageCommand::Abort(a) => {
            let name: ImageName = parse(&a.name)?;
            let m = dir.lock()?.image_abort(&name, a.force)?;
            outln!(
                "dropped the maintenance view of {name} (on version {})",
                m.from_version
            );
            Ok(())
        }
        ImageCommand::Prune(a) => {
            let name = a.name.as_deref().map(parse::<ImageName>).transpose()?;
            let gone = dir.lock()?.image_prune(name.as_ref())?;
            if gone.is_empty() {
                outln!("nothing to prune");
            }
            remove_from_pool(dir, &gone);
            for (i, v) in gone {
                outln!("removed {i} version {}", v.number);
            }
            Ok(())
        }
    }
}

/// `image list` with RBD versions: sizes from the pool, versions missing from it, and the
/// pool's versions this registry does not list. Nothing to do on a file-only server.
fn pool_sizes(st: &crate::config::State, views: Vec<ImageView>) -> Vec<ImageView> {
    let rbd = st.config.store.backend() == crate::config::store::Backend::Rbd;
    if !rbd
        && views
            .iter()
            .all(|i| i.versions.iter().all(|v| v.rbd.is_none()))
    {
        return views;
    }
    #[cfg(feature = "rbd")]
    {
        use crate::config::state::rbd::{Place, PoolView, pool_view};
        let PoolView { places, others } = match pool_view(&st.config.store, &st.registry.images) {
            Ok(x) => x,
            Err(e) => {
                errln!("isboot: warning: {e}: sizes of RBD versions are the registry's");
                return views;
            }
        };
        let mut views = views;
        for (name, number, place) in places {
            let Some(v) = views
                .iter_mut()
                .filter(|i| i.name == name.as_str())
                .flat_map(|i| i.versions.iter_mut())
                .find(|v| v.version == number)
            else {
                continue;
            };
            match place {
                Place::Pool(size) => v.size = size,
                Place::Missing => v.location = "missing",
            }
        }
        for b in others {
            let view = VersionView {
                version: u64::from(b.version),
                size: b.size,
                created: None,
                file: String::new(),
                location: "pool-only",
                rbd: Some(b.spec),
                clients: Vec::new(),
            };
            match views.iter_mut().find(|i| i.name == b.image) {
                Some(i) => i.versions.push(view),
                None => views.push(ImageView {
                    name: b.image.clone(),
                    versions: vec![view],
                    maintenance: None,
                }),
            }
        }
        views
    }
    #[cfg(not(feature = "rbd"))]
    {
        errln!(
            "isboot: warning: this isboot was built without the rbd feature: sizes of RBD \
             versions are the registry's"
        );
        views
    }
}

#[cfg(feature = "rbd")]
fn image_add_rbd(
    dir: &StateDir,
    name: &ImageName,
    file: &std::path::Path,
    store: &crate::config::store::StoreConfig,
    p: &mut Progress,
) -> R {
    let v = dir.image_add_rbd(name, file, store, &mut |d, t| p.update(d, t))?;
    outln!(
        "image {name} version {}: {} (Ceph RBD {})",
        v.number,
        human(v.size),
        v.rbd.as_deref().unwrap_or_default()
    );
    Ok(())
}

#[cfg(not(feature = "rbd"))]
fn image_add_rbd(
    _: &StateDir,
    _: &ImageName,
    _: &std::path::Path,
    store: &crate::config::store::StoreConfig,
    _: &mut Progress,
) -> R {
    // Loading the config refuses backend = "rbd" in a build without the feature; this says
    // the same should it ever get here.
    Err(CliError::Failed(store.validate().err().unwrap_or_default()))
}

/// After `image remove` / `prune`: take RBD versions out of the pool too; a version that
/// stays is a warning naming the `rbd` commands (the registry no longer lists it either way).
fn remove_from_pool(dir: &StateDir, gone: &[(ImageName, crate::config::Version)]) {
    if gone.iter().all(|(_, v)| v.rbd.is_none()) {
        return;
    }
    #[cfg(feature = "rbd")]
    {
        let store = match dir.load() {
            Ok(st) => st.config.store,
            Err(e) => {
                errln!("isboot: warning: {e}: the removed versions stay in the Ceph pool");
                return;
            }
        };
        for w in crate::config::state::rbd::remove_from_pool(&store, gone) {
            errln!("isboot: warning: {w}");
        }
    }
    #[cfg(not(feature = "rbd"))]
    {
        let _ = dir;
        for (name, v) in gone.iter().filter(|(_, v)| v.rbd.is_some()) {
            errln!(
                "isboot: warning: version {} of {name} stays in the Ceph pool ({}): this isboot \
                 was built without the rbd feature; remove it with the rbd command",
                v.number,
                v.rbd.as_deref().unwrap_or_default()
            );
        }
    }
}

pub fn add_client(dir: &StateDir, a: AddClientArgs) -> R {
    let mac: MacAddr = parse(&a.mac)?;
    let image: ImageName = parse(&a.image)?;
    let name = a.name.as_deref().map(parse::<ClientName>).transpose()?;
    let ip = a.ip.as_deref().map(parse_ip).transpose()?;
    let initiators = parse_iqns(&a.initiators)?;
    let chap = chap_choice(
        a.chap.no_chap,
        a.chap.chap_secret_file.as_deref(),
        name.as_ref()
            .map_or_else(|| mac.dashed(), |n| n.to_string()),
    )?;
    let mode = match a.mode {
        ModeArg::Persistent => Mode::Persistent,
        ModeArg::Reset => Mode::Reset,
    };
    let chap_user = chap.as_ref().map(|c| c.user.clone());
    let mut l = dir.lock()?;
    let c = l.add_client(AddClient {
        mac,
        image,
        name,
        ip,
        mode,
        initiators,
        chap,
        quota_mib: a.quota_mib,
    })?;
    let st = &l.state;
    outln!("added client {} ({})", c.name, c.mac);
    outln!("  target:    {}", st.target_iqn(&c.name));
    print_chap_line(dir, c.name.as_str(), chap_user.as_deref());
    if chap_user.is_none() {
        warn_chap_off();
    }
    for i in &c.initiators {
        outln!("  initiator: {i}");
    }
    outln!(
        "  ip:        {}",
        c.ip.map(|i| i.to_string())
            .unwrap_or_else(|| "(from the DHCP pool)".into())
    );
    outln!(
        "  image:     {} version {} ({} mode)",
        c.image,
        c.version,
        c.mode
    );
    outln!("  quota:     {}", quota_text(st, &c));
    match st.client_root_path(&c) {
        Some(rp) => outln!("  root-path: {rp}"),
        None => outln!(
            "  root-path: (set server_ip in {} to get one)",
            dir.config_path().display()
        ),
    }
    Ok(())
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, CliError> {
    s.parse::<Ipv4Addr>().map_err(|_| {
        bad(format!(
            "bad IP address {s:?} (expected IPv4 like 192.168.50.21)"
        ))
    })
}

/// The CHAP credentials a command asked for: none (`off`), the admin's own file, or generated
/// ones (user = the client name).
fn chap_choice(
    off: bool,
    file: Option<&std::path::Path>,
    user: String,
) -> Result<Option<Chap>, CliError> {
    if off {
        return Ok(None);
    }
    match file {
        Some(p) => match read_secret_file(p, true)? {
            Some(c) => Ok(Some(c)),
            None => Err(bad(format!("{} is empty", p.display()))),
        },
        None => Ok(Some(generate_chap(&user)?)),
    }
}

/// After a change that left a client without CHAP.
fn warn_chap_off() {
    errln!(
        "isboot: warning: CHAP is off for this client: a host at its address that states its initiator name can log in to its disk (turn it on: isboot set-client NAME --chap)"
    );
}

fn print_chap_line(dir: &StateDir, name: &str, user: Option<&str>) {
    match user {
        Some(u) => outln!(
            "  chap:      on, user {u} (secret in {}; print it with `isboot show-client {name} --show-secrets`)",
            secret_path(dir.root(), name).display()
        ),
        None => outln!("  chap:      OFF (turn it on: isboot set-client {name} --chap)"),
    }
}

/// A client's overlay quota as `add-client`, `set-client` and `show-client` print it.
fn quota_text(st: &crate::config::State, c: &crate::config::registry::Client) -> String {
    let q = match st.client_quota(&c.name) {
        Some(b) => human(b),
        None => "none".to_string(),
    };
    match c.quota_mib {
        Some(_) => format!("{q} (the client's own)"),
        None => format!("{q} ([limits] client_quota_mib)"),
    }
}

pub fn set_client(dir: &StateDir, a: SetClientArgs) -> R {
    let chap_change = a.chap.chap || a.chap.no_chap || a.chap.chap_secret_file.is_some();
    if !chap_change && a.ip.is_none() && a.quota_mib.is_none() {
        return Err(bad(
            "say what to change: --ip ADDR|none, --quota-mib MIB|default, --chap, --chap-secret-file PATH or --no-chap",
        ));
    }
    if let Some(q) = &a.quota_mib {
        let q = match q.as_str() {
            "default" => None,
            s => Some(s.parse::<u64>().map_err(|_| {
                bad(format!(
                    "bad --quota-mib {s:?} (expected MiB, 0 for no quota, or `default`)"
                ))
            })?),
        };
        let c = dir.lock()?.set_client_quota(&a.client, q)?;
        outln!("client {}: quota {}", c.name, quota_text(&dir.load()?, &c));
        if !chap_change && a.ip.is_none() {
            outln!("  (a running server applies it within seconds)");
            return Ok(());
        }
    }
    if let Some(ip) = &a.ip {
        let ip = match ip.as_str() {
            "none" => None,
            s => Some(parse_ip(s)?),
        };
        let c = dir.lock()?.set_client_ip(&a.client, ip)?;
        let kind = crate::config::TargetKind::Client(c.name.clone());
        outln!(
            "client {}: ip {} (its disk accepts logins from {})",
            c.name,
            c.ip.map_or_else(|| "none".to_string(), |i| i.to_string()),
            dir.load()?.bound_offline(&kind).describe()
        );
        if !chap_change {
            outln!("  (a running server uses it at the client's next login)");
            return Ok(());
        }
    }
    let mut l = dir.lock()?;
    let name = l
        .state
        .registry
        .find_client(&a.client)
        .ok_or_else(|| bad(format!("unknown client {}", a.client)))?
        .name
        .to_string();
    let chap = chap_choice(
        a.chap.no_chap,
        a.chap.chap_secret_file.as_deref(),
        name.clone(),
    )?;
    let user = chap.as_ref().map(|c| c.user.clone());
    l.set_client_chap(&name, chap)?;
    outln!("client {name}:");
    print_chap_line(dir, &name, user.as_deref());
    if user.is_none() {
        warn_chap_off();
    }
    outln!("  (a running server uses it at the client's next login)");
    Ok(())
}

pub fn boot(dir: &StateDir, a: BootArgs) -> R {
    if !a.clear
        && a.next.is_none()
        && a.default.is_none()
        && a.menu.is_none()
        && a.allow_image.is_empty()
        && a.forbid_image.is_empty()
    {
        return Err(bad(
            "say what to change: --next CHOICE, --default CHOICE, --menu on|off, --allow-image NAME, --forbid-image NAME or --clear",
        ));
    }
    let names =
        |v: &[String]| -> Result<Vec<ImageName>, CliError> { v.iter().map(|n| parse(n)).collect() };
    let mut l = dir.lock()?;
    let c = l.set_boot(
        &a.client,
        BootChange {
            clear: a.clear,
            next: a.next,
            default: a.default,
            menu: a.menu.map(|m| m == OnOff::On),
            allow: names(&a.allow_image)?,
            forbid: names(&a.forbid_image)?,
        },
    )?;
    outln!("client {}:", c.name);
    outln!("  boot:      {}", BootView::of(&c).describe());
    print_allowed_images(&ClientImageView::of(&l.state, &c));
    Ok(())
}

/// `images:` lines of `isboot boot` and `show-client`.
fn print_allowed_images(v: &[ClientImageView]) {
    for i in v {
        outln!(
            "  image:     {} version {} (image:{}, target {})",
            i.image,
            i.version,
            i.image,
            i.target
        );
    }
}

/// `isboot wake`: magic packets for the chosen clients, on the boot interface only.
pub fn wake(dir: &StateDir, a: WakeArgs) -> R {
    let st = dir.load()?;
    let dhcp = match crate::service::boot::dhcp_config_of(&st) {
        Some(Ok(d)) => d,
        Some(Err(e)) => return Err(bad(format!("isboot.toml [dhcp]: {e}"))),
        None => {
            return Err(bad(
                "no boot interface: isboot.toml has no [dhcp] section, and wake sends only on its interface (isboot init --interface IF ...)",
            ));
        }
    };
    let clients: Vec<&crate::config::Client> = if a.all {
        st.registry.clients.iter().collect()
    } else if let Some(image) = &a.image {
        let image: ImageName = parse(image)?;
        if st.registry.image(&image).is_none() {
            return Err(bad(format!("no image {image} (see isboot image list)")));
        }
        st.registry
            .clients
            .iter()
            .filter(|c| c.image == image)
            .collect()
    } else {
        let mut v = Vec::new();
        for which in &a.clients {
            let c = st
                .registry
                .find_client(which)
                .ok_or_else(|| bad(format!("no client {which:?} (see isboot list-clients)")))?;
            if !v.iter().any(|x: &&crate::config::Client| x.name == c.name) {
                v.push(c);
            }
        }
        v
    };
    if clients.is_empty() {
        return Err(bad("no clients to wake"));
    }
    // A client's address: its fixed one, else the last DHCP lease (a client behind a relay
    // is reached through its subnet's directed broadcast).
    let leases = crate::dhcp::Leases::load(&st.dir.path(crate::service::boot::LEASES_FILE))
        .unwrap_or_default();
    let targets: Vec<(MacAddr, WakeRoute)> = clients
        .iter()
        .map(|c| {
            let ip = c.ip.or_else(|| leases.last_ip(&c.mac));
            (c.mac, WakeRoute::of(ip, &dhcp))
        })
        .collect();
    crate::service::wol::send(&dhcp.interface, &targets)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    for (c, (_, route)) in clients.iter().zip(&targets) {
        match route {
            WakeRoute::BootLink => outln!("woke {} ({}) on {}", c.name, c.mac, dhcp.interface),
            WakeRoute::Relay { .. } => outln!(
                "woke {} ({}) behind a relay: sent to {}",
                c.name,
                c.mac,
                route.destination()
            ),
        }
    }
    Ok(())
}

pub fn list_clients(dir: &StateDir, as_json: bool) -> R {
    let st = dir.load()?;
    let live = ServerStatus::load_live(&dir.status_path());
    let views = ClientView::all(&st, live.as_ref());
    if as_json {
        return json(&views);
    }
    if views.is_empty() {
        outln!("no clients (add one with `isboot add-client`)");
        return Ok(());
    }
    outln!(
        "{:<20} {:<17} {:<15} {:<16} {:<10} {:<4} TARGET",
        "NAME",
        "MAC",
        "IP",
        "IMAGE",
        "MODE",
        "CHAP"
    );
    for v in &views {
        outln!(
            "{:<20} {:<17} {:<15} {:<16} {:<10} {:<4} {}",
            v.name,
            v.mac,
            v.ip.clone().unwrap_or_else(|| "-".into()),
            format!("{}@{}", v.image, v.version),
            v.mode,
            if v.chap.enabled { "on" } else { "OFF" },
            v.target
        );
    }
    print_without_chap(
        &views
            .iter()
            .filter(|v| !v.chap.enabled)
            .map(|v| v.name.clone())
            .collect::<Vec<_>>(),
    );
    Ok(())
}

fn print_without_chap(names: &[String]) {
    if !names.is_empty() {
        outln!(
            "{} client{} without CHAP: {} (turn it on: isboot set-client NAME --chap)",
            names.len(),
            if names.len() == 1 { " runs" } else { "s run" },
            names.join(", ")
        );
    }
}

pub fn show_client(dir: &StateDir, which: &str, as_json: bool, show_secrets: bool) -> R {
    let st = dir.load()?;
    let c = st
        .registry
        .find_client(which)
        .ok_or_else(|| bad(format!("unknown client {which}")))?;
    let live = ServerStatus::load_live(&dir.status_path());
    let mut v = ClientView::of(&st, c, live.as_ref());
    if show_secrets {
        v.chap = ChapView::reveal(&st, c.name.as_str(), c.chap.as_ref());
        if v.chap.restricted {
            return Err(CliError::Failed(format!(
                "{}'s CHAP secret is readable by root and the isboot service's user only: run `sudo isboot show-client {} --show-secrets`",
                c.name, c.name
            )));
        }
    }
    if as_json {
        return json(&v);
    }
    outln!("name:       {}", v.name);
    outln!("mac:        {}", v.mac);
    outln!(
        "ip:         {}",
        v.ip.as_deref().unwrap_or("(from the DHCP pool)")
    );
    outln!("image:      {} version {}", v.image, v.version);
    outln!("mode:       {}", v.mode);
    outln!("target:     {}", v.target);
    outln!("logins:     from {}", v.bound.describe());
    outln!("boot:       {}", v.boot.describe());
    for i in &v.allowed_images {
        outln!(
            "may boot:   image:{} (version {}, target {}, fresh at every power-on)",
            i.image,
            i.version,
            i.target
        );
    }
    for i in &v.initiators {
        outln!("initiator:  {i}");
    }
    outln!(
        "root-path:  {}",
        v.root_path
            .as_deref()
            .unwrap_or("(no server_ip configured)")
    );
    let ch = &v.chap;
    match (&ch.error, &ch.user) {
        (Some(e), _) => outln!("chap:       on, but its secret file is unreadable ({e})"),
        (None, None) if ch.restricted => outln!(
            "chap:       on (its secret file is for root and the isboot service's user only)"
        ),
        (None, Some(u)) if ch.mutual => outln!("chap:       on, user {u}, mutual"),
        (None, Some(u)) => outln!("chap:       on, user {u}"),
        (None, None) => outln!(
            "chap:       OFF (turn it on: isboot set-client {} --chap)",
            v.name
        ),
    }
    if let Some(s) = &ch.secret {
        outln!("secret:     {s}");
    }
    if let (Some(u), Some(s)) = (&ch.mutual_user, &ch.mutual_secret) {
        outln!("mutual:     user {u}, secret {s}");
    }
    match &v.rbd {
        Some(spec) => outln!("disk:       {spec} (a copy-on-write clone in the Ceph pool)"),
        None => outln!(
            "overlay:    {} ({} on disk)",
            v.overlay,
            human(v.overlay_bytes)
        ),
    }
    outln!("quota:      {}", quota_text(&st, c));
    let sessions = st.sessions_of(&st.target_iqn(&c.name));
    if sessions.is_empty() {
        outln!("session:    not logged in");
    }
    for s in sessions {
        outln!("session:    {} from {}", s.initiator, s.peer);
    }
    Ok(())
}

pub fn remove_client(dir: &StateDir, which: &str, keep: bool) -> R {
    let (c, kept) = dir.lock()?.remove_client(which, keep)?;
    outln!("removed client {} ({})", c.name, c.mac);
    if let Some(p) = kept {
        outln!("kept its overlay: {}", p.display());
    }
    Ok(())
}

pub fn reset_client(dir: &StateDir, which: &str, force: bool) -> R {
    let mut l = dir.lock()?;
    let before = l
        .state
        .registry
        .find_client(which)
        .map(|c| l.state.sessions_of(&l.state.target_iqn(&c.name)));
    let c = l.reset_client(which, force)?;
    drop(l);
    outln!(
        "reset client {}: fresh disk on {} version {}",
        c.name,
        c.image,
        c.version
    );
    // --force on a logged-in client: wait (a few seconds at most) for the running server to
    // pick the change up and end the session.
    if before.is_some_and(|s| !s.is_empty()) {
        let st = dir.load()?;
        let iqn = st.target_iqn(&c.name);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !st.sessions_of(&iqn).is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if st.sessions_of(&iqn).is_empty() {
            outln!("its session was ended");
        } else {
            outln!("its session is still open; isboot serve ends it when it sees the change");
        }
    }
    Ok(())
}

/// The running server's answer to `GET /api/v1/status` on its admin socket; without one (no
/// server, or its socket unreachable: said on stderr), the view from the state files.
fn status_view(dir: &StateDir) -> Result<StatusView, CliError> {
    let st = dir.load()?;
    let live = ServerStatus::load_live(&dir.status_path());
    if live.is_some() {
        match super::api::get_json(dir.root(), "/api/v1/status") {
            Ok(v) => return Ok(v),
            Err(e) => errln!("isboot: {e}; showing the status file instead"),
        }
    }
    Ok(StatusView::of(&st, live.as_ref()))
}

/// A status row's name: the client, or `IMAGE (edit)` for a maintenance disk.
fn display_name(r: &crate::config::StatusRow) -> String {
    if r.kind == "maintenance" {
        format!("{} (edit)", r.name)
    } else {
        r.name.clone()
    }
}

/// `isboot fleet`: one look at the servers of this pool, as a server sees it.
pub fn fleet(dir: &StateDir, as_json: bool) -> R {
    let st = dir.load()?;
    if !st.config.store.shared_state() {
        return Err(CliError::Bad(
            "this server is not in a fleet: a fleet needs [store] backend = \"rbd\" and shared_state = true (docs/scale-out.md)".into(),
        ));
    }
    #[cfg(not(feature = "rbd"))]
    {
        let _ = as_json;
        Err(CliError::Bad(
            "isboot fleet needs an isboot built with --features rbd".into(),
        ))
    }
    #[cfg(feature = "rbd")]
    {
        #[derive(Serialize)]
        struct Server<'a> {
            name: &'a str,
            portal: String,
            me: bool,
            boot_http: Option<&'a str>,
            disks: &'a [String],
            sessions: u64,
        }
        #[derive(Serialize)]
        struct View<'a> {
            servers: Vec<Server<'a>>,
        }
        // This server: its server_ip and the port it listens on (while it runs).
        let me = st.config.portal().map(|p| {
            let port = ServerStatus::load_live(&dir.status_path())
                .and_then(|s| s.listen.parse::<std::net::SocketAddr>().ok())
                .map_or(p.port(), |a| a.port());
            std::net::SocketAddrV4::new(*p.ip(), port)
        });
        let v = crate::service::fleet::look(&st.config.store, me)?;
        let view = View {
            servers: v
                .members
                .iter()
                .map(|m| Server {
                    name: &m.name,
                    portal: m.portal.to_string(),
                    me: Some(m.portal) == me,
                    boot_http: m.boot_http.as_deref(),
                    disks: &m.clients,
                    sessions: m.sessions,
                })
                .collect(),
        };
        if as_json {
            return json(&view);
        }
        if view.servers.is_empty() {
            outln!(
                "no isboot server of this pool answered (none is running, or none has server_ip set)"
            );
            return Ok(());
        }
        outln!(
            "{:<22} {:<20} {:>8}  CLIENT DISKS",
            "SERVER",
            "HOST",
            "SESSIONS"
        );
        for s in &view.servers {
            outln!(
                "{:<22} {:<20} {:>8}  {}{}",
                s.portal,
                s.name,
                s.sessions,
                if s.disks.is_empty() {
                    "-".to_string()
                } else {
                    s.disks.join(" ")
                },
                if s.me { "  (this server)" } else { "" }
            );
        }
        Ok(())
    }
}

pub fn status(dir: &StateDir, as_json: bool) -> R {
    let v = status_view(dir)?;
    if as_json {
        return json(&v);
    }
    match &v.listen {
        Some(l) => outln!("server: running, listening on {l}"),
        None => outln!("server: not running (traffic counters need `isboot serve`)"),
    }
    if let Some(fs) = &v.state_fs {
        outln!(
            "state file system: {} free of {}{}",
            human(fs.free_bytes),
            human(fs.size_bytes),
            if fs.low {
                format!(
                    "  LOW: below {} ([limits] space_warning_mib); when it is full, writes that \
                     need space fail: isboot image prune, or reset clients whose overlays grew",
                    human(fs.warning_bytes)
                )
            } else {
                String::new()
            }
        );
    }
    outln!(
        "{:<20} {:<4} {:<28} {:>10} {:>10} {:>10} {:>21}  BASE",
        "CLIENT",
        "CHAP",
        "SESSION",
        "READ",
        "WRITTEN",
        "OVERLAY",
        "DATA/QUOTA"
    );
    for r in &v.targets {
        let who = display_name(r);
        let session = if r.sessions.is_empty() {
            "not logged in".to_string()
        } else {
            r.sessions
                .iter()
                .map(|s| s.peer.clone())
                .collect::<Vec<_>>()
                .join(",")
        };
        let quota = match r.quota_bytes {
            Some(q) => format!("{}/{}", human(r.overlay_data_bytes), human(q)),
            None => format!("{}/-", human(r.overlay_data_bytes)),
        };
        outln!(
            "{:<20} {:<4} {:<28} {:>10} {:>10} {:>10} {:>21}  {}@{}{}{}",
            who,
            if r.chap { "on" } else { "OFF" },
            session,
            human(r.bytes_read),
            human(r.bytes_written),
            human(r.overlay_bytes),
            quota,
            r.image,
            r.base_version,
            if r.disk_error {
                "  DISK ERROR: writes refused (free space, then reset the client or restart serve)"
            } else {
                ""
            },
            if r.over_quota {
                "  QUOTA FULL: writes that need space refused (trim in the client, or reset it)"
            } else {
                ""
            }
        );
    }
    outln!(
        "{:<20} {:<4} {:<28} {:>10} {:>10} {:>10}",
        "TOTAL",
        "",
        format!(
            "{} session{}",
            v.total_sessions,
            if v.total_sessions == 1 { "" } else { "s" }
        ),
        human(v.total_bytes_read),
        human(v.total_bytes_written),
        human(v.total_overlay_bytes)
    );
    outln!();
    outln!("{:<20} LOGINS ACCEPTED FROM", "CLIENT");
    for r in &v.targets {
        outln!("{:<20} {}", display_name(r), r.bound.describe());
    }
    print_without_chap(&v.clients_without_chap);
    Ok(())
}
