//! Server-to-server federation (RFC 6120, XEP-0178 SASL EXTERNAL, XEP-0220 Server
//! Dialback, XEP-0368 Direct TLS).
//!
//! [`S2s`] owns one outbound stream per (local domain, remote domain) pair: the first
//! stanza for a pair spawns its task, which resolves (`dns`), connects, secures and
//! authenticates the stream while later stanzas wait in a bounded queue. When the domain
//! cannot be reached every queued stanza is bounced to its sender, and the failure is
//! remembered for a backoff period during which new stanzas are bounced at once. Idle
//! streams close; the next stanza opens a new one.
//!
//! Inbound streams ([`serve_inbound`]) authenticate the sending domain with SASL EXTERNAL
//! when its certificate is valid, or with dialback (verified over a connection of our own
//! to the authoritative server), then route its stanzas like local ones.

pub mod dialback;
mod inbound;
mod outbound;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::Config;
use crate::context::Context;
use crate::dns::Resolve;
use crate::net::tls::TlsContext;
use crate::net::verify::TrustStore;
use crate::router::route_reply;
use crate::stream::StanzaError;
use crate::xml::Element;

pub use dialback::Secret;
pub use inbound::serve as serve_inbound;
pub use outbound::{AuthMethod, Failure};

type Pair = (String, String);

struct Route {
    id: u64,
    tx: mpsc::Sender<Element>,
}

struct Backoff {
    failure: Failure,
    until: Instant,
    count: u32,
}

impl Backoff {
    fn forgotten(&self, now: Instant) -> bool {
        now >= self.until + FAILURE_MEMORY
    }
}

/// Longest wait before a failed domain is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a failure is remembered after its backoff ended (to lengthen the next
/// backoff if the domain fails again); then it is forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Remote domains with a remembered failure, at most: stanzas to ever new unreachable
/// domains must not grow the map without bound.
const MAX_FAILURES: usize = 10_000;

/// How an outbound stream was set up (for logs, tests and the report).
#[derive(Clone, Debug)]
pub struct Established {
    pub local: String,
    pub remote: String,
    pub method: AuthMethod,
    pub setup: Duration,
}

/// A remote domain authenticated on an inbound stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundAuth {
    pub remote: String,
    pub local: String,
    /// "SASL EXTERNAL", "dialback" or "dialback (certificate)".
    pub method: &'static str,
}

