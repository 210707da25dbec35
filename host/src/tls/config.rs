//! rustls configurations for both ends of an HBONE tunnel, as ztunnel sets them up: TLS 1.3
//! only, ALPN `h2`, no SNI, no session resumption, both sides authenticated.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::identity::validate_trust_domain;
use super::reload::CurrentCert;
use super::verifier::{IdentityServerVerifier, TrustDomainClientVerifier};
use super::{ALPN_H2, CertStore, Error, PeerIdentity, SpiffeId, crypto_provider};

/// The HBONE server's TLS config: clients must present a mesh certificate from `trust_domain`.
pub fn server_config(
    store: Arc<CertStore>,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, Error> {
    validate_trust_domain(trust_domain)?;
    let verifier = Arc::new(TrustDomainClientVerifier::new(store.clone(), trust_domain));
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert(store)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a resumed session would skip the client certificate check against the
    // roots of the moment, and ztunnel never resumes anyway.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The HBONE client's TLS config for one destination: the server must present one of
/// `expected`. Cheap enough to build per connection, which is what lets a pool dial endpoints
/// that each have their own identity.
pub fn client_config(
    store: Arc<CertStore>,
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, Error> {
    if expected.is_empty() {
        return Err(Error::NoExpectedIdentity);
    }
    let verifier = Arc::new(IdentityServerVerifier::new(store.clone(), expected));
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CurrentCert(store)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts HBONE TLS connections and says who the client is.
#[derive(Clone)]
pub struct Acceptor {
    acceptor: TlsAcceptor,
}

impl Acceptor {
    /// Accepts clients from `trust_domain` (normally our own: `store.identity().trust_domain()`).
    pub fn new(store: Arc<CertStore>, trust_domain: &str) -> Result<Self, Error> {
        let ours = store.identity();
        if ours.trust_domain() != trust_domain {
            tracing::warn!(
                identity = %ours,
                trust_domain,
                "our certificate is not in the trust domain we accept clients from"
            );
        }
        Ok(Acceptor {
            acceptor: TlsAcceptor::from(server_config(store, trust_domain)?),
        })
    }

    /// The rustls config, for callers that drive the handshake themselves.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.acceptor.config().clone()
    }

    /// Runs the server handshake. The caller bounds it in time.
    pub async fn accept<IO>(&self, io: IO) -> Result<(server::TlsStream<IO>, PeerIdentity), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self.acceptor.accept(io).await.map_err(Error::Handshake)?;
        let peer = PeerIdentity::from_connection(tls.get_ref().1)?;
        Ok((tls, peer))
    }
}

/// Dials HBONE TLS connections, presenting our identity and checking the server's.
#[derive(Clone, Debug)]
pub struct Connector {
    store: Arc<CertStore>,
}

impl Connector {
    /// A connector presenting the store's current certificate.
    pub fn new(store: Arc<CertStore>) -> Self {
        Connector { store }
    }

    /// The rustls config for a destination that must be one of `expected`.
    pub fn config(&self, expected: Vec<SpiffeId>) -> Result<Arc<ClientConfig>, Error> {
        client_config(self.store.clone(), expected)
    }

    /// Runs the client handshake with the server at `server_ip` (only used for logs inside
    /// rustls: no SNI is sent). The caller bounds it in time.
    ///
    /// With TLS 1.3 the server checks our certificate after we consider the handshake done,
    /// so a server that refuses us shows up as an error on the first read, not here.
    pub async fn connect<IO>(
        &self,
        io: IO,
        server_ip: IpAddr,
        expected: Vec<SpiffeId>,
    ) -> Result<(client::TlsStream<IO>, PeerIdentity), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = TlsConnector::from(self.config(expected)?);
        let tls = connector
            .connect(ServerName::IpAddress(server_ip.into()), io)
            .await
            .map_err(Error::Handshake)?;
        let peer = PeerIdentity::from_connection(tls.get_ref().1)?;
        Ok((tls, peer))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rustls::CipherSuite;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::test_support::{
        Mesh, TempDir, assert_client_refused, handshake, handshake_with, ping_pong,
    };
    use crate::tls::{DevCa, peer_identity};

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn mutual_handshake_shows_both_identities() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let client = mesh.store("bookinfo", "productpage");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        let connector = Connector::new(client.clone());

        let (server, client_side) =
            handshake(&acceptor, &connector, vec![waypoint.identity()]).await;
        let (mut server_tls, client_seen_by_server) = server.expect("server handshake");
        let (mut client_tls, server_seen_by_client) = client_side.expect("client handshake");

        assert_eq!(client_seen_by_server.id, client.identity());
        assert_eq!(
            client_seen_by_server.id.principal(),
            "cluster.local/ns/bookinfo/sa/productpage"
        );
        assert_eq!(server_seen_by_client.id, waypoint.identity());
        assert_eq!(
            peer_identity(server_tls.get_ref().1).unwrap(),
            client.identity()
        );
        assert_eq!(
            peer_identity(client_tls.get_ref().1).unwrap(),
            waypoint.identity()
        );

        for conn in [
            &**server_tls.get_ref().1 as &rustls::CommonState,
            &**client_tls.get_ref().1,
        ] {
            assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
            assert_eq!(
                conn.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            assert_eq!(
                conn.negotiated_cipher_suite().map(|s| s.suite()),
                Some(CipherSuite::TLS13_AES_256_GCM_SHA384)
            );
            assert_eq!(
                conn.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "no resumption"
            );
        }
        ping_pong(&mut client_tls, &mut server_tls).await;
    }

    #[tokio::test]
    async fn server_sends_no_tickets_so_nothing_can_resume() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        assert_eq!(acceptor.config().send_tls13_tickets, 0);
        assert!(!acceptor.config().session_storage.can_cache());
        let connector = Connector::new(mesh.store("a", "b"));
        let config = connector.config(vec![waypoint.identity()]).unwrap();
        assert!(!config.enable_sni);
        for _ in 0..2 {
            let (server, client) =
                handshake(&acceptor, &connector, vec![waypoint.identity()]).await;
            let (mut server_tls, _) = server.unwrap();
            let (mut client_tls, _) = client.unwrap();
            ping_pong(&mut client_tls, &mut server_tls).await;
            assert_eq!(
                client_tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full)
            );
        }
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        let verifier = Arc::new(IdentityServerVerifier::new(
            waypoint.clone(),
            vec![waypoint.identity()],
        ));
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];

        let (server, client) = handshake_with(&acceptor, Arc::new(config)).await;
        let err = server.expect_err("server must refuse");
        assert!(
            matches!(
                err.rustls_error(),
                Some(rustls::Error::NoCertificatesPresented)
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("peer sent no certificates"),
            "{err}"
        );
        assert_client_refused(client).await;
    }

    #[tokio::test]
    async fn client_from_another_trust_domain_is_refused() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        // Same CA (so the chain is fine), other trust domain in the SAN.
        let foreign = SpiffeId::new("evil.example", "default", "attacker").unwrap();
        let dir = TempDir::new("foreign-td");
        mesh.ca
            .issue_for(&foreign, SystemTime::now() - Duration::from_secs(60), HOUR)
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        let connector = Connector::new(CertStore::load(dir.path()).unwrap());

        let (server, client) = handshake(&acceptor, &connector, vec![waypoint.identity()]).await;
        let err = server.expect_err("server must refuse").to_string();
        assert!(
            err.contains(
                "client certificate has trust domain \"evil.example\", expected \"cluster.local\""
            ),
            "{err}"
        );
        assert_client_refused(client.map(|(tls, _)| tls)).await;
    }

    #[tokio::test]
    async fn expired_client_certificate_is_refused() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        // The loader refuses expired files for our own identity; a peer may still present one.
        let id = SpiffeId::new("cluster.local", "bookinfo", "ratings").unwrap();
        let expired = mesh
            .ca
            .issue_for(&id, SystemTime::now() - 3 * HOUR, HOUR)
            .unwrap();
        let config = mesh.client_presenting(&expired, waypoint.identity());

        let (server, client) = handshake_with(&acceptor, config).await;
        let err = server.expect_err("server must refuse");
        assert!(
            matches!(
                err.rustls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                ))
            ),
            "{err}"
        );
        assert!(err.to_string().contains("certificate expired"), "{err}");
        assert_client_refused(client).await;
    }

    #[tokio::test]
    async fn client_from_an_untrusted_root_is_refused() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        // Same trust domain name, unrelated CA. The client trusts our root so that it gets as
        // far as presenting its certificate.
        let rogue_ca = DevCa::generate("cluster.local").unwrap();
        let mut issued = rogue_ca.issue("default", "sleep", HOUR).unwrap();
        let dir = TempDir::new("rogue");
        issued.write_to(dir.path()).unwrap();
        let rogue = CertStore::load(dir.path()).unwrap();
        issued.root_cert_pem = format!("{}{}", issued.root_cert_pem, mesh.ca.root_cert_pem());
        issued.write_to(dir.path()).unwrap();
        assert!(
            rogue.reload().await.unwrap(),
            "client now also trusts the mesh root"
        );
        let connector = Connector::new(rogue);

        let (server, client) = handshake(&acceptor, &connector, vec![waypoint.identity()]).await;
        let err = server.expect_err("server must refuse");
        assert!(
            matches!(
                err.rustls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(
                "TLS handshake failed: invalid peer certificate: issued by a CA that is not among \
                 the trusted roots"
            ),
            "{err}"
        );
        assert_client_refused(client.map(|(tls, _)| tls)).await;
    }

    #[tokio::test]
    async fn server_from_an_untrusted_root_is_refused_by_the_client() {
        let mesh = Mesh::new();
        let rogue_ca = DevCa::generate("cluster.local").unwrap();
        let dir = TempDir::new("rogue-server");
        let id = rogue_ca
            .write_workload_dir(dir.path(), "istio-system", "waypoint")
            .unwrap();
        let rogue_server = CertStore::load(dir.path()).unwrap();
        let acceptor = Acceptor::new(rogue_server, "cluster.local").unwrap();
        let connector = Connector::new(mesh.store("bookinfo", "productpage"));

        let (server, client) = handshake(&acceptor, &connector, vec![id]).await;
        let err = client.expect_err("client must refuse");
        assert!(
            matches!(
                err.rustls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err}"
        );
        let server_err = server
            .expect_err("server sees the client's alert")
            .to_string();
        assert!(server_err.contains("UnknownCA"), "{server_err}");
    }

    #[tokio::test]
    async fn client_refuses_a_server_with_another_identity() {
        let mesh = Mesh::new();
        let impostor = mesh.store("default", "not-the-waypoint");
        let acceptor = Acceptor::new(impostor, "cluster.local").unwrap();
        let connector = Connector::new(mesh.store("bookinfo", "productpage"));
        let wanted = vec![
            SpiffeId::new("cluster.local", "istio-system", "waypoint").unwrap(),
            SpiffeId::new("cluster.local", "istio-system", "waypoint-canary").unwrap(),
        ];

        let (server, client) = handshake(&acceptor, &connector, wanted).await;
        let err = client.expect_err("client must refuse").to_string();
        assert!(
            err.contains(
                "server certificate identity spiffe://cluster.local/ns/default/sa/not-the-waypoint \
                 is not one of the expected identities: \
                 spiffe://cluster.local/ns/istio-system/sa/waypoint, \
                 spiffe://cluster.local/ns/istio-system/sa/waypoint-canary"
            ),
            "{err}"
        );
        assert!(server.is_err(), "server sees the alert");
    }

    #[tokio::test]
    async fn each_dial_checks_its_own_expected_identity() {
        // One connector, two destinations with different identities: what a pool does.
        let mesh = Mesh::new();
        let a = mesh.store("ns-a", "svc-a");
        let b = mesh.store("ns-b", "svc-b");
        let acceptor_a = Acceptor::new(a.clone(), "cluster.local").unwrap();
        let acceptor_b = Acceptor::new(b.clone(), "cluster.local").unwrap();
        let connector = Connector::new(mesh.store("istio-system", "waypoint"));

        let (_, ok_a) = handshake(&acceptor_a, &connector, vec![a.identity()]).await;
        assert_eq!(ok_a.unwrap().1.id, a.identity());
        let (_, ok_b) = handshake(&acceptor_b, &connector, vec![b.identity()]).await;
        assert_eq!(ok_b.unwrap().1.id, b.identity());
        let (_, wrong) = handshake(&acceptor_b, &connector, vec![a.identity()]).await;
        assert!(wrong.is_err());
    }

    #[tokio::test]
    async fn leaf_only_client_chain_is_completed_with_our_intermediate() {
        // Mesh with an intermediate CA: our chain is leaf + intermediate, the client (like
        // ztunnel) sends its leaf alone.
        let mesh = Mesh::new();
        let intermediate = mesh.ca.intermediate().unwrap();
        let server_dir = TempDir::new("int-server");
        let server_id = intermediate
            .write_workload_dir(server_dir.path(), "istio-system", "waypoint")
            .unwrap();
        let server = CertStore::load(server_dir.path()).unwrap();
        assert_eq!(server.current().certified_key().cert.len(), 2);
        let acceptor = Acceptor::new(server, "cluster.local").unwrap();

        let mut leaf_only = intermediate.issue("bookinfo", "reviews", HOUR).unwrap();
        leaf_only.cert_chain_pem = leaf_only
            .cert_chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap()
            .to_owned();
        let config = mesh.client_presenting(&leaf_only, server_id);
        let (server, client) = handshake_with(&acceptor, config).await;
        let (tls, seen) = server.expect("server completes the client's chain");
        assert_eq!(tls.get_ref().1.peer_certificates().map(<[_]>::len), Some(1));
        assert_eq!(seen.id.principal(), "cluster.local/ns/bookinfo/sa/reviews");
        client.expect("client handshake");

        // Control: a server whose own chain has no intermediate cannot complete it.
        let direct = Acceptor::new(mesh.store("istio-system", "direct"), "cluster.local").unwrap();
        let config = mesh.client_presenting(
            &leaf_only,
            SpiffeId::new("cluster.local", "istio-system", "direct").unwrap(),
        );
        let (server, _) = handshake_with(&direct, config).await;
        let err = server.expect_err("leaf alone does not reach the root");
        assert!(
            matches!(
                err.rustls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connecting_without_expected_identity_is_an_error() {
        let mesh = Mesh::new();
        let connector = Connector::new(mesh.store("a", "b"));
        let (io, _other) = tokio::io::duplex(64);
        let err = connector
            .connect(io, "127.0.0.1".parse().unwrap(), Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoExpectedIdentity), "{err}");
    }

    #[tokio::test]
    async fn server_config_validates_trust_domain() {
        let mesh = Mesh::new();
        let err = Acceptor::new(mesh.store("a", "b"), "Bad Domain")
            .err()
            .unwrap();
        assert!(err.to_string().contains("invalid trust domain"), "{err}");
    }

    #[tokio::test]
    async fn client_offering_only_other_protocols_is_refused() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        let connector = Connector::new(mesh.store("a", "b"));
        let mut config = (*connector.config(vec![waypoint.identity()]).unwrap()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (server, _client) = handshake_with(&acceptor, Arc::new(config)).await;
        let err = server.expect_err("no common protocol");
        assert!(
            matches!(
                err.rustls_error(),
                Some(rustls::Error::NoApplicationProtocol)
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_after_handshake() {
        let mesh = Mesh::new();
        let waypoint = mesh.store("istio-system", "waypoint");
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        let connector = Connector::new(mesh.store("a", "b"));
        let (server, client) = handshake(&acceptor, &connector, vec![waypoint.identity()]).await;
        let (mut s, _) = server.unwrap();
        let (mut c, _) = client.unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let send = payload.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&send).await.unwrap();
            c.shutdown().await.unwrap();
            c
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("read in time")
            .unwrap();
        assert_eq!(got, payload);
        writer.await.unwrap();
    }
}
