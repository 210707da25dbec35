//! `oci://` plugins pulled from a real registry (Debian's docker-registry,
//! CNCF distribution) started on loopback for each test.

use std::path::Path;

use sha2::{Digest, Sha256};
use wayplug::config::Config;
use wayplug_tests::fixture;
use wayplug_tests::harness::{Rig, admin_get, config_yaml, rig, send};
use wayplug_tests::registry::{Registry, plugin_layer};

/// A request through `host` carries the `headers` fixture's marks both ways.
async fn assert_served_by_headers_fixture(rig: &Rig, host: &str) {
    let reply = send(rig.http, "GET", host, "/pulled", &[], "").await;
    assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    assert_eq!(reply.header("x-fixture-response"), Some("ok"), "{host}");
    let seen = rig.upstream.last();
    assert_eq!(seen.path, "/pulled");
    assert_eq!(
        seen.headers
            .get("x-fixture-headers")
            .and_then(|v| v.to_str().ok()),
        Some("seen"),
        "{host}: the pulled plugin ran on the request"
    );
}

fn reload_config(rig: &Rig, extra: &str) -> Config {
    Config::from_yaml(
        &config_yaml(rig.upstream.addr, extra),
        "reload.yaml",
        Path::new("."),
    )
    .expect("config parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_pull_by_tag_and_by_digest_and_a_wrong_digest_is_refused() {
    let registry = Registry::start(None).await;
    let module = std::fs::read(fixture("headers")).unwrap();
    let module_sha = hex::encode(Sha256::digest(&module));
    let artifact = registry
        .push_wasm_artifact("plugins/headers", "v1", &module)
        .await;
    let image = registry
        .push_wasm_image("plugins/headers-image", "v1", &plugin_layer(&module))
        .await;
    let r = registry.addr;
    // By tag (the Wasm artifact layout) and by digest (the image layout,
    // with the module's sha256 pinned as well).
    let extra = format!(
        r#"
namespaces:
  alpha:
    plugins:
      - {{ name: by-tag, url: "oci://{r}/plugins/headers:v1" }}
  beta:
    plugins:
      - {{ name: by-digest, url: "oci://{r}/plugins/headers-image@sha256:{d}", sha256: "{module_sha}" }}
"#,
        d = image.manifest_digest
    );
    let rig = rig(&extra).await;
    assert_served_by_headers_fixture(&rig, "alpha.test").await;
    assert_served_by_headers_fixture(&rig, "beta.test").await;
    let dump = admin_get(rig.admin, "/config_dump").await.body;
    assert!(
        dump.contains(&format!("oci://{r}/plugins/headers:v1")),
        "{dump}"
    );
    assert!(
        dump.contains(&module_sha),
        "the pulled module's sha256 is shown"
    );

    // A pin that matches neither the manifest nor the module: refused at
    // load with both actual values named; the running chain keeps serving.
    let wrong = "0".repeat(64);
    let pinned = format!(
        "namespaces: {{ alpha: {{ plugins: [ {{ name: by-tag, url: \"oci://{r}/plugins/headers:v1\", sha256: \"{wrong}\" }} ] }} }}"
    );
    let err = rig
        .waypoint
        .reload(reload_config(&rig, &pinned))
        .await
        .unwrap_err()
        .to_string();
    for want in [
        "plugin `by-tag` in namespace `alpha`",
        &format!("sha256 mismatch: config expects {wrong}"),
        &format!("the image manifest is {}", artifact.manifest_digest),
        &format!("the module is {module_sha}"),
    ] {
        assert!(err.contains(want), "`{err}` lacks `{want}`");
    }
    assert_served_by_headers_fixture(&rig, "alpha.test").await;

    // A digest in the url that the registry does not hold: refused naming
    // the step and the status.
    let missing = format!(
        "namespaces: {{ alpha: {{ plugins: [ {{ name: by-tag, url: \"oci://{r}/plugins/headers@sha256:{wrong}\" }} ] }} }}"
    );
    let err = rig
        .waypoint
        .reload(reload_config(&rig, &missing))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "oci://{r}/plugins/headers@sha256:{wrong}: manifest: the registry answered 404"
        )),
        "{err}"
    );
    assert_served_by_headers_fixture(&rig, "alpha.test").await;

    // The manifest digest as the pin (Istio's meaning of `sha256`) loads.
    let by_manifest = format!(
        "namespaces: {{ alpha: {{ plugins: [ {{ name: by-tag, url: \"oci://{r}/plugins/headers:v1\", sha256: \"{}\" }} ] }} }}",
        artifact.manifest_digest
    );
    rig.waypoint
        .reload(reload_config(&rig, &by_manifest))
        .await
        .expect("a pin naming the manifest digest loads");
    assert_served_by_headers_fixture(&rig, "alpha.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_not_present_reuses_the_pulled_copy_and_always_asks_the_registry() {
    let mut registry = Registry::start(None).await;
    let module = std::fs::read(fixture("headers")).unwrap();
    registry
        .push_wasm_artifact("plugins/headers", "v1", &module)
        .await;
    let r = registry.addr;
    let entry = |policy: &str| {
        format!(
            "namespaces: {{ alpha: {{ plugins: [ {{ name: p, url: \"oci://{r}/plugins/headers:v1\"{policy} }} ] }} }}"
        )
    };
    let rig = rig(&entry("")).await;
    assert_served_by_headers_fixture(&rig, "alpha.test").await;
    registry.stop();

    // `Always` must reach the registry, which is gone now.
    let err = rig
        .waypoint
        .reload(reload_config(&rig, &entry(", imagePullPolicy: Always")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("oci://{r}/plugins/headers:v1: manifest: http://{r}/v2/plugins/headers/manifests/v1: connect")),
        "{err}"
    );
    // A tag other than `latest` defaults to IfNotPresent: the copy pulled
    // at start serves the reload without the registry.
    rig.waypoint
        .reload(reload_config(&rig, &entry(", priority: 5")))
        .await
        .expect("IfNotPresent loads from the copy already pulled");
    assert_served_by_headers_fixture(&rig, "alpha.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_a_docker_config_file() {
    // bcrypt, as distribution's htpasswd wants it (apache2-utils).
    let out = std::process::Command::new("htpasswd")
        .args(["-nbB", "alice", "s3cret"])
        .output()
        .expect("htpasswd runs: tools/test-deps.sh installs apache2-utils");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let registry = Registry::start(Some(("alice", "s3cret", &line))).await;
    let module = std::fs::read(fixture("headers")).unwrap();
    registry
        .push_wasm_artifact("plugins/headers", "v1", &module)
        .await;
    let r = registry.addr;
    // Removed when dropped, also when the test fails.
    let dir_guard = tempfile::Builder::new()
        .prefix("wayplug-oci-creds-")
        .tempdir()
        .unwrap();
    let dir = dir_guard.path();
    let good = dir.join("good.json");
    // `auth` is base64 of `alice:s3cret`.
    std::fs::write(
        &good,
        format!(r#"{{"auths": {{"{r}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        format!(r#"{{"auths": {{"http://{r}": {{"username": "alice", "password": "wrong"}}}}}}"#),
    )
    .unwrap();
    let with = |creds: &str| {
        format!(
            "{creds}\nnamespaces: {{ alpha: {{ plugins: [ {{ name: p, url: \"oci://{r}/plugins/headers:v1\" }} ] }} }}"
        )
    };
    let rig = rig(&with(&format!(
        "oci: {{ credentialsFile: {} }}",
        good.display()
    )))
    .await;
    assert_served_by_headers_fixture(&rig, "alpha.test").await;

    // Always, so the copy already pulled does not answer for the registry.
    let always = |creds: &str| {
        with(creds).replace("headers:v1\" }", "headers:v1\", imagePullPolicy: Always }")
    };
    let err = rig
        .waypoint
        .reload(reload_config(
            &rig,
            &always(&format!("oci: {{ credentialsFile: {} }}", bad.display())),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("manifest: the registry refused the credentials (401)"),
        "{err}"
    );
    let err = rig
        .waypoint
        .reload(reload_config(&rig, &always("")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "asks for credentials and oci.credentialsFile has none for `{r}`"
        )),
        "{err}"
    );
    assert_served_by_headers_fixture(&rig, "alpha.test").await;
}
