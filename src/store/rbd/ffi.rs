//! The librados/librbd C API, the one place outside the system-call module with `unsafe`.
//!
//! Hand-written declarations for the small subset isboot calls, not bindgen: bindgen would
//! need libclang at build time for ~25 functions whose signatures have been stable since
//! Luminous, and Debian 12 ships librbd 16.2. Every raw handle is owned by one safe wrapper
//! ([`Cluster`], [`IoCtx`], [`Image`]) that frees it in `Drop`; the wrappers keep their parent
//! alive (an `Image` holds its `IoCtx`, which holds its `Cluster`), so librados is never shut
//! down under an open image. Errors come back as [`io::Error`] from librbd's negative errno.

#![allow(
    unsafe_code,
    reason = "the librados/librbd C API: a storage backend's FFI module (Cargo.toml [lints])"
)]

use bytes::Bytes;
use std::cell::UnsafeCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

type RadosT = *mut c_void;
type IoCtxT = *mut c_void;
type ImageT = *mut c_void;
type CompletionT = *mut c_void;
/// `rbd_callback_t`.
type Callback = unsafe extern "C" fn(c: CompletionT, arg: *mut c_void);

/// `rbd_diff_iterate2`'s callback: (offset, length, exists, arg).
type DiffCb = unsafe extern "C" fn(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int;

/// `rbd_image_info_t` (librbd.h).
#[repr(C)]
struct RbdImageInfo {
    size: u64,
    obj_size: u64,
    num_objs: u64,
    order: c_int,
    block_name_prefix: [c_char; 24],
    parent_pool: i64,
    parent_name: [c_char; 96],
}

/// `rbd_lock_mode_t`: `RBD_LOCK_MODE_EXCLUSIVE`.
const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;
/// Image features (librbd/features.h).
pub const FEATURE_LAYERING: u64 = 1;
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 4;
/// Flattening also detaches the image's snapshots from the parent (needed to remove a parent
/// version whose next version was cloned from it).
pub const FEATURE_DEEP_FLATTEN: u64 = 32;

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_create2(
        cluster: *mut RadosT,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: RadosT) -> c_int;
    fn rados_shutdown(cluster: RadosT);
    fn rados_ioctx_create(cluster: RadosT, pool: *const c_char, ioctx: *mut IoCtxT) -> c_int;
    fn rados_ioctx_destroy(ioctx: IoCtxT);
}

