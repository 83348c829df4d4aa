//! The writer task: stamps StatSN / ExpCmdSN / MaxCmdSN at send time and puts batches of PDUs
//! on the socket with vectored writes, or `sendfile` for segments of immutable files.

use crate::iscsi::session::{OutPdu, Stamp};
use crate::store::Segment;
use crate::wire::frame;
use crate::wire::pdu::{BHS_LEN, field};
use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use std::io::{self, IoSlice};
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

/// The connection's side of its writer task.
pub(super) struct Writer {
    tx: mpsc::Sender<WriterMsg>,
    task: JoinHandle<io::Result<()>>,
}

impl Writer {
    pub(super) fn spawn(wr: OwnedWriteHalf, sendfile_min: Option<usize>) -> Writer {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let task = tokio::spawn(writer(wr, rx, sendfile_min));
        Writer { tx, task }
    }

    /// Queue `pdus`, stamped with `window` (ExpCmdSN, MaxCmdSN).
    pub(super) async fn send(&self, pdus: Vec<OutPdu>, window: (u32, u32)) -> io::Result<()> {
        if pdus.is_empty() {
            return Ok(());
        }
        self.tx
            .send(WriterMsg::Pdus(pdus, window))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "writer gone"))
    }

    /// The full-feature phase starts after what is queued: StatSN from `stat_sn` on, digests.
    pub(super) async fn start_ffp(&self, stat_sn: u32, header_digest: bool, data_digest: bool) {
        let _ = self
            .tx
            .send(WriterMsg::Ffp {
                stat_sn,
                header_digest,
                data_digest,
            })
            .await;
    }

    /// Wait (up to 5 s) until everything queued so far is on the wire.
    pub(super) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(WriterMsg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Flush, then end the writer (it shuts the socket's write side down); waits up to 2 s.
    pub(super) async fn close(self) {
        self.flush().await;
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
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
    Flush(oneshot::Sender<()>),
}

const WRITER_QUEUE: usize = 256;
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
            bhs[field::STAT_SN].copy_from_slice(&stat_sn.to_be_bytes());
            *stat_sn = stat_sn.wrapping_add(1);
        }
        Stamp::Current => bhs[field::STAT_SN].copy_from_slice(&stat_sn.to_be_bytes()),
        Stamp::WindowOnly => {}
    }
    bhs[field::EXP_CMD_SN].copy_from_slice(&exp.to_be_bytes());
    bhs[field::MAX_CMD_SN].copy_from_slice(&max.to_be_bytes());
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
