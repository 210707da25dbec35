//! The plaintext L7 listener: HTTP/1.1 and h2c (prior knowledge) on one
//! port, each connection served by hyper and each request handed to the
//! pipeline.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{ConnInfo, Pipeline};

/// Accepts connections until `shutdown` turns true, then stops accepting
/// and lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
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
        let _ = stream.set_nodelay(true);
        let pipeline = pipeline.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = ConnInfo {
                source,
                local,
                peer: None,
                destination: None,
            };
            let service = service_fn(move |req| {
                let pipeline = pipeline.clone();
                let conn = conn.clone();
                async move { pipeline.handle(req, &conn).await }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // WebSocket over HTTP/2 (RFC 8441) needs the extended CONNECT setting.
            builder.http2().enable_connect_protocol();
            let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(served);
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%source, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.changed() => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
        });
    }
}
