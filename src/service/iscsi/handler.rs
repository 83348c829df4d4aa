//! One iSCSI connection: login, the full-feature phase of its session, teardown.
//!
//! [`Handler`] owns the socket side of a connection (reader, writer, addresses) and runs the
//! login; [`SessionHandler`] adds the session once the login succeeds and runs it until a
//! [`CloseReason`], then tears it down. Every protocol decision is made by the sans-IO
//! [`Login`] and [`Session`]; this file moves bytes, runs SCSI commands and keeps time.

use super::table::{Kill, ProbeReply, TableView};
use super::text::Text;
use super::writer::Writer;
use super::{ServerConfig, Shared};
use crate::iscsi::login::{Login, LoginOutcome, Probed, SessionParams};
use crate::iscsi::session::{Action, ExecJob, OutPdu, Session, SessionConfig, SessionEnd, Stamp};
use crate::iscsi::target::{SessionInfo, TargetStats};
use crate::scsi::{AsyncIo, DeviceOp, Nexus, Outcome, Start, TargetLus};
use crate::service::metrics::{self, Op};
use crate::service::read_trace::SessionTrace;
use crate::wire::frame::{self, FrameLimits, RawPdu};
use crate::wire::pdu::{AsyncMessage, Bhs};
use bytes::BytesMut;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

/// Most PDUs taken from the receive buffer before their responses go to the writer.
const MAX_PDUS_PER_TURN: usize = 64;
/// Room kept free in the receive buffer before reading (and how much to grow it by).
const READ_ROOM: usize = 16 * 1024;
const READ_GROW: usize = 64 * 1024;

/// What the service knows about the two ends of a connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    /// The initiator's address and port.
    pub addr: SocketAddr,
    /// The local address it connected to (the portal it reached).
    pub local: SocketAddr,
}

/// Why a connection closed.
#[derive(Debug)]
pub(super) enum CloseReason {
    /// The session ended it (logout, target cold reset).
    Session(SessionEnd),
    /// The initiator closed the TCP connection.
    PeerClosed,
    /// A new login reinstated this session or replaced this connection.
    Reinstated,
    /// `isboot` was asked to drop the target's sessions.
    ClosedByAdmin,
    /// The server is shutting down: the initiator gets an Async Message first.
    ShuttingDown,
    /// A discovery session sent nothing for [`ServerConfig::discovery_idle`].
    DiscoveryIdle,
    /// The session held write buffers and sent nothing for [`ServerConfig::stalled_write`].
    StalledWrite,
    /// A framing or I/O error.
    Failed(io::Error),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Session(end) => end.fmt(f),
            CloseReason::PeerClosed => f.write_str("initiator closed the connection"),
            CloseReason::Reinstated => f.write_str("session reinstated by a new login"),
            CloseReason::ClosedByAdmin => f.write_str("closed by the administrator"),
            CloseReason::ShuttingDown => f.write_str("server shutting down"),
            CloseReason::DiscoveryIdle => f.write_str("discovery session idle"),
            CloseReason::StalledWrite => {
                f.write_str("sent no data for its write commands for too long (stalled_write_secs)")
            }
            CloseReason::Failed(e) => write!(f, "connection error: {e}"),
        }
    }
}

/// How a login phase ended.
enum LoginEnd {
    /// Full-feature phase reached.
    Session(Box<SessionParams>),
    /// The login was refused: its responses are queued, the connection closes after them.
    Refused,
    /// Nothing more to say: the initiator went away, timed out, spoke out of turn, or the
    /// server is stopping.
    Abandoned,
}

