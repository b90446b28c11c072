//! The clients: closed-loop but paced. Each sends chat completions of mixed sizes, drawn from
//! a generator seeded with its number (so every configuration gets the same sequence), and
//! starts each request when its share of the load says, or at once when the last one took
//! longer. Like the `openai` SDK, a client retries a 429 twice, each time after the
//! `retry-after-ms` (else `retry-after`) it was told; a third 429 or an error is one failed
//! request, and the client goes on with its schedule.

use std::time::{Duration, Instant};

use serde_json::json;

/// What each client sends to.
const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
/// Prompts of this many tokens, evenly spread.
const PROMPT_TOKENS: (u64, u64) = (200, 2_000);
/// `max_tokens` of this many, evenly spread.
const MAX_TOKENS: (u64, u64) = (100, 1_000);
/// The prompts' words. The simulator counts a token a word, the proxy a token per four bytes
/// of the body: three letters and a space are both.
const WORDS: [&str; 8] = ["sun", "sky", "owl", "fig", "map", "red", "oak", "bay"];

/// SplitMix64: a small generator whose sequence is fixed by its seed.
struct Rng(u64);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A whole number from `lo` to `hi`, both included.
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// A number from 0 (included) to 1.
    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One request of the mix.
struct Ask {
    body: String,
    /// The tokens its backend's quota is charged on arrival: its prompt and its `max_tokens`.
    estimate: u64,
}

impl Ask {
    fn draw(rng: &mut Rng) -> Ask {
        let prompt = rng.between(PROMPT_TOKENS);
        let max_tokens = rng.between(MAX_TOKENS);
        let mut content = String::with_capacity(prompt as usize * 4);
        for i in 0..prompt {
            if i > 0 {
                content.push(' ');
            }
            content.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        }
        let body =
            json!({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens});
        Ask {
            body: body.to_string(),
            estimate: prompt + max_tokens,
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with this status, the whole answer read.
    Status(u16),
    /// No whole answer: a connection error.
    Failed,
    /// Still unanswered when the clients stopped.
    Unfinished,
}

/// One request as a client saw it.
pub struct Sample {
    pub started: Instant,
    /// When it ended (when the clients stopped, for one [`Outcome::Unfinished`]).
    pub done: Instant,
    pub outcome: Outcome,
    /// Its estimated tokens.
    pub estimate: u64,
    /// The 429s it was answered, retried ones included.
    pub throttled: u32,
}

/// What all the clients together offer.
#[derive(Clone, Copy)]
pub struct Pace {
    pub clients: usize,
    /// Estimated tokens a minute, over all the clients.
    pub tokens_per_minute: f64,
    /// When the clients start.
    pub start: Instant,
    /// When they stop: a request still unanswered then is dropped.
    pub until: Instant,
}

impl Pace {
    /// The start-to-start interval of one client after a request of `estimate` tokens, so that
    /// all of them together offer [`Pace::tokens_per_minute`].
    fn interval(&self, estimate: u64) -> Duration {
        let per_client = self.tokens_per_minute / 60.0 / self.clients as f64;
        Duration::from_secs_f64(estimate as f64 / per_client)
    }
}

/// Client number `id`: sends its sequence to the proxy at `port` at `pace` until its end.
pub async fn run(port: u16, id: usize, pace: Pace) -> Vec<Sample> {
    let http = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .expect("an HTTP client");
    let url = format!("http://127.0.0.1:{port}{CHAT}");
    let mut rng = Rng::seeded(id as u64);
    let mut next = pace.start + phase(&mut rng, &pace);
    let mut ask = Ask::draw(&mut rng);
    let mut samples = Vec::new();
    while next < pace.until {
        tokio::time::sleep_until(next.into()).await;
        let started = Instant::now();
        let (outcome, throttled) = with_retries(&http, &url, &ask.body, pace.until).await;
        samples.push(Sample {
            started,
            done: Instant::now(),
            outcome,
            estimate: ask.estimate,
            throttled,
        });
        if outcome == Outcome::Unfinished {
            break;
        }
        next = started + pace.interval(ask.estimate);
        ask = Ask::draw(&mut rng);
    }
    samples
}

/// The retries of the `openai` SDK's default (`max_retries=2`).
const RETRIES: u32 = 2;

/// Sends `body` until it is answered other than 429 or [`RETRIES`] retries are spent, each
/// after the wait the 429 asked for; what it ended with, and the 429s on the way.
async fn with_retries(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    until: Instant,
) -> (Outcome, u32) {
    let mut throttled = 0;
    loop {
        let answer = tokio::time::timeout_at(until.into(), send(http, url, body.to_string()));
        let (status, wait) = match answer.await {
            Ok(Some(answer)) => answer,
            Ok(None) => return (Outcome::Failed, throttled),
            Err(_) => return (Outcome::Unfinished, throttled),
        };
        if status != 429 {
            return (Outcome::Status(status), throttled);
        }
        throttled += 1;
        if throttled > RETRIES {
            return (Outcome::Status(429), throttled);
        }
        // The SDK's backoff when the answer names no wait: 0.5 s, then 1 s.
        let wait = wait.unwrap_or(Duration::from_millis(500 << (throttled - 1)));
        if Instant::now() + wait >= until {
            return (Outcome::Unfinished, throttled);
        }
        tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
    }
}

/// When a client's first request starts: as if it had been sending all along, at a point drawn
/// within the interval of an earlier request, that request drawn in proportion to its interval
/// (a long interval more likely covers the start). So the clients together offer the load from
/// the first second; with the first interval of an ordinary draw they offer more for a while.
fn phase(rng: &mut Rng, pace: &Pace) -> Duration {
    let most = PROMPT_TOKENS.1 + MAX_TOKENS.1;
    loop {
        let estimate = rng.between(PROMPT_TOKENS) + rng.between(MAX_TOKENS);
        if rng.fraction() * (most as f64) < estimate as f64 {
            return pace.interval(estimate).mul_f64(rng.fraction());
        }
    }
}

/// Sends one request and reads its whole answer: its status and the wait a 429 asks for
/// (`retry-after-ms`, else `retry-after` in seconds), or `None` without an answer.
async fn send(http: &reqwest::Client, url: &str, body: String) -> Option<(u16, Option<Duration>)> {
    let answer = http
        .post(url)
        .header("content-type", "application/json")
        .header("api-key", "bench-client-key")
        .body(body)
        .send()
        .await
        .ok()?;
    let status = answer.status().as_u16();
    let header = |name: &str| {
        let v = answer.headers().get(name)?.to_str().ok()?;
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let wait = header("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| header("retry-after").map(Duration::from_secs_f64));
    answer.bytes().await.ok()?;
    Some((status, wait))
}
