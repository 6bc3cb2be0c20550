//! The TOML configuration. Doc comments here are the reference for every key;
//! `config/xmppd.example.toml` shows each with its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod validate;
pub use validate::{
    ConfigError, MIN_SCRAM_ITERATIONS, MIN_STANZA_BYTES, check_domain, check_host_port,
    load_and_validate, load_file, parse_str, validate,
};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the sled database, generated development certificates and the
    /// admin control socket.
    pub data_dir: PathBuf,
    /// Log filter: `level`, `target` or `target=level`, comma-separated; `RUST_LOG`
    /// (full EnvFilter syntax) overrides it.
    pub log_level: String,
    /// Virtual hosts served; at least one.
    #[serde(rename = "vhost")]
    pub vhosts: Vec<VhostConfig>,
    /// Sockets to listen on.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// TLS settings shared by every listener.
    pub tls: TlsConfig,
    pub limits: Limits,
    pub c2s: C2sConfig,
    pub s2s: S2sConfig,
    pub websocket: WebsocketConfig,
    pub bosh: BoshConfig,
    pub storage: StorageConfig,
    pub archive: ArchiveConfig,
    pub muc: MucConfig,
    pub server: ServerConfig,
    pub pep: PepConfig,
    pub pubsub: PubsubConfig,
    /// XEP-0157 contact addresses in the server's disco#info.
    pub contact: ContactConfig,
    /// XEP-0215 STUN/TURN servers offered to clients (audio/video calls).
    #[serde(rename = "external_service")]
    pub external_services: Vec<ExternalServiceConfig>,
    /// The embedded HTTP server (listeners of kind `http`).
    pub http: HttpConfig,
    /// XEP-0363 HTTP file upload on `upload.<vhost>`.
    pub upload: UploadConfig,
    /// XEP-0077 in-band registration (account creation by anyone; off by default).
    pub registration: RegistrationConfig,
    /// Invitations (XEP-0401, XEP-0379, XEP-0445): account and contact invites.
    pub invites: InvitesConfig,
    /// Prometheus metrics at `GET /metrics` on the HTTP listeners.
    pub metrics: MetricsConfig,
}

/// XEP-0077 open in-band registration. Password changes and account removal by the
/// account's owner (over TLS) are always allowed; creating accounts with an invitation
/// token is governed by `[invites]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Whether anyone may create an account in-band, without an invitation.
    pub open: bool,
    /// Characters a new password (registration or change) must have at least.
    pub min_password_length: usize,
    /// Account names nobody may register (compared after normalisation).
    pub reserved_names: Vec<String>,
    /// Accounts one client address may create in-band per `rate_window_secs`
    /// (open and invited registrations alike).
    pub max_per_ip: u32,
    pub rate_window_secs: u64,
    /// Client addresses remembered for the rate limit (the oldest are forgotten).
    pub tracked_ips: usize,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            open: false,
            min_password_length: 8,
            reserved_names: [
                "admin",
                "administrator",
                "root",
                "postmaster",
                "hostmaster",
                "webmaster",
                "abuse",
                "security",
                "support",
                "xmpp",
            ]
            .map(String::from)
            .to_vec(),
            max_per_ip: 3,
            rate_window_secs: 3600,
            tracked_ips: 10_000,
        }
    }
}

/// Invitations: tokens that let someone create an account (and become a contact of the
/// inviter), made by `xmppd invite create` or by users with ad-hoc commands.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InvitesConfig {
    /// Whether invitation tokens are accepted and can be created.
    pub enabled: bool,
    /// Whether every user may create contact invitations (XEP-0401 `invite` command)
    /// that also let the invitee register here; admins always may.
    pub users_may_invite: bool,
    /// Seconds an invitation is valid unless its creator says otherwise.
    pub default_expiry_secs: u64,
    /// Longest validity a creator may ask for, in seconds.
    pub max_expiry_secs: u64,
    /// Invitations one user may have outstanding (admins and the CLI: unlimited).
    pub max_per_user: usize,
    /// The landing pages' base URL as the world sees it (e.g. behind a reverse proxy:
    /// `https://example.org`); pages are at `<base>/invite/<token>`. Default: the first
    /// `http` listener with TLS.
    pub base_url: Option<String>,
}

