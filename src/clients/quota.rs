//! Per-client quotas by period (`token_quota`, in tokens) and budgets (`budget`, in
//! billionths of a dollar): a count per client, kind and period, that starts again at zero when
//! the period does.
//!
//! A request is charged its estimate when it is let in, so requests side by side see each
//! other, and the estimate is replaced by what it spent when its answer ends
//! ([`QuotaStore::settle`]), as the minute limits do: a client overshoots by at most the
//! requests in flight when it reaches its limit.
//!
//! Counts sit behind [`QuotaStore`]: [`LocalQuotas`] in this process, or the store the replicas
//! share (`state::quotas`), which keeps a [`LocalQuotas`] for when Redis cannot answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Allowance, ClientLimits};

/// Which count: tokens (`token_quota`) or money (`budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Tokens,
    Usd,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Tokens, Kind::Usd];

    /// The client's allowance of this kind.
    pub fn of(self, limits: &ClientLimits) -> Option<&Allowance> {
        match self {
            Kind::Tokens => limits.token_quota.as_ref(),
            Kind::Usd => limits.budget.as_ref(),
        }
    }

    /// Its name in Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tokens => "tokens",
            Kind::Usd => "usd",
        }
    }
}

/// What a request is expected to spend, or spent: tokens, and billionths of a dollar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    pub nanos: u64,
}

impl Spend {
    pub fn of(self, kind: Kind) -> u64 {
        match kind {
            Kind::Tokens => self.tokens,
            Kind::Usd => self.nanos,
        }
    }
}

/// A request charged its estimate: what to settle when its answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charged {
    pub estimate: Spend,
    /// The start of the period it was charged in, by [`Kind`] (`None`: no such allowance).
    pub(crate) starts: [Option<u64>; 2],
    /// Charged in the store the replicas share, not this process's own.
    pub(crate) shared: bool,
}

impl Charged {
    /// What settling it with `spent` changes of `kind`'s count in the period that starts at
    /// `start` (the current one): the difference from its estimate, in the period it was
    /// charged in; all it spent, in a period begun since. `None`: it was not charged `kind`.
    pub(crate) fn change(&self, kind: Kind, start: u64, spent: Spend) -> Option<i64> {
        let charged_in = self.starts[kind as usize]?;
        let counted = match start == charged_in {
            true => self.estimate.of(kind),
            false => 0,
        };
        Some(delta(spent.of(kind), counted))
    }
}

/// A request kept out: which allowance, how much of it is used, and when it starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverQuota {
    pub kind: Kind,
    pub used: u64,
    pub allowance: Allowance,
    /// The period's end, in seconds since the Unix epoch.
    pub resets_at: u64,
    pub resets_in: Duration,
}

/// How much of one allowance a client has used in the current period (for `/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub used: u64,
    pub limit: u64,
    pub resets_in: Duration,
}

/// Where quota counts live.
#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync {
    /// Charges one request of `client` its `estimate`, or says which allowance is spent. `now`:
    /// the time since the Unix epoch.
    async fn charge(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
    ) -> Result<Charged, OverQuota>;

    /// Replaces what `charge` counted for a request with what it `spent`: the difference in
    /// the period charged, or, when that period has ended, what was spent in the current one.
    fn settle(
        &self,
        client: &str,
        limits: &ClientLimits,
        charged: &Charged,
        spent: Spend,
        now: Duration,
    );

    /// The client's standing in each allowance it has, by [`Kind`].
    async fn standing(
        &self,
        client: &str,
        limits: &ClientLimits,
        now: Duration,
    ) -> [Option<Standing>; 2];
}

/// One client's count of one kind in the period that starts at `start`: what the shared store
/// last said (`known`; always 0 in a process of its own), what this process counted since that
/// it has not told the store (`pending`, less than zero when a settled request spent less than
/// its estimate), and what it told the store in a call that got no answer (`unsure`: the store
/// may yet apply it, so it is not told again, but it counts here until the store answers).
#[derive(Debug, Default)]
struct Tally {
    start: u64,
    /// When the period ends (set wherever something is counted here).
    end: u64,
    known: u64,
    pending: i64,
    unsure: i64,
}

impl Tally {
    fn used(&self) -> u64 {
        self.known
            .saturating_add_signed(self.pending)
            .saturating_add_signed(self.unsure)
    }

    /// Moves the tally to the period that starts at `start`, from zero when it is a new one.
    fn at(&mut self, start: u64) -> &mut Self {
        if self.start != start {
            *self = Tally {
                start,
                ..Tally::default()
            };
        }
        self
    }
}

