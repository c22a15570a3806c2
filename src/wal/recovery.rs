//! Recovery of one core: load its newest snapshot, replay the records after it, cut a torn
//! tail off the last segment. Anything else that is damaged stops recovery with the file
//! and offset: the server refuses to start rather than silently drop acknowledged data.
//!
//! Replay feeds every record to the state machine exactly as the core applied it. What
//! the replayed commands send is not sent again here: every message a core has not seen
//! acknowledged is kept in its state ([`crate::shard::Link`]), and the server sends those
//! again once all cores are up.

use std::path::{Path, PathBuf};

use super::WalError;
use super::record::Record;
use super::segment::{self, SegmentEnd};
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
    /// A torn tail found at the end of the last segment: (file, offset, bytes).
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

/// Recovers core `core` of `cores` from `dir`. `each` sees every record read (replayed or
/// not); with `cut_torn_tail` a torn tail is removed from the file.
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
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if !last && segments[i + 1].0 <= snapshot_lsn + 1 {
            continue; // Entirely before the snapshot (left behind by an interrupted clean-up).
        }
        let bytes = std::fs::read(path).map_err(io(path))?;
        let scan = segment::scan(&bytes, path, last, |rec| {
            each(&rec);
            if rec.lsn <= snapshot_lsn {
                return Ok(());
            }
            if rec.lsn != last_lsn + 1 {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("log continues at LSN {} after {}: records are missing", rec.lsn, last_lsn),
                });
            }
            let e = match &mut engine {
                Some(e) => e,
                None => match rec.command {
                    Command::SetLimits(cfg) => engine.insert(Engine::new(cfg, rec.now_ms)),
                    _ => {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset: 0,
                            reason: "a log without a snapshot must start with the limits record".into(),
                        });
                    }
                },
            };
            e.apply(rec.now_ms, rec.command);
            let mut drop_sent = Vec::new();
            e.take_outbox(&mut drop_sent);
            let mut drop_decided = Vec::new();
            e.take_completions(&mut drop_decided);
            last_lsn = rec.lsn;
            replayed += 1;
            Ok(())
        })?;
        if (scan.header.core, scan.header.cores) != (core, cores) || scan.header.first_lsn != *first_lsn {
            return Err(WalError::Layout(format!(
                "{}: log of core {} of {} starting at LSN {}, expected core {core} of {cores} starting at {first_lsn}",
                path.display(),
                scan.header.core,
                scan.header.cores,
                scan.header.first_lsn
            )));
        }
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
