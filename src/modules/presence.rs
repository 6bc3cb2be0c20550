//! RFC 6121 §3–§4: presence subscriptions (the full state machine, including
//! pre-approval), initial/available/unavailable broadcast, probes and directed presence.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use super::roster;
use crate::addr::{self, BareJid, FullJid, Jid};
use crate::context::Context;
use crate::registry::{
    Module, PresenceHandler, Registrar, SessionCtx, SessionEvent, SessionEvents,
};
use crate::router::{deliver_to_session, route, route_reply};
use crate::storage::{PendingSubscription, PresenceContacts, RosterItem};
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

/// RFC 6121 presence: the registry hands it presence to local accounts and from local
/// sessions; it keeps each session's [`PresenceState`] in the session's extensions.
pub struct Presence;

impl Module for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.presence(me.clone());
        r.session_events(me);
    }
}

fn state<'a>(session: &'a mut SessionCtx<'_>) -> &'a mut PresenceState {
    let (full, conn_id) = (session.full, session.conn_id);
    session
        .ext
        .get_or_insert_with(|| PresenceState::new(full, conn_id))
}

#[async_trait]
impl PresenceHandler for Presence {
    async fn inbound(&self, ctx: &Arc<Context>, user: &BareJid, stanza: Element) {
        inbound(ctx, user, stanza).await;
    }

    async fn outbound(&self, ctx: &Arc<Context>, session: &mut SessionCtx<'_>, stanza: Element) {
        let event = outbound(ctx, state(session), stanza).await;
        if let Some(event) = event {
            ctx.registry.session_event(ctx, session, &event).await;
        }
    }
}

#[async_trait]
impl SessionEvents for Presence {
    async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        // A session replaced by a conflict stays silent: its successor has the same
        // full JID.
        if let SessionEvent::Ended { replaced: false } = event
            && let Some(st) = session.ext.get_mut::<PresenceState>()
            && (st.available || !st.directed.is_empty())
        {
            broadcast_unavailable(ctx, st, None).await;
        }
    }
}

/// Presence state a c2s session keeps for itself.
#[derive(Debug)]
pub struct PresenceState {
    pub full: FullJid,
    pub bare: BareJid,
    pub resource: String,
    pub conn_id: u64,
    pub available: bool,
    /// JIDs that got directed presence and must get unavailable at logout (RFC 6121 §4.6).
    pub directed: HashSet<Jid>,
}

impl PresenceState {
    pub fn new(full: &FullJid, conn_id: u64) -> Self {
        PresenceState {
            full: full.clone(),
            bare: full.to_bare(),
            resource: full.resource().as_str().to_string(),
            conn_id,
            available: false,
            directed: HashSet::new(),
        }
    }
}

fn kind(stanza: &Element) -> &str {
    stanza.attr("type").unwrap_or("available")
}

fn is_subscription(kind: &str) -> bool {
    matches!(
        kind,
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"
    )
}

fn presence(from: &str, to: &str, kind: &str) -> Element {
    Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", kind)
}

/// The user's presence subscribers and subscriptions (none if storage fails).
async fn presence_contacts(ctx: &Arc<Context>, user: &BareJid) -> Arc<PresenceContacts> {
    match ctx.storage.roster.presence_contacts(user).await {
        Ok(c) => c,
        Err(e) => {
            log_err(e);
            Arc::default()
        }
    }
}

fn log_err(e: impl std::fmt::Display) {
    warn!(error = %e, "presence storage failed");
}

