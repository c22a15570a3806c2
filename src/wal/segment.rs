//! Log segments: a core's log is a series of files `wal-<first lsn>.log`, each a 32-byte
//! header followed by records back to back. Reading a segment tells a torn tail (the last
//! group of records of the last segment, cut by a crash in the middle of its write: never
//! acknowledged, so discarded) from corruption anywhere else (a hard error naming the file
//! and offset: the server refuses to start rather than drop acknowledged data).

use std::path::Path;

use super::WalError;
use super::record::{self, Record};

/// The first bytes of every segment written by this version; the last byte is the format
/// version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SCWAL\0\0\x05";
/// The oldest format version read. Version 5 keeps finished reservations apart from live
/// holds, within a memory budget, and its set-limits record carries that budget: a log of
/// version 4 or older would replay under other retention rules than it was written with.
pub const SEGMENT_VERSION_OLDEST: u8 = 5;
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
        let version = b[7];
        if b[0..7] == SEGMENT_MAGIC[0..7] && !(SEGMENT_VERSION_OLDEST..=SEGMENT_MAGIC[7]).contains(&version) {
            return Err(corrupt(&format!(
                "log format version {version}, this server reads versions {SEGMENT_VERSION_OLDEST} to {} (bad magic)",
                SEGMENT_MAGIC[7]
            )));
        }
        if b[0..7] != SEGMENT_MAGIC[0..7] {
            return Err(corrupt("not a shardcap log segment (bad magic)"));
        }
        if crc32c::crc32c(&b[0..24]) != u32::from_le_bytes(b[24..28].try_into().unwrap()) {
            return Err(corrupt("segment header checksum mismatch"));
        }
        let header = SegmentHeader {
            core: u16::from_le_bytes([b[8], b[9]]),
            cores: u16::from_le_bytes([b[10], b[11]]),
            first_lsn: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        };
        if header.first_lsn == 0 {
            return Err(corrupt("segment header names LSN 0 (LSNs start at 1)"));
        }
        Ok(header)
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
/// order. Records must follow each other by LSN from the header's first LSN. An unreadable
/// record is a torn tail only in the last segment (`last`) and only if no good record
/// follows it; otherwise it is corruption, as is a readable record with the wrong LSN.
pub fn scan(
    bytes: &[u8],
    path: &Path,
    last: bool,
    mut each: impl FnMut(Record) -> Result<(), WalError>,
) -> Result<SegmentScan, WalError> {
    let header = SegmentHeader::decode(bytes, path)?;
    // Zeros after the last record are padding (direct writes fill whole blocks, and new
    // segments are filled with zeros ahead of time). A record may end in zeros itself, so
    // they are only where records end, not where reading stops.
    let data_end = end_of_data(bytes);
    let mut pos = SEGMENT_HEADER_SIZE;
    let mut expected = header.first_lsn;
    loop {
        if pos >= data_end {
            return Ok(SegmentScan { header, valid_len: pos as u64, last_lsn: expected - 1, end: SegmentEnd::Clean });
        }
        match record::decode(&bytes[pos..]) {
            Ok((rec, size)) if rec.lsn == expected => {
                each(rec)?;
                pos += size;
                expected += 1;
            }
            Ok((rec, _)) => {
                // A whole record with a valid checksum is no torn write: records are missing.
                let reason = format!("record with LSN {} where {expected} was expected", rec.lsn);
                return Err(WalError::Corrupt { path: path.into(), offset: pos as u64, reason });
            }
            Err(bad) => {
                let reason = format!("record {expected} is unreadable ({bad:?})");
                // A torn tail has nothing readable after the damage; corruption has.
                // (Only the last segment can end torn: the search is skipped for the others.)
                let damaged_alone = || {
                    !(pos + 1..data_end)
                        .any(|p| matches!(record::decode(&bytes[p..]), Ok((rec, _)) if rec.lsn >= expected))
                };
                if last && damaged_alone() {
                    let end = SegmentEnd::TornTail { offset: pos as u64, bytes: (bytes.len() - pos) as u64 };
                    return Ok(SegmentScan { header, valid_len: pos as u64, last_lsn: expected - 1, end });
                }
                return Err(WalError::Corrupt { path: path.into(), offset: pos as u64, reason });
            }
        }
    }
}

