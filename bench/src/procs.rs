//! The processes a run starts (each pinned to its CPU with `taskset`) and
//! what `/proc` says about them: CPU time and resident memory, summed over a
//! process and its children (nginx serves from a worker child).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A started process, stopped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `program args` on `cpu`, output to `log`.
    pub fn spawn(
        name: &str,
        cpu: u32,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) used so far by the process and its children.
    pub fn cpu_seconds(&self) -> f64 {
        tree(self.pid()).iter().map(|p| cpu_of(*p)).sum()
    }

    /// Resident memory in bytes of the process and its children.
    pub fn rss_bytes(&self) -> u64 {
        tree(self.pid()).iter().map(|p| rss_of(*p)).sum()
    }

    /// Asks the process to stop (SIGTERM) and waits up to `budget` for it to
    /// exit, as a profiler writing its results at exit needs.
    pub fn stop(&mut self, budget: Duration) -> anyhow::Result<()> {
        if self.terminate(budget) {
            return Ok(());
        }
        bail!("{} did not stop within {budget:?}", self.name)
    }

    /// SIGTERM, then up to `budget` for the exit: whether it exited.
    fn terminate(&mut self, budget: Duration) -> bool {
        // nginx's worker follows its master; SIGTERM lets it say so.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Fails when the process has already exited (a bad config, a busy port).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.terminate(Duration::from_secs(3)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `pid` and every descendant, from `/proc/PID/task/*/children`.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() && all.len() < 64 {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                    all.extend(
                        text.split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    all
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf` confirms it.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks()
}

fn rss_of(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// [`wait_http_ok`] for a process of ours: fails at once when `p` exits.
pub fn wait_ready(
    p: &mut Proc,
    addr: SocketAddr,
    path: &str,
    budget: Duration,
) -> anyhow::Result<()> {
    wait_until_ok(addr, "admin", path, budget, || p.check_alive()).map(drop)
}

/// Waits until `GET path` on `addr` answers 200 (with `host`), or fails after `budget`.
pub fn wait_http_ok(
    addr: SocketAddr,
    host: &str,
    path: &str,
    budget: Duration,
) -> anyhow::Result<Duration> {
    wait_until_ok(addr, host, path, budget, || Ok(()))
}

/// Waits until no plugin of the waypoint whose admin API is at `addr` is
/// still on baseline code (tiered compilation moves them within seconds of
/// loading): figures are for the code a waypoint serves on from then on.
pub fn wait_optimized(p: &mut Proc, addr: SocketAddr, budget: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let text = http_get(addr, "admin", "/api/namespaces", &[])?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let list: serde_json::Value = serde_json::from_str(body)
            .with_context(|| format!("{addr}/api/namespaces is not JSON: {text}"))?;
        let namespaces = list["namespaces"]
            .as_object()
            .context("no namespaces in /api/namespaces")?;
        let waiting = namespaces
            .values()
            .flat_map(|ns| ns["plugins"].as_array().into_iter().flatten())
            .filter(|plugin| plugin["code"] == "baseline")
            .count();
        if waiting == 0 {
            return Ok(());
        }
        p.check_alive()?;
        if start.elapsed() > budget {
            bail!("{waiting} plugin(s) still on baseline code after {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until `GET path` answers 200; `still_worth_it` can end the wait early.
fn wait_until_ok(
    addr: SocketAddr,
    host: &str,
    path: &str,
    budget: Duration,
    mut still_worth_it: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if http_status(addr, host, path).is_ok_and(|s| s == 200) {
            return Ok(start.elapsed());
        }
        still_worth_it()?;
        if start.elapsed() > budget {
            bail!("{addr}{path} did not answer 200 within {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One HTTP/1.1 request on a fresh connection: the status code.
pub fn http_status(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<u16> {
    let text = http_get(addr, host, path, &[])?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    Ok(status)
}

/// One HTTP/1.1 GET on a fresh connection: the whole response as text.
pub fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
