//! The newest bytes of a fill, kept in memory for a moment. Readers at the head of a fill take
//! them from here (a reference, no copy) instead of reading back from the temp file what just
//! passed through wharf. The file stays the source of truth: a reader that falls behind this
//! window reads the file, so memory per fill stays bounded however many clients wait on it. The
//! window is bounded by the buffer memory its chunks hold, not by their payload.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of buffer memory a fill's window may hold, shared by all its readers: two of the
/// writer's buffers. A reader further behind sends from the page cache instead (`sendfile`
/// where it can), which costs a lookup, not memory held for every fill.
const KEEP: usize = 1024 * 1024;

#[derive(Default)]
pub struct NewestBytes {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// (offset in the blob, bytes, the buffer memory they hold), in order and contiguous.
    chunks: VecDeque<(u64, Bytes, usize)>,
    /// The memory all of them hold.
    held: usize,
}

impl NewestBytes {
    /// Adds the chunk written at `offset`, which holds `held` bytes of memory, forgetting the
    /// oldest beyond the window.
    pub fn push(&self, offset: u64, chunk: Bytes, held: usize) {
        if chunk.is_empty() {
            return;
        }
        let mut w = self.window.lock().expect("lock poisoned");
        w.held += held;
        w.chunks.push_back((offset, chunk, held));
        while w.held > KEEP && w.chunks.len() > 1 {
            let (_, _, old) = w.chunks.pop_front().expect("more than one chunk");
            w.held -= old;
        }
    }

    /// Lets go of everything: once a fill has ended, its readers read the file.
    pub fn clear(&self) {
        let mut w = self.window.lock().expect("lock poisoned");
        w.chunks.clear();
        w.held = 0;
    }

    /// The bytes from `pos` (up to `to`, exclusive) that the window holds in one piece, if any.
    pub fn get(&self, pos: u64, to: u64) -> Option<Bytes> {
        let w = self.window.lock().expect("lock poisoned");
        let i = w.chunks.partition_point(|(offset, _, _)| *offset <= pos);
        let (offset, chunk, _) = w.chunks.get(i.checked_sub(1)?)?;
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
        recent.push(0, Bytes::from_static(b"hello "), 6);
        recent.push(6, Bytes::from_static(b"world"), 5);
        assert_eq!(recent.get(0, 11).unwrap(), "hello ");
        assert_eq!(recent.get(3, 11).unwrap(), "lo ");
        assert_eq!(recent.get(6, 8).unwrap(), "wo", "never past `to`");
        assert_eq!(recent.get(11, 20), None, "not written yet");
    }

    #[test]
    fn forgets_the_oldest_beyond_the_window() {
        let recent = NewestBytes::default();
        // Six chunks of a quarter of the window each: the first two fall out.
        let len = KEEP as u64 / 4;
        let chunk = Bytes::from(vec![0u8; len as usize]);
        for n in 0..6u64 {
            recent.push(n * len, chunk.clone(), len as usize);
        }
        assert_eq!(
            recent.get(0, 1),
            None,
            "fell out of the window: read the file"
        );
        assert_eq!(recent.get(len, 2 * len), None);
        assert!(recent.get(2 * len, 3 * len).is_some());
        assert_eq!(recent.get(5 * len, 6 * len).unwrap().len() as u64, len);
    }

    #[test]
    fn is_bounded_by_the_memory_its_chunks_hold() {
        let recent = NewestBytes::default();
        // Small payloads in large buffers: the buffers count.
        let buffer = KEEP / 4;
        for n in 0..16u64 {
            recent.push(n * 1024, Bytes::from(vec![0u8; 1024]), buffer);
        }
        let w = recent.window.lock().unwrap();
        assert_eq!(w.chunks.len(), 4);
        assert_eq!(w.held, KEEP);
    }
}
