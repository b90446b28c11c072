//! Quota and budget counts shared by replicas, and kept across restarts: one Redis integer per
//! client, kind and period, `{prefix}:quota:{client}:{tokens|usd}:{period start}`, expiring an
//! hour after its period ends. A Lua script reads a client's counts, refuses or adds the
//! estimate, in one round trip: two replicas charging at once cannot both take the last of a
//! quota.
//!
//! When Redis is down or slow, a replica charges against the count it last read from Redis plus
//! what it counted itself since ([`LocalQuotas`]); the first call that Redis answers again adds
//! what it counted meanwhile (so nothing is lost). A call that was sent but got no answer in
//! time counts as made (a slow Redis applies it late; a Redis that lost it lost its counts
//! too), so nothing is counted twice. While it is down, each replica may let a client spend
//! what was left when it went down: with N replicas, a client can overshoot by up to N − 1
//! times that (plus one request each).

use std::sync::Arc;
use std::time::Duration;

use super::{SharedState, Write};
use crate::clients::quota::{
    delta, over, until, Charged, Kind, LocalQuotas, OverQuota, QuotaStore, Spend, Standing,
};
use crate::config::ClientLimits;

/// Counts or refuses one request. KEYS: the client's counters (one or two); ARGV, four per key:
/// its limit, the estimate, what this replica counted while Redis was down (added first), and
/// when the key expires (Unix seconds). Returns {the 1-based index of the counter that refused,
/// or 0, then each counter's value afterwards}.
const CHARGE: &str = r"
local used = {}
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local flush = tonumber(ARGV[b + 3])
  if flush ~= 0 then redis.call('INCRBY', KEYS[i], flush) end
  used[i] = math.max(0, tonumber(redis.call('GET', KEYS[i]) or '0'))
  redis.call('EXPIREAT', KEYS[i], ARGV[b + 4])
end
for i = 1, #KEYS do
  if used[i] >= tonumber(ARGV[(i - 1) * 4 + 1]) then
    table.insert(used, 1, i)
    return used
  end
end
for i = 1, #KEYS do
  local est = tonumber(ARGV[(i - 1) * 4 + 2])
  if est > 0 then used[i] = redis.call('INCRBY', KEYS[i], est) end
end
table.insert(used, 1, 0)
return used
";

/// Counts above this are sent as this: Lua's numbers are doubles, exact to 2^53.
const MAX_EXACT: u64 = 1 << 52;

/// How long a period's counter outlives the period: the replicas' clocks may differ a little.
const KEPT_AFTER: u64 = 3600;

/// Quota counts kept in Redis, with this process's own when Redis cannot answer.
pub struct SharedQuotas {
    state: Arc<SharedState>,
    local: LocalQuotas,
    charge: redis::Script,
}

/// One counter a charge touches.
struct Counter {
    kind: Kind,
    key: String,
    start: u64,
    end: u64,
    limit: u64,
    estimate: u64,
    /// Counted here while Redis was down, told now.
    flush: i64,
}

impl SharedQuotas {
    pub fn new(state: Arc<SharedState>) -> Self {
        SharedQuotas {
            state,
            local: LocalQuotas::default(),
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
                key: Self::key(&self.state, client, kind, start),
                start,
                end,
                limit: allowance.limit.min(MAX_EXACT),
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
                .arg(c.limit)
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
            // Counted here, and told with this client's first request that Redis answers.
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
            let allowance = *c.kind.of(limits).expect("a counter of an allowance");
            return Err(over(
                c.kind,
                values[values[0] as usize],
                allowance,
                c.end,
                now,
            ));
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
        if !(charged.shared && self.state.is_up()) {
            // Counted here; told with this client's next request that Redis answers.
            return self.local.settle_here(client, limits, charged, spent, now);
        }
        for kind in Kind::ALL {
            let (Some(charged_in), Some(allowance)) =
                (charged.starts[kind as usize], kind.of(limits))
            else {
                continue;
            };
            let (start, end) = allowance.per.bounds(now.as_secs());
            let by = match start == charged_in {
                true => delta(spent.of(kind), charged.estimate.of(kind)),
                false => delta(spent.of(kind), 0),
            };
            if by != 0 {
                self.state.send(Write::Spend {
                    key: Self::key(&self.state, client, kind, start),
                    by: by.clamp(-(MAX_EXACT as i64), MAX_EXACT as i64),
                    expire_at: end + KEPT_AFTER,
                });
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

/// Adds `by` to a counter and sets when it expires: the background task's write.
pub(crate) async fn spend(state: &SharedState, key: String, by: i64, expire_at: u64) -> Option<()> {
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
