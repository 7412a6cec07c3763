//! The newest bytes of a fill, kept in memory for a moment. Readers at the head of a fill take
//! them from here (a reference, no copy) instead of reading back from the temp file what just
//! passed through wharf. The file stays the source of truth: a reader that falls behind this
//! window reads the file, so memory per fill stays bounded however many clients wait on it.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of a fill kept in memory, shared by all its readers.
const KEEP: u64 = 4 * 1024 * 1024;

#[derive(Default)]
pub struct NewestBytes {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// (offset in the blob, bytes), in order and contiguous.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: u64,
}

impl NewestBytes {
    /// Adds the chunk written at `offset`, forgetting the oldest beyond the window.
    pub fn push(&self, offset: u64, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let mut w = self.window.lock().expect("lock poisoned");
        w.bytes += chunk.len() as u64;
        w.chunks.push_back((offset, chunk));
        while w.bytes > KEEP && w.chunks.len() > 1 {
            let (_, old) = w.chunks.pop_front().expect("more than one chunk");
            w.bytes -= old.len() as u64;
        }
    }

    /// Lets go of everything: once a fill has ended, its readers read the file.
    pub fn clear(&self) {
        let mut w = self.window.lock().expect("lock poisoned");
        w.chunks.clear();
        w.bytes = 0;
    }

    /// The bytes from `pos` (up to `to`, exclusive) that the window holds in one piece, if any.
    pub fn get(&self, pos: u64, to: u64) -> Option<Bytes> {
        let w = self.window.lock().expect("lock poisoned");
        let i = w.chunks.partition_point(|(offset, _)| *offset <= pos);
        let (offset, chunk) = w.chunks.get(i.checked_sub(1)?)?;
        let (start, end) = (pos - offset, (to - offset).min(chunk.len() as u64));
        (start < end).then(|| chunk.slice(start as usize..end as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_slices_of_what_it_holds() {
        let recent = NewestBytes::default();
        recent.push(0, Bytes::from_static(b"hello "));
        recent.push(6, Bytes::from_static(b"world"));
        assert_eq!(recent.get(0, 11).unwrap(), "hello ");
        assert_eq!(recent.get(3, 11).unwrap(), "lo ");
        assert_eq!(recent.get(6, 8).unwrap(), "wo", "never past `to`");
        assert_eq!(recent.get(11, 20), None, "not written yet");
    }

    #[test]
    fn forgets_the_oldest_beyond_the_window() {
        let recent = NewestBytes::default();
        let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
        for n in 0..6u64 {
            recent.push(n << 20, chunk.clone());
        }
        assert_eq!(
            recent.get(0, 1),
            None,
            "fell out of the window: read the file"
        );
        assert!(recent.get(2 << 20, 3 << 20).is_some());
        assert_eq!(recent.get(5 << 20, 6 << 20).unwrap().len(), 1 << 20);
    }
}
