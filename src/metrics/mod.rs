//! Prometheus metrics: the registry of what the server counts, the handles the hot paths
//! bump, and what is sampled when `/metrics` is scraped (see [`http`]).
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: it encodes the
//! OpenMetrics text format (escaping, `_total` suffixes, `# EOF`) and its counters and
//! gauges are plain atomics behind an `Arc`. Every label is resolved once here, at
//! start: the session and s2s tasks hold a `Counter` per (stream, direction, stanza
//! kind) and bump it with one relaxed atomic add, with no map lookup, lock, allocation or
//! formatting per stanza. Storage latencies use our own atomic histogram
//! ([`histogram::LatencyHistogram`]) because the crate's takes a mutex per observation.
//!
//! What is cheap to read when asked (bound sessions, hibernated sessions, queue depths,
//! stored offline and archive totals, uptime) is not counted on the way but sampled at
//! scrape time into gauges.

mod histogram;
pub mod http;
mod storage;

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tracing::debug;

pub use histogram::LatencyHistogram;
pub use storage::StorageTimings;

use crate::context::Context;

type Labels = Vec<(&'static str, &'static str)>;

/// Which kind of stream a stanza crossed.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    C2s = 0,
    S2s = 1,
}

/// Whether the stanza came in from the peer or went out to it.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    In = 0,
    Out = 1,
}

/// The transport of a client connection.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Tcp = 0,
    Websocket = 1,
    Bosh = 2,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Tcp, Transport::Websocket, Transport::Bosh];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Websocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

const KINDS: [&str; 3] = ["message", "presence", "iq"];
const AUTH_MECHANISMS: [&str; 6] = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
    "other",
];

/// Holds a gauge up by one until dropped (a connection's lifetime).
#[must_use]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the stores last said about their totals, and when.
#[derive(Default)]
struct StorageSample {
    at: Option<Instant>,
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    c2s_connections: [Gauge; 3],
    s2s_connections: [Gauge; 2],
    /// `[stream][direction][kind]`.
    stanzas: [[[Counter; 3]; 2]; 2],
    auth_failures: [Counter; 6],
    /// Latencies of the timed storage calls (the stores are wrapped only when metrics
    /// are enabled: the wrapper costs a boxed future per call).
    pub storage: StorageTimings,
    sessions: Gauge,
    hibernated: Gauge,
    resumable: Gauge,
    session_queued: Gauge,
    session_queue_max: Gauge,
    s2s_queues: Gauge,
    s2s_queued: Gauge,
    offline_messages: Gauge,
    archived_messages: Gauge,
    uptime: Gauge<f64, AtomicU64>,
    sample: Mutex<StorageSample>,
    sample_every: Duration,
}

