//! The boot routes on the boot LAN ([`Audience::Boot`](super::http::Audience), `[http]
//! boot_listen`): what a client's iPXE fetches.
//!
//! - `GET /boot/<mac>.ipxe`: that client's iPXE script ([`crate::boot::script`]), rendered from
//!   its registry entry and boot settings (`isboot boot`). A one-shot `next` choice is used up
//!   (cleared in the registry) when its script is served, except an install, which stays until
//!   its installer calls back, so a reboot during the install lands in the installer again.
//! - `POST /done/<mac>`: the installer's callback; clears that client's pending install.
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

use crate::boot::script::{BootChoice, ClientScript, render};
use crate::config::{BootAction, Bound, ClientName, MacAddr, State, TargetKind};
use crate::service::budget::PeerLog;
use crate::service::registry::StateRegistry;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// Seconds the menu waits for a key when a client's menu is on (`isboot boot --menu on`).
pub const MENU_TIMEOUT_SECS: u32 = 5;

/// The directory under the state directory that `/files/` serves.
pub const BOOT_FILES_DIR: &str = "boot-files";

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
    let Some(base) = m.base.get() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    };
    let action = c.boot.effective();
    let default = match &action {
        BootAction::Disk => BootChoice::Disk,
        BootAction::Memtest => BootChoice::Memtest,
        BootAction::Local => BootChoice::Local,
        BootAction::Image(_) | BootAction::Install(_) => {
            tracing::warn!(client = %name, %action, "boot HTTP: booting other images and installers is not built yet; its script boots its disk");
            BootChoice::Disk
        }
    };
    let body = render(&ClientScript {
        root_path: &root_path,
        files_url: &format!("http://{base}/files"),
        default,
        menu_timeout: if c.boot.menu == Some(true) {
            MENU_TIMEOUT_SECS
        } else {
            0
        },
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
