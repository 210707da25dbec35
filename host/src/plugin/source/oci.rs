//! Pulling Wasm plugins from an OCI registry (the distribution API).
//!
//! A pull is: the manifest (`GET /v2/<repo>/manifests/<ref>`, following an
//! image index to the one Wasm manifest it lists), then the one layer that
//! holds the module (`GET /v2/<repo>/blobs/<digest>`). Every document and
//! blob is checked against the sha256 digest that names it before anything
//! reads it; sizes are capped before they are read; the whole pull has one
//! deadline. Layouts accepted are the ones Istio's WasmPlugin accepts:
//!
//! - a Wasm artifact: a layer of type
//!   `application/vnd.module.wasm.content.layer.v1+wasm` or `application/wasm`
//!   whose blob is the module itself;
//! - an image ("compat" variant): the last layer is a tar
//!   (`application/vnd.oci.image.layer.v1.tar[+gzip]`, Docker's
//!   `application/vnd.docker.image.rootfs.diff.tar.gzip`) holding
//!   `plugin.wasm`.
//!
//! Registries on loopback are spoken to in plain HTTP, any other over HTTPS
//! with the system's roots (plus `oci.caFile`). A 401 is answered once with
//! the credentials file's entry for the registry: Basic, or the token flow
//! (`WWW-Authenticate: Bearer realm=...` -> token -> `Authorization: Bearer`).
//!
//! Pulled modules are kept in memory by url, so `IfNotPresent` asks the
//! registry once per process and `Always` downloads a layer again only when
//! the manifest changed.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{OciConfig, OciReference, OciTag, PullPolicy};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{url}: {step}: {reason}")]
    Transport {
        url: String,
        step: &'static str,
        reason: String,
    },
    #[error("{url}: {step}: the registry answered {status}{detail}")]
    Status {
        url: String,
        step: &'static str,
        status: StatusCode,
        detail: String,
    },
    #[error("{url}: {step}: larger than {limit} bytes (oci.{setting})")]
    TooLarge {
        url: String,
        step: &'static str,
        limit: usize,
        setting: &'static str,
    },
    #[error(
        "{url}: {step}: digest mismatch: expected sha256:{expected}, the content is sha256:{actual}"
    )]
    Digest {
        url: String,
        step: &'static str,
        expected: String,
        actual: String,
    },
    #[error(
        "{url}: sha256 mismatch: config expects {expected}, the image manifest is {manifest} and \
         the module is {module}"
    )]
    Pin {
        url: String,
        expected: String,
        manifest: String,
        module: String,
    },
    #[error("{url}: {step}: {reason}")]
    Layout {
        url: String,
        step: &'static str,
        reason: String,
    },
    #[error("{url}: credentials file {path}: {reason}")]
    Credentials {
        url: String,
        path: String,
        reason: String,
    },
    #[error("{url}: {step}: {reason}")]
    Auth {
        url: String,
        step: &'static str,
        reason: String,
    },
    #[error("{url}: pull did not finish within {after:?} (oci.pullTimeoutMs)")]
    Timeout { url: String, after: Duration },
}

/// A module pulled (or found in the in-memory copy).
#[derive(Debug, Clone)]
pub struct Pulled {
    pub bytes: Arc<[u8]>,
    /// Hex sha256 of the image manifest the module came from.
    pub manifest_digest: String,
    /// No request reached the registry.
    pub from_cache: bool,
}

#[derive(Debug, Clone)]
struct Settings {
    config: OciConfig,
    base_dir: PathBuf,
}

/// Pulls `oci://` plugins and keeps what it pulled.
pub struct Puller {
    settings: Mutex<Settings>,
    cache: Mutex<HashMap<String, Pulled>>,
}

/// Distinct urls kept in memory; the oldest half goes past this.
const MAX_CACHED: usize = 256;
/// Redirects followed for one blob (registries hand blobs to storage).
const MAX_REDIRECTS: usize = 5;
/// An index may list this many manifests.
const MAX_INDEX_ENTRIES: usize = 64;
/// Credentials files and token answers are small documents.
const MAX_SMALL_DOC: usize = 1 << 20;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

