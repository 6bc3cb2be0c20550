//! XEP-0049 private XML storage, and XEP-0402 §5.1 compatibility with XEP-0048 bookmarks
//! kept there: bookmarks set with XEP-0048 are published as XEP-0402 items in PEP, and
//! the XEP-0048 view is made from the PEP node whenever it exists, so both protocols show
//! the same bookmarks whichever one a client used last.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::debug;

use super::pubsub::{DataForm, pep};
use super::{IqHandler, IqTarget, internal, own_account};
use crate::context::Context;
use crate::registry::{Module, Registrar};
use crate::stream::{ErrorType, StanzaError};
use crate::xml::Element;

pub const NS: &str = "jabber:iq:private";
/// XEP-0048 bookmarks (in private storage).
pub const BOOKMARKS_LEGACY: &str = "storage:bookmarks";
/// XEP-0402 bookmarks: the PEP node and its payload namespace.
pub const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
pub const BOOKMARKS_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";

pub struct Private;

impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        r.iq(Arc::new(PrivateIq));
    }
}

struct PrivateIq;

/// The storage key of an element: its namespace and name.
fn key(el: &Element) -> String {
    format!("{}\u{1f}{}", el.ns, el.name)
}

/// Namespaces that are not private data (XEP-0049 §3).
fn reserved(ns: &str) -> bool {
    matches!(ns, "jabber:client" | "jabber:server" | NS | "") || ns.starts_with("jabber:iq:")
}

#[async_trait]
impl IqHandler for PrivateIq {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS, BOOKMARKS_COMPAT]
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
        let user = own_account(target, iq)?.as_str();
        let query = iq.first_element().ok_or_else(StanzaError::bad_request)?;
        let mut children = query.elements();
        let (Some(el), None) = (children.next(), children.next()) else {
            return Err(StanzaError::new(ErrorType::Modify, "not-acceptable")
                .with_text("exactly one element"));
        };
        if reserved(&el.ns) {
            return Err(StanzaError::new(ErrorType::Modify, "not-acceptable"));
        }
        let store = &ctx.storage.profiles;
        match iq.attr("type") {
            Some("get") => {
                let found = if el.is("storage", BOOKMARKS_LEGACY) {
                    legacy_view(ctx, user).await?
                } else {
                    None
                };
                let found = match found {
                    Some(f) => f,
                    None => store
                        .private(user, &key(el))
                        .await
                        .map_err(internal)?
                        .and_then(|x| crate::xml::parse_stanza(&x).ok())
                        .unwrap_or_else(|| Element::new(el.name.clone(), el.ns.clone())),
                };
                Ok(Some(Element::new("query", NS).with_child(found)))
            }
            Some("set") => {
                let xml = el.to_stanza_string();
                if xml.len() > ctx.config.pep.max_private_bytes {
                    return Err(StanzaError::new(ErrorType::Modify, "not-acceptable")
                        .with_text("the element is too large"));
                }
                let stored = store
                    .set_private(
                        user,
                        &key(el),
                        Some(&xml),
                        ctx.config.pep.max_private_entries,
                    )
                    .await
                    .map_err(internal)?;
                if !stored {
                    return Err(
                        StanzaError::resource_constraint().with_text("too many private elements")
                    );
                }
                if el.is("storage", BOOKMARKS_LEGACY) {
                    legacy_set(ctx, user, el).await;
                }
                Ok(None)
            }
            _ => Err(StanzaError::bad_request()),
        }
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true"))
}

/// XEP-0048 `<conference/>` → XEP-0402 item (id, payload).
fn to_pep(conf: &Element) -> Option<(String, Element)> {
    let jid = conf
        .attr("jid")
        .and_then(crate::addr::parse_bare)
        .map(crate::addr::BareJid::into_inner)?;
    let mut out = Element::new("conference", BOOKMARKS);
    if let Some(name) = conf.attr("name") {
        out.set_attr("name", name);
    }
    if truthy(conf.attr("autojoin")) {
        out.set_attr("autojoin", "true");
    }
    for child in ["nick", "password"] {
        if let Some(text) = conf.child_text(child, BOOKMARKS_LEGACY) {
            out.push_child(Element::new(child, BOOKMARKS).with_text(text));
        }
    }
    Some((jid, out))
}

/// XEP-0402 item → XEP-0048 `<conference/>`.
fn to_legacy(id: &str, conf: &Element) -> Element {
    let mut out = Element::new("conference", BOOKMARKS_LEGACY).with_attr("jid", id);
    if let Some(name) = conf.attr("name") {
        out.set_attr("name", name);
    }
    out.set_attr(
        "autojoin",
        if truthy(conf.attr("autojoin")) {
            "true"
        } else {
            "false"
        },
    );
    for child in ["nick", "password"] {
        if let Some(text) = conf.child_text(child, BOOKMARKS) {
            out.push_child(Element::new(child, BOOKMARKS_LEGACY).with_text(text));
        }
    }
    out
}

