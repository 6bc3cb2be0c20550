//! XEP-0012 Last Activity: the server's uptime, and for an account (asked by someone
//! entitled to its presence) the time since its last session went offline with the
//! status it left with; 0 while a resource is available.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::warn;

use super::{IqHandler, IqTarget, internal, requester_bare};
use crate::addr::BareJid;
use crate::context::Context;
use crate::registry::{Module, PresenceObserver, Registrar};
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub const NS: &str = "jabber:iq:last";

/// Status text kept of a logout, at most (characters).
const MAX_STATUS: usize = 1024;

pub struct LastActivity {
    started: Instant,
}

impl Default for LastActivity {
    fn default() -> Self {
        LastActivity {
            started: Instant::now(),
        }
    }
}

impl Module for LastActivity {
    fn name(&self) -> &'static str {
        "last"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.presence_observer(me);
    }
}

use crate::datetime::now_secs;

fn answer(seconds: u64, status: &str) -> Element {
    let q = Element::new("query", NS).with_attr("seconds", seconds.to_string());
    if status.is_empty() {
        q
    } else {
        q.with_text(status)
    }
}

#[async_trait]
impl IqHandler for LastActivity {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        if iq.attr("type") != Some("get") {
            return Err(StanzaError::bad_request());
        }
        let user = match target {
            IqTarget::Server(_) => {
                return Ok(Some(answer(self.started.elapsed().as_secs(), "")));
            }
            IqTarget::Account(user) => user,
        };
        let requester = requester_bare(iq).ok_or_else(StanzaError::bad_request)?;
        // Only who may see the user's presence learns when it was last online (§4).
        if requester != *user {
            let item = ctx
                .storage
                .roster
                .item(user, &requester)
                .await
                .map_err(internal)?;
            if !item.is_some_and(|i| i.subscription.has_from()) {
                return Err(StanzaError::forbidden());
            }
        }
        if ctx.sessions.resources(user).iter().any(|s| s.available) {
            return Ok(Some(answer(0, "")));
        }
        match ctx
            .storage
            .profiles
            .last_activity(user.as_str())
            .await
            .map_err(internal)?
        {
            Some((secs, status)) => Ok(Some(answer(now_secs().saturating_sub(secs), &status))),
            None => Err(StanzaError::item_not_found()),
        }
    }
}

#[async_trait]
impl PresenceObserver for LastActivity {
    async fn outbound_unavailable(&self, ctx: &Arc<Context>, user: &BareJid, stanza: &Element) {
        let user = user.as_str();
        let status: String = stanza
            .child_text("status", ns::CLIENT)
            .unwrap_or_default()
            .chars()
            .take(MAX_STATUS)
            .collect();
        if let Err(e) = ctx
            .storage
            .profiles
            .set_last_activity(user, now_secs(), &status)
            .await
        {
            warn!(error = %e, "storing the last activity failed");
        }
    }
}
