//! XEP-0357 push notifications, with a local account acting as the app server's push
//! service: it receives the pubsub publishes over its own c2s connection and answers them.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::xml::Element;

const PUSH: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const DATA: &str = "jabber:x:data";
const SERVICE: &str = "push@localhost/app";

fn ctx(server: &TestServer) -> &xmppd::context::Context {
    &server.handle.as_ref().unwrap().ctx
}

async fn enable(c: &mut Client, node: &str, extra_fields: &str) {
    let reply = c
        .iq(&format!(
            "<iq type='set'><enable xmlns='{PUSH}' jid='{SERVICE}' node='{node}'>\
             <x xmlns='{DATA}' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>s3cr3t</value></field>{extra_fields}</x></enable></iq>"
        ))
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

/// The summary form fields of a publish, and the node it went to.
struct Publish {
    iq: Element,
    node: String,
    fields: Vec<(String, String)>,
    secret: Option<String>,
}

impl Publish {
    fn field(&self, var: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }
}

fn form_fields(x: &Element) -> Vec<(String, String)> {
    x.elements()
        .filter(|f| f.name == "field")
        .map(|f| {
            (
                f.attr("var").unwrap_or_default().to_string(),
                f.child_text("value", DATA).unwrap_or_default(),
            )
        })
        .collect()
}

async fn next_publish(app: &mut Client) -> Publish {
    let iq = app.recv_until(|e| e.name == "iq").await;
    assert_eq!(iq.attr("type"), Some("set"), "{iq:?}");
    assert_eq!(iq.attr("from"), Some("bob@localhost"));
    let pubsub = iq.child("pubsub", PUBSUB).expect("pubsub");
    let publish = pubsub.child("publish", PUBSUB).expect("publish");
    let form = publish
        .child("item", PUBSUB)
        .and_then(|i| i.child("notification", PUSH))
        .and_then(|n| n.child("x", DATA))
        .expect("summary form");
    let secret = pubsub
        .child("publish-options", PUBSUB)
        .and_then(|o| o.child("x", DATA))
        .map(form_fields)
        .and_then(|f| f.into_iter().find(|(k, _)| k == "secret"))
        .map(|(_, v)| v);
    Publish {
        node: publish.attr("node").unwrap_or_default().to_string(),
        fields: form_fields(form),
        secret,
        iq,
    }
}

async fn answer(app: &mut Client, publish: &Publish, error: bool) {
    let id = publish.iq.attr("id").unwrap();
    let xml = if error {
        format!(
            "<iq type='error' id='{id}' to='bob@localhost'><error type='cancel'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )
    } else {
        format!("<iq type='result' id='{id}' to='bob@localhost'/>")
    };
    app.send(&xml).await;
}

async fn chat(from: &mut Client, to: &str, text: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat'><body>{text}</body></message>"
    ))
    .await;
}

