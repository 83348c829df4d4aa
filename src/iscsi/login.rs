//! The login phase of one connection (RFC 7143 §6.3, §11.12, §11.13, §12), sans-IO.
//!
//! ```text
//!              CSG=0 security             CSG=1 operational          FFP
//!  first PDU ──> AuthMethod, CHAP_* ──T=1,NSG=1──> operational keys ──T=1,NSG=3──> Done
//!      │                └──────────────────T=1,NSG=3 (operational defaults)──────────┘
//!      └── CSG=1 directly (only when the target needs no authentication)
//! ```
//! The service feeds every Login Request (header and data segment) to [`Login::handle`] and
//! sends the Login Responses it returns, in order. [`LoginOutcome::Done`] carries everything
//! the session needs; [`LoginOutcome::Failed`] means: send the responses, then close.
//!
//! Text spanning several PDUs (C bit) is joined up to [`MAX_TEXT_LEN`] bytes, each partial
//! PDU answered by an empty response; our own answers longer than the login-phase limit
//! ([`LOGIN_MAX_DATA`]) are sent in pieces with the C bit, each piece released by an empty
//! request from the initiator.
//!
//! Driving it (what `service::iscsi` does per connection):
//!
//! ```text
//!  let mut login = Login::new(registry, limits);        // FrameLimits::default() (8192) meanwhile
//!  loop {
//!      LoginRequest + data  ->  login.handle(&req, &data, &session_table)
//!      send every (LoginResponse, data) in step.responses with Bhs::LoginResponse(..).emit(len)
//!      match step.outcome {
//!          Continue => read the next PDU (anything but a Login Request: close),
//!          Failed   => close after sending,
//!          Done(p)  => full feature phase: FrameLimits { max_data: p.max_recv_dsl, digests }
//!                      for reading, p.max_xmit_dsl for sending, first StatSN p.stat_sn,
//!                      ExpCmdSN p.exp_cmd_sn; text requests go to discovery::TextExchange,
//!      }
//!  }
//! ```
//!
//! StatSN: the first response carries the initiator's ExpStatSN; every response after it
//! carries the next number (the initiator expects previous + 1), and the session continues
//! from there. ExpCmdSN is the request's CmdSN (login PDUs are immediate and do not advance
//! it); MaxCmdSN opens a window of [`INITIAL_CMD_WINDOW`] on the final response.

use super::access::{self, Live, Refusal};
use super::chap::{ChapAnswer, ChapError, ChapServer};
use super::negotiate::{
    Answer, LOGIN_MAX_DATA, MAX_SIMPLE_VALUE_LEN, Negotiator, is_leading_key, is_security_key,
    valid_iscsi_name,
};
/// Re-exported so the whole login API is reachable from `iscsi::login`.
pub use super::negotiate::{SessionType, TargetLimits};
use super::target::{TargetConfig, TargetRegistry};
use crate::wire::frame::FrameLimits;
use crate::wire::pdu::{LoginRequest, LoginResponse};
use crate::wire::text::{self, MAX_TEXT_LEN};
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Most Login Request PDUs one login may take (continuations included) before we give up.
pub const MAX_LOGIN_PDUS: u32 = 128;
/// Most text we answer in one exchange (split into [`LOGIN_MAX_DATA`] pieces).
pub const MAX_LOGIN_RESPONSE_TEXT: usize = 64 * 1024;
/// CmdSN window opened by the final login response: MaxCmdSN = ExpCmdSN + window - 1.
pub const INITIAL_CMD_WINDOW: u32 = 128;

/// Login status class and detail (RFC 7143 §11.13.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus::new(0, 0);
    /// 0200: miscellaneous initiator error (protocol error, bad text, bad stage...).
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus::new(2, 0);
    /// 0201: authentication failed.
    pub const AUTH_FAILED: LoginStatus = LoginStatus::new(2, 1);
    /// 0202: the initiator may not use this target.
    pub const FORBIDDEN: LoginStatus = LoginStatus::new(2, 2);
    /// 0203: no such target.
    pub const NOT_FOUND: LoginStatus = LoginStatus::new(2, 3);
    /// 0205: no common protocol version.
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus::new(2, 5);
    /// 0206: too many connections on this session.
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus::new(2, 6);
    /// 0207: a required key is missing.
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus::new(2, 7);
    /// 0209: session type not supported.
    pub const SESSION_TYPE_UNSUPPORTED: LoginStatus = LoginStatus::new(2, 9);
    /// 020a: non-zero TSIH naming no session.
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus::new(2, 0x0a);
    /// 0300: target error.
    pub const TARGET_ERROR: LoginStatus = LoginStatus::new(3, 0);

    pub const fn new(class: u8, detail: u8) -> LoginStatus {
        LoginStatus { class, detail }
    }
}

impl fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}", self.class, self.detail)
    }
}

/// Everything the session needs once the login succeeded.
#[derive(Clone)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// None for Discovery sessions.
    pub target: Option<Arc<TargetConfig>>,
    pub isid: [u8; 6],
    /// Assigned by [`SessionTable::new_session`] for a new session; for a login that named an
    /// existing session (non-zero TSIH that [`SessionTable::exists`] confirmed), that TSIH:
    /// the service must treat the connection as replacing that session's connection.
    pub tsih: u16,
    pub cid: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the initiator may send us (our declared MaxRecvDataSegmentLength; 8192 if the
    /// login never reached the operational stage).
    pub max_recv_dsl: u32,
    /// What we may send: the initiator's MaxRecvDataSegmentLength, 8192 if never declared.
    pub max_xmit_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub error_recovery_level: u8,
    pub max_connections: u32,
    /// CmdSN of the last login request: the session's first ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// The next StatSN to use in full feature phase.
    pub stat_sn: u32,
}

impl SessionParams {
    /// Framing limits for reading the initiator's PDUs in full feature phase.
    pub fn recv_limits(&self) -> FrameLimits {
        FrameLimits {
            max_data: self.max_recv_dsl,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
        }
    }

    /// Framing limits for our PDUs: no data segment longer than the initiator's
    /// MaxRecvDataSegmentLength.
    pub fn send_limits(&self) -> FrameLimits {
        FrameLimits {
            max_data: self.max_xmit_dsl,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
        }
    }
}

impl fmt::Debug for SessionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // TargetConfig holds CHAP secrets: show only its name.
        f.debug_struct("SessionParams")
            .field("session_type", &self.session_type)
            .field("initiator_name", &self.initiator_name)
            .field("initiator_alias", &self.initiator_alias)
            .field("target", &self.target.as_ref().map(|t| t.iqn.as_str()))
            .field("isid", &self.isid)
            .field("tsih", &self.tsih)
            .field("cid", &self.cid)
            .field("header_digest", &self.header_digest)
            .field("data_digest", &self.data_digest)
            .field("max_recv_dsl", &self.max_recv_dsl)
            .field("max_xmit_dsl", &self.max_xmit_dsl)
            .field("max_burst_length", &self.max_burst_length)
            .field("first_burst_length", &self.first_burst_length)
            .field("initial_r2t", &self.initial_r2t)
            .field("immediate_data", &self.immediate_data)
            .field("max_outstanding_r2t", &self.max_outstanding_r2t)
            .field("data_pdu_in_order", &self.data_pdu_in_order)
            .field("data_sequence_in_order", &self.data_sequence_in_order)
            .field("default_time2wait", &self.default_time2wait)
            .field("default_time2retain", &self.default_time2retain)
            .field("error_recovery_level", &self.error_recovery_level)
            .field("max_connections", &self.max_connections)
            .field("exp_cmd_sn", &self.exp_cmd_sn)
            .field("stat_sn", &self.stat_sn)
            .finish()
    }
}

/// The service's session table, asked when a login completes.
pub trait SessionTable {
    /// Assign a new TSIH (non-zero, unique) for a new Normal/Discovery session; also the place
    /// where the service performs session reinstatement (same initiator name + ISID + target
    /// => old session closed).
    fn new_session(&self, initiator: &str, isid: [u8; 6], target: Option<&str>) -> u16;
    /// Is `tsih` a live session of this initiator name and ISID (a login naming a TSIH
    /// continues that session only then; any other answer is "no such session", whether or not
    /// the TSIH exists)?
    fn owns(&self, tsih: u16, initiator: &str, isid: [u8; 6]) -> bool;
}

/// What one Login Request produced.
#[derive(Debug)]
pub struct LoginStep {
    /// Login Responses to send, in order (header fields and data segment each).
    pub responses: Vec<(LoginResponse, Vec<u8>)>,
    pub outcome: LoginOutcome,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum LoginOutcome {
    /// Wait for the next Login Request.
    Continue,
    /// Every rule lets the login in, but the target has live sessions (of this client: the
    /// same address and initiator name, or the login was refused already): ask the initiator
    /// of each session with these TSIHs whether it is still there (a NOP-In ping on its
    /// connection), then call [`Login::resume`] with what they said. The last Login Response
    /// is held until then.
    Probe(Vec<u16>),
    /// Full feature phase reached with these parameters.
    Done(SessionParams),
    /// Refused: send the responses, then close the connection.
    Failed,
}

/// What probing a target's live sessions found ([`LoginOutcome::Probe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probed {
    /// An initiator answered on its connection: the disk is in use, the login is refused.
    Answered,
    /// None answered: each session ended (its peer closed it, or a stack that no longer knows
    /// the connection reset it: the client rebooted) or kept silent until the probe gave up
    /// (the caller ends those).
    Gone,
}

