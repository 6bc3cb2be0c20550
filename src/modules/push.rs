//! XEP-0357 Push Notifications. A client registers its app server's push service
//! (`<enable jid node/>`, optionally with publish options such as a secret); when a message
//! worth a notification arrives for the user while no client can receive it (the user is
//! offline, or every session is hibernated under XEP-0198), the server publishes a
//! `<notification/>` with a `urn:xmpp:push:summary` form to each registered node, as an iq
//! from the user's bare JID routed like any other stanza (so remote app servers work over
//! federation). An error answer disables that registration (XEP-0357 §7.1).
//!
//! Privacy: the summary carries the message count and the sender; the body only when the
//! client asked for it by adding the field `include-body` (true/1) to its publish-options
//! form. That field is xmppd's own and is not forwarded to the app server.

use std::any::Any;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tracing::{debug, warn};

use super::{IqHandler, IqTarget, internal, own_account};
use crate::addr::{self, BareJid, FullJid, Jid};
use crate::context::Context;
use crate::registry::{
    Module, OfflineStoredHook, Registrar, ResponseHandler, SessionCtx, SessionEvent, SessionEvents,
};
use crate::router::route;
use crate::storage::PushRegistration;
use crate::stream::StanzaError;
use crate::xml::{Element, Node, ns};

/// The protocol namespace (disco feature, enable/disable, notification payload).
pub const NS: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const DATA: &str = "jabber:x:data";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
const SUMMARY: &str = "urn:xmpp:push:summary";
/// xmppd's publish-options field by which a client asks for message bodies.
const INCLUDE_BODY: &str = "include-body";
/// Registrations per account: one per app installation, so a handful is normal.
const MAX_REGISTRATIONS: usize = 20;

/// The module; it knows which sessions are hibernated from their session events.
#[derive(Default)]
pub struct Push {
    hibernated: Mutex<HashSet<(FullJid, u64)>>,
}

/// What a notification says about a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    sender: String,
    body: Option<String>,
}

impl Notice {
    /// `Some` for a message worth a notification.
    pub fn of(el: &Element) -> Option<Notice> {
        worth_notifying(el).then(|| Notice {
            sender: el.attr("from").unwrap_or_default().to_string(),
            body: el.child_text("body", ns::CLIENT),
        })
    }
}

/// A chat or normal message with a body or an end-to-end encrypted payload: something a
/// person would want to know about (not chat states, receipts or errors).
pub fn worth_notifying(el: &Element) -> bool {
    if el.name != "message" || !matches!(el.attr("type"), None | Some("chat" | "normal")) {
        return false;
    }
    el.elements().any(|c| {
        (c.name == "body" && c.ns == ns::CLIENT)
            || c.name == "encrypted"
            || c.name == "openpgp"
            || (c.name == "x" && c.ns == "jabber:x:encrypted")
    })
}

/// A publish awaiting the app server's answer.
struct Pending {
    user: BareJid,
    jid: Jid,
    node: String,
}

/// Stanzas held by each hibernated session that were worth a notification.
struct HeldNotable(usize);

impl Module for Push {
    fn name(&self) -> &'static str {
        "push"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.offline_stored(me.clone());
        r.session_events(me);
    }
}

#[async_trait]
impl OfflineStoredHook for Push {
    async fn stored(&self, ctx: &Arc<Context>, user: &BareJid, el: &Element) {
        if let Some(notice) = Notice::of(el) {
            notify_offline(ctx, user, notice).await;
        }
    }
}

#[async_trait]
impl SessionEvents for Push {
    async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        let (user, resource) = (session.bare, session.resource);
        match event {
            SessionEvent::Hibernated { unacked } => {
                self.set_hibernated(session, true);
                // What the client never acknowledged may be news it has not seen.
                let count = unacked.iter().filter(|e| worth_notifying(e)).count();
                session.ext.insert(HeldNotable(count));
                if let Some(last) = unacked.iter().rev().find(|e| worth_notifying(e)) {
                    self.notify_hibernated(ctx, user, resource, count, last)
                        .await;
                }
            }
            SessionEvent::QueuedWhileHibernated { stanza } if worth_notifying(stanza) => {
                let held = session.ext.get_or_insert_with(|| HeldNotable(0));
                held.0 += 1;
                let count = held.0;
                self.notify_hibernated(ctx, user, resource, count, stanza)
                    .await;
            }
            SessionEvent::Resumed | SessionEvent::Ended { .. } => {
                session.ext.remove::<HeldNotable>();
                self.set_hibernated(session, false);
            }
            _ => {}
        }
    }
}

