//! The plaintext L7 listener: HTTP/1.1 and h2c (prior knowledge) on one
//! port, each connection served by hyper and each request handed to the
//! pipeline.
//!
//! There is no L4 path here: every byte goes to hyper, so a client cannot step around the
//! plugins by sending something other than HTTP (it is answered 400 or closed, and counted as
//! `not_http`). Connections live under `limits:` (see [`crate::downstream`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{ConnInfo, Pipeline};
use crate::config::LimitsConfig;
use crate::downstream::{self, ConnectionLimit, End, Mode};

/// Accepts connections until `shutdown` turns true, then stops accepting
/// and lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    limits: LimitsConfig,
    cap: Arc<ConnectionLimit>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let limits = Arc::new(limits);
    loop {
        let (stream, source) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(admitted) = cap.admit(source) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let pipeline = pipeline.clone();
        let mut shutdown = shutdown.clone();
        let (limits, cap) = (limits.clone(), cap.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            let conn = Arc::new(ConnInfo {
                source,
                local,
                peer: None,
                destination: None,
            });
            let handle = move |req| {
                let pipeline = pipeline.clone();
                let conn = conn.clone();
                async move { pipeline.handle(req, &conn).await }
            };
            let stop = async move {
                let _ = shutdown.changed().await;
            };
            let served = downstream::serve_http(
                stream,
                Mode::Auto,
                &limits,
                handle,
                stop,
                std::future::pending(),
            )
            .await;
            if let Some(reason) = served.end.reason() {
                cap.metrics().closed(cap.listener(), reason);
            }
            match &served.end {
                End::NotHttp(e) => tracing::info!(
                    target: "wayplug::access",
                    %source,
                    error = %e,
                    "connection closed: its bytes are not HTTP"
                ),
                End::Failed(e) => {
                    tracing::debug!(%source, error = %e, "connection ended with an error")
                }
                other => {
                    if let Some(reason) = other.reason() {
                        tracing::debug!(%source, reason, "connection closed by a limit");
                    }
                }
            }
        });
    }
}
