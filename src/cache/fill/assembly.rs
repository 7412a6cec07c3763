//! A blob put together from pieces that may arrive out of order (segments fetched in parallel),
//! hashed strictly in order: bytes at the end of the contiguous prefix are hashed as they come;
//! bytes further on are only written, and hashed by reading them back (from the page cache,
//! where they just went) once the prefix reaches them. So the digest covers every byte once and
//! in order, the disk sees each byte once, and memory holds none of the pieces.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::oci::Verifier;

/// Bytes read back at a time to hash what the prefix reached.
const READ_BACK: usize = 1024 * 1024;

pub struct Assembly {
    verifier: Verifier,
    /// The contiguous prefix from byte 0: written, and hashed.
    prefix: u64,
    /// Pieces written beyond the prefix, `start → end`, disjoint and not touching.
    ahead: BTreeMap<u64, u64>,
    read_back: Vec<u8>,
}

impl Assembly {
    pub fn new(verifier: Verifier) -> Assembly {
        Assembly {
            verifier,
            prefix: 0,
            ahead: BTreeMap::new(),
            read_back: Vec::new(),
        }
    }

    /// The contiguous prefix: what readers may read.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// Records `chunk`, already written at `offset` in `file`, and hashes what became
    /// contiguous. Whether the chunk itself lay at the end of the prefix (the sequential case).
    pub fn add(&mut self, offset: u64, chunk: &[u8], file: &File) -> io::Result<bool> {
        let end = offset + chunk.len() as u64;
        if offset == self.prefix {
            self.verifier.update(chunk);
            self.prefix = end;
            self.absorb(file)?;
            return Ok(true);
        }
        if end > self.prefix {
            self.insert(offset.max(self.prefix), end);
            self.absorb(file)?;
        }
        Ok(false)
    }

    /// Adds `start..end` to the pieces ahead, merging it with those it overlaps or touches.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.ahead.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ahead.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.ahead.range(start..).next() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.ahead.remove(&s);
        }
        self.ahead.insert(start, end);
    }

    /// Hashes the pieces ahead that the prefix now reaches, reading them back from `file`.
    fn absorb(&mut self, file: &File) -> io::Result<()> {
        while let Some((&start, &end)) = self.ahead.first_key_value() {
            if start > self.prefix {
                return Ok(());
            }
            self.ahead.remove(&start);
            if self.read_back.is_empty() {
                self.read_back = vec![0; READ_BACK];
            }
            while self.prefix < end {
                let len = ((end - self.prefix) as usize).min(READ_BACK);
                file.read_exact_at(&mut self.read_back[..len], self.prefix)?;
                self.verifier.update(&self.read_back[..len]);
                self.prefix += len as u64;
            }
        }
        Ok(())
    }

    /// The hash of the whole blob and its length, or `None` if a piece lies beyond a gap (the
    /// feeder finished without sending every byte).
    pub fn finish(self) -> Option<(Verifier, u64)> {
        self.ahead
            .is_empty()
            .then_some((self.verifier, self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::oci::{Algorithm, Digest};

    fn sha256(bytes: &[u8]) -> Digest {
        Digest::sha256_of(bytes)
    }

    /// Writes `pieces` of `blob` into a file in the given order, as the writer does.
    fn assemble(blob: &[u8], pieces: &[(usize, usize)]) -> (Option<(Digest, u64)>, Vec<u64>) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![0; blob.len()]).unwrap();
        let mut assembly = Assembly::new(Verifier::new(Algorithm::Sha256));
        let mut prefixes = Vec::new();
        for &(start, end) in pieces {
            file.write_all_at(&blob[start..end], start as u64).unwrap();
            assembly
                .add(start as u64, &blob[start..end], &file)
                .unwrap();
            prefixes.push(assembly.prefix());
        }
        let done = assembly.finish().map(|(v, len)| (v.finish(), len));
        (done, prefixes)
    }

    #[test]
    fn pieces_in_order_hash_as_they_come() {
        let blob: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let (done, prefixes) = assemble(&blob, &[(0, 300), (300, 1000)]);
        assert_eq!(done, Some((sha256(&blob), 1000)));
        assert_eq!(prefixes, [300, 1000]);
    }

    #[test]
    fn pieces_out_of_order_are_hashed_once_the_prefix_reaches_them() {
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let pieces = [
            (2_000_000, 2_500_000),
            (1_000_000, 1_500_000),
            (0, 600_000),
            (2_500_000, 3_000_000),
            (600_000, 1_000_000),
            (1_500_000, 2_000_000),
        ];
        let (done, prefixes) = assemble(&blob, &pieces);
        assert_eq!(done, Some((sha256(&blob), 3_000_000)));
        assert_eq!(prefixes, [0, 0, 600_000, 600_000, 1_500_000, 3_000_000]);
    }

    #[test]
    fn a_gap_at_the_end_is_not_a_blob() {
        let blob = vec![1u8; 100];
        let (done, _) = assemble(&blob, &[(0, 10), (20, 100)]);
        assert_eq!(done, None);
    }

    proptest::proptest! {
        /// However a blob is cut into pieces and in whatever order they are written, the
        /// assembly hashes exactly the blob.
        #[test]
        fn any_order_of_any_pieces_hashes_the_blob(
            len in 1usize..5000,
            cuts in proptest::collection::vec(0usize..5000, 0..12),
            order in proptest::collection::vec(0usize..1000, 13),
        ) {
            let blob: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < len).collect();
            bounds.extend([0, len]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
            // A permutation driven by `order`.
            let n = pieces.len();
            for (i, &o) in order.iter().enumerate().take(n) {
                pieces.swap(i, o % n);
            }
            let (done, _) = assemble(&blob, &pieces);
            proptest::prop_assert_eq!(done, Some((sha256(&blob), len as u64)));
        }
    }
}
