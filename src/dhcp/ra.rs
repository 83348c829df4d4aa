//! IPv6 router advertisements that tell boot clients "there is no IPv6 router here", sans-IO.
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (NDP autoconf) side by side and waits for both: on a
//! link where nobody sends a router advertisement, "Configuring (net0 ...)" sits for about
//! 13 s (three router solicitations) after DHCP has already finished. One RA ends that wait
//! (iPXE treats an RA without the Managed/Other flags as "autoconfiguration done").
//!
//! The advertisement isboot sends is deliberately empty: router lifetime 0 (not a default
//! router, RFC 4861 4.2), no prefix (no SLAAC addresses), no M/O flags (no DHCPv6). It changes
//! nothing on a client except ending the wait. It is sent to all-nodes (ff02::1) when the
//! service starts and whenever a router solicitation arrives, at most once per
//! [`MIN_DELAY_BETWEEN_RAS`] per link as RFC 4861 6.2.6 asks for multicast answers.

use std::time::{Duration, Instant};

/// ICMPv6 type of a router solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;
/// RFC 4861 10: MIN_DELAY_BETWEEN_RAS.
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
/// RFC 4861 10: MAX_INITIAL_RTR_ADVERTISEMENTS.
pub const INITIAL_ADVERTISEMENTS: u32 = 3;
/// Interval of the unsolicited advertisements (RFC 4861 6.2.1 allows 4 s to 1800 s; the
/// initial ones are at most 16 s apart). Clients that boot later solicit anyway.
pub const UNSOLICITED_INTERVAL: Duration = Duration::from_secs(16);

/// The advertisement: ICMPv6 header with checksum 0 (the kernel fills it in for raw ICMPv6
/// sockets, RFC 3542 3.1), hop limit 64 for hosts, no flags, router lifetime 0, reachable time
/// and retransmit timer unspecified, no options.
pub fn router_advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra[1] = 0; // code
    // ra[2..4]: checksum, computed by the kernel
    ra[4] = 64; // Cur Hop Limit
    ra[5] = 0; // M = 0, O = 0
    // ra[6..8]: Router Lifetime 0: not a default router
    // ra[8..12]: Reachable Time 0: unspecified; ra[12..16]: Retrans Timer 0: unspecified
    ra
}

/// Is `msg` (an ICMPv6 message, without the IPv6 header) a valid router solicitation?
/// RFC 4861 6.1.1: code 0, at least 8 bytes, and every option with a non-zero length that
/// fits in the message. (The hop-limit-255 check needs the IPv6 header: the service asks the
/// kernel for it.)
pub fn is_router_solicitation(msg: &[u8]) -> bool {
    let Some((&[kind, code, ..], mut opts)) = msg.split_first_chunk::<8>() else {
        return false;
    };
    if kind != ROUTER_SOLICITATION || code != 0 {
        return false;
    }
    while !opts.is_empty() {
        // Type, length in units of 8 bytes.
        let Some(&[_, units]) = opts.first_chunk::<2>() else {
            return false;
        };
        let len = usize::from(units) * 8;
        match opts.get(len..) {
            Some(rest) if len > 0 => opts = rest,
            _ => return false,
        }
    }
    true
}

/// When to advertise: a few unsolicited RAs at start, then one per solicitation, never two
/// multicast RAs closer than [`MIN_DELAY_BETWEEN_RAS`].
#[derive(Debug, Default)]
pub struct Schedule {
    last_sent: Option<Instant>,
    initial_sent: u32,
    solicited: bool,
}

impl Schedule {
    pub fn new() -> Self {
        Schedule::default()
    }

    /// A valid solicitation arrived.
    pub fn solicitation(&mut self) {
        self.solicited = true;
    }

    /// Should an RA go out at `now`? If so the caller sends it and this records it.
    pub fn due(&mut self, now: Instant) -> bool {
        let spaced = self
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= MIN_DELAY_BETWEEN_RAS);
        let unsolicited = self.initial_sent < INITIAL_ADVERTISEMENTS
            && self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= UNSOLICITED_INTERVAL);
        if spaced && (self.solicited || unsolicited) {
            self.last_sent = Some(now);
            self.solicited = false;
            if self.initial_sent < INITIAL_ADVERTISEMENTS {
                self.initial_sent += 1;
            }
            return true;
        }
        false
    }

    /// How long until [`Schedule::due`] could next say yes (None: only a solicitation can
    /// make it due, and there is none pending).
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let since = |t: Instant| now.duration_since(t);
        match self.last_sent {
            None => Some(Duration::ZERO),
            Some(t) if self.solicited => Some(MIN_DELAY_BETWEEN_RAS.saturating_sub(since(t))),
            Some(t) if self.initial_sent < INITIAL_ADVERTISEMENTS => {
                Some(UNSOLICITED_INTERVAL.saturating_sub(since(t)))
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_says_no_router_no_prefix_no_dhcpv6() {
        let ra = router_advertisement();
        assert_eq!(ra.len(), 16);
        assert_eq!(ra[0], 134);
        assert_eq!(ra[1], 0);
        assert_eq!(ra[5] & 0xc0, 0, "M and O flags clear");
        assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 0, "router lifetime 0");
    }

    #[test]
    fn solicitations_are_validated() {
        let mut rs = vec![133, 0, 0x12, 0x34, 0, 0, 0, 0];
        assert!(is_router_solicitation(&rs));
        // with a source link-layer address option (type 1, one 8-byte block)
        rs.extend_from_slice(&[1, 1, 0x52, 0x54, 0, 0x77, 0, 0x11]);
        assert!(is_router_solicitation(&rs));
        assert!(!is_router_solicitation(&rs[..7]), "short");
        assert!(
            !is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]),
            "code 1"
        );
        assert!(
            !is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]),
            "an RA"
        );
        assert!(
            !is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            "zero-length option"
        );
        assert!(
            !is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]),
            "option longer than the message"
        );
        assert!(
            !is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0, 1]),
            "truncated option"
        );
    }

    #[test]
    fn schedule_sends_initial_burst_then_only_on_solicitation() {
        let t0 = Instant::now();
        let mut s = Schedule::new();
        assert_eq!(s.next_wakeup(t0), Some(Duration::ZERO));
        assert!(s.due(t0), "first unsolicited RA at start");
        assert!(!s.due(t0 + Duration::from_secs(1)));
        assert_eq!(
            s.next_wakeup(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(15))
        );
        assert!(s.due(t0 + UNSOLICITED_INTERVAL));
        assert!(s.due(t0 + UNSOLICITED_INTERVAL * 2));
        let t = t0 + UNSOLICITED_INTERVAL * 3;
        assert!(!s.due(t), "initial burst is over");
        assert_eq!(s.next_wakeup(t), None);

        // A solicitation is answered at once when the last RA is old enough...
        s.solicitation();
        assert_eq!(s.next_wakeup(t), Some(Duration::ZERO));
        assert!(s.due(t));
        // ...and no sooner than MIN_DELAY_BETWEEN_RAS after the previous one.
        s.solicitation();
        assert!(!s.due(t + Duration::from_secs(1)));
        assert_eq!(
            s.next_wakeup(t + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        assert!(s.due(t + MIN_DELAY_BETWEEN_RAS));
        assert!(!s.due(t + MIN_DELAY_BETWEEN_RAS * 2), "answered once");
    }
}
