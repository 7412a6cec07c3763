//! `GET /admin/v1/images`: the cached tags, what each points to and holds on disk, what
//! clients were served of them from the cache since start, and each upstream's pull quota.
//! Paged by tag reference, as `tags/list` is by tag: `n`, then `last` from the `Link` header.

use std::time::SystemTime;

use http::header::{CONTENT_TYPE, LINK};
use http::Response;
use serde_json::{json, Value};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::mirror::{CachedImage, Mirror};
use crate::server::response::{full, Body};
use crate::server::route::ImagesPage;

pub async fn images(
    mirror: &Mirror,
    metrics: &Metrics,
    page: &ImagesPage,
) -> Result<Response<Body>, Error> {
    let all = mirror.images().await?;
    // Variants of one tag come together (the list is sorted by reference).
    let mut tags: Vec<Vec<CachedImage>> = Vec::new();
    for image in all {
        if page
            .last
            .as_ref()
            .is_some_and(|last| image.reference() <= *last)
        {
            continue;
        }
        match tags.last_mut() {
            Some(tag) if tag[0].reference() == image.reference() => tag.push(image),
            _ => tags.push(vec![image]),
        }
    }
    let more = tags.len() > page.n;
    tags.truncate(page.n);
    let next = more
        .then(|| tags.last().map(|t| t[0].reference()))
        .flatten();
    let body = json!({
        "images": tags.iter().map(|variants| tag_view(metrics, variants)).collect::<Vec<_>>(),
        "quota": metrics.quota.seen().into_iter().map(|(upstream, q)| json!({
            "upstream": upstream,
            "limit": q.limit,
            "remaining": q.remaining,
            "window_seconds": q.window_seconds,
        })).collect::<Vec<_>>(),
        "next": next,
    });
    let mut response = Response::builder().header(CONTENT_TYPE, "application/json");
    if let Some(last) = &next {
        let last: String = url::form_urlencoded::byte_serialize(last.as_bytes()).collect();
        response = response.header(
            LINK,
            format!("</admin/v1/images?n={}&last={last}>; rel=\"next\"", page.n),
        );
    }
    Ok(response
        .body(full(body.to_string()))
        .expect("valid headers"))
}

/// One tag: its variants on disk, and the live counts of the tag and of its repository.
fn tag_view(metrics: &Metrics, variants: &[CachedImage]) -> Value {
    let first = &variants[0];
    let (upstream, repo, tag) = (
        &*first.key.upstream,
        first.key.repo.as_str(),
        first.key.tag.as_str(),
    );
    let repository = metrics.usage.counted(upstream, repo);
    let (tag_hits, tag_bytes) = repository
        .as_ref()
        .and_then(|r| r.tag_counts(tag))
        .unwrap_or_default();
    let (repo_hits, repo_bytes) = repository
        .as_ref()
        .map_or((0, 0), |r| (r.all.hits(), r.all.bytes()));
    json!({
        "image": first.reference(),
        "upstream": upstream,
        "repository": repo,
        "tag": tag,
        "variants": variants.iter().map(|v| json!({
            "digest": v.digest.to_string(),
            "media_type": v.media_type,
            "platforms": v.platforms,
            "size_bytes": v.size,
            "blobs": v.blobs,
            "blobs_cached": v.blobs_cached,
            "last_use": v.last_use.map(rfc3339),
            "fetched_at": rfc3339(v.fetched_at),
        })).collect::<Vec<_>>(),
        // Manifest requests by this tag: blob requests name no tag.
        "served_from_cache": { "hits": tag_hits, "bytes": tag_bytes },
        // Every request of the repository, blobs included: the bytes the upstream did not send.
        "repository_served_from_cache": { "hits": repo_hits, "bytes": repo_bytes },
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
