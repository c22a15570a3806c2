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

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{CpuSet, Latency, LocalExecutorBuilder, Placement, Shares};

use self::clock::SystemClock;
use self::core::{CoreRuntime, Topology};
use self::mesh::{MeshMsg, MeshOut};
use crate::config::Config;
use crate::net::listener::accept_loop;
use crate::shard::Engine;

/// What a started server listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The shared data port's address.
    pub listen: SocketAddr,
    /// Number of cores.
    pub cores: u16,
    /// Each core's own port (empty when core ports are off).
    pub core_ports: Vec<u16>,
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
    let startup = Arc::new(Startup {
        barrier: Barrier::new(cores as usize + 1),
        shared_port: Mutex::new(0),
        core_ports: Mutex::new(vec![0; cores as usize]),
        errors: Mutex::new(Vec::new()),
    });
    let mesh: MeshBuilder<MeshMsg, _> =
        MeshBuilder::full(cores as usize, config.limits.mesh_channel_depth_messages as usize);
    let cpus: Vec<usize> = CpuSet::online().map(|set| set.iter().map(|l| l.cpu).collect()).unwrap_or_default();
    let mut handles = Vec::new();
    for core in 0..cores {
        let placement = if config.server.pin_cores && !cpus.is_empty() {
            Placement::Fixed(cpus[core as usize % cpus.len()])
        } else {
            Placement::Unbound
        };
        let (config, startup, mesh) = (config.clone(), startup.clone(), mesh.clone());
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("shardcap-core-{core}"))
            .io_memory(config.server.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.server.spin_before_park_us))
            .spawn(move || core_main(core, config, startup, mesh));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                // The barriers count every core: report and stop the process.
                return Err(StartError::Cores(vec![format!("core {core}: cannot start its executor: {e}")]));
            }
        }
    }
    startup.barrier.wait(); // core 0 bound the shared port
    startup.barrier.wait(); // every core bound its ports
    let errors = startup.errors.lock().expect("startup lock").clone();
    if !errors.is_empty() {
        return Err(StartError::Cores(errors));
    }
    startup.barrier.wait(); // every core joined the mesh and built its state
    let mut listen = config.listen_addr();
    listen.set_port(*startup.shared_port.lock().expect("startup lock"));
    let core_ports =
        if config.server.core_ports { startup.core_ports.lock().expect("startup lock").clone() } else { Vec::new() };
    on_ready(&Ready { listen, cores, core_ports });
    for handle in handles {
        if let Err(e) = handle.join() {
            return Err(StartError::Cores(vec![format!("a core stopped: {e}")]));
        }
    }
    Ok(())
}

/// Binds `addr` with SO_REUSEPORT, first checking that no other socket holds the port (a
/// second server on the same port would silently share its connections).
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}

async fn core_main(
    core: u16,
    config: Config,
    startup: Arc<Startup>,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
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
        match TcpListener::bind(addr) {
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
    startup.barrier.wait();
    if !startup.errors.lock().expect("startup lock").is_empty() {
        return;
    }
    let topology = Topology {
        shared_port,
        core_ports: if config.server.core_ports {
            startup.core_ports.lock().expect("startup lock").clone()
        } else {
            vec![0; cores as usize]
        },
    };
    // 3. The mesh, the state machine and the tasks.
    let (senders, receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            startup.fail(format!("core {core}: cannot join the mesh: {e}"));
            return;
        }
    };
    assert_eq!(senders.peer_id(), core as usize, "mesh peers are ordered like cores");
    let clock = SystemClock;
    let now = clock::Clock::now_ms(&clock);
    let mut engine = Engine::new(config.engine_config(core), now);
    for pool in &config.pools {
        let def = engine.validate_pool_create(&pool.to_request()).expect("validated with the config");
        engine.create_pool(def);
    }
    let mesh = Rc::new(MeshOut::new(senders));
    for peer in (0..cores).filter(|&p| p != core) {
        let mesh = mesh.clone();
        glommio::spawn_local(async move { mesh.drain(peer).await }).detach();
    }
    let runtime = Rc::new(CoreRuntime::new(core, config.clone(), topology, Box::new(clock), engine, mesh));
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
    let background = glommio::executor().create_task_queue(Shares::Static(100), Latency::NotImportant, "background");
    let tick = Duration::from_millis(config.server.expiry_tick_ms);
    let ticker = runtime.clone();
    let spawned = glommio::spawn_local_into(
        async move {
            loop {
                glommio::timer::sleep(tick).await;
                ticker.tick();
            }
        },
        background,
    );
    match spawned {
        Ok(task) => {
            task.detach();
        }
        Err(e) => startup.fail(format!("core {core}: cannot start the expiry ticker: {e}")),
    }
    for listener in [shared, own].into_iter().flatten() {
        glommio::spawn_local(accept_loop(runtime.clone(), listener)).detach();
    }
    startup.barrier.wait();
    futures_lite::future::pending::<()>().await;
}
