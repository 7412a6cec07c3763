//! The `Range` header of a blob request: whatever parses resolves, for any blob size and cap on
//! parts, to sorted, disjoint, non-adjacent, non-empty spans inside the blob that select exactly
//! the bytes its satisfiable specs select; or to "unsatisfiable" exactly when no spec selects a
//! byte; or to "too many" exactly when the merged spans outnumber the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::range::{self, Resolved, Span};

/// Up to this size, the bytes selected are compared one by one.
const BITMAP_LIMIT: u64 = 1 << 16;

// The input is the blob's size in decimal, a newline, then the header's value.
fuzz_target!(|input: &str| {
    let Some((size, header)) = input.split_once('\n') else {
        return;
    };
    let Ok(size) = size.parse::<u64>() else {
        return;
    };
    let Some(set) = range::parse(header) else {
        return;
    };
    let wanted: Vec<Span> = set.specs().iter().filter_map(|r| r.span(size)).collect();
    for spec in &wanted {
        assert!(
            spec.start < spec.end && spec.end <= size,
            "{header:?} of {size}: {spec:?}"
        );
    }
    let merged = match set.resolve(size, usize::MAX) {
        Resolved::Parts(parts) => parts,
        Resolved::Unsatisfiable => {
            assert!(wanted.is_empty(), "{header:?} of {size}: unsatisfiable");
            return;
        }
        Resolved::TooMany => panic!("{header:?} of {size}: too many parts for no cap"),
    };
    assert!(!wanted.is_empty(), "{header:?} of {size}: parts of nothing");
    for (i, part) in merged.iter().enumerate() {
        assert!(
            part.start < part.end && part.end <= size,
            "{header:?} of {size}: {part:?}"
        );
        if i > 0 {
            assert!(
                merged[i - 1].end < part.start,
                "{header:?} of {size}: {merged:?}"
            );
        }
        // Every part begins and ends where some spec does: it selects nothing around them.
        assert!(
            wanted.iter().any(|s| s.start == part.start),
            "{header:?}: {part:?}"
        );
        assert!(
            wanted.iter().any(|s| s.end == part.end),
            "{header:?}: {part:?}"
        );
    }
    // Every spec lies inside one part: nothing asked for is left out.
    for spec in &wanted {
        assert!(
            merged
                .iter()
                .any(|p| p.start <= spec.start && spec.end <= p.end),
            "{header:?} of {size}: {spec:?} not in {merged:?}"
        );
    }
    // And no part holds a byte no spec asked for.
    if size <= BITMAP_LIMIT {
        let mut asked = vec![false; size as usize];
        for spec in &wanted {
            asked[spec.start as usize..spec.end as usize].fill(true);
        }
        let mut sent = vec![false; size as usize];
        for part in &merged {
            sent[part.start as usize..part.end as usize].fill(true);
        }
        assert!(asked == sent, "{header:?} of {size}: {merged:?}");
    }
    for cap in [1, 2, merged.len(), merged.len().saturating_sub(1)] {
        match set.resolve(size, cap) {
            Resolved::Parts(parts) => assert!(parts == merged && parts.len() <= cap),
            Resolved::TooMany => assert!(merged.len() > cap),
            Resolved::Unsatisfiable => panic!("{header:?} of {size}: satisfiable, then not"),
        }
    }
});
