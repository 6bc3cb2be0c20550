//! XEP-0160 offline message storage: kept durably in storage, delivered with a XEP-0203
//! delay stamp at the next initial presence with non-negative priority.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tracing::warn;

use crate::addr::BareJid;
use crate::context::Context;
use crate::registry::{
    BoundByBind2, Module, OfflineHandler, Registrar, SessionCtx, SessionEvent, SessionEvents,
    request_receipt,
};
use crate::router::route_reply;
use crate::storage::OfflineStoreOutcome;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

/// Advertised in the server's disco#info (XEP-0160 §6).
pub const FEATURE: &str = "msgoffline";
/// XEP-0334 message processing hints.
const HINTS: &str = "urn:xmpp:hints";

/// Receipt tags of delivered offline messages: this prefix, then the message's seq.
const RECEIPT_PREFIX: &str = "offline:";

#[derive(Default)]
pub struct Offline {
    /// Users whose stored messages are on their way to a session (bare JID → that
    /// session's connection id, the last seq sent): no other session gets them meanwhile,
    /// so that two resources coming online together do not both receive them.
    delivering: Mutex<HashMap<BareJid, (u64, u64)>>,
}

impl Offline {
    fn delivering(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, (u64, u64)>> {
        // Each critical section is one map operation; a poisoned map is consistent.
        self.delivering.lock().unwrap_or_else(|e| e.into_inner())
    }
}

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
        user: &BareJid,
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
    async fn admits(&self, ctx: &Arc<Context>, user: &BareJid, stanza: &Element) -> bool {
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
    /// Stored messages go to the first available session with non-negative priority, and
    /// are deleted once that session's client has them.
    async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        match event {
            SessionEvent::Available {
                initial: true,
                priority: 0..,
            } => self.deliver(ctx, session).await,
            SessionEvent::Delivered { receipts } => {
                self.delivered(ctx, session.bare, session.conn_id, receipts)
                    .await
            }
            // What it did not get stays stored, for the next session.
            SessionEvent::Ended { .. } => self.release(session),
            _ => {}
        }
    }
}

impl Offline {
    /// Sends stored messages to the session that just became available, each with a
    /// receipt request: they are deleted only once the client has them.
    async fn deliver(&self, ctx: &Arc<Context>, session: &mut SessionCtx<'_>) {
        if self.delivering().contains_key(session.bare) {
            return;
        }
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
        {
            let mut delivering = self.delivering();
            // Another session of the user got there first while the list was read.
            if delivering.contains_key(session.bare) {
                return;
            }
            delivering.insert(session.bare.clone(), (session.conn_id, last));
        }
        let domain = session.bare.domain().as_str().to_string();
        // XEP-0386: a client bound with Bind 2 catches up from the archive, so what the
        // archive holds is deleted here unsent; what it does not hold is still delivered.
        let from_archive = session.ext.get::<BoundByBind2>().is_some();
        let mut sent = Vec::with_capacity(messages.len());
        for m in messages {
            let mut stanza = match crate::xml::parse_stanza(&m.stanza) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, seq = m.seq, "stored offline message unreadable; skipped");
                    continue;
                }
            };
            if from_archive && super::mam::has_stanza_id(&stanza, session.bare) {
                continue;
            }
            stanza.push_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", domain.clone())
                    .with_attr("stamp", super::time::stamp_from_unix(m.stored_at)),
            );
            sent.push((m.seq, stanza));
        }
        if sent.is_empty() {
            // Nothing readable (or all of it archived): nothing to wait for.
            self.delivering().remove(session.bare);
            if let Err(e) = ctx.storage.offline.remove_up_to(session.bare, last).await {
                warn!(error = %e, "deleting unreadable offline messages failed");
            }
            return;
        }
        let count = sent.len();
        for (i, (seq, mut stanza)) in sent.into_iter().enumerate() {
            // Deletion is by "seq and below", so the last one's receipt also covers the
            // unreadable messages stored after it.
            let seq = if i + 1 == count { last } else { seq };
            request_receipt(&mut stanza, format!("{RECEIPT_PREFIX}{seq}"));
            session.out.push(stanza);
        }
    }

    /// Deletes the messages the client has now.
    async fn delivered(
        &self,
        ctx: &Arc<Context>,
        bare: &BareJid,
        conn_id: u64,
        receipts: &[String],
    ) {
        let Some(up_to) = receipts
            .iter()
            .filter_map(|r| r.strip_prefix(RECEIPT_PREFIX)?.parse::<u64>().ok())
            .max()
        else {
            return;
        };
        if let Err(e) = ctx.storage.offline.remove_up_to(bare, up_to).await {
            warn!(error = %e, "deleting delivered offline messages failed");
        }
        let mut delivering = self.delivering();
        if delivering
            .get(bare)
            .is_some_and(|&(conn, last)| conn == conn_id && up_to >= last)
        {
            delivering.remove(bare);
        }
    }

    fn release(&self, session: &SessionCtx<'_>) {
        let mut delivering = self.delivering();
        if delivering
            .get(session.bare)
            .is_some_and(|&(conn, _)| conn == session.conn_id)
        {
            delivering.remove(session.bare);
        }
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
