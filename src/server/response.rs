//! Response bodies, and the ONE place an [`Error`] becomes a status code and an OCI error body.
//! Errors are logged here, once.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{
    HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::{ClientError, Error, Failure};
use crate::oci::{ErrorBody, ErrorCode, ReferenceError};

/// What a request refused for a passing shortage (descriptors, memory) is told to wait.
const BUSY_RETRY_AFTER_SECS: u32 = 1;

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new()
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// Status and OCI code for an error.
fn classify(error: &Error) -> (StatusCode, ErrorCode) {
    status_and_code(error.failure())
}

fn status_and_code(failure: Failure<'_>) -> (StatusCode, ErrorCode) {
    use StatusCode as S;
    match failure {
        Failure::Client(e) => match e {
            ClientError::Name(_) => (S::BAD_REQUEST, ErrorCode::NameInvalid),
            ClientError::Digest(_) | ClientError::Reference(ReferenceError::BadDigest(_)) => {
                (S::BAD_REQUEST, ErrorCode::DigestInvalid)
            }
            ClientError::Reference(ReferenceError::BadTag) => {
                (S::BAD_REQUEST, ErrorCode::TagInvalid)
            }
            ClientError::UnknownRegistry(_) => (S::NOT_FOUND, ErrorCode::NameUnknown),
            ClientError::RepositoryNotAllowed(_)
            | ClientError::AddressNotAllowed
            | ClientError::NotSigned { .. }
            | ClientError::NotGranted { .. } => (S::FORBIDDEN, ErrorCode::Denied),
            ClientError::Unauthenticated => (S::UNAUTHORIZED, ErrorCode::Unauthorized),
            ClientError::TooManyRequests { .. } => {
                (S::TOO_MANY_REQUESTS, ErrorCode::Toomanyrequests)
            }
            ClientError::Unsupported(_) | ClientError::MethodNotAllowed => {
                (S::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            }
            ClientError::NotFound => (S::NOT_FOUND, ErrorCode::Unsupported),
            ClientError::BadRequest(_) => (S::BAD_REQUEST, ErrorCode::Unsupported),
            ClientError::ImageRef(_) => (S::BAD_REQUEST, ErrorCode::NameInvalid),
            ClientError::AdminUnauthenticated => (S::UNAUTHORIZED, ErrorCode::Unauthorized),
            ClientError::RangeNotSatisfiable { .. } => {
                (S::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
            }
            ClientError::ManifestUnknown => (S::NOT_FOUND, ErrorCode::ManifestUnknown),
            ClientError::BlobUnknown => (S::NOT_FOUND, ErrorCode::BlobUnknown),
        },
        Failure::UpstreamNotFound => (S::NOT_FOUND, ErrorCode::NameUnknown),
        Failure::UpstreamDenied => (S::FORBIDDEN, ErrorCode::Denied),
        Failure::UpstreamRateLimited { .. } => (S::TOO_MANY_REQUESTS, ErrorCode::Toomanyrequests),
        Failure::UpstreamUnreachable => (S::SERVICE_UNAVAILABLE, ErrorCode::UpstreamUnavailable),
        Failure::UpstreamTimedOut => (S::GATEWAY_TIMEOUT, ErrorCode::UpstreamUnavailable),
        Failure::BadGateway => (S::BAD_GATEWAY, ErrorCode::UpstreamUnavailable),
        Failure::Busy => (S::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        Failure::Internal => (S::INTERNAL_SERVER_ERROR, ErrorCode::InternalError),
    }
}

/// The response for an error: its status, an OCI JSON body (none for `HEAD`), and the headers
/// some errors need (`Retry-After`, `Content-Range`, `WWW-Authenticate`).
pub fn error_response(error: &Error, head: bool) -> Response<Body> {
    let (status, code) = classify(error);
    if status.is_server_error() {
        tracing::error!(%status, %error, "request failed");
    } else if error.is_upstream() {
        tracing::warn!(%status, %error, "upstream refused");
    } else {
        tracing::debug!(%status, %error, "request refused");
    }
    let json = ErrorBody::new(code, error.to_string()).to_json();
    let mut response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, json.len());
    match error.failure() {
        Failure::UpstreamRateLimited {
            retry_after: Some(after),
        } => {
            if let Ok(v) = HeaderValue::from_str(after) {
                response = response.header(RETRY_AFTER, v);
            }
        }
        Failure::Client(ClientError::TooManyRequests { retry_after_secs }) => {
            response = response.header(RETRY_AFTER, *retry_after_secs);
        }
        Failure::Busy => {
            response = response.header(RETRY_AFTER, BUSY_RETRY_AFTER_SECS);
        }
        Failure::Client(ClientError::Unauthenticated) => {
            response = response.header(WWW_AUTHENTICATE, super::auth::CHALLENGE);
        }
        Failure::Client(ClientError::AdminUnauthenticated) => {
            response = response.header(WWW_AUTHENTICATE, super::admin::CHALLENGE);
        }
        Failure::Client(ClientError::RangeNotSatisfiable { size }) => {
            response = response.header(CONTENT_RANGE, format!("bytes */{size}"));
        }
        _ => {}
    }
    let body = if head { empty() } else { full(json) };
    response.body(body).expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{DigestError, NameError};

    fn status(e: impl Into<Error>) -> u16 {
        classify(&e.into()).0.as_u16()
    }

    fn status_of(failure: Failure<'_>) -> u16 {
        status_and_code(failure).0.as_u16()
    }

    #[test]
    fn client_mistakes_are_4xx() {
        assert_eq!(status(NameError::TooLong), 400);
        assert_eq!(status(DigestError::Malformed), 400);
        assert_eq!(status(ReferenceError::BadTag), 400);
        assert_eq!(status(ClientError::UnknownRegistry("x".into())), 404);
        assert_eq!(status(ClientError::Unsupported("pushing")), 405);
        assert_eq!(status(ClientError::RangeNotSatisfiable { size: 1 }), 416);
    }

    #[test]
    fn upstream_failures_are_404_403_502_503_504_or_passed_429() {
        assert_eq!(status_of(Failure::UpstreamNotFound), 404);
        assert_eq!(status_of(Failure::UpstreamDenied), 403);
        assert_eq!(status_of(Failure::UpstreamUnreachable), 503);
        assert_eq!(status_of(Failure::UpstreamTimedOut), 504);
        assert_eq!(status_of(Failure::BadGateway), 502);
        assert_eq!(
            status_of(Failure::UpstreamRateLimited { retry_after: None }),
            429
        );
        assert_eq!(status_of(Failure::Internal), 500);
    }

    #[test]
    fn an_upstream_429_passes_its_retry_after_on() {
        // The one test here that names an upstream error: the header comes from it.
        use crate::upstream::UpstreamError;
        let limited = Error::from(UpstreamError::TooManyRequests {
            upstream: "u".into(),
            retry_after: Some("17".into()),
        });
        let r = error_response(&limited, false);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "17");
    }

    #[test]
    fn range_errors_carry_the_size() {
        let r = error_response(&ClientError::RangeNotSatisfiable { size: 42 }.into(), false);
        assert_eq!(r.headers()[CONTENT_RANGE], "bytes */42");
    }
}
