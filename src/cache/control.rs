//! What an operator asks of the cache from outside: the tags it holds of a repository, every
//! variant of a tag, and manifests and tags taken out. Each step is one file removed or
//! replaced whole, so a purge cut short by a crash leaves a consistent cache (a tag whose
//! manifest is gone is fetched again) and the same purge asked again finishes it.

use super::store::EntryKey;
use super::{off_the_workers, Cache, CachedImage, Error, TagKey, Variant};
use crate::oci::{Digest, RepoName};

impl Cache {
    /// The tags of `upstream`'s `repo` this cache holds, with their variants (read from disk,
    /// off the workers).
    pub async fn tags_of(
        &self,
        upstream: &str,
        repo: &RepoName,
    ) -> Result<Vec<(TagKey, Vec<Variant>)>, Error> {
        let (tags, upstream, repo) = (self.tags.clone(), upstream.to_owned(), repo.clone());
        off_the_workers(move || tags.of_repository(&upstream, &repo)).await
    }

    /// Every cached tag's variants, and what of each is on disk (reads every tag file and the
    /// manifests they name, off the workers).
    pub async fn images(&self) -> Result<Vec<CachedImage>, Error> {
        let (tags, store) = (self.tags.clone(), self.store.clone());
        off_the_workers(move || {
            super::images::inventory(store.root(), tags.all(), &|key| store.entry(key))
        })
        .await
    }

    /// Every variant held of a tag (one per kind of client that asked for it).
    pub async fn tag_variants(&self, key: &TagKey) -> Result<Vec<Variant>, Error> {
        let (tags, key) = (self.tags.clone(), key.clone());
        off_the_workers(move || tags.variants(&key)).await
    }

    /// Takes a manifest out of memory and off the disk: whether the disk held it.
    pub async fn purge_manifest(&self, digest: &Digest) -> Result<bool, Error> {
        self.memory.remove(digest);
        let (store, key) = (self.store.clone(), EntryKey::manifest(digest));
        off_the_workers(move || store.purge(&key))
            .await?
            .map_err(Error::read)
    }

    /// Forgets a tag, in memory and on disk.
    pub async fn purge_tag(&self, key: &TagKey) -> Result<(), Error> {
        let (tags, key) = (self.tags.clone(), key.clone());
        off_the_workers(move || tags.forget(&key)).await
    }
}