/// The reading side of a connection: the socket and what was read but not yet decoded.
struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// Read until one whole PDU is available (or the peer closes: `Ok(None)`).
    async fn pdu(&mut self, lim: &FrameLimits) -> io::Result<Option<RawPdu>> {
        loop {
            if let Some(p) = self.buffered(lim)? {
                return Ok(Some(p));
            }
            if self.buf.capacity() - self.buf.len() < READ_ROOM {
                self.buf.reserve(READ_GROW);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A PDU already in the buffer, without reading.
    fn buffered(&mut self, lim: &FrameLimits) -> io::Result<Option<RawPdu>> {
        frame::decode(&mut self.buf, lim).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// A connection before and during login.
pub(super) struct Handler {
    shared: Arc<Shared>,
    peer: Peer,
    reader: Reader,
    writer: Writer,
    /// Fired when a new login takes this connection's session over.
    kill: Arc<Kill>,
    /// Logins that would share this session's disk, asking whether its initiator is there.
    probes: mpsc::Receiver<ProbeReply>,
    stop: watch::Receiver<bool>,
}

impl Handler {
    /// Serve one accepted connection to its end.
    pub(super) async fn serve(
        stream: TcpStream,
        addr: SocketAddr,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let mut h = Handler::new(stream, addr, shared, stop)?;
        match h.login().await? {
            LoginEnd::Session(params) => {
                let mut s = SessionHandler::start(h, *params).await;
                let why = s.run().await;
                s.teardown(why).await
            }
            LoginEnd::Refused => {
                h.writer.close().await;
                Ok(())
            }
            LoginEnd::Abandoned => Ok(()),
        }
    }

    fn new(
        stream: TcpStream,
        addr: SocketAddr,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Handler> {
        stream.set_nodelay(true)?;
        set_liveness(&stream, &shared.cfg)?;
        let peer = Peer {
            addr,
            local: stream.local_addr()?,
        };
        let (rd, wr) = stream.into_split();
        let writer = Writer::spawn(wr, shared.cfg.sendfile_min);
        let (kill, probes) = Kill::new();
        Ok(Handler {
            shared,
            peer,
            reader: Reader {
                rd,
                buf: BytesMut::with_capacity(READ_GROW),
            },
            writer,
            kill,
            probes,
            stop,
        })
    }

    /// Run the login phase: Login Requests in, Login Responses out, within the login timeout.
    async fn login(&mut self) -> io::Result<LoginEnd> {
        let limits = self.shared.cfg.limits;
        let mut login =
            Login::new(self.shared.registry.clone(), limits).from_peer(self.peer.addr.ip());
        let lim = FrameLimits {
            max_data: limits.max_recv_data_segment_length.max(8192),
            header_digest: false,
            data_digest: false,
        };
        let peer = self.peer.addr;
        let deadline = Instant::now() + self.shared.cfg.login_timeout;
        loop {
            let pdu = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.reader.pdu(&lim)) => match r {
                    Ok(Ok(Some(p))) => p,
                    Ok(Ok(None)) => return Ok(LoginEnd::Abandoned),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        debug!(%peer, "login timed out");
                        return Ok(LoginEnd::Abandoned);
                    }
                },
                _ = self.stop.changed() => return Ok(LoginEnd::Abandoned),
            };
            let Ok(Bhs::LoginRequest(req)) = Bhs::parse(&pdu.bhs, &pdu.ahs) else {
                debug!(%peer, "non-login PDU before login completed; closing");
                return Ok(LoginEnd::Abandoned);
            };
            let view = TableView {
                table: &self.shared.table,
                kill: self.kill.clone(),
            };
            let mut step = login.handle(&req, &pdu.data, &view);
            if let LoginOutcome::Probe(tsihs) = &step.outcome {
                let probed = tokio::select! {
                    p = probe_sessions(&self.shared, tsihs, peer) => p,
                    _ = self.stop.changed() => return Ok(LoginEnd::Abandoned),
                };
                step = login.resume(probed, &view);
            }
            let status = step
                .responses
                .last()
                .map(|(h, _)| (h.status_class, h.status_detail));
            let pdus: Vec<OutPdu> = step
                .responses
                .into_iter()
                .map(|(h, d)| OutPdu::new(&Bhs::LoginResponse(h), Stamp::None, vec![d.into()]))
                .collect();
            self.writer.send(pdus, (0, 0)).await?;
            match step.outcome {
                LoginOutcome::Continue => {}
                // `resume` never asks again.
                LoginOutcome::Probe(_) => return Ok(LoginEnd::Abandoned),
                LoginOutcome::Done(mut p) => {
                    // A reset-mode client's new boot may start its disk afresh here, before
                    // the session has read anything.
                    let renewed = p.target.as_ref().and_then(|t| {
                        self.shared
                            .registry
                            .login_accepted(&t.iqn, p.isid)
                            .then(|| self.shared.registry.lookup(&t.iqn))
                            .flatten()
                    });
                    if renewed.is_some() {
                        p.target = renewed;
                    }
                    metrics::get()
                        .login_accepted(p.target.as_ref().map(|t| t.iqn.as_str()), p.isid);
                    return Ok(LoginEnd::Session(Box::new(p)));
                }
                LoginOutcome::Failed => {
                    let (class, detail) = status.unwrap_or((2, 0));
                    let reason = login
                        .refusal()
                        .map_or_else(|| metrics::login_reason(class, detail), |r| r.as_str());
                    metrics::get().login_refused(reason);
                    return Ok(LoginEnd::Refused);
                }
            }
        }
    }
}

/// Ask the initiators of the live sessions `tsihs` whether they are still there, for a login
/// from `newcomer` that would share their disk ([`LoginOutcome::Probe`]): each connection sends
/// its initiator a NOP-In ping. One answer within [`ServerConfig::probe_timeout`] means the
/// disk is in use. A session that ends meanwhile — its peer closed it, or the IP stack of a
/// rebooted client, which no longer knows the connection, reset it — is gone; one that stays
/// silent is ended here, so the newcomer replaces it (as liveness would have, later).
async fn probe_sessions(shared: &Shared, tsihs: &[u16], newcomer: SocketAddr) -> Probed {
    let deadline = Instant::now() + shared.cfg.probe_timeout;
    let mut asked = Vec::new();
    for (tsih, kill) in shared.table.connections(tsihs) {
        let rx = tokio::time::timeout_at(deadline, kill.probe()).await.ok();
        asked.push((tsih, kill, rx));
    }
    let mut silent = Vec::new();
    let mut answered = false;
    for (tsih, kill, rx) in asked {
        // No receiver: the request found no room before the deadline.
        let Some(rx) = rx else {
            silent.push((tsih, kill));
            continue;
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => answered = true,
            Ok(Err(_)) => {} // ended without answering
            Err(_) => silent.push((tsih, kill)),
        }
    }
    let m = metrics::get();
    if answered {
        m.login_probe("answered");
        return Probed::Answered;
    }
    if silent.is_empty() {
        m.login_probe("gone");
        info!(%newcomer, ?tsihs, "probed sessions ended before answering (the client restarted); the new login replaces them");
    } else {
        m.login_probe("silent");
        for (tsih, kill) in silent {
            info!(%newcomer, tsih, "session did not answer a probe; ended for a new login from its client");
            kill.fire();
        }
    }
    Probed::Gone
}

/// A command finished on the blocking pool or the device's asynchronous path: ITT, outcome,
/// bytes it wrote.
type Completion = (u32, Outcome, u64);

/// Runs a session's SCSI commands: those planned as non-blocking right away on the
/// connection's task; the data-transfer commands of a disk with an asynchronous path (Ceph
/// RBD) on that path, in a task that sleeps until the device's completion wakes it; the others
/// on tokio's blocking pool.
struct Executor {
    lus: Option<Arc<TargetLus>>,
    nexus: Nexus,
    stats: Option<Arc<TargetStats>>,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    /// Commands on the blocking pool or the asynchronous path.
    running: usize,
}

impl Executor {
    /// Start `job`. A non-blocking one runs now and its (ITT, outcome) is returned; the others
    /// report through [`Executor::next`].
    fn start(&mut self, job: ExecJob) -> Option<(u32, Outcome)> {
        let lus = self.lus.as_ref()?;
        let op = Op::of_cdb(&job.cdb);
        let t0 = std::time::Instant::now();
        if job.nonblocking {
            let outcome = lus.execute(&self.nexus, job.lun, &job.cdb, &job.data_out);
            if let Some(op) = op {
                metrics::get().command(op, t0.elapsed());
            }
            count(&self.stats, &outcome, 0);
            return Some((job.itt, outcome));
        }
        let written = job.data_out.len() as u64;
        match lus.start_async(&self.nexus, job.lun, &job.cdb, &job.data_out) {
            Start::Done(outcome) => {
                if let Some(op) = op {
                    metrics::get().command(op, t0.elapsed());
                }
                count(&self.stats, &outcome, written);
                return Some((job.itt, outcome));
            }
            Start::Io(io) => {
                self.running += 1;
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let o = run_async(io).await;
                    if let Some(op) = op {
                        metrics::get().command(op, t0.elapsed());
                    }
                    let _ = done.send((job.itt, o, written));
                });
                return None;
            }
            Start::Blocking => {}
        }
        self.running += 1;
        let (lus, nexus, done) = (lus.clone(), self.nexus.clone(), self.done_tx.clone());
        tokio::task::spawn_blocking(move || {
            let o = lus.execute(&nexus, job.lun, &job.cdb, &job.data_out);
            if let Some(op) = op {
                metrics::get().command(op, t0.elapsed());
            }
            let _ = done.send((job.itt, o, written));
        });
        None
    }

    /// Account for a completion from the blocking pool or the asynchronous path.
    fn finished(&mut self, (itt, outcome, written): Completion) -> (u32, Outcome) {
        self.running -= 1;
        count(&self.stats, &outcome, written);
        (itt, outcome)
    }
}