/// Why a login failed (for logs; the initiator sees only the status).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("unsupported version (min {0})")]
    UnsupportedVersion(u8),
    #[error("both T and C bits set")]
    TransitAndContinue,
    #[error("request for stage {got} while in stage {want}")]
    WrongStage { got: u8, want: u8 },
    #[error("invalid stage transition {csg} -> {nsg}")]
    BadTransition { csg: u8, nsg: u8 },
    #[error("ISID, TSIH or CID changed during login")]
    IdentityChanged,
    #[error("too many login PDUs")]
    TooManyPdus,
    #[error("login text longer than {MAX_TEXT_LEN} bytes")]
    TextTooLong,
    #[error("malformed login text: {0}")]
    BadText(&'static str),
    #[error("key {0} sent more than once")]
    DuplicateKey(String),
    #[error("our answer would exceed {MAX_LOGIN_RESPONSE_TEXT} bytes")]
    ResponseTooLong,
    #[error("data sent while our response was being continued")]
    DataDuringContinuation,
    #[error("InitiatorName missing")]
    MissingInitiatorName,
    #[error("invalid InitiatorName")]
    BadInitiatorName,
    #[error("TargetName missing")]
    MissingTargetName,
    #[error("invalid TargetName")]
    BadTargetName,
    #[error("no target named {0}")]
    UnknownTarget(String),
    #[error("initiator may not use target {0}")]
    Forbidden(String),
    #[error("target {0} is bound to other addresses")]
    WrongAddress(String),
    #[error("target {0} is in use by another initiator or address")]
    InUse(String),
    #[error("target {0} is in use: the initiator of its live session answered a probe")]
    Answered(String),
    #[error("no target accepts discovery from this address and initiator name")]
    NothingToDiscover,
    #[error("unsupported SessionType")]
    BadSessionType,
    #[error("session with TSIH {0} does not exist")]
    NoSuchSession(u16),
    #[error("no acceptable AuthMethod")]
    NoAuthMethod,
    #[error("authentication required before leaving the security stage")]
    AuthRequired,
    #[error("CHAP: {0}")]
    Chap(#[from] ChapError),
    #[error("security key {0} outside the security stage")]
    SecurityKeyLate(String),
    #[error("leading login key {0} after the first exchange")]
    LeadingKeyLate(String),
    #[error("FirstBurstLength exceeds MaxBurstLength")]
    FirstBurstOverMaxBurst,
    #[error("login already finished")]
    Finished,
}

impl LoginError {
    /// The access rule that refused the login, if one did (metrics label it).
    pub fn refusal(&self) -> Option<Refusal> {
        use LoginError::*;
        Some(match self {
            UnknownTarget(_) => Refusal::UnknownTarget,
            Forbidden(_) => Refusal::WrongInitiator,
            WrongAddress(_) => Refusal::WrongAddress,
            InUse(_) | Answered(_) => Refusal::InUse,
            NoSuchSession(_) => Refusal::NoSuchSession,
            NothingToDiscover => Refusal::NothingToDiscover,
            _ => return None,
        })
    }

    /// The status the initiator is sent.
    pub fn status(&self) -> LoginStatus {
        use LoginError::*;
        match self {
            UnsupportedVersion(_) => LoginStatus::UNSUPPORTED_VERSION,
            MissingInitiatorName | MissingTargetName => LoginStatus::MISSING_PARAMETER,
            // One answer for every "not you": a caller cannot tell a target that does not
            // exist from one bound elsewhere, closed to its name, or in use.
            UnknownTarget(_) | Forbidden(_) | WrongAddress(_) | InUse(_) | Answered(_)
            | NothingToDiscover => LoginStatus::AUTH_FAILED,
            BadSessionType => LoginStatus::SESSION_TYPE_UNSUPPORTED,
            NoSuchSession(_) => LoginStatus::SESSION_DOES_NOT_EXIST,
            NoAuthMethod | AuthRequired | Chap(_) => LoginStatus::AUTH_FAILED,
            _ => LoginStatus::INITIATOR_ERROR,
        }
    }
}

const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FFP: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthMethod {
    None,
    Chap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request seen yet.
    Start,
    /// In stage CSG (0 or 1).
    Stage(u8),
    Done,
    Failed,
}

/// What the last complete exchange decided, applied when its last response piece goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Stay,
    Transit(u8),
}

/// Our answer still being sent in pieces.
struct Pending {
    data: Vec<u8>,
    sent: usize,
    decision: Decision,
}

/// Identity fixed by the first Login Request.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ids {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
}

/// The login state machine of one connection.
pub struct Login {
    registry: Arc<dyn TargetRegistry>,
    limits: TargetLimits,
    /// The connection's peer (the access rules check it; None: protocol-only tests).
    peer: Option<IpAddr>,
    /// Why the login was refused, when an access rule did.
    refusal: Option<Refusal>,
    phase: Phase,
    ids: Option<Ids>,
    stat_sn: u32,
    pdus: u32,
    /// Text of a request still arriving with the C bit.
    rx: Vec<u8>,
    pending: Option<Pending>,
    /// The last request and the answer held while the target's live sessions are probed.
    held: Option<(LoginRequest, Vec<u8>)>,
    initiator_name: Option<String>,
    initiator_alias: Option<String>,
    session_type: SessionType,
    target: Option<Arc<TargetConfig>>,
    /// A discovery session's credentials: those of the caller's own target.
    discovery_auth: Option<super::target::ChapConfig>,
    auth: Option<AuthMethod>,
    chap: ChapServer,
    authenticated: bool,
    neg: Negotiator,
    /// Security keys already received (a repeat is a protocol error).
    security_seen: HashSet<String>,
    announced_max_recv: bool,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("phase", &self.phase)
            .field("initiator_name", &self.initiator_name)
            .field("session_type", &self.session_type)
            .field("target", &self.target.as_ref().map(|t| t.iqn.as_str()))
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

/// The keys of one complete request, in order.
type Pairs = Vec<(String, String)>;

impl Login {
    pub fn new(registry: Arc<dyn TargetRegistry>, limits: TargetLimits) -> Login {
        Login {
            registry,
            limits,
            peer: None,
            refusal: None,
            phase: Phase::Start,
            ids: None,
            stat_sn: 0,
            pdus: 0,
            rx: Vec::new(),
            pending: None,
            held: None,
            initiator_name: None,
            initiator_alias: None,
            session_type: SessionType::Normal,
            target: None,
            discovery_auth: None,
            auth: None,
            chap: ChapServer::new(),
            authenticated: false,
            neg: Negotiator::new(limits, SessionType::Normal),
            security_seen: HashSet::new(),
            announced_max_recv: false,
        }
    }

    /// The login of a connection from `peer`: the target's address binding and the "one user
    /// of a disk" rule apply ([`super::access`]).
    pub fn from_peer(mut self, peer: IpAddr) -> Login {
        self.peer = Some(peer);
        self
    }

    /// The access rule that refused this login, if one did.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
    }

    /// Feed one Login Request PDU (header and its data segment).
    pub fn handle(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        sessions: &dyn SessionTable,
    ) -> LoginStep {
        if self.held.is_some() {
            // The initiator spoke out of turn while its last request waits for a probe.
            return self.fail(req, LoginError::Finished);
        }
        match self.step(req, data, sessions) {
            Ok(step) => step,
            Err(e) => self.fail(req, e),
        }
    }

    /// Finish a login that [`LoginOutcome::Probe`] held: refused when an initiator of the
    /// target's live sessions answered, else it enters full-feature phase as it would have.
    pub fn resume(&mut self, probed: Probed, sessions: &dyn SessionTable) -> LoginStep {
        let Some((req, piece)) = self.held.take() else {
            // Nothing held (a caller's mistake): no answer, the connection closes.
            self.phase = Phase::Failed;
            return LoginStep {
                responses: Vec::new(),
                outcome: LoginOutcome::Failed,
            };
        };
        match probed {
            Probed::Answered => {
                let tn = self
                    .target
                    .as_ref()
                    .map(|t| t.iqn.clone())
                    .unwrap_or_default();
                self.fail(&req, LoginError::Answered(tn))
            }
            Probed::Gone => self.enter_ffp(&req, piece, sessions),
        }
    }

    /// Refuse the login with `e`'s status; the connection closes after the response.
    fn fail(&mut self, req: &LoginRequest, e: LoginError) -> LoginStep {
        self.refusal = self.refusal.or(e.refusal());
        let who = self.initiator_name.as_deref().unwrap_or("?");
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        // An access rule said no (another host, another initiator, a disk in use, a forged
        // TSIH): the admin should hear of it.
        if e.refusal().is_some() {
            tracing::warn!(initiator = who, %peer, status = %e.status(), "login refused: {e}");
        } else {
            tracing::info!(initiator = who, %peer, status = %e.status(), "login refused: {e}");
        }
        self.phase = Phase::Failed;
        let resp = self.response(req, e.status(), false, false, 0);
        LoginStep {
            responses: vec![(resp, Vec::new())],
            outcome: LoginOutcome::Failed,
        }
    }

