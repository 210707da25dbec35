//! The symbol ordering file release builds link with (`host/link-order.txt`).
//!
//! Code pages of the binary are mapped from the file, and the kernel maps 64 KiB
//! around each page fault, so an idle waypoint whose start-up code is spread
//! over the 24 MB text keeps most of it resident. Laying the functions a
//! waypoint runs next to each other, in the order below, keeps them on few
//! pages: idle first (start-up, the admin listener, shutdown of nothing), then
//! the request path, then loading plugins (compiling them included), then
//! shutdown with plugins.
//!
//! The functions are those callgrind saw run: one waypoint with no
//! namespace, started, asked `/healthz/ready` and `/metrics`, and stopped; one
//! with the profile's namespaces (no plugin, a Proxy-Wasm and a component
//! allowlist) serving HTTP/1.1 requests. Names are the linker's (mangled);
//! names that later builds no longer have are skipped by the linker, so an
//! old file costs locality, never a failed link.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::configs::{self, Plugins, SCALE_ADMIN, WAYPOINT_ADMIN, WAYPOINT_HTTP};
use crate::procs::{self, Proc};
use crate::{addr, loadgen, which};

/// How long a waypoint under valgrind may take to start or to stop.
const UNDER_VALGRIND: Duration = Duration::from_secs(900);

