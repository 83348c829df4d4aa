//! The TFTP service: one listening socket, one task and one ephemeral socket per transfer.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::budget::{PeerLog, Slots};
use crate::config::limits::Limits;
use crate::tftp::TftpError;
use crate::tftp::packet::{self, ErrorCode, Packet};
use crate::tftp::transfer::{self, Transfer, TransferLimits};

/// Default TFTP port.
pub const TFTP_PORT: u16 = 69;
/// Receive buffer for requests (RFC 2347: requests are at most 512 bytes; bigger ones are
/// seen whole and refused) and for ACK/ERROR packets in a transfer.
const RECV_BUF: usize = 2048;

/// What stops the TFTP service.
#[derive(Debug, thiserror::Error)]
pub enum TftpServiceError {
    #[error("binding TFTP socket {addr}: {source}")]
    Binding {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TFTP root {0}: {1}")]
    Root(PathBuf, std::io::Error),
    #[error("receiving TFTP requests: {0}")]
    Receiving(std::io::Error),
}

/// The TFTP service's budgets: transfer slots (in total and per address; more requests get
/// "server busy") and each transfer's limits.
#[derive(Debug, Clone)]
pub struct TftpLimits {
    pub slots: Slots,
    pub transfer: TransferLimits,
}

impl TftpLimits {
    pub fn from_config(l: &Limits) -> TftpLimits {
        TftpLimits {
            slots: Slots::new(l.tftp_transfers(), l.tftp_transfers_per_address()),
            transfer: TransferLimits {
                max_timeout: Duration::from_secs(l.tftp_max_timeout_secs()),
                max_duration: Duration::from_secs(l.tftp_transfer_secs()),
                ..TransferLimits::default()
            },
        }
    }
}

impl Default for TftpLimits {
    fn default() -> Self {
        TftpLimits::from_config(&Limits::default())
    }
}

/// Bind the TFTP listening socket (e.g. `0.0.0.0:69`, or `127.0.0.1:0` in tests).
pub async fn bind_tftp(addr: SocketAddr) -> Result<UdpSocket, TftpServiceError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|source| TftpServiceError::Binding { addr, source })
}

/// Serve `root` read-only on `socket` until `shutdown` completes; running transfers are then
/// aborted.
pub async fn run_tftp(
    socket: UdpSocket,
    root: PathBuf,
    limits: TftpLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TftpServiceError> {
    let meta = std::fs::metadata(&root).map_err(|e| TftpServiceError::Root(root.clone(), e))?;
    if !meta.is_dir() {
        return Err(TftpServiceError::Root(
            root.clone(),
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let local_ip = socket
        .local_addr()
        .map_err(TftpServiceError::Receiving)?
        .ip();
    tracing::info!(addr = ?socket.local_addr().ok(), root = %root.display(), "TFTP listening");
    let root = Arc::new(root);
    let TftpLimits { slots, transfer } = limits;
    let log = PeerLog::new("TFTP peer");
    let mut transfers = JoinSet::new();
    let mut buf = vec![0u8; RECV_BUF];
    tokio::pin!(shutdown);
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = transfers.join_next(), if !transfers.is_empty() => continue,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted) => continue,
                Err(e) => return Err(TftpServiceError::Receiving(e)),
            },
        };
        let reply_err = |e: TftpError| {
            if log.allow(peer.ip()) {
                tracing::info!(%peer, error = %e, "TFTP request refused");
            }
            e.to_packet()
        };
        let req = match Packet::parse(&buf[..n]) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(_)) => {
                let _ = socket
                    .send_to(&reply_err(TftpError::WriteRefused), peer)
                    .await;
                continue;
            }
            Ok(Packet::Error { .. }) => continue, // never answer an error
            Ok(_) => {
                let p = packet::error(ErrorCode::IllegalOperation, "expected a read request");
                let _ = socket.send_to(&p, peer).await;
                continue;
            }
            Err(e) => {
                let _ = socket.send_to(&reply_err(e), peer).await;
                continue;
            }
        };
        let permit = match slots.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                if log.allow(peer.ip()) {
                    tracing::info!(%peer, file = %req.filename, "TFTP request refused: {why}");
                }
                let p = packet::error(ErrorCode::NotDefined, "server busy, try again");
                let _ = socket.send_to(&p, peer).await;
                continue;
            }
        };
        let root = root.clone();
        let log = log.clone();
        transfers.spawn(async move {
            let _permit = permit;
            serve_one(req, peer, local_ip, &root, transfer, &log).await;
        });
    }
    transfers.shutdown().await;
    tracing::info!("TFTP stopped");
    Ok(())
}

