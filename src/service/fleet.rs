//! The fleet's I/O ([`crate::config::fleet`] has the rules): a running server on a shared pool
//! watches the pool's `isboot-fleet` object, acknowledges every notify with its presence, and
//! once a second (at once when it changed something the others must know: a client's address
//! learned, a disk taken or let go) notifies the object itself and hands the acknowledgements
//! it gets back to the registry as the live fleet. A blocking thread: librados calls block.

/// What wakes the fleet thread before its next round.
pub enum Wake {
    /// This server changed something the others must see now (notify them).
    Changed,
    /// Another server did (its presence, as it sent it: taken at once, then look again).
    Look(Vec<u8>),
    /// The watch broke: watch again.
    Broken(i32),
}

#[cfg(feature = "rbd")]
pub use rados::{follow, look};

#[cfg(feature = "rbd")]
mod rados {
    use super::Wake;
    use crate::config::ConfigError;
    use crate::config::fleet::{CHANGED, FLEET_OBJECT, FleetView, Presence};
    use crate::config::state::shared::Shared;
    use crate::service::registry::StateRegistry;
    use crate::store::rbd::ffi::{Watch, WatchEvent};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::{Duration, Instant};

    /// How often a server looks at the fleet without being asked.
    const ROUND: Duration = Duration::from_secs(1);
    /// How long a round waits for the servers' answers: a server that has not answered by then
    /// is not counted as alive this round (a dead one never answers).
    const ANSWER_MS: u64 = 2000;

    /// Follow the fleet of `registry`'s pool until `stop` is set.
    pub fn follow(
        registry: Arc<StateRegistry>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("isboot-fleet".into())
            .spawn(move || run(&registry, &stop))
            .expect("spawning a thread")
    }

    fn host_name() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn ceph(what: &str, e: std::io::Error) -> ConfigError {
        ConfigError::BadArgument(format!("{what}: {e}"))
    }

    fn run(registry: &Arc<StateRegistry>, stop: &AtomicBool) {
        let (tx, rx) = mpsc::channel::<Wake>();
        registry.set_fleet_wake(tx.clone());
        let ack = Arc::new(Mutex::new(Vec::new()));
        let mut watch: Option<Watch> = None;
        let mut failing = false;
        let mut warned_portal = false;
        let mut changed = true;
        let name = host_name();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(
                next.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500)),
            ) {
                Ok(Wake::Changed) => {
                    changed = true;
                    next = Instant::now();
                }
                Ok(Wake::Look(p)) => {
                    // What it says of itself now (an address it just learned for a client it
                    // sends here) counts before the round that follows.
                    if let Some(p) = Presence::decode(&p) {
                        registry.merge_fleet_member(p);
                    }
                    next = Instant::now();
                }
                Ok(Wake::Broken(e)) => {
                    tracing::warn!(
                        "fleet: the watch on {FLEET_OBJECT} broke (errno {e}); watching again"
                    );
                    watch = None;
                    next = Instant::now();
                }
                Err(_) => {}
            }
            if Instant::now() < next {
                continue;
            }
            next = Instant::now() + ROUND;
            let st = registry.current_state();
            let Some(me) = registry.portal() else {
                if !warned_portal {
                    registry.set_fleet(FleetView::default());
                    tracing::warn!(
                        "fleet: no server_ip in the config, so the other servers cannot name this one; it serves as a single server (set server_ip)"
                    );
                    warned_portal = true;
                }
                continue;
            };
            let presence: Presence = registry.presence(me, &name);
            *ack.lock().unwrap_or_else(|e| e.into_inner()) = presence.encode();
            let res = (|| {
                let shared = Shared::connect(&st.config.store)?;
                let io = shared.ioctx();
                if watch.is_none() {
                    io.create_object(FLEET_OBJECT)
                        .map_err(|e| ceph(&format!("creating {FLEET_OBJECT}"), e))?;
                    let tx = Mutex::new(tx.clone());
                    watch = Some(
                        io.watch_acking(
                            FLEET_OBJECT,
                            ack.clone(),
                            Box::new(move |e, payload| {
                                let w = match e {
                                    WatchEvent::Notify => match payload.strip_prefix(CHANGED) {
                                        Some(p) => Wake::Look(p.to_vec()),
                                        None => return,
                                    },
                                    WatchEvent::Broken(e) => Wake::Broken(e),
                                };
                                let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(w);
                            }),
                        )
                        .map_err(|e| ceph(&format!("watching {FLEET_OBJECT}"), e))?,
                    );
                    changed = true;
                }
                // A change carries this server's presence, so the others have it before their
                // next round.
                let payload = if changed {
                    [CHANGED, &presence.encode()].concat()
                } else {
                    b"look".to_vec()
                };
                let replies = io
                    .notify_collect(FLEET_OBJECT, &payload, ANSWER_MS)
                    .map_err(|e| ceph(&format!("notifying {FLEET_OBJECT}"), e))?;
                Ok::<_, ConfigError>(FleetView::from_acks(
                    Some(me),
                    replies.acks.iter().map(|(_, p)| p.as_slice()),
                ))
            })();
            match res {
                Ok(view) => {
                    changed = false;
                    if failing {
                        tracing::info!("fleet: the pool answers again");
                    }
                    failing = false;
                    registry.set_fleet(view);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            "fleet: {e} (serving the disks this server holds; trying again every {}s)",
                            ROUND.as_secs()
                        );
                    }
                    failing = true;
                }
            }
        }
        drop(watch);
    }

    /// One look at the fleet from outside a server (`isboot fleet`): notify the object and read
    /// the acknowledgements. Servers that did not answer within the wait are not listed.
    pub fn look(
        store: &crate::config::StoreConfig,
        me: Option<std::net::SocketAddrV4>,
    ) -> Result<FleetView, ConfigError> {
        let shared = Shared::connect(store)?;
        let replies = shared
            .ioctx()
            .notify_collect(FLEET_OBJECT, b"look", ANSWER_MS)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => ConfigError::BadArgument(format!(
                    "no isboot server has joined the fleet of this pool yet ({FLEET_OBJECT} does not exist): start isboot serve with shared_state = true"
                )),
                _ => ceph(&format!("notifying {FLEET_OBJECT}"), e),
            })?;
        Ok(FleetView::from_acks(
            me,
            replies.acks.iter().map(|(_, p)| p.as_slice()),
        ))
    }
}