const WASM_LAYERS: [&str; 2] = [
    "application/vnd.module.wasm.content.layer.v1+wasm",
    "application/wasm",
];
const TAR_GZ_LAYERS: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const PLUGIN_FILE: &str = "plugin.wasm";

impl Default for Puller {
    fn default() -> Self {
        Puller {
            settings: Mutex::new(Settings {
                config: OciConfig::default(),
                base_dir: PathBuf::from("."),
            }),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// One pull: the url it serves and the authorization it earned.
struct Pull<'a> {
    reference: &'a OciReference,
    url: String,
    settings: &'a Settings,
    authorization: Option<String>,
    tried_auth: bool,
}

impl Puller {
    /// Settings for the pulls that follow (from the config being loaded).
    pub fn configure(&self, config: &OciConfig, base_dir: &Path) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = Settings {
            config: config.clone(),
            base_dir: base_dir.to_owned(),
        };
    }

    /// The module at `reference`, pulled per `policy`, checked against
    /// `pin` (the entry's `sha256`: the manifest digest or the module's).
    pub async fn fetch(
        &self,
        reference: &OciReference,
        policy: Option<PullPolicy>,
        pin: Option<&str>,
    ) -> Result<Pulled, OciError> {
        let url = reference.to_string();
        let policy = PullPolicy::resolve(policy, reference);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&url)
            .cloned();
        if policy == PullPolicy::IfNotPresent
            && let Some(c) = &cached
            && check_pin(&url, pin, c).is_ok()
        {
            return Ok(Pulled {
                from_cache: true,
                ..c.clone()
            });
        }
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let timeout = settings.config.pull_timeout();
        let mut pull = Pull {
            reference,
            url: url.clone(),
            settings: &settings,
            authorization: None,
            tried_auth: false,
        };
        let pulled = tokio::time::timeout(timeout, pull.run(cached.as_ref()))
            .await
            .map_err(|_| OciError::Timeout {
                url: url.clone(),
                after: timeout,
            })??;
        check_pin(&url, pin, &pulled)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED && !cache.contains_key(&url) {
            let drop: Vec<String> = cache.keys().take(MAX_CACHED / 2).cloned().collect();
            for k in drop {
                cache.remove(&k);
            }
        }
        cache.insert(url.clone(), pulled.clone());
        tracing::info!(url, manifest = %pulled.manifest_digest, size = pulled.bytes.len(), "plugin pulled");
        Ok(pulled)
    }
}

/// The entry's `sha256` may name the image manifest (Istio's meaning) or
/// the module itself (what it means for `file://`).
fn check_pin(url: &str, pin: Option<&str>, pulled: &Pulled) -> Result<(), OciError> {
    let Some(expected) = pin else {
        return Ok(());
    };
    let module = hex::encode(Sha256::digest(&pulled.bytes));
    if expected.eq_ignore_ascii_case(&pulled.manifest_digest)
        || expected.eq_ignore_ascii_case(&module)
    {
        return Ok(());
    }
    Err(OciError::Pin {
        url: url.to_owned(),
        expected: expected.to_owned(),
        manifest: pulled.manifest_digest.clone(),
        module,
    })
}

