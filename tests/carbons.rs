//! XEP-0280 Message Carbons between resources of one account, over real sockets.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::xml::Element;

const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const CLIENT: &str = "jabber:client";
const QUIET: Duration = Duration::from_millis(300);

async fn enable(c: &mut Client) {
    let r = c
        .iq("<iq type='set'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
}

/// The forwarded message inside a carbon of `kind` (sent/received).
fn carbon<'a>(m: &'a Element, kind: &str) -> &'a Element {
    m.child(kind, CARBONS)
        .and_then(|c| c.child("forwarded", FORWARD))
        .and_then(|f| f.child("message", CLIENT))
        .unwrap_or_else(|| panic!("not a {kind} carbon: {m:?}"))
}

fn is_message(e: &Element) -> bool {
    e.name == "message"
}

/// Nothing but presence for a while.
async fn no_message(c: &mut Client) {
    c.expect_silence_except_presence(QUIET).await;
}

struct Setup {
    server: TestServer,
    one: Client,
    two: Client,
    three: Client,
    bob: Client,
}

/// alice/one and alice/two with carbons, alice/three without, bob/b; all available.
async fn setup() -> Setup {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut one = server.login("alice", "one").await;
    let mut two = server.login("alice", "two").await;
    let mut three = server.login("alice", "three").await;
    let mut bob = server.login("bob", "b").await;
    enable(&mut one).await;
    enable(&mut two).await;
    // Enabling twice is fine (§8.1).
    enable(&mut two).await;
    for c in [&mut one, &mut two, &mut three, &mut bob] {
        c.available().await;
    }
    // Let the presence broadcasts settle so tests see only messages.
    for c in [&mut one, &mut two, &mut three] {
        c.expect_silence_except_presence(Duration::from_millis(100))
            .await;
    }
    Setup {
        server,
        one,
        two,
        three,
        bob,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_and_received_copies_reach_the_other_enabled_resources() {
    let Setup {
        server,
        mut one,
        mut two,
        mut three,
        mut bob,
    } = setup().await;

    // Sent by alice/one: bob gets it, alice/two a <sent/> copy from the bare JID.
    one.send("<message to='bob@localhost/b' type='chat' id='s1'><body>hi bob</body></message>")
        .await;
    let m = bob.recv_until(is_message).await;
    assert_eq!(m.attr("id"), Some("s1"));
    let c = two.recv_until(is_message).await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    assert_eq!(c.attr("to"), Some("alice@localhost/two"));
    assert_eq!(c.attr("type"), Some("chat"));
    let inner = carbon(&c, "sent");
    assert_eq!(inner.attr("from"), Some("alice@localhost/one"));
    assert_eq!(inner.attr("to"), Some("bob@localhost/b"));
    assert_eq!(inner.attr("id"), Some("s1"));
    // The sent copy tells where the message sits in alice's archive.
    assert!(inner.elements().any(|e| e.is("stanza-id", "urn:xmpp:sid:0")
        && e.attr("by") == Some("alice@localhost")));
    no_message(&mut one).await;
    no_message(&mut three).await;

    // To alice/one's full JID: alice/two gets a <received/> copy.
    bob.send(
        "<message to='alice@localhost/one' type='chat' id='r1'><body>hi alice</body></message>",
    )
    .await;
    let m = one.recv_until(is_message).await;
    assert_eq!(m.attr("id"), Some("r1"));
    let c = two.recv_until(is_message).await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    let inner = carbon(&c, "received");
    assert_eq!(inner.attr("from"), Some("bob@localhost/b"));
    assert_eq!(inner.attr("id"), Some("r1"));
    no_message(&mut three).await;

    // To the bare JID every resource gets the original, so no copies.
    bob.send("<message to='alice@localhost' type='chat' id='r2'><body>all</body></message>")
        .await;
    for c in [&mut one, &mut two, &mut three] {
        let m = c.recv_until(is_message).await;
        assert_eq!(m.attr("id"), Some("r2"));
        assert!(m.child("received", CARBONS).is_none());
        no_message(c).await;
    }

    // Normal messages with a body are copied; without one (and headlines) they are not.
    bob.send("<message to='alice@localhost/one' id='n1'><body>normal</body></message>")
        .await;
    one.recv_until(is_message).await;
    assert_eq!(
        carbon(&two.recv_until(is_message).await, "received").attr("id"),
        Some("n1")
    );
    bob.send("<message to='alice@localhost/one' id='n2'><x xmlns='urn:example'/></message>")
        .await;
    bob.send(
        "<message to='alice@localhost/one' type='headline' id='h1'><body>news</body></message>",
    )
    .await;
    one.recv_until(|e| e.attr("id") == Some("n2")).await;
    one.recv_until(|e| e.attr("id") == Some("h1")).await;
    no_message(&mut two).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_no_copy_are_honoured() {
    let Setup {
        server,
        mut one,
        mut two,
        three: _three,
        mut bob,
    } = setup().await;
    one.send("<message to='bob@localhost/b' type='chat' id='p1'><body>private</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    let m = bob.recv_until(is_message).await;
    assert_eq!(m.attr("id"), Some("p1"));
    // The receiving server removes the marker (§7).
    assert!(m.child("private", CARBONS).is_none());
    one.send("<message to='bob@localhost/b' type='chat' id='p2'><body>hint</body><no-copy xmlns='urn:xmpp:hints'/></message>")
        .await;
    bob.recv_until(|e| e.attr("id") == Some("p2")).await;
    no_message(&mut two).await;

    bob.send("<message to='alice@localhost/one' type='chat' id='p3'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    let m = one.recv_until(is_message).await;
    assert_eq!(m.attr("id"), Some("p3"));
    assert!(m.child("private", CARBONS).is_none());
    no_message(&mut two).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_stops_copies_and_others_cannot_switch_them() {
    let Setup {
        server,
        mut one,
        mut two,
        three: _three,
        mut bob,
    } = setup().await;
    let r = two
        .iq("<iq type='set'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    one.send("<message to='bob@localhost/b' type='chat' id='d1'><body>x</body></message>")
        .await;
    bob.recv_until(is_message).await;
    bob.send("<message to='alice@localhost/one' type='chat' id='d2'><body>y</body></message>")
        .await;
    one.recv_until(is_message).await;
    no_message(&mut two).await;

    // Bob cannot enable carbons for alice's account.
    let r = bob
        .iq("<iq type='set' to='alice@localhost'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("error"));
    assert!(
        r.child("error", CLIENT)
            .unwrap()
            .has_child("not-allowed", "urn:ietf:params:xml:ns:xmpp-stanzas")
    );
    // Sent to the server instead of the account works as well.
    let r = two
        .iq("<iq type='set' to='localhost'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    one.send("<message to='bob@localhost/b' type='chat' id='d3'><body>z</body></message>")
        .await;
    assert_eq!(
        carbon(&two.recv_until(is_message).await, "sent").attr("id"),
        Some("d3")
    );
    server.stop().await;
}

/// Routing skips the carbons lookup while no session on the server has carbons on; it
/// must notice when one enables them again after every enabled session left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_start_again_after_every_enabled_session_left() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut first = server.login("alice", "first").await;
    enable(&mut first).await;
    first.close().await;
    let alice = xmppd::addr::parse_bare("alice@localhost").unwrap();
    support::wait_until("alice/first is unbound", || {
        server.ctx().sessions.get(&alice, "first").is_none()
    })
    .await;

    let mut one = server.login("alice", "one").await;
    let mut two = server.login("alice", "two").await;
    let mut bob = server.login("bob", "b").await;
    one.send("<message to='bob@localhost/b' type='chat' id='n1'><body>x</body></message>")
        .await;
    bob.recv_until(is_message).await;
    no_message(&mut two).await;

    enable(&mut two).await;
    one.send("<message to='bob@localhost/b' type='chat' id='n2'><body>y</body></message>")
        .await;
    assert_eq!(
        carbon(&two.recv_until(is_message).await, "sent").attr("id"),
        Some("n2")
    );
    bob.send("<message to='alice@localhost/one' type='chat' id='n3'><body>z</body></message>")
        .await;
    assert_eq!(
        carbon(&two.recv_until(is_message).await, "received").attr("id"),
        Some("n3")
    );
    server.stop().await;
}
