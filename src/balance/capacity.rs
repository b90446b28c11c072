//! What each backend's answers say of the quota it has left, per deployment: Azure's
//! `x-ratelimit-remaining-tokens` and `-requests` (with `x-ratelimit-limit-*` where a backend
//! sends them) and, on provisioned deployments, `azure-openai-deployment-utilization`.
//! `balance.strategy: headroom` reads it ([`Capacity::room`]) to send a request where it fits.
//!
//! Azure's quota is per minute and refills as time passes, so a remembered level is refilled
//! when it is read: at its per-minute limit a minute, up to that limit. The limit is the one a
//! backend sends, or else the largest level it reported (it reports its full quota after a quiet
//! minute, and nearly that while lightly used). A provisioned deployment's utilization is taken
//! to fall back to zero over a minute in the same way. Between two answers the proxy takes off
//! its own estimate of each request it sends ([`Capacity::charge`]), as Azure does on arrival,
//! so that requests sent together do not all go to the backend that had the most room; and an
//! answer, which says what was left when its request arrived (it may come seconds later), has
//! the requests sent after that one taken off again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use smallvec::SmallVec;

/// Azure's quota window.
const MINUTE: f64 = 60.0;
/// The most requests remembered as sent, per deployment.
const SENT: usize = 512;
/// How long a level whose limit is unknown is believed.
const UNREFILLED: Duration = Duration::from_secs(1);
/// The most deployments remembered per backend: the oldest is forgotten for a new one.
const DEPLOYMENTS: usize = 64;
/// How often one backend and deployment's levels are shared with the other replicas, at most.
pub const SHARE_EVERY: Duration = Duration::from_millis(250);

/// What one answer said of the quota left (`None`: it did not say, or said `-1`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    pub tokens: Option<u64>,
    pub requests: Option<u64>,
    pub token_limit: Option<u64>,
    pub request_limit: Option<u64>,
    /// A provisioned deployment's utilization, in percent.
    pub utilization: Option<f64>,
}

impl Report {
    /// What `headers` say; `None` when they say nothing of the quota.
    pub fn read(headers: &HeaderMap) -> Option<Report> {
        let number = |name: &str| {
            let v = headers.get(name)?.to_str().ok()?.trim();
            v.parse::<u64>().ok()
        };
        let report = Report {
            tokens: number("x-ratelimit-remaining-tokens"),
            requests: number("x-ratelimit-remaining-requests"),
            token_limit: number("x-ratelimit-limit-tokens"),
            request_limit: number("x-ratelimit-limit-requests"),
            utilization: headers
                .get("azure-openai-deployment-utilization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().trim_end_matches('%').trim().parse::<f64>().ok())
                .filter(|u| u.is_finite() && *u >= 0.0),
        };
        (report != Report::default()).then_some(report)
    }
}

/// How much of a request a backend can take, as its answers said.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Room {
    /// It has said nothing (or only a utilization below 100%): it counts as having room.
    Unknown,
    /// It has this many tokens left, the request's estimate fits in them.
    Tokens(f64),
    /// It reported fewer tokens left than the request's estimate, no request left, or a
    /// utilization of 100%; refilled as Azure refills, it has room again in this long.
    Full(Duration),
}

impl Room {
    /// How it ranks against other backends' room, weighted: more is better.
    pub fn score(self, weight: u16) -> f64 {
        match self {
            Room::Unknown => f64::INFINITY,
            Room::Tokens(left) => left * f64::from(weight.max(1)),
            Room::Full(_) => 0.0,
        }
    }
}

/// One quota, remembered: its level when last reported, and its per-minute limit.
#[derive(Clone, Copy, Debug)]
struct Level {
    left: f64,
    at: Instant,
    /// Per minute; 0 while unknown.
    limit: f64,
    /// The limit came from the backend (`x-ratelimit-limit-*`), not from the largest level.
    told: bool,
}

/// How long a level refilled at `per_minute` takes from `left` to `needed`.
fn refill(left: f64, needed: f64, per_minute: f64) -> Duration {
    if per_minute <= 0.0 {
        return Duration::from_secs(1);
    }
    Duration::from_secs_f64(((needed - left).max(0.0) * MINUTE / per_minute).min(MINUTE))
}

impl Level {
    fn new(left: u64, limit: Option<u64>, now: Instant) -> Level {
        let left = left as f64;
        Level {
            left,
            at: now,
            limit: limit.map_or(left, |l| l as f64),
            told: limit.is_some(),
        }
    }

