//! What registries send when an image is pushed, parsed into the tags it names: CNCF
//! distribution's notification envelopes, Harbor's webhook payloads and Docker Hub's webhooks.
//! A payload that is not one of these is refused whole; events it holds that announce no
//! tagged push (a blob upload, a pull, a delete) are left out.

use serde::Deserialize;

use crate::oci::{NameError, ReferenceError, RepoName, Tag, DOCKER_HUB};

/// Which registry's format a webhook speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    Distribution,
    Harbor,
    DockerHub,
}

impl WebhookKind {
    pub fn parse(name: &str) -> Option<WebhookKind> {
        match name {
            "distribution" => Some(WebhookKind::Distribution),
            "harbor" => Some(WebhookKind::Harbor),
            "dockerhub" => Some(WebhookKind::DockerHub),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::Distribution => "distribution",
            WebhookKind::Harbor => "harbor",
            WebhookKind::DockerHub => "dockerhub",
        }
    }
}

/// A tag pushed, as a registry announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The registry as it named itself (`host[:port]`), if it did.
    pub host: Option<String>,
    pub repo: RepoName,
    pub tag: Tag,
}

/// Why a payload is refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a {kind} webhook payload: {source}")]
    Shape {
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("repository {repo:?}: {source}")]
    Repository { repo: String, source: NameError },
    #[error("tag {tag:?}: {source}")]
    Tag { tag: String, source: ReferenceError },
}

/// The tagged pushes `body` announces, or why it is not a payload of `kind`.
pub fn parse(kind: WebhookKind, body: &[u8]) -> Result<Vec<Pushed>, PayloadError> {
    match kind {
        WebhookKind::Distribution => distribution(body),
        WebhookKind::Harbor => harbor(body),
        WebhookKind::DockerHub => docker_hub(body),
    }
}

fn pushed(host: Option<&str>, repo: &str, tag: &str) -> Result<Pushed, PayloadError> {
    Ok(Pushed {
        host: host.filter(|h| !h.is_empty()).map(str::to_owned),
        repo: repo.parse().map_err(|source| PayloadError::Repository {
            repo: repo.to_owned(),
            source,
        })?,
        tag: tag.parse().map_err(|source| PayloadError::Tag {
            tag: tag.to_owned(),
            source,
        })?,
    })
}

/// `body` as the JSON shape `T` of `kind`'s payloads.
fn shaped<'a, T: Deserialize<'a>>(kind: WebhookKind, body: &'a [u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(body).map_err(|source| PayloadError::Shape {
        kind: kind.as_str(),
        source,
    })
}

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    action: String,
    target: Target,
    #[serde(default)]
    request: Option<EventRequest>,
}

#[derive(Deserialize)]
struct Target {
    repository: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct EventRequest {
    #[serde(default)]
    host: Option<String>,
}

fn distribution(body: &[u8]) -> Result<Vec<Pushed>, PayloadError> {
    let envelope: Envelope = shaped(WebhookKind::Distribution, body)?;
    envelope
        .events
        .iter()
        .filter(|e| e.action == "push")
        .filter_map(|e| Some((e, e.target.tag.as_deref().filter(|t| !t.is_empty())?)))
        .map(|(e, tag)| {
            let host = e.request.as_ref().and_then(|r| r.host.as_deref());
            pushed(host, &e.target.repository, tag)
        })
        .collect()
}

#[derive(Deserialize)]
struct HarborPayload {
    #[serde(rename = "type")]
    kind: String,
    event_data: HarborData,
}

#[derive(Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: HarborRepository,
}