impl Default for InvitesConfig {
    fn default() -> Self {
        InvitesConfig {
            enabled: true,
            users_may_invite: true,
            default_expiry_secs: 7 * 86_400,
            max_expiry_secs: 90 * 86_400,
            max_per_user: 20,
            base_url: None,
        }
    }
}

/// TLS settings of every listener (c2s, s2s and HTTPS alike).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Send TLS 1.3 session tickets, so that returning clients resume their session
    /// without the certificate and its signature. The tickets are encrypted with keys held
    /// only in memory, replaced every 6 hours (the previous key is still accepted), so the
    /// server keeps no state per client; a restart makes every ticket invalid. No 0-RTT
    /// data is accepted. Off: every connection makes a full handshake.
    pub session_tickets: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            session_tickets: true,
        }
    }
}

/// Prometheus metrics at `GET /metrics` on the `http` listeners: off by default, and
/// then only for the listed peer addresses, so they are never public by accident.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (otherwise it answers 404).
    pub enabled: bool,
    /// Peer addresses that may scrape: IP addresses or CIDR networks (`10.0.0.0/8`).
    /// Others get 403. The TCP peer counts, never `X-Forwarded-For`.
    pub allow: Vec<String>,
    /// Seconds between two readings of the stored offline and archive totals (they sum
    /// per-account counters, one read per account); scrapes in between reuse the last.
    pub storage_sample_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            allow: vec!["127.0.0.1".into(), "::1".into()],
            storage_sample_secs: 60,
        }
    }
}

/// Limits of the embedded HTTP server (listeners of kind `http`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Seconds a client may take to send a request's headers (also the keep-alive wait
    /// between requests on HTTP/1.1), so idle or slow connections do not hold a slot.
    pub header_timeout_secs: u64,
    /// Seconds a request body may make no progress before the request is dropped.
    pub body_timeout_secs: u64,
    /// Bytes of request headers accepted (HTTP/1.1 buffer and HTTP/2 header list).
    pub max_header_bytes: usize,
    /// WebSocket URLs listed in `/.well-known/host-meta` (XEP-0156) when a reverse proxy
    /// publishes them (e.g. `wss://example.org/xmpp-websocket`); empty: the `http`
    /// listeners' own URLs.
    pub websocket_urls: Vec<String>,
    /// BOSH URLs listed in host-meta, likewise (e.g. `https://example.org/http-bind`).
    pub bosh_urls: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_secs: 30,
            body_timeout_secs: 30,
            max_header_bytes: 65_536,
            websocket_urls: Vec::new(),
            bosh_urls: Vec::new(),
        }
    }
}

/// XEP-0363 HTTP file upload: a service at `<subdomain>.<vhost>` hands out upload slots;
/// files are PUT and fetched over the `http` listeners and kept under `<data_dir>/upload`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Run the service (it runs only with an `http` listener or a `public_url`).
    pub enabled: bool,
    /// The service's label before each vhost: `upload` serves `upload.<vhost>`.
    pub subdomain: String,
    /// Largest file, in bytes (advertised in disco#info; larger requests get
    /// `file-too-large`).
    pub max_file_size: u64,
    /// Bytes one account may keep at once (slots not yet uploaded count); beyond it a
    /// request gets `resource-constraint`. 0: no quota.
    pub quota_bytes: u64,
    /// Days a file is kept (and its GET URL valid); 0 keeps files forever.
    pub expiry_days: u32,
    /// Seconds a slot's PUT URL stays valid.
    pub put_ttl_secs: u64,
    /// Base URL of the upload URLs (e.g. `https://upload.example.org`) when a reverse
    /// proxy serves the `http` listener; unset: the first `http` listener (https first)
    /// with the vhost's domain.
    pub public_url: Option<String>,
    /// Key of the URL signatures (HMAC-SHA256). Unset: a random key is generated once
    /// into `<data_dir>/upload.secret` and reused.
    pub secret: Option<String>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            subdomain: "upload".into(),
            max_file_size: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            expiry_days: 30,
            put_ttl_secs: 300,
            public_url: None,
            secret: None,
        }
    }
}