#[link(name = "rbd")]
unsafe extern "C" {
    fn rbd_create2(
        io: IoCtxT,
        name: *const c_char,
        size: u64,
        features: u64,
        order: *mut c_int,
    ) -> c_int;
    fn rbd_clone(
        p_ioctx: IoCtxT,
        p_name: *const c_char,
        p_snapname: *const c_char,
        c_ioctx: IoCtxT,
        c_name: *const c_char,
        features: u64,
        c_order: *mut c_int,
    ) -> c_int;
    fn rbd_remove(io: IoCtxT, name: *const c_char) -> c_int;
    fn rbd_list2(io: IoCtxT, images: *mut RbdImageSpec, max_images: *mut usize) -> c_int;
    fn rbd_image_spec_list_cleanup(images: *mut RbdImageSpec, num_images: usize);
    fn rbd_open(io: IoCtxT, name: *const c_char, image: *mut ImageT, snap: *const c_char) -> c_int;
    fn rbd_open_read_only(
        io: IoCtxT,
        name: *const c_char,
        image: *mut ImageT,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_close(image: ImageT) -> c_int;
    fn rbd_get_size(image: ImageT, size: *mut u64) -> c_int;
    fn rbd_stat(image: ImageT, info: *mut RbdImageInfo, infosize: usize) -> c_int;
    fn rbd_diff_iterate2(
        image: ImageT,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: DiffCb,
        arg: *mut c_void,
    ) -> c_int;
    fn rbd_read(image: ImageT, ofs: u64, len: usize, buf: *mut c_char) -> isize;
    fn rbd_write(image: ImageT, ofs: u64, len: usize, buf: *const c_char) -> isize;
    fn rbd_write_zeroes(
        image: ImageT,
        ofs: u64,
        len: usize,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> isize;
    fn rbd_flush(image: ImageT) -> c_int;
    fn rbd_snap_create(image: ImageT, name: *const c_char) -> c_int;
    fn rbd_snap_protect(image: ImageT, name: *const c_char) -> c_int;
    fn rbd_flatten(image: ImageT) -> c_int;
    fn rbd_snap_unprotect(image: ImageT, name: *const c_char) -> c_int;
    fn rbd_snap_remove(image: ImageT, name: *const c_char) -> c_int;
    fn rbd_lock_acquire(image: ImageT, mode: c_int) -> c_int;
    fn rbd_is_exclusive_lock_owner(image: ImageT, is_owner: *mut c_int) -> c_int;
    fn rbd_lock_get_owners(
        image: ImageT,
        mode: *mut c_int,
        owners: *mut *mut c_char,
        max_owners: *mut usize,
    ) -> c_int;
    fn rbd_lock_get_owners_cleanup(owners: *mut *mut c_char, count: usize);
    fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: Callback,
        c: *mut CompletionT,
    ) -> c_int;
    fn rbd_aio_get_return_value(c: CompletionT) -> isize;
    fn rbd_aio_release(c: CompletionT);
    fn rbd_aio_read(image: ImageT, off: u64, len: usize, buf: *mut c_char, c: CompletionT)
    -> c_int;
    fn rbd_aio_write(
        image: ImageT,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: CompletionT,
    ) -> c_int;
    fn rbd_aio_flush(image: ImageT, c: CompletionT) -> c_int;
    fn rbd_aio_write_zeroes(
        image: ImageT,
        off: u64,
        len: usize,
        c: CompletionT,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    fn rbd_aio_writesame(
        image: ImageT,
        off: u64,
        len: usize,
        buf: *const c_char,
        data_len: usize,
        c: CompletionT,
        op_flags: c_int,
    ) -> c_int;
}

/// `rbd_image_spec_t`.
#[repr(C)]
struct RbdImageSpec {
    id: *mut c_char,
    name: *mut c_char,
}

fn check(rc: c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// A connected librados client.
pub struct Cluster(RadosT);

// SAFETY: a rados_t is a handle to a librados client (`RadosClient`), whose methods take their
// own locks; librados documents it as usable from many threads at once.
unsafe impl Send for Cluster {}
// SAFETY: as above: shared use from several threads is what librados is built for.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Connect as `client_name` (e.g. `client.admin`) with the settings of `conf_path` and
    /// `options` (name, value) applied on top (e.g. the keyring path).
    pub fn connect(
        conf_path: &str,
        client_name: &str,
        options: &[(&str, &str)],
    ) -> io::Result<Arc<Cluster>> {
        let name = cstr(client_name)?;
        let cluster_name = cstr("ceph")?;
        let conf = cstr(conf_path)?;
        let mut h: RadosT = std::ptr::null_mut();
        // SAFETY: `h` is a valid out-pointer; the names are NUL-terminated and outlive the call.
        check(unsafe { rados_create2(&mut h, cluster_name.as_ptr(), name.as_ptr(), 0) })?;
        // Owned from here: dropped (rados_shutdown) on any error below.
        let c = Cluster(h);
        // SAFETY: `c.0` is the handle rados_create2 just made; `conf` is NUL-terminated.
        check(unsafe { rados_conf_read_file(c.0, conf.as_ptr()) })?;
        for (k, v) in options {
            let (k, v) = (cstr(k)?, cstr(v)?);
            // SAFETY: valid handle, NUL-terminated strings that outlive the call.
            check(unsafe { rados_conf_set(c.0, k.as_ptr(), v.as_ptr()) })?;
        }
        // SAFETY: valid, configured, not yet connected handle.
        check(unsafe { rados_connect(c.0) })?;
        Ok(Arc::new(c))
    }

    /// An I/O context on `pool`.
    pub fn ioctx(self: &Arc<Self>, pool: &str) -> io::Result<Arc<IoCtx>> {
        let p = cstr(pool)?;
        let mut io: IoCtxT = std::ptr::null_mut();
        // SAFETY: connected handle (kept alive by `self`), valid out-pointer, NUL-terminated.
        check(unsafe { rados_ioctx_create(self.0, p.as_ptr(), &mut io) })?;
        Ok(Arc::new(IoCtx {
            h: io,
            _cluster: self.clone(),
        }))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create2 and nothing uses it after this: every
        // IoCtx holds an Arc of its Cluster, so none is left.
        unsafe { rados_shutdown(self.0) }
    }
}

/// An I/O context: one pool of one cluster.
pub struct IoCtx {
    h: IoCtxT,
    _cluster: Arc<Cluster>,
}

// SAFETY: librados I/O contexts are thread-safe (IoCtxImpl locks its own state); librbd calls
// on different images of one ioctx from several threads are how QEMU and rbd-nbd use it.
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: from rados_ioctx_create; every Image holds an Arc of its IoCtx, so none is left.
        unsafe { rados_ioctx_destroy(self.h) }
    }
}

impl IoCtx {
    /// Create image `name` of `size` bytes with `features`.
    pub fn create(&self, name: &str, size: u64, features: u64) -> io::Result<()> {
        let n = cstr(name)?;
        let mut order: c_int = 0;
        // SAFETY: valid ioctx, NUL-terminated name, valid out-pointer for the order.
        check(unsafe { rbd_create2(self.h, n.as_ptr(), size, features, &mut order) })
    }

