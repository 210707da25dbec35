//! `wayplug-bench`: Wayplug against nginx and haproxy on a budget of one CPU
//! each, in interleaved rounds. Started by `bench/run.sh`, which installs the
//! peers and builds release first; see the README's Benchmarks section.
//!
//! CPU 0 runs the backend (nginx answering 1 KB), the load generators and the
//! HBONE helpers (the client-side tunnel and the terminator); CPU 1 runs the
//! proxy under test, one at a time under load. Each round measures every
//! scenario twice: capacity (wrk, fixed connections) and latency at a fixed
//! open-loop rate with coordinated-omission correction ([`loadgen`]).

mod configs;
mod link_order;
mod loadgen;
mod procs;
mod profile;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use configs::*;
use procs::Proc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load benchmark of Wayplug against nginx and haproxy")]
pub struct Args {
    /// The wayplug binary under test (a release build).
    #[arg(long)]
    wayplug: PathBuf,
    /// Scratch directory for configs, certificates and logs.
    #[arg(long, default_value = "target/bench-run")]
    work: PathBuf,
    /// Where BENCHMARKS.md and the JSON results go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Name of the JSON file (inside --out).
    #[arg(long, default_value = "bench/results.json")]
    json: PathBuf,
    /// One short round (for checking the harness, not for figures).
    #[arg(long)]
    quick: bool,
    /// Configs without the `accessLog` section, for a binary that predates it.
    #[arg(long)]
    legacy_config: bool,
    /// Only these scenarios (comma separated names); `direct` is always
    /// measured. `scale` runs the scale phase alone and prints its table.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rate of the latency phase, requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Instead of the benchmark: instructions per request under callgrind
    /// (no plugin, one Proxy-Wasm, one component plugin), this many requests each.
    #[arg(long)]
    profile: Option<u32>,
    /// Instead of the benchmark: run the waypoint under callgrind (idle, then
    /// serving) and write the functions it ran to this file, the symbol order
    /// release builds link with (`host/link-order.txt`).
    #[arg(long)]
    link_order: Option<PathBuf>,
}

/// What a scenario measures, and which process is the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Direct,
    Nginx,
    Haproxy,
    Waypoint,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub kind: ProxyKind,
    pub addr: SocketAddr,
    pub host: &'static str,
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("constant addresses parse")
}

fn scenarios() -> Vec<Scenario> {
    use ProxyKind::*;
    let s = |name, what, kind, a: &str, host| Scenario {
        name,
        what,
        kind,
        addr: addr(a),
        host,
    };
    vec![
        s(
            "direct",
            "client to backend, no proxy",
            Direct,
            BACKEND,
            "backend",
        ),
        s(
            "nginx",
            "nginx 1.22 reverse proxy, 1 worker, upstream keep-alive",
            Nginx,
            NGINX,
            "backend",
        ),
        s(
            "haproxy",
            "haproxy 2.6, 1 thread, http-reuse always",
            Haproxy,
            HAPROXY,
            "backend",
        ),
        s(
            "wayplug-l7",
            "Wayplug L7, no plugin",
            Waypoint,
            WAYPOINT_HTTP,
            "none.bench",
        ),
        s(
            "wayplug-proxywasm",
            "Wayplug L7, one Proxy-Wasm header allowlist",
            Waypoint,
            WAYPOINT_HTTP,
            "pw.bench",
        ),
        s(
            "wayplug-component",
            "Wayplug L7, one component header allowlist",
            Waypoint,
            WAYPOINT_HTTP,
            "comp.bench",
        ),
        s(
            "wayplug-authz20",
            "Wayplug L7, builtin://authz with 20 rules (2 CEL)",
            Waypoint,
            WAYPOINT_HTTP,
            "authz.bench",
        ),
        s(
            "wayplug-chain5",
            "Wayplug L7, chain of five (2 Proxy-Wasm, 3 components)",
            Waypoint,
            WAYPOINT_HTTP,
            "chain5.bench",
        ),
        s(
            "wayplug-l4-hbone",
            "Wayplug L4 relay over HBONE (client-side tunnel on CPU 0)",
            Waypoint,
            TUNNEL_L4,
            "l4.bench",
        ),
        s(
            "wayplug-full-hbone",
            "HBONE in (mTLS), one Proxy-Wasm plugin, HBONE out to a terminator",
            Waypoint,
            TUNNEL_FULL,
            "full.bench",
        ),
    ]
}

