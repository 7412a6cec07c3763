//! A fake S3-compatible object store: what `object_store`'s S3 client asks of the shared tier
//! (path-style GET, HEAD, PUT, DELETE, multipart uploads and ListObjectsV2), kept in memory,
//! signatures unchecked. Tests put objects in, look at them, and age them.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use wharf::config::SharedConfig;

pub const BUCKET: &str = "wharf";

type Body = BoxBody<Bytes, std::io::Error>;

/// How a body breaks off.
#[derive(Clone, Copy)]
pub enum Break {
    /// The connection is dropped.
    Cut,
    /// Nothing more is sent, and the connection stays open.
    Stall,
}

#[derive(Default)]
struct Objects {
    /// Key (without the bucket) → body and modification time.
    stored: BTreeMap<String, (Bytes, SystemTime)>,
    /// Upload id → its key and parts.
    uploads: HashMap<String, (String, BTreeMap<u32, Bytes>)>,
    next_upload: u64,
    /// Requests by method, for assertions.
    requests: Vec<(Method, String)>,
    /// Object bodies: declare the whole length, then break off at this byte of the object.
    break_bodies_at: Option<(usize, Break)>,
}

pub struct FakeS3 {
    pub addr: SocketAddr,
    objects: Arc<Mutex<Objects>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeS3 {
    pub async fn start() -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let objects: Arc<Mutex<Objects>> = Arc::default();
        let state = objects.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeS3 {
            addr,
            objects,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The object stored under `key`, if any.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        let objects = self.objects.lock().unwrap();
        objects.stored.get(key).map(|(body, _)| body.clone())
    }

    pub fn put_object(&self, key: &str, body: Bytes) {
        self.objects
            .lock()
            .unwrap()
            .stored
            .insert(key.to_owned(), (body, SystemTime::now()));
    }

    /// Object bodies from now on declare their whole length and break off at byte `at` of
    /// the object.
    pub fn break_bodies_at(&self, at: usize, how: Break) {
        self.objects.lock().unwrap().break_bodies_at = Some((at, how));
    }

    /// Makes the object under `key` look last modified `by` ago.
    pub fn age(&self, key: &str, by: Duration) {
        let mut objects = self.objects.lock().unwrap();
        let (_, modified) = objects.stored.get_mut(key).expect("aged object exists");
        *modified = SystemTime::now() - by;
    }

    /// Requests with `method` whose target (path and query) holds `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        let objects = self.objects.lock().unwrap();
        objects
            .requests
            .iter()
            .filter(|(m, p)| m.as_str() == method && p.contains(fragment))
            .count()
    }
}

