//! `isboot-replay`: replay a recorded READ trace (`isboot serve --read-trace`) from N
//! concurrent iSCSI sessions, one per target, and report how long all of them took.
//!
//! Each session logs in (and clears its unit attentions) first; then all start together and
//! issue the trace's reads in trace order, as fast as the target answers (the recorded think
//! time between reads, e.g. the kernel decompressing, is left out: this measures the storage
//! path only). A read is sent once fewer than D reads are outstanding, where D is the depth
//! the trace recorded for that read (`--qd trace`, the default: the boot's own concurrency,
//! QD1 for iPXE/GRUB and up to open-iscsi's queue for Linux) or a fixed `--qd N`; D is capped
//! by `--max-qd`. The trace's sessions (iPXE's, then Linux's) are replayed back to back in
//! one session. Nothing is verified but success (GOOD status, the full length); with
//! `--checksum` every session also sums a CRC32C of each read's data and the sums must agree.
//!
//! Prints one line per session and a final `RESULT` line; exits 1 on any failed read.

use bytes::Bytes;
use clap::Parser;
use isboot::initiator::{Initiator, LoginOptions, read16_cdb};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "isboot-replay",
    about = "Replay a READ trace from one iSCSI session per target, all at once"
)]
struct Args {
    /// Target portal (ADDR:PORT).
    #[arg(long, default_value = "127.0.0.1:3260")]
    portal: String,
    /// Target IQN; one session per target (repeatable).
    #[arg(long = "target", value_name = "IQN", required = true)]
    targets: Vec<String>,
    /// The trace (CSV written by `isboot serve --read-trace`).
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// Only replay the trace's lines of this target (default: every line).
    #[arg(long, value_name = "IQN")]
    trace_target: Option<String>,
    /// LUN to read (isboot serves LUN 0, tgt usually LUN 1).
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// Queue depth: `trace` (the depth recorded with each read) or a number.
    #[arg(long, default_value = "trace")]
    qd: String,
    /// Upper bound on the queue depth.
    #[arg(long, default_value_t = 32)]
    max_qd: usize,
    /// Initiator name of session n (`{n}` = 1, 2, ...).
    #[arg(long, default_value = "iqn.2026-11.org.isboot.replay:s{n}")]
    initiator: String,
    /// Sum a CRC32C of every read's data per session; the sums must agree.
    #[arg(long)]
    checksum: bool,
    /// Log in with CHAP: the credentials of target `<prefix>:NAME` are read from
    /// DIR/NAME.toml (an isboot state directory's `secrets/`, files 0600).
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// Print only the RESULT line.
    #[arg(long, short)]
    quiet: bool,
}

/// The CHAP user and secret for `target` from `dir` (file named after the IQN's last part).
fn chap_for(dir: &std::path::Path, target: &str) -> Result<(String, Vec<u8>), String> {
    let name = target.rsplit(':').next().unwrap_or(target);
    let path = dir.join(format!("{name}.toml"));
    match isboot::config::secret::read_secret_file(&path, true) {
        Ok(Some(c)) => Ok((c.user.clone(), c.secret.expose().as_bytes().to_vec())),
        Ok(None) => Err(format!("{}: no CHAP credentials", path.display())),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Clone, Copy, Debug)]
struct Read {
    lba: u64,
    blocks: u32,
    depth: usize,
}

fn load(path: &PathBuf, only: Option<&str>) -> Result<Vec<Read>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut cols: Option<HashMap<String, usize>> = None;
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let Some(c) = &cols else {
            cols = Some(
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.to_string(), i))
                    .collect(),
            );
            for need in ["target", "lba", "blocks"] {
                if !cols.as_ref().is_some_and(|c| c.contains_key(need)) {
                    return Err(format!("{}: header has no {need} column", path.display()));
                }
            }
            continue;
        };
        let get = |k: &str| c.get(k).and_then(|&i| fields.get(i)).copied();
        let bad = || format!("{}:{}: bad line {line:?}", path.display(), n + 1);
        if let Some(t) = only
            && get("target") != Some(t)
        {
            continue;
        }
        let lba = get("lba").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let blocks = get("blocks").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let depth = match get("depth") {
            Some(v) => v.parse().map_err(|_| bad())?,
            None => 1,
        };
        if blocks == 0 {
            continue;
        }
        out.push(Read { lba, blocks, depth });
    }
    Ok(out)
}

struct Done {
    reads: usize,
    bytes: u64,
    secs: f64,
    sum: u64,
}

/// The LUN field of a SCSI Command PDU (SAM-5: peripheral device addressing below 256, flat
/// space below 16384).
fn lun_field(lun: u64) -> u64 {
    match lun {
        0..256 => lun << 48,
        256..16384 => (0x4000 | lun) << 48,
        _ => lun,
    }
}

fn session(
    addr: SocketAddr,
    args: &Args,
    n: usize,
    target: &str,
) -> Result<Initiator, isboot::initiator::InitiatorError> {
    let name = args.initiator.replace("{n}", &n.to_string());
    let mut o = LoginOptions::new(&name, Some(target)).linux_profile();
    if let Some(dir) = &args.secrets_dir {
        o.chap = Some(chap_for(dir, target).map_err(std::io::Error::other)?);
    }
    o.isid[4] = (n >> 8) as u8;
    o.isid[5] = n as u8;
    let mut i = Initiator::connect(addr, &o)?;
    i.set_read_timeout(Some(Duration::from_secs(120)))?;
    i.clear_unit_attention(lun_field(args.lun))?;
    i.keep_data = args.checksum;
    Ok(i)
}

