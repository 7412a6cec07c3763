//! `wharf warm`: fills a cache before it is needed by pulling images through wharf's own pull
//! API, so the usual single-flight fills do the work and a running mirror can be warmed from
//! anywhere. A client of the pull API only: it knows nothing of the cache or the server.

mod progress;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use url::Url;

use crate::config::Config;
use crate::oci::manifest::{Descriptor, ManifestDoc, ManifestError, Platform};
use crate::oci::{media, Digest, ImageRef};
use crate::upstream::CaBundleError;
pub use progress::Progress;

/// Why an image, or the whole run, could not be warmed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: {status}{detail}")]
    Refused {
        what: String,
        status: reqwest::StatusCode,
        /// The registry's first error code and message, with a leading space, if it sent one.
        detail: String,
    },
    #[error("{what}: cut after {received} bytes: {source}")]
    Cut {
        what: String,
        received: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: {received} bytes, but the manifest says {declared}")]
    Length {
        what: String,
        received: u64,
        declared: u64,
    },
    #[error("manifest {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("the index lists no manifest")]
    EmptyIndex,
    #[error("no manifest for {wanted} in the index")]
    NoPlatform { wanted: String },
    #[error("{0}: an index inside an index")]
    NestedIndex(Digest),
    #[error(transparent)]
    CaBundle(#[from] CaBundleError),
    #[error("cannot build HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot listen on loopback: {0}")]
    Listen(#[source] std::io::Error),
    #[error("cannot warm {}: {why} (if a wharf is serving it, warm that one with --server)", dir.display())]
    CacheDir { dir: PathBuf, why: String },
    #[error("the local wharf did not answer: {0}")]
    NoAnswer(#[source] reqwest::Error),
}

/// Which manifests of a multi-platform image to warm.
#[derive(Debug, Clone)]
pub enum Platforms {
    All,
    These(Vec<Platform>),
}

impl Platforms {
    pub fn wants(&self, platform: Option<&Platform>) -> bool {
        match self {
            Platforms::All => true,
            // Entries without a platform (attestations) belong to no platform anyone runs.
            Platforms::These(wanted) => {
                platform.is_some_and(|p| wanted.iter().any(|w| p.serves(w)))
            }
        }
    }
}

/// What a warm run did.
#[derive(Debug, Default)]
pub struct Report {
    pub images: usize,
    pub blobs: usize,
    /// Blobs wharf already had.
    pub hits: usize,
    pub bytes: u64,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// A blob to fetch, and the image it was found in (its repository is where it is asked for).
struct BlobJob {
    image: ImageRef,
    descriptor: Descriptor,
}

/// Warms `images` through the wharf at `base`, `jobs` blobs at a time.
pub async fn warm(
    client: &reqwest::Client,
    base: &Url,
    images: &[ImageRef],
    platforms: &Platforms,
    jobs: usize,
    progress: &Progress,
) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let mut seen = HashSet::new();
    let mut blobs = Vec::new();
    for image in images {
        match walk(client, base, image, platforms).await {
            Ok(found) => {
                report.images += 1;
                let new: Vec<_> = found
                    .into_iter()
                    .filter(|d| seen.insert(d.digest.clone()))
                    .collect();
                progress.image(image, new.len(), new.iter().map(|d| d.size).sum());
                blobs.extend(new.into_iter().map(|descriptor| BlobJob {
                    image: image.clone(),
                    descriptor,
                }));
            }
            Err(e) => {
                let failure = format!("{image}: {e}");
                progress.failed(&failure);
                report.failures.push(failure);
            }
        }
    }
    progress.start_blobs(blobs.len(), blobs.iter().map(|b| b.descriptor.size).sum());
    let mut results = stream::iter(
        blobs
            .iter()
            .map(|job| fetch_blob(client, base, job, progress)),
    )
    .buffer_unordered(jobs.max(1));
    while let Some(result) = results.next().await {
        match result {
            Ok((bytes, hit)) => {
                report.blobs += 1;
                report.hits += usize::from(hit);
                report.bytes += bytes;
            }
            Err(failure) => {
                let failure = failure.to_string();
                progress.failed(&failure);
                report.failures.push(failure);
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

fn manifest_url(base: &Url, image: &ImageRef, reference: &str) -> Url {
    api_url(base, image, &format!("manifests/{reference}"))
}

fn api_url(base: &Url, image: &ImageRef, rest: &str) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}/v2/{}/{rest}", image.repo));
    url.query_pairs_mut().append_pair("ns", &image.registry);
    url
}

/// The blobs of `image` for the wanted platforms: configs and layers, manifests fetched on
/// the way (which caches them too).
async fn walk(
    client: &reqwest::Client,
    base: &Url,
    image: &ImageRef,
    platforms: &Platforms,
) -> Result<Vec<Descriptor>, WarmError> {
    let top = get_manifest(client, base, image, &image.reference.to_string()).await?;
    let manifests = match top {
        ManifestDoc::Image { config, layers } => return Ok(image_blobs(config, layers)),
        ManifestDoc::Index(entries) => entries,
    };
    let chosen: Vec<_> = manifests
        .into_iter()
        .filter(|m| platforms.wants(m.platform.as_ref()))
        .collect();
    if chosen.is_empty() {
        let Platforms::These(wanted) = platforms else {
            return Err(WarmError::EmptyIndex);
        };
        let wanted: Vec<_> = wanted.iter().map(Platform::to_string).collect();
        return Err(WarmError::NoPlatform {
            wanted: wanted.join(", "),
        });
    }
    let mut blobs = Vec::new();
    for manifest in chosen {
        match get_manifest(client, base, image, &manifest.digest.to_string()).await? {
            ManifestDoc::Image { config, layers } => blobs.extend(image_blobs(config, layers)),
            ManifestDoc::Index(_) => return Err(WarmError::NestedIndex(manifest.digest)),
        }
    }
    Ok(blobs)
}

/// The blobs an image manifest names that a registry serves: its config and its layers
/// (foreign layers left out).
pub fn image_blobs(config: Descriptor, layers: Vec<Descriptor>) -> Vec<Descriptor> {
    std::iter::once(config)
        .chain(layers.into_iter().filter(Descriptor::is_distributable))
        .collect()
}

async fn get_manifest(
    client: &reqwest::Client,
    base: &Url,
    image: &ImageRef,
    reference: &str,
) -> Result<ManifestDoc, WarmError> {
    let what = || format!("manifest {reference}");
    let response = client
        .get(manifest_url(base, image, reference))
        .header(reqwest::header::ACCEPT, media::ALL_MANIFEST_TYPES)
        .send()
        .await
        .map_err(|source| WarmError::Request {
            what: what(),
            source,
        })?;
    let response = success(response, &what()).await?;
    let media_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .bytes()
        .await
        .map_err(|source| WarmError::Request {
            what: what(),
            source,
        })?;
    ManifestDoc::parse(&media_type, &body).map_err(|source| WarmError::Manifest {
        reference: reference.to_owned(),
        source,
    })
}

/// The response if it is a 2xx; otherwise its status and OCI error message.
async fn success(response: reqwest::Response, what: &str) -> Result<reqwest::Response, WarmError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    // Any registry's error body: the first code and message, if it is one.
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let first = &v["errors"][0];
            let detail = format!(
                " {} {}",
                first["code"].as_str()?,
                first["message"].as_str().unwrap_or_default()
            );
            Some(detail.trim_end().to_owned())
        })
        .unwrap_or_default();
    Err(WarmError::Refused {
        what: what.to_owned(),
        status,
        detail,
    })
}

/// Reads a blob to its end; its size and whether wharf already had it.
async fn fetch_blob(
    client: &reqwest::Client,
    base: &Url,
    job: &BlobJob,
    progress: &Progress,
) -> Result<(u64, bool), WarmError> {
    let digest: &Digest = &job.descriptor.digest;
    let what = format!("blob {digest} of {}", job.image);
    let bar = progress.blob(digest, job.descriptor.size);
    let response = client
        .get(api_url(base, &job.image, &format!("blobs/{digest}")))
        .send()
        .await
        .map_err(|source| WarmError::Request {
            what: what.clone(),
            source,
        })?;
    let mut response = success(response, &what).await?;
    let hit = response
        .headers()
        .get("x-wharf-cache")
        .is_some_and(|v| v == "hit");
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|source| WarmError::Cut {
        what: what.clone(),
        received,
        source,
    })? {
        received += chunk.len() as u64;
        bar.advance(chunk.len() as u64);
    }
    if received != job.descriptor.size {
        return Err(WarmError::Length {
            what,
            received,
            declared: job.descriptor.size,
        });
    }
    bar.done(hit);
    Ok((received, hit))
}

/// Where to warm.
pub enum Destination {
    /// A running wharf, by its URL; `ca_file` to trust an HTTPS one with a private CA.
    Server { url: Url, ca_file: Option<PathBuf> },
    /// A cache directory (the config's), through a wharf started here on loopback for the
    /// duration.
    CacheDir(Box<Config>),
}

/// Warms `images` into `target`, showing progress on stderr, and ends with a summary line.
pub async fn run(
    destination: Destination,
    images: &[ImageRef],
    platforms: &Platforms,
    jobs: usize,
) -> Result<Report, WarmError> {
    let progress = Progress::default();
    let report = match destination {
        Destination::Server { url, ca_file } => {
            let client = http_client(ca_file.as_deref())?;
            warm(&client, &url, images, platforms, jobs, &progress).await
        }
        Destination::CacheDir(config) => {
            warm_cache_dir(*config, images, platforms, jobs, &progress).await?
        }
    };
    progress.finish(&report);
    Ok(report)
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, WarmError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("wharf-warm/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120));
    if let Some(file) = ca_file {
        for certificate in crate::upstream::ca_bundle(file)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(WarmError::HttpClient)
}

async fn warm_cache_dir(
    mut config: Config,
    images: &[ImageRef],
    platforms: &Platforms,
    jobs: usize,
    progress: &Progress,
) -> Result<Report, WarmError> {
    config.server.tls = None;
    let dir = config.cache.dir.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(WarmError::Listen)?;
    let address = listener.local_addr().map_err(WarmError::Listen)?;
    let url = Url::parse(&format!("http://{address}/")).expect("a loopback URL");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(crate::run_embedded(listener, config, async {
        let _ = stopped.await;
    }));
    let client = http_client(None)?;
    // Connections wait in the listener's queue until the cache is open; a cache that cannot
    // be opened (locked by a running wharf, say) ends the server instead.
    let stopped = |ended: Result<Result<(), crate::StartError>, _>| {
        let why = match ended {
            Ok(Err(e)) => e.to_string(),
            _ => "it stopped".into(),
        };
        WarmError::CacheDir {
            dir: dir.clone(),
            why,
        }
    };
    let health = client.get(url.join("healthz").expect("static path")).send();
    let answered = tokio::select! {
        answered = health => answered,
        ended = &mut server => return Err(stopped(ended)),
    };
    if let Err(e) = answered {
        // The server may have stopped just before: its reason is the better message.
        if let Ok(ended) = tokio::time::timeout(Duration::from_secs(1), &mut server).await {
            return Err(stopped(ended));
        }
        return Err(WarmError::NoAnswer(e));
    }
    let report = warm(&client, &url, images, platforms, jobs, progress).await;
    // A response ends when its bytes are verified; the commit into the cache follows.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fills_in_flight(&client, &url).await != Some(0) {
        if Instant::now() > deadline {
            progress.failed("fills still running after 60 s were stopped; run warm again");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(report)
}

async fn fills_in_flight(client: &reqwest::Client, base: &Url) -> Option<u64> {
    let ready: serde_json::Value = client
        .get(base.join("readyz").ok()?)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    ready["fills_in_flight"].as_u64()
}
