//! How the fake registry answers a request: its fault switches first, then its content.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use super::super::OCI_INDEX;
use super::faults::{Faults, Streaming};
use super::{Body, Seen, State, TOKEN};

fn full(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    )
    .unwrap()
}

/// A 200 whose body goes out in 64 KiB chunks with no declared length.
fn chunked(headers: &[(&str, String)], body: Bytes) -> Response<Body> {
    let frames = (0..body.len()).step_by(64 * 1024).map(move |at| {
        Ok(Frame::data(
            body.slice(at..(at + 64 * 1024).min(body.len())),
        ))
    });
    let mut r = Response::builder().status(StatusCode::OK);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>())).boxed_unsync())
        .unwrap()
}

pub(super) async fn respond(state: State, req: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: req.uri().to_string(),
        authorization: header("authorization"),
        accept: header("accept"),
        range: header("range"),
        version: req.version(),
    });
    let faults = state.faults.lock().unwrap().clone();
    if path == "/token" {
        return full(
            200,
            &[("content-type", "application/json".into())],
            format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#),
        );
    }
    if let Some((status, retry_after)) = faults.status {
        let mut headers = vec![];
        if let Some(r) = retry_after {
            headers.push(("retry-after", r.to_string()));
        }
        return full(
            status,
            &headers,
            r#"{"errors":[{"code":"X","message":"fault"}]}"#,
        );
    }
    if faults.bearer && header("authorization") != Some(format!("Bearer {TOKEN}")) {
        let scope = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplitn(3, '/').nth(2))
            .map(|repo| format!(",scope=\"repository:{repo}:pull\""))
            .unwrap_or_default();
        let realm_host = faults.realm_host.clone().unwrap_or(state.addr.to_string());
        let challenge = format!(
            "Bearer realm=\"{}://{realm_host}/token\",service=\"fake\"{scope}",
            state.scheme
        );
        return full(401, &[("www-authenticate", challenge)], "");
    }
    if let Some(expected) = &faults.basic {
        if header("authorization").as_ref() != Some(expected) {
            return full(
                401,
                &[("www-authenticate", "Basic realm=\"fake\"".into())],
                "",
            );
        }
    }
    let head = method == "HEAD";
    let Some(rest) = path.strip_prefix("/v2/") else {
        return full(404, &[], "");
    };
    if rest.is_empty() {
        return full(200, &[], "{}");
    }
    let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
    let [reference, kind, repo] = parts[..] else {
        return full(404, &[], "");
    };
    if faults.hidden_repos.iter().any(|hidden| hidden == repo) {
        return full(404, &[], r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#);
    }
    if kind == "manifests" {
        if let Some(delay) = faults.manifest_delay {
            tokio::time::sleep(delay).await;
        }
    }
    if let Some(gate) = faults.hold_whole_answers.as_ref() {
        if kind == "blobs" && !head && header("range").is_none() && gate.applies_to(reference) {
            gate.wait().await;
        }
    }
    let c = state.content.lock().unwrap();
    match kind {
        "manifests" => {
            let digest = if reference.starts_with("sha256:") {
                Some(reference.to_owned())
            } else {
                c.tags
                    .get(&(repo.to_owned(), reference.to_owned()))
                    .cloned()
            };
            let Some(mut digest) = digest else {
                return full(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#);
            };
            let accept = header("accept").unwrap_or_default();
            if let Some(fallback) = c.fallbacks.get(&digest) {
                let index_type = &c.manifests[&digest].0;
                if !accept.contains(index_type.as_str()) && !reference.starts_with("sha256:") {
                    digest = fallback.clone();
                }
            }
            let Some((media_type, mut body)) = c.manifests.get(&digest).cloned() else {
                return full(404, &[], "");
            };
            if faults.tamper_manifests {
                body = Bytes::from([&body[..], b" "].concat());
            }
            if faults.chunked_manifests && !head {
                let headers = [
                    ("content-type", media_type),
                    ("docker-content-digest", digest),
                ];
                return chunked(&headers, body);
            }
            let mut headers = vec![
                ("content-type", media_type),
                ("docker-content-digest", digest),
                ("content-length", body.len().to_string()),
            ];
            if let Some((limit, window)) = faults.quota {
                let gets = state
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
                    .count();
                let remaining = (limit as usize).saturating_sub(gets);
                headers.push(("ratelimit-limit", format!("{limit};w={window}")));
                headers.push(("ratelimit-remaining", format!("{remaining};w={window}")));
            }
            full(200, &headers, if head { Bytes::new() } else { body })
        }
        "blobs" => {
            let Some(blob) = c.blobs.get(reference).cloned() else {
                return full(404, &[], r#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#);
            };
            drop(c);
            let blob = match faults.truncate_blobs_to {
                Some(len) => blob.slice(..len.min(blob.len())),
                None => blob,
            };
            if let (Some(base), false) = (&faults.redirect_blobs_to, head) {
                return full(307, &[("location", format!("{base}{path}"))], "");
            }
            let mut headers = vec![
                ("content-type", "application/octet-stream".to_string()),
                ("docker-content-digest", reference.to_owned()),
                ("content-length", blob.len().to_string()),
            ];
            if head {
                return full(200, &headers, Bytes::new());
            }
            let span = match header("range").filter(|_| !faults.ignore_ranges) {
                None => 0..blob.len(),
                Some(range) => match byte_range(&range, blob.len()) {
                    Some(span) => span,
                    None => {
                        let all = format!("bytes */{}", blob.len());
                        return full(416, &[("content-range", all)], "");
                    }
                },
            };
            if span != (0..blob.len()) {
                headers[2].1 = span.len().to_string();
                let last = span.end - 1;
                headers.push((
                    "content-range",
                    format!("bytes {}-{last}/{}", span.start, blob.len()),
                ));
            }
            stream_blob(blob, span, reference, &faults, &headers)
        }
        "tags" if reference == "list" => {
            let tags: Vec<_> = c
                .tags
                .keys()
                .filter(|(r, _)| r == repo)
                .map(|(_, t)| t.clone())
                .collect();
            full(
                200,
                &[("content-type", "application/json".into())],
                serde_json::json!({"name": repo, "tags": tags}).to_string(),
            )
        }
        "referrers" if faults.no_referrers_api => full(404, &[], "404 page not found"),
        "referrers" => {
            let listed = c
                .referrers
                .get(&(repo.to_owned(), reference.to_owned()))
                .cloned()
                .unwrap_or_default();
            full(
                200,
                &[("content-type", OCI_INDEX.into())],
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed})
                    .to_string(),
            )
        }
        _ => full(404, &[], ""),
    }
}

