//! The pull quota an upstream announces with its answers, as Docker Hub does:
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (pulls, and the window
//! in seconds). Kept in gauges per upstream.

use reqwest::header::HeaderMap;

use crate::metrics::Metrics;

/// A quota header's count and window: `76;w=21600` is `(76, Some(21600))`.
fn parse(value: &str) -> Option<(i64, Option<i64>)> {
    let mut parts = value.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| p.trim().strip_prefix("w=")?.parse().ok());
    Some((count, window))
}

/// Sets `upstream`'s quota gauges from an answer's headers, if it carries them.
pub fn observe(metrics: &Metrics, upstream: &str, headers: &HeaderMap) {
    let read = |name: &str| parse(headers.get(name)?.to_str().ok()?);
    let (limit, remaining) = (read("ratelimit-limit"), read("ratelimit-remaining"));
    if limit.is_some() || remaining.is_some() {
        metrics
            .quota
            .observe(upstream, limit, remaining.map(|(count, _)| count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_quota_headers() {
        assert_eq!(parse("100;w=21600"), Some((100, Some(21600))));
        assert_eq!(parse(" 76 ; w=21600 "), Some((76, Some(21600))));
        assert_eq!(parse("5000"), Some((5000, None)));
        assert_eq!(parse("lots"), None);
        let metrics = Metrics::new();
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        headers.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        observe(&metrics, "docker.io", &headers);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("wharf_upstream_quota_remaining{upstream=\"docker.io\"} 76"),
            "{text}"
        );
        assert!(text.contains("wharf_upstream_quota_window_seconds{upstream=\"docker.io\"} 21600"));
        let seen = metrics.quota.seen();
        assert_eq!(seen.len(), 1);
        let (upstream, seen) = &seen[0];
        assert_eq!(upstream, "docker.io");
        assert_eq!(
            (seen.limit, seen.remaining, seen.window_seconds),
            (Some(100), Some(76), Some(21600))
        );
    }
}
