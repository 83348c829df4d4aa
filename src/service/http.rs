//! The embedded HTTP listener of `isboot serve`: axum on the server's tokio runtime.
//!
//! Owners contribute routers, each for an [`Audience`]:
//! - [`Audience::Admin`]: metrics, for the server's admin and a Prometheus
//!   server. Listens on `[http] listen` (default `127.0.0.1:9260`, this host only) and answers
//!   only peers inside `[http] allow` (403 Forbidden for anyone else).
//! - [`Audience::Boot`]: what machines on the boot LAN fetch (boot scripts, boot files: see
//!   `service::menu`). Listens on `[http] boot_listen` (default `<server_ip>:9261`; off
//!   without a `server_ip`).
//!
//! Each audience has its own sockets: an address that would serve both is refused at start
//! ([`HttpError::Shared`]), so the boot LAN never reaches the admin routes by accident. Every
//! router sees the peer's address as `axum::extract::ConnectInfo<SocketAddr>`.
//!
//! # Adding routes (e.g. the boot menu's)
//! 1. Write `pub fn router(..) -> axum::Router` in your own service module (state through
//!    `Router::with_state`, as `service::api::router` does).
//! 2. Add it in `cli/serve.rs`'s `http_server`: `.add(Audience::Boot, my::router(..))`.
//!    Routers of one audience are merged; a path added twice panics at start.
//! 3. For a new audience's addresses (the boot routes listen on the boot interface): add a
//!    key to `HttpConfig` (`config/file.rs`, with its commented default in the config template)
//!    and push a `Bind { audience: Audience::Boot, addr }` for it in [`binds`]. An audience with
//!    routes but no address is not served; an address without routes binds nothing.
//!
//! The listener is bound before `isboot serve` reports READY (sd_notify) and stops with it.
//!
//! ```ignore
//! let routes = Routes::default()
//!     .add(Audience::Admin, metrics_router)
//!     .add(Audience::Boot, menu_router);
//! let server = bind(routes, &binds(&config.http), gate).await?;   // all sockets bound: READY
//! server.serve(shutdown).await
//! ```

use crate::config::HttpConfig;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Who a router is for; each audience listens on its own addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// The server's admin and its monitoring: metrics (the status API is on the admin socket,
    /// `service::secrets`).
    Admin,
    /// Machines on the boot LAN: boot scripts, boot files.
    Boot,
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Audience::Admin => "admin",
            Audience::Boot => "boot",
        })
    }
}

/// One address an audience listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bind {
    pub audience: Audience,
    pub addr: SocketAddr,
}

/// The addresses each audience listens on, from the `[http]` section (the boot routes on
/// `boot_listen`, by default `server_ip`'s: see [`HttpConfig::boot_addr`]).
pub fn binds(cfg: &HttpConfig, server_ip: Option<Ipv4Addr>) -> Vec<Bind> {
    let mut v = vec![Bind {
        audience: Audience::Admin,
        addr: cfg.listen,
    }];
    if let Some(addr) = cfg.boot_addr(server_ip) {
        v.push(Bind {
            audience: Audience::Boot,
            addr,
        });
    }
    v
}

/// Who may use the admin routes, asked for every request (so a changed `[http] allow` applies
/// at once).
pub type AdminGate = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The routers contributed by their owners, by audience.
#[derive(Default)]
pub struct Routes {
    admin: Option<Router>,
    boot: Option<Router>,
}

impl Routes {
    /// Add `router`'s routes to `audience` (merged with what is there; a path added twice
    /// panics at start, like `Router::merge`).
    pub fn add(mut self, audience: Audience, router: Router) -> Routes {
        let slot = match audience {
            Audience::Admin => &mut self.admin,
            Audience::Boot => &mut self.boot,
        };
        *slot = Some(match slot.take() {
            Some(r) => r.merge(router),
            None => router,
        });
        self
    }

    fn take(&mut self, audience: Audience) -> Option<Router> {
        match audience {
            Audience::Admin => self.admin.take(),
            Audience::Boot => self.boot.take(),
        }
    }
}

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "the {a} routes ({aa}) and the {b} routes ({ba}) would share a socket: give them different addresses or ports in [http]"
    )]
    Shared {
        a: Audience,
        aa: SocketAddr,
        b: Audience,
        ba: SocketAddr,
    },
    #[error(
        "cannot listen for HTTP ({audience} routes) on {addr}: {source} (set [http] in the config)"
    )]
    Binding {
        audience: Audience,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Do two addresses end up on one socket (same port, and the same address or a wildcard)?
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Bound listeners, ready to serve.
pub struct HttpServer {
    listeners: Vec<(Audience, TcpListener, Router)>,
}

/// Bind every address in `binds` that has routes, with its audience's router. Admin routes
/// answer only peers `gate` lets in. Fails before binding anything when two audiences would
/// share a socket.
pub async fn bind(
    mut routes: Routes,
    binds: &[Bind],
    gate: AdminGate,
) -> Result<HttpServer, HttpError> {
    for (i, a) in binds.iter().enumerate() {
        for b in &binds[i + 1..] {
            if a.audience != b.audience && overlap(a.addr, b.addr) {
                return Err(HttpError::Shared {
                    a: a.audience,
                    aa: a.addr,
                    b: b.audience,
                    ba: b.addr,
                });
            }
        }
    }
    let mut admin = routes.take(Audience::Admin).map(|r| {
        r.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let gate = gate.clone();
                async move { admin_only(gate, req, next).await }
            },
        ))
    });
    let mut boot = routes.take(Audience::Boot);
    let mut listeners = Vec::new();
    for b in binds {
        let router = match b.audience {
            Audience::Admin => admin.clone(),
            Audience::Boot => boot.clone(),
        };
        let Some(router) = router else { continue };
        let l = TcpListener::bind(b.addr)
            .await
            .map_err(|source| HttpError::Binding {
                audience: b.audience,
                addr: b.addr,
                source,
            })?;
        listeners.push((b.audience, l, router));
    }
    admin.take();
    boot.take();
    Ok(HttpServer { listeners })
}

