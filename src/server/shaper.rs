//! Traffic shaping for one connection: token buckets for bytes and stanzas. A sender over
//! its rate is not cut off; its connection simply stops being read until the buckets
//! refill, so TCP pushes back on it (as ejabberd's shapers do) while everyone else is
//! served.

use std::time::{Duration, Instant};

/// One token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        Bucket {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
    }

    /// Takes `amount` (possibly going into debt); how long until the debt is paid.
    fn take(&mut self, amount: u64) -> Duration {
        self.tokens -= amount as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The limits of one connection's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaperConfig {
    pub bytes_per_sec: u64,
    pub burst_bytes: u64,
    pub stanzas_per_sec: u64,
    pub burst_stanzas: u64,
}

/// Byte and stanza buckets of one connection.
#[derive(Clone, Debug)]
pub struct Shaper {
    bytes: Bucket,
    stanzas: Bucket,
    last: Instant,
}

impl Shaper {
    pub fn new(config: ShaperConfig, now: Instant) -> Self {
        Shaper {
            bytes: Bucket::new(config.bytes_per_sec, config.burst_bytes),
            stanzas: Bucket::new(config.stanzas_per_sec, config.burst_stanzas),
            last: now,
        }
    }

    /// Accounts for what was just read and handled; returns how long to stop reading
    /// (zero while within the limits).
    pub fn charge(&mut self, bytes: usize, stanzas: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.bytes.refill(elapsed);
        self.stanzas.refill(elapsed);
        let by_bytes = self.bytes.take(bytes as u64);
        let by_stanzas = self.stanzas.take(stanzas as u64);
        by_bytes.max(by_stanzas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: ShaperConfig = ShaperConfig {
        bytes_per_sec: 1000,
        burst_bytes: 2000,
        stanzas_per_sec: 10,
        burst_stanzas: 20,
    };

    #[test]
    fn bursts_pass_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut s = Shaper::new(CONFIG, t0);
        assert_eq!(s.charge(2000, 1, t0), Duration::ZERO);
        // 500 bytes over the burst: half a second at 1000 B/s.
        assert_eq!(s.charge(500, 1, t0), Duration::from_millis(500));
        // Paid back after that half second; then another second's worth is free.
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(s.charge(1000, 1, t1), Duration::ZERO);
    }

    #[test]
    fn stanza_floods_are_slowed_too() {
        let t0 = Instant::now();
        let mut s = Shaper::new(CONFIG, t0);
        assert_eq!(s.charge(20, 20, t0), Duration::ZERO);
        assert_eq!(s.charge(1, 5, t0), Duration::from_millis(500));
    }

    #[test]
    fn idle_time_saves_no_more_than_the_burst() {
        let t0 = Instant::now();
        let mut s = Shaper::new(CONFIG, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(s.charge(2000, 0, later), Duration::ZERO);
        assert!(s.charge(1000, 0, later) > Duration::ZERO);
    }
}
