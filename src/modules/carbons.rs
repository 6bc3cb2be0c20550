//! XEP-0280 Message Carbons: copies of a user's one-to-one messages for the user's other
//! carbons-enabled resources, so every device sees the whole conversation.

use std::sync::Arc;

use async_trait::async_trait;

use super::mam::{FORWARD, HINTS, add_stanza_id};
use super::{IqHandler, IqTarget};
use crate::addr::{self, BareJid, FullJid, Jid};
use crate::context::Context;
use crate::registry::{
    BindInline, Extensions, Flow, InboundMessageHook, Incoming, Module, Now, OutboundMessageHook,
    Outgoing, Registrar, SessionCtx,
};
use crate::router::deliver_to_session;
use crate::storage::ArchiveStamp;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub const NS: &str = "urn:xmpp:carbons:2";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

pub struct Carbons;

/// Session flag: carbons enabled on the session.
pub struct Enabled;

/// Where carbons act among the message hooks: after blocking and archiving, so copies
/// carry the archive's stanza-id.
const HOOK_ORDER: i32 = 30;

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        r.session_flag::<Enabled>();
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.bind_inline(NS, me.clone());
        r.outbound_message(HOOK_ORDER, me.clone());
        r.inbound_message(HOOK_ORDER, me);
    }
}

/// Copies are queued, never awaited: all of it is done in the synchronous parts.
impl OutboundMessageHook for Carbons {
    fn outbound_now(
        &self,
        ctx: &Arc<Context>,
        msg: &Outgoing<'_>,
        el: &mut Element,
        notes: &mut Extensions,
    ) -> Now<Flow> {
        sent(ctx, msg, el, notes.get::<ArchiveStamp>());
        Now::Done(Flow::Continue)
    }
}

impl InboundMessageHook for Carbons {
    fn inbound_now(&self, ctx: &Arc<Context>, msg: &Incoming<'_>, el: &mut Element) -> Now<()> {
        // Only the user's own account sends carbons (§11): a forged one could put words
        // in the user's mouth.
        if msg.from != msg.user {
            el.remove_children("sent", NS);
            el.remove_children("received", NS);
        }
        if !same_account(msg.from, msg.user) {
            received(ctx, msg.user, msg.resource, el);
        }
        strip_private(el);
        Now::Done(())
    }
}

/// XEP-0386: `<enable/>` in the bind request; enabling cannot fail, so nothing is answered.
impl BindInline for Carbons {
    fn enable(
        &self,
        ctx: &Context,
        session: &mut SessionCtx<'_>,
        request: &Element,
    ) -> Option<Element> {
        if request.name == "enable" {
            set_enabled(ctx, session.bare, session.resource, session.conn_id, true);
        }
        None
    }
}

fn set_enabled(ctx: &Context, user: &BareJid, resource: &str, conn_id: u64, enable: bool) {
    let flag = ctx.registry.flag::<Enabled>();
    ctx.sessions
        .update(user, resource, conn_id, |s| s.flags.set(flag, enable));
}

/// Whether `jid` is `user` or one of its resources.
fn same_account(jid: &Jid, user: &BareJid) -> bool {
    jid.node() == user.node() && jid.domain() == user.domain()
}

#[async_trait]
impl IqHandler for Carbons {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let Some(from) = iq.attr("from").and_then(addr::parse_full) else {
            return Err(StanzaError::not_allowed());
        };
        let user = from.to_bare();
        // Clients send this without 'to' (their account) or to their server; only a local
        // session can switch its own carbons (§3.2: not-allowed otherwise).
        let own = match target {
            IqTarget::Account(bare) => *bare == user,
            IqTarget::Server(domain) => user.node().is_some() && user.domain() == &**domain,
        };
        let session = ctx.sessions.get(&user, from.resource().as_str());
        let (true, Some(session)) = (own, session) else {
            return Err(StanzaError::not_allowed());
        };
        if iq.attr("type") != Some("set") {
            return Err(StanzaError::bad_request());
        }
        let enable = match iq.first_element().map(|p| p.name.as_str()) {
            Some("enable") => true,
            Some("disable") => false,
            _ => return Err(StanzaError::bad_request()),
        };
        // Enabling twice is not an error (§8.1).
        set_enabled(ctx, &user, &session.resource, session.conn_id, enable);
        Ok(None)
    }
}

