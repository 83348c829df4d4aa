//! iSCSI (RFC 7143) target logic, sans-IO: login and negotiation, sessions, tasks, discovery.
//! Sockets live in `service::iscsi`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod access;
pub mod chap;
pub mod discovery;
pub mod login;
pub mod negotiate;
pub mod serial;
pub mod session;
pub mod target;
