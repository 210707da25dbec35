use std::path::Path;

use super::*;

fn config(dir: &Path) -> Config {
    let yaml = format!(
        r#"
policyDir: "{}"
services:
  - {{ name: web, namespace: shop, hostname: web.shop.svc.cluster.local, ports: {{ 80: 8080 }} }}
  - {{ name: web-v2, namespace: shop, hostname: web-v2.shop.svc.cluster.local, ports: {{ 80: 8080 }} }}
"#,
        dir.display()
    );
    Config::from_yaml(&yaml, "test.yaml", Path::new("/")).unwrap()
}

fn temp_dir(name: &str) -> tempfile::TempDir {
    // Removed when dropped, also when the test fails.
    tempfile::Builder::new()
        .prefix(&format!("wayplug-policy-{name}-"))
        .tempdir()
        .unwrap()
}

fn route(name: &str, backend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {name}, namespace: shop }}
spec:
  parentRefs: [{{ group: "", kind: Service, name: web }}]
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /{name} }} }}]
      backendRefs: [{{ name: {backend}, port: 80 }}]
"#
    )
}

fn route_docs(config: &Config, set: &PolicySet) -> Vec<String> {
    let ns = set.namespaces(config);
    let Some(shop) = ns.get("shop") else {
        return Vec::new();
    };
    let entry = shop
        .plugins
        .iter()
        .find(|p| p.name == ROUTE_PLUGIN)
        .expect("route entry");
    entry.plugin_config.as_ref().unwrap()["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn routes_compile_into_one_builtin_entry_per_namespace() {
    let dir_guard = temp_dir("compile");
    let dir = dir_guard.path();
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\n";
    std::fs::write(
        dir.join("a.yaml"),
        format!(
            "{}---\n{other}---\n{}",
            route("one", "web-v2"),
            route("two", "web")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("ignored.txt"), "not: yaml: at all:").unwrap();
    let cfg = config(dir);
    let loaded = load(dir, &cfg, &PolicySet::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(route_docs(&cfg, &loaded.set), ["one", "two"]);
    let ns = loaded.set.namespaces(&cfg);
    let entry = &ns["shop"].plugins[0];
    assert_eq!(entry.url, PluginUrl::Builtin("route".into()));
    let services = &entry.plugin_config.as_ref().unwrap()["services"];
    assert_eq!(services[1]["hostname"], "web-v2.shop.svc.cluster.local");
    assert_eq!(services[1]["ports"], json!([80]));
}

#[test]
fn bad_documents_are_refused_alone_and_named() {
    let dir_guard = temp_dir("bad");
    let dir = dir_guard.path();
    let unknown_field = route("typo", "web").replace("backendRefs", "backendRefz");
    let unknown_backend = route("ghost", "nowhere");
    std::fs::write(
        dir.join("routes.yaml"),
        format!(
            "{}---\nkind: [unclosed\n---\n{unknown_field}---\n{unknown_backend}",
            route("good", "web")
        ),
    )
    .unwrap();
    let cfg = config(dir);
    let loaded = load(dir, &cfg, &PolicySet::default());
    let file = dir.join("routes.yaml");
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "{}: document 1: malformed YAML, document skipped:",
            file.display()
        )),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with(&format!(
            "{}: document 2: HTTPRoute shop/typo: field `spec.rules[0].backendRefz`: unknown field `backendRefz`",
            file.display()
        )),
        "{}",
        errors[1]
    );
    assert_eq!(
        errors[2],
        format!(
            "{}: document 3: HTTPRoute shop/ghost: field `spec.rules[0].backendRefs[0].name`: \
             Service shop/nowhere is not known to the waypoint; resource refused",
            file.display()
        )
    );
    assert_eq!(route_docs(&cfg, &loaded.set), ["good"]);
}

#[test]
fn a_refused_edit_keeps_the_previous_version() {
    let dir_guard = temp_dir("keep");
    let dir = dir_guard.path();
    let file = dir.join("r.yaml");
    std::fs::write(
        &file,
        format!("{}---\n{}", route("a", "web"), route("b", "web")),
    )
    .unwrap();
    let cfg = config(dir);
    let first = load(dir, &cfg, &PolicySet::default());
    assert!(first.errors.is_empty());

    // `a` gets an unsupported field, `b` becomes malformed YAML.
    let broken_a = route("a", "web").replace("rules:", "hostnames: [x.example]\n  rules:");
    std::fs::write(&file, format!("{broken_a}---\nkind: [\n")).unwrap();
    let second = load(dir, &cfg, &first.set);
    let errors: Vec<String> = second.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors[0].contains("HTTPRoute shop/a: field `spec.hostnames`")
            && errors[0].ends_with("resource refused, its previous version stays in force"),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains("document 1: malformed YAML"),
        "{errors:#?}"
    );
    assert_eq!(route_docs(&cfg, &second.set), ["a", "b"]);

    // Removing the documents removes the routes.
    std::fs::write(&file, "").unwrap();
    let third = load(dir, &cfg, &second.set);
    assert!(third.errors.is_empty());
    assert!(third.set.is_empty());
}

