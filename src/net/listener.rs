//! Accept loops: every core accepts on the shared data port (SO_REUSEPORT lets the kernel
//! spread connections over the cores) and, when enabled, on a port of its own for
//! shard-aware clients. Each accepted connection runs as a task on the accepting core.

use std::rc::Rc;

use glommio::net::TcpListener;

use super::connection;
use crate::runtime::core::CoreRuntime;

/// Accepts connections until the listener fails.
pub async fn accept_loop(core: Rc<CoreRuntime>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(connection::serve(core.clone(), stream)).detach();
            }
            Err(e) => {
                // Out of file descriptors and similar: log, wait a moment, keep serving.
                tracing::warn!(core = core.core, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
