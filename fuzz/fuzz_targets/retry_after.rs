//! `retry-after`, `retry-after-ms` and `x-ratelimit-reset-*` as backends send them: any values
//! give a cooldown within the policy's bounds, or none; never a panic.
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "retry-after-ms",
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ms-retry-after-ms",
];

fuzz_target!(|data: &[u8]| {
    // The input is up to five values, split at NUL bytes, one for each header.
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data.split(|&b| b == 0)) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    let _ = aoai_proxy::balance::cooldown::requested_cooldown(&headers, now);
    let policy = aoai_proxy::config::CooldownPolicy::default();
    let (period, _) = aoai_proxy::balance::cooldown::period(Some(&headers), &policy, now);
    assert!(period <= policy.max, "{period:?} over the maximum");
    assert!(!period.is_zero(), "a zero cooldown");
});
