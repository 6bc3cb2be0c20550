//! Failed-authentication throttling per client address, shared by all its connections.
//!
//! `limits.max_auth_attempts` only limits one connection, so a guesser simply opens another.
//! This tracker counts failures per address (an IPv4 address, or an IPv6 /64, which one host
//! usually has to itself) and tells the caller how long to hold back the `<failure/>` and
//! whether to close the stream. Memory is bounded: an address is forgotten after a window
//! without failures, and at most `max_tracked` addresses are kept (the least recently
//! failing ones go first when that fills up).
//!
//! Success does not reset the count: an attacker holding one valid account could otherwise
//! wipe it between guesses at others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Limits;

/// The tracker's settings (from the `[limits]` section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures from one address answered without delay.
    pub free_failures: u32,
    /// Delay of the first delayed failure; it doubles with each further one.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Failures after which each further one closes its stream.
    pub max_failures: u32,
    /// An address is forgotten after this long without a failure.
    pub window: Duration,
    /// Most addresses tracked at once.
    pub max_tracked: usize,
}

impl ThrottleConfig {
    pub fn from_limits(l: &Limits) -> Self {
        ThrottleConfig {
            free_failures: l.ip_auth_failures_before_delay,
            base_delay: Duration::from_millis(l.ip_auth_failure_delay_ms),
            max_delay: Duration::from_millis(l.ip_auth_failure_max_delay_ms),
            max_failures: l.ip_auth_failures_max,
            window: Duration::from_secs(l.ip_auth_failure_window_secs),
            max_tracked: l.ip_auth_tracked_max.max(1),
        }
    }
}

/// What to do about one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Failures counted for the address, this one included.
    pub failures: u32,
    /// How long to hold back the `<failure/>`.
    pub delay: Duration,
    /// Close the stream after the `<failure/>` (`policy-violation`).
    pub close: bool,
}

/// An IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl Key {
    fn of(ip: IpAddr) -> Key {
        // IPv4-mapped IPv6 (dual-stack sockets) counts as the IPv4 address it is.
        match ip.to_canonical() {
            IpAddr::V4(a) => Key::V4(u32::from(a)),
            IpAddr::V6(a) => Key::V6((u128::from(a) >> 64) as u64),
        }
    }
}

struct Entry {
    failures: u32,
    last: Instant,
}

