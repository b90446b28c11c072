//! Client limit windows shared by replicas: one Redis hash per client, `{prefix}:limits:{client}`,
//! with a field per second and kind (`1717171717:r`, `1717171717:t`). A Lua script sums the last
//! sixty seconds, refuses or counts the request, and drops the seconds that left the window, in
//! one round trip: two replicas admitting at once cannot both take the last request.
//!
//! When Redis is down or slow, a replica admits by its own windows (see [`LocalLimits`]), which
//! count only what it admitted itself since: each replica then gives the client its whole limit.

use std::time::{Duration, Instant};

use super::{unix_now, SharedState, Write};
use crate::clients::limits::{Admitted, Limit, LimitStore, LocalLimits, Refused};
use crate::config::ClientLimits;
use std::sync::Arc;

/// Counts or refuses one request. KEYS[1]: the hash; ARGV: now (s), requests per minute, tokens
/// per minute (each empty when the client has none), the estimate. Returns {verdict, seconds
/// until enough leaves the window, requests and tokens in the window afterwards}, the verdict
/// `admitted`, or the limit that refused: `requests` or `tokens` (see [`Reply`]).
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local rpm, tpm, est = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
-- tonumber('') is nil: no such limit.
local fields = redis.call('HGETALL', KEYS[1])
local r, t, rs, ts = 0, 0, {}, {}
for i = 1, #fields, 2 do
  local sec, kind = string.match(fields[i], '^(%d+):(%a)$')
  local v = tonumber(fields[i + 1]) or 0
  sec = tonumber(sec)
  if sec == nil or sec <= now - 60 then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif kind == 'r' then
    r = r + v; rs[#rs + 1] = {sec, v}
  else
    t = t + v; ts[#ts + 1] = {sec, v}
  end
end
local function freed(list, excess)
  table.sort(list, function(a, b) return a[1] < b[1] end)
  local f = 0
  for _, e in ipairs(list) do
    f = f + e[2]
    if f > excess then return e[1] + 60 - now end
  end
  return 60
end
if rpm and r >= rpm then return {'requests', freed(rs, r - rpm), r, t} end
if tpm and t >= tpm then return {'tokens', freed(ts, t - tpm), r, t} end
redis.call('HINCRBY', KEYS[1], now .. ':r', 1)
if est > 0 then redis.call('HINCRBY', KEYS[1], now .. ':t', est) end
redis.call('EXPIRE', KEYS[1], 120)
return {'admitted', 0, r + 1, t + est}
";

/// Replaces an estimate with what was spent. KEYS[1]: the hash; ARGV: the admission's second,
/// the estimate, now (s), the tokens spent.
pub(crate) const SETTLE: &str = r"
local field = ARGV[1] .. ':t'
local back = math.min(tonumber(redis.call('HGET', KEYS[1], field) or '0'), tonumber(ARGV[2]))
if back > 0 then redis.call('HINCRBY', KEYS[1], field, -back) end
if tonumber(ARGV[4]) > 0 then redis.call('HINCRBY', KEYS[1], ARGV[3] .. ':t', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], 120)
return 1
";

/// Token counts above this are sent as this: Lua's numbers are doubles, exact to 2^53.
const MAX_EXACT: u64 = 1 << 52;

/// What [`ADMIT`] answered.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    /// `None`: admitted.
    refused_by: Option<Limit>,
    /// Seconds from the start of the current one until enough leaves the window.
    seconds: u64,
    /// Requests and tokens in the window afterwards.
    requests: u64,
    tokens: u64,
}

impl redis::FromRedisValue for Reply {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (verdict, seconds, requests, tokens): (String, u64, u64, u64) =
            redis::FromRedisValue::from_redis_value(v)?;
        let refused_by = match verdict.as_str() {
            "admitted" => None,
            "requests" => Some(Limit::Requests),
            "tokens" => Some(Limit::Tokens),
            other => return Err(format!("the limits script answered {other:?}").into()),
        };
        Ok(Reply {
            refused_by,
            seconds,
            requests,
            tokens,
        })
    }
}

/// Limits kept in Redis, with this process's own windows when Redis cannot answer.
pub struct SharedLimits {
    state: Arc<SharedState>,
    local: LocalLimits,
    admit: redis::Script,
}

