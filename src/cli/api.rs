//! The CLI's side of the status API: `isboot status` asks the running server
//! (`GET /api/v1/status` on its admin HTTP address) and falls back to the state files when no
//! server answers.

use crate::config::ServerStatus;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long one API request may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach the admin routes of the server that published `live`: its bound address,
/// with a wildcard address replaced by loopback.
pub fn admin_addr(live: &ServerStatus) -> Option<SocketAddr> {
    let mut a: SocketAddr = live.http.as_deref()?.parse().ok()?;
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(a)
}

/// `GET path` from `addr`, decoded from JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = rt.block_on(async {
        tokio::time::timeout(TIMEOUT, get(addr, path))
            .await
            .map_err(|_| format!("no answer from {addr} within {} s", TIMEOUT.as_secs()))?
    })?;
    serde_json::from_slice(&body).map_err(|e| format!("bad answer from {addr}{path}: {e}"))
}

async fn get(addr: SocketAddr, path: &str) -> Result<Bytes, String> {
    let err = |e: &dyn std::fmt::Display| format!("GET http://{addr}{path}: {e}");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| err(&e))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(&e))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| err(&e))?;
    let resp = send.send_request(req).await.map_err(|e| err(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(&e))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(err(&format!("{status}: {}", text.trim())));
    }
    Ok(body)
}