/// The node options XEP-0402 §3 requires, as publish-options.
fn bookmark_options() -> DataForm {
    let f = |var: &str, v: &str| (var.to_string(), vec![v.to_string()]);
    DataForm {
        kind: "submit".into(),
        form_type: Some(super::pubsub::PUBLISH_OPTIONS.into()),
        fields: vec![
            f("pubsub#persist_items", "true"),
            f("pubsub#max_items", "max"),
            f("pubsub#send_last_published_item", "never"),
            f("pubsub#access_model", "whitelist"),
        ],
    }
}

/// The XEP-0048 bookmarks made from the XEP-0402 node (with the stored legacy element's
/// other children, such as `<url/>`), if the node exists.
async fn legacy_view(ctx: &Arc<Context>, user: &str) -> Result<Option<Element>, StanzaError> {
    let exists = ctx
        .storage
        .pubsub
        .node(user, BOOKMARKS)
        .await
        .map_err(internal)?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let mut storage = Element::new("storage", BOOKMARKS_LEGACY);
    let stored = ctx
        .storage
        .profiles
        .private(user, &key(&storage))
        .await
        .map_err(internal)?
        .and_then(|x| crate::xml::parse_stanza(&x).ok());
    if let Some(stored) = stored {
        for child in stored.elements().filter(|c| c.name != "conference") {
            storage.push_child(child.clone());
        }
    }
    for (id, conf) in pep::all_items(ctx, user, BOOKMARKS).await? {
        if conf.is("conference", BOOKMARKS) {
            storage.push_child(to_legacy(&id, &conf));
        }
    }
    Ok(Some(storage))
}

/// XEP-0048 bookmarks set by a client: published to the XEP-0402 node (new and changed
/// ones), and the ones no longer listed retracted.
async fn legacy_set(ctx: &Arc<Context>, user: &str, storage: &Element) {
    let wanted: Vec<(String, Element)> = storage
        .elements()
        .filter(|c| c.is("conference", BOOKMARKS_LEGACY))
        .filter_map(to_pep)
        .collect();
    let current = pep::all_items(ctx, user, BOOKMARKS)
        .await
        .unwrap_or_default();
    let options = bookmark_options();
    for (id, conf) in &wanted {
        if current.iter().any(|(i, c)| i == id && c == conf) {
            continue;
        }
        if let Err(e) =
            pep::publish(ctx, user, BOOKMARKS, Some(id), conf.clone(), Some(&options)).await
        {
            debug!(
                user,
                condition = e.condition,
                "XEP-0048 bookmark not converted"
            );
            return;
        }
    }
    for (id, _) in current {
        if !wanted.iter().any(|(i, _)| *i == id)
            && let Err(e) = pep::retract(ctx, user, BOOKMARKS, &id, true).await
        {
            debug!(
                user,
                condition = e.condition,
                "XEP-0048 bookmark removal not converted"
            );
        }
    }
}

/// XEP-0402 §5.1: bookmarks stored only in private storage (by XEP-0048 clients, before
/// the XEP-0402 node existed) are published to a new XEP-0402 node.
pub async fn migrate_legacy(ctx: &Arc<Context>, user: &str) {
    match ctx.storage.pubsub.node(user, BOOKMARKS).await {
        Ok(None) => {}
        Ok(Some(_)) => return,
        Err(e) => {
            debug!(user, error = %e, "bookmarks node lookup failed");
            return;
        }
    }
    let legacy = Element::new("storage", BOOKMARKS_LEGACY);
    let stored = match ctx.storage.profiles.private(user, &key(&legacy)).await {
        Ok(Some(xml)) => crate::xml::parse_stanza(&xml).ok(),
        _ => None,
    };
    if let Some(storage) = stored {
        legacy_set(ctx, user, &storage).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_convert_both_ways() {
        let legacy = crate::xml::parse_stanza(
            "<conference xmlns='storage:bookmarks' jid='Room@Conference.Example' name='The Room' autojoin='1'><nick>me</nick></conference>",
        )
        .unwrap();
        let (id, pep) = to_pep(&legacy).unwrap();
        assert_eq!(id, "room@conference.example");
        assert_eq!(pep.attr("autojoin"), Some("true"));
        assert_eq!(pep.child_text("nick", BOOKMARKS).as_deref(), Some("me"));
        let back = to_legacy(&id, &pep);
        assert_eq!(back.attr("jid"), Some("room@conference.example"));
        assert_eq!(back.attr("name"), Some("The Room"));
        assert_eq!(back.attr("autojoin"), Some("true"));
        assert_eq!(
            back.child_text("nick", BOOKMARKS_LEGACY).as_deref(),
            Some("me")
        );
        assert!(reserved("jabber:iq:roster"));
        assert!(!reserved("storage:bookmarks"));
    }
}
