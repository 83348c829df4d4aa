//! The iSCSI target service: accepts TCP connections, runs login, then the full-feature phase
//! of each session, executing SCSI commands concurrently and writing responses with vectored
//! writes (Data-In straight from the mapped base image, no copy).
//!
//! Each connection is three cooperating parts:
//! * the reader loop, which owns the sans-IO [`Session`] and feeds it PDUs and completions;
//! * executors: reads that only slice the page cache run inline, anything that may block on
//!   disk (writes, flushes, overlay reads) runs on tokio's blocking pool;
//! * the writer task, which stamps StatSN / ExpCmdSN / MaxCmdSN at send time and batches PDUs
//!   into vectored writes. Optionally ([`ServerConfig::sendfile_min`]), Data-In bytes of an
//!   immutable file (a published base image, an image exported read-only) go with `sendfile`
//!   from that file instead, so the kernel does not copy the mapped pages into the socket;
//!   headers are then sent with `MSG_MORE` so that each joins its data in the same segments.

use crate::iscsi::login::{Login, LoginOutcome, SessionParams, SessionTable};
use crate::iscsi::negotiate::{SessionType, TargetLimits};
use crate::iscsi::session::{Action, ExecJob, OutPdu, Session, SessionConfig, Stamp, TextHandler};
use crate::iscsi::target::{SessionInfo, TargetRegistry};
use crate::scsi::{DataDir, Nexus, Outcome, TargetLus};
use crate::service::read_trace::{ReadTrace, SessionTrace};
use crate::store::Segment;
use crate::wire::frame::{self, FrameLimits, RawPdu};
use crate::wire::pdu::{AsyncMessage, BHS_LEN, Bhs, TextRequest, TextResponse};
use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
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
    let shared = Arc::new(Shared {
        registry,
        cfg,
        table: Table::default(),
        next_session_id: AtomicU64::new(1),
    });
    let mut conns = tokio::task::JoinSet::new();
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
                let shared = shared.clone();
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    if let Err(e) = connection(stream, peer, shared, stop).await {
                        debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    info!("shutting down: closing {} connection(s)", conns.len());
    let _ = stop_tx.send(true);
    let grace = shared.cfg.drain_timeout + Duration::from_secs(2);
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
    Ok(())
}

struct Shared {
    registry: Arc<dyn TargetRegistry>,
    cfg: ServerConfig,
    table: Table,
    next_session_id: AtomicU64,
}

/// Live sessions by TSIH, for TSIH assignment and session reinstatement.
#[derive(Default)]
struct Table {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    next_tsih: u16,
    sessions: HashMap<u16, TableEntry>,
}

struct TableEntry {
    initiator: String,
    isid: [u8; 6],
    target: Option<String>,
    kill: Arc<Kill>,
}

/// Asks a connection to close.
#[derive(Default)]
struct Kill {
    flag: AtomicBool,
    notify: Notify,
}

impl Kill {
    fn fire(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // One waiter per connection: notify_one keeps a permit if it is not waiting right now.
        self.notify.notify_one();
    }
    fn fired(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// The table as the login state machine sees it, for one connection.
struct TableView<'a> {
    table: &'a Table,
    kill: Arc<Kill>,
}

impl SessionTable for TableView<'_> {
    fn new_session(&self, initiator: &str, isid: [u8; 6], target: Option<&str>) -> u16 {
        let mut t = self.table.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Session reinstatement: same initiator port (name + ISID) to the same target.
        let old: Vec<u16> = t
            .sessions
            .iter()
            .filter(|(_, e)| {
                e.initiator.eq_ignore_ascii_case(initiator)
                    && e.isid == isid
                    && match (&e.target, target) {
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                        (None, None) => true,
                        _ => false,
                    }
            })
            .map(|(k, _)| *k)
            .collect();
        for tsih in old {
            if let Some(e) = t.sessions.remove(&tsih) {
                info!(
                    initiator,
                    tsih, "session reinstatement: closing the old session"
                );
                e.kill.fire();
            }
        }
        loop {
            t.next_tsih = t.next_tsih.wrapping_add(1);
            if t.next_tsih != 0 && !t.sessions.contains_key(&t.next_tsih) {
                break;
            }
        }
        let tsih = t.next_tsih;
        t.sessions.insert(
            tsih,
            TableEntry {
                initiator: initiator.to_owned(),
                isid,
                target: target.map(str::to_owned),
                kill: self.kill.clone(),
            },
        );
        tsih
    }

