//! The `wayplug` binary as an operator runs it, with its output going to a
//! pipe (a file, a log collector), not a terminal.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_bad_config_is_reported_without_colour_codes() {
    let dir = std::env::temp_dir().join(format!("wayplug-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("not.wasm"), b"+L;\xfd not wasm at all").unwrap();
    // One good plugin loads (and logs that it did), then the bad one fails.
    let config = dir.join("wayplug.yaml");
    std::fs::write(
        &config,
        r#"listeners: { http: "127.0.0.1:0", admin: null }
namespaces:
  shop:
    plugins:
      - name: allow
        url: builtin://header-allowlist
        pluginConfig: { header: x-user, allow: [alice] }
      - name: broken
        url: file://not.wasm
"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wayplug"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("wayplug did not exit on a bad config within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("plugin loaded"),
        "the good plugin's log line: {stdout}"
    );
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
