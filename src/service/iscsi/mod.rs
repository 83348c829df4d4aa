//! The iSCSI target service: accepts TCP connections, runs login, then the full-feature phase
//! of each session, executing SCSI commands concurrently and writing responses with vectored
//! writes (Data-In straight from the mapped base image, no copy).
//!
//! # Structure
//!
//! * [`serve_with`] (this file) accepts connections and spawns one [`handler`] per connection;
//!   it owns what every connection shares ([`Shared`]: settings, the target registry, the
//!   session table).
//! * `handler.rs`: one connection, in three steps. [`handler::Handler`] holds the socket side
//!   (reader, writer channel, peer and local address) and runs the login
//!   ([`Handler::login`](handler::Handler::login)); a successful login turns it into a
//!   [`handler::SessionHandler`], which runs the full-feature phase
//!   ([`run`](handler::SessionHandler::run): one event at a time, each a PDU, a command
//!   completion, the idle timer or a request to close) and ends with
//!   [`teardown`](handler::SessionHandler::teardown) (drain in-flight commands, tell the
//!   initiator if the server is going away, release SCSI state). Why a connection closed is a
//!   [`handler::CloseReason`].
//! * The sans-IO [`Session`](crate::iscsi::session::Session) decides what every PDU means; the
//!   handler only moves bytes, runs commands and keeps time.
//! * Commands run inline when the SCSI layer planned them as non-blocking
//!   ([`Plan::nonblocking`](crate::scsi::Plan::nonblocking): plain reads through a device that
//!   hands out slices of memory it has mapped, such as a base image or an overlay's data
//!   region); anything else (writes, flushes, reads that go to a file) runs on tokio's
//!   blocking pool.
//! * `writer.rs`: the writer task, which stamps StatSN / ExpCmdSN / MaxCmdSN at send time and
//!   batches PDUs into vectored writes. Optionally ([`ServerConfig::sendfile_min`]), Data-In
//!   bytes of an immutable file (a published base image, an image exported read-only) go with
//!   `sendfile` from that file instead, so the kernel does not copy the mapped pages into the
//!   socket; headers are then sent with `MSG_MORE` so that each joins its data in the same
//!   segments.
//! * `table.rs`: live sessions by TSIH (TSIH assignment, session and connection
//!   reinstatement); `text.rs`: Text requests (SendTargets) in the full-feature phase.
//!
//! Where to extend it: what the service knows about the peer (its address, the local address
//! it reached) is [`handler::Peer`], available to the login and to the session's start; a limit
//! that must hold back reading from the socket belongs in `SessionHandler::next_event` (the one
//! place that reads) and in `work_through` (which takes further buffered PDUs); per-connection
//! timers live beside [`handler::IdleTimer`].

mod handler;
mod table;
mod text;
mod writer;

use crate::config::limits::{self, Limits};
use crate::iscsi::negotiate::TargetLimits;
use crate::iscsi::target::TargetRegistry;
use crate::service::budget::{self, PeerLog, SlotRefusal, Slots};
use crate::service::metrics;
use crate::service::read_trace::ReadTrace;
use handler::Handler;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use table::Table;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Service settings. `Default` suits a lab.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub limits: TargetLimits,
    /// A login must reach full-feature phase within this time.
    pub login_timeout: Duration,
    /// Send a NOP-In ping after this long without hearing from the initiator; also the TCP
    /// keepalive idle time.
    pub idle_ping: Duration,
    /// A peer that stops acknowledging TCP (powered off, unplugged) is dropped after about this
    /// long: TCP keepalive probes (idle connections) and TCP_USER_TIMEOUT (unacknowledged
    /// data, e.g. a ping) both give up then. An unanswered NOP-In alone never drops a
    /// connection: open-iscsi answers pings from iscsid in user space, which is down for tens
    /// of seconds while a diskless client switches from its initrd to the real root, and
    /// dropping it there costs a session recovery in the middle of the boot.
    pub ping_timeout: Duration,
    /// How long shutdown waits for in-flight commands.
    pub drain_timeout: Duration,
    /// Record every READ command here (`isboot serve --read-trace`).
    pub read_trace: Option<Arc<ReadTrace>>,
    /// Send a Data-In segment of an immutable file with `sendfile` when it is at least this
    /// long and no DataDigest was negotiated; `None` (the default): always copy it into the
    /// socket. On loopback, sendfile measured about twice the CPU per byte of the copy, on
    /// the target and on the initiator (per-4 KiB-page splice and page reference work; see
    /// benches/RESULTS.md); it is meant for trials with initiators across a real network.
    pub sendfile_min: Option<usize>,
    /// Connections served at once, in total and per peer address: one over either is closed
    /// at accept, before anything is read from it (counted in `/metrics`). Clone it to watch
    /// its counters.
    pub connections: Slots,
    /// A discovery session is closed after this long without a request.
    pub discovery_idle: Duration,
    /// Commands one session may have open at once, immediate ones included.
    pub max_tasks_per_session: u32,
    /// A session that holds write buffers and sends nothing for this long is closed.
    pub stalled_write: Duration,
    /// How often the base images served are checked for changes ([`crate::service::bases`]).
    pub base_check: Duration,
    /// Memory for write data, over all connections: a write command takes its buffer from it
    /// before its first R2T; while it is spent, commands wait (no R2T) and a connection with
    /// nothing else to receive stops reading its socket. The sessions from one peer address
    /// draw only on that address's share of it ([`budget::Bytes::with_share`]). Clone it to
    /// watch its counters.
    pub write_budget: budget::Bytes,
    /// A login from a client whose disk has live sessions waits this long at most for their
    /// initiators to answer a ping (an answer refuses it; see SECURITY.md, "one user of a
    /// disk"). A running initiator answers within milliseconds (Linux answers in the kernel).
    /// Sessions the client's new IP stack resets end at once (Linux's, after iPXE); one that
    /// stays silent is ended when this runs out — after a warm reboot that is every time, as
    /// iPXE drops segments of connections it does not know without a reset: the cost of this
    /// check at a reboot, hence short.
    pub probe_timeout: Duration,
}

