//! `aoai-proxy simulate`: the simulator as a process of its own, for benchmarks and for
//! developing against a local stand-in for Azure OpenAI.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use aoai_sim::{Backend, BackendOptions, Fault, IdentityEndpoint, Quota};

/// Options of `aoai-proxy simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Where a simulated Azure OpenAI backend listens; repeat for several.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// A backend here answers every request 429 (with `retry-after-ms`); repeat for several.
    #[arg(long = "throttled", value_name = "ADDR")]
    pub throttled: Vec<SocketAddr>,
    /// The `retry-after-ms` of the throttled backends.
    #[arg(long, default_value_t = 1000)]
    pub retry_after_ms: u64,
    /// Also run a simulated App Service managed identity endpoint here.
    #[arg(long, value_name = "ADDR")]
    pub identity: Option<SocketAddr>,
    /// The `x-identity-header` the identity endpoint expects.
    #[arg(long, default_value = "sim-identity-header")]
    pub identity_header: String,
    /// Size of the assistant's answer in bytes (words of the simulator's text, repeated).
    #[arg(long, default_value_t = 56)]
    pub answer_bytes: usize,
    /// Pause between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Every this many milliseconds, the next request to one of the `--listen` backends (each
    /// in turn) answers 429 with `retry-after-ms`; 0: never.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub throttle_every_ms: u64,
    /// Gives the `--listen` backend at ADDR a quota of TPM tokens a minute for each of its
    /// deployments, and Azure's 6 requests a minute per 1,000 of them: 429s with `retry-after`
    /// and `retry-after-ms` past it, `x-ratelimit-remaining-tokens`/`-requests` on every
    /// answer; repeat for several.
    #[arg(long = "quota", value_name = "ADDR=TPM")]
    pub quota: Vec<AddrTpm>,
    /// The same as `--quota` for a provisioned (PTU) deployment: answers carry
    /// `azure-openai-deployment-utilization` instead, and 429s carry `retry-after-ms` alone.
    #[arg(long = "provisioned", value_name = "ADDR=TPM")]
    pub provisioned: Vec<AddrTpm>,
    /// Backends with a `--quota` also send `x-ratelimit-limit-tokens` and `-requests`.
    #[arg(long)]
    pub limit_headers: bool,
    /// How long the `--listen` backends take before an inference answer's header (before the
    /// first chunk of a stream), in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,
    // Boxed: `aoai-proxy`'s command enum holds these arguments, and clippy wants its variants
    // of a like size.
    #[command(flatten)]
    pub refusals: Box<RefusalArgs>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// `--context-window` and `--blocked-phrase`: the prompts that the model of every simulated
