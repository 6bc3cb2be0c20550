//! XEP-0160 offline message storage: kept durably in storage, delivered with a XEP-0203
//! delay stamp at the next initial presence with non-negative priority.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use crate::context::Context;
use crate::registry::{Module, OfflineHandler, Registrar, SessionCtx, SessionEvent, SessionEvents};
use crate::router::route_reply;
use crate::storage::OfflineStoreOutcome;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

/// Advertised in the server's disco#info (XEP-0160 §6).
pub const FEATURE: &str = "msgoffline";
/// XEP-0334 message processing hints.
const HINTS: &str = "urn:xmpp:hints";

pub struct Offline;

impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.offline(me.clone());
        r.session_events(me);
        r.server_feature(FEATURE);
    }
}

/// Whether a message is worth keeping: not a bare chat-state notification, not empty,
/// and not marked by its sender as not to be stored (XEP-0334).
fn storable(stanza: &Element) -> bool {
    let no_store = stanza
        .elements()
        .any(|c| c.ns == HINTS && (c.name == "no-store" || c.name == "no-permanent-store"));
    if no_store {
        return false;
    }
    if stanza.has_child("body", ns::CLIENT) {
        return true;
    }
    stanza
        .elements()
        .any(|c| c.ns != ns::CHATSTATES && c.ns != ns::CLIENT && c.name != "thread")
}

#[async_trait]
impl OfflineHandler for Offline {
    /// Stores a message for an offline user, bouncing it when the quota is full; other
    /// modules (push) are told unless the user was notified already.
    async fn store(
        &self,
        ctx: &Arc<Context>,
        user: &str,
        stanza: Element,
        already_notified: bool,
    ) -> bool {
        if !storable(&stanza) {
            return false;
        }
        let quota = ctx.config.limits.offline_quota;
        match ctx
            .storage
            .offline
            .push(user, &stanza.to_stanza_string(), quota)
            .await
        {
            Ok(OfflineStoreOutcome::Stored) => {
                if !already_notified {
                    ctx.registry.offline_stored(ctx, user, &stanza).await;
                }
                return true;
            }
            Ok(OfflineStoreOutcome::QuotaExceeded) => {
                let error = StanzaError::resource_constraint().with_text("offline storage is full");
                route_reply(ctx, &stanza, error).await;
            }
            Err(e) => {
                warn!(error = %e, "storing offline message failed");
                route_reply(ctx, &stanza, StanzaError::internal_server_error()).await;
            }
        }
        false
    }

    /// Refuses (bouncing `resource-constraint`) when the quota is full already. A message
    /// that fills the last place concurrently is still refused by `store`, after the
    /// hooks: the store's count is the exact check, this one keeps the common case clean.
    async fn admits(&self, ctx: &Arc<Context>, user: &str, stanza: &Element) -> bool {
        if !storable(stanza) {
            return true;
        }
        match ctx.storage.offline.count(user).await {
            Ok(n) if n >= ctx.config.limits.offline_quota => {
                let error = StanzaError::resource_constraint().with_text("offline storage is full");
                route_reply(ctx, stanza, error).await;
                false
            }
            // A failing count is reported by the store itself.
            _ => true,
        }
    }
}

#[async_trait]
impl SessionEvents for Offline {
    /// Stored messages go to the first available session with non-negative priority.
    async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        if let SessionEvent::Available {
            initial: true,
            priority: 0..,
        } = event
        {
            deliver(ctx, session).await;
        }
    }
}

/// Sends stored messages to the session that just became available, then deletes them.
async fn deliver(ctx: &Arc<Context>, session: &mut SessionCtx<'_>) {
    let messages = match ctx.storage.offline.list(session.bare).await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "loading offline messages failed");
            return;
        }
    };
    let Some(last) = messages.last().map(|m| m.seq) else {
        return;
    };
    let domain = crate::addr::domain_of(session.bare).to_string();
    for m in messages {
        let mut stanza = match crate::xml::parse_stanza(&m.stanza) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, seq = m.seq, "stored offline message unreadable; skipped");
                continue;
            }
        };
        stanza.push_child(
            Element::new("delay", ns::DELAY)
                .with_attr("from", domain.clone())
                .with_attr("stamp", super::time::stamp_from_unix(m.stored_at)),
        );
        session.out.push(stanza);
    }
    if let Err(e) = ctx.storage.offline.remove_up_to(session.bare, last).await {
        warn!(error = %e, "deleting delivered offline messages failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_states_alone_are_not_stored() {
        let composing = Element::new("message", ns::CLIENT)
            .with_child(Element::new("composing", ns::CHATSTATES));
        assert!(!storable(&composing));
        let body = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
            .with_child(Element::new("active", ns::CHATSTATES));
        assert!(storable(&body));
        let encrypted = Element::new("message", ns::CLIENT)
            .with_child(Element::new("encrypted", "eu.siacs.conversations.axolotl"));
        assert!(storable(&encrypted));
        let hinted = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
            .with_child(Element::new("no-store", HINTS));
        assert!(!storable(&hinted));
    }
}
