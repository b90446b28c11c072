//! Per-client limits (`requests_per_minute`, `tokens_per_minute`): a sliding window of the
//! last minute, in one-second slots, per client and per kind.
//!
//! Why a sliding window and not a token bucket or a counter reset on the minute: both of those
//! let a client spend twice its limit within one minute (a full bucket, or the end of one
//! minute and the start of the next). Summing the last sixty one-second slots bounds what any
//! minute-long window sees by the limit (to the second), with fixed memory per client.
//!
//! A request is admitted while its client has requests and tokens left; its token estimate
//! (prompt size and `max_tokens`) is counted at once, so requests running side by side see
//! each other, and replaced by what the backend reports when the answer ends
//! ([`LimitStore::settle`]). A client can overshoot by at most one request's worth.
//!
//! State sits behind [`LimitStore`], so a store shared by replicas (Redis) can take the place of
//! [`LocalLimits`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ClientLimits;

/// The window's length in one-second slots.
const SLOTS: usize = 60;

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
}

/// A request let in: what the client has left, and what to settle later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Requests left in the window after this one; `None` without `requests_per_minute`.
    pub remaining_requests: Option<u64>,
    /// Tokens left after this request's estimate; `None` without `tokens_per_minute`.
    pub remaining_tokens: Option<u64>,
    /// The tokens counted for it so far.
    pub estimate: u64,
    /// The slot they were counted in (in the clock of the store that admitted it).
    pub(crate) second: u64,
    /// Admitted by the store the replicas share, not this process's own.
    pub(crate) shared: bool,
}

/// A request kept out: which limit, and when the window lets the client in again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after: Duration,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
}

/// Where limit state lives.
#[async_trait::async_trait]
pub trait LimitStore: Send + Sync {
    /// Admits one request of `client` expected to spend `estimate` tokens, or says when it could
    /// be admitted.
    async fn admit(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: u64,
        now: Instant,
    ) -> Result<Admitted, Refused>;

    /// Replaces the estimate of a request `admit` let in with the tokens it `spent`, at `now`
    /// (when its answer ended).
    fn settle(&self, client: &str, admitted: &Admitted, spent: u64, now: Instant);
}

/// The last minute of one kind, in one-second slots.
#[derive(Debug)]
struct Window {
    slots: [u64; SLOTS],
    /// The second (since the store's epoch) of the newest slot.
    newest: u64,
    total: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: [0; SLOTS],
            newest: 0,
            total: 0,
        }
    }
}

impl Window {
    /// Moves the window to `second`, emptying the slots that left it.
    fn advance(&mut self, second: u64) {
        if second <= self.newest {
            return;
        }
        let gone = (second - self.newest).min(SLOTS as u64);
        for s in (second + 1 - gone)..=second {
            let slot = &mut self.slots[(s % SLOTS as u64) as usize];
            self.total -= *slot;
            *slot = 0;
        }
        self.newest = second;
    }

    /// Counts `n` in the newest slot. Saturating: `n` comes from a client's `max_tokens` or
    /// a backend's `usage`.
    fn add(&mut self, n: u64) {
        let slot = &mut self.slots[(self.newest % SLOTS as u64) as usize];
        *slot = slot.saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// Takes `n` back from the slot of `second`, if it is still in the window.
    fn take_back(&mut self, second: u64, n: u64) {
        if self.newest.saturating_sub(second) < SLOTS as u64 {
            let slot = &mut self.slots[(second % SLOTS as u64) as usize];
            let n = n.min(*slot);
            *slot -= n;
            self.total = self.total.saturating_sub(n);
        }
    }

    /// In how many seconds from the start of the newest slot the oldest slots will have taken
    /// more than `excess` with them.
    fn seconds_until_freed(&self, excess: u64) -> u64 {
        let mut freed = 0;
        for age in (0..SLOTS as u64).rev() {
            let Some(second) = self.newest.checked_sub(age) else {
                continue;
            };
            freed += self.slots[(second % SLOTS as u64) as usize];
            if freed > excess {
                return SLOTS as u64 - age;
            }
        }
        SLOTS as u64
    }
}

/// One client's windows.
#[derive(Debug, Default)]
struct ClientWindows {
    requests: Window,
    tokens: Window,
}

/// Limit state in this process.
pub struct LocalLimits {
    epoch: Instant,
    clients: Mutex<HashMap<String, Arc<Mutex<ClientWindows>>>>,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits {
            epoch: Instant::now(),
            clients: Mutex::default(),
        }
    }
}

