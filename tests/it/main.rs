//! Integration tests: the real `aoai-proxy` binary against the project's simulator, one
//! module per behaviour.

mod common;

mod balancing;
mod body_replay;
mod cache;
mod client_auth;
mod client_limits;
mod config_errors;
mod connection_reuse;
mod credentials;
mod demo;
mod deploy_files;
mod entra_clients;
mod fallbacks;
mod header_hygiene;
mod headroom;
mod hostile_http;
mod layout;
mod max_tries;
mod metrics_page;
mod no_retry;
mod openai_sdk;
mod operations;
mod path_rules;
mod quotas;
mod realtime;
mod reload;
mod retry_causes;
mod round_robin;
mod shared_state;
mod shutdown;
mod stateful;
mod streaming;
mod tls;
mod token;
mod token_usage;
mod traces;
mod waiting;
mod workers;
