//! The only layer with sockets, spawned tasks and signals.

pub mod boot;
pub mod dhcp;
pub mod iscsi;
pub mod ra;
pub mod read_trace;
pub mod registry;
pub mod tftp;
