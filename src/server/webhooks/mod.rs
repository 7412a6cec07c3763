//! Registry webhooks: a registry that announces a push (CNCF distribution's notifications,
//! Harbor, Docker Hub) has the pushed tag refreshed here at once, if this cache holds it.
//! Served on the main listener, outside client authentication, to the bearers of the webhook
//! secret only; what one node receives it passes on to `[admin] forward_to` (downstream tiers,
//! cluster peers), marked so that it goes no further.

pub mod payloads;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::admin::forward::{Forwarder, FORWARDED_HEADER};
use super::auth::Presented;
use super::response::{full, Body};
use super::route::WebhookRoute;
use super::state::AppState;
use crate::config::AdminConfig;
use crate::error::{ClientError, Error};
use crate::secret::{self, SecretError};
use payloads::{Pushed, WebhookKind};

/// The largest payload taken: registries send a few KiB.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot build the client that passes webhooks on: {0}")]
    Client(#[source] reqwest::Error),
}

/// The webhook secret, and where webhooks are passed on to.
pub struct Webhooks {
    secret: String,
    forwarder: Forwarder,
}

impl Webhooks {
    /// The webhooks `config` asks for: `None` without a secret file.
    pub fn load(config: &AdminConfig) -> Result<Option<Webhooks>, WebhookSetupError> {
        let Some(path) = &config.webhook_secret_file else {
            return Ok(None);
        };
        Ok(Some(Webhooks {
            secret: secret::read("admin.webhook_secret_file", path)?,
            forwarder: Forwarder::new(&config.forward_to).map_err(WebhookSetupError::Client)?,
        }))
    }

    /// Whether a webhook call carries the secret: as `Authorization: Bearer <secret>`, or
    /// (Docker Hub's only way) as `?secret=`.
    pub fn admits(&self, route: &WebhookRoute, authorization: Option<&[u8]>) -> bool {
        let presented = match (authorization.and_then(Presented::parse), &route.secret) {
            (Some(Presented::Bearer(token)), _) => token,
            (_, Some(secret)) => secret.clone(),
            _ => return false,
        };
        bool::from(presented.as_bytes().ct_eq(self.secret.as_bytes()))
    }

    /// Reads a webhook call's payload (at most [`MAX_PAYLOAD`] bytes) and handles it.
    pub async fn receive(
        &self,
        state: &AppState,
        route: WebhookRoute,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Error> {
        let forwarded = request.headers().contains_key(FORWARDED_HEADER);
        let body = Limited::new(request.into_body(), MAX_PAYLOAD)
            .collect()
            .await
            .map_err(|e| ClientError::BadRequest(format!("the payload could not be read: {e}")))?
            .to_bytes();
        self.handle(state, route, body, forwarded).await
    }

    /// Refreshes the tags `body` announces as pushed, those this cache holds; passes the
    /// webhook on unless it was passed on to this node. A payload that does not parse, or
    /// names an upstream that is not mirrored here, changes nothing.
    pub async fn handle(
        &self,
        state: &AppState,
        route: WebhookRoute,
        body: Bytes,
        forwarded: bool,
    ) -> Result<Response<Body>, Error> {
        let kind = route.kind;
        let pushes =
            payloads::parse(kind, &body).map_err(|e| ClientError::BadRequest(e.to_string()))?;
        let mut named = Vec::new();
        for push in pushes {
            let upstream = self.upstream_of(state, &route, &push)?;
            named.push((upstream, push));
        }
        if !forwarded {
            let upstream = named.first().map(|(u, _)| u.clone()).or(route.upstream);
            self.forward(kind, upstream, body);
        }
        let mut refreshed = Vec::new();
        let mut not_cached = Vec::new();
        let mut warming = Vec::new();
        for (upstream, Pushed { repo, tag, .. }) in named {
            let image = format!("{upstream}/{repo}:{tag}");
            // A tag a keep-warm rule covers is fetched whole, in the background.
            if state.keep_warm.pushed(&upstream, &repo, &tag) {
                warming.push(image.clone());
            }
            match state.mirror.refresh_if_cached(&upstream, &repo, &tag).await {
                Ok(Some(variants)) => {
                    for v in variants {
                        refreshed.push(json!({ "image": image, "digest": v.digest.to_string() }));
                    }
                }
                Ok(None) => not_cached.push(image),
                Err(e) => {
                    tracing::warn!(webhook = kind.as_str(), %image, error = %e, "a pushed tag could not be refreshed");
                    return Err(e);
                }
            }
        }
        tracing::info!(
            webhook = kind.as_str(),
            forwarded,
            refreshed = refreshed.len(),
            not_cached = not_cached.len(),
            warming = warming.len(),
            "webhook received"
        );
        let body = json!({ "refreshed": refreshed, "not_cached": not_cached, "warming": warming });
        Ok(Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(full(body.to_string()))
            .expect("static headers"))
    }

    /// Which upstream a push is about: `?upstream=`, else the registry's own name for itself.
    fn upstream_of(
        &self,
        state: &AppState,
        route: &WebhookRoute,
        push: &Pushed,
    ) -> Result<String, ClientError> {
        if let Some(name) = &route.upstream {
            return match state.mirror.is_registry(name) {
                true => Ok(name.clone()),
                false => Err(ClientError::UnknownRegistry(name.clone())),
            };
        }
        let host = push.host.as_deref().unwrap_or_default();
        state.mirror.upstream_named_for(host).ok_or_else(|| {
            ClientError::BadRequest(format!(
                "the registry calls itself {host:?}, which is no upstream here: add ?upstream=NAME to the webhook's URL"
            ))
        })
    }

    /// Passes the webhook on to every `forward_to` node, in the background, naming the
    /// upstream (each node names its upstreams alike).
    fn forward(&self, kind: WebhookKind, upstream: Option<String>, body: Bytes) {
        let query: Vec<(&str, &str)> = upstream.iter().map(|u| ("upstream", u.as_str())).collect();
        self.forwarder.post(
            &format!("admin/v1/webhooks/{}", kind.as_str()),
            &query,
            &format!("Bearer {}", self.secret),
            body,
        );
    }
}