#[test]
fn wasm_plugins_become_entries_and_selectors_are_refused() {
    let dir_guard = temp_dir("wasm");
    let dir = dir_guard.path();
    let plugin = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: stamp, namespace: shop }
spec:
  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }]
  url: file://plugins/stamp.wasm
  phase: STATS
  priority: 10
  failStrategy: FAIL_OPEN
  pluginConfig: { header: x-stamp }
  vmConfig: { env: [{ name: MODE, value: demo }] }
"#;
    let selector = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: old-style, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  url: file:///x.wasm
"#;
    let dup_name = route("dup", "web");
    std::fs::write(
        dir.join("p.yaml"),
        format!("{plugin}---\n{selector}---\n{dup_name}---\n{dup_name}"),
    )
    .unwrap();
    let cfg = config(dir);
    let loaded = load(dir, &cfg, &PolicySet::default());
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains(
            "document 1: WasmPlugin shop/old-style: field `spec.selector`: waypoints do not apply \
             selectors: attach the plugin with `targetRefs`"
        ),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("document 3: HTTPRoute shop/dup is declared again"),
        "{}",
        errors[1]
    );
    let ns = loaded.set.namespaces(&cfg);
    let stamp = ns["shop"]
        .plugins
        .iter()
        .find(|p| p.name == "stamp")
        .unwrap();
    assert_eq!(
        stamp.url,
        PluginUrl::File(dir.join("plugins/stamp.wasm").display().to_string())
    );
    assert_eq!(stamp.priority, 10);
    assert_eq!(stamp.phase, crate::config::Phase::Stats);
    assert_eq!(stamp.fail_strategy, crate::config::FailStrategy::FailOpen);
    assert_eq!(stamp.plugin_config, Some(json!({"header": "x-stamp"})));
    assert_eq!(
        stamp.environment(),
        [("MODE".to_owned(), "demo".to_owned())]
    );
}

#[test]
fn wasm_plugins_from_oci_keep_their_pull_policy() {
    let dir_guard = temp_dir("wasm-oci");
    let dir = dir_guard.path();
    let plugin = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: pulled, namespace: shop }
spec:
  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }]
  url: oci://registry.example:5000/plugins/stamp:v2
  imagePullPolicy: Always
"#;
    std::fs::write(dir.join("p.yaml"), plugin).unwrap();
    let cfg = config(dir);
    let loaded = load(dir, &cfg, &PolicySet::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let ns = loaded.set.namespaces(&cfg);
    let pulled = &ns["shop"].plugins[0];
    assert_eq!(
        pulled.url.to_string(),
        "oci://registry.example:5000/plugins/stamp:v2"
    );
    assert_eq!(
        pulled.image_pull_policy,
        Some(crate::config::PullPolicy::Always)
    );
}

#[test]
fn authorization_policies_compile_and_bad_cel_is_refused() {
    let dir_guard = temp_dir("authz");
    let dir = dir_guard.path();
    let policy = |name: &str, cel: &str| {
        format!(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: {name}, namespace: shop }}
spec:
  targetRefs: [{{ kind: Service, group: "", name: web }}]
  action: ALLOW
  rules:
    - when: [{{ key: cel, values: ["{cel}"] }}]
"#
        )
    };
    let selector = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: { name: sel, namespace: shop }\nspec:\n  selector: { matchLabels: { app: web } }\n";
    std::fs::write(
        dir.join("authz.yaml"),
        format!(
            "{}---\n{}---\n{selector}",
            policy("alice", "request.headers['x-user'] == 'alice'"),
            policy("broken", "request.path == ")
        ),
    )
    .unwrap();
    let cfg = config(dir);
    let loaded = load(dir, &cfg, &PolicySet::default());
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains("document 1: AuthorizationPolicy shop/broken:")
            && errors[0].contains("CEL expression `request.path == ` does not compile"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("document 2: AuthorizationPolicy shop/sel:")
            && errors[1].contains("targetRefs"),
        "{}",
        errors[1]
    );
    let ns = loaded.set.namespaces(&cfg);
    let entry = ns["shop"]
        .plugins
        .iter()
        .find(|p| p.name == AUTHZ_PLUGIN)
        .unwrap();
    assert_eq!(entry.url, PluginUrl::Builtin("authz".into()));
    let policies = &entry.plugin_config.as_ref().unwrap()["policies"];
    assert_eq!(policies.as_array().unwrap().len(), 1);
    assert_eq!(policies[0]["metadata"]["name"], "alice");
}
