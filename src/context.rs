//! What modules and connection tasks share: configuration, storage, the session table and
//! the module registry. Handed around as `Arc<Context>`.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use crate::c2s::SmRegistry;
use crate::config::Config;
use crate::modules::Modules;
use crate::modules::push::PushState;
use crate::router::Sessions;
use crate::sasl::throttle::{AuthThrottle, ThrottleConfig};
use crate::storage::Storage;

pub struct Context {
    pub config: Config,
    pub storage: Storage,
    pub sessions: Sessions,
    pub modules: Modules,
    /// Federation, once the server has started it (absent in bare test contexts).
    pub s2s: OnceLock<Arc<crate::s2s::S2s>>,
    /// XEP-0198 resumable and hibernated sessions.
    pub sm: SmRegistry,
    /// XEP-0357 publishes awaiting the app server's answer.
    pub push: PushState,
    /// Failed authentications per client address, over all connections.
    pub auth_throttle: AuthThrottle,
    vhosts: HashSet<String>,
}

impl Context {
    pub fn new(config: Config, storage: Storage) -> Self {
        let vhosts = config
            .vhosts
            .iter()
            .map(|v| v.domain.to_ascii_lowercase())
            .collect();
        let auth_throttle = AuthThrottle::new(ThrottleConfig::from_limits(&config.limits));
        Context {
            config,
            storage,
            sessions: Sessions::default(),
            modules: Modules::standard(),
            s2s: OnceLock::new(),
            sm: SmRegistry::default(),
            push: PushState::default(),
            auth_throttle,
            vhosts,
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.vhosts.contains(domain)
    }
}
