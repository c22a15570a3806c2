//! The thread-per-core runtime: one glommio executor per core (pinned by default), each
//! owning its state machine, its listeners and its connections, connected to the others by
//! glommio's channel mesh.
//!
//! Start-up, in order: core 0 binds the shared port (so that port 0 can pick one), the
//! other cores bind the same port (SO_REUSEPORT), every core binds its own port, all cores
//! learn all ports, join the mesh and build their state from the configuration's pools.
//! Only then does [`run`] report the server ready. A failure on any core stops start-up
//! with the reason.

pub mod clock;
pub mod core;
pub mod mesh;
pub mod snapshot;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{CpuSet, Latency, LocalExecutorBuilder, Placement, Shares};

use self::clock::SystemClock;
use self::core::{CoreIo, CoreRuntime, Topology};
use self::mesh::{MeshMsg, MeshOut};
use crate::admin::CoreMsg;
use crate::admin::http::AdminServer;
use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::net::listener::{Handoff, Listeners};
use crate::shard::Command;
use crate::shard::Engine;
use crate::wal::Durability;
use crate::wal::recovery::{self, Recovered};
use crate::wal::writer::{LogOptions, LogWriter};

/// What a started server listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The shared data port's address.
    pub listen: SocketAddr,
    /// Number of cores.
    pub cores: u16,
    /// Each core's own port (empty when core ports are off).
    pub core_ports: Vec<u16>,
    /// The admin HTTP port's address (none when it is off).
    pub admin: Option<SocketAddr>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A core could not bind a port or start.
    #[error("start-up failed:\n  - {}", .0.join("\n  - "))]
    Cores(Vec<String>),
}

struct Startup {
    barrier: Barrier,
    shared_port: Mutex<u16>,
    core_ports: Mutex<Vec<u16>>,
    errors: Mutex<Vec<String>>,
    /// Core 0 reports here once every core is recovered and serving.
    started: Mutex<Option<std::sync::mpsc::Sender<Result<(), String>>>>,
}

impl Startup {
    fn fail(&self, message: String) {
        self.errors.lock().expect("startup lock").push(message);
    }
}

/// Starts every core, calls `on_ready` once they all serve, then runs until the process
/// ends.
pub fn run(mut config: Config, on_ready: impl FnOnce(&Ready)) -> Result<(), StartError> {
    config.validate()?;
    // Resolved here: inside a pinned executor, the CPU count would be that of its one CPU.
    let cores = config.core_count();
    config.server.cores = cores;
    if config.durability.mode != Durability::None {
        check_layout(&config.server.data_dir, cores).map_err(|e| StartError::Cores(vec![e.to_string()]))?;
    }
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let startup = Arc::new(Startup {
        barrier: Barrier::new(cores as usize + 1),
        shared_port: Mutex::new(0),
        core_ports: Mutex::new(vec![0; cores as usize]),
        errors: Mutex::new(Vec::new()),
        started: Mutex::new(Some(started_tx)),
    });
    let mesh: MeshBuilder<MeshMsg, _> =
        MeshBuilder::full(cores as usize, config.limits.mesh_channel_depth_messages as usize);
    // The admin port serves from the start (health, readiness); the cores read its requests
    // once they serve.
    let metrics = Arc::new(Metrics::new(cores));
    let (admin_tx, admin_rx): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded::<CoreMsg>()).unzip();
    let admin = match config.admin.listen_addr() {
        Some(addr) => Some(AdminServer::start(&config.admin, addr, admin_tx, metrics.clone()).map_err(|e| {
            StartError::Cores(vec![format!("cannot bind the admin port {}: {e}", config.admin.listen)])
        })?),
        None => None,
    };
    let mut handoffs = Handoff::links(cores).into_iter();
    let cpus: Vec<usize> = CpuSet::online().map(|set| set.iter().map(|l| l.cpu).collect()).unwrap_or_default();
    let mut handles = Vec::new();
    for (core, admin_rx) in (0..cores).zip(admin_rx) {
        let placement = if config.server.pin_cores && !cpus.is_empty() {
            Placement::Fixed(cpus[core as usize % cpus.len()])
        } else {
            Placement::Unbound
        };
        let (config, startup, mesh) = (config.clone(), startup.clone(), mesh.clone());
        let metrics = metrics.clone();
        let handoff = handoffs.next().expect("one link per core");
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("shardcap-core-{core}"))
            .io_memory(config.server.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.server.spin_before_park_us))
            .spawn(move || core_main(core, config, startup, mesh, (metrics, admin_rx), handoff));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                // The barriers count every core: report and stop the process.
                return Err(StartError::Cores(vec![format!("core {core}: cannot start its executor: {e}")]));
            }
        }
    }
    startup.barrier.wait(); // core 0 bound the shared port
    startup.barrier.wait(); // every core bound its ports and recovered its state
    let errors = startup.errors.lock().expect("startup lock").clone();
    if !errors.is_empty() {
        return Err(StartError::Cores(errors));
    }
    // Core 0 brings the catalog into agreement, creates the configured pools and lets every
    // core serve.
    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Err(StartError::Cores(vec![reason])),
        Err(_) => return Err(StartError::Cores(vec!["core 0 stopped during start-up".into()])),
    }
    let mut listen = config.listen_addr();
    listen.set_port(*startup.shared_port.lock().expect("startup lock"));
    let core_ports =
        if config.server.core_ports { startup.core_ports.lock().expect("startup lock").clone() } else { Vec::new() };
    if let Some(admin) = &admin {
        admin.set_ready();
    }
    on_ready(&Ready { listen, cores, core_ports, admin: admin.as_ref().map(|a| a.addr) });
    for handle in handles {
        if let Err(e) = handle.join() {
            return Err(StartError::Cores(vec![format!("a core stopped: {e}")]));
        }
    }
    Ok(())
}

