//! XEP-0060 publish-subscribe: the engine (node configuration and its data form, access
//! models, publish-options preconditions, items, notifications) and its front ends.
//! `pep.rs` is XEP-0163 personal eventing on every account's bare JID; `caps.rs` keeps
//! the XEP-0115 capabilities that decide which resources want which notifications.

pub mod caps;
mod form;
pub mod pep;
pub mod service;

use std::sync::Arc;

use crate::context::Context;
use crate::storage::{NodeRecord, StoredItem};
use crate::stream::{ErrorType, StanzaError};
use crate::xml::{Element, ns};

pub use form::DataForm;

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// XEP-0060 §4.5 access models (`authorize` is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl AccessModel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => AccessModel::Open,
            "presence" => AccessModel::Presence,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
        }
    }
}

/// `pubsub#send_last_published_item`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
}

/// `pubsub#max_items`: a number or `max` (the server's limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxItems {
    Count(usize),
    Max,
}

impl MaxItems {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "max" => Some(MaxItems::Max),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .map(MaxItems::Count),
        }
    }
    fn to_value(self) -> String {
        match self {
            MaxItems::Count(n) => n.to_string(),
            MaxItems::Max => "max".into(),
        }
    }
    /// Items kept, with the server's cap.
    pub fn effective(self, cap: usize) -> usize {
        match self {
            MaxItems::Count(n) => n.min(cap),
            MaxItems::Max => cap,
        }
    }
}

/// A node's configuration (XEP-0060 §16.4.4 `pubsub#node_config`), the options
/// implemented here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    pub roster_groups_allowed: Vec<String>,
    pub max_items: MaxItems,
    pub persist_items: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub deliver_payloads: bool,
    pub deliver_notifications: bool,
    pub send_last_published_item: SendLast,
    pub title: String,
    /// `pubsub#type`: the payload type the node carries, if declared.
    pub payload_type: String,
}

impl Default for NodeConfig {
    /// XEP-0163 defaults: contacts with a presence subscription see the node; the last
    /// item is kept and sent when they come online.
    fn default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            roster_groups_allowed: Vec::new(),
            max_items: MaxItems::Count(1),
            persist_items: true,
            notify_retract: true,
            notify_delete: true,
            deliver_payloads: true,
            deliver_notifications: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            title: String::new(),
            payload_type: String::new(),
        }
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn bool_value(b: bool) -> String {
    if b { "1" } else { "0" }.into()
}

/// Why a configuration value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigRefusal {
    /// A field this server does not implement.
    Unknown(String),
    /// A known field with a value out of its range.
    Invalid(String),
}

impl NodeConfig {
    /// How many items the node keeps, at most `cap`: without persistence only the last
    /// one, for last-published delivery.
    pub fn items_kept(&self, cap: usize) -> usize {
        match self.persist_items {
            true => self.max_items.effective(cap),
            false => 1,
        }
    }

    /// Sets one option from its form field values.
    pub fn set(&mut self, var: &str, values: &[String]) -> Result<(), ConfigRefusal> {
        let one = values.first().map(String::as_str).unwrap_or("");
        let invalid = || ConfigRefusal::Invalid(var.to_string());
        let flag = |slot: &mut bool| -> Result<(), ConfigRefusal> {
            *slot = parse_bool(one).ok_or_else(invalid)?;
            Ok(())
        };
        match var {
            "FORM_TYPE" => Ok(()),
            "pubsub#access_model" => {
                self.access_model = AccessModel::parse(one.trim()).ok_or_else(invalid)?;
                Ok(())
            }
            "pubsub#roster_groups_allowed" => {
                if values.len() > 100 {
                    return Err(invalid());
                }
                self.roster_groups_allowed = values.to_vec();
                Ok(())
            }
            "pubsub#max_items" => {
                self.max_items = MaxItems::parse(one).ok_or_else(invalid)?;
                Ok(())
            }
            "pubsub#persist_items" => flag(&mut self.persist_items),
            "pubsub#notify_retract" => flag(&mut self.notify_retract),
            "pubsub#notify_delete" => flag(&mut self.notify_delete),
            "pubsub#deliver_payloads" => flag(&mut self.deliver_payloads),
            "pubsub#deliver_notifications" => flag(&mut self.deliver_notifications),
            "pubsub#send_last_published_item" => {
                self.send_last_published_item = SendLast::parse(one.trim()).ok_or_else(invalid)?;
                Ok(())
            }
            "pubsub#title" => {
                self.title = bounded_text(one).ok_or_else(invalid)?;
                Ok(())
            }
            "pubsub#type" => {
                self.payload_type = bounded_text(one).ok_or_else(invalid)?;
                Ok(())
            }
            other => match fixed(other) {
                // Options whose behaviour here is fixed: their value must say so.
                Some(accepted) => match accepted.contains(&one.trim()) {
                    true => Ok(()),
                    false => Err(invalid()),
                },
                None => Err(ConfigRefusal::Unknown(other.to_string())),
            },
        }
    }