/// Run an admitted command's device operation on the device's asynchronous path (every range of
/// an UNMAP started at once) and turn the result into its outcome.
async fn run_async(io: AsyncIo) -> Outcome {
    let dev = io.device().clone();
    let r = match io.op() {
        DeviceOp::Read { offset, len } => dev.read_at(*offset, *len).await,
        DeviceOp::Write {
            offset,
            data,
            durable,
        } => dev
            .write_at(*offset, data.clone(), *durable)
            .await
            .map(|()| Vec::new()),
        DeviceOp::Flush => dev.flush_all().await.map(|()| Vec::new()),
        DeviceOp::Zero { ranges } => {
            let started: Vec<_> = ranges.iter().map(|&(o, n)| dev.zero_at(o, n)).collect();
            let mut r = Ok(());
            for f in started {
                let one = f.await;
                if r.is_ok() {
                    r = one;
                }
            }
            r.map(|()| Vec::new())
        }
        DeviceOp::WriteSame {
            offset,
            len,
            pattern,
        } => dev
            .write_same_at(*offset, *len, pattern.clone())
            .await
            .map(|()| Vec::new()),
    };
    io.finish(r)
}

fn count(stats: &Option<Arc<TargetStats>>, o: &Outcome, written: u64) {
    if let Some(s) = stats {
        s.commands.fetch_add(1, Ordering::Relaxed);
        let read: u64 = o.data.iter().map(|d| d.len() as u64).sum();
        s.bytes_read.fetch_add(read, Ordering::Relaxed);
        if o.status == crate::scsi::status::GOOD {
            s.bytes_written.fetch_add(written, Ordering::Relaxed);
        }
    }
}

