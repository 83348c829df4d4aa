//! The iSCSI target registry of `isboot serve`, built from the state directory and kept in step
//! with it: [`maintain`] polls the config and registry files every second and reloads when
//! they change, so a client added, changed, reset or removed takes effect without a restart
//! (the sessions of a reset, changed or removed client's old target are ended with
//! `drop_sessions`). It also publishes `run/status.json` every second for `isboot status`, and
//! flushes overlays whose sessions have all ended.

use crate::config::fleet::{FleetView, Presence};
use crate::config::{
    Bound, ConfigError, Origin, ServerStatus, SessionStatus, Space, State, StateDir, TargetKind,
    TargetSpec, TargetStatus,
};
use crate::config::{MacAddr, Mode, now_unix, write_atomic};
use crate::dhcp::{AddressOrigin, PowerOn};
use crate::iscsi::access::Binding;
use crate::iscsi::target::{ChapConfig, TargetConfig, TargetRegistry, TargetStats};
use crate::scsi::{LogicalUnit, LuIdentity, TargetLus};
use crate::store::BlockDevice;
use crate::store::base::BaseImage;
use crate::store::overlay::Overlay;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// How long a power-on request seen while the disk was in use waits for the new boot's first
/// login ([`StateRegistry::login_accepted`]): PXE to iPXE's login takes seconds.
pub const PENDING_POWER_ON: Duration = Duration::from_secs(120);

/// How old a page-cache sample of the base images may be before a scrape takes a new one
/// ([`StateRegistry::image_cache`]).
pub const IMAGE_CACHE_SAMPLE: Duration = Duration::from_secs(10);

/// How much of one open base image version is in the page cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCache {
    pub image: String,
    pub version: u64,
    pub size: u64,
    pub cached: u64,
}

/// How often [`maintain`] looks at the state files and publishes the status.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

struct Live {
    spec: TargetSpec,
    target: Arc<TargetConfig>,
    disk: Disk,
}

/// What a target serves: an overlay over a base file, or a client's clone on Ceph RBD.
#[derive(Clone)]
enum Disk {
    File(Arc<Overlay>),
    #[cfg(feature = "rbd")]
    Rbd(Arc<crate::store::rbd::RbdDevice>),
}

impl Disk {
    fn device(&self) -> Arc<dyn BlockDevice> {
        match self {
            Disk::File(o) => o.clone(),
            #[cfg(feature = "rbd")]
            Disk::Rbd(d) => d.clone(),
        }
    }

    fn overlay(&self) -> Option<&Arc<Overlay>> {
        match self {
            Disk::File(o) => Some(o),
            #[cfg(feature = "rbd")]
            Disk::Rbd(_) => None,
        }
    }

    /// Flush an overlay's map; an RBD disk has nothing waiting (librbd acknowledges
    /// committed writes, `rbd_cache` is off).
    fn flush(&self) -> Result<(), crate::store::StoreError> {
        match self.overlay() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    fn has_unflushed(&self) -> bool {
        self.overlay().is_some_and(|o| o.has_unflushed())
    }

    fn is_rbd(&self) -> bool {
        self.overlay().is_none()
    }

    /// Put the disk under a client's quota (an overlay's data blocks, an RBD clone's objects).
    fn set_quota(&self, bytes: Option<u64>) {
        match self {
            Disk::File(o) => o.set_quota(bytes),
            #[cfg(feature = "rbd")]
            Disk::Rbd(d) => d.set_quota(bytes),
        }
    }

    /// (bytes the quota counts, the quota, the last write needing space was refused).
    fn quota_use(&self) -> (u64, Option<u64>, bool) {
        match self {
            Disk::File(o) => (o.data_bytes(), o.quota(), o.over_quota()),
            #[cfg(feature = "rbd")]
            Disk::Rbd(d) => (d.held_bytes(), d.quota(), d.over_quota()),
        }
    }
}

/// Identity of a file's current content: (inode, size, mtime in ns).
type Stamp = Option<(u64, u64, i128)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.ino(),
        m.len(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    ))
}

struct Inner {
    /// The state the targets were built from.
    state: Arc<State>,
    targets: Vec<Live>,
    stamps: (Stamp, Stamp),
    bases: HashMap<PathBuf, Weak<BaseImage>>,
    /// Targets that could not be opened at the last reload (IQN -> why, as logged): tried
    /// again every tick (an RBD disk whose lock another server holds is served once it is
    /// free).
    refused: HashMap<String, String>,
    /// RBD client disks the fleet's choice gives to another server (IQN -> why, as logged):
    /// looked at again when the fleet changes, not every tick.
    elsewhere: HashMap<String, String>,
}

/// How long a closed RBD disk waits for its last session to let go of it before the server
/// gives up removing it (see `close_rbd_disk`).
#[cfg(feature = "rbd")]
const RBD_CLOSE_WAIT: Duration = Duration::from_secs(60);

