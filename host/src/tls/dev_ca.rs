//! A development certificate authority, so tests and demos need no outside tools.
//!
//! Certificates look like Istio's: ECDSA P-256 leaves with an empty subject, a critical URI SAN
//! holding the SPIFFE id, serverAuth and clientAuth usages, valid 24 hours by default. The CA
//! certificate carries `spiffe://<trust-domain>` as its URI SAN (allowed for signing
//! certificates by the X.509-SVID spec), which is how [`DevCa::load`] recovers the trust domain.
//!
//! On disk a CA uses Istio's plug-in CA layout: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//! and `cert-chain.pem` (the CA certificate, then any intermediates above it, then the root).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::certs::{CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};
use super::identity::{CertFacts, validate_trust_domain};
use super::{Error, SpiffeId};

const CA_CERT_FILE: &str = "ca-cert.pem";
const CA_KEY_FILE: &str = "ca-key.pem";

/// Istio's default workload certificate lifetime.
const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
// Leaves start a little in the past so a peer whose clock lags ours still accepts them.
const BACKDATE: Duration = Duration::from_secs(60);

/// A CA that issues SPIFFE workload certificates for one trust domain.
pub struct DevCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    // Intermediates between this CA and the root, nearest first; empty for a root CA.
    parents: Vec<CertificateDer<'static>>,
    root_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .field("root", &self.is_root())
            .finish_non_exhaustive()
    }
}

/// A freshly issued workload certificate in Istio's file formats.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Leaf, then the intermediates (not the root).
    pub cert_chain_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
    /// The root(s) a verifier needs.
    pub root_cert_pem: String,
    leaf: CertificateDer<'static>,
}

impl IssuedCert {
    /// The leaf certificate.
    pub fn leaf_der(&self) -> CertificateDer<'static> {
        self.leaf.clone()
    }

    /// Writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir` (created if needed).
    /// Each file is replaced atomically, roots first and key last.
    pub fn write_to(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_atomic(&dir.join(ROOT_CERT_FILE), &self.root_cert_pem, false)?;
        write_atomic(&dir.join(CERT_CHAIN_FILE), &self.cert_chain_pem, false)?;
        write_atomic(&dir.join(KEY_FILE), &self.key_pem, true)
    }
}

impl DevCa {
    /// A new self-signed root CA for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, Error> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate()?;
        let params = ca_params(trust_domain, "wayplug development root CA", &key)?;
        let cert = params.self_signed(&key)?.der().clone();
        let root_pem = pem_cert(&cert);
        Ok(DevCa {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            cert,
            parents: Vec::new(),
            root_pem,
        })
    }

    /// An intermediate CA signed by this one, for testing chains longer than leaf + root.
    pub fn intermediate(&self) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let params = ca_params(
            &self.trust_domain,
            "wayplug development intermediate CA",
            &key,
        )?;
        let cert = params.signed_by(&key, &self.issuer)?.der().clone();
        let mut parents = Vec::with_capacity(self.parents.len() + 1);
        if !self.is_root() {
            parents.push(self.cert.clone());
        }
        parents.extend(self.parents.iter().cloned());
        Ok(DevCa {
            trust_domain: self.trust_domain.clone(),
            issuer: Issuer::new(params, key),
            cert,
            parents,
            root_pem: self.root_pem.clone(),
        })
    }

    fn is_root(&self) -> bool {
        self.root_pem == pem_cert(&self.cert)
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (PEM) that verifies everything this CA issues.
    pub fn root_cert_pem(&self) -> &str {
        &self.root_pem
    }

    /// A workload certificate for `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        validity: Duration,
    ) -> Result<IssuedCert, Error> {
        let id = SpiffeId::new(&self.trust_domain, namespace, service_account)?;
        self.issue_for(&id, SystemTime::now() - BACKDATE, validity + BACKDATE)
    }

    /// A certificate for any id, including other trust domains, valid from `not_before` for
    /// `validity`: a past window gives an expired certificate.
    pub fn issue_for(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<IssuedCert, Error> {
        self.issue_with_uris(&[&id.to_string()], not_before, validity)
    }

    /// A certificate with exactly these URI SANs (none, several, malformed): for exercising
    /// the checks that refuse them.
    pub fn issue_with_uris(
        &self,
        uris: &[&str],
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<IssuedCert, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        // Istio leaves have an empty subject; rcgen then marks the SAN critical (RFC 5280).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|uri| Ok(SanType::URI((*uri).try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = (not_before + validity).into();
        let leaf = params.signed_by(&key, &self.issuer)?.der().clone();

        let mut cert_chain_pem = pem_cert(&leaf);
        if !self.is_root() {
            cert_chain_pem.push_str(&pem_cert(&self.cert));
        }
        for parent in &self.parents {
            cert_chain_pem.push_str(&pem_cert(parent));
        }
        Ok(IssuedCert {
            cert_chain_pem,
            key_pem: key.serialize_pem(),
            root_cert_pem: self.root_pem.clone(),
            leaf,
        })
    }

    /// Issues a 24-hour certificate for `namespace/service_account` and writes Istio's layout
    /// into `dir`. Returns the identity written.
    pub fn write_workload_dir(
        &self,
        dir: &Path,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, Error> {
        let id = SpiffeId::new(&self.trust_domain, namespace, service_account)?;
        self.issue(namespace, service_account, DEFAULT_LEAF_VALIDITY)?
            .write_to(dir)?;
        Ok(id)
    }

    /// Writes the CA in Istio's plug-in CA layout (the key file is private to the owner).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        let mut chain = pem_cert(&self.cert);
        for parent in &self.parents {
            chain.push_str(&pem_cert(parent));
        }
        if !self.is_root() {
            chain.push_str(&self.root_pem);
        }
        write_atomic(&dir.join(ROOT_CERT_FILE), &self.root_pem, false)?;
        write_atomic(&dir.join(CA_CERT_FILE), &pem_cert(&self.cert), false)?;
        write_atomic(&dir.join(CERT_CHAIN_FILE), &chain, false)?;
        write_atomic(
            &dir.join(CA_KEY_FILE),
            &self.issuer.key().serialize_pem(),
            true,
        )
    }

    /// Reads a CA written by [`DevCa::save`] (or an Istio plug-in CA directory whose CA
    /// certificate carries a `spiffe://<trust-domain>` URI SAN).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| -> Result<(PathBuf, String), Error> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok((path, text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(Error::MissingFile { path })
                }
                Err(source) => Err(Error::Read { path, source }),
            }
        };
        let (cert_path, cert_pem) = read(CA_CERT_FILE)?;
        let (key_path, key_pem) = read(CA_KEY_FILE)?;
        let (roots_path, root_pem) = read(ROOT_CERT_FILE)?;
        let (chain_path, chain_pem) = read(CERT_CHAIN_FILE)?;

        let cert = first_cert(&cert_path, &cert_pem)?;
        let roots = all_certs(&roots_path, &root_pem)?;
        let parents = all_certs(&chain_path, &chain_pem)?
            .into_iter()
            .skip(1)
            .filter(|c| !roots.contains(c))
            .collect();

        let what = format!("CA certificate in {}", cert_path.display());
        let facts = CertFacts::parse(&cert, &what)?;
        let trust_domain = match facts.spiffe_uris.as_slice() {
            [uri] => uri
                .strip_prefix("spiffe://")
                .filter(|td| validate_trust_domain(td).is_ok())
                .ok_or_else(|| Error::InvalidSpiffeId {
                    input: uri.clone(),
                    reason: "a CA certificate's SPIFFE id must be spiffe://<trust-domain> \
                             with no path"
                        .to_owned(),
                })?
                .to_owned(),
            [] => return Err(Error::NoSpiffeId { what }),
            many => {
                return Err(Error::MultipleSpiffeIds {
                    what,
                    ids: many.to_vec(),
                });
            }
        };

        let key = KeyPair::from_pem(&key_pem).map_err(|e| Error::InvalidKey {
            path: key_path.clone(),
            source: rustls::Error::General(e.to_string()),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(DevCa {
            trust_domain,
            issuer,
            cert,
            parents,
            root_pem,
        })
    }
}

