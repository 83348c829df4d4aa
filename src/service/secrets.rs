//! The secrets socket: how a member of group `isboot` (not root) has the running service write
//! a CHAP secret file, so the file stays 0600 and owned by the service's user.
//!
//! `isboot serve` listens on `<state dir>/run/admin.sock` (mode 0660 in the set-group-ID state
//! directory, so only root, the service's user and group `isboot` can connect; nobody else can
//! even reach the directory) and answers HTTP:
//! - `PUT /v1/secrets/NAME` with the [`Chap`] as JSON: writes `secrets/NAME.toml`;
//! - `DELETE /v1/secrets/NAME`: removes it.
//!
//! Nothing reads a secret through the socket. The CLI uses it only when it may not write the
//! files itself ([`crate::config::secret::write_secret_file`]).

use crate::config::Chap;
use crate::config::secret::{remove_secret_file, secret_path, write_secret_here};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::put;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
}

/// Bind the socket of state directory `root` (the caller holds the server lock, so a socket
/// file left there is a dead server's).
pub fn bind(root: &Path) -> std::io::Result<SecretsSocket> {
    let path = socket_path(root);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok(SecretsSocket {
        listener,
        path,
        root: root.to_path_buf(),
    })
}

impl SecretsSocket {
    /// Answer until `shutdown` completes, then remove the socket file.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/v1/secrets/{name}", put(put_secret).delete(delete_secret))
            .with_state(Arc::new(self.root));
        let res = axum::serve(self.listener, app)
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
    });
    res.map_err(|e| {
        format!(
            "the CHAP secrets in {} belong to the service's user, and the running service did not write this one ({e}): start isboot.service, run the command as root, or add the client with --no-chap",
            root.display()
        )
    })
}

async fn request(
    sock: &Path,
    method: hyper::Method,
    uri: &str,
    body: Vec<u8>,
) -> Result<(), String> {
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
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::{generate_chap, read_secret_file};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["pc1", "maint-deb12", "a.b_c"] {
            assert!(name_ok(ok), "{ok}");
        }
        for bad in ["", ".x", "../x", "a/b", "a b", &"x".repeat(129)] {
            assert!(!name_ok(bad), "{bad}");
        }
    }

    /// The socket writes a 0600 secret file, removes it, refuses bad input, and the socket
    /// itself is 0660.
    #[test]
    fn the_service_writes_and_removes_secrets_for_the_cli() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("run")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sock = rt.block_on(async { bind(&root) }).unwrap();
        let server = rt.spawn(sock.serve(async {
            let _ = rx.await;
        }));
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
}
