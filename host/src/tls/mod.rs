//! Mesh identity and mutual TLS for HBONE.
//!
//! The waypoint's identity is an Istio workload certificate mounted as files
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`). [`CertStore`] loads them, keeps the current
//! set in an `ArcSwap` and re-reads them while running; the configs built by [`Acceptor`] and
//! [`Connector`] consult the store on every handshake, so a rotated certificate applies to new
//! tunnels while open ones keep the keys they negotiated.
//!
//! What is checked, and where:
//! - server side ([`Acceptor`]): TLS 1.3, a client certificate is required, it must chain to the
//!   mesh roots and carry a SPIFFE id in the configured trust domain. Which workload may do what
//!   is left to authorization, as ztunnel does.
//! - client side ([`Connector`]): the server chain must reach the mesh roots and its SPIFFE id
//!   must be one of the identities the caller expects for that destination. DNS names are not
//!   looked at: mesh certificates carry only a URI SAN and no SNI is sent.
//!
//! Everything uses one crypto provider ([`crypto_provider`]), ring, restricted to the TLS 1.3
//! AES-GCM suites ztunnel offers.
#![deny(missing_docs)]

mod certs;
mod config;
mod dev_ca;
mod identity;
mod reload;
mod verifier;

#[cfg(test)]
mod test_support;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;

pub use certs::{CERT_CHAIN_FILE, Credentials, KEY_FILE, ROOT_CERT_FILE};
pub use config::{Acceptor, Connector, client_config, server_config};
pub use dev_ca::{DevCa, IssuedCert};
pub use identity::{PeerIdentity, SpiffeId, peer_identity};
pub use reload::{CertStore, CertWatcher, DEFAULT_RELOAD_INTERVAL, ReloadStatus};

/// The only application protocol HBONE speaks over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider for every HBONE connection: ring, TLS 1.3 AES-256-GCM and AES-128-GCM
/// (the suites ztunnel offers), ring's default key exchange groups.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        use rustls::crypto::ring::{self, cipher_suite};
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                cipher_suite::TLS13_AES_256_GCM_SHA384,
                cipher_suite::TLS13_AES_128_GCM_SHA256,
            ],
            ..ring::default_provider()
        })
    });
    PROVIDER.clone()
}

/// Everything that can go wrong with mesh identity and TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` id.
    #[error("invalid SPIFFE id {input:?}: {reason}")]
    InvalidSpiffeId {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A trust domain name breaks the SPIFFE rules.
    #[error("invalid trust domain {input:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// DER that is not an X.509 certificate.
    #[error("{what} is not a valid X.509 certificate: {reason}")]
    CertificateParse {
        /// Which certificate, e.g. "leaf certificate in /etc/certs/cert-chain.pem".
        what: String,
        /// The parser's complaint.
        reason: String,
    },

    /// A certificate without a `spiffe://` URI SAN.
    #[error(
        "{what} has no spiffe:// URI SAN; mesh certificates carry their identity as \
         spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NoSpiffeId {
        /// Which certificate.
        what: String,
    },

    /// A certificate with several SPIFFE ids, which makes its identity ambiguous.
    #[error("{what} has {} spiffe:// URI SANs ({}); a mesh certificate must carry exactly one", .ids.len(), .ids.join(", "))]
    MultipleSpiffeIds {
        /// Which certificate.
        what: String,
        /// The SPIFFE URIs found.
        ids: Vec<String>,
    },

    /// One of the identity files does not exist.
    #[error(
        "{} does not exist (the identity directory must hold cert-chain.pem, key.pem and root-cert.pem)",
        .path.display()
    )]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },

    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },

    /// A file cannot be written (development CA output).
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },

    /// A file is not well-formed PEM.
    #[error("{} is not valid PEM: {source}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        source: rustls_pki_types::pem::Error,
    },

    /// A certificate file without any `CERTIFICATE` block.
    #[error("{} contains no PEM CERTIFICATE block", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A key file without any private key block.
    #[error(
        "{} contains no private key (expected a PEM PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block)",
        .path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// A private key that the crypto provider cannot use.
    #[error("private key in {} cannot be used: {source}", .path.display())]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// The provider's complaint.
        source: rustls::Error,
    },

    /// The key file belongs to a different certificate than the chain's leaf.
    #[error(
        "private key in {} does not belong to the leaf certificate in {}",
        .key.display(), .cert.display()
    )]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// A root bundle entry that cannot serve as a trust anchor.
    #[error("certificate #{index} in {} cannot be used as a trust anchor: {source}", .path.display())]
    InvalidRoot {
        /// The root bundle.
        path: PathBuf,
        /// 1-based position in the bundle.
        index: usize,
        /// Why.
        source: rustls::Error,
    },

    /// Our own leaf certificate has expired.
    #[error("{what} expired at {not_after}")]
    Expired {
        /// Which certificate.
        what: String,
        /// RFC 3339 expiry time.
        not_after: String,
    },

    /// Our own leaf certificate is not valid yet.
    #[error("{what} is not valid before {not_before} (check the clock)")]
    NotYetValid {
        /// Which certificate.
        what: String,
        /// RFC 3339 start of validity.
        not_before: String,
    },

    /// Our own chain does not lead to any of our roots; peers would reject it.
    #[error(
        "leaf certificate in {} does not chain to a root in {}: {}",
        .cert.display(), .roots.display(), CertErrorText(.source)
    )]
    UntrustedChain {
        /// The certificate chain file.
        cert: PathBuf,
        /// The root bundle.
        roots: PathBuf,
        /// The verifier's complaint.
        source: rustls::Error,
    },

    /// A peer from another trust domain.
    #[error("{what} has trust domain {actual:?}, expected {expected:?}")]
    TrustDomainMismatch {
        /// Which certificate ("client certificate").
        what: &'static str,
        /// The peer's trust domain.
        actual: String,
        /// Ours.
        expected: String,
    },

    /// The server is not the workload we meant to reach.
    #[error("server certificate identity {actual} is not one of the expected identities: {}", join_ids(.expected))]
    UnexpectedServerIdentity {
        /// What the server presented.
        actual: SpiffeId,
        /// What we accept for this destination.
        expected: Vec<SpiffeId>,
    },

    /// A connection was requested without saying which server identity to accept.
    #[error("no expected server identity given; refusing to dial without knowing whom to trust")]
    NoExpectedIdentity,

    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,

    /// The TLS handshake failed (ours or the peer's verdict, or the transport).
    #[error("TLS handshake failed: {}", HandshakeCause(.0))]
    Handshake(#[source] io::Error),

    /// The development CA could not create a certificate.
    #[error("development CA: {0}")]
    DevCa(#[from] rcgen::Error),

    /// rustls rejected the TLS configuration.
    #[error("building the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn join_ids(ids: &[SpiffeId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(", ")
}

/// Shows a handshake failure in plain words (see [`CertErrorText`]).
struct HandshakeCause<'a>(&'a io::Error);

