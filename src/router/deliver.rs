//! Delivery per RFC 6121 §8.5: to the server, to a bare JID, to a full JID.

use std::sync::Arc;

use tracing::{debug, warn};

use super::queue::TrySendError;
use super::sessions::{OwnDelivery, keep_for_own_session};
use super::{SessionCommand, SessionControl, SessionSender};
use crate::addr::{self, BareJid, FullJid, Jid};
use crate::context::Context;
use crate::registry::{Incoming, IqTarget};
use crate::stream::{StanzaError, StreamError, StreamErrorCondition, error_reply};
use crate::xml::Element;

/// Puts a stanza on a session's queue. A session whose queue is full is not keeping up:
/// it is closed rather than letting memory grow. What a session's own task sends to that
/// session (offline messages, probe answers at login) is kept aside for it instead: the
/// task cannot drain its queue while it is busy filling it.
pub fn deliver_to_session(
    tx: &SessionSender,
    control: &Arc<SessionControl>,
    stanza: Element,
) -> bool {
    offer(tx, control, stanza).is_ok()
}

/// Like [`deliver_to_session`]; a refused stanza comes back.
fn offer(
    tx: &SessionSender,
    control: &Arc<SessionControl>,
    stanza: Element,
) -> Result<(), Element> {
    let stanza = match keep_for_own_session(control, stanza) {
        OwnDelivery::Kept => return Ok(()),
        OwnDelivery::Refused(stanza) => return Err(stanza),
        OwnDelivery::NotOwn(stanza) => stanza,
    };
    let bytes = stanza.approx_bytes();
    if !control.reserve(bytes) {
        warn!(
            queued_bytes = control.queued_bytes(),
            "session queue over its byte budget; closing the session"
        );
        control.kick(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too much data queued for this session",
        ));
        return Err(stanza);
    }
    match tx.try_send(SessionCommand::Stanza(Box::new((stanza, bytes)))) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(SessionCommand::Stanza(queued))) => {
            let (el, bytes) = *queued;
            control.release(bytes);
            warn!("session queue full; closing the session");
            control.kick(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many stanzas queued for this session",
            ));
            Err(el)
        }
        Err(TrySendError::Closed(SessionCommand::Stanza(queued))) => {
            let (el, bytes) = *queued;
            control.release(bytes);
            Err(el)
        }
    }
}

/// Sends `error` back to the sender of `stanza` (never for an error stanza).
pub async fn route_reply(ctx: &Arc<Context>, stanza: &Element, error: StanzaError) {
    if let Some(reply) = error_reply(stanza, &error) {
        route(ctx, reply).await;
    }
}

/// Routes a stanza whose `from` is trusted (stamped by c2s, verified by s2s) and whose
/// `to` is set.
///
/// Boxed because routing recurses (replies, presence fan-out, module answers).
pub fn route(ctx: &Arc<Context>, stanza: Element) -> BoxFuture<'_> {
    Box::pin(parse_and_route(ctx, stanza, true))
}

/// Like [`route`], without the modules' filter: for the answers a filter itself sends
/// (e.g. the error bounced to a blocked contact, which the block would otherwise stop).
pub fn route_unfiltered(ctx: &Arc<Context>, stanza: Element) -> BoxFuture<'_> {
    Box::pin(parse_and_route(ctx, stanza, false))
}

/// Like [`route`], for a stanza whose `from` and `to` attributes the caller has parsed
/// already (c2s and s2s check them on arrival): they are not parsed a second time. Lent,
/// not given: c2s keeps the session's JID and the last `to` it parsed.
pub fn route_addressed<'a>(
    ctx: &'a Arc<Context>,
    from: &'a Jid,
    to: &'a Jid,
    stanza: Element,
) -> BoxFuture<'a> {
    Box::pin(route_inner(ctx, Some(from), to, stanza, true))
}

pub type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

async fn parse_and_route(ctx: &Arc<Context>, stanza: Element, filter: bool) {
    let Some(to) = stanza.attr("to") else {
        debug!(stanza = %stanza.name, "stanza without 'to' reached the router; dropped");
        return;
    };
    let Some(to) = addr::parse(to) else {
        route_reply(ctx, &stanza, StanzaError::jid_malformed()).await;
        return;
    };
    // Trusted (stamped by c2s, checked by s2s): parsed once here for the filters and hooks.
    let from = stanza.attr("from").and_then(addr::parse);
    route_inner(ctx, from.as_ref(), &to, stanza, filter).await;
}

