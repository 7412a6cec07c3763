//! The fake upstream: an in-process registry on 127.0.0.1:0 (HTTP, or HTTPS with a test CA) with
//! fault switches, a gate that holds blob bodies until a test opens it, and a record of every
//! request it was sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::pki::Pki;
use super::{sha256, OCI_INDEX};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The bearer token the fake's own token endpoint hands out.
pub const TOKEN: &str = "fake-token-123";

/// What the fake registry does wrong, switchable at any time.
#[derive(Default, Clone)]
pub struct Faults {
    /// Answer every /v2 request with this status (and `Retry-After`).
    pub status: Option<(u16, Option<&'static str>)>,
    /// Blob bodies: declare the full length, then close when the body gets to this byte.
    pub cut: Option<Break>,
    /// Answer every blob GET with the whole blob and a 200, whatever its `Range`.
    pub ignore_ranges: bool,
    /// Blob bodies: send only this many bytes, and declare that length (a well-framed lie).
    pub truncate_blobs_to: Option<usize>,
    /// Blob bodies: flip one byte in the middle.
    pub flip_byte: bool,
    /// Blob bodies: pause this long between 64 KiB chunks.
    pub chunk_delay: Option<Duration>,
    /// Blob bodies: send chunks of sizes from this range (inclusive, varying from chunk to
    /// chunk) instead of 64 KiB, as HTTP/2 DATA frames and CDNs do.
    pub chunk_sizes: Option<(usize, usize)>,
    /// Blob bodies: at this byte, keep the connection open and send nothing more.
    pub stall: Option<Break>,
    /// Blob bodies: send some bytes, then wait until the test opens the gate.
    pub hold: Option<Hold>,
    /// Blob GETs without `Range` (a fill's): wait at this gate before answering at all.
    pub hold_whole_answers: Option<Hold>,
    /// Require `Authorization: Bearer <token>` from this realm (served by the fake itself).
    pub bearer: bool,
    /// Require this `Authorization: Basic ...` value.
    pub basic: Option<String>,
    /// Redirect blob GETs to this base URL.
    pub redirect_blobs_to: Option<String>,
    /// With `bearer`: name this `host:port` as the token realm instead of the registry itself.
    pub realm_host: Option<String>,
    /// Manifest requests (GET and HEAD): wait this long before answering.
    pub manifest_delay: Option<Duration>,
    /// Manifest GETs: change the body but keep the digest header.
    pub tamper_manifests: bool,
    /// Manifest GETs: send the body in chunks, without declaring its length.
    pub chunked_manifests: bool,
    /// Repositories whose every request is answered 404, as a registry hides a private
    /// repository from credentials that may not read it.
    pub hidden_repos: Vec<String>,
    /// Counts blob bodies being sent (shared by every clone of these faults).
    pub blob_streams: Arc<Streams>,
}

/// Blob bodies in flight now, and the most there ever were at once.
#[derive(Default)]
pub struct Streams {
    pub now: AtomicUsize,
    pub most: AtomicUsize,
}

impl Streams {
    pub fn now(&self) -> usize {
        self.now.load(SeqCst)
    }

