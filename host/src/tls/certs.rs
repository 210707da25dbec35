//! Loading the waypoint's identity from Istio's file-mounted layout.
//!
//! A directory holds `cert-chain.pem` (leaf first, then intermediates), `key.pem` and
//! `root-cert.pem` (one or more mesh roots). A set of files becomes [`Credentials`] only when
//! it is usable as a whole: the key belongs to the leaf, the leaf carries one SPIFFE id, is
//! currently valid and chains to one of the roots. Anything less is refused here, so a bad
//! rotation can never replace a working identity.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::identity::{CertFacts, format_time};
use super::{Error, SpiffeId, crypto_provider};

/// Leaf certificate followed by any intermediates.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The leaf's private key (PKCS#8, SEC1 or PKCS#1 PEM).
pub const KEY_FILE: &str = "key.pem";
/// The mesh trust anchors; several during a root rotation.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// The raw contents of the three files, kept to notice when they change.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct FileSet {
    pub cert_chain: Vec<u8>,
    pub key: Vec<u8>,
    pub roots: Vec<u8>,
}

impl FileSet {
    pub fn read(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| read_error(path, e))
        };
        Ok(FileSet {
            cert_chain: read(CERT_CHAIN_FILE)?,
            key: read(KEY_FILE)?,
            roots: read(ROOT_CERT_FILE)?,
        })
    }

    pub async fn read_async(dir: &Path) -> Result<Self, Error> {
        async fn read(dir: &Path, name: &str) -> Result<Vec<u8>, Error> {
            let path = dir.join(name);
            tokio::fs::read(&path)
                .await
                .map_err(|e| read_error(path, e))
        }
        Ok(FileSet {
            cert_chain: read(dir, CERT_CHAIN_FILE).await?,
            key: read(dir, KEY_FILE).await?,
            roots: read(dir, ROOT_CERT_FILE).await?,
        })
    }
}

fn read_error(path: PathBuf, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        Error::MissingFile { path }
    } else {
        Error::Read { path, source }
    }
}

/// A usable identity: certified key, mesh roots and the SPIFFE id, from one consistent set of
/// files.
pub struct Credentials {
    id: SpiffeId,
    certified_key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    // Our own intermediates. Peers in the same mesh are usually issued by the same
    // intermediate, and ztunnel sends its leaf alone, so these complete peer chains.
    intermediates: Vec<CertificateDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    not_after: SystemTime,
    source: FileSet,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.to_string())
            .field("not_after", &format_time(self.not_after))
            .field("chain_len", &self.certified_key.cert.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads and checks `cert-chain.pem`, `key.pem` and `root-cert.pem` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let files = FileSet::read(dir)?;
        Credentials::from_files(dir, files)
    }

    /// `dir` is only used to name files in errors.
    pub(crate) fn from_files(dir: &Path, files: FileSet) -> Result<Self, Error> {
        let provider = crypto_provider();
        let chain_path = dir.join(CERT_CHAIN_FILE);
        let key_path = dir.join(KEY_FILE);
        let roots_path = dir.join(ROOT_CERT_FILE);

        let chain = parse_certs(&chain_path, &files.cert_chain)?;
        let roots_der = parse_certs(&roots_path, &files.roots)?;

        let key = match PrivateKeyDer::from_pem_slice(&files.key) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(Error::NoPrivateKey { path: key_path }),
            Err(source) => {
                return Err(Error::Pem {
                    path: key_path,
                    source,
                });
            }
        };
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| Error::InvalidKey {
                path: key_path.clone(),
                source,
            })?;

        let leaf_what = format!("leaf certificate in {}", chain_path.display());
        let facts = CertFacts::parse(&chain[0], &leaf_what)?;
        let id = facts.spiffe_id(&leaf_what)?;
        let now = SystemTime::now();
        if facts.not_before > now {
            return Err(Error::NotYetValid {
                what: leaf_what,
                not_before: format_time(facts.not_before),
            });
        }
        if facts.not_after <= now {
            return Err(Error::Expired {
                what: leaf_what,
                not_after: format_time(facts.not_after),
            });
        }

        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            // ring can always tell; "unknown" would mean a provider that cannot, which is not
            // a reason to refuse the identity.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(Error::KeyMismatch {
                    cert: chain_path,
                    key: key_path,
                });
            }
            Err(other) => {
                return Err(Error::CertificateParse {
                    what: leaf_what,
                    reason: other.to_string(),
                });
            }
        }

        let mut roots = RootCertStore::empty();
        for (i, root) in roots_der.into_iter().enumerate() {
            roots.add(root).map_err(|source| Error::InvalidRoot {
                path: roots_path.clone(),
                index: i + 1,
                source,
            })?;
        }
        let roots = Arc::new(roots);

        // Refuse a chain our peers would refuse (e.g. root-cert.pem rotated but cert-chain.pem
        // not yet): better keep the old identity than start failing every handshake.
        let intermediates = certified_key.cert[1..].to_vec();
        let parsed = ParsedCertificate::try_from(&certified_key.cert[0]).map_err(|e| {
            Error::CertificateParse {
                what: leaf_what.clone(),
                reason: e.to_string(),
            }
        })?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &intermediates,
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|source| Error::UntrustedChain {
            cert: chain_path.clone(),
            roots: roots_path.clone(),
            source,
        })?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| match e {
                    VerifierBuilderError::NoRootAnchors => Error::NoCertificate {
                        path: roots_path.clone(),
                    },
                    other => Error::Config(rustls::Error::General(other.to_string())),
                })?;

        Ok(Credentials {
            id,
            certified_key: Arc::new(certified_key),
            roots,
            intermediates,
            client_verifier,
            not_after: facts.not_after,
            source: files,
        })
    }

    /// Our SPIFFE id.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// When our leaf certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Chain and signing key, as presented in handshakes.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// Our leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.certified_key.cert[0]
    }

    /// The mesh trust anchors.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub(crate) fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    pub(crate) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }

    pub(crate) fn source(&self) -> &FileSet {
        &self.source
    }
}

