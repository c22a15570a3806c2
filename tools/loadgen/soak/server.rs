//! The soak's server: started from a `shardcap` binary on its embedded default
//! configuration (only the ports, the data directory and the durability mode are changed,
//! by flags), or one running already; and its resident memory, from /proc.
//!
//! A started server listens on loopback only, on ports the OS chooses, and reports them in
//! its `shardcap ready:` line on stdout. Its log (stderr) goes to `server.log` in a work
//! directory under the system's temporary directory, which also holds the data directory
//! unless one was given. The server is killed when the soak ends (the server has no
//! shutdown of its own to wait for: it keeps nothing in memory that the log does not have).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shardcap::wal::Durability;

/// How long a started server may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A server the soak started; killed when dropped.
pub struct Started {
    child: Child,
    /// The shared data port.
    pub addr: SocketAddr,
    /// The admin HTTP port.
    pub admin: SocketAddr,
    /// The work directory (the log, and the data directory unless one was given).
    pub work_dir: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Whether the data directory is the soak's own, removed at the end.
    own_data_dir: bool,
}

impl Started {
    /// Starts `bin serve` with OS-chosen loopback ports, `durability` and the data
    /// directory (a fresh one in the work directory if `data_dir` is `None`), and waits
    /// until it reports ready.
    pub fn start(bin: &Path, durability: Durability, data_dir: Option<&Path>) -> Result<Started, String> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let work_dir = std::env::temp_dir().join(format!("shardcap-soak-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&work_dir).map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
        let (data_dir, own_data_dir) = match data_dir {
            Some(dir) => (dir.to_path_buf(), false),
            None => (work_dir.join("data"), true),
        };
        let log_path = work_dir.join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--core-port-base", "0", "--admin-listen", "127.0.0.1:0"])
            .args(["--durability", durability.name()])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("shardcap ready:") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut started = Started {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            work_dir,
            data_dir,
            own_data_dir,
        };
        let line = rx.recv_timeout(READY_TIMEOUT).map_err(|_| {
            format!("the server did not report ready within {READY_TIMEOUT:?}; see {}", log_path.display())
        })?;
        let field = |name: &str| -> Result<String, String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
                .ok_or_else(|| format!("no {name}= in the ready line '{line}'"))
        };
        started.addr = field("listen")?.parse().map_err(|e| format!("ready line '{line}': {e}"))?;
        started.admin = field("admin")?.parse().map_err(|_| format!("ready line '{line}': the admin port is off"))?;
        Ok(started)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.work_dir.join("server.log")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server and removes the soak's own data directory; with `keep_log`, the
    /// work directory with the log stays (for a failed soak), otherwise it goes too.
    pub fn finish(mut self, keep_log: bool) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.own_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        if !keep_log {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid`, in bytes (`VmRSS` of /proc/PID/status); `None`
/// if the process is gone or the kernel does not say.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_this_process_is_read() {
        let rss = rss_bytes(std::process::id()).expect("this process has an RSS");
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(rss % 1024, 0);
        assert_eq!(rss_bytes(u32::MAX), None, "no such process");
    }
}