impl Metrics {
    pub fn new(config: &crate::config::Config) -> Metrics {
        let mut registry = Registry::with_prefix("xmppd");
        let labelled =
            |family: &Family<Labels, Counter>, labels: Labels| family.get_or_create_owned(&labels);

        let c2s_family = Family::<Labels, Gauge>::default();
        let c2s_connections = Transport::ALL.map(|t| {
            let labels: Labels = vec![("transport", t.label())];
            c2s_family.get_or_create_owned(&labels)
        });
        registry.register(
            "c2s_connections",
            "Open client connections, by transport",
            c2s_family,
        );
        let s2s_family = Family::<Labels, Gauge>::default();
        let s2s_connections = ["inbound", "outbound"].map(|d| {
            let labels: Labels = vec![("direction", d)];
            s2s_family.get_or_create_owned(&labels)
        });
        registry.register(
            "s2s_connections",
            "Open server-to-server connections (outbound: authenticated streams)",
            s2s_family,
        );

        let stanza_family = Family::<Labels, Counter>::default();
        let stanzas = ["c2s", "s2s"].map(|stream| {
            ["in", "out"].map(|direction| {
                KINDS.map(|kind| {
                    labelled(
                        &stanza_family,
                        vec![("stream", stream), ("direction", direction), ("kind", kind)],
                    )
                })
            })
        });
        registry.register(
            "stanzas",
            "Stanzas read from (in) or written to (out) client and server streams",
            stanza_family,
        );
        let auth_family = Family::<Labels, Counter>::default();
        let auth_failures = AUTH_MECHANISMS.map(|m| labelled(&auth_family, vec![("mechanism", m)]));
        registry.register(
            "auth_failures",
            "Failed client authentications, by SASL mechanism",
            auth_family,
        );

        let storage_family = Family::<Labels, LatencyHistogram>::default();
        // The family's entries and the handles the stores observe share their atomics.
        let op = |op: &'static str| storage_family.get_or_create_owned(&vec![("op", op)]);
        let storage = StorageTimings {
            roster_get: op("roster_get"),
            presence_contacts: op("presence_contacts"),
            offline_store: op("offline_store"),
            offline_fetch: op("offline_fetch"),
            archive_append: op("archive_append"),
            archive_query: op("archive_query"),
        };
        registry.register_with_unit(
            "storage_latency",
            "Duration of storage calls on the hot paths, by operation",
            Unit::Seconds,
            storage_family,
        );

        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let sessions = gauge(
            "sessions",
            "Bound client sessions, hibernated ones included",
        );
        let hibernated = gauge(
            "sessions_hibernated",
            "XEP-0198 sessions waiting for their client to resume",
        );
        let resumable = gauge(
            "sessions_resumable",
            "XEP-0198 resumable sessions (live or hibernated)",
        );
        let session_queued = gauge(
            "session_queue_stanzas",
            "Stanzas waiting in all client session queues",
        );
        let session_queue_max = gauge(
            "session_queue_max_stanzas",
            "Stanzas waiting in the fullest client session queue",
        );
        let s2s_queues = gauge(
            "s2s_queues",
            "Outbound server-to-server queues (one per local/remote domain pair)",
        );
        let s2s_queued = gauge(
            "s2s_queue_stanzas",
            "Stanzas waiting in all outbound server-to-server queues",
        );
        let offline_messages = gauge(
            "offline_messages",
            "Offline messages stored, all accounts (sampled, see metrics.storage_sample_secs)",
        );
        let archived_messages = gauge(
            "archived_messages",
            "Messages in all archives, rooms included (sampled, see metrics.storage_sample_secs)",
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "uptime",
            "Time since the server started",
            Unit::Seconds,
            uptime.clone(),
        );
        registry.register(
            "build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );

        Metrics {
            registry,
            started: Instant::now(),
            c2s_connections,
            s2s_connections,
            stanzas,
            auth_failures,
            storage,
            sessions,
            hibernated,
            resumable,
            session_queued,
            session_queue_max,
            s2s_queues,
            s2s_queued,
            offline_messages,
            archived_messages,
            uptime,
            sample: Mutex::new(StorageSample::default()),
            sample_every: Duration::from_secs(config.metrics.storage_sample_secs),
        }
    }

    /// Counts one stanza named `name` (`message`, `presence`, `iq`; others are ignored).
    #[inline]
    pub fn stanza(&self, stream: Stream, direction: Direction, name: &str) {
        let kind = match name {
            "message" => 0,
            "presence" => 1,
            "iq" => 2,
            _ => return,
        };
        self.stanzas[stream as usize][direction as usize][kind].inc();
    }

    /// Stanzas counted so far.
    pub fn stanzas(&self, stream: Stream, direction: Direction, kind: &str) -> u64 {
        KINDS.iter().position(|k| *k == kind).map_or(0, |i| {
            self.stanzas[stream as usize][direction as usize][i].get()
        })
    }

    /// One failed client authentication; `mechanism` is the IANA name, if the client
    /// named one we offer.
    pub fn auth_failure(&self, mechanism: Option<&str>) {
        let i = mechanism
            .and_then(|m| AUTH_MECHANISMS.iter().position(|n| *n == m))
            .unwrap_or(AUTH_MECHANISMS.len() - 1);
        self.auth_failures[i].inc();
    }

    /// A client connection opened; closed when the guard drops.
    pub fn c2s_connection(&self, transport: Transport) -> GaugeGuard {
        let g = self.c2s_connections[transport as usize].clone();
        g.inc();
        GaugeGuard(g)
    }

    /// An inbound (accepted) or outbound (established) server connection; closed when
    /// the guard drops.
    pub fn s2s_connection(&self, outbound: bool) -> GaugeGuard {
        let g = self.s2s_connections[usize::from(outbound)].clone();
        g.inc();
        GaugeGuard(g)
    }

    /// Samples what is read at scrape time and encodes everything in the OpenMetrics
    /// text format.
    pub async fn render(&self, ctx: &Context) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.sessions.set(gauge_value(ctx.sessions.count()));
        self.hibernated.set(gauge_value(ctx.sm.hibernated_count()));
        self.resumable.set(gauge_value(ctx.sm.resumable_count()));
        let (queued, fullest) = ctx.sessions.queue_depths();
        self.session_queued.set(gauge_value(queued));
        self.session_queue_max.set(gauge_value(fullest));
        if let Some(s2s) = ctx.s2s.get() {
            let (queues, queued) = s2s.queue_depths();
            self.s2s_queues.set(gauge_value(queues));
            self.s2s_queued.set(gauge_value(queued));
        }
        self.sample_storage(ctx).await;
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            // Writing to a String does not fail; if the encoder ever refuses a value,
            // the scrape is an error rather than half a text.
            debug!(error = %e, "metrics encoding failed");
            out.clear();
        }
        out
    }

    /// Reads the stored offline and archive totals, at most once per
    /// `metrics.storage_sample_secs`.
    async fn sample_storage(&self, ctx: &Context) {
        {
            let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
            if sample.at.is_some_and(|at| at.elapsed() < self.sample_every) {
                return;
            }
            // Claimed before reading, so concurrent scrapes do not read twice.
            sample.at = Some(Instant::now());
        }
        match ctx.storage.offline.total().await {
            Ok(Some(n)) => {
                self.offline_messages.set(gauge_value(n));
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "offline total unavailable"),
        }
        match ctx.storage.archive.total().await {
            Ok(Some(n)) => {
                self.archived_messages.set(gauge_value(n));
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "archive total unavailable"),
        }
    }
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