    /// Clone `parent@snap` (a protected snapshot) into `child` in this pool.
    pub fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        child: &str,
        features: u64,
    ) -> io::Result<()> {
        let (p, s, c) = (cstr(parent)?, cstr(snap)?, cstr(child)?);
        let mut order: c_int = 0;
        // SAFETY: both ioctx handles are this valid one; all strings NUL-terminated and alive.
        check(unsafe {
            rbd_clone(
                self.h,
                p.as_ptr(),
                s.as_ptr(),
                self.h,
                c.as_ptr(),
                features,
                &mut order,
            )
        })
    }

    /// Remove image `name` (fails with EBUSY while someone has it open).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: valid ioctx, NUL-terminated name.
        check(unsafe { rbd_remove(self.h, n.as_ptr()) })
    }

    /// Names of the images in the pool.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut cap: usize = 64;
        loop {
            let mut specs: Vec<RbdImageSpec> = Vec::with_capacity(cap);
            let mut n = cap;
            // SAFETY: `specs` has room for `n` entries; librbd writes at most `n` (or returns
            // -ERANGE with the count it needs in `n`).
            let rc = unsafe { rbd_list2(self.h, specs.as_mut_ptr(), &mut n) };
            if rc == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check(rc)?;
            // SAFETY: on success librbd initialised the first `n` entries.
            unsafe { specs.set_len(n) };
            let names = specs
                .iter()
                // SAFETY: each name is a NUL-terminated string librbd allocated.
                .map(|s| {
                    unsafe { CStr::from_ptr(s.name) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            // SAFETY: frees exactly the `n` entries librbd filled in; not used afterwards.
            unsafe { rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
            return Ok(names);
        }
    }

    /// Open image `name` (at snapshot `snap` if given; a snapshot is read-only).
    pub fn open(
        self: &Arc<Self>,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> io::Result<Image> {
        let n = cstr(name)?;
        let s = snap.map(cstr).transpose()?;
        let sp = s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let mut h: ImageT = std::ptr::null_mut();
        // SAFETY: valid ioctx (kept alive by the Image), NUL-terminated strings or null for no
        // snapshot, valid out-pointer.
        let rc = unsafe {
            if read_only {
                rbd_open_read_only(self.h, n.as_ptr(), &mut h, sp)
            } else {
                rbd_open(self.h, n.as_ptr(), &mut h, sp)
            }
        };
        check(rc)?;
        Ok(Image {
            h,
            _io: self.clone(),
        })
    }
}

/// An open RBD image.
pub struct Image {
    h: ImageT,
    _io: Arc<IoCtx>,
}

// SAFETY: librbd's ImageCtx serialises its own state (owner_lock, image_lock); concurrent
// rbd_read/rbd_write/rbd_flush on one handle from several threads is supported (QEMU's
// and tcmu-runner's rbd drivers issue I/O from several threads).
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: from rbd_open*, closed exactly once here. Closing also releases an exclusive
        // lock this handle holds.
        unsafe { rbd_close(self.h) };
    }
}

impl Image {
    pub fn size(&self) -> io::Result<u64> {
        let mut s = 0u64;
        // SAFETY: open image, valid out-pointer.
        check(unsafe { rbd_get_size(self.h, &mut s) })?;
        Ok(s)
    }

    /// The size of the image's objects, bytes (4 MiB unless made with another order).
    pub fn object_size(&self) -> io::Result<u64> {
        // SAFETY: all-zero is a valid rbd_image_info_t (integers and char arrays).
        let mut info: RbdImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: open image; `info` is valid for writes of the size passed.
        check(unsafe { rbd_stat(self.h, &mut info, std::mem::size_of::<RbdImageInfo>()) })?;
        Ok(info.obj_size)
    }

    /// The extents `(offset, length)` of `[0, len)` that the image itself holds data for,
    /// whole objects each (`rbd_diff_iterate2` against no snapshot, parent excluded): for a
    /// clone, the objects it allocated by copy-up, not those it still reads from its parent.
    pub fn own_extents(&self, len: u64) -> io::Result<Vec<(u64, u64)>> {
        unsafe extern "C" fn collect(
            off: u64,
            len: usize,
            exists: c_int,
            arg: *mut c_void,
        ) -> c_int {
            if exists != 0 {
                // SAFETY: `arg` is the `&mut Vec` passed below, alive and not otherwise used
                // for the whole synchronous rbd_diff_iterate2 call that calls this.
                let out = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
                out.push((off, len as u64));
            }
            0
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        // SAFETY: open image; no snapshot name (NULL: the image's beginning); the callback only
        // touches `out` through `arg`, and librbd calls it only during this synchronous call.
        check(unsafe {
            rbd_diff_iterate2(
                self.h,
                std::ptr::null(),
                0,
                len,
                0,
                1,
                collect,
                (&mut out as *mut Vec<(u64, u64)>).cast(),
            )
        })?;
        Ok(out)
    }

    /// Fill `buf` from `offset` (a short read past the end is an error).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes for the whole (synchronous) call.
        let n = unsafe { rbd_read(self.h, offset, buf.len(), buf.as_mut_ptr().cast()) };
        match usize::try_from(n) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short RBD read: {n} of {} bytes", buf.len()),
            )),
            Err(_) => Err(io::Error::from_raw_os_error(-(n as i32))),
        }
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        // SAFETY: `data` is valid for `data.len()` readable bytes for the whole synchronous call.
        let n = unsafe { rbd_write(self.h, offset, data.len(), data.as_ptr().cast()) };
        match usize::try_from(n) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short RBD write: {n} of {} bytes", data.len()),
            )),
            Err(_) => Err(io::Error::from_raw_os_error(-(n as i32))),
        }
    }

    /// Make `[offset, offset + len)` read as zeros, deallocating whole objects where it can
    /// (rbd_discard may skip ranges smaller than its granularity, so it is not used).
    pub fn write_zeroes(&self, offset: u64, len: usize) -> io::Result<()> {
        // SAFETY: open image; plain integers; no flags.
        let n = unsafe { rbd_write_zeroes(self.h, offset, len, 0, 0) };
        match usize::try_from(n) {
            Ok(_) => Ok(()),
            Err(_) => Err(io::Error::from_raw_os_error(-(n as i32))),
        }
    }

    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: open image.
        check(unsafe { rbd_flush(self.h) })
    }

    /// Create snapshot `name` and protect it (so clones can be made of it).
    /// Idempotent: a snapshot that exists already (an earlier attempt stopped between the two
    /// steps, or after them) is protected if it is not yet.
    pub fn snap_create_protected(&self, name: &str) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: open image, NUL-terminated name.
        match check(unsafe { rbd_snap_create(self.h, n.as_ptr()) }) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => r?,
        }
        // SAFETY: as above.
        match check(unsafe { rbd_snap_protect(self.h, n.as_ptr()) }) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()), // already protected
            r => r,
        }
    }

    /// Copy what the image still reads from its parent into the image itself, so the parent
    /// can go (EINVAL when the image has no parent).
    pub fn flatten(&self) -> io::Result<()> {
        // SAFETY: open image.
        check(unsafe { rbd_flatten(self.h) })
    }

    /// Unprotect snapshot `name` (an unprotected one is fine) and remove it.
    pub fn snap_unprotect_remove(&self, name: &str) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: open image, NUL-terminated name.
        match check(unsafe { rbd_snap_unprotect(self.h, n.as_ptr()) }) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // not protected
            r => r?,
        }
        // SAFETY: as above.
        check(unsafe { rbd_snap_remove(self.h, n.as_ptr()) })
    }

    /// Take the image's exclusive lock and keep it (librbd will not hand it over to another
    /// client that asks; that client gets an error). Fails while a live client holds it.
    pub fn lock_exclusive(&self) -> io::Result<()> {
        // SAFETY: open image; the mode is a valid rbd_lock_mode_t.
        check(unsafe { rbd_lock_acquire(self.h, RBD_LOCK_MODE_EXCLUSIVE) })
    }

    pub fn is_lock_owner(&self) -> io::Result<bool> {
        let mut owner: c_int = 0;
        // SAFETY: open image, valid out-pointer.
        check(unsafe { rbd_is_exclusive_lock_owner(self.h, &mut owner) })?;
        Ok(owner != 0)
    }

    /// Who holds the image's lock (librbd client addresses), empty when nobody does.
    pub fn lock_owners(&self) -> io::Result<Vec<String>> {
        let mut mode: c_int = 0;
        let mut owners: [*mut c_char; 8] = [std::ptr::null_mut(); 8];
        let mut n = owners.len();
        // SAFETY: `owners` has room for `n` pointers; librbd fills at most that many.
        let rc = unsafe { rbd_lock_get_owners(self.h, &mut mode, owners.as_mut_ptr(), &mut n) };
        if rc == -libc::ENOENT {
            return Ok(Vec::new());
        }
        check(rc)?;
        let n = n.min(owners.len());
        let list = owners[..n]
            .iter()
            // SAFETY: librbd set the first `n` entries to NUL-terminated strings it allocated.
            .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: frees exactly the `n` strings librbd allocated; not used afterwards.
        unsafe { rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), n) };
        Ok(list)
    }
}

