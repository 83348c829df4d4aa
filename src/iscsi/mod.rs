//! iSCSI (RFC 7143) target logic, sans-IO: login and negotiation, sessions, tasks, discovery.
//! Sockets live in `service::iscsi`.

pub mod target;
