//! Listeners and connections, on glommio's io_uring sockets.

pub mod connection;
pub mod listener;