/// Pings an initiator that went quiet (NOP-In), without ever dropping it for not answering:
/// TCP keepalive and TCP_USER_TIMEOUT ([`set_liveness`]) find dead peers.
pub(super) struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    last_heard: Instant,
    pinged: bool,
    idle_ping: Duration,
    ping_timeout: Duration,
}

/// What to do when the [`IdleTimer`] fires.
enum IdleStep {
    /// Traffic since it was set moved it on: nothing yet.
    Wait,
    /// Send a NOP-In ping.
    Ping,
    /// The ping went unanswered but TCP is alive: ask again after another idle spell.
    Unanswered,
}

impl IdleTimer {
    fn new(idle_ping: Duration, ping_timeout: Duration) -> IdleTimer {
        let last_heard = Instant::now();
        IdleTimer {
            sleep: Box::pin(tokio::time::sleep_until(last_heard + idle_ping)),
            last_heard,
            pinged: false,
            idle_ping,
            ping_timeout,
        }
    }

    /// The initiator sent something.
    fn heard(&mut self) {
        self.last_heard = Instant::now();
        if self.pinged {
            self.pinged = false;
            self.sleep.as_mut().reset(self.last_heard + self.idle_ping);
        }
    }

    /// Completes when the timer is due; then call [`IdleTimer::fired`].
    async fn due(&mut self) {
        self.sleep.as_mut().await
    }

    /// The timer fired. It is re-armed lazily: traffic since it was set moves it on.
    fn fired(&mut self) -> IdleStep {
        let wait = if self.pinged {
            self.ping_timeout
        } else {
            self.idle_ping
        };
        let due = self.last_heard + wait;
        if due > Instant::now() {
            self.sleep.as_mut().reset(due);
            return IdleStep::Wait;
        }
        if self.pinged {
            self.pinged = false;
            self.last_heard = Instant::now();
            self.sleep.as_mut().reset(self.last_heard + self.idle_ping);
            return IdleStep::Unanswered;
        }
        self.pinged = true;
        self.sleep
            .as_mut()
            .reset(self.last_heard + self.ping_timeout);
        IdleStep::Ping
    }
}

