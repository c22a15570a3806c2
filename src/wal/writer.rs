//! The log writer of one core: records are encoded into a buffer as commands are applied,
//! and one task writes whatever has gathered in one durable write (group commit), then
//! wakes everything that waited for those records. While a write is in flight, new records
//! gather for the next one. In `batch` mode the task waits `fsync_interval_ms` between
//! writes; in `none` mode there is no log at all.
//!
//! Segments are written with direct I/O (`O_DIRECT`) and `O_DSYNC`: a write is durable
//! when it completes, with no fdatasync after it, and the completion comes through the
//! core's own io_uring without a kernel worker thread. Direct writes cover whole 4 KiB
//! blocks, so each write starts at the block where the segment's records end, rewriting
//! that block's bytes unchanged before the new records, and is padded with zeros to the
//! end of its last block; recovery reads zeros after the last record as a clean end. A
//! crash during a write cannot damage the records already in its first block: those
//! bytes are rewritten with the same bytes. (A power cut that stores a later block of the
//! last write but not an earlier one leaves whole records after damage, which recovery
//! refuses as corruption: docs/WAL.md, section 13.)
//!
//! New segments are files filled with zeros ahead of time (a spare, prepared in the
//! background once the current segment holds [`SPARE_AFTER`] bytes or half its maximum):
//! writing over blocks that already exist on disk changes no file metadata, so the device
//! only has to store the data. Without a spare ready (the first segment of a fresh log, or
//! if preparing one failed) a segment is a new file that grows, and the writer moves on to
//! the spare as soon as one is ready.
//!
//! A failed write stops the server (a panic, which aborts the process): a log that may
//! have lost records cannot promise anything any more.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::io::{DmaFile, OpenOptions};

use super::record::{self, RECORD_HEADER_SIZE, is_logged};
use super::segment::{self, SegmentHeader};
use super::{Durability, WalError};
use crate::shard::Command;

/// Direct writes start and end on multiples of this (the largest logical block size of
/// common devices).
pub const BLOCK: u64 = 4096;

/// A spare segment is prepared once the current one holds this many bytes (or half its
/// maximum, if that is less): a log that never grows this far never writes a spare.
pub const SPARE_AFTER: u64 = 1 << 20;

/// The name of the spare segment being prepared or ready. It ends in `.tmp`, so a start
/// deletes it with the unfinished snapshots.
pub const SPARE_NAME: &str = "wal-spare.log.tmp";

/// Bytes of zeros per write while a spare is filled.
const ZERO_CHUNK: usize = 1 << 20;

/// Counters of the log (plain integers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Bytes of records written.
    pub bytes: u64,
    /// Durable writes done (one per group commit).
    pub syncs: u64,
    /// Nanoseconds spent in durable writes.
    pub sync_ns: u64,
    /// Segments started on a spare (filled with zeros ahead of time).
    pub spares_used: u64,
}

/// How a log is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// The durability mode.
    pub mode: Durability,
    /// A new segment starts beyond this size, in bytes.
    pub segment_size_max: u64,
    /// In `batch` mode, the wait between writes.
    pub fsync_interval: Duration,
}

/// The spare segment's state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spare {
    /// None, and none wanted yet.
    Idle,
    /// Being filled with zeros.
    Preparing,
    /// Filled and durable, waiting to become the next segment.
    Ready,
    /// Preparing one failed: segments grow from now on.
    Off,
}

/// Told the duration of each durable write, in seconds.
type WriteObserver = Box<dyn Fn(f64)>;

/// One core's log.
pub struct LogWriter {
    mode: Durability,
    dir: PathBuf,
    core: u16,
    cores: u16,
    segment_size_max: u64,
    fsync_interval: Duration,
    buf: RefCell<Vec<u8>>,
    next_lsn: Cell<u64>,
    durable_lsn: Cell<u64>,
    /// The current segment.
    file: RefCell<Option<Rc<Segment>>>,
    /// Where the current segment's records end.
    file_len: Cell<u64>,
    /// True if the current segment was a spare (its blocks exist on disk).
    file_zeroed: Cell<bool>,
    /// The bytes of the current segment's last, partly filled block: the next write
    /// starts with them.
    tail: RefCell<Vec<u8>>,
    spare: Cell<Spare>,
    spare_task: RefCell<Option<Waker>>,
    writer: RefCell<Option<Waker>>,
    /// Tasks waiting for the log, with the LSN each waits for.
    waiters: RefCell<Vec<(u64, Waker)>>,
    stats: Cell<LogStats>,
    /// Told the duration of every durable write, in seconds (the metrics' histogram).
    observer: RefCell<Option<WriteObserver>>,
}

