//! The session table: live sessions by TSIH, for TSIH assignment and session and connection
//! reinstatement, and the [`Kill`] switch a new login uses to close an old connection or to
//! have it probe its initiator.

use crate::iscsi::login::SessionTable;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::info;

/// Live sessions by TSIH, for TSIH assignment and session reinstatement.
#[derive(Default)]
pub(super) struct Table {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    next_tsih: u16,
    sessions: HashMap<u16, TableEntry>,
}

impl TableInner {
    fn insert(
        &mut self,
        tsih: u16,
        initiator: &str,
        isid: [u8; 6],
        target: Option<&str>,
        kill: &Arc<Kill>,
    ) {
        let entry = TableEntry {
            initiator: initiator.to_owned(),
            isid,
            target: target.map(str::to_owned),
            kill: kill.clone(),
        };
        self.sessions.insert(tsih, entry);
    }
}

struct TableEntry {
    initiator: String,
    isid: [u8; 6],
    target: Option<String>,
    kill: Arc<Kill>,
}

/// How a connection answers a probe: `()` once its initiator echoed the ping; dropped unsent
/// when the connection ends first.
pub(super) type ProbeReply = oneshot::Sender<()>;

/// Probe requests a connection holds at most (a sender waits for room, within its timeout).
const PROBES_QUEUED: usize = 4;

/// Asks a connection to close, or to ping its initiator for a login that would share its disk.
pub(super) struct Kill {
    flag: AtomicBool,
    pub(super) notify: Notify,
    probe: mpsc::Sender<ProbeReply>,
}

impl Kill {
    /// A connection's switch, and the receiver of the probe requests it must answer.
    pub(super) fn new() -> (Arc<Kill>, mpsc::Receiver<ProbeReply>) {
        let (probe, rx) = mpsc::channel(PROBES_QUEUED);
        let kill = Kill {
            flag: AtomicBool::new(false),
            notify: Notify::new(),
            probe,
        };
        (Arc::new(kill), rx)
    }

    /// Ask the connection to ping its initiator. The receiver resolves `Ok` when the initiator
    /// answered and `Err` when the connection ended without an answer; the caller bounds the
    /// wait (this waits for room while [`PROBES_QUEUED`] requests are pending).
    pub(super) async fn probe(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // A connection that is gone dropped its receiver: `tx` is dropped here, `rx` says so.
        let _ = self.probe.send(tx).await;
        rx
    }

    pub(super) fn fire(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // One waiter per connection: notify_one keeps a permit if it is not waiting right now.
        self.notify.notify_one();
    }
    pub(super) fn fired(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// The table as the login state machine sees it, for one connection.
pub(super) struct TableView<'a> {
    pub(super) table: &'a Table,
    pub(super) kill: Arc<Kill>,
}

impl SessionTable for TableView<'_> {
    fn new_session(&self, initiator: &str, isid: [u8; 6], target: Option<&str>) -> u16 {
        let mut t = self.table.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Session reinstatement: same initiator port (name + ISID) to the same target.
        let old: Vec<u16> = t
            .sessions
            .iter()
            .filter(|(_, e)| {
                e.initiator.eq_ignore_ascii_case(initiator)
                    && e.isid == isid
                    && match (&e.target, target) {
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                        (None, None) => true,
                        _ => false,
                    }
            })
            .map(|(k, _)| *k)
            .collect();
        for tsih in old {
            if let Some(e) = t.sessions.remove(&tsih) {
                info!(
                    initiator,
                    tsih, "session reinstatement: closing the old session"
                );
                e.kill.fire();
            }
        }
        loop {
            t.next_tsih = t.next_tsih.wrapping_add(1);
            if t.next_tsih != 0 && !t.sessions.contains_key(&t.next_tsih) {
                break;
            }
        }
        let tsih = t.next_tsih;
        t.insert(tsih, initiator, isid, target, &self.kill);
        tsih
    }

    fn owns(&self, tsih: u16, initiator: &str, isid: [u8; 6]) -> bool {
        self.table
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sessions
            .get(&tsih)
            .is_some_and(|e| e.initiator.eq_ignore_ascii_case(initiator) && e.isid == isid)
    }
}

impl Table {
    /// Make `kill` the connection of session `tsih` (a login that continued an existing TSIH
    /// replaces that session's connection: ErrorRecoveryLevel 0, one connection per session).
    pub(super) fn adopt(
        &self,
        tsih: u16,
        initiator: &str,
        isid: [u8; 6],
        target: Option<&str>,
        kill: &Arc<Kill>,
    ) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = t.sessions.get(&tsih)
            && !Arc::ptr_eq(&old.kill, kill)
        {
            info!(
                initiator,
                tsih, "connection reinstatement: closing the old connection"
            );
            old.kill.fire();
        }
        t.insert(tsih, initiator, isid, target, kill);
    }

    /// The connections of the sessions `tsihs` that are still in the table.
    pub(super) fn connections(&self, tsihs: &[u16]) -> Vec<(u16, Arc<Kill>)> {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        tsihs
            .iter()
            .filter_map(|tsih| t.sessions.get(tsih).map(|e| (*tsih, e.kill.clone())))
            .collect()
    }

    pub(super) fn remove(&self, tsih: u16, kill: &Arc<Kill>) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.sessions
            .get(&tsih)
            .is_some_and(|e| Arc::ptr_eq(&e.kill, kill))
        {
            t.sessions.remove(&tsih);
        }
    }
}
