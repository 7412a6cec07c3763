//! One keep-warm rule: which tags of which repository, and what its runs found. A run lists
//! the tags upstream, and warms each matching tag that is new or whose digest moved since the
//! last run, through the mirror's own manifest and blob paths (the fills clients join).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{stream, StreamExt};
use serde::Serialize;

use super::budget::Budget;
use crate::config::SyncConfig;
use crate::error::Error;
use crate::metrics::{CacheResult, Metrics};
use crate::mirror::{BlobBytes, Mirror, Origin};
use crate::oci::manifest::{Descriptor, ManifestDoc};
use crate::oci::media::Accept;
use crate::oci::{Digest, RawManifest, Reference, RepoName, Tag};
use crate::warm::{image_blobs, Platforms};

/// The most errors a run keeps for its report.
const MAX_ERRORS: usize = 20;
/// The longest a failing upstream pushes a rule's next run back, in intervals.
const MAX_BACKOFF_INTERVALS: u32 = 8;

pub struct Rule {
    /// The image as configured: the rule's name in metrics, logs and the status view.
    pub image: String,
    pub registry: String,
    pub repo: RepoName,
    filter: regex::Regex,
    tags: String,
    platforms: Platforms,
    pub every: Duration,
    jobs: usize,
    budget: Option<Budget>,
    /// Which node runs the rule in a cluster: the rendezvous owner of this key.
    pub key: Digest,
    state: Mutex<RuleState>,
    /// One run (or pushed tag) at a time.
    running: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct RuleState {
    /// The digest each tag had when it was last warmed.
    warmed: HashMap<Tag, Digest>,
    last: Option<RunReport>,
    /// Runs in a row whose listing failed.
    failures: u32,
    next_run: Option<SystemTime>,
    runs_here: bool,
}

/// What one run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    #[serde(with = "humantime_serde")]
    pub started: SystemTime,
    #[serde(with = "humantime_serde")]
    pub finished: Option<SystemTime>,
    /// Whether the tags could be listed at all.
    pub listed: bool,
    pub tags_listed: usize,
    pub tags_matching: usize,
    /// Tags that were new or had moved, warmed in this run.
    pub warmed: Vec<String>,
    /// Blobs fetched (not already cached), and their bytes.
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub errors: Vec<String>,
}

impl RunReport {
    fn new() -> RunReport {
        RunReport {
            started: SystemTime::now(),
            finished: None,
            listed: false,
            tags_listed: 0,
            tags_matching: 0,
            warmed: Vec::new(),
            blobs_fetched: 0,
            bytes_fetched: 0,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        }
    }

    fn result(&self) -> &'static str {
        match (self.listed, self.errors.is_empty()) {
            (false, _) => "failed",
            (true, true) => "ok",
            (true, false) => "partial",
        }
    }
}

/// A rule as the status view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    pub image: String,
    pub tags: String,
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Whether this node runs the rule (in a cluster, only its owner does).
    pub runs_here: bool,
    pub tags_warm: usize,
    pub failures_in_a_row: u32,
    #[serde(with = "humantime_serde")]
    pub next_run: Option<SystemTime>,
    pub last_run: Option<RunReport>,
}

