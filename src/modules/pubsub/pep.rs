//! XEP-0163 personal eventing: a pubsub service on every account's bare JID, on the
//! XEP-0060 engine. Only the owner publishes; nodes are created on first publish;
//! contacts entitled by the node's access model get notifications at each resource whose
//! capabilities (XEP-0115) include `NODE+notify`, and the last item when such a resource
//! comes online or when the owner approves their subscription.
//!
//! Local contacts' resources are found in the session table; remote contacts' resources
//! are learnt from the presence they send to the owner (bounded).

// Helpers return the error type of `IqHandler::handle`, which passes it on as is.
#![allow(clippy::result_large_err)]

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tracing::{debug, warn};

use super::caps::{Caps, CapsCache, Features};
use super::{
    DataForm, NODE_CONFIG, NS, NS_EVENT, NS_OWNER, NodeConfig, PUBLISH_OPTIONS, SendLast,
    check_access, conflict, event_message, invalid_payload, item_element, item_required,
    max_nodes_exceeded, nodeid_required, not_acceptable, payload_too_big, precondition_not_met,
    unsupported,
};
use crate::addr::BareJid;
use crate::context::Context;
use crate::modules::{internal, requester_bare};
use crate::registry::{
    AccountItems, IqHandler, IqTarget, Module, PresenceObserver, Registrar, ResponseHandler,
    RosterObserver, RouteFilter, SessionCtx, SessionEvent, SessionEvents,
};
use crate::router::route;
use crate::storage::{CreateOutcome, NodeRecord, RosterItem, StoredItem};
use crate::stream::{ErrorType, StanzaError};
use crate::xml::{Element, ns};

/// Features of the PEP service, each implemented here (XEP-0060 §10, XEP-0163 §8).
const FEATURES: &[&str] = &[
    NS,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

/// Node names and item ids longer than this are refused (they become storage keys).
pub(super) const MAX_NAME: usize = 1024;

pub struct Pep;

impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let caps = Arc::new(CapsCache::new(r.config().pep.caps_cache_entries));
        r.shared(caps);
        r.shared(Arc::new(RemoteResources::default()));
        let me = Arc::new(PepModule);
        r.iq(me.clone());
        r.account_identity(crate::registry::Identity {
            category: "pubsub",
            kind: "pep",
            name: None,
        });
        r.session_events(me.clone());
        r.presence_observer(me.clone());
        r.account_items(me.clone());
        r.route_filter(me.clone());
        r.roster_observer(me);
    }
}

struct PepModule;

/// The capabilities a session advertised last, so a presence update with the same ones
/// does not resend last items.
struct SeenCaps(Option<String>);

fn caps_cache(ctx: &Context) -> Option<Arc<CapsCache>> {
    ctx.registry.state::<CapsCache>()
}

/// Remote contacts' available resources and their capabilities, per local account whose
/// presence they send: where that account's notifications go beyond this server.
#[derive(Default)]
struct RemoteResources(Mutex<RemoteInner>);

#[derive(Default)]
struct RemoteInner {
    /// owner → remote full JID → caps.
    by_owner: HashMap<String, HashMap<String, Caps>>,
    count: usize,
}

/// Remote resources remembered at most, over all accounts (stale ones, of streams that
/// died without unavailable presence, only cost a notification nobody reads).
const MAX_REMOTE_RESOURCES: usize = 100_000;

impl RemoteResources {
    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteInner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records (or with `None` forgets) a resource; `true` if its caps are new.
    fn set(&self, owner: &str, full: &str, caps: Option<Caps>) -> bool {
        let mut inner = self.lock();
        let RemoteInner { by_owner, count } = &mut *inner;
        match caps {
            None => {
                if let Some(map) = by_owner.get_mut(owner) {
                    if map.remove(full).is_some() {
                        *count -= 1;
                    }
                    if map.is_empty() {
                        by_owner.remove(owner);
                    }
                }
                false
            }
            Some(caps) => {
                let map = by_owner.entry(owner.to_string()).or_default();
                match map.get_mut(full) {
                    Some(old) if *old == caps => false,
                    Some(old) => {
                        *old = caps;
                        true
                    }
                    None if *count >= MAX_REMOTE_RESOURCES => false,
                    None => {
                        map.insert(full.to_string(), caps);
                        *count += 1;
                        true
                    }
                }
            }
        }
    }

    /// The known resources of the remote `bare` that send presence to `owner`.
    fn resources(&self, owner: &str, bare: &str) -> Vec<(String, Caps)> {
        let inner = self.lock();
        let Some(map) = inner.by_owner.get(owner) else {
            return Vec::new();
        };
        map.iter()
            .filter(|(full, _)| super::bare_str(full) == bare)
            .map(|(f, c)| (f.clone(), c.clone()))
            .collect()
    }
}