/// Targets served from a state directory. Cheap to query from many tasks at once.
pub struct StateRegistry {
    dir: StateDir,
    inner: RwLock<Inner>,
    /// Serialises reloads (they open files; lookups keep using the old list meanwhile).
    reload_lock: Mutex<()>,
    listen: Mutex<String>,
    http: Mutex<Option<String>>,
    boot_http: Mutex<Option<String>>,
    /// Power-on requests seen while the target was in use: target IQN -> when.
    pending_power_on: Mutex<HashMap<String, std::time::Instant>>,
    /// Addresses clients hold, as this server's DHCP learned them or (in a fleet) as another
    /// server's did, the newest of either (see [`StateRegistry::learn_address`]); `true`:
    /// this server's own, which it tells the fleet.
    learned: Mutex<HashMap<MacAddr, (std::net::Ipv4Addr, AddressOrigin, bool)>>,
    /// The last page-cache sample of the open base images, and when it was taken.
    image_cache: Mutex<Option<(std::time::Instant, Vec<ImageCache>)>>,
    /// Free space on the state file system was below the warning threshold at the last look
    /// (the crossing is logged once each way).
    space_low: std::sync::atomic::AtomicBool,
    /// The Ceph pool RBD disks are opened in, connected at the first one.
    #[cfg(feature = "rbd")]
    pool: Mutex<Option<Arc<crate::store::rbd::RbdStore>>>,
    /// The live fleet as the last round saw it (empty: a single server, or none answered).
    fleet: RwLock<Arc<FleetView>>,
    /// The fleet changed who holds what since the last reload.
    fleet_moved: std::sync::atomic::AtomicBool,
    /// A server of a fleet (`shared_state`) opens no client disk on RBD before its first look
    /// at the fleet: it would take disks another server is about to be given.
    fleet_pending: std::sync::atomic::AtomicBool,
    /// Tells the fleet thread this server changed something the others must see now.
    fleet_wake: Mutex<Option<std::sync::mpsc::Sender<crate::service::fleet::Wake>>>,
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.to_ascii_lowercase().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn chap_config(c: &crate::config::Chap) -> ChapConfig {
    ChapConfig {
        user: c.user.clone(),
        secret: c.secret.expose().as_bytes().to_vec(),
        mutual: match (&c.mutual_user, &c.mutual_secret) {
            (Some(u), Some(s)) => Some((u.clone(), s.expose().as_bytes().to_vec())),
            _ => None,
        },
    }
}

impl StateRegistry {
    /// Load the state directory and open every target's overlay.
    pub fn open(dir: StateDir) -> Result<StateRegistry, ConfigError> {
        let state = Arc::new(dir.load()?);
        let r = StateRegistry {
            fleet_pending: std::sync::atomic::AtomicBool::new(
                cfg!(feature = "rbd") && state.config.store.shared_state(),
            ),
            dir,
            inner: RwLock::new(Inner {
                state,
                targets: Vec::new(),
                stamps: (None, None),
                bases: HashMap::new(),
                refused: HashMap::new(),
                elsewhere: HashMap::new(),
            }),
            reload_lock: Mutex::new(()),
            listen: Mutex::new(String::new()),
            http: Mutex::new(None),
            boot_http: Mutex::new(None),
            pending_power_on: Mutex::new(HashMap::new()),
            learned: Mutex::new(HashMap::new()),
            image_cache: Mutex::new(None),
            space_low: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "rbd")]
            pool: Mutex::new(None),
            fleet: RwLock::new(Arc::new(FleetView::default())),
            fleet_moved: std::sync::atomic::AtomicBool::new(false),
            fleet_wake: Mutex::new(None),
        };
        r.reload()?;
        Ok(r)
    }

    pub fn state_dir(&self) -> &StateDir {
        &self.dir
    }

    /// Page-cache residency of every base image version the targets use, sampled at most
    /// every `max_age` (a scrape between samples gets the last one): `mincore` over each
    /// image, never on the serving path.
    pub fn image_cache(&self, max_age: Duration) -> Vec<ImageCache> {
        let bases: Vec<(PathBuf, Arc<BaseImage>)> = self
            .read()
            .bases
            .iter()
            .filter_map(|(p, w)| Some((p.clone(), w.upgrade()?)))
            .collect();
        let mut last = self.image_cache.lock().unwrap_or_else(|e| e.into_inner());
        // A new or dropped base is sampled at once.
        if let Some((at, v)) = last.as_ref()
            && at.elapsed() < max_age
            && v.len() == bases.len()
        {
            return v.clone();
        }
        let mut v: Vec<ImageCache> = bases
            .iter()
            .filter_map(|(path, b)| {
                let cached = b.cached_bytes()?.ok()?;
                Some(ImageCache {
                    // images/NAME/vN.raw
                    image: path.parent()?.file_name()?.to_string_lossy().into_owned(),
                    version: b.version(),
                    size: b.bytes().len() as u64,
                    cached,
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.image, a.version).cmp(&(&b.image, b.version)));
        *last = Some((std::time::Instant::now(), v.clone()));
        v
    }

    /// The state as last loaded (config with its `[dhcp]` section, clients, images): what the
    /// DHCP service should answer from, e.g. `registry.current_state().boot_target(&mac)`.
    pub fn current_state(&self) -> Arc<State> {
        self.read().state.clone()
    }

    /// Record the address the server listens on (shown by `isboot status`).
    pub fn set_listen(&self, addr: &str) {
        *self.listen.lock().unwrap_or_else(|e| e.into_inner()) = addr.to_string();
    }

    /// Record the address of the admin HTTP routes (published in the status).
    pub fn set_http(&self, addr: &str) {
        *self.http.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.to_string());
    }

    /// Record the address of the boot routes (published in the status).
    pub fn set_boot_http(&self, addr: &str) {
        *self.boot_http.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.to_string());
    }

    /// The URL of `mac`'s iPXE script (`http://<boot routes>/boot/<mac>.ipxe`), once the boot
    /// routes are bound (None while they are off: DHCP then names the root-path as before).
    /// Routes bound to a wildcard address are named by the config's `server_ip`.
    pub fn boot_script_url(&self, mac: &crate::mac::MacAddr) -> Option<String> {
        Some(script_url(&self.boot_addr()?, mac))
    }

    /// Where clients reach the boot routes (`ip:port`), once they are bound.
    fn boot_addr(&self) -> Option<String> {
        let bound: std::net::SocketAddr = self
            .boot_http
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()?
            .parse()
            .ok()?;
        crate::config::HttpConfig::boot_url_addr(bound, self.current_state().config.server_ip)
            .map(|a| a.to_string())
    }

    /// This server's iSCSI portal on the boot network: `server_ip` and the port it listens
    /// on (bound, else configured). `None` without a `server_ip`.
    pub fn portal(&self) -> Option<std::net::SocketAddrV4> {
        let st = self.current_state();
        let port = self
            .listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .parse::<std::net::SocketAddr>()
            .map(|a| a.port())
            .unwrap_or(st.config.listen_addr().port());
        Some(std::net::SocketAddrV4::new(st.config.server_ip?, port))
    }

    /// The fleet as the last round saw it.
    pub fn fleet(&self) -> Arc<FleetView> {
        self.fleet.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new round's view of the fleet. A change of who holds what (or who is alive) has the
    /// next tick look again at the disks the fleet gave to others.
    pub fn set_fleet(&self, view: FleetView) {
        self.put_fleet(view);
        if self
            .fleet_pending
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.fleet_moved
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn put_fleet(&self, view: FleetView) {
        let mut f = self.fleet.write().unwrap_or_else(|e| e.into_inner());
        // Client addresses another server learned since the last look: the newest address a
        // client was seen at wins, whichever server saw it (its boot request may go to any).
        // A server that just joined only fills in what this one does not know.
        let mut news = Vec::new();
        for m in view.members.iter().filter(|m| Some(m.portal) != view.me) {
            let before = f.members.iter().find(|b| b.portal == m.portal);
            for e in &m.learned {
                if before.is_some_and(|b| b.learned.contains(e)) {
                    continue;
                }
                news.push((m.portal, before.is_some(), e.clone()));
            }
        }
        let holders = |v: &FleetView| -> Vec<(std::net::SocketAddrV4, Vec<String>)> {
            v.members
                .iter()
                .map(|m| (m.portal, m.clients.clone()))
                .collect()
        };
        if holders(&f) != holders(&view) {
            if f.members
                .iter()
                .map(|m| m.portal)
                .ne(view.members.iter().map(|m| m.portal))
            {
                tracing::info!(
                    servers = ?view.members.iter().map(|m| m.portal.to_string()).collect::<Vec<_>>(),
                    "fleet: the live servers changed"
                );
            }
            self.fleet_moved
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        *f = Arc::new(view);
        drop(f);
        for (from, known, (mac, ip, how)) in news {
            let how = if how == "lease" {
                AddressOrigin::Lease
            } else {
                AddressOrigin::Seen
            };
            if !known && self.learned_address(&mac).is_some() {
                continue;
            }
            if self.record_address(mac, ip, how, false) {
                tracing::info!(mac = %mac, %ip, server = %from, "client address learned by another server of the fleet: its target here accepts logins from it");
            }
        }
    }

    /// Another server's presence, as it announced a change (see [`FleetView::merge`]).
    pub fn merge_fleet_member(&self, p: Presence) {
        let mut v = (*self.fleet()).clone();
        v.merge(p);
        self.put_fleet(v);
    }

    /// Where the fleet thread is woken ([`StateRegistry::fleet_changed`]).
    pub fn set_fleet_wake(&self, tx: std::sync::mpsc::Sender<crate::service::fleet::Wake>) {
        *self.fleet_wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// This server changed what it tells the fleet (a disk taken or let go, an address
    /// learned): the others hear it now, not at the next round.
    fn fleet_changed(&self) {
        if let Some(tx) = self
            .fleet_wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.send(crate::service::fleet::Wake::Changed);
        }
    }

    /// What this server (at `portal`, host `name`) tells the fleet: the clients whose RBD
    /// disks it holds, its sessions, the client addresses its DHCP learned.
    pub fn presence(&self, portal: std::net::SocketAddrV4, name: &str) -> Presence {
        let (clients, sessions) = {
            let r = self.read();
            let clients = r
                .targets
                .iter()
                .filter(|l| l.disk.is_rbd())
                .filter_map(|l| match &l.spec.kind {
                    TargetKind::Client(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            let sessions = r
                .targets
                .iter()
                .map(|l| l.target.stats.sessions().len() as u64)
                .sum();
            (clients, sessions)
        };
        let learned = self
            .learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, (_, _, own))| *own)
            .map(|(mac, (ip, how, _))| {
                let how = match how {
                    AddressOrigin::Lease => "lease",
                    AddressOrigin::Seen => "seen",
                };
                (*mac, *ip, how.to_string())
            })
            .collect();
        Presence {
            name: name.to_string(),
            portal,
            boot_http: self.boot_addr(),
            clients,
            sessions,
            learned,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reload when the config or registry file changed since the last load. Returns whether
    /// it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        let now = (
            stamp(&self.dir.config_path()),
            stamp(&self.dir.registry_path()),
        );
        let moved = self
            .fleet_moved
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if self.read().stamps == now && self.read().refused.is_empty() && !moved {
            return Ok(false);
        }
        if let Err(e) = self.reload() {
            // Report a broken file once, not every second; its next change is tried again.
            self.inner.write().unwrap_or_else(|e| e.into_inner()).stamps = now;
            return Err(e);
        }
        Ok(true)
    }

    /// Re-read the state directory and bring the targets in line with it.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let _g = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = (
            stamp(&self.dir.config_path()),
            stamp(&self.dir.registry_path()),
        );
        let state = self.dir.load()?;
        let specs = state.targets();
        let (old, mut bases, mut refused, mut elsewhere_before) = {
            let r = self.read();
            let old: Vec<(TargetSpec, Arc<TargetConfig>, Disk)> = r
                .targets
                .iter()
                .map(|l| (l.spec.clone(), l.target.clone(), l.disk.clone()))
                .collect();
            (old, r.bases.clone(), r.refused.clone(), r.elsewhere.clone())
        };
        let fleet = self.fleet();
        let pending = self
            .fleet_pending
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut retry = HashMap::new();
        let mut elsewhere = HashMap::new();
        let mut fleet_news = false;
        let mut waiting = 0usize;
        let mut next = Vec::with_capacity(specs.len());
        // Old targets that go on unchanged (their sessions live on).
        let mut kept = vec![false; old.len()];
        // Old overlays still in use by a new target (never open one file twice).
        let mut reused = vec![false; old.len()];
        let mut opened = self.open_rbd_disks(&specs, &old, &state, &fleet, pending);
        for spec in specs {
            let same_disk = |s: &TargetSpec| same_disk(s, &spec);
            if let Some(i) = old
                .iter()
                .position(|(s, _, _)| s.iqn == spec.iqn && same_disk(s))
            {
                let (ps, pt, po) = &old[i];
                reused[i] = true;
                if *ps == spec {
                    kept[i] = true;
                    next.push(Live {
                        spec,
                        target: pt.clone(),
                        disk: po.clone(),
                    });
                } else {
                    // Access rules changed: same disk, same counters; sessions log in again.
                    let target = Arc::new(TargetConfig {
                        iqn: spec.iqn.to_string(),
                        lus: pt.lus.clone(),
                        allowed_initiators: spec.initiators.iter().map(|i| i.to_string()).collect(),
                        chap: spec.chap.as_ref().map(chap_config),
                        listed: pt.listed,
                        stats: pt.stats.clone(),
                    });
                    next.push(Live {
                        spec,
                        target,
                        disk: po.clone(),
                    });
                }
                continue;
            }
            // A disk the fleet gives to another server: left alone, looked at again when the
            // fleet changes.
            if let Some(name) = left_to_fleet(&spec, &old, &fleet, pending) {
                let line = match fleet.choose(name.as_str()) {
                    _ if pending => "waiting for the first look at the fleet".to_string(),
                    Some((m, crate::config::fleet::Why::HoldsDisk)) => {
                        format!(
                            "served by the fleet's server {} (it holds the disk)",
                            m.portal
                        )
                    }
                    Some((m, _)) => {
                        format!("the fleet gives it to server {} (less loaded)", m.portal)
                    }
                    None => String::new(),
                };
                if pending {
                    waiting += 1;
                } else if elsewhere_before.remove(spec.iqn.as_str()).as_ref() != Some(&line) {
                    tracing::info!(target = %spec.iqn, "not opening the disk here: {line}");
                }
                refused.remove(spec.iqn.as_str());
                elsewhere.insert(spec.iqn.to_string(), line);
                continue;
            }
            // Same overlay file under a new name (the IQN prefix changed): reuse the open view.
            let disk = match old.iter().position(|(s, _, _)| same_disk(s)) {
                Some(i) => {
                    reused[i] = true;
                    Ok(old[i].2.clone())
                }
                None => match opened.remove(spec.iqn.as_str()) {
                    Some(d) => d,
                    None => self.open_disk(&spec, &state, &mut bases),
                },
            };
            match disk {
                Ok(disk) => {
                    if refused.remove(spec.iqn.as_str()).is_some()
                        || elsewhere_before.remove(spec.iqn.as_str()).is_some()
                    {
                        tracing::info!(target = %spec.iqn, "serving target now");
                    }
                    fleet_news |= disk.is_rbd();
                    let target = target_for(&spec, &disk, Arc::new(TargetStats::default()));
                    next.push(Live { spec, target, disk });
                }
                // Logged once until it changes (an RBD disk another server holds is tried
                // again every second: it is served once that server lets go or is gone).
                Err(e) => {
                    let line = e.to_string();
                    if refused.get(spec.iqn.as_str()) != Some(&line) {
                        tracing::error!(target = %spec.iqn, "cannot serve target: {line}");
                    }
                    retry.insert(spec.iqn.to_string(), line);
                }
            }
        }
        if waiting > 0 {
            tracing::info!(
                "fleet: {waiting} client disks on RBD wait for this server's first look at the fleet (shared_state): each one is opened by the server the fleet chooses"
            );
        }
        let mut ended: Vec<(Arc<TargetConfig>, Option<Disk>)> = Vec::new();
        for (i, (_, t, o)) in old.into_iter().enumerate() {
            if !kept[i] {
                fleet_news |= !reused[i] && o.is_rbd();
                ended.push((t, (!reused[i]).then_some(o)));
            }
        }
        bases.retain(|_, w| w.strong_count() > 0);
        // Every client's disk under today's quota (a maintenance disk has none).
        for l in &next {
            l.disk
                .set_quota(l.spec.kind.client().and_then(|n| state.client_quota(n)));
        }
        {
            let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
            w.targets = next;
            w.state = Arc::new(state);
            w.stamps = stamps;
            w.bases = bases;
            w.refused = retry;
            w.elsewhere = elsewhere;
        }
        if fleet_news {
            self.fleet_changed();
        }
        for (t, o) in ended {
            tracing::info!(target = %t.iqn, "target changed, reset or removed; ending its sessions");
            t.stats.drop_sessions();
            if let Some(o) = o {
                if let Err(e) = o.flush() {
                    tracing::warn!(target = %t.iqn, "flushing old overlay: {e}");
                }
                #[cfg(feature = "rbd")]
                if let Disk::Rbd(d) = o {
                    self.close_rbd_disk(t.iqn.clone(), d);
                }
            }
        }
        Ok(())
    }

    /// Open what `spec` serves: its overlay, or its clone on RBD with the clone's exclusive
    /// lock (refused while another live server holds it).
    fn open_disk(
        &self,
        spec: &TargetSpec,
        st: &State,
        bases: &mut HashMap<PathBuf, Weak<BaseImage>>,
    ) -> Result<Disk, ConfigError> {
        let Some(_rbd) = &spec.rbd else {
            return Ok(Disk::File(self.open_overlay(spec, bases)?));
        };
        #[cfg(feature = "rbd")]
        {
            Ok(Disk::Rbd(Arc::new(self.pool(st)?.open_disk(_rbd)?)))
        }
        #[cfg(not(feature = "rbd"))]
        {
            let _ = st;
            Err(ConfigError::BadArgument(format!(
                "{_rbd} is on Ceph RBD: serving it needs an isboot built with --features rbd"
            )))
        }
    }

    /// Open the RBD disks a reload will open, all at once (by IQN): taking over a dead
    /// server's disks means breaking its lock on each, which costs Ceph a map change (about a
    /// second) apiece; opened one by one, 20 disks took 16 s. The same rules as the reload:
    /// a disk already open here is not opened again, nor one the fleet gives to another server.
    #[cfg(feature = "rbd")]
    fn open_rbd_disks(
        &self,
        specs: &[TargetSpec],
        old: &[(TargetSpec, Arc<TargetConfig>, Disk)],
        st: &State,
        fleet: &FleetView,
        pending: bool,
    ) -> HashMap<String, Result<Disk, ConfigError>> {
        let wanted: Vec<&TargetSpec> = specs
            .iter()
            .filter(|spec| spec.rbd.is_some())
            .filter(|spec| !old.iter().any(|(s, _, _)| same_disk(s, spec)))
            .filter(|spec| left_to_fleet(spec, old, fleet, pending).is_none())
            .collect();
        if wanted.len() < 2 {
            return HashMap::new();
        }
        let mut out = HashMap::new();
        // At most 16 at a time: each open holds a librbd image and a thread meanwhile.
        for chunk in wanted.chunks(16) {
            std::thread::scope(|scope| {
                let running: Vec<_> = chunk
                    .iter()
                    .map(|spec| {
                        scope.spawn(move || {
                            let mut no_bases = HashMap::new();
                            (
                                spec.iqn.to_string(),
                                self.open_disk(spec, st, &mut no_bases),
                            )
                        })
                    })
                    .collect();
                for r in running {
                    if let Ok((iqn, d)) = r.join() {
                        out.insert(iqn, d);
                    }
                }
            });
        }
        out
    }

    #[cfg(not(feature = "rbd"))]
    fn open_rbd_disks(
        &self,
        _: &[TargetSpec],
        _: &[(TargetSpec, Arc<TargetConfig>, Disk)],
        _: &State,
        _: &FleetView,
        _: bool,
    ) -> HashMap<String, Result<Disk, ConfigError>> {
        HashMap::new()
    }

    /// The RBD pool of `st`'s `[store]`, connected once and shared by every disk.
    #[cfg(feature = "rbd")]
    fn pool(&self, st: &State) -> Result<Arc<crate::store::rbd::RbdStore>, ConfigError> {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = p.as_ref() {
            return Ok(p.clone());
        }
        let s = Arc::new(crate::store::rbd::RbdStore::connect(
            &st.config.store.rbd_config(),
        )?);
        *p = Some(s.clone());
        Ok(s)
    }

    /// An RBD disk stopped being served (its client was reset or removed, its image's edit
    /// was committed or aborted, or the target changed): once its sessions have let go of it
    /// (at most [`RBD_CLOSE_WAIT`]), close it, which releases its lock, and remove it from the
    /// pool if the registry no longer names it (the CLI could not while this server had it
    /// open). A committed edit is a version now: the registry names it, so it stays.
    #[cfg(feature = "rbd")]
    fn close_rbd_disk(&self, iqn: String, disk: Arc<crate::store::rbd::RbdDevice>) {
        let Ok(pool) = self.pool(&self.current_state()) else {
            return;
        };
        let dir = self.dir.clone();
        let spec = pool.spec_of(disk.name());
        let _ = std::thread::Builder::new()
            .name("rbd-close".into())
            .spawn(move || {
                let until = std::time::Instant::now() + RBD_CLOSE_WAIT;
                while Arc::strong_count(&disk) > 1 && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let name = disk.name().to_string();
                if Arc::strong_count(&disk) > 1 {
                    tracing::warn!(target = %iqn, "{name} is still in use after {RBD_CLOSE_WAIT:?}; it stays open until its last session ends");
                    return;
                }
                drop(disk);
                let named = dir.load().map(|st| st.registry.names_rbd(&spec));
                if let Ok(false) = named {
                    match pool.remove_disk(&spec) {
                        Ok(()) => tracing::info!(target = %iqn, "removed {spec} from the pool"),
                        Err(e) => tracing::warn!(target = %iqn, "{spec} stays in the pool ({e}); remove it with: rbd rm {spec}"),
                    }
                }
            });
    }

    fn open_overlay(
        &self,
        spec: &TargetSpec,
        bases: &mut HashMap<PathBuf, Weak<BaseImage>>,
    ) -> Result<Arc<Overlay>, ConfigError> {
        let base = match bases.get(&spec.base_path).and_then(Weak::upgrade) {
            Some(b) if b.id() == spec.base_id => b,
            _ => {
                let b = Arc::new(BaseImage::open_published(
                    &spec.base_path,
                    spec.base_id,
                    spec.version,
                    spec.base_published.as_ref(),
                )?);
                bases.insert(spec.base_path.clone(), Arc::downgrade(&b));
                b
            }
        };
        Ok(Arc::new(Overlay::open_at(&spec.overlay_path, base, false)?))
    }

    /// A reset-mode client powered on (the DHCP service saw its PXE ROM's request): drop its
    /// overlay, move it to the newest version, and serve the fresh target at once. Never while
    /// its target has a live session: a DHCP request carries whatever MAC its sender wrote in
    /// it, so it cannot take a running client's disk away ([`PowerOn::InUse`]; the power-on is
    /// noted, see [`StateRegistry::pending_power_on`]). Blocking (file I/O and fsync): call it
    /// from `spawn_blocking` or `block_in_place`.
    pub fn power_on(&self, mac: &MacAddr) -> Result<PowerOn, ConfigError> {
        // Two stat calls when nothing changed: cheap enough for every firmware DHCPDISCOVER.
        if let Err(e) = self.reload_if_changed() {
            tracing::warn!("reloading state: {e}");
        }
        let st = self.current_state();
        let Some(c) = st.registry.client_by_mac(mac) else {
            return Ok(PowerOn::Unchanged);
        };
        // Its other images start pristine at every power-on, whatever its own disk's mode.
        let images = self.power_on_images(&st, c)?;
        let disk = self.power_on_disk(&st, c)?;
        Ok(match (disk, images) {
            (PowerOn::Unchanged, PowerOn::Reset) => PowerOn::Reset,
            (d, _) => d,
        })
    }

    /// The power-on of client `c`'s own disk (reset mode only).
    fn power_on_disk(&self, st: &State, c: &crate::config::Client) -> Result<PowerOn, ConfigError> {
        if c.mode != Mode::Reset {
            return Ok(PowerOn::Unchanged);
        }
        let iqn = st.target_iqn(&c.name);
        // An RBD disk this server does not serve: another server holds its lock (every server
        // of a fleet sees the power-on with proxyDHCP, and with shared state a reset here
        // would re-clone a disk that server serves). The holder does the work. Noted in case
        // this server takes the disk over before the new boot's first login (the holder
        // died): `login_accepted` resets it then.
        if c.rbd.is_some() && self.served(iqn.as_str()).is_none() {
            self.note_pending_power_on(iqn.as_str());
            return Ok(PowerOn::Elsewhere);
        }
        let (written, live) = self.in_use(iqn.as_str());
        if live {
            self.note_pending_power_on(iqn.as_str());
            return Ok(PowerOn::InUse);
        }
        if !written && st.newest_version(&c.image) == Some(c.version) {
            return Ok(PowerOn::Unchanged);
        }
        self.reset_now(c.name.as_str())?;
        Ok(PowerOn::Reset)
    }

    /// The power-on of client `c`'s other images (`isboot boot --allow-image`): each one
    /// nobody is logged in to gets a fresh overlay on its image's newest version if it holds
    /// writes or a newer version exists; one in use is reset at its new boot's first login
    /// instead ([`StateRegistry::login_accepted`]). `Reset` when one was reset.
    fn power_on_images(
        &self,
        st: &State,
        c: &crate::config::Client,
    ) -> Result<PowerOn, ConfigError> {
        let mut outcome = PowerOn::Unchanged;
        for a in &c.allowed_images {
            let iqn = st.client_image_iqn(&c.name, &a.image);
            // A clone on RBD another server serves: that server does it (as for the disk).
            if a.rbd.is_some() && self.served(iqn.as_str()).is_none() {
                self.note_pending_power_on(iqn.as_str());
                continue;
            }
            let (written, live) = self.in_use(iqn.as_str());
            if live {
                self.note_pending_power_on(iqn.as_str());
                continue;
            }
            if !written && st.newest_version(&a.image) == Some(a.version) {
                continue;
            }
            self.dir.lock()?.reset_client_image(&c.name, &a.image)?;
            tracing::info!(client = %c.name, image = %a.image, "power-on: the client's other image starts from a pristine disk");
            outcome = PowerOn::Reset;
        }
        if outcome == PowerOn::Reset {
            self.reload()?;
        }
        Ok(outcome)
    }

    /// Whether the served target `iqn` holds writes and whether it has a live session (the
    /// live view: its map may hold writes not flushed yet). Not served: (true, false).
    fn in_use(&self, iqn: &str) -> (bool, bool) {
        self.read()
            .targets
            .iter()
            .find(|l| l.spec.iqn.as_str() == iqn)
            .map(|l| {
                (
                    l.disk
                        .overlay()
                        .is_none_or(|o| o.usage().data_blocks + o.usage().zero_blocks > 0),
                    !l.target.stats.sessions().is_empty(),
                )
            })
            .unwrap_or((true, false))
    }

    fn note_pending_power_on(&self, iqn: &str) {
        self.pending_power_on
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(iqn.to_string(), std::time::Instant::now());
    }

    /// What the served target `iqn` is (a client's disk or an image's maintenance view) and
    /// whether it has a live session: the live list already knows, no name is rebuilt.
    fn served(&self, iqn: &str) -> Option<(TargetKind, bool)> {
        self.read()
            .targets
            .iter()
            .find(|l| l.target.iqn.eq_ignore_ascii_case(iqn))
            .map(|l| (l.spec.kind.clone(), !l.target.stats.sessions().is_empty()))
    }

    /// Reset client `name` now (its sessions end) and serve its fresh target.
    fn reset_now(&self, name: &str) -> Result<(), ConfigError> {
        self.dir.lock()?.reset_client(name, true)?;
        self.reload()
    }

    /// DHCP learned that the client with `mac` holds `ip` (a lease it acknowledged, or in
    /// proxy mode the address its boot request came from): its target accepts logins from
    /// there. In proxy mode nothing proves the request came from the client, so a seen address
    /// never replaces another while the client's target has a live session.
    pub fn learn_address(&self, mac: MacAddr, ip: std::net::Ipv4Addr, how: AddressOrigin) {
        if self.record_address(mac, ip, how, true) {
            tracing::info!(mac = %mac, %ip, how = ?how, "client address learned: its target accepts logins from it");
            self.fleet_changed();
        }
    }

    /// [`StateRegistry::learn_address`] for this server's DHCP (`own`) or another fleet
    /// server's: whether it replaced what was known.
    fn record_address(
        &self,
        mac: MacAddr,
        ip: std::net::Ipv4Addr,
        how: AddressOrigin,
        own: bool,
    ) -> bool {
        let mut l = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = l.get_mut(&mac).filter(|e| e.0 == ip) {
            // Learned here too: this server tells the fleet from now on.
            e.2 |= own;
            return false;
        }
        if how == AddressOrigin::Seen && l.contains_key(&mac) {
            let st = self.current_state();
            let live = st.registry.client_by_mac(&mac).is_some_and(|c| {
                self.served(st.target_iqn(&c.name).as_str())
                    .is_some_and(|(_, live)| live)
            });
            if live {
                tracing::warn!(mac = %mac, %ip, "proxy DHCP: a boot request for a client whose disk is in use came from another address; its target stays bound where it was");
                return false;
            }
        }
        l.insert(mac, (ip, how, own));
        true
    }

    /// Where the served target `iqn` accepts logins from, and why (for the login check and
    /// `isboot status`).
    pub fn bound(&self, iqn: &str) -> Bound {
        match self.served(iqn) {
            Some((kind, _)) => self.bound_of(&self.current_state(), &kind),
            None => Bound::Only(Vec::new()),
        }
    }

    /// Where `kind`'s target accepts logins from in state `st`, with what DHCP learned.
    pub fn bound_of(&self, st: &State, kind: &TargetKind) -> Bound {
        let learned = |mac: &MacAddr| {
            self.learned_address(mac).map(|(ip, how)| {
                let origin = match how {
                    AddressOrigin::Lease => Origin::Lease,
                    AddressOrigin::Seen => Origin::Seen,
                };
                (ip, origin)
            })
        };
        st.bound(kind, &learned)
    }

    /// The address DHCP learned for `mac`, if any: this server's, or another fleet server's
    /// (the client's DHCP answer may have come from it, naming this server), the newest.
    pub fn learned_address(&self, mac: &MacAddr) -> Option<(std::net::Ipv4Addr, AddressOrigin)> {
        self.learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mac)
            .map(|(ip, how, _)| (*ip, *how))
    }

    /// Did the DHCP service see a power-on request for `target`'s client within `within`
    /// while the target had a live session (so nothing was reset)? For the login path: a new
    /// boot's first login (iPXE's) may then reset the disk, once it has authenticated and the
    /// old sessions are gone. Taking it clears it.
    pub fn pending_power_on(&self, target: &str, within: Duration) -> bool {
        let mut p = self
            .pending_power_on
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.retain(|_, t| t.elapsed() < within);
        p.remove(target).is_some()
    }

    /// Flush overlays of targets nobody is logged in to (so `image commit` and a crash see
    /// every write of a session that ended without SYNCHRONIZE CACHE).
    pub fn flush_idle(&self) {
        let idle: Vec<(String, Disk)> = self
            .read()
            .targets
            .iter()
            .filter(|l| l.target.stats.sessions().is_empty() && l.disk.has_unflushed())
            .map(|l| (l.target.iqn.clone(), l.disk.clone()))
            .collect();
        for (iqn, o) in idle {
            if let Err(e) = o.flush() {
                tracing::warn!(target = %iqn, "flushing idle overlay: {e}");
            }
        }
    }

    /// Flush every overlay (shutdown).
    pub fn flush_all(&self) {
        let all: Vec<Disk> = self.read().targets.iter().map(|l| l.disk.clone()).collect();
        for o in all {
            let _ = o.flush();
        }
    }

    /// Sessions and counters of every target, as `isboot status` shows them.
    pub fn status(&self) -> ServerStatus {
        let updated_ms = crate::config::now_unix_ms();
        let st = self.current_state();
        let targets = self
            .read()
            .targets
            .iter()
            .map(|l| {
                let (kind, name) = l.spec.kind.describe();
                let (data_bytes, quota_bytes, over_quota) = l.disk.quota_use();
                TargetStatus {
                    iqn: l.target.iqn.clone(),
                    kind: kind.into(),
                    name,
                    image: l.spec.image.to_string(),
                    base_version: l.spec.version,
                    sessions: l
                        .target
                        .stats
                        .sessions()
                        .into_iter()
                        .map(|s| SessionStatus {
                            initiator: s.initiator,
                            peer: s.peer.to_string(),
                        })
                        .collect(),
                    bytes_read: l.target.stats.bytes_read.load(Ordering::Relaxed),
                    bytes_written: l.target.stats.bytes_written.load(Ordering::Relaxed),
                    unflushed: l.disk.has_unflushed(),
                    failed: l.disk.overlay().is_some_and(|o| o.has_failed()),
                    overlay_bytes: match l.disk.overlay() {
                        Some(_) => std::fs::metadata(&l.spec.overlay_path)
                            .map(|m| m.blocks() * 512)
                            .unwrap_or(0),
                        None => 0,
                    },
                    overlay_data_bytes: data_bytes,
                    quota_bytes,
                    over_quota,
                    bound: self.bound_of(&st, &l.spec.kind),
                }
            })
            .collect();
        ServerStatus {
            pid: std::process::id(),
            updated: now_unix(),
            updated_ms,
            listen: self
                .listen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            http: self.http.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            boot_http: self
                .boot_http
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            targets,
            state_fs: Space::of(self.dir.root(), st.config.limits.space_warning()),
        }
    }

    /// Log once when free space on the state file system falls below the warning threshold,
    /// and once when it is back above. Returns what was seen.
    pub fn check_space(&self) -> Option<Space> {
        let warning = self.current_state().config.limits.space_warning();
        let s = Space::of(self.dir.root(), warning)?;
        let mib = |b: u64| b >> 20;
        if s.low != self.space_low.swap(s.low, Ordering::AcqRel) {
            if s.low {
                tracing::warn!(
                    "the state file system ({}) has {} MiB free, below the warning threshold \
                     of {} MiB ([limits] space_warning_mib): when it is full, clients' writes \
                     that need space fail. Free space: remove unused image versions (isboot \
                     image prune) or reset clients whose overlays grew (isboot status shows each \
                     one's)",
                    self.dir.root().display(),
                    mib(s.free_bytes),
                    mib(warning)
                );
            } else {
                tracing::info!(
                    "the state file system has {} MiB free again, above the warning threshold \
                     of {} MiB",
                    mib(s.free_bytes),
                    mib(warning)
                );
            }
        }
        Some(s)
    }

    /// Write `run/status.json` atomically.
    pub fn write_status(&self) -> Result<(), ConfigError> {
        let path = self.dir.status_path();
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let text = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
        write_atomic(&path, &text, 0o644)
    }

    /// One tick of [`maintain`]: reload if changed, flush idle overlays, publish status.
    pub fn tick(&self) {
        if let Err(e) = self.reload_if_changed() {
            tracing::warn!("reloading state: {e} (still serving the previous state)");
        }
        self.flush_idle();
        self.check_space();
        if let Err(e) = self.write_status() {
            tracing::warn!("publishing status: {e}");
        }
    }
}

