//! The current identity, swappable while connections are open.
//!
//! Invariants:
//! - `current` always holds credentials that passed every load check; a failed reload leaves
//!   it untouched.
//! - Handshakes read `current` once per decision (certificate to present, roots to verify
//!   against). An established connection owns its session keys, so replacing `current` never
//!   affects it.
//! - The watcher retries a rejected file set on every tick (a certificate that is not valid
//!   *yet* becomes good later without the files changing) but warns about each distinct
//!   failure only once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::certs::FileSet;
use super::identity::format_time;
use super::{Credentials, Error, SpiffeId};

/// How often the watcher looks at the files unless told otherwise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// What the reloader has done so far, for the admin page and for tests to wait on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Successful reloads since start (0: still the identity loaded at start).
    pub generation: u64,
    /// Distinct rejected file sets since start.
    pub rejected: u64,
    /// Why the files on disk are not in use, while they are not; `None` once they are.
    pub last_error: Option<String>,
}

/// Holds the waypoint's current [`Credentials`] and reloads them from their directory.
pub struct CertStore {
    dir: PathBuf,
    current: ArcSwap<Credentials>,
    status: watch::Sender<ReloadStatus>,
    // Serialises reloads; holds the last rejected attempt (files, if they could be read, and
    // the message) so the same failure is not logged again every tick.
    last_rejected: Mutex<Option<(Option<FileSet>, String)>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the identity in `dir`; fails if the files there are not usable.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Arc<Self>, Error> {
        let dir = dir.into();
        let creds = Credentials::load(&dir)?;
        tracing::info!(
            identity = %creds.id(),
            not_after = %format_time(creds.not_after()),
            dir = %dir.display(),
            "loaded workload certificate"
        );
        Ok(Arc::new(CertStore {
            dir,
            current: ArcSwap::from_pointee(creds),
            status: watch::Sender::new(ReloadStatus::default()),
            last_rejected: Mutex::new(None),
        }))
    }

    /// The directory the identity is read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The credentials new handshakes use right now.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Our SPIFFE id right now.
    pub fn identity(&self) -> SpiffeId {
        self.current.load().id().clone()
    }

    /// Follows reload outcomes.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Re-reads the files. `Ok(true)`: a new identity is in use; `Ok(false)`: the files are
    /// what is already in use; `Err`: the files are unusable and the previous identity stays.
    pub async fn reload(&self) -> Result<bool, Error> {
        let mut last_rejected = self.last_rejected.lock().await;
        let attempt = match FileSet::read_async(&self.dir).await {
            Ok(files) if files == *self.current.load().source() => {
                // Someone put the files in use back after a bad set: nothing to report.
                if last_rejected.take().is_some() {
                    self.status.send_modify(|s| s.last_error = None);
                }
                return Ok(false);
            }
            Ok(files) => match Credentials::from_files(&self.dir, files.clone()) {
                Ok(creds) => {
                    tracing::info!(
                        identity = %creds.id(),
                        not_after = %format_time(creds.not_after()),
                        dir = %self.dir.display(),
                        "workload certificate rotated; new connections use it"
                    );
                    self.current.store(Arc::new(creds));
                    *last_rejected = None;
                    self.status.send_modify(|s| {
                        s.generation += 1;
                        s.last_error = None;
                    });
                    return Ok(true);
                }
                Err(e) => (Some(files), e),
            },
            Err(e) => (None, e),
        };
        let (files, error) = attempt;
        let message = error.to_string();
        let key = (files, message);
        if last_rejected.as_ref() == Some(&key) {
            tracing::debug!(error = %key.1, "workload certificate files still unusable");
        } else {
            tracing::warn!(
                error = %key.1,
                identity = %self.identity(),
                "ignoring new workload certificate files; keeping the current identity"
            );
            let message = key.1.clone();
            self.status.send_modify(|s| {
                s.rejected += 1;
                s.last_error = Some(message);
            });
            *last_rejected = Some(key);
        }
        Err(error)
    }

