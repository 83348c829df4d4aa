//! An opt-in trace of READ commands (`isboot serve --read-trace FILE`): one CSV line per READ
//! as its PDU arrives, for replaying a real boot's reads later (`isboot-replay`).
//!
//! Format (lines starting with `#` are comments):
//!
//! ```text
//! # isboot read trace v1
//! us,session,target,lba,blocks,depth
//! 1532,3,iqn.2026-11.org.isboot:alpha,2048,8,1
//! ```
//!
//! * `us`: microseconds since the session's login completed (monotonic clock);
//! * `session`: the server's session number (a boot has several: iPXE's, then Linux's);
//! * `target`: the target IQN;
//! * `lba`, `blocks`: the READ's extent in 512-byte blocks;
//! * `depth`: the initiator's commands outstanding when it sent this one (itself included),
//!   estimated from the command's CmdSN and ExpStatSN: commands it had sent minus responses
//!   it had acknowledged. NOP-In and Text responses also take StatSNs; they are counted and
//!   left out. An estimate: responses the initiator had received but not yet acknowledged
//!   in a later PDU count as outstanding.
//!
//! When off, the service pays one `Option` check per PDU.

use crate::wire::frame::RawPdu;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The trace file, shared by every session of a server. Each line is written as it is made
/// (one `write` per READ while tracing), so the file is complete up to the last READ at any
/// moment: a lab can cut one client's boot out of it while the server runs.
pub struct ReadTrace {
    out: Mutex<File>,
}

impl std::fmt::Debug for ReadTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadTrace")
    }
}

/// Header line of the CSV (after the `#` comment lines).
pub const HEADER: &str = "us,session,target,lba,blocks,depth";

impl ReadTrace {
    /// Create (truncate) `path` and write the header.
    pub fn create(path: &Path) -> io::Result<ReadTrace> {
        let mut f = File::create(path)?;
        f.write_all(
            format!("# isboot read trace v1 (isboot serve --read-trace)\n{HEADER}\n").as_bytes(),
        )?;
        Ok(ReadTrace { out: Mutex::new(f) })
    }

    fn line(&self, l: std::fmt::Arguments<'_>) {
        let s = l.to_string();
        let mut f = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(s.as_bytes());
    }
}

/// One session's view of the trace.
pub struct SessionTrace {
    trace: Arc<ReadTrace>,
    session: u64,
    target: String,
    login: Instant,
    first_cmd_sn: u32,
    first_stat_sn: u32,
    /// StatSNs taken by responses that are not SCSI responses (NOP-In, Text).
    other_responses: u32,
}

impl SessionTrace {
    /// `exp_cmd_sn` / `stat_sn`: the first CmdSN and StatSN of the full-feature phase.
    pub fn new(
        trace: Arc<ReadTrace>,
        session: u64,
        target: &str,
        exp_cmd_sn: u32,
        stat_sn: u32,
    ) -> SessionTrace {
        SessionTrace {
            trace,
            session,
            target: target.to_owned(),
            login: Instant::now(),
            first_cmd_sn: exp_cmd_sn,
            first_stat_sn: stat_sn,
            other_responses: 0,
        }
    }

    /// Look at one PDU from the initiator, before the session handles it.
    pub fn pdu(&mut self, pdu: &RawPdu) {
        let b = &pdu.bhs;
        let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        match b[0] & 0x3f {
            // NOP-Out that wants an answer, Text Request: one StatSN each.
            0x00 if be32(16) != crate::wire::pdu::RESERVED_TAG => self.other_responses += 1,
            0x04 => self.other_responses += 1,
            0x01 if b[1] & 0x40 != 0 => {
                let Some((lba, blocks)) = read_extent(&b[32..48]) else {
                    return;
                };
                let sent = be32(24).wrapping_sub(self.first_cmd_sn).wrapping_add(1);
                let acked = be32(28)
                    .wrapping_sub(self.first_stat_sn)
                    .wrapping_sub(self.other_responses);
                let depth = (sent as i64 - acked as i64).max(1);
                let us = self.login.elapsed().as_micros();
                self.trace.line(format_args!(
                    "{us},{},{},{lba},{blocks},{depth}\n",
                    self.session, self.target
                ));
            }
            _ => {}
        }
    }
}

/// LBA and block count of a READ(6/10/12/16) CDB; `None` for anything else.
pub fn read_extent(cdb: &[u8]) -> Option<(u64, u64)> {
    match crate::scsi::cdb::parse(cdb, u64::MAX).ok()? {
        crate::scsi::cdb::Command::Read { ext } => Some((ext.lba, ext.blocks)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(cmd_sn: u32, exp_stat_sn: u32, cdb: &[u8]) -> RawPdu {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        bhs[1] = 0x80 | 0x40;
        bhs[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&exp_stat_sn.to_be_bytes());
        bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        RawPdu {
            bhs,
            ahs: bytes::Bytes::new(),
            data: bytes::Bytes::new(),
        }
    }

    #[test]
    fn records_reads_with_their_depth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let t = Arc::new(ReadTrace::create(&path).unwrap());
        {
            let mut s = SessionTrace::new(t.clone(), 7, "iqn.x:a", 10, 100);
            // READ(10) LBA 2048, 8 blocks: first command, nothing outstanding before it.
            s.pdu(&cmd(10, 100, &[0x28, 0, 0, 0, 8, 0, 0, 0, 8, 0]));
            // READ(16) LBA 1<<33, 256 blocks, sent with two commands unanswered.
            let mut c16 = [0u8; 16];
            c16[0] = 0x88;
            c16[2..10].copy_from_slice(&(1u64 << 33).to_be_bytes());
            c16[10..14].copy_from_slice(&256u32.to_be_bytes());
            s.pdu(&cmd(12, 100, &c16));
            // A ping answered, then a READ with everything acknowledged: depth 1.
            let mut nop = cmd(13, 103, &[]);
            nop.bhs[0] = 0x40; // immediate NOP-Out
            nop.bhs[16..20].copy_from_slice(&5u32.to_be_bytes());
            s.pdu(&nop);
            s.pdu(&cmd(13, 104, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]));
            // Not traced: a WRITE(10) and a TEST UNIT READY.
            let mut w = cmd(14, 104, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
            w.bhs[1] = 0x80 | 0x20;
            s.pdu(&w);
            s.pdu(&cmd(15, 104, &[0, 0, 0, 0, 0, 0]));
        }
        drop(t);
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with('#') && *l != HEADER)
            .map(|l| l.split(',').collect())
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        let tail: Vec<Vec<&str>> = rows.iter().map(|r| r[1..].to_vec()).collect();
        assert_eq!(
            tail,
            vec![
                vec!["7", "iqn.x:a", "2048", "8", "1"],
                vec!["7", "iqn.x:a", "8589934592", "256", "3"],
                vec!["7", "iqn.x:a", "1", "1", "1"],
            ]
        );
        assert!(text.lines().nth(1) == Some(HEADER));
    }
}
