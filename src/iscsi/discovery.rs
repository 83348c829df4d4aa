//! Text requests in full feature phase (RFC 7143 §6, §11.10, §11.11), sans-IO: SendTargets
//! (Discovery and Normal sessions, §13.3 and Appendix C) and NotUnderstood for the rest.
//!
//! ```text
//!  I: Text Request  F=1 ITT=x TTT=ffffffff  "SendTargets=All"
//!  T: Text Response F=0 C=1 TTT=t           first MaxRecvDataSegmentLength bytes
//!  I: Text Request  F=1 ITT=x TTT=t         (empty: "go on")
//!  T: Text Response F=1 C=0 TTT=ffffffff    the rest
//! ```
//! The initiator's own text may also arrive in pieces (C bit): each piece is answered with an
//! empty response carrying a TTT, and the joined text (at most [`MAX_TEXT_LEN`]) is answered
//! once complete. A request with the reserved TTT starts over and drops any exchange left
//! unfinished.

use super::login::SessionParams;
use super::negotiate::{NOT_UNDERSTOOD, SessionType};
use super::target::{TargetConfig, TargetRegistry};
use crate::wire::pdu::{RESERVED_TAG, TextRequest, TextResponse, reject_reason};
use crate::wire::text::{self, MAX_TEXT_LEN};
use std::collections::HashSet;
use std::sync::Arc;

/// Most text we answer to one request (SendTargets of a large registry stops here, on a
/// target boundary).
pub const MAX_TEXT_RESPONSE: usize = 1024 * 1024;

/// The `TargetName=...\0TargetAddress=...\0` records of the targets `initiator` may use.
///
/// `value` is `All` for every allowed target or a target name for that one target (nothing
/// when it does not exist or is not allowed). `portal` is `address:port,tpgt` (IPv6
/// addresses in brackets).
pub fn send_targets(
    registry: &dyn TargetRegistry,
    initiator: &str,
    value: &str,
    portal: &str,
) -> Vec<u8> {
    let targets: Vec<Arc<TargetConfig>> = if value == "All" {
        registry.all()
    } else {
        registry.lookup(value).into_iter().collect()
    };
    records(targets.iter(), initiator, portal)
}

fn records<'a>(
    targets: impl Iterator<Item = &'a Arc<TargetConfig>>,
    initiator: &str,
    portal: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    for t in targets.filter(|t| t.allows(initiator)) {
        let mut rec = Vec::new();
        text::push(&mut rec, "TargetName", &t.iqn);
        text::push(&mut rec, "TargetAddress", portal);
        if out.len() + rec.len() > MAX_TEXT_RESPONSE {
            tracing::warn!(
                initiator,
                "SendTargets answer truncated at {MAX_TEXT_RESPONSE} bytes"
            );
            break;
        }
        out.extend_from_slice(&rec);
    }
    out
}

/// Sequence numbers the session puts in a Text Response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextSn {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// What to do with one Text Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextStep {
    /// Send this Text Response (it consumes the StatSN given).
    Respond(TextResponse, Vec<u8>),
    /// Send a Reject PDU with this reason (`wire::pdu::reject_reason`); no StatSN consumed.
    Reject(u8),
}

struct PendingAnswer {
    itt: u32,
    ttt: u32,
    data: Vec<u8>,
    sent: usize,
    final_: bool,
}

/// The text exchanges of one session.
pub struct TextExchange {
    registry: Arc<dyn TargetRegistry>,
    session_type: SessionType,
    initiator: String,
    target: Option<Arc<TargetConfig>>,
    portal: String,
    max_xmit: usize,
    /// Initiator text arriving with the C bit: (ITT, TTT we gave, bytes so far).
    rx: Option<(u32, u32, Vec<u8>)>,
    pending: Option<PendingAnswer>,
    next_ttt: u32,
}

