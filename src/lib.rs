//! isboot: a diskless network-boot server.
//!
//! Layers (arrows point down only; see `../shared/design.md`):
//!
//! ```text
//! cli ──> service ──> iscsi ──> wire
//!                 │         └─> scsi ──> store
//!                 ├─> dhcp, tftp
//!                 └─> config
//! ```
//! `wire`, `iscsi`, `scsi`, `store`, `dhcp` and `tftp` do no socket I/O; `service` is the only
//! layer that owns sockets and spawns tasks.

pub mod boot;
pub mod cli;
pub mod config;
pub mod dhcp;
#[cfg(feature = "test-tools")]
pub mod initiator;
pub mod iscsi;
pub mod loglimit;
pub mod mac;
pub mod scsi;
pub mod service;
pub mod store;
#[allow(unsafe_code)] // the one module of system calls; see its doc
pub mod sys;
pub mod tftp;
pub mod wire;
