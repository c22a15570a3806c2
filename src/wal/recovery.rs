//! Recovery of one core: load its newest snapshot, replay the records after it, cut a torn
//! tail off the last segment (or remove a last segment whose header a crash kept from the
//! disk). Anything else that is damaged stops recovery with the file and offset: the server
//! refuses to start rather than silently drop acknowledged data.
//!
//! Replay feeds every record to the state machine exactly as the core applied it. What
//! the replayed commands send is not sent again here: every message a core has not seen
//! acknowledged is kept in its state ([`crate::shard::Link`]), and the server sends those
//! again once all cores are up.

use std::path::{Path, PathBuf};

use super::WalError;
use super::record::{self, Record};
use super::segment::{self, SEGMENT_HEADER_SIZE, SegmentEnd, SegmentHeader};
use super::snapshot_file;
use crate::shard::{Command, Engine};

/// What recovery found and rebuilt for one core.
pub struct Recovered {
    /// The state; `None` for a core with no snapshot and no record (a new data directory).
    pub engine: Option<Engine>,
    /// LSN of the last record (0 if none).
    pub last_lsn: u64,
    /// LSN the snapshot covers (0 if none).
    pub snapshot_lsn: u64,
    /// Records replayed after the snapshot.
    pub replayed: u64,
    /// The segment files in LSN order: (first LSN, path).
    pub segments: Vec<(u64, PathBuf)>,
    /// The last segment and the length of its good records: where appending continues.
    pub append_at: Option<(PathBuf, u64)>,
    /// A torn tail found at the end of the last segment: (file, offset, bytes); offset 0
    /// for a last segment without a header (then `append_at` is `None`).
    pub torn: Option<(PathBuf, u64, u64)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.into(), source }
}

/// The snapshot and segment files of a core directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirFiles {
    /// Snapshots: (LSN, path), by LSN.
    pub snapshots: Vec<(u64, PathBuf)>,
    /// Segments: (first LSN, path), by LSN.
    pub segments: Vec<(u64, PathBuf)>,
}

/// Snapshot and segment files of a core directory, each sorted by LSN.
pub fn list(dir: &Path) -> Result<DirFiles, WalError> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    if !dir.exists() {
        return Ok(DirFiles::default());
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(lsn) = snapshot_file::parse_file_name(&name) {
            snapshots.push((lsn, entry.path()));
        } else if let Some(lsn) = segment::parse_file_name(&name) {
            segments.push((lsn, entry.path()));
        }
    }
    snapshots.sort();
    segments.sort();
    Ok(DirFiles { snapshots, segments })
}

/// The `core-<n>` directories of `data_dir` that hold a snapshot or a log segment, by core
/// (none if `data_dir` does not exist).
pub fn cores_with_data(data_dir: &Path) -> Result<Vec<(u16, PathBuf)>, WalError> {
    let Ok(entries) = std::fs::read_dir(data_dir) else { return Ok(Vec::new()) };
    let mut cores = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(data_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("core-").and_then(|n| n.parse::<u16>().ok()) else { continue };
        let files = list(&entry.path())?;
        if !files.snapshots.is_empty() || !files.segments.is_empty() {
            cores.push((n, entry.path()));
        }
    }
    cores.sort();
    Ok(cores)
}