pub struct S2s {
    pub(crate) config: Config,
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) trust: TrustStore,
    pub(crate) tls: TlsContext,
    pub(crate) secret: Secret,
    routes: Mutex<HashMap<Pair, Route>>,
    failures: Mutex<HashMap<Pair, Backoff>>,
    client_configs: Mutex<HashMap<(String, bool), Arc<rustls::ClientConfig>>>,
    established: Mutex<Vec<Established>>,
    inbound_log: Mutex<Vec<InboundAuth>>,
    /// Inbound streams that authenticated each remote domain, now.
    inbound_streams: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation, so a poisoned map is consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl S2s {
    /// Builds the federation service from the configuration: DNS resolver, trust store and
    /// dialback secret.
    pub fn new(
        config: &Config,
        tls: TlsContext,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<S2s, String> {
        let resolver = crate::dns::hickory::HickoryResolver::new(&config.s2s.dns_servers)
            .map_err(|e| format!("s2s DNS resolver: {e}"))?;
        let trust = TrustStore::load(config.s2s.ca_file.as_deref())
            .map_err(|e| format!("s2s.ca_file: {e}"))?;
        let secret = Secret::load(config.s2s.dialback_secret.as_deref(), &config.data_dir)
            .map_err(|e| format!("dialback secret: {e}"))?;
        Ok(S2s::with_parts(
            config,
            tls,
            Arc::new(resolver),
            trust,
            secret,
            shutdown,
            tracker,
        ))
    }

    pub fn with_parts(
        config: &Config,
        tls: TlsContext,
        resolver: Arc<dyn Resolve>,
        trust: TrustStore,
        secret: Secret,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> S2s {
        S2s {
            config: config.clone(),
            resolver,
            trust,
            tls,
            secret,
            routes: Mutex::default(),
            failures: Mutex::default(),
            client_configs: Mutex::default(),
            established: Mutex::default(),
            inbound_log: Mutex::default(),
            inbound_streams: Mutex::default(),
            next_id: AtomicU64::new(1),
            shutdown,
            tracker,
        }
    }

    /// Sends a stanza whose `from` is local to a remote domain, bouncing it if that is not
    /// possible.
    pub async fn send(self: &Arc<Self>, ctx: &Arc<Context>, remote: &str, stanza: Element) {
        let local = stanza
            .attr("from")
            .and_then(crate::addr::parse)
            .map(|from| from.domain().as_str().to_string())
            .filter(|d| ctx.is_hosted_domain(d));
        let Some(local) = local else {
            debug!(
                remote,
                "stanza for a remote domain without a local sender; dropped"
            );
            return;
        };
        let pair = (local, remote.to_string());
        if let Some(failure) = self.backing_off(&pair) {
            bounce(ctx, &stanza, &failure).await;
            return;
        }
        if let Some(rejected) = self.enqueue(ctx, pair, stanza) {
            route_reply(
                ctx,
                &rejected,
                StanzaError::resource_constraint()
                    .with_text("too many stanzas queued for this domain"),
            )
            .await;
        }
    }

    /// Puts the stanza on the pair's queue, starting its stream task if there is none;
    /// gives the stanza back when the queue is full.
    fn enqueue(
        self: &Arc<Self>,
        ctx: &Arc<Context>,
        pair: Pair,
        stanza: Element,
    ) -> Option<Element> {
        let mut routes = lock(&self.routes);
        let stanza = match routes.get(&pair) {
            Some(route) => match route.tx.try_send(stanza) {
                Ok(()) => return None,
                Err(TrySendError::Full(s)) => return Some(s),
                // Its task is ending: start a new one.
                Err(TrySendError::Closed(s)) => s,
            },
            None => stanza,
        };
        let (tx, rx) = mpsc::channel(self.config.s2s.queue_len.max(1));
        if let Err(e) = tx.try_send(stanza) {
            return Some(e.into_inner());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        routes.insert(pair.clone(), Route { id, tx });
        self.tracker.spawn(outbound::run(
            ctx.clone(),
            self.clone(),
            pair.0,
            pair.1,
            id,
            rx,
        ));
        None
    }

    /// Forgets the pair's queue if it still belongs to task `id`.
    fn remove_route(&self, pair: &Pair, id: u64) {
        let mut routes = lock(&self.routes);
        if routes.get(pair).is_some_and(|r| r.id == id) {
            routes.remove(pair);
        }
    }

    /// The failure to bounce with while the pair is backing off.
    fn backing_off(&self, pair: &Pair) -> Option<Failure> {
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        let backoff = failures.get(pair)?;
        if now < backoff.until {
            return Some(backoff.failure.clone());
        }
        if backoff.forgotten(now) {
            failures.remove(pair);
        }
        None
    }

    fn record_failure(&self, pair: &Pair, failure: Failure) {
        self.record_failure_at(pair, failure, Instant::now());
    }

    fn record_failure_at(&self, pair: &Pair, failure: Failure, now: Instant) {
        let mut failures = lock(&self.failures);
        let count = failures
            .get(pair)
            .filter(|b| !b.forgotten(now))
            .map_or(0, |b| b.count)
            + 1;
        if !failures.contains_key(pair) && failures.len() >= MAX_FAILURES {
            failures.retain(|_, b| !b.forgotten(now));
            // Still full of recent failures: the one whose backoff ends first goes.
            if failures.len() >= MAX_FAILURES
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, b)| b.until)
                    .map(|(p, _)| p.clone())
            {
                failures.remove(&oldest);
            }
        }
        let wait = Duration::from_secs(1u64 << (count - 1).min(6)).min(MAX_BACKOFF);
        failures.insert(
            pair.clone(),
            Backoff {
                failure,
                until: now + wait,
                count,
            },
        );
    }

    fn record_success(&self, pair: &Pair, method: AuthMethod, setup: Duration) {
        lock(&self.failures).remove(pair);
        let mut log = lock(&self.established);
        if log.len() >= 64 {
            log.remove(0);
        }
        log.push(Established {
            local: pair.0.clone(),
            remote: pair.1.clone(),
            method,
            setup,
        });
    }

    /// Recently established outbound streams, oldest first (at most 64).
    pub fn established(&self) -> Vec<Established> {
        lock(&self.established).clone()
    }

    pub(crate) fn record_inbound(&self, remote: &str, local: &str, method: &'static str) {
        tracing::info!(remote, local, method, "inbound domain authenticated");
        let mut log = lock(&self.inbound_log);
        if log.len() >= 64 {
            log.remove(0);
        }
        log.push(InboundAuth {
            remote: remote.to_string(),
            local: local.to_string(),
            method,
        });
    }

    /// Counts one more inbound stream for `remote`; `false` (nothing counted) when it has
    /// `s2s.max_inbound_streams_per_domain` already.
    pub(crate) fn inbound_stream_opened(&self, remote: &str) -> bool {
        let mut streams = lock(&self.inbound_streams);
        let n = streams.entry(remote.to_string()).or_default();
        if *n >= self.config.s2s.max_inbound_streams_per_domain {
            return false;
        }
        *n += 1;
        true
    }

    /// Inbound streams that authenticated `remote`, now.
    pub fn inbound_streams(&self, remote: &str) -> usize {
        lock(&self.inbound_streams)
            .get(remote)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn inbound_stream_closed(&self, remote: &str) {
        let mut streams = lock(&self.inbound_streams);
        if let Some(n) = streams.get_mut(remote) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(remote);
            }
        }
    }

    /// Recent inbound authentications, oldest first (at most 64).
    pub fn inbound_authenticated(&self) -> Vec<InboundAuth> {
        lock(&self.inbound_log).clone()
    }

    /// Whether an outbound stream (connecting or established) exists for the pair.
    pub fn has_route(&self, local: &str, remote: &str) -> bool {
        lock(&self.routes).contains_key(&(local.to_string(), remote.to_string()))
    }

    /// Outbound queues (one per domain pair), and the stanzas waiting in them (metrics).
    pub fn queue_depths(&self) -> (usize, usize) {
        let routes = lock(&self.routes);
        let queued = routes
            .values()
            .map(|r| r.tx.max_capacity().saturating_sub(r.tx.capacity()))
            .sum();
        (routes.len(), queued)
    }

    /// TLS client configuration presenting `local`'s certificate, cached.
    fn client_config(
        &self,
        local: &str,
        direct_tls: bool,
    ) -> Result<Arc<rustls::ClientConfig>, Failure> {
        let key = (local.to_string(), direct_tls);
        if let Some(c) = lock(&self.client_configs).get(&key) {
            return Ok(c.clone());
        }
        let config =
            crate::net::verify::s2s_client_config(self.tls.certified_key(local), direct_tls)
                .map_err(|e| Failure::Refused(format!("TLS setup: {e}")))?;
        lock(&self.client_configs).insert(key, config.clone());
        Ok(config)
    }
}

