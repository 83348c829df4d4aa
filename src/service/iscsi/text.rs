//! Text requests in the full-feature phase.

use crate::iscsi::session::TextHandler;
use crate::iscsi::target::TargetRegistry;
use crate::wire::pdu::{TextRequest, TextResponse};
use std::sync::Arc;

/// Text requests in the full-feature phase: SendTargets (discovery sessions, and normal ones),
/// NotUnderstood for anything else; long answers continue over several PDUs.
pub(super) struct Text {
    registry: Arc<dyn TargetRegistry>,
    peer: std::net::IpAddr,
    initiator: String,
    portal: String,
    max_xmit_dsl: u32,
    /// Rest of a long response, by (ITT, TTT).
    pending: Option<(u32, u32, Vec<u8>)>,
}

impl Text {
    /// `portal`: the address the initiator reached, with the portal group tag
    /// (`10.0.0.1:3260,1`), for SendTargets answers.
    pub(super) fn new(
        registry: Arc<dyn TargetRegistry>,
        peer: std::net::IpAddr,
        initiator: String,
        portal: String,
        max_xmit_dsl: u32,
    ) -> Text {
        Text {
            registry,
            peer,
            initiator,
            portal,
            max_xmit_dsl,
            pending: None,
        }
    }
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
                            Some(self.peer),
                            &self.initiator,
                            &p.value,
                            &self.portal,
                        ));
                    } else {
                        crate::wire::text::push(&mut body, &p.key, "NotUnderstood");
                    }
                }
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
