//! aoai-proxy: one endpoint in front of many Azure OpenAI instances, built on Pingora.
//!
//! Requests go round robin to the configured backends with a cached Entra ID token; a try
//! that fails (connection, timeout, 408/429/5xx) is sent again, body and all, to the next
//! backend until `retry.max_tries` tries are spent.
//!
//! The parts, each in its own module: [`config`] (the YAML file, validated), [`clients`] (who
//! may use the proxy), [`credentials`] (Entra ID tokens), [`balance`] (the backends and choosing one), [`retry`] (what follows a
//! try), [`proxy`] (the Pingora request path), [`usage`] (the tokens an answer reports),
//! [`metrics`], [`server`] (start-up, admin listener, reload, shutdown) and [`health`] (the `health` command). [`demo`] holds the commands that run the simulator.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod balance;
pub mod clients;
pub mod config;
pub mod credentials;
#[cfg(feature = "sim")]
pub mod demo;
pub mod health;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod objects;
pub mod proxy;
pub mod retry;
pub mod server;
pub mod state;
pub mod usage;
