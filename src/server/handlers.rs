//! Request handlers: turn a [`Route`] into a call on the mirror and its answer into a response.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::response::{empty, full, Body, BodyError};
use super::route::{Route, Target};
use super::sendfile::{FileRanges, MAX_RANGE};
use super::{range, AppState};
use crate::error::{ClientError, Error};
use crate::metrics::{CacheResult, Source};
use crate::mirror::{BlobAnswer, BlobReader, Chunk};
use crate::oci::media::Accept;
use crate::oci::{Digest, RepoName};
use crate::upstream::Upstream;

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
const CONTENT_DIGEST: &str = "docker-content-digest";

pub async fn handle(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    route: Route,
    zero_copy: Option<FileRanges>,
) -> Result<Response<Body>, Error> {
    let head = method == Method::HEAD;
    match route {
        Route::Base => Ok(Response::builder()
            .header(API_VERSION.0, API_VERSION.1)
            .header(CONTENT_TYPE, "application/json")
            .body(if head { empty() } else { full("{}") })
            .expect("static headers")),
        Route::Metrics => Ok(Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(full(state.metrics.render()))
            .expect("static headers")),
        Route::Health => Ok(Response::new(full("ok\n"))),
        Route::Ready => Ok(ready(state)),
        Route::Manifest { target, reference } => {
            let upstream = state
                .mirror
                .upstream(target.registry.as_deref(), &target.repo)?;
            let accept = Accept::parse(
                headers
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let answer = state
                .mirror
                .manifest(upstream, &target.repo, &reference, &accept)
                .await?;
            let m = answer.manifest;
            let mut response = Response::builder()
                .header(CONTENT_TYPE, &m.media_type)
                .header(CONTENT_LENGTH, m.body.len())
                .header(CONTENT_DIGEST, m.digest.to_string())
                .header(ETAG, format!("\"{}\"", m.digest))
                .header(API_VERSION.0, API_VERSION.1);
            if let Ok(v) = HeaderValue::from_str(answer.result.as_str()) {
                response = response.header("x-wharf-cache", v);
            }
            if !head {
                state
                    .metrics
                    .served(source_of(answer.result), m.body.len() as u64);
            }
            let body = if head { empty() } else { full(m.body.clone()) };
            Ok(response.body(body).expect("valid headers"))
        }
        Route::Blob { target, digest } => {
            let upstream = state
                .mirror
                .upstream(target.registry.as_deref(), &target.repo)?;
            if head {
                blob_head(state, upstream, &target.repo, &digest).await
            } else {
                let range = headers
                    .get(RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range::parse);
                blob_get(state, upstream, &target, &digest, range, zero_copy).await
            }
        }
        Route::Tags { target, query } => {
            listing(state, &target, &with_query("tags/list", &query), head).await
        }
        Route::Referrers {
            target,
            digest,
            query,
        } => {
            listing(
                state,
                &target,
                &with_query(&format!("referrers/{digest}"), &query),
                head,
            )
            .await
        }
    }
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

fn source_of(result: CacheResult) -> Source {
    match result {
        CacheResult::Hit | CacheResult::Stale => Source::Cache,
        CacheResult::Miss | CacheResult::Coalesced => Source::Upstream,
    }
}

fn blob_headers(digest: &Digest) -> http::response::Builder {
    Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_DIGEST, digest.to_string())
        .header(ETAG, format!("\"{digest}\""))
        .header(ACCEPT_RANGES, "bytes")
        .header(API_VERSION.0, API_VERSION.1)
}

async fn blob_head(
    state: &AppState,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Response<Body>, Error> {
    let (size, _) = state.mirror.blob_size(upstream, repo, digest).await?;
    let mut response = blob_headers(digest);
    if let Some(size) = size {
        response = response.header(CONTENT_LENGTH, size);
    }
    Ok(response.body(empty()).expect("valid headers"))
}

async fn blob_get(
    state: &AppState,
    upstream: &Arc<Upstream>,
    target: &Target,
    digest: &Digest,
    range: Option<range::ByteRange>,
    zero_copy: Option<FileRanges>,
) -> Result<Response<Body>, Error> {
    let answer: BlobAnswer = state.mirror.blob(upstream, &target.repo, digest).await?;
    let source = source_of(answer.result);
    let response = blob_headers(digest).header("x-wharf-cache", answer.result.as_str());
    // A range needs the size; without one (no upstream length), or when the bytes come
    // straight from the upstream, the whole blob is sent.
    let range = range.filter(|_| answer.serves_ranges());
    let (response, start, end) = match (range, answer.size) {
        (Some(range), Some(size)) => {
            let (start, end) = range
                .resolve(size)
                .ok_or(ClientError::RangeNotSatisfiable { size })?;
            let response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1))
                .header(CONTENT_LENGTH, end - start);
            (response, start, Some(end))
        }
        (_, Some(size)) => (response.header(CONTENT_LENGTH, size), 0, Some(size)),
        (_, None) => (response, 0, None),
    };
    let body = stream_body(
        answer.into_reader(start, end),
        state.metrics.clone(),
        source,
        zero_copy,
    );
    Ok(response.body(body).expect("valid headers"))
}

