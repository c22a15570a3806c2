//! Microbenchmarks of the binary protocol: what it costs to build, find and read frames,
//! without sockets. The parsing cases are what a connection does for every request frame,
//! the encoding and result cases what a client does.
//!
//! How to run:
//!
//! - `cargo bench --bench protocol [filter]`: full mode, optimized. Each case (or only those
//!   whose name contains `filter`) runs one discarded warm-up sample, then samples of 2^20
//!   iterations until about 2 s have been measured (at least 3), and prints the median
//!   sample as `case  ns/op  Mops/s  iterations` (iterations: all measured samples).
//! - `cargo test --benches` (CI): tiny mode. Every case runs once with 4096 iterations in
//!   the unoptimized test build, and its assertions still hold. The numbers printed then are
//!   not measurements; the point is that the benchmark cannot rot.
//!
//! How it works: a sample prepares its input (records, a buffer of pipelined frames) outside
//! the timed region, times `n` iterations with `Instant`, and afterwards checks what it
//! produced or read: encoded buffers are parsed back and compared with the records that
//! went in, decoded fields are summed and compared with the sums expected. Inputs go through
//! `black_box` so that the compiler cannot hoist the work out of the loop.
//!
//! The cases, and what one iteration is:
//!
//! - `header_encode`, `header_decode`: one 32-byte header (`Header::encode`,
//!   `decode_header`, which checks magic, version, opcode and reserved bytes).
//! - `encode_batch_1op`, `encode_batch_64op`: one reserve record, appended with
//!   `encode_batch` in frames of 1 or 64 records to a 64 KiB output buffer that is cleared
//!   when full (as a client fills its socket buffer).
//! - `next_frame_1op`, `next_frame_64op`: one frame found and checked by `next_frame` in a
//!   64 KiB buffer of pipelined reserve frames of 1 or 64 records (as a connection scans
//!   its read buffer). The body is not read, so both cost the same per frame.
//! - `reserve_decode`: one `ReserveOp::decode` of a 48-byte record.
//! - `decode_results_1op`, `decode_results_64op`: one reserve result read by
//!   `decode_batch_results` from a response body of 1 or 64 results; the function returns a
//!   `Vec`, so each frame also costs one allocation.

mod support;

use std::hint::black_box;

use std::time::{Duration, Instant};
use support::{Bench, Sizes};

use shardcap::protocol::{
    FrameLimits, HEADER_SIZE, Header, OpResult, Opcode, ReserveOp, decode_batch_results, decode_header, encode_batch,
    next_frame,
};

fn main() {
    let mut b = Bench::from_args("protocol");
    let size = Sizes { tiny: 4096, full: 1 << 20 };
    b.case("header_encode", size, header_encode);
    b.case("header_decode", size, header_decode);
    b.case("encode_batch_1op", size, |n| encode(n, 1));
    b.case("encode_batch_64op", size, |n| encode(n, 64));
    b.case("next_frame_1op", size, |n| parse(n, 1));
    b.case("next_frame_64op", size, |n| parse(n, 64));
    b.case("reserve_decode", size, reserve_decode);
    b.case("decode_results_1op", size, |n| decode_results(n, 1));
    b.case("decode_results_64op", size, |n| decode_results(n, 64));
    b.finish();
}

/// The server's default frame limits.
const LIMITS: FrameLimits = FrameLimits { frame_size_max_bytes: 1 << 20, batch_operations_max: 8192 };
/// Size of the buffers frames are written to and parsed from.
const BUFFER_BYTES: usize = 64 << 10;
/// Distinct records the cases cycle through.
const RECORDS: usize = 64;

/// Reserve record `k`: distinct ids, users, quantities and TTLs.
fn record(k: usize) -> ReserveOp {
    let k = k as u128 + 1;
    ReserveOp {
        id: k.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
        user: k.wrapping_mul(0xD6E8_FEB8_6659_FD93_2545_F491_4F6C_DD1D),
        pool: 1 + (k % 3) as u32,
        qty: 1 + (k % 7) as u32,
        ttl_ms: 1_000 * (k % 5) as u32,
        priority: 0,
    }
}

fn records() -> Vec<ReserveOp> {
    (0..RECORDS).map(record).collect()
}

/// Result record `k`.
fn result(k: usize) -> OpResult {
    OpResult { status: 0, state: 1, flags: 0, expires_at_ms: 1_700_000_000_000 + k as u64, available: k as u64 }
}

/// Parses `buf` (whole reserve frames) and checks that the records are `ops[first..]`,
/// cycling, `per_frame` per frame. Returns the number of frames.
fn check_frames(buf: &[u8], per_frame: usize, ops: &[ReserveOp], mut first: usize) -> usize {
    let (mut offset, mut frames) = (0, 0);
    while offset < buf.len() {
        let (h, len) = next_frame(&buf[offset..], &LIMITS).expect("valid frame").expect("whole frame");
        assert_eq!((h.opcode(), h.op_count as usize), (Some(Opcode::Reserve), per_frame));
        for record in buf[offset + HEADER_SIZE..offset + len].chunks_exact(ReserveOp::SIZE) {
            assert_eq!(ReserveOp::decode(record), Ok(ops[first % ops.len()]));
            first += 1;
        }
        offset += len;
        frames += 1;
    }
    frames
}

