//! The pull-through use case, and the only place where the cache and the upstream meet: answer
//! from the cache when it can, otherwise fetch once upstream (coalescing identical requests),
//! verify, store, and answer. The server asks it by registry and repository; which upstream
//! that means is decided here.

mod access;
mod blobs;
mod control;
mod expiry;
mod feed;
mod filling;
mod flights;
mod keep_warm;
mod manifest_fetch;
mod manifests;
mod owners;
mod parents;
mod passthrough;
mod side;
mod signed;
mod state;
mod verdicts;

pub use crate::cache::CachedImage;
pub use blobs::{BlobAnswer, BlobBody, BlobBytes, RangedBlob};
pub use control::{Purged, Refreshed, Scope};
pub use manifests::ManifestAnswer;
pub use owners::{Origin, Owners};
pub use state::{Mirror, Readiness};
