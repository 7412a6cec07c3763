//! Request handlers: turn a [`Route`] into a call on the mirror and its answer into a response.

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE,
};
use http::{HeaderMap, Method, Response, StatusCode};

use super::blob_body::{self, Delivery};
use super::multipart::{Boundary, Multipart};
use super::range::{self, ByteRange, RangeSet, Resolved, Span};
use super::response::{empty, full, Body};
use super::route::{Route, Target};
use super::sendfile::FileRanges;
use super::state::AppState;
use crate::error::{ClientError, Error};
use crate::metrics::{CacheResult, RangeKind, Source};
use crate::mirror::{BlobAnswer, BlobBody, BlobBytes, Origin};
use crate::oci::media::Accept;
use crate::oci::{Digest, Listing, Reference};

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
const CONTENT_DIGEST: &str = "docker-content-digest";

/// What was asked besides the route: how, with which headers, and by a client or a peer.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub origin: Origin,
    /// Whom the request was admitted as, if anyone.
    pub who: Option<&'a str>,
}

pub async fn handle(
    state: &AppState,
    asked: Asked<'_>,
    route: Route,
    zero_copy: Option<FileRanges>,
) -> Result<Response<Body>, Error> {
    let Asked {
        method,
        headers,
        origin,
        who,
    } = asked;
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
        Route::Ready => Ok(ready(state).await),
        // Answered where the request's payload is at hand (`request.rs`), never here.
        Route::Webhook(_) => Err(ClientError::NotFound.into()),
        Route::Admin(route) => {
            Box::pin(super::admin::handle(
                state,
                route,
                who.unwrap_or("admin"),
                headers,
            ))
            .await
        }
        Route::Manifest { target, reference } => {
            manifest(state, headers, &target, &reference, head, origin).await
        }
        // Boxed: a future is as large as its largest branch, and every request's future is
        // moved whole a few times on its way into hyper. Blob answers are rarer and larger
        // than manifests, and an allocation is nothing beside their bytes.
        Route::Blob { target, digest } if head => {
            Box::pin(blob_head(state, &target, &digest)).await
        }
        Route::Blob { target, digest } => {
            let ranges = headers
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range::parse);
            Box::pin(blob_get(state, &target, &digest, ranges, zero_copy, origin)).await
        }
        Route::Listing { target, listing } => {
            Box::pin(listing_page(state, &target, &listing, head)).await
        }
        Route::ListedBy {
            target,
            manifest,
            told,
        } => listed_by(state, &target, &manifest, told).await,
    }
}

/// A peer asks which index this node has recorded as listing `manifest`, or tells it one.
async fn listed_by(
    state: &AppState,
    target: &Target,
    manifest: &Digest,
    told: Option<Digest>,
) -> Result<Response<Body>, Error> {
    let (registry, repo) = (target.registry.as_deref(), &target.repo);
    if let Some(index) = told {
        state.mirror.note_listed(registry, repo, manifest, &index)?;
        return Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .expect("static headers"));
    }
    match state.mirror.listed_here(registry, repo, manifest).await? {
        Some(index) => Ok(Response::builder()
            .header(CONTENT_TYPE, "text/plain")
            .body(full(index.to_string()))
            .expect("static headers")),
        None => Err(ClientError::ManifestUnknown.into()),
    }
}

