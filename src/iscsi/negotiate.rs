//! Operational text negotiation (RFC 7143 §6 and §13): the target's side of every key, with
//! the result function the RFC gives each one.
//!
//! ```text
//!  key                       kind          result            range / values
//!  HeaderDigest, DataDigest  list          first we support  None, CRC32C
//!  MaxConnections            numerical     min               1..65535
//!  InitialR2T                boolean       OR                Yes/No
//!  ImmediateData             boolean       AND               Yes/No
//!  MaxRecvDataSegmentLength  declarative   each side's own   512..2^24-1
//!  MaxBurstLength            numerical     min               512..2^24-1
//!  FirstBurstLength          numerical     min (<= MaxBurst) 512..2^24-1
//!  DefaultTime2Wait          numerical     max               0..3600
//!  DefaultTime2Retain        numerical     min               0..3600
//!  MaxOutstandingR2T         numerical     min               1..65535
//!  DataPDUInOrder            boolean       OR                Yes/No
//!  DataSequenceInOrder       boolean       OR                Yes/No
//!  ErrorRecoveryLevel        numerical     min               0..2
//!  iSCSIProtocolLevel        numerical     min (ours: 1)     0..31   (RFC 7144)
//!  TaskReporting             list          RFC3720                   (RFC 7144)
//!  OFMarker, IFMarker        boolean       AND (always No)           (RFC 3720)
//!  OFMarkInt, IFMarkInt      range         Irrelevant                (RFC 3720)
//!  X-..., X#..., unknown     -             NotUnderstood
//! ```
//! A value that does not parse or is out of range is answered `Reject` and the key keeps its
//! current value. In a Discovery session the keys that only matter to SCSI traffic are
//! answered `Irrelevant`.

use std::collections::HashSet;

/// RFC 7143 §6.1: iSCSI names are at most 223 bytes.
pub const MAX_NAME_LEN: usize = 223;
/// RFC 7143 §6.1: a simple value (not a binary CHAP value) is at most 255 bytes.
pub const MAX_SIMPLE_VALUE_LEN: usize = 255;
/// Smallest and largest MaxRecvDataSegmentLength / MaxBurstLength / FirstBurstLength.
pub const MIN_DATA_LEN: u32 = 512;
pub const MAX_DATA_LEN: u32 = (1 << 24) - 1;
/// RFC 7143 §13.12: the data segment limit before (and during) login.
pub const LOGIN_MAX_DATA: u32 = 8192;
/// The iSCSIProtocolLevel we implement (RFC 7144: 1 = RFC 7143).
pub const PROTOCOL_LEVEL: u32 = 1;

/// Discovery or Normal (RFC 7143 §13.21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// What the target offers and accepts, from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    /// Our MaxRecvDataSegmentLength: the largest data segment we accept.
    pub max_recv_data_segment_length: u32,
    /// The largest MaxBurstLength we accept.
    pub max_burst_length: u32,
    /// The largest FirstBurstLength we accept.
    pub first_burst_length: u32,
    /// The largest MaxOutstandingR2T we accept.
    pub max_outstanding_r2t: u32,
    /// The largest MaxConnections we accept.
    pub max_connections: u32,
    /// The highest ErrorRecoveryLevel we implement.
    pub error_recovery_level: u8,
    /// Our DefaultTime2Wait (result is the max of both sides).
    pub default_time2wait: u16,
    /// Our DefaultTime2Retain (result is the min of both sides).
    pub default_time2retain: u16,
    /// Announced in the first response of a Normal session's leading login.
    pub target_portal_group_tag: u16,
    /// Accept CRC32C header/data digests when the initiator asks.
    pub allow_digests: bool,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16 * 1024 * 1024 - 1,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            max_connections: 1,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            target_portal_group_tag: 1,
            allow_digests: true,
        }
    }
}

/// The operational parameters as negotiated so far (RFC defaults until a key changes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operational {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The initiator's MaxRecvDataSegmentLength: what we may send.
    pub max_xmit_dsl: u32,
    /// Ours, once announced; 8192 until then.
    pub max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

