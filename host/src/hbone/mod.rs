//! HBONE: HTTP/2 CONNECT tunnels inside mutual TLS, as ztunnel speaks them.
//!
//! - [`server`]: the listener ztunnels send a service's traffic to. Each CONNECT stream names
//!   `ip:port` (a service VIP or a workload address). Everything that can fail is done before
//!   answering 200 (resolve, authorize, open the upstream connection); then the stream is either
//!   served as HTTP through the namespace's plugin chain or relayed byte for byte, as the
//!   service port's configured protocol says.
//! - [`client`]: the onward hop to endpoints whose workload speaks HBONE, with a pool that
//!   multiplexes tunnels over a few mTLS connections per destination.
//! - [`authz`]: the connection-level (L4) authorization hook.
//! - [`protocol`]: L7 or L4 for a tunnel, from the port's configured protocol.
//! - [`drain`]: letting open tunnels finish on shutdown, within a deadline.
//! - [`forward`]: a local port forwarded through HBONE, to drive a waypoint by hand.
//!
//! Every error a tunnel can be refused with is an [`Error`]; its status is chosen in one place,
//! [`Error::status`], with ztunnel's codes.

pub mod authz;
pub mod client;
pub mod drain;
pub mod forward;
pub mod protocol;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};

pub use client::{Client, ClientSettings, Target, Tunnel};
pub use server::Inbound;

/// HTTP/2 flow-control window per stream, as ztunnel sets it.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Largest header block we accept. CONNECT requests carry a handful of headers.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Keepalive: a PING this often on an otherwise quiet connection...
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection is closed when its ACK takes longer than this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Headers of a CONNECT request that carry context across hops.
pub const TRACEPARENT: &str = "traceparent";
pub const BAGGAGE: &str = "baggage";
pub const FORWARDED: &str = "forwarded";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HBONE streams must use CONNECT, got {0}")]
    NotConnect(Method),
    #[error("CONNECT authority {0:?} is not `ip:port` (`[ipv6]:port` for IPv6)")]
    BadAuthority(String),
    #[error("CONNECT to {addr}: {source}")]
    UnknownDestination {
        addr: SocketAddr,
        source: crate::discovery::Error,
    },
    #[error("CONNECT to {addr}: {source}")]
    NoEndpoint {
        addr: SocketAddr,
        source: crate::discovery::Error,
    },
    #[error("{principal} may not open tunnels to {addr} (namespace `{namespace}`): {reason}")]
    Denied {
        principal: String,
        addr: SocketAddr,
        namespace: String,
        reason: String,
    },
    #[error("cannot reach {endpoint}: {reason}")]
    Upstream {
        endpoint: SocketAddr,
        reason: String,
    },
}

impl Error {
    /// The status a refused CONNECT is answered with (ztunnel's choices).
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotConnect(_) | Error::BadAuthority(_) | Error::UnknownDestination { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::Denied { .. } => StatusCode::UNAUTHORIZED,
            Error::NoEndpoint { .. } | Error::Upstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Parses a CONNECT `:authority` strictly: an IP literal and a non-zero port, written the way
/// ztunnel writes them (`10.0.0.1:80`, `[fd00::1]:80`). Hostnames, missing ports, leading zeros
/// and other spellings that would need normalising are refused.
pub fn parse_authority(authority: &str) -> Result<SocketAddr, Error> {
    let bad = || Error::BadAuthority(authority.to_owned());
    let addr: SocketAddr = authority.parse().map_err(|_| bad())?;
    if addr.port() == 0 || addr.to_string() != authority {
        return Err(bad());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_parsed_strictly() {
        let good = [
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("127.0.0.2:15008", "127.0.0.2:15008"),
            ("[fd00::1]:8080", "[fd00::1]:8080"),
            ("[::ffff:10.0.0.1]:80", "[::ffff:10.0.0.1]:80"),
        ];
        for (input, want) in good {
            let addr = parse_authority(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(addr.to_string(), want);
        }
        let bad = [
            "",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:080",
            "010.0.0.1:80",
            "10.0.0:80",
            "shop.svc.cluster.local:80",
            "localhost:80",
            "fd00::1:80",
            "[fd00::1]",
            "[fd00:0::1]:80",
            "[FD00::1]:80",
            " 10.0.0.1:80",
            "10.0.0.1:80/",
            "user@10.0.0.1:80",
        ];
        for input in bad {
            let err = parse_authority(input).expect_err(input);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{input}");
            assert!(err.to_string().contains("is not `ip:port`"), "{err}");
        }
    }

    #[test]
    fn statuses_follow_ztunnel() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cases = [
            (Error::NotConnect(Method::GET), 400),
            (Error::BadAuthority("x".into()), 400),
            (
                Error::UnknownDestination {
                    addr,
                    source: crate::discovery::Error::UnknownHost("x".into()),
                },
                400,
            ),
            (
                Error::NoEndpoint {
                    addr,
                    source: crate::discovery::Error::NoEndpoints {
                        service: "s".into(),
                        port: 80,
                    },
                },
                503,
            ),
            (
                Error::Denied {
                    principal: "p".into(),
                    addr,
                    namespace: "n".into(),
                    reason: "r".into(),
                },
                401,
            ),
            (
                Error::Upstream {
                    endpoint: addr,
                    reason: "refused".into(),
                },
                503,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
    }
}
