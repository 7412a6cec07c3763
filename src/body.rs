//! A piece of a blob response as the cache hands it out: bytes in memory, or a range of a
//! committed file that the page cache holds. A leaf both `cache` (which makes pieces) and
//! `server` (which sends them) may import. The file inside a [`FileRange`] is opened up in one
//! place only, `server::sendfile`, which sends it with `sendfile(2)`; everything else treats a
//! range as opaque.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

/// The next piece of a body.
pub enum Chunk {
    Bytes(Bytes),
    File(FileRange),
}

/// `len` bytes of a file at `offset`, already in the page cache when it was handed out.
pub struct FileRange {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

impl FileRange {
    pub fn new(file: Arc<File>, offset: u64, len: usize) -> FileRange {
        FileRange { file, offset, len }
    }

    /// The file, offset and length, for the socket that sends them from the file (and only
    /// for it: `server::sendfile`).
    pub fn open_up(self) -> (Arc<File>, u64, usize) {
        (self.file, self.offset, self.len)
    }
}
