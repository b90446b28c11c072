//! aoai-proxy: one endpoint in front of many Azure OpenAI instances, built on Pingora.
//!
//! Requests go round robin to the configured backends with a cached Entra ID token; a try
//! that fails (connection, timeout, 408/429/5xx) is sent again, body and all, to the next
//! backend until `retry.max_tries` tries are spent.

pub mod admin;
pub mod config;
pub mod demo;
pub mod deployment;
pub mod errors;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod retry;
pub mod secret;
pub mod server;
pub mod sim;
pub mod simulate;
pub mod throttle;
pub mod token;