    /// The level at `now`, refilled.
    fn at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.left + self.limit * elapsed / MINUTE).min(self.limit.max(self.left))
    }

    /// The backend said `reported` was left at `at`; `later` has been sent since.
    fn report(&mut self, reported: u64, later: f64, limit: Option<u64>, at: Instant) {
        let reported = reported as f64;
        match limit {
            Some(l) => (self.limit, self.told) = (l as f64, true),
            None if !self.told => self.limit = self.limit.max(reported),
            None => {}
        }
        (self.left, self.at) = ((reported - later).max(0.0), at);
    }

    fn take(&mut self, amount: f64, now: Instant) {
        self.left = (self.at(now) - amount).max(0.0);
        self.at = now;
    }
}

/// A provisioned deployment's utilization: the percent of its throughput in use, taken to fall
/// back to zero over a minute. It says nothing of a request's size; how many tokens a percent
/// holds is learned from the requests this proxy sent between two reports and the rise they
/// made (an average, as other replicas' requests and timing blur each sample), so that a
/// request that does not fit is seen before the deployment answers 429.
#[derive(Clone, Copy, Debug)]
struct Utilization {
    used: f64,
    at: Instant,
    /// The estimates sent since the last report.
    charged: f64,
    /// Tokens a percent, once learned.
    per_percent: Option<f64>,
}

impl Utilization {
    fn new(used: f64, at: Instant) -> Utilization {
        Utilization {
            used,
            at,
            charged: 0.0,
            per_percent: None,
        }
    }

    fn used_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.used - 100.0 * elapsed / MINUTE).max(0.0)
    }

    fn report(&mut self, used: f64, now: Instant) {
        let rise = used - self.used_at(now);
        if self.charged > 0.0 && rise > 0.5 {
            let sample = self.charged / rise;
            self.per_percent = Some(self.per_percent.map_or(sample, |k| 0.8 * k + 0.2 * sample));
        }
        (self.used, self.at, self.charged) = (used, now, 0.0);
    }

    /// The room it has for `estimate` tokens, when it says: full at 100%, or, once the size of
    /// a percent is learned, the tokens left.
    fn room(&self, estimate: u64, now: Instant) -> Option<Room> {
        let used = self.used_at(now);
        let Some(per_percent) = self.per_percent else {
            return (used >= 100.0).then(|| Room::Full(refill(100.0 - used, 0.0, 100.0)));
        };
        let (left, whole) = ((100.0 - used).max(0.0) * per_percent, 100.0 * per_percent);
        let needed = (estimate as f64).min(whole);
        Some(match left < needed {
            true => Room::Full(refill(left, needed, whole)),
            false => Room::Tokens(left),
        })
    }
}

/// One deployment's levels on one backend (`deployment` `None`: requests that name none).
#[derive(Debug)]
struct Entry {
    deployment: Option<Box<str>>,
    tokens: Option<Level>,
    requests: Option<Level>,
    /// A provisioned deployment's utilization, as reported and learned.
    utilization: Option<Utilization>,
    /// When its levels were last shared with the other replicas.
    shared: Option<Instant>,
    /// What was sent to it in the last minute, and when: an answer says what was left when
    /// its request arrived, before those sent after it.
    sent: VecDeque<(Instant, f64)>,
}

impl Entry {
    fn room(&self, estimate: u64, now: Instant) -> Room {
        if let Some(r) = self.requests {
            let left = r.at(now);
            if left < 1.0 {
                return Room::Full(refill(left, 1.0, r.limit));
            }
        }
        if let Some(room) = self
            .utilization
            .as_ref()
            .and_then(|u| u.room(estimate, now))
        {
            return room;
        }
        match self.tokens {
            // A level with no known limit (the first report said 0 left) cannot be refilled:
            // it is believed for a second, then the backend counts as having room again.
            Some(t) if t.limit < 1.0 && now.saturating_duration_since(t.at) >= UNREFILLED => {
                Room::Unknown
            }
            Some(t) if t.limit < 1.0 => Room::Full(UNREFILLED - now.duration_since(t.at)),
            Some(t) => {
                let left = t.at(now);
                // A request larger than the whole quota fits once the quota is full.
                let needed = (estimate as f64).min(t.limit);
                match left < needed {
                    true => Room::Full(refill(left, needed, t.limit)),
                    false => Room::Tokens(left),
                }
            }
            None => Room::Unknown,
        }
    }

    /// Takes off a request of `estimate` tokens sent at `now`, and remembers it as sent.
    fn charge(&mut self, estimate: f64, now: Instant) {
        if let Some(t) = &mut self.tokens {
            t.take(estimate, now);
        }
        if let Some(r) = &mut self.requests {
            r.take(1.0, now);
        }
        if let Some(u) = &mut self.utilization {
            u.charged += estimate;
        }
        let minute_ago = now.checked_sub(Duration::from_secs(60));
        while self
            .sent
            .front()
            .is_some_and(|(at, _)| Some(*at) < minute_ago)
            || self.sent.len() >= SENT
        {
            self.sent.pop_front();
        }
        self.sent.push_back((now, estimate));
    }