async fn route_inner(
    ctx: &Arc<Context>,
    from: Option<&Jid>,
    to: &Jid,
    stanza: Element,
    filter: bool,
) {
    if filter
        && let Some(from) = from
        && !ctx.registry.may_route(ctx, from, to, &stanza).await
    {
        return;
    }
    if let Some(service) = ctx.registry.service(to.domain().as_str()) {
        service.handle(ctx, stanza).await;
        return;
    }
    if !ctx.is_local_domain(to.domain().as_str()) {
        to_remote(ctx, to, stanza).await;
        return;
    }
    if to.node().is_none() {
        to_server(ctx, &to.to_bare(), stanza).await;
        return;
    }
    match to.try_as_full() {
        Ok(full) => to_full(ctx, from, full, stanza).await,
        Err(bare) => to_bare(ctx, from, bare, stanza).await,
    }
}

/// Stanzas for domains this server does not host go to the s2s outbound streams; without
/// federation (bare contexts) they bounce with `remote-server-not-found` (RFC 6120
/// §8.3.3.15), never dropped.
async fn to_remote(ctx: &Arc<Context>, to: &Jid, stanza: Element) {
    match ctx.s2s.get() {
        Some(s2s) => s2s.clone().send(ctx, to.domain().as_str(), stanza).await,
        None => {
            debug!(domain = %to.domain(), "no route to remote domain");
            route_reply(ctx, &stanza, StanzaError::remote_server_not_found()).await;
        }
    }
}

fn stanza_type(stanza: &Element) -> &str {
    stanza.attr("type").unwrap_or(match stanza.name.as_str() {
        "message" => "normal",
        "presence" => "available",
        _ => "",
    })
}

async fn to_server(ctx: &Arc<Context>, domain: &BareJid, stanza: Element) {
    match stanza.name.as_str() {
        "iq" => handle_iq(ctx, IqTarget::Server(domain.domain().to_owned()), stanza).await,
        // Messages and presence to the server itself have no handler here; presence
        // (subscriptions, probes) to a server is ignored, as are messages (RFC 6121 §8.5.1
        // leaves this to the server).
        _ => debug!(to = %domain, kind = %stanza.name, "stanza to the server ignored"),
    }
}

async fn handle_iq(ctx: &Arc<Context>, target: IqTarget, iq: Element) {
    match stanza_type(&iq) {
        "get" | "set" => {}
        // Results and errors addressed to the server or an account are the end of a flow;
        // those answering a module's own requests go to that module.
        _ => {
            ctx.registry.iq_response(ctx, &iq).await;
            return;
        }
    }
    let ns = match iq.elements().count() {
        1 => iq.first_element().map(|p| p.ns.clone()),
        _ => None,
    };
    let Some(ns) = ns else {
        route_reply(ctx, &iq, StanzaError::bad_request()).await;
        return;
    };
    match ctx.registry.iq_handler(&ns) {
        Some(handler) => match handler.handle(ctx, &target, &iq).await {
            Ok(payload) => {
                let result = crate::stream::iq_result(&iq, payload);
                route(ctx, result).await;
                handler.after_result(ctx, &target, &iq).await;
            }
            Err(err) => route_reply(ctx, &iq, err).await,
        },
        None => route_reply(ctx, &iq, StanzaError::service_unavailable()).await,
    }
}

async fn account_exists(ctx: &Arc<Context>, bare: &BareJid) -> bool {
    if ctx.sessions.is_online(bare) {
        return true;
    }
    match ctx.storage.accounts.get(bare).await {
        Ok(found) => found.is_some(),
        Err(e) => {
            warn!(error = %e, "account lookup failed");
            false
        }
    }
}

async fn to_bare(ctx: &Arc<Context>, from: Option<&Jid>, bare: &BareJid, stanza: Element) {
    match stanza.name.as_str() {
        "presence" => ctx.registry.presence_inbound(ctx, bare, stanza).await,
        "iq" => {
            if matches!(stanza_type(&stanza), "get" | "set") && !account_exists(ctx, bare).await {
                route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
                return;
            }
            handle_iq(ctx, IqTarget::Account(bare.clone()), stanza).await;
        }
        "message" => message_to_bare(ctx, from, bare, stanza).await,
        _ => {}
    }
}