pub(super) use crate::datetime::now_secs;

pub(super) fn bounded_name(s: Option<&str>) -> Result<&str, StanzaError> {
    match s {
        None | Some("") => Err(nodeid_required()),
        Some(n) if n.len() > MAX_NAME => Err(not_acceptable().with_text("node name too long")),
        Some(n) => Ok(n),
    }
}

/// A node as the engine works with it.
struct Node {
    cfg: NodeConfig,
    affiliations: Vec<(String, String)>,
}

impl Node {
    fn of(record: &NodeRecord) -> Node {
        Node {
            cfg: NodeConfig::from_record(record),
            affiliations: record.affiliations.clone(),
        }
    }
    fn record(&self) -> NodeRecord {
        self.cfg.to_record(self.affiliations.clone())
    }
}

async fn load(ctx: &Arc<Context>, owner: &str, node: &str) -> Result<Option<Node>, StanzaError> {
    Ok(ctx
        .storage
        .pubsub
        .node(owner, node)
        .await
        .map_err(internal)?
        .as_ref()
        .map(Node::of))
}

async fn load_existing(ctx: &Arc<Context>, owner: &str, node: &str) -> Result<Node, StanzaError> {
    load(ctx, owner, node)
        .await?
        .ok_or_else(StanzaError::item_not_found)
}

fn only_owner(owner: &str, requester: &str) -> Result<(), StanzaError> {
    if owner == requester {
        Ok(())
    } else {
        Err(StanzaError::forbidden())
    }
}

/// Who publishes: a client through an iq (conversions to other formats follow), or the
/// server converting from another protocol (no conversion back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Conversion,
}

/// Publishes `payload` to the owner's node `node` (created with `options` as its
/// configuration if missing; else `options` are preconditions). Returns the item id.
pub async fn publish(
    ctx: &Arc<Context>,
    owner: &str,
    node: &str,
    id: Option<&str>,
    payload: Element,
    options: Option<&DataForm>,
) -> Result<String, StanzaError> {
    let limits = &ctx.config.pep;
    let serialized = payload.to_stanza_string();
    if serialized.len() > limits.max_item_bytes {
        return Err(payload_too_big());
    }
    let id = match id {
        Some(id) if id.len() > MAX_NAME => {
            return Err(not_acceptable().with_text("item id too long"));
        }
        Some(id) if !id.is_empty() => id.to_string(),
        _ => crate::stream::random_id(),
    };
    let store = &ctx.storage.pubsub;
    let node_state = match load(ctx, owner, node).await? {
        Some(existing) => {
            if let Some(form) = options {
                for (var, values) in &form.fields {
                    if !existing.cfg.satisfies(var, values) {
                        debug!(owner, node, option = %var, "publish-options precondition not met");
                        return Err(precondition_not_met());
                    }
                }
            }
            existing
        }
        None => {
            let mut cfg = NodeConfig::default();
            if let Some(form) = options
                && cfg.apply(form, true).is_err()
            {
                return Err(precondition_not_met());
            }
            let created = Node {
                cfg,
                affiliations: Vec::new(),
            };
            match store
                .create_node(owner, node, &created.record(), limits.max_nodes_per_account)
                .await
                .map_err(internal)?
            {
                CreateOutcome::Created => created,
                CreateOutcome::TooManyNodes => return Err(max_nodes_exceeded()),
                // Created meanwhile by another of the owner's resources.
                CreateOutcome::Exists => load_existing(ctx, owner, node).await?,
            }
        }
    };
    let cfg = &node_state.cfg;
    let item = StoredItem {
        id: id.clone(),
        publisher: owner.to_string(),
        payload: serialized,
        published_at: now_secs(),
    };
    let keep = cfg.items_kept(limits.max_items_per_node);
    store
        .publish(owner, node, &item, keep)
        .await
        .map_err(internal)?;
    if cfg.deliver_notifications {
        let event = Element::new("items", NS_EVENT)
            .with_attr("node", node)
            .with_child(item_element(NS_EVENT, &item, cfg.deliver_payloads));
        notify(ctx, owner, node, &node_state, event).await;
    }
    Ok(id)
}

/// The newest item of the owner's node, if any (for conversions).
pub async fn last_item(
    ctx: &Arc<Context>,
    owner: &str,
    node: &str,
    id: Option<&str>,
) -> Result<Option<Element>, StanzaError> {
    let store = &ctx.storage.pubsub;
    let item = match id {
        Some(id) => store.item(owner, node, id).await,
        None => store
            .items(owner, node, 1)
            .await
            .map(|v| v.into_iter().next()),
    }
    .map_err(internal)?;
    Ok(item.and_then(|i| crate::xml::parse_stanza(&i.payload).ok()))
}

