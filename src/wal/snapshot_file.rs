//! Snapshot files: `snapshot-<lsn>.snap` holds a core's state after the record `lsn`, so
//! that recovery loads it and replays only the log after it. It is written while the core
//! keeps running (the state machine copies on write), to a temporary name, made durable,
//! then renamed: a snapshot file that exists under its final name is complete.
//!
//! Layout: magic 8 bytes, lsn u64, head length u32, head crc32c u32, the head (rkyv of
//! [`SnapshotHead`]), then chunks of records until the head's record count is reached:
//! record count u32, length u32, crc32c u32, reserved u32, then the chunk (rkyv of a
//! `Vec<HoldSnap>`).

use std::path::Path;

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;

use super::WalError;
use crate::shard::snapshot::{HoldSnap, SnapshotHead};

/// The first bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SCSNAP\0\x01";
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
    while (records.len() as u64) < head.records {
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
    if records.len() as u64 != head.records || pos != bytes.len() {
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