/// A signed change of a count, saturating.
fn delta(spent: u64, estimate: u64) -> i64 {
    let diff = i128::from(spent) - i128::from(estimate);
    diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// One client's tallies, by [`Kind`].
type ClientTallies = Arc<Mutex<[Tally; 2]>>;

/// Quota counts in this process.
#[derive(Default)]
pub struct LocalQuotas {
    clients: Mutex<HashMap<String, ClientTallies>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalQuotas {
    /// `client`'s tallies, made on first use; found by `&str`, as the minute limits' windows are
    /// (`LocalLimits`), so a request allocates nothing.
    fn tallies(&self, client: &str) -> ClientTallies {
        let mut clients = lock(&self.clients);
        match clients.get(client) {
            Some(t) => t.clone(),
            None => clients.entry(client.to_string()).or_default().clone(),
        }
    }

    /// [`QuotaStore::charge`] in this process's counts.
    pub fn charge_here(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
    ) -> Result<Charged, OverQuota> {
        self.charge_in(client, limits, estimate, now, false)
    }

    /// The same, for a request whose charge was told to the shared store in a call that got no
    /// answer: its estimate counts as told (see [`Tally`]).
    pub(crate) fn charge_told(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
    ) -> Result<Charged, OverQuota> {
        self.charge_in(client, limits, estimate, now, true)
    }

    fn charge_in(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
        told: bool,
    ) -> Result<Charged, OverQuota> {
        let tallies = self.tallies(client);
        let mut tallies = lock(&tallies);
        let mut starts = [None; 2];
        for kind in Kind::ALL {
            let Some(allowance) = kind.of(limits) else {
                continue;
            };
            let (start, end) = allowance.per.bounds(now.as_secs());
            let tally = tallies[kind as usize].at(start);
            tally.end = end;
            let used = tally.used();
            if used >= allowance.limit {
                return Err(over(kind, used, *allowance, end, now));
            }
            starts[kind as usize] = Some(start);
        }
        for kind in Kind::ALL
            .into_iter()
            .filter(|k| starts[*k as usize].is_some())
        {
            let tally = &mut tallies[kind as usize];
            let count = match told {
                true => &mut tally.unsure,
                false => &mut tally.pending,
            };
            *count = count.saturating_add(delta(estimate.of(kind), 0));
        }
        Ok(Charged {
            estimate,
            starts,
            shared: told,
        })
    }

    /// [`QuotaStore::settle`] in this process's counts.
    pub fn settle_here(
        &self,
        client: &str,
        limits: &ClientLimits,
        charged: &Charged,
        spent: Spend,
        now: Duration,
    ) {
        let tallies = self.tallies(client);
        let mut tallies = lock(&tallies);
        for kind in Kind::ALL {
            let Some(allowance) = kind.of(limits) else {
                continue;
            };
            let (start, end) = allowance.per.bounds(now.as_secs());
            let Some(change) = charged.change(kind, start, spent) else {
                continue;
            };
            let tally = tallies[kind as usize].at(start);
            tally.end = end;
            tally.pending = tally.pending.saturating_add(change);
        }
    }

    /// [`QuotaStore::standing`] in this process's counts.
    pub fn standing_here(
        &self,
        client: &str,
        limits: &ClientLimits,
        now: Duration,
    ) -> [Option<Standing>; 2] {
        let tallies = self.tallies(client);
        let tallies = lock(&tallies);
        Kind::ALL.map(|kind| {
            let allowance = kind.of(limits)?;
            let (start, end) = allowance.per.bounds(now.as_secs());
            let tally = &tallies[kind as usize];
            Some(Standing {
                used: if tally.start == start {
                    tally.used()
                } else {
                    0
                },
                limit: allowance.limit,
                resets_in: until(end, now),
            })
        })
    }

    /// Takes what this process counted for `client`'s `kind` in the period that starts at
    /// `start` and has not told the shared store (to tell it now).
    pub(crate) fn take_pending(&self, client: &str, kind: Kind, start: u64) -> i64 {
        let tallies = self.tallies(client);
        let mut tallies = lock(&tallies);
        std::mem::take(&mut tallies[kind as usize].at(start).pending)
    }

    /// What this process counted for `client`'s `kind` in the period that starts at `start`
    /// and has not told the shared store.
    pub(crate) fn pending(&self, client: &str, kind: Kind, start: u64) -> i64 {
        let tallies = self.tallies(client);
        let tally = &lock(&tallies)[kind as usize];
        if tally.start == start {
            tally.pending
        } else {
            0
        }
    }

    /// Every count this process has not told the shared store: `(client, kind, its period's
    /// start and end)`.
    pub(crate) fn untold(&self) -> Vec<(String, Kind, u64, u64)> {
        let clients = lock(&self.clients);
        let mut untold = Vec::new();
        for (client, tallies) in clients.iter() {
            let tallies = lock(tallies);
            for kind in Kind::ALL {
                let t = &tallies[kind as usize];
                if t.pending != 0 {
                    untold.push((client.clone(), kind, t.start, t.end));
                }
            }
        }
        untold
    }

    /// Counts what [`Self::take_pending`] took as told in a call that got no answer.
    pub(crate) fn told_unsure(&self, client: &str, kind: Kind, start: u64, told: i64) {
        let tallies = self.tallies(client);
        let tally = &mut lock(&tallies)[kind as usize];
        let tally = tally.at(start);
        tally.unsure = tally.unsure.saturating_add(told);
    }

    /// Records what the shared store says `client` has used of `kind` in the period that
    /// starts at `start` (with whatever it applied late of what it was told).
    pub(crate) fn set_known(&self, client: &str, kind: Kind, start: u64, used: u64) {
        let tallies = self.tallies(client);
        let tally = &mut lock(&tallies)[kind as usize];
        let tally = tally.at(start);
        (tally.known, tally.unsure) = (used, 0);
    }
}

/// The refusal of `kind`, `used` of `allowance`, whose period ends at `end`.
pub(crate) fn over(
    kind: Kind,
    used: u64,
    allowance: Allowance,
    end: u64,
    now: Duration,
) -> OverQuota {
    OverQuota {
        kind,
        used,
        allowance,
        resets_at: end,
        resets_in: until(end, now),
    }
}

/// From `now` to `end` (seconds since the Unix epoch).
pub(crate) fn until(end: u64, now: Duration) -> Duration {
    Duration::from_secs(end).saturating_sub(now)
}

mod local;

#[cfg(test)]
mod tests;
