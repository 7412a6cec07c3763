//! `[[policy]]` on the pull path: manifests in covered repositories are served only when signed
//! by a trusted key (cosign's classic `.sig` tag, or a sigstore bundle among the referrers or
//! under their fallback tag); refusals are `403 DENIED` naming the rule and why; verdicts are
//! reused, so a warm pull does no signature work.

use std::path::Path;
use std::time::Duration;

use wharf::config::{PolicyConfig, PolicyMode};

use crate::common::cluster::{owners, start_cluster_with};
use crate::common::signing::{
    attach_bundle, push_image, push_index, sig_tag, sign_classic, Attach, Signer,
};
use crate::common::{error_code, FakeRegistry, Wharf, OCI_INDEX, OCI_MANIFEST};

const ACCEPT_ALL: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

fn rule(name: &str, keys: Vec<std::path::PathBuf>, mode: PolicyMode) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        upstream: None,
        repositories: vec!["myorg/*".parse().unwrap()],
        keys,
        mode,
        verified_ttl: Duration::from_secs(3600),
    }
}

/// wharf in front of `upstream` with one rule over `myorg/*` trusting `signer`.
async fn guarded(
    upstream: &FakeRegistry,
    signer: &Signer,
    keys_dir: &Path,
    mode: PolicyMode,
) -> Wharf {
    let key = signer.write_public(keys_dir, "cosign.pub");
    Wharf::start(upstream, |c| {
        c.policies.push(rule("myorg-signed", vec![key], mode))
    })
    .await
}

/// `myorg/app:v1`, an index of two platform manifests, signed by `signer` as a whole (as
/// `cosign sign` signs an index): its digest, and its platform manifests (digest, body).
fn signed_index(upstream: &FakeRegistry, signer: &Signer) -> (String, [(String, String); 2]) {
    let children = [
        push_image(upstream, "myorg/app", "amd64-only", 1),
        push_image(upstream, "myorg/app", "arm64-only", 2),
    ];
    let index = push_index(upstream, "myorg/app", "v1", &children);
    sign_classic(upstream, "myorg/app", &index, &index, signer);
    (index, children)
}

async fn get_manifest(wharf: &Wharf, repo: &str, reference: &str) -> reqwest::Response {
    wharf
        .client
        .get(wharf.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap()
}

/// Signature checks made under the rule `myorg-signed` with `result` (any result: `None`).
async fn checks(wharf: &Wharf, result: Option<&str>) -> f64 {
    let result = result.map(|r| format!("result=\"{r}\""));
    let labels: Vec<&str> = std::iter::once("myorg-signed")
        .chain(result.as_deref())
        .collect();
    wharf
        .metric("wharf_policy_verifications_total", &labels)
        .await
}

/// The rule `myorg-signed` over `myorg/*`, enforced, trusting the key at `key`.
fn enforce(key: &Path) -> impl Fn(&mut wharf::Config) + '_ {
    move |c| {
        c.policies.push(rule(
            "myorg-signed",
            vec![key.to_owned()],
            PolicyMode::Enforce,
        ))
    }
}