/// RFC 6121 §8.5.2: messages to a bare JID.
async fn message_to_bare(
    ctx: &Arc<Context>,
    from: Option<&Jid>,
    bare: &BareJid,
    mut stanza: Element,
) {
    let headline = match stanza_type(&stanza) {
        "groupchat" => {
            route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            return;
        }
        "error" => return,
        kind => kind == "headline",
    };
    let targets = ctx
        .sessions
        .senders_where(bare, |s| s.available && s.priority >= 0);
    if targets.is_empty() {
        if headline {
            return;
        }
        if !account_exists(ctx, bare).await {
            route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            return;
        }
        // Bounced before the hooks: a message refused by offline storage (quota) must
        // not sit in the recipient's archive as if it had been accepted.
        if !ctx.registry.offline_admits(ctx, bare, &stanza).await {
            return;
        }
    }
    // Accepted for delivery from here on (archive, carbons).
    if let Some(from) = from {
        let msg = Incoming {
            from,
            user: bare,
            resource: None,
        };
        ctx.registry.inbound_message(ctx, &msg, &mut stanza).await;
    }
    to_resources_or_offline(ctx, bare, targets, stanza, headline, false).await;
}

/// A message accepted for the local account `bare` (its hooks ran) that never reached
/// the session it was for: to the account's other available resources, else to offline
/// storage (RFC 6121 §8.5.3.2.1, XEP-0198 §4). `already_notified`: the user's devices were
/// told about it (no second push).
pub async fn redeliver(
    ctx: &Arc<Context>,
    bare: &BareJid,
    stanza: Element,
    already_notified: bool,
) {
    let targets = ctx
        .sessions
        .senders_where(bare, |s| s.available && s.priority >= 0);
    let headline = stanza_type(&stanza) == "headline";
    to_resources_or_offline(ctx, bare, targets, stanza, headline, already_notified).await;
}

async fn to_resources_or_offline(
    ctx: &Arc<Context>,
    bare: &BareJid,
    targets: Vec<(SessionSender, Arc<SessionControl>)>,
    stanza: Element,
    headline: bool,
    already_notified: bool,
) {
    let mut delivered = false;
    let mut stanza = stanza;
    if let Some(((last_tx, last_control), rest)) = targets.split_last() {
        for (tx, control) in rest {
            delivered |= deliver_to_session(tx, control, stanza.clone());
        }
        // A session ending at the same time (shutdown) refuses it.
        match offer(last_tx, last_control, stanza) {
            Ok(()) => return,
            Err(_) if delivered => return,
            Err(back) => stanza = back,
        }
    }
    if !headline {
        ctx.registry
            .store_offline(ctx, bare, stanza, already_notified)
            .await;
    }
}

/// RFC 6121 §8.5.3: stanzas to a full JID.
async fn to_full(ctx: &Arc<Context>, from: Option<&Jid>, full: &FullJid, mut stanza: Element) {
    let bare = &full.to_bare();
    let resource = full.resource().as_str();
    let kind = stanza_type(&stanza).to_string();
    if stanza.name == "presence"
        && matches!(
            kind.as_str(),
            "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "probe"
        )
    {
        // Subscription management and probes act on the account (RFC 6121 §3, §4.3).
        ctx.registry.presence_inbound(ctx, bare, stanza).await;
        return;
    }
    if let Some((tx, control)) = ctx.sessions.sender(bare, resource) {
        if stanza.name == "message"
            && let Some(from) = from
        {
            let msg = Incoming {
                from,
                user: bare,
                resource: Some(resource),
            };
            ctx.registry.inbound_message(ctx, &msg, &mut stanza).await;
        }
        deliver_to_session(&tx, &control, stanza);
        return;
    }
    match stanza.name.as_str() {
        "message" => match kind.as_str() {
            "groupchat" => route_reply(ctx, &stanza, StanzaError::service_unavailable()).await,
            "error" => {}
            _ => message_to_bare(ctx, from, bare, stanza).await,
        },
        "iq" => {
            if matches!(kind.as_str(), "get" | "set") {
                route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            }
        }
        // Presence to an offline resource is dropped (RFC 6121 §8.5.3.2.3).
        _ => {}
    }
}