impl TextExchange {
    /// `portal` is what SendTargets reports as TargetAddress: `address:port,tpgt`.
    pub fn new(
        registry: Arc<dyn TargetRegistry>,
        params: &SessionParams,
        portal: impl Into<String>,
    ) -> TextExchange {
        TextExchange {
            registry,
            session_type: params.session_type,
            initiator: params.initiator_name.clone(),
            target: params.target.clone(),
            portal: portal.into(),
            max_xmit: params.max_xmit_dsl.max(512) as usize,
            rx: None,
            pending: None,
            next_ttt: 1,
        }
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Handle one Text Request and its data segment.
    pub fn handle(&mut self, req: &TextRequest, data: &[u8], sn: TextSn) -> TextStep {
        let mut resp = TextResponse {
            final_: false,
            cont: false,
            lun: req.lun,
            itt: req.itt,
            ttt: RESERVED_TAG,
            stat_sn: sn.stat_sn,
            exp_cmd_sn: sn.exp_cmd_sn,
            max_cmd_sn: sn.max_cmd_sn,
        };
        if req.final_ && req.cont {
            return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        }
        let mut text = Vec::new();
        if req.ttt != RESERVED_TAG {
            // Continuing our answer?
            if let Some(p) = &self.pending
                && p.itt == req.itt
                && p.ttt == req.ttt
            {
                if req.cont || !data.is_empty() {
                    self.pending = None;
                    return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
                }
                return self.next_piece(resp);
            }
            // Continuing the initiator's text?
            match self.rx.take() {
                Some((itt, ttt, buf)) if itt == req.itt && ttt == req.ttt => text = buf,
                _ => return TextStep::Reject(reject_reason::INVALID_PDU_FIELD),
            }
        } else {
            // A new exchange resets anything unfinished.
            self.pending = None;
            self.rx = None;
        }
        if text.len() + data.len() > MAX_TEXT_LEN {
            return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        }
        text.extend_from_slice(data);
        if req.cont {
            let ttt = self.new_ttt();
            self.rx = Some((req.itt, ttt, text));
            resp.ttt = ttt;
            return TextStep::Respond(resp, Vec::new());
        }
        let Ok(pairs) = text::parse(&text) else {
            return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        };
        let mut seen = HashSet::new();
        if !pairs.iter().all(|p| seen.insert(p.key.as_str())) {
            return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        }
        let mut out = Vec::new();
        for p in &pairs {
            if p.key == "SendTargets" {
                out.extend(self.send_targets(&p.value));
            } else {
                text::push(&mut out, &p.key, NOT_UNDERSTOOD);
            }
            if out.len() > MAX_TEXT_RESPONSE {
                return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
            }
        }
        let ttt = self.new_ttt();
        self.pending = Some(PendingAnswer {
            itt: req.itt,
            ttt,
            data: out,
            sent: 0,
            final_: req.final_,
        });
        self.next_piece(resp)
    }

    fn send_targets(&self, value: &str) -> Vec<u8> {
        match (self.session_type, value) {
            // Normal session: no value = this session's target (RFC 7143 §13.3).
            (SessionType::Normal, "") => records(self.target.iter(), &self.initiator, &self.portal),
            (SessionType::Discovery, "") => Vec::new(),
            _ => send_targets(&*self.registry, &self.initiator, value, &self.portal),
        }
    }

    fn next_piece(&mut self, mut resp: TextResponse) -> TextStep {
        let Some(mut p) = self.pending.take() else {
            return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        };
        let end = (p.sent + self.max_xmit).min(p.data.len());
        let piece = p.data[p.sent..end].to_vec();
        if end < p.data.len() {
            p.sent = end;
            resp.cont = true;
            resp.ttt = p.ttt;
            self.pending = Some(p);
        } else if p.final_ {
            resp.final_ = true;
        } else {
            // The initiator wants to go on negotiating: keep a TTT for it.
            resp.ttt = p.ttt;
        }
        TextStep::Respond(resp, piece)
    }
}