    /// Starts polling the files every `interval` (use [`DEFAULT_RELOAD_INTERVAL`] in
    /// production). Must be called inside a Tokio runtime; the task stops when the returned
    /// handle is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> CertWatcher {
        let store = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate and the files were just loaded.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                // Failures are logged and counted inside reload().
                let _ = store.reload().await;
            }
        });
        CertWatcher { handle }
    }

    pub(crate) fn current_key(&self) -> Arc<CertifiedKey> {
        self.current.load().certified_key().clone()
    }
}

/// The running file watcher; dropping it stops the polling.
#[derive(Debug)]
pub struct CertWatcher {
    handle: JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Presents whatever certificate the store holds at handshake time, on both sides.
#[derive(Debug)]
pub(crate) struct CurrentCert(pub Arc<CertStore>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current_key())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::tls::test_support::{Mesh, STEP, TempDir, handshake, ping_pong};
    use crate::tls::{Acceptor, CERT_CHAIN_FILE, Connector, DevCa, KEY_FILE, ROOT_CERT_FILE};

    const TICK: Duration = Duration::from_millis(50);
    const HOUR: Duration = Duration::from_secs(3600);

    async fn wait_for(
        rx: &mut watch::Receiver<ReloadStatus>,
        what: &str,
        f: impl FnMut(&ReloadStatus) -> bool,
    ) -> ReloadStatus {
        tokio::time::timeout(STEP, rx.wait_for(f))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("store alive")
            .clone()
    }

    #[tokio::test]
    async fn rotation_reaches_new_handshakes_and_spares_open_connections() {
        let mesh = Mesh::new();
        let waypoint_dir = mesh.workload_dir("istio-system", "waypoint");
        let client_dir = mesh.workload_dir("bookinfo", "productpage");
        let waypoint = CertStore::load(&waypoint_dir).unwrap();
        let client = CertStore::load(&client_dir).unwrap();
        let _watchers = (waypoint.spawn_watcher(TICK), client.spawn_watcher(TICK));
        let mut waypoint_status = waypoint.status();
        let mut client_status = client.status();
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        let connector = Connector::new(client.clone());
        let expected = vec![waypoint.identity()];

        let (server, client_side) = handshake(&acceptor, &connector, expected.clone()).await;
        let (mut old_server, _) = server.unwrap();
        let (mut old_client, _) = client_side.unwrap();
        let old_waypoint_leaf = waypoint.current().leaf().clone();
        let old_client_leaf = client.current().leaf().clone();
        ping_pong(&mut old_client, &mut old_server).await;

        mesh.ca
            .write_workload_dir(&waypoint_dir, "istio-system", "waypoint")
            .unwrap();
        mesh.ca
            .write_workload_dir(&client_dir, "bookinfo", "productpage")
            .unwrap();
        wait_for(&mut waypoint_status, "waypoint reload", |s| {
            s.generation >= 1
        })
        .await;
        wait_for(&mut client_status, "client reload", |s| s.generation >= 1).await;
        let new_waypoint_leaf = waypoint.current().leaf().clone();
        let new_client_leaf = client.current().leaf().clone();
        assert_ne!(new_waypoint_leaf, old_waypoint_leaf);
        assert_ne!(new_client_leaf, old_client_leaf);

        // A new handshake presents the new leaves, in both directions.
        let (server, client_side) = handshake(&acceptor, &connector, expected).await;
        let (mut new_server, seen_client) = server.unwrap();
        let (mut new_client, seen_server) = client_side.unwrap();
        assert_eq!(
            new_client.get_ref().1.peer_certificates().unwrap()[0],
            new_waypoint_leaf
        );
        assert_eq!(
            new_server.get_ref().1.peer_certificates().unwrap()[0],
            new_client_leaf
        );
        assert_eq!(seen_server.id, waypoint.identity());
        assert_eq!(seen_client.id, client.identity());
        ping_pong(&mut new_client, &mut new_server).await;

        // The connection opened before the rotation still carries bytes both ways, and still
        // reports the leaves it was opened with.
        ping_pong(&mut old_client, &mut old_server).await;
        assert_eq!(
            old_client.get_ref().1.peer_certificates().unwrap()[0],
            old_waypoint_leaf
        );
    }

