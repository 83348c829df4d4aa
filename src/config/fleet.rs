//! Several isboot servers on one LAN, sans-IO: what a server says of itself to the others
//! ([`Presence`]), what it knows of them ([`FleetView`]) and the one choice every server makes
//! the same way ([`FleetView::choose`]): which server a client boots from.
//!
//! The servers of a fleet share one Ceph pool (`[store] backend = "rbd"`, `shared_state =
//! true`). Each one watches the pool's `isboot-fleet` object and acknowledges every notify on
//! it with its [`Presence`]; each one notifies it every second and takes the acknowledgements
//! it gets back as the live fleet (`service::fleet` does that I/O). A server is alive while it
//! answers: a dead one's watch stops acknowledging at once, and librbd breaks its disk locks
//! once that watch expires. No clock is compared anywhere.
//!
//! The choice for a client: the live server that holds its disk, else the least loaded live
//! server (fewest client disks held), ties broken by a hash of the client's and the server's
//! names, so every server that sees the same fleet names the same server. A server opens a
//! client's disk only when the choice names it, and its DHCP answers (proxyDHCP on every server,
//! or full DHCP on one) name the chosen server in the root-path and the script URL.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::mac::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The RADOS object every server of a fleet watches.
pub const FLEET_OBJECT: &str = "isboot-fleet";
/// How a notify that asks the others to look at the fleet again now starts (a server learned
/// a client's address or took a disk); the notifier's presence follows. Any other payload is
/// a plain look.
pub const CHANGED: &[u8] = b"changed";
/// A presence bigger than this is not read (a fleet member is trusted, but bounded).
pub const MAX_PRESENCE_BYTES: usize = 256 * 1024;

/// What one server says of itself in its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Its host name (shown, not used to choose).
    pub name: String,
    /// Its iSCSI portal on the boot network (`server_ip` and the iSCSI port): its identity in
    /// the fleet and what root-paths name.
    pub portal: SocketAddrV4,
    /// Its boot routes (`ip:port` of the iPXE scripts), when they are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_http: Option<String>,
    /// The clients whose disks it holds (serves).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Its iSCSI sessions now.
    #[serde(default)]
    pub sessions: u64,
    /// Client addresses its DHCP learned (MAC, address, "lease" or "seen"): the server a
    /// client is sent to accepts its logins from there too.
    #[serde(default)]
    pub learned: Vec<(MacAddr, Ipv4Addr, String)>,
}

impl Presence {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A member's acknowledgement: None when it is not a presence (an old server, a watcher
    /// that is not isboot, something too big).
    pub fn decode(b: &[u8]) -> Option<Presence> {
        if b.is_empty() || b.len() > MAX_PRESENCE_BYTES {
            return None;
        }
        serde_json::from_slice(b).ok()
    }

    fn load(&self) -> usize {
        self.clients.len()
    }
}

/// Why the choice names a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// It holds the client's disk.
    HoldsDisk,
    /// Nobody holds it; this is the least loaded live server.
    LeastLoaded,
}

/// The fleet as one server sees it after a notify round: every live server, itself included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetView {
    /// This server's portal.
    pub me: Option<SocketAddrV4>,
    /// The live servers (those that answered), by portal.
    pub members: Vec<Presence>,
}

impl FleetView {
    /// The view from the acknowledgements of one round (unreadable ones are left out; two
    /// with one portal: the first), sorted by portal.
    pub fn from_acks<'a>(
        me: Option<SocketAddrV4>,
        acks: impl IntoIterator<Item = &'a [u8]>,
    ) -> FleetView {
        let mut members: Vec<Presence> = Vec::new();
        for p in acks.into_iter().filter_map(Presence::decode) {
            if !members.iter().any(|m| m.portal == p.portal) {
                members.push(p);
            }
        }
        sort(&mut members);
        FleetView { me, members }
    }

    /// `p` as it announced itself just now, in place of what the last round had of it (not
    /// this server: its own view of itself comes from its rounds).
    pub fn merge(&mut self, p: Presence) {
        if Some(p.portal) == self.me {
            return;
        }
        self.members.retain(|m| m.portal != p.portal);
        self.members.push(p);
        sort(&mut self.members);
    }

    /// Which live server `client` boots from: the one that holds its disk, else the least
    /// loaded one (ties: the lowest hash of client and portal). None when nobody answered.
    pub fn choose(&self, client: &str) -> Option<(&Presence, Why)> {
        if let Some(h) = self
            .members
            .iter()
            .find(|m| m.clients.iter().any(|c| c == client))
        {
            return Some((h, Why::HoldsDisk));
        }
        self.members
            .iter()
            .min_by_key(|m| (m.load(), rendezvous(client, &m.portal)))
            .map(|m| (m, Why::LeastLoaded))
    }

    /// Whether this server should open `client`'s disk: the choice names it, or nobody
    /// answered (a fleet of one that has not seen itself yet serves as before).
    pub fn is_mine(&self, client: &str) -> bool {
        match (self.choose(client), self.me) {
            (Some((m, _)), Some(me)) => m.portal == me,
            _ => true,
        }
    }

    /// The chosen server for `client` when it is another one: what a DHCP answer names.
    pub fn elsewhere(&self, client: &str) -> Option<&Presence> {
        self.choose(client)
            .map(|(m, _)| m)
            .filter(|m| Some(m.portal) != self.me)
    }
}

fn sort(members: &mut [Presence]) {
    members.sort_by_key(|m| (u32::from(*m.portal.ip()), m.portal.port()));
}