/// Presence sent by a local session (`from` already stamped with its full JID). Returns
/// the session event that a broadcast amounts to.
async fn outbound(
    ctx: &Arc<Context>,
    st: &mut PresenceState,
    stanza: Element,
) -> Option<SessionEvent<'static>> {
    let kind = kind(&stanza).to_string();
    let Some(to) = stanza.attr("to").map(str::to_string) else {
        return match kind.as_str() {
            "available" => broadcast_available(ctx, st, stanza).await,
            "unavailable" => {
                broadcast_unavailable(ctx, st, Some(stanza)).await;
                Some(SessionEvent::Unavailable)
            }
            // Subscription requests need a target; probes are the server's job.
            _ => {
                route_reply(ctx, &stanza, StanzaError::bad_request()).await;
                None
            }
        };
    };
    let Some(target) = addr::parse(&to) else {
        route_reply(ctx, &stanza, StanzaError::jid_malformed()).await;
        return None;
    };
    match kind.as_str() {
        k if is_subscription(k) => {
            outbound_subscription(ctx, &st.bare, &target.to_bare(), k, stanza).await
        }
        "probe" => {}
        "available" => {
            // Each needs an unavailable at logout: bounded like the roster.
            let limit = ctx.config.limits.max_roster_items;
            if !st.directed.contains(&target) && st.directed.len() >= limit {
                let error =
                    StanzaError::resource_constraint().with_text("too many directed presences");
                route_reply(ctx, &stanza, error).await;
                return None;
            }
            st.directed.insert(target);
            route(ctx, stanza).await;
        }
        "unavailable" => {
            st.directed.remove(&target);
            route(ctx, stanza).await;
        }
        _ => route(ctx, stanza).await,
    }
    None
}

async fn broadcast_available(
    ctx: &Arc<Context>,
    st: &mut PresenceState,
    mut stanza: Element,
) -> Option<SessionEvent<'static>> {
    let priority = match stanza.child_text("priority", ns::CLIENT) {
        None => 0,
        Some(p) => match p.trim().parse::<i8>() {
            Ok(p) => p,
            Err(_) => {
                route_reply(ctx, &stanza, StanzaError::bad_request()).await;
                return None;
            }
        },
    };
    stanza.set_attr("from", st.full.as_str());
    stanza.remove_attr("to");
    ctx.registry
        .presence_outbound_available(ctx, &st.bare, &mut stanza)
        .await;
    let initial = !st.available;
    st.available = true;
    let snapshot = stanza.clone();
    ctx.sessions
        .update(&st.bare, &st.resource, st.conn_id, move |s| {
            s.available = true;
            s.priority = priority;
            s.presence = Some(snapshot);
        });

    let contacts = presence_contacts(ctx, &st.bare).await;
    for jid in &contacts.subscribers {
        let mut copy = stanza.clone();
        copy.set_attr("to", jid.as_str());
        route(ctx, copy).await;
    }
    to_own_resources(ctx, st, &stanza);

    if initial {
        for jid in &contacts.subscriptions {
            route(ctx, presence(st.full.as_str(), jid.as_str(), "probe")).await;
        }
        redeliver_pending(ctx, st).await;
    }
    Some(SessionEvent::Available { initial, priority })
}

/// Delivers `stanza` to each available resource of the user (including the sender).
fn to_own_resources(ctx: &Arc<Context>, st: &PresenceState, stanza: &Element) {
    let targets = ctx.sessions.select(&st.bare, |s| {
        (s.available || s.resource == st.resource)
            .then(|| (s.resource.clone(), s.tx.clone(), s.control.clone()))
    });
    for (resource, tx, control) in targets {
        let mut copy = stanza.clone();
        copy.set_attr("to", format!("{}/{resource}", st.bare));
        deliver_to_session(&tx, &control, copy);
    }
}

/// Unavailable broadcast: explicit, or at session end (`stanza` None).
pub async fn broadcast_unavailable(
    ctx: &Arc<Context>,
    st: &mut PresenceState,
    stanza: Option<Element>,
) {
    let mut stanza = stanza
        .unwrap_or_else(|| Element::new("presence", ns::CLIENT).with_attr("type", "unavailable"));
    stanza.set_attr("from", st.full.as_str());
    stanza.remove_attr("to");
    let was_available = st.available;
    st.available = false;
    ctx.sessions
        .update(&st.bare, &st.resource, st.conn_id, |s| {
            s.available = false;
            s.presence = None;
        });
    let mut sent: HashSet<Jid> = HashSet::new();
    if was_available {
        ctx.registry
            .presence_outbound_unavailable(ctx, &st.bare, &stanza)
            .await;
        for jid in &presence_contacts(ctx, &st.bare).await.subscribers {
            let mut copy = stanza.clone();
            copy.set_attr("to", jid.as_str());
            sent.insert(Jid::from(jid.clone()));
            route(ctx, copy).await;
        }
        to_own_resources(ctx, st, &stanza);
    }
    for target in std::mem::take(&mut st.directed) {
        if sent.contains(&target) {
            continue;
        }
        let mut copy = stanza.clone();
        copy.set_attr("to", target.into_inner());
        route(ctx, copy).await;
    }
}

