//! Per-MAC rate limit, so one client (or a forged flood of one chaddr) cannot keep the server
//! busy or fill the log. Time is passed in.

use std::collections::HashMap;

use super::MacAddr;

/// Requests accepted from one MAC per window. A PXE ROM, then iPXE, then Linux make about a
/// dozen requests per boot including retries.
pub const MAX_REQUESTS_PER_WINDOW: u32 = 30;
/// Window length, seconds.
pub const WINDOW_SECS: u64 = 10;
/// MACs tracked at once; beyond this the table is cleared of stale windows (or entirely).
pub const MAX_TRACKED_MACS: usize = 4096;

#[derive(Debug, Default)]
pub struct FloodGuard {
    windows: HashMap<MacAddr, (u64, u32, bool)>, // (window start, count, warned)
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Over the limit; log (only the first time in a window).
    DropAndWarn,
    DropQuietly,
}

impl FloodGuard {
    pub fn check(&mut self, mac: MacAddr, now: u64) -> Verdict {
        if self.windows.len() >= MAX_TRACKED_MACS && !self.windows.contains_key(&mac) {
            self.windows
                .retain(|_, (start, _, _)| now < *start + WINDOW_SECS);
            if self.windows.len() >= MAX_TRACKED_MACS {
                self.windows.clear();
            }
        }
        let e = self.windows.entry(mac).or_insert((now, 0, false));
        if now >= e.0 + WINDOW_SECS || now < e.0 {
            *e = (now, 0, false);
        }
        e.1 += 1;
        if e.1 <= MAX_REQUESTS_PER_WINDOW {
            Verdict::Accept
        } else if !e.2 {
            e.2 = true;
            Verdict::DropAndWarn
        } else {
            Verdict::DropQuietly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_from_one_mac_is_cut_then_forgiven() {
        let mut g = FloodGuard::default();
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        for _ in 0..MAX_REQUESTS_PER_WINDOW {
            assert_eq!(g.check(m, 100), Verdict::Accept);
        }
        assert_eq!(g.check(m, 101), Verdict::DropAndWarn);
        assert_eq!(g.check(m, 102), Verdict::DropQuietly);
        assert_eq!(
            g.check(MacAddr([2, 0, 0, 0, 0, 2]), 102),
            Verdict::Accept,
            "other MACs unaffected"
        );
        assert_eq!(g.check(m, 100 + WINDOW_SECS), Verdict::Accept);
    }

    #[test]
    fn table_is_bounded() {
        let mut g = FloodGuard::default();
        for i in 0..(MAX_TRACKED_MACS as u32 + 10) {
            let b = i.to_be_bytes();
            g.check(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), 5);
        }
        assert!(g.windows.len() <= MAX_TRACKED_MACS);
    }
}