#[derive(Deserialize)]
struct HarborResource {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct HarborRepository {
    repo_full_name: String,
}

fn harbor(body: &[u8]) -> Result<Vec<Pushed>, PayloadError> {
    let payload: HarborPayload = shaped(WebhookKind::Harbor, body)?;
    if payload.kind != "PUSH_ARTIFACT" {
        return Ok(Vec::new());
    }
    let repo = &payload.event_data.repository.repo_full_name;
    payload
        .event_data
        .resources
        .iter()
        .filter_map(|r| Some((r, r.tag.as_deref().filter(|t| !t.is_empty())?)))
        .map(|(r, tag)| {
            // `harbor.example.com/library/app:v1`: the host is what comes before the first `/`.
            let host = r.resource_url.as_deref().and_then(|u| u.split_once('/'));
            pushed(host.map(|(host, _)| host), repo, tag)
        })
        .collect()
}

#[derive(Deserialize)]
struct DockerHubPayload {
    push_data: DockerHubPush,
    repository: DockerHubRepository,
}

#[derive(Deserialize)]
struct DockerHubPush {
    tag: String,
}

#[derive(Deserialize)]
struct DockerHubRepository {
    repo_name: String,
}

fn docker_hub(body: &[u8]) -> Result<Vec<Pushed>, PayloadError> {
    let payload: DockerHubPayload = shaped(WebhookKind::DockerHub, body)?;
    let name = &payload.repository.repo_name;
    // Official images are named without their `library/` namespace.
    let repo = match name.contains('/') {
        true => name.clone(),
        false => format!("library/{name}"),
    };
    Ok(vec![pushed(
        Some(DOCKER_HUB),
        &repo,
        &payload.push_data.tag,
    )?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pushes: &[Pushed]) -> Vec<String> {
        pushes
            .iter()
            .map(|p| format!("{}|{}:{}", p.host.as_deref().unwrap_or("-"), p.repo, p.tag))
            .collect()
    }

    #[test]
    fn a_distribution_envelope_names_its_tagged_manifest_pushes() {
        let body = br#"{"events":[
            {"id":"1","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","repository":"myorg/app","tag":"v2"},"request":{"host":"registry.local:5000","method":"PUT"}},
            {"id":"2","action":"push","target":{"mediaType":"application/octet-stream","digest":"sha256:bb","repository":"myorg/app"},"request":{"host":"registry.local:5000"}},
            {"id":"3","action":"pull","target":{"repository":"myorg/app","tag":"v1"}}
        ]}"#;
        let pushes = parse(WebhookKind::Distribution, body).unwrap();
        assert_eq!(tags(&pushes), ["registry.local:5000|myorg/app:v2"]);
        assert!(parse(WebhookKind::Distribution, br#"{"events":"no"}"#).is_err());
        assert!(parse(WebhookKind::Distribution, b"not json").is_err());
        let bad =
            br#"{"events":[{"action":"push","target":{"repository":"Bad Name","tag":"v1"}}]}"#;
        assert!(parse(WebhookKind::Distribution, bad).is_err());
    }

    #[test]
    fn a_harbor_push_names_its_tags_and_other_events_nothing() {
        let body = br#"{"type":"PUSH_ARTIFACT","occur_at":1700000000,"operator":"admin",
            "event_data":{"resources":[{"digest":"sha256:aa","tag":"v3","resource_url":"harbor.example.com/library/app:v3"}],
            "repository":{"name":"app","namespace":"library","repo_full_name":"library/app","repo_type":"private"}}}"#;
        let pushes = parse(WebhookKind::Harbor, body).unwrap();
        assert_eq!(tags(&pushes), ["harbor.example.com|library/app:v3"]);
        let pulled = br#"{"type":"PULL_ARTIFACT","event_data":{"resources":[],"repository":{"repo_full_name":"library/app"}}}"#;
        assert!(parse(WebhookKind::Harbor, pulled).unwrap().is_empty());
        assert!(parse(WebhookKind::Harbor, br#"{"type":"PUSH_ARTIFACT"}"#).is_err());
    }

    #[test]
    fn a_docker_hub_push_names_its_tag_on_docker_hub() {
        let body = br#"{"callback_url":"https://registry.hub.docker.com/u/myorg/app/hook/x/",
            "push_data":{"pushed_at":1417566161,"pusher":"ci","tag":"latest"},
            "repository":{"repo_name":"myorg/app","namespace":"myorg","name":"app"}}"#;
        let pushes = parse(WebhookKind::DockerHub, body).unwrap();
        assert_eq!(tags(&pushes), ["docker.io|myorg/app:latest"]);
        let official = br#"{"push_data":{"tag":"3.20"},"repository":{"repo_name":"alpine"}}"#;
        let pushes = parse(WebhookKind::DockerHub, official).unwrap();
        assert_eq!(tags(&pushes), ["docker.io|library/alpine:3.20"]);
        assert!(parse(WebhookKind::DockerHub, br#"{"push_data":{}}"#).is_err());
    }
}