/// backend refuses with a 400, as Azure does.
#[derive(clap::Args, Debug)]
pub struct RefusalArgs {
    /// Gives every simulated backend's model a context window of N tokens: a chat completion,
    /// completion or response estimated at more (its body's bytes over 4, rounded up, plus its
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`) answers Azure's 400
    /// `context_length_exceeded`, uncharged and at once, as a proxy's fallbacks expect.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub context_window: Option<u64>,
    /// Every simulated backend answers a chat completion, completion or response whose body
    /// holds TEXT (whatever its case) with the 400 `content_filter` of Azure's content filter,
    /// uncharged and at once.
    #[arg(long, value_name = "TEXT")]
    pub blocked_phrase: Option<String>,
}

impl RefusalArgs {
    /// What they refuse, for the line that announces a `--listen` backend.
    fn said(&self) -> String {
        let mut said = String::new();
        if let Some(n) = self.context_window {
            said.push_str(&format!(", a context window of {n} tokens"));
        }
        if let Some(phrase) = &self.blocked_phrase {
            said.push_str(&format!(", prompts with {phrase:?} filtered"));
        }
        said
    }
}

/// `ADDR=TPM` of `--quota` and `--provisioned`: a backend's address and its tokens a minute.
#[derive(Clone, Debug)]
pub struct AddrTpm {
    pub addr: SocketAddr,
    pub tpm: u64,
}

impl FromStr for AddrTpm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, tpm) = s
            .split_once('=')
            .ok_or("expected ADDR=TPM, e.g. 127.0.0.1:9001=30000")?;
        let addr = addr
            .parse()
            .map_err(|e| format!("'{addr}' is not an address like 127.0.0.1:9001 ({e})"))?;
        match tpm.parse::<u64>() {
            Ok(tpm) if tpm > 0 => Ok(AddrTpm { addr, tpm }),
            _ => Err(format!(
                "'{tpm}' is not a number of tokens a minute (a whole number above 0)"
            )),
        }
    }
}

/// The quota of each `--listen` backend that `--quota` or `--provisioned` names.
fn quotas(args: &SimulateArgs) -> Result<HashMap<SocketAddr, Quota>, String> {
    let standard = args.quota.iter().map(|q| ("--quota", q, false));
    let provisioned = args.provisioned.iter().map(|q| ("--provisioned", q, true));
    let mut quotas = HashMap::new();
    for (flag, AddrTpm { addr, tpm }, provisioned) in standard.chain(provisioned) {
        if !args.listen.contains(addr) {
            return Err(format!(
                "{flag} {addr}={tpm}: {addr} is not the address of a --listen backend"
            ));
        }
        let quota = Quota {
            provisioned,
            limit_headers: args.limit_headers,
            ..Quota::tokens_per_minute(*tpm)
        };
        if quotas.insert(*addr, quota).is_some() {
            return Err(format!("{flag} {addr}={tpm}: {addr} has a quota already"));
        }
    }
    Ok(quotas)
}

/// An answer of about `bytes` bytes.
fn answer(bytes: usize) -> String {
    let words = [
        "Hello!",
        "This",
        "answer",
        "comes",
        "from",
        "the",
        "aoai-proxy",
        "simulator.",
    ];
    let mut out = String::new();
    for w in words.iter().cycle() {
        if out.len() + w.len() + 1 > bytes.max(6) {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// Runs the simulators until Ctrl+C or SIGTERM.
pub fn run(args: SimulateArgs) -> Result<(), String> {
    if args.listen.is_empty() && args.throttled.is_empty() && args.identity.is_none() {
        return Err(
            "nothing to simulate: give --listen ADDR (and/or --throttled ADDR, --identity ADDR)"
                .into(),
        );
    }
    let quotas = quotas(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        // What `--throttled` backends always answer, and `--throttle-every-ms` now and then.
        let throttle = Fault::Status {
            status: 429,
            headers: vec![
                ("retry-after-ms".into(), args.retry_after_ms.to_string()),
                (
                    "retry-after".into(),
                    args.retry_after_ms.div_ceil(1000).to_string(),
                ),
            ],
        };
        let backends = start_backends(&args, &throttle, &quotas).await?;
        let _identity = match args.identity {
            Some(addr) => Some(start_identity(addr, &args.identity_header).await?),
            None => None,
        };
        let throttles = async {
            // The `--listen` backends come first.
            let listening = args.listen.len();
            if args.throttle_every_ms == 0 || listening == 0 {
                return std::future::pending().await;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(args.throttle_every_ms));
            tick.tick().await;
            for i in (0..listening).cycle() {
                tick.tick().await;
                backends[i].push_fault(throttle.clone());
            }
        };
        // Ctrl+C, or SIGTERM (`docker stop`, where it runs as the container's first process).
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            stopped = tokio::signal::ctrl_c() => stopped.map_err(|e| e.to_string())?,
            _ = term.recv() => {}
            () = throttles => {}
        }
        Ok(())
    })
}

/// The `--listen` backends (with their `quotas`), then the `--throttled` ones (which answer
/// `throttle`).
async fn start_backends(
    args: &SimulateArgs,
    throttle: &Fault,
    quotas: &HashMap<SocketAddr, Quota>,
) -> Result<Vec<Backend>, String> {
    let mut started = Vec::new();
    for (i, addr) in args.listen.iter().enumerate() {
        let quota = quotas.get(addr).copied();
        let options = BackendOptions {
            name: format!("sim-{i}"),
            answer: answer(args.answer_bytes),
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            latency: Duration::from_millis(args.latency_ms),
            quota,
            context_window: args.refusals.context_window,
            blocked_phrase: args.refusals.blocked_phrase.clone(),
            ..Default::default()
        };
        let b = Backend::start_on(*addr, options)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let limits = match quota {
            None => String::new(),
            Some(q) => format!(
                ", {} tokens and {} requests a minute per deployment{}",
                q.tokens_per_minute,
                q.requests_per_minute,
                if q.provisioned { " (provisioned)" } else { "" },
            ),
        };
        println!(
            "simulated Azure OpenAI backend sim-{i} at {}{limits}{}",
            b.url(),
            args.refusals.said(),
        );
        started.push(b);
    }
    for addr in &args.throttled {
        let options = BackendOptions {
            name: format!("throttled-{}", addr.port()),
            context_window: args.refusals.context_window,
            blocked_phrase: args.refusals.blocked_phrase.clone(),
            ..Default::default()
        };
        let b = Backend::start_on(*addr, options)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        b.set_fault(Some(throttle.clone()));
        println!(
            "simulated Azure OpenAI backend answering 429 at {}",
            b.url()
        );
        started.push(b);
    }
    Ok(started)
}

/// The simulated managed identity endpoint on `addr`.
async fn start_identity(addr: SocketAddr, header: &str) -> Result<IdentityEndpoint, String> {
    let id = IdentityEndpoint::start_on(addr, header, Duration::from_secs(24 * 3600))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    println!(
        "simulated managed identity: IDENTITY_ENDPOINT={} IDENTITY_HEADER={header}",
        id.endpoint(),
    );
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `aoai-proxy simulate`'s arguments alone.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(line: &str) -> Result<SimulateArgs, String> {
        let words = std::iter::once("simulate").chain(line.split_whitespace());
        Cli::try_parse_from(words)
            .map(|cli| cli.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn quotas_go_to_their_listen_backends() {
        let args = parse(
            "--listen 127.0.0.1:9001 --listen 127.0.0.1:9002 --quota 127.0.0.1:9001=30000 \
             --provisioned 127.0.0.1:9002=1000 --limit-headers --latency-ms 250",
        )
        .unwrap();
        assert_eq!(args.latency_ms, 250);
        let quotas = quotas(&args).unwrap();
        let standard = quotas[&"127.0.0.1:9001".parse().unwrap()];
        assert_eq!(
            (standard.tokens_per_minute, standard.requests_per_minute),
            (30_000, 180)
        );
        assert!(!standard.provisioned && standard.limit_headers);
        assert!(quotas[&"127.0.0.1:9002".parse().unwrap()].provisioned);
    }

    #[test]
    fn the_refusal_flags_are_read_and_a_window_is_at_least_a_token() {
        let args = parse("--listen 127.0.0.1:9001").unwrap();
        assert_eq!(
            (
                args.refusals.context_window,
                args.refusals.blocked_phrase.as_deref()
            ),
            (None, None)
        );
        assert_eq!(args.refusals.said(), "");
        let args = parse("--context-window 8192 --blocked-phrase forbidden").unwrap();
        assert_eq!(args.refusals.context_window, Some(8_192));
        assert_eq!(args.refusals.blocked_phrase.as_deref(), Some("forbidden"));
        assert_eq!(
            args.refusals.said(),
            ", a context window of 8192 tokens, prompts with \"forbidden\" filtered"
        );
        let error = parse("--context-window 0").unwrap_err();
        assert!(error.contains("--context-window"), "{error}");
    }

    #[test]
    fn a_bad_quota_is_an_error_that_names_its_flag() {
        for (line, says) in [
            ("--quota 127.0.0.1:9001", "ADDR=TPM"),
            (
                "--quota localhost:9001=5",
                "'localhost:9001' is not an address",
            ),
            (
                "--provisioned 127.0.0.1:9001=0",
                "'0' is not a number of tokens",
            ),
            (
                "--quota 127.0.0.1:9001=many",
                "'many' is not a number of tokens",
            ),
            ("--latency-ms soon", "soon"),
        ] {
            let error = parse(line).unwrap_err();
            let flag = line.split_whitespace().next().unwrap();
            assert!(error.contains(flag), "{line}: {error}");
            assert!(error.contains(says), "{line}: {error}");
        }
        let not_listening = parse("--listen 127.0.0.1:9001 --quota 127.0.0.1:9002=100").unwrap();
        let error = quotas(&not_listening).unwrap_err();
        assert!(error.starts_with("--quota 127.0.0.1:9002=100: "), "{error}");
        let twice = parse(
            "--listen 127.0.0.1:9001 --quota 127.0.0.1:9001=100 --provisioned 127.0.0.1:9001=100",
        )
        .unwrap();
        let error = quotas(&twice).unwrap_err();
        assert!(
            error.starts_with("--provisioned 127.0.0.1:9001=100: "),
            "{error}"
        );
    }
}
