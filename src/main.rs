//! The `aoai-proxy` command: run the proxy, check a configuration, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use aoai_proxy::config::Config;
use aoai_proxy::server::Process;

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
    #[cfg(feature = "sim")]
    Demo(aoai_proxy::demo::DemoArgs),
    /// Run only the simulated backends (and identity endpoint), for benchmarks and local development.
    #[cfg(feature = "sim")]
    Simulate(aoai_proxy::demo::simulate::SimulateArgs),
    /// Check an admin endpoint (for a container's HEALTHCHECK, where there is no curl): exit 0
    /// when it answers 2xx, 1 otherwise.
    Health(aoai_proxy::health_command::HealthArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora=warn"),
    )
    .format(|out, record| {
        use std::io::Write;
        // JSON access lines stand alone: one object a line, with its own time.
        if record.target() == aoai_proxy::proxy::ACCESS_JSON_TARGET {
            return writeln!(out, "{}", record.args());
        }
        writeln!(
            out,
            "[{} {:<5} {}] {}",
            out.timestamp(),
            record.level(),
            record.target(),
            record.args()
        )
    })
    .target(env_logger::Target::Pipe(Box::new(
        aoai_proxy::logging::target(),
    )))
    .init();
    let cli = Cli::parse();
    let code = match cli.command {
        #[cfg(feature = "sim")]
        Some(Command::Demo(args)) => {
            aoai_proxy::demo::run(args).unwrap_or_else(|e| failed("demo", &e))
        }
        #[cfg(feature = "sim")]
        Some(Command::Simulate(args)) => match aoai_proxy::demo::simulate::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failed("simulate", &e),
        },
        Some(Command::Health(args)) => aoai_proxy::health_command::run(&args),
        None => serve(cli.config, cli.test),
    };
    aoai_proxy::logging::flush();
    code
}

/// Checks the configuration at `path` and, unless only `test`ing, serves with it.
fn serve(path: Option<PathBuf>, test: bool) -> ExitCode {
    let Some(path) = path else {
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
    let process = match Process::build(&config) {
        Ok(process) => process,
        Err(e) => {
            eprintln!("{}", e.report(&path));
            return ExitCode::FAILURE;
        }
    };
    if test {
        println!("{}: the configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    match process.listen() {
        Ok(process) => process.reload_from(&path).run(),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "sim")]
fn failed(command: &str, e: &str) -> ExitCode {
    eprintln!("aoai-proxy {command}: {e}");
    ExitCode::FAILURE
}