    /// Applies every field of a submitted form; nothing changes if one is refused.
    /// `strict`: options this server does not know are refused (publish-options, whose
    /// every option must hold), else ignored (a configuration form a client filled from
    /// another server's template).
    pub fn apply(&mut self, form: &DataForm, strict: bool) -> Result<(), ConfigRefusal> {
        let mut next = self.clone();
        for (var, values) in &form.fields {
            match next.set(var, values) {
                Err(ConfigRefusal::Unknown(_)) if !strict => {}
                other => other?,
            }
        }
        *self = next;
        Ok(())
    }

    /// Whether the node's option `var` has the values a publish-options precondition
    /// asks for (XEP-0060 §7.1.5). Unknown options never match.
    pub fn satisfies(&self, var: &str, values: &[String]) -> bool {
        if var == "FORM_TYPE" {
            return true;
        }
        let mut wanted = self.clone();
        if wanted.set(var, values).is_err() {
            return false;
        }
        wanted == *self
    }

    /// The option values, as stored and as the form shows them.
    pub fn fields(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![
            (
                "pubsub#access_model",
                vec![self.access_model.as_str().into()],
            ),
            (
                "pubsub#roster_groups_allowed",
                self.roster_groups_allowed.clone(),
            ),
            ("pubsub#max_items", vec![self.max_items.to_value()]),
            ("pubsub#persist_items", vec![bool_value(self.persist_items)]),
            (
                "pubsub#notify_retract",
                vec![bool_value(self.notify_retract)],
            ),
            ("pubsub#notify_delete", vec![bool_value(self.notify_delete)]),
            (
                "pubsub#deliver_payloads",
                vec![bool_value(self.deliver_payloads)],
            ),
            (
                "pubsub#deliver_notifications",
                vec![bool_value(self.deliver_notifications)],
            ),
            (
                "pubsub#send_last_published_item",
                vec![self.send_last_published_item.as_str().into()],
            ),
            ("pubsub#title", vec![self.title.clone()]),
            ("pubsub#type", vec![self.payload_type.clone()]),
        ]
    }

    /// The `pubsub#node_config` form (type `form`, for a configure request).
    pub fn to_form(&self) -> Element {
        let mut x = Element::new("x", form::NS)
            .with_attr("type", "form")
            .with_child(form::field("FORM_TYPE", "hidden", &[NODE_CONFIG.into()]));
        for (var, values) in self.fields() {
            let (kind, options): (&str, &[&str]) = match var {
                "pubsub#access_model" => {
                    ("list-single", &["open", "presence", "roster", "whitelist"])
                }
                "pubsub#send_last_published_item" => {
                    ("list-single", &["never", "on_sub", "on_sub_and_presence"])
                }
                "pubsub#roster_groups_allowed" => ("list-multi", &[]),
                "pubsub#max_items" | "pubsub#title" | "pubsub#type" => ("text-single", &[]),
                _ => ("boolean", &[]),
            };
            let mut f = form::field(var, kind, &values);
            for o in options {
                f.push_child(
                    Element::new("option", form::NS)
                        .with_child(Element::new("value", form::NS).with_text(*o)),
                );
            }
            x.push_child(f);
        }
        x
    }

