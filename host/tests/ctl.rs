//! `wayplug ctl` against a running waypoint's admin listener.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use wayplug::app::Waypoint;
use wayplug::config::Config;

/// Runs `wayplug ctl --admin ADDR ARGS...` off the async workers, within 60 s.
async fn ctl(admin: std::net::SocketAddr, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayplug"));
    cmd.arg("ctl")
        .arg("--admin")
        .arg(admin.to_string())
        .args(args);
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("ctl finished within 60 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_adds_refuses_and_removes_plugins() {
    let yaml = r#"
listeners: { http: "127.0.0.1:0", admin: "127.0.0.1:0" }
sandbox: { instancesPerPlugin: 1, requestsPerComponent: 2 }
services:
  - { name: shop, namespace: shop, hostname: shop.test, ports: { 80: 9 } }
"#;
    let config = Config::from_yaml(yaml, "ctl.yaml", Path::new(".")).unwrap();
    let wp = Waypoint::start(config, wayplug::demo::builtins())
        .await
        .unwrap();
    let admin = wp.admin_addr.unwrap();

    let out = ctl(admin, &["list"]).await;
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["namespaces"], serde_json::json!({}));

    let out = ctl(
        admin,
        &[
            "put",
            "shop",
            "authz",
            "--url",
            "builtin://authz",
            "--config",
            r#"{"pluginConfig": {"policies": []}}"#,
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let out = ctl(admin, &["list", "shop"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["namespaces"]["shop"]["plugins"][0]["name"], "authz");
    assert_eq!(
        list["namespaces"]["shop"]["plugins"][0]["kind"],
        "component"
    );

    // A refused change exits non-zero with the waypoint's reason.
    let out = ctl(
        admin,
        &["put", "shop", "gone", "--url", "file:///nonexistent/p.wasm"],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("cannot read /nonexistent/p.wasm"),
        "{stderr}"
    );

    let out = ctl(admin, &["delete", "shop", "authz"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = ctl(admin, &["dump"]).await;
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dump["chains"], serde_json::json!({}));
    wp.shutdown().await;
}
