//! Decode and encode of the PDUs on the hot path: SCSI Command, Data-In, Data-Out, with and
//! without CRC32C digests.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isboot::wire::frame::{self, FrameLimits};
use isboot::wire::pdu::{Bhs, DataIn, DataOut, RESERVED_TAG, ScsiCommand};
use std::hint::black_box;

fn limits(digests: bool) -> FrameLimits {
    FrameLimits {
        max_data: 1 << 20,
        header_digest: digests,
        data_digest: digests,
    }
}

fn scsi_command() -> Bhs {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[13] = 8;
    Bhs::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: 1,
        lun: 0,
        itt: 42,
        expected_len: 4096,
        cmd_sn: 7,
        exp_stat_sn: 9,
        cdb,
        ext_cdb: Vec::new(),
        bidi_read_len: None,
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pdu");
    for digests in [false, true] {
        let tag = if digests { "crc32c" } else { "plain" };
        let lim = limits(digests);
        // SCSI Command: decode from a stream buffer.
        let (h, ahs) = scsi_command().emit(0);
        let mut wire = BytesMut::new();
        frame::encode(&mut wire, &h, &ahs, &[], &lim);
        let wire = wire.freeze();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("decode_scsi_command/{tag}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let raw = frame::decode(&mut buf, &lim).unwrap().unwrap();
                black_box(Bhs::parse(&raw.bhs, &raw.ahs).unwrap())
            })
        });
        g.bench_function(format!("encode_scsi_command/{tag}"), |b| {
            let mut out = BytesMut::with_capacity(128);
            b.iter(|| {
                out.clear();
                let (h, ahs) = scsi_command().emit(0);
                frame::encode(&mut out, &h, &ahs, &[], &lim);
                black_box(out.len())
            })
        });
        for size in [8192usize, 262144] {
            let data = Bytes::from(vec![0x5au8; size]);
            g.throughput(Throughput::Bytes(size as u64));
            // Data-Out: decode (the target's receive path).
            let dout = Bhs::DataOut(DataOut {
                final_: true,
                lun: 0,
                itt: 1,
                ttt: 5,
                exp_stat_sn: 1,
                data_sn: 0,
                buffer_offset: 0,
            });
            let (h, _) = dout.emit(size as u32);
            let mut wire = BytesMut::new();
            frame::encode(&mut wire, &h, &[], &data, &lim);
            let wire = wire.freeze();
            g.bench_function(format!("decode_data_out/{size}/{tag}"), |b| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    let raw = frame::decode(&mut buf, &lim).unwrap().unwrap();
                    black_box(Bhs::parse(&raw.bhs, &raw.ahs).unwrap())
                })
            });
            // Data-In: encode header + trailer around zero-copy data (the target's send path).
            let din = Bhs::DataIn(DataIn {
                final_: true,
                ack: false,
                overflow: false,
                underflow: false,
                status_present: true,
                status: 0,
                lun: 0,
                itt: 1,
                ttt: RESERVED_TAG,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
                data_sn: 0,
                buffer_offset: 0,
                residual: 0,
            });
            let segs = vec![data.clone()];
            g.bench_function(format!("encode_data_in/{size}/{tag}"), |b| {
                let mut out = BytesMut::with_capacity(64);
                b.iter(|| {
                    out.clear();
                    let (h, _) = din.emit(size as u32);
                    frame::encode_header(&mut out, &h, &[], digests);
                    black_box(frame::data_trailer(&segs, digests))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
