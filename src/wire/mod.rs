//! iSCSI wire formats (RFC 7143 §11): pure codecs, no I/O.
//!
//! * [`pdu`]: the 48-byte Basic Header Segment of every PDU type, parsed into typed structs
//!   and emitted from them.
//! * [`frame`]: cutting a byte stream into PDUs (AHS, header/data digests, padding), with
//!   every length checked against a limit before anything is allocated.
//! * [`text`]: `key=value\0` data segments of Login and Text PDUs.
//! * [`digest`]: CRC32C as iSCSI uses it.
//!
//! Imports nothing else from the crate.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod digest;
pub mod frame;
pub mod pdu;
pub mod text;

/// Errors decoding PDUs. None of them is a panic; the caller decides between a Reject PDU and
/// closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataSegmentTooLong { len: u32, max: u32 },
    #[error("additional header segments of {len} bytes exceed the limit of {max}")]
    AhsTooLong { len: usize, max: usize },
    #[error("malformed additional header segment")]
    BadAhs,
    #[error("header digest mismatch (got {got:#010x}, computed {want:#010x})")]
    HeaderDigest { got: u32, want: u32 },
    #[error("data digest mismatch (got {got:#010x}, computed {want:#010x})")]
    DataDigest { got: u32, want: u32 },
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("{0} PDU: {1}")]
    Malformed(&'static str, &'static str),
    #[error("text segment: {0}")]
    Text(&'static str),
}
