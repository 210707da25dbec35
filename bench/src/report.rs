//! BENCHMARKS.md and the JSON file: medians over the rounds, ratios against
//! direct and nginx, the machine it ran on. Text after the notes marker in an
//! existing BENCHMARKS.md is kept, so hand-written analysis survives a rerun.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::{Capacity, Latency, ProxyKind, Results, ScaleRow};

const NOTES_MARKER: &str = "<!-- notes: kept when the harness rewrites this file -->";

pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_mib: u64,
    pub load_before: String,
    pub load_after: String,
    pub date: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let out = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpu,
            // The machine's CPUs, not this process's (it is pinned to one).
            cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            kernel: out("uname", &["-sr"]),
            memory_mib,
            load_before: loadavg(),
            load_after: String::new(),
            date: out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }

    pub fn finish(mut self) -> Machine {
        self.load_after = loadavg();
        self
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

struct Summary {
    rps: f64,
    errors: u64,
    cpu_cap: Option<f64>,
    cpu_1k: Option<f64>,
    rss_load: Option<u64>,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
}

fn summarise(cap: &[Capacity], lat: &[Latency]) -> Summary {
    let m = |f: &dyn Fn(&Latency) -> u64| {
        median(lat.iter().map(|l| f(l) as f64).collect()).unwrap_or(0.0)
    };
    Summary {
        rps: median(cap.iter().map(|c| c.rps).collect()).unwrap_or(0.0),
        errors: cap.iter().map(|c| c.errors).sum::<u64>()
            + lat.iter().map(|l| l.errors).sum::<u64>(),
        cpu_cap: median(cap.iter().filter_map(|c| c.cpu_us_per_request).collect()),
        cpu_1k: median(lat.iter().filter_map(|l| l.cpu_us_per_request).collect()),
        rss_load: cap.iter().filter_map(|c| c.rss_bytes).max(),
        p50: m(&|l| l.p50),
        p90: m(&|l| l.p90),
        p99: m(&|l| l.p99),
        p999: m(&|l| l.p999),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn write(out: &Path, json_path: &Path, r: &Results) -> anyhow::Result<()> {
    let sums: Vec<Summary> = (0..r.scenarios.len())
        .map(|i| summarise(&r.capacity[i], &r.latency[i]))
        .collect();
    let find = |name: &str| r.scenarios.iter().position(|s| s.name == name);
    let direct = find("direct").map(|i| &sums[i]);
    let nginx = find("nginx").map(|i| &sums[i]);

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `bench/run.sh`{} on {}. Raw figures of every round: `{}`.\n",
        if r.shape.rounds == 1 {
            " --quick (one short round: not for conclusions)"
        } else {
            ""
        },
        r.machine.date,
        json_path.display()
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(
        md,
        "- {} × {}, {} MiB, {}\n- load average before / after the run: {} / {} (other work on the \
         machine shares both cores, so wall-clock figures are noisy; instruction counts below are not)\n",
        r.machine.cpus,
        r.machine.cpu,
        r.machine.memory_mib,
        r.machine.kernel,
        r.machine.load_before,
        r.machine.load_after
    );
    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "- CPU 0: the backend (nginx answering 1 KB, one worker), the load generators, the \
         client-side HBONE tunnel and the HBONE terminator. CPU 1: the proxy under test \
         (`taskset`); every proxy gets that one core.\n\
         - {} interleaved rounds (the order rotates each round); medians over rounds.\n\
         - Capacity: `wrk -t1 -c{}` for {} s per scenario and round; CPU per request is the \
         proxy's user + system time from `/proc` (including its children) over the requests served.\n\
         - Latency: an open loop at {} requests/s on 16 keep-alive connections for {} s, each \
         request timed from when it was due (wrk2's correction for coordinated omission, built \
         into `wayplug-bench`); \"+p50\" / \"+p99\" are the differences to direct.\n\
         - Every request carries `x-user: alice`, which every plugin in the chains allows; \
         any non-2xx answer or socket error is counted in `errors`.\n",
        r.shape.rounds,
        r.shape.connections,
        r.shape.capacity.as_secs(),
        r.rate,
        r.shape.latency.as_secs()
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| scenario | req/s | × direct | × nginx | CPU µs/req (capacity) | CPU µs/req (at {} rps) | p50 µs | p90 µs | p99 µs | p99.9 µs | +p50 µs | +p99 µs | RSS under load MiB | errors |",
        r.rate
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut rows = Vec::new();
    for (s, sum) in r.scenarios.iter().zip(&sums) {
        let ratio = |base: Option<&Summary>| {
            base.filter(|b| b.rps > 0.0)
                .map_or("-".into(), |b| format!("{:.2}", sum.rps / b.rps))
        };
        let added = |f: fn(&Summary) -> f64| {
            if s.kind == ProxyKind::Direct {
                "-".into()
            } else {
                direct.map_or("-".into(), |d| format!("{:+.0}", f(sum) - f(d)))
            }
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            s.name,
            sum.rps,
            ratio(direct),
            ratio(nginx),
            opt(sum.cpu_cap, 1),
            opt(sum.cpu_1k, 1),
            sum.p50,
            sum.p90,
            sum.p99,
            sum.p999,
            added(|x| x.p50),
            added(|x| x.p99),
            sum.rss_load.map_or("-".into(), mib),
            sum.errors
        );
        rows.push(json!({
            "name": s.name, "what": s.what, "rps": sum.rps,
            "ratio_direct": direct.map(|d| sum.rps / d.rps),
            "ratio_nginx": nginx.map(|n| sum.rps / n.rps),
            "cpu_us_per_request_capacity": sum.cpu_cap,
            "cpu_us_per_request_at_rate": sum.cpu_1k,
            "latency_us": {"p50": sum.p50, "p90": sum.p90, "p99": sum.p99, "p999": sum.p999},
            "rss_under_load_bytes": sum.rss_load,
            "errors": sum.errors,
        }));
    }
    let _ = writeln!(md, "\nScenarios:\n");
    for s in &r.scenarios {
        let _ = writeln!(md, "- `{}`: {}", s.name, s.what);
    }
    let _ = writeln!(md, "\n## Memory and start-up\n");
    let _ = writeln!(
        md,
        "The benchmark waypoint (all scenarios above loaded: 6 L7 namespaces, 10 plugin entries) \
         idles at {} MiB RSS.\n",
        mib(r.waypoint_idle_rss)
    );
    let _ = writeln!(
        md,
        "Waypoints with N namespaces of three plugins each (the Proxy-Wasm and the component \
         header allowlist, `builtin://authz` with 20 rules; `instancesPerPlugin: 1`, \
         `requestsPerComponent: 4`), started on CPU 1: time from exec to `/healthz/ready`, and \
         RSS one second later. Each distinct module is compiled once and shared by the entries \
         that use it. \"compiled at start\": no `cacheDir`, so the start compiles every distinct \
         module; \"cacheDir\": the same config with a `cacheDir` that `wayplug check` filled \
         beforehand, as an image build would. No request is sent: a component entry starts \
         its first instance at its first request, so these are idle namespaces.\n"
    );
    md.push_str(&scale_table(&r.scale));
    let _ = writeln!(
        md,
        "\nThe whole run took {:.0} s.\n",
        r.started.elapsed().as_secs_f64()
    );
    let md_path = out.join("BENCHMARKS.md");
    let kept = std::fs::read_to_string(&md_path)
        .ok()
        .and_then(|old| {
            old.split_once(NOTES_MARKER)
                .map(|(_, notes)| notes.to_owned())
        })
        .unwrap_or_else(|| "\n## Notes\n\n".into());
    md.push_str(NOTES_MARKER);
    md.push_str(&kept);
    std::fs::write(&md_path, md)?;

    let rounds: Vec<_> = r
        .scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "name": s.name,
                "capacity": r.capacity[i].iter().map(|c| json!({
                    "rps": c.rps, "requests": c.requests, "errors": c.errors,
                    "cpu_us_per_request": c.cpu_us_per_request, "rss_bytes": c.rss_bytes,
                })).collect::<Vec<_>>(),
                "latency": r.latency[i].iter().map(|l| json!({
                    "p50_us": l.p50, "p90_us": l.p90, "p99_us": l.p99, "p999_us": l.p999,
                    "requests": l.requests, "errors": l.errors,
                    "cpu_us_per_request": l.cpu_us_per_request,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "machine": {
            "cpu": r.machine.cpu, "cpus": r.machine.cpus, "kernel": r.machine.kernel,
            "memory_mib": r.machine.memory_mib, "load_before": r.machine.load_before,
            "load_after": r.machine.load_after, "date": r.machine.date,
        },
        "shape": {
            "rounds": r.shape.rounds, "capacity_seconds": r.shape.capacity.as_secs(),
            "latency_seconds": r.shape.latency.as_secs(), "connections": r.shape.connections,
            "rate": r.rate,
        },
        "summary": rows,
        "rounds": rounds,
        "waypoint_idle_rss_bytes": r.waypoint_idle_rss,
        "scale": r.scale.iter().map(|s| json!({
            "namespaces": s.namespaces, "ready_ms": s.ready_ms, "rss_bytes": s.rss_bytes,
            "cached": s.cached,
        })).collect::<Vec<_>>(),
    });
    let json_file = out.join(json_path);
    if let Some(dir) = json_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json_file, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// The scale rows as a Markdown table, with the RSS each namespace adds
/// over the cold row before it (`(RSS at 50 - RSS at 10) / 40` is the
/// figure the per-namespace target is about; the first namespace also pays
/// for the compiled code).
pub fn scale_table(rows: &[ScaleRow]) -> String {
    let mut out = String::from(
        "| namespaces | compiled code | ready ms | RSS MiB | added per namespace since the row before MiB |\n\
         |---:|---|---:|---:|---:|\n",
    );
    let mut before: Option<&ScaleRow> = None;
    for row in rows {
        let per = match before {
            Some(b) if !row.cached && row.namespaces > b.namespaces => format!(
                "{:.2}",
                (row.rss_bytes as f64 - b.rss_bytes as f64)
                    / (row.namespaces - b.namespaces) as f64
                    / (1024.0 * 1024.0)
            ),
            _ => "-".into(),
        };
        let code = if row.cached {
            "cacheDir"
        } else {
            "compiled at start"
        };
        out += &format!(
            "| {} | {code} | {:.0} | {:.1} | {per} |\n",
            row.namespaces,
            row.ready_ms,
            row.rss_bytes as f64 / (1024.0 * 1024.0)
        );
        if !row.cached {
            before = Some(row);
        }
    }
    out
}
