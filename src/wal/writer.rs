//! The log writer of one core: records are encoded into a buffer as commands are applied,
//! and one task writes whatever has gathered and makes it durable with one fdatasync
//! (group commit), then wakes everything that waited for those records. While a write is
//! in flight, new records gather for the next one. In `batch` mode the task waits
//! `fsync_interval_ms` between writes; in `none` mode there is no log at all.
//!
//! A failed write or fdatasync stops the server (a panic, which aborts the process): a
//! log that may have lost records cannot promise anything any more.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::io::{BufferedFile, OpenOptions};

use super::record::{self, RECORD_HEADER_SIZE, is_logged};
use super::segment::{self, SegmentHeader};
use super::{Durability, WalError};
use crate::shard::Command;

/// Counters of the log (plain integers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// fdatasyncs done.
    pub syncs: u64,
    /// Nanoseconds spent in fdatasync.
    pub sync_ns: u64,
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
    file: RefCell<Option<Rc<BufferedFile>>>,
    file_path: RefCell<PathBuf>,
    file_len: Cell<u64>,
    writer: RefCell<Option<Waker>>,
    waiters: RefCell<Vec<Waker>>,
    stats: Cell<LogStats>,
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
            file_path: RefCell::new(PathBuf::new()),
            file_len: Cell::new(0),
            writer: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            stats: Cell::new(LogStats::default()),
        };
        if mode != Durability::None {
            match append_at {
                Some((path, len)) => {
                    let file = OpenOptions::new().write(true).buffered_open(&path).await.map_err(glommio_io(&path))?;
                    *writer.file.borrow_mut() = Some(Rc::new(file));
                    *writer.file_path.borrow_mut() = path;
                    writer.file_len.set(len);
                }
                None => writer.start_segment(last_lsn + 1).await?,
            }
        }
        Ok(writer)
    }

    /// The durability mode.
    pub fn mode(&self) -> Durability {
        self.mode
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.stats.get()
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
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Writes and syncs what gathers, forever; calls `on_durable(lsn)` after each sync.
    pub async fn run(self: Rc<Self>, on_durable: impl Fn(u64)) {
        if self.mode == Durability::None {
            return;
        }
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
            if let Err(e) = self.write(&mut batch).await {
                panic!("core {}: the write-ahead log failed, the server stops: {e}", self.core);
            }
            self.durable_lsn.set(last);
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
            on_durable(last);
        }
    }

    /// Writes `batch` at the end of the current segment, starting a new segment first if
    /// this one is full, and makes it durable.
    async fn write(&self, batch: &mut Vec<u8>) -> Result<(), WalError> {
        if self.file_len.get() + batch.len() as u64 > self.segment_size_max {
            let first = u64::from_le_bytes(batch[8..16].try_into().unwrap());
            self.start_segment(first).await?;
        }
        let file = self.file.borrow().clone().expect("a segment is open");
        let path = self.file_path.borrow().clone();
        let mut written = 0;
        while written < batch.len() {
            let chunk = batch[written..].to_vec();
            let n = file.write_at(chunk, self.file_len.get() + written as u64).await.map_err(glommio_io(&path))?;
            if n == 0 {
                return Err(WalError::Io { path, source: std::io::Error::other("the disk accepted no bytes") });
            }
            written += n;
        }
        let start = std::time::Instant::now();
        file.fdatasync().await.map_err(glommio_io(&path))?;
        let mut stats = self.stats.get();
        stats.bytes += batch.len() as u64;
        stats.syncs += 1;
        stats.sync_ns += start.elapsed().as_nanos() as u64;
        self.stats.set(stats);
        self.file_len.set(self.file_len.get() + batch.len() as u64);
        batch.clear();
        Ok(())
    }

    /// Creates the segment whose first record is `first_lsn` and makes it (and its name in
    /// the directory) durable.
    async fn start_segment(&self, first_lsn: u64) -> Result<(), WalError> {
        let path = self.dir.join(segment::file_name(first_lsn));
        let file = BufferedFile::create(&path).await.map_err(glommio_io(&path))?;
        let header = SegmentHeader { core: self.core, cores: self.cores, first_lsn }.encode();
        file.write_at(header.to_vec(), 0).await.map_err(glommio_io(&path))?;
        file.fdatasync().await.map_err(glommio_io(&path))?;
        sync_dir(&self.dir)?;
        *self.file.borrow_mut() = Some(Rc::new(file));
        *self.file_path.borrow_mut() = path;
        self.file_len.set(header.len() as u64);
        Ok(())
    }
}

/// Makes the names in a directory durable (a new file, a rename, a removal).
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| WalError::Io { path: dir.into(), source })
}

fn glommio_io(path: &Path) -> impl FnOnce(glommio::GlommioError<()>) -> WalError + '_ {
    move |e| WalError::Io { path: path.into(), source: std::io::Error::other(e.to_string()) }
}
