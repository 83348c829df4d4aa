//! A running server follows the fleet's shared state ([`crate::config::state::shared`]): it
//! watches the pool's `isboot-state` object and, on every notify (and every few seconds in
//! case a notify was missed while the watch was broken), copies a newer state into its
//! directory; [`super::registry::maintain`]'s poll of the files then reloads the targets. A
//! blocking thread: librados calls block, and this must not hold a tokio worker.

use crate::config::StateDir;
use crate::config::state::shared::{STATE_OBJECT, Shared};
use crate::store::rbd::ffi::WatchEvent;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Read the object this often even without a notify.
const FALLBACK: Duration = Duration::from_secs(5);
/// How often the thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(500);

/// Follow the shared state of `dir`'s pool until `stop` is set. Errors (cluster unreachable)
/// are logged, and the thread tries again.
pub fn follow(dir: StateDir, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("isboot-shared-state".into())
        .spawn(move || run(&dir, &stop))
        .expect("spawning a thread")
}

fn run(dir: &StateDir, stop: &AtomicBool) {
    let (tx, rx) = mpsc::channel::<WatchEvent>();
    let mut watch = None;
    let mut next_read = Instant::now();
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let event = rx.recv_timeout(TICK).ok();
        if event == Some(WatchEvent::Notify) {
            next_read = Instant::now();
        }
        if let Some(WatchEvent::Broken(e)) = event {
            tracing::warn!(
                "shared state: the watch on {STATE_OBJECT} broke (errno {e}); watching again"
            );
            watch = None;
            next_read = Instant::now();
        }
        if Instant::now() < next_read {
            continue;
        }
        next_read = Instant::now() + FALLBACK;
        let res = (|| {
            let store = dir.load()?.config.store;
            let shared = Shared::connect(&store)?;
            if let Some(g) = shared.refresh(dir)? {
                tracing::info!(
                    generation = g,
                    "shared state: took a change made on another server"
                );
            }
            if watch.is_none() {
                let tx = tx.clone();
                // The object exists once a first change was saved; until then, read it.
                match shared.ioctx().watch(
                    STATE_OBJECT,
                    Box::new(move |e| {
                        let _ = tx.send(e);
                    }),
                ) {
                    Ok(w) => watch = Some(w),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        return Err(crate::config::ConfigError::BadArgument(format!(
                            "watching {STATE_OBJECT}: {e}"
                        )));
                    }
                }
            }
            Ok::<(), crate::config::ConfigError>(())
        })();
        match res {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "shared state: {e} (serving this server's copy; trying again every {}s)",
                        FALLBACK.as_secs()
                    );
                }
                failing = true;
            }
        }
    }
}

