//! Per-client boot menu, sans-IO: the iPXE script a client is served, installers' answer files,
//! and the Wake-on-LAN magic packet. The service layer (HTTP routes, the WoL sender) does the I/O.

pub mod answer;
pub mod script;
pub mod wol;