/// One thing that happened to a session in full-feature phase.
enum Event {
    Pdu(RawPdu),
    /// Write budget came back for commands that waited for it.
    Budget(Vec<Action>),
    /// Some write budget was given back: try again.
    BudgetFreed,
    Done(Completion),
    Idle,
    /// A login from this session's client asks whether its initiator is still there.
    Probe(ProbeReply),
    Close(CloseReason),
}

/// A connection in full-feature phase, with its session.
pub(super) struct SessionHandler {
    conn: Handler,
    params: SessionParams,
    session: Session,
    session_id: u64,
    /// Frame limits for the initiator's PDUs.
    recv_limits: FrameLimits,
    exec: Executor,
    /// Set by `TargetStats::drop_sessions`.
    admin_kill: Arc<AtomicBool>,
    idle: IdleTimer,
    tracer: Option<SessionTrace>,
    /// Responses gathered in one turn, sent to the writer as one message.
    out: Vec<OutPdu>,
    /// Outcomes of commands run inline, not yet handed to the session.
    inline_done: Vec<(u32, Outcome)>,
    /// A discovery session's quiet limit: closed when this fires (moved on by every PDU).
    discovery_idle: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Probes waiting for the initiator to echo their ping's TTT.
    probes: Vec<(u32, ProbeReply)>,
    /// Closes a session that holds write buffers and sends nothing (moved on by every PDU
    /// and every grant of write budget).
    stalled_write: (Duration, Pin<Box<Sleep>>),
}

