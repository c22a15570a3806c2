//! Setup before the run, over the blocking reference client: read the topology with hello,
//! check the plan against the server's limits, create the pools, and decide where each
//! connection goes.
//!
//! Pools are created with `pool_create`; an identical repeat of a create answers ok with
//! the existing pool, so re-runs reuse their pools (the pools' TTLs are fixed; each reserve
//! names its own). A pool that exists with another capacity is refused with
//! `pool_exists`: the run stops there, and another --pool-prefix avoids the clash. With
//! `SHARDCAP_ADMIN_TOKEN` set, the setup connection shows it first (`auth`), as a server
//! with a token wants before pool changes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use shardcap::client::Client;
use shardcap::protocol::control::{Hello, PoolCreate, PoolKind};
use shardcap::protocol::{HEADER_SIZE, ReserveOp, Status, home_core};

use crate::args::{Mode, POOL_TTL_MS_DEFAULT, POOL_TTL_MS_MAX, Plan, Workload};

/// How long setup waits for any one answer.
const SETUP_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole setup may take (1000 pools take well under a second).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// What the run needs from the server.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The topology and limits from hello.
    pub hello: Hello,
    /// The created pools: names and ids, by pool index.
    pub pool_names: Vec<String>,
    /// Pool ids, by pool index.
    pub pool_ids: Vec<u32>,
    /// Where each connection goes, by connection index.
    pub conn_addrs: Vec<SocketAddr>,
    /// The core each connection serves in shard-aware mode, by connection index.
    pub conn_cores: Vec<Option<u16>>,
}

/// [`prepare`], given up after `timeout`: the blocking client has no connect timeout and
/// waits for hello without a read timeout, so setup runs on a thread of its own.
pub fn prepare_within(plan: &Plan, timeout: Duration) -> Result<Setup, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let plan = plan.clone();
    std::thread::spawn(move || {
        let _ = tx.send(prepare(&plan));
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(format!("setup did not finish within {timeout:?}")),
        Err(RecvTimeoutError::Disconnected) => Err("setup failed (its thread panicked)".into()),
    }
}

/// Connects, checks the plan and creates the pools. Any failure is a setup failure.
pub fn prepare(plan: &Plan) -> Result<Setup, String> {
    let shared: SocketAddr = plan
        .server
        .to_socket_addrs()
        .map_err(|e| format!("--server {}: {e}", plan.server))?
        .next()
        .ok_or_else(|| format!("--server {}: no address", plan.server))?;
    let mut client = Client::connect(shared).map_err(|e| format!("cannot connect to {shared}: {e}"))?;
    client.set_read_timeout(Some(SETUP_ANSWER_TIMEOUT)).map_err(|e| format!("setup: {e}"))?;
    // Creating pools needs the admin token on a server that has one.
    if let Ok(token) = std::env::var("SHARDCAP_ADMIN_TOKEN") {
        match client.authenticate(&token).map_err(|e| format!("setup: {e}"))? {
            Ok(()) => {}
            Err(status) => return Err(format!("the server refused SHARDCAP_ADMIN_TOKEN: {status}")),
        }
    }
    let hello = client.hello().clone();
    let frame_ops_max = plan.frame_ops_max() as u32;
    if frame_ops_max > hello.batch_operations_max {
        return Err(format!(
            "--ops-per-frame {frame_ops_max} exceeds the server's batch_operations_max {}",
            hello.batch_operations_max
        ));
    }
    let frame_bytes = HEADER_SIZE as u64 + frame_ops_max as u64 * ReserveOp::SIZE as u64;
    if frame_bytes > hello.frame_size_max_bytes as u64 {
        return Err(format!(
            "a frame of {frame_ops_max} operations ({frame_bytes} bytes) exceeds the server's frame_size_max_bytes {}",
            hello.frame_size_max_bytes
        ));
    }
    if plan.depth > hello.inflight_frames_max {
        eprintln!(
            "warning: --depth {} exceeds the server's inflight_frames_max {}: frames that wait for other cores may be answered busy",
            plan.depth, hello.inflight_frames_max
        );
    }

    let cores = hello.core_count.max(1);
    let (conn_addrs, conn_cores) = match plan.mode {
        Mode::Plain => (vec![shared; plan.connections as usize], vec![None; plan.connections as usize]),
        Mode::ShardAware => {
            if hello.core_ports.len() != cores as usize || hello.core_ports.contains(&0) {
                return Err("shard-aware mode needs core ports, and the server has them off".into());
            }
            if plan.workload != Workload::Ping {
                check_every_core_has_a_user(plan.users, cores)?;
            }
            let mut addrs = Vec::with_capacity(plan.connections as usize);
            let mut owners = Vec::with_capacity(plan.connections as usize);
            for c in 0..plan.connections {
                let core = (c % cores as u32) as u16;
                let mut addr = shared;
                addr.set_port(hello.core_ports[core as usize]);
                addrs.push(addr);
                owners.push(Some(core));
            }
            (addrs, owners)
        }
    };

    let (mut pool_names, mut pool_ids) = (Vec::new(), Vec::new());
    if plan.workload != Workload::Ping {
        for index in 0..plan.pools {
            let name = plan.pool_name(index);
            let request = PoolCreate {
                name: name.clone(),
                capacity: plan.pool_capacity(index),
                hold_ttl_ms_default: POOL_TTL_MS_DEFAULT,
                hold_ttl_ms_max: POOL_TTL_MS_MAX,
                kind: PoolKind::Counted as u8,
                active: true,
                rules: plan.rules,
            };
            match client.pool_create(&request) {
                Ok(Ok(info)) => {
                    if !info.active {
                        return Err(format!(
                            "pool {name} exists and is inactive; activate it or use another --pool-prefix"
                        ));
                    }
                    // A repeated creation answers the existing pool whatever its rules.
                    if info.rules != plan.rules {
                        return Err(format!(
                            "pool {name} exists with other rules ({:?}); use another --pool-prefix",
                            info.rules
                        ));
                    }
                    pool_ids.push(info.id);
                }
                Ok(Err(Status::PoolExists)) => {
                    return Err(format!(
                        "pool {name}: pool_exists (it exists with another capacity or TTL; use another --pool-prefix)"
                    ));
                }
                Ok(Err(status)) => return Err(format!("pool {name}: create refused: {status}")),
                Err(e) => return Err(format!("pool {name}: {e}")),
            }
            pool_names.push(name);
        }
    }
    Ok(Setup { hello, pool_names, pool_ids, conn_addrs, conn_cores })
}

/// Shard-aware connections draw users until one is homed on their core; that only ends if
/// every core is the home of at least one of the users 1..=N.
fn check_every_core_has_a_user(users: u64, cores: u16) -> Result<(), String> {
    let mut found = vec![false; cores as usize];
    let mut missing = cores as usize;
    // Bounded by --users; with more users than a few times the cores it stops early.
    for user in 1..=users {
        let core = home_core(user as u128, cores) as usize;
        if !found[core] {
            found[core] = true;
            missing -= 1;
            if missing == 0 {
                return Ok(());
            }
        }
    }
    let empty: Vec<String> = (0..cores).filter(|&c| !found[c as usize]).map(|c| c.to_string()).collect();
    Err(format!(
        "shard-aware mode: none of the users 1..={users} is homed on core(s) {}; raise --users",
        empty.join(", ")
    ))
}
