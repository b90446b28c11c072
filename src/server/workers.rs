//! The client listeners: one Pingora listening service per worker, each on a thread of its own
//! and with its own sockets, like nginx's workers with `reuseport`.
//!
//! One listening service with several current-thread workers accepts on one of them and hands
//! each connection to a random one (pingora-core 0.9 `services/listening.rs`: `accept`, then
//! `current_handle().spawn`). The socket stays registered with the accepting thread's reactor,
//! so every read of a connection served elsewhere wakes the other thread. A service per worker
//! has a runtime of one thread: `current_handle()` can only name that one, and a connection is
//! accepted, read and answered on one thread. The kernel spreads new connections over the
//! workers' sockets (`SO_REUSEPORT`).
//!
//! With `server.work_stealing: true` there is one service on one shared runtime, as Pingora
//! builds it.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening;
use pingora::services::Service as ServiceTrait;

use super::listen::{Address, Addresses};
use crate::config::ServerSettings;

/// Buffers of each client connection. Pingora's defaults are a 64 KiB read buffer (held by
/// every connection, a thousand open streams included) and a 1,460-byte write buffer, which
/// sends an answer of a few KB (Azure's headers alone are about 1 KB) in two or three writes.
/// An answer with a length is flushed once, whole; a stream is flushed chunk by chunk whatever
/// the size.
const CLIENT_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(16 * 1024),
    write: Some(16 * 1024),
};

/// How many listening services `server` runs.
pub(super) fn count(server: &ServerSettings) -> usize {
    if server.work_stealing {
        1
    } else {
        server.threads
    }
}

/// One worker's listening service for `app`, of the `workers` `server` runs: every `listen`
/// address, and the HTTPS one when `tls` is given.
pub(super) fn worker<A>(
    index: usize,
    workers: usize,
    addresses: &Addresses,
    app: A,
    tls: Option<TlsSettings>,
) -> Worker<A> {
    let shared_port = workers > 1;
    let listener = |a: &Address| {
        let mut options = TcpSocketOptions::default();
        options.so_reuseport = (shared_port || a.picked).then_some(true);
        ListenerConfig::tcp(&a.addr)
            .tcp_socket_options(options)
            .l4_buffer(CLIENT_BUFFERS)
    };
    let name = if shared_port {
        format!("aoai-proxy-{index}")
    } else {
        "aoai-proxy".to_string()
    };
    let mut service = listening::Service::new(name, app);
    for a in &addresses.listen {
        service.add_listener(listener(a));
    }
    if let (Some(a), Some(settings)) = (&addresses.tls, tls) {
        service.add_listener(listener(a).tls(settings));
    }
    if shared_port {
        service.threads = Some(1);
    }
    Worker { service }
}

/// A listening service that binds its own sockets.
pub(super) struct Worker<A> {
    service: listening::Service<A>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServiceTrait for Worker<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        // Not Pingora's table of listening sockets (it serves a zero-downtime upgrade, which this
        // proxy does not do): it is keyed by address, so every worker would be handed the first
        // one's socket, as its own, and close it again at exit.
        self.service
            .start_service(None, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    fn threads(&self) -> Option<usize> {
        self.service.threads
    }
}