async fn redeliver_pending(ctx: &Arc<Context>, st: &PresenceState) {
    let pending = match ctx.storage.roster.pending_in(&st.bare).await {
        Ok(p) => p,
        Err(e) => {
            log_err(e);
            return;
        }
    };
    let Some(session) = ctx.sessions.get(&st.bare, &st.resource) else {
        return;
    };
    for p in pending {
        let mut stanza = p
            .stanza
            .as_deref()
            .and_then(|s| crate::xml::parse_stanza(s).ok())
            .unwrap_or_else(|| Element::new("presence", ns::CLIENT));
        stanza.set_attr("type", "subscribe");
        stanza.set_attr("from", p.from.as_str());
        stanza.set_attr("to", st.bare.as_str());
        deliver_to_session(&session.tx, &session.control, stanza);
    }
}

/// Sends a bare subscription-type presence from `user` to `contact`.
pub async fn send_subscription(ctx: &Arc<Context>, user: &BareJid, contact: &BareJid, kind: &str) {
    route(ctx, presence(user.as_str(), contact.as_str(), kind)).await;
}

/// Sends unavailable from each of the user's available resources to `contact`.
pub async fn send_unavailable_from_all(ctx: &Arc<Context>, user: &BareJid, contact: &BareJid) {
    for s in ctx.sessions.resources(user) {
        if s.available {
            route(
                ctx,
                presence(
                    &format!("{user}/{}", s.resource),
                    contact.as_str(),
                    "unavailable",
                ),
            )
            .await;
        }
    }
}

/// Sends the current presence of each of the user's available resources to `to`.
async fn send_current_presence(ctx: &Arc<Context>, user: &BareJid, to: &str) {
    for s in ctx.sessions.resources(user) {
        if let (true, Some(mut p)) = (s.available, s.presence) {
            p.set_attr("to", to);
            route(ctx, p).await;
        }
    }
}

async fn load_item(ctx: &Arc<Context>, user: &BareJid, contact: &BareJid) -> Option<RosterItem> {
    match ctx.storage.roster.item(user, contact).await {
        Ok(i) => i,
        Err(e) => {
            log_err(e);
            None
        }
    }
}

async fn has_pending(ctx: &Arc<Context>, user: &BareJid, contact: &BareJid) -> bool {
    match ctx.storage.roster.pending_in(user).await {
        Ok(list) => list.iter().any(|p| p.from == *contact),
        Err(e) => {
            log_err(e);
            false
        }
    }
}

async fn save(ctx: &Arc<Context>, user: &BareJid, item: &RosterItem) {
    if let Err(e) = roster::save_and_push(ctx, user, item).await {
        log_err(e);
    }
}

async fn clear_pending(ctx: &Arc<Context>, user: &BareJid, contact: &BareJid) {
    if let Err(e) = ctx.storage.roster.remove_pending_in(user, contact).await {
        log_err(e);
    }
}