/// Personal eventing (XEP-0163 PEP on every account), profiles (vCard) and private
/// XML storage: what each account may keep on the server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PepConfig {
    /// PEP nodes one account may have (OMEMO uses one per device, plus the device list).
    /// A publish that would create one more is refused (`not-allowed`,
    /// `max-nodes-exceeded`).
    pub max_nodes_per_account: usize,
    /// Items a node keeps at most; a node's `pubsub#max_items` (also `max`) is capped to
    /// it, and the oldest items go first.
    pub max_items_per_node: usize,
    /// Bytes of one item's payload, serialized; larger ones are refused
    /// (`not-acceptable`, `payload-too-big`). Avatars (XEP-0084 data) are the largest.
    pub max_item_bytes: usize,
    /// Bytes of one vCard (XEP-0054), serialized, photo included.
    pub max_vcard_bytes: usize,
    /// Bytes of one private XML element (XEP-0049).
    pub max_private_bytes: usize,
    /// Private XML elements (distinct name and namespace) one account may store.
    pub max_private_entries: usize,
    /// Entity capabilities (XEP-0115) remembered, by verification string: the features
    /// that decide who gets which PEP notifications. Oldest forgotten first.
    pub caps_cache_entries: usize,
}

impl Default for PepConfig {
    fn default() -> Self {
        PepConfig {
            max_nodes_per_account: 200,
            max_items_per_node: 256,
            max_item_bytes: 131_072,
            max_vcard_bytes: 131_072,
            max_private_bytes: 65_536,
            max_private_entries: 64,
            caps_cache_entries: 10_000,
        }
    }
}

/// XEP-0157 addresses (URIs such as `mailto:abuse@example.org` or
/// `xmpp:admin@example.org`), listed in the server's disco#info for each vhost.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContactConfig {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

/// One STUN or TURN server (XEP-0215).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalServiceConfig {
    /// `stun`, `stuns`, `turn` or `turns`.
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// `udp` or `tcp`; omitted: both.
    #[serde(default)]
    pub transport: Option<String>,
    /// coturn's `static-auth-secret` (`use-auth-secret`): clients get a username
    /// `EXPIRY:JID` and the password base64(HMAC-SHA1(secret, username)), valid `ttl_secs`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Seconds the credentials are valid. Default: 86400.
    #[serde(default = "default_turn_ttl")]
    pub ttl_secs: u64,
    /// A name shown to users.
    #[serde(default)]
    pub name: Option<String>,
}

fn default_turn_ttl() -> u64 {
    86_400
}

/// Who may create nodes on the generic pubsub service.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeCreation {
    /// Only the JIDs in `pubsub.admins`.
    Admins,
    /// Any account of this server.
    Local,
}

/// The generic XEP-0060 publish-subscribe service on `pubsub.<vhost>`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubConfig {
    /// Run the service, as `pubsub.<domain>` for every vhost (listed in the vhost's disco
    /// items). Remote users reach it if DNS points that name at this server.
    pub enabled: bool,
    /// `admins` (only the JIDs in `admins`) or `local` (any account of this server).
    pub node_creation: NodeCreation,
    /// Bare JIDs allowed to create nodes (with `node_creation = "admins"`).
    pub admins: Vec<String>,
    /// Nodes one service holds at most.
    pub max_nodes: usize,
    /// Subscriptions one node holds at most.
    pub max_subscriptions_per_node: usize,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        PubsubConfig {
            enabled: true,
            node_creation: NodeCreation::Admins,
            admins: Vec::new(),
            max_nodes: 1000,
            max_subscriptions_per_node: 1000,
        }
    }
}

