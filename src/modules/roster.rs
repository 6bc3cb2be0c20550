//! RFC 6121 §2 roster management with XEP-0237 roster versioning.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use super::{IqHandler, IqTarget, internal, own_account, presence};
use crate::addr::{self, BareJid, Jid};
use crate::context::Context;
use crate::registry::{Module, Registrar, RouteFilter};
use crate::router::deliver_to_session;
use crate::storage::{RosterItem, StorageError};
use crate::stream::{ErrorType, StanzaError, random_id};
use crate::xml::{Element, ns};

pub struct Roster;

/// Session flag: the resource requested the roster (RFC 6121 §2.1.6 "interested
/// resource"), so it gets roster pushes and subscription state changes.
pub struct Interested;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        r.session_flag::<Interested>();
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.route_filter(me);
    }
}

#[async_trait]
impl RouteFilter for Roster {
    fn concerns(&self, _: &Context, _: &Jid, to: &Jid, stanza: &Element) -> bool {
        stanza.name == "iq" && to.is_full()
    }
    async fn may_route(&self, ctx: &Arc<Context>, _: &Jid, to: &Jid, stanza: &Element) -> bool {
        !super::refuse_forged_push(ctx, to, stanza, ns::ROSTER).await
    }
}

pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.jid.as_str())
        .with_attr("subscription", item.subscription.as_str());
    if let Some(name) = &item.name {
        el.set_attr("name", name.clone());
    }
    if item.ask {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.push_child(Element::new("group", ns::ROSTER).with_text(g.clone()));
    }
    el
}

pub fn removed_element(contact: &BareJid) -> Element {
    Element::new("item", ns::ROSTER)
        .with_attr("jid", contact.as_str())
        .with_attr("subscription", "remove")
}

/// Sends a roster push (RFC 6121 §2.1.6) to every interested resource of `user`.
pub fn push(ctx: &Arc<Context>, user: &BareJid, item: Element, version: u64) {
    let query = Element::new("query", ns::ROSTER)
        .with_attr("ver", version.to_string())
        .with_child(item);
    let interested = ctx.registry.flag::<Interested>();
    for s in ctx.sessions.resources(user) {
        if !s.flags.has(interested) {
            continue;
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push-{}", random_id()))
            .with_attr("to", format!("{user}/{}", s.resource))
            .with_child(query.clone());
        deliver_to_session(&s.tx, &s.control, iq);
    }
}

/// Stores an item and pushes it; storage failures are logged and reported to the caller.
pub async fn save_and_push(
    ctx: &Arc<Context>,
    user: &BareJid,
    item: &RosterItem,
) -> Result<(), StorageError> {
    let before = match ctx.registry.has_roster_observers() {
        true => ctx.storage.roster.item(user, &item.jid).await?,
        false => None,
    };
    let version = ctx.storage.roster.put_item(user, item).await?;
    push(ctx, user, item_element(item), version);
    ctx.registry
        .roster_changed(ctx, user, before.as_ref(), item)
        .await;
    Ok(())
}

#[async_trait]
impl IqHandler for Roster {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::ROSTER]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        // Only the account itself manages its roster (RFC 6121 §2.1.5: others get an error).
        let user = own_account(target, iq)?;
        let Some(query) = iq.first_element() else {
            return Err(StanzaError::bad_request());
        };
        match iq.attr("type") {
            Some("get") => get(ctx, user, iq, query).await,
            Some("set") => set(ctx, user, query).await,
            _ => Err(StanzaError::bad_request()),
        }
    }

    async fn after_result(&self, ctx: &Arc<Context>, target: &IqTarget, iq: &Element) {
        let IqTarget::Account(user) = target else {
            return;
        };
        if iq.attr("type") != Some("set") {
            return;
        }
        let Some(item_el) = iq.first_element().and_then(|q| q.child("item", ns::ROSTER)) else {
            return;
        };
        let Some(contact) = item_el.attr("jid").and_then(addr::parse_bare) else {
            return;
        };
        // Push what is stored now: the item, or its removal. One item, not the whole
        // roster: a roster set must not cost more as the roster grows. The version is read
        // first, as `RosterStore::roster` does: a change in between is pushed once more.
        let stored = async {
            let version = ctx.storage.roster.version(user).await?;
            Ok::<_, StorageError>((version, ctx.storage.roster.item(user, &contact).await?))
        };
        let (version, item) = match stored.await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "roster load for push failed");
                return;
            }
        };
        let element = match item {
            Some(item) => item_element(&item),
            None => removed_element(&contact),
        };
        push(ctx, user, element, version);
    }
}