impl LogWriter {
    /// A log for core `core` of `cores` in `dir` whose last record is `last_lsn`;
    /// `append_at` is the last segment and where its good records end (after recovery).
    pub async fn open(
        options: LogOptions,
        dir: &Path,
        (core, cores): (u16, u16),
        last_lsn: u64,
        append_at: Option<(PathBuf, u64)>,
    ) -> Result<LogWriter, WalError> {
        let LogOptions { mode, segment_size_max, fsync_interval } = options;
        let writer = LogWriter {
            mode,
            dir: dir.to_path_buf(),
            core,
            cores,
            segment_size_max,
            fsync_interval,
            buf: RefCell::new(Vec::with_capacity(1 << 20)),
            next_lsn: Cell::new(last_lsn + 1),
            durable_lsn: Cell::new(last_lsn),
            file: RefCell::new(None),
            file_len: Cell::new(0),
            file_zeroed: Cell::new(false),
            tail: RefCell::new(Vec::with_capacity(BLOCK as usize)),
            spare: Cell::new(Spare::Idle),
            spare_task: RefCell::new(None),
            writer: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            stats: Cell::new(LogStats::default()),
            observer: RefCell::new(None),
        };
        if mode != Durability::None {
            let reopened = match append_at {
                Some((path, len)) => writer.reopen(path, len).await?,
                None => false,
            };
            if !reopened {
                writer.start_segment(last_lsn + 1).await?;
            }
        }
        Ok(writer)
    }

    /// Continues the segment `path` whose good records end at `len`; false (and nothing
    /// done) if it has an older format version: it is left as it is.
    async fn reopen(&self, path: PathBuf, len: u64) -> Result<bool, WalError> {
        use std::os::unix::fs::FileExt;
        let io = |source| WalError::Io { path: path.clone(), source };
        let std_file = std::fs::File::open(&path).map_err(io)?;
        let mut magic = [0; 8];
        std_file.read_exact_at(&mut magic, 0).map_err(io)?;
        if magic != segment::SEGMENT_MAGIC {
            return Ok(false);
        }
        let mut tail = vec![0; (len % BLOCK) as usize];
        std_file.read_exact_at(&mut tail, len - len % BLOCK).map_err(io)?;
        // Recovery checked that only zeros follow `len`: a file this long was a spare.
        let zeroed = std_file.metadata().map_err(io)?.len() >= self.segment_size_max;
        let file = open_segment(&path, false).await?;
        *self.tail.borrow_mut() = tail;
        *self.file.borrow_mut() = Some(Rc::new(Segment { file, path }));
        self.file_len.set(len);
        self.file_zeroed.set(zeroed);
        Ok(true)
    }

    /// The durability mode.
    pub fn mode(&self) -> Durability {
        self.mode
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.stats.get()
    }

    /// Calls `observe` with the duration of every durable write from now on, in seconds.
    pub fn set_write_observer(&self, observe: impl Fn(f64) + 'static) {
        *self.observer.borrow_mut() = Some(Box::new(observe));
    }

