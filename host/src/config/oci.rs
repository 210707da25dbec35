//! Plugins pulled from an OCI registry: the `oci://` reference syntax, the
//! pull policy of an entry, and the waypoint-wide pull settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

type FieldError = (String, String);

/// `oci://registry[:port]/repository[:tag]` or `...@sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    /// `host` or `host:port`, as written.
    pub registry: String,
    pub repository: String,
    pub reference: OciTag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciTag {
    Tag(String),
    /// Lowercase hex of a sha256 manifest digest.
    Digest(String),
}

impl OciReference {
    /// Parses what follows `oci://`.
    pub fn parse(rest: &str) -> Result<OciReference, String> {
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            format!("`oci://{rest}` names no repository (oci://REGISTRY/REPO:TAG)")
        })?;
        if registry.is_empty() || registry.contains(['@', '?', '#']) {
            return Err(format!(
                "`oci://{rest}`: `{registry}` is not a registry host"
            ));
        }
        let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
            let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                format!("`oci://{rest}`: digest `{digest}` must be sha256:<64 hex digits>")
            })?;
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "`oci://{rest}`: digest `{digest}` must be sha256:<64 hex digits>"
                ));
            }
            (repo, OciTag::Digest(hex.to_ascii_lowercase()))
        } else {
            // A colon after the last slash separates the tag.
            let last = path.rfind('/').map(|i| i + 1).unwrap_or(0);
            match path[last..].find(':') {
                Some(i) => (
                    &path[..last + i],
                    OciTag::Tag(path[last + i + 1..].to_owned()),
                ),
                None => (path, OciTag::Tag("latest".to_owned())),
            }
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|seg| {
                !seg.is_empty()
                    && seg.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
            });
        if !repo_ok {
            return Err(format!(
                "`oci://{rest}`: repository `{repository}` must be lowercase path segments \
                 (letters, digits, `.`, `_`, `-`)"
            ));
        }
        if let OciTag::Tag(tag) = &reference {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(format!(
                    "`oci://{rest}`: tag `{tag}` must be 1 to 128 letters, digits, `.`, `_`, `-`"
                ));
            }
        }
        Ok(OciReference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            reference,
        })
    }

    /// The reference as the distribution API's `<reference>` path segment.
    pub fn reference_str(&self) -> String {
        match &self.reference {
            OciTag::Tag(t) => t.clone(),
            OciTag::Digest(d) => format!("sha256:{d}"),
        }
    }

    /// The host without a port, to decide whether plain HTTP is allowed.
    pub fn host(&self) -> &str {
        if let Some(v6) = self.registry.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6);
        }
        self.registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&self.registry)
    }

    /// Registries on the loopback interface are spoken to in plain HTTP
    /// (test and development registries); any other over HTTPS.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for OciReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            OciTag::Tag(t) => write!(f, "oci://{}/{}:{t}", self.registry, self.repository),
            OciTag::Digest(d) => {
                write!(f, "oci://{}/{}@sha256:{d}", self.registry, self.repository)
            }
        }
    }
}

/// Istio's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull only when this waypoint has no copy of the url yet.
    IfNotPresent,
    /// Ask the registry on every load; an unchanged manifest reuses the copy.
    Always,
}

impl PullPolicy {
    /// Istio's default: `Always` for the `latest` tag, else `IfNotPresent`.
    pub fn resolve(policy: Option<PullPolicy>, reference: &OciReference) -> PullPolicy {
        policy.unwrap_or(match &reference.reference {
            OciTag::Tag(t) if t == "latest" => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        })
    }
}

/// How plugins are pulled from OCI registries (`oci:` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciConfig {
    /// A docker `config.json` (`auths`: `auth` = base64 `user:password`, or
    /// `username` / `password`, or `identitytoken`), relative to the config
    /// file. Read at every pull, so a rotated secret applies at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// PEM certificates trusted for HTTPS registries besides the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// One whole pull: token, manifests and blobs.
    #[serde(default = "default_pull_timeout_ms")]
    pub pull_timeout_ms: u64,
    /// A manifest or index larger than this is refused.
    #[serde(default = "default_max_manifest_bytes")]
    pub max_manifest_bytes: usize,
    /// A layer (and the module unpacked from it) larger than this is refused.
    #[serde(default = "default_max_layer_bytes")]
    pub max_layer_bytes: usize,
}

fn default_pull_timeout_ms() -> u64 {
    30_000
}
fn default_max_manifest_bytes() -> usize {
    4 << 20
}
fn default_max_layer_bytes() -> usize {
    64 << 20
}

impl Default for OciConfig {
    fn default() -> OciConfig {
        OciConfig {
            credentials_file: None,
            ca_file: None,
            pull_timeout_ms: default_pull_timeout_ms(),
            max_manifest_bytes: default_max_manifest_bytes(),
            max_layer_bytes: default_max_layer_bytes(),
        }
    }
}

impl OciConfig {
    pub fn pull_timeout(&self) -> Duration {
        Duration::from_millis(self.pull_timeout_ms)
    }

    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        if !(100..=600_000).contains(&self.pull_timeout_ms) {
            return Err((
                "pullTimeoutMs".into(),
                "must be between 100 and 600000".into(),
            ));
        }
        if !(1024..=(64 << 20)).contains(&self.max_manifest_bytes) {
            return Err((
                "maxManifestBytes".into(),
                "must be between 1024 and 67108864".into(),
            ));
        }
        if !(1024..=(1 << 30)).contains(&self.max_layer_bytes) {
            return Err((
                "maxLayerBytes".into(),
                "must be between 1024 and 1073741824".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_the_distribution_api_names_them() {
        let r = OciReference::parse("127.0.0.1:5000/plugins/allow:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "plugins/allow");
        assert_eq!(r.reference, OciTag::Tag("v1".into()));
        assert!(r.is_loopback());
        let d = format!("ghcr.io/acme/allow@sha256:{}", "AB".repeat(32));
        let r = OciReference::parse(&d).unwrap();
        assert_eq!(r.reference, OciTag::Digest("ab".repeat(32)));
        assert_eq!(r.reference_str(), format!("sha256:{}", "ab".repeat(32)));
        assert!(!r.is_loopback());
        let r = OciReference::parse("localhost/allow").unwrap();
        assert_eq!(r.reference, OciTag::Tag("latest".into()));
        assert_eq!(PullPolicy::resolve(None, &r), PullPolicy::Always);
        let r = OciReference::parse("[::1]:5000/allow:1.0").unwrap();
        assert_eq!(r.host(), "::1");
        assert!(r.is_loopback());
        assert_eq!(PullPolicy::resolve(None, &r), PullPolicy::IfNotPresent);
        for (bad, says) in [
            ("registry-only", "names no repository"),
            ("r/UPPER:v1", "lowercase"),
            ("r/a@sha256:abc", "64 hex"),
            ("r/a@md5:abc", "sha256:"),
            ("r/a:bad tag", "tag"),
            ("/a:v1", "not a registry host"),
        ] {
            let e = OciReference::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