/// Durations of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rounds: usize,
    pub capacity: Duration,
    pub latency: Duration,
    pub connections: u32,
    pub scale: &'static [usize],
}

fn shape(quick: bool) -> Shape {
    if quick {
        Shape {
            rounds: 1,
            capacity: Duration::from_secs(2),
            latency: Duration::from_secs(2),
            connections: 32,
            scale: &[0, 1, 10],
        }
    } else {
        Shape {
            rounds: 3,
            capacity: Duration::from_secs(5),
            latency: Duration::from_secs(5),
            connections: 32,
            scale: &[0, 1, 10, 50],
        }
    }
}

/// One capacity measurement (wrk).
#[derive(Debug, Clone, Default)]
pub struct Capacity {
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
    pub cpu_us_per_request: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// One latency measurement (open loop).
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub requests: u64,
    pub errors: u64,
    pub cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct ScaleRow {
    pub namespaces: usize,
    pub ready_ms: f64,
    pub rss_bytes: u64,
    /// Started with its compiled code already in the `cacheDir`.
    pub cached: bool,
}

pub struct Results {
    pub shape: Shape,
    pub rate: u32,
    pub scenarios: Vec<Scenario>,
    /// `[scenario][round]`.
    pub capacity: Vec<Vec<Capacity>>,
    pub latency: Vec<Vec<Latency>>,
    pub waypoint_idle_rss: u64,
    pub scale: Vec<ScaleRow>,
    pub machine: report::Machine,
    pub started: Instant,
}

pub(crate) struct Running {
    _backend: Proc,
    nginx: Proc,
    haproxy: Proc,
    pub waypoint: Proc,
    _terminator: Proc,
    _tunnels: Vec<Proc>,
}

impl Running {
    fn proxy(&self, kind: ProxyKind) -> Option<&Proc> {
        match kind {
            ProxyKind::Direct => None,
            ProxyKind::Nginx => Some(&self.nginx),
            ProxyKind::Haproxy => Some(&self.haproxy),
            ProxyKind::Waypoint => Some(&self.waypoint),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Commands run inside the work folder: a relative binary path would miss.
    args.wayplug = absolute(&args.wayplug)?;
    let work = absolute(&args.work)?;
    std::fs::create_dir_all(work.join("tmp"))?;
    if let Some(out) = &args.link_order {
        return link_order::run(&args, &work, &absolute(out)?);
    }
    if let Some(requests) = args.profile {
        return profile::run(
            &absolute(&args.wayplug)?,
            &work,
            args.legacy_config,
            requests,
        );
    }
    // Made before the run, so a bad `--out` fails now, not after it.
    let json_dir = args.out.join(&args.json);
    if let Some(dir) = json_dir.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let machine = report::Machine::read();
    let shape = shape(args.quick);
    if args.only.iter().any(|o| o == "scale") {
        // The scale phase alone: no proxies or load, and BENCHMARKS.md is
        // left as it is (a partial run has no other figures to write).
        let rows = scale(&args, &work, shape.scale)?;
        print!("{}", report::scale_table(&rows));
        return Ok(());
    }
    let mut list = scenarios();
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !list.iter().any(|s| s.name == o.as_str()))
    {
        let names: Vec<&str> = list.iter().map(|s| s.name).collect();
        bail!(
            "--only: no scenario is called `{unknown}` (scenarios: {}, or scale)",
            names.join(", ")
        );
    }
    if !args.only.is_empty() {
        list.retain(|s| s.name == "direct" || args.only.iter().any(|o| o == s.name));
    }
    let started = Instant::now();
    let running = start_all(&args, &work)?;
    for s in &list {
        check_scenario(s)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let waypoint_idle_rss = running.waypoint.rss_bytes();
    let (capacity, latency) = measure(&args, shape, &list, &running)?;
    drop(running);
    let scale = scale(&args, &work, shape.scale)?;
    let results = Results {
        shape,
        rate: args.rate,
        scenarios: list,
        capacity,
        latency,
        waypoint_idle_rss,
        scale,
        machine: machine.finish(),
        started,
    };
    report::write(&args.out, &args.json, &results)?;
    eprintln!(
        "bench: done in {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        args.out.join("BENCHMARKS.md").display(),
        args.out.join(&args.json).display()
    );
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

pub(crate) fn which(program: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{program} not found on PATH (bench/run.sh installs it)")
}

fn wayplug(args: &Args, work: &Path, cmd: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(&args.wayplug)
        .args(cmd)
        .current_dir(work)
        .status()
        .with_context(|| format!("running {} {}", args.wayplug.display(), cmd.join(" ")))?;
    if !status.success() {
        bail!("wayplug {} failed with {status}", cmd.join(" "));
    }
    Ok(())
}

/// Development certificates: the waypoint, the client side's ztunnel and the destination's.
fn certs(args: &Args, work: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(work.join("certs"));
    wayplug(args, work, &["certs", "ca", "--out", "certs/ca"])?;
    for (ns, sa, out) in [
        ("bench", "waypoint", "certs/waypoint"),
        ("client", "load", "certs/client"),
        ("full", "backend", "certs/backend"),
    ] {
        wayplug(
            args,
            work,
            &[
                "certs",
                "issue",
                "--ca",
                "certs/ca",
                "--namespace",
                ns,
                "--service-account",
                sa,
                "--out",
                out,
            ],
        )?;
    }
    Ok(())
}

/// How the waypoint under test starts: as it is, or under a profiler.
pub(crate) struct UnderTest<'a> {
    /// Starts it on the config file given, output to the log file given.
    pub launch: &'a dyn Fn(&Path, &Path) -> anyhow::Result<Proc>,
    /// Replaces the config's `sandbox` section.
    pub sandbox: Option<serde_json::Value>,
    /// How long it may take to become ready.
    pub ready_within: Duration,
}

fn start_all(args: &Args, work: &Path) -> anyhow::Result<Running> {
    let launch = |config: &Path, log: &Path| {
        let config = config.display().to_string();
        Proc::spawn(
            "waypoint",
            1,
            &args.wayplug,
            &["run", "--config", &config],
            log,
        )
    };
    start_all_with(
        args,
        work,
        &UnderTest {
            launch: &launch,
            sandbox: None,
            ready_within: Duration::from_secs(120),
        },
    )
}

/// Every process of a run: the backend, both reference proxies, the
/// waypoint under test as `under_test` says, the HBONE terminator and the
/// client-side tunnels.
pub(crate) fn start_all_with(
    args: &Args,
    work: &Path,
    under_test: &UnderTest<'_>,
) -> anyhow::Result<Running> {
    certs(args, work)?;
    let nginx_bin = which("nginx")?;
    let haproxy_bin = which("haproxy")?;
    let plugins = Plugins::built();
    std::fs::write(work.join("backend.conf"), nginx_backend(work))?;
    std::fs::write(work.join("nginx.conf"), nginx_proxy(work))?;
    std::fs::write(work.join("haproxy.cfg"), haproxy())?;
    let access_log = (!args.legacy_config).then_some(true);
    std::fs::write(
        work.join("waypoint.yaml"),
        waypoint(
            &plugins,
            &work.join("certs/waypoint"),
            access_log,
            under_test.sandbox.clone(),
        ),
    )?;
    std::fs::write(
        work.join("terminator.yaml"),
        terminator(&work.join("certs/backend"), args.legacy_config),
    )?;
    let prefix = format!("{}/", work.display());
    let s = |p: &Path| p.display().to_string();
    let backend = Proc::spawn(
        "backend",
        0,
        &nginx_bin,
        &["-p", &prefix, "-c", &s(&work.join("backend.conf"))],
        &work.join("backend.log"),
    )?;
    let nginx = Proc::spawn(
        "nginx",
        1,
        &nginx_bin,
        &["-p", &prefix, "-c", &s(&work.join("nginx.conf"))],
        &work.join("nginx.log"),
    )?;
    let haproxy = Proc::spawn(
        "haproxy",
        1,
        &haproxy_bin,
        &["-db", "-f", &s(&work.join("haproxy.cfg"))],
        &work.join("haproxy.log"),
    )?;
    let mut waypoint =
        (under_test.launch)(&work.join("waypoint.yaml"), &work.join("waypoint.log"))?;
    let terminator = Proc::spawn(
        "terminator",
        0,
        &args.wayplug,
        &["run", "--config", &s(&work.join("terminator.yaml"))],
        &work.join("terminator.log"),
    )?;
    let budget = Duration::from_secs(120);
    procs::wait_ready(
        &mut waypoint,
        addr(WAYPOINT_ADMIN),
        "/healthz/ready",
        under_test.ready_within,
    )
    .context("waypoint not ready (see waypoint.log)")?;
    procs::wait_optimized(&mut waypoint, addr(WAYPOINT_ADMIN), under_test.ready_within)
        .context("waypoint's plugins not on optimized code (see waypoint.log)")?;
    procs::wait_http_ok(addr(TERMINATOR_ADMIN), "admin", "/healthz/ready", budget)
        .context("terminator not ready (see terminator.log)")?;
    let expect = "spiffe://cluster.local/ns/bench/sa/waypoint";
    let client = s(&work.join("certs/client"));
    let mut tunnels = Vec::new();
    for (listen, to, name) in [
        (TUNNEL_L4, VIP_L4, "tunnel-l4"),
        (TUNNEL_FULL, VIP_FULL, "tunnel-full"),
    ] {
        tunnels.push(Proc::spawn(
            name,
            0,
            &args.wayplug,
            &[
                "tunnel",
                "--listen",
                listen,
                "--waypoint",
                WAYPOINT_HBONE,
                "--to",
                to,
                "--identity",
                &client,
                "--expect",
                expect,
            ],
            &work.join(format!("{name}.log")),
        )?);
    }
    let mut running = Running {
        _backend: backend,
        nginx,
        haproxy,
        waypoint,
        _terminator: terminator,
        _tunnels: tunnels,
    };
    std::thread::sleep(Duration::from_millis(500));
    for p in [
        &mut running.nginx,
        &mut running.haproxy,
        &mut running.waypoint,
    ] {
        p.check_alive()?;
    }
    Ok(running)
}

/// One request through the scenario must answer 200 with the 1 KB body, or the
/// run stops: a figure for a broken path would be a lie.
fn check_scenario(s: &Scenario) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = procs::http_get(s.addr, s.host, "/", &[("x-user", "alice")]);
        match got {
            Ok(text) if text.starts_with("HTTP/1.1 200") && text.contains(&body()) => return Ok(()),
            other if Instant::now() > deadline => {
                let what = match other {
                    Ok(t) => t.lines().next().unwrap_or_default().to_owned(),
                    Err(e) => e.to_string(),
                };
                bail!(
                    "scenario {} ({}) does not answer 200 with the body: {what}",
                    s.name,
                    s.addr
                );
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Capacity and latency figures, `[scenario][round]`.
type Measured = (Vec<Vec<Capacity>>, Vec<Vec<Latency>>);

fn measure(
    args: &Args,
    shape: Shape,
    list: &[Scenario],
    running: &Running,
) -> anyhow::Result<Measured> {
    let wrk = which("wrk")?;
    let mut capacity = vec![Vec::new(); list.len()];
    let mut latency = vec![Vec::new(); list.len()];
    // Warm every path once (connection pools, instances, page cache).
    for s in list {
        wrk_run(&wrk, s, shape.connections, Duration::from_secs(1))?;
    }
    for round in 0..shape.rounds {
        // Rotate the order each round, so drift does not always favour the same scenario.
        for k in 0..list.len() {
            let i = (k + round * 3) % list.len();
            let s = &list[i];
            eprintln!("bench: round {} {}", round + 1, s.name);
            let proxy = running.proxy(s.kind);
            let cpu0 = proxy.map(Proc::cpu_seconds);
            let mut cap = wrk_run(&wrk, s, shape.connections, shape.capacity)?;
            if let (Some(p), Some(c0)) = (proxy, cpu0) {
                cap.cpu_us_per_request = per_request(p.cpu_seconds() - c0, cap.requests);
                cap.rss_bytes = Some(p.rss_bytes());
            }
            capacity[i].push(cap);
            let cpu0 = proxy.map(Proc::cpu_seconds);
            let out = loadgen::run(&loadgen::Plan {
                addr: s.addr,
                host: s.host.to_owned(),
                rate: args.rate,
                connections: 16,
                duration: shape.latency,
                headers: vec![("x-user".into(), "alice".into())],
            })?;
            let mut lat = Latency {
                p50: out.quantile(0.5),
                p90: out.quantile(0.9),
                p99: out.quantile(0.99),
                p999: out.quantile(0.999),
                requests: out.latencies_us.len() as u64,
                errors: out.errors,
                cpu_us_per_request: None,
            };
            if let (Some(p), Some(c0)) = (proxy, cpu0) {
                lat.cpu_us_per_request = per_request(p.cpu_seconds() - c0, lat.requests);
            }
            latency[i].push(lat);
        }
    }
    Ok((capacity, latency))
}

fn per_request(cpu_seconds: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_seconds * 1e6 / requests as f64)
}

fn wrk_run(wrk: &Path, s: &Scenario, connections: u32, d: Duration) -> anyhow::Result<Capacity> {
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", d.as_secs().max(1)),
        ])
        .args(["-H", &format!("Host: {}", s.host), "-H", "x-user: alice"])
        .arg(format!("http://{}/", s.addr))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed for {}: {text}{}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output for {}:\n{text}", s.name))
}

/// Requests/s, total requests and failures (non-2xx, socket errors) from wrk's summary.
fn parse_wrk(text: &str) -> anyhow::Result<Capacity> {
    let mut cap = Capacity::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            cap.rps = v.trim().parse()?;
        } else if line.contains(" requests in ") {
            cap.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            cap.errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            cap.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if cap.requests == 0 {
        bail!("no request count");
    }
    Ok(cap)
}

/// Startup time and idle RSS of a waypoint with `n` namespaces of three
/// plugins, compiling at start; then the largest size again with its
/// compiled code already in a `cacheDir` filled by `wayplug check`.
fn scale(args: &Args, work: &Path, sizes: &[usize]) -> anyhow::Result<Vec<ScaleRow>> {
    let plugins = Plugins::built();
    let mut rows = Vec::new();
    for &n in sizes {
        let path = work.join(format!("scale-{n}.yaml"));
        std::fs::write(&path, configs::scale(&plugins, n, None, args.legacy_config))?;
        eprintln!("bench: scale {n} namespaces");
        rows.push(start_scaled(args, work, n, &path, false)?);
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    if largest > 0 && !args.legacy_config {
        let cache = work.join("scale-cache");
        let _ = std::fs::remove_dir_all(&cache);
        let path = work.join(format!("scale-{largest}-cached.yaml"));
        std::fs::write(
            &path,
            configs::scale(&plugins, largest, Some(&cache), false),
        )?;
        eprintln!("bench: scale {largest} namespaces, cache filled by `wayplug check`");
        let checked = Command::new(&args.wayplug)
            .args(["check", "--config", &path.display().to_string()])
            .output()
            .context("running wayplug check")?;
        if !checked.status.success() {
            bail!(
                "wayplug check refused the scale config: {}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
        rows.push(start_scaled(args, work, largest, &path, true)?);
    }
    Ok(rows)
}

/// Starts `wayplug run` on `config` (CPU 1) and measures until ready, and
/// the RSS one second after its plugins are on optimized code.
fn start_scaled(
    args: &Args,
    work: &Path,
    n: usize,
    config: &Path,
    cached: bool,
) -> anyhow::Result<ScaleRow> {
    let started = Instant::now();
    let log = if cached {
        format!("scale-{n}-cached.log")
    } else {
        format!("scale-{n}.log")
    };
    let mut p = Proc::spawn(
        "scale",
        1,
        &args.wayplug,
        &["run", "--config", &config.display().to_string()],
        &work.join(log),
    )?;
    let budget = Duration::from_secs(300);
    procs::wait_ready(&mut p, addr(SCALE_ADMIN), "/healthz/ready", budget)
        .with_context(|| format!("waypoint with {n} namespaces not ready"))?;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Memory once every plugin has moved to optimized code: what the
    // waypoint holds from then on, not while it still serves on both.
    procs::wait_optimized(&mut p, addr(SCALE_ADMIN), budget)
        .with_context(|| format!("waypoint with {n} namespaces"))?;
    std::thread::sleep(Duration::from_secs(1));
    let row = ScaleRow {
        namespaces: n,
        ready_ms,
        rss_bytes: p.rss_bytes(),
        cached,
    };
    drop(p);
    std::thread::sleep(Duration::from_millis(300));
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_summaries() {
        let text = "Running 2s test @ http://127.0.0.1:18080/\n  1 threads and 32 connections\n\
            \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
            \x20 90481 requests in 2.00s, 107.51MB read\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  45231.70\nTransfer/sec:     53.73MB\n";
        let cap = parse_wrk(text).unwrap();
        assert_eq!(cap.requests, 90481);
        assert_eq!(cap.errors, 7);
        assert!((cap.rps - 45231.70).abs() < 1e-6);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn the_scale_table_gives_what_each_namespace_adds() {
        let row = |namespaces, mib: u64, cached| ScaleRow {
            namespaces,
            ready_ms: 1.0,
            rss_bytes: mib << 20,
            cached,
        };
        let table = report::scale_table(&[
            row(0, 20, false),
            row(10, 40, false),
            row(50, 60, false),
            row(50, 55, true),
        ]);
        assert!(
            table.contains("| 0 | compiled at start | 1 | 20.0 | - |"),
            "{table}"
        );
        assert!(
            table.contains("| 10 | compiled at start | 1 | 40.0 | 2.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| 50 | compiled at start | 1 | 60.0 | 0.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| 50 | cacheDir | 1 | 55.0 | - |"),
            "{table}"
        );
    }

    #[test]
    fn every_scenario_config_is_a_valid_waypoint_config() {
        let plugins = Plugins::built();
        let id = Path::new("/nonexistent");
        for text in [
            waypoint(&plugins, id, Some(true), None),
            waypoint(&plugins, id, Some(true), link_order::sandbox()),
            configs::idle_under_valgrind(),
            terminator(id, false),
            configs::scale(&plugins, 3, Some(Path::new("/tmp/cache")), false),
            configs::profile(&plugins, false),
        ] {
            wayplug::config::Config::from_yaml(&text, "bench.yaml", Path::new("."))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
    }
}
