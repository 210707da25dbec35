//! Plugin entries, in the vocabulary of Istio's WasmPlugin resource.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::oci::{OciReference, PullPolicy};

type FieldError = (String, String);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    /// Unique within the namespace; also the Proxy-Wasm `plugin_name`.
    pub name: String,
    /// `file://` path (absolute, or relative to the config file),
    /// `builtin://NAME` for plugins compiled into the binary, or
    /// `oci://REGISTRY/REPO:TAG` / `oci://REGISTRY/REPO@sha256:...`.
    pub url: PluginUrl,
    /// Expected SHA-256 of the module, hex. Checked before compiling. For
    /// `oci://` it may also be the image manifest's digest (Istio's meaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `oci://` only: `IfNotPresent` or `Always`; by default `Always` for
    /// the `latest` tag, else `IfNotPresent`, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    #[serde(default)]
    pub phase: Phase,
    /// Higher runs first within a phase.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub fail_strategy: FailStrategy,
    /// Proxy-Wasm root id; defaults to empty, as in Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_name: Option<String>,
    /// Handed to the plugin as JSON bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<serde_json::Value>,
    #[serde(default)]
    pub vm_config: VmConfig,
    #[serde(default, rename = "type")]
    pub plugin_type: PluginType,
    /// A candidate version run beside this one on live traffic, its effects
    /// discarded and its decisions compared (a shadow rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
}

/// A shadow candidate: what differs from the serving entry. Anything not
/// given is the serving entry's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowSpec {
    pub url: PluginUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<VmConfig>,
    /// How long the candidate may take to decide a request, pauses and
    /// callouts included; past it the comparison is counted as `timeout`.
    #[serde(default = "default_shadow_timeout_ms")]
    pub timeout_ms: u64,
    /// Candidate evaluations running at once; more are skipped (counted).
    #[serde(default = "default_shadow_concurrency")]
    pub max_concurrent: usize,
    /// Differences written to the log per minute; all are counted.
    #[serde(default = "default_shadow_log_samples")]
    pub log_samples_per_minute: u32,
}

fn default_shadow_timeout_ms() -> u64 {
    1000
}
fn default_shadow_concurrency() -> usize {
    16
}
fn default_shadow_log_samples() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum Phase {
    #[serde(rename = "AUTHN")]
    Authn,
    #[serde(rename = "AUTHZ")]
    Authz,
    #[serde(rename = "STATS")]
    Stats,
    /// Runs last, just before routing.
    #[default]
    #[serde(rename = "UNSPECIFIED_PHASE", alias = "UNSPECIFIED")]
    Unspecified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FailStrategy {
    /// A failing plugin fails the request.
    #[default]
    #[serde(rename = "FAIL_CLOSE")]
    FailClose,
    /// A failing plugin is skipped for the request.
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// A failing plugin gets a fresh instance and the step is retried once.
    #[serde(rename = "FAIL_RELOAD")]
    FailReload,
}

impl FailStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailStrategy::FailClose => "FAIL_CLOSE",
            FailStrategy::FailOpen => "FAIL_OPEN",
            FailStrategy::FailReload => "FAIL_RELOAD",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PluginType {
    #[default]
    #[serde(rename = "HTTP", alias = "UNSPECIFIED_PLUGIN_TYPE")]
    Http,
    #[serde(rename = "NETWORK")]
    Network,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// The plugin's whole environment: the host's own is never visible.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Proxy-Wasm VM id, which scopes shared queue names. Defaults to the
    /// plugin's name, so two plugins of a namespace share queues only when
    /// they are given the same id on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub value_from: EnvSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EnvSource {
    /// `value` is the value.
    #[default]
    #[serde(rename = "INLINE")]
    Inline,
    /// The value is the host's environment variable of the same name, named
    /// explicitly by the operator.
    #[serde(rename = "HOST")]
    Host,
}

/// Where a plugin's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PluginUrl {
    File(String),
    Builtin(String),
    Oci(OciReference),
}

impl TryFrom<String> for PluginUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(format!("plugin url `{s}` has no path"));
            }
            return Ok(PluginUrl::File(rest.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("builtin://") {
            return Ok(PluginUrl::Builtin(rest.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("oci://") {
            return OciReference::parse(rest).map(PluginUrl::Oci);
        }
        Err(format!(
            "plugin url `{s}`: only file://, builtin:// and oci:// plugin URLs are supported"
        ))
    }
}

impl From<PluginUrl> for String {
    fn from(u: PluginUrl) -> String {
        match u {
            PluginUrl::File(p) => format!("file://{p}"),
            PluginUrl::Builtin(n) => format!("builtin://{n}"),
            PluginUrl::Oci(r) => r.to_string(),
        }
    }
}

impl std::fmt::Display for PluginUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(self.clone()))
    }
}

impl PluginUrl {
    /// The file a `file://` URL names; relative paths resolve from `base`.
    pub fn resolve_file(&self, base: &Path) -> Option<PathBuf> {
        match self {
            PluginUrl::File(p) => {
                let p = Path::new(p);
                Some(if p.is_absolute() {
                    p.to_owned()
                } else {
                    base.join(p)
                })
            }
            PluginUrl::Builtin(_) | PluginUrl::Oci(_) => None,
        }
    }
}

