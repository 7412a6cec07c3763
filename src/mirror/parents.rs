//! Which index lists a manifest, across the nodes of a cluster: a client resolves an index on
//! one node and may ask another for its platform manifests. The node that verifies an index
//! records each manifest it lists, and tells the [`TOLD`] other nodes that rank first for that
//! manifest among those up, and any thought down that rank before them (so the record outlives
//! the node); a node that has no record, or whose record does not verify, asks the [`ASKED`]
//! other nodes that are up and rank first. A record only says where to
//! look: whoever reads one fetches the index and verifies it itself.

use std::sync::Arc;

use futures_util::future::join_all;

use super::state::Mirror;
use crate::cache::ListedKey;
use crate::error::Error;
use crate::oci::{Digest, RepoName};

/// Other nodes told of each record: the record survives the death of any one node.
const TOLD: usize = 2;
/// Other nodes asked for a record: with [`TOLD`], one of them was told or made it, whichever
/// node that was.
const ASKED: usize = 3;

impl Mirror {
    /// Records that `index` lists each of `manifests`, and tells the nodes that rank first for
    /// each what is news here, off the request path.
    pub(super) fn record_listing(
        &self,
        index: &Digest,
        manifests: impl Iterator<Item = ListedKey>,
    ) {
        let news: Vec<ListedKey> = manifests
            .filter(|key| self.cache.record_parent(key.clone(), index))
            .collect();
        let Some(owners) = self.owners.clone() else {
            return;
        };
        if news.is_empty() {
            return;
        }
        let within = owners.peer_timeout();
        let tells: Vec<_> = news
            .into_iter()
            .flat_map(|key| {
                let holders = owners.holders(&key.upstream, &key.manifest, TOLD, true);
                holders.into_iter().map(move |holder| (key.clone(), holder))
            })
            .collect();
        let index = index.clone();
        tokio::spawn(async move {
            let tells = tells.iter().map(|(key, holder)| async {
                let told = holder.via.tell_listed(&key.repo, &key.manifest, &index);
                match tokio::time::timeout(within, told).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%index, error = %e, "a peer was not told of an index listing")
                    }
                    Err(_) => {
                        tracing::debug!(%index, "a peer was not told of an index listing in time")
                    }
                }
            });
            join_all(tells).await;
        });
    }

    /// What the other nodes that rank first for `key`'s manifest have recorded as the index
    /// listing it, all asked at once; a peer that does not answer in time counts as none.
    pub(super) async fn peers_records(&self, key: &ListedKey) -> Vec<Digest> {
        let Some(owners) = &self.owners else {
            return Vec::new();
        };
        let within = owners.peer_timeout();
        let asks = owners
            .holders(&key.upstream, &key.manifest, ASKED, false)
            .into_iter()
            .map(|holder| async move {
                let asked = holder.via.listed_by(&key.repo, &key.manifest);
                match tokio::time::timeout(within, asked).await {
                    Ok(Ok(found)) => found,
                    Ok(Err(e)) => {
                        tracing::debug!(manifest = %key.manifest, error = %e, "a peer's index record could not be read");
                        None
                    }
                    Err(_) => None,
                }
            });
        let mut found: Vec<Digest> = Vec::new();
        for index in join_all(asks).await.into_iter().flatten() {
            if !found.contains(&index) {
                found.push(index);
            }
        }
        found
    }

    /// The index this node has recorded as listing `manifest` in `repo`: a peer's question.
    pub async fn listed_here(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
        manifest: &Digest,
    ) -> Result<Option<Digest>, Error> {
        let key = self.listed_key(registry, repo, manifest)?;
        Ok(self.cache.parent(&key).await)
    }

    /// Records that `index` lists `manifest` in `repo`, as a peer that verified the index
    /// tells.
    pub fn note_listed(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
        manifest: &Digest,
        index: &Digest,
    ) -> Result<(), Error> {
        let key = self.listed_key(registry, repo, manifest)?;
        self.cache.record_parent(key, index);
        Ok(())
    }

    fn listed_key(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
        manifest: &Digest,
    ) -> Result<ListedKey, Error> {
        let upstream: Arc<str> = self.upstream(registry, repo)?.name().into();
        Ok(ListedKey {
            upstream,
            repo: repo.clone(),
            manifest: manifest.clone(),
        })
    }
}
