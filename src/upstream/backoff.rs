//! Respecting an upstream's "slow down": after a 429, no request goes to that upstream until its
//! `Retry-After` has passed. Registries limit per client address, so one 429 speaks for every
//! repository, and asking again early only prolongs the limit.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The wait after a 429 that names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// A bogus `Retry-After` must not silence an upstream for days.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub struct Backoff {
    until: Mutex<Option<Instant>>,
}

impl Backoff {
    /// How long requests must still wait, if they must.
    pub fn remaining(&self) -> Option<Duration> {
        let mut until = self.until.lock().expect("lock poisoned");
        let remaining = until.and_then(|t| t.checked_duration_since(Instant::now()));
        if remaining.is_none() {
            *until = None;
        }
        remaining
    }

    /// Records a 429 with its `Retry-After` header; returns the wait it imposes.
    pub fn limited(&self, retry_after: Option<&str>) -> Duration {
        let wait = retry_after
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        let until = Instant::now() + wait;
        let mut current = self.until.lock().expect("lock poisoned");
        *current = Some(current.map_or(until, |c| c.max(until)));
        wait
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A wait as whole seconds for a `Retry-After` header, rounded up so a client never comes back
/// early.
pub fn as_retry_after(wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(0)),
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60)),
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn a_429_blocks_until_its_retry_after() {
        let backoff = Backoff::default();
        assert_eq!(backoff.remaining(), None);
        assert_eq!(backoff.limited(Some("30")), Duration::from_secs(30));
        let left = backoff.remaining().unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        // A shorter wait does not cut a longer one short.
        backoff.limited(Some("1"));
        assert!(backoff.remaining().unwrap() > Duration::from_secs(29));
    }

    #[test]
    fn missing_or_absurd_values_are_bounded() {
        let backoff = Backoff::default();
        assert_eq!(backoff.limited(None), DEFAULT_WAIT);
        assert_eq!(backoff.limited(Some("garbage")), DEFAULT_WAIT);
        assert_eq!(backoff.limited(Some("99999999")), MAX_WAIT);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(as_retry_after(Duration::from_millis(1500)), "2");
        assert_eq!(as_retry_after(Duration::from_secs(30)), "30");
        assert_eq!(as_retry_after(Duration::ZERO), "1");
    }
}
