//! XEP-0191 Simple Communications Blocking: the block list, its pushes, and the filter the
//! router applies to every stanza between a local account and a JID it blocked.

// Request parsers return the stanza error to answer with; it is built once per request,
// so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use super::{IqHandler, IqTarget, internal, own_account};
use crate::addr::{self, BareJid, Jid};
use crate::context::Context;
use crate::registry::{
    Extensions, Flow, Module, Now, OutboundMessageHook, Outgoing, Registrar, RouteFilter,
};
use crate::router::{deliver_to_session, route, route_unfiltered};
use crate::stream::{ErrorType, StanzaError, error_reply, random_id};
use crate::xml::{Element, ns};

pub const NS: &str = "urn:xmpp:blocking";
pub const NS_ERRORS: &str = "urn:xmpp:blocking:errors";
/// Entries accepted in one block or unblock request.
const MAX_ITEMS: usize = 1000;

pub struct Blocking;

/// The block-list entries that match `jid` (§3, in XEP-0016 §2.1 order): the full JID, the
/// bare JID, domain/resource, then the domain. A domain entry does not cover other domains
/// under it: blocking `net` must not block every server there.
pub fn candidates(jid: &Jid) -> Vec<String> {
    let mut out = Vec::with_capacity(4);
    let domain = jid.domain().as_str();
    if jid.node().is_some() {
        if jid.is_full() {
            out.push(jid.as_str().to_string());
        }
        out.push(jid.to_bare().into_inner());
    }
    if let Some(r) = jid.resource() {
        out.push(format!("{domain}/{r}"));
    }
    out.push(domain.to_string());
    out
}

/// Whether `user` blocked `jid`. A storage failure lets the stanza through (logged):
/// blocking is a filter, not an authorization check.
pub async fn is_blocked(ctx: &Arc<Context>, user: &BareJid, jid: &Jid) -> bool {
    if !ctx.storage.blocklist.may_block_anyone(user) {
        return false;
    }
    let c = candidates(jid);
    let refs: Vec<&str> = c.iter().map(String::as_str).collect();
    match ctx.storage.blocklist.is_blocked(user, &refs).await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "block list lookup failed");
            false
        }
    }
}

/// A local account, if `jid` is one (`node@vhost`, any resource).
fn local_account(ctx: &Context, jid: &Jid) -> Option<BareJid> {
    (jid.node().is_some() && ctx.is_local_domain(jid.domain().as_str())).then(|| jid.to_bare())
}

fn blocked_error() -> StanzaError {
    StanzaError {
        app: Some(Element::new("blocked", NS_ERRORS)),
        ..StanzaError::new(ErrorType::Cancel, "not-acceptable")
    }
}

/// §3.3: what the user sends to a blocked JID is not routed. Messages and iq requests get
/// `<not-acceptable/>` + `<blocked/>`, delivered straight to the sending session (routing
/// it would meet the block itself); everything else is dropped.
async fn refuse_outbound(ctx: &Arc<Context>, from: &Jid, stanza: &Element) {
    let kind = stanza.attr("type").unwrap_or("");
    let answer = match stanza.name.as_str() {
        "message" => kind != "error",
        "iq" => matches!(kind, "get" | "set"),
        _ => false,
    };
    if !answer {
        return;
    }
    let Some(resource) = from.resource() else {
        return;
    };
    if let (Some(reply), Some((tx, control))) = (
        error_reply(stanza, &blocked_error()),
        ctx.sessions.sender(&from.to_bare(), resource.as_str()),
    ) {
        deliver_to_session(&tx, &control, reply);
    }
}

/// §3.3: stanzas from a blocked JID. Presence vanishes; messages and iq requests are
/// answered `<service-unavailable/>`, as if the user did not exist.
async fn refuse_inbound(ctx: &Arc<Context>, stanza: &Element) {
    let kind = stanza.attr("type").unwrap_or("");
    let answer = match stanza.name.as_str() {
        "message" => kind != "error" && kind != "groupchat",
        "iq" => matches!(kind, "get" | "set"),
        _ => false,
    };
    if answer && let Some(reply) = error_reply(stanza, &StanzaError::service_unavailable()) {
        route_unfiltered(ctx, reply).await;
    }
}

/// Session flag: the resource requested its block list, so it gets block/unblock pushes.
pub struct Requested;

/// Blocking acts first among the message hooks: a refused message is neither archived
/// nor copied.
const HOOK_ORDER: i32 = 10;

impl Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        r.session_flag::<Requested>();
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.outbound_message(HOOK_ORDER, me.clone());
        r.route_filter(me);
    }
}

#[async_trait]
impl OutboundMessageHook for Blocking {
    /// Most users block nobody: nothing to look up for their messages.
    fn outbound_now(
        &self,
        ctx: &Arc<Context>,
        msg: &Outgoing<'_>,
        _: &mut Element,
        _: &mut Extensions,
    ) -> Now<Flow> {
        if ctx.storage.blocklist.may_block_anyone(msg.user) {
            Now::Later
        } else {
            Now::Done(Flow::Continue)
        }
    }

