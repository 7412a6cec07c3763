//! A rule's bandwidth budget: blobs are started no faster, on average, than the bytes per
//! second it allows. Fills run at the upstream's pace once started; spacing their starts keeps
//! a rule's average within its budget without slowing any client that joins a fill.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct Budget {
    bytes_per_second: u64,
    /// When the bytes started so far are paid for.
    paid_until: Mutex<Option<Instant>>,
}

impl Budget {
    pub fn new(bytes_per_second: u64) -> Budget {
        Budget {
            bytes_per_second: bytes_per_second.max(1),
            paid_until: Mutex::new(None),
        }
    }

    /// Waits until `bytes` more may start.
    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut paid_until = self.paid_until.lock().await;
            let now = Instant::now();
            let start = paid_until.map_or(now, |t| t.max(now));
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            *paid_until = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_what_came_before() {
        let budget = Budget::new(1000);
        let began = Instant::now();
        budget.take(2000).await;
        assert_eq!(began.elapsed(), Duration::ZERO, "the first starts at once");
        budget.take(500).await;
        assert_eq!(began.elapsed(), Duration::from_secs(2));
        budget.take(0).await;
        assert_eq!(began.elapsed(), Duration::from_millis(2500));
    }
}