async fn manifest(
    state: &AppState,
    headers: &HeaderMap,
    target: &Target,
    reference: &Reference,
    head: bool,
    origin: Origin,
) -> Result<Response<Body>, Error> {
    let accept = Accept::parse(
        headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let answer = state
        .mirror
        .manifest(
            target.registry.as_deref(),
            &target.repo,
            reference,
            &accept,
            origin,
        )
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
    let source = source_of(answer.result);
    if !head {
        state.metrics.served(source, m.body.len() as u64);
    }
    if source == Source::Cache && origin == Origin::Client {
        count_hit(
            state,
            target,
            reference,
            if head { 0 } else { m.body.len() as u64 },
        );
    }
    let body = if head { empty() } else { full(m.body.clone()) };
    Ok(response.body(body).expect("valid headers"))
}

/// A manifest served from the cache: for its repository, and for its tag when asked by one.
fn count_hit(state: &AppState, target: &Target, reference: &Reference, bytes: u64) {
    let Some(usage) = state
        .mirror
        .usage_of(target.registry.as_deref(), &target.repo)
    else {
        return;
    };
    usage.all.hit();
    usage.all.add_bytes(bytes);
    if let Reference::Tag(tag) = reference {
        if let Some(tag) = usage.tag(tag.as_str()) {
            tag.hit();
            tag.add_bytes(bytes);
        }
    }
}

fn source_of(result: CacheResult) -> Source {
    match result {
        CacheResult::Hit | CacheResult::Stale => Source::Cache,
        CacheResult::Miss | CacheResult::Coalesced => Source::Upstream,
    }
}

/// The type of every blob (and of each part of a multipart answer): registries serve blobs as
/// opaque bytes.
const BLOB_TYPE: &str = "application/octet-stream";

fn blob_headers(digest: &Digest, content_type: &str) -> http::response::Builder {
    Response::builder()
        .header(CONTENT_TYPE, content_type)
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
    let mut response = blob_headers(digest, BLOB_TYPE);
    if let Some(size) = size {
        response = response.header(CONTENT_LENGTH, size);
    }
    Ok(response.body(empty()).expect("valid headers"))
}

async fn blob_get(
    state: &AppState,
    target: &Target,
    digest: &Digest,
    ranges: Option<RangeSet>,
    zero_copy: Option<FileRanges>,
    origin: Origin,
) -> Result<Response<Body>, Error> {
    // One range with both ends is what a lazy puller asks of a blob it may not have yet.
    let wanted = match ranges.as_ref().map(RangeSet::specs) {
        Some(
            &[ByteRange::From {
                start,
                last: Some(last),
            }],
        ) => Some(start..last.saturating_add(1)),
        _ => None,
    };
    let answer: BlobAnswer = state
        .mirror
        .blob(
            target.registry.as_deref(),
            &target.repo,
            digest,
            wanted,
            origin,
        )
        .await?;
    let result = answer.result;
    let headers = |content_type: &str| {
        blob_headers(digest, content_type).header("x-wharf-cache", result.as_str())
    };
    let from_cache = (answer.source == Source::Cache && origin == Origin::Client)
        .then(|| {
            state
                .mirror
                .usage_of(target.registry.as_deref(), &target.repo)
        })
        .flatten();
    if let Some(usage) = &from_cache {
        usage.all.hit();
    }
    let delivery = Delivery::new(
        state.metrics.served_counter(answer.source),
        zero_copy,
        from_cache,
    );
    // A range needs the size; without one (no upstream length), or when the bytes come
    // straight from the upstream, the whole blob is sent.
    let (blob, size) = match (answer.bytes, answer.size) {
        (BlobBytes::Ranged(blob), Some(size)) => (blob, size),
        (BlobBytes::Ranged(blob), None) => {
            return Ok(whole(
                headers(BLOB_TYPE),
                blob.part(0, None),
                None,
                delivery,
            ))
        }
        (BlobBytes::Whole(body), size) => {
            return Ok(whole(headers(BLOB_TYPE), body, size, delivery))
        }
    };
    match answer_to(ranges, size, state)? {
        Ranged::Whole => Ok(whole(
            headers(BLOB_TYPE),
            blob.part(0, None),
            Some(size),
            delivery,
        )),
        Ranged::Single(span) => {
            let response = headers(BLOB_TYPE)
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    CONTENT_RANGE,
                    format!("bytes {}-{}/{size}", span.start, span.last()),
                )
                .header(CONTENT_LENGTH, span.length());
            let body = blob_body::single(blob.part(span.start, Some(span.end)), delivery);
            Ok(response.body(body).expect("valid headers"))
        }
        Ranged::Multi(layout, parts) => {
            let response = headers(&layout.content_type())
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_LENGTH, layout.content_length(&parts));
            let body = blob_body::multipart(blob, layout, parts, delivery);
            Ok(response.body(body).expect("valid headers"))
        }
    }
}

/// What a blob whose spans can be read is answered with.
enum Ranged {
    Whole,
    Single(Span),
    Multi(Multipart, Vec<Span>),
}

/// How to answer `ranges` (if any) of a blob of `size` bytes: counted by what they come to.
fn answer_to(ranges: Option<RangeSet>, size: u64, state: &AppState) -> Result<Ranged, Error> {
    let Some(ranges) = ranges else {
        return Ok(Ranged::Whole);
    };
    let (kind, answer) = match ranges.resolve(size, state.max_range_parts) {
        Resolved::Unsatisfiable => {
            state.metrics.range_request(RangeKind::Unsatisfiable);
            return Err(ClientError::RangeNotSatisfiable { size }.into());
        }
        // HTTP lets a server ignore a Range: one whole body costs less than that many parts.
        Resolved::TooMany => (RangeKind::TooManyParts, Ranged::Whole),
        // RFC 9110 §14.6: a single part is never sent as multipart.
        Resolved::Parts(parts) if parts.len() == 1 => (RangeKind::Single, Ranged::Single(parts[0])),
        Resolved::Parts(parts) => match Boundary::random() {
            Ok(boundary) => (
                RangeKind::Multi,
                Ranged::Multi(Multipart::new(boundary, BLOB_TYPE, size), parts),
            ),
            // Without a boundary that no blob can contain, the one honest answer left is the
            // whole blob.
            Err(e) => {
                tracing::warn!(error = %e, "no random boundary for a multipart answer; sending the whole blob");
                (RangeKind::Multi, Ranged::Whole)
            }
        },
    };
    state.metrics.range_request(kind);
    Ok(answer)
}

/// A 200 with the whole blob, of `size` bytes when known.
fn whole(
    response: http::response::Builder,
    body: BlobBody,
    size: Option<u64>,
    delivery: Delivery,
) -> Response<Body> {
    let response = match size {
        Some(size) => response.header(CONTENT_LENGTH, size),
        None => response,
    };
    response
        .body(blob_body::single(body, delivery))
        .expect("valid headers")
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
async fn ready(state: &AppState) -> Response<Body> {
    let ready = state.mirror.readiness().await;
    let cluster = ready.cluster.map(|nodes| {
        nodes
            .iter()
            .map(|n| serde_json::json!({"name": &*n.name, "up": n.up, "this_node": n.this_node}))
            .collect::<Vec<_>>()
    });
    let detail = serde_json::json!({
        "status": "ready",
        "cluster": cluster,
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
