//! Manifests through a real wharf: tag freshness and coalesced revalidation, Accept negotiation,
//! verification, and what an upstream outage gets.

use std::time::Duration;

use crate::common::{sha256, FakeRegistry, Wharf, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

const EVERYTHING: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

struct Answer {
    status: u16,
    cache: String,
    digest: String,
    content_type: String,
    body: bytes::Bytes,
}

async fn get(wharf: &Wharf, path: &str, accept: &str) -> Answer {
    let r = wharf
        .client
        .get(wharf.url(path))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, cache, digest, content_type) = (
        r.status().as_u16(),
        header("x-wharf-cache"),
        header("docker-content-digest"),
        header("content-type"),
    );
    Answer {
        status,
        cache,
        digest,
        content_type,
        body: r.bytes().await.unwrap(),
    }
}

fn manifest_json(seed: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[]}}"#,
        sha256(seed.as_bytes())
    )
}

#[tokio::test]
async fn a_tag_is_cached_then_served_byte_for_byte_without_the_upstream() {
    let upstream = FakeRegistry::start().await;
    let body = manifest_json("a");
    let digest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &body);
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let first = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    assert_eq!(first.digest, digest);
    assert_eq!(first.content_type, OCI_MANIFEST);
    assert_eq!(first.body, body.as_bytes());

    let second = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "hit"));
    assert_eq!(second.body, body.as_bytes());
    // By digest too, and HEAD: all from the cache.
    let by_digest = get(&wharf, &format!("/v2/library/app/manifests/{digest}"), "").await;
    assert_eq!((by_digest.status, by_digest.cache.as_str()), (200, "hit"));
    let head = wharf
        .client
        .head(wharf.url("/v2/library/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(head.headers()["content-length"], body.len().to_string());
    assert_eq!(upstream.count("GET", "/manifests/"), 1);
    assert_eq!(upstream.count("HEAD", "/manifests/"), 0);
    assert_eq!(
        wharf
            .metric("wharf_cache_results_total", &["manifest", "hit"])
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_tag_is_revalidated_with_one_head_for_many_clients() {
    let upstream = FakeRegistry::start().await;
    let body = manifest_json("b");
    let digest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &body);
    let wharf = Wharf::start(&upstream, |c| c.cache.tag_ttl = Duration::from_millis(300)).await;
    assert_eq!(
        get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING)
            .await
            .status,
        200
    );

    wharf.clock.advance(Duration::from_millis(300));
    // Slow enough that every client's request arrives while the HEAD is out.
    upstream.faults().manifest_delay = Some(Duration::from_millis(300));
    let clients = (0..12).map(|_| get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING));
    for answer in futures_util::future::join_all(clients).await {
        assert_eq!(
            (answer.status, answer.digest.as_str()),
            (200, digest.as_str())
        );
        assert_eq!(answer.cache, "hit", "unchanged: served from the cache");
    }
    assert_eq!(upstream.count("HEAD", "/manifests/v1"), 1);
    assert_eq!(
        upstream.count("GET", "/manifests/"),
        1,
        "no body re-fetched"
    );

    // Confirmed fresh again: no upstream request until the next expiry.
    upstream.faults().manifest_delay = None;
    get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!(upstream.count("HEAD", "/manifests/v1"), 1);
}

#[tokio::test]
async fn a_moved_tag_is_fetched_again_after_its_ttl() {
    let upstream = FakeRegistry::start().await;
    let old = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest_json("old"));
    let wharf = Wharf::start(&upstream, |c| c.cache.tag_ttl = Duration::from_millis(200)).await;
    let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!(answer.digest, old);

    let new_body = manifest_json("new");
    let new = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &new_body);
    let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!(answer.digest, old, "still fresh: the cached answer");

    wharf.clock.advance(Duration::from_millis(200));
    let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!((answer.status, answer.digest.as_str()), (200, new.as_str()));
    assert_eq!(answer.body, new_body.as_bytes());
    assert_eq!(upstream.count("HEAD", "/manifests/v1"), 1);
    assert_eq!(upstream.count("GET", "/manifests/v1"), 2);
    // The old digest is still served by digest (digests are immutable).
    let by_digest = get(&wharf, &format!("/v2/library/app/manifests/{old}"), "").await;
    assert_eq!((by_digest.status, by_digest.cache.as_str()), (200, "hit"));
}