/// Rendezvous (highest random weight) hashing, as a key to minimise: a client's preferred
/// server stays the same when other servers come and go.
fn rendezvous(client: &str, portal: &SocketAddrV4) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client.bytes().chain([0]).chain(portal.to_string().bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits are weak for short keys: mix (splitmix64's finaliser).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The root-path of `target` on the server at `portal` (iPXE's `iscsi:` URI; the port is left
/// out when it is iSCSI's own).
pub fn root_path_at(portal: SocketAddrV4, target: &str) -> String {
    if portal.port() == crate::config::file::ISCSI_PORT {
        format!("iscsi:{}::::{target}", portal.ip())
    } else {
        format!("iscsi:{}::{}::{target}", portal.ip(), portal.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(portal: &str, clients: &[&str]) -> Presence {
        Presence {
            name: "host".into(),
            portal: portal.parse().unwrap(),
            boot_http: None,
            clients: clients.iter().map(|c| c.to_string()).collect(),
            sessions: 0,
            learned: Vec::new(),
        }
    }

    fn view(me: &str, members: &[Presence]) -> FleetView {
        let acks: Vec<Vec<u8>> = members.iter().map(Presence::encode).collect();
        FleetView::from_acks(Some(me.parse().unwrap()), acks.iter().map(|a| a.as_slice()))
    }

    #[test]
    fn the_holder_is_chosen_then_the_least_loaded() {
        let a = p("10.0.0.1:3260", &["pc1", "pc2"]);
        let b = p("10.0.0.2:3260", &["pc3"]);
        let v = view("10.0.0.2:3260", &[a.clone(), b.clone()]);
        assert_eq!(
            v.choose("pc1").map(|(m, w)| (m.portal, w)),
            Some((a.portal, Why::HoldsDisk))
        );
        assert_eq!(
            v.choose("pc3").map(|(m, w)| (m.portal, w)),
            Some((b.portal, Why::HoldsDisk))
        );
        // Nobody holds pc9: B carries one disk, A two.
        assert_eq!(
            v.choose("pc9").map(|(m, w)| (m.portal, w)),
            Some((b.portal, Why::LeastLoaded))
        );
        assert!(v.is_mine("pc9") && v.is_mine("pc3") && !v.is_mine("pc1"));
        assert_eq!(v.elsewhere("pc1").map(|m| m.portal), Some(a.portal));
        assert_eq!(v.elsewhere("pc9"), None);
        // A is gone: everything it held goes to the live server.
        let v = view("10.0.0.2:3260", std::slice::from_ref(&b));
        assert!(v.is_mine("pc1") && v.is_mine("pc2"));
    }

    #[test]
    fn every_server_makes_the_same_choice_and_idle_servers_share_the_clients() {
        let a = p("10.0.0.1:3260", &[]);
        let b = p("10.0.0.2:3260", &[]);
        let from_a = view("10.0.0.1:3260", &[a.clone(), b.clone()]);
        // B got the acknowledgements in the other order.
        let from_b = view("10.0.0.2:3260", &[b.clone(), a.clone()]);
        let mut on_a = 0;
        for i in 0..200 {
            let c = format!("pc{i}");
            let (x, _) = from_a.choose(&c).unwrap();
            let (y, _) = from_b.choose(&c).unwrap();
            assert_eq!(x.portal, y.portal, "{c}");
            assert_ne!(
                from_a.is_mine(&c),
                from_b.is_mine(&c),
                "{c}: exactly one opens it"
            );
            on_a += usize::from(x.portal == a.portal);
        }
        // The hash spreads clients over equally loaded servers (not all on one).
        assert!((60..=140).contains(&on_a), "{on_a} of 200 on A");
    }

    #[test]
    fn before_anyone_answered_a_server_serves_as_a_single_server() {
        let v = FleetView {
            me: Some("10.0.0.1:3260".parse().unwrap()),
            members: Vec::new(),
        };
        assert!(v.is_mine("pc1"));
        assert_eq!(v.elsewhere("pc1"), None);
        assert_eq!(FleetView::default().choose("pc1"), None);
    }

    #[test]
    fn unreadable_or_duplicate_acks_are_left_out_and_a_change_replaces_the_member() {
        let mut a = p("10.0.0.1:3260", &["pc1"]);
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        a.learned
            .push((mac, "10.0.0.50".parse().unwrap(), "seen".into()));
        let enc = a.encode();
        let big = vec![b'x'; MAX_PRESENCE_BYTES + 1];
        let acks: Vec<&[u8]> = vec![b"", b"not json", &big, &enc, &enc];
        let mut v = FleetView::from_acks(Some("10.0.0.2:3260".parse().unwrap()), acks);
        assert_eq!(v.members, vec![a.clone()]);
        // A change announced by a server replaces what the round had of it.
        let mut a2 = a.clone();
        a2.learned[0].1 = "10.0.0.51".parse().unwrap();
        v.merge(a2.clone());
        assert_eq!(v.members, vec![a2]);
        // This server's own presence comes from its rounds, not from a merge.
        v.merge(p("10.0.0.2:3260", &["pc7"]));
        assert_eq!(v.members.len(), 1);
    }

    #[test]
    fn root_paths_name_the_chosen_portal() {
        assert_eq!(
            root_path_at("10.0.0.2:3260".parse().unwrap(), "iqn.x:pc1"),
            "iscsi:10.0.0.2::::iqn.x:pc1"
        );
        assert_eq!(
            root_path_at("10.0.0.2:3261".parse().unwrap(), "iqn.x:pc1"),
            "iscsi:10.0.0.2::3261::iqn.x:pc1"
        );
    }
}
