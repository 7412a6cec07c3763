//! The local cache: blobs and manifests stored by digest, the LRU index that bounds them, shared
//! in-flight fills, the tag → digest table, and the disk's health. Knows nothing of HTTP or of
//! the upstream client: a fill is fed bytes by its caller, and a failure is whatever value the
//! caller hands it.

mod blobs;
mod buffers;
mod disk;
mod fill;
mod health;
mod index;
pub mod maintenance;
mod manifests;
mod reader;
mod recent;
mod scan;
mod tag_files;
mod tags;

pub use blobs::{Area, BlobFile, Committed, Store, Usage};
pub use fill::{CommitError, Fill, FillWriter, Fills, Joined};
pub use health::Condition;
pub use manifests::StoredManifest;
pub use reader::{Chunk, FillReader, ReadError};
pub use tags::{TagKey, TagTable, Variant};