/// Sends the error for `failure` back to the sender of `stanza` (RFC 6120 §8.3.3).
async fn bounce(ctx: &Arc<Context>, stanza: &Element, failure: &Failure) {
    route_reply(ctx, stanza, failure.stanza_error()).await;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn service(dir: &std::path::Path) -> S2s {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        config.s2s.dialback_secret = Some("a test secret of some length".into());
        config.s2s.dns_servers = vec![SocketAddr::from(([127, 0, 0, 1], 9))];
        let tls = TlsContext::load(&config).unwrap();
        S2s::new(&config, tls, CancellationToken::new(), TaskTracker::new()).unwrap()
    }

    fn pair(i: usize) -> Pair {
        ("localhost".into(), format!("d{i}.example"))
    }

    #[test]
    fn failures_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s2s = service(dir.path());
        for i in 0..MAX_FAILURES + 50 {
            s2s.record_failure(&pair(i), Failure::NotFound);
        }
        assert_eq!(lock(&s2s.failures).len(), MAX_FAILURES);
        // The newest failures are the ones remembered.
        assert_eq!(
            s2s.backing_off(&pair(MAX_FAILURES + 49)),
            Some(Failure::NotFound)
        );
        assert_eq!(s2s.backing_off(&pair(0)), None);
    }

    #[test]
    fn failures_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s2s = service(dir.path());
        let timeout = Failure::Timeout;
        let t0 = Instant::now();
        s2s.record_failure_at(&pair(1), timeout.clone(), t0);
        s2s.record_failure_at(&pair(1), timeout.clone(), t0);
        assert_eq!(lock(&s2s.failures)[&pair(1)].count, 2);
        // Once forgotten, a new failure starts the backoff over...
        let later = t0 + MAX_BACKOFF + FAILURE_MEMORY;
        s2s.record_failure_at(&pair(1), timeout.clone(), later);
        assert_eq!(lock(&s2s.failures)[&pair(1)].count, 1);
        // ... and a full map first drops what is forgotten, not what is recent.
        for i in 2..MAX_FAILURES + 1 {
            s2s.record_failure_at(&pair(i), timeout.clone(), t0);
        }
        assert_eq!(lock(&s2s.failures).len(), MAX_FAILURES);
        s2s.record_failure_at(&pair(0), timeout.clone(), later);
        let failures = lock(&s2s.failures);
        assert_eq!(failures.len(), 2, "the stale ones were dropped");
        assert!(failures.contains_key(&pair(0)) && failures.contains_key(&pair(1)));
    }
}
