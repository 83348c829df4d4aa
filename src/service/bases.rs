//! Watching the base images being served: a base file that is written, truncated or replaced
//! while clients use it is noticed, and its clients get errors instead of mixed (or, for a
//! truncated memory map, fatal) reads. See [`crate::store::base::check_all`].

use crate::store::base;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long reads that began before a base was marked changed get to finish before its lease
/// is let go (and the writer waiting for it may truncate the file).
const GRACE: Duration = Duration::from_millis(200);

/// Check the bases every `every`, and at once when a lease break (SIGIO) says someone opens
/// one for writing. Runs until dropped.
pub async fn watch(every: Duration) {
    // A lease break sends SIGIO, whose default action ends the process: leases are taken
    // only once it is handled here.
    let mut sigio = signal(SignalKind::io()).ok();
    let lease = sigio.is_some();
    loop {
        let release = base::check_all(lease);
        if !release.is_empty() {
            tokio::time::sleep(GRACE).await;
            for w in release {
                w.release_lease();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = next(&mut sigio) => {}
        }
    }
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
