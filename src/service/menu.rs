//! The boot routes on the boot LAN ([`Audience::Boot`](super::http::Audience), `[http]
//! boot_listen`): what a client's iPXE fetches.
//!
//! - `GET /boot/<mac>.ipxe`: that client's iPXE script ([`crate::boot::script`]), rendered from
//!   its registry entry and boot settings (`isboot boot`). A one-shot `next` choice is used up
//!   (cleared in the registry) when its script is served, except an install, which stays until
//!   its installer calls back, so a reboot during the install lands in the installer again.
//! - `POST /done/<mac>`: the installer's callback; clears that client's pending install.
//! - `GET /answer/<mac>/<installer>/<file>`: that client's answer file for an `[[installer]]`
//!   (preseed, kickstart, autoinstall; [`crate::boot::answer`]), rendered from
//!   `<state>/templates/<installer>/<file>.j2`, `<state>/templates/<file>.j2` or the built-in
//!   template; only to the client's own address, like its script. A template that does not
//!   render is a 500 naming it (and an error line in the log).
//! - `GET /install/<name>/kernel|initrd|iso`: an installer's files, with byte ranges; like
//!   `/files/`, not secret and served to any host that reaches the boot address.
//! - `GET /files/...`: boot files (kernels, initrds, memtest, ISOs) from `<state>/boot-files/`,
//!   with byte ranges (tower-http's `ServeDir`; paths with `..` are refused). They are not
//!   secret and the same for every client: any host that reaches the boot address gets them.
//!
//! # Who gets a script
//! Only the client's own address: one its target is bound to ([`crate::config::Bound::Only`]:
//! its reservation, its DHCP lease, or in proxy mode the address its boot request came from).
//! Anyone else gets 403 Forbidden, and the refusal is logged (rate-limited per peer). The
//! script carries no secret (CHAP comes from iPXE's DHCP settings), but it names the client's
//! target, and serving it changes state (a one-shot choice is used up, `/done` ends an
//! install): another host must not do either for the client. A client with no known address
//! (no reservation, nothing learned yet; also [`crate::config::Bound::Any`], the server without
//! `[dhcp]`) gets nothing: no address is its own, so no fetch can be told from a stranger's.
//! Unknown MACs get the same 403, so the routes do not tell which MACs are clients.

use crate::boot::answer::{self, AnswerContext};
use crate::boot::script::{BootChoice, ClientScript, ScriptImage, ScriptInstaller, render};
use crate::config::{BootAction, Bound, Client, ClientName, Installer, MacAddr, State, TargetKind};
use crate::service::budget::PeerLog;
use crate::service::registry::StateRegistry;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// The directory under the state directory that `/files/` serves.
pub const BOOT_FILES_DIR: &str = "boot-files";
/// Where Debian's memtest86+ package puts its binaries.
pub const MEMTEST_SOURCE_DIR: &str = "/boot";
/// The memtest86+ binaries the menu chains (BIOS, UEFI), under `<boot files>/memtest/`.
pub const MEMTEST_FILES: [&str; 2] = ["memtest86+x64.bin", "memtest86+x64.efi"];

/// Copy memtest86+'s binaries from `from` into `<boot_files>/memtest/`, where the menu
/// serves them; returns how many were found.
pub fn populate_memtest(
    boot_files: &std::path::Path,
    from: &std::path::Path,
) -> std::io::Result<usize> {
    let dst = boot_files.join("memtest");
    let mut n = 0;
    for f in MEMTEST_FILES {
        let src = from.join(f);
        if !src.is_file() {
            continue;
        }
        std::fs::create_dir_all(&dst)?;
        let tmp = dst.join(format!(".{f}.tmp"));
        std::fs::copy(&src, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dst.join(f))?;
        n += 1;
    }
    Ok(n)
}

/// The directory under the state directory with the admin's answer-file templates.
pub const TEMPLATES_DIR: &str = "templates";

#[derive(Clone)]
struct Menu {
    registry: Arc<StateRegistry>,
    /// `ADDR:PORT` the boot routes are bound to (known once bound; scripts point there).
    base: Arc<OnceLock<SocketAddr>>,
    log: PeerLog,
}

