//! Cost of the frame codec on the two hot paths: heartbeats and pushes.
//!
//! `cargo bench -p tether-proto --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tether_proto::{decode, encode, Frame, Ping, Push, DEFAULT_MAX_FRAME};

fn bench(c: &mut Criterion, name: &str, frame: Frame) {
    let mut wire = BytesMut::new();
    encode(&frame, &mut wire).expect("bench frames are within bounds");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            encode(black_box(&frame), &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.bench_function("decode", |b| {
        // A receive buffer that is refilled in place, as a connection's read buffer is.
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&wire);
            black_box(decode(&mut buf, DEFAULT_MAX_FRAME).unwrap())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench(c, "ping", Frame::Ping(Ping { lease_ms: 240_000 }));
    bench(
        c,
        "push_100b",
        Frame::Push(Push {
            id: 1 << 40,
            payload: Bytes::from(vec![0x5a; 100]),
        }),
    );
}

criterion_group!(benches, codec);
criterion_main!(benches);
