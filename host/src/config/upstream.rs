//! TLS towards a named upstream (the gRPC callouts' clusters).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

type FieldError = (String, String);

/// How to reach an upstream over TLS. gRPC callouts then speak HTTP/2 with
/// ALPN `h2`; without this section they speak h2c.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM certificates the server's chain must reach (relative to the
    /// config file).
    pub ca_file: PathBuf,
    /// The name the server certificate must carry, also sent as SNI.
    /// Default: the upstream's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) for mutual TLS; needs `keyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs `certFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// A ready TLS client setup for one upstream.
#[derive(Clone)]
pub struct UpstreamTlsClient {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// Makes relative paths relative to the config file's directory.
    pub(super) fn resolve(&mut self, base_dir: &Path) {
        self.ca_file = base_dir.join(&self.ca_file);
        for p in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            *p = base_dir.join(&*p);
        }
    }

    /// Reads the files and builds the client config; the error names the
    /// field at fault.
    pub fn client(&self, address_ip: std::net::IpAddr) -> Result<UpstreamTlsClient, FieldError> {
        let read = |field: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                (
                    field.to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        };
        let certs =
            |field: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, FieldError> {
                let pem = read(field, path)?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        (
                            field.to_owned(),
                            format!("{} is not valid PEM: {e}", path.display()),
                        )
                    })?;
                if certs.is_empty() {
                    return Err((
                        field.to_owned(),
                        format!("{} contains no PEM CERTIFICATE block", path.display()),
                    ));
                }
                Ok(certs)
            };
        let mut roots = RootCertStore::empty();
        for cert in certs("caFile", &self.ca_file)? {
            roots.add(cert).map_err(|e| {
                (
                    "caFile".to_owned(),
                    format!(
                        "{}: not a usable CA certificate: {e}",
                        self.ca_file.display()
                    ),
                )
            })?;
        }
        let server_name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone()).map_err(|e| {
                (
                    "serverName".to_owned(),
                    format!("`{name}` is not a DNS name or IP address: {e}"),
                )
            })?,
            None => ServerName::IpAddress(address_ip.into()),
        };
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| ("caFile".to_owned(), e.to_string()))?
                .with_root_certificates(roots);
        let mut config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certs("certFile", cert)?;
                let key_pem = read("keyFile", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    (
                        "keyFile".to_owned(),
                        format!("{}: no usable private key: {e}", key.display()),
                    )
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    (
                        "keyFile".to_owned(),
                        format!("does not match certFile: {e}"),
                    )
                })?
            }
            (Some(_), None) => return Err(("keyFile".into(), "certFile needs keyFile".into())),
            (None, Some(_)) => return Err(("certFile".into(), "keyFile needs certFile".into())),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(UpstreamTlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}