impl Pull<'_> {
    async fn run(&mut self, cached: Option<&Pulled>) -> Result<Pulled, OciError> {
        let reference = self.reference.reference_str();
        let (manifest, digest) = self.manifest(&reference, "manifest").await?;
        if let OciTag::Digest(want) = &self.reference.reference
            && *want != digest
        {
            return Err(self.digest_error("manifest", want, &digest));
        }
        let (manifest, digest) = if manifest.manifests.is_empty() {
            (manifest, digest)
        } else {
            let entry =
                pick_from_index(&manifest.manifests).map_err(|reason| OciError::Layout {
                    url: self.url.clone(),
                    step: "image index",
                    reason,
                })?;
            let want =
                sha256_hex(&entry.digest).map_err(|reason| self.layout("image index", reason))?;
            let (m, d) = self
                .manifest(&format!("sha256:{want}"), "indexed manifest")
                .await?;
            if d != want {
                return Err(self.digest_error("indexed manifest", &want, &d));
            }
            if !m.manifests.is_empty() {
                return Err(self.layout("indexed manifest", "an index inside an index".into()));
            }
            (m, d)
        };
        if let Some(c) = cached
            && c.manifest_digest == digest
        {
            // `Always` with an unchanged manifest: the layer is the same.
            return Ok(Pulled {
                from_cache: false,
                ..c.clone()
            });
        }
        let (layer, kind) = pick_layer(&manifest.layers).map_err(|r| self.layout("layers", r))?;
        let max = self.settings.config.max_layer_bytes;
        if layer.size > max as u64 {
            return Err(OciError::TooLarge {
                url: self.url.clone(),
                step: "layer",
                limit: max,
                setting: "maxLayerBytes",
            });
        }
        let want = sha256_hex(&layer.digest).map_err(|r| self.layout("layer", r))?;
        let blob = self.blob(&want, layer.size as usize).await?;
        let bytes = match kind {
            LayerKind::Wasm => blob.to_vec(),
            LayerKind::Tar { gzip } => {
                let url = self.url.clone();
                tokio::task::spawn_blocking(move || unpack(&blob, gzip, max))
                    .await
                    .map_err(|e| OciError::Layout {
                        url: url.clone(),
                        step: "layer",
                        reason: format!("unpacking failed: {e}"),
                    })?
                    .map_err(|reason| OciError::Layout {
                        url,
                        step: "layer",
                        reason,
                    })?
            }
        };
        Ok(Pulled {
            bytes: bytes.into(),
            manifest_digest: digest,
            from_cache: false,
        })
    }

    fn layout(&self, step: &'static str, reason: String) -> OciError {
        OciError::Layout {
            url: self.url.clone(),
            step,
            reason,
        }
    }

    fn digest_error(&self, step: &'static str, expected: &str, actual: &str) -> OciError {
        OciError::Digest {
            url: self.url.clone(),
            step,
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        }
    }

    fn endpoint(&self, path: &str) -> String {
        let scheme = if self.reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        format!(
            "{scheme}://{}/v2/{}/{path}",
            self.reference.registry, self.reference.repository
        )
    }

    /// A manifest or index and the hex sha256 of its bytes.
    async fn manifest(
        &mut self,
        reference: &str,
        step: &'static str,
    ) -> Result<(Manifest, String), OciError> {
        let uri = self.endpoint(&format!("manifests/{reference}"));
        let max = self.settings.config.max_manifest_bytes;
        let resp = self
            .get_authorized(&uri, Some(ACCEPT_MANIFESTS), max, step, "maxManifestBytes")
            .await?;
        let digest = hex::encode(Sha256::digest(&resp.body));
        if let Some(claimed) = resp
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("sha256:"))
            && !claimed.eq_ignore_ascii_case(&digest)
        {
            return Err(self.digest_error(step, claimed, &digest));
        }
        let manifest: Manifest = serde_json::from_slice(&resp.body)
            .map_err(|e| self.layout(step, format!("not a manifest: {e}")))?;
        if manifest.manifests.len() > MAX_INDEX_ENTRIES {
            return Err(self.layout(
                step,
                format!("an index of more than {MAX_INDEX_ENTRIES} manifests"),
            ));
        }
        Ok((manifest, digest))
    }

    /// A blob of exactly `size` bytes whose sha256 is `want`.
    async fn blob(&mut self, want: &str, size: usize) -> Result<Bytes, OciError> {
        let mut uri = self.endpoint(&format!("blobs/sha256:{want}"));
        let origin = authority_of(&uri);
        for _ in 0..=MAX_REDIRECTS {
            // Credentials stay with the registry: storage a blob is
            // redirected to gets none.
            let same_origin = authority_of(&uri) == origin;
            let resp = if same_origin {
                self.get_authorized(&uri, None, size, "layer", "maxLayerBytes")
                    .await?
            } else {
                self.get_once(&uri, None, None, size, "layer", "maxLayerBytes")
                    .await?
            };
            if resp.status.is_redirection() {
                let next = resp
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.layout("layer", "a redirect without Location".into()))?;
                uri = resolve_location(&uri, next);
                continue;
            }
            self.expect_ok(&resp, "layer")?;
            if resp.body.len() != size {
                return Err(self.layout(
                    "layer",
                    format!("{} bytes, the manifest says {size}", resp.body.len()),
                ));
            }
            let actual = hex::encode(Sha256::digest(&resp.body));
            if actual != want {
                return Err(self.digest_error("layer", want, &actual));
            }
            return Ok(resp.body);
        }
        Err(self.layout("layer", format!("more than {MAX_REDIRECTS} redirects")))
    }

    fn expect_ok(&self, resp: &Fetched, step: &'static str) -> Result<(), OciError> {
        if resp.status == StatusCode::OK {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&resp.body);
        let text: String = text.chars().take(200).collect();
        Err(OciError::Status {
            url: self.url.clone(),
            step,
            status: resp.status,
            detail: if text.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", text.trim())
            },
        })
    }

    /// GET with the authorization earned so far; on a first 401, earns it
    /// from the challenge and asks once more.
    async fn get_authorized(
        &mut self,
        uri: &str,
        accept: Option<&str>,
        max: usize,
        step: &'static str,
        setting: &'static str,
    ) -> Result<Fetched, OciError> {
        let auth = self.authorization.clone();
        let resp = self
            .get_once(uri, accept, auth.as_deref(), max, step, setting)
            .await?;
        if resp.status != StatusCode::UNAUTHORIZED || self.tried_auth {
            if !resp.status.is_redirection() {
                self.expect_ok(&resp, step)?;
            }
            return Ok(resp);
        }
        self.tried_auth = true;
        let challenge = resp
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.authorization = Some(self.authorize(&challenge, step).await?);
        let auth = self.authorization.clone();
        let resp = self
            .get_once(uri, accept, auth.as_deref(), max, step, setting)
            .await?;
        if resp.status == StatusCode::UNAUTHORIZED {
            return Err(OciError::Auth {
                url: self.url.clone(),
                step,
                reason: "the registry refused the credentials (401)".into(),
            });
        }
        if !resp.status.is_redirection() {
            self.expect_ok(&resp, step)?;
        }
        Ok(resp)
    }

    /// The `Authorization` value a challenge asks for.
    async fn authorize(&self, challenge: &str, step: &'static str) -> Result<String, OciError> {
        let creds = self.credentials()?;
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, pass) = creds.ok_or_else(|| self.no_credentials(step))?;
            return Ok(basic(&user, &pass));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(OciError::Auth {
                url: self.url.clone(),
                step,
                reason: format!("401 with an unsupported challenge `{challenge}`"),
            });
        }
        let realm = params.get("realm").ok_or_else(|| OciError::Auth {
            url: self.url.clone(),
            step,
            reason: "Bearer challenge without a realm".into(),
        })?;
        let mut query = Vec::new();
        if let Some(service) = params.get("service") {
            query.push(format!("service={}", encode_query(service)));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        query.push(format!("scope={}", encode_query(&scope)));
        let sep = if realm.contains('?') { '&' } else { '?' };
        let token_uri = format!("{realm}{sep}{}", query.join("&"));
        let auth = creds.map(|(u, p)| basic(&u, &p));
        let resp = self
            .get_once(
                &token_uri,
                None,
                auth.as_deref(),
                MAX_SMALL_DOC,
                "token",
                "maxManifestBytes",
            )
            .await?;
        if resp.status != StatusCode::OK {
            return Err(OciError::Auth {
                url: self.url.clone(),
                step: "token",
                reason: format!("the token service {realm} answered {}", resp.status),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&resp.body).map_err(|e| OciError::Auth {
            url: self.url.clone(),
            step: "token",
            reason: format!("the token service {realm} answered no token: {e}"),
        })?;
        let token = token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OciError::Auth {
                url: self.url.clone(),
                step: "token",
                reason: format!("the token service {realm} answered no token"),
            })?;
        Ok(format!("Bearer {token}"))
    }

    fn no_credentials(&self, step: &'static str) -> OciError {
        OciError::Auth {
            url: self.url.clone(),
            step,
            reason: format!(
                "the registry asks for credentials and oci.credentialsFile has none for `{}`",
                self.reference.registry
            ),
        }
    }

    /// The registry's user and password from the credentials file, if any.
    fn credentials(&self) -> Result<Option<(String, String)>, OciError> {
        let Some(file) = &self.settings.config.credentials_file else {
            return Ok(None);
        };
        let path = self.settings.base_dir.join(file);
        let err = |reason: String| OciError::Credentials {
            url: self.url.clone(),
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?;
        if meta.len() > MAX_SMALL_DOC as u64 {
            return Err(err(format!("larger than {MAX_SMALL_DOC} bytes")));
        }
        let text = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        registry_credentials(&text, &self.reference.registry).map_err(err)
    }

    async fn get_once(
        &self,
        uri: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
        max: usize,
        step: &'static str,
        setting: &'static str,
    ) -> Result<Fetched, OciError> {
        let transport = |reason: String| OciError::Transport {
            url: self.url.clone(),
            step,
            reason,
        };
        let parsed: Uri = uri
            .parse()
            .map_err(|e| transport(format!("bad address {uri}: {e}")))?;
        let mut req = Request::get(&parsed).header(header::USER_AGENT, "wayplug");
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(a) = authorization {
            let mut v = HeaderValue::from_str(a).map_err(|e| transport(e.to_string()))?;
            v.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        let ca = self
            .settings
            .config
            .ca_file
            .as_ref()
            .map(|f| self.settings.base_dir.join(f));
        let resp = send(req, ca.as_deref())
            .await
            .map_err(|e| transport(format!("{uri}: {e}")))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                OciError::TooLarge {
                    url: self.url.clone(),
                    step,
                    limit: max,
                    setting,
                }
            } else {
                transport(format!("{uri}: reading the body: {e}"))
            }
        })?;
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }
}

struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// One request on its own connection: pulls are rare, so nothing is pooled.
async fn send(
    req: Request<Empty<Bytes>>,
    ca_file: Option<&Path>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let uri = req.uri().clone();
    let host = uri.host().ok_or("no host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut req = req;
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    req.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(&host_header).map_err(|e| e.to_string())?,
    );
    // HTTP/1.1 wants the origin form on the wire.
    *req.uri_mut() = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if https {
        let connector = tls_connector(ca_file)?;
        let name = rustls_pki_types::ServerName::try_from(bare.clone())
            .map_err(|e| format!("bad TLS name {bare}: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(TokioIo::new(tls), req).await
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    req: Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("oci.caFile {}: {e}", path.display()))?;
        let mut reader = std::io::Cursor::new(pem);
        for cert in rustls_pemfile_certs(&mut reader) {
            roots
                .add(cert)
                .map_err(|e| format!("oci.caFile {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    reader: &mut std::io::Cursor<Vec<u8>>,
) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_reader_iter(reader)
        .filter_map(Result::ok)
        .collect()
}

fn authority_of(uri: &str) -> Option<String> {
    uri.parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
}

/// An absolute Location as is; a path resolves against the current origin.
fn resolve_location(current: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let Ok(uri) = current.parse::<Uri>() else {
        return location.to_owned();
    };
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        location
    )
}

fn sha256_hex(digest: &str) -> Result<String, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest `{digest}` is not sha256 (the only algorithm supported)"))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("digest `{digest}` is not sha256:<64 hex digits>"));
    }
    Ok(hex.to_ascii_lowercase())
}

/// The manifest of an index that carries Wasm: one for a wasm platform, or
/// the only one listed.
fn pick_from_index(entries: &[Descriptor]) -> Result<&Descriptor, String> {
    let wasm = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.architecture == "wasm" || p.os == "wasi" || p.os == "wasip1" || p.os == "wasip2"
        })
    };
    if let Some(d) = entries.iter().find(wasm) {
        return Ok(d);
    }
    match entries {
        [only] => Ok(only),
        _ => Err(format!(
            "an index of {} manifests, none for a wasm platform (architecture wasm or os wasi)",
            entries.len()
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerKind {
    Wasm,
    Tar { gzip: bool },
}

/// The layer holding the module: a Wasm layer wherever it is, else the
/// last layer when it is a tar (the image layout).
fn pick_layer(layers: &[Descriptor]) -> Result<(&Descriptor, LayerKind), String> {
    if let Some(l) = layers
        .iter()
        .find(|l| WASM_LAYERS.contains(&l.media_type.as_str()))
    {
        return Ok((l, LayerKind::Wasm));
    }
    let Some(last) = layers.last() else {
        return Err("the manifest has no layers".into());
    };
    if TAR_GZ_LAYERS.contains(&last.media_type.as_str()) {
        return Ok((last, LayerKind::Tar { gzip: true }));
    }
    if last.media_type == TAR_LAYER {
        return Ok((last, LayerKind::Tar { gzip: false }));
    }
    let types: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
    Err(format!(
        "no Wasm layer ({}) and the last layer is not a tar holding {PLUGIN_FILE}; layers: {}",
        WASM_LAYERS.join(", "),
        types.join(", ")
    ))
}

/// `plugin.wasm` out of a tar layer, reading at most `max` bytes of the
/// unpacked stream (a small gzip can inflate to anything).
fn unpack(blob: &[u8], gzip: bool, max: usize) -> Result<Vec<u8>, String> {
    let limit = max as u64 + (1 << 20);
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(blob).take(limit))
    } else {
        Box::new(blob.take(limit))
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| format!("bad tar entry (or more than {limit} bytes unpacked): {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad tar entry name: {e}"))?
            .into_owned();
        if path.file_name().is_none_or(|n| n != PLUGIN_FILE) {
            continue;
        }
        if entry.size() > max as u64 {
            return Err(format!(
                "{PLUGIN_FILE} is {} bytes, more than oci.maxLayerBytes ({max})",
                entry.size()
            ));
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut out)
            .map_err(|e| format!("reading {PLUGIN_FILE}: {e}"))?;
        return Ok(out);
    }
    Err(format!("no {PLUGIN_FILE} in the layer"))
}

