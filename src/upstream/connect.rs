//! The HTTP client under one upstream: the CAs it trusts, its timeouts, which redirects it
//! follows, and the peer node it may be reached through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::error::{CaBundleError, SetupError};

/// A registry reached through another wharf node (a peer of its cluster): the node is asked
/// the same pull API with `?ns=<upstream>`, carrying the headers that admit this node as its
/// peer. The upstream's credentials, bandwidth cap and places stay with whichever node fetches
/// from the upstream itself.
pub struct Relay {
    /// The peer's name, for metrics and logs.
    pub peer: String,
    pub url: Url,
    /// Sent with every request; their values are marked sensitive.
    pub headers: Vec<(&'static str, String)>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

/// How the pooled client of one upstream (or of a peer it is reached through) connects.
pub(super) struct Connect<'a> {
    pub label: &'a str,
    pub ca_file: Option<&'a Path>,
    pub insecure: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl Connect<'_> {
    pub(super) fn client(&self) -> Result<reqwest::Client, SetupError> {
        let upstream = || self.label.to_owned();
        let mut http = reqwest::Client::builder();
        if let Some(file) = self.ca_file {
            let certificates = ca_bundle(file).map_err(|source| SetupError::CaFile {
                upstream: upstream(),
                source,
            })?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        if self.insecure {
            tracing::warn!(
                upstream = self.label,
                "insecure = true: the upstream's certificate is not checked"
            );
            http = http.danger_accept_invalid_certs(true);
        }
        http.user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(redirect_policy())
            .build()
            .map_err(|source| SetupError::HttpClient {
                upstream: upstream(),
                source,
            })
    }
}

/// The certificates of a PEM bundle of CAs to trust besides the system's; a file that holds
/// none is an error, not a silent fall-back to the system's roots.
pub fn ca_bundle(file: &Path) -> Result<Vec<reqwest::Certificate>, CaBundleError> {
    let file_name = || file.to_owned();
    let pem = std::fs::read(file).map_err(|source| CaBundleError::Read {
        file: file_name(),
        source,
    })?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| CaBundleError::Parse {
            file: file_name(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(CaBundleError::Empty { file: file_name() });
    }
    Ok(certificates)
}

/// Redirects sent by an upstream (a registry handing blobs to a CDN or object store) are
/// followed a few times, to http(s) only and never from https down to http. reqwest drops
/// `Authorization` when a redirect leaves the host.
fn redirect_policy() -> reqwest::redirect::Policy {
    const MAX_REDIRECTS: usize = 5;
    reqwest::redirect::Policy::custom(|attempt| {
        let from_https = attempt
            .previous()
            .last()
            .is_some_and(|url| url.scheme() == "https");
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            match attempt.url().scheme() {
                "https" => attempt.follow(),
                "http" if !from_https => attempt.follow(),
                "http" => attempt.error("redirect from https to http"),
                _ => attempt.error("redirect to a scheme other than http(s)"),
            }
        }
    })
}