async fn refusal(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_unsigned_image_is_refused_by_tag_and_digest_and_uncovered_repositories_are_not_checked()
{
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (digest, _) = push_image(&upstream, "myorg/app", "v1", 1);
    push_image(&upstream, "library/alpine", "3", 2);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;

    let message = refusal(get_manifest(&wharf, "myorg/app", "v1").await).await;
    assert!(
        message.contains("myorg-signed") && message.contains("no signature"),
        "{message}"
    );
    let message = refusal(get_manifest(&wharf, "myorg/app", &digest).await).await;
    assert!(message.contains("no signature"), "{message}");
    let head = wharf
        .client
        .head(wharf.url("/v2/myorg/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 403, "HEAD is refused too");
    assert_eq!(
        get_manifest(&wharf, "library/alpine", "3").await.status(),
        200
    );

    assert_eq!(
        wharf
            .metric("wharf_policy_refusals_total", &["myorg-signed", "enforce"])
            .await,
        3.0
    );
    // The refusal stands a little while: asking again looks up no signature.
    let sig_lookups = upstream.count("GET", ".sig");
    assert_eq!(get_manifest(&wharf, "myorg/app", "v1").await.status(), 403);
    assert_eq!(upstream.count("GET", ".sig"), sig_lookups);
}

#[tokio::test]
async fn a_classic_signature_by_a_trusted_key_is_served_and_a_warm_pull_does_no_signature_work() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (digest, _) = push_image(&upstream, "myorg/app", "v1", 1);
    sign_classic(&upstream, "myorg/app", &digest, &digest, &signer);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;

    let r = get_manifest(&wharf, "myorg/app", "v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(checks(&wharf, Some("verified")).await, 1.0);

    let upstream_requests = upstream.seen().len();
    for _ in 0..5 {
        assert_eq!(get_manifest(&wharf, "myorg/app", "v1").await.status(), 200);
        assert_eq!(
            get_manifest(&wharf, "myorg/app", &digest).await.status(),
            200
        );
    }
    assert_eq!(
        checks(&wharf, None).await,
        1.0,
        "warm pulls reuse the verdict"
    );
    assert_eq!(
        upstream.seen().len(),
        upstream_requests,
        "and ask the upstream nothing"
    );

    // The signature tag itself passes to clients such as `cosign verify`, from the cache.
    let r = get_manifest(&wharf, "myorg/app", &sig_tag(&digest)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
}

#[tokio::test]
async fn an_unknown_key_and_a_signature_of_another_digest_are_refused_by_name() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (trusted, stranger) = (Signer::generate(), Signer::generate());
    let (by_stranger, _) = push_image(&upstream, "myorg/app", "stranger", 1);
    sign_classic(
        &upstream,
        "myorg/app",
        &by_stranger,
        &by_stranger,
        &stranger,
    );
    let (elsewhere, _) = push_image(&upstream, "myorg/app", "elsewhere", 2);
    let (other, _) = push_image(&upstream, "myorg/app", "other", 3);
    // A trusted signature, copied beside a manifest it does not sign.
    sign_classic(&upstream, "myorg/app", &elsewhere, &other, &trusted);
    let wharf = guarded(&upstream, &trusted, keys.path(), PolicyMode::Enforce).await;

    let message = refusal(get_manifest(&wharf, "myorg/app", "stranger").await).await;
    assert!(message.contains("unknown key"), "{message}");
    let message = refusal(get_manifest(&wharf, "myorg/app", "elsewhere").await).await;
    assert!(
        message.contains("another digest") && message.contains(&other),
        "{message}"
    );
    for result in ["untrusted_key", "other_digest"] {
        assert_eq!(checks(&wharf, Some(result)).await, 1.0, "{result}");
    }
}

#[tokio::test]
async fn bundles_verify_through_the_referrers_api_and_through_its_fallback_tag() {
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    for how in [Attach::Referrers, Attach::FallbackTag] {
        let upstream = FakeRegistry::start().await;
        upstream.faults().no_referrers_api = how == Attach::FallbackTag;
        let (digest, body) = push_image(&upstream, "myorg/app", "v1", 1);
        attach_bundle(&upstream, "myorg/app", &digest, &body, &signer, how);
        let (unsigned, _) = push_image(&upstream, "myorg/app", "v2", 2);
        let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;

        assert_eq!(get_manifest(&wharf, "myorg/app", "v1").await.status(), 200);
        let message = refusal(get_manifest(&wharf, "myorg/app", &unsigned).await).await;
        assert!(message.contains("no signature"), "{message}");
        if how == Attach::FallbackTag {
            // The fallback index holds only a bundle referrer: it passes as a signature object.
            let fallback = digest.replace(':', "-");
            assert_eq!(
                get_manifest(&wharf, "myorg/app", &fallback).await.status(),
                200
            );
        }
        // A bundle by another key, or over other bytes, does not count.
        let (forged, _) = push_image(&upstream, "myorg/app", "v3", 3);
        attach_bundle(&upstream, "myorg/app", &forged, "other bytes", &signer, how);
        let message = refusal(get_manifest(&wharf, "myorg/app", "v3").await).await;
        assert!(message.contains("unknown key"), "{message}");
    }
}

#[tokio::test]
async fn platform_manifests_pass_through_their_signed_index_and_nothing_else_does() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (_, children) = signed_index(&upstream, &signer);
    let (stray, _) = push_image(&upstream, "myorg/app", "stray", 3);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;

    // Before the index is seen, a platform manifest is unsigned on its own.
    refusal(get_manifest(&wharf, "myorg/app", &children[0].0).await).await;
    wharf.clock.advance(Duration::from_secs(11));
    let r = get_manifest(&wharf, "myorg/app", "v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    for (child, _) in &children {
        let r = get_manifest(&wharf, "myorg/app", child).await;
        assert_eq!(r.status(), 200, "{child}");
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    }
    assert_eq!(checks(&wharf, Some("through_index")).await, 2.0);
    refusal(get_manifest(&wharf, "myorg/app", &stray).await).await;
}

#[tokio::test]
async fn a_signature_tag_that_holds_an_image_is_an_unsigned_image() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (digest, _) = push_image(&upstream, "myorg/app", "v1", 1);
    // An image pushed under a signature-looking tag.
    let (_, body) = push_image(&upstream, "myorg/other", "x", 2);
    upstream.add_manifest("myorg/app", &sig_tag(&digest), OCI_MANIFEST, &body);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;

    let message = refusal(get_manifest(&wharf, "myorg/app", &sig_tag(&digest)).await).await;
    assert!(message.contains("no signature"), "{message}");
    // Nor does it sign `v1`: its layers are no signatures.
    refusal(get_manifest(&wharf, "myorg/app", "v1").await).await;
}

#[tokio::test]
async fn warn_mode_serves_what_does_not_verify_and_counts_it() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    push_image(&upstream, "myorg/app", "v1", 1);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Warn).await;

    assert_eq!(get_manifest(&wharf, "myorg/app", "v1").await.status(), 200);
    assert_eq!(
        wharf
            .metric("wharf_policy_refusals_total", &["myorg-signed", "warn"])
            .await,
        1.0
    );
    assert_eq!(checks(&wharf, Some("no_signature")).await, 1.0);
}

