//! Snapshot files: `snapshot-<lsn>.snap` holds a core's state after the record `lsn`, so
//! that recovery loads it and replays only the log after it. It is written while the core
//! keeps running (the state machine copies on write), to a temporary name, made durable,
//! then renamed: a snapshot file that exists under its final name is complete.
//!
//! Layout: magic 8 bytes, lsn u64, head length u32, head crc32c u32, the head (rkyv of
//! [`SnapshotHead`]), then chunks of records to the end of the file, whose counts add up
//! to the head's record count (a core without records writes one empty chunk): record
//! count u32, length u32, crc32c u32, reserved u32, then the chunk (rkyv of a
//! `Vec<HoldSnap>`).

use std::path::Path;

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;

use super::WalError;
use crate::shard::snapshot::{HoldSnap, SnapshotHead};

/// The first bytes of every snapshot file; the last byte is the format
/// ([`crate::shard::snapshot::SNAPSHOT_FORMAT`]), readable before the archive is.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SCSNAP\0\x06";
const _: () = assert!(SNAPSHOT_MAGIC[7] as u32 == crate::shard::snapshot::SNAPSHOT_FORMAT);
const PREFIX_SIZE: usize = 24;
const CHUNK_PREFIX_SIZE: usize = 16;

/// The file name of the snapshot after record `lsn`.
pub fn file_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}.snap")
}

/// The LSN of a snapshot file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()
}

/// The beginning of a snapshot file: its prefix and head.
pub fn encode_head(lsn: u64, head: &SnapshotHead) -> Vec<u8> {
    let bytes = rkyv::to_bytes::<RkyvError>(head).expect("a snapshot head serializes");
    let mut out = Vec::with_capacity(PREFIX_SIZE + bytes.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// One chunk of records.
pub fn encode_chunk(records: &Vec<HoldSnap>) -> Vec<u8> {
    let bytes = rkyv::to_bytes::<RkyvError>(records).expect("records serialize");
    let mut out = Vec::with_capacity(CHUNK_PREFIX_SIZE + bytes.len());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&bytes);
    out
}

/// A snapshot read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last record it includes.
    pub lsn: u64,
    /// Everything but the records.
    pub head: SnapshotHead,
    /// The records.
    pub records: Vec<HoldSnap>,
}

