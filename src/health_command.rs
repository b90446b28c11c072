//! `aoai-proxy health --url URL`: one GET, exit 0 on a 2xx. A container's `HEALTHCHECK` runs
//! it, so the runtime image needs no shell and no curl.

use std::process::ExitCode;
use std::time::Duration;

/// Options of `aoai-proxy health`.
#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// The endpoint to check.
    #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// Checks `args.url`; prints what it found.
pub fn run(args: &HealthArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aoai-proxy health: {e}");
            return ExitCode::FAILURE;
        }
    };
    let check = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout.max(1)))
            .build()?;
        let status = client.get(&args.url).send().await?.status();
        Ok::<_, reqwest::Error>(status)
    };
    match rt.block_on(check) {
        Ok(status) if status.is_success() => {
            println!("{}: {status}", args.url);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{}: {status}", args.url);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}
