//! Open-loop load at a fixed rate, as wrk2 does it: every connection has its
//! own schedule (`rate / connections` requests a second, offset so the
//! connections interleave), and a request's latency is measured from the
//! moment it was *due*, not from when it was sent. A response that comes late
//! therefore also counts against the requests queued behind it, which is the
//! correction for coordinated omission.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One open-loop run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub host: String,
    pub rate: u32,
    pub connections: u32,
    pub duration: Duration,
    /// Extra request headers (`x-user: alice` lets the allowlist plugins pass).
    pub headers: Vec<(String, String)>,
}

/// Latencies in microseconds, sorted, and the requests that failed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
}

impl Outcome {
    /// The `q` quantile (0..=1) by nearest rank; 0 when nothing was measured.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = (q * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1]
    }
}

pub fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(plan))
}

async fn run_async(plan: &Plan) -> anyhow::Result<Outcome> {
    let connections = plan.connections.max(1);
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(plan.rate.max(1)));
    let per_conn = (plan.duration.as_secs_f64() / interval.as_secs_f64()).floor() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let plan = plan.clone();
        let offset = interval.mul_f64(f64::from(c) / f64::from(connections));
        tasks.push(tokio::spawn(async move {
            connection(&plan, start + offset, interval, per_conn).await
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        let (lat, errors) = t.await.context("load task panicked")?;
        out.latencies_us.extend(lat);
        out.errors += errors;
    }
    out.latencies_us.sort_unstable();
    Ok(out)
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn dial(addr: SocketAddr) -> anyhow::Result<Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends `count` requests on one keep-alive connection, each at its due time
/// (or at once when it is already late). A failed request counts as an
/// error and the connection is opened again.
async fn connection(
    plan: &Plan,
    first: Instant,
    interval: Duration,
    count: u64,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let mut sender: Option<Sender> = None;
    for i in 0..count {
        let due = first + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            if sender.is_none() {
                sender = Some(dial(plan.addr).await?);
            }
            let s = sender.as_mut().expect("dialled above");
            s.ready().await?;
            let mut req = http::Request::get("/").header(http::header::HOST, &plan.host);
            for (k, v) in &plan.headers {
                req = req.header(k, v);
            }
            let resp = s.send_request(req.body(Empty::new())?).await?;
            let ok = resp.status().is_success();
            resp.into_body().collect().await?;
            anyhow::Ok(ok)
        })
        .await;
        match result {
            Ok(Ok(true)) => latencies.push(due.elapsed().as_micros() as u64),
            Ok(Ok(false)) => errors += 1,
            _ => {
                errors += 1;
                sender = None;
            }
        }
    }
    (latencies, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let o = Outcome {
            latencies_us: (1..=1000).collect(),
            errors: 0,
        };
        assert_eq!(o.quantile(0.5), 500);
        assert_eq!(o.quantile(0.99), 990);
        assert_eq!(o.quantile(0.999), 999);
        assert_eq!(o.quantile(1.0), 1000);
        assert_eq!(Outcome::default().quantile(0.5), 0);
    }
}