/// Answers to publishes: an error disables that registration (XEP-0357 §7.1).
struct PublishAnswer;

#[async_trait]
impl ResponseHandler for PublishAnswer {
    async fn response(&self, ctx: &Arc<Context>, iq: &Element, context: Box<dyn Any + Send>) {
        let Ok(p) = context.downcast::<Pending>() else {
            return;
        };
        if iq.attr("type") != Some("error") {
            return;
        }
        let condition = iq
            .child("error", ns::CLIENT)
            .and_then(Element::first_element)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        warn!(user = %p.user, service = %p.jid, node = %p.node, %condition,
            "push service refused a notification; registration disabled");
        if let Err(e) = ctx
            .storage
            .push
            .disable(&p.user, &p.jid, Some(&p.node))
            .await
        {
            warn!(error = %e, "disabling push registration failed");
        }
    }
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", DATA)
        .with_attr("var", var)
        .with_child(Element::new("value", DATA).with_text(value))
}

fn field_value<'a>(form: &'a Element, var: &str) -> Option<&'a Element> {
    form.elements()
        .find(|f| f.is("field", DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.child("value", DATA))
}

/// The publish iq for one registration (XEP-0357 §7).
fn publish(
    user: &BareJid,
    reg: &PushRegistration,
    count: usize,
    notice: &Notice,
    id: &str,
) -> Element {
    let mut form = Element::new("x", DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", SUMMARY).with_attr("type", "hidden"))
        .with_child(field("message-count", &count.to_string()));
    if !notice.sender.is_empty() {
        form.push_child(field("last-message-sender", &notice.sender));
    }
    if reg.include_body
        && let Some(body) = &notice.body
    {
        form.push_child(field("last-message-body", body));
    }
    let mut pubsub = Element::new("pubsub", PUBSUB).with_child(
        Element::new("publish", PUBSUB)
            .with_attr("node", reg.node.clone())
            .with_child(
                Element::new("item", PUBSUB)
                    .with_child(Element::new("notification", NS).with_child(form)),
            ),
    );
    if let Some(options) = reg
        .publish_options
        .as_deref()
        .and_then(|o| crate::xml::parse_stanza(o).ok())
    {
        pubsub.push_child(Element::new("publish-options", PUBSUB).with_child(options));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_attr("from", user.as_str())
        .with_attr("to", reg.jid.as_str())
        .with_child(pubsub)
}

async fn registrations(ctx: &Arc<Context>, user: &BareJid) -> Vec<PushRegistration> {
    match ctx.storage.push.list(user).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "loading push registrations failed");
            Vec::new()
        }
    }
}

async fn publish_all(
    ctx: &Arc<Context>,
    user: &BareJid,
    regs: Vec<PushRegistration>,
    count: usize,
    notice: &Notice,
) {
    for reg in regs {
        let id = format!("push-{}", crate::stream::random_id());
        let iq = publish(user, &reg, count, notice, &id);
        debug!(%user, service = %reg.jid, node = %reg.node, count, "push notification");
        let to = reg.jid.clone();
        let pending = Pending {
            user: user.clone(),
            jid: reg.jid,
            node: reg.node,
        };
        ctx.registry
            .expect_response(id, to, Arc::new(PublishAnswer), Box::new(pending));
        route(ctx, iq).await;
    }
}

/// A message was stored offline for `user`.
async fn notify_offline(ctx: &Arc<Context>, user: &BareJid, notice: Notice) {
    let regs = registrations(ctx, user).await;
    if regs.is_empty() {
        return;
    }
    let count = ctx.storage.offline.count(user).await.unwrap_or(1).max(1);
    publish_all(ctx, user, regs, count, &notice).await;
}

