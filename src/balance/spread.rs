//! Spreading the proxy's own throttling 429s over time. When every backend that could serve a
//! deployment is cooling, each client is told when to come back; told the same instant (the
//! first cooldown's end), they all come back together and collide with the quota again. So
//! each 429 given out during one cooldown promises a moment one `spacing` after the one before
//! it: the time the freed backend needs to refill one request's tokens (its per-minute limit,
//! as its answers said, spread over the minute), or [`DEFAULT_SPACING`] when that is unknown.
//! The promises run at most one `window` (the cooldown itself, and at least a second) past
//! the cooldown's end, then start again from it: a crowd larger than the window holds is
//! spread evenly over it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The spacing when no backend has said its limit.
pub const DEFAULT_SPACING: Duration = Duration::from_millis(100);
/// The least and the most spacing.
const SPACING: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The last moment promised to a client, per deployment.
#[derive(Default)]
pub struct Spread {
    promised: Mutex<Vec<(Option<Box<str>>, Instant)>>,
}

/// The spacing for requests of `estimate` tokens on a backend whose per-minute token limit is
/// `limit` (0: unknown).
pub fn spacing(estimate: u64, limit: f64) -> Duration {
    if limit < 1.0 {
        return DEFAULT_SPACING;
    }
    Duration::from_secs_f64(estimate as f64 * 60.0 / limit).clamp(SPACING.0, SPACING.1)
}

impl Spread {
    /// How long a client should wait before it comes back for `deployment`, the first backend
    /// being free in `shortest`; never less than `shortest`.
    pub fn wait(
        &self,
        deployment: Option<&str>,
        shortest: Duration,
        spacing: Duration,
        now: Instant,
    ) -> Duration {
        let free = now + shortest;
        let window = shortest.max(Duration::from_secs(1));
        let mut promised = self.promised.lock().unwrap_or_else(|e| e.into_inner());
        promised.retain(|(_, at)| *at > now);
        let last = promised
            .iter_mut()
            .find(|(d, _)| d.as_deref() == deployment);
        let at = match last {
            Some((_, last)) => {
                let next = (*last + spacing).max(free);
                *last = if next > free + window { free } else { next };
                *last
            }
            None => {
                promised.push((deployment.map(Box::from), free));
                free
            }
        };
        at - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn each_client_is_told_a_moment_one_spacing_after_the_last() {
        let s = Spread::default();
        let now = Instant::now();
        let waits: Vec<_> = (0..4)
            .map(|_| s.wait(Some("d"), 2000 * MS, 100 * MS, now))
            .collect();
        assert_eq!(waits, [2000 * MS, 2100 * MS, 2200 * MS, 2300 * MS]);
        // Another deployment has its own.
        assert_eq!(s.wait(Some("e"), 500 * MS, 100 * MS, now), 500 * MS);
    }

    #[test]
    fn past_the_window_it_starts_again_and_never_promises_less_than_the_cooldown() {
        let s = Spread::default();
        let now = Instant::now();
        let waits: Vec<_> = (0..12)
            .map(|_| s.wait(None, 100 * MS, 100 * MS, now))
            .collect();
        // A window of 1 s past the cooldown's end: 100 ms, ..., 1,100 ms, then 100 ms again.
        assert_eq!(waits[10], 1100 * MS);
        assert_eq!(waits[11], 100 * MS);
        // Later, a longer cooldown: never less than it.
        let later = now + 50 * MS;
        assert!(s.wait(None, 3000 * MS, 100 * MS, later) >= 3000 * MS);
    }

    #[test]
    fn the_spacing_is_one_requests_refill_time() {
        // 60,000 tokens a minute: 1,000 a second; 500 tokens take 0.5 s.
        assert_eq!(spacing(500, 60_000.0), 500 * MS);
        assert_eq!(spacing(500, 0.0), DEFAULT_SPACING);
        assert_eq!(spacing(1, 1e9), 10 * MS);
        assert_eq!(spacing(1_000_000, 1.0), Duration::from_secs(1));
    }
}
