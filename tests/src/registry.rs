//! A real OCI registry (CNCF distribution, Debian's `docker-registry`,
//! installed by `tools/test-deps.sh`) on a free loopback port, with a temp
//! storage folder, and a push client for the distribution API.
//!
//! The registry is stopped and its folder removed when the handle drops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

const BINARY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    pub addr: SocketAddr,
    /// `user:password` the registry demands, when started with auth.
    pub basic: Option<(String, String)>,
    child: Child,
    dir: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Hex sha256 of the manifest as stored.
    pub manifest_digest: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Registry {
    /// Starts a registry; `htpasswd` is a bcrypt `user:hash` line to demand
    /// Basic auth with (the user and password are kept for pushes).
    pub async fn start(auth: Option<(&str, &str, &str)>) -> Registry {
        assert!(
            std::path::Path::new(BINARY).is_file(),
            "{BINARY} is missing: run tools/test-deps.sh (it installs Debian's docker-registry)"
        );
        let dir = std::env::temp_dir().join(format!(
            "wayplug-registry-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        // A free port: bound and released just before the registry binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut auth_yaml = String::new();
        if let Some((_, _, line)) = auth {
            std::fs::write(dir.join("htpasswd"), format!("{line}\n")).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: wayplug-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: wayplug-test-secret\n{auth_yaml}",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Registry {
            addr,
            basic: auth.map(|(u, p, _)| (u.to_owned(), p.to_owned())),
            child,
            dir,
        };
        // Up when /v2/ answers (200, or 401 when it wants credentials).
        for _ in 0..250 {
            if let Ok(Ok((status, _, _))) = tokio::time::timeout(
                Duration::from_secs(1),
                registry.request("GET", &format!("http://{addr}/v2/"), &[], Bytes::new()),
            )
            .await
                && (status == StatusCode::OK || status == StatusCode::UNAUTHORIZED)
            {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("docker-registry did not answer on {addr} within 5 s");
    }

    /// Stops the registry now (it stays stopped).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One HTTP/1.1 request (absolute URL), with the registry's credentials
    /// when it has some, bounded to 10 s.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let authority = uri.authority().ok_or("no authority")?.to_string();
        let fut = async {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut req = Request::builder()
                .method(method)
                .uri(target)
                .header("host", &authority)
                .header("content-length", body.len());
            if let Some((u, p)) = &self.basic {
                req = req.header("authorization", basic(u, p));
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = sender
                .send_request(req.body(Full::new(body.clone())).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| format!("{method} {url}: no answer within 10 s"))?
    }

    /// Uploads a blob (monolithic: POST then PUT with the digest); returns
    /// its `sha256:` digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let start = format!("http://{}/v2/{repo}/blobs/uploads/", self.addr);
        let (status, headers, body) = self
            .request("POST", &start, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{start}: {body:?}");
        let location = headers["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.addr)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let (status, _, body) = self
            .request(
                "PUT",
                &put,
                &[("content-type", "application/octet-stream")],
                Bytes::copy_from_slice(bytes),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{put}: {body:?}");
        digest
    }

    /// Stores `manifest` (of `media_type`) under `tag`.
    pub async fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        manifest: &serde_json::Value,
    ) -> Pushed {
        let bytes = serde_json::to_vec(manifest).unwrap();
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.addr);
        let (status, _, body) = self
            .request(
                "PUT",
                &url,
                &[("content-type", media_type)],
                Bytes::from(bytes.clone()),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{url}: {body:?}");
        Pushed {
            manifest_digest: hex::encode(Sha256::digest(&bytes)),
        }
    }

    /// A Wasm OCI artifact (Istio's *oci* variant): a config blob and one
    /// `application/vnd.module.wasm.content.layer.v1+wasm` layer holding
    /// the module as is.
    pub async fn push_wasm_artifact(&self, repo: &str, tag: &str, module: &[u8]) -> Pushed {
        let config = br#"{}"#;
        let config_digest = self.push_blob(repo, config).await;
        let layer_digest = self.push_blob(repo, module).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.module.wasm.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.module.wasm.content.layer.v1+wasm",
                "digest": layer_digest,
                "size": module.len(),
            }],
        });
        self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .await
    }

    /// An image (Istio's *compat* variant): one gzipped tar layer holding
    /// `plugin.wasm`, with an OCI image config.
    pub async fn push_wasm_image(&self, repo: &str, tag: &str, layer_tar_gz: &[u8]) -> Pushed {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = self.push_blob(repo, config).await;
        let layer_digest = self.push_blob(repo, layer_tar_gz).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_tar_gz.len(),
            }],
            "annotations": { "module.wasm.image/variant": "compat" },
        });
        self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .await
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {token}")
}

/// A gzipped tar holding `module` as `plugin.wasm` (an image layer).
pub fn plugin_layer(module: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "plugin.wasm", module).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}
