//! `wayplug record`: arms a running waypoint's recorder through its admin
//! listener, waits for the requests, and writes them as a suite.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::admin::record::Recorded;
use crate::testing::recorded::suite_yaml;

/// How often the recorder is asked how far it got.
const POLL: Duration = Duration::from_millis(200);
/// One admin request's budget.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Records live requests and their decisions into a suite file.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The waypoint's admin listener.
    #[arg(long)]
    pub admin: SocketAddr,
    /// The suite file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Requests to record (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Seconds to wait for them.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The waypoint config the suite names, as the suite file will reach it
    /// (relative to the suite file's folder, or absolute).
    #[arg(long)]
    pub config: String,
    /// Requests recorded per second at most.
    #[arg(long, default_value_t = crate::admin::record::DEFAULT_PER_SECOND)]
    pub per_second: u32,
    /// Keep only these headers (comma-separated); default: all.
    #[arg(long)]
    pub headers: Option<String>,
    /// Redact these headers' values too (comma-separated), besides
    /// authorization, cookie, set-cookie, proxy-authorization, x-api-key...
    #[arg(long)]
    pub redact: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    armed: bool,
    recorded: Vec<Recorded>,
}

async fn call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    admin: SocketAddr,
    method: Method,
    path_and_query: &str,
) -> anyhow::Result<Status> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path_and_query}"))
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(ADMIN_TIMEOUT, client.request(req))
        .await
        .with_context(|| format!("admin listener {admin} did not answer in {ADMIN_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach the admin listener {admin}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(ADMIN_TIMEOUT, resp.into_body().collect())
        .await
        .context("admin answer body timed out")??
        .to_bytes();
    if !status.is_success() {
        bail!(
            "admin listener answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body)
        .context("admin listener's /record answer is not what wayplug record expects")
}

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut query = format!(
        "/record/start?count={}&perSecond={}&seconds={}",
        args.count,
        args.per_second,
        args.timeout.clamp(1, 3600)
    );
    if let Some(h) = &args.headers {
        query.push_str(&format!("&headers={h}"));
    }
    if let Some(r) = &args.redact {
        query.push_str(&format!("&redact={r}"));
    }
    call(&client, args.admin, Method::POST, &query).await?;
    eprintln!("recording up to {} requests at {}", args.count, args.admin);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let status = call(&client, args.admin, Method::GET, "/record").await?;
        if !status.armed || status.recorded.len() >= args.count || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let kept = call(&client, args.admin, Method::POST, "/record/stop")
        .await?
        .recorded;
    let name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recorded".into());
    let yaml = suite_yaml(&name, &args.config, &kept).map_err(anyhow::Error::msg)?;
    std::fs::write(&args.out, yaml)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("{} requests written to {}", kept.len(), args.out.display());
    if kept.len() < args.count {
        bail!(
            "only {} of {} requests arrived within {} s; they were written",
            kept.len(),
            args.count,
            args.timeout
        );
    }
    Ok(())
}
