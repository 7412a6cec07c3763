//! Read buffers, recycled. A chunk handed to the HTTP stack gives its buffer back to the pool when
//! the stack drops it, so serving a blob neither allocates nor zeroes memory per chunk, and what
//! the process holds is bounded by the chunks in flight plus a few spares.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Responses are read from disk in chunks this large: hyper only reaches file-copy speed with
/// big chunks. A reader holds one, plus one read ahead when the disk is slow; hyper may hold two
/// more while they are being sent.
pub const CHUNK: usize = 512 * 1024;
/// Spare buffers kept between uses (8 MiB at most); more in flight are freed when dropped.
const SPARES: usize = 16;

#[derive(Clone, Default)]
pub struct BufferPool {
    spares: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BufferPool {
    /// A buffer of [`CHUNK`] bytes (contents unspecified).
    pub fn take(&self) -> Vec<u8> {
        let spare = self.spares.lock().expect("lock poisoned").pop();
        spare.unwrap_or_else(|| vec![0; CHUNK])
    }

    /// The first `len` bytes of `buf` as `Bytes`; the buffer returns here when they are dropped.
    pub fn freeze(&self, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            len,
            pool: self.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut spares) = self.pool.spares.lock() {
            if spares.len() < SPARES {
                spares.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_their_bytes_are_dropped() {
        let pool = BufferPool::default();
        let mut buf = pool.take();
        buf[..3].copy_from_slice(b"abc");
        let bytes = pool.freeze(buf, 3);
        let clone = bytes.slice(1..);
        assert_eq!(&bytes[..], b"abc");
        drop(bytes);
        assert!(
            pool.spares.lock().unwrap().is_empty(),
            "a slice still holds it"
        );
        assert_eq!(&clone[..], b"bc");
        drop(clone);
        assert_eq!(pool.spares.lock().unwrap().len(), 1);
        assert_eq!(pool.take().len(), CHUNK);
    }

    #[test]
    fn only_a_few_spares_are_kept() {
        let pool = BufferPool::default();
        let taken: Vec<_> = (0..SPARES + 4).map(|_| pool.take()).collect();
        drop(
            taken
                .into_iter()
                .map(|b| pool.freeze(b, 0))
                .collect::<Vec<_>>(),
        );
        assert_eq!(pool.spares.lock().unwrap().len(), SPARES);
    }
}
