//! The `aoai-proxy` command: run the proxy, check a configuration, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use aoai_proxy::config::Config;

/// One endpoint in front of many Azure OpenAI instances.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The YAML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration (and the files it names), then exit: 0 when it is valid.
    #[arg(short, long, requires = "config")]
    test: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run simulated Azure OpenAI backends, a simulated Entra ID endpoint and the proxy on 127.0.0.1.
    Demo(aoai_proxy::demo::DemoArgs),
    /// Run only the simulated backends (and identity endpoint), for benchmarks and local development.
    Simulate(aoai_proxy::simulate::SimulateArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora=warn"),
    )
    .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Demo(args)) => Some(("demo", aoai_proxy::demo::run(args))),
        Some(Command::Simulate(args)) => Some(("simulate", aoai_proxy::simulate::run(args))),
        None => None,
    };
    if let Some((name, result)) = outcome {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aoai-proxy {name}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = cli.config else {
        eprintln!("aoai-proxy: give a configuration with --config FILE (or try `aoai-proxy demo`)");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = config.check_files();
    if !problems.is_empty() {
        let e = aoai_proxy::config::ConfigError {
            file: path,
            problems,
        };
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    // What start-up would build, without the network: the credential and the backend pool.
    if let Err(e) =
        aoai_proxy::token::CredentialSource::new(&config.auth, config.upstream_ca_file.as_deref())
    {
        eprintln!("{}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if let Err(e) = aoai_proxy::pool::Pool::new(&config) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if cli.test {
        println!("{}: the configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    match aoai_proxy::server::build(&config) {
        Ok(proxy) => proxy.run_forever(),
        Err(e) => {
            eprintln!("aoai-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