fn parse_certs(path: &Path, pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tls::DevCa;
    use crate::tls::test_support::{Mesh, TempDir};

    const HOUR: Duration = Duration::from_secs(3600);

    fn load_err(dir: &Path) -> String {
        Credentials::load(dir)
            .expect_err("load should fail")
            .to_string()
    }

    #[test]
    fn loads_the_istio_layout() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("istio-system", "waypoint");
        let creds = Credentials::load(&dir).unwrap();
        assert_eq!(
            creds.id().to_string(),
            "spiffe://cluster.local/ns/istio-system/sa/waypoint"
        );
        assert_eq!(creds.roots().len(), 1);
        assert_eq!(creds.certified_key().cert.len(), 1);
        assert!(creds.intermediates().is_empty());
        assert!(creds.not_after() > SystemTime::now() + Duration::from_secs(23 * 3600));
    }

    #[test]
    fn chain_with_intermediate_and_several_roots() {
        let mesh = Mesh::new();
        let intermediate = mesh.ca.intermediate().unwrap();
        let other_root = DevCa::generate("cluster.local").unwrap();
        let mut issued = intermediate.issue("app", "web", HOUR).unwrap();
        issued.root_cert_pem = format!("{}{}", other_root.root_cert_pem(), issued.root_cert_pem);
        let dir = TempDir::new("chain");
        issued.write_to(dir.path()).unwrap();
        let creds = Credentials::load(dir.path()).unwrap();
        assert_eq!(creds.certified_key().cert.len(), 2, "leaf + intermediate");
        assert_eq!(creds.intermediates().len(), 1);
        assert_eq!(creds.roots().len(), 2);
    }

    #[test]
    fn missing_files_are_named() {
        for name in [CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE] {
            let mesh = Mesh::new();
            let dir = mesh.workload_dir("a", "b");
            std::fs::remove_file(dir.join(name)).unwrap();
            let err = load_err(&dir);
            assert!(
                err.contains(name) && err.contains("does not exist"),
                "{err}"
            );
        }
    }

    #[test]
    fn unreadable_and_malformed_files() {
        let cases: [(&str, &[u8], &str); 6] = [
            (
                CERT_CHAIN_FILE,
                b"",
                "cert-chain.pem contains no PEM CERTIFICATE block",
            ),
            (
                CERT_CHAIN_FILE,
                b"hello, not pem\n",
                "cert-chain.pem contains no PEM CERTIFICATE block",
            ),
            (
                ROOT_CERT_FILE,
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "root-cert.pem contains no PEM CERTIFICATE block",
            ),
            (
                CERT_CHAIN_FILE,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n",
                "cert-chain.pem is not valid PEM",
            ),
            (KEY_FILE, b"", "key.pem contains no private key"),
            (
                KEY_FILE,
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "private key in",
            ),
        ];
        for (name, contents, want) in cases {
            let mesh = Mesh::new();
            let dir = mesh.workload_dir("a", "b");
            std::fs::write(dir.join(name), contents).unwrap();
            let err = load_err(&dir);
            assert!(
                err.contains(want),
                "{name}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn garbage_certificate_is_reported_as_such() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("a", "b");
        std::fs::write(
            dir.join(CERT_CHAIN_FILE),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_err(&dir);
        assert!(
            err.contains("leaf certificate in") && err.contains("is not a valid X.509 certificate"),
            "{err}"
        );
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("a", "b");
        let other = mesh.ca.issue("a", "b", HOUR).unwrap();
        std::fs::write(dir.join(KEY_FILE), other.key_pem).unwrap();
        let err = load_err(&dir);
        assert!(
            err.contains("key.pem does not belong to the leaf certificate in")
                && err.contains("cert-chain.pem"),
            "{err}"
        );
    }

    #[test]
    fn leaf_without_spiffe_id_is_refused() {
        let mesh = Mesh::new();
        let issued = mesh
            .ca
            .issue_with_uris(&["https://example.com/"], SystemTime::now(), HOUR)
            .unwrap();
        let dir = TempDir::new("nospiffe");
        issued.write_to(dir.path()).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("has no spiffe:// URI SAN"), "{err}");
        assert!(err.contains("leaf certificate in"), "{err}");
    }

    #[test]
    fn expired_and_future_leaves_are_refused() {
        let mesh = Mesh::new();
        let id = SpiffeId::new("cluster.local", "a", "b").unwrap();
        let dir = TempDir::new("expired");
        mesh.ca
            .issue_for(&id, SystemTime::now() - 2 * HOUR, HOUR)
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("expired at"), "{err}");

        mesh.ca
            .issue_for(&id, SystemTime::now() + HOUR, HOUR)
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("is not valid before"), "{err}");
    }

    #[test]
    fn chain_must_reach_our_roots() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("a", "b");
        let unrelated = DevCa::generate("cluster.local").unwrap();
        std::fs::write(dir.join(ROOT_CERT_FILE), unrelated.root_cert_pem()).unwrap();
        let err = load_err(&dir);
        assert!(
            err.contains("does not chain to a root in")
                && err
                    .contains("root-cert.pem: issued by a CA that is not among the trusted roots"),
            "{err}"
        );
    }
}
