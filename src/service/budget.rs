//! Budgets: every resource a peer can make the server hold (connections, TFTP transfer slots,
//! buffered write data) is counted in one place, against a limit from the config. A refusal is
//! a protocol answer or back-pressure decided by the caller; the budget only counts.
//!
//! Each budget keeps counters a metrics endpoint can publish ([`SlotStats`], [`BytesStats`]).

use crate::loglimit::{LogLimiter, LogLimits};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// Every slot is in use.
    Full { limit: usize },
    /// This address holds its share already.
    PerAddress { limit: usize },
}

impl std::fmt::Display for SlotRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotRefusal::Full { limit } => write!(f, "all {limit} slots are in use"),
            SlotRefusal::PerAddress { limit } => {
                write!(f, "this address already holds {limit} slots")
            }
        }
    }
}

/// Counters of a [`Slots`] budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SlotStats {
    pub limit: usize,
    pub per_address_limit: usize,
    pub in_use: usize,
    /// Most slots in use at once since start.
    pub peak: usize,
    /// Distinct addresses holding a slot now.
    pub addresses: usize,
    pub refused_full: u64,
    pub refused_per_address: u64,
}

#[derive(Debug, Default)]
struct SlotTable {
    by_addr: HashMap<IpAddr, usize>,
    in_use: usize,
    peak: usize,
    refused_full: u64,
    refused_per_address: u64,
}

/// A number of slots (connections, transfers), with a share per peer address.
#[derive(Debug, Clone)]
pub struct Slots {
    limit: usize,
    per_address: usize,
    table: Arc<Mutex<SlotTable>>,
}

/// A slot held; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    addr: IpAddr,
    table: Arc<Mutex<SlotTable>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The tables stay consistent at every await-free step, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slots {
    /// `limit` slots in total, `per_address` of them for one address (both at least 1).
    pub fn new(limit: usize, per_address: usize) -> Slots {
        Slots {
            limit: limit.max(1),
            per_address: per_address.max(1),
            table: Arc::default(),
        }
    }

    /// Take a slot for `addr`, or say why not.
    pub fn try_acquire(&self, addr: IpAddr) -> Result<Slot, SlotRefusal> {
        let mut t = lock(&self.table);
        if t.in_use >= self.limit {
            t.refused_full += 1;
            return Err(SlotRefusal::Full { limit: self.limit });
        }
        let held = t.by_addr.get(&addr).copied().unwrap_or(0);
        if held >= self.per_address {
            t.refused_per_address += 1;
            return Err(SlotRefusal::PerAddress {
                limit: self.per_address,
            });
        }
        t.by_addr.insert(addr, held + 1);
        t.in_use += 1;
        t.peak = t.peak.max(t.in_use);
        Ok(Slot {
            addr,
            table: self.table.clone(),
        })
    }

    pub fn stats(&self) -> SlotStats {
        let t = lock(&self.table);
        SlotStats {
            limit: self.limit,
            per_address_limit: self.per_address,
            in_use: t.in_use,
            peak: t.peak,
            addresses: t.by_addr.len(),
            refused_full: t.refused_full,
            refused_per_address: t.refused_per_address,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        t.in_use = t.in_use.saturating_sub(1);
        if let Some(n) = t.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                t.by_addr.remove(&self.addr);
            }
        }
    }
}

/// Counters of a [`Bytes`] budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BytesStats {
    pub limit: u64,
    pub in_use: u64,
    /// Most bytes held at once since start.
    pub peak: u64,
    /// Times a holder had to wait because the budget was spent.
    pub waits: u64,
}

#[derive(Debug)]
struct BytesInner {
    limit: u64,
    /// Most one peer address may hold (at most `limit`).
    per_address: u64,
    in_use: AtomicU64,
    peak: AtomicU64,
    waits: AtomicU64,
    /// Bytes held per address, by holders taken through [`Bytes::with_share`].
    by_addr: Mutex<HashMap<IpAddr, u64>>,
    freed: tokio::sync::Notify,
}