    /// A message a local client sends to a JID it blocked is refused (the sender gets
    /// the error).
    async fn outbound(
        &self,
        ctx: &Arc<Context>,
        msg: &Outgoing<'_>,
        el: &mut Element,
        _: &mut Extensions,
    ) -> Flow {
        if own(msg.user, msg.to) || !is_blocked(ctx, msg.user, msg.to).await {
            return Flow::Continue;
        }
        refuse_outbound(ctx, &Jid::from(msg.from.clone()), el).await;
        Flow::Stop
    }
}

#[async_trait]
impl RouteFilter for Blocking {
    /// Pushes to clients (forgery check), or someone with a block list on either end.
    fn concerns(&self, ctx: &Context, from: &Jid, to: &Jid, stanza: &Element) -> bool {
        if stanza.name == "iq" && to.is_full() {
            return true;
        }
        // Every routed stanza passes here: no allocation.
        let lists = &ctx.storage.blocklist;
        let local = |jid: &Jid| jid.node().is_some() && ctx.is_local_domain(jid.domain().as_str());
        (local(from) && lists.may_block_anyone(from)) || (local(to) && lists.may_block_anyone(to))
    }

    async fn may_route(&self, ctx: &Arc<Context>, from: &Jid, to: &Jid, stanza: &Element) -> bool {
        may_route(ctx, from, to, stanza).await
    }
}

/// The account itself and its own server: never blocked for it.
fn own(user: &BareJid, jid: &Jid) -> bool {
    jid.domain() == user.domain() && (jid.node().is_none() || jid.node() == user.node())
}

/// The router's filter for every stanza with a `from`: `false` if a block list stops it
/// (the refusal has been sent). Stanzas between an account and itself, and between an
/// account and its own server, are never blocked.
async fn may_route(ctx: &Arc<Context>, from: &Jid, to: &Jid, stanza: &Element) -> bool {
    if super::refuse_forged_push(ctx, to, stanza, NS).await {
        return false;
    }
    let blocklist = &ctx.storage.blocklist;
    if let Some(user) = local_account(ctx, from)
        && blocklist.may_block_anyone(&user)
        && !own(&user, to)
        && is_blocked(ctx, &user, to).await
    {
        refuse_outbound(ctx, from, stanza).await;
        return false;
    }
    if let Some(to_bare) = local_account(ctx, to)
        && blocklist.may_block_anyone(&to_bare)
        && !own(&to_bare, from)
        && is_blocked(ctx, &to_bare, from).await
    {
        refuse_inbound(ctx, stanza).await;
        return false;
    }
    true
}

fn items(name: &str, jids: &[Jid]) -> Element {
    let mut el = Element::new(name, NS);
    for j in jids {
        el.push_child(Element::new("item", NS).with_attr("jid", j.as_str()));
    }
    el
}

/// The normalized `jid` of each `<item/>`.
fn parse_items(payload: &Element) -> Result<Vec<Jid>, StanzaError> {
    let mut out: Vec<Jid> = Vec::new();
    for item in payload.elements() {
        if !item.is("item", NS) {
            return Err(StanzaError::bad_request());
        }
        let jid = item
            .attr("jid")
            .and_then(addr::parse)
            .ok_or_else(StanzaError::jid_malformed)?;
        if !out.contains(&jid) {
            out.push(jid);
        }
    }
    if out.len() > MAX_ITEMS {
        return Err(StanzaError::resource_constraint().with_text("too many items"));
    }
    Ok(out)
}

/// Block/unblock pushes to the resources that asked for the block list (§3.3, §3.4).
fn push(ctx: &Arc<Context>, user: &BareJid, payload: &Element) {
    let requested = ctx.registry.flag::<Requested>();
    for s in ctx.sessions.resources(user) {
        if s.flags.has(requested) {
            let iq = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("block-{}", random_id()))
                .with_attr("to", format!("{user}/{}", s.resource))
                .with_child(payload.clone());
            deliver_to_session(&s.tx, &s.control, iq);
        }
    }
}

/// The contacts entitled to the user's presence (subscription from/both) whom `entry`
/// covers, as the addresses to send presence to.
async fn subscribed_covered(ctx: &Arc<Context>, user: &BareJid, entry: &Jid) -> Vec<Jid> {
    let roster = match ctx.storage.roster.roster(user).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "roster lookup failed");
            return Vec::new();
        }
    };
    roster
        .items
        .iter()
        .filter(|i| i.subscription.has_from())
        .filter_map(|i| {
            let covers = match (entry.node(), entry.resource()) {
                // A bare or full entry for this contact; a full one only hides the
                // presence sent to that resource.
                (Some(_), _) => entry.to_bare() == i.jid,
                (None, None) => i.jid.domain() == entry.domain(),
                (None, Some(_)) => false,
            };
            covers.then(|| match entry.node().is_some() && entry.is_full() {
                true => entry.clone(),
                false => Jid::from(i.jid.clone()),
            })
        })
        .collect()
}