/// A body that streams a reader. An error ends the stream with an error, which makes hyper cut
/// the connection: the client sees a short body, never a complete-looking wrong one. With
/// `zero_copy`, cached ranges the page cache holds are sent by the socket from the file.
fn stream_body(
    reader: BlobReader,
    metrics: crate::metrics::Metrics,
    source: Source,
    zero_copy: Option<FileRanges>,
) -> Body {
    // Looked up once per response, not once per chunk.
    let served = metrics.served_counter(source);
    let chunks = stream::unfold(Some(reader), move |reader| {
        let (served, zero_copy) = (served.clone(), zero_copy.clone());
        async move {
            let mut reader = reader?;
            let next = match &zero_copy {
                Some(ranges) => reader.next_piece(MAX_RANGE).await.map(|piece| {
                    piece.map(|piece| match piece {
                        Chunk::Bytes(bytes) => bytes,
                        Chunk::InFile { file, offset, len } => {
                            ranges.placeholder(file, offset, len)
                        }
                    })
                }),
                None => reader.next_chunk().await,
            };
            match next {
                Ok(Some(chunk)) => {
                    served.inc_by(chunk.len() as u64);
                    Some((Ok(Frame::data(chunk)), Some(reader)))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "aborting a blob response");
                    Some((Err(BodyError::from(e)), None))
                }
            }
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

async fn listing(
    state: &AppState,
    target: &Target,
    path_and_query: &str,
    head: bool,
) -> Result<Response<Body>, Error> {
    let upstream = state
        .mirror
        .upstream(target.registry.as_deref(), &target.repo)?;
    let listing = state
        .mirror
        .listing(upstream, &target.repo, path_and_query)
        .await?;
    let mut response = Response::builder()
        .header(
            CONTENT_TYPE,
            listing
                .content_type
                .as_deref()
                .unwrap_or("application/json"),
        )
        .header(CONTENT_LENGTH, listing.body.len())
        .header(API_VERSION.0, API_VERSION.1);
    if let Some(link) = &listing.link {
        response = response.header("link", link);
    }
    let body = if head {
        empty()
    } else {
        full(listing.body.clone())
    };
    Ok(response.body(body).expect("valid headers"))
}

/// Ready while the process serves; the detail tells an operator whether the cache takes writes
/// (wharf keeps serving from the upstream when it does not).
fn ready(state: &AppState) -> Response<Body> {
    let usage = state.mirror.cache_usage();
    let store = state.mirror.store();
    // Probes an unwritable directory (at most every few seconds), so the answer is current even
    // when no request has needed the cache lately.
    store.caching_allowed();
    let unwritable = store.unwritable();
    let detail = serde_json::json!({
        "status": "ready",
        "cache": {
            "writable": unwritable.is_none(),
            "condition": unwritable.map(|(c, _)| c.as_str()),
            "condition_seconds": unwritable.map(|(_, since)| since.as_secs()),
            "bytes": usage.bytes,
            "max_bytes": usage.max_bytes,
            "entries": usage.entries,
        },
        "fills_in_flight": state.mirror.fills_in_flight(),
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(detail.to_string())))
        .expect("static headers")
}