/// Per-address failure counts; shared by all connections (one per server).
pub struct AuthThrottle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl AuthThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        AuthThrottle {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failed authentication from `ip` at `now` and says how to answer it.
    pub fn failure(&self, ip: IpAddr, now: Instant) -> Verdict {
        let key = Key::of(ip);
        // A panic elsewhere while holding the lock leaves only counts behind: still usable.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let failures = match entries.get_mut(&key) {
            Some(e) => {
                if now.saturating_duration_since(e.last) >= self.config.window {
                    e.failures = 0;
                }
                e.failures = e.failures.saturating_add(1);
                e.last = now;
                e.failures
            }
            None => {
                if entries.len() >= self.config.max_tracked {
                    self.make_room(&mut entries, now);
                }
                entries.insert(
                    key,
                    Entry {
                        failures: 1,
                        last: now,
                    },
                );
                1
            }
        };
        Verdict {
            failures,
            delay: self.delay_for(failures),
            close: failures > self.config.max_failures,
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn delay_for(&self, failures: u32) -> Duration {
        let Some(over) = failures.checked_sub(self.config.free_failures.saturating_add(1)) else {
            return Duration::ZERO;
        };
        // 2^over, saturating: any sane cap is reached long before 2^31.
        let factor = 1u32 << over.min(31);
        self.config
            .base_delay
            .saturating_mul(factor)
            .min(self.config.max_delay)
    }

    /// Called when full: drops expired entries, then, if still full, the least recently
    /// failing tenth at once, so that this pass over all entries stays rare.
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let window = self.config.window;
        entries.retain(|_, e| now.saturating_duration_since(e.last) < window);
        let max = self.config.max_tracked;
        if entries.len() < max {
            return;
        }
        let keep = max - max.div_ceil(10);
        let drop = entries.len() - keep;
        let mut lasts: Vec<Instant> = entries.values().map(|e| e.last).collect();
        let (_, cutoff, _) = lasts.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        // Ties at the cutoff go too: more room, never less.
        entries.retain(|_, e| e.last > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            free_failures: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            max_failures: 6,
            window: Duration::from_secs(60),
            max_tracked: 10,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delays_double_up_to_the_cap_then_the_stream_is_closed() {
        let t = AuthThrottle::new(config());
        let now = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let verdicts: Vec<(u32, Duration, bool)> = (0..8)
            .map(|_| {
                let v = t.failure(ip("192.0.2.1"), now);
                (v.failures, v.delay, v.close)
            })
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (1, ms(0), false),
                (2, ms(0), false),
                (3, ms(100), false),
                (4, ms(200), false),
                (5, ms(350), false),
                (6, ms(350), false),
                (7, ms(350), true),
                (8, ms(350), true),
            ]
        );
        // Another address is not affected.
        assert_eq!(t.failure(ip("192.0.2.2"), now).failures, 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = AuthThrottle::new(config());
        let now = Instant::now();
        t.failure(ip("2001:db8:1:2::1"), now);
        assert_eq!(t.failure(ip("2001:db8:1:2:ffff::9"), now).failures, 2);
        assert_eq!(t.failure(ip("2001:db8:1:3::1"), now).failures, 1);
        t.failure(ip("198.51.100.7"), now);
        assert_eq!(t.failure(ip("::ffff:198.51.100.7"), now).failures, 2);
        assert_eq!(t.failure(ip("198.51.100.8"), now).failures, 1);
    }

    #[test]
    fn count_restarts_after_a_quiet_window() {
        let t = AuthThrottle::new(config());
        let start = Instant::now();
        for _ in 0..5 {
            t.failure(ip("192.0.2.1"), start);
        }
        let later = start + Duration::from_secs(59);
        assert_eq!(t.failure(ip("192.0.2.1"), later).failures, 6);
        // Each failure renews the window; a full window of quiet forgets them all.
        let v = t.failure(ip("192.0.2.1"), later + Duration::from_secs(60));
        assert_eq!((v.failures, v.delay, v.close), (1, Duration::ZERO, false));
    }

    #[test]
    fn memory_is_bounded_and_expired_or_oldest_entries_go_first() {
        let t = AuthThrottle::new(config());
        let start = Instant::now();
        for i in 0..10u32 {
            t.failure(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), start);
        }
        assert_eq!(t.tracked(), 10);
        // Full, nothing expired: the oldest tenth makes room for the newcomer.
        let t1 = start + Duration::from_secs(1);
        t.failure(ip("10.0.0.9"), t1); // renews one entry
        t.failure(ip("192.0.2.1"), t1);
        assert!(t.tracked() <= 10, "{}", t.tracked());
        assert_eq!(
            t.failure(ip("10.0.0.9"), t1).failures,
            3,
            "recent entry kept"
        );
        assert_eq!(t.failure(ip("192.0.2.1"), t1).failures, 2, "newcomer kept");
        // Many addresses over time never grow the table past its cap.
        for i in 0..1000u32 {
            let now = t1 + Duration::from_millis(u64::from(i));
            t.failure(IpAddr::from((0xc633_6400 + i).to_be_bytes()), now);
            assert!(t.tracked() <= 10);
        }
        // After the window everything old is expired and dropped on the next insert.
        let much_later = t1 + Duration::from_secs(120);
        t.failure(ip("203.0.113.1"), much_later);
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn from_limits_uses_the_limits_section() {
        let l = Limits::default();
        let c = ThrottleConfig::from_limits(&l);
        assert_eq!(c.free_failures, l.ip_auth_failures_before_delay);
        assert_eq!(c.max_failures, l.ip_auth_failures_max);
        assert_eq!(c.max_tracked, l.ip_auth_tracked_max);
        assert_eq!(
            c.base_delay,
            Duration::from_millis(l.ip_auth_failure_delay_ms)
        );
        assert_eq!(
            c.max_delay,
            Duration::from_millis(l.ip_auth_failure_max_delay_ms)
        );
        assert_eq!(c.window, Duration::from_secs(l.ip_auth_failure_window_secs));
    }
}