/// One asynchronous librbd operation: the buffer librbd reads into or writes from, and the
/// result. Shared (`Arc`) by the [`Aio`] future that awaits it and by librbd's completion
/// callback, so the buffer outlives whatever librbd does with it even when the future is
/// dropped first (a cancelled SCSI command): the last of the two to let go frees it.
struct Op {
    /// Touched by the submitter before the operation starts, by librbd while it is in
    /// flight, and by the future only after `done` holds the result (librbd is finished with
    /// the buffer before it calls the completion callback).
    buf: UnsafeCell<Buf>,
    done: Mutex<Done>,
}

/// An operation's buffer: owned (reads fill it; patterns), or shared write data that librbd
/// only reads (the SCSI command's Data-Out, whose memory stays counted against the write
/// budget until the write is done with it).
enum Buf {
    Owned(Vec<u8>),
    Shared(Bytes),
}

#[derive(Default)]
struct Done {
    result: Option<isize>,
    waker: Option<Waker>,
}

// SAFETY: `buf` is only ever accessed by one party at a time, in the order the `done` mutex
// establishes (see the field comment); everything else is behind the mutex. `Bytes` is Send
// and Sync itself.
unsafe impl Sync for Op {}

/// librbd's completion callback, on one of its threads: stores the result and wakes the task.
/// It never blocks on anything but the `done` mutex, held only for a store by anyone.
unsafe extern "C" fn on_complete(c: CompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the `Arc::into_raw` that `Image::submit` passed with this completion;
    // librbd calls this callback exactly once per completion, so the reference is taken back
    // exactly once.
    let op = unsafe { Arc::from_raw(arg.cast_const().cast::<Op>()) };
    // SAFETY: `c` is the completion this callback is for; it is released here, once, after
    // its value is read, and nothing else holds it.
    let r = unsafe { rbd_aio_get_return_value(c) };
    // SAFETY: as above.
    unsafe { rbd_aio_release(c) };
    let waker = {
        let mut d = op.done.lock().unwrap_or_else(|e| e.into_inner());
        d.result = Some(r);
        d.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

/// A librbd operation in flight: resolves to librbd's result (bytes for a read, 0 for the
/// others, or a negative errno) and the operation's buffer. Dropping it does not cancel the
/// operation: librbd finishes it and the buffer is freed then.
pub struct Aio {
    op: Arc<Op>,
}

impl Future for Aio {
    type Output = (isize, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut d = self.op.done.lock().unwrap_or_else(|e| e.into_inner());
        match d.result {
            Some(r) => {
                drop(d);
                // SAFETY: the result is set, so librbd is done with the buffer and the callback
                // never touches it; this future is the only other holder.
                let buf =
                    std::mem::replace(unsafe { &mut *self.op.buf.get() }, Buf::Owned(Vec::new()));
                let buf = match buf {
                    Buf::Owned(v) => v,
                    Buf::Shared(_) => Vec::new(),
                };
                Poll::Ready((r, buf))
            }
            None => {
                d.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// An errno from librbd's `isize` result.
pub fn aio_err(r: isize) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(-r).unwrap_or(libc::EIO))
}

impl Image {
    /// Start one asynchronous operation on `buf` with `start(image, buf ptr, buf len,
    /// completion)`, which must call exactly one `rbd_aio_*` function with that completion.
    fn submit(
        &self,
        buf: Buf,
        start: impl FnOnce(ImageT, *mut c_char, usize, CompletionT) -> c_int,
    ) -> io::Result<Aio> {
        let op = Arc::new(Op {
            buf: UnsafeCell::new(buf),
            done: Mutex::new(Done::default()),
        });
        let arg = Arc::into_raw(op.clone()).cast_mut().cast::<c_void>();
        let mut c: CompletionT = std::ptr::null_mut();
        // SAFETY: `arg` stays valid until the callback takes it back; valid out-pointer.
        let rc = unsafe { rbd_aio_create_completion(arg, on_complete, &mut c) };
        if rc < 0 {
            // SAFETY: no completion exists, so no callback will take this reference back.
            drop(unsafe { Arc::from_raw(arg.cast_const().cast::<Op>()) });
            return Err(io::Error::from_raw_os_error(-rc));
        }
        // SAFETY: nobody else touches the buffer before the operation starts; its heap block
        // does not move or get freed until the op is dropped (after the callback). A shared
        // buffer's pointer is only given to calls that read through it (`rbd_aio_write`).
        let (ptr, len) = match unsafe { &mut *op.buf.get() } {
            Buf::Owned(b) => (b.as_mut_ptr().cast::<c_char>(), b.len()),
            Buf::Shared(b) => (b.as_ptr().cast_mut().cast::<c_char>(), b.len()),
        };
        let rc = start(self.h, ptr, len, c);
        if rc < 0 {
            // librbd refused the operation up front. Whether it will still complete the
            // completion is not documented, so the completion and one reference to the
            // operation are left to it (a small leak on a path librbd 16 never takes)
            // rather than risking a double free.
            return Err(io::Error::from_raw_os_error(-rc));
        }
        Ok(Aio { op })
    }

    /// Read `len` bytes at `offset`; the result is the byte count.
    pub fn aio_read(&self, offset: u64, len: usize) -> io::Result<Aio> {
        self.submit(Buf::Owned(vec![0u8; len]), |h, buf, len, c| {
            // SAFETY: open image; `buf` is valid for `len` writable bytes until the
            // completion fires (owned by the operation); `c` is a fresh completion.
            unsafe { rbd_aio_read(h, offset, len, buf, c) }
        })
    }

    /// Write `data` at `offset`; the result is 0 (librbd's aio write does not return a count).
    /// The operation holds `data` (no copy) until librbd is done with it.
    pub fn aio_write(&self, offset: u64, data: Bytes) -> io::Result<Aio> {
        self.submit(Buf::Shared(data), |h, buf, len, c| {
            // SAFETY: open image; `buf` is valid for `len` bytes until the completion fires.
            unsafe { rbd_aio_write(h, offset, len, buf.cast_const(), c) }
        })
    }

    /// Make everything acknowledged before it durable.
    pub fn aio_flush(&self) -> io::Result<Aio> {
        self.submit(Buf::Owned(Vec::new()), |h, _, _, c| {
            // SAFETY: open image; fresh completion.
            unsafe { rbd_aio_flush(h, c) }
        })
    }

    /// Make `[offset, offset + len)` read as zeros.
    pub fn aio_write_zeroes(&self, offset: u64, len: usize) -> io::Result<Aio> {
        self.submit(Buf::Owned(Vec::new()), |h, _, _, c| {
            // SAFETY: open image; plain integers; fresh completion; no flags.
            unsafe { rbd_aio_write_zeroes(h, offset, len, c, 0, 0) }
        })
    }

    /// Fill `[offset, offset + len)` with copies of `pattern` (`len` a multiple of its length).
    pub fn aio_writesame(&self, offset: u64, len: usize, pattern: Vec<u8>) -> io::Result<Aio> {
        self.submit(Buf::Owned(pattern), |h, buf, plen, c| {
            // SAFETY: open image; `buf` is valid for `plen` bytes until the completion fires.
            unsafe { rbd_aio_writesame(h, offset, len, buf.cast_const(), plen, c, 0) }
        })
    }
}

// RADOS objects: the shared state of a fleet (`config::state::shared`) lives in one object of
// the pool, changed under a RADOS lock with a compare-and-write on a generation attribute, and
// announced to the other servers with watch/notify.

type WriteOpT = *mut c_void;
/// `rados_watchcb2_t`.
type WatchCb = unsafe extern "C" fn(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    notifier_id: u64,
    data: *mut c_void,
    data_len: usize,
);
/// `rados_watcherrcb_t`.
type WatchErrCb = unsafe extern "C" fn(pre: *mut c_void, cookie: u64, err: c_int);

/// `LIBRADOS_CMPXATTR_OP_EQ`.
const CMPXATTR_OP_EQ: u8 = 1;

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_stat(
        io: IoCtxT,
        o: *const c_char,
        psize: *mut u64,
        pmtime: *mut libc::time_t,
    ) -> c_int;
    fn rados_read(io: IoCtxT, oid: *const c_char, buf: *mut c_char, len: usize, off: u64) -> c_int;
    fn rados_create_write_op() -> WriteOpT;
    fn rados_release_write_op(op: WriteOpT);
    fn rados_write_op_cmpxattr(
        op: WriteOpT,
        name: *const c_char,
        comparison_operator: u8,
        value: *const c_char,
        value_len: usize,
    );
    fn rados_write_op_write_full(op: WriteOpT, buffer: *const c_char, len: usize);
    fn rados_write_op_setxattr(
        op: WriteOpT,
        name: *const c_char,
        value: *const c_char,
        value_len: usize,
    );
    fn rados_write_op_operate(
        op: WriteOpT,
        io: IoCtxT,
        oid: *const c_char,
        mtime: *mut libc::time_t,
        flags: c_int,
    ) -> c_int;
    fn rados_lock_exclusive(
        io: IoCtxT,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
        desc: *const c_char,
        duration: *mut libc::timeval,
        flags: u8,
    ) -> c_int;
    fn rados_unlock(
        io: IoCtxT,
        o: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
    ) -> c_int;
    fn rados_watch2(
        io: IoCtxT,
        o: *const c_char,
        cookie: *mut u64,
        watchcb: WatchCb,
        watcherrcb: WatchErrCb,
        arg: *mut c_void,
    ) -> c_int;
    fn rados_unwatch2(io: IoCtxT, cookie: u64) -> c_int;
    fn rados_watch_flush(cluster: RadosT) -> c_int;
    fn rados_notify2(
        io: IoCtxT,
        o: *const c_char,
        buf: *const c_char,
        buf_len: c_int,
        timeout_ms: u64,
        reply_buffer: *mut *mut c_char,
        reply_buffer_len: *mut usize,
    ) -> c_int;
    fn rados_notify_ack(
        io: IoCtxT,
        o: *const c_char,
        notify_id: u64,
        cookie: u64,
        buf: *const c_char,
        buf_len: c_int,
    ) -> c_int;
    fn rados_buffer_free(buf: *mut c_char);
    fn rados_decode_notify_response(
        reply_buffer: *mut c_char,
        reply_buffer_len: usize,
        acks: *mut *mut NotifyAck,
        nr_acks: *mut usize,
        timeouts: *mut *mut NotifyTimeout,
        nr_timeouts: *mut usize,
    ) -> c_int;
    fn rados_free_notify_response(
        acks: *mut NotifyAck,
        nr_acks: usize,
        timeouts: *mut NotifyTimeout,
    );
    fn rados_write_op_create(op: WriteOpT, exclusive: c_int, category: *const c_char);
}

/// `struct notify_ack_t` (rados_types.h).
#[repr(C)]
struct NotifyAck {
    notifier_id: u64,
    cookie: u64,
    payload: *mut c_char,
    payload_len: u64,
}

/// `struct notify_timeout_t` (rados_types.h).
#[repr(C)]
struct NotifyTimeout {
    notifier_id: u64,
    cookie: u64,
}

/// `LIBRADOS_CREATE_IDEMPOTENT`.
const CREATE_IDEMPOTENT: c_int = 0;

/// What a [`IoCtx::notify_collect`] round got back: each watcher's acknowledgement (its
/// librados client id and the payload it acknowledged with), and how many watchers did not
/// answer in time.
#[derive(Debug, Default)]
pub struct NotifyReplies {
    pub acks: Vec<(u64, Vec<u8>)>,
    pub timeouts: usize,
}

/// What a [`Watch`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Another client notified the object (already acknowledged).
    Notify,
    /// The watch broke (errno): notifies may have been missed; make a new watch.
    Broken(i32),
}

/// What a watch reports to: the event and the notify's payload (empty for `Broken`).
pub type OnWatchEvent = Box<dyn Fn(WatchEvent, &[u8]) + Send + Sync>;

/// What a watch callback gets as its argument: owned by its [`Watch`].
struct WatchCtx {
    io: IoCtxT,
    oid: CString,
    /// What every notify is acknowledged with (empty: nothing).
    ack: Arc<std::sync::Mutex<Vec<u8>>>,
    on_event: OnWatchEvent,
}

unsafe extern "C" fn watch_notified(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    _notifier: u64,
    data: *mut c_void,
    len: usize,
) {
    // SAFETY: `arg` is the WatchCtx its Watch registered; the Watch frees it only after
    // rados_unwatch2 and rados_watch_flush, so no callback runs after that.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    let ack = ctx.ack.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // SAFETY: the ioctx outlives the watch (the Watch holds its Arc); oid is NUL-terminated;
    // `ack` outlives the call (librados copies the payload).
    unsafe {
        rados_notify_ack(
            ctx.io,
            ctx.oid.as_ptr(),
            notify_id,
            handle,
            if ack.is_empty() {
                std::ptr::null()
            } else {
                ack.as_ptr().cast()
            },
            ack.len().min(c_int::MAX as usize) as c_int,
        )
    };
    let payload: &[u8] = if data.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: librados passes the notify's payload, valid for `len` bytes during the call.
        unsafe { std::slice::from_raw_parts(data as *const u8, len) }
    };
    (ctx.on_event)(WatchEvent::Notify, payload);
}

unsafe extern "C" fn watch_broken(arg: *mut c_void, _cookie: u64, err: c_int) {
    // SAFETY: as in watch_notified.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    (ctx.on_event)(WatchEvent::Broken(-err), &[]);
}

/// A watch on one object; unwatched (and its callbacks drained) when dropped.
pub struct Watch {
    io: Arc<IoCtx>,
    cookie: u64,
    ctx: *mut WatchCtx,
}

// SAFETY: the raw pointer is a Box only this Watch frees; the callback data it points to is
// Send + Sync, and librados handles are thread-safe (see Cluster).
unsafe impl Send for Watch {}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: the cookie is this watch's; after unwatch, watch_flush waits for callbacks
        // still running, so the context can be freed.
        unsafe {
            rados_unwatch2(self.io.h, self.cookie);
            rados_watch_flush(self.io._cluster.0);
            drop(Box::from_raw(self.ctx));
        }
    }
}