/// A byte budget (buffered write data): holders take bytes when data arrives and give them
/// back when it is written or the holder goes away. Taking never blocks; a holder that is
/// refused waits on [`Bytes::freed`] and tries again.
///
/// A view made by [`Bytes::with_share`] draws on one peer address's share as well as on the
/// whole, so peers on one address cannot hold more than their share (they can still, with
/// enough addresses, hold the whole until the stalled-write timeout frees it).
#[derive(Debug, Clone)]
pub struct Bytes {
    inner: Arc<BytesInner>,
    addr: Option<IpAddr>,
}

/// Bytes held; given back when dropped.
#[derive(Debug)]
pub struct HeldBytes {
    budget: Bytes,
    n: u64,
}

impl Bytes {
    /// `limit` bytes, all of which one address may hold.
    pub fn new(limit: u64) -> Bytes {
        Bytes::shared(limit, limit)
    }

    /// `limit` bytes in all, `per_address` of them (capped at `limit`) for the holders of one
    /// peer address (see [`Bytes::with_share`]).
    pub fn shared(limit: u64, per_address: u64) -> Bytes {
        Bytes {
            inner: Arc::new(BytesInner {
                limit,
                per_address: per_address.min(limit),
                in_use: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                by_addr: Mutex::default(),
                freed: tokio::sync::Notify::new(),
            }),
            addr: None,
        }
    }

    /// This budget as the holders from `addr` see it: what they take counts against the
    /// address's share and the whole.
    pub fn with_share(&self, addr: IpAddr) -> Bytes {
        Bytes {
            inner: self.inner.clone(),
            addr: Some(addr),
        }
    }

    /// The most one holder can ever get: the whole, or for a view of one address its share.
    pub fn limit(&self) -> u64 {
        match self.addr {
            Some(_) => self.inner.per_address,
            None => self.inner.limit,
        }
    }

    /// Hold `n` more bytes if the budget (and the address's share) allows it.
    pub fn try_take(&self, n: u64) -> Option<HeldBytes> {
        let Some(addr) = self.addr else {
            return self.take_global(n);
        };
        // The share is checked and counted under its lock, so racing holders of one address
        // cannot pass it between them.
        let mut shares = lock(&self.inner.by_addr);
        let held = shares.get(&addr).copied().unwrap_or(0);
        if held.checked_add(n)? > self.inner.per_address {
            return None;
        }
        let h = self.take_global(n)?;
        shares.insert(addr, held + n);
        Some(h)
    }

    fn take_global(&self, n: u64) -> Option<HeldBytes> {
        let inner = &self.inner;
        let mut cur = inner.in_use.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(n).filter(|&v| v <= inner.limit)?;
            match inner
                .in_use
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    inner.peak.fetch_max(next, Ordering::Relaxed);
                    return Some(HeldBytes {
                        budget: self.clone(),
                        n,
                    });
                }
                Err(v) => cur = v,
            }
        }
    }

    /// Count a wait (the caller is about to wait on [`Bytes::freed`]).
    pub fn note_wait(&self) {
        self.inner.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Completes when some bytes were given back (register before re-checking, as with any
    /// `Notify`: `let f = b.freed(); if let Some(h) = b.try_take(n) {..} else { f.await }`).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.freed.notified()
    }

    /// Bytes held now by the holders of `addr`.
    pub fn held_by(&self, addr: IpAddr) -> u64 {
        lock(&self.inner.by_addr).get(&addr).copied().unwrap_or(0)
    }

    pub fn stats(&self) -> BytesStats {
        BytesStats {
            limit: self.inner.limit,
            in_use: self.inner.in_use.load(Ordering::Relaxed),
            peak: self.inner.peak.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
        }
    }
}