impl Default for Operational {
    /// The RFC 7143 §13 defaults.
    fn default() -> Self {
        Operational {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_xmit_dsl: LOGIN_MAX_DATA,
            max_recv_dsl: LOGIN_MAX_DATA,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// How we answer one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value`.
    Value(String),
    /// Nothing to send (declarative keys).
    Nothing,
}

pub const REJECT: &str = "Reject";
pub const IRRELEVANT: &str = "Irrelevant";
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";

/// Keys of the security stage (handled by the login state machine, not here).
pub fn is_security_key(key: &str) -> bool {
    key == "AuthMethod" || key.starts_with("CHAP_")
}

/// Keys only the leading login of a session may carry (handled by the login state machine).
pub fn is_leading_key(key: &str) -> bool {
    matches!(
        key,
        "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias"
    )
}

/// Parse a numerical value: decimal, or `0x`/`0X` hex (RFC 7143 §6.1 number encodings).
pub fn parse_number(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn number_in(v: &str, lo: u64, hi: u64) -> Option<u64> {
    parse_number(v).filter(|n| (lo..=hi).contains(n))
}

/// A list value (`a,b,c`): its elements, or None when malformed.
fn parse_list(v: &str) -> Option<Vec<&str>> {
    if v.is_empty() || v.len() > MAX_SIMPLE_VALUE_LEN {
        return None;
    }
    let items: Vec<&str> = v.split(',').collect();
    if items.iter().any(|i| i.is_empty()) {
        return None;
    }
    Some(items)
}

/// The operational negotiation of one login (or, later, one session's text negotiations).
#[derive(Debug)]
pub struct Negotiator {
    limits: TargetLimits,
    session_type: SessionType,
    params: Operational,
    /// Values the initiator proposed for the two burst keys (checked against each other).
    offered_first_burst: Option<u32>,
    offered_max_burst: Option<u32>,
    /// Operational keys already negotiated in an earlier exchange of this login.
    done: HashSet<String>,
}

impl Negotiator {
    pub fn new(mut limits: TargetLimits, session_type: SessionType) -> Negotiator {
        // Keep configured limits inside what the RFC allows us to answer.
        limits.max_burst_length = limits.max_burst_length.clamp(MIN_DATA_LEN, MAX_DATA_LEN);
        limits.first_burst_length = limits
            .first_burst_length
            .clamp(MIN_DATA_LEN, limits.max_burst_length);
        limits.max_outstanding_r2t = limits.max_outstanding_r2t.clamp(1, 65535);
        limits.max_connections = limits.max_connections.clamp(1, 65535);
        limits.error_recovery_level = limits.error_recovery_level.min(2);
        limits.default_time2wait = limits.default_time2wait.min(3600);
        limits.default_time2retain = limits.default_time2retain.min(3600);
        let mut params = Operational::default();
        // If the initiator never proposes them, the defaults apply on both sides except where
        // ours are stricter than the RFC defaults (then the initiator cannot exceed ours).
        params.max_burst_length = params.max_burst_length.min(limits.max_burst_length);
        params.first_burst_length = params
            .first_burst_length
            .min(limits.first_burst_length)
            .min(params.max_burst_length);
        params.max_outstanding_r2t = params.max_outstanding_r2t.min(limits.max_outstanding_r2t);
        Negotiator {
            limits,
            session_type,
            params,
            offered_first_burst: None,
            offered_max_burst: None,
            done: HashSet::new(),
        }
    }

    pub fn set_session_type(&mut self, t: SessionType) {
        self.session_type = t;
    }

    pub fn params(&self) -> &Operational {
        &self.params
    }

    /// Record that we declared our MaxRecvDataSegmentLength (it then binds the initiator).
    pub fn announce_max_recv(&mut self) -> String {
        self.params.max_recv_dsl = self
            .limits
            .max_recv_data_segment_length
            .clamp(MIN_DATA_LEN, MAX_DATA_LEN);
        self.params.max_recv_dsl.to_string()
    }

    /// Has `key` already been negotiated in an earlier exchange of this login?
    pub fn already_negotiated(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    /// Does the initiator's proposal contradict itself (FirstBurstLength > MaxBurstLength,
    /// both proposed explicitly)? RFC 7143 §13.14: FirstBurstLength MUST NOT exceed
    /// MaxBurstLength.
    pub fn inconsistent_bursts(&self) -> bool {
        matches!((self.offered_first_burst, self.offered_max_burst), (Some(f), Some(m)) if f > m)
    }

    /// Negotiate one operational (or unknown) key. Never fails: a bad value gets `Reject`.
    pub fn negotiate(&mut self, key: &str, value: &str) -> Answer {
        let discovery = self.session_type == SessionType::Discovery;
        let a = self.answer(key, value, discovery);
        self.done.insert(key.to_string());
        // Keep FirstBurstLength within MaxBurstLength after every change.
        if self.params.first_burst_length > self.params.max_burst_length {
            self.params.first_burst_length = self.params.max_burst_length;
        }
        a
    }

    fn answer(&mut self, key: &str, value: &str, discovery: bool) -> Answer {
        let reject = || Answer::Value(REJECT.to_string());
        let irrelevant = || Answer::Value(IRRELEVANT.to_string());
        if value.len() > MAX_SIMPLE_VALUE_LEN {
            return if is_known(key) {
                reject()
            } else {
                Answer::Value(NOT_UNDERSTOOD.to_string())
            };
        }
        let l = self.limits;
        let p = &mut self.params;
        match key {
            "HeaderDigest" | "DataDigest" => {
                let Some(items) = parse_list(value) else {
                    return reject();
                };
                let chosen = items.iter().find(|i| match **i {
                    "None" => true,
                    "CRC32C" => l.allow_digests,
                    _ => false,
                });
                match chosen {
                    Some(c) => {
                        let on = *c == "CRC32C";
                        if key == "HeaderDigest" {
                            p.header_digest = on;
                        } else {
                            p.data_digest = on;
                        }
                        Answer::Value(c.to_string())
                    }
                    None => reject(),
                }
            }
            "MaxConnections" => {
                if discovery {
                    return irrelevant();
                }
                match number_in(value, 1, 65535) {
                    Some(n) => {
                        p.max_connections = (n as u32).min(l.max_connections);
                        Answer::Value(p.max_connections.to_string())
                    }
                    None => reject(),
                }
            }
            "InitialR2T" => {
                if discovery {
                    return irrelevant();
                }
                // Result is OR: we are content with No (we take unsolicited data).
                match parse_bool(value) {
                    Some(b) => {
                        p.initial_r2t = b;
                        Answer::Value(yes_no(b))
                    }
                    None => reject(),
                }
            }
            "ImmediateData" => {
                if discovery {
                    return irrelevant();
                }
                // Result is AND: we support immediate data.
                match parse_bool(value) {
                    Some(b) => {
                        p.immediate_data = b;
                        Answer::Value(yes_no(b))
                    }
                    None => reject(),
                }
            }
            "MaxRecvDataSegmentLength" => {
                match number_in(value, MIN_DATA_LEN as u64, MAX_DATA_LEN as u64) {
                    Some(n) => {
                        p.max_xmit_dsl = n as u32;
                        // Declarative: no answer; ours is announced by the login machine.
                        Answer::Nothing
                    }
                    None => reject(),
                }
            }
            "MaxBurstLength" => {
                if discovery {
                    return irrelevant();
                }
                match number_in(value, MIN_DATA_LEN as u64, MAX_DATA_LEN as u64) {
                    Some(n) => {
                        self.offered_max_burst = Some(n as u32);
                        p.max_burst_length = (n as u32).min(l.max_burst_length);
                        Answer::Value(p.max_burst_length.to_string())
                    }
                    None => reject(),
                }
            }
            "FirstBurstLength" => {
                if discovery {
                    return irrelevant();
                }
                match number_in(value, MIN_DATA_LEN as u64, MAX_DATA_LEN as u64) {
                    Some(n) => {
                        self.offered_first_burst = Some(n as u32);
                        p.first_burst_length =
                            (n as u32).min(l.first_burst_length).min(p.max_burst_length);
                        Answer::Value(p.first_burst_length.to_string())
                    }
                    None => reject(),
                }
            }
            "DefaultTime2Wait" => match number_in(value, 0, 3600) {
                Some(n) => {
                    p.default_time2wait = (n as u16).max(l.default_time2wait);
                    Answer::Value(p.default_time2wait.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match number_in(value, 0, 3600) {
                Some(n) => {
                    p.default_time2retain = (n as u16).min(l.default_time2retain);
                    Answer::Value(p.default_time2retain.to_string())
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => {
                if discovery {
                    return irrelevant();
                }
                match number_in(value, 1, 65535) {
                    Some(n) => {
                        p.max_outstanding_r2t = (n as u32).min(l.max_outstanding_r2t);
                        Answer::Value(p.max_outstanding_r2t.to_string())
                    }
                    None => reject(),
                }
            }
            "DataPDUInOrder" | "DataSequenceInOrder" => {
                if discovery {
                    return irrelevant();
                }
                // Result is OR; we deliver in order whatever the initiator says, and accept
                // only in-order data (our side is Yes, so the result is Yes).
                match parse_bool(value) {
                    Some(_) => {
                        if key == "DataPDUInOrder" {
                            p.data_pdu_in_order = true;
                        } else {
                            p.data_sequence_in_order = true;
                        }
                        Answer::Value(yes_no(true))
                    }
                    None => reject(),
                }
            }
            "ErrorRecoveryLevel" => match number_in(value, 0, 2) {
                Some(n) => {
                    p.error_recovery_level = (n as u8).min(l.error_recovery_level);
                    Answer::Value(p.error_recovery_level.to_string())
                }
                None => reject(),
            },
            "iSCSIProtocolLevel" => match number_in(value, 0, 31) {
                Some(n) => Answer::Value((n as u32).min(PROTOCOL_LEVEL).to_string()),
                None => reject(),
            },
            "TaskReporting" => match parse_list(value) {
                Some(items) if items.contains(&"RFC3720") => Answer::Value("RFC3720".into()),
                _ => reject(),
            },
            "OFMarker" | "IFMarker" => match parse_bool(value) {
                // Result is AND; we do not implement markers.
                Some(_) => Answer::Value(yes_no(false)),
                None => reject(),
            },
            "OFMarkInt" | "IFMarkInt" => irrelevant(),
            "RDMAExtensions" => match parse_bool(value) {
                Some(_) => Answer::Value(yes_no(false)),
                None => reject(),
            },
            // Login-only keys arriving where they don't belong, and keys only targets send.
            "SendTargets" => irrelevant(),
            _ => Answer::Value(NOT_UNDERSTOOD.to_string()),
        }
    }
}

/// Keys this negotiator knows (a long value for them is `Reject`, not `NotUnderstood`).
fn is_known(key: &str) -> bool {
    matches!(
        key,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxRecvDataSegmentLength"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "iSCSIProtocolLevel"
            | "TaskReporting"
            | "OFMarker"
            | "IFMarker"
            | "OFMarkInt"
            | "IFMarkInt"
            | "RDMAExtensions"
            | "SendTargets"
    )
}

/// Is `name` acceptable as an iSCSI name? (RFC 7143 §4.2.7: at most 223 bytes; we also refuse
/// empty names, whitespace and control characters.)
pub fn valid_iscsi_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(a: Answer) -> String {
        match a {
            Answer::Value(v) => v,
            Answer::Nothing => "<nothing>".into(),
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number("0X2000"), Some(8192));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    #[test]
    fn result_functions() {
        let mut n = Negotiator::new(TargetLimits::default(), SessionType::Normal);
        assert_eq!(val(n.negotiate("MaxConnections", "4")), "1");
        assert_eq!(val(n.negotiate("InitialR2T", "No")), "No");
        assert_eq!(val(n.negotiate("ImmediateData", "Yes")), "Yes");
        assert_eq!(val(n.negotiate("MaxBurstLength", "16776192")), "16776192");
        assert_eq!(val(n.negotiate("FirstBurstLength", "1048576")), "262144");
        assert_eq!(val(n.negotiate("DefaultTime2Wait", "0")), "2");
        assert_eq!(val(n.negotiate("DefaultTime2Retain", "60")), "20");
        assert_eq!(val(n.negotiate("MaxOutstandingR2T", "100")), "8");
        assert_eq!(val(n.negotiate("DataPDUInOrder", "No")), "Yes");
        assert_eq!(val(n.negotiate("ErrorRecoveryLevel", "2")), "0");
        assert_eq!(
            n.negotiate("MaxRecvDataSegmentLength", "65536"),
            Answer::Nothing
        );
        assert_eq!(val(n.negotiate("HeaderDigest", "CRC32C,None")), "CRC32C");
        assert_eq!(val(n.negotiate("DataDigest", "None,CRC32C")), "None");
        let p = *n.params();
        assert!(!p.initial_r2t && p.immediate_data && p.header_digest && !p.data_digest);
        assert_eq!(p.max_xmit_dsl, 65536);
        assert_eq!(p.max_burst_length, 16776192);
        assert_eq!(p.first_burst_length, 262144);
        assert_eq!(p.max_outstanding_r2t, 8);
        assert_eq!(p.default_time2wait, 2);
        assert_eq!(p.default_time2retain, 20);
    }

    #[test]
    fn digests_refused_when_not_allowed() {
        let lim = TargetLimits {
            allow_digests: false,
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new(lim, SessionType::Normal);
        assert_eq!(val(n.negotiate("HeaderDigest", "CRC32C")), "Reject");
        assert_eq!(val(n.negotiate("DataDigest", "CRC32C,None")), "None");
        assert!(!n.params().header_digest);
    }

    #[test]
    fn bad_values_are_rejected_and_keep_the_old_value() {
        let mut n = Negotiator::new(TargetLimits::default(), SessionType::Normal);
        assert_eq!(
            val(n.negotiate("MaxRecvDataSegmentLength", "511")),
            "Reject"
        );
        assert_eq!(
            val(n.negotiate("MaxBurstLength", &(1u32 << 24).to_string())),
            "Reject"
        );
        assert_eq!(val(n.negotiate("InitialR2T", "yes")), "Reject");
        assert_eq!(val(n.negotiate("ErrorRecoveryLevel", "3")), "Reject");
        assert_eq!(val(n.negotiate("HeaderDigest", "MD5")), "Reject");
        assert_eq!(val(n.negotiate("HeaderDigest", "None,,CRC32C")), "Reject");
        let long = "1".repeat(256);
        assert_eq!(val(n.negotiate("MaxBurstLength", &long)), "Reject");
        assert_eq!(val(n.negotiate("X-long", &long)), "NotUnderstood");
        let fresh = Negotiator::new(TargetLimits::default(), SessionType::Normal);
        assert_eq!(n.params(), fresh.params());
    }

    #[test]
    fn discovery_irrelevant_keys_and_unknown_keys() {
        let mut n = Negotiator::new(TargetLimits::default(), SessionType::Discovery);
        for k in [
            "MaxConnections",
            "InitialR2T",
            "ImmediateData",
            "MaxBurstLength",
            "FirstBurstLength",
            "MaxOutstandingR2T",
            "DataPDUInOrder",
            "DataSequenceInOrder",
        ] {
            assert_eq!(val(n.negotiate(k, "1")), "Irrelevant", "{k}");
        }
        assert_eq!(val(n.negotiate("ErrorRecoveryLevel", "0")), "0");
        assert_eq!(val(n.negotiate("X-com.example.foo", "1")), "NotUnderstood");
        assert_eq!(val(n.negotiate("X#foo", "1")), "NotUnderstood");
        assert_eq!(val(n.negotiate("Bogus", "1")), "NotUnderstood");
        assert_eq!(val(n.negotiate("OFMarker", "Yes")), "No");
        assert_eq!(val(n.negotiate("IFMarkInt", "2048~8192")), "Irrelevant");
        assert_eq!(val(n.negotiate("iSCSIProtocolLevel", "2")), "1");
        assert_eq!(
            val(n.negotiate("TaskReporting", "ResponseFence,RFC3720")),
            "RFC3720"
        );
        assert!(n.already_negotiated("Bogus"));
    }

    #[test]
    fn burst_consistency() {
        let mut n = Negotiator::new(TargetLimits::default(), SessionType::Normal);
        n.negotiate("FirstBurstLength", "65536");
        n.negotiate("MaxBurstLength", "4096");
        assert!(n.inconsistent_bursts());
        assert!(n.params().first_burst_length <= n.params().max_burst_length);
        let mut n = Negotiator::new(TargetLimits::default(), SessionType::Normal);
        n.negotiate("MaxBurstLength", "4096");
        assert!(!n.inconsistent_bursts());
        assert_eq!(n.params().first_burst_length, 4096);
    }

    #[test]
    fn silly_limits_are_kept_inside_the_rfc_ranges() {
        let lim = TargetLimits {
            max_recv_data_segment_length: 1,
            max_burst_length: 0,
            first_burst_length: u32::MAX,
            max_outstanding_r2t: 0,
            max_connections: 0,
            error_recovery_level: 9,
            default_time2wait: 60000,
            default_time2retain: 60000,
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new(lim, SessionType::Normal);
        assert_eq!(n.announce_max_recv(), "512");
        assert_eq!(val(n.negotiate("MaxBurstLength", "65536")), "512");
        assert_eq!(val(n.negotiate("FirstBurstLength", "65536")), "512");
        assert_eq!(val(n.negotiate("MaxOutstandingR2T", "4")), "1");
        assert_eq!(val(n.negotiate("MaxConnections", "4")), "1");
        assert_eq!(val(n.negotiate("ErrorRecoveryLevel", "2")), "2");
        assert_eq!(val(n.negotiate("DefaultTime2Wait", "0")), "3600");
        assert_eq!(val(n.negotiate("DefaultTime2Retain", "3600")), "3600");
    }

    #[test]
    fn names() {
        assert!(valid_iscsi_name("iqn.2026-11.org.isboot:disk"));
        assert!(!valid_iscsi_name(""));
        assert!(!valid_iscsi_name("iqn.a b"));
        assert!(valid_iscsi_name(&"a".repeat(223)));
        assert!(!valid_iscsi_name(&"a".repeat(224)));
    }
}