impl LocalLimits {
    fn windows(&self, client: &str) -> Arc<Mutex<ClientWindows>> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get(client) {
            Some(w) => w.clone(),
            None => clients.entry(client.to_string()).or_default().clone(),
        }
    }
}

impl LocalLimits {
    /// [`LimitStore::admit`] in this process's windows.
    pub fn admit_here(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: u64,
        now: Instant,
    ) -> Result<Admitted, Refused> {
        let elapsed = now.saturating_duration_since(self.epoch);
        let second = elapsed.as_secs();
        // The time from `now` to `n` seconds after the start of the current slot.
        let wait = |n: u64| {
            (Duration::from_secs(second + n).saturating_sub(elapsed)).max(Duration::from_millis(1))
        };
        let windows = self.windows(client);
        let mut w = windows.lock().unwrap_or_else(|e| e.into_inner());
        w.requests.advance(second);
        w.tokens.advance(second);
        let rpm = limits.requests_per_minute.map(|n| u64::from(n.get()));
        let tpm = limits.tokens_per_minute.map(|n| n.get());
        let left = |used: u64, limit: Option<u64>| limit.map(|l| l.saturating_sub(used));
        let refused = |limit, retry_after, w: &ClientWindows| Refused {
            limit,
            retry_after,
            remaining_requests: left(w.requests.total, rpm),
            remaining_tokens: left(w.tokens.total, tpm),
        };
        if let Some(rpm) = rpm {
            if w.requests.total >= rpm {
                let after = wait(w.requests.seconds_until_freed(w.requests.total - rpm));
                return Err(refused(Limit::Requests, after, &w));
            }
        }
        if let Some(tpm) = tpm {
            if w.tokens.total >= tpm {
                let after = wait(w.tokens.seconds_until_freed(w.tokens.total - tpm));
                return Err(refused(Limit::Tokens, after, &w));
            }
        }
        w.requests.add(1);
        w.tokens.add(estimate);
        Ok(Admitted {
            remaining_requests: left(w.requests.total, rpm),
            remaining_tokens: left(w.tokens.total, tpm),
            estimate,
            // Where the estimate went: another request may have moved the window past `second`.
            second: w.tokens.newest,
            shared: false,
        })
    }

    /// [`LimitStore::settle`] in this process's windows.
    pub fn settle_here(&self, client: &str, admitted: &Admitted, spent: u64, now: Instant) {
        if spent == admitted.estimate {
            return;
        }
        let windows = self.windows(client);
        let mut w = windows.lock().unwrap_or_else(|e| e.into_inner());
        w.requests
            .advance(now.saturating_duration_since(self.epoch).as_secs());
        w.tokens
            .advance(now.saturating_duration_since(self.epoch).as_secs());
        // The estimate leaves the slot it went to (if still in the window); what was spent
        // counts from when the answer ended, so a long stream's tokens stay for a minute.
        w.tokens.take_back(admitted.second, admitted.estimate);
        w.tokens.add(spent);
    }
}

#[async_trait::async_trait]
impl LimitStore for LocalLimits {
    async fn admit(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: u64,
        now: Instant,
    ) -> Result<Admitted, Refused> {
        self.admit_here(client, limits, estimate, now)
    }