#[tokio::test]
async fn publishes_for_offline_and_hibernated_users_until_disabled() {
    let server = TestServer::start().await;
    for user in ["alice", "bob", "push"] {
        server.add_user(user, "password").await;
    }
    let mut app = server.login("push", "app").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    let info = bob
        .iq("<iq type='get' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let query = info.first_element().unwrap();
    assert!(
        query
            .elements()
            .any(|f| f.name == "feature" && f.attr("var") == Some(PUSH)),
        "{info:?}"
    );
    enable(&mut bob, "n1", "").await;
    // Someone else's account cannot be configured.
    let refused = alice
        .iq(&format!(
            "<iq type='set' to='bob@localhost'><enable xmlns='{PUSH}' jid='{SERVICE}' node='x'/></iq>"
        ))
        .await;
    assert_eq!(refused.attr("type"), Some("error"));

    // Online: no notification.
    bob.send("<presence/>").await;
    chat(&mut alice, "bob@localhost", "you are here").await;
    bob.recv_until(|e| e.name == "message").await;
    app.expect_silence_except_presence(Duration::from_millis(300))
        .await;

    // Offline: the message is stored and the service told (no body by default).
    bob.close().await;
    support::wait_until("bob to go offline", || {
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    chat(&mut alice, "bob@localhost", "are you there?").await;
    let p = next_publish(&mut app).await;
    assert_eq!(p.node, "n1");
    assert_eq!(p.field("FORM_TYPE"), Some("urn:xmpp:push:summary"));
    assert_eq!(p.field("message-count"), Some("1"));
    assert_eq!(p.field("last-message-sender"), Some("alice@localhost/pc"));
    assert_eq!(p.field("last-message-body"), None);
    assert_eq!(p.secret.as_deref(), Some("s3cr3t"));
    answer(&mut app, &p, false).await;
    support::wait_until("the answer", || {
        ctx(&server).registry.pending_responses() == 0
    })
    .await;
    chat(&mut alice, "bob@localhost", "hello?").await;
    assert_eq!(
        next_publish(&mut app).await.field("message-count"),
        Some("2")
    );

    // Hibernated (XEP-0198): also notified; this registration asked for bodies.
    let mut bob = server.login("bob", "phone").await;
    enable(
        &mut bob,
        "n1",
        "<field var='include-body'><value>true</value></field>",
    )
    .await;
    bob.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    bob.recv_until(|e| e.name == "enabled").await;
    bob.send("<presence/>").await;
    bob.recv_until(|e| e.name == "message").await;
    bob.recv_until(|e| e.name == "message").await;
    // Bob never acknowledged the two messages: at hibernation they count as unread.
    bob.drop_connection();
    let p = next_publish(&mut app).await;
    assert_eq!(p.field("message-count"), Some("2"));
    assert_eq!(p.field("last-message-body"), Some("hello?"));
    answer(&mut app, &p, false).await;
    assert_eq!(ctx(&server).sm.hibernated_count(), 1);
    chat(&mut alice, "bob@localhost", "wake up").await;
    let p = next_publish(&mut app).await;
    assert_eq!(p.field("last-message-body"), Some("wake up"));
    assert_eq!(p.field("message-count"), Some("3"));
    // The xmppd-only field is not passed on.
    assert_eq!(p.secret.as_deref(), Some("s3cr3t"));
    assert!(!p.iq.to_stanza_string().contains("include-body"));
    // Chat states are not worth a notification.
    alice
        .send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    app.expect_silence_except_presence(Duration::from_millis(300))
        .await;
    // An error from the service disables that registration.
    answer(&mut app, &p, true).await;
    wait_for_no_registrations(&server, "bob@localhost").await;
    chat(&mut alice, "bob@localhost", "anyone?").await;
    app.expect_silence_except_presence(Duration::from_millis(300))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn disable_stops_notifications() {
    let server = TestServer::start().await;
    for user in ["alice", "bob", "push"] {
        server.add_user(user, "password").await;
    }
    let mut app = server.login("push", "app").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    enable(&mut bob, "n1", "").await;
    enable(&mut bob, "n2", "").await;
    let reply = bob
        .iq(&format!(
            "<iq type='set'><disable xmlns='{PUSH}' jid='{SERVICE}' node='n1'/></iq>"
        ))
        .await;
    assert_eq!(reply.attr("type"), Some("result"));
    bob.close().await;
    support::wait_until("bob to go offline", || {
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    chat(&mut alice, "bob@localhost", "one").await;
    let p = next_publish(&mut app).await;
    assert_eq!(p.node, "n2");
    answer(&mut app, &p, false).await;
    app.expect_silence_except_presence(Duration::from_millis(200))
        .await;

    let mut bob = server.login("bob", "phone").await;
    let reply = bob
        .iq(&format!(
            "<iq type='set'><disable xmlns='{PUSH}' jid='{SERVICE}'/></iq>"
        ))
        .await;
    assert_eq!(reply.attr("type"), Some("result"));
    bob.close().await;
    support::wait_until("bob to go offline", || {
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    chat(&mut alice, "bob@localhost", "two").await;
    app.expect_silence_except_presence(Duration::from_millis(300))
        .await;
    server.stop().await;
}

async fn wait_for_no_registrations(server: &TestServer, user: &str) {
    for _ in 0..200 {
        if ctx(server)
            .storage
            .push
            .list(&xmppd::addr::parse_bare(user).unwrap())
            .await
            .unwrap()
            .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the push registrations of {user} were not removed");
}
