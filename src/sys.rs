//! Every system call isboot makes without a safe wrapper from std, tokio or socket2, in one
//! place: the rest of the crate is `#![deny(unsafe_code)]` (Cargo.toml `[lints]`). Each
//! function is a safe interface whose `unsafe` block says why it holds.
//!
//! Other modules allowed `unsafe`: a storage backend's FFI module (its own file, behind its
//! cargo feature). New system calls (a file lease with `fcntl(F_SETLEASE)`, ...) belong here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crate::mac::MacAddr;

/// `-1` → the last OS error; anything else → Ok.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---- files ------------------------------------------------------------------------------------

/// Take an exclusive `flock(2)` on `file`, waiting for it.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor `file` owns for the duration of the call.
    check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) })
}

/// Try to take an exclusive `flock(2)` on `file` without waiting: `Ok(false)` when someone
/// else holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns for the duration of the call.
    match check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deallocate `[offset, offset + len)` of `file` without changing its size (`fallocate(2)`
/// with `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`); reads of the range return zeros.
pub fn punch_hole(file: &impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor the caller owns; offsets are plain integers.
    check(unsafe { libc::fallocate(file.as_fd().as_raw_fd(), mode, off, l) })
}

/// Take a read lease on `file` (`fcntl(F_SETLEASE, F_RDLCK)`; `file` open read-only, owned
/// by this process's user or CAP_LEASE): from now on a process that opens it for writing or
/// truncates it waits, up to the kernel's lease-break-time, until the lease is let go, and
/// this process gets SIGIO (whose default action ends it: handle SIGIO first).
pub fn take_read_lease(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor `file` owns for the duration of the call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) })
}

/// Is the lease held on `file` being broken (or gone)? (`fcntl(F_GETLEASE)` says F_UNLCK.)
pub fn lease_breaking(file: &File) -> io::Result<bool> {
    // SAFETY: fcntl on a descriptor `file` owns for the duration of the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == libc::F_UNLCK)
}

/// Let go of the lease on `file`, so whoever waits for it goes on.
pub fn release_lease(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor `file` owns for the duration of the call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) })
}

/// A read-only shared mapping of `len` bytes of `file` from `offset` (a multiple of the page
/// size).
///
/// The caller promises what makes a shared file mapping sound in Rust: nobody truncates the
/// file while it is mapped (pages past the end would fault with SIGBUS), and the bytes are
/// never assumed to stay unchanged while mapped unless the file is immutable. isboot's
/// callers keep that: base images are never written or truncated once published; an overlay
/// writes through `pwrite` (visible through the unified page cache, as the read path expects)
/// and is replaced by renaming a new file over it, never truncated while live.
pub fn map_readonly(file: &File, offset: u64, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: see the contract above; memmap2 checks offset and length against the file.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)
    }
}

/// A read-only shared mapping of the whole of `file` (same contract as [`map_readonly`]).
pub fn map_whole_readonly(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: see map_readonly's contract.
    unsafe { memmap2::Mmap::map(file) }
}

