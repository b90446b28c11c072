//! The backends and choosing one: the [`Pool`] with its priority groups and their rotations
//! ([`rotation`], pingora-load-balancing's round robin), the accept rule and each request's
//! [`Selection`], the order a search asks them in, the standing that rule reads (cooldowns asked
//! for by the backends, passive health, active probes), the quota the backends say they have
//! left ([`capacity`], for `balance.strategy: headroom`), DNS, and the pool's metric families.
//!
//! Nothing here needs a Pingora session or a network to be tested: the proxy feeds in what each
//! try produced ([`Pool::observe`]) and asks for the next backend ([`Selection::next`]).

mod backend;
pub mod capacity;
pub mod cooldown;
mod dns;
mod exposition;
mod pool;
mod probe;
mod rotation;
mod search;
mod select;
pub mod spread;
mod standing;
pub mod waiting;

pub use backend::{Backend, BackendAuth, BackendError, Credential, Naming};
pub use capacity::{Report, Room};
pub use dns::{Resolver, DNS_INTERVAL};
pub use pool::Pool;
pub use probe::Prober;
pub use select::{Pick, Selection, Unavailable};
pub use standing::{BackendStanding, Snapshot, StandingChange};
pub use waiting::{Ticket, Turn, WaitingRoom};

#[cfg(test)]
pub(crate) use pool::tests::pool as test_pool;
