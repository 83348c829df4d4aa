//! One read transfer: option negotiation, windowed sending, retransmission, rollover.
//!
//! Blocks are numbered absolutely (u64) inside; the wire carries `block mod 65536`, so a file
//! of more than 65535 blocks rolls the block number over to 0 (what tftp-hpa, curl and iPXE
//! expect). Time comes in as [`Instant`]s; nothing here sleeps or touches a socket.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::packet::{self, ErrorCode, Packet, Request};
use super::{TftpError, path};

/// Smallest block size (RFC 2348).
pub const MIN_BLKSIZE: u64 = 8;
/// Largest block size (RFC 2348).
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size without the option.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest window size a client may ask for (RFC 7440 allows 65535).
pub const MAX_WINDOWSIZE_OPTION: u64 = 65535;

/// Server-side limits.
#[derive(Debug, Clone, Copy)]
pub struct TransferLimits {
    /// Block size cap (a larger request is negotiated down).
    pub max_blksize: u16,
    /// Window cap (a larger request is negotiated down).
    pub max_windowsize: u16,
    /// Retransmit timeout when the client does not set one.
    pub default_timeout: Duration,
    /// Retransmissions of the same window before giving up.
    pub max_retries: u32,
    /// Largest file served in netascii mode (converted in memory).
    pub max_netascii_len: u64,
    /// Largest `timeout` option acknowledged (RFC 2349 asks the server to use the client's
    /// value or leave the option out: a larger one is left out and `default_timeout` used).
    pub max_timeout: Duration,
    /// A transfer ends after this long, finished or not, so a client that acknowledges slowly
    /// cannot hold a slot for ever.
    pub max_duration: Duration,
}

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
            max_netascii_len: 16 * 1024 * 1024,
            max_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(600),
        }
    }
}

/// Random-access source of the bytes being sent.
pub trait Source: Send {
    /// Fill `buf` from `offset`; return how many bytes were read (short only at end of file).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl Source for std::fs::File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while let Some(rest @ [_, ..]) = buf.get_mut(done..) {
            match FileExt::read_at(self, rest, offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl Source for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let src = self.get(start..).unwrap_or_default();
        let n = buf.len().min(src.len());
        if let (Some(d), Some(s)) = (buf.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        Ok(n)
    }
}

/// Convert to netascii: LF -> CR LF, CR -> CR NUL (RFC 764 / RFC 1350).
pub fn to_netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
    out
}

/// The result of option negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options to acknowledge in an OACK (empty: no OACK, start with DATA 1).
    pub oack: Vec<(String, String)>,
}

fn number(name: &str, value: &str) -> Result<u64, TftpError> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| TftpError::BadOption {
            name: name.to_string(),
            value: value.to_string(),
        })
}

