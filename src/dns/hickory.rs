//! [`Resolve`] over hickory-resolver, with the system's DNS servers or configured ones.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use super::{DnsError, Resolve, SrvRecord};

pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// `servers` empty: the system configuration (`/etc/resolv.conf`).
    pub fn new(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut builder = if servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    // No /etc/resolv.conf (minimal containers): start anyway; remote
                    // domains then bounce as not found unless a static route covers them.
                    tracing::warn!(error = %e, "cannot read the system DNS configuration");
                    Resolver::builder_with_config(
                        ResolverConfig::from_name_servers(Vec::new()),
                        TokioRuntimeProvider::default(),
                    )
                }
            }
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let inner = builder
            .build()
            .map_err(|e| DnsError::Failed(e.to_string()))?;
        Ok(HickoryResolver { inner })
    }
}

/// Absolute name: no search-domain expansion for remote domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn map_err<T>(e: NetError) -> Result<Vec<T>, DnsError> {
    if e.is_nx_domain() || e.is_no_records_found() {
        Ok(Vec::new())
    } else {
        Err(DnsError::Failed(e.to_string()))
    }
}

#[async_trait]
impl Resolve for HickoryResolver {
    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError> {
        match self.inner.srv_lookup(fqdn(name)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii().trim_end_matches('.').to_string(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) => map_err(e),
        }
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.inner.lookup_ip(fqdn(host)).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) => map_err(e),
        }
    }
}
