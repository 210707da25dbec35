#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug::demo;
use wayplug::hbone;
use wayplug::tls::{CertStore, Connector, DevCa, SpiffeId};

#[derive(Parser)]
#[command(
    name = "wayplug",
    version,
    about = "A waypoint proxy that runs WebAssembly policy plugins per namespace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the waypoint. Without --config, runs the embedded demo.
    Run {
        /// Config file (YAML). Changes to it are applied while running.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspects and changes a running waypoint's plugins through its admin API.
    Ctl(wayplug::ctl::CtlArgs),
    /// Development certificates in Istio's file layout, for tests and demos.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Forwards a local TCP port through HBONE tunnels to a waypoint, as ztunnel would: each
    /// connection to --listen becomes a CONNECT to --to over mTLS.
    Tunnel {
        /// Local address to accept connections on.
        #[arg(long)]
        listen: SocketAddr,
        /// The waypoint's HBONE listener.
        #[arg(long)]
        waypoint: SocketAddr,
        /// What each tunnel asks for: a service VIP or workload address, as ip:port.
        #[arg(long)]
        to: SocketAddr,
        /// Directory with our identity (cert-chain.pem, key.pem, root-cert.pem).
        #[arg(long)]
        identity: PathBuf,
        /// The waypoint's SPIFFE id, e.g. spiffe://cluster.local/ns/demo/sa/waypoint.
        #[arg(long)]
        expect: SpiffeId,
    },
    /// Runs policy suites offline through the proxy's own pipeline.
    Test(wayplug::cli::TestArgs),
    /// Loads a config as `run` would (every plugin compiled and configured) and reports, without
    /// serving; with --cache-dir, fills the compiled-plugin cache for later starts.
    Check(wayplug::cli::CheckArgs),
    /// Records live requests and their decisions into a suite file.
    Record(wayplug::cli::RecordArgs),
    /// Creates a plugin crate that builds and passes its suite.
    New(wayplug::cli::NewArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Creates a development CA (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    Ca {
        /// Directory to write the CA to.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issues a workload certificate from a CA made by `certs ca`, written as Istio mounts
    /// it: cert-chain.pem, key.pem, root-cert.pem.
    Issue {
        /// Directory of the CA.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// Directory to write the workload identity to.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 24)]
        validity_hours: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Errors here are the operator's to fix (a bad config, a busy port):
    // print the chain of causes, not a backtrace.
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already quote their cause; add only causes not yet
            // said (anyhow context layers).
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg = format!("{msg}: {cause}");
                }
            }
            eprintln!("error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Test(a) => return wayplug::cli::run(wayplug::cli::Tool::Test(a)),
        Command::Record(a) => return wayplug::cli::run(wayplug::cli::Tool::Record(a)),
        Command::Check(a) => return wayplug::cli::run(wayplug::cli::Tool::Check(a)),
        Command::New(a) => return wayplug::cli::run(wayplug::cli::Tool::New(a)),
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colour only for a person at a terminal: escape codes in a file or
        // a log collector are noise.
        tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Run { config: None } => run_demo().await,
            Command::Run { config: Some(path) } => run_config(path).await,
            Command::Ctl(args) => {
                println!("{}", wayplug::ctl::run(args).await?.trim_end());
                Ok(())
            }
            Command::Certs { command } => certs(command),
            Command::Tunnel {
                listen,
                waypoint,
                to,
                identity,
                expect,
            } => tunnel(listen, waypoint, to, identity, expect).await,
            Command::Test(_) | Command::Record(_) | Command::New(_) | Command::Check(_) => {
                unreachable!("handled above")
            }
        }
    })
}

async fn run_demo() -> anyhow::Result<()> {
    let echo = demo::start_echo()
        .await
        .context("starting the demo upstream")?;
    let certs_dir = std::env::temp_dir().join(format!("wayplug-demo-{}", std::process::id()));
    let certs = demo::write_certs(&certs_dir).context("writing the demo's certificates")?;
    let store = demo::StoreBackends::start()
        .await
        .context("starting the demo's store backends")?;
    let policies = demo::write_policies(&certs_dir).context("writing the demo's policies")?;
    let config = demo::config(echo, store, &certs, &policies)?;
    let waypoint = Waypoint::start(config, demo::builtins()).await?;
    let http = waypoint
        .http_addr
        .context("the demo has an HTTP listener")?;
    println!("{}", demo::instructions(http, waypoint.admin_addr));
    if let Some(hbone) = waypoint.hbone_addr {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "wayplug".into());
        println!("{}", demo::hbone_instructions(hbone, &certs, &exe));
    }
    wait_for_signal().await;
    waypoint.shutdown().await;
    let _ = std::fs::remove_dir_all(&certs_dir);
    Ok(())
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca { out, trust_domain } => {
            DevCa::generate(&trust_domain)?.save(&out)?;
            println!(
                "development CA for trust domain {trust_domain} written to {}",
                out.display()
            );
        }
        CertsCommand::Issue {
            ca,
            namespace,
            service_account,
            out,
            validity_hours,
        } => {
            let ca = DevCa::load(&ca).with_context(|| {
                format!(
                    "loading the CA in {} (made by `wayplug certs ca`)",
                    ca.display()
                )
            })?;
            let id = SpiffeId::new(ca.trust_domain(), &namespace, &service_account)?;
            ca.issue(
                &namespace,
                &service_account,
                Duration::from_secs(validity_hours * 3600),
            )?
            .write_to(&out)?;
            println!(
                "{id} (valid {validity_hours} h) written to {} as cert-chain.pem, key.pem, root-cert.pem",
                out.display()
            );
        }
    }
    Ok(())
}

async fn tunnel(
    listen: SocketAddr,
    waypoint: SocketAddr,
    to: SocketAddr,
    identity: PathBuf,
    expect: SpiffeId,
) -> anyhow::Result<()> {
    let store = CertStore::load(&identity)?;
    let _watcher = store.spawn_watcher(wayplug::tls::DEFAULT_RELOAD_INTERVAL);
    let client = hbone::Client::new(
        Connector::new(store.clone()),
        hbone::ClientSettings {
            connect_timeout: Duration::from_secs(5),
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            destination_port: waypoint.port(),
        },
    );
    let target = hbone::Target {
        dial: waypoint,
        authority: to,
        identity: expect,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "forwarding {listen} -> HBONE {waypoint} (as {}) -> {to}",
        store.identity()
    );
    tokio::select! {
        r = hbone::forward::forward(listener, Arc::new(client), target) => r?,
        _ = wait_for_signal() => {}
    }
    Ok(())
}

async fn run_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let waypoint = Waypoint::start(config, demo::builtins()).await?;
    tracing::info!(http = ?waypoint.http_addr, admin = ?waypoint.admin_addr, hbone = ?waypoint.hbone_addr, config = %path.display(), "waypoint running");
    waypoint
        .follow_config(&path, Duration::from_secs(2), wait_for_signal())
        .await;
    waypoint.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    tracing::info!("shutting down");
}
