//! A module plugs in without touching the router or the session code: this file's toy
//! module (an iq handler, a message hook and a service) is registered beside the standard
//! ones and works over the wire.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use support::TestServer;
use xmppd::context::Context;
use xmppd::registry::{
    Extensions, Flow, IqHandler, IqTarget, Module, OutboundMessageHook, Outgoing, Registrar,
    Service,
};
use xmppd::stream::StanzaError;
use xmppd::xml::{Element, ns};

const NS: &str = "urn:xmppd:test:echo";
const SERVICE: &str = "echo.localhost";

struct Echo;

impl Module for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.outbound_message(15, me.clone());
        r.service(SERVICE, me);
        r.server_item(SERVICE);
    }
}

#[async_trait]
impl IqHandler for Echo {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    async fn handle(
        &self,
        _ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let IqTarget::Server(_) = target else {
            return Err(StanzaError::service_unavailable());
        };
        let text = iq.first_element().map(Element::text).unwrap_or_default();
        Ok(Some(
            Element::new("echo", NS).with_text(text.to_uppercase()),
        ))
    }
}

#[async_trait]
impl OutboundMessageHook for Echo {
    async fn outbound(
        &self,
        _ctx: &Arc<Context>,
        _msg: &Outgoing<'_>,
        el: &mut Element,
        _: &mut Extensions,
    ) -> Flow {
        match el.child_text("body", ns::CLIENT).as_deref() {
            Some("drop me") => Flow::Stop,
            Some("tag me") => {
                el.push_child(Element::new("seen", NS));
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

#[async_trait]
impl Service for Echo {
    async fn handle(&self, ctx: &Arc<Context>, stanza: Element) {
        if stanza.name != "message" {
            return;
        }
        let (Some(from), Some(to)) = (stanza.attr("from"), stanza.attr("to")) else {
            return;
        };
        let body = stanza.child_text("body", ns::CLIENT).unwrap_or_default();
        let reply = Element::new("message", ns::CLIENT)
            .with_attr("from", to)
            .with_attr("to", from)
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text(format!("echo: {body}")));
        xmppd::router::route(ctx, reply).await;
    }
}

fn with_echo() -> Vec<Box<dyn Module>> {
    let mut modules = xmppd::modules::standard();
    modules.push(Box::new(Echo));
    modules
}

#[tokio::test]
async fn a_toy_module_plugs_in_through_the_registry_alone() {
    let server = TestServer::start_with_modules(|_| {}, with_echo()).await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    bob.available().await;

    // Its iq namespace is dispatched and its feature advertised.
    let answer = alice
        .iq(&format!(
            "<iq type='get' to='localhost'><echo xmlns='{NS}'>hi</echo></iq>"
        ))
        .await;
    assert_eq!(answer.attr("type"), Some("result"));
    assert_eq!(
        answer.child("echo", NS).map(Element::text).as_deref(),
        Some("HI")
    );
    let info = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let query = info
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(query.elements().any(|f| f.attr("var") == Some(NS)));
    let items = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let query = items
        .child("query", "http://jabber.org/protocol/disco#items")
        .unwrap();
    assert!(query.elements().any(|i| i.attr("jid") == Some(SERVICE)));

    // Its message hook sees what clients send: tags one message, stops another.
    alice
        .send("<message to='bob@localhost' type='chat'><body>drop me</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>tag me</body></message>")
        .await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(m.child_text("body", ns::CLIENT).as_deref(), Some("tag me"));
    assert!(m.child("seen", NS).is_some());

    // Its service owns a domain.
    alice
        .send(&format!(
            "<message to='{SERVICE}' type='chat'><body>ping</body></message>"
        ))
        .await;
    let m = alice.recv_until(|e| e.name == "message").await;
    assert_eq!(m.attr("from"), Some(SERVICE));
    assert_eq!(
        m.child_text("body", ns::CLIENT).as_deref(),
        Some("echo: ping")
    );

    // Without the module, none of it exists.
    drop((alice, bob));
    server.stop().await;
    let plain = TestServer::start().await;
    plain.add_user("alice", "password").await;
    let mut alice = plain.login("alice", "pc").await;
    let answer = alice
        .iq(&format!(
            "<iq type='get' to='localhost'><echo xmlns='{NS}'>hi</echo></iq>"
        ))
        .await;
    assert_eq!(answer.attr("type"), Some("error"));
    plain.stop().await;
}

#[test]
fn conflicting_registrations_are_refused_at_start() {
    let mut modules = with_echo();
    modules.push(Box::new(Echo));
    let config = xmppd::config::Config::default();
    let err = Context::with_modules(config, xmppd::storage::Storage::memory(), modules)
        .err()
        .expect("two modules claiming one namespace");
    assert!(err.contains(NS), "{err}");
}
