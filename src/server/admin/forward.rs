//! Passing on what an operator or a registry told this node: webhooks, refreshes and purges
//! go to every `[admin] forward_to` node (downstream tiers, cluster peers) in the background,
//! marked as passed on so that the receiving node passes them no further.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use url::Url;

/// Marks a call one node passes on to another, so that it is passed on no further.
pub const FORWARDED_HEADER: &str = "x-wharf-forwarded";
/// How long passing a call on may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Forwarder {
    to: Vec<Url>,
    client: reqwest::Client,
}

impl Forwarder {
    pub fn new(to: &[Url]) -> Result<Forwarder, reqwest::Error> {
        Ok(Forwarder {
            to: to.to_vec(),
            client: reqwest::Client::builder()
                .timeout(FORWARD_TIMEOUT)
                .build()?,
        })
    }

    /// `POST`s `body` to `path` (below each node's base URL) with `query`, presenting
    /// `authorization`; failures are logged, never retried (each node's own state is what it
    /// was told last).
    pub fn post(&self, path: &str, query: &[(&str, &str)], authorization: &str, body: Bytes) {
        for base in &self.to {
            let Ok(mut url) = base.join(path) else {
                continue;
            };
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(query);
            }
            let request = self
                .client
                .post(url.clone())
                .header(AUTHORIZATION, authorization)
                .header(FORWARDED_HEADER, "1")
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            tokio::spawn(async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => tracing::debug!(%url, "passed on"),
                    Ok(r) => {
                        tracing::warn!(%url, status = r.status().as_u16(), "a node refused what was passed on")
                    }
                    Err(e) => tracing::warn!(%url, error = %e, "a call could not be passed on"),
                }
            });
        }
    }
}
