//! Istio WasmPlugin (extensions.istio.io/v1alpha1) documents as plugin
//! entries.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::PluginSpec;

pub const API_VERSION: &str = "extensions.istio.io/v1alpha1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    selector: Option<Value>,
    #[serde(default)]
    target_ref: Option<Value>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    url: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    image_pull_policy: Option<Value>,
    #[serde(default)]
    image_pull_secret: Option<Value>,
    #[serde(default)]
    verification_key: Option<Value>,
    #[serde(default)]
    plugin_config: Option<Value>,
    #[serde(default)]
    plugin_name: Option<String>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    fail_strategy: Option<String>,
    #[serde(default)]
    vm_config: Option<Value>,
    #[serde(default, rename = "match")]
    match_: Option<Value>,
    #[serde(default, rename = "type")]
    plugin_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Why a WasmPlugin was refused: the field path and the reason.
pub type Refusal = (String, String);

/// The plugin entry a WasmPlugin stands for. Relative `file://` URLs are
/// resolved from the folder of the file that held the document.
pub fn plugin_spec(
    name: &str,
    namespace: &str,
    spec: &Value,
    file_dir: &Path,
) -> Result<PluginSpec, Refusal> {
    let s: Spec = serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        (path, e.into_inner().to_string())
    })?;
    let refuse = |field: &str, why: &str| Err((format!("spec.{field}"), why.to_owned()));
    if s.selector.is_some() {
        return refuse(
            "selector",
            "waypoints do not apply selectors: attach the plugin with `targetRefs` (kind \
             Gateway for the whole waypoint)",
        );
    }
    if s.target_ref.is_some() {
        return refuse("targetRef", "use `targetRefs`, the list form");
    }
    for (field, set) in [
        ("imagePullSecret", s.image_pull_secret.is_some()),
        ("verificationKey", s.verification_key.is_some()),
        ("match", s.match_.is_some()),
    ] {
        if set {
            return refuse(field, "is not supported by the waypoint");
        }
    }
    if s.target_refs.is_empty() {
        return refuse(
            "targetRefs",
            "a waypoint applies only plugins attached with targetRefs: add one of kind Gateway",
        );
    }
    for (i, t) in s.target_refs.iter().enumerate() {
        let group_ok = matches!(t.group.as_deref(), None | Some("gateway.networking.k8s.io"));
        if !group_ok || !matches!(t.kind.as_str(), "Gateway" | "GatewayClass") {
            return Err((
                format!("spec.targetRefs[{i}].kind"),
                format!(
                    "a WasmPlugin runs for the whole namespace chain: target kind Gateway or \
                     GatewayClass (`{}` is not supported)",
                    t.kind
                ),
            ));
        }
        if t.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err((
                format!("spec.targetRefs[{i}].namespace"),
                "targetRefs attach in the plugin's own namespace".to_owned(),
            ));
        }
        if t.name.is_empty() {
            return Err((format!("spec.targetRefs[{i}].name"), "is empty".to_owned()));
        }
    }
    let url = match s.url.strip_prefix("file://") {
        Some(rest) if !rest.starts_with('/') => format!("file://{}", file_dir.join(rest).display()),
        _ => s.url.clone(),
    };
    let oci = url.starts_with("oci://");
    let mut entry = json!({ "name": name, "url": url });
    let fields = [
        ("sha256", s.sha256.map(Value::from)),
        // Istio's unset value means the default, as an absent field does;
        // Istio ignores the field for urls that are not pulled.
        (
            "imagePullPolicy",
            s.image_pull_policy
                .filter(|v| v.as_str() != Some("UNSPECIFIED_POLICY") && oci),
        ),
        ("pluginConfig", s.plugin_config),
        ("pluginName", s.plugin_name.map(Value::from)),
        ("phase", s.phase.map(Value::from)),
        ("priority", s.priority.map(Value::from)),
        ("failStrategy", s.fail_strategy.map(Value::from)),
        ("vmConfig", s.vm_config),
        ("type", s.plugin_type.map(Value::from)),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            entry[key] = v;
        }
    }
    let spec: PluginSpec = serde_path_to_error::deserialize(&entry)
        .map_err(|e| (format!("spec.{}", e.path()), e.into_inner().to_string()))?;
    spec.validate()
        .map_err(|(field, reason)| (format!("spec.{field}"), reason))?;
    Ok(spec)
}
