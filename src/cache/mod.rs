//! The local cache: blobs and manifests stored by digest, shared in-flight fills, and the tag →
//! digest table. Knows nothing of HTTP or of the upstream client: a fill is fed bytes by its
//! caller, and a failure is whatever value the caller hands it.

mod blobs;
mod fill;
mod manifests;
mod tags;

pub use blobs::{Area, BlobFile, Store};
pub use fill::{CommitError, Fill, FillReader, FillState, FillWriter, Fills, Joined, ReadError};
pub use manifests::StoredManifest;
pub use tags::{TagKey, TagTable, Variant};