/// `read(2)` from `fd` into the spare capacity of `buf` (no zero-filling first), growing its
/// length by what was read. Returns that count (0 at end of stream).
pub fn read_into_spare(fd: &impl AsFd, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare capacity, which is
    // valid for writes, and returns how many it wrote.
    let n = unsafe {
        libc::read(
            fd.as_fd().as_raw_fd(),
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised these `n` bytes just past `len` (n <= spare.len()).
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

// ---- processes --------------------------------------------------------------------------------

/// Is there a process `pid` (signal 0; a process of another user counts)?
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Does this process run as root (effective user id 0)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective user ID of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The supplementary groups of the process at the other end of the connected unix socket
/// `sock`, as they were when it connected (`SO_PEERGROUPS`, Linux 4.13). Its user and primary
/// group come from `SO_PEERCRED` (tokio's `UnixStream::peer_cred`).
pub fn peer_groups(sock: &impl AsFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is a writable buffer of `len` bytes for the duration of the call;
        // the kernel writes at most `len` bytes and sets `len` to what it wrote (or needs).
        let rc = unsafe {
            libc::getsockopt(
                sock.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer was too small; `len` says how large it must be.
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(e);
        }
        groups.resize(n, 0);
    }
    Err(io::Error::from(io::ErrorKind::InvalidData))
}

// ---- network ----------------------------------------------------------------------------------

/// The index of network interface `name` (`if_nametoindex(3)`).
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// A socket that sends IPv4 datagrams straight to a link-layer address (`AF_PACKET`,
/// `SOCK_DGRAM`: the kernel adds the Ethernet header). Protocol 0: it receives nothing. Needs
/// `CAP_NET_RAW`, where an ARP entry ([`add_arp_entry`]) needs `CAP_NET_ADMIN`.
pub struct LinkSender {
    fd: OwnedFd,
}

impl LinkSender {
    pub fn open() -> io::Result<LinkSender> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(LinkSender { fd })
    }

    /// Send the IPv4 datagram `packet` to `mac` on `interface` (without blocking: a full
    /// transmit queue is an error).
    pub fn send_ipv4(&self, interface: &str, mac: MacAddr, packet: &[u8]) -> io::Result<()> {
        const ETH_P_IP: u16 = 0x0800;
        let ifindex = i32::try_from(if_index(interface)?)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as libc::c_ushort;
        to.sll_protocol = ETH_P_IP.to_be();
        to.sll_ifindex = ifindex;
        to.sll_halen = 6;
        for (d, s) in to.sll_addr.iter_mut().zip(mac.0) {
            *d = s;
        }
        // SAFETY: `packet` and `to` live across the call; the length given is `to`'s size.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        match usize::try_from(sent) {
            Err(_) => Err(io::Error::last_os_error()),
            Ok(n) if n != packet.len() => Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(_) => Ok(()),
        }
    }
}

/// Add a completed ARP entry `ip -> mac` on `interface` (`SIOCSARP` through `sock`), so that a
/// reply can be unicast to a client that has no address yet.
pub fn add_arp_entry(
    sock: &impl AsFd,
    interface: &str,
    ip: Ipv4Addr,
    mac: MacAddr,
) -> io::Result<()> {
    const ATF_COM: libc::c_int = 0x02;
    if interface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: arpreq is plain old data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in (16 bytes) fits in sockaddr (16 bytes); both are plain old data.
    req.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(pa) };
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    req.arp_flags = ATF_COM;
    for (d, s) in req.arp_dev.iter_mut().zip(interface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCSARP takes a pointer to an arpreq, which lives across the call.
    check(unsafe {
        libc::ioctl(
            sock.as_fd().as_raw_fd(),
            libc::SIOCSARP as _,
            &req as *const libc::arpreq,
        )
    })
}

// ---- page cache ---------------------------------------------------------------------------

/// Bytes of `map` (a whole file mapping, starting at a page boundary) that are in the page
/// cache now (`mincore(2)`), counted in whole pages (the last one partly past the end counts
/// as full: capped at `map.len()`). Walks the mapping in chunks with one small buffer.
pub fn resident_bytes(map: &[u8]) -> io::Result<u64> {
    /// Pages asked about per call (256 MiB of 4 KiB pages; a 64 KiB buffer).
    const CHUNK_PAGES: usize = 1 << 16;
    let page = page_size();
    if map.is_empty() {
        return Ok(0);
    }
    if (map.as_ptr() as usize) % page != 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut vec = vec![0u8; CHUNK_PAGES];
    let mut pages = 0u64;
    for chunk in map.chunks(CHUNK_PAGES * page) {
        let n = chunk.len().div_ceil(page);
        let out = vec.get_mut(..n).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: `chunk` is a live, page-aligned part of a mapping (each chunk starts a whole
        // number of pages after the aligned start) borrowed for the call; mincore writes one
        // byte per page of `chunk.len()` rounded up to pages, which is `n` bytes, and `out`
        // holds exactly `n`.
        check(unsafe {
            libc::mincore(
                chunk.as_ptr() as *mut libc::c_void,
                chunk.len(),
                out.as_mut_ptr(),
            )
        })?;
        pages += out.iter().filter(|b| **b & 1 == 1).count() as u64;
    }
    Ok((pages * page as u64).min(map.len() as u64))
}

/// The size of a memory page.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 (never for _SC_PAGESIZE on Linux)
    // on error, which falls back to 4 KiB.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_is_exclusive_between_open_files() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = File::open(f.path()).unwrap();
        let b = File::open(f.path()).unwrap();
        lock_exclusive(&a).unwrap();
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
    }

    #[test]
    fn punched_holes_read_as_zeros() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        if punch_hole(&f, 0, 4096).is_err() {
            return; // a file system without hole punching: nothing to check
        }
        let mut b = [1u8; 8192];
        f.read_exact_at(&mut b, 0).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0));
        assert!(b[4096..].iter().all(|&x| x == 7));
        assert_eq!(f.metadata().unwrap().len(), 8192);
    }

    #[test]
    fn reads_land_in_the_spare_capacity() {
        let (mut w, r) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        let mut buf = bytes::BytesMut::with_capacity(16);
        buf.extend_from_slice(b">");
        assert_eq!(read_into_spare(&r, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..], b">hello");
        drop(w);
        assert_eq!(read_into_spare(&r, &mut buf).unwrap(), 0);
    }

    #[test]
    fn processes_and_interfaces() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
        assert!(!process_exists(u32::MAX));
        assert!(if_index("lo").is_ok());
        assert!(if_index("no-such-if0").is_err());
        assert!(if_index("bad\0name").is_err());
    }
}
