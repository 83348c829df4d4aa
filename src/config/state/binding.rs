//! Where each target accepts logins from (its address binding), and why: the one rule that
//! the login check (`service/registry.rs`), `isboot status` and `show-client` all use.
//!
//! - A client's target: its reservation (`add-client --ip`, `set-client --ip`) and the
//!   address DHCP learned it holds (the lease isboot acknowledged, or in proxy mode the
//!   address its boot request came from). With neither, it is bound nowhere when isboot runs
//!   DHCP (it learns the address at the client's boot), and to any address when it does not
//!   (no `[dhcp]` section: `add-client --ip` binds it).
//! - Another image a client may boot (`isboot boot --allow-image`): exactly its disk's.
//! - A maintenance target: this host (127.0.0.1), the addresses `image edit --from` names,
//!   and the maintenance machine's (`--mac`) learned address.

use super::{State, TargetKind};
use crate::mac::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// How isboot knows that an address belongs to a target's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The admin's reservation (`add-client --ip`, `set-client --ip`).
    Reservation,
    /// A lease isboot's DHCP acknowledged.
    Lease,
    /// Proxy DHCP: the address the client's boot request came from.
    Seen,
    /// This host: the admin on the server itself (maintenance targets).
    Localhost,
    /// An address the admin named for a maintenance machine (`image edit --from`).
    Stated,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Reservation => "reservation",
            Origin::Lease => "lease",
            Origin::Seen => "seen",
            Origin::Localhost => "localhost",
            Origin::Stated => "stated",
        }
    }
}

/// One address a target accepts logins from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundAddress {
    pub ip: IpAddr,
    pub origin: Origin,
}

/// Where a target accepts logins from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Any address: a client with no reservation on a server without `[dhcp]`.
    Any,
    /// Only these (none: nowhere yet, until DHCP learns the client's address).
    Only(Vec<BoundAddress>),
}

impl Default for Bound {
    fn default() -> Bound {
        Bound::Only(Vec::new())
    }
}

impl Bound {
    /// The addresses, or None for any.
    pub fn addresses(&self) -> Option<Vec<IpAddr>> {
        match self {
            Bound::Any => None,
            Bound::Only(a) => Some(a.iter().map(|b| b.ip).collect()),
        }
    }

    /// One line for `status` and `show-client`: `10.0.0.5 (lease), 127.0.0.1 (localhost)`.
    pub fn describe(&self) -> String {
        match self {
            Bound::Any => "any address (no [dhcp], no --ip)".into(),
            Bound::Only(a) if a.is_empty() => "none yet (learned at its next DHCP boot)".into(),
            Bound::Only(a) => a
                .iter()
                .map(|b| format!("{} ({})", b.ip, b.origin.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// What DHCP learned a MAC holds (none when no server runs or it has not seen the MAC).
pub type Learned<'a> = &'a dyn Fn(&MacAddr) -> Option<(Ipv4Addr, Origin)>;

impl State {
    /// Where `kind`'s target accepts logins from, given what DHCP learned.
    pub fn bound(&self, kind: &TargetKind, learned: Learned<'_>) -> Bound {
        let mut out: Vec<BoundAddress> = Vec::new();
        let mut add = |ip: IpAddr, origin: Origin| {
            if !out.iter().any(|b| b.ip == ip) {
                out.push(BoundAddress { ip, origin });
            }
        };
        match kind {
            TargetKind::Client(name) | TargetKind::ClientImage(name, _) => {
                let Some(c) = self.registry.client(name) else {
                    return Bound::Only(Vec::new());
                };
                if let Some(ip) = c.ip {
                    add(ip.into(), Origin::Reservation);
                }
                if let Some((ip, how)) = learned(&c.mac) {
                    add(ip.into(), how);
                }
                if out.is_empty() && self.config.dhcp.is_none() {
                    return Bound::Any;
                }
            }
            TargetKind::Maintenance(image) => {
                add(Ipv4Addr::LOCALHOST.into(), Origin::Localhost);
                let m = self
                    .registry
                    .image(image)
                    .and_then(|i| i.maintenance.as_ref());
                for ip in m.map(|m| m.from.as_slice()).unwrap_or_default() {
                    add((*ip).into(), Origin::Stated);
                }
                if let Some((ip, how)) = m.and_then(|m| m.mac.as_ref()).and_then(learned) {
                    add(ip.into(), how);
                }
            }
        }
        Bound::Only(out)
    }

    /// [`State::bound`] from the state files alone (no running server: reservations and
    /// stated addresses only).
    pub fn bound_offline(&self, kind: &TargetKind) -> Bound {
        self.bound(kind, &|_| None)
    }
}