/// Reads and checks a snapshot file's bytes.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Snapshot, WalError> {
    let bad = |offset: usize, reason: &str| WalError::Corrupt {
        path: path.into(),
        offset: offset as u64,
        reason: reason.into(),
    };
    if bytes.len() >= PREFIX_SIZE && bytes[0..7] == SNAPSHOT_MAGIC[0..7] && bytes[7] != SNAPSHOT_MAGIC[7] {
        let reason = format!(
            "snapshot file version {}, this server reads version {} (bad magic; another version of the server wrote it)",
            bytes[7], SNAPSHOT_MAGIC[7]
        );
        return Err(bad(0, &reason));
    }
    if bytes.len() < PREFIX_SIZE || bytes[0..8] != SNAPSHOT_MAGIC {
        return Err(bad(0, "not a shardcap snapshot (bad magic)"));
    }
    let lsn = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let head_len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let head_crc = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
    let head_bytes =
        bytes.get(PREFIX_SIZE..PREFIX_SIZE + head_len).ok_or_else(|| bad(PREFIX_SIZE, "head cut short"))?;
    if crc32c::crc32c(head_bytes) != head_crc {
        return Err(bad(PREFIX_SIZE, "head checksum mismatch"));
    }
    let head: SnapshotHead = rkyv::from_bytes::<SnapshotHead, RkyvError>(&aligned(head_bytes))
        .map_err(|_| bad(PREFIX_SIZE, "head does not decode"))?;
    let mut records = Vec::with_capacity(head.records as usize);
    let mut pos = PREFIX_SIZE + head_len;
    // Chunks follow to the end of the file; a core without records writes one empty chunk.
    while pos < bytes.len() {
        let prefix = bytes.get(pos..pos + CHUNK_PREFIX_SIZE).ok_or_else(|| bad(pos, "records cut short"))?;
        let count = u32::from_le_bytes(prefix[0..4].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(prefix[4..8].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(prefix[8..12].try_into().unwrap());
        let start = pos + CHUNK_PREFIX_SIZE;
        let chunk = bytes.get(start..start + len).ok_or_else(|| bad(pos, "record chunk cut short"))?;
        if crc32c::crc32c(chunk) != crc {
            return Err(bad(pos, "record chunk checksum mismatch"));
        }
        let decoded: Vec<HoldSnap> = rkyv::from_bytes::<Vec<HoldSnap>, RkyvError>(&aligned(chunk))
            .map_err(|_| bad(pos, "record chunk does not decode"))?;
        if decoded.len() != count {
            return Err(bad(pos, "record chunk count mismatch"));
        }
        records.extend(decoded);
        pos = start + len;
    }
    if records.len() as u64 != head.records {
        return Err(bad(pos, "records do not match the head's count"));
    }
    Ok(Snapshot { lsn, head, records })
}

/// rkyv reads from aligned memory.
fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut v = AlignedVec::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::control::PoolCreate;
    use crate::protocol::{ConfirmOp, ReleaseOp, ReserveOp};
    use crate::shard::{Command, Engine, EngineConfig};

    const NOW: u64 = 1_700_000_000_000;

    fn path() -> std::path::PathBuf {
        std::path::PathBuf::from("core-1").join(file_name(99))
    }

    /// Core 1 of 2 holding `holds` reservations (some confirmed, some released) in two pools.
    fn engine(holds: u32) -> Engine {
        let cfg = EngineConfig {
            core: 1,
            cores: 2,
            holds_max: 1000,
            parked_max: 16,
            retention_ms: 60_000,
            retention_min_ms: 0,
            retained_max: 4000,
            pools_max: 8,
        };
        let mut e = Engine::new(cfg, NOW);
        for (name, capacity) in [("seats", 1000), ("stock", 500)] {
            let req = PoolCreate {
                name: name.into(),
                capacity,
                hold_ttl_ms_default: 10_000,
                hold_ttl_ms_max: 60_000,
                kind: 0,
                active: true,
                rules: Default::default(),
            };
            let def = e.validate_pool_create(&req).expect("valid");
            e.apply(NOW, Command::CreatePool(def));
        }
        for i in 0..holds {
            let (id, user) = (i as u128 + 1, 1000 + i as u128);
            let op = ReserveOp { id, user, pool: 1 + i % 2, qty: 1 + i % 3, ttl_ms: 0, priority: 0 };
            e.apply(NOW + i as u64, Command::Reserve(op));
            match i % 4 {
                1 => e.apply(NOW + i as u64, Command::Confirm(ConfirmOp { id, user, commit_ref: 7 })),
                2 => e.apply(NOW + i as u64, Command::Release(ReleaseOp { id, user })),
                _ => crate::shard::Outcome::None,
            };
        }
        assert_eq!(e.holds_len() + e.retained().0, holds, "every reservation is live or kept");
        e
    }

    /// A snapshot file of `e` at `lsn` written as the server writes it (chunks of up to
    /// `chunk` records; one empty chunk when there is no record), the offsets of its chunks,
    /// and what it holds.
    fn file(e: &mut Engine, lsn: u64, chunk: usize) -> (Vec<u8>, Vec<usize>, Snapshot) {
        let head = e.snapshot_begin();
        let mut bytes = encode_head(lsn, &head);
        let mut offsets = Vec::new();
        let mut records = Vec::new();
        loop {
            let mut part = Vec::new();
            let done = e.snapshot_chunk(chunk, &mut part);
            if !part.is_empty() || head.records == 0 {
                offsets.push(bytes.len());
                bytes.extend(encode_chunk(&part));
            }
            records.extend(part);
            if done {
                break;
            }
        }
        (bytes, offsets, Snapshot { lsn, head, records })
    }

    fn corrupt_at(result: Result<Snapshot, WalError>) -> (u64, String) {
        match result {
            Err(WalError::Corrupt { path: p, offset, reason }) => {
                assert_eq!(p, path());
                (offset, reason)
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn file_names_carry_the_lsn() {
        assert_eq!(file_name(7), "snapshot-00000000000000000007.snap");
        assert_eq!(parse_file_name(&file_name(123_456)), Some(123_456));
        for other in ["snapshot-00000000000000000007.snap.tmp", "wal-00000000000000000007.log", "snapshot-.snap"] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_snapshot_in_several_chunks_round_trips() {
        let mut e = engine(11);
        let (bytes, offsets, expected) = file(&mut e, 99, 3);
        assert_eq!(offsets.len(), 4, "11 records in chunks of 3");
        assert_eq!(expected.head.records, 11);
        assert_eq!(expected.head.pools.len(), 2);
        assert_eq!(&bytes[0..8], &SNAPSHOT_MAGIC);
        assert_eq!(&bytes[8..16], &99u64.to_le_bytes());
        let head_len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
        assert_eq!(offsets[0], PREFIX_SIZE + head_len, "the first chunk follows the head");
        assert_eq!(&bytes[offsets[0]..offsets[0] + 4], &3u32.to_le_bytes(), "a chunk starts with its count");
        assert_eq!(&bytes[offsets[3]..offsets[3] + 4], &2u32.to_le_bytes());
        let got = decode(&bytes, &path()).expect("decodes");
        assert_eq!(got, expected);
        // What was read restores an engine with the same state.
        let mut restored = Engine::restore(&got.head, &got.records).expect("restores");
        let (_, _, again) = file(&mut restored, 99, 1000);
        let sorted = |mut r: Vec<HoldSnap>| {
            r.sort_by_key(|h| h.id);
            r
        };
        assert_eq!(again.head, expected.head);
        assert_eq!(sorted(again.records), sorted(expected.records));
    }

    #[test]
    fn a_snapshot_without_records_round_trips() {
        // The server writes one empty chunk for a core without records.
        let mut e = engine(0);
        let (bytes, offsets, expected) = file(&mut e, 5, 4096);
        assert_eq!(offsets.len(), 1);
        assert_eq!(decode(&bytes, &path()).expect("decodes"), expected);
        // Without that chunk, too.
        let head_only = &bytes[..offsets[0]];
        assert_eq!(decode(head_only, &path()).expect("decodes"), expected);
    }

    #[test]
    fn a_flipped_byte_in_the_head_is_refused() {
        let (bytes, offsets, _) = file(&mut engine(5), 9, 2);
        for i in PREFIX_SIZE..offsets[0] {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert_eq!(corrupt_at(decode(&damaged, &path())), (24, "head checksum mismatch".into()), "byte {i}");
        }
        let mut damaged = bytes.clone();
        damaged[20] ^= 1; // the stored checksum itself
        assert_eq!(corrupt_at(decode(&damaged, &path())), (24, "head checksum mismatch".into()));
        let mut damaged = bytes.clone();
        damaged[3] = b'x';
        assert_eq!(corrupt_at(decode(&damaged, &path())), (0, "not a shardcap snapshot (bad magic)".into()));
        let mut older = bytes.clone();
        older[7] = 2;
        let expected =
            "snapshot file version 2, this server reads version 6 (bad magic; another version of the server wrote it)";
        assert_eq!(corrupt_at(decode(&older, &path())), (0, expected.into()));
    }

    #[test]
    fn a_flipped_byte_in_a_chunk_is_refused_at_the_chunk() {
        let (bytes, offsets, _) = file(&mut engine(5), 9, 2);
        assert_eq!(offsets.len(), 3);
        for (k, &start) in offsets.iter().enumerate() {
            let end = offsets.get(k + 1).copied().unwrap_or(bytes.len());
            for i in start + CHUNK_PREFIX_SIZE..end {
                let mut damaged = bytes.clone();
                damaged[i] ^= 0x04;
                let (offset, reason) = corrupt_at(decode(&damaged, &path()));
                assert_eq!((offset, reason.as_str()), (start as u64, "record chunk checksum mismatch"), "byte {i}");
            }
        }
        // A chunk's count is checked against what it decodes to.
        let mut damaged = bytes.clone();
        damaged[offsets[1]] = 1;
        assert_eq!(corrupt_at(decode(&damaged, &path())), (offsets[1] as u64, "record chunk count mismatch".into()));
    }

    #[test]
    fn a_cut_or_extended_file_is_refused() {
        let (bytes, offsets, _) = file(&mut engine(5), 9, 2);
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut], &path()), Err(WalError::Corrupt { .. })),
                "cut at {cut} of {}",
                bytes.len()
            );
        }
        // A whole chunk more than the head announces.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&bytes[offsets[2]..]);
        assert!(matches!(decode(&longer, &path()), Err(WalError::Corrupt { .. })));
    }
}
