//! The label values of wharf's metrics, as enums: a series is never named from request input.

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionReason {
    /// Room was needed under `max_size`.
    Size,
    /// Unused for `max_idle`.
    Idle,
    /// Its file no longer matched the index (removed or damaged outside wharf).
    Invalid,
    /// The filesystem ran short of space for a new entry.
    DiskSpace,
    /// An operator purged it.
    Purged,
}

impl EvictionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Size => "size",
            EvictionReason::Idle => "idle",
            EvictionReason::Invalid => "invalid",
            EvictionReason::DiskSpace => "disk_space",
            EvictionReason::Purged => "purged",
        }
    }
}

/// Why a blob was served without being cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// Larger than the whole cache.
    Oversize,
    /// The cache directory could not take it (disk full, read-only).
    Unwritable,
    /// Cached, but its file could not be opened (the entry is kept).
    Unreadable,
}

impl BypassReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BypassReason::Oversize => "oversize",
            BypassReason::Unwritable => "unwritable",
            BypassReason::Unreadable => "unreadable",
        }
    }
}

/// What a cache lookup came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Coalesced,
    Stale,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Blob,
    Manifest,
}

impl ContentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Blob => "blob",
            ContentKind::Manifest => "manifest",
        }
    }
}

/// What the `Range` header of a blob request came to, against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// One span (perhaps several ranges merged): a plain 206.
    Single,
    /// Several spans: a 206 multipart/byteranges.
    Multi,
    /// More spans than `max_range_parts`: the whole blob instead.
    TooManyParts,
    /// No range inside the blob: 416.
    Unsatisfiable,
}

impl RangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RangeKind::Single => "single",
            RangeKind::Multi => "multi",
            RangeKind::TooManyParts => "too_many_parts",
            RangeKind::Unsatisfiable => "unsatisfiable",
        }
    }
}

/// Where the bytes of a response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Upstream,
    /// A fill fed by the digest's owner peer.
    Peer,
    /// A fill fed by the shared tier.
    Shared,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Peer => "peer",
            Source::Shared => "shared",
        }
    }
}
