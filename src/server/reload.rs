//! Configuration reload on SIGHUP: the file is read and validated again and, when it is valid,
//! a new [`Gateway`] takes over for the requests that arrive from then on. Requests and
//! streams in flight keep the one they started with (each holds it to its end). Backends that
//! stay (same name, same URL) keep their cooldowns, ejection, probe results, counters and
//! resolved address; the token cache and the upstream connection pool are the process's own
//! and go on untouched.
//!
//! Some settings are fixed for the life of the process: the listeners (`listen`, `tls`,
//! `admin`), `server`, `auth`, `client_auth` and `upstream_tls`. A reload that changes them applies the rest
//! and logs that those need a restart.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use pingora::tls::x509::X509;

use crate::balance::Pool;
use crate::config::Config;
use crate::metrics::Reload;
use crate::proxy::{Gateway, Lasting};

/// Reloads the configuration from `path`.
pub(super) struct Reloader {
    pub(super) path: PathBuf,
    /// The configuration the process started with: what its fixed settings are.
    pub(super) started: Config,
    pub(super) current: Arc<ArcSwap<Gateway>>,
    /// The pool, for the background tasks that follow it (probes, DNS, status).
    pub(super) pools: watch::Sender<Arc<Pool>>,
    pub(super) lasting: Lasting,
    /// The trust store for upstream TLS (`upstream_tls.ca_file`).
    pub(super) ca: Option<Arc<Box<[X509]>>>,
}

impl Reloader {
    /// Reloads once; logs and counts the result.
    pub(super) async fn reload(&self) {
        let path = self.path.display();
        match self.try_reload().await {
            Ok(fixed) => {
                self.lasting.metrics.record_reload(Reload::Ok);
                log::info!("SIGHUP: reloaded {path}");
                if !fixed.is_empty() {
                    log::warn!(
                        "SIGHUP: {} changed in {path}; that needs a restart, the running value stays",
                        fixed.join(", ")
                    );
                }
            }
            Err(e) => {
                self.lasting.metrics.record_reload(Reload::Error);
                log::error!(
                    "SIGHUP: the configuration was not reloaded, the running one stays: {e}"
                );
            }
        }
    }

    /// The new configuration in force, or why not. Returns the fixed settings it changed.
    async fn try_reload(&self) -> Result<Vec<&'static str>, String> {
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let fixed = fixed_changes(&self.started, &config);
        let running = self.current.load_full();
        let pool = Pool::replacing(&config, self.ca.clone(), Some(running.pool()))
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if pool.needs_token() && self.lasting.tokens.is_none() {
            return Err(format!(
                "{}: backends without an api_key now need an Entra ID token, and the running proxy fetches none (every backend had an api_key, or auth.kind is none): restart to use them",
                self.path.display()
            ));
        }
        // New host names resolve before the pool takes traffic (getaddrinfo blocks).
        let pool = tokio::task::spawn_blocking(move || {
            pool.resolve_all();
            Arc::new(pool)
        })
        .await
        .map_err(|e| e.to_string())?;
        let gateway = Gateway::new(&config, pool.clone(), &self.lasting);
        self.current.store(Arc::new(gateway));
        self.pools.send_replace(pool);
        Ok(fixed)
    }
}

/// The settings fixed at start that `new` changes.
fn fixed_changes(started: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    check("listen", started.listen == new.listen);
    check("tls", started.tls == new.tls);
    check("admin", started.admin == new.admin);
    check(
        "upstream_tls",
        started.upstream_ca_file == new.upstream_ca_file,
    );
    // `auth.startup_wait` is read by each request: it reloads. The rest is the credential.
    let (a, b) = (&started.auth, &new.auth);
    check(
        "auth",
        (&a.credential, &a.scope, a.refresh_before) == (&b.credential, &b.scope, b.refresh_before),
    );
    check("server", started.server == new.server);
    check(
        "timeouts.client_header",
        started.timeouts.client_header == new.timeouts.client_header,
    );
    check("client_auth", started.entra_clients == new.entra_clients);
    check("state", started.redis == new.redis);
    check("telemetry", started.telemetry == new.telemetry);
    check("cache", started.cache == new.cache);
    check(
        "objects",
        started.objects_remembered == new.objects_remembered,
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_settings_are_named_when_they_change() {
        let yaml = |listen: &str, threads: u32, max_tries: u32| {
            format!(
                "listen: [\"{listen}\"]\nauth: {{kind: none}}\nserver: {{threads: {threads}}}\nretry: {{max_tries: {max_tries}}}\nbackends: [{{url: \"http://127.0.0.1:1\"}}]\n"
            )
        };
        let a = Config::from_yaml(&yaml("127.0.0.1:1000", 1, 3)).unwrap();
        let b = Config::from_yaml(&yaml("127.0.0.1:1000", 1, 2)).unwrap();
        let c = Config::from_yaml(&yaml("127.0.0.1:2000", 2, 3)).unwrap();
        assert!(fixed_changes(&a, &b).is_empty(), "max_tries reloads");
        assert_eq!(fixed_changes(&a, &c), ["listen", "server"]);
        let cached = |ttl: &str| {
            let yaml = format!("{}cache: {{ttl: {ttl}}}\n", yaml("127.0.0.1:1000", 1, 3));
            Config::from_yaml(&yaml).unwrap()
        };
        assert_eq!(fixed_changes(&a, &cached("1h")), ["cache"], "a cache added");
        assert_eq!(fixed_changes(&cached("1h"), &cached("2h")), ["cache"]);
    }
}