    fn exists(&self, tsih: u16) -> bool {
        self.table
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sessions
            .contains_key(&tsih)
    }
}

impl Table {
    /// Make `kill` the connection of session `tsih` (a login that continued an existing TSIH
    /// replaces that session's connection: ErrorRecoveryLevel 0, one connection per session).
    fn adopt(
        &self,
        tsih: u16,
        initiator: &str,
        isid: [u8; 6],
        target: Option<&str>,
        kill: &Arc<Kill>,
    ) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = t.sessions.get(&tsih)
            && !Arc::ptr_eq(&old.kill, kill)
        {
            info!(
                initiator,
                tsih, "connection reinstatement: closing the old connection"
            );
            old.kill.fire();
        }
        t.sessions.insert(
            tsih,
            TableEntry {
                initiator: initiator.to_owned(),
                isid,
                target: target.map(str::to_owned),
                kill: kill.clone(),
            },
        );
    }

    fn remove(&self, tsih: u16, kill: &Arc<Kill>) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.sessions
            .get(&tsih)
            .is_some_and(|e| Arc::ptr_eq(&e.kill, kill))
        {
            t.sessions.remove(&tsih);
        }
    }
}

/// Messages to the writer task.
enum WriterMsg {
    Pdus(Vec<OutPdu>, (u32, u32)),
    /// Full-feature phase starts: first StatSN and digests.
    Ffp {
        stat_sn: u32,
        header_digest: bool,
        data_digest: bool,
    },
    /// Everything before this is on the wire.
    Flush(tokio::sync::oneshot::Sender<()>),
}

