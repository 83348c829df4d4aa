//! The only layer with sockets, spawned tasks and signals.

pub mod api;
pub mod boot;
pub mod dhcp;
pub mod http;
pub mod iscsi;
pub mod metrics;
pub mod ra;
pub mod read_trace;
pub mod registry;
pub mod tftp;
