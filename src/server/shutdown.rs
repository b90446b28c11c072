//! Running until a signal, and stopping on time.
//!
//! SIGTERM and SIGINT start a graceful shutdown: Pingora closes the listeners, and requests in
//! flight (streams included) go on. The process exits as soon as they are done, or when
//! `server.grace_period` ends.
//!
//! NOTE: Pingora 0.9 cannot end its own graceful shutdown early. `Server::run` sleeps the whole
//! `grace_period_seconds` on its thread once the listeners are closed, however few requests are
//! left (pingora-core `server/mod.rs`: `thread::sleep(Duration::from_secs(exit_timeout))`), and
//! then cancels whatever is still running; its configuration cannot change after start. So the
//! server runs on a thread of its own, the [`Drained`] watcher tells the main thread when the
//! last request has finished, and the main thread returns from `main`, which ends the process
//! with the server thread still asleep. Nothing polls, and nothing calls `process::exit`.

use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use super::reload::Reloader;
use crate::metrics::Metrics;

/// How long nothing must be in flight before the process exits: a request whose header was
/// still arriving on a kept-alive connection is counted within it.
const SETTLE: Duration = Duration::from_secs(1);

/// Why the main thread stops waiting.
enum Exit {
    /// Every request in flight at shutdown has finished.
    Drained,
    /// Pingora's `run` returned (its grace period ended, or it could not start).
    Stopped,
}

/// The channel on which the main thread learns that it may exit.
pub(super) struct Drained {
    tx: mpsc::Sender<Exit>,
    rx: mpsc::Receiver<Exit>,
}

impl Drained {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Drained { tx, rx }
    }

    /// The background service that says when the last request is done after shutdown began.
    pub(super) fn watcher(&self, metrics: Arc<Metrics>) -> DrainWatcher {
        DrainWatcher {
            metrics,
            tx: self.tx.clone(),
        }
    }
}

/// Waits for Pingora's shutdown, then for no request to be in flight.
pub(super) struct DrainWatcher {
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Exit>,
}

#[async_trait]
impl BackgroundService for DrainWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        loop {
            self.metrics.idle().await;
            tokio::time::sleep(SETTLE).await;
            if self.metrics.in_flight() == 0 {
                break;
            }
        }
        log::info!("all requests finished: exiting");
        let _ = self.tx.send(Exit::Drained);
    }
}

/// Runs `server` until a signal and its requests are done; the process's exit code.
/// With a `reloader`, SIGHUP reloads the configuration.
pub(super) fn run(
    mut server: Server,
    metrics: Arc<Metrics>,
    drained: Drained,
    reloader: Option<Reloader>,
) -> ExitCode {
    server.bootstrap();
    let grace_period = Duration::from_secs(server.configuration.grace_period_seconds.unwrap_or(0));
    let signal = Signals {
        metrics,
        grace_period,
        reloader,
    };
    // The main thread keeps no sender: should the server thread die, every sender goes with
    // it and the wait below ends.
    let Drained { tx: stopped, rx } = drained;
    let spawned = std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
            let _ = stopped.send(Exit::Stopped);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the server thread: {e}");
        return ExitCode::FAILURE;
    }
    match rx.recv() {
        Ok(Exit::Drained) => ExitCode::SUCCESS,
        Ok(Exit::Stopped) => {
            log::info!("the server stopped: exiting");
            ExitCode::SUCCESS
        }
        Err(_) => {
            log::error!("the server thread ended without stopping: exiting");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT both start a graceful shutdown; SIGHUP reloads, when there is a file to
/// reload from (and is ignored otherwise, rather than ending the process as it would by default).
struct Signals {
    metrics: Arc<Metrics>,
    grace_period: Duration,
    reloader: Option<Reloader>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            log::error!("cannot install signal handlers: shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let name = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => match &self.reloader {
                    Some(reloader) => reloader.reload().await,
                    None => log::warn!("SIGHUP: no configuration file to reload (the demo runs without one)"),
                },
            }
        };
        log::info!(
            "{name}: no new connections; waiting up to {}s for {} request(s) in flight",
            self.grace_period.as_secs(),
            self.metrics.in_flight()
        );
        ShutdownSignal::GracefulTerminate
    }
}
