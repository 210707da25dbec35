//! `wayplug ctl`: the admin API from the command line.
//!
//! Each subcommand is one request to the admin listener; the answer's JSON
//! is printed, and a refused change exits non-zero with the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// How long one request may take (a change compiles plugins: seconds).
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin listener at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("no answer from {addr} within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("--config is not JSON: {0}")]
    Config(String),
    #[error("{status}: {reason}")]
    Refused { status: u16, reason: String },
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The waypoint's admin listener.
    #[arg(long, default_value = "127.0.0.1:15000", global = true)]
    admin: SocketAddr,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Lists every namespace's chain (or one namespace's).
    List { namespace: Option<String> },
    /// Prints the live configuration and chains (`/config_dump`).
    Dump,
    /// Adds or replaces one plugin entry.
    Put {
        namespace: String,
        name: String,
        /// Plugin bytes to upload (sent base64; the entry is pinned to their sha256).
        #[arg(long, conflicts_with = "url")]
        file: Option<PathBuf>,
        /// A plugin URL the waypoint reads itself (file://, builtin://).
        #[arg(long)]
        url: Option<String>,
        /// Further fields of the entry, as JSON (phase, pluginConfig, sha256, ...).
        #[arg(long)]
        config: Option<String>,
    },
    /// Removes one plugin entry.
    Delete { namespace: String, name: String },
    /// Replaces a namespace's chain with the entries of a JSON file
    /// (`{"plugins": [...]}`).
    PutNamespace { namespace: String, file: PathBuf },
    /// Removes a namespace's chain.
    DeleteNamespace { namespace: String },
}

/// Runs one subcommand; the answer's body on success.
pub async fn run(args: CtlArgs) -> Result<String, CtlError> {
    let (method, path, body) = match args.command {
        CtlCommand::List { namespace } => (
            Method::GET,
            match namespace {
                Some(ns) => format!("/api/namespaces/{ns}"),
                None => "/api/namespaces".into(),
            },
            None,
        ),
        CtlCommand::Dump => (Method::GET, "/config_dump".into(), None),
        CtlCommand::Put {
            namespace,
            name,
            file,
            url,
            config,
        } => {
            let mut entry = match config {
                Some(text) => serde_json::from_str::<Value>(&text)
                    .map_err(|e| CtlError::Config(e.to_string()))?,
                None => json!({}),
            };
            if let Some(url) = url {
                entry["url"] = Value::String(url);
            }
            if let Some(path) = file {
                let bytes = std::fs::read(&path).map_err(|e| CtlError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                entry["wasm"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            (
                Method::PUT,
                format!("/api/namespaces/{namespace}/plugins/{name}"),
                Some(entry.to_string()),
            )
        }
        CtlCommand::Delete { namespace, name } => (
            Method::DELETE,
            format!("/api/namespaces/{namespace}/plugins/{name}"),
            None,
        ),
        CtlCommand::PutNamespace { namespace, file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| CtlError::Read {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            (
                Method::PUT,
                format!("/api/namespaces/{namespace}"),
                Some(text),
            )
        }
        CtlCommand::DeleteNamespace { namespace } => {
            (Method::DELETE, format!("/api/namespaces/{namespace}"), None)
        }
    };
    let addr = args.admin;
    let (status, text) = tokio::time::timeout(TIMEOUT, request(addr, method, &path, body))
        .await
        .map_err(|_| CtlError::Timeout { addr })??;
    if status >= 400 {
        let reason = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(CtlError::Refused { status, reason });
    }
    Ok(text)
}

async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, String), CtlError> {
    let connect = |e: &dyn std::fmt::Display| CtlError::Connect {
        addr,
        reason: e.to_string(),
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| connect(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect(&e))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| connect(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| connect(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| connect(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