/// The URL of `mac`'s iPXE script on the boot routes at `addr` (`ip:port`).
pub fn script_url(addr: &str, mac: &MacAddr) -> String {
    format!("http://{addr}/boot/{}.ipxe", mac.dashed())
}

/// Whether two targets serve the same disk: the same overlay on the same base, or the same
/// clone on RBD.
fn same_disk(a: &TargetSpec, b: &TargetSpec) -> bool {
    a.overlay_path == b.overlay_path && a.base_id == b.base_id && a.rbd == b.rbd
}

/// A client's RBD disk (or its other image on RBD: its script, which boots it, comes from the
/// client's server) in a fleet is opened only by the server the fleet's choice names, or by
/// the one that served this client's disk until now (a reset keeps its server), and by no
/// server before its first look at the fleet: the client's name when `spec` is left to
/// another server.
fn left_to_fleet<'a>(
    spec: &'a TargetSpec,
    old: &[(TargetSpec, Arc<TargetConfig>, Disk)],
    fleet: &FleetView,
    pending: bool,
) -> Option<&'a crate::config::ClientName> {
    let (TargetKind::Client(name) | TargetKind::ClientImage(name, _)) = &spec.kind else {
        return None;
    };
    spec.rbd.as_ref()?;
    let was_mine = old.iter().any(|(s, _, _)| s.kind == spec.kind);
    (pending || (!was_mine && !fleet.is_mine(name.as_str()))).then_some(name)
}

