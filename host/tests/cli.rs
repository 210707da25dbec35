//! The `wayplug` binary as an operator runs it, with its output going to a
//! pipe (a file, a log collector), not a terminal.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `wayplug run --config CONFIG` with its output piped; stops it once
/// `until` appears on stdout (or it exits), within 30 s.
fn run_until(config: &std::path::Path, until: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayplug"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let started = Instant::now();
    let mut success = false;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            success = status.success();
            break;
        }
        let found =
            until.is_some_and(|m| String::from_utf8_lossy(&seen.lock().unwrap()).contains(m));
        if found || started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                found,
                "wayplug neither exited nor logged {until:?} within 30 s"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (success, stdout, stderr)
}

#[test]
fn logs_and_errors_written_to_a_pipe_have_no_colour_codes() {
    // Removed when dropped, also when the test fails.
    let dir_guard = tempfile::Builder::new()
        .prefix("wayplug-cli-")
        .tempdir()
        .unwrap();
    let dir = dir_guard.path();
    std::fs::write(dir.join("not.wasm"), b"+L;\xfd not wasm at all").unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        r#"listeners: { http: "127.0.0.1:0", admin: null }
namespaces:
  shop:
    plugins:
      - name: allow
        url: builtin://header-allowlist
        pluginConfig: { header: x-user, allow: [alice] }
"#,
    )
    .unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        r#"listeners: { http: "127.0.0.1:0", admin: null }
namespaces:
  shop:
    plugins:
      - name: broken
        url: file://not.wasm
"#,
    )
    .unwrap();

    // A waypoint that starts logs at info level to stdout, without colour.
    let (_, stdout, stderr) = run_until(&good, Some("waypoint running"));
    assert!(
        stdout.contains("plugin loaded") && stdout.contains("waypoint running"),
        "the start-up log lines: {stdout} / {stderr}"
    );
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains('\x1b'), "{name} has escape codes: {text:?}");
    }

    // A bad config is one plain error line and a failed exit.
    let (success, stdout, stderr) = run_until(&bad, None);
    assert!(!success);
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains('\x1b'), "{name} has escape codes: {text:?}");
    }
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains(
            "plugin `broken` in namespace `shop`: not a loadable WebAssembly module: \
             bad magic bytes 2b 4c 3b fd"
        ),
        "{stderr}"
    );
}
