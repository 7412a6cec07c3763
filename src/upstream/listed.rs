//! Which index lists a manifest, asked of and told to a peer node (`/v2/<repo>/_listed_by/
//! <digest>`, answered only to peers): how a platform manifest that a client reached through
//! its signed index on one node of a cluster is let through on any other. What a peer says is
//! a hint, never trusted: the node that hears it fetches the index and verifies it itself.

use reqwest::{Method, StatusCode};

use super::client::{read_capped, Kind};
use super::{Upstream, UpstreamError};
use crate::cluster::LISTED_BY;
use crate::oci::{Digest, RepoName};

impl Upstream {
    /// The index the peer this upstream is reached through has recorded as listing `manifest`
    /// in `repo`, if it has.
    pub async fn listed_by(
        &self,
        repo: &RepoName,
        manifest: &Digest,
    ) -> Result<Option<Digest>, UpstreamError> {
        let url = self
            .client
            .url(repo, &format!("{LISTED_BY}/{manifest}"), &[]);
        let response = self
            .client
            .send(Kind::Listing, Method::GET, url, None, None, repo)
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if !status.is_success() => return Err(self.client.status_error(&response)),
            _ => {}
        }
        let body = read_capped(&self.client.label, response, 256).await?;
        let index = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        match index {
            Some(index) => Ok(Some(index)),
            None => Err(UpstreamError::Invalid {
                upstream: self.client.label.clone(),
                reason: "an index record that is not a digest".into(),
            }),
        }
    }

    /// Tells the peer this upstream is reached through that `index` lists `manifest` in
    /// `repo`.
    pub async fn tell_listed(
        &self,
        repo: &RepoName,
        manifest: &Digest,
        index: &Digest,
    ) -> Result<(), UpstreamError> {
        let index = index.to_string();
        let url = self.client.url(
            repo,
            &format!("{LISTED_BY}/{manifest}"),
            &[("index", &index)],
        );
        let response = self
            .client
            .send(Kind::Listing, Method::PUT, url, None, None, repo)
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.client.status_error(&response))
        }
    }
}