/// A target serving `disk` as LUN 0 (an RBD disk's data-transfer commands on its asynchronous
/// path).
fn target_for(spec: &TargetSpec, disk: &Disk, stats: Arc<TargetStats>) -> Arc<TargetConfig> {
    let (product, serial) = match &spec.kind {
        TargetKind::Client(n) => ("client disk", n.to_string()),
        TargetKind::Maintenance(i) => ("maint disk", format!("maint-{i}")),
        TargetKind::ClientImage(n, i) => ("client image", format!("{n}+{i}")),
    };
    let ident = LuIdentity {
        vendor: "ISBOOT".into(),
        product: product.into(),
        revision: "0001".into(),
        serial,
        naa_id: fnv1a(spec.iqn.as_str()),
    };
    let lu = LogicalUnit::new(disk.device(), ident);
    let lu = Arc::new(match disk {
        Disk::File(_) => lu,
        #[cfg(feature = "rbd")]
        Disk::Rbd(d) => lu.with_async(d.clone()),
    });
    Arc::new(TargetConfig {
        iqn: spec.iqn.to_string(),
        lus: Arc::new(TargetLus::single(lu)),
        allowed_initiators: spec.initiators.iter().map(|i| i.to_string()).collect(),
        chap: spec.chap.as_ref().map(chap_config),
        listed: matches!(spec.kind, TargetKind::Client(_)),
        stats,
    })
}

impl TargetRegistry for StateRegistry {
    fn lookup(&self, iqn: &str) -> Option<Arc<TargetConfig>> {
        self.read()
            .targets
            .iter()
            .find(|l| l.target.iqn.eq_ignore_ascii_case(iqn))
            .map(|l| l.target.clone())
    }
    fn all(&self) -> Vec<Arc<TargetConfig>> {
        self.read()
            .targets
            .iter()
            .map(|l| l.target.clone())
            .collect()
    }
    /// Where `iqn` accepts logins from: `State::bound` (config/state/binding.rs) over what
    /// DHCP learned; a target isboot does not serve accepts nobody.
    fn binding(&self, iqn: &str) -> Binding {
        match self.bound(iqn).addresses() {
            None => Binding::Any,
            Some(addrs) => Binding::Only(addrs),
        }
    }

    /// Client disks and maintenance targets are each one machine's disk.
    fn exclusive(&self, _iqn: &str) -> bool {
        true
    }