/// Binds `addr` like [`bind_listener`], first checking that no live listener holds the
/// port (with SO_REUSEPORT a second server of the same user would bind too and silently
/// share the port's connections). The probe sets SO_REUSEADDR but not SO_REUSEPORT: it
/// binds over the TIME_WAIT connections of a crashed server, never over a listener.
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        // std sets SO_REUSEADDR on Unix.
        drop(std::net::TcpListener::bind(addr)?);
    }
    bind_listener(addr)
}

/// A listener on `addr` with SO_REUSEPORT (every core accepts on the shared port) and
/// SO_REUSEADDR (a server restarted after a crash binds at once, although the dead
/// server's side of its last connections sits in TIME_WAIT).
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing else owns.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

async fn core_main(
    core: u16,
    config: Config,
    startup: Arc<Startup>,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    (metrics, admin_rx): (Arc<Metrics>, flume::Receiver<CoreMsg>),
    handoff: Handoff,
) {
    let cores = config.core_count();
    let listen = config.listen_addr();
    // 1. The shared port: core 0 first, so that port 0 resolves to one port for all.
    let mut shared = None;
    if core == 0 {
        match bind_exclusive(listen) {
            Ok(l) => {
                *startup.shared_port.lock().expect("startup lock") = l.local_addr().map_or(0, |a| a.port());
                shared = Some(l);
            }
            Err(e) => startup.fail(format!("core 0: cannot bind {listen}: {e}")),
        }
    }
    startup.barrier.wait();
    let shared_port = *startup.shared_port.lock().expect("startup lock");
    if core != 0 && shared_port != 0 {
        let mut addr = listen;
        addr.set_port(shared_port);
        match bind_listener(addr) {
            Ok(l) => shared = Some(l),
            Err(e) => startup.fail(format!("core {core}: cannot bind {addr}: {e}")),
        }
    }
    // 2. The core's own port.
    let mut own = None;
    if config.server.core_ports {
        let mut addr = listen;
        let base = config.server.core_port_base;
        addr.set_port(if base == 0 { 0 } else { base + core });
        match bind_exclusive(addr) {
            Ok(l) => {
                startup.core_ports.lock().expect("startup lock")[core as usize] =
                    l.local_addr().map_or(0, |a| a.port());
                own = Some(l);
            }
            Err(e) => startup.fail(format!("core {core}: cannot bind its core port {addr}: {e}")),
        }
    }
    // 3. Recovery: the newest snapshot, then the log after it.
    let mode = config.durability.mode;
    let dir = crate::wal::core_dir(&config.server.data_dir, core);
    let now = clock::Clock::now_ms(&SystemClock);
    let mut engine = None;
    let mut log = None;
    let mut nothing_logged = true;
    match recover_core(&config, core, &dir).await {
        Ok((recovered, writer)) => {
            nothing_logged = recovered.as_ref().is_none_or(|r| r.last_lsn == 0);
            engine = recovered.and_then(|r| r.engine);
            log = Some(Rc::new(writer));
        }
        Err(e) => startup.fail(format!("core {core}: {e}")),
    }
    startup.barrier.wait();
    if !startup.errors.lock().expect("startup lock").is_empty() {
        return;
    }
    let log = log.expect("opened when start-up has no error");
    let topology = Topology {
        shared_port,
        core_ports: if config.server.core_ports {
            startup.core_ports.lock().expect("startup lock").clone()
        } else {
            vec![0; cores as usize]
        },
    };
    // 4. The mesh, the runtime and its tasks.
    let (senders, receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            report_start(&startup, Err(format!("core {core}: cannot join the mesh: {e}")));
            return;
        }
    };
    assert_eq!(senders.peer_id(), core as usize, "mesh peers are ordered like cores");
    let mesh = Rc::new(MeshOut::new(senders, config.limits.mesh_queue_messages_max));
    for peer in (0..cores).filter(|&p| p != core) {
        let mesh = mesh.clone();
        glommio::spawn_local(async move { mesh.drain(peer).await }).detach();
    }
    let fresh = engine.is_none();
    let engine = engine.unwrap_or_else(|| Engine::new(config.engine_config(core), now));
    let listeners = Listeners { shared, own, handoff };
    let core_metrics = Rc::new(metrics.core(core));
    let observed = core_metrics.clone();
    log.set_write_observer(move |seconds| observed.log_write.observe(seconds));
    let runtime = Rc::new(CoreRuntime::new(
        config.clone(),
        topology,
        Box::new(SystemClock),
        engine,
        CoreIo { mesh, log: log.clone(), listeners, metrics: core_metrics },
    ));
    // A new log starts with the limits; a restart with other limits records them. Before
    // any task is spawned: glommio may run a spawned task at once, and a message from
    // another core must not be applied (and logged) before the limits.
    let limits = config.engine_config(core);
    if (fresh && nothing_logged) || runtime.engine_config() != limits {
        runtime.apply(now, Command::SetLimits(limits));
    }
    // Messages kept from before a crash leave first: nothing this core does from now on
    // (applying a message, ticking) may overtake them on their links.
    runtime.resend_unacked();
    let mut receivers = receivers;
    for (peer, rx) in receivers.streams() {
        let runtime = runtime.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                runtime.on_mesh(peer as u16, msg);
            }
        })
        .detach();
    }
    let released = runtime.clone();
    glommio::spawn_local(log.clone().run(move |lsn| released.release_durable(lsn))).detach();
    let background = glommio::executor().create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    let tick = Duration::from_millis(config.server.expiry_tick_ms);
    let ticker = runtime.clone();
    let ticks = async move {
        loop {
            glommio::timer::sleep(tick).await;
            ticker.tick();
        }
    };
    // Without its ticker a core would never expire a hold: start-up fails instead.
    let mut started = spawn_background("expiry ticker", ticks, background);
    if started.is_ok() && mode != Durability::None && config.durability.snapshot_interval_records > 0 {
        let snapshots =
            snapshot::snapshot_loop(runtime.clone(), dir.clone(), config.durability.snapshot_interval_records);
        started = spawn_background("snapshot task", snapshots, background);
    }
    if let Err(e) = started {
        // Reported before core 0 can report success: that needs this core's answers.
        report_start(&startup, Err(format!("core {core}: {e}")));
        return;
    }
    // 5. Core 0 coordinates the start; the other cores wait for its word.
    if core == 0 {
        let result = runtime.start_cluster(&config.pools).await;
        report_start(&startup, result);
    }
    // 6. Requests of the admin port: metrics scrapes and the JSON API.
    while let Ok(msg) = admin_rx.recv_async().await {
        runtime.on_admin(msg);
    }
    futures_lite::future::pending::<()>().await;
}

