//! Starts the real `shardcap` binary for end-to-end tests: on loopback, on ports the OS
//! chooses, with a configuration the test gives, and stops it when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use shardcap::client::Client;

/// How long a server may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running server process.
pub struct Server {
    child: Child,
    /// The shared data port.
    pub addr: SocketAddr,
    /// Each core's own port.
    pub core_ports: Vec<u16>,
    /// The admin HTTP port's address (none when it is off).
    pub admin: Option<SocketAddr>,
    config_path: PathBuf,
    /// The data directory (removed on drop unless kept for a restart).
    pub data_dir: PathBuf,
    keep_data: bool,
}

/// A fresh, empty data directory under the system's temporary directory.
pub fn temp_data_dir() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("shardcap-test-data-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    /// Starts a server with `cores` cores; `extra` is TOML appended to a base configuration
    /// (loopback, OS-chosen ports, unpinned, small tables), e.g. `[[pool]]` sections or a
    /// `[limits]` section.
    pub fn start(cores: u16, extra: &str) -> Server {
        Server::start_in(cores, extra, &temp_data_dir())
    }

    /// Starts a server whose logs live in `data_dir` (the default durability is `sync`; a
    /// `[durability]` section in `extra` overrides it).
    pub fn start_in(cores: u16, extra: &str, data_dir: &std::path::Path) -> Server {
        let limits = if extra.contains("[limits]") { "" } else { "[limits]\nholds_max_per_core = 100000\n" };
        let admin = if extra.contains("[admin]") { "" } else { "[admin]\nlisten = \"127.0.0.1:0\"\n" };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncore_port_base = 0\ncores = {cores}\npin_cores = false\nlog_level = \"warn\"\ndata_dir = {:?}\n{limits}{admin}{extra}\n",
            data_dir.display().to_string()
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let config_path = std::env::temp_dir().join(format!("shardcap-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&config_path, config).expect("write test config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcap"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start shardcap");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("shardcap ready:") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not report ready within {START_TIMEOUT:?}");
            }
        };
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in '{line}'"))
                .to_string()
        };
        let addr: SocketAddr = field("listen").parse().expect("listen address");
        let core_ports = field("core_ports").split(',').filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect();
        let admin = match field("admin").as_str() {
            "off" => None,
            a => Some(a.parse().expect("admin address")),
        };
        Server { child, addr, core_ports, admin, config_path, data_dir: data_dir.to_path_buf(), keep_data: false }
    }

    /// Kills the process at once (SIGKILL: no clean shutdown) and keeps its data directory
    /// for a restart.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.keep_data = true;
        self.data_dir.clone()
    }

    /// A client connected to the shared port.
    pub fn client(&self) -> Client {
        Client::connect(self.addr).expect("connect")
    }

    /// A client connected to core `core`'s own port.
    pub fn core_client(&self, core: u16) -> Client {
        Client::connect(("127.0.0.1", self.core_ports[core as usize])).expect("connect to core port")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A pool section for [`Server::start`].
pub fn pool(name: &str, capacity: u64) -> String {
    format!("[[pool]]\nname = \"{name}\"\ncapacity = {capacity}\nhold_ttl_s_default = 300\nhold_ttl_s_max = 900\n")
}

/// Finds user ids whose home core is `core` on a server with `cores` cores.
pub fn users_on(core: u16, cores: u16, count: usize) -> Vec<u128> {
    (1u128..).filter(|&u| shardcap::protocol::home_core(u, cores) == core).take(count).collect()
}

/// A reserve of `qty` units of `pool` for `user`, with id `id` and TTL `ttl_ms` (0: the pool's).
pub fn reserve(id: u128, user: u128, pool: u32, qty: u32, ttl_ms: u32) -> shardcap::protocol::ReserveOp {
    shardcap::protocol::ReserveOp { id, user, pool, qty, ttl_ms, priority: 0 }
}

/// Names pool `id` by its id.
pub fn by_id(id: u32) -> shardcap::protocol::control::PoolRef {
    shardcap::protocol::control::PoolRef { id, name: String::new() }
}

/// The wall clock in ms since the Unix epoch (the server's clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
