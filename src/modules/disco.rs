//! XEP-0030 Service Discovery for the server and for accounts. Only features whose
//! module is loaded are advertised.

use std::sync::Arc;

use async_trait::async_trait;

use super::{IqHandler, IqTarget};
use crate::context::Context;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub struct Disco;

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut el = Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(name) = name {
        el.set_attr("name", name);
    }
    el
}

#[async_trait]
impl IqHandler for Disco {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        if iq.attr("type") != Some("get") {
            return Err(StanzaError::bad_request());
        }
        let Some(query) = iq.first_element() else {
            return Err(StanzaError::bad_request());
        };
        if let Some(node) = query.attr("node") {
            return node_query(ctx, target, iq, query, node).await;
        }
        if query.ns == ns::DISCO_ITEMS {
            let mut items = Element::new("query", ns::DISCO_ITEMS);
            match target {
                IqTarget::Server(_) => {
                    for jid in ctx.registry.server_items() {
                        items.push_child(
                            Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid.as_str()),
                        );
                    }
                }
                IqTarget::Account(user) => {
                    let requester = super::requester_bare(iq);
                    for item in ctx
                        .registry
                        .account_items(ctx, user, requester.as_ref())
                        .await
                    {
                        items.push_child(item);
                    }
                }
            }
            return Ok(Some(items));
        }
        let mut out = Element::new("query", ns::DISCO_INFO);
        let features = match target {
            IqTarget::Server(_) => {
                out.push_child(identity("server", "im", Some("xmppd")));
                for i in ctx.registry.server_identities() {
                    out.push_child(identity(i.category, i.kind, i.name.as_deref()));
                }
                ctx.registry.server_features()
            }
            IqTarget::Account(_) => {
                out.push_child(identity("account", "registered", None));
                for i in ctx.registry.account_identities() {
                    out.push_child(identity(i.category, i.kind, i.name.as_deref()));
                }
                ctx.registry.account_features()
            }
        };
        for var in features {
            out.push_child(feature(var));
        }
        if let IqTarget::Server(_) = target {
            for form in ctx.registry.server_forms() {
                out.push_child(form.clone());
            }
        }
        Ok(Some(out))
    }
}

/// A query for a node of the server (registered by modules, e.g. XEP-0050 commands).
async fn node_query(
    ctx: &Arc<Context>,
    target: &IqTarget,
    iq: &Element,
    query: &Element,
    node: &str,
) -> Result<Option<Element>, StanzaError> {
    let (IqTarget::Server(domain), Some(provider), Some(requester)) = (
        target,
        ctx.registry.server_node(node),
        iq.attr("from").and_then(crate::addr::parse),
    ) else {
        return Err(StanzaError::item_not_found());
    };
    let children = match query.ns == ns::DISCO_ITEMS {
        true => provider.items(ctx, domain.as_str(), node, &requester).await,
        false => provider.info(ctx, domain.as_str(), node, &requester).await,
    };
    let Some(children) = children else {
        return Err(StanzaError::item_not_found());
    };
    let mut out = Element::new("query", query.ns.clone()).with_attr("node", node);
    for c in children {
        out.push_child(c);
    }
    Ok(Some(out))
}
