//! What modules and connection tasks share: configuration, storage, the session table and
//! the module registry. Handed around as `Arc<Context>`.

use crate::hashing::FastSet;
use std::sync::{Arc, OnceLock};

use crate::c2s::SmRegistry;
use crate::config::Config;
use crate::registry::{Module, Registry};
use crate::router::Sessions;
use crate::sasl::throttle::{AuthThrottle, ThrottleConfig};
use crate::storage::Storage;

pub struct Context {
    pub config: Config,
    pub storage: Storage,
    pub sessions: Sessions,
    pub registry: Registry,
    /// Federation, once the server has started it (absent in bare test contexts).
    pub s2s: OnceLock<Arc<crate::s2s::S2s>>,
    /// XEP-0198 resumable and hibernated sessions (stream-level, owned by c2s).
    pub sm: SmRegistry,
    /// Failed authentications per client address, over all connections.
    pub auth_throttle: AuthThrottle,
    /// Prometheus counters and gauges (served at `/metrics` when enabled).
    pub metrics: crate::metrics::Metrics,
    /// The listeners' bound addresses (known once the server has bound them; port 0 in
    /// the config becomes the real port), for services that hand out URLs to themselves.
    pub listeners: OnceLock<
        Vec<(
            crate::config::ListenerKind,
            crate::config::TlsMode,
            std::net::SocketAddr,
        )>,
    >,
    vhosts: FastSet<String>,
}

impl Context {
    /// A context with the standard modules.
    pub fn new(config: Config, storage: Storage) -> Result<Self, String> {
        Self::with_modules(config, storage, crate::modules::standard())
    }

    pub fn with_modules(
        config: Config,
        storage: Storage,
        modules: Vec<Box<dyn Module>>,
    ) -> Result<Self, String> {
        let registry = Registry::build(&config, modules)?;
        let vhosts = config
            .vhosts
            .iter()
            .map(|v| v.domain.to_ascii_lowercase())
            .collect();
        let auth_throttle = AuthThrottle::new(ThrottleConfig::from_limits(&config.limits));
        let metrics = crate::metrics::Metrics::new(&config);
        // Timing wraps the hot stores in one more boxed future per call: only when asked.
        let storage = if config.metrics.enabled {
            metrics.storage.instrument(storage)
        } else {
            storage
        };
        Ok(Context {
            config,
            storage,
            sessions: Sessions::default(),
            registry,
            s2s: OnceLock::new(),
            sm: SmRegistry::default(),
            auth_throttle,
            metrics,
            listeners: OnceLock::new(),
            vhosts,
        })
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.vhosts.contains(domain)
    }

    /// A domain this server speaks for on the network: a vhost or a service's domain
    /// (`conference.<vhost>`). Federation accepts stanzas to it and sends stanzas from it.
    pub fn is_hosted_domain(&self, domain: &str) -> bool {
        self.is_local_domain(domain) || self.registry.service(domain).is_some()
    }

    /// The domain we speak as when a stream names none we host (for its header and
    /// errors): the first vhost.
    pub fn default_domain(&self) -> String {
        self.config
            .vhosts
            .first()
            .map(|v| v.domain.clone())
            .unwrap_or_default()
    }
}