impl Rule {
    /// A rule from a validated configuration.
    pub fn new(config: &SyncConfig) -> Rule {
        let image = config
            .image_ref()
            .expect("validated: the image names a repository");
        let platforms = config.platforms().expect("validated: the platforms parse");
        Rule {
            image: config.image.clone(),
            registry: image.registry,
            repo: image.repo,
            filter: config.tag_filter().expect("validated: the filter compiles"),
            tags: config.tags.clone(),
            platforms: if platforms.is_empty() {
                Platforms::All
            } else {
                Platforms::These(platforms)
            },
            every: config.every,
            jobs: config.jobs.max(1),
            budget: config.bandwidth.map(|b| Budget::new(b.bytes())),
            key: Digest::sha256_of(format!("keep-warm\n{}", config.image).as_bytes()),
            state: Mutex::default(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RuleState> {
        self.state.lock().expect("rule state lock")
    }

    /// Whether a pushed tag is one this rule keeps warm.
    pub fn covers(&self, registry: &str, repo: &RepoName, tag: &Tag) -> bool {
        self.registry == registry && self.repo == *repo && self.filter.is_match(tag.as_str())
    }

    pub fn status(&self) -> RuleStatus {
        let state = self.state();
        RuleStatus {
            image: self.image.clone(),
            tags: self.tags.clone(),
            every: self.every,
            runs_here: state.runs_here,
            tags_warm: state.warmed.len(),
            failures_in_a_row: state.failures,
            next_run: state.next_run,
            last_run: state.last.clone(),
        }
    }

    /// Records whether this node runs the rule, and when it looks next.
    pub fn schedule(&self, runs_here: bool, next_run: SystemTime) {
        let mut state = self.state();
        state.runs_here = runs_here;
        state.next_run = Some(next_run);
    }

    /// Lists the tags and warms the matching ones that are new or moved; how long until the
    /// next run (longer after failed listings: a failing upstream is left alone a while).
    pub async fn run(&self, mirror: &Arc<Mirror>, metrics: &Metrics) -> Duration {
        let _one = self.running.lock().await;
        let mut report = RunReport::new();
        match mirror.list_tags_now(&self.registry, &self.repo).await {
            Ok(tags) => {
                report.listed = true;
                report.tags_listed = tags.len();
                let matching: Vec<Tag> = tags
                    .into_iter()
                    .filter(|t| self.filter.is_match(t.as_str()))
                    .collect();
                report.tags_matching = matching.len();
                for tag in matching {
                    self.warm_tag(mirror, metrics, &tag, false, &mut report)
                        .await;
                }
            }
            Err(e) => report.error(format!("listing the tags: {e}")),
        }
        self.finish(report, metrics)
    }

    /// Warms one tag a registry announced, whatever the last run saw.
    pub async fn pushed(&self, mirror: &Arc<Mirror>, metrics: &Metrics, tag: &Tag) {
        let _one = self.running.lock().await;
        let mut report = RunReport::new();
        report.listed = true;
        self.warm_tag(mirror, metrics, tag, true, &mut report).await;
        for error in &report.errors {
            tracing::warn!(rule = %self.image, %tag, %error, "a pushed tag could not be warmed");
        }
    }

    fn finish(&self, mut report: RunReport, metrics: &Metrics) -> Duration {
        report.finished = Some(SystemTime::now());
        let result = report.result();
        let rule = self.image.as_str();
        metrics
            .keep_warm
            .runs
            .with_label_values(&[rule, result])
            .inc();
        if result == "ok" {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            metrics
                .keep_warm
                .last_success
                .with_label_values(&[rule])
                .set(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        }
        match result {
            "ok" => tracing::debug!(rule, warmed = ?report.warmed, "keep-warm run"),
            _ => tracing::warn!(rule, result, errors = ?report.errors, "keep-warm run"),
        }
        let mut state = self.state();
        state.failures = if report.listed { 0 } else { state.failures + 1 };
        let intervals = 2u32
            .saturating_pow(state.failures.min(3))
            .min(MAX_BACKOFF_INTERVALS);
        state.last = Some(report);
        self.every * intervals
    }

    /// Warms `tag` if it is new or moved (or whatever it is, when `always`).
    async fn warm_tag(
        &self,
        mirror: &Arc<Mirror>,
        metrics: &Metrics,
        tag: &Tag,
        always: bool,
        report: &mut RunReport,
    ) {
        let manifest = match mirror.tag_now(&self.registry, &self.repo, tag).await {
            Ok(answer) => answer.manifest,
            Err(e) => return report.error(format!("{tag}: {e}")),
        };
        let unchanged = self.state().warmed.get(tag) == Some(&manifest.digest);
        if unchanged && !always {
            return;
        }
        match self.warm_image(mirror, metrics, &manifest, report).await {
            Ok(()) => {
                self.state()
                    .warmed
                    .insert(tag.clone(), manifest.digest.clone());
                report.warmed.push(tag.to_string());
                metrics
                    .keep_warm
                    .tags_warmed
                    .with_label_values(&[&self.image])
                    .inc();
            }
            Err(e) => report.error(format!("{tag}: {e}")),
        }
    }

    /// Fetches the image's platform manifests and blobs that are not cached, `jobs` blobs at
    /// a time within the bandwidth budget.
    async fn warm_image(
        &self,
        mirror: &Arc<Mirror>,
        metrics: &Metrics,
        manifest: &RawManifest,
        report: &mut RunReport,
    ) -> Result<(), String> {
        let blobs = match parse(manifest)? {
            ManifestDoc::Image { config, layers } => image_blobs(config, layers),
            ManifestDoc::Index(entries) => {
                let mut blobs = Vec::new();
                for entry in entries
                    .iter()
                    .filter(|e| self.platforms.wants(e.platform.as_ref()))
                {
                    let child = mirror
                        .manifest(
                            Some(&self.registry),
                            &self.repo,
                            &Reference::Digest(entry.digest.clone()),
                            &Accept::all_manifests(),
                            Origin::Client,
                        )
                        .await
                        .map_err(|e| format!("manifest {}: {e}", entry.digest))?;
                    match parse(&child.manifest)? {
                        ManifestDoc::Image { config, layers } => {
                            blobs.extend(image_blobs(config, layers));
                        }
                        ManifestDoc::Index(_) => {
                            return Err(format!("{}: an index inside an index", entry.digest))
                        }
                    }
                }
                blobs
            }
        };
        let mut seen = std::collections::HashSet::new();
        let blobs: Vec<Descriptor> = blobs
            .into_iter()
            .filter(|b| seen.insert(b.digest.clone()))
            .collect();
        let mut fetches = stream::iter(
            blobs
                .into_iter()
                .map(|blob| async move { self.fetch_blob(mirror, &blob).await }),
        )
        .buffer_unordered(self.jobs);
        let mut failed = None;
        while let Some(fetched) = fetches.next().await {
            match fetched {
                Ok(Some(bytes)) => {
                    report.blobs_fetched += 1;
                    report.bytes_fetched += bytes;
                    metrics
                        .keep_warm
                        .bytes
                        .with_label_values(&[&self.image])
                        .inc_by(bytes);
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Reads a blob through the mirror to its end; `None` when it was cached already.
    async fn fetch_blob(
        &self,
        mirror: &Arc<Mirror>,
        blob: &Descriptor,
    ) -> Result<Option<u64>, String> {
        let failed = |e: Error| format!("blob {}: {e}", blob.digest);
        if let Some(budget) = &self.budget {
            budget.take(blob.size).await;
        }
        let answer = mirror
            .blob(
                Some(&self.registry),
                &self.repo,
                &blob.digest,
                None,
                Origin::Client,
            )
            .await
            .map_err(failed)?;
        if answer.result == CacheResult::Hit {
            return Ok(None);
        }
        let mut body = match answer.bytes {
            BlobBytes::Ranged(blob) => blob.part(0, None),
            BlobBytes::Whole(body) => body,
        };
        let mut read = 0u64;
        while let Some(chunk) = body.next_bytes().await.map_err(failed)? {
            read += chunk.len() as u64;
        }
        Ok(Some(read))
    }
}

fn parse(manifest: &RawManifest) -> Result<ManifestDoc, String> {
    ManifestDoc::parse(manifest.media_type_essence(), &manifest.body)
        .map_err(|e| format!("manifest {}: {e}", manifest.digest))
}
