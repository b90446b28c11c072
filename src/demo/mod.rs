//! The commands that run the simulator (the `aoai-sim` crate) rather than serve real traffic:
//! `aoai-proxy demo` — two simulated Azure OpenAI backends, a simulated managed identity
//! endpoint and the proxy in front, all on 127.0.0.1, with a `curl` line and an `openai` SDK
//! line that work as printed — and `aoai-proxy simulate` ([`simulate`]).

pub mod simulate;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aoai_sim::{Backend, BackendOptions, IdentityEndpoint};

use crate::config::Config;
use crate::server::Process;

/// Options of `aoai-proxy demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The proxy's port on 127.0.0.1 (the admin endpoint takes the next one); 0 picks free
    /// ports for both, and the lines printed name them.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

/// The key clients of the demo use.
const DEMO_KEY: &str = "demo-key";

/// The `x-identity-header` secret of the demo's identity endpoint.
const IDENTITY_HEADER: &str = "demo-identity-header";

/// Starts the simulators, prints how to call the proxy, and runs the proxy until Ctrl+C.
///
/// Call it before any other thread starts: the managed identity credential finds the
/// (simulated) App Service endpoint in the environment, exactly as on Azure App Service, and
/// the environment is set here, while this is the only thread. Nothing is ever sent to the
/// instance metadata service.
pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    let identity_listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let identity_addr = identity_listener.local_addr().map_err(|e| e.to_string())?;
    std::env::set_var(
        "IDENTITY_ENDPOINT",
        format!("http://{identity_addr}/msi/token"),
    );
    std::env::set_var("IDENTITY_HEADER", IDENTITY_HEADER);

    let urls = start_simulators(identity_listener)?;

    let listen = SocketAddr::from(([127, 0, 0, 1], args.port));
    let admin_port = if args.port == 0 {
        0
    } else {
        args.port.wrapping_add(1)
    };
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let yaml = format!(
        "listen: [\"{listen}\"]\nadmin: {{listen: \"{admin}\"}}\nauth: {{kind: managed_identity}}\n\
         backends:\n  - {{url: \"{}\", name: eastus-sim}}\n  - {{url: \"{}\", name: westus-sim}}\n\
         clients:\n  - {{name: demo, key: {DEMO_KEY}, token_quota: {{tokens: 1000000, per: day}}}}\n\
         prices:\n  gpt-4o: {{input: 2.50, output: 10.00, cached_input: 1.25}}\n",
        urls[0], urls[1]
    );
    let config = Config::from_yaml(&yaml).map_err(|p| format!("demo configuration: {p:?}"))?;
    let process = Process::build(&config).map_err(|e| e.to_string())?;
    let process = process
        .listen()
        .map_err(|e| format!("cannot listen: {e} (try --port)"))?;
    let (listen, admin) = match process.listening() {
        (Some(listen), Some(admin)) => (listen, admin),
        _ => return Err("the proxy has no listener".into()),
    };

    std::thread::spawn(move || {
        if wait_ready(admin, Duration::from_secs(30)) {
            print_instructions(listen, admin);
        } else {
            eprintln!("the proxy did not become ready within 30 s: see the log above");
        }
    });
    Ok(process.run())
}

/// Starts the simulated identity endpoint (on `identity_listener`) and two backends, on a thread
/// of their own for the life of the process; the backends' URLs.
fn start_simulators(identity_listener: TcpListener) -> Result<Vec<String>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
        };
        rt.block_on(async move {
            let started = async {
                let identity = IdentityEndpoint::start_on(
                    identity_listener,
                    IDENTITY_HEADER,
                    Duration::from_secs(24 * 3600),
                )
                .await?;
                let mut backends = Vec::new();
                for name in ["eastus-sim", "westus-sim"] {
                    let options = BackendOptions {
                        name: name.into(),
                        chunk_delay: Duration::from_millis(40),
                        ..Default::default()
                    };
                    backends.push(Backend::start(options).await?);
                }
                Ok::<_, std::io::Error>((identity, backends))
            };
            match started.await {
                Ok((identity, backends)) => {
                    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
                    let _ = tx.send(Ok(urls));
                    // Keep the simulators alive for the life of the process.
                    let _keep = (identity, backends);
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the simulators: {e}")));
                }
            }
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

/// Polls `/readyz` until it answers 200.
fn wait_ready(admin: SocketAddr, within: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(admin) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn print_instructions(listen: SocketAddr, admin: SocketAddr) {
    let base = format!("http://{listen}");
    println!(
        r#"
aoai-proxy demo is running: two simulated Azure OpenAI backends behind the proxy, with a token
from a simulated managed identity endpoint. Ctrl+C stops it.

  curl (non-streaming):
    curl -s '{base}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21' -H 'api-key: {DEMO_KEY}' -H 'content-type: application/json' -d '{{"messages":[{{"role":"user","content":"Hello"}}]}}'

  curl (streaming):
    curl -sN '{base}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21' -H 'api-key: {DEMO_KEY}' -H 'content-type: application/json' -d '{{"stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

  openai Python SDK (pip install openai):
    python3 -c 'from openai import AzureOpenAI; c = AzureOpenAI(azure_endpoint="{base}", api_key="{DEMO_KEY}", api_version="2024-10-21"); print(c.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)'

  metrics and readiness:
    curl -s http://{admin}/metrics
"#
    );
}
