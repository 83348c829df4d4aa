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
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Most text we answer to one request (SendTargets of a large registry stops here, on a
/// target boundary).
pub const MAX_TEXT_RESPONSE: usize = 1024 * 1024;

/// The `TargetName=...\0TargetAddress=...\0` records of the targets `initiator` may use.
///
/// `value` is `All` for every allowed target or a target name for that one target (nothing
/// when it does not exist or is not allowed). `portal` is `address:port,tpgt` (IPv6
/// addresses in brackets).
///
/// Only targets bound to `peer`'s address are listed (see [`super::access::Binding`]), and
/// `All` never lists maintenance targets.
pub fn send_targets(
    registry: &dyn TargetRegistry,
    peer: Option<IpAddr>,
    initiator: &str,
    value: &str,
    portal: &str,
) -> Vec<u8> {
    let targets: Vec<Arc<TargetConfig>> = if value == "All" {
        registry.all().into_iter().filter(|t| t.listed).collect()
    } else {
        registry.lookup(value).into_iter().collect()
    };
    let mine: Vec<Arc<TargetConfig>> = targets
        .into_iter()
        .filter(|t| registry.binding(&t.iqn).allows(peer))
        .collect();
    records(mine.iter(), initiator, portal)
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

/// The `TargetAddress` value for a portal: `address:port,tpgt`, IPv6 in brackets (RFC 7143
/// §13.8). Pass the address the initiator connected to (the socket's local address).
pub fn portal(addr: SocketAddr, target_portal_group_tag: u16) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        },
    };
    format!("{ip}:{},{target_portal_group_tag}", addr.port())
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
            _ => send_targets(&*self.registry, None, &self.initiator, value, &self.portal),
        }
    }

    fn next_piece(&mut self, mut resp: TextResponse) -> TextStep {
        let Some(mut p) = self.pending.take() else {
            return TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        };
        let end = (p.sent + self.max_xmit).min(p.data.len());
        let piece = p.data.get(p.sent..end).unwrap_or_default().to_vec();
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

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::iscsi::negotiate::TargetLimits;
    use crate::iscsi::target::{StaticRegistry, TargetStats};
    use crate::scsi::TargetLus;

    pub const INIT: &str = "iqn.2010-04.org.ipxe:client";
    pub const PORTAL: &str = "10.0.2.2:3260,1";

    pub fn target(iqn: &str, allowed: &[&str]) -> Arc<TargetConfig> {
        Arc::new(TargetConfig {
            iqn: iqn.into(),
            lus: Arc::new(TargetLus::new(Vec::new())),
            allowed_initiators: allowed.iter().map(|s| s.to_string()).collect(),
            chap: None,
            listed: true,
            stats: Arc::new(TargetStats::default()),
        })
    }

    pub fn registry(extra: usize) -> Arc<dyn TargetRegistry> {
        let mut v = vec![
            target("iqn.2026-11.org.isboot:a", &[]),
            target("iqn.2026-11.org.isboot:mine", &[INIT]),
            target(
                "iqn.2026-11.org.isboot:theirs",
                &["iqn.1994-05.com.other:x"],
            ),
        ];
        for n in 0..extra {
            v.push(target(&format!("iqn.2026-11.org.isboot:bulk-{n:05}"), &[]));
        }
        Arc::new(StaticRegistry(v))
    }

    pub fn params(t: SessionType, target: Option<Arc<TargetConfig>>, xmit: u32) -> SessionParams {
        let l = TargetLimits::default();
        SessionParams {
            session_type: t,
            initiator_name: INIT.into(),
            initiator_alias: None,
            target,
            isid: [0; 6],
            tsih: 1,
            cid: 0,
            header_digest: false,
            data_digest: false,
            max_recv_dsl: l.max_recv_data_segment_length,
            max_xmit_dsl: xmit,
            max_burst_length: 262144,
            first_burst_length: 65536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
            exp_cmd_sn: 1,
            stat_sn: 1,
        }
    }

    pub fn req(itt: u32, ttt: u32, final_: bool, cont: bool) -> TextRequest {
        TextRequest {
            immediate: true,
            final_,
            cont,
            lun: 0,
            itt,
            ttt,
            cmd_sn: 1,
            exp_stat_sn: 1,
        }
    }

    pub const SN: TextSn = TextSn {
        stat_sn: 5,
        exp_cmd_sn: 2,
        max_cmd_sn: 130,
    };
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    fn pairs(d: &[u8]) -> Vec<(String, String)> {
        text::parse(d)
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect()
    }

    #[test]
    fn send_targets_filters_by_initiator() {
        let r = registry(0);
        let all = pairs(&send_targets(&*r, None, INIT, "All", PORTAL));
        assert_eq!(
            all,
            vec![
                ("TargetName".into(), "iqn.2026-11.org.isboot:a".into()),
                ("TargetAddress".into(), PORTAL.into()),
                ("TargetName".into(), "iqn.2026-11.org.isboot:mine".into()),
                ("TargetAddress".into(), PORTAL.into()),
            ]
        );
        let one = pairs(&send_targets(
            &*r,
            None,
            INIT,
            "iqn.2026-11.org.isboot:MINE",
            PORTAL,
        ));
        assert_eq!(one.len(), 2);
        assert!(send_targets(&*r, None, INIT, "iqn.2026-11.org.isboot:theirs", PORTAL).is_empty());
        assert!(send_targets(&*r, None, INIT, "iqn.2026-11.org.isboot:none", PORTAL).is_empty());
        let other = pairs(&send_targets(
            &*r,
            None,
            "iqn.1994-05.com.other:x",
            "All",
            PORTAL,
        ));
        assert_eq!(other.len(), 4);
        assert!(other.iter().any(|p| p.1 == "iqn.2026-11.org.isboot:theirs"));
    }

    #[test]
    fn portal_strings() {
        assert_eq!(
            portal("10.0.2.2:3260".parse().unwrap(), 1),
            "10.0.2.2:3260,1"
        );
        assert_eq!(
            portal("[fe80::1]:3261".parse().unwrap(), 2),
            "[fe80::1]:3261,2"
        );
        assert_eq!(
            portal("[::ffff:192.168.1.5]:3260".parse().unwrap(), 1),
            "192.168.1.5:3260,1"
        );
    }

    #[test]
    fn discovery_send_targets_all_in_one_response() {
        let r = registry(0);
        let mut x = TextExchange::new(r, &params(SessionType::Discovery, None, 8192), PORTAL);
        let step = x.handle(&req(9, RESERVED_TAG, true, false), b"SendTargets=All\0", SN);
        let TextStep::Respond(resp, data) = step else {
            panic!("{step:?}")
        };
        assert!(resp.final_ && !resp.cont);
        assert_eq!(resp.ttt, RESERVED_TAG);
        assert_eq!((resp.itt, resp.stat_sn, resp.max_cmd_sn), (9, 5, 130));
        assert_eq!(pairs(&data).len(), 4);
    }

    #[test]
    fn long_answer_is_split_by_max_xmit() {
        let r = registry(100);
        let mut x = TextExchange::new(r, &params(SessionType::Discovery, None, 512), PORTAL);
        let mut step = x.handle(&req(3, RESERVED_TAG, true, false), b"SendTargets=All\0", SN);
        let mut all = Vec::new();
        let mut n = 0;
        loop {
            n += 1;
            assert!(n < 1000);
            let TextStep::Respond(resp, data) = step else {
                panic!("{step:?}")
            };
            assert!(data.len() <= 512);
            all.extend_from_slice(&data);
            if resp.final_ {
                assert!(!resp.cont);
                assert_eq!(resp.ttt, RESERVED_TAG);
                break;
            }
            assert!(resp.cont);
            assert_ne!(resp.ttt, RESERVED_TAG);
            step = x.handle(&req(3, resp.ttt, true, false), b"", SN);
        }
        assert!(n > 2);
        assert_eq!(pairs(&all).len(), 2 * 102);
        // The exchange is over: its TTT is no longer valid.
        assert_eq!(
            x.handle(&req(3, 1, true, false), b"", SN),
            TextStep::Reject(reject_reason::INVALID_PDU_FIELD)
        );
    }

    #[test]
    fn continued_request_and_unknown_keys() {
        let r = registry(0);
        let t = r.lookup("iqn.2026-11.org.isboot:a");
        let mut x = TextExchange::new(r, &params(SessionType::Normal, t, 8192), PORTAL);
        let body = b"X-com.example=1\0SendTargets=\0";
        let TextStep::Respond(resp, data) =
            x.handle(&req(4, RESERVED_TAG, false, true), &body[..7], SN)
        else {
            panic!()
        };
        assert!(data.is_empty() && !resp.final_);
        assert_ne!(resp.ttt, RESERVED_TAG);
        let TextStep::Respond(resp, data) =
            x.handle(&req(4, resp.ttt, true, false), &body[7..], SN)
        else {
            panic!()
        };
        assert!(resp.final_);
        assert_eq!(
            pairs(&data),
            vec![
                ("X-com.example".into(), "NotUnderstood".into()),
                ("TargetName".into(), "iqn.2026-11.org.isboot:a".into()),
                ("TargetAddress".into(), PORTAL.into()),
            ]
        );
    }

    #[test]
    fn bad_requests_are_rejected() {
        let r = registry(0);
        let mut x = TextExchange::new(r, &params(SessionType::Discovery, None, 8192), PORTAL);
        let rej = TextStep::Reject(reject_reason::PROTOCOL_ERROR);
        assert_eq!(x.handle(&req(1, RESERVED_TAG, true, true), b"", SN), rej);
        assert_eq!(
            x.handle(&req(1, RESERVED_TAG, true, false), b"nokey\0", SN),
            rej
        );
        assert_eq!(
            x.handle(&req(1, RESERVED_TAG, true, false), b"A=1\0A=2\0", SN),
            rej
        );
        assert_eq!(
            x.handle(&req(1, 77, true, false), b"", SN),
            TextStep::Reject(reject_reason::INVALID_PDU_FIELD)
        );
        // Text joined past the cap.
        let mut step = x.handle(&req(2, RESERVED_TAG, false, true), &[b'a'; 8192], SN);
        for _ in 0..MAX_TEXT_LEN / 8192 {
            let TextStep::Respond(resp, _) = step else {
                break;
            };
            step = x.handle(&req(2, resp.ttt, false, true), &[b'a'; 8192], SN);
        }
        assert_eq!(step, rej);
    }

    #[test]
    fn empty_send_targets_in_discovery_gives_nothing() {
        let r = registry(0);
        let mut x = TextExchange::new(r, &params(SessionType::Discovery, None, 8192), PORTAL);
        let TextStep::Respond(_, data) =
            x.handle(&req(1, RESERVED_TAG, true, false), b"SendTargets=\0", SN)
        else {
            panic!()
        };
        assert!(data.is_empty());
    }
}

#[cfg(test)]
mod hostile {
    use super::tests_support::*;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn never_panics_and_answers_within_limits(
            script in proptest::collection::vec(
                (any::<bool>(), any::<bool>(), 0u32..4, prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..200),
                    Just(b"SendTargets=All\0".to_vec()),
                    Just(b"SendTargets=iqn.2026-11.org.isboot:a\0X-y=1\0".to_vec()),
                ]),
                1..16,
            ),
            xmit in 512u32..2048,
        ) {
            let mut x = TextExchange::new(registry(40), &params(SessionType::Discovery, None, xmit), PORTAL);
            for (final_, cont, ttt, data) in script {
                let ttt = if ttt == 0 { RESERVED_TAG } else { ttt };
                let req = TextRequest {
                    immediate: true, final_, cont, lun: 0, itt: 1, ttt, cmd_sn: 1, exp_stat_sn: 1,
                };
                match x.handle(&req, &data, SN) {
                    TextStep::Respond(r, d) => {
                        prop_assert!(d.len() <= xmit as usize);
                        prop_assert!(!(r.final_ && r.cont));
                        prop_assert_eq!(r.final_, r.ttt == RESERVED_TAG);
                    }
                    TextStep::Reject(_) => {}
                }
            }
        }
    }
}