/// Where a blob body being sent has got to.
struct Sending {
    pos: usize,
    /// Past the hold (or never held): no more waiting.
    released: bool,
    /// The error that cuts the body has been sent.
    cut_sent: bool,
}

/// The one span `bytes=a-b`, `bytes=a-` or `bytes=-n` asks for, `None` when it is unsatisfiable.
fn byte_range(header: &str, len: usize) -> Option<std::ops::Range<usize>> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    let span = match (first.parse::<usize>(), last.parse::<usize>()) {
        (Ok(first), Ok(last)) => first..(last + 1).min(len),
        (Ok(first), Err(_)) if last.is_empty() => first..len,
        (Err(_), Ok(n)) if first.is_empty() => len.saturating_sub(n)..len,
        _ => return None,
    };
    (span.start < span.end).then_some(span)
}

/// A blob body of `span`, with the faults switched on when it was asked for.
fn stream_blob(
    blob: Bytes,
    span: std::ops::Range<usize>,
    digest: &str,
    faults: &Faults,
    headers: &[(&str, String)],
) -> Response<Body> {
    let mut data = blob.to_vec();
    if faults.flip_byte {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let data = Bytes::from(data);
    let cut_at = faults
        .cut
        .as_ref()
        .and_then(|c| c.applies(span.start, span.end));
    let send_len = cut_at.unwrap_or(span.end);
    let cut = cut_at.is_some();
    let delay = faults.chunk_delay;
    let stall_at = faults
        .stall
        .as_ref()
        .and_then(|s| s.applies(span.start, span.end));
    let hold = faults
        .hold
        .clone()
        .filter(|h| h.applies_to(digest) && span.start < h.after.max(1));
    const CHUNK: usize = 64 * 1024;
    let chunk_sizes = faults.chunk_sizes.unwrap_or((CHUNK, CHUNK));
    let streaming = Streaming::new(&faults.blob_streams);
    let start = Sending {
        pos: span.start,
        released: hold.is_none(),
        cut_sent: false,
    };
    let chunks = futures_util::stream::unfold(start, move |mut s| {
        let _counted = &streaming;
        let (data, hold) = (data.clone(), hold.clone());
        async move {
            let hold = hold.as_ref();
            if s.pos >= send_len {
                if cut && !s.cut_sent {
                    s.cut_sent = true;
                    let err: Box<dyn std::error::Error + Send + Sync> = "cut".into();
                    return Some((Err(err), s));
                }
                return None;
            }
            if let Some(hold) = hold.filter(|h| !s.released && s.pos >= h.after) {
                hold.wait().await;
                s.released = true;
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if stall_at.is_some_and(|at| s.pos >= at) {
                std::future::pending::<()>().await;
            }
            // Sizes vary with the position, the same for every body of the blob.
            let (least, most) = chunk_sizes;
            let size = least + (s.pos.wrapping_mul(2_654_435_761) >> 7) % (most - least + 1);
            let mut end = (s.pos + size).min(send_len);
            if let Some(hold) = hold.filter(|h| !s.released && h.after > s.pos) {
                // Exactly `after` bytes go out before the hold.
                end = end.min(hold.after);
            }
            let chunk = data.slice(s.pos..end);
            s.pos = end;
            Some((Ok(Frame::data(chunk)), s))
        }
    });
    let partial = headers.iter().any(|(k, _)| *k == "content-range");
    let mut r = Response::builder().status(if partial { 206 } else { 200 });
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(StreamBody::new(chunks).boxed_unsync()).unwrap()
}