impl IoCtx {
    /// The whole content of object `oid`, or None when it does not exist.
    pub fn read_object(&self, oid: &str) -> io::Result<Option<Vec<u8>>> {
        let o = cstr(oid)?;
        let mut size = 0u64;
        let mut mtime: libc::time_t = 0;
        // SAFETY: valid ioctx and out-pointers; `o` is NUL-terminated.
        let rc = unsafe { rados_stat(self.h, o.as_ptr(), &mut size, &mut mtime) };
        if rc == -libc::ENOENT {
            return Ok(None);
        }
        check(rc)?;
        // The object may grow between stat and read: read until a short read.
        let mut out = Vec::new();
        let mut chunk = vec![0u8; (size as usize).max(4096)];
        loop {
            // SAFETY: `chunk` is valid for its length; valid ioctx and name.
            let n = unsafe {
                rados_read(
                    self.h,
                    o.as_ptr(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    out.len() as u64,
                )
            };
            if n == -libc::ENOENT && out.is_empty() {
                return Ok(None);
            }
            check(n)?;
            let n = n as usize;
            out.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                return Ok(Some(out));
            }
        }
    }

    /// Replace object `oid` (which must exist) by `data` and set its attribute `xattr` to
    /// `value`, atomically, if the attribute holds `expect` now (a missing attribute compares
    /// as empty); `ECANCELED` with nothing changed otherwise.
    pub fn replace_object(
        &self,
        oid: &str,
        data: &[u8],
        xattr: &str,
        expect: &[u8],
        value: &[u8],
    ) -> io::Result<()> {
        let x = cstr(xattr)?;
        self.write_op(oid, |op| {
            // SAFETY: `op` is valid; every buffer outlives the op (they are referenced, not
            // copied, until it runs); the name is NUL-terminated.
            unsafe {
                rados_write_op_cmpxattr(
                    op,
                    x.as_ptr(),
                    CMPXATTR_OP_EQ,
                    expect.as_ptr().cast(),
                    expect.len(),
                );
                rados_write_op_write_full(op, data.as_ptr().cast(), data.len());
                rados_write_op_setxattr(op, x.as_ptr(), value.as_ptr().cast(), value.len());
            }
        })
    }

