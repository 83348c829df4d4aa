//! Command-level tests against a real file-backed device, encoding what libiscsi's
//! iscsi-test-cu checks (sense codes, data layouts, reservation behaviour).

use super::cdb::op;
use super::sense::{asc, key};
use super::*;
use crate::store::raw::RawFile;
use crate::store::{SECTOR, StoreError, concat};
use std::io::Write;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::Ordering;

const BLOCKS: u64 = 4096;

/// A real [`RawFile`] that also records the durability of every write and each flush.
struct Recording {
    inner: RawFile,
    log: StdMutex<Vec<&'static str>>,
}

impl BlockDevice for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn reads_from_memory(&self) -> bool {
        self.inner.reads_from_memory()
    }
    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError> {
        self.inner.read(offset, len, out)
    }
    fn write(&self, offset: u64, data: &[u8], durable: bool) -> Result<(), StoreError> {
        self.log
            .lock()
            .unwrap()
            .push(if durable { "write-durable" } else { "write" });
        self.inner.write(offset, data, durable)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.log.lock().unwrap().push("flush");
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.log.lock().unwrap().push("discard");
        self.inner.discard(offset, len)
    }
}

struct Fixture {
    _file: tempfile::NamedTempFile,
    dev: Arc<Recording>,
    t: TargetLus,
}

fn ident() -> LuIdentity {
    LuIdentity {
        vendor: "ISBOOT".into(),
        product: "test disk".into(),
        revision: "1".into(),
        serial: "serial42".into(),
        naa_id: 42,
    }
}

fn fixture_with(read_only: bool, removable: bool) -> Fixture {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..BLOCKS * SECTOR)
        .map(|i| (i / SECTOR) as u8 ^ 0x5A)
        .collect();
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    let dev = Arc::new(Recording {
        inner: RawFile::open(f.path(), read_only).unwrap(),
        log: StdMutex::new(Vec::new()),
    });
    let lu = LogicalUnit::new(dev.clone(), ident()).with_removable(removable);
    Fixture {
        _file: f,
        dev,
        t: TargetLus::single(Arc::new(lu)),
    }
}

fn fixture() -> Fixture {
    fixture_with(false, false)
}

fn nexus(id: u64, name: &str) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.2026-11.test:{name},i,0x00023d00000{id}"),
        target_port: "iqn.2026-11.test:target,t,0x0001".into(),
    }
}

impl Fixture {
    /// Plan, then execute with `data` as the Data-Out.
    fn run(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
        match self.t.plan(0, cdb) {
            Err(o) => o,
            Ok(p) => {
                let o = self.t.execute(n, 0, cdb, data);
                let len: usize = o.data.iter().map(|b| b.len()).sum();
                assert!(len as u64 <= p.bytes, "Data-In longer than planned");
                o
            }
        }
    }
    /// A nexus whose power-on unit attention has been consumed.
    fn ready(&self, id: u64, name: &str) -> Nexus {
        let n = nexus(id, name);
        let o = self.run(&n, &tur(), &[]);
        assert_eq!(sense(&o), (key::UNIT_ATTENTION, asc::POWER_ON_RESET));
        assert_eq!(self.run(&n, &tur(), &[]).status, status::GOOD);
        n
    }
    fn log(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.dev.log.lock().unwrap())
    }
}

fn sense(o: &Outcome) -> (u8, asc::Code) {
    assert_eq!(
        o.status,
        status::CHECK_CONDITION,
        "expected CHECK CONDITION, got {o:?}"
    );
    let s = o.sense.as_ref().expect("sense data");
    assert_eq!(s.len(), 18);
    assert_eq!(s[0] & 0x7F, 0x70, "fixed format, current");
    (s[2] & 0x0F, (s[12], s[13]))
}

fn good(o: &Outcome) -> Vec<u8> {
    assert_eq!(o.status, status::GOOD, "expected GOOD, got {o:?}");
    concat(&o.data)
}

fn tur() -> [u8; 6] {
    [op::TEST_UNIT_READY, 0, 0, 0, 0, 0]
}
fn rw10(opcode: u8, lba: u32, blocks: u16, flags: u8) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}
fn rw16(opcode: u8, lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [op::INQUIRY, evpd as u8, page, a[0], a[1], 0]
}
fn mode_sense6(page: u8, alloc: u8) -> [u8; 6] {
    [op::MODE_SENSE6, 0x08, page, 0, alloc, 0]
}
fn pr_in(sa: u8) -> [u8; 10] {
    [op::PR_IN, sa, 0, 0, 0, 0, 0, 0x40, 0x00, 0]
}
fn pr_out(sa: u8, kind: u8) -> [u8; 10] {
    [op::PR_OUT, sa, kind, 0, 0, 0, 0, 0, 24, 0]
}
fn pr_params(key: u64, sark: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p
}
fn block(b: u8) -> Vec<u8> {
    vec![b; SECTOR as usize]
}

#[test]
fn new_nexus_gets_power_on_unit_attention_once_but_not_on_inquiry() {
    let f = fixture();
    let n = nexus(1, "a");
    // INQUIRY neither reports nor clears it.
    let d = good(&f.run(&n, &inquiry(false, 0, 96), &[]));
    assert_eq!(d.len(), 96);
    let o = f.run(&n, &rw10(op::READ10, 0, 1, 0), &[]);
    assert_eq!(sense(&o), (key::UNIT_ATTENTION, asc::POWER_ON_RESET));
    good(&f.run(&n, &tur(), &[]));
    // A second nexus gets its own.
    f.ready(2, "b");
}

