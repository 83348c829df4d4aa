//! Progress display on stderr: a redrawn line on a terminal, a line per 10% otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    tty: bool,
    last: Option<Instant>,
    last_tenth: u64,
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Progress {
        Progress {
            label: label.into(),
            tty: std::io::stderr().is_terminal(),
            last: None,
            last_tenth: u64::MAX,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        let mut e = std::io::stderr().lock();
        if self.tty {
            if self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
                && done < total
            {
                return;
            }
            self.last = Some(Instant::now());
            let _ = write!(
                e,
                "\r{}: {pct:3}% ({} of {})\x1b[K",
                self.label,
                human(done),
                human(total)
            );
            if done >= total {
                let _ = writeln!(e);
            }
        } else {
            let tenth = pct / 10;
            if tenth != self.last_tenth {
                self.last_tenth = tenth;
                let _ = writeln!(
                    e,
                    "{}: {pct}% ({} of {})",
                    self.label,
                    human(done),
                    human(total)
                );
            }
        }
        let _ = e.flush();
    }
}
