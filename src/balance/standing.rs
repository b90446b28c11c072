//! Each backend's state, in one place: cooldowns per deployment (the backend asked for them),
//! passive ejection (it kept failing), and the result of active probes. Read lock-free and
//! without allocating on every request; changed rarely, and logged when it changes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;

use super::cooldown;
use crate::config::{CooldownPolicy, EjectionPolicy};
use crate::outcome::Outcome;

/// The arbitrary start of [`nanos`].
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(|| Instant::now() - Duration::from_secs(1))
}

/// Nanoseconds since an arbitrary start (never 0): lets an `Instant` live in an atomic.
fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start()).as_nanos()).unwrap_or(u64::MAX)
}

/// A point in time as this module keeps it ([`nanos`]): turned from an `Instant` once a pick,
/// then compared with every backend's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(u64);

impl Moment {
    pub fn of(at: Instant) -> Moment {
        Moment(nanos(at))
    }

    /// The `Instant` it was taken from (to the nanosecond).
    pub fn instant(self) -> Instant {
        start() + Duration::from_nanos(self.0)
    }
}

/// Where a backend stands for a deployment, as far as its state goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It asked to be left alone for this deployment, for this long still.
    Cooling(Duration),
    /// Ejected by passive health, or failing its probes.
    Unhealthy,
    /// It may take requests.
    Good,
}

/// Cooldown ends per deployment (`None`: requests that name no deployment), in [`nanos`]. A
/// short list: a backend cools for few deployments at once, and a scan allocates nothing.
type Cooldowns = Box<[(Option<Box<str>>, u64)]>;

/// A change in a backend's standing that the other replicas should know of (`state.redis`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandingChange {
    /// A deployment on it began cooling for this long.
    Cooled {
        deployment: Option<String>,
        period: Duration,
    },
    /// Passive health took it out of rotation for this long.
    Ejected { period: Duration },
}

/// What a metrics endpoint shows of a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// (deployment, time left) for each cooldown in force.
    pub cooling: Vec<(Option<String>, Duration)>,
    /// Time left of an ejection in force.
    pub ejected: Option<Duration>,
    /// `Some(false)` while active probes fail; `None` without probes.
    pub probe_up: Option<bool>,
}

/// One backend's state.
pub struct BackendStanding {
    name: String,
    cooldowns: ArcSwap<Cooldowns>,
    /// The latest end of any cooldown, in [`nanos`]: past it, nothing cools, and a request need
    /// not look at the list.
    cooling_until: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    probed: AtomicBool,
    probe_down: AtomicBool,
}

impl BackendStanding {
    pub fn new(name: &str) -> Self {
        BackendStanding {
            name: name.to_string(),
            cooldowns: ArcSwap::default(),
            cooling_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            probed: AtomicBool::new(false),
            probe_down: AtomicBool::new(false),
        }
    }

    /// How long `deployment` still cools on this backend.
    pub fn cooling_left(&self, deployment: Option<&str>, now: Instant) -> Option<Duration> {
        self.cooling_left_at(deployment, Moment::of(now))
    }

    /// Where it stands for `deployment` at `at`: cooling, unhealthy, or good.
    pub fn standing(&self, deployment: Option<&str>, at: Moment) -> Standing {
        if let Some(left) = self.cooling_left_at(deployment, at) {
            Standing::Cooling(left)
        } else if self.ejected_until.load(Ordering::Acquire) > at.0 || self.is_probe_down() {
            Standing::Unhealthy
        } else {
            Standing::Good
        }
    }

    fn cooling_left_at(&self, deployment: Option<&str>, at: Moment) -> Option<Duration> {
        let now = at.0;
        if self.cooling_until.load(Ordering::Acquire) <= now {
            return None;
        }
        let list = self.cooldowns.load();
        let until = list
            .iter()
            .find(|(d, _)| d.as_deref() == deployment)
            .map(|(_, until)| *until)?;
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Takes `deployment` on this backend out of rotation for `period`; a shorter cooldown
    /// never cuts a longer one short.
    pub fn cool(&self, deployment: Option<&str>, period: Duration, why: &str) {
        let now = Instant::now();
        let until = nanos(now.checked_add(period).unwrap_or(now));
        self.cooldowns.rcu(|list| {
            let now = nanos(now);
            let mut next: Vec<(Option<Box<str>>, u64)> = list
                .iter()
                .filter(|(d, t)| *t > now && d.as_deref() != deployment)
                .cloned()
                .collect();
            let longer = list
                .iter()
                .find(|(d, _)| d.as_deref() == deployment)
                .map_or(until, |(_, t)| until.max(*t));
            next.push((deployment.map(Box::from), longer));
            next.into_boxed_slice()
        });
        // After the list: a request that sees the new end finds the new entry too.
        self.cooling_until.fetch_max(until, Ordering::AcqRel);
        log::warn!(
            "backend {} cooling {}for {:.1}s ({why})",
            self.name,
            deployment
                .map(|d| format!("for deployment {d} "))
                .unwrap_or_default(),
            period.as_secs_f64()
        );
    }

    /// Whether passive health has this backend out of rotation now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Acquire) > nanos(now)
    }