pub fn run(wayplug: &Path, work: &Path, out: &Path) -> anyhow::Result<()> {
    let valgrind = which("valgrind")?;
    let idle = idle_functions(&valgrind, wayplug, work)?;
    let serving = serving_functions(&valgrind, wayplug, work)?;
    let mut groups = vec![idle];
    groups.extend(serving);
    let names = ordered(&groups);
    if names.len() < 100 {
        bail!(
            "callgrind saw only {} functions of {}: is it a release build with symbols?",
            names.len(),
            wayplug.display()
        );
    }
    let mut text = String::new();
    for n in &names {
        text.push_str(n);
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("{}: {} functions", out.display(), names.len());
    Ok(())
}

fn callgrind_args(out: &Path) -> Vec<String> {
    vec![
        "--tool=callgrind".into(),
        // Linker names, written out in full on every line.
        "--demangle=no".into(),
        "--compress-strings=no".into(),
        "--dump-instr=no".into(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

fn start(
    valgrind: &Path,
    wayplug: &Path,
    config: &Path,
    dump: &Path,
    log: &Path,
) -> anyhow::Result<Proc> {
    let mut args = callgrind_args(dump);
    args.extend([
        wayplug.display().to_string(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn("waypoint", 1, valgrind, &args, log)
}

/// A waypoint with nothing configured: start-up, two admin requests, stop.
fn idle_functions(valgrind: &Path, wayplug: &Path, work: &Path) -> anyhow::Result<Vec<String>> {
    let config = work.join("link-order-idle.yaml");
    std::fs::write(&config, configs::idle_under_valgrind())?;
    let dump = work.join("link-order-idle.out");
    let _ = std::fs::remove_file(&dump);
    let mut p = start(
        valgrind,
        wayplug,
        &config,
        &dump,
        &work.join("link-order-idle.log"),
    )?;
    procs::wait_http_ok(addr(SCALE_ADMIN), "admin", "/healthz/ready", UNDER_VALGRIND)
        .context("idle waypoint under callgrind not ready")?;
    procs::http_get(addr(SCALE_ADMIN), "admin", "/metrics", &[])?;
    p.stop(UNDER_VALGRIND)?;
    functions(&std::fs::read_to_string(&dump)?, wayplug)
}

/// The profile's waypoint: groups for serving, loading plugins and stopping.
fn serving_functions(
    valgrind: &Path,
    wayplug: &Path,
    work: &Path,
) -> anyhow::Result<Vec<Vec<String>>> {
    let nginx = which("nginx")?;
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
    let config = work.join("link-order.yaml");
    std::fs::write(&config, configs::profile(&Plugins::built(), false))?;
    let dump = work.join("link-order.out");
    for suffix in ["", ".1", ".2"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", dump.display()));
    }
    let mut p = start(
        valgrind,
        wayplug,
        &config,
        &dump,
        &work.join("link-order.log"),
    )?;
    procs::wait_http_ok(
        addr(WAYPOINT_ADMIN),
        "admin",
        "/healthz/ready",
        UNDER_VALGRIND,
    )
    .context("waypoint under callgrind not ready")?;
    control(p.pid(), "loaded")?;
    for host in ["none.bench", "pw.bench", "comp.bench"] {
        for user in ["alice", "mallory"] {
            loadgen::run(&loadgen::Plan {
                addr: addr(WAYPOINT_HTTP),
                host: host.to_owned(),
                rate: 100,
                connections: 2,
                duration: Duration::from_millis(500),
                headers: vec![("x-user".into(), user.into())],
            })?;
        }
    }
    control(p.pid(), "served")?;
    p.stop(UNDER_VALGRIND)?;
    let read = |suffix: &str| -> anyhow::Result<Vec<String>> {
        let file = format!("{}{suffix}", dump.display());
        functions(
            &std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?,
            wayplug,
        )
    };
    // Dumps are numbered in the order they were asked for; the last is
    // written at exit.
    Ok(vec![read(".2")?, read(".1")?, read("")?])
}

fn control(pid: u32, label: &str) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .args(["-d", label, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control -d {label} failed");
    }
    // The dump is written by the waypoint's next scheduled thread.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// The functions of `binary` that ran, from a callgrind dump written with
/// uncompressed names, in the dump's order.
fn functions(dump: &str, binary: &Path) -> anyhow::Result<Vec<String>> {
    let binary = std::fs::canonicalize(binary)?;
    let mut ours = false;
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for line in dump.lines() {
        if let Some(object) = line.strip_prefix("ob=") {
            ours = Path::new(object.trim()) == binary;
        } else if let Some(name) = line.strip_prefix("fn=")
            && ours
            && let Some(name) = linker_name(name.trim())
            && seen.insert(name)
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The symbol callgrind's name for a function stands for: a recursive
/// call's `'2` suffix dropped; `None` for code without a symbol (an address)
/// and callgrind's own entries such as `(below main)`.
fn linker_name(name: &str) -> Option<&str> {
    let name = match name.rsplit_once('\'') {
        Some((base, depth)) if !depth.is_empty() && depth.bytes().all(|b| b.is_ascii_digit()) => {
            base
        }
        _ => name,
    };
    let symbol = !name.is_empty()
        && !name.starts_with("0x")
        && !name.contains(|c: char| c.is_whitespace() || c == '(' || c == '\'');
    symbol.then_some(name)
}

/// Every group's names after the groups before it, each name once.
fn ordered(groups: &[Vec<String>]) -> Vec<String> {
    let mut seen = HashSet::new();
    groups
        .iter()
        .flatten()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_binarys_functions_once_each_and_groups_in_order() {
        let exe = std::env::current_exe().unwrap();
        let dump = format!(
            "version: 1\nob=/usr/lib/libc.so.6\nfn=malloc\n0 5\nob={0}\nfn=_ZN4main17h01E\n0 3\n\
             cob=/usr/lib/libc.so.6\ncfn=malloc\ncalls=1 0\n0 9\nfn=_ZN3run17h02E\n0 1\n\
             ob=/usr/lib/libc.so.6\nfn=free\n0 1\nob={0}\nfn=_ZN4main17h01E\n0 1\n\
             fn=_ZN4sort17h03E'2\n0 1\nfn=0x0000000000aa7030\n0 1\nfn=(below main)\n0 1\n",
            exe.display()
        );
        let names = functions(&dump, &exe).unwrap();
        assert_eq!(names, ["_ZN4main17h01E", "_ZN3run17h02E", "_ZN4sort17h03E"]);
        let groups = vec![
            vec!["b".to_owned(), "a".to_owned()],
            vec!["a".to_owned(), "c".to_owned()],
        ];
        assert_eq!(ordered(&groups), ["b", "a", "c"]);
    }
}
