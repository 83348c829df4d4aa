//! Rate limit for log lines caused by peers, so a host that repeats a refused request (or forges
//! a new source for each one) cannot fill the log. Sans-IO: time is passed in, in seconds.
//!
//! Each key (a peer address, a MAC) may log [`LogLimits::per_key`] lines per window, and all
//! keys together [`LogLimits::total`] lines per window. Lines over either limit are counted, and
//! the key's next line that is let through says how many of its lines were left out.

use std::collections::HashMap;
use std::hash::Hash;

/// How many lines are let through per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Window length, seconds.
    pub window_secs: u64,
    /// Lines one key may log per window.
    pub per_key: u32,
    /// Lines all keys together may log per window.
    pub total: u32,
    /// Keys tracked at once; beyond this, keys whose window has passed are forgotten (and, if
    /// that is not enough, all of them: their suppressed counts are then lost, not their lines'
    /// limit, since the total limit still holds).
    pub max_keys: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            window_secs: 60,
            per_key: 10,
            total: 200,
            max_keys: 4096,
        }
    }
}

/// What to do with one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it. `suppressed` lines of this key were left out since its last logged line.
    Log { suppressed: u64 },
    /// Leave it out (it is counted).
    Suppress,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    lines: u32,
}

impl Window {
    /// Start a new window if `now` is past this one (or time went backwards).
    fn roll(&mut self, now: u64, len: u64) {
        if now < self.start || now >= self.start.saturating_add(len) {
            *self = Window {
                start: now,
                lines: 0,
            };
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct KeyState {
    window: Window,
    suppressed: u64,
}

/// The limiter: one per kind of peer-caused line (TFTP refusals, DHCP notes, ...).
#[derive(Debug)]
pub struct LogLimiter<K> {
    limits: LogLimits,
    keys: HashMap<K, KeyState>,
    total: Window,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    pub fn new(limits: LogLimits) -> Self {
        LogLimiter {
            limits,
            keys: HashMap::new(),
            total: Window { start: 0, lines: 0 },
        }
    }

    /// May a line caused by `key` be logged at `now` (seconds, any monotonic origin)?
    pub fn check(&mut self, key: &K, now: u64) -> LogVerdict {
        let len = self.limits.window_secs.max(1);
        if !self.keys.contains_key(key) && self.keys.len() >= self.limits.max_keys {
            self.keys
                .retain(|_, s| now >= s.window.start && now < s.window.start.saturating_add(len));
            if self.keys.len() >= self.limits.max_keys {
                self.keys.clear();
            }
        }
        self.total.roll(now, len);
        let state = self.keys.entry(key.clone()).or_insert(KeyState {
            window: Window {
                start: now,
                lines: 0,
            },
            suppressed: 0,
        });
        state.window.roll(now, len);
        if state.window.lines >= self.limits.per_key || self.total.lines >= self.limits.total {
            state.suppressed = state.suppressed.saturating_add(1);
            return LogVerdict::Suppress;
        }
        state.window.lines += 1;
        self.total.lines += 1;
        let suppressed = std::mem::take(&mut state.suppressed);
        LogVerdict::Log { suppressed }
    }

    /// [`check`](Self::check) as a bool, logging "N lines were left out" at info first when
    /// the key had lines suppressed. `what` names the key in that line ("peer", "mac").
    pub fn allow(&mut self, key: &K, now: u64, what: &str) -> bool
    where
        K: std::fmt::Display,
    {
        match self.check(key, now) {
            LogVerdict::Suppress => false,
            LogVerdict::Log { suppressed: 0 } => true,
            LogVerdict::Log { suppressed } => {
                tracing::info!(
                    "{what} {key}: {suppressed} log lines left out (more than {} per {} s)",
                    self.limits.per_key,
                    self.limits.window_secs
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LogLimits {
        LogLimits {
            window_secs: 10,
            per_key: 3,
            total: 5,
            max_keys: 4,
        }
    }

    #[test]
    fn one_key_is_cut_then_told_how_many_were_left_out() {
        let mut l = LogLimiter::new(limits());
        for _ in 0..3 {
            assert_eq!(l.check(&1, 100), LogVerdict::Log { suppressed: 0 });
        }
        assert_eq!(l.check(&1, 101), LogVerdict::Suppress);
        assert_eq!(l.check(&1, 109), LogVerdict::Suppress);
        assert_eq!(
            l.check(&2, 109),
            LogVerdict::Log { suppressed: 0 },
            "others unaffected"
        );
        assert_eq!(l.check(&1, 110), LogVerdict::Log { suppressed: 2 });
        assert_eq!(l.check(&1, 110), LogVerdict::Log { suppressed: 0 });
    }

    #[test]
    fn many_keys_share_the_total() {
        let mut l = LogLimiter::new(limits());
        let logged = (0..4)
            .flat_map(|k| [k, k])
            .filter(|k| l.check(k, 50) != LogVerdict::Suppress)
            .count();
        assert_eq!(logged, 5, "total limit");
        assert_eq!(l.check(&3, 60), LogVerdict::Log { suppressed: 2 });
    }

    #[test]
    fn key_table_is_bounded_and_time_going_back_resets() {
        let mut l = LogLimiter::new(limits());
        for k in 0..1000u32 {
            l.check(&k, u64::from(k) * 20);
            assert!(l.keys.len() <= 4);
        }
        let mut l = LogLimiter::new(limits());
        for _ in 0..4 {
            l.check(&7, 500);
        }
        assert_eq!(l.check(&7, 400), LogVerdict::Log { suppressed: 1 });
    }
}