/// The server process itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Seconds a graceful shutdown may take (streams closed with `system-shutdown`,
    /// hibernated sessions' queues moved to offline storage, queued s2s stanzas bounced,
    /// storage flushed) before the process exits anyway.
    pub shutdown_timeout_secs: u64,
    /// Server administrators (bare JIDs): they may run the XEP-0133 ad-hoc commands
    /// (add, delete, disable users, change passwords, announcements) and create account
    /// invitations.
    pub admins: Vec<String>,
    /// XEP-0050 ad-hoc command sessions (multi-stage forms) kept at once, over all users.
    pub adhoc_max_sessions: usize,
    /// Seconds an unfinished ad-hoc command session is kept.
    pub adhoc_session_timeout_secs: u64,
    /// Most JIDs an ad-hoc command lists (e.g. online users).
    pub adhoc_max_list_items: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_timeout_secs: 10,
            admins: Vec::new(),
            adhoc_max_sessions: 1000,
            adhoc_session_timeout_secs: 600,
            adhoc_max_list_items: 1000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VhostConfig {
    /// The domain, e.g. `example.org`.
    pub domain: String,
    /// PEM certificate chain. Without `certificate`/`key` a self-signed development
    /// certificate is generated into the data dir on first start.
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    C2s,
    S2s,
    /// The embedded HTTP(S) server (HTTP/1.1 and HTTP/2): web clients over WebSocket
    /// (RFC 7395, `/xmpp-websocket`) and BOSH (XEP-0206, `/http-bind`), XEP-0156 host-meta,
    /// XEP-0363 file upload, metrics. `tls = "direct_tls"` (https://, vhost certificate by
    /// SNI) or `"none"` (http://). `websocket`, the kind of the listeners that served
    /// WebSocket alone before, is the same.
    #[serde(alias = "websocket")]
    Http,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP, upgraded with STARTTLS (RFC 6120 §5).
    Starttls,
    /// TLS from the first byte (XEP-0368; `wss://` for WebSocket listeners).
    DirectTls,
    /// No TLS at all: only for a WebSocket listener on a loopback address, behind a
    /// reverse proxy that terminates TLS or for a browser on the same machine.
    None,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    pub address: SocketAddr,
    pub tls: TlsMode,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest stanza accepted, in bytes (`policy-violation` beyond).
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Seconds from accept to an authenticated, bound stream.
    pub handshake_timeout_secs: u64,
    /// Seconds without any received byte before the connection is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a write to a client may make no progress (the client stopped reading)
    /// before the connection is treated as lost.
    pub write_timeout_secs: u64,
    /// Concurrent connections from one IP address (large enough for users behind
    /// carrier-grade NAT; small enough that one address cannot exhaust the server).
    pub connections_per_ip: usize,
    /// Concurrent connections in all.
    pub max_connections: usize,
    /// Failed SASL attempts before the stream is closed.
    pub max_auth_attempts: u32,
    /// Failed SASL attempts from one address (IPv4 address or IPv6 /64), over all its
    /// connections, answered without delay. Each further one is delayed.
    pub ip_auth_failures_before_delay: u32,
    /// Milliseconds the first delayed failure waits; each further one waits twice as long
    /// as the one before, up to `ip_auth_failure_max_delay_ms`. 0: no delays.
    pub ip_auth_failure_delay_ms: u64,
    /// Longest delay of a failure, in milliseconds. One that outlasts the handshake timeout
    /// ends that connection with `connection-timeout` instead.
    pub ip_auth_failure_max_delay_ms: u64,
    /// Failed attempts from one address after which each further failure also closes its
    /// stream with `policy-violation`.
    pub ip_auth_failures_max: u32,
    /// Seconds without a failure after which an address's count starts again.
    pub ip_auth_failure_window_secs: u64,
    /// Most addresses whose failures are tracked at once (about 100 bytes each); when full,
    /// those that failed least recently are forgotten first.
    pub ip_auth_tracked_max: usize,
    /// Stanzas queued to one session before it is considered stuck and closed.
    pub session_queue_len: usize,
    /// Memory one session may hold for its client, in bytes: half for its queue (beyond
    /// it the session is closed as stuck), a quarter for stanzas sent and not acknowledged
    /// (XEP-0198; sending pauses there), a quarter for stanzas held back while the client
    /// is inactive (XEP-0352; flushed there). At least 4 × `max_stanza_bytes`.
    pub session_max_bytes: usize,
    /// Offline messages kept per user (`resource-constraint` bounce beyond).
    pub offline_quota: usize,
    /// Stanzas a session's own work may send to itself while handling one stanza of its
    /// client (offline messages, pending subscription requests and contacts' presence at
    /// login), written to the client in steps outside the session queue. Beyond it the
    /// session is closed; must hold the offline quota and the pending subscriptions.
    pub session_backlog_len: usize,
    /// Bytes per second a client's stream may send, on average (`c2s_burst_bytes` at once);
    /// above it the connection is read more slowly, not closed.
    pub c2s_bytes_per_sec: u64,
    /// Bytes a client may send at once before its rate applies (at least the largest
    /// stanza, or every large stanza would pause its stream).
    pub c2s_burst_bytes: u64,
    /// Stanzas per second a client's stream may send, on average.
    pub c2s_stanzas_per_sec: u64,
    /// Stanzas a client may send at once before its rate applies.
    pub c2s_burst_stanzas: u64,
    /// The same for each inbound server-to-server stream, which carries all of one remote
    /// domain's traffic to this server: above it the stream is read more slowly.
    pub s2s_bytes_per_sec: u64,
    pub s2s_burst_bytes: u64,
    pub s2s_stanzas_per_sec: u64,
    pub s2s_burst_stanzas: u64,
    /// Contacts in one roster, and JIDs one session sent directed presence to; more are
    /// refused with `resource-constraint`.
    pub max_roster_items: usize,
    /// JIDs on one block list (XEP-0191); blocking more is refused with
    /// `resource-constraint`.
    pub max_blocklist_items: usize,
    /// Hibernated (XEP-0198, awaiting resumption) sessions per account; a further lost
    /// connection ends its session at once.
    pub max_hibernated_per_account: usize,
    /// Subscription requests kept per user awaiting an answer (RFC 6121 §3.1.3); further
    /// requests from new contacts are refused with `resource-constraint`.
    pub max_pending_subscriptions: usize,
    /// Resources bound at once per account.
    pub max_resources: usize,
    /// Stanzas sent to a stream-management (XEP-0198) session and not yet acknowledged by
    /// the client, including those queued while it is hibernated. At this length the
    /// server stops sending until the client acks (then the session queue fills up).
    pub sm_max_unacked: usize,
    /// Failed XEP-0198 resumption attempts on one connection; one more closes the stream
    /// with `policy-violation` (a client guessing session ids, or looping on a stale one).
    pub sm_max_resume_failures: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    /// Refuse SASL until the stream is encrypted.
    pub require_tls: bool,
    /// Offer SASL PLAIN (only ever over TLS).
    pub allow_plain: bool,
    /// PBKDF2 iterations for newly set passwords (minimum 4096).
    pub scram_iterations: u32,
    /// Seconds a resumable stream-management (XEP-0198) session whose connection was lost
    /// stays hibernated, waiting for the client to resume it.
    pub sm_resume_timeout_secs: u64,
    /// Refuse every SCRAM exchange flagged `y` on a stream that advertised -PLUS
    /// mechanisms (RFC 5802 §6). Off: a `y` is still accepted after the same stream's own
    /// -PLUS attempt named a binding type this server does not offer, which is what
    /// slixmpp 1.8 does on TLS 1.3 (it knows only `tls-unique`); a man in the middle who
    /// can also break the client's TLS could send such an attempt himself.
    pub strict_channel_binding: bool,
    /// Offer SCRAM-SHA-256(-PLUS). Turn off after importing accounts that have SCRAM-SHA-1
    /// verifiers only (from Prosody): clients pick the strongest mechanism offered, and
    /// such accounts can log in with SCRAM-SHA-1 or PLAIN only, as on Prosody. A PLAIN login
    /// upgrades an account to both hashes.
    pub offer_scram_sha256: bool,
    /// Offer SASL2 (XEP-0388) with Bind 2 (XEP-0386) beside RFC 6120 SASL: a client
    /// authenticates, binds and switches on carbons, stream management and CSI in one
    /// round trip, without a stream restart.
    pub sasl2: bool,
    /// Issue XEP-0484 (FAST) tokens through SASL2: a returning client logs in with one
    /// HMAC instead of a password exchange. Only with `sasl2` (FAST has no other way in).
    pub fast: bool,
    /// Seconds a FAST token stays valid. A client that logs in with a token past half its
    /// life gets a new one, so a device in use never sees its token expire.
    pub fast_token_lifetime_secs: u64,
    /// Clients (SASL2 user agents) per account that may hold FAST tokens; a new one
    /// beyond this takes the place of the one whose tokens expire first.
    pub fast_max_clients: usize,
}