/// All items of the owner's node, oldest first (for conversions).
pub async fn all_items(
    ctx: &Arc<Context>,
    owner: &str,
    node: &str,
) -> Result<Vec<(String, Element)>, StanzaError> {
    let mut items = ctx
        .storage
        .pubsub
        .items(owner, node, ctx.config.pep.max_items_per_node)
        .await
        .map_err(internal)?;
    items.reverse();
    Ok(items
        .into_iter()
        .filter_map(|i| Some((i.id, crate::xml::parse_stanza(&i.payload).ok()?)))
        .collect())
}

/// Retracts an item of the owner's node (notifying if the node says so); `Ok(false)` if
/// there was no such item.
pub async fn retract(
    ctx: &Arc<Context>,
    owner: &str,
    node: &str,
    id: &str,
    notify_anyway: bool,
) -> Result<bool, StanzaError> {
    let state = load_existing(ctx, owner, node).await?;
    if !ctx
        .storage
        .pubsub
        .retract(owner, node, id)
        .await
        .map_err(internal)?
    {
        return Ok(false);
    }
    if state.cfg.notify_retract || notify_anyway {
        let event = Element::new("items", NS_EVENT)
            .with_attr("node", node)
            .with_child(Element::new("retract", NS_EVENT).with_attr("id", id));
        notify(ctx, owner, node, &state, event).await;
    }
    Ok(true)
}

/// The bare JIDs (the owner first) who may get the owner's notifications of a node.
async fn entitled(ctx: &Arc<Context>, owner: &str, node: &Node) -> Vec<String> {
    let mut out = vec![owner.to_string()];
    for (jid, aff) in &node.affiliations {
        if matches!(aff.as_str(), "member" | "publisher" | "owner") && jid != owner {
            out.push(jid.clone());
        }
    }
    use super::AccessModel::*;
    match node.cfg.access_model {
        Whitelist => {}
        Open | Presence => match super::presence_contacts(ctx, owner).await {
            Ok(c) => out.extend(c.subscribers.iter().map(BareJid::to_string)),
            Err(e) => warn!(error = %e, "roster lookup for PEP notifications failed"),
        },
        Roster => match super::roster(ctx, owner).await {
            Ok(r) => out.extend(
                r.items
                    .iter()
                    .filter(|i| i.subscription.has_from())
                    .filter(|i| {
                        i.groups
                            .iter()
                            .any(|g| node.cfg.roster_groups_allowed.contains(g))
                    })
                    .map(|i| i.jid.to_string()),
            ),
            Err(e) => warn!(error = %e, "roster lookup for PEP notifications failed"),
        },
    }
    let outcasts: Vec<&String> = node
        .affiliations
        .iter()
        .filter(|(_, a)| a == "outcast")
        .map(|(j, _)| j)
        .collect();
    out.retain(|j| !outcasts.contains(&j));
    out.dedup();
    out
}

/// The available resources of `bare` whose features include `NODE+notify`.
fn interested_resources(ctx: &Context, caps: &CapsCache, bare: &str, node: &str) -> Vec<String> {
    let want = format!("{node}+notify");
    let Some(bare_jid) = super::bare_jid(bare) else {
        return Vec::new();
    };
    ctx.sessions.select(&bare_jid, |s| {
        if !s.available {
            return None;
        }
        let full = super::full_jid(bare, &s.resource);
        let c = Caps::of_presence(s.presence.as_ref()?)?;
        caps.features(&c, &full)?.contains(&want).then_some(full)
    })
}

/// Sends `event` (the `<event/>` content) from the owner to every interested resource of
/// every entitled contact.
async fn notify(ctx: &Arc<Context>, owner: &str, node: &str, state: &Node, event: Element) {
    let Some(caps) = caps_cache(ctx) else {
        return;
    };
    let remote = ctx.registry.state::<RemoteResources>();
    let want = format!("{node}+notify");
    for bare in entitled(ctx, owner, state).await {
        let targets = if super::is_local(ctx, &bare) {
            interested_resources(ctx, &caps, &bare, node)
        } else {
            remote
                .as_ref()
                .map(|r| r.resources(owner, &bare))
                .unwrap_or_default()
                .into_iter()
                .filter(|(full, c)| caps.features(c, full).is_some_and(|f| f.contains(&want)))
                .map(|(full, _)| full)
                .collect()
        };
        for full in targets {
            route(ctx, event_message(owner, &full, event.clone())).await;
        }
    }
}

