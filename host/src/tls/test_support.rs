//! Shared fixtures for the TLS tests: temporary directories, a development mesh, and
//! handshakes over loopback TCP with every wait bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsConnector, client, server};

use super::verifier::IdentityServerVerifier;
use super::{
    ALPN_H2, Acceptor, CertStore, Connector, DevCa, Error, IssuedCert, PeerIdentity, SpiffeId,
    crypto_provider,
};

/// Upper bound for any single network step in a test.
pub const STEP: Duration = Duration::from_secs(10);

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "wayplug-tls-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A development CA for `cluster.local` and a scratch directory for workload identities.
pub struct Mesh {
    pub ca: DevCa,
    dir: TempDir,
    next: AtomicU64,
}

impl Mesh {
    pub fn new() -> Self {
        Mesh {
            ca: DevCa::generate("cluster.local").expect("generate CA"),
            dir: TempDir::new("mesh"),
            next: AtomicU64::new(0),
        }
    }

    /// A fresh directory with Istio's layout for `ns/sa`.
    pub fn workload_dir(&self, ns: &str, sa: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.path().join(format!("{ns}-{sa}-{n}"));
        self.ca
            .write_workload_dir(&dir, ns, sa)
            .expect("write workload dir");
        dir
    }

    pub fn store(&self, ns: &str, sa: &str) -> Arc<CertStore> {
        CertStore::load(self.workload_dir(ns, sa)).expect("load workload identity")
    }

    /// A client config that presents `issued` exactly as given (expired, leaf-only, ...),
    /// which the loader would refuse to use for ourselves, and checks the server like
    /// [`Connector`] does.
    pub fn client_presenting(&self, issued: &IssuedCert, expected: SpiffeId) -> Arc<ClientConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain pem");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key pem");
        let verifier = Arc::new(IdentityServerVerifier::new(
            self.store("test", "verifier"),
            vec![expected],
        ));
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .expect("client cert");
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        Arc::new(config)
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (accepted, connected) = tokio::join!(listener.accept(), TcpStream::connect(addr));
    (accepted.expect("accept").0, connected.expect("connect"))
}

pub type ServerSide = Result<(server::TlsStream<TcpStream>, PeerIdentity), Error>;
pub type ClientSide = Result<(client::TlsStream<TcpStream>, PeerIdentity), Error>;

/// Both ends of a handshake over loopback TCP, run concurrently.
pub async fn handshake(
    acceptor: &Acceptor,
    connector: &Connector,
    expected: Vec<SpiffeId>,
) -> (ServerSide, ClientSide) {
    let (server_io, client_io) = tcp_pair().await;
    let ip = client_io.peer_addr().expect("peer addr").ip();
    let (server, client) = tokio::join!(
        tokio::time::timeout(STEP, acceptor.accept(server_io)),
        tokio::time::timeout(STEP, connector.connect(client_io, ip, expected)),
    );
    (
        server.expect("server handshake timed out"),
        client.expect("client handshake timed out"),
    )
}

/// A handshake against a hand-made client config.
pub async fn handshake_with(
    acceptor: &Acceptor,
    config: Arc<ClientConfig>,
) -> (ServerSide, Result<client::TlsStream<TcpStream>, Error>) {
    let (server_io, client_io) = tcp_pair().await;
    let connector = TlsConnector::from(config);
    let name = ServerName::IpAddress(client_io.peer_addr().expect("addr").ip().into());
    let (server, client) = tokio::join!(
        tokio::time::timeout(STEP, acceptor.accept(server_io)),
        tokio::time::timeout(STEP, connector.connect(name, client_io)),
    );
    (
        server.expect("server handshake timed out"),
        client
            .expect("client handshake timed out")
            .map_err(Error::Handshake),
    )
}

/// In TLS 1.3 the client finishes before the server has judged its certificate; a refused
/// client learns it from the alert on its first read.
pub async fn assert_client_refused(client: Result<client::TlsStream<TcpStream>, Error>) {
    let Ok(mut tls) = client else { return };
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(STEP, tls.read(&mut buf))
        .await
        .expect("client read timed out");
    let err = read.expect_err("client must see the server's alert, not data or EOF");
    assert!(err.to_string().contains("received fatal alert"), "{err}");
}

/// Sends a message each way and checks it arrives.
pub async fn ping_pong<C, S>(client: &mut C, server: &mut S)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; 4];
    tokio::time::timeout(STEP, async {
        client.write_all(b"ping").await.expect("client write");
        client.flush().await.expect("client flush");
        server.read_exact(&mut buf).await.expect("server read");
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.expect("server write");
        server.flush().await.expect("server flush");
        client.read_exact(&mut buf).await.expect("client read");
        assert_eq!(&buf, b"pong");
    })
    .await
    .expect("ping-pong timed out");
}
