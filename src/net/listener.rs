//! Accept loops: every core accepts on the shared data port (SO_REUSEPORT lets the kernel
//! spread connections over the cores) and, when enabled, on a port of its own for
//! shard-aware clients. Each accepted connection runs as a task on the core that serves it.
//!
//! The kernel spreads the shared port's connections by a hash, whether the core they land
//! on has room or not. So a core at `connections_max_per_core` passes a connection of the
//! shared port on to the next core (core + 1, wrapping), which serves it or, full too,
//! passes it on in turn; a connection that has been offered to every core is answered
//! `busy` by the last one. A core's own port is that core's: a full core answers `busy`.

use std::rc::Rc;

use glommio::net::{AcceptedTcpStream, TcpListener};

use super::connection;
use crate::runtime::core::CoreRuntime;

/// Connections a core may have passed to the next core and not yet taken; when the link is
/// full, the passing core answers `busy` itself.
const HANDOFF_DEPTH: usize = 1024;

/// A connection of the shared port passed on by a full core.
pub struct Handed {
    stream: AcceptedTcpStream,
    /// Cores that passed it on so far.
    hops: u16,
}

/// The links over which full cores pass connections of the shared port on.
pub struct Handoff {
    /// One sender per core, by core index.
    to: Vec<flume::Sender<Handed>>,
    /// Connections passed to this core.
    from: flume::Receiver<Handed>,
}

impl Handoff {
    /// The links of `cores` cores, by core index.
    pub fn links(cores: u16) -> Vec<Handoff> {
        let (to, from): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(HANDOFF_DEPTH)).unzip();
        from.into_iter().map(|from| Handoff { to: to.clone(), from }).collect()
    }
}

/// What one core accepts connections on.
pub struct Listeners {
    /// The shared data port.
    pub shared: Option<TcpListener>,
    /// The core's own port.
    pub own: Option<TcpListener>,
    /// Links to the other cores for the shared port's connections.
    pub handoff: Handoff,
}

/// Starts the core's accept loops, and the task that serves connections other cores pass on.
pub fn serve(core: Rc<CoreRuntime>, listeners: Listeners) {
    let Listeners { shared, own, handoff } = listeners;
    let handoff = Rc::new(handoff);
    if let Some(listener) = shared {
        glommio::spawn_local(accept_shared(core.clone(), listener, handoff.clone())).detach();
    }
    if let Some(listener) = own {
        glommio::spawn_local(accept_loop(core.clone(), listener)).detach();
    }
    glommio::spawn_local(async move {
        while let Ok(handed) = handoff.from.recv_async().await {
            place(&core, &handoff, handed.stream, handed.hops);
        }
    })
    .detach();
}

/// Accepts on the core's own port until the listener fails.
async fn accept_loop(core: Rc<CoreRuntime>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Counted at once: a burst of accepts runs before any of their tasks.
                let opened = core.open_connection();
                glommio::spawn_local(connection::serve(core.clone(), stream, opened)).detach();
            }
            Err(e) => accept_failed(&core, e).await,
        }
    }
}

/// Accepts on the shared port until the listener fails; a full core passes connections on.
async fn accept_shared(core: Rc<CoreRuntime>, listener: TcpListener, handoff: Rc<Handoff>) {
    loop {
        match listener.shared_accept().await {
            Ok(stream) => place(&core, &handoff, stream, 0),
            Err(e) => accept_failed(&core, e).await,
        }
    }
}

/// Serves a connection of the shared port here, or, when this core is full and some core has
/// not been offered it yet, passes it to the next core.
fn place(core: &Rc<CoreRuntime>, handoff: &Handoff, mut stream: AcceptedTcpStream, hops: u16) {
    // Counted at once: a burst of accepts runs before any of their tasks.
    let opened = core.open_connection();
    if opened.is_none() && hops + 1 < core.cores {
        let next = (core.core + 1) % core.cores;
        match handoff.to[next as usize].try_send(Handed { stream, hops: hops + 1 }) {
            Ok(()) => return,
            // The link is full (or the next core stopped): refused here.
            Err(e) => stream = e.into_inner().stream,
        }
    }
    // Without a registration, `serve` answers busy.
    glommio::spawn_local(connection::serve(core.clone(), stream.bind_to_executor(), opened)).detach();
}

/// Out of file descriptors and similar: log, wait a moment, keep serving.
async fn accept_failed(core: &CoreRuntime, e: glommio::GlommioError<()>) {
    tracing::warn!(core = core.core, error = %e, "accept failed");
    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
}
