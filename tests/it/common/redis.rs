//! A real `redis-server` on a free port of 127.0.0.1, for the shared-state tests: started,
//! killed and restarted on the same port, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::TestCa;
use super::{free_port, scratch_dir};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    /// `requirepass`, when set.
    password: Option<String>,
    /// TLS only (no plain port): the CA's certificate (PEM), when it serves TLS.
    tls_ca: Option<String>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// Starts one that takes only clients that give `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(Some(password.to_string()))
    }

    /// Starts one that speaks only TLS, with a certificate for 127.0.0.1 that `ca` signed.
    pub fn start_tls(ca: &TestCa) -> RedisServer {
        let dir = scratch_dir();
        let leaf = ca.leaf();
        std::fs::write(dir.join("redis.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("redis.key"), &leaf.key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            password: None,
            tls_ca: Some(ca.cert_pem.clone()),
        };
        server.restart();
        server
    }

    fn start_with(password: Option<String>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: scratch_dir(),
            password,
            tls_ca: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/0`, with `:PASSWORD@` when it has one.
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// Kills it at once (SIGKILL): no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match self.tls_ca {
            None => cmd.args(["--port", &port]),
            Some(_) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.join("redis.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("redis.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.crt")),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(self.password.iter().flat_map(|p| ["--requirepass", p]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server (scripts/deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends the process `signal` (`STOP` freezes it: connections stay open, nothing answers).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    fn ping(&self) -> Option<()> {
        let mut conn = self.conn()?;
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .ok()
            .map(|_| ())
    }

    /// A plain connection to it, for a test to look at what the proxies keep.
    pub fn conn(&self) -> Option<redis::Connection> {
        let client = match &self.tls_ca {
            None => redis::Client::open(self.url()).ok()?,
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone().into_bytes()),
                },
            )
            .ok()?,
        };
        client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
