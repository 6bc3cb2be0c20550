//! RFC 6121 rosters and presence over real sockets.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::xml::Element;

const ROSTER: &str = "jabber:iq:roster";

fn is_presence_from(from: &str, kind: Option<&str>) -> impl Fn(&Element) -> bool {
    let from = from.to_string();
    let kind = kind.map(str::to_string);
    move |e: &Element| {
        e.name == "presence"
            && e.attr("from") == Some(from.as_str())
            && e.attr("type") == kind.as_deref()
    }
}

fn roster_push_for(jid: &str) -> impl Fn(&Element) -> bool {
    let jid = jid.to_string();
    move |e: &Element| {
        e.name == "iq"
            && e.attr("type") == Some("set")
            && e.child("query", ROSTER)
                .and_then(|q| q.child("item", ROSTER))
                .and_then(|i| i.attr("jid"))
                == Some(jid.as_str())
    }
}

async fn roster_item(c: &mut Client, jid: &str) -> Option<Element> {
    let r = c
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    r.child("query", ROSTER)?
        .elements()
        .find(|i| i.attr("jid") == Some(jid))
        .cloned()
}

/// Ack a roster push as a well-behaved client does.
async fn next_push(c: &mut Client, jid: &str) -> Element {
    let push = c.recv_until(roster_push_for(jid)).await;
    let id = push.attr("id").unwrap().to_string();
    c.send(&format!("<iq type='result' id='{id}'/>")).await;
    push.child("query", ROSTER)
        .unwrap()
        .child("item", ROSTER)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn full_subscription_handshake_reaches_both() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    // Both request the roster (interested resources) and go online.
    assert!(roster_item(&mut alice, "bob@localhost").await.is_none());
    assert!(roster_item(&mut bob, "alice@localhost").await.is_none());
    alice.available().await;
    bob.available().await;

    // alice → bob: subscribe
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let item = next_push(&mut alice, "bob@localhost").await;
    assert_eq!(item.attr("subscription"), Some("none"));
    assert_eq!(item.attr("ask"), Some("subscribe"));
    let req = bob
        .recv_until(is_presence_from("alice@localhost", Some("subscribe")))
        .await;
    assert_eq!(req.attr("to"), Some("bob@localhost"));

    // bob approves
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let item = next_push(&mut bob, "alice@localhost").await;
    assert_eq!(item.attr("subscription"), Some("from"));
    let item = next_push(&mut alice, "bob@localhost").await;
    assert_eq!(item.attr("subscription"), Some("to"));
    assert_eq!(item.attr("ask"), None);
    alice
        .recv_until(is_presence_from("bob@localhost", Some("subscribed")))
        .await;
    // bob's current presence follows the approval.
    alice
        .recv_until(is_presence_from("bob@localhost/b", None))
        .await;

    // bob → alice: subscribe, alice approves → both
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    let item = next_push(&mut bob, "alice@localhost").await;
    assert_eq!(item.attr("ask"), Some("subscribe"));
    alice
        .recv_until(is_presence_from("bob@localhost", Some("subscribe")))
        .await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    let item = next_push(&mut alice, "bob@localhost").await;
    assert_eq!(item.attr("subscription"), Some("both"));
    let item = next_push(&mut bob, "alice@localhost").await;
    assert_eq!(item.attr("subscription"), Some("both"));

    // Stored, as the roster get shows.
    let item = roster_item(&mut alice, "bob@localhost").await.unwrap();
    assert_eq!(item.attr("subscription"), Some("both"));

    // Presence broadcast: alice changes status, bob sees it.
    alice.send("<presence><show>away</show></presence>").await;
    bob.recv_until(|e| {
        is_presence_from("alice@localhost/a", None)(e)
            && e.child_text("show", "jabber:client").as_deref() == Some("away")
    })
    .await;

    // Disconnect → unavailable to bob.
    drop(alice);
    bob.recv_until(is_presence_from("alice@localhost/a", Some("unavailable")))
        .await;

    // Login again: probes answer with bob's presence; bob sees alice's initial presence.
    let mut alice = server.login("alice", "again").await;
    alice.send("<presence/>").await;
    alice
        .recv_until(is_presence_from("bob@localhost/b", None))
        .await;
    bob.recv_until(is_presence_from("alice@localhost/again", None))
        .await;

    // Roster remove cancels both directions.
    let r = alice
        .iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let item = next_push(&mut bob, "alice@localhost").await;
    let sub = item.attr("subscription").unwrap().to_string();
    // After both unsubscribe and unsubscribed are processed bob's item reaches none.
    if sub != "none" {
        let item = next_push(&mut bob, "alice@localhost").await;
        assert_eq!(item.attr("subscription"), Some("none"));
    }
    server.stop().await;
}

