//! The PXE side of `isboot serve`: DHCP and TFTP on the configured boot interface, answering
//! from the live client registry.

use crate::dhcp::config::DhcpConfig;
use crate::dhcp::{
    AddressOrigin, ClientDirectory, DhcpClient, DhcpHooks, MacAddr, PowerOn, PowerOnHook,
};
use crate::service::registry::StateRegistry;
use crate::service::tftp::TftpLimits;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// DHCP's view of the registry: reserved addresses, targets and initiator names by MAC.
pub struct RegistryDirectory(pub Arc<StateRegistry>);

impl ClientDirectory for RegistryDirectory {
    fn by_mac(&self, mac: MacAddr) -> Option<DhcpClient> {
        let st = self.0.current_state();
        let b = st.boot_target(&mac)?;
        // A client's iPXE fetches its script (menu, next boot); a maintenance machine boots
        // its image's maintenance target from the root-path, as before.
        let own = st
            .registry
            .client_by_mac(&mac)
            .filter(|c| st.target_iqn(&c.name) == b.target);
        let mut root_path = b.root_path;
        let mut boot_script = own.and_then(|_| self.0.boot_script_url(&mac));
        // Several servers on one LAN: a client whose disk is on RBD boots from the server the
        // fleet's choice names (it holds the disk, or is the least loaded), whichever server
        // answers. A disk in a state directory is only here.
        let fleet = self.0.fleet();
        if let Some(m) = own
            .filter(|c| c.rbd.is_some())
            .and_then(|c| fleet.elsewhere(c.name.as_str()))
        {
            info!(client = %b.name, server = %m.portal, "fleet: the answer names the server that serves this client");
            root_path = Some(crate::config::fleet::root_path_at(
                m.portal,
                b.target.as_str(),
            ));
            boot_script = m
                .boot_http
                .as_deref()
                .map(|a| crate::service::registry::script_url(a, &mac));
        }
        Some(DhcpClient {
            name: b.name.replace(':', "-"),
            ip: b.ip,
            target_iqn: b.target.to_string(),
            initiator_iqn: Some(b.initiator.to_string()),
            root_path,
            san_filename: None,
            boot_script,
            chap: b.chap.map(|c| crate::dhcp::IpxeChap {
                username: c.user,
                password: c.secret.expose().to_string(),
                reverse: match (c.mutual_user, c.mutual_secret) {
                    (Some(u), Some(s)) => Some((u, s.expose().to_string())),
                    _ => None,
                },
            }),
        })
    }

    fn by_ip(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        let state = self.0.current_state();
        state
            .registry
            .clients
            .iter()
            .find(|c| c.ip == Some(ip))
            .map(|c| c.mac)
    }
}

/// The DHCP service's leases, in the state directory.
pub const LEASES_FILE: &str = "dhcp-leases.json";

/// A PXE ROM's DHCP is the machine's power-on: a reset-mode client's disk starts pristine.
struct PowerOnReset(Arc<StateRegistry>);

impl PowerOnHook for PowerOnReset {
    fn power_on(&self, mac: MacAddr, client: &DhcpClient) -> PowerOn {
        // A real reset writes and fsyncs a few files. It must finish before the DHCP answer
        // (iPXE logs in right after it), so it runs here, but off the executor's core
        // threads where the runtime allows it.
        match crate::service::blocking(|| self.0.power_on(&mac)) {
            Ok(outcome) => {
                if !matches!(outcome, PowerOn::InUse | PowerOn::Elsewhere) {
                    crate::service::metrics::get().power_on(&client.name, &client.target_iqn);
                }
                if outcome == PowerOn::Reset {
                    info!(client = %client.name, "power-on: reset-mode client starts from a pristine disk");
                }
                outcome
            }
            Err(e) => {
                warn!(client = %client.name, "power-on reset failed: {e}");
                PowerOn::Unchanged
            }
        }
    }
}

/// The `[dhcp]` section of the live config, if any.
fn dhcp_config(reg: &StateRegistry) -> Option<Result<DhcpConfig, String>> {
    dhcp_config_of(&reg.current_state())
}

/// The `[dhcp]` section of `st`'s config, if any (its `interface` is the boot interface).
pub fn dhcp_config_of(st: &crate::config::State) -> Option<Result<DhcpConfig, String>> {
    let v = st.config.dhcp.clone()?;
    Some(
        v.try_into()
            .map_err(|e: toml::de::Error| e.to_string().trim().replace('\n', " ")),
    )
}

