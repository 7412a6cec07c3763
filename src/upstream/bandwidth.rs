//! A cap on the bytes per second taken from one upstream, shared by every request to it: a
//! token bucket holding up to one second of bytes, which readers may overdraw and then wait
//! off, each for the debt its own chunk made.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Bandwidth {
    /// Bytes per second.
    rate: f64,
    /// Bytes that may be read now (negative: owed), as of an instant.
    bucket: Mutex<(f64, Instant)>,
}

impl Bandwidth {
    pub fn new(bytes_per_second: u64) -> Bandwidth {
        let rate = bytes_per_second.max(1) as f64;
        Bandwidth {
            rate,
            bucket: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes `bytes` just read; how long the reader should wait before reading more.
    pub fn take(&self, bytes: u64) -> Duration {
        let mut bucket = self.bucket.lock().expect("lock poisoned");
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * self.rate;
        bucket.0 = (bucket.0 + refill).min(self.rate) - bytes as f64;
        bucket.1 = now;
        if bucket.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.0 / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_bytes_is_free_then_the_rate_applies() {
        let cap = Bandwidth::new(1000);
        assert_eq!(cap.take(1000), Duration::ZERO);
        let wait = cap.take(500);
        assert!(wait > Duration::from_millis(490) && wait <= Duration::from_millis(500));
        // Two readers share the debt: the second waits for both chunks.
        let wait = cap.take(500);
        assert!(wait > Duration::from_millis(990) && wait <= Duration::from_millis(1000));
    }
}