impl HeldBytes {
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Add `other` (taken from the same view of the budget) to this holding.
    pub fn merge(&mut self, mut other: HeldBytes) {
        debug_assert_eq!(self.budget.addr, other.budget.addr);
        self.n += std::mem::take(&mut other.n);
    }
}

/// Write buffers at least this large get their own anonymous mapping (glibc's own default
/// threshold for that). From the heap, freed 8 MiB buffers stayed in malloc's per-thread
/// arenas (whose threshold for mapping rises with every large free), and the server's RSS
/// grew past the budget by more than the data it held; a mapping is returned when dropped.
const OWN_MAPPING_MIN: u64 = 128 << 10;

/// One write command's buffer and the budget it holds; the memory goes first when dropped.
struct WriteMemory {
    mem: Memory,
    _held: HeldBytes,
}

enum Memory {
    Mapped(memmap2::MmapMut),
    Heap(Vec<u8>),
}

impl AsRef<[u8]> for WriteMemory {
    fn as_ref(&self) -> &[u8] {
        match &self.mem {
            Memory::Mapped(m) => m,
            Memory::Heap(v) => v,
        }
    }
}

impl AsMut<[u8]> for WriteMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            Memory::Mapped(m) => m,
            Memory::Heap(v) => v,
        }
    }
}

impl crate::iscsi::session::WriteMem for WriteMemory {}

/// The iSCSI sessions take their write buffers from this budget.
impl crate::iscsi::session::WriteBudget for Bytes {
    fn limit(&self) -> u64 {
        Bytes::limit(self)
    }

    fn hold(&mut self, n: u64) -> Option<crate::iscsi::session::WriteBuf> {
        let held = self.try_take(n)?;
        let len = usize::try_from(n).ok()?;
        let mapped = (n >= OWN_MAPPING_MIN)
            .then(|| memmap2::MmapMut::map_anon(len).ok())
            .flatten();
        let mem = match mapped {
            Some(m) => Memory::Mapped(m),
            // Small, or no mapping to be had: the heap (which aborts if it has none either).
            None => Memory::Heap(vec![0; len]),
        };
        Some(Box::new(WriteMemory { mem, _held: held }))
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        if self.n > 0 {
            let inner = &self.budget.inner;
            if let Some(addr) = self.budget.addr {
                let mut shares = lock(&inner.by_addr);
                if let Some(h) = shares.get_mut(&addr) {
                    *h = h.saturating_sub(self.n);
                    if *h == 0 {
                        shares.remove(&addr);
                    }
                }
            }
            inner.in_use.fetch_sub(self.n, Ordering::AcqRel);
            inner.freed.notify_waiters();
        }
    }
}

/// Log lines caused by peers, limited per peer address and in total (see [`LogLimiter`]);
/// time is counted from the creation of the limit.
#[derive(Clone, Debug)]
pub struct PeerLog {
    limiter: Arc<Mutex<LogLimiter<IpAddr>>>,
    start: std::time::Instant,
    what: &'static str,
}

impl PeerLog {
    /// `what` names the peers in the line that says how many lines were left out.
    pub fn new(what: &'static str) -> PeerLog {
        PeerLog {
            limiter: Arc::new(Mutex::new(LogLimiter::new(LogLimits::default()))),
            start: std::time::Instant::now(),
            what,
        }
    }