/// Sends the owner's last published items to one resource of `bare` (with these
/// features), for each node it is interested in and may see. `on_presence`: the resource
/// came online (nodes sending the last item only on subscription are skipped).
async fn send_last_items(
    ctx: &Arc<Context>,
    owner: &str,
    full: &str,
    bare: &str,
    features: &Features,
    on_presence: bool,
) {
    let nodes = match ctx.storage.pubsub.nodes(owner).await {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "PEP nodes lookup failed");
            return;
        }
    };
    for (name, record) in nodes {
        let state = Node::of(&record);
        let wanted = match state.cfg.send_last_published_item {
            SendLast::Never => false,
            SendLast::OnSub => !on_presence,
            SendLast::OnSubAndPresence => true,
        };
        if !wanted
            || !state.cfg.deliver_notifications
            || !features.contains(&format!("{name}+notify"))
            || check_access(ctx, owner, &state.cfg, &state.affiliations, bare)
                .await
                .is_err()
        {
            continue;
        }
        let item = match ctx.storage.pubsub.items(owner, &name, 1).await {
            Ok(items) => items.into_iter().next(),
            Err(e) => {
                warn!(error = %e, "PEP item lookup failed");
                None
            }
        };
        let Some(item) = item else { continue };
        let event = Element::new("items", NS_EVENT)
            .with_attr("node", name.clone())
            .with_child(item_element(NS_EVENT, &item, state.cfg.deliver_payloads));
        let mut msg = event_message(owner, full, event);
        msg.push_child(
            Element::new("delay", ns::DELAY)
                .with_attr("from", owner)
                .with_attr(
                    "stamp",
                    crate::modules::time::stamp_from_unix(item.published_at),
                ),
        );
        route(ctx, msg).await;
    }
}

/// A resource's features became known (or changed): the last items of its own account's
/// nodes and of every local contact it receives presence from.
async fn resource_ready(ctx: &Arc<Context>, bare: &str, full: &str, features: &Features) {
    let available = crate::addr::parse_full(full).is_some_and(|f| {
        ctx.sessions
            .get(&f.to_bare(), f.resource().as_str())
            .is_some_and(|s| s.available)
    });
    if !available {
        return;
    }
    let mut owners = vec![bare.to_string()];
    match super::presence_contacts(ctx, bare).await {
        Ok(c) => owners.extend(
            c.subscriptions
                .iter()
                .filter(|j| ctx.is_local_domain(j.domain().as_str()))
                .map(BareJid::to_string),
        ),
        Err(e) => warn!(error = %e, "roster lookup for PEP last items failed"),
    }
    for owner in owners {
        send_last_items(ctx, &owner, full, bare, features, true).await;
    }
}

/// A disco#info query the server sent to learn a resource's capabilities.
struct CapsQuery {
    caps: Caps,
    full: String,
    /// For a remote contact's resource: the local account whose presence it gets.
    owner: Option<String>,
}

/// Asks `full` for its features, from the account `from` (its own, or for a remote
/// contact the local account it sends presence to).
async fn query_caps(ctx: &Arc<Context>, from: &str, full: &str, caps: Caps, owner: Option<String>) {
    let id = format!("caps-{}", crate::stream::random_id());
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", id.clone())
        .with_attr("from", from)
        .with_attr("to", full)
        .with_child(
            Element::new("query", ns::DISCO_INFO)
                .with_attr("node", format!("{}#{}", caps.node, caps.ver)),
        );
    let Some(to) = crate::addr::parse(full) else {
        return;
    };
    ctx.registry.expect_response(
        id,
        to,
        Arc::new(PepModule),
        Box::new(CapsQuery {
            caps,
            full: full.to_string(),
            owner,
        }),
    );
    route(ctx, iq).await;
}

#[async_trait]
impl ResponseHandler for PepModule {
    async fn response(&self, ctx: &Arc<Context>, iq: &Element, context: Box<dyn Any + Send>) {
        let Ok(q) = context.downcast::<CapsQuery>() else {
            return;
        };
        let Some(cache) = caps_cache(ctx) else { return };
        let empty = Element::new("query", ns::DISCO_INFO);
        // An error answer is remembered as no features, so it is not asked again.
        let query = match iq.attr("type") {
            Some("result") => iq.child("query", ns::DISCO_INFO).unwrap_or(&empty),
            _ => &empty,
        };
        let features = cache.insert(&q.caps, &q.full, query);
        let bare = super::bare_str(&q.full);
        match &q.owner {
            Some(owner) => send_last_items(ctx, owner, &q.full, &bare, &features, true).await,
            None => resource_ready(ctx, &bare, &q.full, &features).await,
        }
    }
}