#[test]
fn request_sense_reports_and_clears_unit_attention() {
    let f = fixture();
    let n = nexus(1, "a");
    let d = good(&f.run(&n, &[op::REQUEST_SENSE, 0, 0, 0, 252, 0], &[]));
    assert_eq!(d.len(), 18);
    assert_eq!((d[2], d[12], d[13]), (key::UNIT_ATTENTION, 0x29, 0x00));
    let d = good(&f.run(&n, &[op::REQUEST_SENSE, 0, 0, 0, 8, 0], &[]));
    assert_eq!(d.len(), 8, "truncated to the allocation length");
    assert_eq!(d[2], key::NO_SENSE);
    good(&f.run(&n, &tur(), &[]));
    // Descriptor format is refused.
    let o = f.run(&n, &[op::REQUEST_SENSE, 1, 0, 0, 252, 0], &[]);
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn read_hands_back_zero_copy_segments_of_the_map() {
    let f = fixture();
    let n = f.ready(1, "a");
    let o = f.run(&n, &rw16(op::READ16, 3, 2, 0), &[]);
    assert_eq!(o.status, status::GOOD);
    assert_eq!(o.data.len(), 1);
    let map = f.dev.inner.map();
    assert_eq!(
        o.data[0].as_ptr(),
        map[3 * SECTOR as usize..].as_ptr(),
        "no copy"
    );
    let d = concat(&o.data);
    assert_eq!(d.len(), 1024);
    assert!(d[..512].iter().all(|&b| b == 3 ^ 0x5A));
    assert!(d[512..].iter().all(|&b| b == 4 ^ 0x5A));
}

#[test]
fn read_write_all_sizes_and_zero_length() {
    let f = fixture();
    let n = f.ready(1, "a");
    let cdb6 = [op::WRITE6, 0, 0, 10, 1, 0];
    good(&f.run(&n, &cdb6, &block(0x11)));
    let mut c12 = [0u8; 12];
    c12[0] = op::WRITE12;
    c12[5] = 11;
    c12[9] = 1;
    good(&f.run(&n, &c12, &block(0x22)));
    good(&f.run(&n, &rw16(op::WRITE16, 12, 1, 0), &block(0x33)));
    good(&f.run(&n, &rw10(op::WRITE10, 13, 1, 0), &block(0x44)));
    let d = good(&f.run(&n, &[op::READ6, 0, 0, 10, 4, 0], &[]));
    assert_eq!(d[0], 0x11);
    assert_eq!(d[512], 0x22);
    assert_eq!(d[1024], 0x33);
    assert_eq!(d[1536], 0x44);
    // Transfer length 0 is not an error for READ/WRITE(10/12/16).
    assert_eq!(
        f.t.plan(0, &rw10(op::READ10, 0, 0, 0)).ok(),
        Some(Plan {
            dir: DataDir::None,
            bytes: 0,
            nonblocking: false,
        })
    );
    assert!(good(&f.run(&n, &rw10(op::READ10, 0, 0, 0), &[])).is_empty());
    good(&f.run(&n, &rw16(op::WRITE16, BLOCKS, 0, 0), &[]));
    // READ(6) with length 0 means 256 blocks.
    assert_eq!(
        f.t.plan(0, &[op::READ6, 0, 0, 0, 0, 0]).ok(),
        Some(Plan {
            dir: DataDir::Read,
            bytes: 256 * SECTOR,
            nonblocking: true,
        })
    );
}

#[test]
fn out_of_range_is_refused_before_any_data_phase() {
    let f = fixture();
    for cdb in [
        rw16(op::READ16, BLOCKS - 1, 2, 0).to_vec(),
        rw16(op::WRITE16, u64::MAX, 1, 0).to_vec(),
        rw16(op::READ16, u64::MAX - 1, 4, 0).to_vec(),
        rw10(op::READ10, BLOCKS as u32 + 1, 0, 0).to_vec(),
        rw10(op::VERIFY10, BLOCKS as u32, 1, 0).to_vec(),
        rw16(op::PRE_FETCH16, BLOCKS, 1, 0).to_vec(),
        rw10(op::SYNC_CACHE10, 0x8000_0000, 1, 0).to_vec(),
        rw16(op::ORWRITE16, BLOCKS, 1, 0).to_vec(),
        vec![op::READ6, 0x1F, 0xFF, 0xFF, 1, 0],
    ] {
        let o = f.t.plan(0, &cdb).unwrap_err();
        assert_eq!(
            sense(&o),
            (key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE),
            "{cdb:02x?}"
        );
    }
}

#[test]
fn invalid_opcode_and_fields_have_pointers() {
    let f = fixture();
    let o = f.t.plan(0, &[0xC1, 0, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_OPCODE));
    let o = f.t.plan(0, &rw10(op::READ10, 0, 1, 0x20)).unwrap_err();
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
    let s = o.sense.unwrap();
    assert_eq!(
        (s[15], s[16], s[17]),
        (0xC8 | 5, 0, 1),
        "RDPROTECT at byte 1 bit 5"
    );
    // Unsupported VPD page.
    let o = f.t.plan(0, &inquiry(true, 0x86, 255)).map(|_| ()).err();
    assert!(o.is_none(), "plan does not validate the page");
    let n = f.ready(1, "a");
    let o = f.run(&n, &inquiry(true, 0x86, 255), &[]);
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
    // PR IN service actions 4..=31 are invalid, 0..=3 work.
    for sa in 0..32u8 {
        let r = f.t.plan(0, &pr_in(sa));
        assert_eq!(r.is_ok(), sa < 4, "service action {sa}");
        if sa < 4 {
            good(&f.run(&n, &pr_in(sa), &[]));
        }
    }
}

#[test]
fn write_protected_device() {
    let f = fixture_with(true, false);
    for cdb in [
        rw10(op::WRITE10, 0, 1, 0).to_vec(),
        rw16(op::WRITE16, 0, 1, 0).to_vec(),
        rw10(op::WRITE_VERIFY10, 0, 1, 0).to_vec(),
        rw10(op::WRITE_SAME10, 0, 1, 0).to_vec(),
        rw16(op::WRITE_SAME16, 0, 1, 0x08).to_vec(),
        rw16(op::ORWRITE16, 0, 1, 0).to_vec(),
        vec![op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        vec![op::WRITE6, 0, 0, 0, 1, 0],
    ] {
        let o = f.t.plan(0, &cdb).unwrap_err();
        assert_eq!(
            sense(&o),
            (key::DATA_PROTECT, asc::WRITE_PROTECTED),
            "{cdb:02x?}"
        );
    }
    let n = f.ready(1, "a");
    let d = good(&f.run(&n, &mode_sense6(0x3F, 255), &[]));
    assert_eq!(d[2] & 0x80, 0x80, "WP");
    let d = good(&f.run(&n, &rw16(op::SERVICE_ACTION_IN16, 0, 32, 0x10), &[]));
    assert_eq!(d[14] & 0xC0, 0, "no LBPME on a read-only unit");
    good(&f.run(&n, &rw10(op::READ10, 0, 1, 0), &[]));
}

#[test]
fn unknown_lun() {
    let f = fixture();
    let n = nexus(1, "a");
    let d = concat(&f.t.execute(&n, 5, &inquiry(false, 0, 96), &[]).data);
    assert_eq!(d[0], 0x7F, "PQ 011b, type 1Fh");
    let o = f.t.plan(5, &tur()).unwrap_err();
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED));
    let o = f.t.execute(&n, 5, &rw10(op::READ10, 0, 1, 0), &[]);
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED));
    let d = good(&f.t.execute(&n, 5, &[op::REQUEST_SENSE, 0, 0, 0, 18, 0], &[]));
    assert_eq!((d[2], d[12]), (key::ILLEGAL_REQUEST, 0x25));
    // REPORT LUNS to any LUN lists LUN 0.
    let rl = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    assert_eq!(
        f.t.plan(5, &rl).ok(),
        Some(Plan {
            dir: DataDir::Read,
            bytes: 256,
            nonblocking: false,
        })
    );
    let d = good(&f.t.execute(&n, 5, &rl, &[]));
    assert_eq!(d, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(!f.t.task_mgmt(&n, 5, TaskMgmt::LogicalUnitReset));
    assert!(f.t.task_mgmt(&n, 0, TaskMgmt::AbortTask));
}

#[test]
fn report_luns_encoding() {
    let f = fixture();
    let lu = f.t.get(0).unwrap().clone();
    let t = TargetLus::new(vec![(300, lu.clone()), (0, lu.clone()), (7, lu)]);
    let d = good(&t.execute(
        &nexus(1, "a"),
        0,
        &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ));
    assert_eq!(&d[..4], &24u32.to_be_bytes());
    assert_eq!(&d[8..10], &[0, 0]);
    assert_eq!(&d[16..18], &[0, 7]);
    assert_eq!(&d[24..26], &[0x41, 0x2C], "flat space addressing for 300");
    let o = t
        .plan(0, &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])
        .unwrap_err();
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn short_data_out_writes_only_whole_blocks_that_arrived() {
    let f = fixture();
    let n = f.ready(1, "a");
    good(&f.run(&n, &rw10(op::WRITE10, 0, 2, 0), &[b'a'; 1024]));
    // WRITE(10) of 2 blocks but only one block of Data-Out.
    good(&f.run(&n, &rw10(op::WRITE10, 0, 2, 0), &[b'b'; 512]));
    // One block asked, 200 bytes sent: nothing written.
    good(&f.run(&n, &rw10(op::WRITE10, 1, 1, 0), &[b'c'; 200]));
    // Extra Data-Out beyond the CDB length is ignored.
    good(&f.run(&n, &rw10(op::WRITE10, 5, 1, 0), &[b'd'; 1024]));
    let d = good(&f.run(&n, &rw10(op::READ10, 0, 6, 0), &[]));
    assert!(d[..512].iter().all(|&b| b == b'b'));
    assert!(d[512..1024].iter().all(|&b| b == b'a'));
    assert!(d[2560..3072].iter().all(|&b| b == b'd'));
    assert!(d[3072..].is_empty());
}

