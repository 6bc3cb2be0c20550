//! Finding the servers of a remote domain (RFC 6120 §3.2, XEP-0368): static routes first,
//! then SRV records for `_xmpps-server._tcp` (Direct TLS) and `_xmpp-server._tcp`
//! (STARTTLS) merged by priority and weight, then the domain's own A/AAAA on port 5269.
//!
//! Lookups go through the [`Resolve`] trait so the ordering logic is testable without a
//! DNS server; [`hickory::HickoryResolver`] is the production implementation.

pub mod hickory;

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use rand::Rng;

/// Default port of the `xmpp-server` service (RFC 6120 §3.2.2).
pub const DEFAULT_S2S_PORT: u16 = 5269;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Host name, without a trailing dot; "." (or empty) means "service not offered".
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The domain does not exist or offers no XMPP service.
    #[error("domain not found")]
    NotFound,
    /// The lookup itself failed (timeout, SERVFAIL, no DNS server reachable).
    #[error("DNS lookup failed: {0}")]
    Failed(String),
}

/// What the s2s code needs from DNS.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// SRV records at `name` (e.g. `_xmpp-server._tcp.example.org`); `Ok(vec![])` when the
    /// name has none or does not exist.
    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError>;
    /// A and AAAA addresses of `host`; `Ok(vec![])` when it has none.
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
}

/// One place to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// The ordered list of targets for `domain`.
///
/// `Err(NotFound)` when SRV says the service is decidedly not offered; a domain without
/// SRV records yields the A/AAAA fallback, whose absence shows only when connecting.
pub async fn targets(
    resolver: &dyn Resolve,
    routes: &BTreeMap<String, String>,
    domain: &str,
) -> Result<Vec<Target>, DnsError> {
    if let Some(route) = routes.get(domain) {
        let (host, port) = crate::config::check_host_port(route).map_err(DnsError::Failed)?;
        return Ok(vec![Target {
            host,
            port,
            direct_tls: false,
        }]);
    }
    let direct_name = format!("_xmpps-server._tcp.{domain}");
    let starttls_name = format!("_xmpp-server._tcp.{domain}");
    let (direct, starttls) = tokio::join!(resolver.srv(&direct_name), resolver.srv(&starttls_name));
    if let (Err(e), Err(_)) = (&direct, &starttls) {
        return Err(e.clone());
    }
    let mut records = Vec::new();
    let mut not_offered = false;
    for (result, direct_tls) in [(direct, true), (starttls, false)] {
        let Ok(list) = result else { continue };
        for r in list {
            if r.target.is_empty() || r.target == "." {
                not_offered = true;
                continue;
            }
            records.push((r, direct_tls));
        }
    }
    if records.is_empty() {
        if not_offered {
            return Err(DnsError::NotFound);
        }
        return Ok(vec![Target {
            host: domain.to_string(),
            port: DEFAULT_S2S_PORT,
            direct_tls: false,
        }]);
    }
    Ok(order(records, &mut rand::rng()))
}

/// RFC 2782 ordering: ascending priority; within a priority, a weighted random order
/// (zero-weight records first in the list, so they are picked rarely). Records of equal
/// priority and weight keep Direct TLS first (XEP-0368 §3).
pub fn order(mut records: Vec<(SrvRecord, bool)>, rng: &mut impl Rng) -> Vec<Target> {
    records.sort_by(|(a, ad), (b, bd)| {
        a.priority
            .cmp(&b.priority)
            .then(a.weight.cmp(&b.weight))
            .then(bd.cmp(ad))
    });
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some((first, _)) = rest.first() {
        let n = rest
            .iter()
            .take_while(|(r, _)| r.priority == first.priority)
            .count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let mut group: Vec<&(SrvRecord, bool)> = group.iter().collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|(r, _)| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut running = 0u32;
            let idx = group
                .iter()
                .position(|(r, _)| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            let (r, direct_tls) = group.remove(idx);
            out.push(Target {
                host: r.target.trim_end_matches('.').to_string(),
                port: r.port,
                direct_tls: *direct_tls,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        srv: HashMap<String, Result<Vec<SrvRecord>, DnsError>>,
    }

    #[async_trait]
    impl Resolve for Fake {
        async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError> {
            self.srv.get(name).cloned().unwrap_or(Ok(vec![]))
        }
        async fn ips(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
            Ok(vec![])
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[tokio::test]
    async fn merges_both_services_by_priority() {
        let mut f = Fake::default();
        f.srv.insert(
            "_xmpp-server._tcp.a.example".into(),
            Ok(vec![
                srv(10, 0, 5269, "b.example."),
                srv(5, 0, 15269, "c.example"),
            ]),
        );
        f.srv.insert(
            "_xmpps-server._tcp.a.example".into(),
            Ok(vec![srv(7, 0, 5270, "d.example")]),
        );
        let t = targets(&f, &BTreeMap::new(), "a.example").await.unwrap();
        let got: Vec<_> = t
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.direct_tls))
            .collect();
        assert_eq!(
            got,
            vec![
                ("c.example", 15269, false),
                ("d.example", 5270, true),
                ("b.example", 5269, false)
            ]
        );
    }

    #[tokio::test]
    async fn falls_back_to_domain_and_honours_dot_and_routes() {
        let f = Fake::default();
        let t = targets(&f, &BTreeMap::new(), "a.example").await.unwrap();
        assert_eq!(
            t,
            vec![Target {
                host: "a.example".into(),
                port: 5269,
                direct_tls: false
            }]
        );
        let mut f = Fake::default();
        f.srv.insert(
            "_xmpp-server._tcp.a.example".into(),
            Ok(vec![srv(0, 0, 0, ".")]),
        );
        assert_eq!(
            targets(&f, &BTreeMap::new(), "a.example").await,
            Err(DnsError::NotFound)
        );
        let mut routes = BTreeMap::new();
        routes.insert("a.example".to_string(), "127.0.0.9:1234".to_string());
        let t = targets(&f, &routes, "a.example").await.unwrap();
        assert_eq!(t[0].host, "127.0.0.9");
        assert_eq!(t[0].port, 1234);
    }

    #[tokio::test]
    async fn both_lookups_failing_is_an_error() {
        let mut f = Fake::default();
        for n in [
            "_xmpp-server._tcp.a.example",
            "_xmpps-server._tcp.a.example",
        ] {
            f.srv
                .insert(n.into(), Err(DnsError::Failed("timeout".into())));
        }
        assert!(matches!(
            targets(&f, &BTreeMap::new(), "a.example").await,
            Err(DnsError::Failed(_))
        ));
    }

    #[test]
    fn weights_are_respected_statistically() {
        let mut rng = rand::rng();
        let mut heavy_first = 0;
        for _ in 0..1000 {
            let recs = vec![
                (srv(1, 90, 1, "heavy"), false),
                (srv(1, 10, 2, "light"), false),
                (srv(0, 0, 3, "top"), false),
            ];
            let t = order(recs, &mut rng);
            assert_eq!(t[0].host, "top");
            assert_eq!(t.len(), 3);
            if t[1].host == "heavy" {
                heavy_first += 1;
            }
        }
        assert!((800..=980).contains(&heavy_first), "{heavy_first}");
    }
}
