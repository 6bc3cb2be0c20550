//! XEP-0160 offline message storage: kept durably in storage, delivered with a XEP-0203
//! delay stamp at the next initial presence with non-negative priority.

use std::sync::Arc;

use tracing::warn;

use super::presence::PresenceState;
use crate::context::Context;
use crate::router::{deliver_to_session, route_reply};
use crate::storage::OfflineStoreOutcome;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

/// Advertised in the server's disco#info (XEP-0160 §6).
pub const FEATURE: &str = "msgoffline";

/// Whether a message is worth keeping: not a bare chat-state notification and not empty.
fn storable(stanza: &Element) -> bool {
    if stanza.has_child("body", ns::CLIENT) {
        return true;
    }
    stanza
        .elements()
        .any(|c| c.ns != ns::CHATSTATES && c.ns != ns::CLIENT && c.name != "thread")
}

/// Stores a message for an offline user, bouncing it when the quota is full, and tells
/// the user's push services (XEP-0357).
pub async fn store(ctx: &Arc<Context>, user: &str, stanza: Element) {
    let notice = super::push::Notice::of(&stanza);
    if store_quietly(ctx, user, stanza).await
        && let Some(notice) = notice
    {
        super::push::notify_offline(ctx, user, notice).await;
    }
}

/// Stores a message without a push notification (the user was notified already);
/// returns whether it was stored.
pub async fn store_quietly(ctx: &Arc<Context>, user: &str, stanza: Element) -> bool {
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
        Ok(OfflineStoreOutcome::Stored) => return true,
        Ok(OfflineStoreOutcome::QuotaExceeded) => {
            route_reply(
                ctx,
                &stanza,
                StanzaError::resource_constraint().with_text("offline storage is full"),
            )
            .await;
        }
        Err(e) => {
            warn!(error = %e, "storing offline message failed");
            route_reply(ctx, &stanza, StanzaError::internal_server_error()).await;
        }
    }
    false
}

/// Sends stored messages to the session that just became available, then deletes them.
pub async fn deliver(ctx: &Arc<Context>, st: &PresenceState) {
    let messages = match ctx.storage.offline.list(&st.bare).await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "loading offline messages failed");
            return;
        }
    };
    let Some(last) = messages.last().map(|m| m.seq) else {
        return;
    };
    let Some(session) = ctx.sessions.get(&st.bare, &st.resource) else {
        return;
    };
    let domain = crate::addr::domain_of(&st.bare).to_string();
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
        if !deliver_to_session(&session.tx, &session.control, stanza) {
            // Keep the rest (and this one) for the next login.
            return;
        }
    }
    if let Err(e) = ctx.storage.offline.remove_up_to(&st.bare, last).await {
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
    }
}
