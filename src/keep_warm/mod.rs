//! Keep-warm rules (`[[sync]]`): chosen tags are fetched before anyone asks for them. Each rule
//! lists its repository's tags upstream every interval and warms the matching tags that are
//! new or moved, through the mirror's own pull paths, so what it fetches lands as ordinary
//! LRU entries (a rule never evicts what clients use any more than a client's pull would) and
//! a client asking meanwhile joins the same fill. In a cluster only the rule's owner node (by
//! the rendezvous hash) runs it; a registry's push announcement warms a covered tag at once.

mod budget;
mod rule;

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::SyncConfig;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::oci::{RepoName, Tag};
use rule::Rule;
pub use rule::{RuleStatus, RunReport};

pub struct KeepWarm {
    rules: Vec<Arc<Rule>>,
    mirror: Arc<Mirror>,
    metrics: Metrics,
}

impl KeepWarm {
    /// The rules of a validated configuration; none run until [`KeepWarm::start`].
    pub fn new(configs: &[SyncConfig], mirror: Arc<Mirror>, metrics: Metrics) -> KeepWarm {
        KeepWarm {
            rules: configs.iter().map(|c| Arc::new(Rule::new(c))).collect(),
            mirror,
            metrics,
        }
    }

    /// Starts every rule's loop: a first run at once, then one per interval.
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.rules
            .iter()
            .map(|rule| tokio::spawn(self.clone().keep(rule.clone())))
            .collect()
    }

    async fn keep(self: Arc<Self>, rule: Arc<Rule>) {
        loop {
            let runs_here = self.mirror.runs_here(&rule.key);
            let wait = if runs_here {
                rule.run(&self.mirror, &self.metrics).await
            } else {
                rule.every
            };
            rule.schedule(runs_here, SystemTime::now() + wait);
            tokio::time::sleep(wait).await;
        }
    }

    /// What each rule did last and does next.
    pub fn status(&self) -> Vec<RuleStatus> {
        self.rules.iter().map(|r| r.status()).collect()
    }

    /// A registry announced `tag`: warms it now if a rule that runs here covers it. Whether
    /// one does.
    pub fn pushed(self: &Arc<Self>, registry: &str, repo: &RepoName, tag: &Tag) -> bool {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.covers(registry, repo, tag) && self.mirror.runs_here(&r.key))
        else {
            return false;
        };
        let (this, rule, tag) = (self.clone(), rule.clone(), tag.clone());
        tokio::spawn(async move { rule.pushed(&this.mirror, &this.metrics, &tag).await });
        true
    }
}
