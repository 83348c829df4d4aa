//! `isboot serve`: the iSCSI targets of every client in the state directory, kept in step with
//! it, with `run/status.json` published every second.

use super::CliError;
use crate::config::StateDir;
use crate::iscsi::target::TargetRegistry;
use crate::service::http::{AdminGate, Audience, HttpError, HttpServer, Routes, binds};
use crate::service::iscsi::ServerConfig;
use crate::service::read_trace::ReadTrace;
use crate::service::registry::{StateRegistry, maintain};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The shared-state follower thread, stopped when dropped (when `serve` returns).
/// With it, the fleet thread (presence and choice of the servers on one pool).
#[cfg(feature = "rbd")]
struct Follower(
    Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
);

#[cfg(feature = "rbd")]
impl Follower {
    fn start(dir: StateDir, registry: Arc<StateRegistry>) -> Follower {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Follower(
            stop.clone(),
            vec![
                crate::service::shared::follow(dir, stop.clone()),
                crate::service::fleet::follow(registry, stop),
            ],
        )
    }
}

#[cfg(feature = "rbd")]
impl Drop for Follower {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

pub fn run(dir: &StateDir, args: &super::ServeArgs) -> Result<(), CliError> {
    let listen = args.listen.as_deref();
    super::init_tracing();
    // `[store] backend = "rbd"` loads only in an isboot built with the rbd feature, which
    // serves client disks from the pool.
    let state = dir.load()?;
    let addr: SocketAddr = match listen {
        Some(s) => s
            .parse()
            .map_err(|_| CliError::Bad(format!("bad --listen {s:?} (expected ADDR:PORT)")))?,
        None => state.config.listen_addr(),
    };
    if addr.ip().is_unspecified() {
        tracing::warn!(
            "iSCSI listens on every address ({addr}): hosts on any network of this server can try the clients' targets; remove `listen` from the config (or pass --listen SERVER_IP:3260) to serve the boot network only"
        );
    }
    let http_listen: Option<SocketAddr> =
        match args.http_listen.as_deref() {
            Some(s) => Some(s.parse().map_err(|_| {
                CliError::Bad(format!("bad --http-listen {s:?} (expected ADDR:PORT)"))
            })?),
            None => None,
        };
    let _server_lock = dir.lock_server()?;
    let read_trace = match &args.read_trace {
        Some(p) => Some(Arc::new(ReadTrace::create(p).map_err(|e| {
            CliError::Failed(format!("cannot create {}: {e}", p.display()))
        })?)),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the runtime: {e}")))?;
    rt.block_on(async {
        let d = dir.clone();
        let registry = tokio::task::spawn_blocking(move || StateRegistry::open(d))
            .await
            .map_err(|e| CliError::Failed(e.to_string()))??;
        let registry = Arc::new(registry);
        // Bind every listener before serving anything: a port that is taken stops the start
        // with one clear error, and READY tells systemd that all of them are up.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::Failed(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        registry.set_listen(&bound);
        let boot_services =
            crate::service::boot::start(registry.clone(), args.no_dhcp, args.no_tftp)
                .await
                .map_err(CliError::Failed)?;
        let boot_base = Arc::new(OnceLock::new());
        let http = http_server(&registry, http_listen, boot_base.clone()).await?;
        let secrets = crate::service::secrets::bind(dir.root()).map_err(|e| {
            CliError::Failed(format!(
                "cannot listen on {}: {e}",
                crate::service::secrets::socket_path(dir.root()).display()
            ))
        })?;
        for (audience, a) in http.local_addrs() {
            match audience {
                Audience::Admin => registry.set_http(&a.to_string()),
                Audience::Boot => {
                    registry.set_boot_http(&a.to_string());
                    let _ = boot_base.set(a);
                }
            }
        }
        tracing::info!(listen = %bound, targets = registry.all().len(), "serving");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // The keeper (reload, status, idle flushes) stops after the services, so a tick in
        // flight never rewrites the status file after its final removal.
        let (keeper_tx, keeper_rx) = tokio::sync::watch::channel(false);
        let keeper = tokio::spawn(maintain(registry.clone(), stopped(keeper_rx)));
        // A fleet's shared state: follow the pool's changes (the keeper reloads them).
        #[cfg(feature = "rbd")]
        let _follower = registry
            .current_state()
            .config
            .store
            .shared_state()
            .then(|| Follower::start(dir.clone(), registry.clone()));
        tokio::spawn(async move {
            super::shutdown_signal().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            let _ = tx.send(true);
        });
        // DHCP and TFTP on the boot interface, when one is configured.
        let boot = tokio::spawn(boot_services.run(stopped(rx.clone())));
        let http = tokio::spawn(http.serve(stopped(rx.clone())));
        // The status API is on the admin socket (root and group isboot), not on the loopback
        // HTTP listener every local user can reach.
        tokio::spawn(secrets.serve(
            crate::service::api::router(registry.clone()),
            stopped(rx.clone()),
        ));
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let cfg = ServerConfig {
            read_trace,
            ..ServerConfig::with_limits(&registry.current_state().config.limits)
        };
        let iscsi = serve_iscsi(listener, registry.clone(), cfg, stopped(rx));
        tokio::pin!(iscsi);
        let res = tokio::select! {
            r = &mut iscsi => r,
            b = boot => match b {
                // The boot services ended on their own: that is an error (bad interface, port 67 taken).
                Ok(Err(e)) => Err(std::io::Error::other(e)),
                _ => iscsi.await,
            },
            h = http => match h {
                Ok(Err(e)) => Err(std::io::Error::other(format!("HTTP: {e}"))),
                _ => iscsi.await,
            },
        };
        // Stop the keeper: it flushes every overlay and removes the status file.
        let _ = keeper_tx.send(true);
        let _ = keeper.await;
        res.map_err(|e| CliError::Failed(e.to_string()))
    })
}

/// The embedded HTTP listener with the admin routes (metrics) and the boot routes
/// (scripts, boot files; `boot_base` is set to their address once bound), bound.
async fn http_server(
    registry: &Arc<StateRegistry>,
    listen: Option<SocketAddr>,
    boot_base: Arc<OnceLock<SocketAddr>>,
) -> Result<HttpServer, CliError> {
    let metrics = Arc::new(crate::service::metrics::registry(registry.clone()));
    let routes = || {
        Routes::default()
            .add(
                Audience::Admin,
                crate::service::metrics::router(metrics.clone()),
            )
            .add(
                Audience::Boot,
                crate::service::menu::router(registry.clone(), boot_base.clone()),
            )
    };
    let state = registry.current_state();
    let mut cfg = state.config.http.clone();
    if let Some(l) = listen {
        cfg.listen = l;
    }
    let gate_reg = registry.clone();
    let gate: AdminGate = Arc::new(move |ip| gate_reg.current_state().config.http.allows(ip));
    let all = binds(&cfg, state.config.server_ip);
    match crate::service::http::bind(routes(), &all, gate.clone()).await {
        // The default boot address (server_ip) is not on this host (yet): serve the rest, say
        // so. A boot_listen the admin set must work.
        Err(HttpError::Binding {
            audience: Audience::Boot,
            addr,
            source,
        }) if cfg.boot_listen.is_none() => {
            tracing::warn!(
                "boot routes off: cannot listen on {addr} ({source}); iPXE scripts and boot files are not served (set [http] boot_listen, or \"off\")"
            );
            let admin: Vec<_> = all
                .into_iter()
                .filter(|b| b.audience != Audience::Boot)
                .collect();
            crate::service::http::bind(routes(), &admin, gate).await
        }
        r => r,
    }
    .map_err(|e| CliError::Failed(e.to_string()))
}

/// The iSCSI service.
async fn serve_iscsi(
    listener: tokio::net::TcpListener,
    registry: Arc<dyn TargetRegistry>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::service::iscsi::serve_with(listener, registry, cfg, shutdown).await
}