impl Push {
    fn set_hibernated(&self, session: &SessionCtx<'_>, on: bool) {
        let mut set = self.hibernated.lock().unwrap_or_else(|e| e.into_inner());
        let key = (session.full.clone(), session.conn_id);
        if on {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    fn is_hibernated(&self, full: FullJid, conn_id: u64) -> bool {
        let set = self.hibernated.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(&(full, conn_id))
    }

    /// A message reached (or waits in) the hibernated session `user/resource`; `count`
    /// is how many such messages that session holds unacknowledged. Notifies only when
    /// every session of the user is hibernated, and once per message even when it went
    /// to several of them.
    async fn notify_hibernated(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        resource: &str,
        count: usize,
        message: &Element,
    ) {
        let Some(notice) = Notice::of(message) else {
            return;
        };
        let sessions = ctx.sessions.resources(user);
        if sessions
            .iter()
            .any(|s| match user.with_resource_str(&s.resource) {
                Ok(full) => !self.is_hibernated(full, s.conn_id),
                Err(_) => true,
            })
        {
            return;
        }
        let to_bare = message
            .attr("to")
            .and_then(addr::parse)
            .is_none_or(|a| a.resource().is_none());
        if to_bare {
            // The copy to the first resource that received it speaks for all of them.
            let first = sessions
                .iter()
                .filter(|s| s.available && s.priority >= 0)
                .map(|s| s.resource.as_str())
                .min();
            if first.is_some_and(|r| r != resource) {
                return;
            }
        }
        let regs = registrations(ctx, user).await;
        if !regs.is_empty() {
            publish_all(ctx, user, regs, count.max(1), &notice).await;
        }
    }
}

fn truthy(value: &str) -> bool {
    matches!(value.trim(), "1" | "true")
}

/// `<enable jid node>` with an optional publish-options form (XEP-0357 §5).
async fn enable(ctx: &Arc<Context>, user: &BareJid, req: &Element) -> Result<(), StanzaError> {
    let jid = req
        .attr("jid")
        .ok_or_else(|| StanzaError::bad_request().with_text("'jid' is required"))?;
    let jid = addr::parse(jid).ok_or_else(StanzaError::jid_malformed)?;
    let node = req
        .attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StanzaError::bad_request().with_text("'node' is required"))?;
    let mut include_body = false;
    let mut publish_options = None;
    if let Some(form) = req.child("x", DATA) {
        if field_value(form, "FORM_TYPE").map(Element::text).as_deref() != Some(PUBLISH_OPTIONS) {
            return Err(StanzaError::bad_request().with_text("expected a publish-options form"));
        }
        include_body = field_value(form, INCLUDE_BODY).is_some_and(|v| truthy(&v.text()));
        let mut forwarded = form.clone();
        forwarded.children.retain(|n| {
            !matches!(n, Node::Element(f) if f.name == "field" && f.attr("var") == Some(INCLUDE_BODY))
        });
        publish_options = Some(forwarded.to_stanza_string());
    }
    let reg = PushRegistration {
        jid,
        node: node.to_string(),
        publish_options,
        include_body,
    };
    let existing = ctx.storage.push.list(user).await.map_err(internal)?;
    let known = existing
        .iter()
        .any(|r| r.jid == reg.jid && r.node == reg.node);
    if !known && existing.len() >= MAX_REGISTRATIONS {
        return Err(StanzaError::resource_constraint().with_text("too many push registrations"));
    }
    ctx.storage
        .push
        .enable(user, &reg)
        .await
        .map_err(internal)?;
    debug!(%user, service = %reg.jid, node = %reg.node, "push enabled");
    Ok(())
}

/// `<disable jid [node]>` (XEP-0357 §6).
async fn disable(ctx: &Arc<Context>, user: &BareJid, req: &Element) -> Result<(), StanzaError> {
    let jid = req
        .attr("jid")
        .ok_or_else(|| StanzaError::bad_request().with_text("'jid' is required"))?;
    let jid = addr::parse(jid).ok_or_else(StanzaError::jid_malformed)?;
    let node = req.attr("node").filter(|n| !n.is_empty());
    ctx.storage
        .push
        .disable(user, &jid, node)
        .await
        .map_err(internal)?;
    debug!(%user, service = %jid, "push disabled");
    Ok(())
}

#[async_trait]
impl IqHandler for Push {
    fn namespaces(&self) -> &'static [&'static str] {
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
        // Only the account's own resources manage its registrations.
        let user = own_account(target, iq)?;
        if iq.attr("type") != Some("set") {
            return Err(StanzaError::bad_request());
        }
        let Some(req) = iq.first_element() else {
            return Err(StanzaError::bad_request());
        };
        match req.name.as_str() {
            "enable" => enable(ctx, user, req).await?,
            "disable" => disable(ctx, user, req).await?,
            _ => return Err(StanzaError::bad_request()),
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> crate::addr::BareJid {
        crate::addr::parse_bare(s).unwrap()
    }

    fn message(kind: Option<&str>, child: Element) -> Element {
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("from", "a@x/r")
            .with_child(child);
        if let Some(kind) = kind {
            m.set_attr("type", kind);
        }
        m
    }

    #[test]
    fn notifies_for_bodies_and_encrypted_payloads_only() {
        let body = || Element::new("body", ns::CLIENT).with_text("hi");
        assert!(worth_notifying(&message(None, body())));
        assert!(worth_notifying(&message(Some("chat"), body())));
        assert!(!worth_notifying(&message(Some("headline"), body())));
        assert!(!worth_notifying(&message(Some("error"), body())));
        assert!(!worth_notifying(&message(Some("groupchat"), body())));
        let omemo = Element::new("encrypted", "eu.siacs.conversations.axolotl");
        assert!(worth_notifying(&message(Some("chat"), omemo)));
        let composing = Element::new("composing", ns::CHATSTATES);
        assert!(!worth_notifying(&message(Some("chat"), composing)));
        let presence = Element::new("presence", ns::CLIENT).with_child(body());
        assert!(!worth_notifying(&presence));
        let notice = Notice::of(&message(Some("chat"), body())).unwrap();
        assert_eq!(notice.sender, "a@x/r");
        assert_eq!(notice.body.as_deref(), Some("hi"));
    }

    #[test]
    fn publish_carries_summary_and_options_but_body_only_on_request() {
        let mut reg = PushRegistration {
            jid: crate::addr::parse("push.example").unwrap(),
            node: "n1".into(),
            publish_options: Some(
                "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s3</value></field></x>"
                    .into(),
            ),
            include_body: false,
        };
        let notice = Notice {
            sender: "a@x/r".into(),
            body: Some("secret text".into()),
        };
        let iq = publish(&j("u@x"), &reg, 2, &notice, "push-1");
        assert_eq!(iq.attr("to"), Some("push.example"));
        assert_eq!(iq.attr("from"), Some("u@x"));
        let pubsub = iq.child("pubsub", PUBSUB).unwrap();
        let publish_el = pubsub.child("publish", PUBSUB).unwrap();
        assert_eq!(publish_el.attr("node"), Some("n1"));
        let form = publish_el
            .child("item", PUBSUB)
            .and_then(|i| i.child("notification", NS))
            .and_then(|n| n.child("x", DATA))
            .unwrap();
        let value = |var| field_value(form, var).map(Element::text);
        assert_eq!(value("FORM_TYPE").as_deref(), Some(SUMMARY));
        assert_eq!(value("message-count").as_deref(), Some("2"));
        assert_eq!(value("last-message-sender").as_deref(), Some("a@x/r"));
        assert_eq!(value("last-message-body"), None);
        let options = pubsub
            .child("publish-options", PUBSUB)
            .and_then(|o| o.child("x", DATA))
            .unwrap();
        assert_eq!(
            field_value(options, "secret").map(Element::text).as_deref(),
            Some("s3")
        );

        reg.include_body = true;
        reg.publish_options = None;
        let iq = publish(&j("u@x"), &reg, 1, &notice, "push-2");
        assert!(!iq.to_stanza_string().contains("publish-options"));
        assert!(iq.to_stanza_string().contains("secret text"));
    }
}