    #[tokio::test]
    async fn root_rotation_applies_to_new_handshakes() {
        let mesh = Mesh::new();
        let waypoint_dir = mesh.workload_dir("istio-system", "waypoint");
        let waypoint = CertStore::load(&waypoint_dir).unwrap();
        let _watcher = waypoint.spawn_watcher(TICK);
        let mut status = waypoint.status();
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();

        // A client issued by the next root is refused until we trust that root.
        let next_ca = DevCa::generate("cluster.local").unwrap();
        let next_dir = TempDir::new("next-root");
        let mut next_issued = next_ca.issue("bookinfo", "details", HOUR).unwrap();
        next_issued.root_cert_pem =
            format!("{}{}", next_ca.root_cert_pem(), mesh.ca.root_cert_pem());
        next_issued.write_to(next_dir.path()).unwrap();
        let next_client = Connector::new(CertStore::load(next_dir.path()).unwrap());
        let old_client = Connector::new(mesh.store("bookinfo", "reviews"));
        let expected = vec![waypoint.identity()];
        let (server, _) = handshake(&acceptor, &next_client, expected.clone()).await;
        assert!(server.is_err(), "next root not trusted yet");

        // Rotation step 1: the bundle gains the next root, our leaf stays.
        let bundle = format!("{}{}", mesh.ca.root_cert_pem(), next_ca.root_cert_pem());
        std::fs::write(waypoint_dir.join(ROOT_CERT_FILE), bundle).unwrap();
        wait_for(&mut status, "root bundle reload", |s| s.generation >= 1).await;

        let (server, _) = handshake(&acceptor, &next_client, expected.clone()).await;
        assert_eq!(server.unwrap().1.id.service_account(), "details");
        let (server, _) = handshake(&acceptor, &old_client, expected).await;
        assert_eq!(server.unwrap().1.id.service_account(), "reviews");
    }

    #[tokio::test]
    async fn bad_replacement_files_are_ignored_and_the_old_identity_keeps_serving() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("istio-system", "waypoint");
        let waypoint = CertStore::load(&dir).unwrap();
        let _watcher = waypoint.spawn_watcher(TICK);
        let mut status = waypoint.status();
        let acceptor = Acceptor::new(waypoint.clone(), "cluster.local").unwrap();
        let connector = Connector::new(mesh.store("bookinfo", "productpage"));
        let expected = vec![waypoint.identity()];
        let original_leaf = waypoint.current().leaf().clone();

        let (server, client) = handshake(&acceptor, &connector, expected.clone()).await;
        let (mut open_server, _) = server.unwrap();
        let (mut open_client, _) = client.unwrap();

        // A new chain without its key, then an expired set, then a truncated file.
        let other = mesh.ca.issue("istio-system", "waypoint", HOUR).unwrap();
        std::fs::write(dir.join(CERT_CHAIN_FILE), &other.cert_chain_pem).unwrap();
        let s = wait_for(&mut status, "first rejection", |s| s.rejected >= 1).await;
        assert!(
            s.last_error
                .as_deref()
                .unwrap()
                .contains("does not belong to the leaf"),
            "{s:?}"
        );

