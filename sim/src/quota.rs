//! Azure OpenAI's rate limits per deployment, simulated: a backend with a [`Quota`] gives every
//! deployment it is asked for (the `{d}` of `/openai/deployments/{d}/...`, else the body's
//! `model`) counters of its own, and answers 429 when a request would go over them.
//!
//! The model: two token buckets per deployment, one of tokens and one of requests, each as big
//! as its per-minute quota, starting full and refilled continuously at a sixtieth of it a
//! second. An inference request (chat completions, completions, embeddings, the Responses API's
//! create) is charged on arrival what Azure estimates it will cost: its prompt's tokens (the
//! simulator's count, words of the messages', prompt's or input's JSON, as the answers' `usage`
//! counts them) plus its `max_tokens`
//! (`max_completion_tokens`, `max_output_tokens`), or [`Quota::DEFAULT_MAX_TOKENS`] when it
//! names none; embeddings are charged their input's tokens. So a large `max_tokens` spends quota
//! even when the answer is short, as on Azure. When either bucket holds less than the request
//! needs, the answer is a 429 with Azure's error body, `retry-after-ms` (the milliseconds until
//! both buckets hold enough, at least 1) and `retry-after` (that in whole seconds, rounded up),
//! and nothing is charged. Every answer to a charged request, 200 or 429, streamed or not,
//! carries `x-ratelimit-remaining-tokens` and `x-ratelimit-remaining-requests` (what is left
//! after the charge, rounded down), and `x-ratelimit-limit-tokens`/`-requests` when
//! [`Quota::limit_headers`] is set.
//!
//! A provisioned (PTU) deployment ([`Quota::provisioned`]) answers with
//! `azure-openai-deployment-utilization` instead of the `x-ratelimit-*` headers, and its 429
//! carries `retry-after-ms` alone, so a client must go by the milliseconds. Choices made where
//! Azure's behaviour is not documented: the utilization is the share of the token bucket in use
//! with one decimal (`37.5%`; Azure measures the PTU capacity in use over its own window), and a
//! PTU's 429 has the standard deployment's message.
//!
//! Simplified against Azure: Azure enforces the quota over short windows (1 or 10 seconds), which
//! a bucket refilled continuously approximates (a burst up to the whole minute's quota passes
//! at once here); `n` and `best_of` do not multiply the output estimate; a request estimated at
//! more than the whole quota is charged the whole quota (it waits for a full bucket instead of
//! being refused for ever); requests that name no deployment and requests other than inference
//! (files, assistants, Realtime) are not charged and carry no quota headers; the
//! `x-ratelimit-reset-*` headers are not sent. Faults programmed on the backend come before the
//! quota: they are neither charged nor counted.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method};
use hyper::Response;
use serde_json::Value;

use super::completions::tokens;
use super::{azure_error, lock, Body};

/// [`Quota`]: the rate limits of each deployment of a simulated backend (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Tokens a minute (TPM): the size of the token bucket, refilled at a sixtieth a second.
    /// 0 counts as 1.
    pub tokens_per_minute: u64,
    /// Requests a minute (RPM): the size of the request bucket. 0 counts as 1.
    pub requests_per_minute: u64,
    /// A provisioned (PTU) deployment: `azure-openai-deployment-utilization` instead of the
    /// `x-ratelimit-*` headers, and 429s with `retry-after-ms` alone.
    pub provisioned: bool,
    /// Also send `x-ratelimit-limit-tokens` and `x-ratelimit-limit-requests` (not on a
    /// provisioned deployment, which sends none of the `x-ratelimit-*` headers).
    pub limit_headers: bool,
}

impl Quota {
    /// The output tokens charged to a request that names no `max_tokens`,
    /// `max_completion_tokens` or `max_output_tokens`.
    pub const DEFAULT_MAX_TOKENS: u64 = 1_000;

    /// [`Quota`] of `tpm` tokens a minute and Azure's ratio of requests: 6 a minute per 1,000
    /// tokens a minute (rounded down, at least 1). Standard (not provisioned), without the limit
    /// headers.
    pub fn tokens_per_minute(tpm: u64) -> Quota {
        Quota {
            tokens_per_minute: tpm,
            requests_per_minute: (tpm.saturating_mul(6) / 1_000).max(1),
            provisioned: false,
            limit_headers: false,
        }
    }
}