#[test]
fn fua_and_write_cache_control_durability() {
    let f = fixture();
    let n = f.ready(1, "a");
    f.log();
    good(&f.run(&n, &rw10(op::WRITE10, 0, 1, 0), &block(1)));
    good(&f.run(&n, &rw10(op::WRITE10, 0, 1, 0x08), &block(1)));
    good(&f.run(&n, &rw10(op::SYNC_CACHE10, 0, 0, 0), &[]));
    assert_eq!(f.log(), ["write", "write-durable", "flush"]);
    // Caching page: WCE=1 by default, changeable.
    let d = good(&f.run(&n, &mode_sense6(0x08, 255), &[]));
    assert_eq!(&d[4..7], &[0x08, 18, 0x04]);
    let mut page = d[4..24].to_vec();
    page[2] = 0;
    let mut list = vec![0, 0, 0, 0];
    list.extend_from_slice(&page);
    let sel = [op::MODE_SELECT6, 0x10, 0, 0, list.len() as u8, 0];
    assert_eq!(
        f.t.plan(0, &sel).ok(),
        Some(Plan {
            dir: DataDir::Write,
            bytes: 24,
            nonblocking: false,
        })
    );
    good(&f.run(&n, &sel, &list));
    let d = good(&f.run(&n, &mode_sense6(0x08, 255), &[]));
    assert_eq!(d[6], 0, "WCE now clear");
    f.log();
    good(&f.run(&n, &rw10(op::WRITE10, 0, 1, 0), &block(1)));
    assert_eq!(
        f.log(),
        ["write-durable"],
        "write cache off: every write durable"
    );
    // Other nexuses learn about the change.
    let m = nexus(2, "b");
    let _ = f.run(&m, &tur(), &[]); // power on
    f.ready(3, "c");
    good(&f.run(&n, &sel, &list)); // no change: no unit attention
    list[6] = 0x04;
    good(&f.run(&n, &sel, &list));
    assert_eq!(
        sense(&f.run(&m, &tur(), &[])),
        (key::UNIT_ATTENTION, asc::MODE_PARAMETERS_CHANGED)
    );
    good(&f.run(&n, &tur(), &[]));
    // Changing anything else is refused.
    list[6] = 0x05;
    let o = f.run(&n, &sel, &list);
    assert_eq!(
        sense(&o),
        (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST)
    );
    // A LUN reset restores the default (WCE=1).
    list[6] = 0;
    good(&f.run(&n, &sel, &list));
    assert!(f.t.task_mgmt(&n, 0, TaskMgmt::LogicalUnitReset));
    let d = good(&f.run(&n, &mode_sense6(0x08, 255), &[]));
    assert_eq!(d[6], 0x04);
}

#[test]
fn mode_sense_allocation_length_and_saved_values() {
    let f = fixture();
    let n = f.ready(1, "a");
    let d = good(&f.run(&n, &mode_sense6(0x3F, 4), &[]));
    assert_eq!(d.len(), 4);
    assert_eq!(
        d[0] as usize,
        3 + 20 + 12 + 12,
        "full length reported even when truncated"
    );
    let o = f.run(&n, &[op::MODE_SENSE6, 0, 0xC8, 0, 255, 0], &[]);
    assert_eq!(
        sense(&o),
        (key::ILLEGAL_REQUEST, asc::SAVING_PARAMETERS_NOT_SUPPORTED)
    );
    let d = good(&f.run(&n, &[op::MODE_SENSE10, 0, 0x0A, 0, 0, 0, 0, 0, 255, 0], &[]));
    assert_eq!(&d[6..8], &[0, 8], "block descriptor");
    assert_eq!(&d[16..18], &[0x0A, 10], "control page");
    assert_eq!(d[18] & 0x04, 0, "D_SENSE clear: fixed format sense");
}

