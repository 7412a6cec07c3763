//! Request handlers: turn a [`Route`] into a call on the mirror and its answer into a response.

use bytes::Bytes;
use futures_util::stream;
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::range;
use super::response::{empty, full, Body, BodyError};
use super::route::{Route, Target};
use super::sendfile::{FileRanges, MAX_RANGE};
use super::state::AppState;
use crate::body::Chunk;
use crate::error::{ClientError, Error};
use crate::metrics::{CacheResult, Source};
use crate::mirror::{BlobAnswer, BlobBody};
use crate::oci::media::Accept;
use crate::oci::{Digest, Listing, Reference};

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
            manifest(state, headers, &target, &reference, head).await
        }
        Route::Blob { target, digest } if head => blob_head(state, &target, &digest).await,
        Route::Blob { target, digest } => {
            let range = headers
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range::parse);
            blob_get(state, &target, &digest, range, zero_copy).await
        }
        Route::Listing { target, listing } => listing_page(state, &target, &listing, head).await,
    }
}

async fn manifest(
    state: &AppState,
    headers: &HeaderMap,
    target: &Target,
    reference: &Reference,
    head: bool,
) -> Result<Response<Body>, Error> {
    let accept = Accept::parse(
        headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let answer = state
        .mirror
        .manifest(target.registry.as_deref(), &target.repo, reference, &accept)
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
    target: &Target,
    digest: &Digest,
) -> Result<Response<Body>, Error> {
    let (size, _) = state
        .mirror
        .blob_size(target.registry.as_deref(), &target.repo, digest)
        .await?;
    let mut response = blob_headers(digest);
    if let Some(size) = size {
        response = response.header(CONTENT_LENGTH, size);
    }
    Ok(response.body(empty()).expect("valid headers"))
}

async fn blob_get(
    state: &AppState,
    target: &Target,
    digest: &Digest,
    range: Option<range::ByteRange>,
    zero_copy: Option<FileRanges>,
) -> Result<Response<Body>, Error> {
    let answer: BlobAnswer = state
        .mirror
        .blob(target.registry.as_deref(), &target.repo, digest)
        .await?;
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
        answer.into_body(start, end),
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
    reader: BlobBody,
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
                        Chunk::File(range) => ranges.placeholder(range),
                    })
                }),
                None => reader.next_bytes().await,
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

async fn listing_page(
    state: &AppState,
    target: &Target,
    listing: &Listing,
    head: bool,
) -> Result<Response<Body>, Error> {
    let page = state
        .mirror
        .listing(target.registry.as_deref(), &target.repo, listing)
        .await?;
    let mut response = Response::builder()
        .header(
            CONTENT_TYPE,
            page.content_type.as_deref().unwrap_or("application/json"),
        )
        .header(CONTENT_LENGTH, page.body.len())
        .header(API_VERSION.0, API_VERSION.1);
    if let Some(link) = &page.link {
        response = response.header("link", link);
    }
    let body = if head {
        empty()
    } else {
        full(page.body.clone())
    };
    Ok(response.body(body).expect("valid headers"))
}

/// Ready while the process serves; the detail tells an operator whether the cache takes writes
/// (wharf keeps serving from the upstream when it does not).
fn ready(state: &AppState) -> Response<Body> {
    let ready = state.mirror.readiness();
    let detail = serde_json::json!({
        "status": "ready",
        "cache": {
            "writable": ready.unwritable.is_none(),
            "condition": ready.unwritable.map(|(condition, _)| condition),
            "condition_seconds": ready.unwritable.map(|(_, secs)| secs),
            "bytes": ready.bytes,
            "max_bytes": ready.max_bytes,
            "entries": ready.entries,
        },
        "fills_in_flight": ready.fills_in_flight,
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(detail.to_string())))
        .expect("static headers")
}