    /// LSN of the last record appended (0 if none).
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn.get() - 1
    }

    /// LSN of the last record on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.get()
    }

    /// Appends the record of `command`, applied at `now_ms`, if commands of its kind are
    /// logged and there is a log.
    pub fn append(&self, now_ms: u64, command: &Command) {
        if self.mode == Durability::None || !is_logged(command) {
            return;
        }
        let lsn = self.next_lsn.get();
        self.next_lsn.set(lsn + 1);
        let mut buf = self.buf.borrow_mut();
        let before = buf.len();
        record::encode(lsn, now_ms, command, &mut buf);
        debug_assert!(buf.len() - before >= RECORD_HEADER_SIZE);
        let mut stats = self.stats.get();
        stats.records += 1;
        self.stats.set(stats);
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until every record up to `lsn` is on disk (at once without a log).
    pub async fn durable(&self, lsn: u64) {
        std::future::poll_fn(|cx| {
            if self.mode == Durability::None || self.durable_lsn.get() >= lsn {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push((lsn, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Writes what gathers, forever; calls `on_durable(lsn)` after each write. Spare
    /// segments are prepared by a task of their own, started here.
    pub async fn run(self: Rc<Self>, on_durable: impl Fn(u64)) {
        if self.mode == Durability::None {
            return;
        }
        glommio::spawn_local(self.clone().prepare_spares()).detach();
        let mut batch = Vec::with_capacity(1 << 20);
        loop {
            std::future::poll_fn(|cx| {
                if self.buf.borrow().is_empty() {
                    *self.writer.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if self.mode == Durability::Batch {
                glommio::timer::sleep(self.fsync_interval).await;
            }
            std::mem::swap(&mut batch, &mut *self.buf.borrow_mut());
            let last = self.last_lsn();
            if let Err(e) = self.write(&batch).await {
                panic!("core {}: the write-ahead log failed, the server stops: {e}", self.core);
            }
            batch.clear();
            self.durable_lsn.set(last);
            self.waiters.borrow_mut().retain(|(lsn, waker)| {
                let done = *lsn <= last;
                if done {
                    waker.wake_by_ref();
                }
                !done
            });
            on_durable(last);
        }
    }

    /// Writes `batch` durably at the end of the current segment, first moving to a new
    /// segment if this one is full or a spare is ready while this one grows.
    async fn write(&self, batch: &[u8]) -> Result<(), WalError> {
        let full = self.file_len.get() + batch.len() as u64 > self.segment_size_max;
        if full || (self.spare.get() == Spare::Ready && !self.file_zeroed.get()) {
            let first = u64::from_le_bytes(batch[8..16].try_into().unwrap());
            self.start_segment(first).await?;
        }
        let segment = self.file.borrow().clone().expect("a segment is open");
        let start = std::time::Instant::now();
        self.write_blocks(&segment.file, &segment.path, batch).await?;
        let mut stats = self.stats.get();
        stats.bytes += batch.len() as u64;
        stats.syncs += 1;
        let elapsed = start.elapsed();
        stats.sync_ns += elapsed.as_nanos() as u64;
        self.stats.set(stats);
        if let Some(observe) = &*self.observer.borrow() {
            observe(elapsed.as_secs_f64());
        }
        self.want_spare();
        Ok(())
    }

    /// Appends `bytes` to the current segment `file` in one durable write: the write starts
    /// at the block where the segment's records end (its bytes, kept in `tail`, rewritten
    /// unchanged) and is padded with zeros to whole blocks.
    async fn write_blocks(&self, file: &DmaFile, path: &Path, bytes: &[u8]) -> Result<(), WalError> {
        let len = self.file_len.get();
        let end = len + bytes.len() as u64;
        let (buf, block_start) = {
            let mut tail = self.tail.borrow_mut();
            let block_start = len - tail.len() as u64;
            let used = tail.len() + bytes.len();
            let mut buf = file.alloc_dma_buffer(used.next_multiple_of(BLOCK as usize));
            let b = buf.as_bytes_mut();
            b[..tail.len()].copy_from_slice(&tail);
            b[tail.len()..used].copy_from_slice(bytes);
            b[used..].fill(0);
            let next_tail = (end - end % BLOCK - block_start) as usize;
            tail.clear();
            tail.extend_from_slice(&b[next_tail..used]);
            (buf, block_start)
        };
        let size = buf.len();
        let written = file.write_at(buf, block_start).await.map_err(glommio_io(path))?;
        whole_write(path, written, size)?;
        self.file_len.set(end);
        Ok(())
    }

    /// Starts the segment whose first record is `first_lsn`, on the spare if one is ready,
    /// and makes its header (and its name in the directory) durable.
    async fn start_segment(&self, first_lsn: u64) -> Result<(), WalError> {
        let path = self.dir.join(segment::file_name(first_lsn));
        let on_spare = self.spare.get() == Spare::Ready;
        let file = if on_spare {
            let spare = self.dir.join(SPARE_NAME);
            std::fs::rename(&spare, &path).map_err(|source| WalError::Io { path: spare, source })?;
            self.spare.set(Spare::Idle);
            let mut stats = self.stats.get();
            stats.spares_used += 1;
            self.stats.set(stats);
            open_segment(&path, false).await?
        } else {
            open_segment(&path, true).await?
        };
        let header = SegmentHeader { core: self.core, cores: self.cores, first_lsn }.encode();
        self.tail.borrow_mut().clear();
        self.file_len.set(0);
        self.write_blocks(&file, &path, &header).await?;
        sync_dir(&self.dir)?;
        *self.file.borrow_mut() = Some(Rc::new(Segment { file, path }));
        self.file_zeroed.set(on_spare);
        Ok(())
    }

    /// True while a spare is being filled (for tests that wait for it).
    #[cfg(test)]
    fn spare_preparing(&self) -> bool {
        self.spare.get() == Spare::Preparing
    }

    /// Asks for a spare once the current segment is far enough along.
    fn want_spare(&self) {
        let threshold = SPARE_AFTER.min(self.segment_size_max / 2);
        if self.spare.get() == Spare::Idle && self.file_len.get() >= threshold {
            self.spare.set(Spare::Preparing);
            if let Some(w) = self.spare_task.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Fills a spare segment with zeros whenever one is wanted, forever (or until that
    /// fails: the log then goes on with growing segments).
    async fn prepare_spares(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.spare.get() == Spare::Preparing {
                    Poll::Ready(())
                } else {
                    *self.spare_task.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let path = self.dir.join(SPARE_NAME);
            match fill_with_zeros(&path, self.segment_size_max).await {
                Ok(()) => self.spare.set(Spare::Ready),
                Err(e) => {
                    tracing::warn!(core = self.core, "no spare log segment (segments will grow instead): {e}");
                    let _ = std::fs::remove_file(&path);
                    self.spare.set(Spare::Off);
                    return;
                }
            }
        }
    }
}

/// Creates `path` with `size` bytes (rounded up to whole blocks) of zeros, on disk.
async fn fill_with_zeros(path: &Path, size: u64) -> Result<(), WalError> {
    let file =
        OpenOptions::new().write(true).create(true).truncate(true).dma_open(path).await.map_err(glommio_io(path))?;
    let size = size.next_multiple_of(BLOCK);
    let mut pos = 0;
    while pos < size {
        let chunk = (size - pos).min(ZERO_CHUNK as u64) as usize;
        let mut zeros = file.alloc_dma_buffer(chunk);
        zeros.as_bytes_mut().fill(0);
        let written = file.write_at(zeros, pos).await.map_err(glommio_io(path))?;
        whole_write(path, written, chunk)?;
        pos += chunk as u64;
    }
    file.fdatasync().await.map_err(glommio_io(path))?;
    file.close().await.map_err(glommio_io(path))?;
    Ok(())
}

/// An open segment and its path (for error messages).
struct Segment {
    file: DmaFile,
    path: PathBuf,
}

/// A short direct write is an error: the disk took fewer bytes than it was given.
fn whole_write(path: &Path, written: usize, size: usize) -> Result<(), WalError> {
    if written == size {
        return Ok(());
    }
    let reason = format!("the disk took {written} of {size} bytes");
    Err(WalError::Io { path: path.into(), source: std::io::Error::other(reason) })
}

/// Opens (or creates) a segment for direct writes that are durable when they complete.
///
/// Write-only on purpose: glommio probes each device with a read when a direct-I/O file
/// is first opened and, if that works, moves the file's I/O to a polled ring, which took
/// twice as long per write on the machines we measured. A write-only file fails the probe,
/// so writes complete on the core's main ring; the probe's error message is filtered out
/// of the log (see `main.rs`).
async fn open_segment(path: &Path, create: bool) -> Result<DmaFile, WalError> {
    OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(glommio_io(path))
}

/// Makes the names in a directory durable (a new file, a rename, a removal).
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| WalError::Io { path: dir.into(), source })
}

fn glommio_io(path: &Path) -> impl FnOnce(glommio::GlommioError<()>) -> WalError + '_ {
    move |e| WalError::Io { path: path.into(), source: std::io::Error::other(e.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ReserveOp;
    use crate::wal::TempDir;
    use crate::wal::recovery;
    use crate::wal::segment::SegmentEnd;

    const SEGMENT_MAX: u64 = 64 << 10;

    fn reserve(id: u128) -> Command {
        Command::Reserve(ReserveOp { id, user: 7, pool: 1, qty: 1, ttl_ms: 0, priority: 0 })
    }

    fn options() -> LogOptions {
        LogOptions { mode: Durability::Sync, segment_size_max: SEGMENT_MAX, fsync_interval: Duration::ZERO }
    }

    /// Appends `rounds` groups of `per_round` reserves (ids from `first_id`), each group
    /// waited for before the next, and returns the log's counters. A spare asked for is
    /// ready before the next group (a segment is far from full when one is asked for), so
    /// every segment after the first starts on a spare.
    async fn append_rounds(log: &Rc<LogWriter>, first_id: u128, rounds: u128, per_round: u128) -> LogStats {
        let mut id = first_id;
        for _ in 0..rounds {
            for _ in 0..per_round {
                log.append(1_000, &reserve(id));
                id += 1;
            }
            log.durable(log.last_lsn()).await;
            let mut waited = 0;
            while log.spare_preparing() {
                assert!(waited < 10_000, "a spare of {SEGMENT_MAX} bytes takes more than 10 s");
                glommio::timer::sleep(Duration::from_millis(1)).await;
                waited += 1;
            }
        }
        log.stats()
    }

    /// Every record in `dir`'s segments, in order, as (LSN, reservation id), checking that
    /// each segment but the last ends cleanly; and where the last one's records end.
    fn read_back(dir: &Path) -> (Vec<(u64, u128)>, (PathBuf, u64)) {
        let segments = recovery::list(dir).unwrap().segments;
        let mut out = Vec::new();
        let mut end = None;
        for (i, (_, path)) in segments.iter().enumerate() {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(bytes.len() as u64 % BLOCK, 0, "{}: whole blocks", path.display());
            let last = i + 1 == segments.len();
            let scan = segment::scan(&bytes, path, last, |rec| {
                let Command::Reserve(op) = rec.command else { panic!("only reserves were logged") };
                out.push((rec.lsn, op.id));
                Ok(())
            })
            .unwrap();
            assert_eq!(scan.end, SegmentEnd::Clean, "{}", path.display());
            end = Some((path.clone(), scan.valid_len));
        }
        (out, end.expect("a segment"))
    }

    fn expected(ids: std::ops::RangeInclusive<u128>) -> Vec<(u64, u128)> {
        ids.map(|id| (id as u64, id)).collect()
    }

    #[test]
    fn group_commits_fill_blocks_roll_onto_zeroed_spares_and_read_back_in_order() {
        let tmp = TempDir::new("writer-spares");
        let dir = tmp.0.clone();
        glommio::LocalExecutor::default().run(async move {
            let log = Rc::new(LogWriter::open(options(), &dir, (0, 1), 0, None).await.unwrap());
            glommio::spawn_local(log.clone().run(|_| {})).detach();
            // 30 reserves per write: most writes end inside a block.
            let stats = append_rounds(&log, 1, 200, 30).await;
            assert_eq!((stats.records, log.durable_lsn()), (6000, 6000));
            assert_eq!(stats.syncs, 200, "one durable write per group");
            assert!(stats.spares_used >= 3, "{stats:?}");
            let (records, _) = read_back(&dir);
            assert_eq!(records, expected(1..=6000));
            // The first segment grew; those started on a spare were full size from the start.
            let segments = recovery::list(&dir).unwrap().segments;
            let sizes: Vec<u64> = segments.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).collect();
            assert!(sizes[0] < SEGMENT_MAX, "{sizes:?}");
            assert!(sizes[1..].iter().all(|&s| s == SEGMENT_MAX), "{sizes:?}");
            assert_eq!(stats.spares_used as usize, segments.len() - 1);
        });
    }

    #[test]
    fn a_reopened_segment_keeps_its_partial_block_and_goes_on_after_it() {
        let tmp = TempDir::new("writer-reopen");
        let dir = tmp.0.clone();
        glommio::LocalExecutor::default().run(async move {
            let log = Rc::new(LogWriter::open(options(), &dir, (0, 1), 0, None).await.unwrap());
            glommio::spawn_local(log.clone().run(|_| {})).detach();
            append_rounds(&log, 1, 3, 7).await;
            let (records, (path, len)) = read_back(&dir);
            assert_eq!(records, expected(1..=21));
            assert_ne!(len % BLOCK, 0, "the records end inside a block");

            // As after a restart: a new writer continues where the good records end.
            let log = Rc::new(LogWriter::open(options(), &dir, (0, 1), 21, Some((path.clone(), len))).await.unwrap());
            glommio::spawn_local(log.clone().run(|_| {})).detach();
            append_rounds(&log, 22, 40, 25).await;
            let (records, _) = read_back(&dir);
            assert_eq!(records, expected(1..=1021));
        });
    }
}
