//! Durability benchmarks: appending log records, recovering from a log, and how long a
//! snapshot keeps a core from serving.
//!
//! How it works (one line per case, like the other benches; the last two also print what
//! the goals of the durability work ask for):
//! - `append_reserve`: encoding one reserve record into the log buffer (what the hot path
//!   pays per operation besides the shared write and fdatasync).
//! - `recover`: a log of reserve records for many users (written once, outside the timed
//!   region, as the server writes it: a limits record, a pool creation, then the reserves)
//!   is recovered with `wal::recovery::recover` — read, checked and replayed into the
//!   state machine. Full mode uses 10 million records in 64 MiB segments (goal: under 5 s),
//!   tiny mode 20,000.
//! - `snapshot`: a core holding 1 million reservations (tiny: 20,000) starts a snapshot and
//!   reads it in chunks of 4,096 records, as the server does; the longest single pause is
//!   the stall the core sees (goal: under 1 ms per snapshot per million holds).
//!
//! `cargo bench --bench wal [filter]` measures; `cargo test` runs the tiny mode, which checks
//! that every record was replayed and every reservation read.

mod support;

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use shardcap::protocol::ReserveOp;
use shardcap::protocol::control::PoolCreate;
use shardcap::shard::{Command, Engine, EngineConfig};
use shardcap::wal::record;
use shardcap::wal::recovery;
use shardcap::wal::segment::{self, SegmentHeader};
use support::{Bench, Sizes};

const T0: u64 = 1_700_000_000_000;
const SNAPSHOT_CHUNK: usize = 4096;

fn config(holds_max: u32) -> EngineConfig {
    EngineConfig {
        core: 0,
        cores: 1,
        holds_max,
        parked_max: 1024,
        retention_ms: 60_000,
        retention_min_ms: 0,
        retained_max: holds_max * 4,
        pools_max: 4,
    }
}

fn reserve(i: u64) -> Command {
    Command::Reserve(ReserveOp {
        id: (i as u128 + 1) * 0x9E37_79B9_7F4A_7C15,
        user: i as u128 + 1,
        pool: 1,
        qty: 1,
        ttl_ms: 3_600_000,
        priority: 0,
    })
}

fn pool() -> PoolCreate {
    PoolCreate {
        name: "bench".into(),
        capacity: 1 << 40,
        hold_ttl_ms_default: 60_000,
        hold_ttl_ms_max: 3_600_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    }
}

/// Writes a log of `n` reserves into `dir`, in segments of at most 64 MiB (the server's
/// default `segment_size_bytes`).
fn write_log(dir: &Path, n: u64) {
    const SEGMENT_BYTES: usize = 64 << 20;
    std::fs::create_dir_all(dir).unwrap();
    let header = |first_lsn| SegmentHeader { core: 0, cores: 1, first_lsn }.encode().to_vec();
    let mut first_lsn = 1;
    let mut bytes = header(first_lsn);
    let cfg = config(n as u32 + 16);
    record::encode(1, T0, &Command::SetLimits(cfg), &mut bytes);
    let def = Engine::new(cfg, T0).validate_pool_create(&pool()).unwrap();
    record::encode(2, T0, &Command::CreatePool(def), &mut bytes);
    let mut record = Vec::new();
    for i in 0..n {
        let lsn = 3 + i;
        record.clear();
        record::encode(lsn, T0 + i / 1000, &reserve(i), &mut record);
        if bytes.len() + record.len() > SEGMENT_BYTES {
            std::fs::write(dir.join(segment::file_name(first_lsn)), &bytes).unwrap();
            first_lsn = lsn;
            bytes = header(first_lsn);
        }
        bytes.extend_from_slice(&record);
    }
    std::fs::write(dir.join(segment::file_name(first_lsn)), bytes).unwrap();
}

/// Bytes of the files in `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

fn main() {
    let mut b = Bench::from_args("wal");
    let full = std::env::args().any(|a| a == "--bench");
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));

    b.case("append_reserve", Sizes { tiny: 4096, full: 1 << 20 }, |n| {
        let mut buf = Vec::with_capacity(n as usize * 80);
        let commands: Vec<Command> = (0..n).map(reserve).collect();
        let start = Instant::now();
        for (i, c) in commands.iter().enumerate() {
            record::encode(i as u64 + 1, T0, c, &mut buf);
        }
        let elapsed = start.elapsed();
        assert_eq!(buf.len(), n as usize * 73, "73 bytes per reserve record");
        black_box(&buf);
        elapsed
    });

    if wanted("recover") {
        let n: u64 = if full { 10_000_000 } else { 20_000 };
        let dir = std::env::temp_dir().join(format!("shardcap-bench-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_log(&dir, n);
        let size = dir_size(&dir);
        let start = Instant::now();
        let recovered = recovery::recover(&dir, 0, 1, false, |_| {}).unwrap();
        let elapsed = start.elapsed();
        assert_eq!((recovered.replayed, recovered.last_lsn), (n + 2, n + 2));
        assert_eq!(recovered.engine.as_ref().unwrap().holds_len() as u64, n);
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "{:<24} {:>10.2} {:>9.2} {:>12}   {n} records ({} MiB) recovered in {:.2} s (goal < 5 s for 10M)",
            "recover",
            elapsed.as_nanos() as f64 / n as f64,
            n as f64 / elapsed.as_secs_f64() / 1e6,
            n,
            size >> 20,
            elapsed.as_secs_f64()
        );
    }

    if wanted("snapshot") {
        let n: u64 = if full { 1_000_000 } else { 20_000 };
        let mut e = Engine::new(config(n as u32 + 16), T0);
        let def = e.validate_pool_create(&pool()).unwrap();
        e.create_pool(def);
        for i in 0..n {
            e.apply(T0, reserve(i));
        }
        let begin = Instant::now();
        let head = e.snapshot_begin();
        let mut stall = begin.elapsed();
        let mut total = stall;
        let mut records = Vec::with_capacity(SNAPSHOT_CHUNK);
        let mut read = 0u64;
        loop {
            let t = Instant::now();
            let done = e.snapshot_chunk(SNAPSHOT_CHUNK, &mut records);
            let pause = t.elapsed();
            stall = stall.max(pause);
            total += pause;
            read += records.len() as u64;
            records.clear();
            if done {
                break;
            }
        }
        assert_eq!((head.records, read), (n, n));
        println!(
            "{:<24} {:>10.2} {:>9.2} {:>12}   longest pause {} µs per snapshot of {n} holds (goal < 1 ms per million); \
             all chunks {:.1} ms",
            "snapshot",
            total.as_nanos() as f64 / n as f64,
            n as f64 / total.as_secs_f64() / 1e6,
            n,
            stall.as_micros(),
            total.as_secs_f64() * 1e3
        );
    }
    if !wanted("recover") && !wanted("snapshot") {
        b.finish();
    }
}