#[tokio::test]
async fn subscription_request_to_offline_user_is_delivered_at_login() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    alice.expect_silence(Duration::from_millis(200)).await;
    let mut bob = server.login("bob", "b").await;
    bob.send("<presence/>").await;
    bob.recv_until(is_presence_from("alice@localhost", Some("subscribe")))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn pre_approved_subscription_is_accepted_automatically() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    roster_item(&mut bob, "alice@localhost").await;
    // bob pre-approves alice (RFC 6121 §3.4).
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let item = next_push(&mut bob, "alice@localhost").await;
    assert_eq!(item.attr("approved"), Some("true"));
    roster_item(&mut alice, "bob@localhost").await;
    // Subscription stanzas go to available resources (RFC 6121 §3.1.6).
    alice.available().await;
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    next_push(&mut alice, "bob@localhost").await; // ask
    alice
        .recv_until(is_presence_from("bob@localhost", Some("subscribed")))
        .await;
    let item = next_push(&mut alice, "bob@localhost").await;
    assert_eq!(item.attr("subscription"), Some("to"));
    let item = next_push(&mut bob, "alice@localhost").await;
    assert_eq!(item.attr("subscription"), Some("from"));
    server.stop().await;
}

#[tokio::test]
async fn roster_versioning_returns_empty_result_when_current() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "a").await;
    let r = alice
        .iq("<iq type='get'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        .await;
    let v0 = r
        .child("query", ROSTER)
        .unwrap()
        .attr("ver")
        .unwrap()
        .to_string();
    let r = alice
        .iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'><group>Friends</group></item></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let push = alice.recv_until(roster_push_for("carol@localhost")).await;
    let v1 = push
        .child("query", ROSTER)
        .unwrap()
        .attr("ver")
        .unwrap()
        .to_string();
    assert_ne!(v0, v1);
    // Up to date → empty result.
    let r = alice
        .iq(&format!(
            "<iq type='get'><query xmlns='jabber:iq:roster' ver='{v1}'/></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert!(r.child("query", ROSTER).is_none(), "{r:?}");
    // Outdated → full roster with the current version.
    let r = alice
        .iq(&format!(
            "<iq type='get'><query xmlns='jabber:iq:roster' ver='{v0}'/></iq>"
        ))
        .await;
    let q = r.child("query", ROSTER).unwrap();
    assert_eq!(q.attr("ver"), Some(v1.as_str()));
    let item = q.child("item", ROSTER).unwrap();
    assert_eq!(item.attr("name"), Some("Carol"));
    assert_eq!(item.child_text("group", ROSTER).as_deref(), Some("Friends"));
    // Invalid sets are refused.
    let r = alice
        .iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='x@localhost'/><item jid='y@localhost'/></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("error"));
    server.stop().await;
}

#[tokio::test]
async fn directed_presence_gets_unavailable_at_logout() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    bob.available().await;
    let mut alice = alice;
    alice.available().await;
    alice.send("<presence to='bob@localhost/b'/>").await;
    bob.recv_until(is_presence_from("alice@localhost/a", None))
        .await;
    alice.close().await;
    bob.recv_until(is_presence_from("alice@localhost/a", Some("unavailable")))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn roster_set_result_precedes_the_push() {
    // Clients (and Prosody's scansion scripts) expect the result first (RFC 6121 §2.3.2).
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "a").await;
    alice
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    alice
        .send("<iq type='set' id='set1'><query xmlns='jabber:iq:roster'><item jid='nurse@localhost'/></query></iq>")
        .await;
    let first = alice.recv().await;
    assert_eq!(
        (first.attr("type"), first.attr("id")),
        (Some("result"), Some("set1"))
    );
    let push = alice.recv().await;
    assert!(roster_push_for("nurse@localhost")(&push), "{push:?}");
    server.stop().await;
}

#[tokio::test]
async fn approval_presence_precedes_the_roster_push() {
    // RFC 6121 §3.1.6: deliver the approval, then push the roster change.
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    roster_item(&mut alice, "bob@localhost").await;
    roster_item(&mut bob, "alice@localhost").await;
    alice.available().await;
    bob.available().await;
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let ask = alice.recv().await;
    assert!(roster_push_for("bob@localhost")(&ask), "{ask:?}");
    bob.recv_until(is_presence_from("alice@localhost", Some("subscribe")))
        .await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let first = alice.recv().await;
    assert!(
        is_presence_from("bob@localhost", Some("subscribed"))(&first),
        "{first:?}"
    );
    let second = alice.recv().await;
    assert!(roster_push_for("bob@localhost")(&second), "{second:?}");
    server.stop().await;
}