impl PluginSpec {
    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        let err = |f: &str, r: String| Err((f.to_owned(), r));
        if self.name.is_empty() || self.name.len() > 128 {
            return err("name", "must be 1 to 128 characters".into());
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return err(
                "name",
                format!(
                    "`{}` may only use letters, digits, `-`, `_` and `.`",
                    self.name
                ),
            );
        }
        if let Some(sum) = &self.sha256
            && (sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return err("sha256", format!("`{sum}` is not 64 hex digits"));
        }
        if self.image_pull_policy.is_some() && !matches!(self.url, PluginUrl::Oci(_)) {
            return err("imagePullPolicy", "applies only to oci:// urls".into());
        }
        if let Some(shadow) = &self.shadow {
            shadow
                .validate()
                .map_err(|(f, r)| (format!("shadow.{f}"), r))?;
        }
        if self.plugin_type == PluginType::Network {
            return err("type", "NETWORK plugins are not supported; use HTTP".into());
        }
        if let Some(id) = &self.vm_config.vm_id
            && (id.is_empty() || id.len() > 128)
        {
            return err("vmConfig.vmId", "must be 1 to 128 characters".into());
        }
        for (i, e) in self.vm_config.env.iter().enumerate() {
            if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                return err(
                    &format!("vmConfig.env[{i}].name"),
                    format!("`{}` is not a valid variable name", e.name),
                );
            }
            if e.value_from == EnvSource::Host && !e.value.is_empty() {
                return err(
                    &format!("vmConfig.env[{i}].value"),
                    "a HOST variable takes its value from the host; leave `value` empty".into(),
                );
            }
        }
        Ok(())
    }

    /// The entry the shadow candidate runs as: this one with the
    /// candidate's url, checksum and any configuration it overrides.
    pub fn candidate(&self) -> Option<PluginSpec> {
        let shadow = self.shadow.as_ref()?;
        let mut spec = self.clone();
        spec.shadow = None;
        spec.url = shadow.url.clone();
        spec.sha256 = shadow.sha256.clone();
        spec.image_pull_policy = shadow.image_pull_policy;
        if let Some(c) = &shadow.plugin_config {
            spec.plugin_config = Some(c.clone());
        }
        if let Some(vm) = &shadow.vm_config {
            spec.vm_config = vm.clone();
        }
        Some(spec)
    }

    /// The plugin configuration as the bytes the plugin reads: JSON, or
    /// nothing when none is set. A YAML string is passed through unquoted,
    /// so plugins that take plain text configuration get it verbatim.
    pub fn plugin_config_bytes(&self) -> Vec<u8> {
        match &self.plugin_config {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            Some(v) => serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// The plugin's environment, resolved.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.vm_config
            .env
            .iter()
            .filter_map(|e| match e.value_from {
                EnvSource::Inline => Some((e.name.clone(), e.value.clone())),
                EnvSource::Host => std::env::var(&e.name).ok().map(|v| (e.name.clone(), v)),
            })
            .collect()
    }

    /// Proxy-Wasm VM id: `vmConfig.vmId`, or the plugin's name.
    pub fn vm_id(&self) -> &str {
        self.vm_config.vm_id.as_deref().unwrap_or(&self.name)
    }

    /// Proxy-Wasm root id.
    pub fn root_id(&self) -> &str {
        self.plugin_name.as_deref().unwrap_or("")
    }
}

impl ShadowSpec {
    fn validate(&self) -> Result<(), FieldError> {
        let err = |f: &str, r: &str| Err((f.to_owned(), r.to_owned()));
        if let Some(sum) = &self.sha256
            && (sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(("sha256".into(), format!("`{sum}` is not 64 hex digits")));
        }
        if self.image_pull_policy.is_some() && !matches!(self.url, PluginUrl::Oci(_)) {
            return err("imagePullPolicy", "applies only to oci:// urls");
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return err("timeoutMs", "must be between 1 and 60000");
        }
        if !(1..=1024).contains(&self.max_concurrent) {
            return err("maxConcurrent", "must be between 1 and 1024");
        }
        if self.log_samples_per_minute > 6000 {
            return err("logSamplesPerMinute", "must be at most 6000");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PluginSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn vm_id_defaults_to_the_plugin_name() {
        let a = spec("{ name: ratelimit, url: 'file:///a.wasm' }");
        let b = spec("{ name: audit, url: 'file:///a.wasm' }");
        assert_eq!(a.vm_id(), "ratelimit");
        assert_ne!(
            a.vm_id(),
            b.vm_id(),
            "two plugins never share one by accident"
        );
        let shared = spec("{ name: audit, url: 'file:///a.wasm', vmConfig: { vmId: ratelimit } }");
        assert_eq!(shared.vm_id(), "ratelimit", "sharing is explicit");
        let empty = spec("{ name: audit, url: 'file:///a.wasm', vmConfig: { vmId: '' } }");
        assert_eq!(empty.validate().unwrap_err().0, "vmConfig.vmId");
    }
}
