//! aoai-proxy: one endpoint in front of many Azure OpenAI instances, built on Pingora.
//!
//! Requests go round robin to the configured backends with a cached Entra ID token; a try
//! that fails (connection, timeout, 408/429/5xx) is sent again, body and all, to the next
//! backend until `retry.max_tries` tries are spent.
//!
//! The parts, each in its own module, dependencies pointing down the list: [`config`] (the YAML
//! file, validated), [`outcome`] (what a try produced), [`usage`] (the tokens an answer
//! reports), [`metrics`], [`credentials`] (Entra ID tokens), [`clients`] (who may use the proxy,
//! and their limits), [`objects`] (where stateful objects live), [`balance`] (the backends and
//! choosing one), [`request`] (the typed view of a request), [`retry`] (what follows a try),
//! [`cache`] (the response cache), [`state`] (state shared across replicas), [`proxy`] (the Pingora request path), [`server`]
//! (start-up, listeners, admin, reload, shutdown), [`logging`] and [`health_command`] (the
//! `health` command). [`demo`] holds the commands that run the simulator.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod balance;
pub mod cache;
pub mod clients;
pub mod config;
pub mod credentials;
#[cfg(feature = "sim")]
pub mod demo;
pub mod health_command;
pub mod logging;
pub mod metrics;
pub mod objects;
pub mod outcome;
pub mod proxy;
pub mod request;
pub mod retry;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod usage;
