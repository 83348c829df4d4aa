//! The CLI's standard output and error. A reader that goes away early (`isboot status | head -1`)
//! ends the output, not the command: the rest of what the command prints is dropped, the
//! work it was doing (an import, a commit) finishes, and its exit status is its own.
//! Any other write error (a full disk behind `> file`) is reported once at the end and
//! makes the exit status 1, so a script never takes a truncated listing for a whole one.
//! Messages on standard error (warnings, progress, the final one-line error) are dropped when
//! it is gone: they never stop the command either.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

/// What happened to standard output so far.
enum Sink {
    Open,
    /// The reader closed its end of the pipe: print nothing more.
    Closed,
    /// Writing failed otherwise: print nothing more, report it at the end.
    Failed(io::Error),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Open);

/// Prints one line (what `println!` would) unless standard output is gone.
pub fn line(args: fmt::Arguments<'_>) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if !matches!(*sink, Sink::Open) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        *sink = failed(e);
    }
}

/// Prints one line on standard error; a write error drops the line (there is nowhere left
/// to say anything) and never stops the command.
pub fn err_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

fn failed(e: io::Error) -> Sink {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Sink::Closed
    } else {
        Sink::Failed(e)
    }
}

/// Flushes standard output; the one-line error if any output was lost for a reason other
/// than its reader going away.
pub fn finish() -> Result<(), String> {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(*sink, Sink::Open) {
        if let Err(e) = io::stdout().lock().flush() {
            *sink = failed(e);
        }
    }
    match &*sink {
        Sink::Failed(e) => Err(format!("cannot write the output: {e}")),
        Sink::Open | Sink::Closed => Ok(()),
    }
}
