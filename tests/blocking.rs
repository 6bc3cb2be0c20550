//! XEP-0191 blocking over real sockets: list, pushes, what a block stops in both
//! directions, presence on block and unblock.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::storage::{RosterItem, Subscription};
use xmppd::xml::Element;

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const BLOCKING: &str = "urn:xmpp:blocking";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const CLIENT: &str = "jabber:client";
const QUIET: Duration = Duration::from_millis(300);

fn error_condition(e: &Element) -> Option<String> {
    e.child("error", CLIENT)
        .and_then(|err| err.elements().find(|c| c.ns == STANZAS))
        .map(|c| c.name.clone())
}

async fn blocklist(c: &mut Client) -> Vec<String> {
    let r = c
        .iq("<iq type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    r.child("blocklist", BLOCKING)
        .expect("blocklist")
        .elements()
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect()
}

async fn set(c: &mut Client, payload: &str) -> Element {
    c.iq(&format!("<iq type='set'>{payload}</iq>")).await
}

/// The next block/unblock push; answered like a client would.
async fn push(c: &mut Client) -> Element {
    let iq = c
        .recv_until(|e| {
            e.name == "iq"
                && e.attr("type") == Some("set")
                && e.elements().any(|p| p.ns == BLOCKING)
        })
        .await;
    assert_eq!(iq.attr("to"), Some(c.jid.as_str()));
    let id = iq.attr("id").unwrap().to_string();
    c.send(&format!("<iq type='result' id='{id}'/>")).await;
    iq
}

fn push_items(iq: &Element, kind: &str) -> Vec<String> {
    iq.child(kind, BLOCKING)
        .unwrap_or_else(|| panic!("not a {kind} push: {iq:?}"))
        .elements()
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect()
}

/// Nothing from `who` (a bare JID) for a while; other stanzas are ignored.
async fn nothing_from(c: &mut Client, who: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(ev) = tokio::time::timeout_at(deadline, c.next_event()).await {
        if let Some(xmppd::xml::StreamEvent::Stanza(e)) = ev {
            let from = e.attr("from").unwrap_or("");
            assert_ne!(from.split('/').next(), Some(who), "unexpected {e:?}");
        }
    }
}

fn is_message(e: &Element) -> bool {
    e.name == "message"
}

/// alice (two resources) and bob, subscribed to each other, all available.
async fn setup() -> (TestServer, Client, Client, Client) {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let storage = &server.handle.as_ref().unwrap().ctx.storage;
    for (user, contact) in [
        ("alice@localhost", "bob@localhost"),
        ("bob@localhost", "alice@localhost"),
    ] {
        let item = RosterItem {
            subscription: Subscription::Both,
            ..RosterItem::new(j(contact))
        };
        storage.roster.put_item(&j(user), &item).await.unwrap();
    }
    let mut a1 = server.login("alice", "one").await;
    let mut a2 = server.login("alice", "two").await;
    let mut bob = server.login("bob", "b").await;
    for c in [&mut a1, &mut a2, &mut bob] {
        c.available().await;
    }
    for c in [&mut a1, &mut a2, &mut bob] {
        c.expect_silence_except_presence(Duration::from_millis(150))
            .await;
    }
    (server, a1, a2, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_and_unblock_with_pushes_and_presence() {
    let (server, mut a1, mut a2, mut bob) = setup().await;
    // a1 asks for the list, a2 never does: only a1 gets pushes.
    assert!(blocklist(&mut a1).await.is_empty());

    let r = set(
        &mut a2,
        "<block xmlns='urn:xmpp:blocking'><item jid='Bob@Localhost'/></block>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert_eq!(push_items(&push(&mut a1).await, "block"), ["bob@localhost"]);
    // Bob sees alice go offline, from each of her resources.
    let mut gone = Vec::new();
    for _ in 0..2 {
        let p = bob
            .recv_until(|e| e.name == "presence" && e.attr("type") == Some("unavailable"))
            .await;
        gone.push(p.attr("from").unwrap().to_string());
    }
    gone.sort();
    assert_eq!(gone, ["alice@localhost/one", "alice@localhost/two"]);
    assert_eq!(blocklist(&mut a2).await, ["bob@localhost"]);

    // Inbound: messages bounce service-unavailable, iq too, presence vanishes.
    bob.send("<message to='alice@localhost' type='chat' id='b1'><body>hi?</body></message>")
        .await;
    let bounce = bob.recv_until(is_message).await;
    assert_eq!(bounce.attr("type"), Some("error"));
    assert_eq!(bounce.attr("id"), Some("b1"));
    assert_eq!(
        error_condition(&bounce).as_deref(),
        Some("service-unavailable")
    );
    let r = bob
        .iq("<iq type='get' to='alice@localhost/one'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    bob.send("<presence><show>chat</show></presence>").await;
    bob.send("<presence to='alice@localhost/one'/>").await;
    // Bob's available presence to alice is dropped, as is his broadcast.
    nothing_from(&mut a1, "bob@localhost").await;
    nothing_from(&mut a2, "bob@localhost").await;

    // Outbound: not-acceptable with <blocked/>, and nothing reaches bob.
    a1.send("<message to='bob@localhost/b' type='chat' id='a1'><body>psst</body></message>")
        .await;
    let err = a1.recv_until(is_message).await;
    assert_eq!(err.attr("type"), Some("error"));
    assert_eq!(error_condition(&err).as_deref(), Some("not-acceptable"));
    assert!(
        err.child("error", CLIENT)
            .unwrap()
            .has_child("blocked", "urn:xmpp:blocking:errors")
    );
    let r = a1
        .iq("<iq type='get' to='bob@localhost/b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    // Presence changes no longer reach bob.
    a1.send("<presence><show>away</show></presence>").await;
    nothing_from(&mut bob, "alice@localhost").await;
    // Refused messages are not in alice's archive, whichever way they went (bob's own
    // archive keeps what he sent).
    let storage = &server.handle.as_ref().unwrap().ctx.storage;
    assert_eq!(
        storage.archive.count(&j("alice@localhost")).await.unwrap(),
        0
    );

    // Unblock: push, then bob gets alice's current presence again.
    let r = set(
        &mut a2,
        "<unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(
        push_items(&push(&mut a1).await, "unblock"),
        ["bob@localhost"]
    );
    let mut back = Vec::new();
    for _ in 0..2 {
        let p = bob
            .recv_until(|e| e.name == "presence" && e.attr("type").is_none())
            .await;
        back.push(p.attr("from").unwrap().to_string());
    }
    back.sort();
    assert_eq!(back, ["alice@localhost/one", "alice@localhost/two"]);
    bob.send("<message to='alice@localhost/one' type='chat' id='b2'><body>back</body></message>")
        .await;
    assert_eq!(a1.recv_until(is_message).await.attr("id"), Some("b2"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_jid_and_domain_entries_unblock_all_and_persistence() {
    let (mut server, mut a1, mut a2, mut bob) = setup().await;
    let mut bob2 = server.login("bob", "evil").await;
    assert!(blocklist(&mut a1).await.is_empty());

    // A full-JID entry blocks that resource only.
    set(
        &mut a1,
        "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost/evil'/></block>",
    )
    .await;
    push(&mut a1).await;
    bob2.send("<message to='alice@localhost/one' type='chat' id='e1'><body>x</body></message>")
        .await;
    assert_eq!(
        bob2.recv_until(is_message).await.attr("type"),
        Some("error")
    );
    bob.send("<message to='alice@localhost/one' type='chat' id='g1'><body>y</body></message>")
        .await;
    assert_eq!(a1.recv_until(is_message).await.attr("id"), Some("g1"));

    // A domain entry blocks everyone there, but never the user's own server.
    set(
        &mut a1,
        "<block xmlns='urn:xmpp:blocking'><item jid='localhost'/></block>",
    )
    .await;
    push(&mut a1).await;
    bob.send("<message to='alice@localhost/one' type='chat' id='g2'><body>z</body></message>")
        .await;
    assert_eq!(bob.recv_until(is_message).await.attr("type"), Some("error"));
    let pong = a1
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // Nor the user's own other resources.
    a2.send("<message to='alice@localhost/one' type='chat' id='self'><body>me</body></message>")
        .await;
    assert_eq!(a1.recv_until(is_message).await.attr("id"), Some("self"));

    // Bad requests.
    let r = set(&mut a1, "<block xmlns='urn:xmpp:blocking'/>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = set(
        &mut a1,
        "<block xmlns='urn:xmpp:blocking'><item jid='@@'/></block>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("jid-malformed"));

    // The list survives a restart.
    drop((a1, a2, bob, bob2));
    server.restart().await;
    let mut a1 = server.login("alice", "one").await;
    assert_eq!(
        blocklist(&mut a1).await,
        ["bob@localhost/evil", "localhost"]
    );
    let mut bob = server.login("bob", "b").await;
    bob.send("<message to='alice@localhost' type='chat' id='g3'><body>z</body></message>")
        .await;
    assert_eq!(bob.recv_until(is_message).await.attr("type"), Some("error"));

    // Unblock all: an empty <unblock/>, pushed as such.
    let r = set(&mut a1, "<unblock xmlns='urn:xmpp:blocking'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    assert!(push_items(&push(&mut a1).await, "unblock").is_empty());
    assert!(blocklist(&mut a1).await.is_empty());
    a1.available().await;
    bob.send("<message to='alice@localhost' type='chat' id='g4'><body>ok</body></message>")
        .await;
    assert_eq!(a1.recv_until(is_message).await.attr("id"), Some("g4"));
    server.stop().await;
}

#[tokio::test]
async fn a_domain_entry_blocks_that_domain_only() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "pc").await;
    alice.available().await;
    let blocked = alice
        .iq("<iq type='set'><block xmlns='urn:xmpp:blocking'><item jid='remote.example'/></block></iq>")
        .await;
    assert_eq!(blocked.attr("type"), Some("result"));
    // As if they came over federation: one from the blocked domain, one from a domain
    // under it, which XEP-0016 matching does not cover.
    for from in ["spam@remote.example/x", "friend@sub.remote.example/x"] {
        let msg = xmppd::xml::Element::new("message", "jabber:client")
            .with_attr("from", from)
            .with_attr("to", "alice@localhost")
            .with_attr("type", "chat")
            .with_child(xmppd::xml::Element::new("body", "jabber:client").with_text(from));
        xmppd::router::route(server.ctx(), msg).await;
    }
    let m = alice.recv_until(|e| e.name == "message").await;
    assert_eq!(m.attr("from"), Some("friend@sub.remote.example/x"));
    alice
        .expect_silence_except_presence(std::time::Duration::from_millis(200))
        .await;
    server.stop().await;
}
