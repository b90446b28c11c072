//! The backends and choosing one: the [`Pool`] with its priority groups and rotations, the
//! accept rule and each request's [`Selection`], the state that rule reads (cooldowns asked for
//! by the backends, passive health, active probes), DNS, and deployment names.
//!
//! Nothing here needs a Pingora session or a network to be tested: the proxy feeds in what each
//! try produced ([`Pool::observe`]) and asks for the next backend ([`Selection::next`]).

mod backend;
pub mod cooldown;
pub mod deployment;
mod dns;
mod health;
mod pool;
mod probe;
mod search;
mod select;

pub use backend::{Backend, BackendAuth, BackendError, Credential, Naming};
pub use dns::{Resolver, DNS_INTERVAL};
pub use health::{BackendHealth, HealthChange, Snapshot};
pub use pool::Pool;
pub use probe::Prober;
pub use select::{Pick, Selection, Unavailable};

#[cfg(test)]
pub(crate) use pool::tests::pool as test_pool;
