//! A small iSCSI initiator built on the project's own wire layer, for tests, benches and trace
//! replay: blocking sockets, None or CHAP login, SendTargets, pipelined SCSI commands with
//! immediate, unsolicited and R2T-solicited data, raw PDU access for hostile-input tests.
//!
//! It is deliberately strict about what the target sends (sequence numbers, offsets,
//! residual flags are checked), so tests that drive it also check the target.

use crate::wire::frame::{self, FrameLimits, RawPdu};
use crate::wire::pdu::{
    Bhs, DataOut, LoginRequest, LogoutRequest, NopIn, NopOut, RESERVED_TAG, ScsiCommand,
    TextRequest,
};
use crate::wire::text;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("wire: {0}")]
    Wire(#[from] crate::wire::WireError),
    #[error("login refused: status class {class:#04x} detail {detail:#04x}")]
    LoginRefused { class: u8, detail: u8 },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed by the target")]
    Closed,
}

type Result<T> = std::result::Result<T, InitiatorError>;

/// How to log in.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    pub initiator_name: String,
    /// `None` for a discovery session.
    pub target: Option<String>,
    pub isid: [u8; 6],
    /// Operational keys to propose (overriding the defaults below).
    pub keys: Vec<(String, String)>,
    /// One-way CHAP (user, secret).
    pub chap: Option<(String, Vec<u8>)>,
}

impl LoginOptions {
    pub fn new(initiator: &str, target: Option<&str>) -> LoginOptions {
        LoginOptions {
            initiator_name: initiator.to_owned(),
            target: target.map(str::to_owned),
            isid: [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
            keys: Vec::new(),
            chap: None,
        }
    }
    /// open-iscsi's profile.
    pub fn linux_profile(mut self) -> Self {
        for (k, v) in [
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("FirstBurstLength", "262144"),
            ("MaxBurstLength", "16776192"),
            ("MaxRecvDataSegmentLength", "262144"),
        ] {
            self.keys.push((k.into(), v.into()));
        }
        self
    }
    /// iPXE's profile.
    pub fn ipxe_profile(mut self) -> Self {
        for (k, v) in [
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
            ("MaxRecvDataSegmentLength", "8192"),
            ("ErrorRecoveryLevel", "0"),
        ] {
            self.keys.push((k.into(), v.into()));
        }
        self
    }
}

/// What the login settled on.
#[derive(Clone, Debug, Default)]
pub struct Negotiated {
    pub keys: HashMap<String, String>,
    pub tsih: u16,
    /// Target's MaxRecvDataSegmentLength: the most we may put in one PDU.
    pub max_xmit: u32,
    pub first_burst: u32,
    pub max_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
}

/// The result of one SCSI command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub itt: u32,
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
    pub overflow: bool,
    pub underflow: bool,
    pub residual: u32,
}

struct Pending {
    data_out: Bytes,
    data_in: Vec<u8>,
    read_len: u32,
}

pub struct Initiator {
    stream: TcpStream,
    buf: BytesMut,
    lim_in: FrameLimits,
    lim_out: FrameLimits,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
    next_itt: u32,
    pub negotiated: Negotiated,
    pending: HashMap<u32, Pending>,
    /// Keep the data of Data-In PDUs (false for benches that only count bytes).
    pub keep_data: bool,
    pub bytes_in: u64,
}

const OUR_MRDSL: u32 = 262144;

impl Initiator {
    /// Open a TCP connection without logging in.
    pub fn connect_raw(addr: SocketAddr) -> Result<Initiator> {
        Initiator::from_stream(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?)
    }

