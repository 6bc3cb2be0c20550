//! Connection limits, per IP address and in total, held by RAII permits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnectionLimits {
    per_ip: usize,
    total: usize,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Releases its slot when dropped.
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(per_ip: usize, total: usize) -> Self {
        ConnectionLimits {
            per_ip,
            total,
            state: Mutex::new(Counts::default()),
        }
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let current = s.by_ip.get(&ip).copied().unwrap_or(0);
        if current >= self.per_ip || s.total >= self.total {
            return None;
        }
        s.total += 1;
        s.by_ip.insert(ip, current + 1);
        Some(Permit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits_release_on_drop() {
        let limits = Arc::new(ConnectionLimits::new(2, 3));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.try_acquire(a).unwrap();
        let _p2 = limits.try_acquire(a).unwrap();
        assert!(limits.try_acquire(a).is_none());
        let _p3 = limits.try_acquire(b).unwrap();
        assert!(limits.try_acquire(b).is_none(), "total limit");
        drop(p1);
        assert!(limits.try_acquire(a).is_some());
    }
}