/// The boot routes. `base` is set to the bound boot address before serving (scripts name it
/// in their file URLs).
pub fn router(registry: Arc<StateRegistry>, base: Arc<OnceLock<SocketAddr>>) -> Router {
    let files = registry.state_dir().path(BOOT_FILES_DIR);
    let m = Menu {
        registry,
        base,
        log: PeerLog::new("boot HTTP peer"),
    };
    Router::new()
        .route("/boot/{file}", get(script))
        .route("/done/{mac}", post(done))
        .route("/answer/{mac}/{installer}/{file}", get(answer_file))
        .route("/install/{name}/{what}", get(install_file))
        .nest_service("/files", tower_http::services::ServeDir::new(files))
        .with_state(m)
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (code, body.into()).into_response()
}

/// The client with `mac`, when `peer` is one of its addresses; else None (the refusal logged,
/// answer it with [`refused`]).
fn own_client(m: &Menu, st: &State, mac: &str, peer: IpAddr, what: &str) -> Option<ClientName> {
    let peer = peer.to_canonical();
    let client = mac
        .parse::<MacAddr>()
        .ok()
        .and_then(|mac| st.registry.client_by_mac(&mac));
    let allowed = client.is_some_and(|c| {
        match m.registry.bound_of(st, &TargetKind::Client(c.name.clone())) {
            Bound::Only(a) => a.iter().any(|b| b.ip == peer),
            Bound::Any => false,
        }
    });
    match client {
        Some(c) if allowed => Some(c.name.clone()),
        _ => {
            if m.log.allow(peer) {
                tracing::warn!(%peer, mac, "boot HTTP: {what} refused: not an address of that client (or no such client)");
            }
            None
        }
    }
}

/// The address script and answer URLs name: the bound boot address, or with `boot_listen =
/// "0.0.0.0:PORT"` the boot interface's (`server_ip`), as DHCP's script URL does.
fn url_base(m: &Menu, st: &State) -> Option<SocketAddr> {
    crate::config::HttpConfig::boot_url_addr(*m.base.get()?, st.config.server_ip)
}

fn refused() -> Response {
    text(
        StatusCode::FORBIDDEN,
        "forbidden: served only to the client's own address\n",
    )
}

async fn script(
    AxState(m): AxState<Menu>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe") else {
        return text(StatusCode::NOT_FOUND, "not found: GET /boot/<mac>.ipxe\n");
    };
    let st = m.registry.current_state();
    let Some(name) = own_client(&m, &st, mac, peer.ip(), "script") else {
        return refused();
    };
    let Some(c) = st.registry.client(&name) else {
        return refused();
    };
    let Some(root_path) = st.client_root_path(c) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no server_ip in isboot.toml: no root-path to boot\n",
        );
    };
    let Some(base) = url_base(&m, &st) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting, or boot_listen is unspecified without a server_ip\n",
        );
    };
    // Its other images (those with a target: a file version).
    let images: Vec<ScriptImage> = c
        .allowed_images
        .iter()
        .filter(|a| st.client_image_base(a).is_some())
        .filter_map(|a| {
            Some(ScriptImage {
                name: a.image.to_string(),
                root_path: st
                    .config
                    .root_path(&st.client_image_iqn(&c.name, &a.image))?,
            })
        })
        .collect();
    let action = c.boot.effective();
    let default = match &action {
        BootAction::Disk => BootChoice::Disk,
        BootAction::Memtest => BootChoice::Memtest,
        BootAction::Local => BootChoice::Local,
        BootAction::Install(n) if st.config.installer(n).is_some() => {
            BootChoice::Install(n.to_string())
        }
        BootAction::Install(_) => {
            tracing::warn!(client = %name, %action, "boot HTTP: no such [[installer]] in isboot.toml (removed?); its script boots its disk");
            BootChoice::Disk
        }
        BootAction::Image(n) if images.iter().any(|i| i.name == n.as_str()) => {
            BootChoice::Image(n.to_string())
        }
        BootAction::Image(_) => {
            tracing::warn!(client = %name, %action, "boot HTTP: that image is not (or no longer) allowed for this client, or is not served; its script boots its disk");
            BootChoice::Disk
        }
    };
    let installers: Vec<ScriptInstaller> = st
        .config
        .installers
        .iter()
        .map(|i| script_installer(base, c, i))
        .collect();
    let menu_timeout = if c.boot.menu == Some(true) {
        st.config.menu_timeout()
    } else {
        0
    };
    let body = render(&ClientScript {
        root_path: &root_path,
        files_url: &format!("http://{base}/files"),
        default,
        menu_timeout,
        installers: &installers,
        images: &images,
    });
    // A one-shot choice is used up now (an install when its installer calls back).
    if let Some(next) = c
        .boot
        .next
        .clone()
        .filter(|n| !matches!(n, BootAction::Install(_)))
    {
        if let Err(e) = take_next(&m.registry, &name, move |a| *a == next) {
            tracing::error!(client = %name, "boot HTTP: cannot clear the one-shot boot choice: {e}");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot record the served boot choice\n",
            );
        }
    }
    tracing::info!(client = %name, %peer, boot = %action, "boot HTTP: script served");
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `http://<base>/answer/<mac>/<installer>`: client `c`'s answer files for `i`.
fn answer_url(base: SocketAddr, c: &Client, i: &Installer) -> String {
    format!("http://{base}/answer/{}/{}", c.mac.dashed(), i.name)
}