impl SessionHandler {
    /// The login succeeded: register the session and set up its full-feature phase.
    async fn start(conn: Handler, params: SessionParams) -> SessionHandler {
        let shared = conn.shared.clone();
        let cfg = &shared.cfg;
        conn.writer
            .start_ffp(params.stat_sn, params.header_digest, params.data_digest)
            .await;
        let session_id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
        let target_name = params.target.as_ref().map(|t| t.iqn.clone());
        shared.table.adopt(
            params.tsih,
            &params.initiator_name,
            params.isid,
            target_name.as_deref(),
            &conn.kill,
        );
        let tpgt = cfg.limits.target_portal_group_tag;
        let nexus = Nexus {
            id: session_id,
            initiator_port: initiator_port(&params.initiator_name, &params.isid),
            target_port: format!("{},t,0x{tpgt:04x}", target_name.as_deref().unwrap_or("")),
        };
        let lus = params.target.as_ref().map(|t| t.lus.clone());
        let stats = params.target.as_ref().map(|t| t.stats.clone());
        let admin_kill = Arc::new(AtomicBool::new(false));
        if let Some(s) = &stats {
            s.add_session(SessionInfo {
                id: session_id,
                initiator: params.initiator_name.clone(),
                peer: conn.peer.addr,
                isid: params.isid,
                tsih: params.tsih,
                kill: admin_kill.clone(),
            });
        }
        info!(
            peer = %conn.peer.addr,
            initiator = %params.initiator_name,
            target = target_name.as_deref().unwrap_or("(discovery)"),
            tsih = params.tsih,
            "session started"
        );
        let text = Box::new(Text::new(
            shared.registry.clone(),
            conn.peer.addr.ip(),
            params.initiator_name.clone(),
            format!("{},{tpgt}", conn.peer.local),
            params.max_xmit_dsl,
        ));
        let mut scfg: SessionConfig = (&params).into();
        scfg.max_tasks = cfg.max_tasks_per_session;
        let mut session = Session::new(scfg, lus.clone(), nexus.clone(), params.exp_cmd_sn, text);
        session.set_write_budget(Box::new(cfg.write_budget.with_share(conn.peer.addr.ip())));
        let tracer = match (&cfg.read_trace, &target_name) {
            (Some(t), Some(iqn)) => Some(SessionTrace::new(
                t.clone(),
                session_id,
                iqn,
                params.exp_cmd_sn,
                params.stat_sn,
            )),
            _ => None,
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        SessionHandler {
            recv_limits: params.recv_limits(),
            exec: Executor {
                lus,
                nexus,
                stats,
                done_tx,
                done_rx,
                running: 0,
            },
            idle: IdleTimer::new(cfg.idle_ping, cfg.ping_timeout),
            params,
            session,
            session_id,
            admin_kill,
            tracer,
            out: Vec::new(),
            inline_done: Vec::new(),
            stalled_write: (
                cfg.stalled_write,
                Box::pin(tokio::time::sleep(cfg.stalled_write)),
            ),
            discovery_idle: target_name.is_none().then(|| {
                let d = cfg.discovery_idle;
                (d, Box::pin(tokio::time::sleep(d)))
            }),
            probes: Vec::new(),
            conn,
        }
    }

    /// Serve the session until something closes it.
    async fn run(&mut self) -> CloseReason {
        match self.serve_events().await {
            Ok(why) => why,
            Err(e) => CloseReason::Failed(e),
        }
    }

    async fn serve_events(&mut self) -> io::Result<CloseReason> {
        loop {
            let actions = match self.next_event().await? {
                Event::Pdu(pdu) => self.on_pdu(pdu),
                Event::Budget(actions) => {
                    self.moved_on();
                    actions
                }
                Event::BudgetFreed => {
                    self.moved_on();
                    self.session.retry_budget()
                }
                Event::Done(c) => {
                    let (itt, outcome) = self.exec.finished(c);
                    self.session.complete(itt, outcome)
                }
                Event::Idle => match self.idle.fired() {
                    IdleStep::Wait => continue,
                    IdleStep::Unanswered => {
                        // Unanswered, but TCP still acknowledges (else the kernel would have
                        // failed the connection): the initiator's daemon is busy or restarting.
                        debug!(peer = %self.conn.peer.addr, "no answer to NOP-In ping; the connection stays while TCP is alive");
                        continue;
                    }
                    IdleStep::Ping => vec![Action::Send(vec![self.session.ping().1])],
                },
                Event::Probe(reply) => {
                    // Probers that gave up no longer wait for their answer.
                    self.probes.retain(|(_, r)| !r.is_closed());
                    let (ttt, ping) = self.session.ping();
                    self.probes.push((ttt, reply));
                    vec![Action::Send(vec![ping])]
                }
                Event::Close(why) => return Ok(why),
            };
            if let Some(why) = self.work_through(actions).await? {
                return Ok(why);
            }
            self.send_out().await?;
        }
    }

    /// A request to close from outside the session (a new login, the administrator).
    fn close_requested(&self) -> Option<CloseReason> {
        if self.conn.kill.fired() {
            Some(CloseReason::Reinstated)
        } else if self.admin_kill.load(Ordering::SeqCst) {
            Some(CloseReason::ClosedByAdmin)
        } else {
            None
        }
    }

    /// Wait for the next PDU, completion, idle tick or close request.
    async fn next_event(&mut self) -> io::Result<Event> {
        if let Some(why) = self.close_requested() {
            return Ok(Event::Close(why));
        }
        let stats = &self.exec.stats;
        // Commands wait for write budget: nothing more is read until some comes back.
        let budget = &self.conn.shared.cfg.write_budget;
        let freed = budget.freed();
        let blocked = self.session.budget_blocked();
        if blocked {
            let actions = self.session.retry_budget();
            if !actions.is_empty() {
                return Ok(Event::Budget(actions));
            }
            budget.note_wait();
        }
        Ok(tokio::select! {
            _ = freed, if blocked => Event::BudgetFreed,
            r = self.conn.reader.pdu(&self.recv_limits), if !blocked => match r? {
                Some(pdu) => Event::Pdu(pdu),
                None => Event::Close(CloseReason::PeerClosed),
            },
            Some(c) = self.exec.done_rx.recv() => Event::Done(c),
            _ = self.idle.due() => Event::Idle,
            Some(reply) = self.conn.probes.recv() => Event::Probe(reply),
            _ = quiet_for(&mut self.discovery_idle) => Event::Close(CloseReason::DiscoveryIdle),
            _ = self.stalled_write.1.as_mut(), if self.session.holds_write_buffers() => {
                Event::Close(CloseReason::StalledWrite)
            }
            _ = self.conn.kill.notify.notified() => Event::Close(CloseReason::Reinstated),
            _ = wait_kick(stats) => Event::Close(CloseReason::ClosedByAdmin),
            _ = self.conn.stop.changed() => Event::Close(CloseReason::ShuttingDown),
        })
    }

    /// The initiator sent something, or write budget was granted: a stall starts over.
    fn moved_on(&mut self) {
        let (d, sleep) = &mut self.stalled_write;
        sleep.as_mut().reset(Instant::now() + *d);
    }

    fn on_pdu(&mut self, pdu: RawPdu) -> Vec<Action> {
        self.idle.heard();
        self.moved_on();
        if let Some((d, sleep)) = self.discovery_idle.as_mut() {
            sleep.as_mut().reset(Instant::now() + *d);
        }
        if let Some(t) = self.tracer.as_mut() {
            t.pdu(&pdu);
        }
        let actions = self.session.handle(pdu);
        if let Some(ttt) = self.session.take_answered_ping()
            && let Some(i) = self.probes.iter().position(|(t, _)| *t == ttt)
        {
            let (_, reply) = self.probes.swap_remove(i);
            let _ = reply.send(());
        }
        actions
    }

    /// Carry out `actions`, then everything that is ready without waiting: outcomes of
    /// commands run inline and further PDUs already buffered (up to [`MAX_PDUS_PER_TURN`]).
    /// Their responses collect in `out`, to go to the writer as one message stamped with the
    /// window as it stands after all of them. `Some` when the session closes.
    async fn work_through(&mut self, mut actions: Vec<Action>) -> io::Result<Option<CloseReason>> {
        let mut handled = 1usize;
        loop {
            if let Some(why) = self.close_requested() {
                return Ok(Some(why));
            }
            for a in actions.drain(..) {
                match a {
                    Action::Send(pdus) => self.out.extend(pdus),
                    Action::Execute(job) => {
                        if let Some(done) = self.exec.start(job) {
                            self.inline_done.push(done);
                        }
                    }
                    Action::Close(end) => {
                        self.send_out().await?;
                        self.conn.writer.flush().await;
                        return Ok(Some(CloseReason::Session(end)));
                    }
                }
            }
            if let Some((itt, outcome)) = self.inline_done.pop() {
                actions = self.session.complete(itt, outcome);
                continue;
            }
            if handled < MAX_PDUS_PER_TURN
                && !self.session.budget_blocked()
                && let Some(pdu) = self.conn.reader.buffered(&self.recv_limits)?
            {
                handled += 1;
                actions = self.on_pdu(pdu);
                continue;
            }
            return Ok(None);
        }
    }

    /// Hand the responses gathered so far to the writer.
    async fn send_out(&mut self) -> io::Result<()> {
        let pdus = std::mem::take(&mut self.out);
        self.conn.writer.send(pdus, self.session.window()).await
    }

    /// Let in-flight commands finish (writes must not be cut off), tell the initiator when the
    /// server is going away, release SCSI state and the session's entries.
    async fn teardown(mut self, why: CloseReason) -> io::Result<()> {
        let drain_timeout = self.conn.shared.cfg.drain_timeout;
        let _ = tokio::time::timeout(drain_timeout, self.drain()).await;
        if matches!(why, CloseReason::ShuttingDown) {
            let msg = Bhs::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                event: 3, // the target will drop all connections of this session
                vcode: 0,
                param1: 0,
                param2: self.params.default_time2wait.max(2),
                param3: 0,
            });
            let pdu = OutPdu::new(&msg, Stamp::Advance, Vec::new());
            let _ = self
                .conn
                .writer
                .send(vec![pdu], self.session.window())
                .await;
        }
        let SessionHandler {
            conn, params, exec, ..
        } = self;
        conn.writer.close().await;
        if let Some(l) = &exec.lus {
            l.nexus_gone(&exec.nexus);
        }
        if let Some(s) = &exec.stats {
            s.remove_session(self.session_id);
        }
        conn.shared.table.remove(params.tsih, &conn.kill);
        info!(peer = %conn.peer.addr, initiator = %params.initiator_name, "session ended: {why}");
        match why {
            CloseReason::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Wait for the commands still running (blocking pool, asynchronous path) and send their
    /// responses.
    async fn drain(&mut self) {
        while self.exec.running > 0 {
            let Some(c) = self.exec.done_rx.recv().await else {
                break;
            };
            let (itt, outcome) = self.exec.finished(c);
            for a in self.session.complete(itt, outcome) {
                if let Action::Send(p) = a {
                    let _ = self.conn.writer.send(p, self.session.window()).await;
                }
            }
        }
    }
}

/// Completes when a discovery session's quiet limit has passed (never for a normal session).
async fn quiet_for(limit: &mut Option<(Duration, Pin<Box<Sleep>>)>) {
    match limit {
        Some((_, sleep)) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn wait_kick(stats: &Option<Arc<TargetStats>>) {
    match stats {
        Some(s) => s.kick.notified().await,
        None => std::future::pending().await,
    }
}

/// iSCSI initiator port name: `<name>,i,0x<ISID in hex>` (RFC 7143 §4.2.7).
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