/// Server-to-server federation (RFC 6120, XEP-0178, XEP-0220, XEP-0368). Takes effect
/// when at least one listener of kind `s2s` exists; outbound streams work without one.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Secret from which dialback keys are derived (XEP-0185). Unset: a random secret is
    /// generated once into `<data_dir>/dialback.secret` and reused.
    pub dialback_secret: Option<String>,
    /// Accept a peer only when its certificate is valid for its domain (then dialback alone
    /// is not enough). Off by default, as in Prosody and ejabberd.
    pub require_valid_certificates: bool,
    /// Refuse s2s streams (both directions) that are not TLS-protected.
    pub require_encryption: bool,
    /// Extra PEM file of CA certificates trusted for peer certificates, on top of the
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// DNS servers (`IP:port`) for SRV and address lookups; empty: the system's
    /// (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// Static routes that bypass DNS: remote domain -> `host:port` (STARTTLS), for split
    /// DNS and tests.
    pub routes: BTreeMap<String, String>,
    /// Seconds allowed for one TCP connect attempt.
    pub connect_timeout_secs: u64,
    /// Seconds an outbound stream may stay unused before it is closed.
    pub idle_timeout_secs: u64,
    /// Stanzas queued per remote domain while its stream connects (`resource-constraint`
    /// bounce beyond).
    pub queue_len: usize,
    /// Inbound streams one remote domain may have authenticated at once; a further one is
    /// closed with `policy-violation` (a server normally needs one).
    pub max_inbound_streams_per_domain: usize,
}