/// The length of `bytes` without the zeros at its end.
fn end_of_data(bytes: &[u8]) -> usize {
    const STEP: usize = 4096;
    let mut end = bytes.len();
    // Whole blocks of zeros are skipped a block at a time (an OR over a block vectorizes).
    while end >= STEP && bytes[end - STEP..end].iter().fold(0, |acc, &b| acc | b) == 0 {
        end -= STEP;
    }
    bytes[..end].iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ReleaseOp, ReserveOp};
    use crate::shard::Command;

    const NOW: u64 = 1_700_000_000_000;

    fn path() -> std::path::PathBuf {
        std::path::PathBuf::from("core-0").join(file_name(1))
    }

    fn command(i: u64) -> Command {
        match i % 3 {
            0 => Command::Reserve(ReserveOp { id: i as u128 + 1, user: 7, pool: 1, qty: 2, ttl_ms: 0, priority: 0 }),
            1 => Command::Release(ReleaseOp { id: i as u128, user: 7 }),
            _ => Command::Tick,
        }
    }

    /// A segment of core 2 of 4 starting at `first_lsn` with `count` records, and where
    /// each record starts.
    fn segment(first_lsn: u64, count: u64) -> (Vec<u8>, Vec<usize>) {
        let mut b = SegmentHeader { core: 2, cores: 4, first_lsn }.encode().to_vec();
        let mut starts = Vec::new();
        for i in 0..count {
            starts.push(b.len());
            record::encode(first_lsn + i, NOW + i, &command(i), &mut b);
        }
        (b, starts)
    }

    /// Scans `bytes`, collecting the LSNs handed over.
    fn scan_all(bytes: &[u8], last: bool) -> (Result<SegmentScan, WalError>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = scan(bytes, &path(), last, |rec| {
            seen.push(rec.lsn);
            Ok(())
        });
        (result, seen)
    }

    /// The offset and reason of a corruption error.
    fn corrupt_at(result: Result<SegmentScan, WalError>) -> (u64, String) {
        match result {
            Err(WalError::Corrupt { path: p, offset, reason }) => {
                assert_eq!(p, path());
                (offset, reason)
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn header_round_trips_with_its_documented_layout() {
        let h = SegmentHeader { core: 3, cores: 8, first_lsn: 0x0102_0304_0506_0708 };
        let b = h.encode();
        assert_eq!(&b[0..8], b"SCWAL\0\0\x05");
        assert_eq!(&b[8..10], &3u16.to_le_bytes());
        assert_eq!(&b[10..12], &8u16.to_le_bytes());
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..28], &crc32c::crc32c(&b[0..24]).to_le_bytes());
        assert_eq!(&b[28..32], &[0; 4]);
        assert_eq!(SegmentHeader::decode(&b, &path()).expect("decodes"), h);
        // A version-4 header (same layout, other retention rules) is refused, by name.
        let mut v4 = b;
        v4[7] = 4;
        let crc = crc32c::crc32c(&v4[0..24]);
        v4[24..28].copy_from_slice(&crc.to_le_bytes());
        match SegmentHeader::decode(&v4, &path()) {
            Err(WalError::Corrupt { reason, .. }) => assert!(reason.contains("log format version 4"), "{reason}"),
            other => panic!("version 4: {other:?}"),
        }
    }

    #[test]
    fn headers_that_are_not_ours_are_refused_at_offset_0() {
        let good = SegmentHeader { core: 1, cores: 2, first_lsn: 10 }.encode();
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        let mut bad_version = good;
        bad_version[7] = 1;
        let mut bad_crc = good;
        bad_crc[8] ^= 1; // core 1 becomes core 0: only the checksum notices
        let mut bad_stored_crc = good;
        bad_stored_crc[24] ^= 0x80;
        let cases: [(&[u8], &str); 5] = [
            (&bad_magic, "bad magic"),
            (&bad_version, "log format version 1, this server reads versions 5 to 5"),
            (&bad_crc, "checksum mismatch"),
            (&bad_stored_crc, "checksum mismatch"),
            (&good[..31], "shorter than a segment header"),
        ];
        for (bytes, reason) in cases {
            match SegmentHeader::decode(bytes, &path()) {
                Err(WalError::Corrupt { offset: 0, reason: r, .. }) => assert!(r.contains(reason), "{r}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn file_names_carry_the_first_lsn() {
        assert_eq!(file_name(42), "wal-00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("wal-00000000000000000042.log"), Some(42));
        for other in ["wal-42.log.tmp", "snapshot-00000000000000000042.snap", "wal-.log", "wal-x.log", "core-0"] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_clean_segment_hands_over_every_record_in_order() {
        let (b, _) = segment(100, 7);
        let (result, seen) = scan_all(&b, true);
        let scan = result.expect("clean");
        assert_eq!(seen, (100..107).collect::<Vec<_>>());
        assert_eq!(scan.header, SegmentHeader { core: 2, cores: 4, first_lsn: 100 });
        assert_eq!((scan.valid_len, scan.last_lsn, &scan.end), (b.len() as u64, 106, &SegmentEnd::Clean));
        // As a segment that is not the last one, too.
        assert_eq!(scan_all(&b, false).0.expect("clean"), scan);
    }

    #[test]
    fn a_segment_with_only_its_header_ends_before_its_first_lsn() {
        let (b, _) = segment(100, 0);
        let (result, seen) = scan_all(&b, true);
        let scan = result.expect("clean");
        assert!(seen.is_empty());
        assert_eq!((scan.valid_len, scan.last_lsn, scan.end), (32, 99, SegmentEnd::Clean));
    }

    #[test]
    fn a_torn_last_record_is_discarded_at_every_cut() {
        let (b, starts) = segment(1, 5);
        let last = *starts.last().unwrap();
        for cut in last + 1..b.len() {
            let (result, seen) = scan_all(&b[..cut], true);
            let scan = result.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(seen, [1, 2, 3, 4], "cut at {cut}");
            assert_eq!(scan.valid_len, last as u64, "cut at {cut}");
            assert_eq!(scan.last_lsn, 4, "cut at {cut}");
            assert_eq!(
                scan.end,
                SegmentEnd::TornTail { offset: last as u64, bytes: (cut - last) as u64 },
                "cut at {cut}"
            );
        }
        // Cut exactly between two records: a clean end.
        let scan = scan_all(&b[..last], true).0.expect("clean");
        assert_eq!((scan.valid_len, scan.last_lsn, scan.end), (last as u64, 4, SegmentEnd::Clean));
    }

    #[test]
    fn a_torn_group_of_records_is_discarded_whole() {
        // The last write carried records 4 and 5: 4 is damaged, 5 never reached the disk
        // but its first bytes did.
        let (b, starts) = segment(1, 5);
        let mut torn = b[..starts[4] + 10].to_vec();
        torn[starts[3] + 20] ^= 0x55;
        let scan = scan_all(&torn, true).0.expect("a torn tail");
        assert_eq!((scan.valid_len, scan.last_lsn), (starts[3] as u64, 3));
        assert_eq!(scan.end, SegmentEnd::TornTail { offset: starts[3] as u64, bytes: (torn.len() - starts[3]) as u64 });
    }

    #[test]
    fn zero_padding_is_a_clean_end() {
        let (mut b, _) = segment(1, 3);
        let records_end = b.len() as u64;
        b.resize(b.len() + 4096, 0);
        for last in [true, false] {
            let (result, seen) = scan_all(&b, last);
            let scan = result.expect("clean");
            assert_eq!(seen, [1, 2, 3]);
            assert_eq!((scan.valid_len, scan.last_lsn, scan.end), (records_end, 3, SegmentEnd::Clean));
        }
        // A torn record followed by zeros is still a torn tail.
        let (b, starts) = segment(1, 3);
        let mut torn = b[..starts[2] + 10].to_vec();
        torn.resize(torn.len() + 100, 0);
        let scan = scan_all(&torn, true).0.expect("a torn tail");
        assert_eq!(scan.end, SegmentEnd::TornTail { offset: starts[2] as u64, bytes: (torn.len() - starts[2]) as u64 });
    }

    #[test]
    fn a_last_record_that_ends_in_zeros_is_read_whole_before_block_padding() {
        // Reserve records end with the priority and padding: zeros for priority 0.
        let (mut b, _) = segment(1, 1);
        assert_eq!(b.last(), Some(&0), "the record's last byte is a zero");
        let records_end = b.len() as u64;
        for padding in [0, 1, 4096 - b.len() % 4096, 3 * 4096 + 17] {
            let mut padded = b.clone();
            padded.resize(b.len() + padding, 0);
            let (result, seen) = scan_all(&padded, true);
            let scan = result.expect("clean");
            assert_eq!(seen, [1], "padding {padding}");
            assert_eq!((scan.valid_len, scan.end), (records_end, SegmentEnd::Clean), "padding {padding}");
        }
        b.resize(1 << 20, 0);
        assert_eq!(end_of_data(&b) as u64, b[..records_end as usize].iter().rposition(|&x| x != 0).unwrap() as u64 + 1);
        assert_eq!(end_of_data(&[0; 9000]), 0);
        assert_eq!(end_of_data(&[]), 0);
    }

    #[test]
    fn a_damaged_record_followed_by_good_ones_is_corruption_at_its_offset() {
        let (b, starts) = segment(1, 5);
        for i in starts[2]..starts[3] {
            let mut damaged = b.clone();
            damaged[i] ^= 0x01;
            let (result, seen) = scan_all(&damaged, true);
            let (offset, reason) = corrupt_at(result);
            assert_eq!(offset, starts[2] as u64, "byte {i}");
            assert!(reason.starts_with("record 3 is unreadable"), "byte {i}: {reason}");
            assert_eq!(seen, [1, 2], "byte {i}");
        }
        // Zeros over a middle record are damage too, not padding.
        let mut zeroed = b.clone();
        zeroed[starts[1]..starts[2]].fill(0);
        assert_eq!(corrupt_at(scan_all(&zeroed, true).0), (starts[1] as u64, "record 2 is unreadable (Length)".into()));
    }

    #[test]
    fn any_damage_in_a_segment_that_is_not_the_last_is_corruption() {
        let (b, starts) = segment(1, 5);
        let last = *starts.last().unwrap();
        for cut in last + 1..b.len() {
            let (offset, reason) = corrupt_at(scan_all(&b[..cut], false).0);
            assert_eq!(offset, last as u64, "cut at {cut}");
            assert!(reason.starts_with("record 5 is unreadable"), "cut at {cut}: {reason}");
        }
        let mut damaged = b.clone();
        damaged[b.len() - 1] ^= 0x80;
        assert_eq!(corrupt_at(scan_all(&damaged, false).0), (last as u64, "record 5 is unreadable (Checksum)".into()));
        // The same damage in the last segment is a torn tail.
        assert_eq!(
            scan_all(&damaged, true).0.expect("torn").end,
            SegmentEnd::TornTail { offset: last as u64, bytes: (b.len() - last) as u64 }
        );
    }

    #[test]
    fn an_lsn_gap_is_corruption() {
        let mut b = SegmentHeader { core: 2, cores: 4, first_lsn: 1 }.encode().to_vec();
        let mut starts = Vec::new();
        for lsn in [1, 2, 4, 5] {
            starts.push(b.len() as u64);
            record::encode(lsn, NOW, &Command::Tick, &mut b);
        }
        for last in [true, false] {
            let (result, seen) = scan_all(&b, last);
            assert_eq!(corrupt_at(result), (starts[2], "record with LSN 4 where 3 was expected".into()));
            assert_eq!(seen, [1, 2]);
        }
        // A record that repeats an LSN, and a first record that is not the header's LSN.
        let mut repeat = SegmentHeader { core: 2, cores: 4, first_lsn: 1 }.encode().to_vec();
        for lsn in [1, 2, 2, 3] {
            record::encode(lsn, NOW, &Command::Tick, &mut repeat);
        }
        assert_eq!(
            corrupt_at(scan_all(&repeat, true).0),
            (32 + 2 * 25, "record with LSN 2 where 3 was expected".into())
        );
        let mut late = SegmentHeader { core: 2, cores: 4, first_lsn: 1 }.encode().to_vec();
        record::encode(2, NOW, &Command::Tick, &mut late);
        record::encode(3, NOW, &Command::Tick, &mut late);
        assert_eq!(corrupt_at(scan_all(&late, true).0), (32, "record with LSN 2 where 1 was expected".into()));
    }

    #[test]
    fn a_complete_record_with_the_wrong_lsn_at_the_end_is_corruption_not_a_torn_tail() {
        // A torn write cannot leave a whole record with a valid checksum and a wrong LSN.
        let mut b = SegmentHeader { core: 2, cores: 4, first_lsn: 1 }.encode().to_vec();
        for lsn in [1, 2, 4] {
            record::encode(lsn, NOW, &Command::Tick, &mut b);
        }
        assert_eq!(corrupt_at(scan_all(&b, true).0), (32 + 2 * 25, "record with LSN 4 where 3 was expected".into()));
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_scan() {
        let (b, _) = segment(1, 5);
        let mut seen = Vec::new();
        let result = scan(&b, &path(), true, |rec| {
            seen.push(rec.lsn);
            if rec.lsn == 3 { Err(WalError::Layout("stop".into())) } else { Ok(()) }
        });
        assert!(matches!(result, Err(WalError::Layout(m)) if m == "stop"));
        assert_eq!(seen, [1, 2, 3]);
    }
}