    /// A reset-mode client whose power-on request came while its disk still had a session
    /// (a warm reboot: the old boot's connection has not been dropped yet) is reset at its new
    /// boot's first login, iPXE's, once that login has passed every check. Its old sessions end.
    fn login_accepted(&self, iqn: &str, isid: [u8; 6]) -> bool {
        if !crate::iscsi::target::boot_firmware_isid(isid) {
            return false;
        }
        let Some((kind, _)) = self.served(iqn) else {
            return false;
        };
        // A new boot of this client has logged in (iPXE, every check passed): its other
        // images that the old boot still held at the power-on start pristine now, whichever
        // target this boot chose (the old boot's sessions there end).
        if let Some(name) = kind.client() {
            let st = self.current_state();
            for a in st
                .registry
                .client(name)
                .map_or(&[][..], |c| &c.allowed_images)
            {
                let other = st.client_image_iqn(name, &a.image);
                if other.as_str() != iqn && self.pending_power_on(other.as_str(), PENDING_POWER_ON)
                {
                    self.reset_image_at_login(name, &a.image);
                }
            }
        }
        if !self.pending_power_on(iqn, PENDING_POWER_ON) {
            return false;
        }
        let name = match kind {
            TargetKind::Client(name) => name,
            TargetKind::ClientImage(name, image) => {
                return self.reset_image_at_login(&name, &image);
            }
            TargetKind::Maintenance(_) => return false,
        };
        let st = self.current_state();
        if st.registry.client(&name).map(|c| c.mode) != Some(Mode::Reset) {
            return false;
        }
        match crate::service::blocking(|| self.reset_now(name.as_str())) {
            Ok(()) => {
                tracing::info!(client = %name, "power-on: reset-mode client starts from a pristine disk (reset at its new boot's first login; the old boot's session ended)");
                true
            }
            Err(e) => {
                tracing::warn!(client = %name, "power-on reset at login failed: {e}");
                false
            }
        }
    }
}

impl StateRegistry {
    /// Reset client `name`'s other image `image` at its new boot's first login (a power-on
    /// was seen while the old boot held it); the old boot's sessions there end.
    fn reset_image_at_login(
        &self,
        name: &crate::config::ClientName,
        image: &crate::config::ImageName,
    ) -> bool {
        let r = crate::service::blocking(|| {
            self.dir.lock()?.reset_client_image(name, image)?;
            self.reload()
        });
        match r {
            Ok(()) => {
                tracing::info!(client = %name, %image, "power-on: the client's other image starts from a pristine disk (reset at its new boot's first login; the old boot's session ended)");
                true
            }
            Err(e) => {
                tracing::warn!(client = %name, %image, "power-on reset at login failed: {e}");
                false
            }
        }
    }
}

