//! The generic XEP-0060 service on `pubsub.<vhost>`: nodes created by whom the config
//! allows (admins by default), owned through affiliations, with explicit subscriptions;
//! notifications go to the subscribed JIDs as they subscribed (bare or full).

// Helpers return the error type of stanza handling, which is passed on as is.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use async_trait::async_trait;

use super::pep::{bounded_name, now_secs};
use super::{
    AccessModel, DataForm, MaxItems, NODE_CONFIG, NS, NS_EVENT, NS_OWNER, NodeConfig,
    PUBLISH_OPTIONS, SendLast, check_access, conflict, error, event_message, invalid_payload,
    item_element, item_required, max_nodes_exceeded, not_acceptable, payload_too_big,
    precondition_not_met, unsupported,
};
use crate::config::NodeCreation;
use crate::context::Context;
use crate::modules::{internal, requester_bare};
use crate::registry::{Module, Registrar, Service};
use crate::router::{route, route_reply};
use crate::storage::{CreateOutcome, NodeRecord, StoredItem};
use crate::stream::{ErrorType, StanzaError, iq_result};
use crate::xml::{Element, ns};

const FEATURES: &[&str] = &[
    NS,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
];

pub struct PubsubService;

impl Module for PubsubService {
    fn name(&self) -> &'static str {
        "pubsub"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        if !r.config().pubsub.enabled {
            return;
        }
        let domains: Vec<String> = r
            .config()
            .vhosts
            .iter()
            .map(|v| format!("pubsub.{}", v.domain.to_ascii_lowercase()))
            .collect();
        let me = Arc::new(ServiceHandler);
        for d in domains {
            r.service(&d, me.clone());
            r.server_item(&d);
        }
    }
}

struct ServiceHandler;

/// A generic node: the owner is whoever has the `owner` affiliation.
struct Node {
    cfg: NodeConfig,
    record: NodeRecord,
}

impl Node {
    fn of(record: NodeRecord) -> Node {
        Node {
            cfg: NodeConfig::from_record(&record),
            record,
        }
    }
    fn affiliation(&self, bare: &str) -> &str {
        self.record
            .affiliations
            .iter()
            .find(|(j, _)| j == bare)
            .map_or("none", |(_, a)| a.as_str())
    }
    fn owner(&self) -> Option<&str> {
        self.record
            .affiliations
            .iter()
            .find(|(_, a)| a == "owner")
            .map(|(j, _)| j.as_str())
    }
    fn save_record(&self) -> NodeRecord {
        let mut r = self.cfg.to_record(self.record.affiliations.clone());
        r.subscriptions = self.record.subscriptions.clone();
        r
    }
    fn is_subscribed(&self, bare: &str) -> bool {
        self.record
            .subscriptions
            .iter()
            .any(|(j, _)| super::bare_str(j) == bare)
    }
}

/// The configuration a new node gets before the creator's form: open, ten items, the last
/// one sent on subscription.
fn default_config() -> NodeConfig {
    NodeConfig {
        access_model: AccessModel::Open,
        max_items: MaxItems::Count(10),
        send_last_published_item: SendLast::OnSub,
        ..NodeConfig::default()
    }
}

async fn load(ctx: &Arc<Context>, service: &str, node: &str) -> Result<Node, StanzaError> {
    ctx.storage
        .pubsub
        .node(service, node)
        .await
        .map_err(internal)?
        .map(Node::of)
        .ok_or_else(StanzaError::item_not_found)
}

async fn save(
    ctx: &Arc<Context>,
    service: &str,
    name: &str,
    node: &Node,
) -> Result<(), StanzaError> {
    ctx.storage
        .pubsub
        .set_node(service, name, &node.save_record())
        .await
        .map_err(internal)?;
    Ok(())
}

fn require_owner(node: &Node, requester: &str) -> Result<(), StanzaError> {
    match node.affiliation(requester) {
        "owner" => Ok(()),
        _ => Err(StanzaError::forbidden()),
    }
}

