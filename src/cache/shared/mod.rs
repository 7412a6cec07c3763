//! The shared tier: an S3-compatible bucket below the local disk (Garage, MinIO, Ceph RGW, S3)
//! that the nodes of a datacenter share, holding verified blobs by digest. Reached through
//! `object_store`, which signs requests (SigV4), retries what may be retried and uploads large
//! objects in parts: a whole S3 client's worth of details a hand-written one would get wrong.
//! What comes down feeds a fill like any other source, and is verified before it is committed;
//! only what this cache committed (verified) goes up. The tier keeps its own bound
//! ([`expiry`]).

pub mod expiry;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use futures_util::FutureExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::Semaphore;

use super::{BlobReader, Error as CacheError, FillWriter, Resume};
use crate::config::SharedConfig;
use crate::metrics::{Metrics, Source};
use crate::oci::Digest;

/// Parts of an upload: S3's least part is 5 MiB; an upload holds about two parts of memory.
const PART: usize = 8 * 1024 * 1024;
/// Uploads at once: they run beside the serving, and must not take its disk or network.
const UPLOADS: usize = 2;
/// How long a connection to the bucket may take, and how long a request is retried for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a blob's body may send nothing before the rest is fetched from the source.
const READ_IDLE: Duration = Duration::from_secs(5);

/// Why the shared tier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedSetupError {
    #[error("cannot read cache.shared.{what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cache.shared: {0}")]
    Client(#[from] object_store::Error),
}

/// A blob found in the shared tier: its length and its body.
pub struct SharedBody {
    pub size: u64,
    pub stream: BoxStream<'static, object_store::Result<Bytes>>,
}

/// How much the tier may hold.
struct Bounds {
    max_size: Option<u64>,
    max_idle: Duration,
}

pub struct SharedTier {
    store: Arc<dyn ObjectStore>,
    /// The same bucket, for blob bodies: no overall deadline.
    reads: Arc<dyn ObjectStore>,
    prefix: String,
    bounds: Bounds,
    uploads: Arc<Semaphore>,
    /// `wharf_shared_requests_total` by operation and result.
    requests: IntCounterVec,
    /// `wharf_shared_bytes_total`.
    received: IntCounter,
    /// `wharf_shared_held_bytes`.
    held: IntGauge,
}

impl SharedTier {
    pub fn new(config: &SharedConfig, metrics: &Metrics) -> Result<SharedTier, SharedSetupError> {
        let read = |what, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| SharedSetupError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let first_line = |what, path| {
            let text = read(what, path)?;
            let text = String::from_utf8_lossy(&text);
            Ok::<_, SharedSetupError>(text.lines().next().unwrap_or("").trim().to_owned())
        };
        let access_key = first_line("access_key_file", &config.access_key_file)?;
        let secret = first_line("secret_key_file", &config.secret_key_file)?;
        // A bucket that does not answer is passed over for the owner or the upstream: it must
        // cost a pull little, so connections and retries are short.
        let mut options = ClientOptions::new()
            .with_allow_http(config.endpoint.scheme() == "http")
            .with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(ca) = &config.ca_file {
            for certificate in object_store::Certificate::from_pem_bundle(&read("ca_file", ca)?)? {
                options = options.with_root_certificate(certificate);
            }
        }
        let build = |options: ClientOptions| {
            AmazonS3Builder::new()
                .with_endpoint(config.endpoint.as_str().trim_end_matches('/'))
                .with_bucket_name(&config.bucket)
                .with_region(&config.region)
                .with_access_key_id(&access_key)
                .with_secret_access_key(&secret)
                .with_virtual_hosted_style_request(!config.path_style)
                .with_client_options(options)
                .with_retry(RetryConfig {
                    max_retries: 2,
                    retry_timeout: RETRY_TIMEOUT,
                    ..RetryConfig::default()
                })
                .build()
        };
        // A blob's body may take minutes to come, so its reads have no overall deadline
        // (the client's is 30 s from connecting to the body's end); a body that stalls is
        // caught by the feed instead ([`READ_IDLE`]).
        let reads = build(options.clone().with_timeout_disabled())?;
        let store = build(options)?;
        Ok(SharedTier {
            store: Arc::new(store),
            reads: Arc::new(reads),
            prefix: config.prefix.clone(),
            bounds: Bounds {
                max_size: config.max_size.map(|s| s.bytes()),
                max_idle: config.max_idle,
            },
            uploads: Arc::new(Semaphore::new(UPLOADS)),
            requests: metrics.shared_requests.clone(),
            received: metrics.shared_bytes.clone(),
            held: metrics.shared_held_bytes.clone(),
        })
    }

    pub fn max_idle(&self) -> Duration {
        self.bounds.max_idle
    }