/// Keep `registry` in step with its state directory and publish status every
/// [`POLL_INTERVAL`] until `shutdown` resolves; then flush every overlay and remove the status
/// file.
pub async fn maintain(
    registry: Arc<StateRegistry>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut every = tokio::time::interval(POLL_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = every.tick() => {
                let r = registry.clone();
                let _ = tokio::task::spawn_blocking(move || r.tick()).await;
            }
        }
    }
    let r = registry.clone();
    let _ = tokio::task::spawn_blocking(move || {
        r.flush_all();
        let _ = std::fs::remove_file(r.state_dir().status_path());
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AddClient, Mode};
    use crate::iscsi::target::SessionInfo;
    use crate::store::concat;
    use std::sync::atomic::AtomicBool;

    fn setup() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path().join("state"));
        dir.init(Some(("10.9.0.1".parse().unwrap(), 24)), None, None)
            .unwrap();
        let img = t.path().join("base.img");
        std::fs::write(&img, vec![0x5Au8; 1 << 20]).unwrap();
        dir.image_add(&"deb".parse().unwrap(), &img, &mut |_, _| {})
            .unwrap();
        let mut l = dir.lock().unwrap();
        for (i, mode) in [(1, Mode::Persistent), (2, Mode::Reset)] {
            l.add_client(AddClient {
                mac: format!("52:54:00:00:00:0{i}").parse().unwrap(),
                image: "deb".parse().unwrap(),
                name: Some(format!("pc{i}").parse().unwrap()),
                ip: None,
                mode,
                initiators: vec![],
                chap: None,
                quota_mib: None,
            })
            .unwrap();
        }
        drop(l);
        (t, dir)
    }

    /// The residency sample follows the page cache: none after the kernel drops the image's
    /// clean pages, all of it after a read; a sample younger than `max_age` is reused.
    #[test]
    fn image_cache_samples_the_base_images_page_cache() {
        let (_t, dir) = setup();
        let file = dir.path("images/deb/v1.raw");
        let reg = StateRegistry::open(dir).unwrap();
        let f = std::fs::File::open(&file).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let v = reg.image_cache(Duration::ZERO);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].image.as_str(), v[0].version, v[0].size),
            ("deb", 1, 1 << 20)
        );
        assert!(v[0].cached < v[0].size, "nothing was dropped: {v:?}");
        let data = std::fs::read(&file).unwrap();
        assert_eq!(data.len(), 1 << 20);
        let v = reg.image_cache(Duration::ZERO);
        assert_eq!(v[0].cached, v[0].size, "{v:?}");
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert_eq!(
            reg.image_cache(Duration::from_secs(3600)),
            v,
            "not the last sample"
        );
    }

    fn fake_session(t: &TargetConfig) -> Arc<AtomicBool> {
        let kill = Arc::new(AtomicBool::new(false));
        t.stats.add_session(SessionInfo {
            id: 1,
            initiator: "iqn.2026-11.org.isboot:initiator:pc1".into(),
            peer: "127.0.0.1:5555".parse().unwrap(),
            isid: [0; 6],
            tsih: 1,
            kill: kill.clone(),
        });
        kill
    }

    /// Write `data` at `off` to `t`'s LUN 0 (FUA).
    fn write(t: &TargetConfig, off: u64, data: &[u8]) {
        t.lus
            .get(0)
            .unwrap()
            .device()
            .write(off, data, true)
            .unwrap();
    }

    fn read(t: &TargetConfig, off: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        t.lus
            .get(0)
            .unwrap()
            .device()
            .read(off, len, &mut out)
            .unwrap();
        concat(&out)
    }

    #[test]
    fn serves_clients_and_follows_changes() {
        let (_t, dir) = setup();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        let p = "iqn.2026-11.org.isboot";
        let t1 = reg.lookup(&format!("{p}:pc1")).unwrap();
        assert!(reg.lookup(&format!("{p}:PC2")).is_some());
        assert_eq!(reg.all().len(), 2);
        assert!(t1.allows(&format!("{p}:initiator:pc1")));
        assert!(!t1.allows(&format!("{p}:initiator:pc2")));
        // Writes go to pc1's overlay only.
        let dev = t1.lus.get(0).unwrap().device().clone();
        dev.write(0, &[1u8; 4096], true).unwrap();
        let t2 = reg.lookup(&format!("{p}:pc2")).unwrap();
        assert_eq!(read(&t2, 0, 4096), vec![0x5A; 4096]);
        assert_eq!(read(&t1, 0, 4096), vec![1; 4096]);
        // Unchanged files: no reload; same target object.
        assert!(!reg.reload_if_changed().unwrap());
        // Reset pc1 from "another process": its old target's sessions are ended.
        let kill = fake_session(&t1);
        dir.lock().unwrap().reset_client("pc1", true).unwrap();
        assert!(reg.reload_if_changed().unwrap());
        assert!(kill.load(Ordering::SeqCst));
        let t1b = reg.lookup(&format!("{p}:pc1")).unwrap();
        assert!(!Arc::ptr_eq(&t1, &t1b));
        assert_eq!(read(&t1b, 0, 4096), vec![0x5A; 4096]);
        // pc2 untouched: same object.
        assert!(Arc::ptr_eq(&t2, &reg.lookup(&format!("{p}:pc2")).unwrap()));
        // Remove pc2.
        let kill2 = fake_session(&t2);
        dir.lock().unwrap().remove_client("pc2", false).unwrap();
        reg.reload_if_changed().unwrap();
        assert!(kill2.load(Ordering::SeqCst));
        assert!(reg.lookup(&format!("{p}:pc2")).is_none());
    }

    /// `isboot boot --allow-image`: the other image's target carries the client's CHAP,
    /// initiators and address binding, serves that image on its own overlay, is reset at the
    /// client's power-on (persistent or not; never while in use: then at its new boot's
    /// first login), and is gone when forbidden (refused while logged in).
    #[test]
    fn other_images_carry_the_clients_chap_and_binding_and_reset_at_power_on() {
        use crate::config::{BootAction, BootChange, Chap, ImageName};
        let (t, dir) = setup();
        let p = "iqn.2026-11.org.isboot";
        let img2 = t.path().join("deb2.img");
        std::fs::write(&img2, vec![0xA5u8; 1 << 20]).unwrap();
        dir.image_add(&"deb2".parse().unwrap(), &img2, &mut |_, _| {})
            .unwrap();
        let chap = Chap {
            user: "pc1".into(),
            secret: crate::config::Secret::new("0123456789abcdef01"),
            mutual_user: None,
            mutual_secret: None,
        };
        let deb2: ImageName = "deb2".parse().unwrap();
        let image = |i: &ImageName| BootAction::Image(i.clone());
        {
            let mut l = dir.lock().unwrap();
            l.set_client_chap("pc1", Some(chap.clone())).unwrap();
            l.set_client_ip("pc1", Some("10.9.0.21".parse().unwrap()))
                .unwrap();
            // Not allowed yet: refused, saying how.
            let e = l
                .set_boot(
                    "pc1",
                    BootChange {
                        next: Some(image(&deb2)),
                        ..Default::default()
                    },
                )
                .unwrap_err()
                .to_string();
            assert!(e.contains("isboot boot pc1 --allow-image deb2"), "{e}");
            let c = l
                .set_boot(
                    "pc1",
                    BootChange {
                        allow: vec![deb2.clone()],
                        next: Some(image(&deb2)),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(c.boot.next, Some(image(&deb2)));
            assert_eq!(c.allowed_images.len(), 1);
            assert!(dir.path(&c.allowed_images[0].overlay).is_file());
            // Allowing it again changes nothing.
            let again = l
                .set_boot(
                    "pc1",
                    BootChange {
                        allow: vec![deb2.clone()],
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(again.allowed_images, c.allowed_images);
        }
        let st = dir.load().unwrap();
        let iqn = format!("{p}:pc1:image:deb2");
        let specs = st.targets();
        let own = specs
            .iter()
            .find(|s| s.iqn.as_str() == format!("{p}:pc1"))
            .unwrap();
        let other = specs.iter().find(|s| s.iqn.as_str() == iqn).unwrap();
        assert_eq!(
            other.kind,
            TargetKind::ClientImage("pc1".parse().unwrap(), deb2.clone())
        );
        assert_eq!(other.chap, Some(chap.clone()));
        assert_eq!(other.initiators, own.initiators);
        assert_ne!(other.overlay_path, own.overlay_path);
        assert_eq!(
            st.bound_offline(&other.kind),
            st.bound_offline(&own.kind),
            "the client's address rules"
        );
        assert_eq!(
            st.bound_offline(&other.kind).addresses(),
            Some(vec!["10.9.0.21".parse().unwrap()])
        );
        // pc2 has no other image.
        assert!(
            !specs
                .iter()
                .any(|s| s.iqn.as_str().starts_with(&format!("{p}:pc2:")))
        );

        let reg = StateRegistry::open(dir.clone()).unwrap();
        let ti = reg.lookup(&iqn).unwrap();
        assert_eq!(ti.chap.as_ref().map(|c| c.user.as_str()), Some("pc1"));
        assert_eq!(ti.allowed_initiators, vec![format!("{p}:initiator:pc1")]);
        assert_eq!(
            reg.binding(&iqn),
            Binding::Only(vec!["10.9.0.21".parse().unwrap()])
        );
        assert_eq!(read(&ti, 0, 512), vec![0xA5; 512]);
        // Power-on of pc1 (persistent): its own disk keeps its writes, the image starts
        // pristine.
        let mac1: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let t1 = reg.lookup(&format!("{p}:pc1")).unwrap();
        write(&t1, 4096, &[8u8; 512]);
        assert_eq!(
            reg.power_on(&mac1).unwrap(),
            PowerOn::Unchanged,
            "nothing written"
        );
        write(&ti, 4096, &[9u8; 512]);
        assert_eq!(reg.power_on(&mac1).unwrap(), PowerOn::Reset);
        let ti = reg.lookup(&iqn).unwrap();
        assert_eq!(read(&ti, 4096, 512), vec![0xA5; 512]);
        assert_eq!(
            read(&reg.lookup(&format!("{p}:pc1")).unwrap(), 4096, 512),
            vec![8; 512]
        );
        let old = dir.load().unwrap().registry.clients[0].allowed_images[0]
            .overlay
            .clone();
        // In use: a power-on resets nothing; the new boot's iPXE login does.
        write(&ti, 4096, &[9u8; 512]);
        let kill = fake_session(&ti);
        assert_eq!(reg.power_on(&mac1).unwrap(), PowerOn::Unchanged);
        assert_eq!(read(&reg.lookup(&iqn).unwrap(), 4096, 512), vec![9; 512]);
        assert!(!kill.load(Ordering::SeqCst));
        // ...and forbidding it is refused meanwhile (the server's status shows the session).
        let forbid = || {
            reg.write_status().unwrap();
            dir.lock().unwrap().set_boot(
                "pc1",
                BootChange {
                    forbid: vec![deb2.clone()],
                    ..Default::default()
                },
            )
        };
        let e = forbid().unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        const IPXE: [u8; 6] = [0x40, 0x00, 0x27, 0x23, 0xab, 0xcd];
        assert!(reg.login_accepted(&iqn, IPXE));
        assert!(kill.load(Ordering::SeqCst), "the old boot's session ends");
        assert_eq!(read(&reg.lookup(&iqn).unwrap(), 4096, 512), vec![0xA5; 512]);
        assert!(!dir.path(&old).exists(), "the old overlay is removed");
        // The new boot may boot its own disk instead (a one-shot image:deb2 used up): its
        // iPXE login there resets the image the old boot held; an OS login does not.
        let ti = reg.lookup(&iqn).unwrap();
        write(&ti, 4096, &[9u8; 512]);
        let kill = fake_session(&ti);
        assert_eq!(reg.power_on(&mac1).unwrap(), PowerOn::Unchanged);
        let disk = format!("{p}:pc1");
        const OPEN_ISCSI: [u8; 6] = [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01];
        assert!(!reg.login_accepted(&disk, OPEN_ISCSI));
        assert!(!kill.load(Ordering::SeqCst));
        assert!(
            !reg.login_accepted(&disk, IPXE),
            "pc1's own disk is persistent"
        );
        assert!(
            kill.load(Ordering::SeqCst),
            "the old boot's image session ends"
        );
        assert_eq!(read(&reg.lookup(&iqn).unwrap(), 4096, 512), vec![0xA5; 512]);
        assert_eq!(read(&reg.lookup(&disk).unwrap(), 4096, 512), vec![8; 512]);
        // Forbidden: its overlay and target go, and the choice naming it with them.
        let c = forbid().unwrap();
        assert!(c.allowed_images.is_empty());
        assert_eq!(c.boot.next, None);
        reg.reload_if_changed().unwrap();
        assert!(reg.lookup(&iqn).is_none());
        // The image can go now.
        dir.lock().unwrap().image_remove(&deb2).unwrap();
    }

    #[test]
    fn power_on_resets_only_reset_mode_clients_with_writes() {
        let (_t, dir) = setup();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        let p = "iqn.2026-11.org.isboot";
        let mac1: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let mac2: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        let t2 = reg.lookup(&format!("{p}:pc2")).unwrap();
        // Nothing written yet: nothing to do.
        assert_eq!(reg.power_on(&mac2).unwrap(), PowerOn::Unchanged);
        write(&t2, 4096, &[9u8; 512]);
        let t1 = reg.lookup(&format!("{p}:pc1")).unwrap();
        write(&t1, 4096, &[8u8; 512]);
        assert_eq!(
            reg.power_on(&mac1).unwrap(),
            PowerOn::Unchanged,
            "persistent clients keep their writes"
        );
        assert_eq!(
            reg.power_on(&"52:54:00:00:00:09".parse().unwrap()).unwrap(),
            PowerOn::Unchanged
        );
        // A live session: a DHCP request (anyone can send one with pc2's MAC) resets nothing,
        // and the login path learns that a power-on was seen.
        let kill = fake_session(&t2);
        assert_eq!(reg.power_on(&mac2).unwrap(), PowerOn::InUse);
        assert!(!kill.load(Ordering::SeqCst), "the live session goes on");
        assert_eq!(read(&t2, 4096, 512), vec![9; 512]);
        let name2 = format!("{p}:pc2");
        assert!(reg.pending_power_on(&name2, Duration::from_secs(60)));
        assert!(
            !reg.pending_power_on(&name2, Duration::from_secs(60)),
            "taken"
        );
        // A new boot's first login (iPXE's ISID) after such a request resets the disk and
        // ends the old boot's session; the OS's logins (open-iscsi's ISID) never do.
        const IPXE: [u8; 6] = [0x40, 0x00, 0x27, 0x23, 0xab, 0xcd];
        const OPEN_ISCSI: [u8; 6] = [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01];
        assert!(!reg.login_accepted(&name2, IPXE), "no power-on was seen");
        assert_eq!(reg.power_on(&mac2).unwrap(), PowerOn::InUse);
        assert!(!reg.login_accepted(&name2, OPEN_ISCSI));
        assert_eq!(read(&reg.lookup(&name2).unwrap(), 4096, 512), vec![9; 512]);
        assert!(!kill.load(Ordering::SeqCst));
        assert_eq!(reg.power_on(&mac2).unwrap(), PowerOn::InUse);
        assert!(reg.login_accepted(&name2, IPXE));
        assert!(kill.load(Ordering::SeqCst), "the old boot's session ends");
        assert_eq!(
            read(&reg.lookup(&name2).unwrap(), 4096, 512),
            vec![0x5A; 512]
        );
        // Written again, then a cold power-on (no session): reset at the DHCP request.
        let t2 = reg.lookup(&name2).unwrap();
        write(&t2, 4096, &[9u8; 512]);
        assert_eq!(reg.power_on(&mac2).unwrap(), PowerOn::Reset);
        let t2b = reg.lookup(&format!("{p}:pc2")).unwrap();
        assert_eq!(read(&t2b, 4096, 512), vec![0x5A; 512]);
        assert_eq!(
            read(&reg.lookup(&format!("{p}:pc1")).unwrap(), 4096, 512),
            vec![8; 512]
        );
    }

    #[test]
    fn a_new_iqn_prefix_renames_targets_without_reopening_overlays() {
        let (_t, dir) = setup();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        let t1 = reg.lookup("iqn.2026-11.org.isboot:pc1").unwrap();
        let kill = fake_session(&t1);
        // Unflushed: only the open view knows about it.
        t1.lus
            .get(0)
            .unwrap()
            .device()
            .write(0, &[3u8; 4096], false)
            .unwrap();
        let cfg = std::fs::read_to_string(dir.config_path()).unwrap();
        let cfg = cfg.replace(
            "iqn_prefix = \"iqn.2026-11.org.isboot\"",
            "iqn_prefix = \"iqn.2030-01.org.lab\"",
        );
        write_atomic(&dir.config_path(), cfg.as_bytes(), 0o644).unwrap();
        assert!(reg.reload_if_changed().unwrap());
        assert!(kill.load(Ordering::SeqCst), "sessions on the old name end");
        assert!(reg.lookup("iqn.2026-11.org.isboot:pc1").is_none());
        let n1 = reg.lookup("iqn.2030-01.org.lab:pc1").unwrap();
        assert!(
            n1.allows("iqn.2026-11.org.isboot:initiator:pc1"),
            "stored initiators are kept"
        );
        assert!(Arc::ptr_eq(
            t1.lus.get(0).unwrap().device(),
            n1.lus.get(0).unwrap().device()
        ));
        assert_eq!(read(&n1, 0, 4096), vec![3; 4096]);
    }

    #[test]
    fn two_clients_same_lbas_private_data_survives_a_restart_base_untouched() {
        let (_t, dir) = setup();
        let base_file = dir.path("images/deb/v1.raw");
        let sum = |p: &Path| crc32c::crc32c(&std::fs::read(p).unwrap());
        let before = sum(&base_file);
        {
            let reg = StateRegistry::open(dir.clone()).unwrap();
            for (name, byte) in [("pc1", 0x11u8), ("pc2", 0x22u8)] {
                let t = reg
                    .lookup(&format!("iqn.2026-11.org.isboot:{name}"))
                    .unwrap();
                let dev = t.lus.get(0).unwrap().device().clone();
                dev.write(8192, &[byte; 8192], false).unwrap();
                dev.write(512, &[byte; 512], false).unwrap();
            }
            for (name, byte) in [("pc1", 0x11u8), ("pc2", 0x22u8)] {
                let t = reg
                    .lookup(&format!("iqn.2026-11.org.isboot:{name}"))
                    .unwrap();
                assert_eq!(read(&t, 8192, 8192), vec![byte; 8192]);
                assert_eq!(read(&t, 0, 1024)[512..], [byte; 512]);
                assert_eq!(read(&t, 0, 512), vec![0x5A; 512]);
            }
            // A clean stop flushes (as `isboot serve` does on shutdown).
            reg.flush_all();
        }
        let reg = StateRegistry::open(dir.clone()).unwrap();
        for (name, byte) in [("pc1", 0x11u8), ("pc2", 0x22u8)] {
            let t = reg
                .lookup(&format!("iqn.2026-11.org.isboot:{name}"))
                .unwrap();
            assert_eq!(
                read(&t, 8192, 8192),
                vec![byte; 8192],
                "{name} after restart"
            );
        }
        assert_eq!(sum(&base_file), before, "the base image changed");
    }

    /// Publishes image `image` of `size` bytes of `fill` and adds persistent client `name` on it.
    fn image_with_client(
        t: &tempfile::TempDir,
        dir: &StateDir,
        image: &str,
        fill: u8,
        size: usize,
        mac: &str,
        name: &str,
    ) {
        let file = t.path().join(format!("{image}.img"));
        std::fs::write(&file, vec![fill; size]).unwrap();
        dir.image_add(&image.parse().unwrap(), &file, &mut |_, _| {})
            .unwrap();
        dir.lock()
            .unwrap()
            .add_client(AddClient {
                mac: mac.parse().unwrap(),
                image: image.parse().unwrap(),
                name: Some(name.parse().unwrap()),
                ip: None,
                mode: Mode::Persistent,
                initiators: vec![],
                chap: None,
                quota_mib: None,
            })
            .unwrap();
    }

    /// A base replaced while the server was down (same size, even) is not served over the
    /// overlays made on the old one; the published file put back is served again; other
    /// images are unaffected.
    #[test]
    fn a_base_replaced_while_the_server_was_down_is_refused_at_open() {
        let (t, dir) = setup();
        image_with_client(&t, &dir, "other", 0x33, 1 << 20, "52:54:00:00:00:03", "pc3");
        let iqn = |n: &str| format!("iqn.2026-11.org.isboot:{n}");
        {
            let reg = StateRegistry::open(dir.clone()).unwrap();
            write(&reg.lookup(&iqn("pc1")).unwrap(), 0, &[0x11; 512]);
            reg.flush_all();
        }
        let file = dir.path("images/deb/v1.raw");
        let kept = t.path().join("v1.kept");
        std::fs::rename(&file, &kept).unwrap();
        std::fs::write(&file, vec![0x5Au8; 1 << 20]).unwrap();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        assert!(reg.lookup(&iqn("pc1")).is_none(), "served over a new file");
        assert!(reg.lookup(&iqn("pc2")).is_none(), "served over a new file");
        assert_eq!(read(&reg.lookup(&iqn("pc3")).unwrap(), 0, 512), [0x33; 512]);
        drop(reg);
        // The error says which file, what differs and what to do.
        let state = dir.load().unwrap();
        let spec = state
            .targets()
            .into_iter()
            .find(|s| s.iqn.as_str() == iqn("pc1"))
            .unwrap();
        let e = BaseImage::open_published(
            &spec.base_path,
            spec.base_id,
            1,
            spec.base_published.as_ref(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("is not the file that was published (inode")
                && e.contains("Put the published file back"),
            "{e}"
        );
        // Put back, it is served again with the client's data.
        std::fs::rename(&kept, &file).unwrap();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        assert_eq!(read(&reg.lookup(&iqn("pc1")).unwrap(), 0, 512), [0x11; 512]);
    }

    /// `[limits] client_quota_mib` bounds each client's overlay,
    /// shows in the status, and follows the config file without a restart.
    #[test]
    fn client_quota_follows_the_config_and_shows_in_the_status() {
        let (t, dir) = setup();
        // A 4 MiB image (the quota is set in MiB) with a client on it.
        image_with_client(&t, &dir, "big", 0x44, 4 << 20, "52:54:00:00:00:05", "pc5");
        let cfg = std::fs::read_to_string(dir.config_path()).unwrap();
        let with = |line: &str| cfg.replace("# client_quota_mib = 0", line);
        assert_ne!(with("x"), cfg, "no client_quota_mib key in the config");
        write_atomic(
            &dir.config_path(),
            with("client_quota_mib = 1").as_bytes(),
            0o644,
        )
        .unwrap();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        let pc5 = reg.lookup("iqn.2026-11.org.isboot:pc5").unwrap();
        let dev = pc5.lus.get(0).unwrap().device().clone();
        dev.write(0, &[1; 1 << 20], false).unwrap();
        let e = dev.write(1 << 20, &[2; 4096], false).unwrap_err();
        assert!(
            matches!(e, crate::store::StoreError::QuotaExceeded { .. }),
            "{e}"
        );
        // The other client is not held back by pc5's use.
        write(
            &reg.lookup("iqn.2026-11.org.isboot:pc2").unwrap(),
            0,
            &[3; 4096],
        );
        let st = reg.status();
        let t = st.target("iqn.2026-11.org.isboot:pc5").unwrap();
        assert_eq!(
            (t.overlay_data_bytes, t.quota_bytes, t.over_quota),
            (1 << 20, Some(1 << 20), true)
        );
        let fs = st.state_fs.unwrap();
        assert!(
            fs.size_bytes > 0 && fs.free_bytes <= fs.size_bytes,
            "{fs:?}"
        );
        // The quota raised in the config: the running client writes again.
        std::thread::sleep(Duration::from_millis(20));
        write_atomic(
            &dir.config_path(),
            with("client_quota_mib = 2").as_bytes(),
            0o644,
        )
        .unwrap();
        assert!(reg.reload_if_changed().unwrap());
        dev.write(1 << 20, &[2; 4096], false).unwrap();
        let st = reg.status();
        let t = st.target("iqn.2026-11.org.isboot:pc5").unwrap();
        assert_eq!(t.quota_bytes, Some(2 << 20));
        assert!(!t.over_quota);

        // pc5's own quota overrides the config's (and follows the registry without a
        // restart); pc2 keeps the config's.
        std::thread::sleep(Duration::from_millis(20));
        let pc5_own = dir
            .lock()
            .unwrap()
            .set_client_quota("pc5", Some(1))
            .unwrap();
        assert_eq!(pc5_own.quota_mib, Some(1));
        assert!(reg.reload_if_changed().unwrap());
        let e = dev.write(2 << 20, &[4; 4096], false).unwrap_err();
        assert!(
            matches!(e, crate::store::StoreError::QuotaExceeded { .. }),
            "{e}"
        );
        let st = reg.status();
        let quota = |name: &str| {
            st.target(&format!("iqn.2026-11.org.isboot:{name}"))
                .unwrap()
                .quota_bytes
        };
        assert_eq!((quota("pc5"), quota("pc2")), (Some(1 << 20), Some(2 << 20)));
        // 0: no quota for this client, whatever the config says.
        std::thread::sleep(Duration::from_millis(20));
        dir.lock()
            .unwrap()
            .set_client_quota("pc5", Some(0))
            .unwrap();
        assert!(reg.reload_if_changed().unwrap());
        dev.write(2 << 20, &[4; 1 << 20], false).unwrap();
        assert_eq!(
            reg.status()
                .target("iqn.2026-11.org.isboot:pc5")
                .unwrap()
                .quota_bytes,
            None
        );
        // Back to the config's.
        std::thread::sleep(Duration::from_millis(20));
        dir.lock().unwrap().set_client_quota("pc5", None).unwrap();
        assert!(reg.reload_if_changed().unwrap());
        assert_eq!(
            reg.status()
                .target("iqn.2026-11.org.isboot:pc5")
                .unwrap()
                .quota_bytes,
            Some(2 << 20)
        );
    }

    #[test]
    fn boot_targets_for_dhcp() {
        let (_t, dir) = setup();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        let mac1: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let b = reg.current_state().boot_target(&mac1).unwrap();
        assert_eq!(b.target.as_str(), "iqn.2026-11.org.isboot:pc1");
        assert_eq!(b.initiator.as_str(), "iqn.2026-11.org.isboot:initiator:pc1");
        assert_eq!(
            b.root_path.as_deref(),
            Some("iscsi:10.9.0.1::::iqn.2026-11.org.isboot:pc1")
        );
        assert!(
            reg.current_state()
                .boot_target(&"52:54:00:00:00:09".parse().unwrap())
                .is_none()
        );
        // While an image is edited on pc1's machine, pc1 boots the maintenance target.
        dir.lock()
            .unwrap()
            .image_edit(&"deb".parse().unwrap(), Some(mac1), vec![], vec![], false)
            .unwrap();
        reg.reload_if_changed().unwrap();
        let b = reg.current_state().boot_target(&mac1).unwrap();
        assert_eq!(b.target.as_str(), "iqn.2026-11.org.isboot:maint:deb");
        assert_eq!(
            b.initiator.as_str(),
            "iqn.2026-11.org.isboot:initiator:maint:deb"
        );
        let t = reg.lookup("iqn.2026-11.org.isboot:maint:deb").unwrap();
        assert!(t.allows("iqn.2026-11.org.isboot:initiator:maint:deb"));
        assert!(!t.allows("iqn.2026-11.org.isboot:initiator:pc1"));
    }

    /// A fleet's DHCP answer names the server the choice names: the one that holds the
    /// client's disk (or the least loaded), with its root-path and its script URL; a client
    /// this server is chosen for keeps this server's. An address another server of the fleet
    /// learned binds the client's target here too.
    #[test]
    fn the_dhcp_answer_names_the_fleets_chosen_server() {
        use crate::config::fleet::{FleetView, Presence};
        use crate::dhcp::ClientDirectory;
        let (_t, dir) = setup();
        let reg = Arc::new(StateRegistry::open(dir.clone()).unwrap());
        reg.set_listen("0.0.0.0:3260");
        let dhcp = crate::service::boot::RegistryDirectory(reg.clone());
        let (pc1, pc2): (MacAddr, MacAddr) = (
            "52:54:00:00:00:01".parse().unwrap(),
            "52:54:00:00:00:02".parse().unwrap(),
        );
        let me = reg.portal().unwrap();
        assert_eq!(me.to_string(), "10.9.0.1:3260");
        let other = Presence {
            name: "b".into(),
            portal: "10.9.0.2:3260".parse().unwrap(),
            boot_http: Some("10.9.0.2:8067".into()),
            clients: vec!["pc1".into()],
            sessions: 1,
            learned: vec![(pc2, "10.9.0.77".parse().unwrap(), "seen".into())],
        };
        let mine = reg.presence(me, "a");
        assert!(
            mine.clients.is_empty(),
            "file-store disks are not the fleet's"
        );
        let acks = [other.encode(), mine.encode()];
        reg.set_fleet(FleetView::from_acks(
            Some(me),
            acks.iter().map(|a| a.as_slice()),
        ));
        // A disk in this state directory is served here only, whatever the fleet says.
        assert_eq!(
            dhcp.by_mac(pc1).unwrap().root_path.as_deref(),
            Some("iscsi:10.9.0.1::::iqn.2026-11.org.isboot:pc1")
        );
        // Clients whose disks are clones on RBD (their clones need no cluster here: DHCP only
        // reads the registry).
        let text = std::fs::read_to_string(dir.registry_path()).unwrap();
        let text = ["pc1", "pc2"].iter().fold(text, |t, n| {
            t.replace(
                &format!("name = \"{n}\"\n"),
                &format!("name = \"{n}\"\nrbd = \"isboot/isboot-client-{n}.9\"\n"),
            )
        });
        std::fs::write(dir.registry_path(), text).unwrap();
        let _ = reg.reload();
        assert!(
            reg.current_state()
                .registry
                .clients
                .iter()
                .all(|c| c.rbd.is_some())
        );
        let c1 = dhcp.by_mac(pc1).unwrap();
        assert_eq!(
            c1.root_path.as_deref(),
            Some("iscsi:10.9.0.2::::iqn.2026-11.org.isboot:pc1")
        );
        assert_eq!(
            c1.boot_script.as_deref(),
            Some("http://10.9.0.2:8067/boot/52-54-00-00-00-01.ipxe")
        );
        // pc2: nobody holds it; this server carries no disk, the other one: this one.
        let c2 = dhcp.by_mac(pc2).unwrap();
        assert_eq!(
            c2.root_path.as_deref(),
            Some("iscsi:10.9.0.1::::iqn.2026-11.org.isboot:pc2")
        );
        assert_eq!(c2.boot_script, None, "the boot routes are off here");
        // The other server's DHCP saw pc2 at 10.9.0.77: pc2's target here accepts it.
        assert_eq!(
            reg.learned_address(&pc2),
            Some(("10.9.0.77".parse().unwrap(), AddressOrigin::Seen))
        );
        assert!(reg.learned_address(&pc1).is_none());
        // This server's DHCP sees it at .78: that is newer, and what it tells the fleet.
        reg.learn_address(pc2, "10.9.0.78".parse().unwrap(), AddressOrigin::Seen);
        assert_eq!(
            reg.learned_address(&pc2).unwrap().0.to_string(),
            "10.9.0.78"
        );
        assert_eq!(
            reg.presence(me, "a").learned,
            vec![(pc2, "10.9.0.78".parse().unwrap(), "seen".to_string())]
        );
        // A look that brings nothing new from the other server changes nothing here.
        let acks = [other.encode(), reg.presence(me, "a").encode()];
        reg.set_fleet(FleetView::from_acks(
            Some(me),
            acks.iter().map(|a| a.as_slice()),
        ));
        assert_eq!(
            reg.learned_address(&pc2).unwrap().0.to_string(),
            "10.9.0.78"
        );
        // The client's next boot request went to the other server, from .79: newer again
        // (its address changed; the request may go to any server of the fleet).
        let mut other2 = other.clone();
        other2.learned = vec![(pc2, "10.9.0.79".parse().unwrap(), "seen".into())];
        reg.merge_fleet_member(other2);
        assert_eq!(
            reg.learned_address(&pc2).unwrap().0.to_string(),
            "10.9.0.79"
        );
        // Adopted, not this server's own: it does not tell the fleet (no echo).
        assert!(reg.presence(me, "a").learned.is_empty());
    }

    /// Two servers on one pool with the same client (its registry copied, as before shared
    /// state): the server that holds a reset-mode client's disk does its power-on (a new
    /// clone); the other one, which sees the same DHCPDISCOVER with proxyDHCP, leaves the disk
    /// alone and only notes the power-on (in case it takes the disk over before the boot's
    /// first login).
    #[cfg(feature = "rbd")]
    #[test]
    fn rbd_power_on_is_done_by_the_server_that_holds_the_disk() {
        let cfg = crate::store::rbd::dev_cluster();
        let t = tempfile::tempdir().unwrap();
        let on_pool = |name: &str| {
            let dir = StateDir::new(t.path().join(name));
            dir.init(None, None, None).unwrap();
            crate::service::shared::put_on_pool(&dir, &cfg, false);
            dir
        };
        let (a, b) = (on_pool("a"), on_pool("b"));
        let n = rand::random::<u32>();
        let (image, client) = (format!("pwr{n:08x}"), format!("pc{n:08x}"));
        let img = t.path().join("base.raw");
        std::fs::write(&img, vec![0x5Au8; 1 << 20]).unwrap();
        let store_cfg = a.load().unwrap().config.store;
        a.image_add_rbd(&image.parse().unwrap(), &img, &store_cfg, &mut |_, _| {})
            .unwrap();
        let mac: MacAddr = "52:54:00:00:16:31".parse().unwrap();
        a.lock()
            .unwrap()
            .add_client(AddClient {
                mac,
                image: image.parse().unwrap(),
                name: Some(client.parse().unwrap()),
                ip: None,
                mode: Mode::Reset,
                initiators: vec![],
                chap: None,
                quota_mib: None,
            })
            .unwrap();
        std::fs::copy(a.registry_path(), b.registry_path()).unwrap();
        let disk = |d: &StateDir| {
            d.load()
                .unwrap()
                .registry
                .find_client(&client)
                .and_then(|c| c.rbd.clone())
                .unwrap()
        };
        let first = disk(&a);

        let ra = StateRegistry::open(a.clone()).unwrap();
        let rb = StateRegistry::open(b.clone()).unwrap();
        let iqn = a
            .load()
            .unwrap()
            .target_iqn(&client.parse().unwrap())
            .to_string();
        assert!(ra.lookup(&iqn).is_some(), "A serves the disk");
        assert!(rb.lookup(&iqn).is_none(), "B must not serve A's disk");

        assert_eq!(rb.power_on(&mac).unwrap(), PowerOn::Elsewhere);
        assert_eq!(disk(&b), first, "B re-cloned a disk A holds");
        assert!(rb.pending_power_on(&iqn, PENDING_POWER_ON));
        assert_eq!(ra.power_on(&mac).unwrap(), PowerOn::Reset);
        let second = disk(&a);
        assert_ne!(second, first, "A did not reset its client");
        assert!(ra.lookup(&iqn).is_some(), "A serves the new clone");

        drop((ra, rb));
        a.lock().unwrap().remove_client(&client, false).unwrap();
        let store = crate::store::rbd::RbdStore::connect(&cfg).unwrap();
        for spec in [&first, &second] {
            let _ = store.remove_disk(spec);
        }
        a.lock()
            .unwrap()
            .image_remove(&image.parse().unwrap())
            .unwrap();
        store.remove_base(&image, 1).unwrap();
    }

    /// A client's quota holds on its RBD clone too (counted in the clone's own objects, as
    /// copy-up allocates them): the write that needs one object past it is refused, the status
    /// shows the clone's held bytes against the quota, and `set-client --quota-mib` reaches
    /// the running server without a restart.
    #[cfg(feature = "rbd")]
    #[test]
    fn rbd_client_quota_holds_on_the_clone_and_follows_set_client() {
        let cfg = crate::store::rbd::dev_cluster();
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path().join("a"));
        dir.init(None, None, None).unwrap();
        crate::service::shared::put_on_pool(&dir, &cfg, false);
        let n = rand::random::<u32>();
        let (image, client) = (format!("quo{n:08x}"), format!("pc{n:08x}"));
        let img = t.path().join("base.raw");
        std::fs::write(&img, vec![0x5Au8; 16 << 20]).unwrap();
        let store_cfg = dir.load().unwrap().config.store;
        dir.image_add_rbd(&image.parse().unwrap(), &img, &store_cfg, &mut |_, _| {})
            .unwrap();
        // 4 MiB: one object of the clone.
        dir.lock()
            .unwrap()
            .add_client(AddClient {
                mac: "52:54:00:00:16:41".parse().unwrap(),
                image: image.parse().unwrap(),
                name: Some(client.parse().unwrap()),
                ip: None,
                mode: Mode::Persistent,
                initiators: vec![],
                chap: None,
                quota_mib: Some(4),
            })
            .unwrap();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        let iqn = dir
            .load()
            .unwrap()
            .target_iqn(&client.parse().unwrap())
            .to_string();
        let dev = reg
            .lookup(&iqn)
            .unwrap()
            .lus
            .get(0)
            .unwrap()
            .device()
            .clone();
        let status = || {
            let t = reg.status().target(&iqn).cloned().unwrap();
            (t.overlay_data_bytes, t.quota_bytes, t.over_quota)
        };
        assert_eq!(status(), (0, Some(4 << 20), false));
        dev.write(4096, &[1; 4096], true).unwrap();
        dev.write(2 << 20, &[1; 4096], true).unwrap();
        let e = dev.write(4 << 20, &[2; 4096], true).unwrap_err();
        assert!(
            matches!(e, crate::store::StoreError::QuotaExceeded { .. }),
            "{e}"
        );
        // Through SCSI: WRITE, WRITE AND VERIFY and COMPARE AND WRITE that would take the
        // second object get the file store's answer, DATA PROTECT / SPACE ALLOCATION FAILED;
        // the same commands inside the first object work.
        let target = reg.lookup(&iqn).unwrap();
        let nexus = crate::scsi::Nexus {
            id: u64::from(n),
            initiator_port: "iqn.2026-11.test:quota,i,0x00023d000001".into(),
            target_port: format!("{iqn},t,0x0001"),
        };
        let run = |cdb: &[u8], data: &[u8]| {
            let o = target.lus.execute(&nexus, 0, cdb, data);
            let sense = o.sense.as_deref().map(|s| (s[2] & 0xf, s[12], s[13]));
            (o.status, sense)
        };
        run(&[0; 6], &[]); // TEST UNIT READY: takes the power-on unit attention
        let rw10 = |op: u8, lba: u32| {
            let l = lba.to_be_bytes();
            [op, 0, l[0], l[1], l[2], l[3], 0, 0, 8, 0]
        };
        let caw = |lba: u64| {
            let l = lba.to_be_bytes();
            let mut c = [0u8; 16];
            c[0] = 0x89;
            c[2..10].copy_from_slice(&l);
            c[13] = 1;
            c
        };
        let no_space = (
            crate::scsi::status::CHECK_CONDITION,
            Some((0x7, 0x27, 0x07)),
        );
        let good = (crate::scsi::status::GOOD, None);
        let second = (4u32 << 20) / 512;
        let mut compare = vec![0x5Au8; 512]; // the base's data there
        compare.extend([9u8; 512]);
        assert_eq!(run(&rw10(0x2A, second), &[2; 4096]), no_space, "WRITE(10)");
        assert_eq!(
            run(&rw10(0x2E, second), &[2; 4096]),
            no_space,
            "WRITE AND VERIFY(10)"
        );
        assert_eq!(
            run(&caw(u64::from(second)), &compare),
            no_space,
            "COMPARE AND WRITE"
        );
        assert_eq!(run(&rw10(0x2A, 64), &[4; 4096]), good);
        assert_eq!(run(&rw10(0x2E, 72), &[4; 4096]), good);
        assert_eq!(run(&caw(100), &compare), good);
        assert_eq!(read(&target, 100 * 512, 512), vec![9; 512]);
        assert_eq!(read(&target, 4 << 20, 512), vec![0x5A; 512]);
        assert_eq!(status(), (4 << 20, Some(4 << 20), true));
        // Raised on the running server: the next object is taken.
        std::thread::sleep(Duration::from_millis(20));
        dir.lock()
            .unwrap()
            .set_client_quota(&client, Some(8))
            .unwrap();
        assert!(reg.reload_if_changed().unwrap());
        dev.write(4 << 20, &[2; 4096], true).unwrap();
        assert_eq!(status(), (8 << 20, Some(8 << 20), false));
        // No quota for this client (0).
        std::thread::sleep(Duration::from_millis(20));
        dir.lock()
            .unwrap()
            .set_client_quota(&client, Some(0))
            .unwrap();
        assert!(reg.reload_if_changed().unwrap());
        dev.write(12 << 20, &[3; 4096], true).unwrap();
        assert_eq!(status(), (12 << 20, None, false));

        drop((dev, target, reg));
        let spec = dir
            .load()
            .unwrap()
            .registry
            .find_client(&client)
            .and_then(|c| c.rbd.clone())
            .unwrap();
        dir.lock().unwrap().remove_client(&client, false).unwrap();
        let store = crate::store::rbd::RbdStore::connect(&cfg).unwrap();
        let _ = store.remove_disk(&spec);
        dir.lock()
            .unwrap()
            .image_remove(&image.parse().unwrap())
            .unwrap();
        store.remove_base(&image, 1).unwrap();
    }

    #[test]
    fn one_server_per_state_dir() {
        let (_t, dir) = setup();
        let held = dir.lock_server().unwrap();
        let e = dir.lock_server().unwrap_err();
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(held);
        dir.lock_server().unwrap();
    }

    #[test]
    fn publishes_status() {
        let (_t, dir) = setup();
        let reg = StateRegistry::open(dir.clone()).unwrap();
        reg.set_listen("127.0.0.1:3260");
        let t1 = reg.lookup("iqn.2026-11.org.isboot:pc1").unwrap();
        fake_session(&t1);
        t1.stats.bytes_read.store(1234, Ordering::Relaxed);
        reg.tick();
        let s = ServerStatus::load_live(&dir.status_path()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:3260");
        let ts = s.target("iqn.2026-11.org.isboot:pc1").unwrap();
        assert_eq!(ts.bytes_read, 1234);
        assert_eq!(ts.sessions[0].peer, "127.0.0.1:5555");
        assert_eq!(ts.base_version, 1);
        // A logged-in client's reset is refused without --force.
        let e = dir.lock().unwrap().reset_client("pc1", false).unwrap_err();
        assert!(matches!(e, ConfigError::LoggedIn { .. }), "{e}");
    }
}