fn ca_params(
    trust_domain: &str,
    common_name: &str,
    key: &KeyPair,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    // The key id in the name keeps two development CAs apart, for operators reading a chain
    // and for verifiers, which pick candidate issuers by name.
    let key_id: String = params
        .key_identifier(key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, format!("{common_name} {key_id}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now() - BACKDATE;
    params.not_before = now.into();
    params.not_after = (now + CA_VALIDITY).into();
    Ok(params)
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", der)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // chunks of an ASCII string are valid UTF-8
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn first_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, Error> {
    all_certs(path, pem).map(|mut certs| certs.swap_remove(0))
}

fn all_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
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

/// Replaces `path` in one step (write a sibling, then rename), so a reader polling the
/// directory never sees half a file.
fn write_atomic(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    let write_err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(write_err)?;
    file.write_all(contents.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Credentials;
    use crate::tls::test_support::TempDir;

    #[test]
    fn base64_matches_known_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want, "{input}");
        }
    }

    #[test]
    fn issued_pem_parses_back() {
        let ca = DevCa::generate("example.org").unwrap();
        let issued = ca.issue("ns1", "sa1", Duration::from_secs(600)).unwrap();
        let certs = all_certs(Path::new("x"), &issued.cert_chain_pem).unwrap();
        assert_eq!(certs, vec![issued.leaf_der()]);
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn writes_a_loadable_workload_dir() {
        let ca = DevCa::generate("example.org").unwrap();
        let dir = TempDir::new("devca-workload");
        let id = ca.write_workload_dir(dir.path(), "shop", "cart").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/shop/sa/cart");
        let creds = Credentials::load(dir.path()).unwrap();
        assert_eq!(creds.id(), &id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "key must not be world-readable");
        }
    }

    #[test]
    fn save_and_load_round_trip_keeps_issuing_under_the_same_root() {
        for depth in 0..=2 {
            let mut ca = DevCa::generate("cluster.local").unwrap();
            for _ in 0..depth {
                ca = ca.intermediate().unwrap();
            }
            let dir = TempDir::new("devca-save");
            ca.save(dir.path()).unwrap();
            let loaded = DevCa::load(dir.path()).unwrap();
            assert_eq!(loaded.trust_domain(), "cluster.local");
            assert_eq!(loaded.root_cert_pem(), ca.root_cert_pem());
            assert_eq!(loaded.parents, ca.parents, "depth {depth}");

            let workload = dir.path().join("workload");
            loaded.write_workload_dir(&workload, "a", "b").unwrap();
            let creds =
                Credentials::load(&workload).unwrap_or_else(|e| panic!("depth {depth}: {e}"));
            assert_eq!(
                creds.certified_key().cert.len(),
                1 + depth,
                "leaf + intermediates"
            );
        }
    }

    #[test]
    fn load_reports_missing_files_and_bad_trust_domain() {
        let dir = TempDir::new("devca-missing");
        let err = DevCa::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ca-cert.pem") && err.contains("does not exist"),
            "{err}"
        );

        assert!(
            DevCa::generate("Not Valid")
                .unwrap_err()
                .to_string()
                .contains("invalid trust domain")
        );
    }
}
