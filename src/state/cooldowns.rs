//! Cooldowns and ejections shared by replicas: a replica that sees a 429 (or ejects a failing
//! backend) publishes the until-time on `{prefix}:health`, every replica subscribed applies it
//! at once, and the hash `{prefix}:health` keeps the latest until-time of each, for replicas that
//! (re)connect later.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{unix_now, SharedState};
use crate::balance::{Pool, StandingChange};

/// What changed: a backend cools for a deployment, or is ejected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum Kind {
    Cool {
        /// `None`: requests that name no deployment.
        #[serde(rename = "d", default)]
        deployment: Option<String>,
    },
    Eject,
}

/// A change on the wire, as JSON.
///
/// NOTE: the one-letter names (`{"r":..,"b":..,"k":"cool"|"eject","d":..,"u":..}`) are the
/// wire format that replicas of every version read and write, kept so that replicas of two
/// versions share cooldowns through a rolling upgrade.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// The replica that saw it, which skips its own messages.
    #[serde(rename = "r")]
    pub replica: String,
    /// The backend's name.
    #[serde(rename = "b")]
    pub backend: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// Until when, in milliseconds since the Unix epoch.
    #[serde(rename = "u")]
    pub until_ms: u64,
}

/// The hash field that keeps the latest until-time of one backend and deployment, as a JSON
/// array: `[backend, "cool" | "eject", deployment]`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Slot(String, SlotKind, Option<String>);

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum SlotKind {
    Cool,
    Eject,
}

impl Message {
    /// The message for `change` on `backend`, seen now by `replica`.
    pub(crate) fn new(
        replica: &str,
        backend: &str,
        change: &StandingChange,
        now: Duration,
    ) -> Message {
        let (kind, period) = match change {
            StandingChange::Cooled { deployment, period } => (
                Kind::Cool {
                    deployment: deployment.clone(),
                },
                period,
            ),
            StandingChange::Ejected { period } => (Kind::Eject, period),
        };
        Message {
            replica: replica.to_string(),
            backend: backend.to_string(),
            kind,
            until_ms: u64::try_from((now + *period).as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The hash field that keeps the latest until-time of this backend and deployment.
    fn field(&self) -> String {
        let slot = match &self.kind {
            Kind::Cool { deployment } => {
                Slot(self.backend.clone(), SlotKind::Cool, deployment.clone())
            }
            Kind::Eject => Slot(self.backend.clone(), SlotKind::Eject, None),
        };
        serde_json::to_string(&slot).unwrap_or_default()
    }

    /// The message a hash `field` and its `until_ms` keep; `None` for a field it cannot read.
    fn kept(field: &str, until_ms: u64) -> Option<Message> {
        let Slot(backend, kind, deployment) = serde_json::from_str(field).ok()?;
        let kind = match kind {
            SlotKind::Cool => Kind::Cool { deployment },
            SlotKind::Eject => Kind::Eject,
        };
        Some(Message {
            replica: String::new(),
            backend,
            kind,
            until_ms,
        })
    }

    /// Applies it to `pool` at `now` (Unix time): the backend of that name cools, or leaves the
    /// rotation, for the time left. `false` when it is over or names no backend here.
    pub(crate) fn apply(&self, pool: &Pool, now: Duration) -> bool {
        let left = Duration::from_millis(self.until_ms).saturating_sub(now);
        let Some(index) = pool.index_of(&self.backend) else {
            return false;
        };
        if left.is_zero() {
            return false;
        }
        let change = match &self.kind {
            Kind::Cool { deployment } => StandingChange::Cooled {
                deployment: deployment.clone(),
                period: left,
            },
            Kind::Eject => StandingChange::Ejected { period: left },
        };
        pool.get(index).standing.apply_shared(&change);
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

/// Publishes `change` on `backend` to the other replicas, and keeps it in the hash for those
/// that come later.
pub(crate) async fn publish(
    state: &SharedState,
    script: &redis::Script,
    backend: &str,
    change: &StandingChange,
) -> Option<i64> {
    let m = Message::new(&state.replica, backend, change, unix_now());
    let wire = serde_json::to_string(&m).unwrap_or_default();
    let (hash, channel, field, until) = (
        state.key("health"),
        state.key("health"),
        m.field(),
        m.until_ms,
    );
    state
        .call(|mut conn| async move {
            script
                .key(hash)
                .arg(field)
                .arg(until)
                .arg(wire)
                .arg(channel)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
}

/// Applies to `pool` the cooldowns and ejections the other replicas keep in the hash; how many
/// were still in force.
pub(crate) async fn take_in_kept(state: &Arc<SharedState>, pool: &Pool) -> usize {
    let key = state.key("health");
    let kept: Option<Vec<(String, u64)>> = state
        .call(|mut conn| async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await })
        .await;
    let now = unix_now();
    kept.unwrap_or_default()
        .into_iter()
        .filter_map(|(field, until)| Message::kept(&field, until))
        .filter(|m| m.apply(pool, now))
        .count()
}

/// The changes in force in `pool` now, to publish when Redis comes back (they were seen while
/// it was down).
pub(crate) fn in_force(pool: &Pool) -> Vec<(String, StandingChange)> {
    let now = std::time::Instant::now();
    let mut changes = Vec::new();
    for b in pool.backends() {
        let snapshot = b.standing.snapshot(now);
        for (deployment, period) in snapshot.cooling {
            changes.push((
                b.name.clone(),
                StandingChange::Cooled { deployment, period },
            ));
        }
        if let Some(period) = snapshot.ejected {
            changes.push((b.name.clone(), StandingChange::Ejected { period }));
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
        let change = StandingChange::Cooled {
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
            .standing
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

    #[test]
    fn the_wire_format_is_the_one_every_version_reads() {
        let cool = r#"{"r":"a","b":"east","k":"cool","d":"gpt-4o","u":7}"#;
        let m: Message = serde_json::from_str(cool).unwrap();
        assert_eq!(
            m.kind,
            Kind::Cool {
                deployment: Some("gpt-4o".into())
            }
        );
        assert_eq!(
            (m.replica.as_str(), m.backend.as_str(), m.until_ms),
            ("a", "east", 7)
        );
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(cool).unwrap()
        );
        let eject: Message =
            serde_json::from_str(r#"{"r":"a","b":"east","k":"eject","d":null,"u":7}"#).unwrap();
        assert_eq!(eject.kind, Kind::Eject);
        // An ejection is written without `d`, which every version reads as none.
        assert_eq!(
            serde_json::to_string(&eject).unwrap(),
            r#"{"r":"a","b":"east","k":"eject","u":7}"#
        );
        assert!(serde_json::from_str::<Message>(r#"{"r":"a","b":"e","k":"melt","u":7}"#).is_err());
        // The hash's fields.
        assert_eq!(m.field(), r#"["east","cool","gpt-4o"]"#);
        assert_eq!(Message::kept(&m.field(), 7).map(|k| k.kind), Some(m.kind));
        assert_eq!(eject.field(), r#"["east","eject",null]"#);
        assert!(Message::kept(r#"["east","melt",null]"#, 7).is_none());
    }
}
