//! Micro-benchmarks of the paths every pull goes through: digest verification, routing, the
//! `Accept` header, and cache hits for tags and blobs.
//!
//!     cargo bench --bench hot_paths

use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use http::Method;
use wharf::cache::{BlobLookup, Cache, TagKey, Variant};
use wharf::config::CacheConfig;
use wharf::metrics::Metrics;
use wharf::oci::media::{Accept, OCI_INDEX};
use wharf::oci::{Algorithm, Digest, Verifier};
use wharf::server::route;

const DOCKER_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

fn digest_verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256 verify");
    for mib in [1usize, 4, 16, 64] {
        let data = vec![0x5au8; mib << 20];
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{mib} MiB")),
            &data,
            |b, d| {
                b.iter(|| {
                    let mut v = Verifier::new(Algorithm::Sha256);
                    // As a fill feeds it: the upstream's chunks, 64 KiB at a time.
                    for chunk in d.chunks(64 * 1024) {
                        v.update(chunk);
                    }
                    v.finish()
                })
            },
        );
    }
    group.finish();
}

fn routing(c: &mut Criterion) {
    let registries = |name: &str| name == "docker.io" || name == "ghcr.io";
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cases = [
        (
            "docker",
            "/v2/library/alpine/manifests/3.20".to_owned(),
            None,
        ),
        (
            "containerd ns",
            "/v2/library/alpine/manifests/3.20".to_owned(),
            Some("ns=docker.io"),
        ),
        (
            "path prefix",
            "/v2/ghcr.io/org/app/manifests/v1".to_owned(),
            None,
        ),
        ("blob", format!("/v2/library/alpine/blobs/{digest}"), None),
    ];
    let mut group = c.benchmark_group("route");
    for (name, path, query) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| route::parse(&Method::GET, path, *query, registries).unwrap())
        });
    }
    group.finish();
}

fn accept(c: &mut Criterion) {
    c.bench_function("accept parse (dockerd)", |b| {
        b.iter(|| Accept::parse([DOCKER_ACCEPT]))
    });
}

fn cache_hits(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        dir: dir.path().to_owned(),
        ..CacheConfig::default()
    };
    let cache = runtime
        .block_on(Cache::open(&config, &Metrics::new()))
        .unwrap();
    let key = TagKey {
        upstream: "docker.io".into(),
        repo: "library/alpine".parse().unwrap(),
        tag: "3.20".parse().unwrap(),
    };
    let variant = Variant {
        digest: Digest::sha256_of(b"index"),
        media_type: OCI_INDEX.into(),
        asked_with: Accept::parse([]),
        fetched_at: SystemTime::now(),
        revalidate_after: None,
    };
    cache.record_tag(key.clone(), variant, None);
    c.bench_function("tag hit (parse Accept, choose a variant)", |b| {
        b.iter(|| {
            let accept = Accept::parse([DOCKER_ACCEPT]);
            let v = cache.tag(&key, &accept).now_or_never().flatten().unwrap();
            v.is_fresh(SystemTime::now(), Duration::from_secs(300))
        })
    });

    // A blob committed the way every blob is: through a fill.
    let bytes = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let digest = Digest::sha256_of(&bytes);
    runtime.block_on(async {
        let Ok(BlobLookup::Started(_, writer)) = cache.blob(&digest).await else {
            panic!("a new cache holds nothing")
        };
        writer
            .start(Some(bytes.len() as u64), wharf::metrics::Source::Upstream)
            .await;
        let mut piece = writer.segment(0);
        piece.write(&bytes).await.unwrap();
        piece.flush().await.unwrap();
        writer.finish().await.unwrap();
    });
    c.bench_function("blob hit (index, open, size check)", |b| {
        b.iter(|| match cache.blob(&digest).now_or_never() {
            Some(Ok(BlobLookup::Cached(blob))) => blob.size(),
            _ => panic!("committed"),
        })
    });
}

criterion_group!(benches, digest_verification, routing, accept, cache_hits);
criterion_main!(benches);