    /// The key of `digest` in one area of the bucket (`blobs`, or `used` for its marker).
    fn key(&self, area: &str, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{area}/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    fn path(&self, digest: &Digest) -> Path {
        self.key("blobs", digest)
    }

    fn count(&self, op: &str, result: &str) {
        self.requests.with_label_values(&[op, result]).inc();
    }

    /// The blob's body, if the bucket has it. An error means the tier could not say: the
    /// caller fetches from its own source instead. A blob found is marked used before its
    /// body is read, so an expiry pass leaves it alone meanwhile (a blob not found costs no
    /// marker).
    pub async fn open(&self, digest: &Digest) -> object_store::Result<Option<SharedBody>> {
        match self.reads.get(&self.path(digest)).await {
            Ok(found) => {
                self.count("get", "found");
                if let Err(e) = self.mark_used(digest).await {
                    tracing::debug!(%digest, error = %e, "a use of the shared tier went unmarked");
                }
                Ok(Some(SharedBody {
                    size: found.meta.size,
                    stream: found.into_stream(),
                }))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.count("get", "absent");
                Ok(None)
            }
            Err(e) => {
                self.count("get", "error");
                Err(e)
            }
        }
    }

    /// Uploads `digest` unless the bucket has it already, as `blob` gives its bytes: a reader
    /// of the fill in progress (the upload streams beside it) or of the committed blob. The
    /// reader's end comes only once the fill is verified, and the upload is completed only
    /// then: a fill that fails, or fails verification, aborts it, so the bucket never holds
    /// a blob this node did not verify. At most [`UPLOADS`] at once, about two parts each.
    pub async fn upload(
        &self,
        mut reader: BlobReader,
        digest: &Digest,
    ) -> object_store::Result<()> {
        let _turn = self.uploads.acquire().await.expect("never closed");
        let path = self.path(digest);
        match self.store.head(&path).await {
            Ok(_) => {
                self.count("put", "present");
                // Wanted again: a use, for the tier's idle expiry.
                return self.mark_used(digest).await;
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                self.count("head", "error");
                return Err(e);
            }
        }
        let mut upload =
            WriteMultipart::new_with_chunk_size(self.store.put_multipart(&path).await?, PART);
        let mut sent = 0;
        loop {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    upload.wait_for_capacity(1).await?;
                    // Copied: the chunk's buffer goes back to the fills' pool at once.
                    upload.write(&chunk);
                    sent += chunk.len();
                }
                Ok(None) => break,
                Err(e) => {
                    self.count("put", "aborted");
                    upload.abort().await?;
                    return Err(generic(e));
                }
            }
        }
        let done = if sent == 0 {
            // S3 refuses a multipart upload without parts.
            upload.abort().await?;
            self.store.put(&path, PutPayload::new()).await.map(drop)
        } else {
            upload.finish().await.map(drop)
        };
        match done {
            Ok(()) => {
                self.count("put", "uploaded");
                Ok(())
            }
            Err(e) => {
                self.count("put", "error");
                Err(e)
            }
        }
    }

    /// Feeds a fill from the tier's body of `digest`. A body that breaks off part-way hands
    /// the fill back with where it stopped, for the caller's own source to carry on from
    /// there; what the fill's verification refuses is deleted from the bucket, so no node is
    /// handed it again.
    pub(super) async fn feed(
        self: Arc<Self>,
        body: SharedBody,
        writer: FillWriter,
        digest: Digest,
    ) -> Option<Resume> {
        writer.start(Some(body.size), Source::Shared).await;
        let mut piece = writer.segment(0);
        let mut stream = body.stream;
        let mut at = 0;
        // Why the body stopped short, if it did.
        let broke = loop {
            // What came goes to the fill's readers whenever the tier pauses.
            let next = match stream.next().now_or_never() {
                Some(next) => next,
                None => {
                    piece.flush().await.ok()?;
                    match tokio::time::timeout(READ_IDLE, stream.next()).await {
                        Ok(next) => next,
                        Err(_) => break Some(format!("nothing came for {READ_IDLE:?}")),
                    }
                }
            };
            match next {
                Some(Ok(chunk)) => {
                    self.received.inc_by(chunk.len() as u64);
                    // A cache error: the fill knows, and tells its readers.
                    piece.write(&chunk).await.ok()?;
                    at += chunk.len() as u64;
                }
                Some(Err(e)) => break Some(e.to_string()),
                None if at < body.size => break Some(format!("the body ended at byte {at}")),
                None => break None,
            }
        };
        piece.flush().await.ok()?;
        drop(piece);
        if let Some(why) = broke {
            self.count("get", "broken");
            tracing::warn!(%digest, at, error = why, "the shared tier's body broke off; the rest comes from the source");
            return Some(Resume {
                writer,
                at,
                total: Some(body.size),
            });
        }
        match writer.finish().await {
            Ok(()) => tracing::debug!(%digest, "blob cached from the shared tier"),
            Err(e) if e.is_verification_failure() => {
                self.count("get", "refused");
                tracing::warn!(%digest, error = %e, "the shared tier's copy failed verification; deleting it");
                if let Err(e) = self.store.delete(&self.path(&digest)).await {
                    tracing::warn!(%digest, error = %e, "the bad copy could not be deleted");
                }
            }
            Err(e) => tracing::debug!(%digest, error = %e, "a fill from the shared tier stopped"),
        }
        None
    }
}

fn generic(e: CacheError) -> object_store::Error {
    object_store::Error::Generic {
        store: "wharf cache",
        source: Box::new(e),
    }
}
