//! How `wharf warm` shows its progress: on a terminal, a bar per blob in flight under a bar for
//! the total (indicatif draws them, rates included); otherwise a plain line per image, blob and
//! failure, for logs and CI.

use std::time::Instant;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::oci::{Digest, ImageRef};

pub struct Progress {
    /// `None`: plain lines.
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
}

impl Default for Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    fn default() -> Progress {
        let target = ProgressDrawTarget::stderr();
        if target.is_hidden() {
            return Progress { bars: None };
        }
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Progress {
            bars: Some(Bars { multi, total }),
        }
    }
}

impl Progress {
    fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn image(&self, image: &ImageRef, blobs: usize, bytes: u64) {
        self.line(&format!(
            "image {image}: {blobs} blobs to warm, {}",
            HumanBytes(bytes)
        ));
    }

    pub fn start_blobs(&self, count: usize, bytes: u64) {
        if let Some(bars) = &self.bars {
            bars.total.set_length(bytes);
            bars.total.set_message(format!("{count} blobs"));
        }
    }

    pub fn failed(&self, failure: &str) {
        self.line(&format!("FAILED {failure}"));
    }

    /// The progress of one blob.
    pub fn blob(&self, digest: &Digest, size: u64) -> BlobProgress {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars
                .multi
                .insert_before(&bars.total, ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(digest.hex()[..8].to_owned());
            (bar, bars.total.clone(), bars.multi.clone())
        });
        BlobProgress {
            digest: digest.clone(),
            bar,
            started: Instant::now(),
        }
    }

    /// The closing summary.
    pub fn finish(&self, report: &super::Report) {
        if let Some(bars) = &self.bars {
            bars.total.finish();
        }
        let seconds = report.elapsed.as_secs_f64();
        self.line(&format!(
            "warmed {} images: {} blobs ({} already cached), {} in {seconds:.1} s ({}/s); {} failed",
            report.images,
            report.blobs,
            report.hits,
            HumanBytes(report.bytes),
            HumanBytes((report.bytes as f64 / seconds.max(0.001)) as u64),
            report.failures.len(),
        ));
    }
}

pub struct BlobProgress {
    digest: Digest,
    /// The blob's own bar, the total's, and the set they are drawn in; `None`: plain lines.
    bar: Option<(ProgressBar, ProgressBar, MultiProgress)>,
    started: Instant,
}

impl BlobProgress {
    pub fn advance(&self, bytes: u64) {
        if let Some((bar, total, _)) = &self.bar {
            bar.inc(bytes);
            total.inc(bytes);
        }
    }

    pub fn done(self, hit: bool) {
        let state = if hit { "already cached" } else { "fetched" };
        let seconds = self.started.elapsed().as_secs_f64();
        let line = format!("blob {} {state} in {seconds:.2} s", self.digest);
        // A finished blob leaves its bar for a line, so an image of hundreds of layers keeps
        // the bars on screen to those in flight.
        if let Some((bar, _, multi)) = &self.bar {
            bar.finish_and_clear();
            let _ = multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

impl Drop for BlobProgress {
    /// A blob that failed keeps its bar, marked.
    fn drop(&mut self) {
        if let Some((bar, _, _)) = &self.bar {
            if !bar.is_finished() {
                bar.abandon_with_message("failed");
            }
        }
    }
}
