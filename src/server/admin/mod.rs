//! The admin API: refresh and purge, served where `/metrics` is, for admin tokens only. Every
//! change is logged with the label of the token that asked for it.

pub mod forward;
mod images;
mod tokens;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Response};
use serde_json::json;

use super::response::{full, Body};
use super::route::{AdminImage, AdminRoute};
use super::state::AppState;
use crate::error::Error;
pub use tokens::AdminTokens;

/// The challenge of a refused admin request.
pub const CHALLENGE: &str = "Bearer realm=\"wharf-admin\"";

/// Carries out `route` for the admin labelled `who`.
pub async fn handle(
    state: &AppState,
    route: AdminRoute,
    who: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, Error> {
    let mirror = &state.mirror;
    pass_on(state, &route, headers);
    let body = match route {
        AdminRoute::Refresh(image) => {
            let AdminImage {
                registry,
                repo,
                scope,
            } = &image;
            let refreshed = mirror
                .refresh(registry, repo, scope)
                .await
                .inspect_err(|e| {
                    tracing::warn!(admin = who, %image, error = %e, "refresh failed");
                })?;
            let tags: Vec<_> = refreshed
                .iter()
                .map(|r| {
                    json!({
                        "tag": r.tag.as_str(),
                        "digest": r.digest.to_string(),
                        "media_type": r.media_type,
                        "previous": r.previous.as_ref().map(ToString::to_string),
                    })
                })
                .collect();
            let moved = refreshed
                .iter()
                .filter(|r| r.previous.as_ref() != Some(&r.digest))
                .count();
            tracing::info!(admin = who, %image, variants = tags.len(), moved, "refreshed");
            json!({ "image": image.to_string(), "refreshed": tags })
        }
        // A read: not logged as a change.
        AdminRoute::Images(page) => return images::images(mirror, &state.metrics, &page).await,
        AdminRoute::Sync => json!({ "rules": state.keep_warm.status() }),
        AdminRoute::Purge(image) => {
            let AdminImage {
                registry,
                repo,
                scope,
            } = &image;
            let purged = mirror.purge(registry, repo, scope).await.inspect_err(|e| {
                tracing::warn!(admin = who, %image, error = %e, "purge failed");
            })?;
            tracing::info!(
                admin = who, %image, tags = purged.tags.len(), manifests = purged.manifests.len(),
                "purged"
            );
            json!({
                "image": image.to_string(),
                "tags": purged.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "manifests": purged.manifests.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "blobs": "left to the LRU",
            })
        }
    };
    Ok(Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("static headers"))
}

/// Passes a refresh or a purge on to the `forward_to` nodes with the admin token it came with,
/// unless another node passed it here. Before it is carried out here: a node that does not
/// hold what is named (a `404` here) may still be told.
fn pass_on(state: &AppState, route: &AdminRoute, headers: &HeaderMap) {
    let (Some(forwarder), Some(authorization)) = (
        &state.access.forwarder,
        headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
    ) else {
        return;
    };
    if headers.contains_key(forward::FORWARDED_HEADER) {
        return;
    }
    let (action, image) = match route {
        AdminRoute::Refresh(image) => ("refresh", image),
        AdminRoute::Purge(image) => ("purge", image),
        AdminRoute::Images(_) | AdminRoute::Sync => return,
    };
    forwarder.post(
        &format!("admin/v1/{action}"),
        &[("image", &image.to_string())],
        authorization,
        bytes::Bytes::new(),
    );
}