/// RFC 6121 §3, the user's server handling the user's own subscription stanzas.
async fn outbound_subscription(
    ctx: &Arc<Context>,
    user: &BareJid,
    contact: &BareJid,
    kind: &str,
    mut stanza: Element,
) {
    let existing = load_item(ctx, user, contact).await;
    // A request would add the contact to the roster (answered to the sending resource).
    if kind == "subscribe"
        && existing.is_none()
        && roster::roster_full(ctx, user).await.unwrap_or(false)
    {
        route_reply(ctx, &stanza, roster::roster_full_error()).await;
        return;
    }
    // Subscription stanzas travel between bare JIDs (RFC 6121 §3.1.2).
    stanza.set_attr("from", user.as_str());
    stanza.set_attr("to", contact.as_str());
    let mut item = existing
        .clone()
        .unwrap_or_else(|| RosterItem::new(contact.clone()));
    match kind {
        "subscribe" => {
            if !item.subscription.has_to() && (!item.ask || existing.is_none()) {
                item.ask = true;
                save(ctx, user, &item).await;
            }
            route(ctx, stanza).await;
        }
        "subscribed" => {
            if item.subscription.has_from() {
                return;
            }
            if item.pending_in || has_pending(ctx, user, contact).await {
                item.subscription = item.subscription.with_from();
                item.pending_in = false;
                item.approved = false;
                clear_pending(ctx, user, contact).await;
                save(ctx, user, &item).await;
                route(ctx, stanza).await;
                send_current_presence(ctx, user, contact.as_str()).await;
            } else if !item.approved {
                // Pre-approval (RFC 6121 §3.4): remembered, not routed.
                item.approved = true;
                save(ctx, user, &item).await;
            }
        }
        "unsubscribe" => {
            if existing.is_some() && (item.subscription.has_to() || item.ask) {
                item.subscription = item.subscription.without_to();
                item.ask = false;
                save(ctx, user, &item).await;
            }
            route(ctx, stanza).await;
        }
        "unsubscribed" => {
            let pending = item.pending_in || has_pending(ctx, user, contact).await;
            let had_from = item.subscription.has_from();
            if had_from || pending || item.approved {
                clear_pending(ctx, user, contact).await;
                if existing.is_some() {
                    item.subscription = item.subscription.without_from();
                    item.pending_in = false;
                    item.approved = false;
                    save(ctx, user, &item).await;
                }
                if had_from {
                    send_unavailable_from_all(ctx, user, contact).await;
                }
            }
            route(ctx, stanza).await;
        }
        _ => {}
    }
}

/// Presence addressed to a local account (bare JID, or a full JID for subscriptions
/// and probes).
pub async fn inbound(ctx: &Arc<Context>, user: &BareJid, stanza: Element) {
    let Some(from) = stanza.attr("from").and_then(addr::parse) else {
        return;
    };
    let kind = kind(&stanza).to_string();
    if is_subscription(&kind) {
        inbound_subscription(ctx, user, &from.to_bare(), &kind, stanza).await;
        return;
    }
    match kind.as_str() {
        "probe" => {
            let contact = from.to_bare();
            let subscribed = contact == *user
                || load_item(ctx, user, &contact)
                    .await
                    .is_some_and(|i| i.subscription.has_from());
            if subscribed {
                send_current_presence(ctx, user, from.as_str()).await;
            }
        }
        // Available, unavailable and errors go to every available resource.
        _ => {
            if kind != "error" {
                ctx.registry.presence_inbound_seen(ctx, user, &stanza).await;
            }
            deliver_to_available(ctx, user, &stanza)
        }
    }
}

fn deliver_to_available(ctx: &Arc<Context>, user: &BareJid, stanza: &Element) {
    for (tx, control) in ctx.sessions.senders_where(user, |s| s.available) {
        deliver_to_session(&tx, &control, stanza.clone());
    }
}

/// Subscription state changes go to resources that fetched the roster (RFC 6121 §3.1.6,
/// §3.2.3, §3.3.3), and always before the roster push that records the change.
fn deliver_to_interested(ctx: &Arc<Context>, user: &BareJid, stanza: &Element) {
    let interested = ctx.registry.flag::<roster::Interested>();
    for (tx, control) in ctx
        .sessions
        .senders_where(user, |s| s.flags.has(interested) || s.available)
    {
        deliver_to_session(&tx, &control, stanza.clone());
    }
}

