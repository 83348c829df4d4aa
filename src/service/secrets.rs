//! The admin socket: the running service's local API for root and group `isboot`.
//!
//! `isboot serve` listens on `<state dir>/run/admin.sock` and answers HTTP:
//! - `GET /api/v1/status`, `GET /api/v1/clients`: the status API ([`crate::service::api`]);
//!   `isboot status` reads it;
//! - `PUT /v1/secrets/NAME` with the [`Chap`] as JSON: writes `secrets/NAME.toml`, so a member
//!   of group `isboot` (not root) gets a CHAP secret file that stays 0600 and owned by the
//!   service's user; `DELETE /v1/secrets/NAME` removes it. Nothing reads a secret here.
//!
//! Who may use it: root, the service's own user, and members of the state directory's group
//! (`isboot` when installed by the package). Twice checked: the socket is 0660 in the
//! set-group-ID state directory (nobody else can even reach the directory), and every
//! connection's peer credentials (`SO_PEERCRED` for its user and primary group,
//! `SO_PEERGROUPS` for its supplementary groups, as they were when it connected) must name one
//! of them, or each request gets 403 and the refusal is logged (rate limited per user). The
//! status API is here rather than on the loopback HTTP listener, which any local user can
//! reach: it lists every client's MAC, address, initiator name and image. `/metrics` stays on
//! that listener, where Prometheus scrapes it.
//!
//! The CLI uses the secrets routes only when it may not write the files itself
//! ([`crate::config::secret::write_secret_file`]).