fn reply(ns: &str, child: Element) -> Option<Element> {
    Some(Element::new("pubsub", ns).with_child(child))
}

/// Sends `event` from the service to every subscriber of the node.
async fn notify(ctx: &Arc<Context>, service: &str, node: &Node, event: Element) {
    if !node.cfg.deliver_notifications {
        return;
    }
    for (jid, state) in &node.record.subscriptions {
        if state == "subscribed" {
            route(ctx, event_message(service, jid, event.clone())).await;
        }
    }
}

#[async_trait]
impl Service for ServiceHandler {
    async fn handle(&self, ctx: &Arc<Context>, stanza: Element) {
        if stanza.name != "iq" {
            if stanza.name == "message" {
                route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            }
            return;
        }
        if !matches!(stanza.attr("type"), Some("get" | "set")) {
            return;
        }
        let Some(to) = stanza.attr("to").map(str::to_string) else {
            return;
        };
        // Only the service's domain itself is an address here.
        let service = to.to_ascii_lowercase();
        if service.contains('@') || service.contains('/') {
            route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            return;
        }
        let mut after = Vec::new();
        match handle_iq(ctx, &service, &stanza, &mut after).await {
            Ok(payload) => route(ctx, iq_result(&stanza, payload)).await,
            Err(e) => route_reply(ctx, &stanza, e).await,
        }
        for el in after {
            route(ctx, el).await;
        }
    }
}

/// `after`: stanzas to send once the result is out (the last item of a subscription).
async fn handle_iq(
    ctx: &Arc<Context>,
    service: &str,
    iq: &Element,
    after: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    let requester = requester_bare(iq).ok_or_else(StanzaError::bad_request)?;
    let requester = requester.as_str();
    let payload = iq.first_element().ok_or_else(StanzaError::bad_request)?;
    let kind = iq.attr("type").unwrap_or("");
    match (payload.ns.as_str(), kind) {
        (ns::DISCO_INFO, "get") => disco_info(ctx, service, payload).await,
        (ns::DISCO_ITEMS, "get") => disco_items(ctx, service, payload).await,
        (NS, _) if payload.name == "pubsub" => {
            user_op(ctx, service, iq, requester, payload, after).await
        }
        (NS_OWNER, _) if payload.name == "pubsub" => {
            let action = payload
                .first_element()
                .ok_or_else(StanzaError::bad_request)?;
            owner_op(ctx, service, requester, kind, action).await
        }
        _ => Err(StanzaError::service_unavailable()),
    }
}

async fn disco_info(
    ctx: &Arc<Context>,
    service: &str,
    query: &Element,
) -> Result<Option<Element>, StanzaError> {
    let mut out = Element::new("query", ns::DISCO_INFO);
    let identity = |kind: &str| {
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "pubsub")
            .with_attr("type", kind)
    };
    match query.attr("node") {
        Some(node) => {
            load(ctx, service, node).await?;
            out.set_attr("node", node);
            out.push_child(identity("leaf"));
            out.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", NS));
        }
        None => {
            out.push_child(identity("service"));
            for f in [ns::DISCO_INFO, ns::DISCO_ITEMS].iter().chain(FEATURES) {
                out.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
            }
        }
    }
    Ok(Some(out))
}

async fn disco_items(
    ctx: &Arc<Context>,
    service: &str,
    query: &Element,
) -> Result<Option<Element>, StanzaError> {
    let mut out = Element::new("query", ns::DISCO_ITEMS);
    if let Some(node) = query.attr("node") {
        // Leaf nodes hold items, not nodes.
        load(ctx, service, node).await?;
        out.set_attr("node", node);
        return Ok(Some(out));
    }
    for (name, record) in ctx.storage.pubsub.nodes(service).await.map_err(internal)? {
        let cfg = NodeConfig::from_record(&record);
        let mut item = Element::new("item", ns::DISCO_ITEMS)
            .with_attr("jid", service)
            .with_attr("node", name);
        if !cfg.title.is_empty() {
            item.set_attr("name", cfg.title);
        }
        out.push_child(item);
    }
    Ok(Some(out))
}

