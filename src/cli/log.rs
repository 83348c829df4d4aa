//! Log output of `isboot serve` and `isboot export`: to a terminal, timestamped lines; under
//! systemd (stderr is the journal stream named in `JOURNAL_STREAM`), no timestamps of our own
//! (the journal has them) and each line starts with its syslog priority (`<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug/trace), so `journalctl -p warning` filters by level.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// The syslog priority (RFC 5424 severity) journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Is `journal_stream` (the value of `JOURNAL_STREAM`, "DEVICE:INODE") the file stderr is
/// connected to (`stderr`: its device and inode)? Only then do the lines go to the journal: a
/// child whose stderr was redirected inherits the variable but not the stream.
pub fn is_journal_stream(journal_stream: &str, stderr: (u64, u64)) -> bool {
    let mut parts = journal_stream.trim().split(':');
    let dev = parts.next().and_then(|d| d.parse::<u64>().ok());
    let ino = parts.next().and_then(|i| i.parse::<u64>().ok());
    parts.next().is_none() && dev == Some(stderr.0) && ino == Some(stderr.1)
}

/// Whether this process's stderr is systemd's journal stream.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    is_journal_stream(&stream.to_string_lossy(), (meta.dev(), meta.ino()))
}

/// `<N>` and then the usual line without a timestamp (target and fields kept).
pub struct JournalFormat {
    inner: format::Format<format::Full, ()>,
}

impl JournalFormat {
    pub fn new() -> JournalFormat {
        JournalFormat {
            // The level is written unpadded by format_event: tracing pads it to five columns
            // (" INFO"), which left every journal line starting with a space.
            inner: format::format()
                .without_time()
                .with_level(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = event.metadata().level();
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&journal_lines(
            syslog_priority(level),
            level.as_str(),
            &line,
        ))
    }
}

/// `text` (one formatted event, maybe of several lines: an error with its source's lines, a
/// peer's file name with a newline in it) as journal lines that each start with priority
/// `prio`: journald makes each line an entry of its own and reads the priority from its start,
/// so a line without one would be logged at the stream's default (info), and a peer's text
/// could otherwise start a line with a priority of its choosing (`<3>` after a newline in a
/// TFTP file name). The first line also says the level.
pub fn journal_lines(prio: u8, level: &str, text: &str) -> String {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut out = format!("<{prio}>{level} ");
    for (i, l) in body.split('\n').enumerate() {
        if i > 0 {
            out.push_str(&format!("\n<{prio}>"));
        }
        out.push_str(l.strip_suffix('\r').unwrap_or(l));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_syslog_severities() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
        assert_eq!(syslog_priority(&Level::TRACE), 7);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(is_journal_stream("8:12345", (8, 12345)));
        assert!(is_journal_stream("8:12345\n", (8, 12345)));
        assert!(!is_journal_stream("8:12345", (8, 12346)));
        assert!(!is_journal_stream("9:12345", (8, 12345)));
        assert!(!is_journal_stream("8", (8, 12345)));
        assert!(!is_journal_stream("8:12345:1", (8, 12345)));
        assert!(!is_journal_stream("", (0, 0)));
        assert!(!is_journal_stream("a:b", (8, 12345)));
    }

    #[test]
    fn a_journal_line_starts_with_its_priority_and_has_no_timestamp() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JournalFormat::new())
            .with_writer(move || out.clone())
            .with_max_level(Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(client = "pc1", "disk nearly full");
            tracing::info!("serving");
            tracing::error!("gone");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(buf.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<4>WARN isboot"), "{}", lines[0]);
        assert!(
            lines[0].contains("disk nearly full client=\"pc1\""),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("<6>INFO isboot"), "{}", lines[1]);
        assert!(lines[2].starts_with("<3>ERROR isboot"), "{}", lines[2]);
        assert!(lines[3].starts_with("<7>DEBUG isboot"), "{}", lines[3]);
        assert!(!text.contains("202"), "no timestamp: {text}");
    }

    /// Every line of a multi-line message carries the priority, also when the message's text
    /// (a peer's file name) tries to start a line with a priority of its own.
    #[test]
    fn every_line_of_a_multi_line_message_has_the_priority() {
        assert_eq!(
            journal_lines(4, "WARN", "parse error at line 2\n  |\n2 | x = [\n"),
            "<4>WARN parse error at line 2\n<4>  |\n<4>2 | x = [\n"
        );
        assert_eq!(
            journal_lines(6, "INFO", "TFTP request refused file=a\n<3>forged\r\n"),
            "<6>INFO TFTP request refused file=a\n<6><3>forged\n"
        );
        assert_eq!(journal_lines(3, "ERROR", "gone\n"), "<3>ERROR gone\n");
        assert_eq!(journal_lines(7, "DEBUG", ""), "<7>DEBUG \n");
    }
}