const WRITER_QUEUE: usize = 256;
/// Most PDUs taken from the receive buffer before their responses go to the writer.
const MAX_PDUS_PER_TURN: usize = 64;
/// Most bytes gathered into one write batch.
const BATCH_BYTES: usize = 4 << 20;
/// Most iovecs in one vectored write (IOV_MAX on Linux is 1024).
const MAX_IOV: usize = 1024;

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<WriterMsg>,
    sendfile_min: Option<usize>,
) -> io::Result<()> {
    let mut stat_sn = 0u32;
    let mut hd = false;
    let mut dd = false;
    let mut out = Sender {
        sendfile_min,
        ..Sender::default()
    };
    let mut iov: Vec<Segment> = Vec::with_capacity(64);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut msg = Some(first);
        let mut batched = 0usize;
        let mut headers = BytesMut::new();
        while let Some(m) = msg.take() {
            match m {
                WriterMsg::Pdus(pdus, (exp, max)) => {
                    // One allocation for all of this message's headers.
                    headers.reserve(pdus.len() * (BHS_LEN + 4));
                    for p in pdus {
                        let mut bhs = p.bhs;
                        stamp(&mut bhs, p.stamp, &mut stat_sn, exp, max);
                        frame::encode_header(&mut headers, &bhs, &[], hd);
                        iov.push(headers.split().freeze().into());
                        let dlen = p.data_len();
                        batched += BHS_LEN + dlen;
                        if dlen > 0 {
                            let (trailer, n) = frame::data_trailer(&p.data, dd);
                            iov.extend(p.data.into_iter().filter(|d| !d.is_empty()));
                            if n > 0 {
                                iov.push(Bytes::copy_from_slice(&trailer[..n]).into());
                            }
                        }
                    }
                }
                WriterMsg::Ffp {
                    stat_sn: s,
                    header_digest,
                    data_digest,
                } => {
                    // Only sent once every login response is queued before it.
                    out.write_all(&wr, &mut iov).await?;
                    stat_sn = s;
                    hd = header_digest;
                    dd = data_digest;
                    // With DataDigest the digest covers the bytes in hand: send those.
                    out.data_digest = dd;
                }
                WriterMsg::Flush(tx) => flushes.push(tx),
            }
            if batched < BATCH_BYTES {
                msg = rx.try_recv().ok();
            }
        }
        out.write_all(&wr, &mut iov).await?;
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

fn stamp(bhs: &mut [u8; BHS_LEN], s: Stamp, stat_sn: &mut u32, exp: u32, max: u32) {
    match s {
        Stamp::None => return,
        Stamp::Advance => {
            bhs[24..28].copy_from_slice(&stat_sn.to_be_bytes());
            *stat_sn = stat_sn.wrapping_add(1);
        }
        Stamp::Current => bhs[24..28].copy_from_slice(&stat_sn.to_be_bytes()),
        Stamp::WindowOnly => {}
    }
    bhs[28..32].copy_from_slice(&exp.to_be_bytes());
    bhs[32..36].copy_from_slice(&max.to_be_bytes());
}

/// Puts batches of segments on the socket: runs of in-memory bytes with one vectored `sendmsg`
/// each, segments that name their file with `sendfile` (zero-copy: the socket takes references
/// to the file's page cache pages).
#[derive(Default)]
struct Sender {
    /// [`ServerConfig::sendfile_min`]: file segments at least this long go by `sendfile`.
    sendfile_min: Option<usize>,
    /// DataDigest is on: the digest covers the bytes in hand, so send those.
    data_digest: bool,
    /// `sendfile` failed as unsupported (a file system without splice): copy from then on.
    no_sendfile: bool,
}

impl Sender {
    /// Write every segment in `segs`, in order, then clear it.
    async fn write_all(&mut self, wr: &OwnedWriteHalf, segs: &mut Vec<Segment>) -> io::Result<()> {
        let sock: &TcpStream = wr.as_ref();
        let mut idx = 0;
        let mut off = 0;
        while idx < segs.len() {
            let min = self
                .sendfile_min
                .filter(|_| !self.no_sendfile && !self.data_digest);
            let by_file = |s: &Segment| min.is_some_and(|m| s.len() >= m) && s.file().is_some();
            let n = if let (true, Some((file, at))) = (by_file(&segs[idx]), segs[idx].file()) {
                let (at, left) = (at as usize + off, NonZeroUsize::new(segs[idx].len() - off));
                match send_when_ready(sock, |s| s.sendfile(&**file, at, left)).await {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "image file is shorter than its map",
                        ));
                    }
                    Ok(n) => n,
                    Err(e) if off == 0 && sendfile_unsupported(&e) => {
                        debug!("sendfile unsupported ({e}); copying instead");
                        self.no_sendfile = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                // This segment and the in-memory ones after it, in one call.
                let end = idx
                    + 1
                    + segs[idx + 1..]
                        .iter()
                        .take(MAX_IOV - 1)
                        .take_while(|s| !by_file(s))
                        .count();
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(end - idx);
                slices.push(IoSlice::new(&segs[idx][off..]));
                slices.extend(segs[idx + 1..end].iter().map(|b| IoSlice::new(b)));
                // MSG_MORE while more follows: a header waits for its data instead of leaving
                // in a short packet of its own.
                let more = if end < segs.len() { libc::MSG_MORE } else { 0 };
                let flags = more | libc::MSG_NOSIGNAL;
                send_when_ready(sock, |s| s.send_vectored_with_flags(&slices, flags)).await?
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed while writing",
                ));
            }
            let mut left = n;
            while left > 0 && idx < segs.len() {
                let avail = segs[idx].len() - off;
                if left >= avail {
                    left -= avail;
                    idx += 1;
                    off = 0;
                } else {
                    off += left;
                    left = 0;
                }
            }
        }
        segs.clear();
        Ok(())
    }
}