        let expired = mesh
            .ca
            .issue_for(&waypoint.identity(), SystemTime::now() - 3 * HOUR, HOUR)
            .unwrap();
        expired.write_to(&dir).unwrap();
        let s = wait_for(&mut status, "expired rejection", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("expired at"))
        })
        .await;
        assert_eq!(s.generation, 0);

        std::fs::write(dir.join(KEY_FILE), "-----BEGIN PRIVATE KEY-----\nMII").unwrap();
        let s = wait_for(&mut status, "truncated key rejection", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("key.pem is not valid PEM"))
        })
        .await;
        let rejected = s.rejected;

        // The same bad files are retried but not counted (or logged) again.
        tokio::time::sleep(TICK * 6).await;
        assert_eq!(waypoint.status().borrow().rejected, rejected);
        assert_eq!(waypoint.status().borrow().generation, 0);

        // Still serving the original identity, on new and open connections.
        assert_eq!(waypoint.current().leaf(), &original_leaf);
        let (server, client) = handshake(&acceptor, &connector, expected.clone()).await;
        let (mut new_server, _) = server.unwrap();
        let (mut new_client, _) = client.unwrap();
        assert_eq!(
            new_client.get_ref().1.peer_certificates().unwrap()[0],
            original_leaf
        );
        ping_pong(&mut new_client, &mut new_server).await;
        ping_pong(&mut open_client, &mut open_server).await;

        // Good files again: picked up, error cleared.
        mesh.ca
            .write_workload_dir(&dir, "istio-system", "waypoint")
            .unwrap();
        let s = wait_for(&mut status, "recovery", |s| s.generation >= 1).await;
        assert_eq!(s.last_error, None);
        assert_ne!(waypoint.current().leaf(), &original_leaf);
    }

    #[tokio::test]
    async fn a_not_yet_valid_set_is_taken_once_it_becomes_valid() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("istio-system", "waypoint");
        let waypoint = CertStore::load(&dir).unwrap();
        let _watcher = waypoint.spawn_watcher(TICK);
        let mut status = waypoint.status();

        let soon = SystemTime::now() + Duration::from_secs(2);
        let future = mesh.ca.issue_for(&waypoint.identity(), soon, HOUR).unwrap();
        future.write_to(&dir).unwrap();
        let s = wait_for(&mut status, "early rejection", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("is not valid before"))
        })
        .await;
        assert_eq!(s.generation, 0);
        // Same files, later: now valid, taken without anyone touching them.
        wait_for(&mut status, "late acceptance", |s| s.generation >= 1).await;
        assert_eq!(waypoint.current().leaf(), &future.leaf_der());
    }

    #[tokio::test]
    async fn manual_reload_reports_what_happened() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("a", "b");
        let store = CertStore::load(&dir).unwrap();
        assert!(!store.reload().await.unwrap(), "unchanged files");

        let saved_key = std::fs::read(dir.join(KEY_FILE)).unwrap();
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = store.reload().await.unwrap_err();
        assert!(matches!(err, Error::MissingFile { .. }), "{err}");
        assert_eq!(store.status().borrow().rejected, 1);

        // Putting the files in use back clears the error without counting a reload.
        std::fs::write(dir.join(KEY_FILE), saved_key).unwrap();
        assert!(!store.reload().await.unwrap());
        let status = store.status().borrow().clone();
        assert_eq!(status.last_error, None);
        assert_eq!(status.generation, 0);

        mesh.ca.write_workload_dir(&dir, "a", "b2").unwrap();
        assert!(store.reload().await.unwrap());
        assert_eq!(store.identity().service_account(), "b2");
        assert_eq!(store.status().borrow().generation, 1);
    }

    #[tokio::test]
    async fn dropping_the_watcher_stops_reloading() {
        let mesh = Mesh::new();
        let dir = mesh.workload_dir("a", "b");
        let store = CertStore::load(&dir).unwrap();
        let watcher = store.spawn_watcher(TICK);
        drop(watcher);
        mesh.ca.write_workload_dir(&dir, "a", "b").unwrap();
        tokio::time::sleep(TICK * 6).await;
        assert_eq!(store.status().borrow().generation, 0);
        assert!(store.reload().await.unwrap(), "the files did change");
    }
}
