//! Per-token rate limits: a token bucket per token id, in this process.
//!
//! Why per instance and not in the database: a shared counter would put a database write in
//! front of every request, reads included, and the limit is there to stop a runaway client,
//! not to meter it exactly. With N instances behind a balancer a token gets at most N times
//! its rate (ADR 0011 records this choice).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per key: `per_minute` steady, `burst` above it.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    capacity: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests a minute with bursts of `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            rate_per_sec: f64::from(per_minute.max(1)) / 60.0,
            capacity: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request for `key` at `now`: `Ok(())`, or `Err(wait)` until one is allowed.
    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() > 100_000 {
            // Drop the full (idle) buckets; an idle bucket refills to full anyway.
            let cap = self.capacity;
            let rate = self.rate_per_sec;
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate_per_sec).min(self.capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - b.tokens;
            Err(Duration::from_secs_f64(missing / self.rate_per_sec))
        }
    }

    /// As [`RateLimiter::check_at`] now.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let r = RateLimiter::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.check_at("a", t0).is_ok());
        }
        let wait = r.check_at("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // another key has its own bucket
        assert!(r.check_at("b", t0).is_ok());
        assert!(r.check_at("a", t0 + Duration::from_secs(1)).is_ok());
        assert!(r.check_at("a", t0 + Duration::from_secs(1)).is_err());
    }
}
