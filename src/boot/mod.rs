//! Per-client boot menu, sans-IO: the iPXE script a client is served and the Wake-on-LAN magic
//! packet. The service layer (HTTP routes, the WoL sender) does the I/O.

pub mod script;
pub mod wol;