    /// Whether active probes currently find it down.
    pub fn is_probe_down(&self) -> bool {
        self.probe_down.load(Ordering::Acquire)
    }

    /// Takes in what a try produced: a 429 or 503 cools the deployment for the time the backend
    /// asked (see [`cooldown::period`]); connection failures, timeouts and 5xx count towards
    /// ejection; any other answer shows the backend alive.
    pub fn observe(
        &self,
        outcome: Outcome,
        headers: Option<&HeaderMap>,
        deployment: Option<&str>,
        cooldown: &CooldownPolicy,
        ejection: &EjectionPolicy,
    ) -> Option<StandingChange> {
        match outcome {
            Outcome::Status(status) if matches!(status.as_u16(), 429 | 503) => {
                let (period, why) = cooldown::period(headers, cooldown, SystemTime::now());
                self.cool(deployment, period, &format!("{}, {why}", status.as_u16()));
                let ejected = match status.as_u16() {
                    503 => self.record_failure(ejection),
                    _ => {
                        self.record_success();
                        None
                    }
                };
                Some(match ejected {
                    Some(period) => StandingChange::Ejected { period },
                    None => StandingChange::Cooled {
                        deployment: deployment.map(str::to_string),
                        period,
                    },
                })
            }
            Outcome::Status(status) if status.as_u16() >= 500 => self
                .record_failure(ejection)
                .map(|period| StandingChange::Ejected { period }),
            Outcome::Status(_) => {
                self.record_success();
                None
            }
            Outcome::Failed(_) => self
                .record_failure(ejection)
                .map(|period| StandingChange::Ejected { period }),
        }
    }

    /// Takes in a change another replica saw (`state.redis`): this backend cools or is out of
    /// rotation for `change`'s period from now, as if this replica had seen it.
    pub fn apply_shared(&self, change: &StandingChange) {
        match change {
            StandingChange::Cooled { deployment, period } => {
                self.cool(deployment.as_deref(), *period, "seen by another replica")
            }
            StandingChange::Ejected { period } => {
                let now = Instant::now();
                let until = nanos(now.checked_add(*period).unwrap_or(now));
                if self.ejected_until.fetch_max(until, Ordering::AcqRel) < until {
                    log::warn!(
                        "backend {} out of rotation for {}s (ejected by another replica)",
                        self.name,
                        period.as_secs()
                    );
                }
            }
        }
    }

    /// Counts a connection failure, timeout or 5xx; ejects after `policy.failures` in a row,
    /// and again at once (for twice as long) if it fails right after an ejection. The period
    /// of an ejection it began.
    fn record_failure(&self, policy: &EjectionPolicy) -> Option<Duration> {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let ejections = self.ejections.load(Ordering::Acquire);
        let now = Instant::now();
        if self.is_ejected(now) || (failures < policy.failures && ejections == 0) {
            return None;
        }
        let period = policy
            .base
            .saturating_mul(1 << ejections.min(16))
            .min(policy.max);
        self.ejected_until.store(
            nanos(now.checked_add(period).unwrap_or(now)),
            Ordering::Release,
        );
        self.ejections.fetch_add(1, Ordering::AcqRel);
        self.failures.store(0, Ordering::Release);
        log::warn!(
            "backend {} ejected for {}s after {failures} failure(s) in a row",
            self.name,
            period.as_secs()
        );
        Some(period)
    }

    /// Counts an answer below 500: the backend is alive, and back in rotation if it was out.
    fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.ejections.swap(0, Ordering::AcqRel) > 0 {
            self.ejected_until.store(0, Ordering::Release);
            log::info!("backend {} answered again: back in rotation", self.name);
        }
    }

    /// Records an active probe's verdict.
    pub fn set_probe(&self, up: bool) {
        self.probed.store(true, Ordering::Release);
        let was_down = self.probe_down.swap(!up, Ordering::AcqRel);
        match (was_down, up) {
            (false, false) => log::warn!(
                "backend {} failed its health checks: out of rotation",
                self.name
            ),
            (true, true) => log::info!(
                "backend {} passed its health check: back in rotation",
                self.name
            ),
            _ => {}
        }
    }

    /// The state for metrics.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let n = nanos(now);
        let mut cooling: Vec<_> = self
            .cooldowns
            .load()
            .iter()
            .filter(|(_, t)| *t > n)
            .map(|(d, t)| {
                (
                    d.as_deref().map(str::to_string),
                    Duration::from_nanos(t - n),
                )
            })
            .collect();
        cooling.sort_by(|a, b| a.0.cmp(&b.0));
        let until = self.ejected_until.load(Ordering::Acquire);
        Snapshot {
            cooling,
            ejected: (until > n).then(|| Duration::from_nanos(until - n)),
            probe_up: self
                .probed
                .load(Ordering::Acquire)
                .then(|| !self.is_probe_down()),
        }
    }
}

#[cfg(test)]
mod tests;