/// Recovers core `core` of `cores` from `dir`. `each` sees every record read (replayed or
/// not); with `cut_torn_tail` a torn tail is removed from the file (a last segment without
/// a header, the whole file). Without it, nothing in `dir` changes.
pub fn recover(
    dir: &Path,
    core: u16,
    cores: u16,
    cut_torn_tail: bool,
    mut each: impl FnMut(&Record),
) -> Result<Recovered, WalError> {
    let DirFiles { snapshots, segments } = list(dir)?;
    let mut engine = None;
    let mut snapshot_lsn = 0;
    if let Some((lsn, path)) = snapshots.last() {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let snap = snapshot_file::decode(&bytes, path)?;
        if snap.lsn != *lsn || (snap.head.core, snap.head.cores) != (core, cores) {
            return Err(WalError::Layout(format!(
                "{}: snapshot of core {} of {} (LSN {}), expected core {core} of {cores}",
                path.display(),
                snap.head.core,
                snap.head.cores,
                snap.lsn
            )));
        }
        let restored = Engine::restore(&snap.head, &snap.records).map_err(|reason| WalError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason,
        })?;
        engine = Some(restored);
        snapshot_lsn = *lsn;
    }
    let mut last_lsn = snapshot_lsn;
    let mut replayed = 0;
    let mut append_at = None;
    let mut torn = None;
    let mut bytes = Vec::new();
    let (mut drop_sent, mut drop_decided) = (Vec::new(), Vec::new());
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if !last && segments[i + 1].0 <= snapshot_lsn + 1 {
            continue; // Entirely before the snapshot (left behind by an interrupted clean-up).
        }
        read_segment(path, &mut bytes)?;
        if last && never_written(&bytes) {
            // A crash while the segment was being started: it holds no record (none is
            // written before its header is durable). The log starts it again.
            torn = Some((path.clone(), 0, bytes.len() as u64));
            if cut_torn_tail {
                std::fs::remove_file(path).map_err(io(path))?;
                super::writer::sync_dir(dir)?;
            }
            break;
        }
        // The layout is checked before any record is replayed: another core's records
        // could break this core's state machine.
        let header = SegmentHeader::decode(&bytes, path)?;
        if (header.core, header.cores) != (core, cores) || header.first_lsn != *first_lsn {
            return Err(WalError::Layout(format!(
                "{}: log of core {} of {} starting at LSN {}, expected core {core} of {cores} starting at {first_lsn}",
                path.display(),
                header.core,
                header.cores,
                header.first_lsn
            )));
        }
        let scan = segment::scan(&bytes, path, last, |rec| {
            each(&rec);
            if rec.lsn <= snapshot_lsn {
                return Ok(());
            }
            let corrupt =
                |reason: String| WalError::Corrupt { path: path.clone(), offset: offset_of(&bytes, rec.lsn), reason };
            if rec.lsn != last_lsn + 1 {
                return Err(corrupt(format!(
                    "log continues at LSN {} after {}: records are missing",
                    rec.lsn, last_lsn
                )));
            }
            let e = match &mut engine {
                Some(e) => e,
                None => match rec.command {
                    Command::SetLimits(cfg) => engine.insert(Engine::new(cfg, rec.now_ms)),
                    _ => return Err(corrupt("a log without a snapshot must start with the limits record".into())),
                },
            };
            e.apply(rec.now_ms, rec.command);
            // What replay sends and decides is dropped (section 8.2 of docs/WAL.md).
            e.take_outbox(&mut drop_sent);
            drop_sent.clear();
            e.take_completions(&mut drop_decided);
            drop_decided.clear();
            last_lsn = rec.lsn;
            replayed += 1;
            Ok(())
        })?;
        if let SegmentEnd::TornTail { offset, bytes } = scan.end {
            torn = Some((path.clone(), offset, bytes));
            if cut_torn_tail {
                let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io(path))?;
                file.set_len(offset).map_err(io(path))?;
                file.sync_all().map_err(io(path))?;
            }
        }
        if last {
            append_at = Some((path.clone(), scan.valid_len));
        }
    }
    Ok(Recovered { engine, last_lsn, snapshot_lsn, replayed, segments, append_at, torn })
}

/// Reads the file at `path` into `buf`, which keeps its memory from one segment to the next
/// (segments are up to `segment_size_bytes` each; fresh memory for each would be faulted in
/// again).
fn read_segment(path: &Path, buf: &mut Vec<u8>) -> Result<(), WalError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len() as usize;
    buf.clear();
    if buf.capacity() < len {
        buf.reserve_exact(len);
        crate::shard::huge::advise_spare(buf);
    }
    file.read_to_end(buf).map_err(io(path))?;
    Ok(())
}

/// True for a segment file whose header never reached the disk: shorter than a header, or
/// nothing but zeros. As the last segment, it is what a crash while the log was starting
/// that segment leaves (no record is written before the header is durable).
pub fn never_written(bytes: &[u8]) -> bool {
    bytes.len() < SEGMENT_HEADER_SIZE || bytes.iter().all(|&b| b == 0)
}

