//! Prometheus metrics of `isboot serve`, served as `GET /metrics` on the admin HTTP routes.
//!
//! Two kinds:
//! - events, counted where they happen with one call into the process-wide [`Metrics`]
//!   ([`get`]): logins, READ/WRITE latency, DHCP messages, TFTP transfers, boots;
//! - state, read at scrape time from the live registry and the file system
//!   ([`StateCollector`]): per-client traffic, sessions and overlay sizes, free space, and the
//!   base images' page-cache residency (`mincore`, sampled at most every
//!   [`IMAGE_CACHE_SAMPLE`]). Those cost the serving paths nothing.
//!
//! Latency histograms are lock-free ([`AtomicHistogram`]): the READ path pays two clock reads
//! and three relaxed atomic adds per command (see benches/RESULTS.md).

use crate::service::registry::{IMAGE_CACHE_SAMPLE, ImageCache, StateRegistry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Boots whose takeover login is still awaited, at most (a client that never gets that far
/// is forgotten after [`TAKEOVER_WAIT`]).
pub const MAX_BOOTS_WATCHED: usize = 4096;
/// A boot that shows no takeover login this long after its power-on is not counted.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(1800);

/// Upper bounds of the command latency buckets, in seconds (50 µs .. 10 s).
const LATENCY_BOUNDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Upper bounds of the power-on to takeover-login buckets, in seconds.
const BOOT_BOUNDS: [f64; 12] = [
    5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
];

/// A histogram with fixed buckets that observes without a lock: one relaxed atomic add for
/// the bucket, one for the count, one for the sum (kept in nanoseconds).
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts what is above every bound (+Inf).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The buckets are read one by one while others may be adding: the count is derived
        // from them, so that count == the +Inf bucket in every scrape.
        let per: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = per.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &per, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Which SCSI data command a CDB is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    /// READ(6/10/12/16) or WRITE(6/10/12/16); None for anything else.
    pub fn of_cdb(cdb: &[u8]) -> Option<Op> {
        match cdb.first()? {
            0x08 | 0x28 | 0xa8 | 0x88 => Some(Op::Read),
            0x0a | 0x2a | 0xaa | 0x8a => Some(Op::Write),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DhcpLabels {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabel {
    client: String,
}

/// A power-on whose takeover login is awaited.
struct BootWatch {
    client: String,
    at: Instant,
}

/// The event counters of this process.
pub struct Metrics {
    logins: Family<LoginLabels, Counter>,
    read_latency: AtomicHistogram,
    write_latency: AtomicHistogram,
    dhcp: Family<DhcpLabels, Counter>,
    tftp_transfers: Family<OutcomeLabel, Counter>,
    tftp_bytes: Counter,
    iscsi_connections: Family<OutcomeLabel, Counter>,
    login_probes: Family<OutcomeLabel, Counter>,
    boots: Family<ClientLabel, Counter>,
    takeover: Family<ClientLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    last_takeover: Family<ClientLabel, Gauge<f64, AtomicU64>>,
    /// By target IQN (lower case).
    watched: Mutex<HashMap<String, BootWatch>>,
    /// The iSCSI service's write-data budget, once it serves.
    write_budget: Mutex<Option<crate::service::budget::Bytes>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    logins: Family::default(),
    read_latency: AtomicHistogram::new(&LATENCY_BOUNDS),
    write_latency: AtomicHistogram::new(&LATENCY_BOUNDS),
    dhcp: Family::default(),
    tftp_transfers: Family::default(),
    tftp_bytes: Counter::default(),
    iscsi_connections: Family::default(),
    login_probes: Family::default(),
    boots: Family::default(),
    takeover: Family::new_with_constructor(|| AtomicHistogram::new(&BOOT_BOUNDS)),
    last_takeover: Family::default(),
    watched: Mutex::new(HashMap::new()),
    write_budget: Mutex::new(None),
});

/// This process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// A login status (RFC 7143 §11.13.5) as a metric label.
pub fn login_reason(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (0, _) => "ok",
        (1, _) => "redirected",
        (2, 1) => "authentication_failed",
        (2, 2) => "not_authorized",
        (2, 3) => "target_not_found",
        (2, 4) => "target_removed",
        (2, 5) => "unsupported_version",
        (2, 6) => "too_many_connections",
        (2, 7) => "missing_parameter",
        (2, 8) => "cannot_include_in_session",
        (2, 9) => "session_type_unsupported",
        (2, 0x0a) => "session_does_not_exist",
        (2, 0x0b) => "invalid_during_login",
        (2, _) => "initiator_error",
        (3, 1) => "service_unavailable",
        (3, 2) => "out_of_resources",
        (3, _) => "target_error",
        _ => "other",
    }
}

impl Metrics {
    /// A SCSI READ or WRITE finished `elapsed` after it was ready to run.
    pub fn command(&self, op: Op, elapsed: Duration) {
        match op {
            Op::Read => self.read_latency.observe(elapsed),
            Op::Write => self.write_latency.observe(elapsed),
        }
    }

    /// A login reached full-feature phase. `target` (None for discovery) and the initiator's
    /// ISID tell a boot's takeover login (see [`Metrics::power_on`]).
    pub fn login_accepted(&self, target: Option<&str>, isid: [u8; 6]) {
        self.logins
            .get_or_create(&LoginLabels {
                result: "accepted",
                reason: "ok",
            })
            .inc();
        let Some(target) = target else { return };
        // iPXE logs in more than once per boot (each with its own ISID qualifier): its logins
        // are the firmware's stage, not the takeover.
        if crate::iscsi::target::boot_firmware_isid(isid) {
            return;
        }
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = w.remove(&target.to_ascii_lowercase()) else {
            return;
        };
        // The first login of another initiator after the power-on: the OS took over.
        let secs = b.at.elapsed();
        let client = ClientLabel { client: b.client };
        self.takeover.get_or_create(&client).observe(secs);
        self.last_takeover
            .get_or_create(&client)
            .set(secs.as_secs_f64());
    }

    /// A login was refused with `reason` (see [`login_reason`]).
    pub fn login_refused(&self, reason: &'static str) {
        self.logins
            .get_or_create(&LoginLabels {
                result: "refused",
                reason,
            })
            .inc();
    }

    /// One DHCP message: its type ("discover", ..., or "malformed") and what became of it
    /// ("offer", "ack", "nak", ... for the reply sent, or "ignored").
    pub fn dhcp_message(&self, msg_type: &'static str, outcome: &'static str) {
        self.dhcp
            .get_or_create(&DhcpLabels {
                r#type: msg_type,
                outcome,
            })
            .inc();
    }

    /// A TFTP transfer ended ("complete", "failed", "refused") after sending `bytes` (its
    /// packets, headers included).
    pub fn tftp_transfer(&self, outcome: &'static str, bytes: u64) {
        self.tftp_transfers
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.tftp_bytes.inc_by(bytes);
    }

    /// An iSCSI connection came in: "accepted", or refused at accept by a connection limit
    /// ("refused_per_address", "refused_full").
    pub fn iscsi_connection(&self, outcome: &'static str) {
        self.iscsi_connections
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A login probed the live sessions of the disk it asked for: "answered" (refused: the
    /// disk is in use), "gone" (they ended: a rebooted client) or "silent" (none answered in
    /// time; they were ended).
    pub fn login_probe(&self, outcome: &'static str) {
        self.login_probes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Publish the counters of the iSCSI service's write-data budget.
    pub fn watch_write_budget(&self, budget: crate::service::budget::Bytes) {
        *self.write_budget.lock().unwrap_or_else(|e| e.into_inner()) = Some(budget);
    }

    /// A client powered on (its boot firmware's DHCP): count the boot and time it until the
    /// operating system's initiator logs in to `target` (the takeover login: the first login
    /// after the power-on whose ISID is not iPXE's, [`crate::iscsi::target::boot_firmware_isid`]).
    pub fn power_on(&self, client: &str, target: &str) {
        self.boots
            .get_or_create(&ClientLabel {
                client: client.to_string(),
            })
            .inc();
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, b| b.at.elapsed() < TAKEOVER_WAIT);
        if w.len() >= MAX_BOOTS_WATCHED {
            return;
        }
        w.insert(
            target.to_ascii_lowercase(),
            BootWatch {
                client: client.to_string(),
                at: Instant::now(),
            },
        );
    }

    /// Register every event metric in `reg`.
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "isboot_iscsi_logins",
            "iSCSI logins by result and reason",
            self.logins.clone(),
        );
        reg.register_with_unit(
            "isboot_iscsi_read_latency",
            "Time from a READ command being ready to its data being ready",
            Unit::Seconds,
            HistogramRef(&METRICS, |m| &m.read_latency),
        );
        reg.register_with_unit(
            "isboot_iscsi_write_latency",
            "Time from a WRITE command's data being in hand to its status",
            Unit::Seconds,
            HistogramRef(&METRICS, |m| &m.write_latency),
        );
        reg.register(
            "isboot_iscsi_connections",
            "iSCSI connections by outcome at accept (accepted, or refused by a connection limit)",
            self.iscsi_connections.clone(),
        );
        reg.register(
            "isboot_iscsi_login_probes",
            "Probes of a disk's live sessions at a login from the same client, by outcome (answered: login refused)",
            self.login_probes.clone(),
        );
        reg.register(
            "isboot_dhcp_messages",
            "DHCP messages received, by message type and outcome",
            self.dhcp.clone(),
        );
        reg.register(
            "isboot_tftp_transfers",
            "TFTP transfers by outcome",
            self.tftp_transfers.clone(),
        );
        reg.register_with_unit(
            "isboot_tftp_sent",
            "Bytes sent in TFTP transfers (packets with their headers)",
            Unit::Bytes,
            self.tftp_bytes.clone(),
        );
        reg.register(
            "isboot_client_boots",
            "Power-ons (boot firmware DHCP) per client",
            self.boots.clone(),
        );
        reg.register_with_unit(
            "isboot_boot_takeover",
            "Time from a client's power-on (PXE DHCP) to its operating system's iSCSI login, per client",
            Unit::Seconds,
            self.takeover.clone(),
        );
        reg.register_with_unit(
            "isboot_client_last_boot_takeover",
            "The last boot's power-on to operating system login time, per client",
            Unit::Seconds,
            self.last_takeover.clone(),
        );
    }
}

/// A histogram of the process-wide metrics, as the registry holds it.
struct HistogramRef(&'static Metrics, fn(&Metrics) -> &AtomicHistogram);

impl std::fmt::Debug for HistogramRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistogramRef")
    }
}

impl TypedMetric for HistogramRef {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramRef {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        (self.1)(self.0).encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What `isboot serve` serves, read at every scrape.
pub struct StateCollector {
    registry: Arc<StateRegistry>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    client: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabels {
    image: String,
    version: String,
}

fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(L, M)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = rows.first() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, v) in rows {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.registry.status();
        let labels = |t: &crate::config::TargetStatus| TargetLabels {
            client: t.name.clone(),
            kind: t.kind.clone(),
        };
        let rows =
            |f: fn(&crate::config::TargetStatus) -> u64| -> Vec<(TargetLabels, ConstCounter<u64>)> {
                status
                    .targets
                    .iter()
                    .map(|t| (labels(t), ConstCounter::new(f(t))))
                    .collect()
            };
        family(
            &mut enc,
            "isboot_client_read",
            "Bytes clients read from their disk",
            Some(&Unit::Bytes),
            &rows(|t| t.bytes_read),
        )?;
        family(
            &mut enc,
            "isboot_client_written",
            "Bytes clients wrote to their disk",
            Some(&Unit::Bytes),
            &rows(|t| t.bytes_written),
        )?;
        let gauges =
            |f: fn(&crate::config::TargetStatus) -> i64| -> Vec<(TargetLabels, ConstGauge<i64>)> {
                status
                    .targets
                    .iter()
                    .map(|t| (labels(t), ConstGauge::new(f(t))))
                    .collect()
            };
        family(
            &mut enc,
            "isboot_client_sessions",
            "Live iSCSI sessions per client disk",
            None,
            &gauges(|t| t.sessions.len() as i64),
        )?;
        family(
            &mut enc,
            "isboot_client_overlay",
            "Bytes a client's copy-on-write overlay occupies on disk",
            Some(&Unit::Bytes),
            &gauges(|t| i64::try_from(t.overlay_bytes).unwrap_or(i64::MAX)),
        )?;
        family(
            &mut enc,
            "isboot_client_overlay_data",
            "Bytes of data a client's overlay holds (its written blocks): what its quota counts",
            Some(&Unit::Bytes),
            &gauges(|t| i64::try_from(t.overlay_data_bytes).unwrap_or(i64::MAX)),
        )?;
        // Only disks with a quota (the client's own or [limits] client_quota_mib).
        let quotas: Vec<(TargetLabels, ConstGauge<i64>)> = status
            .targets
            .iter()
            .filter_map(|t| {
                let q = i64::try_from(t.quota_bytes?).unwrap_or(i64::MAX);
                Some((labels(t), ConstGauge::new(q)))
            })
            .collect();
        family(
            &mut enc,
            "isboot_client_quota",
            "Bytes of data a client's overlay may hold (absent: no quota)",
            Some(&Unit::Bytes),
            &quotas,
        )?;
        family(
            &mut enc,
            "isboot_client_over_quota",
            "1 while a client's writes that need space are refused for its quota",
            None,
            &gauges(|t| i64::from(t.over_quota)),
        )?;
        family(
            &mut enc,
            "isboot_client_disk_failed",
            "1 when a client's overlay hit an I/O error and refuses writes",
            None,
            &gauges(|t| i64::from(t.failed)),
        )?;
        let total: i64 = status.targets.iter().map(|t| t.sessions.len() as i64).sum();
        let g = ConstGauge::new(total);
        g.encode(enc.encode_descriptor(
            "isboot_sessions",
            "Live iSCSI sessions to client and maintenance disks",
            None,
            g.metric_type(),
        )?)?;
        let root = self.registry.state_dir().root().to_path_buf();
        if let Ok(fs) = rustix::fs::statvfs(&root) {
            let avail = ConstGauge::new(fs.f_bavail.saturating_mul(fs.f_frsize) as f64);
            avail.encode(enc.encode_descriptor(
                "isboot_state_fs_available",
                "Bytes free for isboot in the state directory's file system",
                Some(&Unit::Bytes),
                avail.metric_type(),
            )?)?;
            let size = ConstGauge::new(fs.f_blocks.saturating_mul(fs.f_frsize) as f64);
            size.encode(enc.encode_descriptor(
                "isboot_state_fs_size",
                "Size of the state directory's file system",
                Some(&Unit::Bytes),
                size.metric_type(),
            )?)?;
            let warning = ConstGauge::new(status.state_fs.map_or(0, |s| s.warning_bytes) as f64);
            warning.encode(enc.encode_descriptor(
                "isboot_state_fs_warning",
                "Free space below which isboot warns ([limits] space_warning_mib)",
                Some(&Unit::Bytes),
                warning.metric_type(),
            )?)?;
        }
        let images = self.registry.image_cache(IMAGE_CACHE_SAMPLE);
        let rows = |f: fn(&ImageCache) -> u64| -> Vec<(ImageLabels, ConstGauge<i64>)> {
            images
                .iter()
                .map(|i| {
                    let labels = ImageLabels {
                        image: i.image.clone(),
                        version: i.version.to_string(),
                    };
                    (
                        labels,
                        ConstGauge::new(i64::try_from(f(i)).unwrap_or(i64::MAX)),
                    )
                })
                .collect()
        };
        family(
            &mut enc,
            "isboot_image_cached",
            "Bytes of a base image version in the page cache (mincore, sampled at most every 10 s)",
            Some(&Unit::Bytes),
            &rows(|i| i.cached),
        )?;
        family(
            &mut enc,
            "isboot_image_size",
            "Size of a base image version the targets use",
            Some(&Unit::Bytes),
            &rows(|i| i.size),
        )?;
        Ok(())
    }
}

/// The registry `GET /metrics` encodes: every event metric and the state of `registry`.
pub fn registry(registry: Arc<StateRegistry>) -> Registry {
    let mut reg = Registry::default();
    get().register(&mut reg);
    reg.register_collector(Box::new(StateCollector { registry }));
    reg.register_collector(Box::new(WriteBudgetCollector));
    reg
}

/// The write-data budget's counters, read at every scrape.
#[derive(Debug)]
struct WriteBudgetCollector;

impl Collector for WriteBudgetCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let budget = get()
            .write_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(st) = budget.map(|b| b.stats()) else {
            return Ok(());
        };
        for (name, help, v) in [
            (
                "isboot_write_budget_limit",
                "Memory for buffered iSCSI write data, over all connections",
                st.limit,
            ),
            (
                "isboot_write_budget_in_use",
                "Memory held now for iSCSI write data",
                st.in_use,
            ),
            (
                "isboot_write_budget_peak",
                "Most memory held at once for iSCSI write data since start",
                st.peak,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(enc.encode_descriptor(name, help, Some(&Unit::Bytes), g.metric_type())?)?;
        }
        let waits = ConstCounter::new(st.waits);
        waits.encode(enc.encode_descriptor(
            "isboot_write_budget_waits",
            "Times an iSCSI connection stopped reading to wait for write budget",
            None,
            waits.metric_type(),
        )?)?;
        Ok(())
    }
}

/// OpenMetrics text turned into the Prometheus text format 0.0.4 (what scrapers and tools
/// that do not ask for OpenMetrics read): counter families are named with their `_total`
/// suffix, `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if tail == "unknown" { "untyped" } else { tail };
                out.push_str(p);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The admin router with `GET /metrics`: OpenMetrics for a scraper that asks for it (as
/// Prometheus does), the Prometheus text format otherwise.
pub fn router(reg: Arc<Registry>) -> axum::Router {
    use axum::http::header::{ACCEPT, CONTENT_TYPE};
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let reg = reg.clone();
            async move {
                let openmetrics = headers
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let mut out = String::new();
                if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    )
                        .into_response();
                }
                if openmetrics {
                    let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                    ([(CONTENT_TYPE, ct)], out).into_response()
                } else {
                    let ct = "text/plain; version=0.0.4; charset=utf-8";
                    ([(CONTENT_TYPE, ct)], to_prometheus_text(&out)).into_response()
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_count_and_sum() {
        let h = AtomicHistogram::new(&LATENCY_BOUNDS);
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 4);
        let mut reg = Registry::default();
        reg.register_with_unit("lat", "x", Unit::Seconds, h);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("lat_seconds_count 4"), "{out}");
        assert!(
            out.contains("lat_seconds_bucket{le=\"0.00005\"} 1"),
            "{out}"
        );
        assert!(out.contains("lat_seconds_bucket{le=\"0.0001\"} 2"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.005\"} 3"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"10.0\"} 3"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("lat_seconds_sum 60.00311"), "{out}");
    }

    #[test]
    fn ops_of_cdbs() {
        assert_eq!(Op::of_cdb(&[0x28, 0]), Some(Op::Read));
        assert_eq!(Op::of_cdb(&[0x8a]), Some(Op::Write));
        assert_eq!(Op::of_cdb(&[0x35]), None);
        assert_eq!(Op::of_cdb(&[]), None);
    }

    #[test]
    fn takeover_is_the_first_login_that_is_not_ipxes() {
        let m = get();
        let t = "iqn.2026-11.test:takeover-unit";
        let client = ClientLabel {
            client: "takeover-unit".into(),
        };
        let count = || m.takeover.get_or_create(&client).count();
        assert_eq!(count(), 0);
        m.power_on("takeover-unit", t);
        // iPXE's ISID (IANA EN 10019): it logs in again with a new qualifier during its
        // sanboot (seen in the lab); neither login is the takeover.
        m.login_accepted(Some(t), [0x40, 0, 0x27, 0x23, 0x12, 0x34]);
        m.login_accepted(Some(t), [0x40, 0, 0x27, 0x23, 0x56, 0x78]);
        m.login_accepted(Some(t), [0x40, 0, 0x27, 0x23, 0x12, 0x34]);
        m.login_accepted(Some("iqn.2026-11.test:other"), [0, 2, 0x3d, 0, 0, 1]);
        assert_eq!(count(), 0);
        m.login_accepted(Some(&t.to_uppercase()), [0, 2, 0x3d, 0, 0, 1]); // open-iscsi
        assert_eq!(count(), 1);
        // Once per power-on.
        m.login_accepted(Some(t), [0, 2, 0x3d, 0, 0, 2]);
        assert_eq!(count(), 1);
        let g = m.last_takeover.get_or_create(&client);
        assert!(g.get() >= 0.0);
        // One histogram per client in the exposition.
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("# TYPE isboot_boot_takeover_seconds histogram"),
            "{out}"
        );
        assert!(
            out.contains("isboot_boot_takeover_seconds_count{client=\"takeover-unit\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "isboot_boot_takeover_seconds_bucket{le=\"+Inf\",client=\"takeover-unit\"} 1"
            ),
            "{out}"
        );
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP a_bytes A.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n# TYPE u unknown\nu 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_bytes_total A.\n# TYPE a_bytes_total counter\na_bytes_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n# TYPE u untyped\nu 2\n"
        );
    }

    #[test]
    fn login_reasons() {
        assert_eq!(login_reason(2, 1), "authentication_failed");
        assert_eq!(login_reason(2, 3), "target_not_found");
        assert_eq!(login_reason(2, 0x55), "initiator_error");
        assert_eq!(login_reason(3, 0), "target_error");
    }
}
