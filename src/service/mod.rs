//! The only layer with sockets, spawned tasks and signals.

pub mod iscsi;
pub mod registry;