/// Clients over WebSocket (RFC 7395) at `/xmpp-websocket` on the `http` listeners.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebsocketConfig {
    /// Origins (`scheme://host[:port]`, or `null` for pages without one, such as `file://`
    /// pages) whose pages may connect over WebSocket or BOSH, besides pages of the
    /// server's own host; `*` allows pages of any site (a public web client elsewhere).
    /// Requests without an `Origin` header (non-browser clients) are always accepted;
    /// others get HTTP 403.
    pub allowed_origins: Vec<String>,
}

/// Clients over BOSH (XEP-0124, XEP-0206) at `/http-bind` on the `http` listeners.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BoshConfig {
    /// Serve BOSH at all.
    pub enabled: bool,
    /// Longest a request is held waiting for something to send, in seconds (the client
    /// asks for its own `wait`, capped here).
    pub max_wait_secs: u64,
    /// Seconds without any request after which a session ends (its XEP-0198 state, if
    /// any, then hibernates as for a lost TCP connection).
    pub inactivity_secs: u64,
    /// Shortest interval, in seconds, between two empty requests of a polling session
    /// (`hold = 0`); a client polling faster is cut off.
    pub polling_secs: u64,
    /// Requests a client may have outstanding at once (XEP-0124 `requests`); `hold` is
    /// one less.
    pub max_requests: u32,
    /// Bytes of one request body (its stanzas are also bounded by the stanza size limit).
    pub max_body_bytes: usize,
    /// BOSH sessions one IP address may have at once.
    pub max_sessions_per_ip: usize,
}