    /// May a line about `peer` be logged now?
    pub fn allow(&self, peer: IpAddr) -> bool {
        let now = self.start.elapsed().as_secs();
        lock(&self.limiter).allow(&peer, now, self.what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn slots_limit_per_address_and_in_total() {
        let s = Slots::new(3, 2);
        let a1 = s.try_acquire(ip(1)).expect("first");
        let a2 = s.try_acquire(ip(1)).expect("second");
        assert_eq!(
            s.try_acquire(ip(1)).unwrap_err(),
            SlotRefusal::PerAddress { limit: 2 }
        );
        let b1 = s.try_acquire(ip(2)).expect("other address");
        assert_eq!(
            s.try_acquire(ip(3)).unwrap_err(),
            SlotRefusal::Full { limit: 3 }
        );
        drop(a1);
        let a3 = s.try_acquire(ip(1)).expect("given back");
        let st = s.stats();
        assert_eq!((st.in_use, st.peak, st.addresses), (3, 3, 2));
        assert_eq!((st.refused_full, st.refused_per_address), (1, 1));
        drop((a2, a3, b1));
        let st = s.stats();
        assert_eq!((st.in_use, st.addresses), (0, 0), "table emptied");
    }

    #[test]
    fn bytes_are_held_until_dropped() {
        let b = Bytes::new(100);
        let mut h = b.try_take(60).expect("fits");
        assert!(b.try_take(41).is_none());
        h.merge(b.try_take(40).expect("fits exactly"));
        assert_eq!(h.len(), 100);
        assert!(b.try_take(1).is_none());
        drop(h);
        assert_eq!(b.stats().in_use, 0);
        assert_eq!(b.stats().peak, 100);
        assert!(b.try_take(u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn one_address_holds_only_its_share() {
        let b = Bytes::shared(100, 40);
        let (a, c) = (b.with_share(ip(2)), b.with_share(ip(3)));
        assert_eq!((b.limit(), a.limit()), (100, 40));
        let mut h = a.try_take(30).expect("within the share");
        assert!(a.try_take(11).is_none(), "past the share");
        h.merge(a.try_take(10).expect("the share exactly"));
        assert_eq!(b.held_by(ip(2)), 40);
        let h3 = c.try_take(40).expect("another address has its own share");
        assert!(b.try_take(21).is_none(), "the whole still binds");
        let g = b
            .try_take(20)
            .expect("unshared holders draw on the whole only");
        drop(h);
        assert_eq!(b.held_by(ip(2)), 0);
        assert_eq!(b.stats().in_use, 60);
        drop((h3, g));
        assert_eq!(b.stats().in_use, 0);
        assert!(a.try_take(u64::MAX).is_none(), "no overflow");
        assert_eq!(b.held_by(ip(2)), 0, "a refusal holds nothing");
        assert!(Bytes::shared(10, 99).with_share(ip(2)).limit() == 10);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_bytes_come_back() {
        let b = Bytes::new(10);
        let h = b.try_take(10).expect("fits");
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            loop {
                let freed = b2.freed();
                if let Some(h) = b2.try_take(5) {
                    return h.len();
                }
                b2.note_wait();
                freed.await;
            }
        });
        tokio::task::yield_now().await;
        drop(h);
        assert_eq!(waiter.await.expect("joins"), 5);
    }

    #[test]
    fn write_buffers_are_zeroed_and_hold_the_budget_until_dropped() {
        use crate::iscsi::session::WriteBudget;
        let mut b = Bytes::new(12 << 20);
        // A small buffer (heap) and a large one (its own mapping), held together.
        let mut small = b.hold(4096).expect("room");
        let mut large = b.hold(8 << 20).expect("room");
        assert!(
            b.hold(4 << 20).is_none(),
            "12 MiB budget, 8 MiB + 4 KiB held"
        );
        for (buf, n) in [(&mut small, 4096), (&mut large, 8 << 20)] {
            let mem: &mut [u8] = (**buf).as_mut();
            assert_eq!(mem.len(), n);
            assert!(mem.iter().all(|&x| x == 0));
            mem[n - 4..].copy_from_slice(b"data");
            assert_eq!(&(**buf).as_ref()[n - 4..], b"data");
        }
        assert_eq!(b.stats().in_use, (8 << 20) + 4096);
        drop(large);
        assert_eq!(b.stats().in_use, 4096);
        drop(small);
        assert_eq!(b.stats().in_use, 0);
        assert!(b.hold(12 << 20).is_some(), "all of it is back");
    }
}
