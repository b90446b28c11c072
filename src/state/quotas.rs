//! Quota and budget counts shared by replicas, and kept across restarts: one Redis integer per
//! client, kind and period, `{prefix}:quota:{client}:{tokens|usd}:{period start}`, expiring an
//! hour after its period ends. A Lua script reads a client's counts, refuses or adds the
//! estimate, in one round trip: two replicas charging at once cannot both take the last of a
//! quota.
//!
//! When Redis is down or slow, a replica charges against the count it last read from Redis plus
//! what it counted itself since ([`LocalQuotas`]); when Redis answers again, what it counted
//! meanwhile is added (by the background task's resync, or the client's next charge, whichever
//! comes first), so nothing is lost. A call that was sent but got no answer in
//! time counts as made (a slow Redis applies it late; a Redis that lost it lost its counts
//! too), so nothing is counted twice. While it is down, each replica may let a client spend
//! what was left when it went down: with N replicas, a client can overshoot by up to N − 1
//! times that (plus one request each).

use std::sync::Arc;
use std::time::Duration;

use super::{SharedState, Write};
use crate::clients::quota::{
    over, until, Charged, Kind, LocalQuotas, OverQuota, QuotaStore, Spend, Standing,
};
use crate::config::{Allowance, ClientLimits};

/// Counts or refuses one request. KEYS: the client's counters (one or two); ARGV, four per key:
/// its limit, the estimate, what this replica counted while Redis was down (added first), and
/// when the key expires (Unix seconds). Returns {the 1-based index of the counter that refused,
/// or 0, then each counter's value afterwards}.
const CHARGE: &str = r"
local used, refused = {}, 0
for i = 1, #KEYS do
  local flush = tonumber(ARGV[(i - 1) * 4 + 3])
  if flush ~= 0 then redis.call('INCRBY', KEYS[i], flush) end
  used[i] = math.max(0, tonumber(redis.call('GET', KEYS[i]) or '0'))
  if refused == 0 and used[i] >= tonumber(ARGV[(i - 1) * 4 + 1]) then refused = i end
end
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local est = tonumber(ARGV[b + 2])
  if refused == 0 and est > 0 then used[i] = redis.call('INCRBY', KEYS[i], est) end
  -- After the increments: EXPIREAT on a key that does not exist yet sets nothing.
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIREAT', KEYS[i], ARGV[b + 4]) end
end
table.insert(used, 1, refused)
return used
";

/// Counts above this are sent as this: Lua's numbers are doubles, exact to 2^53 (no budget is
/// larger).
const MAX_EXACT: u64 = crate::config::MAX_BUDGET_NANOS;

/// How long a period's counter outlives the period: the replicas' clocks may differ a little.
const KEPT_AFTER: u64 = 3600;

/// Quota counts kept in Redis, with this process's own when Redis cannot answer.
pub struct SharedQuotas {
    state: Arc<SharedState>,
    /// What this replica counted and has not told Redis yet, and what Redis last said.
    local: Arc<LocalQuotas>,
    charge: redis::Script,
}

/// One counter a charge touches.
struct Counter {
    kind: Kind,
    allowance: Allowance,
    key: String,
    start: u64,
    end: u64,
    estimate: u64,
    /// Counted here and not yet told, told now.
    flush: i64,
}

impl SharedQuotas {
    pub fn new(state: Arc<SharedState>) -> Self {
        SharedQuotas {
            state,
            local: Arc::default(),
            charge: redis::Script::new(CHARGE),
        }
    }

    fn key(state: &SharedState, client: &str, kind: Kind, start: u64) -> String {
        state.key(&format!("quota:{client}:{}:{start}", kind.as_str()))
    }

    /// The counters of `client`'s allowances now, with what this replica has to tell of each.
    fn counters(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
    ) -> Vec<Counter> {
        let mut counters = Vec::with_capacity(2);
        for kind in Kind::ALL {
            let Some(allowance) = kind.of(limits) else {
                continue;
            };
            let (start, end) = allowance.per.bounds(now.as_secs());
            counters.push(Counter {
                kind,
                allowance: *allowance,
                key: Self::key(&self.state, client, kind, start),
                start,
                end,
                estimate: estimate.of(kind).min(MAX_EXACT),
                flush: self.local.take_pending(client, kind, start),
            });
        }
        counters
    }

    /// Runs [`CHARGE`] on `counters`: the refusing counter's index (0: none) and the values.
    async fn run(&self, counters: &[Counter]) -> Option<Vec<u64>> {
        let mut call = self.charge.prepare_invoke();
        for c in counters {
            call.key(&c.key)
                .arg(c.allowance.limit.min(MAX_EXACT))
                .arg(c.estimate)
                .arg(c.flush)
                .arg(c.end + KEPT_AFTER);
        }
        let reply: Vec<i64> = self
            .state
            .call(|mut conn| async move { call.invoke_async(&mut conn).await })
            .await?;
        let values: Vec<u64> = reply.iter().map(|&v| v.max(0) as u64).collect();
        (values.len() == counters.len() + 1).then_some(values)
    }
}

