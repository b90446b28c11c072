//! The deployment files: the image (`docker/Dockerfile`), the compose demo with Prometheus and
//! Grafana (`docker/`) and the Kubernetes manifests (`deploy/kubernetes/`) name files that
//! exist, carry configurations the proxy accepts, agree with each other on ports and paths, and
//! the dashboard queries only metrics the proxy exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aoai_sim::Fault;
use serde::Deserialize;
use serde_yaml::Value;

use crate::common::*;

mod compose;
mod dockerfile;
mod grafana;
mod kubernetes;

use compose::{bind_mounts, compose, mounted_at};
use dockerfile::{dockerfile, image_uid};

/// The repository root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `docker/`: where the compose file's relative paths start.
fn docker_dir() -> PathBuf {
    root().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML scalar as a string.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => panic!("not a scalar: {v:?}"),
    }
}

/// A list of scalars (or one string, split at spaces, as compose reads a `command` string).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        _ => panic!("not a list: {v:?}"),
    }
}

/// Every value of `flag` in `args`, written `--flag=value` or `--flag value`.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            out.push(v.to_string());
        } else if a == flag {
            out.extend(args.next().cloned());
        }
    }
    out
}

/// The port of `host:port`.
fn port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {addr}"))
}

/// The ports of a configuration's `listen` and its `admin.listen`, each checked to be on every
/// address (0.0.0.0), as a container or a pod needs.
fn container_listeners(config: &Value, file: &str) -> (Vec<u16>, u16) {
    let listen = strings(&config["listen"]);
    let admin = config["admin"]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: no admin.listen"))
        .to_string();
    for addr in listen.iter().chain([&admin]) {
        assert!(
            addr.starts_with("0.0.0.0:"),
            "{file}: {addr} cannot be reached from outside the container"
        );
    }
    (listen.iter().map(|a| port(a)).collect(), port(&admin))
}

/// Runs `aoai-proxy --config FILE --test` with `env`; panics with its stderr unless it exits 0.
fn assert_valid_config(file: &Path, env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
        .arg("--config")
        .arg(file)
        .arg("--test")
        // Never the instance metadata service, whatever the file says.
        .env("IDENTITY_ENDPOINT", "http://127.0.0.1:9/unused")
        .env("IDENTITY_HEADER", "unused")
        .envs(env.iter().copied())
        .output()
        .expect("cannot run aoai-proxy");
    assert!(
        out.status.success(),
        "{} fails --test:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