#[tokio::test]
async fn each_client_gets_the_document_its_accept_header_asks_for() {
    let upstream = FakeRegistry::start().await;
    let single_body = manifest_json("amd64").replace(OCI_MANIFEST, DOCKER_MANIFEST);
    let single = upstream.add_manifest("library/multi", "amd64", DOCKER_MANIFEST, &single_body);
    let index_body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{single}"}}]}}"#
    );
    let index = upstream.add_manifest("library/multi", "v1", OCI_INDEX, &index_body);
    // As Docker Hub does: a client that cannot take the index gets the default platform.
    upstream.set_fallback(&index, &single);
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = "/v2/library/multi/manifests/v1";

    // A single-platform client asks first: it must get the single manifest...
    let old_client = get(&wharf, path, DOCKER_MANIFEST).await;
    assert_eq!(
        (old_client.status, old_client.digest.as_str()),
        (200, single.as_str())
    );
    assert_eq!(old_client.content_type, DOCKER_MANIFEST);
    // ...and that answer must not be handed to a client that accepts the index.
    let new_client = get(&wharf, path, EVERYTHING).await;
    assert_eq!(new_client.digest, index);
    assert_eq!(new_client.content_type, OCI_INDEX);
    assert_eq!(new_client.cache, "miss");

    // Both answers are now cached, each for the right client.
    let again = get(&wharf, path, EVERYTHING).await;
    assert_eq!(
        (again.digest.as_str(), again.cache.as_str()),
        (index.as_str(), "hit")
    );
    let again = get(&wharf, path, DOCKER_MANIFEST).await;
    assert_eq!(
        (again.digest.as_str(), again.cache.as_str()),
        (single.as_str(), "hit")
    );
    // The same set in another order and with a quality value is the same question.
    let reordered = format!("{DOCKER_MANIFEST};q=0.9");
    assert_eq!(get(&wharf, path, &reordered).await.cache, "hit");
    assert_eq!(upstream.count("GET", "/manifests/v1"), 2);

    // A client accepting only OCI types is not handed the cached Docker manifest.
    let oci_only = get(&wharf, path, &format!("{OCI_MANIFEST}, {OCI_INDEX}")).await;
    assert_eq!(oci_only.digest, index);
    assert_eq!(
        upstream
            .seen()
            .iter()
            .filter(|s| s.path.ends_with("/manifests/v1"))
            .map(|s| s.accept.clone().unwrap_or_default())
            .next(),
        Some(DOCKER_MANIFEST.to_owned()),
        "the client's own Accept is what went upstream"
    );
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused_and_not_cached() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest_json("c"));
    upstream.faults().tamper_manifests = true;
    let wharf = Wharf::start(&upstream, |_| {}).await;

    for path in [
        "/v2/library/app/manifests/v1".to_owned(),
        format!("/v2/library/app/manifests/{digest}"),
    ] {
        let answer = get(&wharf, &path, EVERYTHING).await;
        assert_eq!(answer.status, 502, "{path}");
        let text = String::from_utf8_lossy(&answer.body).to_string();
        assert!(text.contains("\"errors\""), "{text}");
    }
    assert_eq!(
        wharf.metric("wharf_digest_mismatches_total", &[]).await,
        2.0
    );

    upstream.faults().tamper_manifests = false;
    let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!((answer.status, answer.cache.as_str()), (200, "miss"));
    assert_eq!(sha256(&answer.body), digest);
}

#[tokio::test]
async fn an_unknown_tag_is_404_manifest_unknown() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let answer = get(&wharf, "/v2/library/app/manifests/nope", EVERYTHING).await;
    assert_eq!(answer.status, 404);
    assert!(String::from_utf8_lossy(&answer.body).contains("MANIFEST_UNKNOWN"));
}

#[tokio::test]
async fn an_expired_tag_is_served_stale_while_the_upstream_fails() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest_json("d"));
    let wharf = Wharf::start(&upstream, |c| c.cache.tag_ttl = Duration::from_millis(100)).await;
    get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    wharf.clock.advance(Duration::from_millis(100));

    // 429 last: it makes wharf hold off the upstream for a while.
    for (status, retry_after) in [(503, None), (500, None), (429, Some("30"))] {
        upstream.faults().status = Some((status, retry_after));
        let asked = upstream.count("HEAD", "/manifests/v1");
        let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
        assert_eq!(answer.status, 200, "upstream answering {status}");
        assert_eq!(
            (answer.cache.as_str(), answer.digest.as_str()),
            ("stale", digest.as_str())
        );
        assert_eq!(upstream.count("HEAD", "/manifests/v1"), asked + 1);
        // Until another tag_ttl has passed, the tag is served stale without asking again.
        let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
        assert_eq!(answer.cache, "stale");
        assert_eq!(upstream.count("HEAD", "/manifests/v1"), asked + 1);
        wharf.clock.advance(Duration::from_millis(100));
    }
    assert_eq!(
        wharf
            .metric("wharf_cache_results_total", &["manifest", "stale"])
            .await,
        6.0
    );
}

#[tokio::test]
async fn a_tag_the_upstream_no_longer_has_is_gone_not_stale() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest_json("f"));
    let wharf = Wharf::start(&upstream, |c| c.cache.tag_ttl = Duration::from_millis(100)).await;
    get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    wharf.clock.advance(Duration::from_millis(100));
    // An upstream that says "no" is not an outage.
    upstream.faults().status = Some((404, None));
    let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn without_serve_stale_an_outage_is_an_error() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest_json("e"));
    let wharf = Wharf::start(&upstream, |c| {
        c.cache.tag_ttl = Duration::from_millis(100);
        c.cache.serve_stale = false;
    })
    .await;
    get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    wharf.clock.advance(Duration::from_millis(100));
    upstream.faults().status = Some((503, None));
    let answer = get(&wharf, "/v2/library/app/manifests/v1", EVERYTHING).await;
    assert_eq!(answer.status, 502);
}