#[async_trait]
impl SessionEvents for PepModule {
    async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        match event {
            SessionEvent::Available { .. } => {}
            SessionEvent::Unavailable => {
                session.ext.insert(SeenCaps(None));
                return;
            }
            _ => return,
        }
        let Some(cache) = caps_cache(ctx) else { return };
        let caps = ctx
            .sessions
            .get(session.bare, session.resource)
            .and_then(|s| s.presence)
            .and_then(|p| Caps::of_presence(&p));
        let Some(caps) = caps else {
            session.ext.insert(SeenCaps(None));
            return;
        };
        let seen = session.ext.get::<SeenCaps>().and_then(|s| s.0.clone());
        if seen.as_deref() == Some(caps.ver.as_str()) {
            return;
        }
        session.ext.insert(SeenCaps(Some(caps.ver.clone())));
        let (bare, full) = (session.bare.to_string(), session.full.to_string());
        match cache.features(&caps, &full) {
            Some(features) => resource_ready(ctx, &bare, &full, &features).await,
            None => query_caps(ctx, &bare, &full, caps, None).await,
        }
    }
}

#[async_trait]
impl PresenceObserver for PepModule {
    /// A remote contact's resource announced itself to `user` (or left): remembered for
    /// `user`'s notifications, and given `user`'s last items (XEP-0163 §4.3.2).
    async fn inbound(&self, ctx: &Arc<Context>, user: &BareJid, stanza: &Element) {
        let user = user.as_str();
        let Some(from) = stanza.attr("from") else {
            return;
        };
        if !super::has_resource(from) || super::is_local(ctx, from) {
            return;
        }
        let (Some(remote), Some(cache)) =
            (ctx.registry.state::<RemoteResources>(), caps_cache(ctx))
        else {
            return;
        };
        let caps = match stanza.attr("type") {
            Some("unavailable") => None,
            _ => Caps::of_presence(stanza),
        };
        if !remote.set(user, from, caps.clone()) {
            return;
        }
        let Some(caps) = caps else { return };
        let bare = super::bare_str(from);
        match cache.features(&caps, from) {
            Some(features) => send_last_items(ctx, user, from, &bare, &features, true).await,
            None => query_caps(ctx, user, from, caps, Some(user.to_string())).await,
        }
    }
}

#[async_trait]
impl RouteFilter for PepModule {
    /// Presence a remote contact sends to one of the owner's resources (answers to the
    /// owner's probes, directed presence) bypasses the presence module: it is seen here.
    fn concerns(
        &self,
        ctx: &Context,
        from: &crate::addr::Jid,
        to: &crate::addr::Jid,
        stanza: &Element,
    ) -> bool {
        stanza.name == "presence"
            && to.node().is_some()
            && to.is_full()
            && matches!(stanza.attr("type"), None | Some("unavailable"))
            && ctx.is_local_domain(to.domain().as_str())
            && !ctx.is_local_domain(from.domain().as_str())
    }

    /// Never stops anything.
    async fn may_route(
        &self,
        ctx: &Arc<Context>,
        _from: &crate::addr::Jid,
        to: &crate::addr::Jid,
        stanza: &Element,
    ) -> bool {
        PresenceObserver::inbound(self, ctx, &to.to_bare(), stanza).await;
        true
    }
}

#[async_trait]
impl AccountItems for PepModule {
    /// The account's nodes that the requester may read (XEP-0060 §5.2).
    async fn items(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        requester: Option<&BareJid>,
    ) -> Vec<Element> {
        let (user, requester) = (user.as_str(), requester.map_or("", |r| r.as_str()));
        let nodes = match ctx.storage.pubsub.nodes(user).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "PEP nodes lookup failed");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (name, record) in nodes {
            let state = Node::of(&record);
            if check_access(ctx, user, &state.cfg, &state.affiliations, requester)
                .await
                .is_ok()
            {
                out.push(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", user)
                        .with_attr("node", name),
                );
            }
        }
        out
    }
}

#[async_trait]
impl RosterObserver for PepModule {
    /// The owner approved a contact's subscription: the contact's interested resources
    /// get the last items at once (XEP-0060 §4.6 `on_sub`), not only at their next login.
    async fn roster_changed(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        before: Option<&RosterItem>,
        after: &RosterItem,
    ) {
        let user = user.as_str();
        let gained =
            after.subscription.has_from() && !before.is_some_and(|b| b.subscription.has_from());
        if !gained {
            return;
        }
        let Some(cache) = caps_cache(ctx) else { return };
        let contact = after.jid.as_str();
        let ready: Vec<(String, Features)> = if super::is_local(ctx, contact) {
            ctx.sessions.select(&after.jid, |s| {
                if !s.available {
                    return None;
                }
                let full = super::full_jid(contact, &s.resource);
                let c = Caps::of_presence(s.presence.as_ref()?)?;
                let features = cache.features(&c, &full)?;
                Some((full, features))
            })
        } else {
            // Known only if the contact sends the user its presence.
            ctx.registry
                .state::<RemoteResources>()
                .map(|r| r.resources(user, contact))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(full, c)| Some((full.clone(), cache.features(&c, &full)?)))
                .collect()
        };
        for (full, features) in ready {
            send_last_items(ctx, user, &full, contact, &features, false).await;
        }
    }
}