// ----- cases: each prepares its input, times `n` iterations, checks, returns the time ---------

fn header_encode(n: u64) -> Duration {
    let mut bytes = [0u8; HEADER_SIZE];
    let start = Instant::now();
    for i in 0..n {
        Header::request(Opcode::Reserve, black_box(i), 1, ReserveOp::SIZE as u32).encode(&mut bytes);
        black_box(&mut bytes);
    }
    let elapsed = start.elapsed();
    let h = decode_header(&bytes).expect("valid header");
    assert_eq!(h, Header::request(Opcode::Reserve, n - 1, 1, ReserveOp::SIZE as u32));
    elapsed
}

fn header_decode(n: u64) -> Duration {
    let headers: Vec<[u8; HEADER_SIZE]> = (0..RECORDS as u64)
        .map(|k| {
            let mut bytes = [0u8; HEADER_SIZE];
            Header::request(Opcode::Reserve, k, 1, ReserveOp::SIZE as u32).encode(&mut bytes);
            bytes
        })
        .collect();
    let start = Instant::now();
    let mut ids = 0;
    for i in 0..n as usize {
        let h = decode_header(black_box(&headers[i % RECORDS])).expect("valid header");
        ids += h.request_id;
    }
    let elapsed = start.elapsed();
    let per_round = (RECORDS * (RECORDS - 1) / 2) as u64;
    assert_eq!(ids, n / RECORDS as u64 * per_round, "every header decoded with its request id");
    elapsed
}

fn encode(n: u64, per_frame: usize) -> Duration {
    let ops = records();
    let frames = n as usize / per_frame;
    let frame_bytes = HEADER_SIZE + per_frame * ReserveOp::SIZE;
    let mut out = Vec::with_capacity(BUFFER_BYTES + frame_bytes);
    let (mut flushed, mut flushed_frames) = (0, 0);
    let start = Instant::now();
    for f in 0..frames {
        if out.len() >= BUFFER_BYTES {
            flushed += out.len();
            flushed_frames = f;
            out.clear();
        }
        let first = f * per_frame % RECORDS;
        encode_batch(f as u64, black_box(&ops[first..first + per_frame]), &mut out);
    }
    let elapsed = start.elapsed();
    assert_eq!(flushed + out.len(), frames * frame_bytes, "every frame written whole");
    let left = check_frames(&out, per_frame, &ops, flushed_frames * per_frame);
    assert_eq!(flushed_frames + left, frames);
    elapsed
}

fn parse(n: u64, per_frame: usize) -> Duration {
    let ops = records();
    let frame_bytes = HEADER_SIZE + per_frame * ReserveOp::SIZE;
    let mut buf = Vec::with_capacity(BUFFER_BYTES);
    let mut f = 0;
    while buf.len() + frame_bytes <= BUFFER_BYTES {
        let first = f * per_frame % RECORDS;
        encode_batch(f as u64, &ops[first..first + per_frame], &mut buf);
        f += 1;
    }
    assert_eq!(check_frames(&buf, per_frame, &ops, 0), f);
    let start = Instant::now();
    let (mut offset, mut records) = (0, 0);
    for _ in 0..n {
        if offset == buf.len() {
            offset = 0;
        }
        match next_frame(black_box(&buf[offset..]), &LIMITS) {
            Ok(Some((h, len))) => {
                offset += len;
                records += h.op_count as u64;
            }
            other => panic!("a whole valid frame at {offset}, got {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(records, n * per_frame as u64, "every frame found with its records");
    elapsed
}

fn reserve_decode(n: u64) -> Duration {
    let ops = records();
    let mut body = Vec::new();
    encode_batch(0, &ops, &mut body);
    let body = &body[HEADER_SIZE..];
    let start = Instant::now();
    let mut qty = 0;
    for i in 0..n as usize {
        let k = i % RECORDS;
        let op = ReserveOp::decode(black_box(&body[k * ReserveOp::SIZE..(k + 1) * ReserveOp::SIZE]));
        qty += op.expect("reserved bytes are zero").qty as u64;
    }
    let elapsed = start.elapsed();
    let per_round: u64 = ops.iter().map(|op| op.qty as u64).sum();
    assert_eq!(qty, n / RECORDS as u64 * per_round, "every record decoded");
    elapsed
}

fn decode_results(n: u64, per_frame: usize) -> Duration {
    let mut body = vec![0u8; RECORDS * OpResult::SIZE];
    for (k, chunk) in body.chunks_exact_mut(OpResult::SIZE).enumerate() {
        result(k).encode(chunk);
    }
    let frames = n as usize / per_frame;
    let start = Instant::now();
    let mut available = 0;
    for f in 0..frames {
        let first = f * per_frame % RECORDS;
        let frame = &body[first * OpResult::SIZE..(first + per_frame) * OpResult::SIZE];
        let results = decode_batch_results::<ReserveOp>(per_frame as u16, black_box(frame)).expect("size matches");
        available += results.iter().map(|r| r.available).sum::<u64>();
    }
    let elapsed = start.elapsed();
    let per_round = (RECORDS * (RECORDS - 1) / 2) as u64;
    assert_eq!(available, n / RECORDS as u64 * per_round, "every result decoded");
    assert_eq!(decode_batch_results::<ReserveOp>(1, &body[..OpResult::SIZE]), Some(vec![result(0)]));
    elapsed
}