impl ServerConfig {
    /// The defaults with the bounds of a `[limits]` section.
    pub fn with_limits(limits: &Limits) -> ServerConfig {
        ServerConfig {
            connections: Slots::new(
                limits.max_connections(),
                limits.max_connections_per_address(),
            ),
            discovery_idle: Duration::from_secs(limits.discovery_idle_secs()),
            max_tasks_per_session: limits.max_tasks_per_session(),
            write_budget: write_budget(limits),
            stalled_write: Duration::from_secs(limits.stalled_write_secs()),
            ..Default::default()
        }
    }
}

/// The write-data budget of a `[limits]` section, with its per-address share.
pub fn write_budget(limits: &Limits) -> budget::Bytes {
    budget::Bytes::shared(limits.write_buffer(), limits.write_buffer_per_address())
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: TargetLimits::default(),
            login_timeout: Duration::from_secs(15),
            idle_ping: Duration::from_secs(10),
            // ~60 s in all: a TCG guest on a loaded host can stall for 25 s and is not dead.
            ping_timeout: Duration::from_secs(50),
            drain_timeout: Duration::from_secs(10),
            read_trace: None,
            sendfile_min: None,
            connections: Slots::new(
                limits::DEFAULT_MAX_CONNECTIONS,
                limits::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            ),
            discovery_idle: Duration::from_secs(limits::DEFAULT_DISCOVERY_IDLE_SECS),
            max_tasks_per_session: limits::DEFAULT_MAX_TASKS_PER_SESSION,
            write_budget: write_budget(&Limits::default()),
            probe_timeout: Duration::from_secs(2),
            base_check: Duration::from_secs(2),
            stalled_write: Duration::from_secs(limits::DEFAULT_STALLED_WRITE_SECS),
        }
    }
}

/// Serve `registry` on `listener` until `shutdown` completes, then close every session
/// cleanly (in-flight commands finish, initiators are told the connection is going).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<dyn TargetRegistry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, registry, ServerConfig::default(), shutdown).await
}

/// [`serve`] with explicit settings.
pub async fn serve_with(
    listener: TcpListener,
    registry: Arc<dyn TargetRegistry>,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    metrics::get().watch_write_budget(cfg.write_budget.clone());
    let shared = Arc::new(Shared {
        registry,
        cfg,
        table: Table::default(),
        next_session_id: AtomicU64::new(1),
    });
    let mut conns = tokio::task::JoinSet::new();
    let watcher = tokio::spawn(crate::service::bases::watch(shared.cfg.base_check));
    let refusals = PeerLog::new("iSCSI peer");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let slot = match shared.cfg.connections.try_acquire(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        // Closed before anything is read: the peer holds nothing here.
                        metrics::get().iscsi_connection(refusal_label(why));
                        if refusals.allow(peer.ip()) {
                            info!(%peer, "iSCSI connection refused: {why}");
                        }
                        drop(stream);
                        continue;
                    }
                };
                metrics::get().iscsi_connection("accepted");
                let shared = shared.clone();
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    if let Err(e) = Handler::serve(stream, peer, shared, stop).await {
                        debug!(%peer, "connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    watcher.abort();
    info!("shutting down: closing {} connection(s)", conns.len());
    let _ = stop_tx.send(true);
    let grace = shared.cfg.drain_timeout + Duration::from_secs(2);
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
    Ok(())
}

/// What every connection of one server shares.
struct Shared {
    registry: Arc<dyn TargetRegistry>,
    cfg: ServerConfig,
    table: Table,
    next_session_id: AtomicU64,
}

/// The `/metrics` label of a refused connection.
fn refusal_label(why: SlotRefusal) -> &'static str {
    match why {
        SlotRefusal::Full { .. } => "refused_full",
        SlotRefusal::PerAddress { .. } => "refused_per_address",
    }
}