// --- the iq protocol ---

fn pubsub_reply(ns: &str, child: Element) -> Option<Element> {
    Some(Element::new("pubsub", ns).with_child(child))
}

async fn handle_publish(
    ctx: &Arc<Context>,
    owner: &str,
    requester: &str,
    pubsub: &Element,
    action: &Element,
) -> Result<Option<Element>, StanzaError> {
    only_owner(owner, requester)?;
    let node = bounded_name(action.attr("node"))?;
    let mut items = action.elements().filter(|i| i.is("item", NS));
    let item = items.next().ok_or_else(item_required)?;
    if items.next().is_some() {
        return Err(invalid_payload());
    }
    let mut payloads = item.elements();
    let payload = payloads
        .next()
        .ok_or_else(|| super::error(ErrorType::Modify, "bad-request", "payload-required"))?;
    if payloads.next().is_some() {
        return Err(invalid_payload());
    }
    let options = match pubsub
        .child("publish-options", NS)
        .and_then(|o| o.child("x", super::form::NS))
    {
        None => None,
        Some(x) => {
            let form = DataForm::parse(x).ok_or_else(StanzaError::bad_request)?;
            if form.form_type.as_deref() != Some(PUBLISH_OPTIONS) {
                return Err(StanzaError::bad_request().with_text("not a publish-options form"));
            }
            Some(form)
        }
    };
    let id = publish(
        ctx,
        owner,
        node,
        item.attr("id"),
        payload.clone(),
        options.as_ref(),
    )
    .await?;
    published_by_client(ctx, owner, node, &id, payload).await;
    Ok(pubsub_reply(
        NS,
        Element::new("publish", NS)
            .with_attr("node", node)
            .with_child(Element::new("item", NS).with_attr("id", id)),
    ))
}

/// Conversions that follow a client's publish (XEP-0398 avatars). XEP-0402 bookmarks
/// need none: the XEP-0048 view is made from the PEP node when it is read.
async fn published_by_client(
    ctx: &Arc<Context>,
    owner: &str,
    node: &str,
    id: &str,
    payload: &Element,
) {
    crate::modules::vcard::pep_published(ctx, owner, node, id, payload).await;
}

async fn handle_retract(
    ctx: &Arc<Context>,
    owner: &str,
    requester: &str,
    action: &Element,
) -> Result<Option<Element>, StanzaError> {
    only_owner(owner, requester)?;
    let node = bounded_name(action.attr("node"))?;
    // Several items may go at once (XEP-0060 §7.2.1); each must exist.
    let ids: Vec<&str> = action
        .elements()
        .filter(|i| i.is("item", NS))
        .filter_map(|i| i.attr("id"))
        .filter(|id| !id.is_empty())
        .take(ctx.config.pep.max_items_per_node)
        .collect();
    if ids.is_empty() {
        return Err(item_required());
    }
    for id in &ids {
        let found = ctx
            .storage
            .pubsub
            .item(owner, node, id)
            .await
            .map_err(internal)?;
        if found.is_none() {
            return Err(StanzaError::item_not_found());
        }
    }
    let notify = matches!(action.attr("notify"), Some("1" | "true"));
    for id in ids {
        retract(ctx, owner, node, id, notify).await?;
    }
    Ok(None)
}

async fn handle_items(
    ctx: &Arc<Context>,
    owner: &str,
    requester: &str,
    action: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = bounded_name(action.attr("node"))?;
    if owner == requester && node == crate::modules::private::BOOKMARKS {
        // Bookmarks kept only the XEP-0048 way so far move over on first read.
        crate::modules::private::migrate_legacy(ctx, owner).await;
    }
    let state = load_existing(ctx, owner, node).await?;
    check_access(ctx, owner, &state.cfg, &state.affiliations, requester).await?;
    let store = &ctx.storage.pubsub;
    let cap = ctx.config.pep.max_items_per_node;
    let ids: Vec<&str> = action
        .elements()
        .filter(|i| i.is("item", NS))
        .filter_map(|i| i.attr("id"))
        .take(cap)
        .collect();
    let items = if ids.is_empty() {
        let max = match action.attr("max_items") {
            None => cap,
            Some(m) => m
                .trim()
                .parse::<usize>()
                .map_err(|_| StanzaError::bad_request().with_text("bad max_items"))?
                .min(cap),
        };
        let items = store.items(owner, node, max).await.map_err(internal)?;
        super::newest_within(items, ctx.config.limits.max_stanza_bytes)
    } else {
        let mut found = Vec::new();
        for id in ids {
            if let Some(item) = store.item(owner, node, id).await.map_err(internal)? {
                found.push(item);
            }
        }
        found
    };
    let mut out = Element::new("items", NS).with_attr("node", node);
    for item in &items {
        out.push_child(item_element(NS, item, true));
    }
    Ok(pubsub_reply(NS, out))
}

