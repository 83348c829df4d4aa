//! Who may log in to a target, sans-IO: the address a target is bound to and "one user of a
//! disk at a time". The login state machine ([`super::login`]) asks these with the facts of a
//! login; the registry (`service::registry`) says which addresses a target is bound to.
//!
//! On the wire every refusal here is the same answer (status 0201, authentication failure), so
//! a caller learns nothing about which names, targets or addresses exist; the reason is kept
//! for the log and the `isboot_logins_refused_total{reason}` metric.

use std::net::IpAddr;

/// The addresses a target accepts logins (and discovery) from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Any address: `isboot export`, and clients of a server that assigns no addresses (no
    /// `[dhcp]` section) and was given none (`isboot status` shows these).
    Any,
    /// Only these: the client's reservation, its current DHCP lease or the address isboot saw
    /// it use; `127.0.0.1` (or what `image edit --from` named) for a maintenance target.
    Only(Vec<IpAddr>),
}

impl Binding {
    /// May a login from `peer` use the target? A login without a known peer (unit tests of the
    /// protocol alone) is not checked.
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        match (self, peer) {
            (Binding::Any, _) | (_, None) => true,
            (Binding::Only(a), Some(p)) => a.iter().any(|x| same_host(*x, p)),
        }
    }
}

/// `a` and `b` name the same host (an IPv4 address also as its IPv4-mapped IPv6 form).
fn same_host(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |x: IpAddr| match x {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(x),
        v4 => v4,
    };
    v4(a) == v4(b)
}

/// Why a login was refused (for logs and metrics; the initiator sees 0201 or 020a only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No target by that name.
    UnknownTarget,
    /// The target is bound to other addresses.
    WrongAddress,
    /// The target does not allow that initiator name.
    WrongInitiator,
    /// The target has a live session of another initiator or from another address.
    InUse,
    /// A login naming a TSIH that is not a live session of this initiator name and ISID.
    NoSuchSession,
    /// A discovery session from an address and name that no target accepts.
    NothingToDiscover,
}

impl Refusal {
    /// Label of the `reason` in `isboot_logins_refused_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::UnknownTarget => "unknown_target",
            Refusal::WrongAddress => "wrong_address",
            Refusal::WrongInitiator => "wrong_initiator",
            Refusal::InUse => "in_use",
            Refusal::NoSuchSession => "no_such_session",
            Refusal::NothingToDiscover => "nothing_to_discover",
        }
    }
}

/// A live session of a target, as far as the access rules care.
#[derive(Clone, Debug)]
pub struct Live<'a> {
    pub peer: IpAddr,
    pub initiator: &'a str,
}

/// One user of a disk at a time: while `live` sessions exist, a new login must come from the
/// same address with the same initiator name (the one client's own boot chain: iPXE, the
/// initrd, iscsid's takeover — each may use its own ISID; a login with the ISID of a live
/// session reinstates it, RFC 7143 6.3.5). Anyone else is refused until those sessions end
/// (logout, or liveness dropping a vanished peer).
pub fn one_user(live: &[Live<'_>], peer: Option<IpAddr>, initiator: &str) -> Result<(), Refusal> {
    let Some(peer) = peer else { return Ok(()) };
    let other = live
        .iter()
        .any(|l| !same_host(l.peer, peer) || !l.initiator.eq_ignore_ascii_case(initiator));
    if other { Err(Refusal::InUse) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "iqn.2026-11.org.isboot:initiator:a";
    const B: &str = "iqn.2026-11.org.isboot:initiator:b";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bindings() {
        let only = Binding::Only(vec![ip("10.0.0.5")]);
        assert!(only.allows(Some(ip("10.0.0.5"))));
        assert!(
            only.allows(Some(ip("::ffff:10.0.0.5"))),
            "v4-mapped is the same host"
        );
        assert!(!only.allows(Some(ip("10.0.0.6"))));
        assert!(!only.allows(Some(ip("127.0.0.1"))));
        assert!(
            !Binding::Only(vec![]).allows(Some(ip("10.0.0.5"))),
            "bound nowhere"
        );
        assert!(Binding::Any.allows(Some(ip("192.0.2.1"))));
        assert!(only.allows(None), "protocol-only tests have no peer");
    }

    #[test]
    fn one_user_of_a_disk() {
        let (a, h) = (ip("10.0.0.5"), ip("10.0.0.66"));
        // Free disk: anyone the other rules let in.
        assert_eq!(one_user(&[], Some(h), B), Ok(()));
        let live = [Live {
            peer: a,
            initiator: A,
        }];
        // The same client's next login (same address and name, any ISID).
        assert_eq!(one_user(&live, Some(a), A), Ok(()));
        assert_eq!(
            one_user(&live, Some(a), "IQN.2026-11.ORG.ISBOOT:INITIATOR:A"),
            Ok(()),
            "names compare case-insensitively"
        );
        // Another name from A's address, A's name from elsewhere, both: refused.
        for (p, n) in [(a, B), (h, A), (h, B)] {
            assert_eq!(one_user(&live, Some(p), n), Err(Refusal::InUse), "{p} {n}");
        }
        // Two sessions, one of them foreign (a binding that changed): refused for both.
        let mixed = [
            Live {
                peer: a,
                initiator: A,
            },
            Live {
                peer: h,
                initiator: A,
            },
        ];
        assert_eq!(one_user(&mixed, Some(a), A), Err(Refusal::InUse));
    }

    #[test]
    fn refusal_labels_are_distinct() {
        let all = [
            Refusal::UnknownTarget,
            Refusal::WrongAddress,
            Refusal::WrongInitiator,
            Refusal::InUse,
            Refusal::NoSuchSession,
            Refusal::NothingToDiscover,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
