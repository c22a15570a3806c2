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
        Server::start_with(&Setup { cores, extra, ..Setup::default() }, data_dir)
    }

    /// Starts a server as `setup` says, with its logs in `data_dir`.
    pub fn start_with(setup: &Setup, data_dir: &std::path::Path) -> Server {
        Server::try_start_with(setup, data_dir)
            .unwrap_or_else(|stderr| panic!("the server did not report ready within {START_TIMEOUT:?}:\n{stderr}"))
    }

    /// Starts a server on the given ports (0: the OS chooses); answers what it wrote to
    /// stderr if it exits, or does not report ready within 30 s.
    pub fn try_start_on(cores: u16, extra: &str, data_dir: &std::path::Path, ports: Ports) -> Result<Server, String> {
        let listen = format!("127.0.0.1:{}", ports.listen);
        let setup = Setup { cores, extra, listen: &listen, ports, ..Setup::default() };
        Server::try_start_with(&setup, data_dir)
    }

    /// Starts a server as `setup` says; answers what it wrote to stderr if it exits, or does
    /// not report ready within 30 s.
    pub fn try_start_with(setup: &Setup, data_dir: &std::path::Path) -> Result<Server, String> {
        let config_path = setup.write_config(data_dir);
        let mut child =
            setup.command(&config_path).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start shardcap");
        // stderr is passed on as it comes, and kept for the answer of a failed start.
        let stderr = child.stderr.take().expect("stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                text.push_str(&line);
                text.push('\n');
            }
            let _ = err_tx.send(text);
        });
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
                let _ = child.wait();
                let _ = std::fs::remove_file(&config_path);
                return Err(err_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default());
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
        Ok(Server { child, addr, core_ports, admin, config_path, data_dir: data_dir.to_path_buf(), keep_data: false })
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

    /// The server's resident memory now (VmRSS in /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
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

/// How a test server is started: [`Server::start`]'s base configuration with another
/// listen address, more `[server]` settings or `serve` flags.
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    /// Cores.
    pub cores: u16,
    /// The shared data port's address.
    pub listen: &'a str,
    /// Lines added to the `[server]` section.
    pub server_extra: &'a str,
    /// TOML appended to the configuration, as for [`Server::start`].
    pub extra: &'a str,
    /// Flags after `serve --config FILE`.
    pub args: &'a [&'a str],
    /// The core ports' base and the admin port (0: the OS chooses).
    pub ports: Ports,
}

/// The ports a server starts on ([`Server::try_start_on`]); 0 lets the OS choose.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ports {
    /// The shared data port.
    pub listen: u16,
    /// Core `i` listens on `core_port_base + i`.
    pub core_port_base: u16,
    /// The admin port.
    pub admin: u16,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup { cores: 1, listen: "127.0.0.1:0", server_extra: "", extra: "", args: &[], ports: Ports::default() }
    }
}

impl Setup<'_> {
    /// Writes the configuration file; answers its path.
    fn write_config(&self, data_dir: &std::path::Path) -> PathBuf {
        let (cores, listen, server_extra, extra) = (self.cores, self.listen, self.server_extra, self.extra);
        let limits = if extra.contains("[limits]") {
            ""
        } else {
            "[limits]\nholds_max_per_core = 100000\nretention_bytes_max_per_core = 16777216\n"
        };
        let admin = if extra.contains("[admin]") {
            String::new()
        } else {
            format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", self.ports.admin)
        };
        let config = format!(
            "[server]\nlisten = \"{listen}\"\ncore_port_base = {}\ncores = {cores}\npin_cores = false\nlog_level = \"warn\"\ndata_dir = {:?}\n{server_extra}\n{limits}{admin}{extra}\n",
            self.ports.core_port_base,
            data_dir.display().to_string()
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let config_path = std::env::temp_dir().join(format!("shardcap-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&config_path, config).expect("write test config");
        config_path
    }

    /// The `shardcap serve` command. The token comes from the configuration only: the
    /// environment of the test run does not reach the server.
    fn command(&self, config_path: &std::path::Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardcap"));
        command.arg("serve").arg("--config").arg(config_path).args(self.args).env_remove("SHARDCAP_ADMIN_TOKEN");
        command
    }

    /// Runs a server that must refuse to start: answers its exit status and stderr. Fails
    /// the test if it reports ready or has not exited within the start timeout.
    pub fn refused(&self) -> (std::process::ExitStatus, String) {
        let data_dir = temp_data_dir();
        let config_path = self.write_config(&data_dir);
        let mut child =
            self.command(&config_path).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start shardcap");
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for shardcap") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server neither started nor exited within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        use std::io::Read;
        child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read stdout");
        child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
        let _ = std::fs::remove_file(&config_path);
        let _ = std::fs::remove_dir_all(&data_dir);
        assert!(!stdout.contains("shardcap ready:"), "the server started: {stdout}");
        (status, stderr)
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

/// The sum of every sample of the Prometheus series `name` (any labels) that the admin port
/// at `admin` exports now.
pub fn metric_sum(admin: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the scrape");
    assert!(text.starts_with("HTTP/1.1 200"), "scrape answered {}", text.lines().next().unwrap_or(""));
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().expect("a sample value"))
        .sum()
}

/// A pool creation request with 300 s / 900 s hold TTLs, active, without rules.
pub fn pool_request(name: &str, capacity: u64) -> shardcap::protocol::control::PoolCreate {
    shardcap::protocol::control::PoolCreate {
        name: name.into(),
        capacity,
        hold_ttl_ms_default: 300_000,
        hold_ttl_ms_max: 900_000,
        kind: 0,
        active: true,
        rules: Default::default(),
    }
}
