//! Peer certificate checks for HBONE, reading the mesh roots from the [`CertStore`] on every
//! handshake so a root rotation applies without rebuilding configs.
//!
//! Both verifiers first do the standard chain check (signatures, validity, key usage) against
//! the current roots, with our own intermediates appended to whatever the peer sent: ztunnel
//! sends its leaf alone, and in a mesh with an intermediate CA that leaf is signed by the same
//! intermediate as ours. Intermediates are only path-building hints, so adding ours cannot make
//! an untrusted chain trusted. Then the SPIFFE id is checked. DNS names play no part.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::identity::CertFacts;
use super::{CertStore, Credentials, Error, SpiffeId, crypto_provider};

/// Server side: any mesh workload in our trust domain may connect; authorization decides the
/// rest.
#[derive(Debug)]
pub(crate) struct TrustDomainClientVerifier {
    store: Arc<CertStore>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl TrustDomainClientVerifier {
    pub fn new(store: Arc<CertStore>, trust_domain: &str) -> Self {
        TrustDomainClientVerifier {
            store,
            trust_domain: trust_domain.to_owned(),
            provider: crypto_provider(),
        }
    }
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints would have to follow root rotation through a borrowed slice; an empty list
        // tells the client to send the certificate it has, which is all a mesh client does.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let creds = self.store.current();
        let intermediates = with_ours(intermediates, &creds);
        creds
            .client_verifier()
            .verify_client_cert(end_entity, &intermediates, now)?;
        let id = CertFacts::parse(end_entity, "client certificate")
            .and_then(|facts| facts.spiffe_id("client certificate"))
            .map_err(Error::into_certificate_error)?;
        if id.trust_domain() != self.trust_domain {
            return Err(Error::TrustDomainMismatch {
                what: "client certificate",
                actual: id.trust_domain().to_owned(),
                expected: self.trust_domain.clone(),
            }
            .into_certificate_error());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client side: the server must be one of the workloads we meant to reach. One verifier per
/// destination, since each endpoint has its own expected identity.
#[derive(Debug)]
pub(crate) struct IdentityServerVerifier {
    store: Arc<CertStore>,
    expected: Vec<SpiffeId>,
    provider: Arc<CryptoProvider>,
}

impl IdentityServerVerifier {
    pub fn new(store: Arc<CertStore>, expected: Vec<SpiffeId>) -> Self {
        IdentityServerVerifier {
            store,
            expected,
            provider: crypto_provider(),
        }
    }
}

impl ServerCertVerifier for IdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // No SNI is sent and mesh certificates name no hosts: the identity check replaces
        // the name check.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let creds = self.store.current();
        let intermediates = with_ours(intermediates, &creds);
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            creds.roots(),
            &intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = CertFacts::parse(end_entity, "server certificate")
            .and_then(|facts| facts.spiffe_id("server certificate"))
            .map_err(Error::into_certificate_error)?;
        if !self.expected.contains(&id) {
            return Err(Error::UnexpectedServerIdentity {
                actual: id,
                expected: self.expected.clone(),
            }
            .into_certificate_error());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn with_ours<'a>(
    theirs: &'a [CertificateDer<'_>],
    creds: &'a Credentials,
) -> Vec<CertificateDer<'a>> {
    theirs
        .iter()
        .chain(creds.intermediates())
        .map(|c| CertificateDer::from(&c[..]))
        .collect()
}