fn may_create(ctx: &Context, requester: &str) -> bool {
    let cfg = &ctx.config.pubsub;
    match cfg.node_creation {
        NodeCreation::Local => super::is_local(ctx, requester),
        NodeCreation::Admins => cfg
            .admins
            .iter()
            .any(|a| crate::addr::parse_bare(a).is_some_and(|a| a.as_str() == requester)),
    }
}

fn form_of(parent: Option<&Element>) -> Result<Option<DataForm>, StanzaError> {
    match parent.and_then(|p| p.child("x", super::form::NS)) {
        None => Ok(None),
        Some(x) => DataForm::parse(x)
            .map(Some)
            .ok_or_else(StanzaError::bad_request),
    }
}

async fn user_op(
    ctx: &Arc<Context>,
    service: &str,
    iq: &Element,
    requester: &str,
    pubsub: &Element,
    after: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    let kind = iq.attr("type").unwrap_or("");
    let action = pubsub
        .elements()
        .find(|e| !matches!(e.name.as_str(), "publish-options" | "configure" | "options"))
        .ok_or_else(StanzaError::bad_request)?;
    let store = &ctx.storage.pubsub;
    match (kind, action.name.as_str()) {
        ("set", "create") => {
            if !may_create(ctx, requester) {
                return Err(StanzaError::forbidden());
            }
            let name = action
                .attr("node")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    super::error(ErrorType::Modify, "not-acceptable", "nodeid-required")
                })?;
            let name = bounded_name(Some(name))?;
            let mut cfg = default_config();
            if let Some(form) = form_of(pubsub.child("configure", NS))? {
                cfg.apply(&form, false).map_err(|_| not_acceptable())?;
            }
            let record = cfg.to_record(vec![(requester.to_string(), "owner".into())]);
            match store
                .create_node(service, name, &record, ctx.config.pubsub.max_nodes)
                .await
                .map_err(internal)?
            {
                CreateOutcome::Created => Ok(None),
                CreateOutcome::Exists => Err(conflict()),
                CreateOutcome::TooManyNodes => Err(max_nodes_exceeded()),
            }
        }
        ("set", "publish") => {
            let name = bounded_name(action.attr("node"))?;
            let node = load(ctx, service, name).await?;
            if !matches!(node.affiliation(requester), "owner" | "publisher") {
                return Err(StanzaError::forbidden());
            }
            let mut items = action.elements().filter(|i| i.is("item", NS));
            let item = items.next().ok_or_else(item_required)?;
            let mut payloads = item.elements();
            let payload = payloads
                .next()
                .ok_or_else(|| error(ErrorType::Modify, "bad-request", "payload-required"))?;
            if items.next().is_some() || payloads.next().is_some() {
                return Err(invalid_payload());
            }
            if let Some(form) = form_of(pubsub.child("publish-options", NS))? {
                if form.form_type.as_deref() != Some(PUBLISH_OPTIONS) {
                    return Err(StanzaError::bad_request());
                }
                if form
                    .fields
                    .iter()
                    .any(|(v, vals)| !node.cfg.satisfies(v, vals))
                {
                    return Err(precondition_not_met());
                }
            }
            let serialized = payload.to_stanza_string();
            if serialized.len() > ctx.config.pep.max_item_bytes {
                return Err(payload_too_big());
            }
            let id = match item.attr("id") {
                Some(id) if id.len() > super::pep::MAX_NAME => return Err(not_acceptable()),
                Some(id) if !id.is_empty() => id.to_string(),
                _ => crate::stream::random_id(),
            };
            let stored = StoredItem {
                id: id.clone(),
                publisher: requester.to_string(),
                payload: serialized,
                published_at: now_secs(),
            };
            let keep = node.cfg.items_kept(ctx.config.pep.max_items_per_node);
            store
                .publish(service, name, &stored, keep)
                .await
                .map_err(internal)?;
            let event = Element::new("items", NS_EVENT)
                .with_attr("node", name)
                .with_child(item_element(NS_EVENT, &stored, node.cfg.deliver_payloads));
            notify(ctx, service, &node, event).await;
            Ok(reply(
                NS,
                Element::new("publish", NS)
                    .with_attr("node", name)
                    .with_child(Element::new("item", NS).with_attr("id", id)),
            ))
        }
        ("set", "retract") => {
            let name = bounded_name(action.attr("node"))?;
            let node = load(ctx, service, name).await?;
            if !matches!(node.affiliation(requester), "owner" | "publisher") {
                return Err(StanzaError::forbidden());
            }
            let id = action
                .child("item", NS)
                .and_then(|i| i.attr("id"))
                .filter(|i| !i.is_empty())
                .ok_or_else(item_required)?;
            if !store.retract(service, name, id).await.map_err(internal)? {
                return Err(StanzaError::item_not_found());
            }
            if node.cfg.notify_retract || matches!(action.attr("notify"), Some("1" | "true")) {
                let event = Element::new("items", NS_EVENT)
                    .with_attr("node", name)
                    .with_child(Element::new("retract", NS_EVENT).with_attr("id", id));
                notify(ctx, service, &node, event).await;
            }
            Ok(None)
        }
        ("get", "items") => {
            let name = bounded_name(action.attr("node"))?;
            let node = load(ctx, service, name).await?;
            if !node.is_subscribed(requester) {
                let owner = node.owner().unwrap_or(service).to_string();
                check_access(ctx, &owner, &node.cfg, &node.record.affiliations, requester).await?;
            }
            let cap = ctx.config.pep.max_items_per_node;
            let max = match action.attr("max_items") {
                None => cap,
                Some(m) => m
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| StanzaError::bad_request())?
                    .min(cap),
            };
            let ids: Vec<&str> = action
                .elements()
                .filter(|i| i.is("item", NS))
                .filter_map(|i| i.attr("id"))
                .take(cap)
                .collect();
            let mut items = Vec::new();
            if ids.is_empty() {
                let newest = store.items(service, name, max).await.map_err(internal)?;
                items = super::newest_within(newest, ctx.config.limits.max_stanza_bytes);
            } else {
                for id in ids {
                    if let Some(i) = store.item(service, name, id).await.map_err(internal)? {
                        items.push(i);
                    }
                }
            }
            let mut out = Element::new("items", NS).with_attr("node", name);
            for i in &items {
                out.push_child(item_element(NS, i, true));
            }
            Ok(reply(NS, out))
        }
        ("set", "subscribe") => {
            let name = bounded_name(action.attr("node"))?;
            let jid = subscriber_jid(iq, requester, action)?;
            let mut node = load(ctx, service, name).await?;
            let owner = node.owner().unwrap_or(service).to_string();
            check_access(ctx, &owner, &node.cfg, &node.record.affiliations, requester).await?;
            if !node.record.subscriptions.iter().any(|(j, _)| *j == jid) {
                if node.record.subscriptions.len() >= ctx.config.pubsub.max_subscriptions_per_node {
                    return Err(error(
                        ErrorType::Cancel,
                        "policy-violation",
                        "too-many-subscriptions",
                    ));
                }
                node.record
                    .subscriptions
                    .push((jid.clone(), "subscribed".into()));
                save(ctx, service, name, &node).await?;
            }
            if node.cfg.send_last_published_item != SendLast::Never
                && let Some(last) = store
                    .items(service, name, 1)
                    .await
                    .map_err(internal)?
                    .into_iter()
                    .next()
            {
                let event = Element::new("items", NS_EVENT)
                    .with_attr("node", name)
                    .with_child(item_element(NS_EVENT, &last, node.cfg.deliver_payloads));
                let mut msg = event_message(service, &jid, event);
                msg.push_child(Element::new("delay", ns::DELAY).with_attr(
                    "stamp",
                    crate::modules::time::stamp_from_unix(last.published_at),
                ));
                // After the result, as XEP-0060 §6.1.7 asks.
                after.push(msg);
            }
            Ok(reply(
                NS,
                Element::new("subscription", NS)
                    .with_attr("node", name)
                    .with_attr("jid", jid)
                    .with_attr("subscription", "subscribed"),
            ))
        }
        ("set", "unsubscribe") => {
            let name = bounded_name(action.attr("node"))?;
            let jid = subscriber_jid(iq, requester, action)?;
            let mut node = load(ctx, service, name).await?;
            let before = node.record.subscriptions.len();
            node.record.subscriptions.retain(|(j, _)| *j != jid);
            if node.record.subscriptions.len() == before {
                return Err(error(
                    ErrorType::Cancel,
                    "unexpected-request",
                    "not-subscribed",
                ));
            }
            save(ctx, service, name, &node).await?;
            Ok(None)
        }
        ("get", "subscriptions") => {
            let mut out = Element::new("subscriptions", NS);
            for (name, record) in store.nodes(service).await.map_err(internal)? {
                if action.attr("node").is_some_and(|n| n != name) {
                    continue;
                }
                for (jid, state) in &record.subscriptions {
                    if super::bare_str(jid) == requester {
                        out.push_child(
                            Element::new("subscription", NS)
                                .with_attr("node", name.clone())
                                .with_attr("jid", jid.clone())
                                .with_attr("subscription", state.clone()),
                        );
                    }
                }
            }
            Ok(reply(NS, out))
        }
        ("get", "affiliations") => {
            let mut out = Element::new("affiliations", NS);
            for (name, record) in store.nodes(service).await.map_err(internal)? {
                for (jid, aff) in &record.affiliations {
                    if jid == requester {
                        out.push_child(
                            Element::new("affiliation", NS)
                                .with_attr("node", name.clone())
                                .with_attr("affiliation", aff.clone()),
                        );
                    }
                }
            }
            Ok(reply(NS, out))
        }
        ("get" | "set", "options") => Err(unsupported("subscription-options")),
        _ => Err(StanzaError::feature_not_implemented()),
    }
}

