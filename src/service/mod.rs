//! The only layer with sockets, spawned tasks and signals.

pub mod api;
pub mod bases;
pub mod boot;
pub mod budget;
pub mod dhcp;
pub mod fleet;
pub mod http;
pub mod iscsi;
pub mod menu;
pub mod metrics;
pub mod ra;
pub mod read_trace;
pub mod registry;
pub mod secrets;
#[cfg(feature = "rbd")]
pub mod shared;
pub mod tftp;
pub mod wol;

/// Run `f`, which blocks (file I/O, fsync), from async code that must wait for its result: off
/// the executor's core threads where the runtime allows it (`block_in_place` on a multi-thread
/// runtime), in place otherwise.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