impl Default for BoshConfig {
    fn default() -> Self {
        BoshConfig {
            enabled: true,
            max_wait_secs: 60,
            inactivity_secs: 60,
            polling_secs: 2,
            max_requests: 2,
            max_body_bytes: 1024 * 1024,
            max_sessions_per_ip: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    Sled,
    Memory,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sled` (persistent, default) or `memory` (lost at exit; for tests).
    pub backend: StorageBackend,
    /// sled page cache in MiB: the database's share of memory (1 to 65536).
    pub cache_mb: u64,
    /// Make archived and offline messages durable (one fsync per writer batch, shared by
    /// all waiting senders) before they are acknowledged: nothing acknowledged is lost
    /// when the server is killed or the machine loses power. Off: acknowledged once in
    /// the database's memory, written and synced by sled within half a second, so up to
    /// that much can be lost by a kill -9 or a crash; about 3× the archive throughput.
    pub sync_writes: bool,
    /// MiB of messages after which the message archive starts a new partition (1 to
    /// 1024). The newest partition's messages are held in memory (about this much) and
    /// then written out once, as one table never rewritten, so archiving costs the same
    /// however large the archive grows; reading an archive looks into each partition its
    /// user has messages in.
    pub archive_partition_mb: u64,
}

/// Which messages are archived for a user who never set XEP-0441 preferences.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArchivePolicy {
    Always,
    /// Only messages with contacts in the user's roster.
    Roster,
    Never,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Days a message stays in a user's archive (XEP-0313); 0 keeps it forever. Older
    /// messages are never returned, and a background pass deletes them.
    pub retention_days: u32,
    /// Seconds between two passes that delete expired messages (with `retention_days`).
    pub prune_interval_secs: u64,
    /// `always`, `roster` or `never`: archiving for users who set no preferences.
    pub default_policy: ArchivePolicy,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            retention_days: 0,
            prune_interval_secs: 3600,
            default_policy: ArchivePolicy::Always,
        }
    }
}

/// Multi-user chat (XEP-0045): one service per vhost at `<subdomain>.<vhost>`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// Whether the chat room service runs.
    pub enabled: bool,
    /// The service's label before each vhost: `conference` serves `conference.<vhost>`.
    pub subdomain: String,
    /// Rooms one service holds at most (persistent and temporary); creating one more is
    /// refused with `not-allowed`.
    pub max_rooms: usize,
    /// Rooms one user may own at most; creating one more is refused with `not-allowed`.
    pub max_rooms_per_user: usize,
    /// Occupants of one room at most: the default and the ceiling of a room's
    /// `muc#roomconfig_maxusers`. A full room refuses newcomers with
    /// `service-unavailable`.
    pub max_occupants: usize,
    /// Messages a new room keeps for the history sent on join.
    pub history_length: usize,
    /// The ceiling of a room's `muc#roomconfig_historylength`.
    pub max_history_length: usize,
    /// Messages per second one occupant may send to a room (sustained); beyond the
    /// burst they are refused with `resource-constraint`.
    pub messages_per_sec: u32,
    /// Messages one occupant may send at once before `messages_per_sec` applies.
    pub message_burst: u32,
    /// Archive every room's messages for XEP-0313 queries at the room JID.
    pub archive: bool,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            subdomain: "conference".into(),
            max_rooms: 10_000,
            max_rooms_per_user: 100,
            max_occupants: 200,
            history_length: 20,
            max_history_length: 200,
            messages_per_sec: 5,
            message_burst: 20,
            archive: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("xmppd-data"),
            log_level: "info".into(),
            vhosts: vec![VhostConfig {
                domain: "localhost".into(),
                certificate: None,
                key: None,
            }],
            listeners: vec![
                ListenerConfig {
                    kind: ListenerKind::C2s,
                    address: SocketAddr::from(([127, 0, 0, 1], 5222)),
                    tls: TlsMode::Starttls,
                },
                ListenerConfig {
                    kind: ListenerKind::C2s,
                    address: SocketAddr::from(([127, 0, 0, 1], 5223)),
                    tls: TlsMode::DirectTls,
                },
                // Web clients and file upload: http:// on loopback, https:// with the
                // vhost's certificate (the ports web clients are usually set up with, as
                // Prosody's).
                ListenerConfig {
                    kind: ListenerKind::Http,
                    address: SocketAddr::from(([127, 0, 0, 1], 5280)),
                    tls: TlsMode::None,
                },
                ListenerConfig {
                    kind: ListenerKind::Http,
                    address: SocketAddr::from(([127, 0, 0, 1], 5281)),
                    tls: TlsMode::DirectTls,
                },
            ],
            tls: TlsConfig::default(),
            limits: Limits::default(),
            c2s: C2sConfig::default(),
            s2s: S2sConfig::default(),
            websocket: WebsocketConfig::default(),
            bosh: BoshConfig::default(),
            storage: StorageConfig::default(),
            archive: ArchiveConfig::default(),
            muc: MucConfig::default(),
            server: ServerConfig::default(),
            pep: PepConfig::default(),
            pubsub: PubsubConfig::default(),
            contact: ContactConfig::default(),
            external_services: Vec::new(),
            http: HttpConfig::default(),
            upload: UploadConfig::default(),
            registration: RegistrationConfig::default(),
            invites: InvitesConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Limits {
    /// The input shaping of one client stream.
    pub fn c2s_shaper(&self) -> crate::server::ShaperConfig {
        crate::server::ShaperConfig {
            bytes_per_sec: self.c2s_bytes_per_sec,
            burst_bytes: self.c2s_burst_bytes,
            stanzas_per_sec: self.c2s_stanzas_per_sec,
            burst_stanzas: self.c2s_burst_stanzas,
        }
    }

    pub fn s2s_shaper(&self) -> crate::server::ShaperConfig {
        crate::server::ShaperConfig {
            bytes_per_sec: self.s2s_bytes_per_sec,
            burst_bytes: self.s2s_burst_bytes,
            stanzas_per_sec: self.s2s_stanzas_per_sec,
            burst_stanzas: self.s2s_burst_stanzas,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 32,
            max_attributes: 64,
            handshake_timeout_secs: 30,
            idle_timeout_secs: 600,
            write_timeout_secs: 30,
            connections_per_ip: 1000,
            max_connections: 100_000,
            max_auth_attempts: 3,
            ip_auth_failures_before_delay: 10,
            ip_auth_failure_delay_ms: 500,
            ip_auth_failure_max_delay_ms: 10_000,
            ip_auth_failures_max: 100,
            ip_auth_failure_window_secs: 900,
            ip_auth_tracked_max: 100_000,
            session_queue_len: 2048,
            session_max_bytes: 8 * 1024 * 1024,
            offline_quota: 1000,
            session_backlog_len: 20_000,
            max_pending_subscriptions: 500,
            c2s_bytes_per_sec: 1024 * 1024,
            c2s_burst_bytes: 1024 * 1024,
            c2s_stanzas_per_sec: 5000,
            c2s_burst_stanzas: 10_000,
            s2s_bytes_per_sec: 10 * 1024 * 1024,
            s2s_burst_bytes: 10 * 1024 * 1024,
            s2s_stanzas_per_sec: 20_000,
            s2s_burst_stanzas: 40_000,
            max_roster_items: 5000,
            max_blocklist_items: 5000,
            max_hibernated_per_account: 8,
            max_resources: 32,
            sm_max_unacked: 500,
            sm_max_resume_failures: 3,
        }
    }
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            require_tls: true,
            allow_plain: true,
            scram_iterations: 10_000,
            sm_resume_timeout_secs: 300,
            strict_channel_binding: false,
            offer_scram_sha256: true,
            sasl2: true,
            fast: true,
            fast_token_lifetime_secs: 30 * 86_400,
            fast_max_clients: 32,
        }
    }
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            dialback_secret: None,
            require_valid_certificates: false,
            require_encryption: true,
            ca_file: None,
            dns_servers: Vec::new(),
            routes: BTreeMap::new(),
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            queue_len: 1000,
            max_inbound_streams_per_domain: 10,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sled,
            cache_mb: 64,
            sync_writes: true,
            archive_partition_mb: crate::storage::sled::DEFAULT_PARTITION_MB,
        }
    }
}