/// Negotiate the request's options (RFC 2347): known options with bad values are refused with
/// error 8, known options out of the server's range are negotiated down, unknown options are
/// ignored (not acknowledged).
pub fn negotiate(
    req: &Request,
    file_len: u64,
    limits: &TransferLimits,
) -> Result<Negotiated, TftpError> {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
    };
    let bad = |name: &str, value: &str| TftpError::BadOption {
        name: name.to_string(),
        value: value.to_string(),
    };
    let mut seen = Vec::new();
    for (name, value) in &req.options {
        if seen.contains(name) {
            continue; // first occurrence wins
        }
        seen.push(name.clone());
        match name.as_str() {
            "blksize" => {
                let v = number(name, value)?;
                if v < MIN_BLKSIZE {
                    return Err(bad(name, value));
                }
                let v = v
                    .min(u64::from(limits.max_blksize))
                    .min(u64::from(MAX_BLKSIZE)) as u16;
                n.blksize = v;
                n.oack.push((name.clone(), v.to_string()));
            }
            "tsize" => {
                number(name, value)?;
                n.oack.push((name.clone(), file_len.to_string()));
            }
            "timeout" => {
                let v = number(name, value)?;
                if !(1..=255).contains(&v) {
                    return Err(bad(name, value));
                }
                if Duration::from_secs(v) > limits.max_timeout {
                    // Not acknowledged: the client falls back to the default (RFC 2349).
                    continue;
                }
                n.timeout = Duration::from_secs(v);
                n.oack.push((name.clone(), v.to_string()));
            }
            "windowsize" => {
                let v = number(name, value)?;
                if !(1..=MAX_WINDOWSIZE_OPTION).contains(&v) {
                    return Err(bad(name, value));
                }
                let v = v.min(u64::from(limits.max_windowsize.max(1))) as u16;
                n.windowsize = v;
                n.oack.push((name.clone(), v.to_string()));
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Everything needed to start serving a read request: the source, its length, the options.
pub struct Prepared {
    pub source: Box<dyn Source>,
    pub len: u64,
    pub negotiated: Negotiated,
}

/// Check a read request against the root and open the file.
pub fn prepare(req: &Request, root: &Path, limits: &TransferLimits) -> Result<Prepared, TftpError> {
    let netascii = match req.mode.as_str() {
        "octet" => false,
        "netascii" => true,
        other => return Err(TftpError::BadMode(other.to_string())),
    };
    let (file, len) = path::open_under_root(root, &req.filename)?;
    let (source, len): (Box<dyn Source>, u64) = if netascii {
        if len > limits.max_netascii_len {
            return Err(TftpError::NetasciiTooLarge(len));
        }
        let mut raw = vec![0u8; len as usize];
        let mut f = file;
        let got = Source::read_at(&mut f, 0, &mut raw).map_err(TftpError::Reading)?;
        raw.truncate(got);
        let conv = to_netascii(&raw);
        let l = conv.len() as u64;
        (Box::new(conv), l)
    } else {
        (Box::new(file), len)
    };
    let negotiated = negotiate(req, len, limits)?;
    Ok(Prepared {
        source,
        len,
        negotiated,
    })
}

/// Transfer state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// OACK sent, waiting for ACK 0.
    Negotiating,
    Sending,
    /// Last block acknowledged.
    Done,
    /// Gave up (timeout, client error, read error); the reason.
    Failed(String),
}

/// One read transfer.
pub struct Transfer {
    source: Box<dyn Source>,
    len: u64,
    neg: Negotiated,
    max_retries: u32,
    /// Absolute number of the last block (the short or empty one).
    last_block: u64,
    /// Highest block acknowledged (0 = none).
    acked: u64,
    /// Highest block sent.
    sent: u64,
    status: Status,
    deadline: Instant,
    /// The transfer ends at this time whatever happens.
    end_by: Instant,
    retries: u32,
}

impl Transfer {
    /// Start: returns the transfer and the first datagrams (OACK, or the first window).
    pub fn start(p: Prepared, limits: &TransferLimits, now: Instant) -> (Transfer, Vec<Vec<u8>>) {
        let last_block = p.len / u64::from(p.negotiated.blksize) + 1;
        let mut t = Transfer {
            source: p.source,
            len: p.len,
            max_retries: limits.max_retries,
            last_block,
            acked: 0,
            sent: 0,
            status: Status::Sending,
            deadline: now + p.negotiated.timeout,
            end_by: now + limits.max_duration,
            retries: 0,
            neg: p.negotiated,
        };
        let out = if t.neg.oack.is_empty() {
            t.window()
        } else {
            t.status = Status::Negotiating;
            vec![packet::oack(&t.neg.oack)]
        };
        (t, out)
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status, Status::Done | Status::Failed(_))
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When [`Transfer::on_timeout`] should be called next.
    pub fn deadline(&self) -> Instant {
        self.deadline.min(self.end_by)
    }

    fn fail(&mut self, why: String) {
        self.status = Status::Failed(why);
    }

    /// DATA for the blocks after the last acknowledged one, up to the window size.
    fn window(&mut self) -> Vec<Vec<u8>> {
        let bs = usize::from(self.neg.blksize);
        let end = (self.acked + u64::from(self.neg.windowsize)).min(self.last_block);
        let mut out = Vec::new();
        let mut buf = vec![0u8; bs];
        for k in self.acked + 1..=end {
            let off = (k - 1) * bs as u64;
            let n = match self.source.read_at(off, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let err = TftpError::Reading(e);
                    self.fail(err.to_string());
                    return vec![err.to_packet()];
                }
            };
            let want = self.len.saturating_sub(off).min(bs as u64) as usize;
            if n != want {
                // The file changed size under us.
                self.fail(format!("file changed while being sent (block {k})"));
                return vec![packet::error(
                    ErrorCode::NotDefined,
                    "file changed while being sent",
                )];
            }
            out.push(packet::data(k as u16, buf.get(..n).unwrap_or_default()));
        }
        self.sent = self.sent.max(end);
        out
    }

    /// A datagram from the client's transfer ID.
    pub fn on_datagram(&mut self, bytes: &[u8], now: Instant) -> Vec<Vec<u8>> {
        if self.is_finished() {
            return Vec::new();
        }
        let pkt = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring malformed TFTP packet in a transfer");
                return Vec::new();
            }
        };
        match pkt {
            Packet::Ack { block } => self.on_ack(block, now),
            Packet::Error { code, message } => {
                self.fail(format!("client sent error {code}: {message}"));
                Vec::new()
            }
            other => {
                let what = match other {
                    Packet::Rrq(_) => "RRQ",
                    Packet::Wrq(_) => "WRQ",
                    Packet::Data { .. } => "DATA",
                    Packet::Oack { .. } => "OACK",
                    _ => "packet",
                };
                self.fail(format!("client sent {what} during a read transfer"));
                vec![packet::error(
                    ErrorCode::IllegalOperation,
                    "only ACK and ERROR are expected during a read",
                )]
            }
        }
    }

    fn on_ack(&mut self, block: u16, now: Instant) -> Vec<Vec<u8>> {
        if self.status == Status::Negotiating {
            if block != 0 {
                tracing::debug!(
                    block,
                    "ignoring ACK for a block never sent (waiting for ACK 0 of the OACK)"
                );
                return Vec::new();
            }
            self.status = Status::Sending;
            return self.progress(now);
        }
        // Which sent-but-unacknowledged block does this ACK name?
        let hit = (self.acked + 1..=self.sent).find(|&k| k as u16 == block);
        match hit {
            Some(k) => {
                self.acked = k;
                if self.acked == self.last_block {
                    self.status = Status::Done;
                    return Vec::new();
                }
                self.progress(now)
            }
            None if block == self.acked as u16 => {
                // Duplicate ACK of the last acknowledged block. With a window this is the
                // client asking for a resend from there (RFC 7440); in lockstep, resending on
                // duplicates is the Sorcerer's Apprentice bug, so ignore it.
                if self.neg.windowsize > 1 {
                    self.progress(now)
                } else {
                    Vec::new()
                }
            }
            None => {
                tracing::debug!(
                    block,
                    acked = self.acked,
                    sent = self.sent,
                    "ignoring ACK for a block never sent"
                );
                Vec::new()
            }
        }
    }

    fn progress(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.retries = 0;
        self.deadline = now + self.neg.timeout;
        self.window()
    }

    /// Call when `now >= deadline()`: retransmit, or give up after `max_retries`.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if self.is_finished() || now < self.deadline() {
            return Vec::new();
        }
        if now >= self.end_by {
            self.fail("transfer took longer than the server allows".to_string());
            return vec![packet::error(
                ErrorCode::NotDefined,
                "transfer took too long",
            )];
        }
        self.retries += 1;
        if self.retries > self.max_retries {
            self.fail(format!("no ACK after {} retransmissions", self.max_retries));
            return vec![packet::error(ErrorCode::NotDefined, "timed out")];
        }
        self.deadline = now + self.neg.timeout;
        match self.status {
            Status::Negotiating => vec![packet::oack(&self.neg.oack)],
            _ => self.window(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(opts: &[(&str, &str)]) -> Request {
        Request {
            filename: "f".into(),
            mode: "octet".into(),
            options: opts
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn start(data: Vec<u8>, opts: &[(&str, &str)], now: Instant) -> (Transfer, Vec<Vec<u8>>) {
        let limits = TransferLimits::default();
        let len = data.len() as u64;
        let negotiated = negotiate(&req(opts), len, &limits).expect("negotiates");
        Transfer::start(
            Prepared {
                source: Box::new(data),
                len,
                negotiated,
            },
            &limits,
            now,
        )
    }

    fn parse_data(p: &[u8]) -> (u16, Vec<u8>) {
        match Packet::parse(p).expect("packet") {
            Packet::Data { block, data } => (block, data.to_vec()),
            other => panic!("expected DATA, got {other:?}"),
        }
    }

    /// Drive a whole transfer like a well-behaved client, returning the received bytes.
    fn download(t: &mut Transfer, first: Vec<Vec<u8>>, now: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        let mut expect: u16 = 1;
        let mut pending = first;
        if let Some(p) = pending.first()
            && matches!(Packet::parse(p), Ok(Packet::Oack { .. }))
        {
            pending = t.on_datagram(&packet::ack(0), now);
        }
        let bs = usize::from(t.negotiated().blksize);
        while !t.is_finished() {
            assert!(!pending.is_empty(), "stalled");
            let mut last = 0;
            for p in &pending {
                let (b, d) = parse_data(p);
                assert_eq!(b, expect);
                got.extend_from_slice(&d);
                last = b;
                expect = expect.wrapping_add(1);
                if d.len() < bs {
                    break;
                }
            }
            pending = t.on_datagram(&packet::ack(last), now);
        }
        assert_eq!(t.status(), &Status::Done);
        got
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 511) as u8).collect()
    }

    #[test]
    fn lockstep_without_options() {
        let now = Instant::now();
        for n in [0usize, 1, 511, 512, 513, 1024, 5000] {
            let data = pattern(n);
            let (mut t, first) = start(data.clone(), &[], now);
            assert_eq!(first.len(), 1);
            assert_eq!(download(&mut t, first, now), data, "size {n}");
        }
    }

    #[test]
    fn oack_then_window() {
        let now = Instant::now();
        let data = pattern(100_000);
        let (mut t, first) = start(
            data.clone(),
            &[
                ("blksize", "1468"),
                ("tsize", "0"),
                ("windowsize", "8"),
                ("foo", "bar"),
            ],
            now,
        );
        assert_eq!(
            Packet::parse(&first[0]).expect("oack"),
            Packet::Oack {
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "100000".into()),
                    ("windowsize".into(), "8".into())
                ]
            }
        );
        let w = t.on_datagram(&packet::ack(0), now);
        assert_eq!(w.len(), 8);
        assert_eq!(parse_data(&w[7]).0, 8);
        // Partial ACK (block 5 of 8): resend from 6.
        let w = t.on_datagram(&packet::ack(5), now);
        assert_eq!(parse_data(&w[0]).0, 6);
        assert_eq!(w.len(), 8);
        let (mut t, first) = start(
            data.clone(),
            &[("blksize", "1468"), ("windowsize", "8")],
            now,
        );
        assert_eq!(download(&mut t, first, now), data);
    }

    #[test]
    fn block_number_rolls_over() {
        let now = Instant::now();
        // 70000 blocks of 8 bytes: block numbers pass 65535 and wrap to 0.
        let data = pattern(8 * 70_000 + 3);
        let (mut t, first) = start(data.clone(), &[("blksize", "8")], now);
        assert_eq!(download(&mut t, first, now), data);
    }

    #[test]
    fn retransmit_on_timeout_then_give_up() {
        let now = Instant::now();
        let (mut t, first) = start(pattern(2000), &[], now);
        assert_eq!(parse_data(&first[0]).0, 1);
        assert!(t.on_timeout(now).is_empty(), "not yet due");
        let d = t.deadline();
        let again = t.on_timeout(d);
        assert_eq!(again, first, "same block resent");
        let mut at = t.deadline();
        for _ in 1..TransferLimits::default().max_retries {
            assert_eq!(t.on_timeout(at).len(), 1);
            at = t.deadline();
        }
        let last = t.on_timeout(at);
        assert!(matches!(Packet::parse(&last[0]), Ok(Packet::Error { .. })));
        assert!(matches!(t.status(), Status::Failed(_)));
    }

    #[test]
    fn a_slow_client_is_cut_off_at_the_overall_deadline() {
        let now = Instant::now();
        let (mut t, _) = start(pattern(1_000_000), &[], now);
        let limit = TransferLimits::default().max_duration;
        let mut at = now;
        let mut block = 1u16;
        // ACK every block just before its retransmission is due: never a timeout, yet slow.
        while at < now + limit {
            assert!(!t.is_finished(), "ended early");
            at += Duration::from_millis(900);
            let out = t.on_datagram(&packet::ack(block), at);
            if at < now + limit {
                assert_eq!(out.len(), 1);
                block += 1;
            }
        }
        assert!(t.deadline() <= now + limit);
        let out = t.on_timeout(now + limit);
        assert!(matches!(Packet::parse(&out[0]), Ok(Packet::Error { .. })));
        assert!(matches!(t.status(), Status::Failed(_)));
    }

    #[test]
    fn oack_is_retransmitted() {
        let now = Instant::now();
        let (mut t, first) = start(pattern(10), &[("tsize", "0")], now);
        assert_eq!(t.on_timeout(t.deadline()), first);
    }

    #[test]
    fn acks_for_blocks_never_sent_are_ignored() {
        let now = Instant::now();
        let (mut t, _) = start(pattern(5000), &[], now);
        assert!(t.on_datagram(&packet::ack(7), now).is_empty());
        assert!(
            t.on_datagram(&packet::ack(0), now).is_empty(),
            "duplicate in lockstep: no resend"
        );
        assert_eq!(t.status(), &Status::Sending);
        let next = t.on_datagram(&packet::ack(1), now);
        assert_eq!(parse_data(&next[0]).0, 2);
        // During negotiation only ACK 0 counts.
        let (mut t, _) = start(pattern(5000), &[("tsize", "0")], now);
        assert!(t.on_datagram(&packet::ack(3), now).is_empty());
        assert_eq!(t.status(), &Status::Negotiating);
    }

    #[test]
    fn wrong_packets_end_the_transfer_with_an_error() {
        let now = Instant::now();
        let (mut t, _) = start(pattern(5000), &[], now);
        assert!(t.on_datagram(b"\x00", now).is_empty(), "garbage ignored");
        assert!(
            t.on_datagram(b"\x00\x63\x00\x01", now).is_empty(),
            "unknown opcode ignored"
        );
        let out = t.on_datagram(&packet::data(1, b"x"), now);
        assert!(matches!(
            Packet::parse(&out[0]),
            Ok(Packet::Error { code: 4, .. })
        ));
        assert!(t.is_finished());
        let (mut t, _) = start(pattern(5000), &[], now);
        assert!(
            t.on_datagram(&packet::error(ErrorCode::NotDefined, "bye"), now)
                .is_empty()
        );
        assert!(matches!(t.status(), Status::Failed(_)));
    }

    #[test]
    fn bad_option_values() {
        let l = TransferLimits::default();
        for (k, v) in [
            ("blksize", "7"),
            ("blksize", "abc"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("windowsize", "0"),
            ("windowsize", "70000"),
            ("tsize", "-1"),
        ] {
            assert!(
                matches!(
                    negotiate(&req(&[(k, v)]), 10, &l),
                    Err(TftpError::BadOption { .. })
                ),
                "{k}={v}"
            );
        }
        let n = negotiate(&req(&[("timeout", "255"), ("tsize", "0")]), 10, &l).expect("ok");
        assert_eq!(
            n.timeout, l.default_timeout,
            "timeout over the cap: default used"
        );
        assert_eq!(
            n.oack,
            vec![("tsize".to_string(), "10".to_string())],
            "and not acknowledged"
        );
        let n = negotiate(
            &req(&[
                ("blksize", "100000"),
                ("windowsize", "1000"),
                ("timeout", "3"),
            ]),
            10,
            &l,
        )
        .expect("ok");
        assert_eq!(n.blksize, MAX_BLKSIZE);
        assert_eq!(n.windowsize, 64);
        assert_eq!(n.timeout, Duration::from_secs(3));
    }

    #[test]
    fn netascii_conversion_and_modes() {
        assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("t.txt"), b"line1\nline2\n").expect("write");
        let l = TransferLimits::default();
        let mut r = req(&[("tsize", "0")]);
        r.filename = "t.txt".into();
        r.mode = "netascii".into();
        let p = prepare(&r, dir.path(), &l).expect("prepare");
        assert_eq!(p.len, 14);
        assert_eq!(
            p.negotiated.oack,
            vec![("tsize".to_string(), "14".to_string())]
        );
        r.mode = "mail".into();
        assert!(matches!(
            prepare(&r, dir.path(), &l),
            Err(TftpError::BadMode(_))
        ));
    }
}
