//! Taking snapshots while the core serves: after every `snapshot_interval_records` log
//! records, a background task writes the core's state to `snapshot-<lsn>.snap` and deletes
//! the log segments and snapshots it makes unnecessary.
//!
//! How it works: the state machine starts a copy-on-write snapshot (it copies only the
//! pools and links, so the core stalls for microseconds); the task then reads the
//! reservation records in chunks, writing each and yielding to the foreground between
//! chunks, while the state machine keeps serving and saves the old content of any record
//! it changes before the snapshot has read it. The file is written under a temporary name,
//! made durable, and renamed only once the log holds every record the snapshot includes.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;

use super::core::CoreRuntime;
use crate::wal::writer::sync_dir;
use crate::wal::{WalError, recovery, snapshot_file};

/// Records read per chunk: a chunk is the longest the core stalls for a snapshot.
const CHUNK_RECORDS: usize = 4096;
const TMP_SUFFIX: &str = ".tmp";

/// What one snapshot cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The last record it includes.
    pub lsn: u64,
    /// Reservation records written.
    pub records: u64,
    /// File size.
    pub bytes: u64,
    /// The longest time the core was kept from serving, in µs.
    pub stall_max_us: u64,
    /// Wall time from start to durable rename, in ms.
    pub total_ms: u64,
}

/// Takes a snapshot whenever `interval_records` records were logged since the last one, or
/// as many as the last snapshot held if that is more: a snapshot writes the whole state
/// (live holds and the finished reservations kept, millions of them under load), so this
/// keeps what snapshots write below what the log writes, however large the state grows.
pub async fn snapshot_loop(runtime: Rc<CoreRuntime>, dir: PathBuf, interval_records: u64) {
    let mut last = runtime.log.stats().records;
    let mut last_size = 0;
    loop {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let records = runtime.log.stats().records;
        if records - last < interval_records.max(last_size) {
            continue;
        }
        last = records;
        match take(&runtime, &dir).await {
            Ok(r) => {
                last_size = r.records;
                tracing::info!(
                    core = runtime.core,
                    lsn = r.lsn,
                    records = r.records,
                    bytes = r.bytes,
                    stall_max_us = r.stall_max_us,
                    ms = r.total_ms,
                    "snapshot taken"
                )
            }
            Err(e) => tracing::error!(core = runtime.core, error = %e, "snapshot failed; the log is kept"),
        }
    }
}

/// Takes one snapshot now.
pub async fn take(runtime: &CoreRuntime, dir: &Path) -> Result<SnapshotReport, WalError> {
    let started = Instant::now();
    let begin = Instant::now();
    let (head, lsn) = runtime.snapshot_begin();
    let mut stall_max = begin.elapsed();
    let name = snapshot_file::file_name(lsn);
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: glommio::GlommioError<()>| WalError::Io { path, source: std::io::Error::other(e.to_string()) }
    };
    let file = BufferedFile::create(&tmp).await.map_err(io(&tmp))?;
    let mut pos = 0u64;
    let mut write = async |bytes: Vec<u8>| -> Result<(), WalError> {
        let len = bytes.len();
        let mut written = 0;
        let mut rest = bytes;
        while written < len {
            let n = file.write_at(rest.clone(), pos).await.map_err(io(&tmp))?;
            written += n;
            pos += n as u64;
            rest.drain(..n);
        }
        Ok(())
    };
    write(snapshot_file::encode_head(lsn, &head)).await?;
    let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
    loop {
        let t = Instant::now();
        let done = runtime.snapshot_chunk(CHUNK_RECORDS, &mut chunk);
        stall_max = stall_max.max(t.elapsed());
        if !chunk.is_empty() || head.records == 0 {
            write(snapshot_file::encode_chunk(&chunk)).await?;
        }
        chunk.clear();
        if done {
            break;
        }
        glommio::yield_if_needed().await;
    }
    file.fdatasync().await.map_err(io(&tmp))?;
    file.close().await.map_err(io(&tmp))?;
    // The snapshot may only stand for the log once the log itself holds everything in it.
    runtime.log.durable(lsn).await;
    let path = dir.join(&name);
    std::fs::rename(&tmp, &path).map_err(|source| WalError::Io { path: path.clone(), source })?;
    sync_dir(dir)?;
    remove_covered(dir, lsn)?;
    Ok(SnapshotReport {
        lsn,
        records: head.records,
        bytes: pos,
        stall_max_us: stall_max.as_micros() as u64,
        total_ms: started.elapsed().as_millis() as u64,
    })
}

/// Deletes the snapshots older than the one at `lsn` and the log segments whose every
/// record it includes (a segment is covered when the next one starts at or before
/// `lsn + 1`); the newest segment always stays.
fn remove_covered(dir: &Path, lsn: u64) -> Result<(), WalError> {
    let recovery::DirFiles { snapshots, segments } = recovery::list(dir)?;
    let remove = |path: &Path| std::fs::remove_file(path).map_err(|source| WalError::Io { path: path.into(), source });
    for (snap_lsn, path) in &snapshots {
        if *snap_lsn < lsn {
            remove(path)?;
        }
    }
    for pair in segments.windows(2) {
        if pair[1].0 <= lsn + 1 {
            remove(&pair[0].1)?;
        }
    }
    sync_dir(dir)
}

/// Deletes snapshots a crash interrupted before they were complete.
pub fn remove_unfinished(dir: &Path) -> Result<(), WalError> {
    let entries = std::fs::read_dir(dir).map_err(|source| WalError::Io { path: dir.into(), source })?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            std::fs::remove_file(entry.path()).map_err(|source| WalError::Io { path: entry.path(), source })?;
        }
    }
    Ok(())
}