/// The JID a subscribe/unsubscribe names: the requester's bare or full JID only
/// (XEP-0060 §6.1.3.1 `invalid-jid`).
fn subscriber_jid(iq: &Element, requester: &str, action: &Element) -> Result<String, StanzaError> {
    let jid = action
        .attr("jid")
        .and_then(crate::addr::parse)
        .ok_or_else(|| error(ErrorType::Modify, "bad-request", "jid-required"))?
        .into_inner();
    let from = iq.attr("from").unwrap_or("");
    if jid != requester && jid != from {
        return Err(error(ErrorType::Modify, "bad-request", "invalid-jid"));
    }
    Ok(jid)
}

async fn owner_op(
    ctx: &Arc<Context>,
    service: &str,
    requester: &str,
    kind: &str,
    action: &Element,
) -> Result<Option<Element>, StanzaError> {
    let store = &ctx.storage.pubsub;
    if (kind, action.name.as_str()) == ("get", "default") {
        return Ok(reply(
            NS_OWNER,
            Element::new("default", NS_OWNER).with_child(default_config().to_form()),
        ));
    }
    let name = bounded_name(action.attr("node"))?;
    let mut node = load(ctx, service, name).await?;
    require_owner(&node, requester)?;
    match (kind, action.name.as_str()) {
        ("get", "configure") => Ok(reply(
            NS_OWNER,
            Element::new("configure", NS_OWNER)
                .with_attr("node", name)
                .with_child(node.cfg.to_form()),
        )),
        ("set", "configure") => {
            let form = form_of(Some(action))?.ok_or_else(StanzaError::bad_request)?;
            match form.kind.as_str() {
                "cancel" => return Ok(None),
                "submit" => {}
                _ => return Err(StanzaError::bad_request()),
            }
            if form.form_type.as_deref().is_some_and(|t| t != NODE_CONFIG) {
                return Err(StanzaError::bad_request());
            }
            node.cfg.apply(&form, false).map_err(|_| not_acceptable())?;
            save(ctx, service, name, &node).await?;
            let keep = node.cfg.items_kept(ctx.config.pep.max_items_per_node);
            store.trim(service, name, keep).await.map_err(internal)?;
            Ok(None)
        }
        ("set", "delete") => {
            store.delete_node(service, name).await.map_err(internal)?;
            if node.cfg.notify_delete {
                let event = Element::new("delete", NS_EVENT).with_attr("node", name);
                notify(ctx, service, &node, event).await;
            }
            Ok(None)
        }
        ("set", "purge") => {
            store.purge(service, name).await.map_err(internal)?;
            let event = Element::new("purge", NS_EVENT).with_attr("node", name);
            notify(ctx, service, &node, event).await;
            Ok(None)
        }
        ("get", "affiliations") => {
            let mut out = Element::new("affiliations", NS_OWNER).with_attr("node", name);
            for (jid, aff) in &node.record.affiliations {
                out.push_child(
                    Element::new("affiliation", NS_OWNER)
                        .with_attr("jid", jid.clone())
                        .with_attr("affiliation", aff.clone()),
                );
            }
            Ok(reply(NS_OWNER, out))
        }
        ("set", "affiliations") => {
            for a in action.elements().filter(|a| a.is("affiliation", NS_OWNER)) {
                let jid = a
                    .attr("jid")
                    .and_then(crate::addr::parse_bare)
                    .map(crate::addr::BareJid::into_inner)
                    .ok_or_else(StanzaError::jid_malformed)?;
                let aff = a.attr("affiliation").unwrap_or("");
                if !matches!(aff, "owner" | "publisher" | "member" | "outcast" | "none") {
                    return Err(not_acceptable());
                }
                node.record.affiliations.retain(|(j, _)| *j != jid);
                if aff != "none" {
                    node.record.affiliations.push((jid, aff.to_string()));
                }
            }
            if node.owner().is_none() {
                return Err(not_acceptable().with_text("a node keeps an owner"));
            }
            if node.record.affiliations.len() > ctx.config.pubsub.max_subscriptions_per_node {
                return Err(StanzaError::resource_constraint());
            }
            save(ctx, service, name, &node).await?;
            Ok(None)
        }
        ("get", "subscriptions") => {
            let mut out = Element::new("subscriptions", NS_OWNER).with_attr("node", name);
            for (jid, state) in &node.record.subscriptions {
                out.push_child(
                    Element::new("subscription", NS_OWNER)
                        .with_attr("jid", jid.clone())
                        .with_attr("subscription", state.clone()),
                );
            }
            Ok(reply(NS_OWNER, out))
        }
        ("set", "subscriptions") => {
            for s in action.elements().filter(|s| s.is("subscription", NS_OWNER)) {
                let jid = s
                    .attr("jid")
                    .and_then(crate::addr::parse)
                    .ok_or_else(StanzaError::jid_malformed)?
                    .into_inner();
                node.record.subscriptions.retain(|(j, _)| *j != jid);
                match s.attr("subscription") {
                    Some("none") => {}
                    Some("subscribed") => {
                        node.record.subscriptions.push((jid, "subscribed".into()))
                    }
                    _ => return Err(not_acceptable()),
                }
            }
            if node.record.subscriptions.len() > ctx.config.pubsub.max_subscriptions_per_node {
                return Err(StanzaError::resource_constraint());
            }
            save(ctx, service, name, &node).await?;
            Ok(None)
        }
        _ => Err(StanzaError::feature_not_implemented()),
    }
}
