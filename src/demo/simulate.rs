//! `aoai-proxy simulate`: the simulator as a process of its own, for benchmarks and for
//! developing against a local stand-in for Azure OpenAI.

use std::net::SocketAddr;
use std::time::Duration;

use aoai_sim::{Backend, BackendOptions, Fault, IdentityEndpoint};

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
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
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
        let backends = start_backends(&args, &throttle).await?;
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

/// The `--listen` backends, then the `--throttled` ones (which answer `throttle`).
async fn start_backends(args: &SimulateArgs, throttle: &Fault) -> Result<Vec<Backend>, String> {
    let mut started = Vec::new();
    for (i, addr) in args.listen.iter().enumerate() {
        let options = BackendOptions {
            name: format!("sim-{i}"),
            answer: answer(args.answer_bytes),
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            ..Default::default()
        };
        let b = Backend::start_on(*addr, options)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        println!("simulated Azure OpenAI backend sim-{i} at {}", b.url());
        started.push(b);
    }
    for addr in &args.throttled {
        let options = BackendOptions {
            name: format!("throttled-{}", addr.port()),
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