fn install_url(base: SocketAddr, i: &Installer, what: &str) -> String {
    format!("http://{base}/install/{}/{what}", i.name)
}

/// Installer `i` as client `c`'s script boots it: its command line plus the arguments that
/// point it at `c`'s answer files.
fn script_installer(base: SocketAddr, c: &Client, i: &Installer) -> ScriptInstaller {
    let iso = i.iso.as_ref().map(|_| install_url(base, i, "iso"));
    let mut args = i.cmdline.trim().to_string();
    if let Some(kind) = i.answer {
        if !args.is_empty() {
            args.push(' ');
        }
        args.push_str(&answer::kernel_args(
            kind,
            &answer_url(base, c, i),
            iso.as_deref(),
        ));
    }
    ScriptInstaller {
        name: i.name.to_string(),
        label: i.label().to_string(),
        kernel_url: install_url(base, i, "kernel"),
        initrd_url: install_url(base, i, "initrd"),
        args,
    }
}

/// `GET /answer/<mac>/<installer>/<file>`: only to the client's own address.
async fn answer_file(
    AxState(m): AxState<Menu>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((mac, installer, file)): Path<(String, String, String)>,
) -> Response {
    let st = m.registry.current_state();
    let Some(name) = own_client(&m, &st, &mac, peer.ip(), "answer file") else {
        return refused();
    };
    let (Some(c), Some(base)) = (st.registry.client(&name), url_base(&m, &st)) else {
        return refused();
    };
    let not_found = || {
        text(
            StatusCode::NOT_FOUND,
            "not found: no such installer or answer file\n",
        )
    };
    let Some(i) = installer.parse().ok().and_then(|n| st.config.installer(&n)) else {
        return not_found();
    };
    let Some(kind) = i.answer.filter(|k| k.files().contains(&file.as_str())) else {
        return not_found();
    };
    let target = st.target_iqn(&c.name).to_string();
    let ctx = AnswerContext {
        client: name.as_str(),
        mac: c.mac.to_string(),
        ip: peer.ip().to_canonical().to_string(),
        target: &target,
        server: base.to_string(),
        installer: i.name.as_str(),
        answer_url: answer_url(base, c, i),
        done_url: format!("http://{base}/done/{}", c.mac.dashed()),
        kernel_url: install_url(base, i, "kernel"),
        initrd_url: install_url(base, i, "initrd"),
        iso_url: i.iso.as_ref().map(|_| install_url(base, i, "iso")),
        vars: &i.vars,
    };
    let dir = m.registry.state_dir().path(TEMPLATES_DIR);
    let candidates = [
        dir.join(i.name.as_str()).join(format!("{file}.j2")),
        dir.join(format!("{file}.j2")),
    ];
    let own = super::blocking(|| {
        for p in &candidates {
            match read_template(p) {
                Ok(Some(t)) => return Ok(Some((p.display().to_string(), t))),
                Ok(None) => {}
                Err(e) => return Err(format!("answer template {}: {e}", p.display())),
            }
        }
        Ok(None)
    });
    let rendered = match own {
        Ok(Some((path, t))) => answer::render(&path, &t, &ctx).map_err(|e| e.to_string()),
        Ok(None) => match answer::builtin(kind, &file) {
            Some(t) => {
                answer::render(&format!("built-in {file}.j2"), t, &ctx).map_err(|e| e.to_string())
            }
            None => return not_found(),
        },
        Err(e) => Err(e),
    };
    match rendered {
        Ok(body) => {
            tracing::info!(client = %name, %peer, installer = %i.name, file, "boot HTTP: answer file served");
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Err(e) => {
            tracing::error!(client = %name, installer = %i.name, "boot HTTP: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

/// An admin's template at `p`: None when there is none; bounded by [`answer::MAX_TEMPLATE`].
fn read_template(p: &std::path::Path) -> Result<Option<String>, String> {
    use std::io::Read as _;
    let f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut t = String::new();
    f.take(answer::MAX_TEMPLATE + 1)
        .read_to_string(&mut t)
        .map_err(|e| e.to_string())?;
    if t.len() as u64 > answer::MAX_TEMPLATE {
        return Err(format!("longer than {} bytes", answer::MAX_TEMPLATE));
    }
    Ok(Some(t))
}

/// `GET /install/<name>/kernel|initrd|iso`: an installer's files, with byte ranges.
async fn install_file(
    AxState(m): AxState<Menu>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((name, what)): Path<(String, String)>,
    req: Request,
) -> Response {
    let st = m.registry.current_state();
    let Some(path) = name
        .parse()
        .ok()
        .and_then(|n| st.config.installer(&n))
        .and_then(|i| i.file(&what))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "not found: GET /install/<installer>/kernel|initrd|iso\n",
        );
    };
    match tower_http::services::ServeFile::new(path)
        .try_call(req)
        .await
    {
        Ok(r) => {
            if r.status() == StatusCode::NOT_FOUND {
                tracing::warn!(installer = %name, file = %path.display(), "boot HTTP: installer file missing (see [[installer]] in isboot.toml)");
            } else {
                tracing::info!(installer = %name, file = %what, %peer, status = r.status().as_u16(), "boot HTTP: installer file served");
            }
            r.into_response()
        }
        Err(e) => {
            tracing::error!(installer = %name, file = %path.display(), "boot HTTP: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the installer file\n",
            )
        }
    }
}

/// Clear `name`'s one-shot choice when `used` says so, and serve the changed state at once.
fn take_next(
    reg: &Arc<StateRegistry>,
    name: &ClientName,
    used: impl Fn(&BootAction) -> bool + Send + 'static,
) -> Result<Option<BootAction>, crate::config::ConfigError> {
    let reg = reg.clone();
    let name = name.clone();
    super::blocking(move || {
        let taken = reg.state_dir().lock()?.take_next(&name, used)?;
        if taken.is_some() {
            reg.reload_if_changed()?;
        }
        Ok(taken)
    })
}

async fn done(
    AxState(m): AxState<Menu>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
) -> Response {
    let st = m.registry.current_state();
    let Some(name) = own_client(&m, &st, &mac, peer.ip(), "install callback") else {
        return refused();
    };
    match take_next(&m.registry, &name, |a| matches!(a, BootAction::Install(_))) {
        Ok(Some(a)) => {
            tracing::info!(client = %name, %peer, "boot HTTP: {a} done; the client boots its default again");
            text(StatusCode::OK, format!("{a} done\n"))
        }
        Ok(None) => text(StatusCode::CONFLICT, "no install pending for this client\n"),
        Err(e) => {
            tracing::error!(client = %name, "boot HTTP: cannot clear the pending install: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot record the finished install\n",
            )
        }
    }
}