/// Run a non-blocking send on `sock`, waiting for room in the socket buffer as needed.
async fn send_when_ready(
    sock: &TcpStream,
    mut f: impl FnMut(SockRef<'_>) -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        sock.writable().await?;
        match sock.try_io(Interest::WRITABLE, || f(SockRef::from(sock))) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `sendfile` errors that mean "not with this file", not "the connection failed".
fn sendfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Read until one whole PDU is available (or the peer closes: `Ok(None)`).
async fn read_pdu(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    lim: &FrameLimits,
) -> io::Result<Option<RawPdu>> {
    loop {
        match frame::decode(buf, lim) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn initiator_port(name: &str, isid: &[u8; 6]) -> String {
    let mut s = String::with_capacity(name.len() + 20);
    s.push_str(name);
    s.push_str(",i,0x");
    for b in isid {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Detect dead peers in the kernel: keepalive probes after `idle_ping` of silence, and
/// TCP_USER_TIMEOUT for data left unacknowledged, both giving up after about `ping_timeout`.
/// A client whose IP stack is alive but no longer knows the connection (iPXE's, once Linux owns
/// the NIC) answers the first probe or ping with a reset.
fn set_liveness(stream: &TcpStream, cfg: &ServerConfig) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    let interval = Duration::from_secs(2);
    let retries = (cfg.ping_timeout.as_secs() / interval.as_secs()).clamp(1, 20) as u32;
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(cfg.idle_ping.max(Duration::from_secs(1)))
            .with_interval(interval)
            .with_retries(retries),
    )?;
    sock.set_tcp_user_timeout(Some(cfg.idle_ping + cfg.ping_timeout))
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    set_liveness(&stream, &shared.cfg)?;
    let local = stream.local_addr()?;
    let (mut rd, wr) = stream.into_split();
    let (wtx, wrx) = mpsc::channel(WRITER_QUEUE);
    let writer_task = tokio::spawn(writer(wr, wrx, shared.cfg.sendfile_min));
    let kill = Arc::new(Kill::default());
    let mut buf = BytesMut::with_capacity(64 * 1024);

    // ---- Login phase.
    let mut login = Login::new(shared.registry.clone(), shared.cfg.limits);
    let login_lim = FrameLimits {
        max_data: shared.cfg.limits.max_recv_data_segment_length.max(8192),
        header_digest: false,
        data_digest: false,
    };
    let deadline = Instant::now() + shared.cfg.login_timeout;
    let params: SessionParams = loop {
        let pdu = tokio::select! {
            r = tokio::time::timeout_at(deadline, read_pdu(&mut rd, &mut buf, &login_lim)) => match r {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    debug!(%peer, "login timed out");
                    return Ok(());
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let req = match Bhs::parse(&pdu.bhs, &pdu.ahs) {
            Ok(Bhs::LoginRequest(r)) => r,
            _ => {
                debug!(%peer, "non-login PDU before login completed; closing");
                return Ok(());
            }
        };
        let view = TableView {
            table: &shared.table,
            kill: kill.clone(),
        };
        let step = login.handle(&req, &pdu.data, &view);
        let pdus: Vec<OutPdu> = step
            .responses
            .into_iter()
            .map(|(h, d)| OutPdu::new(&Bhs::LoginResponse(h), Stamp::None, vec![d.into()]))
            .collect();
        send(&wtx, pdus, (0, 0)).await?;
        match step.outcome {
            LoginOutcome::Continue => continue,
            LoginOutcome::Done(p) => break p,
            LoginOutcome::Failed => {
                flush(&wtx).await;
                drop(wtx);
                let _ = writer_task.await;
                return Ok(());
            }
        }
    };

    // ---- Full-feature phase.
    let _ = wtx
        .send(WriterMsg::Ffp {
            stat_sn: params.stat_sn,
            header_digest: params.header_digest,
            data_digest: params.data_digest,
        })
        .await;
    let session_id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let target_name = params.target.as_ref().map(|t| t.iqn.clone());
    shared.table.adopt(
        params.tsih,
        &params.initiator_name,
        params.isid,
        target_name.as_deref(),
        &kill,
    );
    let nexus = Nexus {
        id: session_id,
        initiator_port: initiator_port(&params.initiator_name, &params.isid),
        target_port: format!(
            "{},t,0x{:04x}",
            target_name.as_deref().unwrap_or(""),
            shared.cfg.limits.target_portal_group_tag
        ),
    };
    let lus: Option<Arc<TargetLus>> = params.target.as_ref().map(|t| t.lus.clone());
    let stats = params.target.as_ref().map(|t| t.stats.clone());
    let info_kill = Arc::new(AtomicBool::new(false));
    if let Some(s) = &stats {
        s.add_session(SessionInfo {
            id: session_id,
            initiator: params.initiator_name.clone(),
            peer,
            isid: params.isid,
            tsih: params.tsih,
            kill: info_kill.clone(),
        });
    }
    info!(
        %peer,
        initiator = %params.initiator_name,
        target = target_name.as_deref().unwrap_or("(discovery)"),
        tsih = params.tsih,
        "session started"
    );
    let cfg = SessionConfig {
        max_xmit_dsl: params.max_xmit_dsl,
        max_recv_dsl: params.max_recv_dsl,
        max_burst: params.max_burst_length,
        first_burst: params.first_burst_length,
        initial_r2t: params.initial_r2t,
        immediate_data: params.immediate_data,
        max_outstanding_r2t: params.max_outstanding_r2t,
        cid: params.cid,
        default_time2wait: params.default_time2wait,
        default_time2retain: params.default_time2retain,
    };
    let text: Box<dyn TextHandler> = Box::new(Text {
        registry: shared.registry.clone(),
        initiator: params.initiator_name.clone(),
        discovery: params.session_type == SessionType::Discovery,
        portal: format!("{},{}", local, shared.cfg.limits.target_portal_group_tag),
        max_xmit_dsl: params.max_xmit_dsl,
        pending: None,
    });
    let mut session = Session::new(cfg, lus.clone(), nexus.clone(), params.exp_cmd_sn, text);
    let ffp_lim = FrameLimits {
        max_data: params.max_recv_dsl,
        header_digest: params.header_digest,
        data_digest: params.data_digest,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u32, Outcome, u64)>();
    let mut executing = 0usize;
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let kick = stats.clone();
    let mut out: Vec<OutPdu> = Vec::new();
    let mut inline_done: Vec<(u32, Outcome)> = Vec::new();
    let idle = tokio::time::sleep_until(last_heard + shared.cfg.idle_ping);
    tokio::pin!(idle);
    let mut tracer = match (&shared.cfg.read_trace, &target_name) {
        (Some(t), Some(iqn)) => Some(SessionTrace::new(
            t,
            session_id,
            iqn,
            params.exp_cmd_sn,
            params.stat_sn,
        )),
        _ => None,
    };
    let result: io::Result<&'static str> = async {
        loop {
            if kill.fired() {
                return Ok("session reinstated by a new login");
            }
            if info_kill.load(Ordering::SeqCst) {
                return Ok("closed by the administrator");
            }
            let mut actions = tokio::select! {
                r = read_pdu(&mut rd, &mut buf, &ffp_lim) => match r? {
                    Some(pdu) => {
                        last_heard = Instant::now();
                        if pinged {
                            pinged = false;
                            idle.as_mut().reset(last_heard + shared.cfg.idle_ping);
                        }
                        if let Some(t) = tracer.as_mut() {
                            t.pdu(&pdu);
                        }
                        session.handle(pdu)
                    }
                    None => return Ok("initiator closed the connection"),
                },
                Some((itt, outcome, bytes)) = done_rx.recv() => {
                    executing -= 1;
                    count(&stats, &outcome, bytes);
                    session.complete(itt, outcome)
                }
                _ = &mut idle => {
                    // The timer is re-armed lazily: traffic since it was set moves it on.
                    let due = last_heard
                        + if pinged {
                            shared.cfg.ping_timeout
                        } else {
                            shared.cfg.idle_ping
                        };
                    if due > Instant::now() {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    if pinged {
                        // Unanswered, but TCP still acknowledges (else the kernel would have
                        // failed the connection): the initiator's daemon is busy or
                        // restarting. Keep the session; ask again after another idle spell.
                        debug!(%peer, "no answer to NOP-In ping; the connection stays while TCP is alive");
                        pinged = false;
                        last_heard = Instant::now();
                        idle.as_mut().reset(last_heard + shared.cfg.idle_ping);
                        continue;
                    }
                    pinged = true;
                    idle.as_mut().reset(last_heard + shared.cfg.ping_timeout);
                    vec![Action::Send(vec![session.ping()])]
                }
                _ = kill.notify.notified() => return Ok("session reinstated by a new login"),
                _ = wait_kick(&kick) => return Ok("closed by the administrator"),
                _ = stop.changed() => return Ok("server shutting down"),
            };
            // Work through everything that is ready without waiting: completions of reads run
            // inline and further PDUs already buffered. Their responses go to the writer as
            // one message, stamped with the window as it stands after all of them.
            let mut handled = 1usize;
            loop {
                if kill.fired() {
                    return Ok("session reinstated by a new login");
                }
                if info_kill.load(Ordering::SeqCst) {
                    return Ok("closed by the administrator");
                }
                for a in actions.drain(..) {
                    match a {
                        Action::Send(pdus) => out.extend(pdus),
                        Action::Execute(job) => {
                            executing += 1;
                            if let Some(done) = execute(job, &lus, &nexus, &done_tx) {
                                executing -= 1;
                                count(&stats, &done.1, 0);
                                inline_done.push(done);
                            }
                        }
                        Action::Close(why) => {
                            send(&wtx, std::mem::take(&mut out), session.window()).await?;
                            flush(&wtx).await;
                            return Ok(why);
                        }
                    }
                }
                if let Some((itt, outcome)) = inline_done.pop() {
                    actions = session.complete(itt, outcome);
                    continue;
                }
                if handled < MAX_PDUS_PER_TURN {
                    match frame::decode(&mut buf, &ffp_lim) {
                        Ok(Some(pdu)) => {
                            handled += 1;
                            last_heard = Instant::now();
                            if pinged {
                                pinged = false;
                                idle.as_mut().reset(last_heard + shared.cfg.idle_ping);
                            }
                            if let Some(t) = tracer.as_mut() {
                                t.pdu(&pdu);
                            }
                            actions = session.handle(pdu);
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                    }
                }
                break;
            }
            send(&wtx, std::mem::take(&mut out), session.window()).await?;
        }
    }
    .await;

    // ---- Teardown: let in-flight commands finish (writes must not be cut off), tell the
    // initiator when the server is going away, release SCSI state.
    let why = match &result {
        Ok(w) => *w,
        Err(_) => "connection error",
    };
    let drain = tokio::time::timeout(shared.cfg.drain_timeout, async {
        while executing > 0 {
            match done_rx.recv().await {
                Some((itt, outcome, bytes)) => {
                    executing -= 1;
                    count(&stats, &outcome, bytes);
                    for a in session.complete(itt, outcome) {
                        if let Action::Send(p) = a {
                            let _ = send(&wtx, p, session.window()).await;
                        }
                    }
                }
                None => break,
            }
        }
    });
    let _ = drain.await;
    if why == "server shutting down" {
        let msg = Bhs::AsyncMessage(AsyncMessage {
            lun: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            event: 3, // the target will drop all connections of this session
            vcode: 0,
            param1: 0,
            param2: params.default_time2wait.max(2),
            param3: 0,
        });
        let _ = send(
            &wtx,
            vec![OutPdu::new(&msg, Stamp::Advance, Vec::new())],
            session.window(),
        )
        .await;
    }
    flush(&wtx).await;
    drop(wtx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    if let Some(l) = &lus {
        l.nexus_gone(&nexus);
    }
    if let Some(s) = &stats {
        s.remove_session(session_id);
    }
    shared.table.remove(params.tsih, &kill);
    info!(%peer, initiator = %params.initiator_name, "session ended: {why}");
    result.map(|_| ())
}

async fn wait_kick(stats: &Option<Arc<crate::iscsi::target::TargetStats>>) {
    match stats {
        Some(s) => s.kick.notified().await,
        None => std::future::pending().await,
    }
}

fn count(stats: &Option<Arc<crate::iscsi::target::TargetStats>>, o: &Outcome, written: u64) {
    if let Some(s) = stats {
        s.commands.fetch_add(1, Ordering::Relaxed);
        let read: u64 = o.data.iter().map(|d| d.len() as u64).sum();
        s.bytes_read.fetch_add(read, Ordering::Relaxed);
        if o.status == crate::scsi::status::GOOD {
            s.bytes_written.fetch_add(written, Ordering::Relaxed);
        }
    }
}

async fn send(
    wtx: &mpsc::Sender<WriterMsg>,
    pdus: Vec<OutPdu>,
    window: (u32, u32),
) -> io::Result<()> {
    if pdus.is_empty() {
        return Ok(());
    }
    wtx.send(WriterMsg::Pdus(pdus, window))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "writer gone"))
}

async fn flush(wtx: &mpsc::Sender<WriterMsg>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if wtx.send(WriterMsg::Flush(tx)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
    }
}

/// Plain reads (READ 6/10/12/16) through a device that hands out page-cache slices do not
/// block; they run inline. Everything else goes to the blocking pool.
fn runs_inline(job: &ExecJob) -> bool {
    job.dir == DataDir::Read && matches!(job.cdb.first(), Some(0x08 | 0x28 | 0xa8 | 0x88))
}

/// Run `job`: plain reads inline, returning their outcome; anything else on the blocking
/// pool, reporting through `done` (with the bytes it wrote).
fn execute(
    job: ExecJob,
    lus: &Option<Arc<TargetLus>>,
    nexus: &Nexus,
    done: &mpsc::UnboundedSender<(u32, Outcome, u64)>,
) -> Option<(u32, Outcome)> {
    let lus = lus.as_ref()?;
    if runs_inline(&job) {
        return Some((
            job.itt,
            lus.execute(nexus, job.lun, &job.cdb, &job.data_out),
        ));
    }
    let written = job.data_out.len() as u64;
    let (lus, nexus, done) = (lus.clone(), nexus.clone(), done.clone());
    tokio::task::spawn_blocking(move || {
        let o = lus.execute(&nexus, job.lun, &job.cdb, &job.data_out);
        let _ = done.send((job.itt, o, written));
    });
    None
}

/// Text requests in the full-feature phase: SendTargets (discovery sessions, and normal ones),
/// NotUnderstood for anything else; long answers continue over several PDUs.
struct Text {
    registry: Arc<dyn TargetRegistry>,
    initiator: String,
    discovery: bool,
    portal: String,
    max_xmit_dsl: u32,
    /// Rest of a long response, by (ITT, TTT).
    pending: Option<(u32, u32, Vec<u8>)>,
}

impl TextHandler for Text {
    fn text(&mut self, req: &TextRequest, data: &[u8]) -> Vec<(TextResponse, Vec<u8>)> {
        let mut body = match self.pending.take() {
            // Continuation of a long response: the initiator echoes our TTT with no data.
            Some((itt, ttt, rest)) if req.itt == itt && req.ttt == ttt => rest,
            _ => {
                let mut body = Vec::new();
                let pairs = crate::wire::text::parse(data).unwrap_or_default();
                for p in pairs {
                    if p.key == "SendTargets" {
                        body.extend(crate::iscsi::discovery::send_targets(
                            self.registry.as_ref(),
                            &self.initiator,
                            &p.value,
                            &self.portal,
                        ));
                    } else {
                        crate::wire::text::push(&mut body, &p.key, "NotUnderstood");
                    }
                }
                let _ = self.discovery;
                body
            }
        };
        let max = self.max_xmit_dsl.max(512) as usize;
        let mut resp = TextResponse {
            final_: true,
            cont: false,
            lun: req.lun,
            itt: req.itt,
            ttt: crate::wire::pdu::RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        };
        if body.len() > max {
            let rest = body.split_off(max);
            let ttt = 0x7000_0000 | (req.itt & 0x0fff_ffff);
            resp.final_ = false;
            resp.cont = true;
            resp.ttt = ttt;
            self.pending = Some((req.itt, ttt, rest));
        }
        vec![(resp, body)]
    }
}
