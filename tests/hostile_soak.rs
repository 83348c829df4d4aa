//! Long-running checks, run by scripts/soak and scripts/crash-test (ignored by `cargo test`):
//!
//! * `soak`: many clients on one base image served by `isboot serve`, each doing mixed
//!   reads/writes/flushes and reconnecting, while one misbehaving client sends garbage. Every
//!   good command must succeed and every read must match a model; all data is verified at the
//!   end (and again after a restart); the server's RSS and open fds are sampled over time.
//! * `crash_test`: `isboot serve` under write load is killed with SIGKILL at random moments and
//!   restarted; every write acknowledged as durable (FUA, or before an acknowledged
//!   SYNCHRONIZE CACHE) must be there afterwards.
//!
//! Knobs (environment): ISBOOT_SOAK_SECS (600), ISBOOT_SOAK_CLIENTS (64),
//! ISBOOT_CRASH_ROUNDS (100), ISBOOT_CRASH_WRITERS (4), ISBOOT_TEST_SEED.

mod fixture;

use fixture::*;
use isboot::initiator::{Initiator, LoginOptions, write16_cdb};
use isboot::store::fault::TestRng;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BASE_SIZE: usize = 16 << 20;
/// Blocks (512 bytes) each client works on.
const AREA: u64 = 4096;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn seed() -> u64 {
    let s = env_u64(
        "ISBOOT_TEST_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("seed {s} (ISBOOT_TEST_SEED to repeat)");
    s
}

/// The base image's block `lba` (as `state_with_image` writes it).
fn base_block(lba: u64) -> [u8; 512] {
    let mut b = [(lba % 251) as u8; 512];
    b[..8].copy_from_slice(&lba.to_be_bytes());
    b
}

/// Block `lba` as written by client `c` in generation `g` (self-identifying).
fn gen_block(c: u32, lba: u64, g: u64) -> [u8; 512] {
    let mut b = [((c as u64 + lba + g) % 251) as u8; 512];
    b[..8].copy_from_slice(&u64::MAX.to_be_bytes());
    b[8..12].copy_from_slice(&c.to_be_bytes());
    b[12..20].copy_from_slice(&lba.to_be_bytes());
    b[20..28].copy_from_slice(&g.to_be_bytes());
    b
}

/// What a block holds: 0 for the base content, g for a generation written, None if garbage.
fn decode_block(c: u32, lba: u64, b: &[u8]) -> Option<u64> {
    if b == base_block(lba) {
        return Some(0);
    }
    let g = u64::from_be_bytes(b[20..28].try_into().unwrap());
    (g > 0 && b == gen_block(c, lba, g)).then_some(g)
}

fn sync_cache(i: &mut Initiator) -> Result<(), String> {
    let c = i
        .command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .map_err(|e| e.to_string())?;
    if c.status != 0 {
        return Err(format!("SYNCHRONIZE CACHE status {:#x}", c.status));
    }
    Ok(())
}

fn login(addr: SocketAddr, n: u32) -> Result<Initiator, String> {
    let name = format!("c{n}");
    let o = LoginOptions::new(&initiator_of(&name), Some(&format!("{PREFIX}:{name}")));
    let o = if n % 2 == 0 {
        o.ipxe_profile()
    } else {
        o.linux_profile()
    };
    // Each client from its own loopback address, as real clients are: 64 from one address
    // would pass the per-address connection limit ([limits] max_connections_per_address).
    let from = [127, 0, 0, 2 + (n % 250) as u8];
    let s = connect_from(from, addr).map_err(|e| format!("c{n} connect: {e}"))?;
    let mut i = Initiator::from_stream(s).map_err(|e| format!("c{n}: {e}"))?;
    i.login(&o).map_err(|e| format!("c{n} login: {e}"))?;
    i.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    i.clear_unit_attention(0)
        .map_err(|e| format!("c{n}: {e}"))?;
    Ok(i)
}

fn setup(clients: u32, extra_bad: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_with_image(tmp.path(), BASE_SIZE);
    for n in 0..clients {
        add_client(&dir, n, &format!("c{n}"), &[]);
    }
    if extra_bad {
        add_client(&dir, clients, "bad", &[]);
    }
    (tmp, dir)
}

/// Read client n's whole area and compare with `model` (lba -> generation).
fn verify_all(addr: SocketAddr, n: u32, model: &HashMap<u64, u64>) -> Result<u64, String> {
    let mut i = login(addr, n)?;
    let mut checked = 0;
    for start in (0..AREA).step_by(256) {
        let c = i.read16(0, start, 256).map_err(|e| e.to_string())?;
        if c.status != 0 {
            return Err(format!("c{n} read status {:#x}", c.status));
        }
        for (k, b) in c.data.chunks(512).enumerate() {
            let lba = start + k as u64;
            let want = model.get(&lba).copied().unwrap_or(0);
            if decode_block(n, lba, b) != Some(want) {
                return Err(format!(
                    "c{n} block {lba}: want generation {want}, found {:?}",
                    decode_block(n, lba, b)
                ));
            }
            checked += 1;
        }
    }
    let _ = i.logout();
    Ok(checked)
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    sessions: AtomicU64,
    garbage: AtomicU64,
}

/// One good client: sessions of a random number of commands, with a model of its blocks.
fn good_client(
    addr: SocketAddr,
    n: u32,
    mut rng: TestRng,
    stop: Arc<AtomicBool>,
    cnt: Arc<Counters>,
    model: Arc<Mutex<HashMap<u64, u64>>>,
) -> Result<(), String> {
    let mut generation = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut i = login(addr, n)?;
        cnt.sessions.fetch_add(1, Ordering::Relaxed);
        let ops = 20 + rng.below(400);
        for _ in 0..ops {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let lba = rng.below(AREA - 16);
            let len = 1 + rng.below(16);
            match rng.below(10) {
                0..=4 => {
                    let c = i
                        .read16(0, lba, len as u32)
                        .map_err(|e| format!("c{n} read: {e}"))?;
                    if c.status != 0 {
                        return Err(format!("c{n} read status {:#x}", c.status));
                    }
                    let m = model.lock().unwrap();
                    for (k, b) in c.data.chunks(512).enumerate() {
                        let l = lba + k as u64;
                        let want = m.get(&l).copied().unwrap_or(0);
                        if decode_block(n, l, b) != Some(want) {
                            return Err(format!(
                                "c{n} block {l}: want generation {want}, read {:?}",
                                decode_block(n, l, b)
                            ));
                        }
                    }
                    cnt.reads.fetch_add(1, Ordering::Relaxed);
                }
                5..=8 => {
                    generation += 1;
                    let mut data = Vec::with_capacity(len as usize * 512);
                    for k in 0..len {
                        data.extend_from_slice(&gen_block(n, lba + k, generation));
                    }
                    let fua = rng.below(4) == 0;
                    let c = i
                        .command(0, &write16_cdb(lba, len as u32, fua), &data, 0)
                        .map_err(|e| format!("c{n} write: {e}"))?;
                    if c.status != 0 {
                        return Err(format!(
                            "c{n} write status {:#x} sense {:02x?}",
                            c.status, c.sense
                        ));
                    }
                    let mut m = model.lock().unwrap();
                    for k in 0..len {
                        m.insert(lba + k, generation);
                    }
                    cnt.writes.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    sync_cache(&mut i).map_err(|e| format!("c{n}: {e}"))?;
                    cnt.flushes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Half the sessions log out cleanly, the rest just drop the connection.
        if rng.below(2) == 0 {
            i.logout().map_err(|e| format!("c{n} logout: {e}"))?;
        }
    }
    Ok(())
}

/// The misbehaving client: random bytes, lying headers, forbidden targets, garbage after login.
fn bad_client(
    addr: SocketAddr,
    bad: u32,
    mut rng: TestRng,
    stop: Arc<AtomicBool>,
    cnt: Arc<Counters>,
) {
    while !stop.load(Ordering::Relaxed) {
        let kind = rng.below(4);
        let junk: Vec<u8> = (0..rng.below(8192)).map(|_| rng.next_u64() as u8).collect();
        match kind {
            0 => {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&junk);
                }
            }
            1 => {
                // A login header claiming far more data than follows, then nothing.
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let mut h = [0u8; 48];
                    h[0] = 0x43;
                    h[1] = 0x87;
                    h[5..8].copy_from_slice(&[0x00, 0x80, 0x00]);
                    let _ = s.write_all(&h);
                    let _ = s.write_all(&junk[..junk.len().min(100)]);
                }
            }
            2 => {
                // Another client's target.
                let o = LoginOptions::new(&initiator_of("bad"), Some(&format!("{PREFIX}:c0")));
                assert!(
                    Initiator::connect(addr, &o).is_err(),
                    "the bad client reached c0's target"
                );
            }
            _ => {
                // Its own target, then garbage in the full feature phase.
                let o = LoginOptions::new(&initiator_of("bad"), Some(&format!("{PREFIX}:bad")));
                if let Ok(mut i) = Initiator::connect(addr, &o) {
                    let _ = i.send_bytes(&junk);
                }
            }
        }
        let _ = bad;
        cnt.garbage.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(rng.below(50)));
    }
}