/// The inference operations that a quota charges, by their names in Azure's 429 message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Operation {
    /// The operation a request is, when it is one that the quota charges (a POST).
    pub(crate) fn of(method: &Method, path: &str) -> Option<Operation> {
        if method != Method::POST {
            return None;
        }
        let path = path.trim_end_matches('/');
        // `responses` of `/openai/deployments/{d}/responses`.
        let under_deployment = path
            .strip_prefix("/openai/deployments/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, rest)| rest);
        if path.ends_with("/chat/completions") {
            Some(Operation::ChatCompletions)
        } else if path.ends_with("/completions") {
            Some(Operation::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Operation::Embeddings)
        } else if matches!(path, "/openai/responses" | "/openai/v1/responses")
            || under_deployment == Some("responses")
        {
            Some(Operation::Responses)
        } else {
            None
        }
    }

    /// Its name in Azure's messages.
    fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "ChatCompletions_Create",
            Operation::Completions => "Completions_Create",
            Operation::Embeddings => "Embeddings_Create",
            Operation::Responses => "Responses_Create",
        }
    }

    /// The tokens Azure estimates `body` will cost, on its arrival.
    fn estimate(self, body: &Value) -> u64 {
        let output = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| body[*n].as_u64())
                .unwrap_or(Quota::DEFAULT_MAX_TOKENS)
        };
        // The prompt as the answers' `usage` counts it.
        let prompt = |name: &str| tokens(&body[name].to_string());
        // A client's `max_tokens` may be any number: the sum saturates.
        match self {
            Operation::ChatCompletions => {
                prompt("messages").saturating_add(output(&["max_tokens", "max_completion_tokens"]))
            }
            Operation::Completions => prompt("prompt").saturating_add(output(&["max_tokens"])),
            Operation::Embeddings => prompt("input"),
            Operation::Responses => (prompt("input") + prompt("instructions"))
                .saturating_add(output(&["max_output_tokens"])),
        }
    }
}

/// `gpt-4o` from `/openai/deployments/gpt-4o/chat/completions`.
pub(crate) fn deployment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    rest.split('/').next().filter(|d| !d.is_empty())
}

/// What one request costs, and whom.
#[derive(Debug)]
pub(crate) struct Charge {
    operation: Operation,
    deployment: String,
    tokens: u64,
    /// The request's `api-version`, which Azure's 429 message names (`v1` without one).
    api_version: String,
}

impl Charge {
    /// What the request (`parts`, its body `body`) of `operation` costs; `None` when it names no
    /// deployment.
    pub(crate) fn of(operation: Operation, parts: &Parts, body: &Value) -> Option<Charge> {
        let name = deployment(parts.uri.path()).or_else(|| body["model"].as_str())?;
        let api_version = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "api-version")
            .map_or_else(|| "v1".to_string(), |(_, v)| v.into_owned());
        Some(Charge {
            operation,
            deployment: name.to_string(),
            tokens: operation.estimate(body),
            api_version,
        })
    }
}

/// Nanoseconds in a minute. A bucket counts in this fraction of a token (or request), so that
/// one of `per_minute` refills by exactly `per_minute` of them a nanosecond: no rounding drifts.
const UNITS: u128 = 60_000_000_000;

/// A token bucket of `per_minute` units, refilled continuously over a minute.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Its size, and what it gains a minute.
    per_minute: u64,
    /// What it held at `at`, in 1/[`UNITS`] of a unit.
    level: u128,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `per_minute` (at least 1) at `now`.
    fn full(per_minute: u64, now: Instant) -> Bucket {
        let per_minute = per_minute.max(1);
        Bucket {
            per_minute,
            level: u128::from(per_minute) * UNITS,
            at: now,
        }
    }

    fn capacity(&self) -> u128 {
        u128::from(self.per_minute) * UNITS
    }

    /// Adds what it gained since it was last looked at (nothing when `now` is earlier).
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let gained = elapsed.saturating_mul(u128::from(self.per_minute));
        self.level = self.level.saturating_add(gained).min(self.capacity());
        self.at = self.at.max(now);
    }

    /// What taking `amount` takes: at most the whole bucket.
    fn cost(&self, amount: u64) -> u128 {
        u128::from(amount.min(self.per_minute)) * UNITS
    }

    /// How long until it holds `amount` (zero when it does now).
    fn wait(&self, amount: u64) -> Duration {
        let short = self.cost(amount).saturating_sub(self.level);
        let nanos = short.div_ceil(u128::from(self.per_minute));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `amount` (at most the whole bucket), which it holds.
    fn take(&mut self, amount: u64) {
        self.level = self.level.saturating_sub(self.cost(amount));
    }

    /// What it holds, in whole units.
    fn remaining(&self) -> u64 {
        u64::try_from(self.level / UNITS).unwrap_or(u64::MAX)
    }

    /// The share of it in use, in percent.
    fn utilization(&self) -> f64 {
        let used = self.capacity() - self.level;
        used as f64 * 100.0 / self.capacity() as f64
    }
}

