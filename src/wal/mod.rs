//! Durability: each core's write-ahead log and snapshots, and recovery.
//!
//! Every command a core applies that can change its state is appended to the core's log
//! (`<data-dir>/core-<n>/wal-*.log`) with the time it was applied at: the state machine is
//! deterministic, so replaying a core's records rebuilds the core exactly. In `sync` mode
//! nothing a command decided leaves the core — answers to clients, messages to other
//! cores — before its record is on disk; the records of everything applied meanwhile are
//! written and made durable together (group commit). Borrowing messages and their
//! acknowledgements leave a core only once the record of what produced them is durable in
//! every mode that has a log (`sync` and `batch`), and messages are kept by the sender until
//! the receiver has the message on disk (see [`crate::shard::Link`]): after a crash,
//! whatever may not have arrived is sent again and the receiver ignores repeats, so no unit
//! is lost or counted twice.
//!
//! - [`record`]: the record format.
//! - [`segment`]: segment files, torn tails and corruption.
//! - [`snapshot_file`]: snapshot files (rkyv).
//! - [`recovery`]: loading the newest snapshot and replaying the log after it.
//! - [`writer`]: the log writer of one core (group commit).

pub mod record;
pub mod recovery;
pub mod segment;
pub mod snapshot_file;
pub mod writer;

/// A directory under the system's temporary directory for unit tests, removed when dropped.
#[cfg(test)]
pub(crate) struct TempDir(pub std::path::PathBuf);

#[cfg(test)]
impl TempDir {
    /// `shardcap-<name>-<pid>`, emptied if it exists.
    pub(crate) fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shardcap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use std::path::PathBuf;

/// How a server makes its state durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answers wait until their records are on disk (one durable write for everything applied
    /// together). Nothing acknowledged is ever lost.
    Sync,
    /// The log is written and made durable every `fsync_interval_ms`; answers do not wait,
    /// so a crash loses the operations acknowledged in the last window: up to the interval
    /// plus the time of two durable writes.
    Batch,
    /// No log: the state lives in memory only (tests and benchmarks).
    None,
}

impl Durability {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Batch => "batch",
            Durability::None => "none",
        }
    }
}

/// What went wrong with a log or snapshot.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file's content is damaged where damage cannot be a torn tail.
    #[error("{path}: corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The data directory does not belong to this server's layout.
    #[error("{0}")]
    Layout(String),
}

/// The directory of core `core` under `data_dir`.
pub fn core_dir(data_dir: &std::path::Path, core: u16) -> PathBuf {
    data_dir.join(format!("core-{core}"))
}