#[tokio::test]
async fn a_tag_moved_to_an_unsigned_manifest_and_a_removed_signature_stop_being_served() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let key = signer.write_public(keys.path(), "cosign.pub");
    let (v1, _) = push_image(&upstream, "myorg/app", "latest", 1);
    sign_classic(&upstream, "myorg/app", &v1, &v1, &signer);
    let (pinned, _) = push_image(&upstream, "myorg/app", "pinned", 2);
    sign_classic(&upstream, "myorg/app", &pinned, &pinned, &signer);
    let wharf = Wharf::start(&upstream, |c| {
        c.cache.tag_ttl = Duration::from_secs(60);
        let mut rule = rule("myorg-signed", vec![key], PolicyMode::Enforce);
        rule.verified_ttl = Duration::from_secs(600);
        c.policies.push(rule);
    })
    .await;
    assert_eq!(
        get_manifest(&wharf, "myorg/app", "latest").await.status(),
        200
    );
    assert_eq!(
        get_manifest(&wharf, "myorg/app", "pinned").await.status(),
        200
    );

    // `latest` re-pointed upstream to an unsigned manifest: refused once revalidated.
    push_image(&upstream, "myorg/app", "latest", 3);
    wharf.clock.advance(Duration::from_secs(61));
    let message = refusal(get_manifest(&wharf, "myorg/app", "latest").await).await;
    assert!(message.contains("no signature"), "{message}");

    // The signature of `pinned` removed upstream: it counts until the verdict is older than
    // verified_ttl, then no more.
    upstream.remove_tag("myorg/app", &sig_tag(&pinned));
    assert_eq!(
        get_manifest(&wharf, "myorg/app", "pinned").await.status(),
        200
    );
    wharf.clock.advance(Duration::from_secs(600));
    let message = refusal(get_manifest(&wharf, "myorg/app", "pinned").await).await;
    assert!(message.contains("no signature"), "{message}");
    assert_eq!(
        error_code(get_manifest(&wharf, "myorg/app", &pinned).await).await,
        "DENIED"
    );
}

#[tokio::test]
async fn a_restarted_node_still_lets_platform_manifests_through_their_signed_index() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (_, children) = signed_index(&upstream, &signer);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;
    assert_eq!(get_manifest(&wharf, "myorg/app", "v1").await.status(), 200);
    // The record is written off the request path.
    let records = wharf.cache.path().join("parents");
    let written = crate::common::eventually(Duration::from_secs(10), || {
        let count = crate::common::disk::fanned_out(&records).len();
        async move { count == 2 }
    })
    .await;
    assert!(written, "both platform manifests recorded");
    let cache = wharf.stop().await;

    // A client that resolved the index before the restart asks for its platform manifest.
    let key = signer.write_public(keys.path(), "cosign.pub");
    let wharf = Wharf::start_in(&upstream, cache, enforce(&key)).await;
    let r = get_manifest(&wharf, "myorg/app", &children[1].0).await;
    assert_eq!(r.status(), 200);
    assert_eq!(checks(&wharf, Some("through_index")).await, 1.0);
}