    pub fn most(&self) -> usize {
        self.most.load(SeqCst)
    }
}

/// One blob body in flight, counted until dropped.
struct Streaming(Arc<Streams>);

impl Streaming {
    fn new(streams: &Arc<Streams>) -> Streaming {
        let now = streams.now.fetch_add(1, SeqCst) + 1;
        streams.most.fetch_max(now, SeqCst);
        Streaming(streams.clone())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

/// Where a blob body breaks (is cut, or stalls): at byte `at` of the blob, in every body that
/// gets there, or only in the first few.
#[derive(Clone)]
pub struct Break {
    at: usize,
    /// `None`: every body.
    left: Option<Arc<AtomicUsize>>,
}

impl Break {
    pub fn at(at: usize) -> Break {
        Break { at, left: None }
    }

    /// Only the first `n` bodies that get to the byte break there.
    pub fn times(mut self, n: usize) -> Break {
        self.left = Some(Arc::new(AtomicUsize::new(n)));
        self
    }

    /// Whether a body of `start..end` breaks, and where (counted as one of the bodies that do).
    fn applies(&self, start: usize, end: usize) -> Option<usize> {
        if !(start..end).contains(&self.at) {
            return None;
        }
        match &self.left {
            None => Some(self.at),
            Some(left) => left
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .ok()
                .map(|_| self.at),
        }
    }
}

/// Holds blob bodies that reach byte `after` from before it until [`Hold::open`], so that a test decides
/// when a fill may go on (once every client it wants has joined, say) instead of hoping the
/// upstream is slow enough.
#[derive(Clone)]
pub struct Hold {
    after: usize,
    only: Option<String>,
    gate: Arc<watch::Sender<bool>>,
    reached: Arc<AtomicUsize>,
}

impl Hold {
    /// Holds every blob body once `after` bytes of it are sent.
    pub fn after(after: usize) -> Hold {
        Hold {
            after,
            only: None,
            gate: Arc::new(watch::channel(false).0),
            reached: Arc::default(),
        }
    }

    /// Holds only the body of this blob.
    pub fn only(mut self, digest: &str) -> Hold {
        self.only = Some(digest.to_owned());
        self
    }

    /// Lets every held body, and every later one, go on.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// How many bodies have been held so far (each counted once, when it got to the hold).
    pub fn reached(&self) -> usize {
        self.reached.load(SeqCst)
    }

    fn applies_to(&self, digest: &str) -> bool {
        self.only.as_deref().map_or(true, |only| only == digest)
    }

    async fn wait(&self) {
        self.reached.fetch_add(1, SeqCst);
        let mut open = self.gate.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

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
                            async move { Ok::<_, Infallible>(respond(state, req).await) }
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

fn full(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    )
    .unwrap()
}

/// A 200 whose body goes out in 64 KiB chunks with no declared length.
fn chunked(headers: &[(&str, String)], body: Bytes) -> Response<Body> {
    let frames = (0..body.len()).step_by(64 * 1024).map(move |at| {
        Ok(Frame::data(
            body.slice(at..(at + 64 * 1024).min(body.len())),
        ))
    });
    let mut r = Response::builder().status(StatusCode::OK);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>())).boxed_unsync())
        .unwrap()
}

async fn respond(state: State, req: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: req.uri().to_string(),
        authorization: header("authorization"),
        accept: header("accept"),
        range: header("range"),
        version: req.version(),
    });
    let faults = state.faults.lock().unwrap().clone();
    if path == "/token" {
        return full(
            200,
            &[("content-type", "application/json".into())],
            format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#),
        );
    }
    if let Some((status, retry_after)) = faults.status {
        let mut headers = vec![];
        if let Some(r) = retry_after {
            headers.push(("retry-after", r.to_string()));
        }
        return full(
            status,
            &headers,
            r#"{"errors":[{"code":"X","message":"fault"}]}"#,
        );
    }
    if faults.bearer && header("authorization") != Some(format!("Bearer {TOKEN}")) {
        let scope = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplitn(3, '/').nth(2))
            .map(|repo| format!(",scope=\"repository:{repo}:pull\""))
            .unwrap_or_default();
        let realm_host = faults.realm_host.clone().unwrap_or(state.addr.to_string());
        let challenge = format!(
            "Bearer realm=\"{}://{realm_host}/token\",service=\"fake\"{scope}",
            state.scheme
        );
        return full(401, &[("www-authenticate", challenge)], "");
    }
    if let Some(expected) = &faults.basic {
        if header("authorization").as_ref() != Some(expected) {
            return full(
                401,
                &[("www-authenticate", "Basic realm=\"fake\"".into())],
                "",
            );
        }
    }
    let head = method == "HEAD";
    let Some(rest) = path.strip_prefix("/v2/") else {
        return full(404, &[], "");
    };
    if rest.is_empty() {
        return full(200, &[], "{}");
    }
    let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
    let [reference, kind, repo] = parts[..] else {
        return full(404, &[], "");
    };
    if faults.hidden_repos.iter().any(|hidden| hidden == repo) {
        return full(404, &[], r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#);
    }
    if kind == "manifests" {
        if let Some(delay) = faults.manifest_delay {
            tokio::time::sleep(delay).await;
        }
    }
    if let Some(gate) = faults.hold_whole_answers.as_ref() {
        if kind == "blobs" && !head && header("range").is_none() && gate.applies_to(reference) {
            gate.wait().await;
        }
    }
    let c = state.content.lock().unwrap();
    match kind {
        "manifests" => {
            let digest = if reference.starts_with("sha256:") {
                Some(reference.to_owned())
            } else {
                c.tags
                    .get(&(repo.to_owned(), reference.to_owned()))
                    .cloned()
            };
            let Some(mut digest) = digest else {
                return full(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#);
            };
            let accept = header("accept").unwrap_or_default();
            if let Some(fallback) = c.fallbacks.get(&digest) {
                let index_type = &c.manifests[&digest].0;
                if !accept.contains(index_type.as_str()) && !reference.starts_with("sha256:") {
                    digest = fallback.clone();
                }
            }
            let Some((media_type, mut body)) = c.manifests.get(&digest).cloned() else {
                return full(404, &[], "");
            };
            if faults.tamper_manifests {
                body = Bytes::from([&body[..], b" "].concat());
            }
            if faults.chunked_manifests && !head {
                let headers = [
                    ("content-type", media_type),
                    ("docker-content-digest", digest),
                ];
                return chunked(&headers, body);
            }
            let headers = [
                ("content-type", media_type),
                ("docker-content-digest", digest),
                ("content-length", body.len().to_string()),
            ];
            full(200, &headers, if head { Bytes::new() } else { body })
        }
        "blobs" => {
            let Some(blob) = c.blobs.get(reference).cloned() else {
                return full(404, &[], r#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#);
            };
            drop(c);
            let blob = match faults.truncate_blobs_to {
                Some(len) => blob.slice(..len.min(blob.len())),
                None => blob,
            };
            if let (Some(base), false) = (&faults.redirect_blobs_to, head) {
                return full(307, &[("location", format!("{base}{path}"))], "");
            }
            let mut headers = vec![
                ("content-type", "application/octet-stream".to_string()),
                ("docker-content-digest", reference.to_owned()),
                ("content-length", blob.len().to_string()),
            ];
            if head {
                return full(200, &headers, Bytes::new());
            }
            let span = match header("range").filter(|_| !faults.ignore_ranges) {
                None => 0..blob.len(),
                Some(range) => match byte_range(&range, blob.len()) {
                    Some(span) => span,
                    None => {
                        let all = format!("bytes */{}", blob.len());
                        return full(416, &[("content-range", all)], "");
                    }
                },
            };
            if span != (0..blob.len()) {
                headers[2].1 = span.len().to_string();
                let last = span.end - 1;
                headers.push((
                    "content-range",
                    format!("bytes {}-{last}/{}", span.start, blob.len()),
                ));
            }
            stream_blob(blob, span, reference, &faults, &headers)
        }
        "tags" if reference == "list" => {
            let tags: Vec<_> = c
                .tags
                .keys()
                .filter(|(r, _)| r == repo)
                .map(|(_, t)| t.clone())
                .collect();
            full(
                200,
                &[("content-type", "application/json".into())],
                serde_json::json!({"name": repo, "tags": tags}).to_string(),
            )
        }
        "referrers" => full(
            200,
            &[("content-type", OCI_INDEX.into())],
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
        ),
        _ => full(404, &[], ""),
    }
}

/// Where a blob body being sent has got to.
struct Sending {
    pos: usize,
    /// Past the hold (or never held): no more waiting.
    released: bool,
    /// The error that cuts the body has been sent.
    cut_sent: bool,
}

/// The one span `bytes=a-b`, `bytes=a-` or `bytes=-n` asks for, `None` when it is unsatisfiable.
fn byte_range(header: &str, len: usize) -> Option<std::ops::Range<usize>> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    let span = match (first.parse::<usize>(), last.parse::<usize>()) {
        (Ok(first), Ok(last)) => first..(last + 1).min(len),
        (Ok(first), Err(_)) if last.is_empty() => first..len,
        (Err(_), Ok(n)) if first.is_empty() => len.saturating_sub(n)..len,
        _ => return None,
    };
    (span.start < span.end).then_some(span)
}

/// A blob body of `span`, with the faults switched on when it was asked for.
fn stream_blob(
    blob: Bytes,
    span: std::ops::Range<usize>,
    digest: &str,
    faults: &Faults,
    headers: &[(&str, String)],
) -> Response<Body> {
    let mut data = blob.to_vec();
    if faults.flip_byte {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let data = Bytes::from(data);
    let cut_at = faults
        .cut
        .as_ref()
        .and_then(|c| c.applies(span.start, span.end));
    let send_len = cut_at.unwrap_or(span.end);
    let cut = cut_at.is_some();
    let delay = faults.chunk_delay;
    let stall_at = faults
        .stall
        .as_ref()
        .and_then(|s| s.applies(span.start, span.end));
    let hold = faults
        .hold
        .clone()
        .filter(|h| h.applies_to(digest) && span.start < h.after.max(1));
    const CHUNK: usize = 64 * 1024;
    let chunk_sizes = faults.chunk_sizes.unwrap_or((CHUNK, CHUNK));
    let streaming = Streaming::new(&faults.blob_streams);
    let start = Sending {
        pos: span.start,
        released: hold.is_none(),
        cut_sent: false,
    };
    let chunks = futures_util::stream::unfold(start, move |mut s| {
        let _counted = &streaming;
        let (data, hold) = (data.clone(), hold.clone());
        async move {
            let hold = hold.as_ref();
            if s.pos >= send_len {
                if cut && !s.cut_sent {
                    s.cut_sent = true;
                    let err: Box<dyn std::error::Error + Send + Sync> = "cut".into();
                    return Some((Err(err), s));
                }
                return None;
            }
            if let Some(hold) = hold.filter(|h| !s.released && s.pos >= h.after) {
                hold.wait().await;
                s.released = true;
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if stall_at.is_some_and(|at| s.pos >= at) {
                std::future::pending::<()>().await;
            }
            // Sizes vary with the position, the same for every body of the blob.
            let (least, most) = chunk_sizes;
            let size = least + (s.pos.wrapping_mul(2_654_435_761) >> 7) % (most - least + 1);
            let mut end = (s.pos + size).min(send_len);
            if let Some(hold) = hold.filter(|h| !s.released && h.after > s.pos) {
                // Exactly `after` bytes go out before the hold.
                end = end.min(hold.after);
            }
            let chunk = data.slice(s.pos..end);
            s.pos = end;
            Some((Ok(Frame::data(chunk)), s))
        }
    });
    let partial = headers.iter().any(|(k, _)| *k == "content-range");
    let mut r = Response::builder().status(if partial { 206 } else { 200 });
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(StreamBody::new(chunks).boxed_unsync()).unwrap()
}