#[test]
#[ignore = "long; run by scripts/soak"]
fn soak() {
    let secs = env_u64("ISBOOT_SOAK_SECS", 600);
    let clients = env_u64("ISBOOT_SOAK_CLIENTS", 64) as u32;
    let mut rng = TestRng(seed());
    let (_tmp, dir) = setup(clients, true);
    let mut srv = Serve::start(&dir);
    let addr = srv.addr;
    let pid = srv.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let cnt = Arc::new(Counters::default());
    let models: Vec<_> = (0..clients)
        .map(|_| Arc::new(Mutex::new(HashMap::new())))
        .collect();
    let mut workers = Vec::new();
    for n in 0..clients {
        let (r, s, c, m) = (
            TestRng(rng.next_u64()),
            stop.clone(),
            cnt.clone(),
            models[n as usize].clone(),
        );
        workers.push(std::thread::spawn(move || good_client(addr, n, r, s, c, m)));
    }
    let bad = {
        let (r, s, c) = (TestRng(rng.next_u64()), stop.clone(), cnt.clone());
        std::thread::spawn(move || bad_client(addr, clients, r, s, c))
    };
    let start = Instant::now();
    let interval = Duration::from_secs((secs / 12).clamp(5, 60));
    let mut samples = Vec::new();
    let sample = |t: Duration| {
        (
            t.as_secs(),
            rss_kib(pid),
            open_fds(pid),
            cnt.reads.load(Ordering::Relaxed),
            cnt.writes.load(Ordering::Relaxed),
            cnt.flushes.load(Ordering::Relaxed),
            cnt.sessions.load(Ordering::Relaxed),
            cnt.garbage.load(Ordering::Relaxed),
        )
    };
    samples.push(sample(Duration::ZERO));
    let mut failed = None;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(
            interval
                .min(Duration::from_secs(secs).saturating_sub(start.elapsed()))
                .max(Duration::from_millis(100)),
        );
        samples.push(sample(start.elapsed()));
        if let Some(w) = workers.iter().position(|w| w.is_finished()) {
            failed = Some(w);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for (n, w) in workers.into_iter().enumerate() {
        if let Err(e) = w.join().unwrap() {
            errors.push(format!("client {n}: {e}"));
        }
    }
    bad.join().unwrap();
    samples.push(sample(start.elapsed()));
    eprintln!("\n  time_s   rss_kib  fds    reads   writes  flushes sessions  garbage");
    for s in &samples {
        eprintln!(
            "{:>8} {:>9} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8}",
            s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7
        );
    }
    assert!(
        errors.is_empty() && failed.is_none(),
        "good clients saw errors: {errors:#?}"
    );
    // Every client's data, now and after a restart.
    let mut checked = 0;
    for n in 0..clients {
        checked += verify_all(addr, n, &models[n as usize].lock().unwrap()).unwrap();
    }
    srv.stop();
    let srv2 = Serve::start(&dir);
    for n in 0..clients {
        verify_all(srv2.addr, n, &models[n as usize].lock().unwrap()).unwrap();
    }
    eprintln!(
        "soak: {clients} clients, {secs} s, {checked} blocks verified live and after a restart"
    );
    let max_rss = samples.iter().map(|s| s.1).max().unwrap();
    let max_fds = samples.iter().map(|s| s.2).max().unwrap();
    eprintln!("soak: max RSS {max_rss} KiB, max fds {max_fds}");
}

/// A crash-test writer's knowledge of its blocks.
#[derive(Default)]
struct Durable {
    /// Generation each block must hold at least (0: the base).
    floor: HashMap<u64, u64>,
    /// Every generation ever sent to each block (any of them may have landed).
    sent: HashMap<u64, HashSet<u64>>,
    generation: u64,
    durable_writes: u64,
}

fn writer(addr: SocketAddr, n: u32, mut rng: TestRng, st: Arc<Mutex<Durable>>) {
    let Ok(mut i) = login(addr, n) else { return };
    // Acknowledged but not yet flushed: (lba, len, generation).
    let mut unflushed: Vec<(u64, u64, u64)> = Vec::new();
    loop {
        let lba = rng.below(AREA - 8);
        let len = 1 + rng.below(8);
        let fua = rng.below(3) == 0;
        let generation = {
            let mut s = st.lock().unwrap();
            s.generation += 1;
            let g = s.generation;
            for k in 0..len {
                s.sent.entry(lba + k).or_default().insert(g);
            }
            g
        };
        let mut data = Vec::with_capacity(len as usize * 512);
        for k in 0..len {
            data.extend_from_slice(&gen_block(n, lba + k, generation));
        }
        match i.command(0, &write16_cdb(lba, len as u32, fua), &data, 0) {
            Ok(c) if c.status == 0 => {}
            _ => return,
        }
        if fua {
            let mut s = st.lock().unwrap();
            for k in 0..len {
                s.floor.insert(lba + k, generation);
            }
            s.durable_writes += 1;
        } else {
            unflushed.push((lba, len, generation));
        }
        if rng.below(8) == 0 {
            if sync_cache(&mut i).is_err() {
                return;
            }
            let mut s = st.lock().unwrap();
            for (l, n, g) in unflushed.drain(..) {
                for k in 0..n {
                    let e = s.floor.entry(l + k).or_default();
                    *e = (*e).max(g);
                }
                s.durable_writes += 1;
            }
        }
    }
}

#[test]
#[ignore = "long; run by scripts/crash-test"]
fn crash_test() {
    let rounds = env_u64("ISBOOT_CRASH_ROUNDS", 100);
    let writers = env_u64("ISBOOT_CRASH_WRITERS", 4) as u32;
    let mut rng = TestRng(seed());
    let (_tmp, dir) = setup(writers, false);
    let states: Vec<_> = (0..writers)
        .map(|_| Arc::new(Mutex::new(Durable::default())))
        .collect();
    let mut verified_blocks = 0u64;
    for round in 0..rounds {
        let mut srv = Serve::start_with(&dir, "warn", &[]);
        // Everything acknowledged as durable before the previous kill is there.
        for (n, st) in states.iter().enumerate() {
            let s = st.lock().unwrap();
            let mut i = login(srv.addr, n as u32).unwrap();
            for start in (0..AREA).step_by(256) {
                let c = i.read16(0, start, 256).unwrap();
                assert_eq!(c.status, 0);
                for (k, b) in c.data.chunks(512).enumerate() {
                    let lba = start + k as u64;
                    let floor = s.floor.get(&lba).copied().unwrap_or(0);
                    let got = decode_block(n as u32, lba, b);
                    let ok = match got {
                        Some(0) => floor == 0,
                        Some(g) => g >= floor && s.sent.get(&lba).is_some_and(|v| v.contains(&g)),
                        None => false,
                    };
                    assert!(
                        ok,
                        "round {round} client c{n} block {lba}: durable generation {floor}, found {got:?}"
                    );
                    verified_blocks += 1;
                }
            }
        }
        let handles: Vec<_> = (0..writers)
            .map(|n| {
                let (r, st) = (TestRng(rng.next_u64()), states[n as usize].clone());
                let addr = srv.addr;
                std::thread::spawn(move || writer(addr, n, r, st))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + rng.below(1500)));
        srv.kill9();
        for h in handles {
            h.join().unwrap();
        }
        let durable: u64 = states
            .iter()
            .map(|s| s.lock().unwrap().durable_writes)
            .sum();
        eprintln!(
            "crash-test round {}: killed; {durable} writes acknowledged durable so far",
            round + 1
        );
    }
    // Final check after the last kill.
    let srv = Serve::start_with(&dir, "warn", &[]);
    for (n, st) in states.iter().enumerate() {
        let s = st.lock().unwrap();
        let floor: HashMap<u64, u64> = s.floor.clone();
        let mut i = login(srv.addr, n as u32).unwrap();
        for start in (0..AREA).step_by(256) {
            let c = i.read16(0, start, 256).unwrap();
            for (k, b) in c.data.chunks(512).enumerate() {
                let lba = start + k as u64;
                let f = floor.get(&lba).copied().unwrap_or(0);
                let got = decode_block(n as u32, lba, b);
                assert!(
                    matches!(got, Some(g) if g >= f && (g == 0 || s.sent[&lba].contains(&g))),
                    "final: c{n} block {lba}: durable {f}, found {got:?}"
                );
                verified_blocks += 1;
            }
        }
    }
    let durable: u64 = states
        .iter()
        .map(|s| s.lock().unwrap().durable_writes)
        .sum();
    eprintln!(
        "crash-test: {rounds} kill -9 rounds, {durable} durable writes acknowledged, all present; {verified_blocks} block checks"
    );
    assert!(durable > 0, "no write was acknowledged durable");
}
