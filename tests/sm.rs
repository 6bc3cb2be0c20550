//! XEP-0198 stream management over real sockets: acks and counters, hibernation when the
//! connection vanishes, resumption (also of a live session, twice, or by the wrong user),
//! the timeout path into offline storage, flow control by the unacked limit.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::xml::{Element, StreamEvent};

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const SM: &str = "urn:xmpp:sm:3";

/// A client that counts the stanzas it handles, as XEP-0198 wants.
struct SmClient {
    c: Client,
    /// Stanzas handled since `<enabled/>`.
    h: u32,
    id: String,
    /// Answer the server's `<r/>` automatically.
    auto_ack: bool,
}

impl SmClient {
    async fn enable(mut c: Client) -> SmClient {
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let enabled = c.recv_until(|e| e.name == "enabled").await;
        assert_eq!(enabled.ns, SM);
        assert_eq!(enabled.attr("resume"), Some("true"));
        let id = enabled.attr("id").expect("SM-ID").to_string();
        SmClient {
            c,
            h: 0,
            id,
            auto_ack: true,
        }
    }

    /// The next stanza (counted); SM elements are handled or, with `keep_sm`, returned.
    async fn next_any(&mut self, keep_sm: bool) -> Element {
        loop {
            let el = self.c.recv().await;
            if el.ns == SM {
                if el.name == "r" && self.auto_ack {
                    let h = self.h;
                    self.c.send(&format!("<a xmlns='{SM}' h='{h}'/>")).await;
                }
                if keep_sm {
                    return el;
                }
                continue;
            }
            self.h = self.h.wrapping_add(1);
            return el;
        }
    }

    async fn next(&mut self) -> Element {
        self.next_any(false).await
    }

    /// The first stanza matching `pred`; everything before it is counted and dropped.
    async fn until(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        loop {
            let el = self.next().await;
            if pred(&el) {
                return el;
            }
        }
    }

    /// Sends `<r/>` and waits for the server's `<a/>`.
    async fn server_h(&mut self) -> u32 {
        self.c.send(&format!("<r xmlns='{SM}'/>")).await;
        loop {
            let el = self.next_any(true).await;
            if el.ns == SM && el.name == "a" {
                return el.attr("h").unwrap().parse().unwrap();
            }
        }
    }

    /// Nothing but SM traffic for `dur`.
    async fn expect_no_stanza(&mut self, dur: Duration) {
        // `next` consumes SM traffic itself, so only a stanza ends the wait early.
        if let Ok(el) = tokio::time::timeout(dur, self.next()).await {
            panic!("expected no stanza, got {el:?}");
        }
    }
}

fn body(el: &Element) -> Option<String> {
    el.child_text("body", "jabber:client")
}

fn is_message(el: &Element) -> bool {
    el.name == "message"
}

async fn chat(from: &mut Client, to: &str, text: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat'><body>{text}</body></message>"
    ))
    .await;
}

/// A round trip, so the server has handled what was sent before.
async fn sync(c: &mut Client) {
    c.iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
}