/// §6: chat messages, and normal ones with a body; never MUC traffic (including private
/// messages through a room), errors, or messages the sender marked private / no-copy.
pub fn eligible(el: &Element) -> bool {
    let kind_ok = match el.attr("type").unwrap_or("normal") {
        "chat" => true,
        "normal" => el.has_child("body", ns::CLIENT),
        _ => false,
    };
    kind_ok
        && !el.has_child("x", MUC_USER)
        && !el.has_child("private", NS)
        && !el.has_child("no-copy", HINTS)
}

fn copy(user: &BareJid, resource: &str, kind: &str, original: &Element) -> Element {
    let mut wrapper = Element::new("message", ns::CLIENT)
        .with_attr("from", user.as_str())
        .with_attr("to", format!("{user}/{resource}"));
    if let Some(t) = original.attr("type") {
        wrapper.set_attr("type", t);
    }
    wrapper.with_child(
        Element::new(kind, NS)
            .with_child(Element::new("forwarded", FORWARD).with_child(original.clone())),
    )
}

/// Copies go to the resources with carbons enabled that `skip` does not exclude; the
/// original is cloned only when there is one (most messages have no carbon target).
fn send_copies(
    ctx: &Arc<Context>,
    user: &BareJid,
    kind: &str,
    original: &Element,
    stamp: Option<&ArchiveStamp>,
    skip: impl Fn(&crate::router::SessionInfo) -> bool,
) {
    let enabled = ctx.registry.flag::<Enabled>();
    if !ctx.sessions.any_flagged(enabled) {
        // Nobody on the server has carbons on: no account to look at.
        return;
    }
    let targets = ctx.sessions.select(user, |s| {
        (s.flags.has(enabled) && !skip(s))
            .then(|| (s.resource.clone(), s.tx.clone(), s.control.clone()))
    });
    if targets.is_empty() {
        return;
    }
    let mut stamped;
    let original = match stamp {
        Some(a) => {
            stamped = original.clone();
            add_stanza_id(&mut stamped, user, &a.id);
            &stamped
        }
        None => original,
    };
    for (resource, tx, control) in targets {
        deliver_to_session(&tx, &control, copy(user, &resource, kind, original));
    }
}

fn sent(ctx: &Arc<Context>, msg: &Outgoing<'_>, el: &Element, archived: Option<&ArchiveStamp>) {
    if !eligible(el) {
        return;
    }
    let sender: &FullJid = msg.from;
    let target = match msg.to.try_as_full() {
        Ok(to) if same_account(msg.to, msg.user) => Some(to.resource().as_str()),
        _ => None,
    };
    send_copies(ctx, msg.user, "sent", el, archived, |s| {
        s.resource == sender.resource().as_str() || Some(s.resource.as_str()) == target
    });
}

fn received(ctx: &Arc<Context>, user: &BareJid, resource: Option<&str>, el: &Element) {
    if !eligible(el) {
        return;
    }
    match resource {
        Some(r) => send_copies(ctx, user, "received", el, None, |s| s.resource == r),
        None => send_copies(ctx, user, "received", el, None, |s| {
            s.available && s.priority >= 0
        }),
    }
}

fn strip_private(el: &mut Element) {
    el.remove_children("private", NS);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        crate::xml::parse_stanza(xml).unwrap()
    }

    #[test]
    fn eligibility_follows_section_6() {
        assert!(eligible(&parse(
            "<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(eligible(&parse("<message><body>x</body></message>")));
        assert!(!eligible(&parse(
            "<message type='normal'><x xmlns='urn:x'/></message>"
        )));
        assert!(!eligible(&parse(
            "<message type='groupchat'><body>x</body></message>"
        )));
        assert!(!eligible(&parse(
            "<message type='error'><body>x</body></message>"
        )));
        assert!(!eligible(&parse(
            "<message type='headline'><body>x</body></message>"
        )));
        assert!(!eligible(&parse(
            "<message type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>"
        )));
        assert!(!eligible(&parse(
            "<message type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(!eligible(&parse(
            "<message type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>"
        )));
    }

    #[test]
    fn copy_wraps_the_original_from_the_bare_jid() {
        let original =
            parse("<message from='a@x/one' to='b@y' type='chat'><body>x</body></message>");
        let c = copy(&addr::parse_bare("a@x").unwrap(), "two", "sent", &original);
        assert_eq!(c.attr("from"), Some("a@x"));
        assert_eq!(c.attr("to"), Some("a@x/two"));
        assert_eq!(c.attr("type"), Some("chat"));
        let inner = c
            .child("sent", NS)
            .and_then(|s| s.child("forwarded", FORWARD))
            .and_then(|f| f.child("message", ns::CLIENT))
            .unwrap();
        assert_eq!(inner, &original);
    }
}