/// One deployment's counters.
#[derive(Debug)]
struct Buckets {
    tokens: Bucket,
    requests: Bucket,
}

/// How a deployment's buckets stand after a request: what its answer's headers say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Standing {
    tokens: u64,
    requests: u64,
    /// Percent of the token bucket in use.
    utilization: f64,
}

impl Standing {
    fn of(buckets: &Buckets) -> Standing {
        Standing {
            tokens: buckets.tokens.remaining(),
            requests: buckets.requests.remaining(),
            utilization: buckets.tokens.utilization(),
        }
    }
}

/// Why and for how long a request was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Throttled {
    /// Until both buckets hold what the request needs.
    wait: Duration,
    /// Whether the token bucket (rather than the request bucket) is the one that takes longest.
    by_tokens: bool,
    standing: Standing,
}

/// The counters of every deployment of one backend, under one [`Quota`].
pub(crate) struct Limiter {
    quota: Quota,
    deployments: Mutex<HashMap<String, Buckets>>,
    throttled: AtomicU64,
    charged: AtomicU64,
}

impl Limiter {
    pub(crate) fn new(quota: Quota) -> Limiter {
        Limiter {
            quota,
            deployments: Mutex::default(),
            throttled: AtomicU64::new(0),
            charged: AtomicU64::new(0),
        }
    }

    /// Charges `charge` to its deployment at `now` when both its buckets hold enough, else
    /// charges nothing and says how long to wait.
    pub(crate) fn take(&self, charge: &Charge, now: Instant) -> Result<Standing, Throttled> {
        let mut deployments = lock(&self.deployments);
        let buckets = deployments
            .entry(charge.deployment.clone())
            .or_insert_with(|| Buckets {
                tokens: Bucket::full(self.quota.tokens_per_minute, now),
                requests: Bucket::full(self.quota.requests_per_minute, now),
            });
        buckets.tokens.refill(now);
        buckets.requests.refill(now);
        let by_tokens = buckets.tokens.wait(charge.tokens);
        let by_requests = buckets.requests.wait(1);
        if by_tokens.is_zero() && by_requests.is_zero() {
            buckets.tokens.take(charge.tokens);
            buckets.requests.take(1);
            let taken = charge.tokens.min(buckets.tokens.per_minute);
            self.charged.fetch_add(taken, Ordering::Relaxed);
            return Ok(Standing::of(buckets));
        }
        self.throttled.fetch_add(1, Ordering::Relaxed);
        Err(Throttled {
            wait: by_tokens.max(by_requests),
            by_tokens: by_tokens >= by_requests,
            standing: Standing::of(buckets),
        })
    }

    /// Puts the quota's headers for `standing` on an answer.
    pub(crate) fn stamp(&self, headers: &mut HeaderMap, standing: &Standing) {
        if self.quota.provisioned {
            let utilization = format!("{:.1}%", standing.utilization);
            if let Ok(v) = HeaderValue::try_from(utilization) {
                headers.insert("azure-openai-deployment-utilization", v);
            }
            return;
        }
        headers.insert("x-ratelimit-remaining-tokens", standing.tokens.into());
        headers.insert("x-ratelimit-remaining-requests", standing.requests.into());
        if self.quota.limit_headers {
            let tokens = self.quota.tokens_per_minute.max(1);
            let requests = self.quota.requests_per_minute.max(1);
            headers.insert("x-ratelimit-limit-tokens", tokens.into());
            headers.insert("x-ratelimit-limit-requests", requests.into());
        }
    }

    /// The 429 that refuses `charge`, as Azure words it.
    pub(crate) fn refusal(&self, charge: &Charge, throttled: &Throttled) -> Response<Body> {
        let ms = throttled.wait.as_nanos().div_ceil(1_000_000).max(1);
        let secs = ms.div_ceil(1_000);
        let limit = if throttled.by_tokens { "token" } else { "call" };
        let unit = if secs == 1 { "second" } else { "seconds" };
        let message = format!(
            "Requests to the {} Operation under Azure OpenAI API version {} have exceeded \
             {limit} rate limit of your current OpenAI S0 pricing tier. Please retry after \
             {secs} {unit}. Please go here: https://aka.ms/oai/quotaincrease if you would like \
             to further increase the default rate limit.",
            charge.operation.name(),
            charge.api_version,
        );
        let mut resp = azure_error(429, "429", &message);
        let headers = resp.headers_mut();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        headers.insert("retry-after-ms", ms.into());
        if !self.quota.provisioned {
            headers.insert("retry-after", ms.div_ceil(1_000).into());
        }
        self.stamp(headers, &throttled.standing);
        resp
    }

    /// Requests refused for the quota so far.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Tokens charged so far, over every deployment.
    pub(crate) fn tokens_charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }
}
