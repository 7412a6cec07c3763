//! The OCI distribution vocabulary: digests, repository names, references, media types and the
//! error envelope. Pure values and parsers; no IO, no HTTP stack, no knowledge of the cache.

mod digest;
mod error;
mod image_ref;
mod listing;
pub mod manifest;
pub mod media;
mod name;
mod pattern;
mod reference;

pub use digest::{Algorithm, Digest, DigestError, Verifier};
pub use error::{ErrorBody, ErrorCode};
pub use image_ref::{ImageRef, ImageRefError, DOCKER_HUB};
pub use listing::{Listing, ListingPage};
pub use manifest::{ManifestError, RawManifest};
pub use name::{NameError, RepoName};
pub use pattern::RepoPattern;
pub use reference::{Reference, ReferenceError, Tag};