async fn get(
    ctx: &Arc<Context>,
    user: &BareJid,
    iq: &Element,
    query: &Element,
) -> Result<Option<Element>, StanzaError> {
    if query.elements().next().is_some() {
        return Err(StanzaError::bad_request());
    }
    if let Some(from) = iq.attr("from").and_then(addr::parse_full)
        && let resource = from.resource().as_str()
        && let Some(conn_id) = ctx.sessions.get(user, resource).map(|s| s.conn_id)
    {
        ctx.sessions.update(user, resource, conn_id, |s| {
            s.flags.set(ctx.registry.flag::<Interested>(), true)
        });
    }
    let roster = ctx.storage.roster.roster(user).await.map_err(internal)?;
    let current = roster.version.to_string();
    if query.attr("ver") == Some(current.as_str()) {
        // XEP-0237 §3: up to date; changes will arrive as pushes.
        return Ok(None);
    }
    let mut out = Element::new("query", ns::ROSTER).with_attr("ver", current);
    for item in &roster.items {
        out.push_child(item_element(item));
    }
    Ok(Some(out))
}

async fn set(
    ctx: &Arc<Context>,
    user: &BareJid,
    query: &Element,
) -> Result<Option<Element>, StanzaError> {
    // RFC 6121 §2.3.3: exactly one item.
    let mut items = query.elements();
    let (Some(item_el), None) = (items.next(), items.next()) else {
        return Err(StanzaError::bad_request());
    };
    if !item_el.is("item", ns::ROSTER) {
        return Err(StanzaError::bad_request());
    }
    let Some(contact) = item_el.attr("jid").and_then(addr::parse_bare) else {
        return Err(StanzaError::jid_malformed());
    };
    if item_el.attr("subscription") == Some("remove") {
        remove(ctx, user, &contact).await?;
        return Ok(None);
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item_el.elements().filter(|g| g.is("group", ns::ROSTER)) {
        let name = g.text();
        if name.is_empty() {
            return Err(StanzaError::new(ErrorType::Modify, "not-acceptable"));
        }
        if groups.contains(&name) {
            return Err(StanzaError::bad_request());
        }
        groups.push(name);
    }
    let existing = ctx
        .storage
        .roster
        .item(user, &contact)
        .await
        .map_err(internal)?;
    if existing.is_none() && roster_full(ctx, user).await.map_err(internal)? {
        return Err(roster_full_error());
    }
    // Clients may change only the name and groups; subscription state is the server's.
    let mut item = existing.unwrap_or_else(|| RosterItem::new(contact.clone()));
    item.name = item_el
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    item.groups = groups;
    // The push follows the result (see `after_result`).
    ctx.storage
        .roster
        .put_item(user, &item)
        .await
        .map_err(internal)?;
    Ok(None)
}

/// Whether `user`'s roster holds `limits.max_roster_items` contacts already.
pub(crate) async fn roster_full(ctx: &Arc<Context>, user: &BareJid) -> Result<bool, StorageError> {
    let items = ctx.storage.roster.item_count(user).await?;
    Ok(items >= ctx.config.limits.max_roster_items)
}

pub(crate) fn roster_full_error() -> StanzaError {
    StanzaError::resource_constraint().with_text("the roster is full")
}

/// RFC 6121 §2.5: removing an item cancels subscriptions in both directions.
async fn remove(ctx: &Arc<Context>, user: &BareJid, contact: &BareJid) -> Result<(), StanzaError> {
    let existing = ctx
        .storage
        .roster
        .item(user, contact)
        .await
        .map_err(internal)?;
    let Some(item) = existing else {
        return Err(StanzaError::item_not_found());
    };
    ctx.storage
        .roster
        .remove_item(user, contact)
        .await
        .map_err(internal)?;
    ctx.storage
        .roster
        .remove_pending_in(user, contact)
        .await
        .map_err(internal)?;
    if item.subscription.has_to() || item.ask {
        presence::send_subscription(ctx, user, contact, "unsubscribe").await;
    }
    if item.subscription.has_from() || item.pending_in {
        presence::send_unavailable_from_all(ctx, user, contact).await;
        presence::send_subscription(ctx, user, contact, "unsubscribed").await;
    }
    Ok(())
}