/// Where the record with LSN `lsn` starts in a segment's bytes (for error messages).
fn offset_of(bytes: &[u8], lsn: u64) -> u64 {
    let mut pos = SEGMENT_HEADER_SIZE;
    while let Ok((rec, size)) = record::decode(&bytes[pos..]) {
        if rec.lsn == lsn {
            break;
        }
        pos += size;
    }
    pos as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::control::PoolCreate;
    use crate::protocol::{ConfirmOp, ExtendOp, ReleaseOp, ReserveOp};
    use crate::shard::snapshot::{HoldSnap, SnapshotHead};
    use crate::shard::{EngineConfig, PeerMsg};
    use crate::wal::segment::SegmentHeader;
    use crate::wal::{TempDir, record};

    const T0: u64 = 1_700_000_000_000;

    fn limits(core: u16, cores: u16) -> EngineConfig {
        EngineConfig {
            core,
            cores,
            holds_max: 100,
            parked_max: 8,
            retention_ms: 60_000,
            retention_min_ms: 0,
            retained_max: 400,
            pools_max: 4,
        }
    }

    fn user(n: u128) -> u128 {
        1000 + n
    }

    fn reserve(id: u128, qty: u32, ttl_ms: u32) -> Command {
        Command::Reserve(ReserveOp { id, user: user(id), pool: 1, qty, ttl_ms, priority: 0 })
    }

    /// The log of core 0 of 2, as the server writes it: the limits, a pool whose home is
    /// core 1, and operations that borrow from core 1, confirm, extend, release, expire,
    /// deactivate and change limits. LSN `i + 1` is entry `i`.
    fn log() -> Vec<(u64, Command)> {
        let req = PoolCreate {
            name: "seats".into(),
            capacity: 10,
            hold_ttl_ms_default: 1000,
            hold_ttl_ms_max: 5000,
            kind: 0,
            active: true,
            rules: Default::default(),
        };
        let def = Engine::new(limits(0, 2), T0).validate_pool_create(&req).expect("valid");
        vec![
            (T0, Command::SetLimits(limits(0, 2))),
            (T0, Command::CreatePool(def)),
            (T0 + 1, reserve(1, 4, 0)), // held from the shard's 5 units
            (T0 + 2, reserve(2, 3, 0)), // parked: borrows 2 from core 1
            (T0 + 3, Command::Peer { from: 1, seq: 1, msg: PeerMsg::Grant { pool: 1, units: 3, ticket: None } }),
            (T0 + 4, Command::Confirm(ConfirmOp { id: 1, user: user(1), commit_ref: 99 })),
            (T0 + 5, Command::Extend(ExtendOp { id: 2, user: user(2), ttl_ms: 4000 })),
            (T0 + 6, reserve(3, 1, 0)),
            (T0 + 7, Command::Release(ReleaseOp { id: 3, user: user(3) })),
            (T0 + 8, reserve(4, 1, 500)),
            (T0 + 600, Command::Tick), // reservation 4 expires
            (T0 + 601, Command::SetPoolActive { pool: 1, active: false }),
            (T0 + 602, Command::SetLimits(EngineConfig { holds_max: 200, ..limits(0, 2) })),
        ]
    }

    /// Applies `commands` to `e` as recovery does, dropping what they send and decide.
    fn apply_all(e: &mut Engine, commands: &[(u64, Command)]) {
        for (now, command) in commands {
            e.apply(*now, command.clone());
            e.take_outbox(&mut Vec::new());
            e.take_completions(&mut Vec::new());
        }
    }

    /// The engine after the first `n` records of [`log`], built the way the server does.
    fn reference(n: usize) -> Engine {
        let log = log();
        let mut e = Engine::new(limits(0, 2), log[0].0);
        apply_all(&mut e, &log[..n]);
        e
    }

    /// Everything an engine's state is made of, records ordered by id.
    fn state(e: &mut Engine) -> (SnapshotHead, Vec<HoldSnap>) {
        let head = e.snapshot_begin();
        let mut records = Vec::new();
        while !e.snapshot_chunk(usize::MAX, &mut records) {}
        records.sort_by_key(|r| r.id);
        (head, records)
    }

    /// Writes the segment of `layout` (core, cores) whose records are `commands` from LSN
    /// `first_lsn` on.
    fn write_segment(dir: &Path, layout: (u16, u16), first_lsn: u64, commands: &[(u64, Command)]) -> PathBuf {
        let mut b = SegmentHeader { core: layout.0, cores: layout.1, first_lsn }.encode().to_vec();
        for (i, (now, command)) in commands.iter().enumerate() {
            record::encode(first_lsn + i as u64, *now, command, &mut b);
        }
        let path = dir.join(segment::file_name(first_lsn));
        std::fs::write(&path, b).expect("write a segment");
        path
    }

    /// Writes the log's records `from..=to` (LSNs) as one segment of core 0 of 2.
    fn write_records(dir: &Path, from: u64, to: u64) -> PathBuf {
        write_segment(dir, (0, 2), from, &log()[from as usize - 1..to as usize])
    }

    /// Writes a snapshot of `e` as the one after record `lsn`, in chunks of 2 records.
    fn write_snapshot(dir: &Path, lsn: u64, e: &mut Engine) -> PathBuf {
        let head = e.snapshot_begin();
        let mut bytes = snapshot_file::encode_head(lsn, &head);
        loop {
            let mut chunk = Vec::new();
            let done = e.snapshot_chunk(2, &mut chunk);
            if !chunk.is_empty() || head.records == 0 {
                bytes.extend(snapshot_file::encode_chunk(&chunk));
            }
            if done {
                break;
            }
        }
        let path = dir.join(snapshot_file::file_name(lsn));
        std::fs::write(&path, bytes).expect("write a snapshot");
        path
    }

    /// Recovers core 0 of 2 from `dir` without changing it, with the LSNs of the records read.
    fn recover_read_only(dir: &Path) -> (Result<Recovered, WalError>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = recover(dir, 0, 2, false, |rec| seen.push(rec.lsn));
        (result, seen)
    }

    fn corrupt(result: Result<Recovered, WalError>) -> (PathBuf, u64, String) {
        match result {
            Err(WalError::Corrupt { path, offset, reason }) => (path, offset, reason),
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(r) => panic!("expected corruption, recovered up to LSN {}", r.last_lsn),
        }
    }

    fn layout_error(result: Result<Recovered, WalError>) -> String {
        match result {
            Err(WalError::Layout(message)) => message,
            Err(other) => panic!("expected a layout error, got {other}"),
            Ok(r) => panic!("expected a layout error, recovered up to LSN {}", r.last_lsn),
        }
    }

    /// Every file of `dir` with its content.
    fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| {
                let path = e.expect("entry").path();
                let bytes = std::fs::read(&path).expect("read");
                (path, bytes)
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn the_scenario_borrows_expires_and_keeps_a_message() {
        let mut e = reference(13);
        let link = e.link(1).clone();
        assert_eq!((link.sent, link.received, link.unacked.len()), (1, 1, 1), "one borrow sent, one grant applied");
        assert_eq!(e.stats().expirations, 1);
        assert_eq!(e.config().holds_max, 200);
        let (head, records) = state(&mut e);
        assert!(!head.pools[0].active);
        let states: Vec<(u128, u8)> = records.iter().map(|r| (r.id, r.state)).collect();
        assert_eq!(states, [(1, 2), (2, 1), (3, 3), (4, 4)], "confirmed, held, released, expired");
    }

    #[test]
    fn list_finds_snapshots_and_segments_in_lsn_order() {
        let dir = TempDir::new("recovery-list");
        for name in
            ["wal-00000000000000000010.log", "wal-00000000000000000002.log", "snapshot-00000000000000000009.snap"]
        {
            std::fs::write(dir.0.join(name), b"").unwrap();
        }
        for other in ["snapshot-00000000000000000011.snap.tmp", "notes.txt", "wal-1.log.bak"] {
            std::fs::write(dir.0.join(other), b"").unwrap();
        }
        let files = list(&dir.0).expect("lists");
        assert_eq!(files.snapshots, [(9, dir.0.join("snapshot-00000000000000000009.snap"))]);
        assert_eq!(
            files.segments,
            [(2, dir.0.join("wal-00000000000000000002.log")), (10, dir.0.join("wal-00000000000000000010.log"))]
        );
        assert_eq!(list(&dir.0.join("missing")).expect("lists"), DirFiles::default());
    }

    #[test]
    fn an_empty_or_missing_directory_recovers_nothing() {
        let dir = TempDir::new("recovery-empty");
        for d in [dir.0.clone(), dir.0.join("missing")] {
            let r = recover(&d, 0, 2, true, |_| panic!("no record")).expect("nothing to recover");
            assert!(r.engine.is_none());
            assert_eq!((r.last_lsn, r.snapshot_lsn, r.replayed), (0, 0, 0));
            assert!(r.segments.is_empty() && r.append_at.is_none() && r.torn.is_none());
        }
    }

    #[test]
    fn records_alone_rebuild_the_state() {
        let dir = TempDir::new("recovery-records");
        let first = write_records(&dir.0, 1, 5);
        let second = write_records(&dir.0, 6, 13);
        let (result, seen) = recover_read_only(&dir.0);
        let mut r = result.expect("recovers");
        assert_eq!(seen, (1..=13).collect::<Vec<_>>());
        assert_eq!((r.last_lsn, r.snapshot_lsn, r.replayed), (13, 0, 13));
        assert_eq!(r.segments, [(1, first), (6, second.clone())]);
        let len = std::fs::metadata(&second).unwrap().len();
        assert_eq!(r.append_at, Some((second, len)));
        assert_eq!(r.torn, None);
        let engine = r.engine.as_mut().expect("an engine");
        assert_eq!(state(engine), state(&mut reference(13)));
    }

    #[test]
    fn a_log_without_a_snapshot_must_start_with_the_limits() {
        let dir = TempDir::new("recovery-no-limits");
        let path = write_segment(&dir.0, (0, 2), 1, &log()[1..4]);
        let (result, seen) = recover_read_only(&dir.0);
        let (p, offset, reason) = corrupt(result);
        assert_eq!((p, offset), (path, 32));
        assert_eq!(reason, "a log without a snapshot must start with the limits record");
        assert_eq!(seen, [1]);
    }

    #[test]
    fn a_snapshot_and_the_log_after_it_give_the_state_of_the_whole_log() {
        let expected = state(&mut reference(13));
        for lsn in 1..=13u64 {
            let dir = TempDir::new(&format!("recovery-snapshot-{lsn}"));
            write_records(&dir.0, 1, 5);
            write_records(&dir.0, 6, 13);
            // An older snapshot is left over: the newest one counts.
            if lsn > 1 {
                write_snapshot(&dir.0, 1, &mut reference(1));
            }
            write_snapshot(&dir.0, lsn, &mut reference(lsn as usize));
            let (result, seen) = recover_read_only(&dir.0);
            let mut r = result.unwrap_or_else(|e| panic!("snapshot at {lsn}: {e}"));
            assert_eq!((r.last_lsn, r.snapshot_lsn, r.replayed), (13, lsn, 13 - lsn), "snapshot at {lsn}");
            // The first segment is not even read once the snapshot covers it.
            let first_read = if lsn >= 5 { 6 } else { 1 };
            assert_eq!(seen, (first_read..=13).collect::<Vec<_>>(), "snapshot at {lsn}");
            assert_eq!(state(r.engine.as_mut().expect("an engine")), expected, "snapshot at {lsn}");
        }
    }

    #[test]
    fn a_snapshot_alone_is_the_state() {
        let dir = TempDir::new("recovery-snapshot-alone");
        write_snapshot(&dir.0, 13, &mut reference(13));
        let mut r = recover(&dir.0, 0, 2, true, |_| panic!("no record")).expect("recovers");
        assert_eq!((r.last_lsn, r.snapshot_lsn, r.replayed), (13, 13, 0));
        assert_eq!(r.append_at, None, "the log starts a new segment after the snapshot");
        assert_eq!(state(r.engine.as_mut().expect("an engine")), state(&mut reference(13)));
    }

    #[test]
    fn a_log_that_continues_with_a_gap_after_the_snapshot_is_refused() {
        let dir = TempDir::new("recovery-gap-after-snapshot");
        write_records(&dir.0, 1, 5);
        write_snapshot(&dir.0, 7, &mut reference(7));
        let path = write_records(&dir.0, 9, 13);
        let (p, offset, reason) = corrupt(recover_read_only(&dir.0).0);
        assert_eq!((p, offset), (path, 32));
        assert_eq!(reason, "log continues at LSN 9 after 7: records are missing");
    }

    #[test]
    fn a_log_with_a_gap_between_segments_is_refused_at_the_record() {
        let dir = TempDir::new("recovery-gap-between");
        write_records(&dir.0, 1, 5);
        let mut commands = log()[6..13].to_vec();
        commands.insert(0, (T0 + 6, Command::Tick));
        // wal-7 holds LSNs 7..=14: LSN 6 is missing.
        let path = write_segment(&dir.0, (0, 2), 7, &commands);
        let (p, offset, reason) = corrupt(recover_read_only(&dir.0).0);
        assert_eq!((p, offset), (path, 32));
        assert_eq!(reason, "log continues at LSN 7 after 5: records are missing");
    }

    #[test]
    fn a_corrupt_record_in_an_earlier_segment_is_refused_with_its_file_and_offset() {
        let dir = TempDir::new("recovery-corrupt-earlier");
        let first = write_records(&dir.0, 1, 5);
        write_records(&dir.0, 6, 13);
        let mut bytes = std::fs::read(&first).unwrap();
        let last_record_at = bytes.len() - 59; // LSN 5 is a peer message: 59 bytes
        bytes[last_record_at + 30] ^= 0xFF;
        std::fs::write(&first, &bytes).unwrap();
        let (p, offset, reason) = corrupt(recover_read_only(&dir.0).0);
        assert_eq!((p, offset), (first, last_record_at as u64));
        assert_eq!(reason, "record 5 is unreadable (Checksum)");
    }

    #[test]
    fn a_corrupt_snapshot_is_refused() {
        let dir = TempDir::new("recovery-corrupt-snapshot");
        write_records(&dir.0, 1, 13);
        let path = write_snapshot(&dir.0, 7, &mut reference(7));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (p, offset, reason) = corrupt(recover_read_only(&dir.0).0);
        assert_eq!((p, offset, reason.as_str()), (path, 24, "head checksum mismatch"));
    }

    #[test]
    fn a_torn_tail_is_reported_and_cut_only_when_asked() {
        let dir = TempDir::new("recovery-torn");
        let path = write_records(&dir.0, 1, 13);
        let good_len = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        record::encode(14, T0 + 700, &Command::Tick, &mut bytes);
        bytes.truncate(good_len as usize + 20);
        std::fs::write(&path, &bytes).unwrap();
        let before = contents(&dir.0);

        let (result, seen) = recover_read_only(&dir.0);
        let r = result.expect("a torn tail is no error");
        assert_eq!(seen.last(), Some(&13));
        assert_eq!(r.last_lsn, 13);
        assert_eq!(r.torn, Some((path.clone(), good_len, 20)));
        assert_eq!(r.append_at, Some((path.clone(), good_len)));
        assert_eq!(contents(&dir.0), before, "a read-only recovery changes nothing");

        let r = recover(&dir.0, 0, 2, true, |_| {}).expect("recovers");
        assert_eq!(r.torn, Some((path.clone(), good_len, 20)));
        assert_eq!(std::fs::read(&path).unwrap(), &bytes[..good_len as usize], "the torn bytes are gone");

        let mut r = recover(&dir.0, 0, 2, true, |_| {}).expect("recovers");
        assert_eq!((r.torn, r.last_lsn), (None, 13));
        assert_eq!(state(r.engine.as_mut().unwrap()), state(&mut reference(13)));
    }

    #[test]
    fn a_core_or_core_count_mismatch_is_a_layout_error() {
        let dir = TempDir::new("recovery-layout");
        write_records(&dir.0, 1, 13);
        let as_core_1 = layout_error(recover(&dir.0, 1, 2, false, |_| {}));
        assert!(
            as_core_1.ends_with("log of core 0 of 2 starting at LSN 1, expected core 1 of 2 starting at 1"),
            "{as_core_1}"
        );
        let with_3_cores = layout_error(recover(&dir.0, 0, 3, false, |_| {}));
        assert!(with_3_cores.contains("expected core 0 of 3"), "{with_3_cores}");

        write_snapshot(&dir.0, 13, &mut reference(13));
        let snapshot = layout_error(recover(&dir.0, 0, 3, false, |_| {}));
        assert!(snapshot.ends_with("snapshot of core 0 of 2 (LSN 13), expected core 0 of 3"), "{snapshot}");
    }

    #[test]
    fn a_segment_of_another_core_is_refused_before_its_records_are_replayed() {
        // Core 1's log after core 0's snapshot: replaying its limits into core 0 would break
        // the state machine's invariants.
        let dir = TempDir::new("recovery-other-core");
        write_snapshot(&dir.0, 7, &mut reference(7));
        write_segment(&dir.0, (1, 2), 8, &[(T0 + 9, Command::SetLimits(limits(1, 2)))]);
        let message = layout_error(recover_read_only(&dir.0).0);
        assert!(
            message.ends_with("log of core 1 of 2 starting at LSN 8, expected core 0 of 2 starting at 8"),
            "{message}"
        );
    }

    #[test]
    fn a_segment_whose_header_disagrees_with_its_name_is_a_layout_error() {
        let dir = TempDir::new("recovery-renamed");
        let path = write_records(&dir.0, 1, 13);
        std::fs::rename(&path, dir.0.join(segment::file_name(2))).unwrap();
        let message = layout_error(recover_read_only(&dir.0).0);
        assert!(
            message.ends_with("log of core 0 of 2 starting at LSN 1, expected core 0 of 2 starting at 2"),
            "{message}"
        );
    }

    #[test]
    fn a_segment_left_without_its_header_by_a_crash_is_a_torn_tail() {
        // The writer creates a segment, then writes and syncs its header before any record:
        // a crash in between leaves an empty (or zero-filled) last segment with no record.
        for stub in [Vec::new(), vec![0u8; 32], vec![0u8; 4096], b"SCWAL\0".to_vec()] {
            let dir = TempDir::new(&format!("stub-{}", stub.len()));
            write_records(&dir.0, 1, 13);
            let stub_path = dir.0.join(segment::file_name(14));
            std::fs::write(&stub_path, &stub).unwrap();
            let before = contents(&dir.0);
            let (result, _) = recover_read_only(&dir.0);
            let r = result.unwrap_or_else(|e| panic!("stub of {} bytes: {e}", stub.len()));
            assert_eq!(r.last_lsn, 13);
            assert_eq!(r.torn, Some((stub_path.clone(), 0, stub.len() as u64)));
            assert_eq!(r.append_at, None, "the log starts the segment again");
            assert_eq!(contents(&dir.0), before);

            let mut r = recover(&dir.0, 0, 2, true, |_| {}).expect("recovers");
            assert!(!stub_path.exists(), "the stub is removed");
            assert_eq!(r.last_lsn, 13);
            assert_eq!(state(r.engine.as_mut().unwrap()), state(&mut reference(13)));
        }
        // Not the last segment: corruption.
        let dir = TempDir::new("recovery-stub-inside");
        write_records(&dir.0, 1, 5);
        let stub_path = dir.0.join(segment::file_name(6));
        std::fs::write(&stub_path, []).unwrap();
        write_records(&dir.0, 7, 13);
        let (p, offset, reason) = corrupt(recover_read_only(&dir.0).0);
        assert_eq!((p, offset, reason.as_str()), (stub_path, 0, "shorter than a segment header"));
    }
}
