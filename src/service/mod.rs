//! (under construction)

pub mod dhcp;
pub mod tftp;