    /// Takes in `r`, said of a request sent at `sent_at` (now, for another replica's).
    fn report(&mut self, r: &Report, sent_at: Instant, now: Instant) {
        let after = self.sent.iter().filter(|(at, _)| *at > sent_at);
        let (tokens, requests) = after.fold((0.0, 0.0), |(t, n), (_, e)| (t + e, n + 1.0));
        let level = |l: &mut Option<Level>, left: Option<u64>, later: f64, limit| {
            if let Some(left) = left {
                match l {
                    Some(level) => level.report(left, later, limit, sent_at),
                    None => *l = Some(Level::new(left, limit, now)),
                }
            }
        };
        level(&mut self.tokens, r.tokens, tokens, r.token_limit);
        level(&mut self.requests, r.requests, requests, r.request_limit);
        if let Some(u) = r.utilization {
            match &mut self.utilization {
                Some(known) => known.report(u, now),
                None => self.utilization = Some(Utilization::new(u, now)),
            }
        }
    }
}

/// One backend's levels, per deployment. Touched only with `balance.strategy: headroom`: the
/// default strategy neither reads nor writes it.
#[derive(Debug, Default)]
pub struct Capacity {
    entries: Mutex<SmallVec<[Entry; 2]>>,
}

impl Capacity {
    fn with_entry<T>(&self, deployment: Option<&str>, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = match entries
            .iter()
            .position(|e| e.deployment.as_deref() == deployment)
        {
            Some(i) => i,
            None => {
                if entries.len() >= DEPLOYMENTS {
                    entries.remove(0);
                }
                entries.push(Entry {
                    deployment: deployment.map(Box::from),
                    tokens: None,
                    requests: None,
                    utilization: None,
                    shared: None,
                    sent: VecDeque::new(),
                });
                entries.len() - 1
            }
        };
        f(&mut entries[i])
    }

    /// `f` on the entry of `deployment`, when there is one: only answers make entries.
    fn known<T>(&self, deployment: Option<&str>, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries
            .iter_mut()
            .find(|e| e.deployment.as_deref() == deployment)?;
        Some(f(entry))
    }

    /// How much of a request estimated at `estimate` tokens `deployment` can take at `now`.
    pub fn room(&self, deployment: Option<&str>, estimate: u64, now: Instant) -> Room {
        self.known(deployment, |e| e.room(estimate, now))
            .unwrap_or(Room::Unknown)
    }

    /// Takes off a request sent to `deployment` (its `estimate` of tokens, and one request)
    /// until the backend's answer says how much is left. A deployment it has said nothing of is
    /// left alone, so a client naming deployments at random grows nothing here.
    pub fn charge(&self, deployment: Option<&str>, estimate: u64, now: Instant) {
        self.known(deployment, |e| e.charge(estimate as f64, now));
    }

    /// Takes in what an answer for `deployment` said of the request sent at `sent_at`, now.
    /// `true` when it is time to share this backend and deployment's levels with the other
    /// replicas (at most every [`SHARE_EVERY`]).
    pub fn report(
        &self,
        deployment: Option<&str>,
        report: &Report,
        sent_at: Instant,
        now: Instant,
    ) -> bool {
        self.with_entry(deployment, |e| {
            e.report(report, sent_at, now);
            let due = e
                .shared
                .is_none_or(|at| now.duration_since(at) >= SHARE_EVERY);
            if due {
                e.shared = Some(now);
            }
            due
        })
    }

    /// Takes in what another replica's backend said (`state.redis`), as if it said it now.
    pub fn apply_shared(&self, deployment: Option<&str>, report: &Report, now: Instant) {
        self.with_entry(deployment, |e| e.report(report, now, now));
    }

    /// The tokens left for `deployment` now, and its per-minute limit as known. `None` before
    /// any report of tokens.
    pub fn tokens(&self, deployment: Option<&str>, now: Instant) -> Option<(u64, u64)> {
        let t = self.known(deployment, |e| e.tokens)??;
        Some((t.at(now) as u64, t.limit as u64))
    }

    /// Every deployment's tokens left now and per-minute limit as known, for the status page.
    pub fn token_levels(&self, now: Instant) -> Vec<(Option<String>, u64, u64)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter_map(|e| {
                let t = e.tokens?;
                let deployment = e.deployment.as_deref().map(str::to_string);
                Some((deployment, t.at(now) as u64, t.limit as u64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
