//! The access log: one line per request, as text or JSON (`log.format`). It names the client,
//! the request, each try's backend and outcome, and the timings and tokens; never a header
//! value or the query (where a key could be), only the path.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::config::LogFormat;
use crate::metrics::TryLabel;
use crate::outcome::Outcome;
use crate::usage::Usage;

/// The log target of access lines. JSON lines use [`JSON_TARGET`], below it, which the
/// logger writes bare (see `main.rs`), so `RUST_LOG=aoai_proxy::access=off` silences both.
pub const TARGET: &str = "aoai_proxy::access";
pub const JSON_TARGET: &str = "aoai_proxy::access::json";

/// What one access line says.
pub struct AccessLine<'a> {
    /// Where the request came from (only the JSON line names it, so it is formatted there).
    pub client_addr: Option<&'a dyn std::fmt::Display>,
    /// The client's name, when `clients` is configured and it was recognised.
    pub client: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub deployment: Option<&'a str>,
    /// The status the client got; `None` when it got none (it left, or the stream broke).
    pub status: Option<u16>,
    /// Each try: the backend's name and what it produced.
    pub tries: smallvec::SmallVec<[(&'a str, Outcome); 3]>,
    pub first_byte: Option<Duration>,
    pub duration: Duration,
    pub usage: Option<Usage>,
    /// How long it waited for capacity (`retry.wait_for_capacity`), when it did.
    pub waited: Option<Duration>,
    /// The fallback deployment that answered (`fallbacks`), when not the one asked for.
    pub fallback: Option<&'a str>,
    /// What the answer cost in US dollars (`prices`), when its deployment has a price and its
    /// backend reported usage.
    pub cost_usd: Option<f64>,
    /// What the response cache did for it (`hit`, `semantic-hit`, `miss`), when it is
    /// cacheable.
    pub cache: Option<&'static str>,
    /// The request's trace (`telemetry`), to find its spans.
    pub trace_id: Option<opentelemetry::trace::TraceId>,
    pub error: Option<String>,
}

impl AccessLine<'_> {
    /// Writes the line at info level.
    pub fn write(&self, format: LogFormat) {
        match format {
            LogFormat::Text => log::info!(target: TARGET, "{}", self.text()),
            LogFormat::Json => log::info!(target: JSON_TARGET, "{}", self.json()),
        }
    }

    /// `GET /openai/... 200 backend=b tries=1 client=- tokens=12/30 41ms deployment=gpt-4o
    /// ttfb=12ms tried=b:2xx`: the fields before `41ms` in the order they have always had.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(192);
        // The deployment comes from the client's body: its control characters are escaped, so
        // no line can be forged. (The path is printable ASCII by now, names are configured.)
        // Written piece by piece into one string: this runs for every request.
        let dash = |out: &mut String, v: Option<&str>| match v {
            // What `escape_default` leaves as it is: printable ASCII but for \\ ' and ".
            Some(v)
                if v.bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'\\' | b'\'' | b'"')) =>
            {
                out.push_str(v)
            }
            Some(v) => {
                let _ = write!(out, "{}", v.escape_default());
            }
            None => out.push('-'),
        };
        let _ = write!(out, "{} {} ", self.method, self.path);
        match self.status {
            Some(s) => {
                let _ = write!(out, "{s}");
            }
            None => out.push('-'),
        }
        out.push_str(" backend=");
        dash(&mut out, self.tries.last().map(|(b, _)| *b));
        let _ = write!(out, " tries={} client=", self.tries.len());
        dash(&mut out, self.client);
        out.push_str(" tokens=");
        match self.usage {
            Some(u) => {
                let _ = write!(out, "{}/{}", u.prompt, u.completion);
            }
            None => out.push('-'),
        }
        let _ = write!(out, " {}ms deployment=", self.duration.as_millis());
        dash(&mut out, self.deployment);
        out.push_str(" ttfb=");
        match self.first_byte {
            Some(d) => {
                let _ = write!(out, "{}ms", d.as_millis());
            }
            None => out.push('-'),
        }
        if !self.tries.is_empty() {
            out.push_str(" tried=");
            for (i, (backend, outcome)) in self.tries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(backend);
                out.push(':');
                out.push_str(TryLabel::of(*outcome).as_str());
            }
        }
        if let Some(w) = self.waited {
            let _ = write!(out, " wait={}ms", w.as_millis());
        }
        if let Some(f) = self.fallback {
            out.push_str(" fallback=");
            dash(&mut out, Some(f));
        }
        if let Some(usd) = self.cost_usd {
            let _ = write!(out, " cost=${usd:.6}");
        }
        if let Some(cache) = self.cache {
            let _ = write!(out, " cache={cache}");
        }
        if let Some(id) = self.trace_id {
            let _ = write!(out, " trace={id}");
        }
        if let Some(e) = &self.error {
            let _ = write!(out, " error={e}");
        }
        out
    }

    /// The line as one JSON object.
    pub fn json(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let line = JsonLine {
            time: format!("{:.3}", jiff::Timestamp::now()),
            client_addr: self.client_addr.map(|a| a.to_string()),
            client: self.client,
            method: self.method,
            path: self.path,
            deployment: self.deployment,
            status: self.status,
            tries: self.tries.len(),
            attempts: self
                .tries
                .iter()
                .map(|&(backend, outcome)| JsonAttempt {
                    backend,
                    outcome: TryLabel::of(outcome).as_str(),
                    status: match outcome {
                        Outcome::Status(s) => Some(s.as_u16()),
                        Outcome::Failed(_) => None,
                    },
                })
                .collect(),
            backend: self.tries.last().map(|(b, _)| *b),
            ttfb_ms: self.first_byte.map(ms),
            duration_ms: ms(self.duration),
            tokens: self.usage.map(|u| JsonTokens {
                prompt: u.prompt,
                completion: u.completion,
                cached: u.cached,
                reasoning: u.reasoning,
            }),
            wait_ms: self.waited.map(ms),
            fallback: self.fallback,
            cost_usd: self.cost_usd,
            cache: self.cache,
            trace_id: self.trace_id.map(|id| id.to_string()),
            error: self.error.as_deref(),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// A JSON access line (`log.format: json`): these names are the ones the README lists.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client_addr: Option<String>,
    client: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    deployment: Option<&'a str>,
    status: Option<u16>,
    tries: usize,
    attempts: Vec<JsonAttempt<'a>>,
    backend: Option<&'a str>,
    ttfb_ms: Option<f64>,
    duration_ms: f64,
    tokens: Option<JsonTokens>,
    /// Present only for a request that waited for capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_ms: Option<f64>,
    /// Present only for a request a fallback deployment answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<&'a str>,
    /// Present only for a cacheable request (`cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    /// Present only where the deployment has a price and usage was reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
    /// Present only with traces on.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonAttempt<'a> {
    backend: &'a str,
    outcome: &'static str,
    status: Option<u16>,
}

#[derive(Serialize)]
struct JsonTokens {
    prompt: u64,
    completion: u64,
    cached: Option<u64>,
    reasoning: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;
    use http::StatusCode;

    fn line() -> AccessLine<'static> {
        AccessLine {
            client_addr: Some(&"127.0.0.1:5000"),
            client: Some("team-a"),
            method: "POST",
            path: "/openai/deployments/gpt-4o/chat/completions",
            deployment: Some("gpt-4o"),
            status: Some(200),
            tries: smallvec::smallvec![
                ("east", Outcome::Status(StatusCode::TOO_MANY_REQUESTS)),
                ("west", Outcome::Failed(Failure::Connect)),
                ("north", Outcome::Status(StatusCode::OK)),
            ],
            first_byte: Some(Duration::from_millis(12)),
            duration: Duration::from_millis(41),
            usage: Some(Usage {
                prompt: 12,
                completion: 30,
                ..Usage::default()
            }),
            waited: None,
            fallback: None,
            cost_usd: None,
            cache: None,
            trace_id: None,
            error: None,
        }
    }

    #[test]
    fn text_keeps_its_old_fields_first_and_names_every_try() {
        assert_eq!(
            line().text(),
            "POST /openai/deployments/gpt-4o/chat/completions 200 backend=north tries=3 \
             client=team-a tokens=12/30 41ms deployment=gpt-4o ttfb=12ms \
             tried=east:429,west:connect,north:2xx"
        );
    }

    #[test]
    fn text_escapes_what_the_client_named() {
        let mut l = line();
        l.deployment = Some("gpt\n4o \\ \u{7f}");
        l.tries.clear();
        l.usage = None;
        l.status = None;
        assert_eq!(
            l.text(),
            "POST /openai/deployments/gpt-4o/chat/completions - backend=- tries=0 \
             client=team-a tokens=- 41ms deployment=gpt\\n4o \\\\ \\u{7f} ttfb=12ms"
        );
    }

    #[test]
    fn json_has_every_field() {
        let v: serde_json::Value = serde_json::from_str(&line().json()).unwrap();
        assert_eq!(v["client"], "team-a");
        assert_eq!(v["status"], 200);
        assert_eq!(v["tries"], 3);
        assert_eq!(v["attempts"][0]["backend"], "east");
        assert_eq!(v["attempts"][0]["status"], 429);
        assert_eq!(v["attempts"][1]["outcome"], "connect");
        assert_eq!(v["backend"], "north");
        assert_eq!(v["tokens"]["completion"], 30);
        assert_eq!(v["ttfb_ms"], 12.0);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("cache").is_none(), "only for a cacheable request");
    }

    #[test]
    fn a_cacheable_request_says_what_the_cache_did() {
        let mut l = line();
        l.cache = Some("semantic-hit");
        assert!(l.text().ends_with(" cache=semantic-hit"), "{}", l.text());
        let v: serde_json::Value = serde_json::from_str(&l.json()).unwrap();
        assert_eq!(v["cache"], "semantic-hit");
    }
}