/// Counts a transfer in the metrics when it ends, however it ends.
struct Tally {
    outcome: &'static str,
    bytes: u64,
}

impl Drop for Tally {
    fn drop(&mut self) {
        crate::service::metrics::get().tftp_transfer(self.outcome, self.bytes);
    }
}

/// One transfer on its own socket (the server's new transfer ID).
async fn serve_one(
    req: crate::tftp::Request,
    peer: SocketAddr,
    local_ip: std::net::IpAddr,
    root: &std::path::Path,
    limits: TransferLimits,
    log: &PeerLog,
) {
    let mut tally = Tally {
        outcome: "failed",
        bytes: 0,
    };
    let sock = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no socket for a TFTP transfer");
            return;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::warn!(%peer, error = %e, "cannot reach TFTP client");
        return;
    }
    let filename = req.filename.clone();
    let root_owned = root.to_path_buf();
    let prepared =
        tokio::task::spawn_blocking(move || transfer::prepare(&req, &root_owned, &limits)).await;
    let prepared = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            if log.allow(peer.ip()) {
                tracing::info!(%peer, file = %filename, error = %e, "TFTP request refused");
            }
            let _ = sock.send(&e.to_packet()).await;
            tally.outcome = "refused";
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "TFTP open task failed");
            return;
        }
    };
    let len = prepared.len;
    let (mut t, first) = Transfer::start(prepared, &limits, std::time::Instant::now());
    if log.allow(peer.ip()) {
        tracing::info!(%peer, file = %filename, bytes = len, blksize = t.negotiated().blksize, windowsize = t.negotiated().windowsize, "TFTP transfer started");
    }
    tally.bytes += send_all(&sock, &first).await;
    let mut buf = vec![0u8; RECV_BUF];
    while !t.is_finished() {
        let deadline = tokio::time::Instant::from_std(t.deadline());
        let input = tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => Some(buf[..n].to_vec()),
                Err(e) => {
                    tracing::info!(%peer, error = %e, "TFTP client went away");
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline) => None,
        };
        // Reading file blocks may touch the disk: do it off the executor.
        let step = tokio::task::spawn_blocking(move || {
            let now = std::time::Instant::now();
            let out = match input {
                Some(d) => t.on_datagram(&d, now),
                None => t.on_timeout(now),
            };
            (t, out)
        })
        .await;
        let out;
        (t, out) = match step {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TFTP transfer step failed");
                return;
            }
        };
        tally.bytes += send_all(&sock, &out).await;
    }
    let status = t.status();
    if *status == transfer::Status::Done {
        tally.outcome = "complete";
    }
    if !log.allow(peer.ip()) {
        return;
    }
    match status {
        transfer::Status::Done => {
            tracing::info!(%peer, file = %filename, bytes = len, "TFTP transfer done")
        }
        other => tracing::info!(%peer, file = %filename, status = ?other, "TFTP transfer ended"),
    }
}

/// Send `pkts`; the bytes that went out.
async fn send_all(sock: &UdpSocket, pkts: &[Vec<u8>]) -> u64 {
    let mut sent = 0;
    for p in pkts {
        match sock.send(p).await {
            Ok(n) => sent += n as u64,
            Err(e) => tracing::debug!(error = %e, "TFTP send failed"),
        }
    }
    sent
}
