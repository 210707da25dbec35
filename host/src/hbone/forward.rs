//! A local TCP port whose every connection becomes an HBONE tunnel to one target: the
//! outbound half of a ztunnel, reduced to what it takes to drive a waypoint by hand
//! (`wayplug tunnel`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use tokio::net::TcpListener;

use super::{Client, FORWARDED, TRACEPARENT, Target};

/// Serves `listener` until it fails. Each connection gets its own tunnel, carrying a fresh
/// `traceparent` and `forwarded: for="<client address>"` as ztunnel sends them.
pub async fn forward(listener: TcpListener, client: Arc<Client>, target: Target) -> io::Result<()> {
    loop {
        let (mut tcp, source) = listener.accept().await?;
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let headers = context(source);
            match client.connect(&target, &headers).await {
                Ok(mut tunnel) => {
                    match tokio::io::copy_bidirectional(&mut tcp, &mut tunnel).await {
                        Ok((sent, received)) => tracing::info!(
                            %source, to = %target.authority, sent, received, "tunnel closed"
                        ),
                        Err(e) => tracing::info!(%source, error = %e, "tunnel failed"),
                    }
                }
                Err(e) => tracing::warn!(%source, error = %e, "cannot open tunnel"),
            }
        });
    }
}

fn context(source: SocketAddr) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut ids = [0u8; 24];
    if getrandom::fill(&mut ids).is_ok() {
        let traceparent = format!(
            "00-{}-{}-01",
            hex::encode(&ids[..16]),
            hex::encode(&ids[16..])
        );
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("for=\"{source}\"")) {
        headers.insert(FORWARDED, v);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_headers_are_well_formed() {
        let h = context("10.1.0.5:41000".parse().unwrap());
        let tp = h[TRACEPARENT].to_str().unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_eq!(h[FORWARDED], "for=\"10.1.0.5:41000\"");
    }
}
