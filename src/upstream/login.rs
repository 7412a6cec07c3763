//! How a request to an upstream is authenticated: the answer to its last challenge, basic
//! credentials or a bearer token fetched from the realm the challenge names (only a realm host
//! the operator trusts ever sees the credentials).

use std::sync::Arc;

use reqwest::header::AUTHORIZATION;
use url::Url;

use super::auth::{authorization_value, Challenge, Token, TokenResponse, UpstreamCredentials};
use super::client::{read_capped, Client, Kind};
use super::error::{classify, UpstreamError};
use crate::oci::RepoName;

impl Client {
    /// The `Authorization` value for a pull of `repo`, following `challenge` if given, else the
    /// last challenge this upstream sent.
    pub(super) async fn authorization(
        &self,
        repo: &RepoName,
        challenge: Option<Challenge>,
    ) -> Result<Option<String>, UpstreamError> {
        let challenge = match challenge {
            Some(c) => c,
            None => match self.challenge.read().expect("lock poisoned").clone() {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        match challenge {
            Challenge::Basic => Ok(self
                .credentials
                .as_ref()
                .map(UpstreamCredentials::basic_header)),
            Challenge::Bearer { realm, service, .. } => {
                let scope = format!("repository:{repo}:pull");
                let key = format!("{realm}\n{}\n{scope}", service.as_deref().unwrap_or(""));
                let token = self
                    .tokens
                    .get_or_fetch(key, self.fetch_token(&realm, service.as_deref(), &scope))
                    .await
                    .map_err(|e| (*e).clone())?;
                Ok(Some(format!("Bearer {}", token.value)))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, UpstreamError> {
        let label: &Arc<str> = &self.label;
        let invalid = |reason: String| UpstreamError::Invalid {
            upstream: label.clone(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| invalid(format!("token realm: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("token realm {realm:?} is not http(s)")));
        }
        // The credentials go to the realm: only a host the operator trusts may name one.
        let host = url.host_str().unwrap_or_default();
        if !self
            .token_realm_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
        {
            return Err(invalid(format!(
                "token realm host {host:?} is not this upstream's; allow it in token_realm_hosts"
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(s) = service {
                query.append_pair("service", s);
            }
            query.append_pair("scope", scope);
        }
        self.check_backoff()?;
        let mut request = self.http.get(url).timeout(self.read_timeout);
        if let Some(c) = &self.credentials {
            request = request.header(AUTHORIZATION, authorization_value(&c.basic_header())?);
        }
        let response = request.send().await.map_err(|e| {
            self.record(Kind::Token, "error");
            classify(label, &e)
        })?;
        self.observe(Kind::Token, &response);
        if !response.status().is_success() {
            return Err(match self.status_error(&response) {
                UpstreamError::NotFound => UpstreamError::Unauthorized {
                    upstream: label.clone(),
                },
                other => other,
            });
        }
        let body = read_capped(label, response, 64 * 1024).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| invalid(format!("token response: {e}")))?;
        parsed
            .into_token()
            .ok_or_else(|| invalid("token response holds no token".into()))
    }
}