    fn settle(&self, client: &str, admitted: &Admitted, spent: u64, now: Instant) {
        self.settle_here(client, admitted, spent, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU32, NonZeroU64};

    fn limits(rpm: Option<u32>, tpm: Option<u64>) -> ClientLimits {
        ClientLimits {
            requests_per_minute: rpm.and_then(NonZeroU32::new),
            tokens_per_minute: tpm.and_then(NonZeroU64::new),
            ..ClientLimits::default()
        }
    }

    #[test]
    fn no_minute_long_window_sees_more_than_the_limit() {
        let store = LocalLimits::default();
        let l = limits(Some(10), None);
        let t0 = store.epoch;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Five at 0.5 s, five at 59.5 s: the limit is spent.
        for ms in [
            500, 500, 500, 500, 500, 59_500, 59_500, 59_500, 59_500, 59_500,
        ] {
            assert!(store.admit_here("a", &l, 0, at(ms)).is_ok());
        }
        // Across the minute's boundary a fixed counter would let ten more in: this lets none
        // until the first five leave the window, at 60 s.
        let refused = store.admit_here("a", &l, 0, at(59_900)).unwrap_err();
        assert_eq!(refused.limit, Limit::Requests);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.remaining_requests, Some(0));
        for _ in 0..5 {
            assert!(store.admit_here("a", &l, 0, at(60_000)).is_ok());
        }
        assert!(store.admit_here("a", &l, 0, at(60_000)).is_err());
        let r = store.admit_here("a", &l, 0, at(61_000)).unwrap_err();
        assert_eq!(
            r.retry_after,
            Duration::from_secs(58),
            "the five of 59.5 s leave the window at 119 s"
        );
        // Another client has its own window.
        assert_eq!(
            store
                .admit_here("b", &l, 0, at(61_000))
                .unwrap()
                .remaining_requests,
            Some(9)
        );
    }

    #[test]
    fn tokens_are_estimated_then_settled() {
        let store = LocalLimits::default();
        let l = limits(None, Some(1000));
        let now = store.epoch;
        let a = store.admit_here("a", &l, 600, now).unwrap();
        assert_eq!(a.remaining_tokens, Some(400));
        // Side by side: the second sees the first's estimate.
        let b = store.admit_here("a", &l, 600, now).unwrap();
        assert_eq!(b.remaining_tokens, Some(0));
        assert_eq!(
            store.admit_here("a", &l, 1, now).unwrap_err().limit,
            Limit::Tokens
        );
        // The backends reported less: room again.
        store.settle_here("a", &a, 100, now);
        store.settle_here("a", &b, 100, now);
        let c = store.admit_here("a", &l, 0, now).unwrap();
        assert_eq!(c.remaining_tokens, Some(800));
        // More than estimated is counted too.
        store.settle_here("a", &c, 900, now);
        let r = store
            .admit_here("a", &l, 0, now + Duration::from_millis(250))
            .unwrap_err();
        assert_eq!(r.retry_after, Duration::from_millis(59_750));
        assert!(store
            .admit_here("a", &l, 0, now + Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn a_long_answer_counts_from_when_it_ended_and_nothing_overflows() {
        let store = LocalLimits::default();
        let l = limits(None, Some(1000));
        let t0 = store.epoch;
        let a = store.admit_here("a", &l, 10, t0).unwrap();
        // A stream admitted at 0 s ends at 90 s, having spent 2000 tokens: they count until
        // 150 s, not until 60 s (or not at all).
        store.settle_here("a", &a, 2000, t0 + Duration::from_secs(90));
        let r = store
            .admit_here("a", &l, 0, t0 + Duration::from_secs(100))
            .unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(50));
        assert!(store
            .admit_here("a", &l, 0, t0 + Duration::from_secs(150))
            .is_ok());
        // An estimate of u64::MAX neither panics nor wraps.
        let b = store.admit_here("b", &l, u64::MAX, t0).unwrap();
        assert_eq!(b.remaining_tokens, Some(0));
        assert!(store.admit_here("b", &l, 1, t0).is_err());
        store.settle_here("b", &b, 0, t0);
        assert!(store.admit_here("b", &l, 1, t0).is_ok());
    }
}