impl fmt::Display for HandshakeCause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .0
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(tls @ rustls::Error::InvalidCertificate(_)) => {
                write!(f, "invalid peer certificate: {}", CertErrorText(tls))
            }
            Some(tls) => write!(f, "{tls}"),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A certificate verdict without rustls' "invalid peer certificate" prefix. rustls shows
/// `CertificateError::Other` (our own verifiers' verdicts) as a Debug dump and an unknown
/// issuer as a bare variant name; say what they mean instead.
struct CertErrorText<'a>(&'a rustls::Error);

impl fmt::Display for CertErrorText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use rustls::CertificateError;
        match self.0 {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                write!(f, "{}", other.0)
            }
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => write!(
                f,
                "issued by a CA that is not among the trusted roots (UnknownIssuer)"
            ),
            rustls::Error::InvalidCertificate(e) => write!(f, "{e}"),
            other => write!(f, "{other}"),
        }
    }
}

impl Error {
    /// The rustls error behind a handshake failure, if that is what failed.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            Error::Handshake(io) => io.get_ref()?.downcast_ref(),
            Error::Config(e) | Error::InvalidKey { source: e, .. } => Some(e),
            _ => None,
        }
    }

    /// Wraps a verification verdict so rustls sends `certificate_unknown` and the handshake
    /// error still carries our message.
    pub(crate) fn into_certificate_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }
}