    pub fn to_record(&self, affiliations: Vec<(String, String)>) -> NodeRecord {
        NodeRecord {
            subscriptions: Vec::new(),
            config: self
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.join("\n")))
                .collect(),
            affiliations,
        }
    }

    /// The stored configuration; options stored by another version and not known here
    /// are skipped, values out of range keep their defaults.
    pub fn from_record(record: &NodeRecord) -> Self {
        let mut cfg = NodeConfig::default();
        for (k, v) in &record.config {
            let values: Vec<String> = match k.as_str() {
                "pubsub#roster_groups_allowed" if v.is_empty() => Vec::new(),
                "pubsub#roster_groups_allowed" => v.split('\n').map(str::to_string).collect(),
                _ => vec![v.clone()],
            };
            let _ = cfg.set(k, &values);
        }
        cfg
    }
}

/// Options not configurable here, with the values that describe what this server does
/// (so a form or precondition stating them is met).
fn fixed(var: &str) -> Option<&'static [&'static str]> {
    Some(match var {
        "pubsub#publish_model" => &["publishers"],
        "pubsub#notification_type" => &["headline"],
        "pubsub#presence_based_delivery" => &["1", "true"],
        "pubsub#notify_config" | "pubsub#notify_sub" | "pubsub#purge_offline" => &["0", "false"],
        "pubsub#subscribe" => &["1", "true"],
        "pubsub#item_expire" => &["", "0"],
        "pubsub#node_type" => &["leaf"],
        _ => return None,
    })
}

/// Free text options are short.
fn bounded_text(s: &str) -> Option<String> {
    (s.len() <= 1024).then(|| s.to_string())
}

// JID helpers: the one place this module family builds or inspects JID strings (for the
// move to typed JIDs).

/// `bare/resource`.
pub(crate) fn full_jid(bare: &str, resource: &str) -> String {
    format!("{bare}/{resource}")
}

/// Whether a (normalized) JID belongs to a domain this server hosts.
pub(crate) fn is_local(ctx: &Context, jid: &str) -> bool {
    crate::addr::parse(jid).is_some_and(|j| ctx.is_local_domain(j.domain().as_str()))
}

/// Whether a (normalized) JID carries a resource.
pub(crate) fn has_resource(jid: &str) -> bool {
    crate::addr::parse(jid).is_some_and(|j| j.is_full())
}

/// The typed bare JID of a (normalized) JID string.
pub(crate) fn bare_jid(jid: &str) -> Option<crate::addr::BareJid> {
    crate::addr::parse(jid).map(crate::addr::Jid::into_bare)
}

/// An account's presence subscribers and subscriptions, by its (normalized) JID string.
pub(crate) async fn presence_contacts(
    ctx: &Context,
    user: &str,
) -> Result<Arc<crate::storage::PresenceContacts>, crate::storage::StorageError> {
    match bare_jid(user) {
        Some(user) => ctx.storage.roster.presence_contacts(&user).await,
        None => Ok(Arc::default()),
    }
}

/// An account's roster, by its (normalized) JID string.
pub(crate) async fn roster(
    ctx: &Context,
    user: &str,
) -> Result<crate::storage::Roster, crate::storage::StorageError> {
    match bare_jid(user) {
        Some(user) => ctx.storage.roster.roster(&user).await,
        None => Ok(crate::storage::Roster::default()),
    }
}

/// The bare JID of a (normalized) JID string, as a string.
pub(crate) fn bare_str(jid: &str) -> String {
    bare_jid(jid).map_or_else(String::new, crate::addr::BareJid::into_inner)
}

/// A stanza error with a `pubsub#errors` application condition (XEP-0060 §7, §6).
pub fn error(kind: ErrorType, condition: &'static str, app: &str) -> StanzaError {
    let mut e = StanzaError::new(kind, condition);
    e.app = Some(Element::new(app, NS_ERRORS));
    e
}