fn basic(user: &str, pass: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {token}")
}

/// `user:password` for `registry` from a docker `config.json`.
fn registry_credentials(text: &[u8], registry: &str) -> Result<Option<(String, String)>, String> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let file: File =
        serde_json::from_slice(text).map_err(|e| format!("not a docker config.json: {e}"))?;
    // Keys are written `host:port`, `https://host:port` or with a path
    // (`https://index.docker.io/v1/`).
    let key_host = |k: &str| {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_ascii_lowercase()
    };
    let want = registry.to_ascii_lowercase();
    let Some((key, entry)) = file.auths.iter().find(|(k, _)| key_host(k) == want) else {
        return Ok(None);
    };
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{key}.auth is not base64 of user:password"))?;
        return Ok(Some((u.to_owned(), p.to_owned())));
    }
    match (&entry.username, &entry.password, &entry.identitytoken) {
        (Some(u), Some(p), _) => Ok(Some((u.clone(), p.clone()))),
        (_, _, Some(_)) => Err(format!(
            "auths.{key}: identitytoken is not supported; give auth or username and password"
        )),
        _ => Err(format!("auths.{key}: no auth, nor username and password")),
    }
}

/// `Bearer realm="...",service="...",scope="..."` as its scheme and
/// parameters.
fn parse_challenge(value: &str) -> (String, HashMap<String, String>) {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, val.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

/// Percent-encodes a query value (scopes carry `:` and `/`).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn credentials_come_from_the_registrys_entry() {
        let file = br#"{"auths": {
            "https://127.0.0.1:5000/v1/": {"auth": "YWxpY2U6czNjcmV0"},
            "other.example": {"username": "bob", "password": "pw"},
            "token.example": {"identitytoken": "t"}
        }}"#;
        assert_eq!(
            registry_credentials(file, "127.0.0.1:5000").unwrap(),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            registry_credentials(file, "OTHER.example").unwrap(),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(registry_credentials(file, "nobody.example").unwrap(), None);
        assert!(
            registry_credentials(file, "token.example")
                .unwrap_err()
                .contains("identitytoken")
        );
        assert!(
            registry_credentials(b"not json", "x")
                .unwrap_err()
                .contains("docker config.json")
        );
    }

    fn layer(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: None,
        }
    }

    #[test]
    fn the_module_layer_is_found_in_every_layout_istio_accepts() {
        let artifact = [
            layer("application/vnd.module.wasm.runtime.config.v1+json"),
            layer("application/vnd.module.wasm.content.layer.v1+wasm"),
        ];
        assert_eq!(pick_layer(&artifact).unwrap().1, LayerKind::Wasm);
        assert_eq!(
            pick_layer(&[layer("application/wasm")]).unwrap().1,
            LayerKind::Wasm
        );
        let image = [
            layer("application/vnd.oci.image.layer.v1.tar+gzip"),
            layer("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ];
        assert_eq!(pick_layer(&image).unwrap().1, LayerKind::Tar { gzip: true });
        assert_eq!(
            pick_layer(&[layer(TAR_LAYER)]).unwrap().1,
            LayerKind::Tar { gzip: false }
        );
        let e = pick_layer(&[layer("application/json")]).unwrap_err();
        assert!(e.contains("application/json"), "{e}");
        assert!(pick_layer(&[]).unwrap_err().contains("no layers"));
    }

    fn tar_with(name: &str, content: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, content).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn image_layers_unpack_plugin_wasm_within_the_cap() {
        let tar = tar_with("plugin.wasm", b"\0asm\x01\0\0\0");
        assert_eq!(unpack(&tar, false, 1024).unwrap(), b"\0asm\x01\0\0\0");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_with("./x/plugin.wasm", b"abc")).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(unpack(&gz, true, 1024).unwrap(), b"abc");
        let big = tar_with("plugin.wasm", &vec![0u8; 4096]);
        assert!(
            unpack(&big, false, 1024)
                .unwrap_err()
                .contains("maxLayerBytes")
        );
        let other = tar_with("other.wasm", b"abc");
        assert!(
            unpack(&other, false, 1024)
                .unwrap_err()
                .contains("no plugin.wasm")
        );
    }

    #[test]
    fn a_pin_may_name_the_manifest_or_the_module() {
        let pulled = Pulled {
            bytes: Arc::from(&b"module"[..]),
            manifest_digest: "ab".repeat(32),
            from_cache: false,
        };
        let module = hex::encode(Sha256::digest(b"module"));
        assert!(check_pin("u", None, &pulled).is_ok());
        assert!(check_pin("u", Some(&"AB".repeat(32)), &pulled).is_ok());
        assert!(check_pin("u", Some(&module), &pulled).is_ok());
        let e = check_pin("u", Some(&"cd".repeat(32)), &pulled)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&"cd".repeat(32)) && e.contains(&module) && e.contains(&"ab".repeat(32)),
            "{e}"
        );
    }
}