/// DHCP and TFTP with their sockets bound ([`start`]), ready to [`BootServices::run`].
pub struct BootServices {
    registry: Arc<StateRegistry>,
    /// None: nothing configured or both turned off.
    cfg: Option<DhcpConfig>,
    tftp: Option<tokio::net::UdpSocket>,
    dhcp: Option<crate::service::dhcp::Sockets>,
}

/// Bind DHCP and TFTP as configured. Without a `[dhcp]` section nothing is bound (DHCP never
/// answers on an interface nobody named); `no_dhcp` / `no_tftp` turn either off.
pub async fn start(
    registry: Arc<StateRegistry>,
    no_dhcp: bool,
    no_tftp: bool,
) -> Result<BootServices, String> {
    let cfg = match dhcp_config(&registry) {
        None => {
            info!(
                "no [dhcp] section in the config: DHCP and TFTP are off (isboot init --interface IF --server-ip IP turns them on)"
            );
            None
        }
        Some(Err(e)) => return Err(format!("the [dhcp] section of the config is invalid: {e}")),
        Some(Ok(c)) => Some(c),
    };
    let mut tftp = None;
    let mut dhcp = None;
    if let Some(cfg) = &cfg {
        if !no_tftp {
            let addr = SocketAddr::new(cfg.server_ip.into(), 69);
            tftp = Some(
                crate::service::tftp::bind_tftp(addr)
                    .await
                    .map_err(|e| format!("TFTP: {e}"))?,
            );
        }
        if !no_dhcp {
            dhcp =
                Some(crate::service::dhcp::Sockets::open(cfg).map_err(|e| format!("DHCP: {e}"))?);
        }
    }
    Ok(BootServices {
        registry,
        cfg,
        tftp,
        dhcp,
    })
}

impl BootServices {
    /// Serve until `shutdown`; an error when a service stops on its own.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let BootServices {
            registry,
            cfg,
            tftp,
            dhcp,
        } = self;
        let Some(cfg) = cfg else {
            shutdown.await;
            return Ok(());
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(sock) = tftp {
            let root = registry.state_dir().tftp_dir();
            let stop = stopped();
            let limits = TftpLimits::from_config(&registry.current_state().config.limits);
            tasks.spawn(async move {
                crate::service::tftp::run_tftp(sock, root, limits, stop)
                    .await
                    .map_err(|e| format!("TFTP: {e}"))
            });
        }
        if let Some(socks) = dhcp {
            let (cfg_tx, cfg_rx) = tokio::sync::watch::channel(cfg.clone());
            let ra_rx = cfg_tx.subscribe();
            let stop = stopped();
            tasks.spawn(async move {
                crate::service::ra::run_ra_watched(ra_rx, stop).await;
                Ok(())
            });
            let dir: Arc<dyn ClientDirectory> = Arc::new(RegistryDirectory(registry.clone()));
            let learned = registry.clone();
            let hooks = DhcpHooks {
                power_on: Some(Arc::new(PowerOnReset(registry.clone()))),
                enroll: None,
                address: Some(Arc::new(
                    move |mac: MacAddr, ip: Ipv4Addr, how: AddressOrigin| {
                        learned.learn_address(mac, ip, how)
                    },
                )),
            };
            let leases = Some(registry.state_dir().path(LEASES_FILE));
            let stop = stopped();
            tasks.spawn(async move {
                crate::service::dhcp::run_dhcp_on(socks, cfg_rx, leases, dir, hooks, stop)
                    .await
                    .map_err(|e| format!("DHCP: {e}"))
            });
            // Follow edits of the [dhcp] section without a restart.
            let reg = registry.clone();
            let stop = stopped();
            tasks.spawn(async move {
                tokio::pin!(stop);
                let mut last = cfg;
                loop {
                    tokio::select! {
                        _ = &mut stop => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match dhcp_config(&reg) {
                        Some(Ok(c)) if c != last => {
                            info!("DHCP configuration changed");
                            last = c.clone();
                            let _ = cfg_tx.send(c);
                        }
                        Some(Err(e)) => warn!("ignoring an invalid [dhcp] section: {e}"),
                        _ => {}
                    }
                }
            });
        }
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}
