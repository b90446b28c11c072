//! Cooldowns and ejections shared by replicas: a replica that sees a 429 (or ejects a failing
//! backend) publishes the until-time on `{prefix}:health`, every replica subscribed applies it
//! at once, and the hash `{prefix}:health` keeps the latest until-time of each, for replicas that
//! (re)connect later.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::balance::HealthChange;
use crate::balance::Pool;

/// A change on the wire.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// The replica that saw it.
    pub r: String,
    /// The backend's name.
    pub b: String,
    /// `cool` (for deployment `d`) or `eject`.
    pub k: String,
    pub d: Option<String>,
    /// Until when, in milliseconds since the Unix epoch.
    pub u: u64,
}

impl Message {
    /// The message for `change` on `backend`, seen now by `replica`.
    pub(crate) fn new(
        replica: &str,
        backend: &str,
        change: &HealthChange,
        now: Duration,
    ) -> Message {
        let (k, d, period) = match change {
            HealthChange::Cooled { deployment, period } => ("cool", deployment.clone(), period),
            HealthChange::Ejected { period } => ("eject", None, period),
        };
        Message {
            r: replica.to_string(),
            b: backend.to_string(),
            k: k.to_string(),
            d,
            u: u64::try_from((now + *period).as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The hash field that keeps the latest until-time of this backend and deployment.
    pub(crate) fn field(&self) -> String {
        serde_json::to_string(&(&self.b, &self.k, &self.d)).unwrap_or_default()
    }

    /// Applies it to `pool` at `now` (Unix time): the backend of that name cools, or leaves the
    /// rotation, for the time left. `false` when it is over or names no backend here.
    pub(crate) fn apply(&self, pool: &Pool, now: Duration) -> bool {
        let left = Duration::from_millis(self.u).saturating_sub(now);
        let Some(index) = pool.index_of(&self.b) else {
            return false;
        };
        if left.is_zero() {
            return false;
        }
        let change = match self.k.as_str() {
            "cool" => HealthChange::Cooled {
                deployment: self.d.clone(),
                period: left,
            },
            "eject" => HealthChange::Ejected { period: left },
            _ => return false,
        };
        pool.get(index).health.apply_shared(&change);
        true
    }
}

/// Keeps the later until-time in the hash and publishes the change.
/// KEYS[1]: the hash; ARGV: the field, the until-time (ms), the message, the channel.
pub(crate) const PUBLISH: &str = r"
local kept = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > kept then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
";

/// The changes in force in `pool` now, to publish when Redis comes back (they were seen while
/// it was down).
pub(crate) fn in_force(pool: &Pool) -> Vec<(String, HealthChange)> {
    let now = std::time::Instant::now();
    let mut changes = Vec::new();
    for b in pool.backends() {
        let snapshot = b.health.snapshot(now);
        for (deployment, period) in snapshot.cooling {
            changes.push((b.name.clone(), HealthChange::Cooled { deployment, period }));
        }
        if let Some(period) = snapshot.ejected {
            changes.push((b.name.clone(), HealthChange::Ejected { period }));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_crosses_the_wire_and_cools_the_backend_of_that_name() {
        let pool = crate::balance::test_pool(&[(0, 1), (0, 1)]);
        let now = Duration::from_secs(1_000_000);
        let change = HealthChange::Cooled {
            deployment: Some("gpt-4o".into()),
            period: Duration::from_secs(30),
        };
        let name = pool.get(1).name.clone();
        let msg = Message::new("a", &name, &change, now);
        let wire = serde_json::to_string(&msg).unwrap();
        let back: Message = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, msg);
        assert!(back.apply(&pool, now + Duration::from_secs(10)));
        let left = pool
            .get(1)
            .health
            .cooling_left(Some("gpt-4o"), std::time::Instant::now());
        assert!(
            left.is_some_and(|l| l > Duration::from_secs(19) && l <= Duration::from_secs(20)),
            "{left:?}"
        );
        assert!(
            !back.apply(&pool, now + Duration::from_secs(31)),
            "over: nothing to apply"
        );
    }
}
