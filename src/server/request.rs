//! One request, start to end: route, admit, handle, map any error, count and log it once.

use std::time::Instant;

use http::header::AUTHORIZATION;
use http::{Request, Response};
use hyper::body::Incoming;

use super::admin::forward::FORWARDED_HEADER;
use super::response::{self, Body};
use super::sendfile::FileRanges;
use super::state::{AppState, Client};
use super::{handlers, route};
use crate::cluster::PEER_HEADER;
use crate::error::ClientError;
use crate::mirror::Origin;

/// Answers one request: route, handle, map any error, count and log it once. `file_ranges` is
/// the connection's zero-copy queue, if it has one; only HTTP/1 bodies may use it (HTTP/2 frames
/// its data).
pub(super) async fn serve_request(
    state: AppState,
    request: Request<Incoming>,
    client: Client,
    file_ranges: Option<FileRanges>,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut user = None;
    let mut origin = Origin::Client;
    let route = match route::parse(&method, &path, request.uri().query(), |name| {
        state.mirror.is_registry(name)
    }) {
        // Another node passes refreshes and purges on to the address its `forward_to` names
        // (the main port): they are taken there too, still for admin tokens only.
        Ok(route)
            if !(client.surface.serves(&route)
                || matches!(route, route::Route::Admin(_))
                    && request.headers().contains_key(FORWARDED_HEADER)) =>
        {
            Err(ClientError::NotFound)
        }
        Ok(route) => {
            let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            let peer = request.headers().get(PEER_HEADER).map(|v| v.as_bytes());
            state
                .access
                .admits(client, &route, authorization, peer)
                .await
                .map(|admitted| {
                    user = admitted.user;
                    origin = admitted.origin;
                    route
                })
        }
        Err(e) => Err(e),
    };
    let label = route.as_ref().map_or("other", route::Route::label);
    let head = method == http::Method::HEAD;
    let zero_copy = file_ranges.filter(|_| request.version() <= http::Version::HTTP_11);
    let response = match route {
        Ok(route::Route::Webhook(hook)) => match &state.access.webhooks {
            Some(webhooks) => webhooks.receive(&state, hook, request).await,
            None => Err(ClientError::NotFound.into()),
        },
        Ok(route) => {
            let asked = handlers::Asked {
                method: &method,
                headers: request.headers(),
                origin,
                who: user.as_deref(),
            };
            handlers::handle(&state, asked, route, zero_copy).await
        }
        Err(e) => Err(e.into()),
    }
    .unwrap_or_else(|e| response::error_response(&e, head));
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .http_requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    state
        .metrics
        .http_request_duration
        .with_label_values(&[label])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "wharf::access",
        %method, path, status = status.as_u16(), route = label, user = user.as_deref(),
        us = elapsed.as_micros() as u64,
    );
    response
}
