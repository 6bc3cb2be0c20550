//! The generic XEP-0060 service on pubsub.<vhost> over real sockets: node creation by
//! admins only, explicit subscriptions, publishers by affiliation, notifications to
//! subscribers, the last item on subscription, and the service switched off.

mod support;

use support::{Client, TestServer};
use xmppd::xml::Element;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const SERVICE: &str = "pubsub.localhost";

fn conditions(e: &Element) -> (String, Option<String>) {
    assert_eq!(e.attr("type"), Some("error"), "not an error: {e:?}");
    let err = e.child("error", "jabber:client").unwrap();
    let cond = err
        .elements()
        .find(|c| c.ns == STANZAS)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    (
        cond,
        err.elements()
            .find(|c| c.ns == ERRORS)
            .map(|c| c.name.clone()),
    )
}

fn assert_result(e: &Element) {
    assert_eq!(e.attr("type"), Some("result"), "{e:?}");
}

async fn op(c: &mut Client, ns: &str, body: &str) -> Element {
    c.iq(&format!(
        "<iq type='set' to='{SERVICE}'><pubsub xmlns='{ns}'>{body}</pubsub></iq>"
    ))
    .await
}

async fn publish(c: &mut Client, id: &str, text: &str) -> Element {
    op(
        c,
        PUBSUB,
        &format!("<publish node='news'><item id='{id}'><entry xmlns='urn:test'>{text}</entry></item></publish>"),
    )
    .await
}

fn is_event(e: &Element) -> bool {
    e.name == "message" && e.attr("from") == Some(SERVICE) && e.child("event", EVENT).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_create_publishers_publish_subscribers_hear() {
    let server = TestServer::start_with(|c| c.pubsub.admins = vec!["admin@localhost".into()]).await;
    for u in ["admin", "alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
    let mut admin = server.login("admin", "a").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    let mut carol = server.login("carol", "c").await;

    // The server lists the service; the service says what it is.
    let items = bob
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let q = items
        .child("query", "http://jabber.org/protocol/disco#items")
        .unwrap();
    assert!(
        q.elements().any(|i| i.attr("jid") == Some(SERVICE)),
        "{q:?}"
    );
    let info = bob
        .iq(&format!("<iq type='get' to='{SERVICE}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
        .await;
    let q = info
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(
        q.elements()
            .any(|i| i.attr("category") == Some("pubsub") && i.attr("type") == Some("service"))
    );

    // Only admins create nodes.
    let r = op(&mut alice, PUBSUB, "<create node='news'/>").await;
    assert_eq!(conditions(&r).0, "forbidden");
    assert_result(&op(&mut admin, PUBSUB, "<create node='news'/>").await);
    assert_eq!(
        conditions(&op(&mut admin, PUBSUB, "<create node='news'/>").await).0,
        "conflict"
    );
    let nodes = bob
        .iq(&format!("<iq type='get' to='{SERVICE}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"))
        .await;
    assert!(
        nodes
            .child("query", "http://jabber.org/protocol/disco#items")
            .unwrap()
            .elements()
            .any(|i| i.attr("node") == Some("news"))
    );

    // bob subscribes with his full JID; not in someone else's name.
    let r = op(
        &mut bob,
        PUBSUB,
        "<subscribe node='news' jid='carol@localhost'/>",
    )
    .await;
    assert_eq!(
        conditions(&r),
        ("bad-request".into(), Some("invalid-jid".into()))
    );
    let r = op(
        &mut bob,
        PUBSUB,
        "<subscribe node='news' jid='bob@localhost/b'/>",
    )
    .await;
    assert_result(&r);
    let sub = r
        .child("pubsub", PUBSUB)
        .and_then(|p| p.child("subscription", PUBSUB))
        .unwrap();
    assert_eq!(sub.attr("subscription"), Some("subscribed"));

    // Publishing needs the publisher (or owner) affiliation.
    assert_eq!(
        conditions(&publish(&mut alice, "1", "hi").await).0,
        "forbidden"
    );
    assert_result(&publish(&mut admin, "1", "first").await);
    let m = bob.recv_until(is_event).await;
    assert_eq!(m.attr("to"), Some("bob@localhost/b"));
    let r = op(
        &mut admin,
        OWNER,
        "<affiliations node='news'><affiliation jid='alice@localhost' affiliation='publisher'/></affiliations>",
    )
    .await;
    assert_result(&r);
    assert_result(&publish(&mut alice, "2", "second").await);
    let m = bob.recv_until(is_event).await;
    let item = m
        .child("event", EVENT)
        .unwrap()
        .first_element()
        .unwrap()
        .first_element()
        .unwrap();
    assert_eq!(item.attr("id"), Some("2"));

    // A new subscriber gets the last item after the result (at its bare JID: to its
    // available resources).
    carol.available().await;
    let r = op(
        &mut carol,
        PUBSUB,
        "<subscribe node='news' jid='carol@localhost'/>",
    )
    .await;
    assert_result(&r);
    let m = carol.recv_until(is_event).await;
    assert!(m.child("delay", "urn:xmpp:delay").is_some());
    let items = carol
        .iq(&format!("<iq type='get' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub></iq>"))
        .await;
    assert_result(&items);
    assert_eq!(
        items
            .child("pubsub", PUBSUB)
            .unwrap()
            .child("items", PUBSUB)
            .unwrap()
            .elements()
            .count(),
        2
    );

    // Unsubscribing twice; then only carol hears the deletion.
    assert_result(
        &op(
            &mut bob,
            PUBSUB,
            "<unsubscribe node='news' jid='bob@localhost/b'/>",
        )
        .await,
    );
    let r = op(
        &mut bob,
        PUBSUB,
        "<unsubscribe node='news' jid='bob@localhost/b'/>",
    )
    .await;
    assert_eq!(
        conditions(&r),
        ("unexpected-request".into(), Some("not-subscribed".into()))
    );
    assert_eq!(
        conditions(&op(&mut alice, OWNER, "<delete node='news'/>").await).0,
        "forbidden"
    );
    assert_result(&op(&mut admin, OWNER, "<delete node='news'/>").await);
    let m = carol.recv_until(is_event).await;
    assert_eq!(
        m.child("event", EVENT)
            .unwrap()
            .first_element()
            .unwrap()
            .name,
        "delete"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_can_be_switched_off() {
    let server = TestServer::start_with(|c| c.pubsub.enabled = false).await;
    server.add_user("bob", "password").await;
    let mut bob = server.login("bob", "b").await;
    let items = bob
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let q = items
        .child("query", "http://jabber.org/protocol/disco#items")
        .unwrap();
    assert!(
        !q.elements().any(|i| i.attr("jid") == Some(SERVICE)),
        "{q:?}"
    );
    server.stop().await;
}
