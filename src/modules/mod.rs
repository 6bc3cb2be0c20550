//! One module per RFC/XEP. Iq modules register the payload namespaces they answer and the
//! disco features they implement; the router dispatches iq requests by namespace.
//! Presence (RFC 6121) and offline storage (XEP-0160) are called by the router at fixed
//! points of delivery; messages pass through `hooks` (blocking, archive, carbons).

pub mod blocking;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod hooks;
pub mod mam;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod push;
pub mod remote;
pub mod roster;
pub mod session;
pub mod time;
pub mod version;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::context::Context;
use crate::stream::StanzaError;
use crate::xml::Element;

/// Whom an iq request is addressed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IqTarget {
    /// The server (a vhost domain).
    Server(String),
    /// An account, answered by the server on the account's behalf (bare JID).
    Account(String),
}

#[async_trait]
pub trait IqHandler: Send + Sync {
    /// Payload namespaces this module answers.
    fn namespaces(&self) -> &'static [&'static str];
    /// Features for the server's disco#info.
    fn server_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Features for an account's disco#info.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Answers a get/set. `Ok(payload)` becomes the result; `Err` an error reply.
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError>;
    /// Work that must reach the wire after the result (e.g. the roster push that follows
    /// a roster set's result, RFC 6121 §2.3.2). Called only after a successful `handle`.
    async fn after_result(&self, _ctx: &Arc<Context>, _target: &IqTarget, _iq: &Element) {}
}

pub struct Modules {
    handlers: HashMap<&'static str, Arc<dyn IqHandler>>,
    server_features: Vec<&'static str>,
    account_features: Vec<&'static str>,
}

impl Modules {
    pub fn standard() -> Self {
        let list: Vec<Arc<dyn IqHandler>> = vec![
            Arc::new(disco::Disco),
            Arc::new(roster::Roster),
            Arc::new(ping::Ping),
            Arc::new(version::Version),
            Arc::new(time::EntityTime),
            Arc::new(session::LegacySession),
            Arc::new(mam::Mam),
            Arc::new(carbons::Carbons),
            Arc::new(blocking::Blocking),
            Arc::new(push::Push),
        ];
        let mut handlers = HashMap::new();
        let mut server_features = vec![offline::FEATURE];
        let mut account_features = Vec::new();
        for m in list {
            for ns in m.namespaces() {
                handlers.insert(*ns, m.clone());
            }
            server_features.extend_from_slice(m.server_features());
            account_features.extend_from_slice(m.account_features());
        }
        server_features.sort_unstable();
        server_features.dedup();
        account_features.sort_unstable();
        account_features.dedup();
        Modules {
            handlers,
            server_features,
            account_features,
        }
    }

    pub fn iq_handler(&self, ns: &str) -> Option<&Arc<dyn IqHandler>> {
        self.handlers.get(ns)
    }

    pub fn server_features(&self) -> &[&'static str] {
        &self.server_features
    }

    pub fn account_features(&self) -> &[&'static str] {
        &self.account_features
    }
}

/// The requesting entity's bare JID (the c2s/s2s layers always stamp `from`).
pub(crate) fn requester_bare(iq: &Element) -> Option<&str> {
    iq.attr("from").map(crate::addr::bare_of)
}

/// The account an iq targets, when the request comes from that account itself: the
/// guard of every per-account store (roster, archive, block list, push registrations),
/// which only their owner may read or change. Server targets get service-unavailable.
// Same error type as `IqHandler::handle`, which returns it as is.
#[allow(clippy::result_large_err)]
pub(crate) fn own_account<'a>(target: &'a IqTarget, iq: &Element) -> Result<&'a str, StanzaError> {
    let IqTarget::Account(user) = target else {
        return Err(StanzaError::service_unavailable());
    };
    if requester_bare(iq) != Some(user.as_str()) {
        return Err(StanzaError::forbidden());
    }
    Ok(user)
}