    /// A response header for `req`, consuming one StatSN.
    fn response(
        &mut self,
        req: &LoginRequest,
        status: LoginStatus,
        transit: bool,
        cont: bool,
        nsg: u8,
    ) -> LoginResponse {
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        LoginResponse {
            transit,
            cont,
            csg: req.csg & 3,
            nsg: if transit { nsg } else { 0 },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            stat_sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn,
            status_class: status.class,
            status_detail: status.detail,
        }
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        sessions: &dyn SessionTable,
    ) -> Result<LoginStep, LoginError> {
        if matches!(self.phase, Phase::Done | Phase::Failed) {
            return Err(LoginError::Finished);
        }
        self.pdus += 1;
        let ids = Ids {
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
        };
        if self.phase == Phase::Start {
            self.stat_sn = req.exp_stat_sn;
            self.ids = Some(ids);
        }
        if req.version_min > 0 {
            return Err(LoginError::UnsupportedVersion(req.version_min));
        }
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginError::TooManyPdus);
        }
        if self.ids != Some(ids) {
            return Err(LoginError::IdentityChanged);
        }
        if req.transit && req.cont {
            return Err(LoginError::TransitAndContinue);
        }
        // Stage checks.
        let stage = match self.phase {
            Phase::Start => {
                if req.csg != STAGE_SECURITY && req.csg != STAGE_OPERATIONAL {
                    return Err(LoginError::WrongStage {
                        got: req.csg,
                        want: STAGE_SECURITY,
                    });
                }
                self.phase = Phase::Stage(req.csg);
                req.csg
            }
            Phase::Stage(s) => {
                if req.csg != s {
                    return Err(LoginError::WrongStage {
                        got: req.csg,
                        want: s,
                    });
                }
                s
            }
            Phase::Done | Phase::Failed => return Err(LoginError::Finished),
        };
        if req.transit
            && !((stage == STAGE_SECURITY
                && (req.nsg == STAGE_OPERATIONAL || req.nsg == STAGE_FFP))
                || (stage == STAGE_OPERATIONAL && req.nsg == STAGE_FFP))
        {
            return Err(LoginError::BadTransition {
                csg: stage,
                nsg: req.nsg,
            });
        }

        // The initiator releasing the next piece of our answer.
        if self.pending.is_some() {
            if !data.is_empty() || req.cont {
                return Err(LoginError::DataDuringContinuation);
            }
            return self.send_piece(req, sessions);
        }

        // Joining text sent with the C bit.
        if self.rx.len() + data.len() > MAX_TEXT_LEN {
            return Err(LoginError::TextTooLong);
        }
        if req.cont {
            self.rx.extend_from_slice(data);
            let resp = self.response(req, LoginStatus::SUCCESS, false, false, 0);
            return Ok(LoginStep {
                responses: vec![(resp, Vec::new())],
                outcome: LoginOutcome::Continue,
            });
        }
        let text = if self.rx.is_empty() {
            data.to_vec()
        } else {
            let mut t = std::mem::take(&mut self.rx);
            t.extend_from_slice(data);
            t
        };
        let pairs: Pairs = text::parse(&text)
            .map_err(|e| match e {
                crate::wire::WireError::Text(m) => LoginError::BadText(m),
                _ => LoginError::BadText("unparsable"),
            })?
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        let mut seen = HashSet::new();
        for (k, _) in &pairs {
            if !seen.insert(k.as_str()) {
                return Err(LoginError::DuplicateKey(k.clone()));
            }
        }

        let first = self.initiator_name.is_none();
        let mut out: Pairs = Vec::new();
        if first {
            self.leading(&pairs, req, sessions)?;
            self.check_skip_security(stage)?;
            if self.session_type == SessionType::Normal {
                out.push((
                    "TargetPortalGroupTag".into(),
                    self.limits.target_portal_group_tag.to_string(),
                ));
            }
        }
        let mut chap_answer = ChapAnswer::default();
        let mut chap_a = None;
        for (k, v) in &pairs {
            if is_leading_key(k) {
                if !first {
                    self.leading_again(k, v)?;
                }
                continue;
            }
            if is_security_key(k) {
                if stage != STAGE_SECURITY {
                    return Err(LoginError::SecurityKeyLate(k.clone()));
                }
                if !self.security_seen.insert(k.clone()) {
                    return Err(LoginError::DuplicateKey(k.clone()));
                }
                match k.as_str() {
                    "AuthMethod" => {
                        let m = self.choose_auth(v)?;
                        self.auth = Some(m);
                        let s = match m {
                            AuthMethod::None => "None",
                            AuthMethod::Chap => "CHAP",
                        };
                        out.push((k.clone(), s.into()));
                    }
                    "CHAP_A" => chap_a = Some(v.as_str()),
                    "CHAP_N" => chap_answer.n = Some(v.as_str()),
                    "CHAP_R" => chap_answer.r = Some(v.as_str()),
                    "CHAP_I" => chap_answer.i = Some(v.as_str()),
                    "CHAP_C" => chap_answer.c = Some(v.as_str()),
                    _ => out.push((k.clone(), super::negotiate::NOT_UNDERSTOOD.into())),
                }
                continue;
            }
            if self.neg.already_negotiated(k) {
                return Err(LoginError::DuplicateKey(k.clone()));
            }
            match self.neg.negotiate(k, v) {
                Answer::Value(a) => out.push((k.clone(), a)),
                Answer::Nothing => {}
            }
        }

        // CHAP, after the whole request is read. A request that picks CHAP or asks for the
        // challenge may also ask to leave the stage: we answer T=0 and carry on.
        let auth_progress = pairs.iter().any(|p| p.0 == "AuthMethod") || chap_a.is_some();
        let chap_keys = chap_a.is_some()
            || chap_answer.n.is_some()
            || chap_answer.r.is_some()
            || chap_answer.i.is_some()
            || chap_answer.c.is_some();
        if chap_keys && self.auth != Some(AuthMethod::Chap) {
            return Err(LoginError::Chap(ChapError::OutOfSequence("CHAP key")));
        }
        if let Some(a) = chap_a {
            if chap_answer.n.is_some() || chap_answer.r.is_some() {
                return Err(ChapError::OutOfSequence("CHAP_R").into());
            }
            out.extend(self.chap.offer(a)?);
        } else if chap_keys {
            let cfg = self.chap_config().ok_or(LoginError::AuthRequired)?;
            out.extend(self.chap.verify(&cfg, chap_answer)?);
            self.authenticated = true;
            tracing::debug!(
                initiator = self.initiator_name.as_deref().unwrap_or("?"),
                "CHAP authentication succeeded"
            );
        }

        // Our own declarations.
        if stage == STAGE_OPERATIONAL && !self.announced_max_recv {
            self.announced_max_recv = true;
            let v = self.neg.announce_max_recv();
            out.push(("MaxRecvDataSegmentLength".into(), v));
        }

        // May we leave this stage?
        let decision = if req.transit {
            if stage == STAGE_SECURITY && !self.auth_complete(auth_progress)? {
                Decision::Stay
            } else {
                Decision::Transit(req.nsg)
            }
        } else {
            Decision::Stay
        };
        if decision == Decision::Transit(STAGE_FFP) && self.neg.inconsistent_bursts() {
            return Err(LoginError::FirstBurstOverMaxBurst);
        }

        let mut bytes = Vec::new();
        for (k, v) in &out {
            text::push(&mut bytes, k, v);
            if bytes.len() > MAX_LOGIN_RESPONSE_TEXT {
                return Err(LoginError::ResponseTooLong);
            }
        }
        self.pending = Some(Pending {
            data: bytes,
            sent: 0,
            decision,
        });
        self.send_piece(req, sessions)
    }

    /// Send the next piece of the pending answer; apply its decision with the last piece.
    fn send_piece(
        &mut self,
        req: &LoginRequest,
        sessions: &dyn SessionTable,
    ) -> Result<LoginStep, LoginError> {
        let Some(mut p) = self.pending.take() else {
            return Err(LoginError::Finished);
        };
        let max = LOGIN_MAX_DATA as usize;
        let end = (p.sent + max).min(p.data.len());
        let piece = p.data.get(p.sent..end).unwrap_or_default().to_vec();
        if end < p.data.len() {
            p.sent = end;
            self.pending = Some(p);
            let resp = self.response(req, LoginStatus::SUCCESS, false, true, 0);
            return Ok(LoginStep {
                responses: vec![(resp, piece)],
                outcome: LoginOutcome::Continue,
            });
        }
        // We may set T only in answer to a request with T set (the initiator's empty
        // requests that fetched the pieces may have cleared it).
        let decision = match p.decision {
            Decision::Transit(n) if req.transit && req.nsg == n => p.decision,
            _ => Decision::Stay,
        };
        match decision {
            Decision::Stay => {
                let resp = self.response(req, LoginStatus::SUCCESS, false, false, 0);
                Ok(LoginStep {
                    responses: vec![(resp, piece)],
                    outcome: LoginOutcome::Continue,
                })
            }
            Decision::Transit(STAGE_FFP) => {
                if let Some(live) = self.live_sessions()? {
                    self.held = Some((*req, piece));
                    return Ok(LoginStep {
                        responses: Vec::new(),
                        outcome: LoginOutcome::Probe(live),
                    });
                }
                Ok(self.enter_ffp(req, piece, sessions))
            }
            Decision::Transit(nsg) => {
                let resp = self.response(req, LoginStatus::SUCCESS, true, false, nsg);
                self.phase = Phase::Stage(nsg);
                Ok(LoginStep {
                    responses: vec![(resp, piece)],
                    outcome: LoginOutcome::Continue,
                })
            }
        }
    }

    /// The TSIHs of the target's live sessions, when this login must wait for a probe of
    /// them: one machine's disk ([`TargetRegistry::exclusive`]) that is in use. A rebooted
    /// client's old session and its boot chain's earlier sessions (iPXE's, the initrd's) stay
    /// live until a probe finds them gone; a running client answers, and then this login is
    /// not that client's (SECURITY.md, "one user of a disk"). The "one user" rule is checked
    /// again here: sessions may have started since the first request.
    fn live_sessions(&self) -> Result<Option<Vec<u16>>, LoginError> {
        let (Some(t), Some(_)) = (&self.target, self.peer) else {
            return Ok(None);
        };
        if !self.registry.exclusive(&t.iqn) {
            return Ok(None);
        }
        let name = self.initiator_name.as_deref().unwrap_or_default();
        let live = self.one_user(t, name)?;
        Ok((!live.is_empty()).then_some(live))
    }

    /// "One user of a disk" ([`access::one_user`]) for a login by `name` from this peer to
    /// `t`: the TSIHs of `t`'s live sessions when it may share the disk with them (its own).
    fn one_user(&self, t: &TargetConfig, name: &str) -> Result<Vec<u16>, LoginError> {
        let sessions = t.stats.sessions();
        let live: Vec<Live<'_>> = sessions
            .iter()
            .map(|s| Live {
                peer: s.peer.ip(),
                initiator: &s.initiator,
            })
            .collect();
        access::one_user(&live, self.peer, name).map_err(|_| LoginError::InUse(t.iqn.clone()))?;
        Ok(sessions.iter().map(|s| s.tsih).collect())
    }

    /// Reach full-feature phase: a new session (or the one the TSIH named) and the last
    /// response.
    fn enter_ffp(
        &mut self,
        req: &LoginRequest,
        piece: Vec<u8>,
        sessions: &dyn SessionTable,
    ) -> LoginStep {
        let tsih = if req.tsih == 0 {
            sessions.new_session(
                self.initiator_name.as_deref().unwrap_or(""),
                req.isid,
                self.target.as_ref().map(|t| t.iqn.as_str()),
            )
        } else {
            req.tsih
        };
        let mut resp = self.response(req, LoginStatus::SUCCESS, true, false, STAGE_FFP);
        resp.tsih = tsih;
        resp.max_cmd_sn = req.cmd_sn.wrapping_add(INITIAL_CMD_WINDOW - 1);
        self.phase = Phase::Done;
        let params = self.params(req, tsih);
        tracing::info!(
            initiator = %params.initiator_name,
            target = params.target.as_ref().map(|t| t.iqn.as_str()).unwrap_or("-"),
            tsih,
            "login complete"
        );
        LoginStep {
            responses: vec![(resp, piece)],
            outcome: LoginOutcome::Done(params),
        }
    }

    fn params(&self, req: &LoginRequest, tsih: u16) -> SessionParams {
        let o = *self.neg.params();
        SessionParams {
            session_type: self.session_type,
            initiator_name: self.initiator_name.clone().unwrap_or_default(),
            initiator_alias: self.initiator_alias.clone(),
            target: self.target.clone(),
            isid: req.isid,
            tsih,
            cid: req.cid,
            header_digest: o.header_digest,
            data_digest: o.data_digest,
            max_recv_dsl: o.max_recv_dsl,
            max_xmit_dsl: o.max_xmit_dsl,
            max_burst_length: o.max_burst_length,
            first_burst_length: o.first_burst_length.min(o.max_burst_length),
            initial_r2t: o.initial_r2t,
            immediate_data: o.immediate_data,
            max_outstanding_r2t: o.max_outstanding_r2t,
            data_pdu_in_order: o.data_pdu_in_order,
            data_sequence_in_order: o.data_sequence_in_order,
            default_time2wait: o.default_time2wait,
            default_time2retain: o.default_time2retain,
            error_recovery_level: o.error_recovery_level,
            max_connections: o.max_connections,
            exp_cmd_sn: req.cmd_sn,
            stat_sn: self.stat_sn,
        }
    }

    /// A first login that starts in the operational stage skips authentication: allowed only
    /// when the target needs none.
    fn check_skip_security(&self, stage: u8) -> Result<(), LoginError> {
        if stage == STAGE_OPERATIONAL && self.chap_required() && !self.authenticated {
            return Err(LoginError::AuthRequired);
        }
        Ok(())
    }

    /// Does the target need CHAP for this session?
    fn chap_required(&self) -> bool {
        self.chap_config().is_some()
    }

    /// The CHAP secrets this login is checked against: its target's, or for a discovery
    /// session those of the caller's own target.
    fn chap_config(&self) -> Option<super::target::ChapConfig> {
        match &self.target {
            Some(t) => t.chap.clone(),
            None => self.discovery_auth.clone(),
        }
    }

    /// Leading login keys of the first exchange: who, what kind of session, which target.
    fn leading(
        &mut self,
        pairs: &Pairs,
        req: &LoginRequest,
        sessions: &dyn SessionTable,
    ) -> Result<(), LoginError> {
        let get = |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.as_str());
        let name = get("InitiatorName").ok_or(LoginError::MissingInitiatorName)?;
        if !valid_iscsi_name(name) {
            return Err(LoginError::BadInitiatorName);
        }
        // Known from here on, also for the log line of a refusal.
        self.initiator_name = Some(name.to_string());
        // A TSIH continues a session only for its own initiator name and ISID; one answer
        // whether the TSIH exists or not.
        if req.tsih != 0 && !sessions.owns(req.tsih, name, req.isid) {
            return Err(LoginError::NoSuchSession(req.tsih));
        }
        self.session_type = match get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginError::BadSessionType),
        };
        self.neg.set_session_type(self.session_type);
        if let Some(a) = get("InitiatorAlias")
            && a.len() <= MAX_SIMPLE_VALUE_LEN
        {
            self.initiator_alias = Some(a.to_string());
        }
        if self.session_type == SessionType::Normal {
            let tn = get("TargetName").ok_or(LoginError::MissingTargetName)?;
            if !valid_iscsi_name(tn) {
                return Err(LoginError::BadTargetName);
            }
            let t = match self.check_target(tn, name, req.tsih) {
                // A login continuing a session gets "no such session" for every refusal, so
                // an existing TSIH answers like a made-up one wherever the caller stands.
                Err(e) if req.tsih != 0 && e.refusal().is_some() => {
                    self.refusal = e.refusal();
                    return Err(LoginError::NoSuchSession(req.tsih));
                }
                r => r?,
            };
            self.target = Some(t);
        } else if self.peer.is_some() {
            // Discovery: only from an address and name that some client's target accepts,
            // and with that target's CHAP when it has one.
            let peer = self.peer;
            let mine =
                self.registry.all().into_iter().find(|t| {
                    t.listed && t.allows(name) && self.registry.binding(&t.iqn).allows(peer)
                });
            match mine {
                Some(t) => self.discovery_auth = t.chap.clone(),
                None => return Err(LoginError::NothingToDiscover),
            }
        }
        // A TargetName in a Discovery login is ignored (RFC 7143 §13.4: not sent there).
        Ok(())
    }

    /// The target `tn` if `name`, from this login's peer, may use it now.
    fn check_target(
        &self,
        tn: &str,
        name: &str,
        tsih: u16,
    ) -> Result<Arc<TargetConfig>, LoginError> {
        let t = self
            .registry
            .lookup(tn)
            .ok_or_else(|| LoginError::UnknownTarget(tn.to_string()))?;
        if !self.registry.binding(&t.iqn).allows(self.peer) {
            return Err(LoginError::WrongAddress(tn.to_string()));
        }
        if !t.allows(name) {
            return Err(LoginError::Forbidden(tn.to_string()));
        }
        if tsih == 0 && self.registry.exclusive(&t.iqn) {
            self.one_user(&t, name)?;
        }
        Ok(t)
    }

    /// A leading key repeated in a later exchange: tolerated only with the same value.
    fn leading_again(&self, k: &str, v: &str) -> Result<(), LoginError> {
        let same = match k {
            "InitiatorName" => self.initiator_name.as_deref() == Some(v),
            "TargetName" => match &self.target {
                Some(t) => t.iqn.eq_ignore_ascii_case(v),
                None => true,
            },
            "SessionType" => {
                matches!(
                    (v, self.session_type),
                    ("Normal", SessionType::Normal) | ("Discovery", SessionType::Discovery)
                )
            }
            _ => true,
        };
        if same {
            Ok(())
        } else {
            Err(LoginError::LeadingKeyLate(k.to_string()))
        }
    }

    /// Pick the first method in the initiator's list that we accept.
    fn choose_auth(&self, list: &str) -> Result<AuthMethod, LoginError> {
        if list.len() > MAX_SIMPLE_VALUE_LEN {
            return Err(LoginError::NoAuthMethod);
        }
        let want = if self.chap_required() {
            AuthMethod::Chap
        } else {
            AuthMethod::None
        };
        list.split(',')
            .find_map(|m| match (m, want) {
                ("None", AuthMethod::None) => Some(AuthMethod::None),
                ("CHAP", AuthMethod::Chap) => Some(AuthMethod::Chap),
                _ => None,
            })
            .ok_or(LoginError::NoAuthMethod)
    }

    /// May the security stage end now? Ok(false) = CHAP still in progress.
    fn auth_complete(&self, progress: bool) -> Result<bool, LoginError> {
        if self.chap_required() {
            if self.authenticated {
                Ok(true)
            } else if self.auth == Some(AuthMethod::Chap) && progress {
                Ok(false)
            } else {
                Err(LoginError::AuthRequired)
            }
        } else {
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::chap::{decode_binary, encode_hex, md5_response};
    use crate::iscsi::target::{ChapConfig, StaticRegistry, TargetStats};
    use crate::scsi::TargetLus;
    use base64::Engine;
    use std::cell::{Cell, RefCell};

    const IQN: &str = "iqn.2026-11.org.isboot:disk";
    const SECRET_IQN: &str = "iqn.2026-11.org.isboot:secret";
    const CHAP_IQN: &str = "iqn.2026-11.org.isboot:chap";
    const INIT: &str = "iqn.2010-04.org.ipxe:client";
    const ISID: [u8; 6] = [0x40, 0, 0x01, 0x37, 0, 0];

    fn target(iqn: &str, allowed: &[&str], chap: Option<ChapConfig>) -> Arc<TargetConfig> {
        Arc::new(TargetConfig {
            iqn: iqn.into(),
            lus: Arc::new(TargetLus::new(Vec::new())),
            allowed_initiators: allowed.iter().map(|s| s.to_string()).collect(),
            chap,
            listed: true,
            stats: Arc::new(TargetStats::default()),
        })
    }

    fn chap_cfg(mutual: bool) -> ChapConfig {
        ChapConfig {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
            mutual: mutual.then(|| ("isboot".to_string(), b"the-target-secret".to_vec())),
        }
    }

    fn registry(mutual: bool) -> Arc<dyn TargetRegistry> {
        Arc::new(StaticRegistry(vec![
            target(IQN, &[], None),
            target(SECRET_IQN, &["iqn.1994-05.com.other:x"], None),
            target(CHAP_IQN, &[], Some(chap_cfg(mutual))),
        ]))
    }

    type Created = Vec<(String, [u8; 6], Option<String>)>;
    type CaseKeys = Box<dyn Fn(u8, &[u8]) -> Vec<(String, String)>>;

    #[derive(Default)]
    struct Table {
        existing: Vec<u16>,
        created: RefCell<Created>,
        next: Cell<u16>,
    }

    impl SessionTable for Table {
        fn new_session(&self, initiator: &str, isid: [u8; 6], target: Option<&str>) -> u16 {
            self.created.borrow_mut().push((
                initiator.to_string(),
                isid,
                target.map(str::to_string),
            ));
            self.next.set(self.next.get() + 1);
            0x100 + self.next.get()
        }
        fn owns(&self, tsih: u16, _: &str, _: [u8; 6]) -> bool {
            self.existing.contains(&tsih)
        }
    }

    /// A scripted initiator.
    struct Ini {
        login: Login,
        table: Table,
        tsih: u16,
        exp_stat_sn: u32,
        cmd_sn: u32,
        last_stat_sn: Option<u32>,
    }

    impl Ini {
        fn new(mutual: bool) -> Ini {
            Ini {
                login: Login::new(registry(mutual), TargetLimits::default()),
                table: Table::default(),
                tsih: 0,
                exp_stat_sn: 0x1000,
                cmd_sn: 7,
                last_stat_sn: None,
            }
        }

        fn req(&self, csg: u8, nsg: u8, transit: bool, cont: bool) -> LoginRequest {
            LoginRequest {
                transit,
                cont,
                csg,
                nsg,
                version_max: 0,
                version_min: 0,
                isid: ISID,
                tsih: self.tsih,
                itt: 0x55,
                cid: 1,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }
        }

        /// Send one request; check the invariants of every response.
        fn send_req(&mut self, r: LoginRequest, data: &[u8]) -> LoginStep {
            let step = self.login.handle(&r, data, &self.table);
            for (resp, d) in &step.responses {
                assert!(d.len() <= LOGIN_MAX_DATA as usize);
                assert_eq!(resp.itt, r.itt);
                assert_eq!(resp.isid, r.isid);
                assert_eq!(resp.exp_cmd_sn, r.cmd_sn);
                assert_eq!(resp.version_active, 0);
                assert!(!(resp.transit && resp.cont));
                match self.last_stat_sn {
                    None => assert_eq!(resp.stat_sn, r.exp_stat_sn),
                    Some(s) => assert_eq!(resp.stat_sn, s.wrapping_add(1)),
                }
                self.last_stat_sn = Some(resp.stat_sn);
                self.exp_stat_sn = resp.stat_sn.wrapping_add(1);
            }
            step
        }

        fn send(&mut self, csg: u8, nsg: u8, transit: bool, keys: &[(&str, &str)]) -> LoginStep {
            let r = self.req(csg, nsg, transit, false);
            self.send_req(r, &kv(keys))
        }
    }

    fn kv(keys: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in keys {
            text::push(&mut out, k, v);
        }
        out
    }

    fn keys_of(step: &LoginStep) -> Vec<(String, String)> {
        let mut all = Vec::new();
        for (_, d) in &step.responses {
            all.extend_from_slice(d);
        }
        text::parse(&all)
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect()
    }

    fn get(step: &LoginStep, key: &str) -> Option<String> {
        keys_of(step).into_iter().find(|k| k.0 == key).map(|k| k.1)
    }

    fn status(step: &LoginStep) -> LoginStatus {
        let r = &step.responses.last().unwrap().0;
        LoginStatus::new(r.status_class, r.status_detail)
    }

    fn assert_fails(step: &LoginStep, want: LoginStatus) {
        assert!(matches!(step.outcome, LoginOutcome::Failed), "{step:?}");
        assert_eq!(step.responses.len(), 1);
        assert_eq!(status(step), want, "{step:?}");
        assert!(!step.responses[0].0.transit);
    }

    fn done(step: LoginStep) -> SessionParams {
        match step.outcome {
            LoginOutcome::Done(p) => p,
            o => panic!("not done: {o:?} {:?}", step.responses),
        }
    }

    fn leading(target: &str) -> Vec<(&str, &str)> {
        vec![
            ("InitiatorName", INIT),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ]
    }

    const IPXE_OPERATIONAL: &[(&str, &str)] = &[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxRecvDataSegmentLength", "8192"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("DefaultTime2Wait", "0"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
    ];

    const OPEN_ISCSI_OPERATIONAL: &[(&str, &str)] = &[
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ];

    #[test]
    fn ipxe_profile() {
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.push(("AuthMethod", "CHAP,None"));
        let s = i.send(0, 1, true, &k);
        assert!(matches!(s.outcome, LoginOutcome::Continue));
        let (r, _) = &s.responses[0];
        assert_eq!((r.transit, r.csg, r.nsg), (true, 0, 1));
        assert_eq!(status(&s), LoginStatus::SUCCESS);
        assert_eq!(r.tsih, 0);
        assert_eq!(r.stat_sn, 0x1000);
        assert_eq!(get(&s, "AuthMethod").as_deref(), Some("None"));
        assert_eq!(get(&s, "TargetPortalGroupTag").as_deref(), Some("1"));

        let s = i.send(1, 3, true, IPXE_OPERATIONAL);
        let (r, _) = s.responses[0].clone();
        assert_eq!((r.transit, r.csg, r.nsg), (true, 1, 3));
        assert_eq!(r.tsih, 0x101);
        assert_eq!(r.max_cmd_sn, 7 + INITIAL_CMD_WINDOW - 1);
        assert_eq!(get(&s, "InitialR2T").as_deref(), Some("Yes"));
        assert_eq!(get(&s, "ImmediateData").as_deref(), Some("No"));
        assert_eq!(get(&s, "HeaderDigest").as_deref(), Some("None"));
        assert_eq!(get(&s, "MaxBurstLength").as_deref(), Some("262144"));
        assert_eq!(get(&s, "FirstBurstLength").as_deref(), Some("65536"));
        assert_eq!(get(&s, "DefaultTime2Wait").as_deref(), Some("2"));
        assert_eq!(get(&s, "DefaultTime2Retain").as_deref(), Some("0"));
        assert_eq!(
            get(&s, "MaxRecvDataSegmentLength").as_deref(),
            Some("262144")
        );
        let p = done(s);
        assert_eq!(p.session_type, SessionType::Normal);
        assert_eq!(p.initiator_name, INIT);
        assert_eq!(p.target.as_ref().unwrap().iqn, IQN);
        assert_eq!(p.tsih, 0x101);
        assert_eq!((p.isid, p.cid), (ISID, 1));
        assert!(!p.header_digest && !p.data_digest);
        assert!(p.initial_r2t && !p.immediate_data);
        assert_eq!(p.max_xmit_dsl, 8192);
        assert_eq!(p.max_recv_dsl, 262144);
        assert_eq!(p.max_burst_length, 262144);
        assert_eq!(p.first_burst_length, 65536);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert_eq!(p.error_recovery_level, 0);
        assert_eq!(p.max_connections, 1);
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
        assert_eq!(p.exp_cmd_sn, 7);
        assert_eq!(p.stat_sn, 0x1002);
        assert_eq!(
            *i.table.created.borrow(),
            vec![(INIT.to_string(), ISID, Some(IQN.to_string()))]
        );
    }

    #[test]
    fn open_iscsi_profile() {
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.insert(1, ("InitiatorAlias", "node1"));
        k.push(("AuthMethod", "None"));
        let s = i.send(0, 1, true, &k);
        assert_eq!(get(&s, "AuthMethod").as_deref(), Some("None"));
        let s = i.send(1, 3, true, OPEN_ISCSI_OPERATIONAL);
        assert_eq!(get(&s, "HeaderDigest").as_deref(), Some("CRC32C"));
        assert_eq!(get(&s, "IFMarker").as_deref(), Some("No"));
        assert_eq!(get(&s, "OFMarker").as_deref(), Some("No"));
        assert_eq!(get(&s, "MaxBurstLength").as_deref(), Some("16776192"));
        let p = done(s);
        assert!(p.header_digest && !p.data_digest);
        assert!(!p.initial_r2t && p.immediate_data);
        assert_eq!(
            p.recv_limits(),
            FrameLimits {
                max_data: 262144,
                header_digest: true,
                data_digest: false
            }
        );
        assert_eq!(p.send_limits().max_data, 262144);
        assert_eq!(p.first_burst_length, 262144);
        assert_eq!(p.max_burst_length, 16776192);
        assert_eq!(p.max_xmit_dsl, 262144);
        assert_eq!(p.max_recv_dsl, 262144);
        assert_eq!(p.initiator_alias.as_deref(), Some("node1"));
    }

    #[test]
    fn security_straight_to_full_feature_uses_defaults() {
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.push(("AuthMethod", "None"));
        let s = i.send(0, 3, true, &k);
        assert_eq!(s.responses[0].0.nsg, 3);
        let p = done(s);
        assert_eq!(p.max_recv_dsl, 8192);
        assert_eq!(p.max_xmit_dsl, 8192);
        assert!(p.initial_r2t && p.immediate_data);
        assert_eq!(p.max_burst_length, 262144);
        assert_eq!(p.first_burst_length, 65536);
        assert_eq!(p.stat_sn, 0x1001);
    }

    #[test]
    fn operational_stage_first_without_security() {
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.extend_from_slice(IPXE_OPERATIONAL);
        let s = i.send(1, 3, true, &k);
        assert_eq!(get(&s, "TargetPortalGroupTag").as_deref(), Some("1"));
        let p = done(s);
        assert_eq!(p.max_recv_dsl, 262144);
    }

    #[test]
    fn operational_stage_over_several_exchanges() {
        let mut i = Ini::new(false);
        let s = i.send(0, 1, true, &leading(IQN));
        assert!(s.responses[0].0.transit);
        let s = i.send(1, 0, false, &IPXE_OPERATIONAL[..4]);
        assert!(!s.responses[0].0.transit);
        assert_eq!(
            get(&s, "MaxRecvDataSegmentLength").as_deref(),
            Some("262144")
        );
        // A key negotiated in the first exchange may not come again.
        let mut j = Ini::new(false);
        j.send(0, 1, true, &leading(IQN));
        j.send(1, 0, false, &IPXE_OPERATIONAL[..4]);
        let s = j.send(1, 3, true, &IPXE_OPERATIONAL[3..]);
        assert_fails(&s, LoginStatus::INITIATOR_ERROR);
        // Without repeats it completes, and our declaration is not repeated.
        let s = i.send(1, 3, true, &IPXE_OPERATIONAL[4..]);
        assert_eq!(get(&s, "MaxRecvDataSegmentLength"), None);
        let p = done(s);
        assert!(!p.immediate_data);
    }

    #[test]
    fn discovery_session() {
        let mut i = Ini::new(false);
        let s = i.send(
            0,
            1,
            true,
            &[
                ("InitiatorName", INIT),
                ("SessionType", "Discovery"),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(get(&s, "TargetPortalGroupTag"), None);
        let s = i.send(
            1,
            3,
            true,
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "32768"),
                ("MaxBurstLength", "262144"),
                ("ImmediateData", "Yes"),
                ("DefaultTime2Wait", "2"),
                ("ErrorRecoveryLevel", "0"),
            ],
        );
        assert_eq!(get(&s, "MaxBurstLength").as_deref(), Some("Irrelevant"));
        assert_eq!(get(&s, "ImmediateData").as_deref(), Some("Irrelevant"));
        assert_eq!(get(&s, "ErrorRecoveryLevel").as_deref(), Some("0"));
        let p = done(s);
        assert_eq!(p.session_type, SessionType::Discovery);
        assert!(p.target.is_none());
        assert_eq!(p.max_xmit_dsl, 32768);
        assert_eq!(i.table.created.borrow()[0].2, None);
    }

    #[test]
    fn continued_request_text_is_joined() {
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.push(("AuthMethod", "None"));
        let all = kv(&k);
        let (a, b) = all.split_at(10);
        let r = i.req(0, 1, false, true);
        let s = i.send_req(r, a);
        assert!(matches!(s.outcome, LoginOutcome::Continue));
        assert!(s.responses[0].1.is_empty());
        assert!(!s.responses[0].0.transit);
        let r = i.req(0, 1, true, false);
        let s = i.send_req(r, b);
        assert_eq!(get(&s, "AuthMethod").as_deref(), Some("None"));
        assert!(s.responses[0].0.transit);
    }

    /// A registry whose targets are bound to 10.0.0.5 (see [`access::Binding`]).
    struct Bound(StaticRegistry);
    impl TargetRegistry for Bound {
        fn lookup(&self, iqn: &str) -> Option<Arc<TargetConfig>> {
            self.0.lookup(iqn)
        }
        fn all(&self) -> Vec<Arc<TargetConfig>> {
            self.0.all()
        }
        fn binding(&self, _: &str) -> access::Binding {
            access::Binding::Only(vec!["10.0.0.5".parse().unwrap()])
        }
        fn exclusive(&self, _: &str) -> bool {
            true
        }
    }

    fn bound_ini(peer: &str, targets: Vec<Arc<TargetConfig>>) -> Ini {
        let mut i = Ini::new(false);
        i.login = Login::new(
            Arc::new(Bound(StaticRegistry(targets))),
            TargetLimits::default(),
        )
        .from_peer(peer.parse().unwrap());
        i
    }

    #[test]
    fn access_rules_refuse_with_one_answer() {
        // The client's own address gets in.
        let mut i = bound_ini("10.0.0.5", vec![target(IQN, &[], None)]);
        done(i.send(0, 3, true, &leading(IQN)));
        // Another address: the same 0201 as an unknown target, and the reason is kept.
        let mut i = bound_ini("10.0.0.66", vec![target(IQN, &[], None)]);
        assert_fails(&i.send(0, 3, true, &leading(IQN)), LoginStatus::AUTH_FAILED);
        assert_eq!(i.login.refusal(), Some(Refusal::WrongAddress));
        let mut i = bound_ini("10.0.0.66", vec![target(IQN, &[], None)]);
        assert_fails(
            &i.send(0, 3, true, &leading("iqn.2026-11.org.isboot:nope")),
            LoginStatus::AUTH_FAILED,
        );
        assert_eq!(i.login.refusal(), Some(Refusal::UnknownTarget));
        // One user of a disk: a live session of another initiator keeps it; the same
        // initiator from the same address (its boot chain) gets in.
        let t = target(IQN, &[], None);
        t.stats.add_session(crate::iscsi::target::SessionInfo {
            id: 1,
            initiator: "iqn.1994-05.com.other:x".into(),
            peer: "10.0.0.5:40000".parse().unwrap(),
            isid: [0; 6],
            tsih: 9,
            kill: Default::default(),
        });
        let mut i = bound_ini("10.0.0.5", vec![t.clone()]);
        assert_fails(&i.send(0, 3, true, &leading(IQN)), LoginStatus::AUTH_FAILED);
        assert_eq!(i.login.refusal(), Some(Refusal::InUse));
        // The same initiator from the same address: in once a probe finds the session gone.
        let mut i = bound_ini("10.0.0.5", vec![t]);
        let step = i.send(0, 3, true, &other_leading());
        assert!(matches!(step.outcome, LoginOutcome::Probe(_)), "{step:?}");
        done(i.login.resume(Probed::Gone, &i.table));
    }

    const OTHER: &str = "iqn.1994-05.com.other:x";

    fn other_leading() -> [(&'static str, &'static str); 3] {
        [
            ("InitiatorName", OTHER),
            ("TargetName", IQN),
            ("AuthMethod", "None"),
        ]
    }

    /// A target with a live session of OTHER from 10.0.0.5 (TSIH 9).
    fn in_use() -> Arc<TargetConfig> {
        let t = target(IQN, &[], None);
        t.stats.add_session(crate::iscsi::target::SessionInfo {
            id: 1,
            initiator: OTHER.into(),
            peer: "10.0.0.5:40000".parse().unwrap(),
            isid: [0; 6],
            tsih: 9,
            kill: Default::default(),
        });
        t
    }

    #[test]
    fn a_login_beside_a_live_session_of_its_client_waits_for_a_probe() {
        // Every rule passes, but the disk has a live session: the last answer is held and the
        // caller is asked to probe that session (TSIH 9) first.
        let mut i = bound_ini("10.0.0.5", vec![in_use()]);
        let step = i.send(0, 3, true, &other_leading());
        match &step.outcome {
            LoginOutcome::Probe(tsihs) => assert_eq!(tsihs, &[9]),
            o => panic!("expected a probe: {o:?}"),
        }
        assert!(step.responses.is_empty(), "the answer waits for the probe");
        assert!(i.table.created.borrow().is_empty(), "no session yet");
        // Its initiator answered: the disk is in use, refused with the one answer (0201).
        let s = i.login.resume(Probed::Answered, &i.table);
        assert_fails(&s, LoginStatus::AUTH_FAILED);
        assert_eq!(i.login.refusal(), Some(Refusal::InUse));
        assert!(i.table.created.borrow().is_empty());
        // Gone (a rebooted client, or its boot chain's earlier session): in, with the held
        // answer, and the session is created only now.
        let mut i = bound_ini("10.0.0.5", vec![in_use()]);
        let _ = i.send(0, 3, true, &other_leading());
        let s = i.login.resume(Probed::Gone, &i.table);
        assert_eq!(s.responses.len(), 1);
        assert!(s.responses[0].0.transit && s.responses[0].0.nsg == 3);
        assert_eq!(done(s).initiator_name, OTHER);
        assert_eq!(i.table.created.borrow().len(), 1);
        // A request sent while the answer is held is out of turn: the login fails.
        let mut i = bound_ini("10.0.0.5", vec![in_use()]);
        let _ = i.send(0, 3, true, &other_leading());
        assert!(matches!(
            i.send(0, 3, true, &other_leading()).outcome,
            LoginOutcome::Failed
        ));
        // A resume with nothing held is refused without an answer.
        let mut i = bound_ini("10.0.0.5", vec![target(IQN, &[], None)]);
        let s = i.login.resume(Probed::Gone, &i.table);
        assert!(matches!(s.outcome, LoginOutcome::Failed) && s.responses.is_empty());
    }

    #[test]
    fn shared_luns_and_idle_disks_need_no_probe() {
        // A free disk: straight in.
        let mut i = bound_ini("10.0.0.5", vec![target(IQN, &[], None)]);
        done(i.send(0, 3, true, &other_leading()));
        // `isboot export`'s LUNs may be shared (not exclusive): no probe either.
        let mut i = Ini::new(false);
        i.login = Login::new(
            Arc::new(StaticRegistry(vec![in_use()])),
            TargetLimits::default(),
        )
        .from_peer("10.0.0.5".parse().unwrap());
        done(i.send(0, 3, true, &other_leading()));
    }

    #[test]
    fn discovery_only_for_a_client_at_its_own_address_with_its_secret() {
        let disc = [
            ("InitiatorName", INIT),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ];
        // From elsewhere: refused at once, 0201.
        let mut i = bound_ini("10.0.0.66", vec![target(IQN, &[], None)]);
        assert_fails(&i.send(0, 1, true, &disc), LoginStatus::AUTH_FAILED);
        assert_eq!(i.login.refusal(), Some(Refusal::NothingToDiscover));
        // Maintenance targets (unlisted) give nobody a discovery session.
        let mut maint = TargetConfig {
            iqn: IQN.into(),
            lus: Arc::new(TargetLus::new(Vec::new())),
            allowed_initiators: Vec::new(),
            chap: None,
            listed: false,
            stats: Arc::new(TargetStats::default()),
        };
        let mut i = bound_ini("10.0.0.5", vec![Arc::new(maint)]);
        assert_fails(&i.send(0, 1, true, &disc), LoginStatus::AUTH_FAILED);
        // The client's address: CHAP of its target is required (AuthMethod=None refused).
        maint = TargetConfig {
            iqn: CHAP_IQN.into(),
            lus: Arc::new(TargetLus::new(Vec::new())),
            allowed_initiators: Vec::new(),
            chap: Some(chap_cfg(false)),
            listed: true,
            stats: Arc::new(TargetStats::default()),
        };
        let mut i = bound_ini("10.0.0.5", vec![Arc::new(maint)]);
        assert_fails(&i.send(0, 1, true, &disc), LoginStatus::AUTH_FAILED);
        // Without CHAP on the target: in.
        let mut i = bound_ini("10.0.0.5", vec![target(IQN, &[], None)]);
        done(i.send(0, 3, true, &disc));
    }

    #[test]
    fn a_tsih_continues_only_its_own_initiator_and_isid() {
        struct Owned;
        impl SessionTable for Owned {
            fn new_session(&self, _: &str, _: [u8; 6], _: Option<&str>) -> u16 {
                1
            }
            fn owns(&self, tsih: u16, initiator: &str, isid: [u8; 6]) -> bool {
                tsih == 0x222 && initiator == INIT && isid == ISID
            }
        }
        for (name, tsih, want) in [
            (INIT, 0x222, true),
            ("iqn.1994-05.com.other:x", 0x222, false),
            (INIT, 0x333, false),
        ] {
            let mut login = Login::new(registry(false), TargetLimits::default());
            let mut r = Ini::new(false).req(0, 3, true, false);
            r.tsih = tsih;
            let keys = [
                ("InitiatorName", name),
                ("TargetName", IQN),
                ("AuthMethod", "None"),
            ];
            let step = login.handle(&r, &kv(&keys), &Owned);
            let ok = matches!(step.outcome, LoginOutcome::Done(_));
            assert_eq!(ok, want, "{name} {tsih:#x}");
            if !want {
                let h = &step.responses[0].0;
                assert_eq!((h.status_class, h.status_detail), (2, 0x0a));
            }
        }
    }

    #[test]
    fn existing_tsih_continues_that_session() {
        let mut i = Ini::new(false);
        i.table.existing.push(0x222);
        i.tsih = 0x222;
        let s = i.send(0, 3, true, &leading(IQN));
        assert_eq!(s.responses[0].0.tsih, 0x222);
        assert_eq!(get(&s, "TargetPortalGroupTag").as_deref(), Some("1"));
        assert_eq!(done(s).tsih, 0x222);
        assert!(i.table.created.borrow().is_empty());
    }

    // ---- Transcripts captured from real initiators against this code -----------------------

    /// Raw `key=value\0` text as captured.
    fn raw(s: &str) -> Vec<u8> {
        s.replace("\\0", "\0").into_bytes()
    }

    #[test]
    fn libiscsi_iscsi_ls_discovery_transcript() {
        // iscsi-ls (libiscsi 1.19) jumps straight to the operational stage, without AuthMethod.
        let mut i = Ini::new(false);
        let r = i.req(1, 3, true, false);
        let s = i.send_req(
            r,
            &raw(
                "InitiatorName=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls\\0\
                 SessionType=Discovery\\0HeaderDigest=None\\0DataDigest=None\\0InitialR2T=No\\0\
                 ImmediateData=Yes\\0MaxBurstLength=262144\\0FirstBurstLength=262144\\0\
                 DefaultTime2Wait=2\\0DefaultTime2Retain=0\\0MaxOutstandingR2T=1\\0\
                 ErrorRecoveryLevel=0\\0IFMarker=No\\0OFMarker=No\\0MaxConnections=1\\0\
                 MaxRecvDataSegmentLength=262144\\0DataPDUInOrder=Yes\\0DataSequenceInOrder=Yes\\0",
            ),
        );
        assert_eq!(
            s.responses[0].1,
            raw(
                "HeaderDigest=None\\0DataDigest=None\\0InitialR2T=Irrelevant\\0\
                 ImmediateData=Irrelevant\\0MaxBurstLength=Irrelevant\\0\
                 FirstBurstLength=Irrelevant\\0DefaultTime2Wait=2\\0DefaultTime2Retain=0\\0\
                 MaxOutstandingR2T=Irrelevant\\0ErrorRecoveryLevel=0\\0IFMarker=No\\0OFMarker=No\\0\
                 MaxConnections=Irrelevant\\0DataPDUInOrder=Irrelevant\\0\
                 DataSequenceInOrder=Irrelevant\\0MaxRecvDataSegmentLength=262144\\0"
            )
        );
        let p = done(s);
        assert_eq!(p.session_type, SessionType::Discovery);
        assert_eq!(p.max_xmit_dsl, 262144);
    }

    #[test]
    fn open_iscsi_discovery_profile() {
        // iscsiadm -m discovery: security stage with AuthMethod=None, then the few keys
        // relevant to discovery (open-iscsi fails on any key it did not ask about).
        let mut i = Ini::new(false);
        let s = i.send(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.1993-08.org.debian:01:abcdef"),
                ("InitiatorAlias", "host"),
                ("SessionType", "Discovery"),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(s.responses[0].1, raw("AuthMethod=None\\0"));
        let s = i.send(
            1,
            3,
            true,
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
                ("IFMarker", "No"),
                ("OFMarker", "No"),
                ("ErrorRecoveryLevel", "0"),
                ("MaxRecvDataSegmentLength", "32768"),
            ],
        );
        assert_eq!(
            s.responses[0].1,
            raw(
                "HeaderDigest=None\\0DataDigest=None\\0DefaultTime2Wait=2\\0\
                 DefaultTime2Retain=0\\0IFMarker=No\\0OFMarker=No\\0ErrorRecoveryLevel=0\\0\
                 MaxRecvDataSegmentLength=262144\\0"
            )
        );
        assert_eq!(done(s).max_xmit_dsl, 32768);
    }

    #[test]
    fn ipxe_mutual_chap_transcript() {
        // iPXE with username/password and reverse-username/reverse-password set: T is set on
        // every request, CHAP_A is sent alone, the answer carries the mutual challenge.
        let mut i = Ini::new(true);
        let s = i.send(
            0,
            1,
            true,
            &[
                (
                    "InitiatorName",
                    "iqn.2010-04.org.ipxe:00000000-0000-0000-0000-000000000000",
                ),
                ("TargetName", CHAP_IQN),
                ("SessionType", "Normal"),
                ("AuthMethod", "CHAP,None"),
            ],
        );
        assert_eq!(
            s.responses[0].1,
            raw("TargetPortalGroupTag=1\\0AuthMethod=CHAP\\0")
        );
        assert!(!s.responses[0].0.transit);
        let s = i.send(0, 1, true, &[("CHAP_A", "5")]);
        assert!(!s.responses[0].0.transit);
        let keys: Vec<String> = keys_of(&s).into_iter().map(|k| k.0).collect();
        assert_eq!(keys, ["CHAP_A", "CHAP_I", "CHAP_C"]);
        let (id, c) = chap_challenge(&s);
        let r = format!(
            "0x{}",
            hex::encode(md5_response(id, b"initiator-secret", &c))
        );
        let s = i.send(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "75"),
                ("CHAP_C", "0xa12f18b1923ed9539754859305e50c01"),
            ],
        );
        assert!(s.responses[0].0.transit);
        let want = md5_response(
            75,
            b"the-target-secret",
            &hex::decode("a12f18b1923ed9539754859305e50c01").unwrap(),
        );
        assert_eq!(
            s.responses[0].1,
            raw(&format!(
                "CHAP_N=isboot\\0CHAP_R=0x{}\\0",
                hex::encode(want)
            ))
        );
        let s = i.send(1, 3, true, IPXE_OPERATIONAL);
        let p = done(s);
        assert_eq!(p.max_xmit_dsl, 8192);
    }

    // ---- CHAP ------------------------------------------------------------------------------

    fn chap_challenge(s: &LoginStep) -> (u8, Vec<u8>) {
        let id = get(s, "CHAP_I").unwrap().parse().unwrap();
        let c = decode_binary(&get(s, "CHAP_C").unwrap(), 1024, "c").unwrap();
        (id, c)
    }

    /// Security stage up to the challenge.
    fn chap_start(i: &mut Ini) -> (u8, Vec<u8>) {
        let mut k = leading(CHAP_IQN);
        k.push(("AuthMethod", "None,CHAP"));
        let s = i.send(0, 1, true, &k);
        assert!(matches!(s.outcome, LoginOutcome::Continue));
        assert!(!s.responses[0].0.transit, "no transit before CHAP");
        assert_eq!(get(&s, "AuthMethod").as_deref(), Some("CHAP"));
        let s = i.send(0, 1, false, &[("CHAP_A", "7,5")]);
        assert_eq!(get(&s, "CHAP_A").as_deref(), Some("5"));
        let ch = chap_challenge(&s);
        assert!(ch.1.len() >= 16);
        ch
    }

    #[test]
    fn chap_one_way() {
        let mut i = Ini::new(false);
        let (id, c) = chap_start(&mut i);
        let r = encode_hex(&md5_response(id, b"initiator-secret", &c));
        let s = i.send(0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r)]);
        assert!(s.responses[0].0.transit);
        assert_eq!(status(&s), LoginStatus::SUCCESS);
        assert!(keys_of(&s).is_empty());
        let p = done(i.send(1, 3, true, IPXE_OPERATIONAL));
        assert_eq!(p.target.unwrap().iqn, CHAP_IQN);
    }

    #[test]
    fn chap_one_way_base64_response() {
        let mut i = Ini::new(false);
        let (id, c) = chap_start(&mut i);
        let r = base64::engine::general_purpose::STANDARD.encode(md5_response(
            id,
            b"initiator-secret",
            &c,
        ));
        let s = i.send(
            0,
            3,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &format!("0b{r}"))],
        );
        done(s);
    }

    #[test]
    fn chap_mutual() {
        let mut i = Ini::new(true);
        let (id, c) = chap_start(&mut i);
        let r = encode_hex(&md5_response(id, b"initiator-secret", &c));
        let my_c = [0xa5u8; 32];
        let s = i.send(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "200"),
                ("CHAP_C", &encode_hex(&my_c)),
            ],
        );
        assert!(s.responses[0].0.transit);
        assert_eq!(get(&s, "CHAP_N").as_deref(), Some("isboot"));
        let want = md5_response(200, b"the-target-secret", &my_c);
        let got = decode_binary(&get(&s, "CHAP_R").unwrap(), 16, "r").unwrap();
        assert_eq!(got, want);
        done(i.send(1, 3, true, OPEN_ISCSI_OPERATIONAL));
    }

    #[test]
    fn chap_refusals() {
        let bad_cases: Vec<CaseKeys> = vec![
            // Wrong secret.
            Box::new(|id, c| {
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    ("CHAP_R".into(), encode_hex(&md5_response(id, b"guess", c))),
                ]
            }),
            // Wrong user.
            Box::new(|id, c| {
                vec![
                    ("CHAP_N".into(), "mallory".into()),
                    (
                        "CHAP_R".into(),
                        encode_hex(&md5_response(id, b"initiator-secret", c)),
                    ),
                ]
            }),
            // Over-long CHAP_R in hex.
            Box::new(|_, _| {
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    ("CHAP_R".into(), format!("0x{}", "ab".repeat(4000))),
                ]
            }),
            // Over-long CHAP_R in base64.
            Box::new(|_, _| {
                let b = base64::engine::general_purpose::STANDARD.encode([7u8; 3000]);
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    ("CHAP_R".into(), format!("0b{b}")),
                ]
            }),
            // Short CHAP_R, garbage CHAP_R.
            Box::new(|_, _| {
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    ("CHAP_R".into(), "0x00".into()),
                ]
            }),
            Box::new(|_, _| {
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    ("CHAP_R".into(), "hello".into()),
                ]
            }),
            // Missing CHAP_N.
            Box::new(|id, c| {
                vec![(
                    "CHAP_R".into(),
                    encode_hex(&md5_response(id, b"initiator-secret", c)),
                )]
            }),
            // CHAP_C over 1024 bytes (mutual), with a correct response.
            Box::new(|id, c| {
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    (
                        "CHAP_R".into(),
                        encode_hex(&md5_response(id, b"initiator-secret", c)),
                    ),
                    ("CHAP_I".into(), "1".into()),
                    ("CHAP_C".into(), format!("0x{}", "11".repeat(1025))),
                ]
            }),
            // Reflection: our own challenge sent back.
            Box::new(|id, c| {
                vec![
                    ("CHAP_N".into(), "alice".into()),
                    (
                        "CHAP_R".into(),
                        encode_hex(&md5_response(id, b"initiator-secret", c)),
                    ),
                    ("CHAP_I".into(), id.to_string()),
                    ("CHAP_C".into(), encode_hex(c)),
                ]
            }),
        ];
        for (n, case) in bad_cases.iter().enumerate() {
            let mut i = Ini::new(true);
            let (id, c) = chap_start(&mut i);
            let keys = case(id, &c);
            let k: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let s = i.send(0, 1, true, &k);
            assert_eq!(status(&s), LoginStatus::AUTH_FAILED, "case {n}");
            assert!(matches!(s.outcome, LoginOutcome::Failed), "case {n}");
        }
    }

    #[test]
    fn chap_mutual_without_mutual_secret_is_refused() {
        let mut i = Ini::new(false);
        let (id, c) = chap_start(&mut i);
        let r = encode_hex(&md5_response(id, b"initiator-secret", &c));
        let s = i.send(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "3"),
                ("CHAP_C", "0x0102030405060708"),
            ],
        );
        assert_fails(&s, LoginStatus::AUTH_FAILED);
    }

    #[test]
    fn chap_required_but_skipped() {
        // AuthMethod=None only.
        let mut i = Ini::new(false);
        let mut k = leading(CHAP_IQN);
        k.push(("AuthMethod", "None"));
        assert_fails(&i.send(0, 1, true, &k), LoginStatus::AUTH_FAILED);
        // No AuthMethod at all, straight to the operational stage.
        let mut i = Ini::new(false);
        assert_fails(
            &i.send(0, 1, true, &leading(CHAP_IQN)),
            LoginStatus::AUTH_FAILED,
        );
        // First PDU already in the operational stage.
        let mut i = Ini::new(false);
        assert_fails(
            &i.send(1, 3, true, &leading(CHAP_IQN)),
            LoginStatus::AUTH_FAILED,
        );
        // Challenge received, then an attempt to leave without answering it.
        let mut i = Ini::new(false);
        chap_start(&mut i);
        assert_fails(&i.send(0, 1, true, &[]), LoginStatus::AUTH_FAILED);
    }

    #[test]
    fn chap_unsupported_algorithm() {
        let mut i = Ini::new(false);
        let mut k = leading(CHAP_IQN);
        k.push(("AuthMethod", "CHAP"));
        i.send(0, 1, false, &k);
        assert_fails(
            &i.send(0, 1, false, &[("CHAP_A", "6,7,0x80")]),
            LoginStatus::AUTH_FAILED,
        );
        // CHAP offered to a target that does not use it.
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.push(("AuthMethod", "CHAP"));
        assert_fails(&i.send(0, 1, true, &k), LoginStatus::AUTH_FAILED);
    }

    // ---- Refusals -------------------------------------------------------------------------

    #[test]
    fn refusals_with_status() {
        let cases: Vec<(Vec<(&str, &str)>, LoginStatus)> = vec![
            // Unknown target and a name the target does not allow: one answer (0201).
            (
                leading("iqn.2026-11.org.isboot:nope"),
                LoginStatus::AUTH_FAILED,
            ),
            (leading(SECRET_IQN), LoginStatus::AUTH_FAILED),
            (
                vec![("TargetName", IQN), ("AuthMethod", "None")],
                LoginStatus::MISSING_PARAMETER,
            ),
            (
                vec![("InitiatorName", INIT), ("AuthMethod", "None")],
                LoginStatus::MISSING_PARAMETER,
            ),
            (
                vec![
                    ("InitiatorName", INIT),
                    ("TargetName", IQN),
                    ("SessionType", "Sideways"),
                ],
                LoginStatus::SESSION_TYPE_UNSUPPORTED,
            ),
        ];
        for (k, want) in cases {
            let mut i = Ini::new(false);
            assert_fails(&i.send(0, 1, true, &k), want);
        }
    }

    #[test]
    fn unsupported_version() {
        let mut i = Ini::new(false);
        let mut r = i.req(0, 1, true, false);
        r.version_max = 2;
        r.version_min = 1;
        let s = i.send_req(r, &kv(&leading(IQN)));
        assert_fails(&s, LoginStatus::UNSUPPORTED_VERSION);
    }

    #[test]
    fn nonzero_tsih_without_session() {
        let mut i = Ini::new(false);
        i.tsih = 0x4242;
        assert_fails(
            &i.send(0, 1, true, &leading(IQN)),
            LoginStatus::SESSION_DOES_NOT_EXIST,
        );
    }

    #[test]
    fn transit_and_continue_both_set() {
        let mut i = Ini::new(false);
        let r = i.req(0, 1, true, true);
        let s = i.send_req(r, &kv(&leading(IQN)));
        assert_fails(&s, LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn out_of_order_stages() {
        // Back to security after moving to operational.
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        assert_fails(
            &i.send(0, 1, true, &[("AuthMethod", "None")]),
            LoginStatus::INITIATOR_ERROR,
        );
        // Operational keys before the transition was granted.
        let mut i = Ini::new(false);
        i.send(0, 1, false, &leading(IQN));
        assert_fails(
            &i.send(1, 3, true, IPXE_OPERATIONAL),
            LoginStatus::INITIATOR_ERROR,
        );
        // Reserved stage 2, transit backwards, first PDU claiming full feature phase.
        let mut i = Ini::new(false);
        assert_fails(
            &i.send(0, 2, true, &leading(IQN)),
            LoginStatus::INITIATOR_ERROR,
        );
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        assert_fails(&i.send(1, 0, true, &[]), LoginStatus::INITIATOR_ERROR);
        let mut i = Ini::new(false);
        assert_fails(
            &i.send(3, 3, true, &leading(IQN)),
            LoginStatus::INITIATOR_ERROR,
        );
        // Security keys in the operational stage.
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        assert_fails(
            &i.send(1, 3, true, &[("AuthMethod", "None")]),
            LoginStatus::INITIATOR_ERROR,
        );
    }

    #[test]
    fn identity_must_not_change() {
        let mut i = Ini::new(false);
        i.send(0, 1, false, &leading(IQN));
        let mut r = i.req(0, 1, true, false);
        r.isid[5] = 9;
        assert_fails(&i.send_req(r, &[]), LoginStatus::INITIATOR_ERROR);
        let mut i = Ini::new(false);
        i.send(0, 1, false, &leading(IQN));
        let mut r = i.req(0, 1, true, false);
        r.cid = 2;
        assert_fails(&i.send_req(r, &[]), LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn bad_text() {
        let mut i = Ini::new(false);
        let r = i.req(0, 1, true, false);
        let s = i.send_req(r, b"InitiatorName\0");
        assert_fails(&s, LoginStatus::INITIATOR_ERROR);
        // Key over 63 bytes.
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        let long_key = "K".repeat(64);
        k.push((&long_key, "1"));
        assert_fails(&i.send(0, 1, true, &k), LoginStatus::INITIATOR_ERROR);
        // A key twice in one request.
        let mut i = Ini::new(false);
        let mut k = leading(IQN);
        k.push(("AuthMethod", "None"));
        k.push(("AuthMethod", "None"));
        assert_fails(&i.send(0, 1, true, &k), LoginStatus::INITIATOR_ERROR);
        // Over-long names.
        let long_name = format!("iqn.2026-11.org.x:{}", "a".repeat(224));
        let mut i = Ini::new(false);
        let k = vec![("InitiatorName", long_name.as_str()), ("TargetName", IQN)];
        assert_fails(&i.send(0, 1, true, &k), LoginStatus::INITIATOR_ERROR);
        let mut i = Ini::new(false);
        let k = vec![("InitiatorName", INIT), ("TargetName", long_name.as_str())];
        assert_fails(&i.send(0, 1, true, &k), LoginStatus::INITIATOR_ERROR);
        // A leading key changed later.
        let mut i = Ini::new(false);
        i.send(0, 1, false, &leading(IQN));
        assert_fails(
            &i.send(0, 1, true, &[("InitiatorName", "iqn.2000-01.other:x")]),
            LoginStatus::INITIATOR_ERROR,
        );
    }

    #[test]
    fn value_over_255_is_rejected() {
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        let long = "9".repeat(256);
        let s = i.send(
            1,
            3,
            true,
            &[("MaxBurstLength", &long), ("HeaderDigest", &long)],
        );
        assert_eq!(get(&s, "MaxBurstLength").as_deref(), Some("Reject"));
        assert_eq!(get(&s, "HeaderDigest").as_deref(), Some("Reject"));
        let p = done(s);
        assert_eq!(p.max_burst_length, 262144);
    }

    #[test]
    fn first_burst_over_max_burst() {
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        let s = i.send(
            1,
            3,
            true,
            &[("MaxBurstLength", "65536"), ("FirstBurstLength", "262144")],
        );
        assert_fails(&s, LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn thousands_of_tiny_unknown_keys_get_a_bounded_split_answer() {
        split_answer(true);
        split_answer(false);
    }

    /// 2,048 unknown keys; the pieces of our answer fetched with T set or clear.
    fn split_answer(fetch_with_transit: bool) {
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        let names: Vec<String> = (0..2048).map(|n| format!("k{n}")).collect();
        let k: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let mut s = i.send(1, 3, true, &k);
        let mut text_back = Vec::new();
        let mut pieces = 0;
        loop {
            pieces += 1;
            assert!(pieces < 64);
            assert_eq!(s.responses.len(), 1);
            let (r, d) = s.responses[0].clone();
            text_back.extend_from_slice(&d);
            if r.cont {
                assert!(!r.transit);
                assert_eq!(d.len(), LOGIN_MAX_DATA as usize);
                assert!(matches!(s.outcome, LoginOutcome::Continue));
                s = i.send(1, 3, fetch_with_transit, &[]);
            } else {
                break;
            }
        }
        assert!(pieces > 1);
        if !fetch_with_transit {
            // No T in the request that fetched the last piece: no T in the answer either;
            // the initiator asks again to finish.
            assert!(!s.responses[0].0.transit);
            assert!(matches!(s.outcome, LoginOutcome::Continue));
            s = i.send(1, 3, true, &[]);
            assert!(s.responses[0].0.transit);
        }
        let back = text::parse(&text_back).unwrap();
        assert_eq!(
            back.iter().filter(|p| p.value == "NotUnderstood").count(),
            2048
        );
        assert!(back.iter().any(|p| p.key == "MaxRecvDataSegmentLength"));
        done(s);
    }

    #[test]
    fn data_during_our_continuation_is_refused() {
        let mut i = Ini::new(false);
        i.send(0, 1, true, &leading(IQN));
        let names: Vec<String> = (0..2048).map(|n| format!("k{n}")).collect();
        let k: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let s = i.send(1, 3, true, &k);
        assert!(s.responses[0].0.cont);
        assert_fails(
            &i.send(1, 3, true, &[("X-more", "1")]),
            LoginStatus::INITIATOR_ERROR,
        );
    }

    #[test]
    fn accumulated_text_past_the_cap() {
        let mut i = Ini::new(false);
        let chunk = vec![b'a'; 8192];
        let mut last = None;
        for _ in 0..(MAX_TEXT_LEN / 8192 + 1) {
            let r = i.req(0, 1, false, true);
            let s = i.send_req(r, &chunk);
            let failed = matches!(s.outcome, LoginOutcome::Failed);
            last = Some(s);
            if failed {
                break;
            }
        }
        assert_fails(&last.unwrap(), LoginStatus::INITIATOR_ERROR);
    }

    #[test]
    fn requests_after_the_end_are_refused() {
        let mut i = Ini::new(false);
        done(i.send(0, 3, true, &leading(IQN)));
        assert_fails(&i.send(1, 3, true, &[]), LoginStatus::INITIATOR_ERROR);
        let mut i = Ini::new(false);
        assert_fails(
            &i.send(0, 1, true, &leading("iqn.x:none")),
            LoginStatus::AUTH_FAILED,
        );
        assert_fails(
            &i.send(0, 1, true, &leading(IQN)),
            LoginStatus::INITIATOR_ERROR,
        );
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let mut i = Ini::new(true);
        let (id, c) = chap_start(&mut i);
        let r = encode_hex(&md5_response(id, b"initiator-secret", &c));
        i.send(0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r)]);
        let s = i.send(1, 3, true, IPXE_OPERATIONAL);
        let dbg = format!("{:?} {:?}", i.login, s);
        assert!(!dbg.contains("initiator-secret") && !dbg.contains("the-target-secret"));
        assert!(!dbg.contains("105, 110, 105"), "secret bytes leaked: {dbg}");
    }
}

#[cfg(test)]
mod hostile {
    //! Scripted hostile initiators: random headers and random (partly plausible) text. The
    //! machine must never panic and must keep its invariants.
    use super::*;
    use crate::iscsi::target::{ChapConfig, StaticRegistry, TargetStats};
    use crate::scsi::TargetLus;
    use proptest::prelude::*;

    struct Table;
    impl SessionTable for Table {
        fn new_session(&self, _: &str, _: [u8; 6], _: Option<&str>) -> u16 {
            7
        }
        fn owns(&self, tsih: u16, _: &str, _: [u8; 6]) -> bool {
            tsih == 0x222
        }
    }

    const KEYS: &[&str] = &[
        "InitiatorName",
        "TargetName",
        "SessionType",
        "AuthMethod",
        "CHAP_A",
        "CHAP_N",
        "CHAP_R",
        "CHAP_I",
        "CHAP_C",
        "HeaderDigest",
        "MaxRecvDataSegmentLength",
        "FirstBurstLength",
        "MaxBurstLength",
        "InitialR2T",
        "ErrorRecoveryLevel",
        "X-vendor",
        "TargetAddress",
    ];
    const VALUES: &[&str] = &[
        "iqn.2010-04.org.ipxe:client",
        "iqn.2026-11.org.isboot:disk",
        "iqn.2026-11.org.isboot:chap",
        "Normal",
        "Discovery",
        "None",
        "CHAP,None",
        "5",
        "0x00ff",
        "0b",
        "0bAAAA",
        "",
        "4096",
        "99999999999",
        "Yes",
        "CRC32C,None",
        "0x0123456789abcdef0123456789abcdef",
    ];

    fn registry() -> Arc<dyn TargetRegistry> {
        let t = |iqn: &str, chap: Option<ChapConfig>| {
            Arc::new(TargetConfig {
                iqn: iqn.into(),
                lus: Arc::new(TargetLus::new(Vec::new())),
                allowed_initiators: Vec::new(),
                chap,
                listed: true,
                stats: Arc::new(TargetStats::default()),
            })
        };
        Arc::new(StaticRegistry(vec![
            t("iqn.2026-11.org.isboot:disk", None),
            t(
                "iqn.2026-11.org.isboot:chap",
                Some(ChapConfig {
                    user: "u".into(),
                    secret: b"0123456789ab".to_vec(),
                    mutual: None,
                }),
            ),
        ]))
    }

    #[derive(Debug, Clone)]
    struct Pdu {
        transit: bool,
        cont: bool,
        csg: u8,
        nsg: u8,
        version_min: u8,
        tsih: u16,
        data: Vec<u8>,
    }

    fn data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..10).prop_map(|kv| {
                let mut out = Vec::new();
                for (k, v) in kv {
                    text::push(&mut out, KEYS[k], VALUES[v]);
                }
                out
            }),
        ]
    }

    fn pdu() -> impl Strategy<Value = Pdu> {
        (
            any::<bool>(),
            prop::bool::weighted(0.1),
            0u8..4,
            0u8..4,
            prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
            prop_oneof![9 => Just(0u16), 1 => Just(0x222u16), 1 => any::<u16>()],
            data(),
        )
            .prop_map(|(transit, cont, csg, nsg, version_min, tsih, data)| Pdu {
                transit,
                cont,
                csg,
                nsg,
                version_min,
                tsih,
                data,
            })
    }

    /// Log in with `keys` sent at once, or cut at `cuts` into C-bit pieces.
    fn login_cut(keys: &[u8], cuts: &[usize]) -> Option<String> {
        let mut login = Login::new(registry(), TargetLimits::default());
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (keys.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        points.push(keys.len());
        let mut from = 0;
        let n = points.len();
        for (i, to) in points.into_iter().enumerate() {
            let last = i + 1 == n;
            let req = LoginRequest {
                transit: last,
                cont: !last,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_min: 0,
                isid: [1, 2, 3, 4, 5, 6],
                tsih: 0,
                itt: 9,
                cid: 0,
                cmd_sn: 100,
                exp_stat_sn: 50,
            };
            let step = login.handle(&req, &keys[from..to], &Table);
            from = to;
            match step.outcome {
                LoginOutcome::Done(p) => {
                    // StatSN depends on the number of PDUs; everything else must not.
                    let p = SessionParams { stat_sn: 0, ..p };
                    return Some(format!("{p:?}"));
                }
                LoginOutcome::Failed => return None,
                LoginOutcome::Continue => {}
                // Shared LUNs (this registry) are never probed.
                LoginOutcome::Probe(_) => return None,
            }
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn cutting_the_text_into_pieces_changes_nothing(
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            immediate in any::<bool>(),
        ) {
            let mut keys = Vec::new();
            for (k, v) in [
                ("InitiatorName", "iqn.2010-04.org.ipxe:client"),
                ("TargetName", "iqn.2026-11.org.isboot:disk"),
                ("ImmediateData", if immediate { "Yes" } else { "No" }),
                ("MaxRecvDataSegmentLength", "65536"),
                ("MaxBurstLength", "1048576"),
                ("HeaderDigest", "CRC32C,None"),
            ] {
                text::push(&mut keys, k, v);
            }
            let whole = login_cut(&keys, &[]);
            prop_assert!(whole.is_some());
            prop_assert_eq!(login_cut(&keys, &cuts), whole);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_and_keeps_invariants(script in prop::collection::vec(pdu(), 1..12)) {
            let mut login = Login::new(registry(), TargetLimits::default());
            let mut next_stat_sn: Option<u32> = None;
            let mut over = false;
            for p in script {
                let req = LoginRequest {
                    transit: p.transit,
                    cont: p.cont,
                    csg: p.csg,
                    nsg: p.nsg,
                    version_max: 0,
                    version_min: p.version_min,
                    isid: [1, 2, 3, 4, 5, 6],
                    tsih: p.tsih,
                    itt: 9,
                    cid: 0,
                    cmd_sn: 100,
                    exp_stat_sn: 50,
                };
                let step = login.handle(&req, &p.data, &Table);
                prop_assert!(!step.responses.is_empty());
                for (r, d) in &step.responses {
                    prop_assert!(d.len() <= LOGIN_MAX_DATA as usize);
                    prop_assert!(!(r.transit && r.cont));
                    if let Some(n) = next_stat_sn {
                        prop_assert_eq!(r.stat_sn, n);
                    }
                    next_stat_sn = Some(r.stat_sn.wrapping_add(1));
                    if r.transit {
                        prop_assert!(r.nsg == 1 || r.nsg == 3);
                    }
                }
                match step.outcome {
                    LoginOutcome::Failed => {
                        let r = &step.responses[0].0;
                        prop_assert!(r.status_class != 0);
                        over = true;
                    }
                    LoginOutcome::Done(ref s) => {
                        prop_assert!(!over);
                        prop_assert!(s.first_burst_length <= s.max_burst_length);
                        prop_assert!(s.max_recv_dsl >= 512 && s.max_xmit_dsl >= 512);
                        if s.session_type == SessionType::Normal {
                            prop_assert!(s.target.is_some());
                        }
                        over = true;
                    }
                    LoginOutcome::Continue => prop_assert!(!over),
                    LoginOutcome::Probe(_) => prop_assert!(false, "shared LUNs are never probed"),
                }
            }
        }
    }
}