/// The key of a blob in the tier, as wharf lays it out (no prefix).
pub fn blob_key(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// A `[cache.shared]` on this bucket, its key files written into `dir`.
pub fn shared_config(s3: &FakeS3, dir: &Path) -> SharedConfig {
    let (access_key_file, secret_key_file) = (dir.join("s3-access-key"), dir.join("s3-secret"));
    std::fs::write(&access_key_file, "GKtest\n").unwrap();
    std::fs::write(&secret_key_file, "test-secret-key\n").unwrap();
    SharedConfig {
        endpoint: s3.endpoint().parse().unwrap(),
        bucket: BUCKET.into(),
        region: "garage".into(),
        prefix: String::new(),
        path_style: true,
        access_key_file,
        secret_key_file,
        max_size: None,
        max_idle: Duration::from_secs(30 * 24 * 3600),
        ca_file: None,
    }
}

/// The marker of a blob's last use from the bucket.
pub fn used_key(digest: &str) -> String {
    format!("used/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn answer(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap()
}

fn not_found() -> Response<Body> {
    answer(
        404,
        &[("content-type", "application/xml".into())],
        "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>",
    )
}

async fn respond(state: &Mutex<Objects>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let target = req.uri().to_string();
    let range = req
        .headers()
        .get("range")
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut objects = state.lock().unwrap();
    objects.requests.push((method.clone(), target));
    if query.get("list-type").is_some_and(|t| t == "2") {
        return list(&objects, query.get("prefix").map_or("", |p| p));
    }
    let Some(key) = path
        .strip_prefix(&format!("/{BUCKET}/"))
        .map(percent_decode)
    else {
        return not_found();
    };
    // The etag names the whole object, whatever part of it is sent.
    let meta = |len: usize, whole: usize, modified: SystemTime| {
        vec![
            ("content-length", len.to_string()),
            ("etag", format!("\"{whole}\"")),
            ("last-modified", httpdate::fmt_http_date(modified)),
        ]
    };
    match (
        method.as_str(),
        query.get("uploadId"),
        query.contains_key("uploads"),
    ) {
        ("GET" | "HEAD", None, false) => match objects.stored.get(&key) {
            Some((found, modified)) => {
                let len = found.len();
                let (start, end) = range.map_or((0, len), |(a, b)| (a, b.map_or(len, |b| b + 1)));
                let mut headers = meta(end - start, len, *modified);
                if range.is_some() {
                    headers.push(("content-range", format!("bytes {start}-{}/{len}", end - 1)));
                }
                let status = if range.is_some() { 206 } else { 200 };
                let mut r = answer(status, &headers, Bytes::new());
                match (method == Method::HEAD, objects.break_bodies_at) {
                    (true, _) => {}
                    // The declared length, then a break at that byte of the object.
                    (false, Some((at, how))) if (start..end).contains(&at) => {
                        let sent =
                            futures_util::stream::iter([Ok(Frame::data(found.slice(start..at)))]);
                        *r.body_mut() = match how {
                            Break::Cut => {
                                let cut =
                                    futures_util::stream::iter([Err(std::io::Error::other("cut"))]);
                                BodyExt::boxed(StreamBody::new(sent.chain(cut)))
                            }
                            Break::Stall => BodyExt::boxed(StreamBody::new(
                                sent.chain(futures_util::stream::pending()),
                            )),
                        };
                    }
                    (false, _) => {
                        *r.body_mut() = Full::new(found.slice(start..end))
                            .map_err(|never| match never {})
                            .boxed()
                    }
                }
                r
            }
            None => not_found(),
        },
        ("PUT", None, false) => {
            objects.stored.insert(key, (body, SystemTime::now()));
            answer(200, &[("etag", "\"put\"".into())], "")
        }
        ("DELETE", None, false) => {
            objects.stored.remove(&key);
            answer(204, &[], "")
        }
        ("POST", None, true) => {
            objects.next_upload += 1;
            let id = format!("upload-{}", objects.next_upload);
            objects
                .uploads
                .insert(id.clone(), (key.clone(), BTreeMap::new()));
            answer(
                200,
                &[("content-type", "application/xml".into())],
                format!(
                    "<?xml version=\"1.0\"?><InitiateMultipartUploadResult><Bucket>{BUCKET}</Bucket>\
                     <Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
                ),
            )
        }
        ("PUT", Some(id), false) => {
            let number: u32 = query["partNumber"].parse().unwrap();
            let Some((_, parts)) = objects.uploads.get_mut(id) else {
                return not_found();
            };
            parts.insert(number, body);
            answer(200, &[("etag", format!("\"part-{number}\""))], "")
        }
        ("POST", Some(id), false) => {
            let Some((key, parts)) = objects.uploads.remove(id) else {
                return not_found();
            };
            let whole: Vec<u8> = parts.values().flat_map(|p| p.iter().copied()).collect();
            objects
                .stored
                .insert(key.clone(), (Bytes::from(whole), SystemTime::now()));
            answer(
                200,
                &[("content-type", "application/xml".into())],
                format!(
                    "<?xml version=\"1.0\"?><CompleteMultipartUploadResult><Bucket>{BUCKET}</Bucket>\
                     <Key>{key}</Key><ETag>\"whole\"</ETag></CompleteMultipartUploadResult>"
                ),
            )
        }
        ("DELETE", Some(id), false) => {
            objects.uploads.remove(id);
            answer(204, &[], "")
        }
        _ => answer(400, &[], "unsupported"),
    }
}

/// ListObjectsV2, in one page.
fn list(objects: &Objects, prefix: &str) -> Response<Body> {
    let contents: String = objects
        .stored
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(key, (body, modified))| {
            format!(
                "<Contents><Key>{key}</Key><Size>{}</Size><LastModified>{}</LastModified>\
                 <ETag>\"{}\"</ETag></Contents>",
                body.len(),
                humantime::format_rfc3339_millis(*modified),
                body.len()
            )
        })
        .collect();
    answer(
        200,
        &[("content-type", "application/xml".into())],
        format!(
            "<?xml version=\"1.0\"?><ListBucketResult><Name>{BUCKET}</Name><Prefix>{prefix}</Prefix>\
             <IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        ),
    )
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