/// Tests: point `dir`'s `[store]` at the development cluster's pool (`cfg`), its state shared
/// through the pool when `shared`.
#[cfg(test)]
pub(crate) fn put_on_pool(dir: &StateDir, cfg: &crate::store::rbd::RbdConfig, shared: bool) {
    let mut c = dir.load().unwrap().config;
    c.store.backend = Some(crate::config::Backend::Rbd);
    c.store.ceph_conf = Some(cfg.conf.clone().into());
    c.store.keyring = Some(cfg.keyring.clone().into());
    c.store.client = Some(cfg.client.clone());
    c.store.pool = Some(cfg.pool.clone());
    c.store.shared_state = shared.then_some(true);
    crate::config::write_atomic(&dir.config_path(), c.render().as_bytes(), 0o644).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::registry::Mode;
    use crate::config::secret::{generate_chap, read_secret_file, secret_path};
    use crate::config::{AddClient, BootAction, BootChange};

    /// Share `dir`'s state through the development cluster's pool.
    fn share(dir: &StateDir, cfg: &crate::store::rbd::RbdConfig) {
        put_on_pool(dir, cfg, true);
        assert!(dir.load().unwrap().config.store.shared_state());
    }

    fn remove_object(cfg: &crate::store::rbd::RbdConfig) {
        let _ = std::process::Command::new("rados")
            .args([
                "-c",
                &cfg.conf,
                "--keyring",
                &cfg.keyring,
                "-n",
                &cfg.client,
            ])
            .args(["-p", &cfg.pool, "rm", STATE_OBJECT])
            .output();
    }

    /// Wait (up to 20 s) until `cond` holds for `dir`'s state.
    fn wait_for(dir: &StateDir, what: &str, cond: impl Fn(&crate::config::State) -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond(&dir.load().unwrap()) {
            assert!(Instant::now() < end, "server B never saw {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Two servers' state directories on one pool: a change made on A reaches B's directory
    /// through B's follower (watch/notify, no command run on B), secrets included; a change
    /// made on B reaches A's next command; a removal removes B's secret file; two changes take
    /// turns on the pool's lock.
    #[test]
    fn rbd_shared_state_reaches_the_other_server_and_changes_take_turns() {
        let cfg = crate::store::rbd::dev_cluster();
        // One state object per pool: start (and end) without one.
        remove_object(&cfg);
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (
            StateDir::new(t.path().join("a")),
            StateDir::new(t.path().join("b")),
        );
        a.init(None, None, None).unwrap();
        b.init(None, None, None).unwrap();
        // A base in A's directory (the clients of this test need one; disks are not served).
        let img = t.path().join("base.raw");
        std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
        a.image_add(&"base".parse().unwrap(), &img, &mut |_, _| {})
            .unwrap();
        share(&a, &cfg);
        share(&b, &cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let follower = follow(b.clone(), stop.clone());

        // A watch of our own: every change notifies the object's watchers.
        let (tx, notified) = std::sync::mpsc::channel();
        let _ = a.lock().unwrap(); // the lock makes the object, which a watch needs
        let shared = Shared::connect(&a.load().unwrap().config.store).unwrap();
        let _watch = shared
            .ioctx()
            .watch(
                STATE_OBJECT,
                Box::new(move |e| {
                    let _ = tx.send(e);
                }),
            )
            .unwrap();

        let chap = generate_chap("pc1").unwrap();
        a.lock()
            .unwrap()
            .add_client(AddClient {
                mac: "52:54:00:00:16:01".parse().unwrap(),
                image: "base".parse().unwrap(),
                name: Some("pc1".parse().unwrap()),
                ip: None,
                mode: Mode::Persistent,
                initiators: Vec::new(),
                chap: Some(chap.clone()),
                quota_mib: None,
            })
            .unwrap();
        assert_eq!(
            notified.recv_timeout(Duration::from_secs(10)),
            Ok(WatchEvent::Notify),
            "A's change notified no watcher"
        );
        wait_for(&b, "pc1", |s| s.registry.find_client("pc1").is_some());
        let on_b = read_secret_file(&secret_path(b.root(), "pc1"), true).unwrap();
        assert_eq!(on_b, Some(chap), "pc1's CHAP secret on B");
        // The follower writes the generation after the files it names.
        wait_for(&b, "A's generation", |_| {
            b.shared_generation() == a.shared_generation()
        });

        // A change made on B (next boot), seen by A's next command.
        b.lock()
            .unwrap()
            .set_boot(
                "pc1",
                BootChange {
                    next: Some(BootAction::Local),
                    ..Default::default()
                },
            )
            .unwrap();
        a.pull_shared().unwrap();
        let st = a.load().unwrap();
        assert_eq!(
            st.registry.find_client("pc1").unwrap().boot.next,
            Some(BootAction::Local)
        );

        // Two changes at once take turns: B's waits for A's to finish, then starts from it.
        let held = a.lock().unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let other = {
            let (b, released) = (b.clone(), released.clone());
            std::thread::spawn(move || {
                let l = b.lock().unwrap();
                (
                    released.load(Ordering::SeqCst),
                    l.state.registry.find_client("pc1").is_some(),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(1500));
        let mut held = held;
        held.remove_client("pc1", false).unwrap();
        released.store(true, Ordering::SeqCst);
        drop(held);
        let (after_release, b_sees_pc1) = other.join().unwrap();
        assert!(after_release, "B's change started while A held the lock");
        assert!(!b_sees_pc1, "B's change did not start from A's");
        wait_for(&b, "pc1 removed", |s| {
            s.registry.find_client("pc1").is_none()
        });
        assert!(
            !secret_path(b.root(), "pc1").exists(),
            "pc1's secret left on B"
        );

        stop.store(true, Ordering::Relaxed);
        follower.join().unwrap();
        remove_object(&cfg);
    }
}