async fn handle_create(
    ctx: &Arc<Context>,
    owner: &str,
    requester: &str,
    pubsub: &Element,
    action: &Element,
) -> Result<Option<Element>, StanzaError> {
    only_owner(owner, requester)?;
    // Instant nodes (no name) are not offered (XEP-0060 §8.1.2 error).
    let node = action
        .attr("node")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| super::error(ErrorType::Modify, "not-acceptable", "nodeid-required"))?;
    let node = bounded_name(Some(node))?;
    let mut cfg = NodeConfig::default();
    if let Some(x) = pubsub
        .child("configure", NS)
        .and_then(|c| c.child("x", super::form::NS))
    {
        let form = DataForm::parse(x).ok_or_else(StanzaError::bad_request)?;
        cfg.apply(&form, false).map_err(|_| not_acceptable())?;
    }
    let state = Node {
        cfg,
        affiliations: Vec::new(),
    };
    match ctx
        .storage
        .pubsub
        .create_node(
            owner,
            node,
            &state.record(),
            ctx.config.pep.max_nodes_per_account,
        )
        .await
        .map_err(internal)?
    {
        CreateOutcome::Created => Ok(None),
        CreateOutcome::Exists => Err(conflict()),
        CreateOutcome::TooManyNodes => Err(max_nodes_exceeded()),
    }
}

async fn handle_owner(
    ctx: &Arc<Context>,
    owner: &str,
    requester: &str,
    kind: &str,
    action: &Element,
) -> Result<Option<Element>, StanzaError> {
    only_owner(owner, requester)?;
    let store = &ctx.storage.pubsub;
    match (kind, action.name.as_str()) {
        ("get", "default") => Ok(pubsub_reply(
            NS_OWNER,
            Element::new("default", NS_OWNER).with_child(NodeConfig::default().to_form()),
        )),
        ("get", "configure") => {
            let node = bounded_name(action.attr("node"))?;
            let state = load_existing(ctx, owner, node).await?;
            Ok(pubsub_reply(
                NS_OWNER,
                Element::new("configure", NS_OWNER)
                    .with_attr("node", node)
                    .with_child(state.cfg.to_form()),
            ))
        }
        ("set", "configure") => {
            let node = bounded_name(action.attr("node"))?;
            let mut state = load_existing(ctx, owner, node).await?;
            let x = action
                .child("x", super::form::NS)
                .ok_or_else(StanzaError::bad_request)?;
            let form = DataForm::parse(x).ok_or_else(StanzaError::bad_request)?;
            match form.kind.as_str() {
                "cancel" => return Ok(None),
                "submit" => {}
                _ => return Err(StanzaError::bad_request()),
            }
            if form.form_type.as_deref().is_some_and(|t| t != NODE_CONFIG) {
                return Err(StanzaError::bad_request().with_text("not a node_config form"));
            }
            state
                .cfg
                .apply(&form, false)
                .map_err(|_| not_acceptable())?;
            store
                .set_node(owner, node, &state.record())
                .await
                .map_err(internal)?;
            let keep = state.cfg.items_kept(ctx.config.pep.max_items_per_node);
            store.trim(owner, node, keep).await.map_err(internal)?;
            Ok(None)
        }
        ("set", "delete") => {
            let node = bounded_name(action.attr("node"))?;
            let state = load_existing(ctx, owner, node).await?;
            store.delete_node(owner, node).await.map_err(internal)?;
            if state.cfg.notify_delete {
                let event = Element::new("delete", NS_EVENT).with_attr("node", node);
                notify(ctx, owner, node, &state, event).await;
            }
            Ok(None)
        }
        ("set", "purge") => {
            let node = bounded_name(action.attr("node"))?;
            let state = load_existing(ctx, owner, node).await?;
            store.purge(owner, node).await.map_err(internal)?;
            // No option governs purge notifications (XEP-0060 §8.5.3); subscribers
            // must learn their copies are stale.
            if state.cfg.deliver_notifications {
                let event = Element::new("purge", NS_EVENT).with_attr("node", node);
                notify(ctx, owner, node, &state, event).await;
            }
            Ok(None)
        }
        ("get", "affiliations") => {
            let node = bounded_name(action.attr("node"))?;
            let state = load_existing(ctx, owner, node).await?;
            let mut out = Element::new("affiliations", NS_OWNER).with_attr("node", node);
            out.push_child(
                Element::new("affiliation", NS_OWNER)
                    .with_attr("jid", owner)
                    .with_attr("affiliation", "owner"),
            );
            for (jid, aff) in &state.affiliations {
                out.push_child(
                    Element::new("affiliation", NS_OWNER)
                        .with_attr("jid", jid.clone())
                        .with_attr("affiliation", aff.clone()),
                );
            }
            Ok(pubsub_reply(NS_OWNER, out))
        }
        ("set", "affiliations") => {
            let node = bounded_name(action.attr("node"))?;
            let mut state = load_existing(ctx, owner, node).await?;
            for a in action.elements().filter(|a| a.is("affiliation", NS_OWNER)) {
                let jid = a
                    .attr("jid")
                    .and_then(crate::addr::parse_bare)
                    .map(BareJid::into_inner)
                    .ok_or_else(StanzaError::jid_malformed)?;
                if jid == owner {
                    return Err(not_acceptable().with_text("the owner stays the owner"));
                }
                state.affiliations.retain(|(j, _)| *j != jid);
                match a.attr("affiliation") {
                    Some("none") => {}
                    Some(aff @ ("member" | "outcast")) => {
                        state.affiliations.push((jid, aff.to_string()))
                    }
                    // On PEP only the owner publishes.
                    _ => return Err(not_acceptable()),
                }
            }
            if state.affiliations.len() > ctx.config.limits.max_roster_items {
                return Err(StanzaError::resource_constraint().with_text("too many affiliations"));
            }
            store
                .set_node(owner, node, &state.record())
                .await
                .map_err(internal)?;
            Ok(None)
        }
        _ => Err(StanzaError::feature_not_implemented()),
    }
}