use crate::config::Chap;
use crate::config::secret::{remove_secret_file, secret_path, write_secret_here};
use crate::loglimit::{LogLimiter, LogLimits};
use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::serve::IncomingStream;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one request to the service may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The socket of the state directory `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("run").join("admin.sock")
}

/// A target name that is a plain file name (client names, `maint-IMAGE`).
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The bound socket of one `isboot serve`.
pub struct SecretsSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    root: PathBuf,
    access: Access,
}

/// Bind the socket of state directory `root` (the caller holds the server lock, so a socket
/// file left there is a dead server's). Its users: root, this process's user and the state
/// directory's group.
pub fn bind(root: &Path) -> std::io::Result<SecretsSocket> {
    let path = socket_path(root);
    let group = std::fs::metadata(root)?.gid();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok(SecretsSocket {
        listener,
        path,
        root: root.to_path_buf(),
        access: Access::new(crate::sys::euid(), group),
    })
}

/// The credentials of a connection's peer, read when it connected (`None`: unreadable).
#[derive(Clone, Debug)]
pub struct Peer(Option<PeerCred>);

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Option<i32>,
    pub uid: u32,
    /// The primary group and the supplementary groups.
    pub groups: Vec<u32>,
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        let io = stream.io();
        Peer(io.peer_cred().ok().and_then(|c| {
            let mut groups = crate::sys::peer_groups(io).ok()?;
            groups.push(c.gid());
            Some(PeerCred {
                pid: c.pid(),
                uid: c.uid(),
                groups,
            })
        }))
    }
}

/// The socket's access rule: root, the service's user, members of the state directory's group.
#[derive(Clone)]
struct Access {
    uid: u32,
    group: u32,
    logs: Arc<Mutex<(Instant, LogLimiter<u32>)>>,
}

impl Access {
    fn new(uid: u32, group: u32) -> Access {
        Access {
            uid,
            group,
            logs: Arc::new(Mutex::new((
                Instant::now(),
                LogLimiter::new(LogLimits::default()),
            ))),
        }
    }

    fn allows(&self, peer: &PeerCred) -> bool {
        peer.uid == 0 || peer.uid == self.uid || peer.groups.contains(&self.group)
    }
}

/// Refuse (403, logged) a request whose peer is not allowed.
async fn only_members(State(access): State<Access>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .and_then(|ConnectInfo(Peer(p))| p.clone());
    if let Some(p) = &peer
        && access.allows(p)
    {
        return next.run(req).await;
    }
    let (uid, pid) = peer.as_ref().map_or((None, None), |p| (Some(p.uid), p.pid));
    let log = {
        let mut l = access.logs.lock().unwrap_or_else(|e| e.into_inner());
        let now = l.0.elapsed().as_secs();
        l.1.allow(&uid.unwrap_or(u32::MAX), now, "uid")
    };
    if log {
        tracing::warn!(
            uid = ?uid,
            pid = ?pid,
            method = %req.method(),
            path = %req.uri().path(),
            "admin socket: refused a process that is neither root nor the service's user nor in the state directory's group (gid {})",
            access.group
        );
    }
    (
        StatusCode::FORBIDDEN,
        "only root and members of group isboot may use the admin socket: join group isboot\n",
    )
        .into_response()
}

impl SecretsSocket {
    /// Answer the secrets routes and `api` (the status API) until `shutdown` completes, then
    /// remove the socket file.
    pub async fn serve(
        self,
        api: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/v1/secrets/{name}", put(put_secret).delete(delete_secret))
            .with_state(Arc::new(self.root))
            .merge(api)
            .layer(axum::middleware::from_fn_with_state(
                self.access,
                only_members,
            ));
        let res = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        let _ = std::fs::remove_file(&self.path);
        res
    }
}

type Reply = (StatusCode, String);

async fn put_secret(
    State(root): State<Arc<PathBuf>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply {
    if !name_ok(&name) {
        return (StatusCode::BAD_REQUEST, format!("bad target name {name:?}"));
    }
    let chap: Chap = match serde_json::from_slice(&body) {
        Ok(c) => c,
        // serde's message may quote the body, which holds the secret: say what was expected.
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "expected JSON with user and secret".into(),
            );
        }
    };
    if let Err(e) = crate::config::state::validate_chap(&chap) {
        return (StatusCode::BAD_REQUEST, e.to_string());
    }
    let path = secret_path(&root, &name);
    let done = tokio::task::spawn_blocking(move || write_secret_here(&path, &chap)).await;
    reply(done, &name, "written")
}

async fn delete_secret(State(root): State<Arc<PathBuf>>, UrlPath(name): UrlPath<String>) -> Reply {
    if !name_ok(&name) {
        return (StatusCode::BAD_REQUEST, format!("bad target name {name:?}"));
    }
    let path = secret_path(&root, &name);
    let done = tokio::task::spawn_blocking(move || remove_secret_file(&path)).await;
    reply(done, &name, "removed")
}

fn reply(
    done: Result<Result<(), crate::config::ConfigError>, tokio::task::JoinError>,
    name: &str,
    what: &str,
) -> Reply {
    match done {
        Ok(Ok(())) => {
            tracing::info!(
                target_name = name,
                "CHAP secret {what} for a member of group isboot"
            );
            (StatusCode::OK, format!("secret of {name} {what}\n"))
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The CLI's side: have the service serving state directory `root` write (`Some`) or remove
/// (`None`) the secret of target `name`. Blocking; the error is one line saying what to do.
pub fn ask_service(root: &Path, name: &str, chap: Option<&Chap>) -> Result<(), String> {
    let sock = socket_path(root);
    let body = match chap {
        Some(c) => serde_json::to_vec(c).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let method = if chap.is_some() {
        hyper::Method::PUT
    } else {
        hyper::Method::DELETE
    };
    let uri = format!("/v1/secrets/{name}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let res = rt.block_on(async {
        tokio::time::timeout(TIMEOUT, request(&sock, method, &uri, body))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", TIMEOUT.as_secs())))
            .map(drop)
    });
    res.map_err(|e| {
        format!(
            "the CHAP secrets in {} belong to the service's user, and the running service did not write this one ({e}): start isboot.service, run the command as root, or add the client with --no-chap",
            root.display()
        )
    })
}

/// One HTTP request to the admin socket `sock`: the answer's body, or a one-line error (the
/// status and the answer's text when it is not a success).
pub async fn request(
    sock: &Path,
    method: hyper::Method,
    uri: &str,
    body: Vec<u8>,
) -> Result<Bytes, String> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "isboot")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    driver.abort();
    if status.is_success() {
        body.map_err(|e| e.to_string())
    } else {
        let text = body
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        Err(format!("{status}: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::{generate_chap, read_secret_file};
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["pc1", "maint-deb12", "a.b_c"] {
            assert!(name_ok(ok), "{ok}");
        }
        for bad in ["", ".x", "../x", "a/b", "a b", &"x".repeat(129)] {
            assert!(!name_ok(bad), "{bad}");
        }
    }

    /// Serve the socket of state directory `root` on a runtime of its own: the runtime, the
    /// stop sender and the server's task.
    fn start(
        root: &Path,
    ) -> (
        tokio::runtime::Runtime,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sock = rt.block_on(async { bind(root) }).unwrap();
        let server = rt.spawn(sock.serve(Router::new(), async {
            let _ = rx.await;
        }));
        (rt, tx, server)
    }

    /// The socket writes a 0600 secret file, removes it, refuses bad input, and the socket
    /// itself is 0660.
    #[test]
    fn the_service_writes_and_removes_secrets_for_the_cli() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("run")).unwrap();
        let (rt, tx, server) = start(&root);
        let mode = std::fs::metadata(socket_path(&root)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let chap = generate_chap("pc1").unwrap();
        ask_service(&root, "pc1", Some(&chap)).unwrap();
        let file = secret_path(&root, "pc1");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_secret_file(&file, true).unwrap(), Some(chap.clone()));

        let e = ask_service(&root, ".x", Some(&chap)).unwrap_err();
        assert!(e.contains("400") && e.contains("--no-chap"), "{e}");
        let mut short = chap.clone();
        short.secret = crate::config::Secret::new("short");
        let e = ask_service(&root, "pc2", Some(&short)).unwrap_err();
        assert!(e.contains("16 to 255"), "{e}");
        assert!(!secret_path(&root, "pc2").exists());

        ask_service(&root, "pc1", None).unwrap();
        assert!(!file.exists());

        let _ = tx.send(());
        rt.block_on(server).unwrap().unwrap();
        assert!(
            !socket_path(&root).exists(),
            "the socket file stays after the stop"
        );
        let e = ask_service(&root, "pc1", Some(&chap)).unwrap_err();
        assert!(e.contains("start isboot.service"), "{e}");
    }

    /// `curl` as uid/gid 65534 with supplementary `groups`: PUT a secret on `sock`; the HTTP
    /// status and the body.
    fn put_as(sock: &Path, groups: &str, chap: &Chap) -> (String, String) {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(if groups.is_empty() {
                "--clear-groups".to_string()
            } else {
                format!("--groups={groups}")
            })
            .args([
                "curl",
                "-sS",
                "-X",
                "PUT",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(sock)
            .args(["--data-binary", &serde_json::to_string(chap).unwrap()])
            .arg("http://isboot/v1/secrets/pc1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.to_string(), body.to_string())
    }

    /// The peer credentials decide, not only the socket file's mode: with the directory and
    /// the socket opened to everyone, a process outside the state directory's group is
    /// refused (403, nothing written), one in it by a supplementary group is served. Needs
    /// root (to run processes as other users), setpriv and curl.
    #[test]
    fn only_root_and_the_directory_group_use_the_socket() {
        let have = |t: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !crate::sys::is_root() || !have("setpriv") || !have("curl") {
            eprintln!("SKIPPED: needs root, setpriv and curl");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        let group = 4242;
        std::os::unix::fs::chown(&root, None, Some(group)).unwrap();
        for d in [&root, &root.join("run"), &root.join("secrets")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let (rt, tx, server) = start(&root);
        let path = socket_path(&root);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let chap = generate_chap("pc1").unwrap();

        let (code, body) = put_as(&path, "", &chap);
        assert_eq!(code, "403", "{body}");
        assert!(body.contains("join group isboot"), "{body}");
        assert!(!secret_path(&root, "pc1").exists());
        let (code, body) = put_as(&path, "100,4242", &chap);
        assert_eq!(code, "200", "{body}");
        assert!(secret_path(&root, "pc1").exists());
        // Root always may.
        ask_service(&root, "pc1", None).unwrap();
        assert!(!secret_path(&root, "pc1").exists());

        let _ = tx.send(());
        rt.block_on(server).unwrap().unwrap();
    }
}