    /// Run one write op on object `oid`, made by `fill` (which adds its steps), atomically.
    fn write_op(&self, oid: &str, fill: impl FnOnce(WriteOpT)) -> io::Result<()> {
        let o = cstr(oid)?;
        // SAFETY: a fresh write op, released below on every path.
        let op = unsafe { rados_create_write_op() };
        if op.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        fill(op);
        // SAFETY: `op` is valid and filled; valid ioctx; `o` is NUL-terminated; the op is
        // released after it ran.
        let rc = unsafe {
            let rc = rados_write_op_operate(op, self.h, o.as_ptr(), std::ptr::null_mut(), 0);
            rados_release_write_op(op);
            rc
        };
        check(rc)
    }

    /// Take the exclusive RADOS lock `name` on object `oid` for `secs` seconds (it expires if
    /// its holder dies). Ok(false): another (client, cookie) holds it.
    pub fn try_lock_object(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        desc: &str,
        secs: i64,
    ) -> io::Result<bool> {
        let (o, n, c, d) = (cstr(oid)?, cstr(name)?, cstr(cookie)?, cstr(desc)?);
        let mut t = libc::timeval {
            tv_sec: secs as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: valid ioctx; NUL-terminated strings and a timeval that outlive the call.
        let rc = unsafe {
            rados_lock_exclusive(
                self.h,
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                &mut t,
                0,
            )
        };
        match rc {
            r if r == -libc::EBUSY => Ok(false),
            r => check(r).map(|()| true),
        }
    }

    /// Release the lock `name` taken with `cookie` (ENOENT when it had expired).
    pub fn unlock_object(&self, oid: &str, name: &str, cookie: &str) -> io::Result<()> {
        let (o, n, c) = (cstr(oid)?, cstr(name)?, cstr(cookie)?);
        // SAFETY: valid ioctx; NUL-terminated strings.
        check(unsafe { rados_unlock(self.h, o.as_ptr(), n.as_ptr(), c.as_ptr()) })
    }

    /// Watch object `oid` (which must exist): `on_event` runs on a librados thread for every
    /// notify (acknowledged before it runs) and when the watch breaks. Keep it short.
    pub fn watch(
        self: &Arc<Self>,
        oid: &str,
        on_event: Box<dyn Fn(WatchEvent) + Send + Sync>,
    ) -> io::Result<Watch> {
        self.watch_acking(oid, Default::default(), Box::new(move |e, _| on_event(e)))
    }

    /// [`IoCtx::watch`] that acknowledges every notify with what `ack` holds at that moment
    /// (the notifier gets it back from [`IoCtx::notify_collect`]) and hands `on_event` the
    /// notify's payload.
    pub fn watch_acking(
        self: &Arc<Self>,
        oid: &str,
        ack: Arc<std::sync::Mutex<Vec<u8>>>,
        on_event: OnWatchEvent,
    ) -> io::Result<Watch> {
        let ctx = Box::into_raw(Box::new(WatchCtx {
            io: self.h,
            oid: cstr(oid)?,
            ack,
            on_event,
        }));
        let mut cookie = 0u64;
        // SAFETY: valid ioctx; `ctx` stays valid until the Watch's Drop (or just below on error).
        let rc = unsafe {
            rados_watch2(
                self.h,
                (*ctx).oid.as_ptr(),
                &mut cookie,
                watch_notified,
                watch_broken,
                ctx.cast(),
            )
        };
        if rc < 0 {
            // SAFETY: the watch was not registered, so no callback can use `ctx`.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(io::Error::from_raw_os_error(-rc));
        }
        Ok(Watch {
            io: self.clone(),
            cookie,
            ctx,
        })
    }

    /// Notify the watchers of `oid`, waiting up to `timeout_ms` for their acknowledgements.
    pub fn notify(&self, oid: &str, timeout_ms: u64) -> io::Result<()> {
        let o = cstr(oid)?;
        let mut reply: *mut c_char = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: valid ioctx; empty payload; out-pointers valid; the reply freed below.
        let rc = unsafe {
            rados_notify2(
                self.h,
                o.as_ptr(),
                std::ptr::null(),
                0,
                timeout_ms,
                &mut reply,
                &mut len,
            )
        };
        if !reply.is_null() {
            // SAFETY: librados allocated it for us (set even on -ETIMEDOUT).
            unsafe { rados_buffer_free(reply) };
        }
        check(rc)
    }

    /// Notify the watchers of `oid` with `payload` and collect their acknowledgements for up
    /// to `timeout_ms` (a watcher that does not answer in time counts in `timeouts`; that is
    /// not an error here).
    pub fn notify_collect(
        &self,
        oid: &str,
        payload: &[u8],
        timeout_ms: u64,
    ) -> io::Result<NotifyReplies> {
        let o = cstr(oid)?;
        let len = c_int::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "notify payload too long"))?;
        let mut reply: *mut c_char = std::ptr::null_mut();
        let mut reply_len = 0usize;
        // SAFETY: valid ioctx; the payload outlives the call; out-pointers valid; the reply
        // is freed below.
        let rc = unsafe {
            rados_notify2(
                self.h,
                o.as_ptr(),
                payload.as_ptr().cast(),
                len,
                timeout_ms,
                &mut reply,
                &mut reply_len,
            )
        };
        let mut out = NotifyReplies::default();
        if !reply.is_null() {
            let mut acks: *mut NotifyAck = std::ptr::null_mut();
            let mut timeouts: *mut NotifyTimeout = std::ptr::null_mut();
            let (mut na, mut nt) = (0usize, 0usize);
            // SAFETY: `reply` is the buffer librados just returned, of `reply_len` bytes; the
            // decoded arrays are read within their lengths and freed with the call made for them.
            unsafe {
                let d = rados_decode_notify_response(
                    reply,
                    reply_len,
                    &mut acks,
                    &mut na,
                    &mut timeouts,
                    &mut nt,
                );
                if d == 0 {
                    for i in 0..na {
                        let a = &*acks.add(i);
                        let p = if a.payload.is_null() || a.payload_len == 0 {
                            Vec::new()
                        } else {
                            std::slice::from_raw_parts(
                                a.payload as *const u8,
                                a.payload_len as usize,
                            )
                            .to_vec()
                        };
                        out.acks.push((a.notifier_id, p));
                    }
                    out.timeouts = nt;
                    rados_free_notify_response(acks, na, timeouts);
                }
                rados_buffer_free(reply);
            }
        }
        if rc < 0 && rc != -libc::ETIMEDOUT {
            check(rc)?;
        }
        Ok(out)
    }

    /// Create object `oid` (empty) unless it exists.
    pub fn create_object(&self, oid: &str) -> io::Result<()> {
        // SAFETY: a valid op; no buffers.
        self.write_op(oid, |op| unsafe {
            rados_write_op_create(op, CREATE_IDEMPOTENT, std::ptr::null())
        })
    }
}