#[test]
fn inquiry_pages() {
    let f = fixture();
    let n = nexus(1, "a");
    let d = good(&f.run(&n, &inquiry(false, 0, 255), &[]));
    assert_eq!(d.len(), 96);
    assert_eq!(d[4] as usize, d.len() - 5);
    for alloc in [0u16, 1, 5, 36, 95] {
        let d = good(&f.run(&n, &inquiry(false, 0, alloc), &[]));
        assert_eq!(d.len(), alloc as usize);
    }
    let pages = good(&f.run(&n, &inquiry(true, 0, 255), &[]));
    for &p in &pages[4..] {
        let d = good(&f.run(&n, &inquiry(true, p, 255), &[]));
        assert_eq!(d[1], p);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize + 4, d.len());
    }
    let d = good(&f.run(&n, &inquiry(true, 0x83, 255), &[]));
    let s = String::from_utf8_lossy(&d);
    assert!(s.contains("iqn.2026-11.test:target,t,0x0001"));
    let o = f.run(&n, &inquiry(false, 0x80, 255), &[]);
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn read_capacity() {
    let f = fixture();
    let n = f.ready(1, "a");
    let d = good(&f.run(&n, &rw10(op::READ_CAPACITY10, 0, 0, 0), &[]));
    assert_eq!(d, [0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    let d = good(&f.run(&n, &rw16(op::SERVICE_ACTION_IN16, 0, 32, 0x10), &[]));
    assert_eq!(&d[..12], &[0, 0, 0, 0, 0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    assert_eq!((d[12], d[13], d[14]), (0, 0, 0xC0), "LBPME, LBPRZ");
    let d = good(&f.run(&n, &rw16(op::SERVICE_ACTION_IN16, 0, 8, 0x10), &[]));
    assert_eq!(d.len(), 8);
    // READ CAPACITY(10) with PMI=0 and a non-zero LBA.
    let o = f.run(&n, &rw10(op::READ_CAPACITY10, 1, 0, 0), &[]);
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
}

#[test]
fn verify_compares_and_reports_miscompare_offset() {
    let f = fixture();
    let n = f.ready(1, "a");
    let mut data = vec![b'A'; 3 * 512];
    good(&f.run(&n, &rw10(op::WRITE10, 100, 3, 0), &data));
    // BYTCHK=0: medium verification only, no data.
    assert_eq!(
        f.t.plan(0, &rw10(op::VERIFY10, 100, 3, 0)).ok(),
        Some(Plan {
            dir: DataDir::None,
            bytes: 0,
            nonblocking: false,
        })
    );
    good(&f.run(&n, &rw10(op::VERIFY10, 100, 3, 0), &[]));
    good(&f.run(&n, &rw10(op::VERIFY10, 100, 3, 0x02), &data));
    data[3 * 512 - 27] = b'C';
    let o = f.run(&n, &rw16(op::VERIFY16, 100, 3, 0x02), &data);
    assert_eq!(sense(&o), (key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY));
    let s = o.sense.unwrap();
    assert_eq!(s[0], 0xF0);
    assert_eq!(
        u32::from_be_bytes(s[3..7].try_into().unwrap()),
        3 * 512 - 27
    );
    // BYTCHK=11b: one block compared with every block.
    good(&f.run(&n, &rw10(op::VERIFY10, 100, 3, 0x06), &block(b'A')));
    let o = f.run(&n, &rw10(op::VERIFY10, 100, 3, 0x06), &block(b'B'));
    assert_eq!(sense(&o).0, key::MISCOMPARE);
    // BYTCHK=10b is reserved.
    let o = f.t.plan(0, &rw10(op::VERIFY10, 100, 3, 0x04)).unwrap_err();
    assert_eq!(sense(&o), (key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB));
    // WRITE AND VERIFY writes durably.
    f.log();
    good(&f.run(&n, &rw10(op::WRITE_VERIFY10, 100, 1, 0x02), &block(b'V')));
    assert_eq!(f.log(), ["write-durable"]);
}

#[test]
fn compare_and_write() {
    let f = fixture();
    let n = f.ready(1, "a");
    good(&f.run(&n, &rw10(op::WRITE10, 0, 2, 0), &[b'A'; 1024]));
    let mut caw = [0u8; 16];
    caw[0] = op::COMPARE_AND_WRITE;
    caw[13] = 2;
    assert_eq!(
        f.t.plan(0, &caw).ok(),
        Some(Plan {
            dir: DataDir::Write,
            bytes: 2048,
            nonblocking: false,
        })
    );
    let mut buf = vec![b'A'; 1024];
    buf.extend_from_slice(&[b'B'; 1024]);
    good(&f.run(&n, &caw, &buf));
    let d = good(&f.run(&n, &rw10(op::READ10, 0, 2, 0), &[]));
    assert!(d.iter().all(|&b| b == b'B'));
    // Miscompare: nothing written, offset of the first difference in INFORMATION.
    buf[..1024].fill(b'B');
    buf[1024 - 27] = b'C';
    buf[1024..].fill(b'Z');
    let o = f.run(&n, &caw, &buf);
    assert_eq!(sense(&o), (key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY));
    assert_eq!(
        u32::from_be_bytes(o.sense.unwrap()[3..7].try_into().unwrap()),
        1024 - 27
    );
    let d = good(&f.run(&n, &rw10(op::READ10, 0, 2, 0), &[]));
    assert!(d.iter().all(|&b| b == b'B'));
    // Too long, past the end, short Data-Out.
    caw[13] = 129;
    assert_eq!(
        sense(&f.t.plan(0, &caw).unwrap_err()).1,
        asc::INVALID_FIELD_IN_CDB
    );
    caw[13] = 2;
    caw[2..10].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    assert_eq!(
        sense(&f.t.plan(0, &caw).unwrap_err()).1,
        asc::LBA_OUT_OF_RANGE
    );
    caw[2..10].copy_from_slice(&0u64.to_be_bytes());
    let o = f.run(&n, &caw, &buf[..1500]);
    assert_eq!(sense(&o).1, asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn compare_and_write_is_atomic_against_concurrent_callers() {
    let f = Arc::new(fixture());
    let n = f.ready(1, "a");
    good(&f.run(&n, &rw10(op::WRITE10, 7, 1, 0), &block(0)));
    let threads = 4;
    let per = 50;
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = f.clone();
            let n = Nexus { id: 1, ..n.clone() };
            s.spawn(move || {
                let mut done = 0;
                while done < per {
                    let cur = good(&f.run(&n, &rw10(op::READ10, 7, 1, 0), &[]));
                    let v = u32::from_le_bytes(cur[..4].try_into().unwrap());
                    let mut next = cur.clone();
                    next[..4].copy_from_slice(&(v + 1).to_le_bytes());
                    next[4] = t as u8;
                    let mut caw = [0u8; 16];
                    caw[0] = op::COMPARE_AND_WRITE;
                    caw[2..10].copy_from_slice(&7u64.to_be_bytes());
                    caw[13] = 1;
                    let mut buf = cur;
                    buf.extend_from_slice(&next);
                    let o = f.run(&n, &caw, &buf);
                    if o.status == status::GOOD {
                        done += 1;
                    } else {
                        assert_eq!(sense(&o).0, key::MISCOMPARE);
                    }
                }
            });
        }
    });
    let d = good(&f.run(&n, &rw10(op::READ10, 7, 1, 0), &[]));
    assert_eq!(
        u32::from_le_bytes(d[..4].try_into().unwrap()),
        threads * per
    );
}

#[test]
fn or_write() {
    let f = fixture();
    let n = f.ready(1, "a");
    good(&f.run(&n, &rw10(op::WRITE10, 9, 1, 0), &block(0x0F)));
    good(&f.run(&n, &rw16(op::ORWRITE16, 9, 1, 0), &block(0xF0)));
    let d = good(&f.run(&n, &rw10(op::READ10, 9, 1, 0), &[]));
    assert!(d.iter().all(|&b| b == 0xFF));
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    for (lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let l = (len as u16).to_be_bytes();
    [op::UNMAP, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

fn lba_status(f: &Fixture, n: &Nexus, lba: u64) -> (u64, u32, u8) {
    let mut c = rw16(op::SERVICE_ACTION_IN16, lba, 24, op::SA_GET_LBA_STATUS);
    c[10..14].copy_from_slice(&24u32.to_be_bytes());
    let d = good(&f.run(n, &c, &[]));
    assert_eq!(d.len(), 24);
    (
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        u32::from_be_bytes(d[16..20].try_into().unwrap()),
        d[20],
    )
}

#[test]
fn unmap_reads_back_zeros_and_get_lba_status() {
    let f = fixture();
    let n = f.ready(1, "a");
    good(&f.run(&n, &rw10(op::WRITE10, 0, 256, 0), &vec![b'a'; 256 * 512]));
    let (lba, _, state) = lba_status(&f, &n, 0);
    assert_eq!((lba, state), (0, 0), "written blocks are mapped");
    let p = unmap_list(&[(0, 3), (10, 1)]);
    good(&f.run(&n, &unmap_cdb(p.len()), &p));
    let d = good(&f.run(&n, &rw10(op::READ10, 0, 11, 0), &[]));
    assert!(d[..3 * 512].iter().all(|&b| b == 0));
    assert!(d[3 * 512..10 * 512].iter().all(|&b| b == b'a'));
    assert!(d[10 * 512..].iter().all(|&b| b == 0));
    assert_eq!(lba_status(&f, &n, 0), (0, 3, 1), "deallocated");
    assert_eq!(lba_status(&f, &n, 4), (4, 6, 0), "mapped");
    // Zero-length descriptors anywhere (even at the end), and no descriptors at all.
    let p = unmap_list(&[(BLOCKS, 0), (5, 0)]);
    good(&f.run(&n, &unmap_cdb(p.len()), &p));
    let p = unmap_list(&[]);
    good(&f.run(&n, &unmap_cdb(p.len()), &p));
    good(&f.run(&n, &unmap_cdb(0), &[]));
    // Past the end.
    let p = unmap_list(&[(BLOCKS - 1, 2)]);
    assert_eq!(
        sense(&f.run(&n, &unmap_cdb(p.len()), &p)).1,
        asc::LBA_OUT_OF_RANGE
    );
    // Truncated header.
    assert_eq!(
        sense(&f.run(&n, &unmap_cdb(4), &p[..4])).1,
        asc::PARAMETER_LIST_LENGTH_ERROR
    );
    // Too many descriptors.
    let many: Vec<(u64, u32)> = (0..1025).map(|i| (i, 0)).collect();
    let p = unmap_list(&many[..]);
    let mut p = p;
    p[0..2].copy_from_slice(&0u16.to_be_bytes());
    p[2..4].copy_from_slice(&((16 * 1025) as u16).to_be_bytes());
    assert_eq!(
        sense(&f.run(&n, &unmap_cdb(p.len()), &p)).1,
        asc::INVALID_FIELD_IN_PARAMETER_LIST
    );
    // GET LBA STATUS beyond the end.
    let mut c = rw16(
        op::SERVICE_ACTION_IN16,
        BLOCKS + 1,
        24,
        op::SA_GET_LBA_STATUS,
    );
    c[10..14].copy_from_slice(&24u32.to_be_bytes());
    assert_eq!(
        sense(&f.t.plan(0, &c).unwrap_err()).1,
        asc::LBA_OUT_OF_RANGE
    );
}

#[test]
fn write_same() {
    let f = fixture();
    let n = f.ready(1, "a");
    // Pattern.
    good(&f.run(&n, &rw10(op::WRITE_SAME10, 20, 5, 0), &block(0x77)));
    let d = good(&f.run(&n, &rw10(op::READ10, 20, 5, 0), &[]));
    assert!(d.iter().all(|&b| b == 0x77));
    // Larger than one chunk.
    good(&f.run(&n, &rw16(op::WRITE_SAME16, 0, 2100, 0), &block(0x12)));
    let d = good(&f.run(&n, &rw16(op::READ16, 0, 2100, 0), &[]));
    assert!(d.iter().all(|&b| b == 0x12));
    // UNMAP bit: zeros regardless of the pattern.
    good(&f.run(
        &n,
        &rw10(op::WRITE_SAME10, BLOCKS as u32 - 3, 3, 0x08),
        &block(0xFF),
    ));
    let d = good(&f.run(&n, &rw10(op::READ10, BLOCKS as u32 - 3, 3, 0), &[]));
    assert!(d.iter().all(|&b| b == 0));
    // NDOB: no Data-Out, zeros.
    assert_eq!(
        f.t.plan(0, &rw16(op::WRITE_SAME16, 20, 2, 0x01)).ok(),
        Some(Plan {
            dir: DataDir::None,
            bytes: 0,
            nonblocking: false,
        })
    );
    good(&f.run(&n, &rw16(op::WRITE_SAME16, 20, 2, 0x01), &[]));
    let d = good(&f.run(&n, &rw10(op::READ10, 20, 2, 0), &[]));
    assert!(d.iter().all(|&b| b == 0));
    // Zero blocks: through the last block.
    good(&f.run(
        &n,
        &rw10(op::WRITE_SAME10, BLOCKS as u32 - 4, 0, 0),
        &block(0x66),
    ));
    let d = good(&f.run(&n, &rw10(op::READ10, BLOCKS as u32 - 5, 5, 0), &[]));
    assert!(
        d[..512].iter().all(|&b| b != 0x66),
        "block before the range untouched"
    );
    assert!(d[512..].iter().all(|&b| b == 0x66));
    // The whole 4096-block device is within MAXIMUM WRITE SAME LENGTH.
    assert!(f.t.plan(0, &rw16(op::WRITE_SAME16, 0, 0, 0)).is_ok());
    // Errors: anchor, out of range, short block.
    assert_eq!(
        sense(
            &f.t.plan(0, &rw10(op::WRITE_SAME10, 0, 1, 0x18))
                .unwrap_err()
        )
        .1,
        asc::INVALID_FIELD_IN_CDB
    );
    assert_eq!(
        sense(
            &f.t.plan(0, &rw10(op::WRITE_SAME10, BLOCKS as u32 + 1, 0, 0))
                .unwrap_err()
        )
        .1,
        asc::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        sense(&f.run(&n, &rw10(op::WRITE_SAME10, 0, 1, 0), &[0; 256])).1,
        asc::INVALID_FIELD_IN_CDB
    );
}

#[test]
fn report_supported_opcodes_via_cdb() {
    let f = fixture();
    let n = f.ready(1, "a");
    let mut c = [0u8; 12];
    c[0] = op::MAINTENANCE_IN;
    c[1] = op::SA_REPORT_SUPPORTED_OPCODES;
    c[6..10].copy_from_slice(&65535u32.to_be_bytes());
    let d = good(&f.run(&n, &c, &[]));
    assert_eq!(
        u32::from_be_bytes(d[..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    assert_eq!((d.len() - 4) / 8, rsoc::TABLE.len());
    c[2] = 0x01;
    c[3] = op::WRITE16;
    let d = good(&f.run(&n, &c, &[]));
    assert_eq!(&d[..5], &[0, 3, 0, 16, op::WRITE16]);
    c[2] = 0x05;
    assert_eq!(
        sense(&f.t.plan(0, &c).unwrap_err()).1,
        asc::INVALID_FIELD_IN_CDB
    );
    // An unsupported MAINTENANCE IN service action points at byte 1 (read as "not
    // implemented" by initiators).
    c[1] = 0x0A;
    let s = f.t.plan(0, &c).unwrap_err().sense.unwrap();
    assert_eq!((s[12], s[16], s[17]), (0x24, 0, 1));
}

#[test]
fn reserve6_across_two_initiators() {
    let f = fixture();
    let a = f.ready(1, "a");
    let b = f.ready(2, "b");
    let reserve = [op::RESERVE6, 0, 0, 0, 0, 0];
    let release = [op::RELEASE6, 0, 0, 0, 0, 0];
    good(&f.run(&a, &reserve, &[]));
    good(&f.run(&a, &reserve, &[]));
    assert_eq!(
        f.run(&b, &reserve, &[]).status,
        status::RESERVATION_CONFLICT
    );
    good(&f.run(&b, &release, &[]));
    good(&f.run(&a, &mode_sense6(0x3F, 255), &[]));
    assert_eq!(
        f.run(&b, &mode_sense6(0x3F, 255), &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        f.run(&b, &rw10(op::READ10, 0, 1, 0), &[]).status,
        status::RESERVATION_CONFLICT
    );
    good(&f.run(&b, &inquiry(false, 0, 96), &[]));
    good(&f.run(&b, &tur(), &[]));
    good(&f.run(&a, &release, &[]));
    good(&f.run(&b, &reserve, &[]));
    // Logout of the holder releases it.
    f.t.nexus_gone(&b);
    good(&f.run(&a, &reserve, &[]));
    // A LUN reset releases it and tells the other nexuses.
    let c = f.ready(3, "c");
    assert!(f.t.task_mgmt(&a, 0, TaskMgmt::LogicalUnitReset));
    assert_eq!(
        sense(&f.run(&c, &reserve, &[])),
        (key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET)
    );
    good(&f.run(&c, &reserve, &[]));
    good(&f.run(&a, &tur(), &[]));
    assert_eq!(
        f.run(&a, &rw10(op::WRITE10, 0, 1, 0), &block(0)).status,
        status::RESERVATION_CONFLICT
    );
    // A target reset also drops it.
    assert!(f.t.task_mgmt(&a, 0, TaskMgmt::TargetWarmReset));
    assert_eq!(
        sense(&f.run(&c, &tur(), &[])),
        (key::UNIT_ATTENTION, asc::POWER_ON_RESET)
    );
    good(&f.run(&a, &reserve, &[]));
}

#[test]
fn persistent_reservation_access_and_unit_attentions() {
    let f = fixture();
    let a = f.ready(1, "a");
    let b = f.ready(2, "b");
    assert_eq!(
        f.t.plan(0, &pr_out(0, 0)).ok(),
        Some(Plan {
            dir: DataDir::Write,
            bytes: 24,
            nonblocking: false,
        })
    );
    good(&f.run(&a, &pr_out(6, 0), &pr_params(0, 0xA)));
    good(&f.run(&b, &pr_out(6, 0), &pr_params(0, 0xB)));
    let d = good(&f.run(&a, &pr_in(0), &[]));
    assert_eq!(&d[4..8], &16u32.to_be_bytes());
    // Write Exclusive - Registrants Only held by A.
    good(&f.run(&a, &pr_out(1, 5), &pr_params(0xA, 0)));
    let d = good(&f.run(&b, &pr_in(1), &[]));
    assert_eq!((&d[8..16], d[21]), (&0xAu64.to_be_bytes()[..], 5));
    good(&f.run(&b, &rw10(op::WRITE10, 1, 1, 0), &block(1)));
    // An unregistered nexus can read but not write.
    let c = f.ready(3, "c");
    good(&f.run(&c, &rw10(op::READ10, 1, 1, 0), &[]));
    assert_eq!(
        f.run(&c, &rw10(op::WRITE10, 1, 1, 0), &block(1)).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        f.run(&c, &rw10(op::SYNC_CACHE10, 0, 0, 0), &[]).status,
        status::RESERVATION_CONFLICT
    );
    good(&f.run(&c, &rw10(op::READ_CAPACITY10, 0, 0, 0), &[]));
    assert_eq!(
        f.run(&c, &[op::RESERVE6, 0, 0, 0, 0, 0], &[]).status,
        status::RESERVATION_CONFLICT
    );
    // Wrong reservation key.
    assert_eq!(
        f.run(&b, &pr_out(1, 5), &pr_params(0xA, 0)).status,
        status::RESERVATION_CONFLICT
    );
    // Bad parameter list length.
    let mut short = pr_out(0, 0);
    short[8] = 20;
    assert_eq!(
        sense(&f.run(&a, &short, &[0; 20])).1,
        asc::PARAMETER_LIST_LENGTH_ERROR
    );
    // A releases: the other registrant (B) gets RESERVATIONS RELEASED, A and C do not.
    good(&f.run(&a, &pr_out(2, 5), &pr_params(0xA, 0)));
    good(&f.run(&a, &tur(), &[]));
    good(&f.run(&c, &tur(), &[]));
    assert_eq!(
        sense(&f.run(&b, &tur(), &[])),
        (key::UNIT_ATTENTION, asc::RESERVATIONS_RELEASED)
    );
    good(&f.run(&b, &tur(), &[]));
    // Exclusive Access by A: registered B can neither read nor write; PR IN still works.
    good(&f.run(&a, &pr_out(1, 3), &pr_params(0xA, 0)));
    assert_eq!(
        f.run(&b, &rw10(op::READ10, 1, 1, 0), &[]).status,
        status::RESERVATION_CONFLICT
    );
    good(&f.run(&b, &pr_in(1), &[]));
    good(&f.run(&b, &inquiry(false, 0, 36), &[]));
    // B preempts A: A's registration goes, A gets REGISTRATIONS PREEMPTED.
    good(&f.run(&b, &pr_out(4, 3), &pr_params(0xB, 0xA)));
    assert_eq!(
        sense(&f.run(&a, &tur(), &[])),
        (key::UNIT_ATTENTION, asc::REGISTRATIONS_PREEMPTED)
    );
    assert_eq!(
        f.run(&a, &rw10(op::READ10, 1, 1, 0), &[]).status,
        status::RESERVATION_CONFLICT
    );
    // Registrations survive logout; CLEAR removes everything.
    f.t.nexus_gone(&b);
    let b2 = Nexus { id: 4, ..b.clone() };
    let _ = f.run(&b2, &tur(), &[]); // power on unit attention
    let d = good(&f.run(&b2, &pr_in(0), &[]));
    assert_eq!(&d[4..16], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xB]);
    good(&f.run(&b2, &pr_out(3, 0), &pr_params(0xB, 0)));
    good(&f.run(&a, &rw10(op::WRITE10, 1, 1, 0), &block(2)));
    let d = good(&f.run(&a, &pr_in(0), &[]));
    assert_eq!(&d[4..8], &[0, 0, 0, 0]);
}

#[test]
fn removable_medium_eject_and_prevent() {
    let f = fixture_with(false, true);
    let n = f.ready(1, "a");
    let d = good(&f.run(&n, &inquiry(false, 0, 96), &[]));
    assert_eq!(d[1], 0x80, "RMB");
    let eject = [op::START_STOP_UNIT, 1, 0, 0, 0x02, 0];
    let load = [op::START_STOP_UNIT, 1, 0, 0, 0x03, 0];
    good(&f.run(&n, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], &[]));
    let o = f.run(&n, &eject, &[]);
    assert_eq!(
        sense(&o),
        (key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED)
    );
    good(&f.run(&n, &[op::PREVENT_ALLOW, 0, 0, 0, 0, 0], &[]));
    good(&f.run(&n, &eject, &[]));
    for cdb in [
        tur().to_vec(),
        rw10(op::READ10, 0, 1, 0).to_vec(),
        rw10(op::READ_CAPACITY10, 0, 0, 0).to_vec(),
    ] {
        assert_eq!(
            sense(&f.run(&n, &cdb, &[])),
            (key::NOT_READY, asc::MEDIUM_NOT_PRESENT)
        );
    }
    let d = good(&f.run(&n, &[op::REQUEST_SENSE, 0, 0, 0, 18, 0], &[]));
    assert_eq!((d[2], d[12]), (key::NOT_READY, 0x3A));
    good(&f.run(&n, &inquiry(false, 0, 96), &[]));
    good(&f.run(&n, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], &[]));
    let o = f.run(&n, &load, &[]);
    assert_eq!(
        sense(&o),
        (key::ILLEGAL_REQUEST, asc::MEDIUM_REMOVAL_PREVENTED)
    );
    good(&f.run(&n, &[op::PREVENT_ALLOW, 0, 0, 0, 0, 0], &[]));
    good(&f.run(&n, &load, &[]));
    good(&f.run(&n, &tur(), &[]));
    // Power condition changes do nothing.
    good(&f.run(&n, &[op::START_STOP_UNIT, 1, 0, 0, 0x12, 0], &[]));
    good(&f.run(&n, &tur(), &[]));
    // Prevention is dropped with the nexus.
    good(&f.run(&n, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], &[]));
    f.t.nexus_gone(&n);
    let m = f.ready(2, "b");
    good(&f.run(&m, &eject, &[]));
}

#[test]
fn non_removable_stop_flushes_but_stays_ready() {
    let f = fixture();
    let n = f.ready(1, "a");
    f.log();
    good(&f.run(&n, &[op::START_STOP_UNIT, 0, 0, 0, 0x02, 0], &[]));
    assert_eq!(f.log(), ["flush"]);
    good(&f.run(&n, &tur(), &[]));
    good(&f.run(&n, &rw10(op::READ10, 0, 1, 0), &[]));
}

#[test]
fn fast_path_sees_new_reservations_and_unit_attentions() {
    let f = fixture();
    let a = f.ready(1, "a");
    // Several commands from the same nexus: the lock-free path is in use.
    for _ in 0..3 {
        good(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]));
    }
    let b = f.ready(2, "b");
    good(&f.run(&b, &[op::RESERVE6, 0, 0, 0, 0, 0], &[]));
    assert_eq!(
        f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]).status,
        status::RESERVATION_CONFLICT
    );
    good(&f.run(&b, &[op::RELEASE6, 0, 0, 0, 0, 0], &[]));
    good(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]));
    // A reset by B reaches A even though A was on the fast path.
    assert!(f.t.task_mgmt(&b, 0, TaskMgmt::LogicalUnitReset));
    good(&f.run(&b, &rw10(op::READ10, 0, 1, 0), &[]));
    let o = f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]);
    assert_eq!(sense(&o), (key::UNIT_ATTENTION, asc::BUS_DEVICE_RESET));
    good(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]));
}

