//! The fake upstream: an in-process registry on 127.0.0.1:0 (HTTP, or HTTPS with a test CA) with
//! fault switches, a gate that holds blob bodies until a test opens it, and a record of every
//! request it was sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::pki::Pki;
use super::sha256;

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The bearer token the fake's own token endpoint hands out.
pub const TOKEN: &str = "fake-token-123";

mod faults;
mod respond;

pub use faults::{Break, Faults, Hold, Streams};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub range: Option<String>,
    pub version: http::Version,
}

#[derive(Default)]
struct Content {
    blobs: HashMap<String, Bytes>,
    /// digest → (media type, bytes)
    manifests: HashMap<String, (String, Bytes)>,
    /// (repo, tag) → digest; a tag whose manifest is an index may have a fallback for clients
    /// that do not accept indexes, as Docker Hub does.
    tags: HashMap<(String, String), String>,
    fallbacks: HashMap<String, String>,
    /// (repo, subject digest) → descriptors of the manifests that refer to it.
    referrers: HashMap<(String, String), Vec<serde_json::Value>>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    /// "http" or "https".
    scheme: &'static str,
    content: Arc<Mutex<Content>>,
    faults: Arc<Mutex<Faults>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct State {
    content: Arc<Mutex<Content>>,
    faults: Arc<Mutex<Faults>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    addr: SocketAddr,
    scheme: &'static str,
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        Self::listen(None).await
    }

    /// A registry serving HTTPS with `pki`'s certificate (for 127.0.0.1 and localhost).
    pub async fn start_https(pki: &Pki) -> FakeRegistry {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_slice(pki.cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::listen(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = State {
            content: Arc::default(),
            faults: Arc::default(),
            seen: Arc::default(),
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
        };
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                // Aborted on stop, so that a stopped registry looks down to pooled keep-alive
                // connections as well.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let (stream, _) = tokio::select! {
                        a = listener.accept() => a.unwrap(),
                        _ = &mut stopped => break,
                    };
                    while connections.try_join_next().is_some() {}
                    let (state, tls) = (state.clone(), tls.clone());
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(respond::respond(state, req).await) }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match tls {
                            None => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                            Some(tls) => {
                                let Ok(stream) = tls.accept(stream).await else {
                                    return;
                                };
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
                drop(listener);
                connections.shutdown().await;
            }
        });
        FakeRegistry {
            addr,
            scheme: state.scheme,
            content: state.content,
            faults: state.faults,
            seen: state.seen,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops listening and closes every connection; once this returns, connecting is refused.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn add_blob(&self, bytes: Bytes) -> String {
        let digest = sha256(&bytes);
        self.content
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), bytes);
        digest
    }

    pub fn add_manifest(&self, repo: &str, tag: &str, media_type: &str, body: &str) -> String {
        let digest = sha256(body.as_bytes());
        let mut c = self.content.lock().unwrap();
        c.manifests.insert(
            digest.clone(),
            (media_type.into(), Bytes::copy_from_slice(body.as_bytes())),
        );
        c.tags.insert((repo.into(), tag.into()), digest.clone());
        digest
    }

    /// A manifest reachable by digest only.
    pub fn add_untagged_manifest(&self, media_type: &str, body: &str) -> String {
        let digest = sha256(body.as_bytes());
        self.content.lock().unwrap().manifests.insert(
            digest.clone(),
            (media_type.into(), Bytes::copy_from_slice(body.as_bytes())),
        );
        digest
    }

    /// Removes a tag (its manifest stays reachable by digest).
    pub fn remove_tag(&self, repo: &str, tag: &str) {
        self.content
            .lock()
            .unwrap()
            .tags
            .remove(&(repo.to_owned(), tag.to_owned()));
    }

    /// Lists `descriptor` among the referrers of `subject` in `repo`.
    pub fn add_referrer(&self, repo: &str, subject: &str, descriptor: serde_json::Value) {
        self.content
            .lock()
            .unwrap()
            .referrers
            .entry((repo.to_owned(), subject.to_owned()))
            .or_default()
            .push(descriptor);
    }

    /// Clients that do not accept the index behind `index_digest` get `fallback` instead.
    pub fn set_fallback(&self, index_digest: &str, fallback: &str) {
        self.content
            .lock()
            .unwrap()
            .fallbacks
            .insert(index_digest.into(), fallback.into());
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    /// Blob bodies being sent now, and the most there were at once.
    pub fn blob_streams(&self) -> Arc<Streams> {
        self.faults().blob_streams.clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests matching method and a path fragment.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path_contains))
            .count()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        // Without a stop signal the accept loop ends on its own (the sender is gone), and with
        // it every connection.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