/// `<unsupported feature='…'/>` with `feature-not-implemented`.
pub fn unsupported(feature: &str) -> StanzaError {
    let mut e = StanzaError::feature_not_implemented();
    e.app = Some(Element::new("unsupported", NS_ERRORS).with_attr("feature", feature));
    e
}

pub fn precondition_not_met() -> StanzaError {
    error(ErrorType::Cancel, "conflict", "precondition-not-met")
}

pub fn payload_too_big() -> StanzaError {
    error(ErrorType::Modify, "not-acceptable", "payload-too-big")
}

pub fn invalid_payload() -> StanzaError {
    error(ErrorType::Modify, "bad-request", "invalid-payload")
}

pub fn item_required() -> StanzaError {
    error(ErrorType::Modify, "bad-request", "item-required")
}

pub fn nodeid_required() -> StanzaError {
    error(ErrorType::Modify, "bad-request", "nodeid-required")
}

pub fn max_nodes_exceeded() -> StanzaError {
    error(ErrorType::Cancel, "not-allowed", "max-nodes-exceeded")
}

pub fn conflict() -> StanzaError {
    StanzaError::new(ErrorType::Cancel, "conflict")
}

pub fn not_acceptable() -> StanzaError {
    StanzaError::new(ErrorType::Modify, "not-acceptable")
}

/// Whether `requester` (a bare JID) may see the nodes of `owner` with this configuration
/// and affiliations (XEP-0060 §4.5, §6.5.9 errors). The owner always may.
pub async fn check_access(
    ctx: &Arc<Context>,
    owner: &str,
    cfg: &NodeConfig,
    affiliations: &[(String, String)],
    requester: &str,
) -> Result<(), StanzaError> {
    if requester == owner {
        return Ok(());
    }
    let affiliation = affiliations
        .iter()
        .find(|(j, _)| j == requester)
        .map(|(_, a)| a.as_str());
    if affiliation == Some("outcast") {
        return Err(StanzaError::forbidden());
    }
    if matches!(affiliation, Some("owner" | "publisher" | "member")) {
        return Ok(());
    }
    match cfg.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Whitelist => Err(error(ErrorType::Cancel, "not-allowed", "closed-node")),
        AccessModel::Presence | AccessModel::Roster => {
            let item = match (bare_jid(owner), bare_jid(requester)) {
                (Some(owner), Some(requester)) => ctx
                    .storage
                    .roster
                    .item(&owner, &requester)
                    .await
                    .map_err(super::internal)?,
                _ => None,
            };
            let item = item.filter(|i| i.subscription.has_from());
            match (cfg.access_model, item) {
                (AccessModel::Presence, Some(_)) => Ok(()),
                (AccessModel::Presence, None) => Err(error(
                    ErrorType::Auth,
                    "not-authorized",
                    "presence-subscription-required",
                )),
                (_, Some(i))
                    if i.groups
                        .iter()
                        .any(|g| cfg.roster_groups_allowed.contains(g)) =>
                {
                    Ok(())
                }
                _ => Err(error(
                    ErrorType::Auth,
                    "not-authorized",
                    "not-in-roster-group",
                )),
            }
        }
    }
}

/// Of items given newest first, the newest whose payloads fit in `budget` bytes (at
/// least one), oldest first: an items result stays about the size of a stanza the server
/// accepts instead of every stored item at once (XEP-0060 §6.5.7 lets a service truncate).
pub fn newest_within(newest_first: Vec<StoredItem>, budget: usize) -> Vec<StoredItem> {
    let mut used = 0usize;
    let mut out: Vec<StoredItem> = Vec::new();
    for item in newest_first {
        used = used.saturating_add(item.payload.len());
        if used > budget && !out.is_empty() {
            break;
        }
        out.push(item);
    }
    out.reverse();
    out
}

/// An `<item/>` as notifications and item lists carry it.
pub fn item_element(ns: &str, item: &StoredItem, with_payload: bool) -> Element {
    let mut el = Element::new("item", ns).with_attr("id", item.id.clone());
    if with_payload {
        el.set_attr("publisher", item.publisher.clone());
        match crate::xml::parse_stanza(&item.payload) {
            Ok(payload) => el.push_child(payload),
            Err(e) => tracing::warn!(error = %e, id = %item.id, "stored pubsub payload unreadable"),
        }
    }
    el
}