async fn admin_only(gate: AdminGate, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match peer {
        Some(ip) if gate(ip) => next.run(req).await,
        _ => (
            StatusCode::FORBIDDEN,
            "forbidden: this address is not in [http] allow\n",
        )
            .into_response(),
    }
}

impl HttpServer {
    /// The addresses actually bound (a configured port 0 becomes the one the kernel chose).
    pub fn local_addrs(&self) -> Vec<(Audience, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(a, l, _)| l.local_addr().ok().map(|s| (*a, s)))
            .collect()
    }

    /// Serve until `shutdown` completes; requests in flight then finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (audience, listener, router) in self.listeners {
            let mut rx = rx.clone();
            if let Ok(a) = listener.local_addr() {
                tracing::info!(%audience, listen = %a, "HTTP listening");
            }
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            tasks.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|v| *v).await;
                    })
                    .await
            });
        }
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        while let Some(r) = tasks.join_next().await {
            r.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_from(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn routes() -> Routes {
        Routes::default()
            .add(
                Audience::Admin,
                Router::new().route("/metrics", get(|| async { "m" })),
            )
            .add(
                Audience::Admin,
                Router::new().route("/api", get(|| async { "a" })),
            )
            .add(
                Audience::Boot,
                Router::new().route("/boot", get(|| async { "b" })),
            )
    }

    fn any() -> AdminGate {
        Arc::new(|_| true)
    }

    #[tokio::test]
    async fn audiences_listen_apart_and_admin_is_gated() {
        let binds = [
            Bind {
                audience: Audience::Admin,
                addr: "127.0.0.1:0".parse().unwrap(),
            },
            Bind {
                audience: Audience::Boot,
                addr: "127.0.0.1:0".parse().unwrap(),
            },
        ];
        // Only 127.0.0.2 may use the admin routes.
        let gate: AdminGate = Arc::new(|ip| ip == IpAddr::from([127, 0, 0, 2]));
        let srv = bind(routes(), &binds, gate).await.unwrap();
        let addrs = srv.local_addrs();
        let admin = addrs.iter().find(|a| a.0 == Audience::Admin).unwrap().1;
        let boot = addrs.iter().find(|a| a.0 == Audience::Boot).unwrap().1;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(srv.serve(async {
            let _ = rx.await;
        }));
        // Boot routes: on the boot address only.
        assert!(get_from(boot, "/boot").await.ends_with("\r\n\r\nb"));
        assert!(get_from(boot, "/metrics").await.starts_with("HTTP/1.1 404"));
        assert!(get_from(admin, "/boot").await.starts_with("HTTP/1.1 40"));
        // Admin routes: 403 for 127.0.0.1, served to 127.0.0.2.
        assert!(
            get_from(admin, "/metrics")
                .await
                .starts_with("HTTP/1.1 403")
        );
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut c = s.connect(admin).await.unwrap();
        c.write_all(b"GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\na"),
            "{out}"
        );
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refuses_one_socket_for_two_audiences() {
        for (a, b) in [
            ("127.0.0.1:9999", "127.0.0.1:9999"),
            ("0.0.0.0:9999", "10.0.0.1:9999"),
            ("[::]:9999", "127.0.0.1:9999"),
        ] {
            let binds = [
                Bind {
                    audience: Audience::Admin,
                    addr: a.parse().unwrap(),
                },
                Bind {
                    audience: Audience::Boot,
                    addr: b.parse().unwrap(),
                },
            ];
            let e = bind(routes(), &binds, any()).await.err().expect("refused");
            assert!(matches!(e, HttpError::Shared { .. }), "{a} {b}: {e}");
            assert!(e.to_string().contains("[http]"));
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let binds = [Bind {
            audience: Audience::Admin,
            addr: taken.local_addr().unwrap(),
        }];
        let e = bind(routes(), &binds, any()).await.err().expect("refused");
        assert!(
            e.to_string()
                .contains("cannot listen for HTTP (admin routes)"),
            "{e}"
        );
    }
}