/// Spawns a core's background task into `queue`, or says why it could not.
fn spawn_background(
    what: &str,
    task: impl std::future::Future<Output = ()> + 'static,
    queue: glommio::TaskQueueHandle,
) -> Result<(), String> {
    match glommio::spawn_local_into(task, queue) {
        Ok(task) => {
            task.detach();
            Ok(())
        }
        Err(e) => Err(format!("cannot start its {what}: {e}")),
    }
}

/// Tells the main thread how start-up ended (core 0 only reports once).
fn report_start(startup: &Startup, result: Result<(), String>) {
    if let Some(tx) = startup.started.lock().expect("startup lock").take() {
        let _ = tx.send(result);
    }
}

/// Recovers core `core` from its directory (nothing to do without a log) and opens its log
/// for appending.
async fn recover_core(
    config: &Config,
    core: u16,
    dir: &std::path::Path,
) -> Result<(Option<Recovered>, LogWriter), crate::wal::WalError> {
    let d = &config.durability;
    let cores = config.core_count();
    let options = LogOptions {
        mode: d.mode,
        segment_size_max: d.segment_size_bytes,
        fsync_interval: Duration::from_millis(d.fsync_interval_ms),
    };
    if d.mode == Durability::None {
        return Ok((None, LogWriter::open(options, dir, (core, cores), 0, None).await?));
    }
    std::fs::create_dir_all(dir).map_err(|source| crate::wal::WalError::Io { path: dir.into(), source })?;
    crate::runtime::snapshot::remove_unfinished(dir)?;
    let start = std::time::Instant::now();
    let recovered = recovery::recover(dir, core, cores, true, |_| {})?;
    if let Some((path, offset, bytes)) = &recovered.torn {
        tracing::warn!(core, file = %path.display(), offset, bytes, "torn tail of the log discarded (never acknowledged)");
    }
    if recovered.last_lsn > 0 {
        tracing::info!(
            core,
            snapshot_lsn = recovered.snapshot_lsn,
            replayed = recovered.replayed,
            last_lsn = recovered.last_lsn,
            ms = start.elapsed().as_millis() as u64,
            "recovered"
        );
    }
    let log = LogWriter::open(options, dir, (core, cores), recovered.last_lsn, recovered.append_at.clone()).await?;
    Ok((Some(recovered), log))
}