/// A notification message carrying `event` (the `<event/>` child's content).
pub fn event_message(from: &str, to: &str, event: Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "headline")
        .with_attr("id", crate::stream::random_id())
        .with_child(Element::new("event", NS_EVENT).with_child(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(xml: &str) -> DataForm {
        DataForm::parse(&crate::xml::parse_stanza(xml).unwrap()).unwrap()
    }

    #[test]
    fn config_round_trips_through_its_record() {
        let cfg = NodeConfig {
            access_model: AccessModel::Roster,
            roster_groups_allowed: vec!["a".into(), "b c".into()],
            max_items: MaxItems::Max,
            notify_retract: false,
            ..NodeConfig::default()
        };
        assert_eq!(NodeConfig::from_record(&cfg.to_record(Vec::new())), cfg);
    }

    #[test]
    fn preconditions_compare_with_the_node() {
        let cfg = NodeConfig {
            access_model: AccessModel::Open,
            ..NodeConfig::default()
        };
        assert!(cfg.satisfies("pubsub#access_model", &["open".into()]));
        assert!(!cfg.satisfies("pubsub#access_model", &["presence".into()]));
        assert!(cfg.satisfies("pubsub#persist_items", &["true".into()]));
        assert!(cfg.satisfies("pubsub#persist_items", &["1".into()]));
        assert!(!cfg.satisfies("pubsub#max_items", &["max".into()]));
        assert!(!cfg.satisfies("pubsub#no_such_option", &["1".into()]));
    }

    #[test]
    fn forms_apply_all_or_nothing() {
        let mut cfg = NodeConfig::default();
        let good = form(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x>",
        );
        cfg.apply(&good, true).unwrap();
        assert_eq!(cfg.access_model, AccessModel::Whitelist);
        assert_eq!(cfg.max_items, MaxItems::Max);
        let bad = form(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='pubsub#access_model'><value>open</value></field>\
             <field var='pubsub#max_items'><value>-3</value></field></x>",
        );
        assert_eq!(
            cfg.apply(&bad, true),
            Err(ConfigRefusal::Invalid("pubsub#max_items".into()))
        );
        assert_eq!(cfg.access_model, AccessModel::Whitelist);
        // Options of other servers' forms: ignored when configuring, refused as
        // preconditions; fixed ones match what this server does.
        let foreign = form(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='pubsub#description'><value>x</value></field>\
             <field var='pubsub#publish_model'><value>publishers</value></field></x>",
        );
        cfg.apply(&foreign, false).unwrap();
        assert!(cfg.apply(&foreign, true).is_err());
        assert!(cfg.satisfies("pubsub#publish_model", &["publishers".into()]));
        assert!(!cfg.satisfies("pubsub#publish_model", &["open".into()]));
        assert_eq!(MaxItems::Max.effective(10), 10);
        assert_eq!(MaxItems::Count(100).effective(10), 10);
    }

    #[test]
    fn item_lists_are_bounded_by_size() {
        let item = |id: &str, len: usize| StoredItem {
            id: id.into(),
            publisher: "a@b".into(),
            payload: "x".repeat(len),
            published_at: 0,
        };
        let ids = |v: Vec<StoredItem>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
        let newest_first = vec![item("3", 40), item("2", 40), item("1", 40)];
        assert_eq!(ids(newest_within(newest_first.clone(), 100)), ["2", "3"]);
        assert_eq!(
            ids(newest_within(newest_first.clone(), 1000)),
            ["1", "2", "3"]
        );
        // One item always goes, whatever its size.
        assert_eq!(ids(newest_within(newest_first, 10)), ["3"]);
    }

    #[test]
    fn errors_carry_the_pubsub_condition() {
        let el = precondition_not_met().to_element();
        assert_eq!(el.attr("type"), Some("cancel"));
        assert!(el.has_child("conflict", ns::STANZA_ERRORS));
        assert!(el.has_child("precondition-not-met", NS_ERRORS));
    }
}