#[async_trait::async_trait]
impl QuotaStore for SharedQuotas {
    async fn charge(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
    ) -> Result<Charged, OverQuota> {
        if !self.state.is_up() {
            // Counted here; told when Redis is back (resync) or with this client's next charge.
            return self.local.charge_here(client, limits, estimate, now);
        }
        let counters = self.counters(client, limits, estimate, now);
        let Some(values) = self.run(&counters).await else {
            // Sent but unanswered: a slow Redis may apply it yet. It is not told again (that
            // could count it twice); this replica decides alone until Redis answers.
            for c in &counters {
                self.local.told_unsure(client, c.kind, c.start, c.flush);
            }
            return self.local.charge_told(client, limits, estimate, now);
        };
        for (c, &used) in counters.iter().zip(&values[1..]) {
            self.local.set_known(client, c.kind, c.start, used);
        }
        if let Some(c) = values[0]
            .checked_sub(1)
            .and_then(|i| counters.get(i as usize))
        {
            let used = values[values[0] as usize];
            return Err(over(c.kind, used, c.allowance, c.end, now));
        }
        let mut starts = [None; 2];
        for c in &counters {
            starts[c.kind as usize] = Some(c.start);
        }
        Ok(Charged {
            estimate,
            starts,
            shared: true,
        })
    }

    fn settle(
        &self,
        client: &str,
        limits: &ClientLimits,
        charged: &Charged,
        spent: Spend,
        now: Duration,
    ) {
        // Counted here first, then told off the request path. A write that cannot be made
        // (Redis down, the queue full) leaves it here, told on Redis's return or with the
        // client's next request.
        self.local.settle_here(client, limits, charged, spent, now);
        if !self.state.is_up() {
            return;
        }
        for kind in Kind::ALL {
            if let Some(allowance) = kind.of(limits) {
                self.tell(client, kind, allowance.per.bounds(now.as_secs()));
            }
        }
    }

    async fn standing(
        &self,
        client: &str,
        limits: &ClientLimits,
        now: Duration,
    ) -> [Option<Standing>; 2] {
        let mut standing = self.local.standing_here(client, limits, now);
        let counters: Vec<(Kind, String, u64, u64)> = Kind::ALL
            .into_iter()
            .filter_map(|kind| {
                let (start, end) = kind.of(limits)?.per.bounds(now.as_secs());
                Some((
                    kind,
                    Self::key(&self.state, client, kind, start),
                    start,
                    end,
                ))
            })
            .collect();
        let keys: Vec<&String> = counters.iter().map(|(_, key, ..)| key).collect();
        if keys.is_empty() {
            return standing;
        }
        let read: Option<Vec<Option<i64>>> =
            self.state
                .call(|mut conn| async move {
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
                })
                .await;
        for ((kind, _, start, end), value) in counters.iter().zip(read.into_iter().flatten()) {
            let used = value.unwrap_or(0).max(0) as u64;
            self.local.set_known(client, *kind, *start, used);
            if let Some(s) = &mut standing[*kind as usize] {
                // What this replica has not told yet counts too.
                s.used = used.saturating_add_signed(self.local.pending(client, *kind, *start));
                s.resets_in = until(*end, now);
            }
        }
        standing
    }
}

impl SharedQuotas {
    /// Tells Redis, off the request path, every count this replica made alone while Redis was
    /// down: on its return (see `StateTask::resync`), so a client that sends nothing more
    /// through this replica is reconciled too.
    pub fn tell_untold(&self) -> usize {
        let untold = self.local.untold();
        for (client, kind, start, end) in &untold {
            self.tell(client, *kind, (*start, *end));
        }
        untold.len()
    }

    /// Queues, for the background task, telling Redis what this replica counted of `client`'s
    /// `kind` in the period from `start` to `end` and has not told yet.
    fn tell(&self, client: &str, kind: Kind, (start, end): (u64, u64)) {
        self.state.send(Write::Spend(Told {
            counts: self.local.clone(),
            client: client.to_string(),
            kind,
            start,
            expire_at: end + KEPT_AFTER,
        }));
    }
}

/// What a replica has to tell Redis of one client's count: the background task's write.
pub struct Told {
    counts: Arc<LocalQuotas>,
    client: String,
    kind: Kind,
    start: u64,
    expire_at: u64,
}

/// Tells Redis what `told`'s replica counted and has not told yet. A call that gets no answer
/// counts as made, as a charge's does.
pub(crate) async fn tell(state: &SharedState, told: Told) -> Option<()> {
    let Told {
        counts,
        client,
        kind,
        start,
        expire_at,
    } = told;
    let by = counts.take_pending(&client, kind, start);
    if by == 0 {
        return Some(());
    }
    let by = by.clamp(-(MAX_EXACT as i64), MAX_EXACT as i64);
    let key = SharedQuotas::key(state, &client, kind, start);
    let made = add(state, key, by, expire_at).await;
    if made.is_none() {
        counts.told_unsure(&client, kind, start, by);
    }
    made
}

/// Adds `by` to a counter and sets when it expires.
async fn add(state: &SharedState, key: String, by: i64, expire_at: u64) -> Option<()> {
    state
        .call(|mut conn| async move {
            redis::pipe()
                .atomic()
                .incr(&key, by)
                .ignore()
                .expire_at(&key, expire_at as i64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await
}
