//! Per-client request rate limits: a token bucket per source address, refilled at `rate` per
//! second up to `burst`. Buckets of clients that went quiet are forgotten, and the table is
//! bounded, so a flood of source addresses costs bounded memory.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::RateLimit;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `None` when the configuration sets no limit.
    pub fn new(config: &RateLimit) -> Option<RateLimiter> {
        (config.requests_per_second > 0.0).then(|| RateLimiter {
            rate: config.requests_per_second,
            burst: f64::from(config.burst.max(1)),
            buckets: Cache::builder()
                .max_capacity(100_000)
                // A bucket idle this long is full again anyway.
                .time_to_idle(Duration::from_secs_f64(
                    (f64::from(config.burst.max(1)) / config.requests_per_second)
                        .clamp(1.0, 3600.0),
                ))
                .build(),
        })
    }

    /// Takes a token for `client`, or says how long until one is there.
    pub fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let bucket = self.buckets.get_with(client, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                at: Instant::now(),
            }))
        });
        let mut bucket = bucket.lock().expect("lock poisoned");
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(&RateLimit {
            requests_per_second: 10.0,
            burst: 3,
        })
        .unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.take(a).is_ok());
        }
        let wait = limiter.take(a).unwrap_err();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100));
        // Another client has its own bucket.
        assert!(limiter.take(b).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take(a).is_ok());
    }

    #[test]
    fn no_rate_no_limiter() {
        assert!(RateLimiter::new(&RateLimit::default()).is_none());
    }
}
