//! Log segments: a core's log is a series of files `wal-<first lsn>.log`, each a 32-byte
//! header followed by records back to back. Reading a segment tells a torn tail (the last
//! group of records of the last segment, cut by a crash in the middle of its write: never
//! acknowledged, so discarded) from corruption anywhere else (a hard error naming the file
//! and offset: the server refuses to start rather than drop acknowledged data).

use std::path::Path;

use super::WalError;
use super::record::{self, Record};

/// The first bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SCWAL\0\0\x01";
/// Size of the segment header.
pub const SEGMENT_HEADER_SIZE: usize = 32;

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The core whose log this is.
    pub core: u16,
    /// The core count of the server that wrote it.
    pub cores: u16,
    /// LSN of the first record in the segment.
    pub first_lsn: u64,
}

/// The file name of the segment starting at `first_lsn`.
pub fn file_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// The first LSN of a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()
}

impl SegmentHeader {
    /// Layout: magic 8 bytes @0, core u16 @8, cores u16 @10, reserved u32 @12, first_lsn
    /// u64 @16, crc32c u32 @24 (of bytes 0..24), reserved u32 @28.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE] {
        let mut b = [0u8; SEGMENT_HEADER_SIZE];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.core.to_le_bytes());
        b[10..12].copy_from_slice(&self.cores.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8], path: &Path) -> Result<SegmentHeader, WalError> {
        let corrupt = |reason: &str| WalError::Corrupt { path: path.into(), offset: 0, reason: reason.into() };
        if b.len() < SEGMENT_HEADER_SIZE {
            return Err(corrupt("shorter than a segment header"));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(corrupt("not a shardcap log segment (bad magic)"));
        }
        if crc32c::crc32c(&b[0..24]) != u32::from_le_bytes(b[24..28].try_into().unwrap()) {
            return Err(corrupt("segment header checksum mismatch"));
        }
        Ok(SegmentHeader {
            core: u16::from_le_bytes([b[8], b[9]]),
            cores: u16::from_le_bytes([b[10], b[11]]),
            first_lsn: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        })
    }
}

/// How a segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// After its last record (possibly followed by zeros).
    Clean,
    /// The last segment's tail was cut by a crash: `bytes` bytes from `offset` on are
    /// discarded (they were never acknowledged).
    TornTail {
        /// Where the torn record starts.
        offset: u64,
        /// How many bytes follow it.
        bytes: u64,
    },
}

/// What reading a segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header.
    pub header: SegmentHeader,
    /// Bytes up to the end of the last good record: where appending continues.
    pub valid_len: u64,
    /// LSN of the last good record (the one before `first_lsn` if there is none).
    pub last_lsn: u64,
    /// How it ended.
    pub end: SegmentEnd,
}

/// Reads the segment in `bytes` (the file `path`), handing every record to `each` in
/// order. Records must follow each other by LSN from the header's first LSN. A bad record
/// is a torn tail only in the last segment (`last`) and only if no good record follows
/// it; otherwise it is corruption.
pub fn scan(
    bytes: &[u8],
    path: &Path,
    last: bool,
    mut each: impl FnMut(Record) -> Result<(), WalError>,
) -> Result<SegmentScan, WalError> {
    let header = SegmentHeader::decode(bytes, path)?;
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut expected = header.first_lsn;
    loop {
        if pos == bytes.len() || bytes[pos..].iter().all(|&b| b == 0) {
            return Ok(SegmentScan { header, valid_len: pos as u64, last_lsn: expected - 1, end: SegmentEnd::Clean });
        }
        match record::decode(&bytes[pos..]) {
            Ok((rec, size)) if rec.lsn == expected => {
                each(rec)?;
                pos += size;
                expected += 1;
            }
            outcome => {
                let reason = match outcome {
                    Ok((rec, _)) => format!("record with LSN {} where {expected} was expected", rec.lsn),
                    Err(bad) => format!("record {expected} is unreadable ({bad:?})"),
                };
                // A torn tail has nothing readable after the damage; corruption has.
                let damaged_alone = !(pos + 1..bytes.len())
                    .any(|p| matches!(record::decode(&bytes[p..]), Ok((rec, _)) if rec.lsn >= expected));
                if last && damaged_alone {
                    let end = SegmentEnd::TornTail { offset: pos as u64, bytes: (bytes.len() - pos) as u64 };
                    return Ok(SegmentScan { header, valid_len: pos as u64, last_lsn: expected - 1, end });
                }
                return Err(WalError::Corrupt { path: path.into(), offset: pos as u64, reason });
            }
        }
    }
}
