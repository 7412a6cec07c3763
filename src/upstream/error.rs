//! What can go wrong upstream, in terms the rest of wharf can act on (serve stale, pass a 429
//! on, answer 502/503/504).

use std::path::PathBuf;
use std::sync::Arc;

/// Why an upstream could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream {upstream}: cannot read {}: {source}", file.display())]
    PasswordFile {
        upstream: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream}: ca_file {source}")]
    CaFile {
        upstream: String,
        #[source]
        source: CaBundleError,
    },
    #[error("upstream {upstream}: cannot build HTTP client: {source}")]
    HttpClient {
        upstream: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{upstream}: the {header} header cannot hold that value")]
    Header {
        upstream: String,
        header: &'static str,
    },
    #[error("no upstream configured")]
    NoUpstream,
}

/// Why a bundle of CA certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", file.display())]
    Parse {
        file: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}: no PEM certificate", file.display())]
    Empty { file: PathBuf },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} is unreachable: {reason}")]
    Unreachable { upstream: Arc<str>, reason: String },
    #[error("upstream {upstream} timed out")]
    Timeout { upstream: Arc<str> },
    #[error("not found upstream")]
    NotFound,
    #[error("upstream {upstream} refused wharf's credentials")]
    Unauthorized { upstream: Arc<str> },
    #[error("upstream {upstream} denied access{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Denied {
        upstream: Arc<str>,
        /// What the upstream said, when it said it in an OCI error body (a regional wharf's
        /// policy names its rule there), so the client learns why.
        reason: Option<String>,
    },
    #[error("upstream {upstream} is rate limiting")]
    TooManyRequests {
        upstream: Arc<str>,
        retry_after: Option<String>,
    },
    #[error("upstream {upstream} answered {status}")]
    Status { upstream: Arc<str>, status: u16 },
    #[error("upstream {upstream} sent an invalid response: {reason}")]
    Invalid { upstream: Arc<str>, reason: String },
}

impl UpstreamError {
    /// Whether the upstream is down or limiting rather than saying "no": the cases where a
    /// cached answer is better than an error.
    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether asking again soon may succeed: the connection broke or stalled, or the upstream
    /// failed on its side. A 429 is not: its wait is the upstream's to set, and may be long.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => true,
            UpstreamError::Status { status, .. } => *status >= 500 && *status != 501,
            _ => false,
        }
    }
}

pub(super) fn classify(upstream: &Arc<str>, e: &reqwest::Error) -> UpstreamError {
    // The source chain says what actually happened (refused, reset, DNS); reqwest's own
    // message alone is only "error sending request".
    let reason = || {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        reason
    };
    let upstream = upstream.clone();
    // A connect that timed out means the host is unreachable (503); a timeout after that means
    // it stalled while answering (504). A redirect refused (a loop, a scheme wharf does not
    // follow) is the upstream misbehaving (502), not down.
    if e.is_timeout() && !e.is_connect() {
        UpstreamError::Timeout { upstream }
    } else if e.is_redirect() {
        UpstreamError::Invalid {
            upstream,
            reason: reason(),
        }
    } else {
        UpstreamError::Unreachable {
            upstream,
            reason: reason(),
        }
    }
}

/// The first message of an OCI error body, printable and at most 300 characters: it is passed
/// on to clients, and comes from outside.
pub(super) fn oci_error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value["errors"][0]["message"].as_str()?;
    let clean: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::oci_error_message;

    #[test]
    fn a_refusals_message_is_passed_on_printable_and_short() {
        let body = br#"{"errors":[{"code":"DENIED","message":"refused by policy \"r\": no\u0007 signature"}]}"#;
        assert_eq!(
            oci_error_message(body).as_deref(),
            Some("refused by policy \"r\": no signature")
        );
        let long = format!(r#"{{"errors":[{{"message":"{}"}}]}}"#, "x".repeat(1000));
        assert_eq!(oci_error_message(long.as_bytes()).unwrap().len(), 300);
        assert_eq!(oci_error_message(b"<html>403</html>"), None);
        assert_eq!(oci_error_message(br#"{"errors":[]}"#), None);
    }
}