#[tokio::test]
async fn an_edge_verifies_against_its_regional_tier_and_a_second_edge_costs_the_upstream_nothing() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let key = signer.write_public(keys.path(), "cosign.pub");
    let (index, children) = signed_index(&upstream, &signer);
    let (unsigned, _) = push_image(&upstream, "myorg/app", "unsigned", 3);
    // Both tiers enforce the same rule: the regional one passes signature objects on.
    let guard = enforce(&key);
    let regional = Wharf::start(&upstream, &guard).await;
    let edge = |cache: tempfile::TempDir| {
        let mut config = crate::common::base_config(cache.path());
        config.upstreams = vec![crate::common::upstream_config(
            "docker.io",
            &regional.url(""),
        )];
        guard(&mut config);
        Wharf::start_with(config, cache)
    };

    let first = edge(tempfile::tempdir().unwrap()).await;
    assert_eq!(get_manifest(&first, "myorg/app", "v1").await.status(), 200);
    assert_eq!(
        get_manifest(&first, "myorg/app", &children[0].0)
            .await
            .status(),
        200
    );
    // Refused at the regional tier already: the edge passes its 403 DENIED on, and why.
    let message = refusal(get_manifest(&first, "myorg/app", "unsigned").await).await;
    assert!(
        message.contains("refused by policy") && message.contains("no signature"),
        "{message}"
    );
    refusal(get_manifest(&first, "myorg/app", &unsigned).await).await;
    assert_eq!(
        upstream.count("GET", &format!("manifests/{}", sig_tag(&index))),
        1,
        "the signature left the upstream once for both tiers"
    );

    let asked = upstream.seen().len();
    let second = edge(tempfile::tempdir().unwrap()).await;
    assert_eq!(get_manifest(&second, "myorg/app", "v1").await.status(), 200);
    assert_eq!(
        get_manifest(&second, "myorg/app", &children[0].0)
            .await
            .status(),
        200
    );
    let after: Vec<_> = upstream.seen()[asked..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert!(
        after.is_empty(),
        "the second edge found manifest and signature at the regional tier: {after:?}"
    );
    assert_eq!(checks(&second, Some("verified")).await, 1.0);
}

#[tokio::test]
async fn clients_pulling_at_once_share_one_signature_check() {
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (digest, _) = push_image(&upstream, "myorg/app", "v1", 1);
    sign_classic(&upstream, "myorg/app", &digest, &digest, &signer);
    let wharf = guarded(&upstream, &signer, keys.path(), PolicyMode::Enforce).await;
    // Held long enough for every client to join the first one's fetch.
    upstream.faults().manifest_delay = Some(Duration::from_millis(300));

    let pulls = (0..16).map(|_| get_manifest(&wharf, "myorg/app", "v1"));
    for r in futures_util::future::join_all(pulls).await {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(checks(&wharf, None).await, 1.0);
    assert_eq!(upstream.count("GET", &sig_tag(&digest)), 1);
}

#[tokio::test]
async fn a_cluster_lets_platform_manifests_through_on_any_node_even_with_the_verifying_node_dead() {
    const NODES: [&str; 4] = ["a", "b", "c", "d"];
    let upstream = FakeRegistry::start().await;
    let keys = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let (_, children) = signed_index(&upstream, &signer);
    let key = signer.write_public(keys.path(), "cosign.pub");
    let cluster = start_cluster_with(&upstream, &NODES, enforce(&key)).await;
    let a = &cluster.nodes[0];
    // The nodes' records of which index lists a manifest are theirs alone.
    let record = format!("/v2/myorg/app/_listed_by/{}", children[0].0);
    assert_eq!(a.get(&record).await.status(), 404);
    let put = a.client.put(a.url(&record)).send().await.unwrap();
    assert_eq!(put.status(), 400, "no index named");

    // A client resolves the signed index on a.
    assert_eq!(get_manifest(a, "myorg/app", "v1").await.status(), 200);
    // a tells the two other nodes that rank first for each platform manifest; the third is
    // told nothing of it.
    let told = |child: &str| -> Vec<usize> {
        let order = owners(&NODES, child).into_iter().filter(|&n| n != 0);
        order.take(2).collect()
    };
    let records = |node: usize| {
        crate::common::disk::fanned_out(&cluster.nodes[node].cache.path().join("parents")).len()
    };
    let expected: Vec<usize> = (1..4)
        .map(|node| {
            children
                .iter()
                .filter(|c| told(&c.0).contains(&node))
                .count()
        })
        .collect();
    let all_told = crate::common::eventually(Duration::from_secs(10), || {
        let held: Vec<usize> = (1..4).map(records).collect();
        let done = held == expected;
        async move { done }
    })
    .await;
    assert!(
        all_told,
        "each platform manifest recorded on two other nodes"
    );

    // a dies. On every other node, each platform manifest passes: from the node's own record,
    // or, on the node told nothing, from the records of the nodes that were.
    cluster.links[0].cut();
    for node in 1..4 {
        for (child, _) in &children {
            let r = get_manifest(&cluster.nodes[node], "myorg/app", child).await;
            assert_eq!(r.status(), 200, "{child} on node {node}");
            assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        }
        let checked = checks(&cluster.nodes[node], Some("through_index")).await;
        assert_eq!(checked, 2.0, "node {node}");
    }
}