/// Refuses a data directory written by a server with another core count: users are placed
/// on cores by a hash of the core count, so the logs cannot be read with another one.
fn check_layout(data_dir: &std::path::Path, cores: u16) -> Result<(), crate::wal::WalError> {
    let with_data: Vec<u16> = recovery::cores_with_data(data_dir)?.into_iter().map(|(n, _)| n).collect();
    let found = with_data.len() as u16;
    if with_data.is_empty() || with_data == (0..cores).collect::<Vec<_>>() {
        return Ok(());
    }
    let stored = with_data.iter().map(|n| format!("core-{n}")).collect::<Vec<_>>().join(", ");
    let dir = data_dir.display();
    Err(crate::wal::WalError::Layout(if with_data == (0..found).collect::<Vec<_>>() {
        format!(
            "{dir} holds the logs of a server with {found} cores ({stored}), this server has {cores}: start it \
             with --cores {found} (a data directory cannot change its core count)"
        )
    } else {
        format!(
            "{dir} holds the logs of {stored}, which is not core-0 to core-<N-1> of any core count: restore the missing directories or start from an empty directory"
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::{check_layout, spawn_background};

    #[test]
    fn a_background_task_that_cannot_start_fails_the_start() {
        let ex = glommio::LocalExecutorBuilder::default().make().expect("an executor");
        let executor = &ex;
        ex.run(async move {
            let queue = glommio::executor().create_task_queue(
                glommio::Shares::default(),
                glommio::Latency::NotImportant,
                "gone",
            );
            assert_eq!(spawn_background("test task", async {}, queue), Ok(()));
            // Let the task end, so that its queue can be removed.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            executor.remove_task_queue(queue).expect("an idle queue can be removed");
            let err = spawn_background("expiry ticker", async {}, queue).unwrap_err();
            assert!(err.starts_with("cannot start its expiry ticker: "), "{err}");
        });
    }
    use crate::wal::{TempDir, segment};

    /// A data directory whose `core-<n>` directories hold one segment each.
    fn data_dir(cores_with_data: &[u16]) -> TempDir {
        let name: String = cores_with_data.iter().map(|n| format!("-{n}")).collect();
        let dir = TempDir::new(&format!("layout{name}"));
        for n in cores_with_data {
            let core = dir.0.join(format!("core-{n}"));
            std::fs::create_dir(&core).unwrap();
            std::fs::write(core.join(segment::file_name(1)), b"").unwrap();
        }
        std::fs::create_dir(dir.0.join("core-7")).unwrap(); // empty: not counted
        dir
    }

    #[test]
    fn the_data_directory_must_match_the_core_count() {
        assert!(check_layout(&data_dir(&[]).0.join("missing"), 2).is_ok(), "a new directory");
        assert!(check_layout(&data_dir(&[]).0, 2).is_ok(), "no core has data yet");
        assert!(check_layout(&data_dir(&[0, 1]).0, 2).is_ok());

        let err = check_layout(&data_dir(&[0, 1]).0, 4).unwrap_err().to_string();
        assert!(
            err.contains("a server with 2 cores (core-0, core-1), this server has 4: start it with --cores 2"),
            "{err}"
        );

        let err = check_layout(&data_dir(&[0, 2]).0, 2).unwrap_err().to_string();
        assert!(err.contains("holds the logs of core-0, core-2, which is not core-0 to core-<N-1>"), "{err}");
    }
}