impl SharedLimits {
    pub fn new(state: Arc<SharedState>) -> Self {
        SharedLimits {
            state,
            local: LocalLimits::default(),
            admit: redis::Script::new(ADMIT),
        }
    }

    fn key(state: &SharedState, client: &str) -> String {
        state.key(&format!("limits:{client}"))
    }
}

/// Replaces the estimate counted for a request of `client` at `admitted_second` with what it
/// `spent`, at `now_second` (Unix seconds): the background task's write.
pub(crate) async fn settle(
    state: &SharedState,
    script: &redis::Script,
    client: &str,
    (admitted_second, estimate): (u64, u64),
    (now_second, spent): (u64, u64),
) -> Option<i64> {
    let key = SharedLimits::key(state, client);
    state
        .call(|mut conn| async move {
            script
                .key(key)
                .arg(admitted_second)
                .arg(estimate)
                .arg(now_second)
                .arg(spent)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
}

#[async_trait::async_trait]
impl LimitStore for SharedLimits {
    async fn admit(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: u64,
        now: Instant,
    ) -> Result<Admitted, Refused> {
        let rpm = limits.requests_per_minute.map(|n| u64::from(n.get()));
        let tpm = limits.tokens_per_minute.map(|n| n.get());
        let unix = unix_now();
        let second = unix.as_secs();
        // A limit the client does not have goes as an empty argument.
        let arg =
            |limit: Option<u64>| limit.map_or(String::new(), |l| l.min(MAX_EXACT).to_string());
        let key = Self::key(&self.state, client);
        let reply: Option<Reply> = self
            .state
            .call(|mut conn| async move {
                self.admit
                    .key(key)
                    .arg(second)
                    .arg(arg(rpm))
                    .arg(arg(tpm))
                    .arg(estimate.min(MAX_EXACT))
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        let Some(reply) = reply else {
            return self.local.admit_here(client, limits, estimate, now);
        };
        let left = |used: u64, limit: Option<u64>| limit.map(|l| l.saturating_sub(used));
        let (remaining_requests, remaining_tokens) =
            (left(reply.requests, rpm), left(reply.tokens, tpm));
        let Some(limit) = reply.refused_by else {
            return Ok(Admitted {
                remaining_requests,
                remaining_tokens,
                estimate,
                second,
                shared: true,
            });
        };
        // From now to `seconds` after the start of the current second.
        let retry_after = Duration::from_secs(second + reply.seconds)
            .saturating_sub(unix)
            .max(Duration::from_millis(1));
        Err(Refused {
            limit,
            retry_after,
            remaining_requests,
            remaining_tokens,
        })
    }

    fn settle(&self, client: &str, admitted: &Admitted, spent: u64, now: Instant) {
        if !admitted.shared {
            return self.local.settle_here(client, admitted, spent, now);
        }
        if spent != admitted.estimate {
            self.state.send(Write::Settle {
                client: client.to_string(),
                admitted_second: admitted.second,
                estimate: admitted.estimate.min(MAX_EXACT),
                now_second: unix_now().as_secs(),
                spent: spent.min(MAX_EXACT),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{FromRedisValue, Value};

    fn reply(verdict: &str, n: [i64; 3]) -> Result<Reply, redis::ParsingError> {
        let mut items = vec![Value::BulkString(verdict.as_bytes().to_vec())];
        items.extend(n.map(Value::Int));
        Reply::from_redis_value(Value::Array(items))
    }

    #[test]
    fn the_scripts_answer_is_read_as_a_verdict() {
        assert_eq!(
            reply("admitted", [0, 3, 40]).unwrap(),
            Reply {
                refused_by: None,
                seconds: 0,
                requests: 3,
                tokens: 40
            }
        );
        assert_eq!(
            reply("tokens", [12, 3, 40]).unwrap().refused_by,
            Some(Limit::Tokens)
        );
        assert_eq!(
            reply("requests", [1, 3, 40]).unwrap().refused_by,
            Some(Limit::Requests)
        );
        assert!(reply("maybe", [0, 0, 0]).is_err());
    }
}
