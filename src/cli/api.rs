//! The CLI's side of the status API: `isboot status` asks the running server
//! (`GET /api/v1/status` on its admin socket, `<state dir>/run/admin.sock`, for root and group
//! isboot) and falls back to the state files when no server answers.

use std::path::Path;
use std::time::Duration;

/// How long one API request may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// `GET path` from the admin socket of state directory `root`, decoded from JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(root: &Path, path: &str) -> Result<T, String> {
    let sock = crate::service::secrets::socket_path(root);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = rt.block_on(async {
        tokio::time::timeout(
            TIMEOUT,
            crate::service::secrets::request(&sock, hyper::Method::GET, path, Vec::new()),
        )
        .await
        .map_err(|_| {
            format!(
                "no answer from {} within {} s",
                sock.display(),
                TIMEOUT.as_secs()
            )
        })?
    });
    let body = body.map_err(|e| format!("GET {path} on {}: {e}", sock.display()))?;
    serde_json::from_slice(&body).map_err(|e| format!("bad answer from {path}: {e}"))
}
