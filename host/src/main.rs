use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use wayplug::app::Waypoint;
use wayplug::config::Config;
use wayplug::demo;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Run { config: None } => run_demo().await,
            Command::Run { config: Some(path) } => run_config(path).await,
        }
    })
}

async fn run_demo() -> anyhow::Result<()> {
    let echo = demo::start_echo()
        .await
        .context("starting the demo upstream")?;
    let config = demo::config(echo)?;
    let waypoint = Waypoint::start(config, demo::builtins()).await?;
    let http = waypoint
        .http_addr
        .context("the demo has an HTTP listener")?;
    println!("{}", demo::instructions(http, waypoint.admin_addr));
    wait_for_signal().await;
    waypoint.shutdown().await;
    Ok(())
}

async fn run_config(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let waypoint = Waypoint::start(config, demo::builtins()).await?;
    tracing::info!(http = ?waypoint.http_addr, admin = ?waypoint.admin_addr, config = %path.display(), "waypoint running");
    let mut seen = modified(&path);
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = poll.tick() => {
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                // A bad file never replaces the running config.
                match Config::load(&path) {
                    Err(e) => tracing::error!(error = %e, "config change rejected; keeping the running config"),
                    Ok(c) => match waypoint.reload(c).await {
                        Ok(()) => tracing::info!(config = %path.display(), "config applied"),
                        Err(e) => tracing::error!(error = %e, "config change rejected; keeping the running config"),
                    },
                }
            }
        }
    }
    waypoint.shutdown().await;
    Ok(())
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    tracing::info!("shutting down");
}
