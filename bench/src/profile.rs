//! Instruction counts per request under callgrind: stable on a busy machine,
//! where wall-clock figures are not. The waypoint runs under
//! `valgrind --tool=callgrind` with instrumentation off; per scenario, requests
//! warm the path, instrumentation is switched on for exactly `requests` requests,
//! and the dump's total divided by that count is the cost of one request
//! (every thread of the process, the access log writer included).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::configs::{self, Plugins, WAYPOINT_ADMIN, WAYPOINT_HTTP};
use crate::procs::{self, Proc};
use crate::{addr, loadgen, which};

/// Runs `callgrind_control ARGS PID` (a dump, instrumentation on or off).
pub(crate) fn control(pid: u32, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {} failed", args.join(" "));
    }
    Ok(())
}

fn load(host: &str, requests: u32) -> anyhow::Result<u64> {
    let rate = 200;
    let out = loadgen::run(&loadgen::Plan {
        addr: addr(WAYPOINT_HTTP),
        host: host.to_owned(),
        rate,
        connections: 4,
        duration: Duration::from_secs_f64(f64::from(requests) / f64::from(rate)),
        headers: vec![("x-user".into(), "alice".into())],
    })?;
    if out.errors > 0 {
        bail!("{} of the requests to {host} failed", out.errors);
    }
    Ok(out.latencies_us.len() as u64)
}

/// `totals: N` in a callgrind dump (its `summary:` stays 0 when
/// instrumentation starts off).
fn total_ir(dump: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(dump)?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no instruction total in {}", dump.display()))
}

pub fn run(wayplug: &Path, work: &Path, legacy: bool, requests: u32) -> anyhow::Result<()> {
    let nginx = which("nginx")?;
    let valgrind = which("valgrind")?;
    std::fs::write(work.join("backend.conf"), configs::nginx_backend(work))?;
    let prefix = format!("{}/", work.display());
    let _backend = Proc::spawn(
        "backend",
        0,
        &nginx,
        &[
            "-p",
            &prefix,
            "-c",
            &work.join("backend.conf").display().to_string(),
        ],
        &work.join("backend.log"),
    )?;
    let config = work.join("profile.yaml");
    std::fs::write(&config, configs::profile(&Plugins::built(), legacy))?;
    let out = work.join("callgrind.out");
    let waypoint = Proc::spawn(
        "waypoint",
        1,
        &valgrind,
        &[
            "--tool=callgrind",
            "--instr-atstart=no",
            &format!("--callgrind-out-file={}", out.display()),
            &wayplug.display().to_string(),
            "run",
            "--config",
            &config.display().to_string(),
        ],
        &work.join("profile-waypoint.log"),
    )?;
    procs::wait_http_ok(
        addr(WAYPOINT_ADMIN),
        "admin",
        "/healthz/ready",
        Duration::from_secs(900),
    )
    .context("waypoint under callgrind not ready")?;
    let pid = waypoint.pid();
    for (n, host) in ["none.bench", "pw.bench", "comp.bench"].iter().enumerate() {
        load(host, requests / 4)?;
        control(pid, &["-z"])?;
        control(pid, &["-i", "on"])?;
        let done = load(host, requests)?;
        control(pid, &["-i", "off"])?;
        control(pid, &["-d", host])?;
        // Dumps are numbered from 1 in the order they were asked for.
        let dump = work.join(format!("callgrind.out.{}", n + 1));
        std::thread::sleep(Duration::from_millis(500));
        let ir = total_ir(&dump)?;
        println!(
            "{host}: {} instructions per request ({done} requests)",
            ir / done.max(1)
        );
        let annotate = Command::new("callgrind_annotate")
            .args(["--inclusive=no", "--threshold=90"])
            .arg(&dump)
            .output()?;
        std::fs::write(work.join(format!("profile-{host}.txt")), annotate.stdout)?;
    }
    Ok(())
}
