//! TFTP server, sans-IO: packets, option negotiation and per-transfer state (RFC 1350, 2347,
//! 2348, 2349, 7440). The service layer owns the sockets and the clock and feeds datagrams and
//! timeouts in; [`transfer::Transfer`] says what to send and when it is done.
//!
//! Own implementation rather than async-tftp: async-tftp is built on smol/async-io (a second
//! reactor beside tokio), its transfer state cannot be driven without sockets and real time,
//! and serving a root read-only with symlink containment would need a custom handler anyway.
//! A sans-IO state machine is tested here with explicit time and scripted packets.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod ipxe;
pub mod packet;
pub mod path;
pub mod transfer;

pub use packet::{ErrorCode, Packet, Request};
pub use transfer::{Negotiated, Transfer, TransferLimits};

/// What went wrong in the TFTP layer.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP packet of {0} bytes is truncated")]
    Truncated(usize),
    #[error("TFTP request of {0} bytes is longer than the 512-byte limit")]
    RequestTooLong(usize),
    #[error("TFTP {0} is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("TFTP {0} is not UTF-8 text")]
    NotText(&'static str),
    #[error("TFTP request has no filename")]
    NoFilename,
    #[error("TFTP filename of {0} bytes is too long")]
    FilenameTooLong(usize),
    #[error("TFTP request has too many options")]
    TooManyOptions,
    #[error("unsupported TFTP mode {0:?}")]
    BadMode(String),
    #[error("unknown TFTP opcode {0}")]
    UnknownOpcode(u16),
    #[error("bad TFTP option {name}={value}")]
    BadOption { name: String, value: String },
    #[error("TFTP write requests are refused: the root is read-only")]
    WriteRefused,
    #[error("{0}: access outside the TFTP root refused")]
    OutsideRoot(String),
    #[error("{0}: file not found")]
    NotFound(String),
    #[error("opening {0}: {1}")]
    Opening(String, std::io::Error),
    #[error("opening the TFTP root: {0}")]
    OpeningRoot(std::io::Error),
    #[error("reading the file being sent: {0}")]
    Reading(std::io::Error),
    #[error("netascii file of {0} bytes is larger than the limit")]
    NetasciiTooLarge(u64),
}

impl TftpError {
    /// The error packet a client should get for this error.
    pub fn to_packet(&self) -> Vec<u8> {
        let code = match self {
            TftpError::NotFound(_) => ErrorCode::FileNotFound,
            TftpError::OutsideRoot(_) | TftpError::WriteRefused => ErrorCode::AccessViolation,
            TftpError::BadOption { .. } => ErrorCode::OptionNegotiation,
            TftpError::Reading(_)
            | TftpError::Opening(..)
            | TftpError::OpeningRoot(_)
            | TftpError::NetasciiTooLarge(_) => ErrorCode::NotDefined,
            _ => ErrorCode::IllegalOperation,
        };
        packet::error(code, &self.to_string())
    }
}