#[async_trait]
impl IqHandler for PepModule {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS, NS_OWNER]
    }
    fn account_features(&self) -> &'static [&'static str] {
        FEATURES
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let IqTarget::Account(owner) = target else {
            return Err(StanzaError::service_unavailable());
        };
        let requester = requester_bare(iq).ok_or_else(StanzaError::bad_request)?;
        let (owner, requester) = (owner.as_str(), requester.as_str());
        let pubsub = iq.first_element().ok_or_else(StanzaError::bad_request)?;
        if pubsub.name != "pubsub" {
            return Err(StanzaError::bad_request());
        }
        // The action; publish-options and configure accompany publish and create.
        let action = match pubsub.ns == NS_OWNER {
            true => pubsub.first_element(),
            false => pubsub
                .elements()
                .find(|e| !matches!(e.name.as_str(), "publish-options" | "configure"))
                .or_else(|| pubsub.first_element()),
        }
        .ok_or_else(StanzaError::bad_request)?;
        let kind = iq.attr("type").unwrap_or("");
        if pubsub.ns == NS_OWNER {
            return handle_owner(ctx, owner, requester, kind, action).await;
        }
        match (kind, action.name.as_str()) {
            ("set", "publish") => handle_publish(ctx, owner, requester, pubsub, action).await,
            ("set", "retract") => handle_retract(ctx, owner, requester, action).await,
            ("get", "items") => handle_items(ctx, owner, requester, action).await,
            ("set", "create") => handle_create(ctx, owner, requester, pubsub, action).await,
            ("get", "affiliations") => {
                // The requester's own affiliations: on its own PEP service, every node.
                let mut out = Element::new("affiliations", NS);
                if owner == requester {
                    let nodes = ctx.storage.pubsub.nodes(owner).await.map_err(internal)?;
                    for (name, _) in nodes {
                        out.push_child(
                            Element::new("affiliation", NS)
                                .with_attr("node", name)
                                .with_attr("affiliation", "owner"),
                        );
                    }
                }
                Ok(pubsub_reply(NS, out))
            }
            // Contacts are subscribed by their presence subscription and capabilities.
            ("set", "subscribe" | "unsubscribe") => Err(unsupported("subscribe")),
            ("get", "subscriptions") => Err(unsupported("retrieve-subscriptions")),
            ("set", "configure") => Err(unsupported("config-node")),
            _ => Err(StanzaError::feature_not_implemented()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        assert_eq!(bounded_name(None).unwrap_err().condition, "bad-request");
        assert_eq!(bounded_name(Some("")).unwrap_err().condition, "bad-request");
        let long = "n".repeat(MAX_NAME + 1);
        assert_eq!(
            bounded_name(Some(&long)).unwrap_err().condition,
            "not-acceptable"
        );
        assert_eq!(
            bounded_name(Some("urn:xmpp:avatar:data")).unwrap(),
            "urn:xmpp:avatar:data"
        );
    }
}