    /// A connection made by the caller (e.g. bound to a chosen source address), not logged in.
    pub fn from_stream(stream: TcpStream) -> Result<Initiator> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Initiator {
            stream,
            buf: BytesMut::with_capacity(1 << 20),
            lim_in: FrameLimits {
                max_data: 1 << 24,
                header_digest: false,
                data_digest: false,
            },
            lim_out: FrameLimits::default(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            next_itt: 1,
            negotiated: Negotiated::default(),
            pending: HashMap::new(),
            keep_data: true,
            bytes_in: 0,
        })
    }

    /// Connect and log in.
    pub fn connect(addr: SocketAddr, opts: &LoginOptions) -> Result<Initiator> {
        let mut i = Initiator::connect_raw(addr)?;
        i.login(opts)?;
        Ok(i)
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        Ok(self.stream.set_read_timeout(t)?)
    }

    /// Send raw bytes (hostile-input tests).
    pub fn send_bytes(&mut self, b: &[u8]) -> Result<()> {
        Ok(self.stream.write_all(b)?)
    }

    /// Send one PDU with a contiguous data segment.
    pub fn send(&mut self, bhs: &Bhs, data: &[u8]) -> Result<()> {
        let (h, ahs) = bhs.emit(data.len() as u32);
        let mut out = BytesMut::with_capacity(48 + ahs.len() + data.len() + 8);
        frame::encode(&mut out, &h, &ahs, data, &self.lim_out);
        self.send_bytes(&out)
    }

    /// Receive one PDU.
    pub fn recv(&mut self) -> Result<(Bhs, Bytes)> {
        let raw = self.recv_raw()?;
        let bhs = Bhs::parse(&raw.bhs, &raw.ahs)?;
        Ok((bhs, raw.data))
    }

    pub fn recv_raw(&mut self) -> Result<RawPdu> {
        loop {
            if let Some(p) = frame::decode(&mut self.buf, &self.lim_in)? {
                return Ok(p);
            }
            if self.buf.capacity() - self.buf.len() < 65536 {
                self.buf.reserve(1 << 20);
            }
            // Read straight into the spare capacity: zero-filling it first (resize) cost a
            // memset of up to 1 MiB per read(2), half of a replay client's CPU.
            match crate::sys::read_into_spare(&self.stream, &mut self.buf) {
                Ok(0) => return Err(InitiatorError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn itt(&mut self) -> u32 {
        let i = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        i
    }

    /// Security stage with None or CHAP, then operational stage, to full feature phase.
    pub fn login(&mut self, o: &LoginOptions) -> Result<Negotiated> {
        let itt = self.itt();
        let mut leading = Vec::new();
        text::push(&mut leading, "InitiatorName", &o.initiator_name);
        match &o.target {
            Some(t) => {
                text::push(&mut leading, "SessionType", "Normal");
                text::push(&mut leading, "TargetName", t);
            }
            None => text::push(&mut leading, "SessionType", "Discovery"),
        }
        let mut all = HashMap::new();
        let mut tsih = 0;
        // Security stage.
        let mut sec = leading.clone();
        text::push(
            &mut sec,
            "AuthMethod",
            if o.chap.is_some() { "CHAP" } else { "None" },
        );
        let (resp, keys) = self.login_pdu(o, itt, 0, 1, true, &sec)?;
        tsih = tsih.max(resp.0);
        all.extend(keys.clone());
        let mut stage = resp.1;
        if let Some((user, secret)) = &o.chap {
            let mut a = Vec::new();
            text::push(&mut a, "CHAP_A", "5");
            let (_, keys) = self.login_pdu(o, itt, 0, 1, false, &a)?;
            let id: u8 = keys
                .get("CHAP_I")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| InitiatorError::Protocol("no CHAP_I".into()))?;
            let c = keys
                .get("CHAP_C")
                .ok_or_else(|| InitiatorError::Protocol("no CHAP_C".into()))?;
            let challenge = hex::decode(c.trim_start_matches("0x").trim_start_matches("0X"))
                .map_err(|_| InitiatorError::Protocol("bad CHAP_C".into()))?;
            let r = chap_md5(id, secret, &challenge);
            let mut n = Vec::new();
            text::push(&mut n, "CHAP_N", user);
            text::push(&mut n, "CHAP_R", &format!("0x{}", hex::encode(r)));
            let (r2, _) = self.login_pdu(o, itt, 0, 1, true, &n)?;
            stage = r2.1;
        }
        // Operational stage (unless the target already moved to full feature phase).
        if stage != 3 {
            let mut op = Vec::new();
            let mut keys: Vec<(String, String)> = vec![
                ("HeaderDigest".into(), "None".into()),
                ("DataDigest".into(), "None".into()),
                ("MaxRecvDataSegmentLength".into(), OUR_MRDSL.to_string()),
                ("DefaultTime2Wait".into(), "2".into()),
                ("DefaultTime2Retain".into(), "0".into()),
                ("MaxOutstandingR2T".into(), "1".into()),
                ("ErrorRecoveryLevel".into(), "0".into()),
            ];
            if o.target.is_some() {
                keys.extend([
                    ("InitialR2T".into(), "Yes".into()),
                    ("ImmediateData".into(), "Yes".into()),
                    ("MaxBurstLength".into(), "262144".into()),
                    ("FirstBurstLength".into(), "65536".into()),
                    ("MaxConnections".into(), "1".into()),
                    ("DataPDUInOrder".into(), "Yes".into()),
                    ("DataSequenceInOrder".into(), "Yes".into()),
                ]);
            }
            for (k, v) in &o.keys {
                if let Some(e) = keys.iter_mut().find(|(kk, _)| kk == k) {
                    e.1 = v.clone();
                } else {
                    keys.push((k.clone(), v.clone()));
                }
            }
            for (k, v) in &keys {
                text::push(&mut op, k, v);
            }
            let mut proposed: HashMap<String, String> = keys.into_iter().collect();
            let (r, got) = self.login_pdu(o, itt, 1, 3, true, &op)?;
            tsih = r.0;
            if r.1 != 3 {
                return Err(InitiatorError::Protocol(format!(
                    "login stopped in stage {}",
                    r.1
                )));
            }
            for (k, v) in got {
                proposed.insert(k, v);
            }
            all.extend(proposed);
        }
        // Digests apply from the first full-feature PDU on, in both directions.
        let crc = |k: &str| all.get(k).is_some_and(|v| v.eq_ignore_ascii_case("CRC32C"));
        let (hd, dd) = (crc("HeaderDigest"), crc("DataDigest"));
        for lim in [&mut self.lim_in, &mut self.lim_out] {
            lim.header_digest = hd;
            lim.data_digest = dd;
        }
        let get = |k: &str, d: u32| all.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let n = Negotiated {
            tsih,
            max_xmit: get("MaxRecvDataSegmentLength", 8192),
            first_burst: get("FirstBurstLength", 65536),
            max_burst: get("MaxBurstLength", 262144),
            immediate_data: all.get("ImmediateData").is_none_or(|v| v == "Yes"),
            initial_r2t: all.get("InitialR2T").is_none_or(|v| v == "Yes"),
            keys: all,
        };
        self.negotiated = n.clone();
        Ok(n)
    }

    /// One login request/response exchange (following C-bit continuations of the response).
    /// Returns ((TSIH, stage reached), keys).
    fn login_pdu(
        &mut self,
        o: &LoginOptions,
        itt: u32,
        csg: u8,
        nsg: u8,
        transit: bool,
        data: &[u8],
    ) -> Result<((u16, u8), HashMap<String, String>)> {
        let req = LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: o.isid,
            tsih: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Bhs::LoginRequest(req), data)?;
        let mut body = Vec::new();
        loop {
            let (bhs, d) = self.recv()?;
            let Bhs::LoginResponse(r) = bhs else {
                return Err(InitiatorError::Protocol(format!(
                    "expected a login response, got {bhs:?}"
                )));
            };
            if r.status_class != 0 {
                return Err(InitiatorError::LoginRefused {
                    class: r.status_class,
                    detail: r.status_detail,
                });
            }
            self.exp_stat_sn = r.stat_sn.wrapping_add(1);
            self.max_cmd_sn = r.max_cmd_sn;
            body.extend_from_slice(&d);
            if r.cont {
                // Fetch the next piece; keep T so the last piece may carry the transition.
                self.send(&Bhs::LoginRequest(req), &[])?;
                continue;
            }
            let keys = text::parse(&body)?
                .into_iter()
                .map(|p| (p.key, p.value))
                .collect();
            let stage = if r.transit { r.nsg } else { r.csg };
            return Ok(((r.tsih, stage), keys));
        }
    }

    /// SendTargets=`value` in this (discovery) session: (TargetName, TargetAddress...) pairs.
    pub fn send_targets(&mut self, value: &str) -> Result<Vec<(String, String)>> {
        let itt = self.itt();
        let mut d = Vec::new();
        text::push(&mut d, "SendTargets", value);
        let mut req = TextRequest {
            immediate: true,
            final_: true,
            cont: false,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Bhs::TextRequest(req), &d)?;
        let mut body = Vec::new();
        loop {
            let (bhs, data) = self.recv()?;
            let Bhs::TextResponse(r) = bhs else { continue };
            self.exp_stat_sn = r.stat_sn.wrapping_add(1);
            body.extend_from_slice(&data);
            if r.final_ {
                break;
            }
            req.ttt = r.ttt;
            req.exp_stat_sn = self.exp_stat_sn;
            self.send(&Bhs::TextRequest(req), &[])?;
        }
        Ok(text::parse(&body)?
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect())
    }

    /// Queue a SCSI command; returns its ITT. `data_out` is sent as immediate/unsolicited data
    /// as negotiated, the rest on R2T. `read_len` is the expected Data-In length.
    pub fn submit(&mut self, lun: u64, cdb: &[u8], data_out: Bytes, read_len: u32) -> Result<u32> {
        self.submit_with(lun, cdb, data_out, read_len, None)
    }

    /// [`submit`](Self::submit) with an explicit Expected Data Transfer Length.
    pub fn submit_with(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: Bytes,
        read_len: u32,
        edtl: Option<u32>,
    ) -> Result<u32> {
        let itt = self.itt();
        let mut c = [0u8; 16];
        let n = cdb.len().min(16);
        c[..n].copy_from_slice(&cdb[..n]);
        let write = !data_out.is_empty();
        let edtl = edtl.unwrap_or(if write {
            data_out.len() as u32
        } else {
            read_len
        });
        let neg = self.negotiated.clone();
        let imm_len = if write && neg.immediate_data {
            (data_out.len() as u32)
                .min(neg.first_burst)
                .min(neg.max_xmit) as usize
        } else {
            0
        };
        let unsolicited_more = write
            && !neg.initial_r2t
            && (imm_len as u32) < neg.first_burst.min(data_out.len() as u32);
        let cmd = ScsiCommand {
            immediate: false,
            final_: !unsolicited_more,
            read: read_len > 0,
            write,
            attr: 1,
            lun,
            itt,
            expected_len: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: c,
            ext_cdb: cdb.get(16..).map(|s| s.to_vec()).unwrap_or_default(),
            bidi_read_len: None,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&Bhs::ScsiCommand(cmd), &data_out[..imm_len])?;
        if unsolicited_more {
            let end = neg.first_burst.min(data_out.len() as u32) as usize;
            self.send_data_out(itt, lun, RESERVED_TAG, &data_out, imm_len, end)?;
        }
        self.pending.insert(
            itt,
            Pending {
                data_out,
                data_in: Vec::new(),
                read_len,
            },
        );
        Ok(itt)
    }

    fn send_data_out(
        &mut self,
        itt: u32,
        lun: u64,
        ttt: u32,
        data: &[u8],
        start: usize,
        end: usize,
    ) -> Result<()> {
        let max = self.negotiated.max_xmit.max(512) as usize;
        let mut off = start;
        let mut sn = 0;
        while off < end {
            let n = max.min(end - off);
            let d = DataOut {
                final_: off + n >= end,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: sn,
                buffer_offset: off as u32,
            };
            self.send(&Bhs::DataOut(d), &data[off..off + n])?;
            sn += 1;
            off += n;
        }
        Ok(())
    }

    /// Wait for the next command to complete, answering R2Ts and NOP-In pings on the way.
    pub fn wait_any(&mut self) -> Result<Completion> {
        loop {
            let (bhs, data) = self.recv()?;
            match bhs {
                Bhs::DataIn(d) => {
                    self.max_cmd_sn = d.max_cmd_sn;
                    self.bytes_in += data.len() as u64;
                    let p = self.pending.get_mut(&d.itt).ok_or_else(|| {
                        InitiatorError::Protocol(format!("Data-In for unknown ITT {}", d.itt))
                    })?;
                    if self.keep_data {
                        let off = d.buffer_offset as usize;
                        if off != p.data_in.len() {
                            return Err(InitiatorError::Protocol(format!(
                                "Data-In offset {off}, expected {}",
                                p.data_in.len()
                            )));
                        }
                        p.data_in.extend_from_slice(&data);
                    }
                    if p.data_in.len() > p.read_len as usize {
                        return Err(InitiatorError::Protocol(
                            "more Data-In than expected".into(),
                        ));
                    }
                    if d.status_present {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        let p = self.pending.remove(&d.itt).expect("present");
                        return Ok(Completion {
                            itt: d.itt,
                            status: d.status,
                            sense: Vec::new(),
                            data: p.data_in,
                            overflow: d.overflow,
                            underflow: d.underflow,
                            residual: d.residual,
                        });
                    }
                }
                Bhs::ScsiResponse(r) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    self.max_cmd_sn = r.max_cmd_sn;
                    let p = self.pending.remove(&r.itt).ok_or_else(|| {
                        InitiatorError::Protocol(format!("response for unknown ITT {}", r.itt))
                    })?;
                    let sense = if data.len() >= 2 {
                        let l = u16::from_be_bytes([data[0], data[1]]) as usize;
                        data[2..].get(..l).unwrap_or(&data[2..]).to_vec()
                    } else {
                        Vec::new()
                    };
                    return Ok(Completion {
                        itt: r.itt,
                        status: r.status,
                        sense,
                        data: p.data_in,
                        overflow: r.overflow,
                        underflow: r.underflow,
                        residual: r.residual,
                    });
                }
                Bhs::R2t(r) => {
                    self.max_cmd_sn = r.max_cmd_sn;
                    let p = self.pending.get(&r.itt).ok_or_else(|| {
                        InitiatorError::Protocol(format!("R2T for unknown ITT {}", r.itt))
                    })?;
                    let data = p.data_out.clone();
                    let start = r.buffer_offset as usize;
                    let end = start + r.desired_len as usize;
                    if end > data.len() {
                        return Err(InitiatorError::Protocol(format!(
                            "R2T asks for {start}..{end} of {}",
                            data.len()
                        )));
                    }
                    self.send_data_out(r.itt, r.lun, r.ttt, &data, start, end)?;
                }
                Bhs::NopIn(n) => {
                    self.answer_ping(&n)?;
                }
                Bhs::Reject(r) => {
                    return Err(InitiatorError::Protocol(format!(
                        "Reject reason {:#x}",
                        r.reason
                    )));
                }
                other => {
                    return Err(InitiatorError::Protocol(format!(
                        "unexpected PDU {other:?}"
                    )));
                }
            }
        }
    }

    /// Echo a NOP-In ping that asks for an answer (TTT set).
    fn answer_ping(&mut self, n: &NopIn) -> Result<bool> {
        if n.ttt == RESERVED_TAG {
            return Ok(false);
        }
        let reply = NopOut {
            immediate: true,
            lun: n.lun,
            itt: RESERVED_TAG,
            ttt: n.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Bhs::NopOut(reply), &[])?;
        Ok(true)
    }

    /// Stay idle for `span` but answer the target's pings, as a running initiator does
    /// between commands (open-iscsi answers them in the kernel). Returns how many it answered.
    /// Any other PDU is a protocol error: nothing is outstanding.
    pub fn answer_pings(&mut self, span: Duration) -> Result<usize> {
        let until = std::time::Instant::now() + span;
        let mut answered = 0;
        let r = loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Ok(answered);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.recv() {
                Ok((Bhs::NopIn(n), _)) => {
                    if self.answer_ping(&n)? {
                        answered += 1;
                    }
                }
                Ok((other, _)) => {
                    break Err(InitiatorError::Protocol(format!(
                        "unexpected PDU while idle: {other:?}"
                    )));
                }
                Err(InitiatorError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(answered);
                }
                Err(e) => break Err(e),
            }
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        r
    }

    /// Forget the connection the way a machine that reboots does: the socket is closed with
    /// a reset (SO_LINGER 0), which the caller may keep from reaching the target (its link
    /// down), so the target learns of it only when it next sends something here.
    pub fn abandon(self) -> Result<()> {
        socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))?;
        Ok(())
    }

    /// Run one command to completion.
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> Result<Completion> {
        let itt = self.submit(lun, cdb, Bytes::copy_from_slice(data_out), read_len)?;
        let c = self.wait_any()?;
        if c.itt != itt {
            return Err(InitiatorError::Protocol(
                "completion for another command".into(),
            ));
        }
        Ok(c)
    }

    /// TEST UNIT READY until it returns GOOD, consuming the unit attentions a new session
    /// gets (power on / reset, parameters changed). Gives up after 16 tries.
    pub fn clear_unit_attention(&mut self, lun: u64) -> Result<()> {
        for _ in 0..16 {
            let c = self.command(lun, &[0u8; 6], &[], 0)?;
            if c.status == 0 {
                return Ok(());
            }
            if c.sense.get(2).map(|k| k & 0x0f) != Some(0x06) {
                return Err(InitiatorError::Protocol(format!(
                    "TEST UNIT READY failed: {c:?}"
                )));
            }
        }
        Err(InitiatorError::Protocol(
            "unit attention does not clear".into(),
        ))
    }

    /// READ(16) of `blocks` 512-byte blocks at `lba`.
    pub fn read16(&mut self, lun: u64, lba: u64, blocks: u32) -> Result<Completion> {
        self.command(lun, &read16_cdb(lba, blocks), &[], blocks * 512)
    }

    /// WRITE(16) of `data` at `lba`.
    pub fn write16(&mut self, lun: u64, lba: u64, data: &[u8]) -> Result<Completion> {
        self.command(
            lun,
            &write16_cdb(lba, (data.len() / 512) as u32, false),
            data,
            0,
        )
    }

    /// Logout (close the session) and wait for the response.
    pub fn logout(&mut self) -> Result<()> {
        let itt = self.itt();
        let l = LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Bhs::LogoutRequest(l), &[])?;
        loop {
            match self.recv()? {
                (Bhs::LogoutResponse(r), _) if r.response == 0 => return Ok(()),
                (Bhs::LogoutResponse(r), _) => {
                    return Err(InitiatorError::Protocol(format!(
                        "logout response {}",
                        r.response
                    )));
                }
                _ => continue,
            }
        }
    }
}

/// READ(16) CDB.
pub fn read16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE(16) CDB, with FUA if asked.
pub fn write16_cdb(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    if fua {
        c[1] = 0x08;
    }
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// CHAP response with MD5 (RFC 1994): MD5(id || secret || challenge).
pub fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}
