//! Tiers: an edge wharf whose upstream is a regional wharf. The edge passes on which registry it
//! means (`pass_ns`), the regional one picks its upstream by that, and each blob crosses each
//! tier once.

use crate::common::{
    base_config, random_bytes, sha256, upstream_config, FakeRegistry, Wharf, OCI_MANIFEST,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_two_registries_through_a_regional_wharf() {
    // Two registries behind the regional wharf: "docker.io" and one known by its address.
    let hub = FakeRegistry::start().await;
    let other = FakeRegistry::start().await;
    let hub_blob = hub.add_blob(random_bytes(300_000, 1));
    let other_blob = other.add_blob(random_bytes(200_000, 2));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{other_blob}","size":200000}},"layers":[]}}"#
    );
    other.add_manifest("team/app", "v1", OCI_MANIFEST, &manifest);

    let regional = Wharf::start(&hub, |c| {
        c.upstreams
            .push(upstream_config("registry.example", &other.url()))
    })
    .await;

    let edge_cache = tempfile::tempdir().unwrap();
    let mut edge_config = base_config(edge_cache.path());
    for name in ["docker.io", "registry.example"] {
        let mut through_regional = upstream_config(name, &regional.url(""));
        through_regional.pass_ns = true;
        edge_config.upstreams.push(through_regional);
    }
    let edge = Wharf::start_with(edge_config, edge_cache).await;

    // Docker's shape (default upstream) and containerd's (?ns=) through the edge.
    for _ in 0..2 {
        let r = edge
            .get(&format!("/v2/library/base/blobs/{hub_blob}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().await.unwrap()), hub_blob);
        let r = edge
            .get("/v2/team/app/manifests/v1?ns=registry.example")
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), manifest);
        let r = edge
            .get(&format!(
                "/v2/team/app/blobs/{other_blob}?ns=registry.example"
            ))
            .await;
        assert_eq!(sha256(&r.bytes().await.unwrap()), other_blob);
        assert!(edge.settled(&hub_blob).await && edge.settled(&other_blob).await);
    }

    // Each registry saw each blob once; the regional wharf served each to the edge once.
    assert_eq!(hub.count("GET", "/blobs/"), 1);
    assert_eq!(other.count("GET", "/blobs/"), 1);
    assert_eq!(hub.count("GET", "/manifests/"), 0);
    for (registry, blobs) in [("docker.io", 1.0), ("registry.example", 1.0)] {
        let label = format!("upstream=\"{registry}\"");
        assert_eq!(
            edge.metric("wharf_upstream_requests_total", &[&label, "kind=\"blob\""])
                .await,
            blobs,
            "{registry}"
        );
        assert_eq!(
            regional
                .metric("wharf_upstream_requests_total", &[&label, "kind=\"blob\""])
                .await,
            blobs,
            "{registry}"
        );
    }
    // A registry the regional wharf does not know is refused there, not guessed.
    let r = edge.get("/v2/x/manifests/v1?ns=unknown.example").await;
    assert_eq!(r.status(), 404);
}