/// Whether a subscription request from `contact` may be kept for `user`: a known one
/// may, a new one while `limits.max_pending_subscriptions` wait already is refused with
/// `resource-constraint` (any server can mint requesters without end).
async fn room_for_request(
    ctx: &Arc<Context>,
    user: &BareJid,
    contact: &BareJid,
    request: &Element,
) -> bool {
    let pending = match ctx.storage.roster.pending_in(user).await {
        Ok(p) => p,
        Err(e) => {
            log_err(e);
            return true;
        }
    };
    if pending.len() < ctx.config.limits.max_pending_subscriptions
        || pending.iter().any(|p| p.from == *contact)
    {
        return true;
    }
    let error =
        StanzaError::resource_constraint().with_text("too many subscription requests pending");
    route_reply(ctx, request, error).await;
    false
}

/// What of a subscription request is kept for redelivery: its status text and the
/// requester's nickname (XEP-0172), not arbitrary payloads.
fn kept_request(request: &Element) -> Element {
    let mut kept = Element::new("presence", ns::CLIENT);
    if let Some(lang) = request.attr("xml:lang") {
        kept.set_attr("xml:lang", lang);
    }
    for child in request.elements() {
        let wanted = (child.ns == ns::CLIENT && child.name == "status")
            || (child.ns == NICK && child.name == "nick");
        if wanted {
            kept.push_child(child.clone());
        }
    }
    kept
}

/// XEP-0172 user nickname, which a subscription request may carry.
const NICK: &str = "http://jabber.org/protocol/nick";

async fn inbound_subscription(
    ctx: &Arc<Context>,
    user: &BareJid,
    contact: &BareJid,
    kind: &str,
    mut stanza: Element,
) {
    stanza.set_attr("from", contact.as_str());
    stanza.set_attr("to", user.as_str());
    let existing = load_item(ctx, user, contact).await;
    match kind {
        "subscribe" => {
            if let Some(item) = &existing {
                if item.subscription.has_from() {
                    send_subscription(ctx, user, contact, "subscribed").await;
                    return;
                }
                if item.approved {
                    let mut item = item.clone();
                    item.subscription = item.subscription.with_from();
                    item.approved = false;
                    save(ctx, user, &item).await;
                    send_subscription(ctx, user, contact, "subscribed").await;
                    send_current_presence(ctx, user, contact.as_str()).await;
                    return;
                }
            }
            if !room_for_request(ctx, user, contact, &stanza).await {
                return;
            }
            if let Some(mut item) = existing
                && !item.pending_in
            {
                item.pending_in = true;
                // Pending-in is not shown in the roster, so no push.
                if let Err(e) = ctx.storage.roster.put_item(user, &item).await {
                    log_err(e);
                }
            }
            let pending = PendingSubscription {
                from: contact.clone(),
                stanza: Some(kept_request(&stanza).to_stanza_string()),
            };
            if let Err(e) = ctx.storage.roster.add_pending_in(user, &pending).await {
                log_err(e);
            }
            deliver_to_available(ctx, user, &stanza);
        }
        "subscribed" => {
            let Some(mut item) = existing else { return };
            if !item.ask {
                return;
            }
            item.subscription = item.subscription.with_to();
            item.ask = false;
            deliver_to_interested(ctx, user, &stanza);
            save(ctx, user, &item).await;
        }
        "unsubscribe" => {
            let pending = has_pending(ctx, user, contact).await;
            clear_pending(ctx, user, contact).await;
            let Some(mut item) = existing else { return };
            if item.subscription.has_from() || item.pending_in || pending {
                item.subscription = item.subscription.without_from();
                item.pending_in = false;
                deliver_to_interested(ctx, user, &stanza);
                save(ctx, user, &item).await;
            }
        }
        "unsubscribed" => {
            let Some(mut item) = existing else { return };
            if item.subscription.has_to() || item.ask {
                item.subscription = item.subscription.without_to();
                item.ask = false;
                deliver_to_interested(ctx, user, &stanza);
                save(ctx, user, &item).await;
            }
        }
        _ => {}
    }
}
