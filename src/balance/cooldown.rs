//! How long a throttled backend asked to be left alone, read from its own response headers,
//! and how long it is left alone ([`period`]).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::config::CooldownPolicy;

/// The cooldown a 429 or 503 with `headers` gets, and why: the time the backend asked for,
/// capped by `cooldown.max`, or `cooldown.default` when it asked for nothing usable.
pub fn period(
    headers: Option<&HeaderMap>,
    policy: &CooldownPolicy,
    now: SystemTime,
) -> (Duration, &'static str) {
    match headers.and_then(|h| requested_cooldown(h, now)) {
        Some(d) if d > policy.max => (policy.max, "the time it asked for, capped by cooldown.max"),
        Some(d) => (d, "the time it asked for"),
        None => (policy.default, "no usable retry-after: cooldown.default"),
    }
}

/// The cooldown a 429 or 503 asks for: `retry-after-ms`, else `retry-after` (seconds or an HTTP
/// date), else the longest of `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`.
/// `None` when none of them is usable (missing, `-1`, zero, garbage).
pub fn requested_cooldown(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(d) = positive_secs(ms / 1000.0) {
            return Some(d);
        }
    }
    if let Some(v) = text("retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            if let Some(d) = positive_secs(secs) {
                return Some(d);
            }
        } else if let Ok(date) = httpdate::parse_http_date(v) {
            if let Ok(left) = date.duration_since(now) {
                if !left.is_zero() {
                    return Some(left);
                }
            }
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|h| text(h).and_then(parse_reset))
        .max()
}

/// `secs` as a duration, when it is one of at least a nanosecond (a wait too short to count, or
/// not a number, asks for nothing: found by fuzzing, `1.47e-17` was a cooldown of zero).
fn positive_secs(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
}

/// `x-ratelimit-reset-*`: a bare number of seconds, or a Go-style duration (`1s`, `6m0s`, `250ms`).
fn parse_reset(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<f64>() {
        return positive_secs(secs);
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, after) = rest.split_at(split);
        let n: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        total += n * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            _ => return None,
        };
        rest = tail;
    }
    positive_secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn cooldown(pairs: &[(&'static str, &str)]) -> Option<Duration> {
        requested_cooldown(
            &headers(pairs),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    #[test]
    fn a_wait_too_short_to_count_asks_for_nothing() {
        // Regression (fuzz/artifacts/retry_after): these gave a cooldown of zero.
        for v in [".0000000000000000014700000000", "1e-300", "0.0000000001"] {
            assert_eq!(cooldown(&[("x-ratelimit-reset-requests", v)]), None, "{v}");
            assert_eq!(cooldown(&[("retry-after", v)]), None, "{v}");
        }
        // A retry-after-ms too short to count leaves retry-after to say.
        assert_eq!(
            cooldown(&[("retry-after-ms", "1e-12"), ("retry-after", "3")]),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn the_period_is_what_was_asked_within_the_policy() {
        let policy = CooldownPolicy {
            default: Duration::from_secs(10),
            max: Duration::from_secs(3600),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let asks = |v: &str| headers(&[("retry-after", v)]);
        assert_eq!(
            period(Some(&asks("7")), &policy, now).0,
            Duration::from_secs(7)
        );
        assert_eq!(
            period(Some(&asks("7200")), &policy, now).0,
            Duration::from_secs(3600),
            "capped by cooldown.max"
        );
        assert_eq!(
            period(Some(&asks("soon")), &policy, now).0,
            Duration::from_secs(10)
        );
        assert_eq!(period(None, &policy, now).0, Duration::from_secs(10));
    }

    #[test]
    fn retry_after_ms_comes_first() {
        assert_eq!(
            cooldown(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            cooldown(&[("retry-after-ms", "12.5")]),
            Some(Duration::from_micros(12_500))
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(
            cooldown(&[("retry-after", "7")]),
            Some(Duration::from_secs(7))
        );
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            cooldown(&[("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            cooldown(&[("retry-after", "Tue, 14 Nov 2023 22:00:00 GMT")]),
            None,
            "a date in the past"
        );
    }

    #[test]
    fn ratelimit_resets_when_nothing_else() {
        assert_eq!(
            cooldown(&[
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-reset-tokens", "6m0s")
            ]),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            cooldown(&[("x-ratelimit-reset-tokens", "250ms")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            cooldown(&[("x-ratelimit-reset-requests", "2")]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            cooldown(&[("x-ratelimit-reset-requests", "1m30s")]),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn unusable_values_are_ignored() {
        for bad in ["-1", "0", "soon", "", "NaN", "inf", "1x"] {
            assert_eq!(
                cooldown(&[
                    ("retry-after-ms", bad),
                    ("retry-after", bad),
                    ("x-ratelimit-reset-requests", bad)
                ]),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            cooldown(&[("retry-after-ms", "-1"), ("retry-after", "3")]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(cooldown(&[]), None);
    }
}