/// §3.3: newly blocked contacts see the user go offline.
async fn send_unavailable(ctx: &Arc<Context>, user: &BareJid, entries: &[Jid]) {
    let available: Vec<String> = ctx
        .sessions
        .resources(user)
        .into_iter()
        .filter(|s| s.available)
        .map(|s| format!("{user}/{}", s.resource))
        .collect();
    if available.is_empty() {
        return;
    }
    for entry in entries {
        for to in subscribed_covered(ctx, user, entry).await {
            for from in &available {
                let p = Element::new("presence", ns::CLIENT)
                    .with_attr("from", from.clone())
                    .with_attr("to", to.as_str())
                    .with_attr("type", "unavailable");
                // The filter would now stop it: this one is the block's own doing.
                route_unfiltered(ctx, p).await;
            }
        }
    }
}

/// §3.4: unblocked contacts get the user's current presence again.
async fn send_current_presence(ctx: &Arc<Context>, user: &BareJid, entries: &[Jid]) {
    for entry in entries {
        for to in subscribed_covered(ctx, user, entry).await {
            if is_blocked(ctx, user, &to).await {
                continue;
            }
            for s in ctx.sessions.resources(user) {
                if let (true, Some(mut p)) = (s.available, s.presence) {
                    p.set_attr("to", to.as_str());
                    route(ctx, p).await;
                }
            }
        }
    }
}

#[async_trait]
impl IqHandler for Blocking {
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
        let user = own_account(target, iq)?;
        let Some(payload) = iq.first_element() else {
            return Err(StanzaError::bad_request());
        };
        let store = &ctx.storage.blocklist;
        match (iq.attr("type"), payload.name.as_str()) {
            (Some("get"), "blocklist") => {
                if let Some(from) = iq.attr("from").and_then(addr::parse_full)
                    && let resource = from.resource().as_str()
                    && let Some(s) = ctx.sessions.get(user, resource)
                {
                    let flag = ctx.registry.flag::<Requested>();
                    ctx.sessions
                        .update(user, resource, s.conn_id, |s| s.flags.set(flag, true));
                }
                let list = store.blocklist(user).await.map_err(internal)?;
                Ok(Some(items("blocklist", &list)))
            }
            (Some("set"), "block") => {
                let jids = parse_items(payload)?;
                if jids.is_empty() {
                    return Err(StanzaError::bad_request().with_text("nothing to block"));
                }
                let listed = store.blocklist(user).await.map_err(internal)?;
                let new = jids.iter().filter(|j| !listed.contains(j)).count();
                if listed.len() + new > ctx.config.limits.max_blocklist_items {
                    return Err(
                        StanzaError::resource_constraint().with_text("the block list is full")
                    );
                }
                let added = store.block(user, &jids).await.map_err(internal)?;
                push(ctx, user, &items("block", &jids));
                send_unavailable(ctx, user, &added).await;
                Ok(None)
            }
            (Some("set"), "unblock") => {
                let jids = parse_items(payload)?;
                let removed = if jids.is_empty() {
                    store.unblock_all(user).await.map_err(internal)?
                } else {
                    store.unblock(user, &jids).await.map_err(internal)?
                };
                push(ctx, user, &items("unblock", &jids));
                send_current_presence(ctx, user, &removed).await;
                Ok(None)
            }
            _ => Err(StanzaError::bad_request()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(jid: &str) -> Vec<String> {
        super::candidates(&addr::parse(jid).unwrap())
    }

    #[test]
    fn candidates_in_matching_order() {
        assert_eq!(
            candidates("romeo@chat.montague.net/orchard"),
            [
                "romeo@chat.montague.net/orchard",
                "romeo@chat.montague.net",
                "chat.montague.net/orchard",
                "chat.montague.net",
            ]
        );
        assert_eq!(candidates("example.org"), ["example.org"]);
        // A resource may hold '@' and '/'.
        assert_eq!(
            candidates("a@b/c@d/e"),
            ["a@b/c@d/e", "a@b", "b/c@d/e", "b"]
        );
    }

    #[test]
    fn blocked_error_carries_the_application_condition() {
        let el = blocked_error().to_element();
        assert_eq!(el.attr("type"), Some("cancel"));
        assert!(el.has_child("not-acceptable", ns::STANZA_ERRORS));
        assert!(el.has_child("blocked", NS_ERRORS));
    }

    #[test]
    fn items_are_normalized_and_checked() {
        let el = crate::xml::parse_stanza(
            "<block xmlns='urn:xmpp:blocking'><item jid='Romeo@Montague.NET'/><item jid='romeo@montague.net'/><item jid='evil.example/x'/></block>",
        )
        .unwrap();
        let items: Vec<String> = parse_items(&el)
            .unwrap()
            .into_iter()
            .map(Jid::into_inner)
            .collect();
        assert_eq!(items, ["romeo@montague.net", "evil.example/x"]);
        let bad =
            crate::xml::parse_stanza("<block xmlns='urn:xmpp:blocking'><item jid='@x'/></block>")
                .unwrap();
        assert_eq!(parse_items(&bad).unwrap_err().condition, "jid-malformed");
        let no_jid =
            crate::xml::parse_stanza("<block xmlns='urn:xmpp:blocking'><item/></block>").unwrap();
        assert!(parse_items(&no_jid).is_err());
    }
}
