//! Buffers for the bytes of fills and readers, recycled and counted. A chunk handed to the HTTP
//! stack gives its buffer back to the pool when the stack drops it, so serving a blob neither
//! allocates nor zeroes memory per chunk; and the pool counts every byte of buffer memory it has
//! handed out and not freed (spares included), which is what bounds the process's memory and
//! what `wharf_fill_buffer_bytes` shows.
//!
//! What is counted is the memory a buffer holds, not the bytes in it: a few KiB of payload in a
//! 512 KiB buffer hold 512 KiB. So payloads smaller than half a [`CHUNK`] get a buffer of their
//! own size ([`BufferPool::take_for`]), and a buffer never holds more than twice its payload.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus::IntGauge;

/// Responses are read from disk in chunks this large: hyper only reaches file-copy speed with
/// big chunks. A reader holds one, plus one read ahead when the disk is slow; hyper may hold two
/// more while they are being sent.
pub const CHUNK: usize = 512 * 1024;
/// Spare buffers kept between uses (8 MiB at most); more in flight are freed when dropped.
const SPARES: usize = 16;

#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<Shared>,
}

struct Shared {
    spares: Mutex<Vec<Vec<u8>>>,
    /// Bytes of every buffer handed out and not freed, spares included.
    held: IntGauge,
}

#[cfg(test)]
impl Default for BufferPool {
    /// A pool counting into a gauge of its own.
    fn default() -> Self {
        BufferPool::new(IntGauge::new("buffer_bytes", "held").expect("valid gauge"))
    }
}

impl BufferPool {
    /// A pool that counts the bytes of its buffers in `held`.
    pub fn new(held: IntGauge) -> BufferPool {
        BufferPool {
            shared: Arc::new(Shared {
                spares: Mutex::default(),
                held,
            }),
        }
    }

    /// A buffer of [`CHUNK`] bytes (contents unspecified).
    pub fn take(&self) -> Buffer {
        let spare = self.shared.spares.lock().expect("lock poisoned").pop();
        let buf = spare.unwrap_or_else(|| self.allocate(CHUNK));
        Buffer {
            buf,
            pool: self.clone(),
        }
    }

    /// A buffer for `len` bytes: a recycled [`CHUNK`] when that is at most twice `len` (and `len`
    /// fits), else one of exactly `len` bytes, freed after use.
    pub fn take_for(&self, len: usize) -> Buffer {
        if (CHUNK / 2..=CHUNK).contains(&len) {
            return self.take();
        }
        Buffer {
            buf: self.allocate(len),
            pool: self.clone(),
        }
    }

    fn allocate(&self, len: usize) -> Vec<u8> {
        self.shared.held.add(len as i64);
        vec![0; len]
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.len() == CHUNK {
            if let Ok(mut spares) = self.shared.spares.lock() {
                if spares.len() < SPARES {
                    spares.push(buf);
                    return;
                }
            }
        }
        self.shared.held.sub(buf.len() as i64);
    }
}

/// A buffer from a [`BufferPool`], returned to it (or freed) when dropped.
pub struct Buffer {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl Buffer {
    /// Bytes of memory this buffer holds (its length; its contents may be shorter).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The first `len` bytes as `Bytes`; the buffer returns to its pool when they are dropped.
    pub fn freeze(self, len: usize) -> Bytes {
        assert!(
            len <= self.buf.len(),
            "a buffer holds no more than its length"
        );
        Bytes::from_owner(Frozen { buffer: self, len })
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

struct Frozen {
    buffer: Buffer,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        &self.buffer.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl BufferPool {
        fn held(&self) -> usize {
            self.shared.held.get() as usize
        }
    }

    #[test]
    fn buffers_come_back_when_their_bytes_are_dropped() {
        let pool = BufferPool::default();
        let mut buf = pool.take();
        buf[..3].copy_from_slice(b"abc");
        let bytes = buf.freeze(3);
        let clone = bytes.slice(1..);
        assert_eq!(&bytes[..], b"abc");
        drop(bytes);
        assert!(
            pool.shared.spares.lock().unwrap().is_empty(),
            "a slice still holds it"
        );
        assert_eq!(&clone[..], b"bc");
        drop(clone);
        assert_eq!(pool.shared.spares.lock().unwrap().len(), 1);
        assert_eq!(pool.take().len(), CHUNK);
    }

    #[test]
    fn only_a_few_spares_are_kept_and_the_rest_is_freed() {
        let pool = BufferPool::default();
        let taken: Vec<_> = (0..SPARES + 4).map(|_| pool.take()).collect();
        assert_eq!(pool.held(), (SPARES + 4) * CHUNK);
        drop(taken.into_iter().map(|b| b.freeze(0)).collect::<Vec<_>>());
        assert_eq!(pool.shared.spares.lock().unwrap().len(), SPARES);
        assert_eq!(pool.held(), SPARES * CHUNK, "spares count as held");
    }

    #[test]
    fn small_payloads_get_buffers_of_their_own_size() {
        let pool = BufferPool::default();
        let small = pool.take_for(16 * 1024);
        assert_eq!(small.held(), 16 * 1024);
        assert_eq!(pool.held(), 16 * 1024);
        let bytes = small.freeze(16 * 1024);
        drop(bytes);
        assert_eq!(pool.held(), 0, "freed, not kept as a spare");
        assert!(pool.shared.spares.lock().unwrap().is_empty());
        assert_eq!(pool.take_for(CHUNK / 2).held(), CHUNK);
        assert_eq!(pool.take_for(CHUNK * 2).held(), CHUNK * 2);
    }
}
