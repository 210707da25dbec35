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
//! namespace, started, asked `/healthz/ready` and `/metrics`, and stopped; then
//! the benchmark's waypoint (every chain of the L7 scenarios, L4 and the full
//! path over HBONE) serving allowed and denied requests on each scenario's
//! path. Names are the linker's (mangled); names that later builds no longer
//! have are skipped by the linker, so an old file costs locality, never a
//! failed link.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::configs::{self, SCALE_ADMIN};
use crate::procs::{self, Proc};
use crate::{Args, ProxyKind, UnderTest, addr, loadgen, scenarios, start_all_with, which};

/// How long a waypoint under valgrind may take to start or to stop.
const UNDER_VALGRIND: Duration = Duration::from_secs(900);

/// The benchmark waypoint's sandbox under valgrind, which gives a process
/// less address space than the pooling allocator reserves for the default
/// 256 instances (about 4.3 GB a slot; 16 slots were refused). Its ten
/// plugin entries need 14 with one instance each (a component keeps one
/// ready and one for its request).
pub fn sandbox() -> Option<serde_json::Value> {
    Some(
        serde_json::json!({"maxInstances": 14, "instancesPerPlugin": 1, "requestsPerComponent": 1}),
    )
}

pub fn run(args: &Args, work: &Path, out: &Path) -> anyhow::Result<()> {
    let wayplug = &args.wayplug;
    let valgrind = which("valgrind")?;
    let idle = idle_functions(&valgrind, wayplug, work)?;
    let serving = serving_functions(args, &valgrind, work)?;
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
    procs::wait_ready(&mut p, addr(SCALE_ADMIN), "/healthz/ready", UNDER_VALGRIND)
        .context("idle waypoint under callgrind not ready (see link-order-idle.log)")?;
    procs::http_get(addr(SCALE_ADMIN), "admin", "/metrics", &[])?;
    p.stop(UNDER_VALGRIND)?;
    functions(&std::fs::read_to_string(&dump)?, wayplug)
}

/// The benchmark's waypoint, every scenario's path (L7 with each chain, L4
/// and the full path over HBONE): groups for serving, loading plugins and
/// stopping. The backend, terminator and tunnels run as in a benchmark.
fn serving_functions(
    args: &Args,
    valgrind: &Path,
    work: &Path,
) -> anyhow::Result<Vec<Vec<String>>> {
    let dump = work.join("link-order.out");
    for suffix in ["", ".1", ".2"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", dump.display()));
    }
    let launch = |config: &Path, log: &Path| start(valgrind, &args.wayplug, config, &dump, log);
    let mut running = start_all_with(
        args,
        work,
        &UnderTest {
            launch: &launch,
            sandbox: sandbox(),
            ready_within: UNDER_VALGRIND,
        },
    )?;
    dump_now(running.waypoint.pid(), "loaded")?;
    for s in scenarios().iter().filter(|s| s.kind == ProxyKind::Waypoint) {
        // Allowed and denied; a denial is an answer here, not a failure.
        for user in ["alice", "mallory"] {
            loadgen::run(&loadgen::Plan {
                addr: s.addr,
                host: s.host.to_owned(),
                rate: 50,
                connections: 2,
                duration: Duration::from_secs(1),
                headers: vec![("x-user".into(), user.into())],
            })
            .with_context(|| format!("requests through {}", s.name))?;
        }
    }
    dump_now(running.waypoint.pid(), "served")?;
    running.waypoint.stop(UNDER_VALGRIND)?;
    let read = |suffix: &str| -> anyhow::Result<Vec<String>> {
        let file = format!("{}{suffix}", dump.display());
        functions(
            &std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?,
            &args.wayplug,
        )
    };
    // Dumps are numbered in the order they were asked for; the last is
    // written at exit.
    Ok(vec![read(".2")?, read(".1")?, read("")?])
}

/// A labelled dump of what ran so far.
fn dump_now(pid: u32, label: &str) -> anyhow::Result<()> {
    crate::profile::control(pid, &["-d", label])?;
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