#[test]
fn nexus_gone_drops_pending_unit_attentions() {
    let f = fixture();
    let a = f.ready(1, "a");
    let b = f.ready(2, "b");
    assert!(f.t.task_mgmt(&a, 0, TaskMgmt::LogicalUnitReset));
    f.t.nexus_gone(&b);
    // The same ids never come back, but a new nexus starts with only the power-on UA.
    let c = nexus(3, "b");
    assert_eq!(
        sense(&f.run(&c, &tur(), &[])),
        (key::UNIT_ATTENTION, asc::POWER_ON_RESET)
    );
    good(&f.run(&c, &tur(), &[]));
    // The issuer of the reset is not told.
    good(&f.run(&a, &tur(), &[]));
}

#[test]
fn target_reset_reaches_every_logical_unit() {
    let f = fixture();
    let mut g = tempfile::NamedTempFile::new().unwrap();
    g.write_all(&vec![0u8; 64 * 1024]).unwrap();
    g.flush().unwrap();
    let dev1: Arc<dyn BlockDevice> = Arc::new(RawFile::open(g.path(), false).unwrap());
    let lu0 = f.t.get(0).unwrap().clone();
    let lu1 = Arc::new(LogicalUnit::new(dev1, ident()));
    let t = TargetLus::new(vec![(0, lu0), (1, lu1)]);
    let a = nexus(1, "a");
    let b = nexus(2, "b");
    for lun in [0, 1] {
        for n in [&a, &b] {
            let _ = t.execute(n, lun, &tur(), &[]);
            assert_eq!(t.execute(n, lun, &tur(), &[]).status, status::GOOD);
        }
    }
    // Capacity is per unit.
    let d = good(&t.execute(&a, 1, &rw10(op::READ_CAPACITY10, 0, 0, 0), &[]));
    assert_eq!(&d[..4], &127u32.to_be_bytes());
    assert!(
        t.task_mgmt(&a, 7, TaskMgmt::TargetColdReset),
        "target-wide, any LUN"
    );
    for lun in [0, 1] {
        assert_eq!(
            t.execute(&a, lun, &tur(), &[]).status,
            status::GOOD,
            "not the issuer"
        );
        assert_eq!(
            sense(&t.execute(&b, lun, &tur(), &[])),
            (key::UNIT_ATTENTION, asc::POWER_ON_RESET)
        );
    }
}