/// Polls the user's offline count until it reaches `at_least` (or 5 s pass); returns it.
async fn offline_count_reaching(server: &TestServer, user: &str, at_least: usize) -> usize {
    let mut stored = 0;
    for _ in 0..200 {
        stored = ctx(server).storage.offline.count(&j(user)).await.unwrap();
        if stored >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stored
}

fn ctx(server: &TestServer) -> &xmppd::context::Context {
    &server.handle.as_ref().unwrap().ctx
}

/// Resumes `previd` on a new connection; returns the client and `<resumed/>`/`<failed/>`.
async fn resume(server: &TestServer, node: &str, previd: &str, h: u32) -> (Client, Element) {
    let mut c = Client::authenticated(server.starttls_addr(), node).await;
    c.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='{h}'/>"))
        .await;
    let answer = c.recv().await;
    assert_eq!(answer.ns, SM, "{answer:?}");
    (c, answer)
}

#[tokio::test]
async fn enable_ack_counts_and_feature() {
    let server = TestServer::start().await;
    server.add_user("bob", "password").await;
    let c = server.login("bob", "phone").await;
    let features = c.features.clone().unwrap();
    assert!(features.has_child("sm", SM), "{features:?}");
    assert!(features.has_child("csi", "urn:xmpp:csi:0"), "{features:?}");
    let mut bob = SmClient::enable(c).await;
    assert_eq!(bob.server_h().await, 0);
    for _ in 0..3 {
        bob.c
            .send("<iq type='get' to='localhost' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
    }
    bob.c.send("<presence/>").await;
    assert_eq!(bob.server_h().await, 4);
    // The server asks for acks of what it sent (three results, the reflected presence).
    bob.auto_ack = false;
    let mut results = 0;
    let mut saw_request = false;
    while results < 4 || !saw_request {
        let el = bob.next_any(true).await;
        match (el.ns.as_str(), el.name.as_str()) {
            (SM, "r") => saw_request = true,
            (SM, _) => {}
            _ => results += 1,
        }
    }
    assert_eq!(bob.h, 4);
    bob.c.send(&format!("<a xmlns='{SM}' h='4'/>")).await;
    // Enabling twice is refused, the stream goes on.
    bob.c.send(&format!("<enable xmlns='{SM}'/>")).await;
    let failed = bob.next_any(true).await;
    assert_eq!(failed.name, "failed");
    assert!(failed.has_child("unexpected-request", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    assert_eq!(bob.server_h().await, 4);
    // Acknowledging more than was sent ends the stream (XEP-0198 §4).
    bob.c.send(&format!("<a xmlns='{SM}' h='99'/>")).await;
    loop {
        match bob.c.next_event().await {
            Some(StreamEvent::Stanza(el)) if el.name == "error" => {
                assert!(el.has_child("undefined-condition", "urn:ietf:params:xml:ns:xmpp-streams"));
                let too_high = el.child("handled-count-too-high", SM).unwrap();
                assert_eq!(too_high.attr("h"), Some("99"));
                assert_eq!(too_high.attr("send-count"), Some("4"));
                break;
            }
            Some(_) => {}
            None => panic!("closed without the stream error"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn enable_before_bind_fails_and_unknown_resume_allows_bind() {
    let server = TestServer::start().await;
    server.add_user("bob", "password").await;
    let mut c = Client::authenticated(server.starttls_addr(), "bob").await;
    assert!(c.features.as_ref().unwrap().has_child("sm", SM));
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let failed = c.recv().await;
    assert_eq!(failed.name, "failed");
    assert!(failed.has_child("unexpected-request", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    c.send(&format!("<resume xmlns='{SM}' previd='nope' h='0'/>"))
        .await;
    let failed = c.recv().await;
    assert_eq!(failed.name, "failed");
    assert!(failed.has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    // The client may bind instead (XEP-0198 §5).
    c.bind(Some("phone")).await.unwrap();
    SmClient::enable(c).await;
    server.stop().await;
}

/// Guessing session ids is bounded per connection: after `limits.sm_max_resume_failures`
/// refusals the next failed attempt closes the stream.
#[tokio::test]
async fn repeated_failed_resumptions_close_the_stream() {
    let server = TestServer::start_with(|c| c.limits.sm_max_resume_failures = 2).await;
    server.add_user("bob", "password").await;
    let mut c = Client::authenticated(server.starttls_addr(), "bob").await;
    for i in 0..2 {
        c.send(&format!("<resume xmlns='{SM}' previd='guess{i}' h='0'/>"))
            .await;
        assert_eq!(c.recv().await.name, "failed");
    }
    c.send(&format!("<resume xmlns='{SM}' previd='guess2' h='0'/>"))
        .await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    server.stop().await;
}

#[tokio::test]
async fn dropped_connection_hibernates_and_resume_delivers_exactly_once() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.c.send("<presence/>").await;
    bob.until(|e| e.name == "presence").await;

    chat(&mut alice, "bob@localhost/phone", "one").await;
    let m = bob.until(is_message).await;
    assert_eq!(body(&m).as_deref(), Some("one"));
    // Bob acknowledges "one" before the network goes away.
    assert_eq!(bob.server_h().await, 1);
    bob.c
        .send(&format!("<a xmlns='{SM}' h='{}'/>", bob.h))
        .await;

    // "two" reaches bob's socket, but bob never reads it: in flight when the link dies.
    chat(&mut alice, "bob@localhost/phone", "two").await;
    // Read off the socket but never counted: the server sees it unacknowledged.
    bob.c
        .recv_until(|e| e.child_text("body", "jabber:client").as_deref() == Some("two"))
        .await;
    let (id, h) = (bob.id.clone(), bob.h);
    bob.c.drop_connection();
    support::wait_until("hibernation", || ctx(&server).sm.hibernated_count() == 1).await;
    // Still bound and available while hibernated; more arrives meanwhile.
    assert_eq!(
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .len(),
        1
    );
    chat(&mut alice, "bob@localhost", "three").await;
    chat(&mut alice, "bob@localhost/phone", "four").await;
    sync(&mut alice).await;

    let (c, resumed) = resume(&server, "bob", &id, h).await;
    assert_eq!(resumed.name, "resumed", "{resumed:?}");
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    // The server handled one stanza of bob's: the presence.
    assert_eq!(resumed.attr("h"), Some("1"));
    assert_eq!(ctx(&server).sm.hibernated_count(), 0);
    let mut bob = SmClient {
        c,
        h,
        id,
        auto_ack: true,
    };
    for want in ["two", "three", "four"] {
        let m = bob.until(is_message).await;
        assert_eq!(body(&m).as_deref(), Some(want));
    }
    bob.expect_no_stanza(Duration::from_millis(300)).await;

    // Same full JID as before.
    chat(&mut bob.c, "alice@localhost/pc", "back").await;
    let m = alice.recv_until(is_message).await;
    assert_eq!(m.attr("from"), Some("bob@localhost/phone"));
    assert_eq!(bob.server_h().await, 2);
    server.stop().await;
}

#[tokio::test]
async fn hibernation_timeout_moves_unacked_messages_to_offline_storage() {
    let server = TestServer::start_with(|c| c.c2s.sm_resume_timeout_secs = 1).await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.c.send("<presence/>").await;
    bob.until(|e| e.name == "presence").await;
    // In flight: written to bob's socket, never acknowledged.
    chat(&mut alice, "bob@localhost/phone", "in flight").await;
    // Read off the socket but never counted: the server sees it unacknowledged.
    bob.c
        .recv_until(|e| e.child_text("body", "jabber:client").as_deref() == Some("in flight"))
        .await;
    let id = bob.id.clone();
    bob.c.drop_connection();
    support::wait_until("hibernation", || ctx(&server).sm.hibernated_count() == 1).await;
    chat(&mut alice, "bob@localhost", "while away").await;
    // A chat state alone is not worth storing.
    alice
        .send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    sync(&mut alice).await;
    support::wait_until("the session to end", || {
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    assert_eq!(ctx(&server).sm.hibernated_count(), 0);
    // The session leaves the router first, then its unacked and queued messages are
    // rerouted: give that a moment rather than racing it.
    assert_eq!(offline_count_reaching(&server, "bob@localhost", 2).await, 2);
    let (_c, failed) = resume(&server, "bob", &id, 0).await;
    assert_eq!(failed.name, "failed");
    assert!(failed.has_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas"));

    let mut bob = server.login("bob", "phone2").await;
    bob.send("<presence/>").await;
    for want in ["in flight", "while away"] {
        let m = bob.recv_until(is_message).await;
        assert_eq!(body(&m).as_deref(), Some(want));
        assert!(m.has_child("delay", "urn:xmpp:delay"));
    }
    bob.expect_silence_except_presence(Duration::from_millis(300))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn clean_close_with_unacked_messages_keeps_them() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.c.send("<presence/>").await;
    bob.until(|e| e.name == "presence").await;
    bob.auto_ack = false;
    chat(&mut alice, "bob@localhost/phone", "unacked").await;
    bob.until(is_message).await;
    // Closed cleanly without acknowledging: the server cannot know it arrived.
    bob.c.close().await;
    support::wait_until("the session to end", || {
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    // Rerouting follows the unbind; let it reach offline storage before the next login.
    offline_count_reaching(&server, "bob@localhost", 1).await;
    let mut bob = server.login("bob", "phone2").await;
    bob.send("<presence/>").await;
    let m = bob.recv_until(is_message).await;
    assert_eq!(body(&m).as_deref(), Some("unacked"));
    server.stop().await;
}

#[tokio::test]
async fn resume_takes_over_live_session_and_duplicates_are_safe() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.c.send("<presence/>").await;
    bob.until(|e| e.name == "presence").await;
    chat(&mut alice, "bob@localhost/phone", "m1").await;
    bob.until(is_message).await;
    let (id, h) = (bob.id.clone(), bob.h);

    // Another user cannot take bob's session.
    let (_c, failed) = resume(&server, "alice", &id, h).await;
    assert_eq!(failed.name, "failed");

    // The old connection is still open: it is told `conflict` and the new one wins.
    let (c1, resumed) = resume(&server, "bob", &id, h).await;
    assert_eq!(resumed.name, "resumed", "{resumed:?}");
    let mut old = bob.c;
    loop {
        match old.next_event().await {
            Some(StreamEvent::Stanza(el)) if el.name == "error" => {
                assert!(el.has_child("conflict", "urn:ietf:params:xml:ns:xmpp-streams"));
                break;
            }
            Some(_) => {}
            None => panic!("old connection closed without an error"),
        }
    }
    let mut one = SmClient {
        c: c1,
        h,
        id: id.clone(),
        auto_ack: true,
    };
    chat(&mut alice, "bob@localhost/phone", "m2").await;
    assert_eq!(body(&one.until(is_message).await).as_deref(), Some("m2"));

    // The same SM-ID resumed again (a client retrying): the latest connection wins.
    let (c2, resumed) = resume(&server, "bob", &id, one.h).await;
    assert_eq!(resumed.name, "resumed", "{resumed:?}");
    let mut two = SmClient {
        c: c2,
        h: one.h,
        id,
        auto_ack: true,
    };
    chat(&mut alice, "bob@localhost/phone", "m3").await;
    assert_eq!(body(&two.until(is_message).await).as_deref(), Some("m3"));
    two.expect_no_stanza(Duration::from_millis(300)).await;
    assert_eq!(
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .len(),
        1
    );
    assert_eq!(ctx(&server).sm.resumable_count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn conflict_ends_a_hibernated_session_without_loss() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.c.send("<presence/>").await;
    bob.until(|e| e.name == "presence").await;
    let id = bob.id.clone();
    bob.c.drop_connection();
    support::wait_until("hibernation", || ctx(&server).sm.hibernated_count() == 1).await;
    chat(&mut alice, "bob@localhost/phone", "queued").await;
    sync(&mut alice).await;

    // A fresh login with the same resource replaces the hibernated session.
    let mut bob = server.login("bob", "phone").await;
    support::wait_until("the old session to end", || {
        ctx(&server).sm.hibernated_count() == 0 && ctx(&server).sm.resumable_count() == 0
    })
    .await;
    let (_c, failed) = resume(&server, "bob", &id, 0).await;
    assert_eq!(failed.name, "failed");
    bob.send("<presence/>").await;
    let m = bob.recv_until(is_message).await;
    assert_eq!(body(&m).as_deref(), Some("queued"));
    server.stop().await;
}

#[tokio::test]
async fn unacked_limit_holds_back_until_the_client_acks() {
    let server = TestServer::start_with(|c| c.limits.sm_max_unacked = 5).await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.auto_ack = false;
    for i in 0..12 {
        chat(&mut alice, "bob@localhost/phone", &i.to_string()).await;
    }
    sync(&mut alice).await;
    for i in 0..5 {
        assert_eq!(body(&bob.next().await), Some(i.to_string()));
    }
    bob.expect_no_stanza(Duration::from_millis(300)).await;
    bob.c.send(&format!("<a xmlns='{SM}' h='5'/>")).await;
    bob.auto_ack = true;
    for i in 5..12 {
        assert_eq!(body(&bob.next().await), Some(i.to_string()));
    }
    server.stop().await;
}

/// Offline messages leave storage only once the client acknowledged them: a session that
/// ends before leaves them stored, once (they are not rerouted into storage again), and
/// the next session gets them; its ack deletes them.
#[tokio::test]
async fn offline_messages_are_deleted_only_once_acknowledged() {
    let server = TestServer::start_with(|c| c.c2s.sm_resume_timeout_secs = 1).await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    for i in 0..3 {
        chat(&mut alice, "bob@localhost", &format!("stored {i}")).await;
    }
    sync(&mut alice).await;
    assert_eq!(offline_count_reaching(&server, "bob@localhost", 3).await, 3);

    let mut bob = SmClient::enable(server.login("bob", "phone").await).await;
    bob.auto_ack = false;
    bob.c.send("<presence/>").await;
    for i in 0..3 {
        let m = bob.until(is_message).await;
        assert_eq!(body(&m), Some(format!("stored {i}")));
    }
    // Received but not acknowledged: still stored.
    assert_eq!(
        ctx(&server)
            .storage
            .offline
            .count(&j("bob@localhost"))
            .await
            .unwrap(),
        3
    );
    bob.c.drop_connection();
    support::wait_until("the hibernated session to end", || {
        ctx(&server)
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
            && ctx(&server).sm.resumable_count() == 0
    })
    .await;
    assert_eq!(
        ctx(&server)
            .storage
            .offline
            .count(&j("bob@localhost"))
            .await
            .unwrap(),
        3
    );

    let mut bob = SmClient::enable(server.login("bob", "phone2").await).await;
    bob.auto_ack = false;
    bob.c.send("<presence/>").await;
    for i in 0..3 {
        let m = bob.until(is_message).await;
        assert_eq!(body(&m), Some(format!("stored {i}")));
    }
    let h = bob.h;
    bob.c.send(&format!("<a xmlns='{SM}' h='{h}'/>")).await;
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = ctx(&server)
            .storage
            .offline
            .count(&j("bob@localhost"))
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(left, 0);
    server.stop().await;
}
