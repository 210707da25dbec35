//! The AuthorizationPolicy document as written (security.istio.io v1 and
//! v1beta1), read strictly: an unknown field is an error with its path, so
//! nothing the operator wrote is silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Document {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
    /// Written by the cluster, not by the operator; never read.
    #[serde(default)]
    #[allow(dead_code)]
    pub status: Option<serde_json::Value>,
}

/// Kubernetes object metadata (the namespace is read from the raw document,
/// before this parse, so errors can name it). Unknown fields are allowed here: `kubectl get
/// -o yaml` adds uid, resourceVersion, managedFields and more, none of which
/// change what the policy means.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Spec {
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct From {
    #[serde(default)]
    pub source: Option<Source>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct To {
    #[serde(default)]
    pub operation: Option<Operation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Source {
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    #[serde(default)]
    pub not_principals: Option<Vec<String>>,
    #[serde(default)]
    pub request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub not_request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub service_accounts: Option<Vec<String>>,
    #[serde(default)]
    pub not_service_accounts: Option<Vec<String>>,
    #[serde(default)]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub not_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub remote_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Operation {
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub not_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<String>>,
    #[serde(default)]
    pub not_ports: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub not_methods: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub not_values: Option<Vec<String>>,
}