fn replay(
    i: &mut Initiator,
    trace: &[Read],
    lun: u64,
    fixed_qd: Option<usize>,
    max_qd: usize,
) -> Result<(u64, u64), String> {
    let mut inflight: HashMap<u32, (u64, u32)> = HashMap::new();
    let mut bytes = 0u64;
    let mut sum = 0u64;
    let mut next = 0;
    while next < trace.len() || !inflight.is_empty() {
        if next < trace.len() {
            let r = trace[next];
            let qd = fixed_qd.unwrap_or(r.depth).clamp(1, max_qd.max(1));
            if inflight.len() < qd {
                let len = r.blocks * 512;
                let itt = i
                    .submit(lun, &read16_cdb(r.lba, r.blocks), Bytes::new(), len)
                    .map_err(|e| format!("read {next} (LBA {}): {e}", r.lba))?;
                inflight.insert(itt, (r.lba, len));
                next += 1;
                continue;
            }
        }
        let c = i.wait_any().map_err(|e| e.to_string())?;
        let (lba, len) = inflight
            .remove(&c.itt)
            .ok_or_else(|| format!("completion for unknown ITT {}", c.itt))?;
        if c.status != 0 || c.residual != 0 {
            return Err(format!(
                "READ at LBA {lba} ({len} bytes): status {:#04x} residual {} sense {:02x?}",
                c.status,
                c.residual,
                &c.sense[..c.sense.len().min(18)]
            ));
        }
        bytes += len as u64;
        if i.keep_data {
            if c.data.len() != len as usize {
                return Err(format!(
                    "READ at LBA {lba}: {} bytes, expected {len}",
                    c.data.len()
                ));
            }
            let crc = crc32c::crc32c_append(crc32c::crc32c(&lba.to_le_bytes()), &c.data);
            sum = sum.wrapping_add(crc as u64);
        }
    }
    Ok((bytes, sum))
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    let fixed_qd = match args.qd.as_str() {
        "trace" => None,
        s => match s.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("isboot-replay: --qd must be `trace` or a positive number");
                return ExitCode::from(2);
            }
        },
    };
    let addr = match args
        .portal
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => {
            eprintln!("isboot-replay: bad --portal {}", args.portal);
            return ExitCode::from(2);
        }
    };
    let trace = match load(&args.trace, args.trace_target.as_deref()) {
        Ok(t) if !t.is_empty() => Arc::new(t),
        Ok(_) => {
            eprintln!("isboot-replay: no reads in {}", args.trace.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("isboot-replay: {e}");
            return ExitCode::from(2);
        }
    };
    let n = args.targets.len();
    let trace_bytes: u64 = trace.iter().map(|r| r.blocks as u64 * 512).sum();
    if !args.quiet {
        let max_depth = trace.iter().map(|r| r.depth).max().unwrap_or(1);
        println!(
            "trace: {} reads, {:.1} MiB, recorded depth up to {max_depth}; queue depth {}, max {}; {n} session(s)",
            trace.len(),
            mib(trace_bytes),
            fixed_qd.map_or("as recorded".to_string(), |q| q.to_string()),
            args.max_qd
        );
    }
    // Everyone logs in, then waits at the barrier; the clock starts when all are ready.
    let ready = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::new();
    for (k, target) in args.targets.iter().enumerate() {
        let (args, trace, ready, target) =
            (args.clone(), trace.clone(), ready.clone(), target.clone());
        handles.push(std::thread::spawn(move || -> Result<Done, String> {
            let login = session(addr, &args, k + 1, &target);
            ready.wait();
            let mut i = login.map_err(|e| format!("login: {e}"))?;
            let t0 = Instant::now();
            let (bytes, sum) = replay(&mut i, &trace, lun_field(args.lun), fixed_qd, args.max_qd)?;
            let secs = t0.elapsed().as_secs_f64();
            let _ = i.logout();
            Ok(Done {
                reads: trace.len(),
                bytes,
                secs,
                sum,
            })
        }));
    }
    ready.wait();
    let t0 = Instant::now();
    let mut errors = 0;
    let mut total = 0u64;
    let mut reads = 0usize;
    let mut sums = Vec::new();
    let mut slowest = 0f64;
    for (k, h) in handles.into_iter().enumerate() {
        let target = &args.targets[k];
        match h.join() {
            Ok(Ok(d)) => {
                total += d.bytes;
                reads += d.reads;
                slowest = slowest.max(d.secs);
                if args.checksum {
                    sums.push(d.sum);
                }
                if !args.quiet {
                    println!(
                        "session {:>3} {target}: {} reads, {:.1} MiB in {:.3} s, {:.1} MiB/s{}",
                        k + 1,
                        d.reads,
                        mib(d.bytes),
                        d.secs,
                        mib(d.bytes) / d.secs.max(1e-9),
                        if args.checksum {
                            format!(", sum {:016x}", d.sum)
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("isboot-replay: session {} {target}: {e}", k + 1);
            }
            Err(_) => {
                errors += 1;
                eprintln!("isboot-replay: session {} {target}: panicked", k + 1);
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let mismatch = args.checksum && sums.windows(2).any(|w| w[0] != w[1]);
    if mismatch {
        errors += 1;
        eprintln!("isboot-replay: the sessions read different data (checksums differ)");
    }
    println!(
        "RESULT sessions={n} reads={reads} bytes={total} mib={:.1} seconds={wall:.3} slowest_session={slowest:.3} mibps={:.1} errors={errors}{}",
        mib(total),
        mib(total) / wall.max(1e-9),
        match sums.first() {
            Some(s) if !mismatch => format!(" sum={s:016x}"),
            _ => String::new(),
        }
    );
    if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