#[test]
fn get_lba_status_respects_allocation_length() {
    let f = fixture();
    let n = f.ready(1, "a");
    // Alternate written and unmapped blocks: many descriptors.
    for lba in (0..16u64).step_by(2) {
        let p = unmap_list(&[(lba, 1)]);
        good(&f.run(&n, &unmap_cdb(p.len()), &p));
    }
    let mut c = rw16(op::SERVICE_ACTION_IN16, 0, 0, op::SA_GET_LBA_STATUS);
    c[10..14].copy_from_slice(&(8u32 + 16 * 4).to_be_bytes());
    let d = good(&f.run(&n, &c, &[]));
    assert_eq!(d.len(), 8 + 16 * 4);
    assert_eq!(&d[..4], &(4u32 + 16 * 4).to_be_bytes());
    for i in 0..4 {
        let desc = &d[8 + 16 * i..24 + 16 * i];
        assert_eq!(u64::from_be_bytes(desc[..8].try_into().unwrap()), i as u64);
        assert_eq!(&desc[8..12], &1u32.to_be_bytes());
        assert_eq!(desc[12], if i % 2 == 0 { 1 } else { 0 });
    }
}

#[test]
fn lock_free_path_is_per_nexus() {
    let f = fixture();
    let lu = f.t.get(0).unwrap().clone();
    let a = f.ready(1, "a");
    good(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]));
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), a.id);
    // An idle nexus with a pending unit attention does not slow `a` down.
    let idle = nexus(2, "idle");
    good(&f.run(&idle, &inquiry(false, 0, 36), &[]));
    good(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]));
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), a.id);
    // A reservation closes the lock-free path for everyone, including its holder.
    good(&f.run(&a, &[op::RESERVE6, 0, 0, 0, 0, 0], &[]));
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), exec::NO_FAST_NEXUS);
    good(&f.run(&a, &[op::RELEASE6, 0, 0, 0, 0, 0], &[]));
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), a.id);
    // A unit attention for `a` closes it until reported.
    assert!(f.t.task_mgmt(&idle, 0, TaskMgmt::LogicalUnitReset));
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), exec::NO_FAST_NEXUS);
    assert_eq!(
        sense(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[])).0,
        key::UNIT_ATTENTION
    );
    good(&f.run(&a, &rw10(op::READ10, 0, 1, 0), &[]));
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), a.id);
    f.t.nexus_gone(&a);
    assert_eq!(lu.fast_nexus.load(Ordering::Acquire), exec::NO_FAST_NEXUS);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cdb_strategy() -> impl Strategy<Value = Vec<u8>> {
        let opcodes: Vec<u8> = rsoc::TABLE
            .iter()
            .map(|c| c.opcode)
            .chain([0x00, 0xFF, 0x7F])
            .collect();
        (
            proptest::sample::select(opcodes),
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(op, mut rest)| {
                // Keep lengths small most of the time so commands reach execution.
                for (i, b) in rest.iter_mut().enumerate() {
                    if i >= 1 && i % 3 == 0 {
                        *b &= 0x03;
                    }
                }
                let mut c = vec![op];
                c.append(&mut rest);
                c
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]
        #[test]
        fn any_cdb_and_data_out_is_answered_without_panic(
            cdb in cdb_strategy(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            nexus_id in 1u64..4,
            lun in 0u64..2,
        ) {
            // One device for all cases: state (reservations, mode pages, unit attentions)
            // carries over between commands as it would in a session.
            static SHARED: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
            let f = SHARED.get_or_init(fixture);
            let n = nexus(nexus_id, "fuzz");
            let o = match f.t.plan(lun, &cdb) {
                Err(o) => o,
                Ok(p) => {
                    let o = f.t.execute(&n, lun, &cdb, &data);
                    let len: usize = o.data.iter().map(|b| b.len()).sum();
                    prop_assert!(len as u64 <= p.bytes);
                    o
                }
            };
            prop_assert_eq!(o.sense.is_some(), o.status == status::CHECK_CONDITION);
            if let Some(s) = &o.sense {
                prop_assert_eq!(s.len(), 18);
                prop_assert_eq!(s[0] & 0x7F, 0x70);
            }
        }
    }
}

#[test]
fn read_defect_data_is_an_empty_list() {
    let f = fixture();
    let n = f.ready(1, "a");
    let d = good(&f.run(
        &n,
        &[op::READ_DEFECT_DATA10, 0, 0x1D, 0, 0, 0, 0, 0, 32, 0],
        &[],
    ));
    assert_eq!(d, [0, 0x1D, 0, 0]);
    let d = good(&f.run(
        &n,
        &[op::READ_DEFECT_DATA12, 0x08, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    ));
    assert_eq!(d, [0, 0x08, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn only_plain_reads_through_a_mapped_device_are_planned_nonblocking() {
    let f = fixture();
    let plan = |cdb: &[u8]| f.t.plan(0, cdb).unwrap();
    assert!(plan(&rw10(op::READ10, 0, 8, 0)).nonblocking);
    assert!(plan(&rw16(op::READ16, 0, 8, 0)).nonblocking);
    assert!(plan(&[op::READ6, 0, 0, 0, 1, 0]).nonblocking);
    assert!(!plan(&rw10(op::WRITE10, 0, 8, 0)).nonblocking);
    assert!(!plan(&inquiry(false, 0, 96)).nonblocking);
    assert!(!plan(&[op::SYNC_CACHE10, 0, 0, 0, 0, 0, 0, 0, 0, 0]).nonblocking);
    // An overlay whose file cannot be mapped (the crash tests' in-memory file) reads its
    // data blocks with pread: it blocks, so its reads go to a pool.
    let base = Arc::new(
        crate::store::base::BaseImage::from_bytes(
            bytes::Bytes::from(vec![0u8; (BLOCKS * SECTOR) as usize]),
            crate::store::base::BaseId([1; 16]),
            1,
        )
        .unwrap(),
    );
    let file = Arc::new(crate::store::fault::FaultyFile::new(1));
    let ov = crate::store::overlay::Overlay::create(file, base, 4096).unwrap();
    let t = TargetLus::single(Arc::new(LogicalUnit::new(Arc::new(ov), ident())));
    let p = t.plan(0, &rw10(op::READ10, 0, 8, 0)).unwrap();
    assert_eq!((p.dir, p.nonblocking), (DataDir::Read, false));
}

/// The asynchronous path of a [`Recording`] device: each operation is done on the file when it
/// is started, and its future is ready at once (the routing is what these tests check; the
/// real asynchronous device, Ceph RBD, is tested in `store::rbd` and `tests/cli_rbd.rs`).
impl AsyncBlockDevice for Recording {
    fn read_at(&self, offset: u64, len: usize) -> crate::store::IoFuture<Vec<u8>> {
        let mut segs = Vec::new();
        let r = self.read(offset, len, &mut segs).map(|()| concat(&segs));
        Box::pin(std::future::ready(r))
    }
    fn write_at(&self, offset: u64, data: Bytes, durable: bool) -> crate::store::IoFuture<()> {
        Box::pin(std::future::ready(self.write(offset, &data, durable)))
    }
    fn flush_all(&self) -> crate::store::IoFuture<()> {
        Box::pin(std::future::ready(self.flush()))
    }
    fn zero_at(&self, offset: u64, len: u64) -> crate::store::IoFuture<()> {
        Box::pin(std::future::ready(self.discard(offset, len)))
    }
    fn write_same_at(&self, offset: u64, len: u64, pattern: Vec<u8>) -> crate::store::IoFuture<()> {
        let data = pattern.repeat(len as usize / pattern.len().max(1));
        Box::pin(std::future::ready(self.write(offset, &data, false)))
    }
}

/// Run `cdb` the way the service does for a unit with an asynchronous path.
fn run_async_route(t: &TargetLus, n: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
    let data = Bytes::copy_from_slice(data);
    match t.start_async(n, 0, cdb, &data) {
        Start::Done(o) => o,
        Start::Blocking => t.execute(n, 0, cdb, &data),
        Start::Io(io) => {
            let dev = io.device().clone();
            let fut = match io.op().clone() {
                DeviceOp::Read { offset, len } => dev.read_at(offset, len),
                DeviceOp::Write {
                    offset,
                    data,
                    durable,
                } => ready_vec(dev.write_at(offset, data, durable)),
                DeviceOp::Flush => ready_vec(dev.flush_all()),
                DeviceOp::Zero { ranges } => {
                    let r = ranges.iter().try_for_each(|&(o, l)| now(dev.zero_at(o, l)));
                    Box::pin(std::future::ready(r.map(|()| Vec::new())))
                }
                DeviceOp::WriteSame {
                    offset,
                    len,
                    pattern,
                } => ready_vec(dev.write_same_at(offset, len, pattern)),
            };
            io.finish(now(fut))
        }
    }
}

fn ready_vec(f: crate::store::IoFuture<()>) -> crate::store::IoFuture<Vec<u8>> {
    Box::pin(std::future::ready(now(f).map(|()| Vec::new())))
}

/// The result of a future that is ready at once.
fn now<T>(mut f: crate::store::IoFuture<T>) -> Result<T, StoreError> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => panic!("the test device's futures are ready at once"),
    }
}

/// The data-transfer commands answer the same on the asynchronous route as on the blocking
/// path, errors included (unit attention, out of range, bad UNMAP lists, short WRITE SAME
/// data, COMPARE AND WRITE on the blocking path in between), and leave the same disk.
#[test]
fn rbd_async_route_answers_like_the_blocking_path() {
    let plain = fixture();
    let routed = fixture();
    let routed_lu = LogicalUnit::new(routed.dev.clone(), ident()).with_async(routed.dev.clone());
    let routed_t = TargetLus::single(Arc::new(routed_lu));
    let n = nexus(1, "a");
    let mut caw = rw16(op::COMPARE_AND_WRITE, 40, 0, 0);
    caw[13] = 1;
    let mut caw_data = vec![40u8 ^ 0x5A; 512];
    caw_data.extend_from_slice(&[0xC4; 512]);
    let script: Vec<(Vec<u8>, Vec<u8>)> = vec![
        // The power-on unit attention comes first on either route.
        (rw10(op::READ10, 0, 8, 0).to_vec(), vec![]),
        (rw10(op::READ10, 0, 8, 0).to_vec(), vec![]),
        (rw10(op::READ10, 0, 0, 0).to_vec(), vec![]),
        (rw16(op::READ16, BLOCKS - 1, 2, 0).to_vec(), vec![]),
        (rw10(op::WRITE10, 8, 4, 0).to_vec(), vec![0xA1; 4 * 512]),
        (rw10(op::WRITE10, 12, 4, 0x08).to_vec(), vec![0xA2; 4 * 512]),
        // A short Data-Out writes the whole blocks that arrived.
        (
            rw10(op::WRITE10, 20, 4, 0).to_vec(),
            vec![0xA3; 2 * 512 + 100],
        ),
        (rw10(op::WRITE_VERIFY10, 30, 1, 0).to_vec(), vec![0xA4; 512]),
        (rw16(op::WRITE16, BLOCKS, 1, 0).to_vec(), vec![0; 512]),
        (vec![op::SYNC_CACHE10, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![]),
        (rw10(op::WRITE_SAME10, 100, 16, 0).to_vec(), vec![0x5E; 512]),
        (rw10(op::WRITE_SAME10, 120, 16, 0).to_vec(), vec![0; 512]),
        (
            rw10(op::WRITE_SAME10, 140, 16, 0x08).to_vec(),
            vec![0x77; 512],
        ),
        (rw10(op::WRITE_SAME10, 160, 16, 0).to_vec(), vec![0x5E; 100]),
        (
            unmap_cdb(40).to_vec(),
            unmap_list(&[(200, 8), (300, 0), (400, 3)]),
        ),
        (unmap_cdb(24).to_vec(), unmap_list(&[(BLOCKS - 1, 2)])),
        (unmap_cdb(4).to_vec(), vec![0; 4]),
        (unmap_cdb(0).to_vec(), vec![]),
        (caw.to_vec(), caw_data.clone()),
        (caw.to_vec(), caw_data),
        (inquiry(false, 0, 36).to_vec(), vec![]),
        (rw10(op::READ10, 0, 512, 0).to_vec(), vec![]),
    ];
    for (cdb, data) in &script {
        let a = plain.run(&n, cdb, data);
        let b = run_async_route(&routed_t, &n, cdb, data);
        assert_eq!(
            (a.status, &a.sense, concat(&a.data)),
            (b.status, &b.sense, concat(&b.data)),
            "CDB {cdb:02x?}"
        );
    }
    let all = |f: &Fixture| {
        let mut segs = Vec::new();
        f.dev
            .read(0, (BLOCKS * SECTOR) as usize, &mut segs)
            .unwrap();
        concat(&segs)
    };
    assert!(all(&plain) == all(&routed), "the disks differ");
    // Only the data-transfer commands take the asynchronous route; a unit without one never.
    let d = Bytes::new();
    let io = |t: &TargetLus, cdb: &[u8]| matches!(t.start_async(&n, 0, cdb, &d), Start::Io(_));
    assert!(io(&routed_t, &rw10(op::READ10, 0, 8, 0)));
    assert!(!io(&routed_t, &inquiry(false, 0, 36)));
    assert!(!io(&plain.t, &rw10(op::READ10, 0, 8, 0)));
}

/// A write on the asynchronous route while COMPARE AND WRITE holds the unit's I/O lock goes to
/// the blocking path (which waits for the lock); once the lock is free it takes the route.
#[test]
fn rbd_async_write_during_compare_and_write_takes_the_blocking_path() {
    let f = fixture();
    let lu = Arc::new(LogicalUnit::new(f.dev.clone(), ident()).with_async(f.dev.clone()));
    let t = TargetLus::single(lu.clone());
    let n = nexus(1, "a");
    let data = Bytes::from(vec![1u8; 512]);
    let cdb = rw10(op::WRITE10, 0, 1, 0);
    // The first command of this nexus on the new unit reports its unit attention.
    assert!(matches!(t.start_async(&n, 0, &cdb, &data), Start::Done(_)));
    {
        let _exclusive = lu.io.write().unwrap();
        assert!(matches!(t.start_async(&n, 0, &cdb, &data), Start::Blocking));
    }
    let Start::Io(io) = t.start_async(&n, 0, &cdb, &data) else {
        panic!("no asynchronous route once the lock is free");
    };
    // Its hold is counted until it finishes.
    assert_eq!(*lu.in_flight.writes.lock().unwrap(), 1);
    assert_eq!(io.finish(Ok(Vec::new())).status, status::GOOD);
    assert_eq!(*lu.in_flight.writes.lock().unwrap(), 0);
}
