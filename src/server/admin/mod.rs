//! The admin API: refresh and purge, served where `/metrics` is, for admin tokens only. Every
//! change is logged with the label of the token that asked for it.

mod images;
mod tokens;

use http::header::CONTENT_TYPE;
use http::Response;
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
) -> Result<Response<Body>, Error> {
    let mirror = &state.mirror;
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
