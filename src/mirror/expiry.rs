//! Who keeps the shared tier within its bounds: one node of the cluster at a time, the first
//! in rendezvous order (among the nodes that are up) for a fixed key, so the bucket is listed
//! once per pass, not once per node; a node alone always does it. When the node running it
//! goes down, the next in order takes over at its next tick.

use std::sync::Arc;
use std::time::Duration;

use super::Mirror;
use crate::oci::Digest;

impl Mirror {
    /// Runs the shared tier's expiry a few times per `max_idle` (at least every ten minutes)
    /// while this node is the one to run it. Runs until dropped; returns at once without a
    /// shared tier.
    pub async fn expire_shared_forever(self: Arc<Self>) {
        let Some(max_idle) = self.cache.shared_max_idle() else {
            return;
        };
        let every = (max_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        let key = Digest::sha256_of(b"wharf: the shared tier's expiry");
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mine = self
                .owners
                .as_ref()
                .map_or(true, |o| o.members().ahead_of_me(&key).is_empty());
            if !mine {
                continue;
            }
            match self.cache.expire_shared().await {
                Some(Ok(pruned)) => tracing::debug!(?pruned, "shared tier expiry pass"),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the shared tier's expiry pass stopped")
                }
                None => return,
            }
        }
    }
}
