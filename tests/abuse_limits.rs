//! Per-account and per-stream limits that keep one user or one flood from taking more
//! than their share: input shaping, roster and block-list sizes, hibernated sessions.

mod support;

use std::time::{Duration, Instant};

use support::{TestServer, wait_until};

#[tokio::test]
async fn a_stanza_flood_is_slowed_not_dropped() {
    let server = TestServer::start_with(|c| {
        c.limits.c2s_stanzas_per_sec = 50;
        c.limits.c2s_burst_stanzas = 10;
    })
    .await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let flood: String = (0..60)
        .map(|i| {
            format!("<iq type='get' id='f{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        })
        .collect();
    let started = Instant::now();
    alice.send(&flood).await;
    for i in 0..60 {
        let id = format!("f{i}");
        let pong = alice
            .recv_until(|e| e.name == "iq" && e.attr("id") == Some(&id))
            .await;
        assert_eq!(pong.attr("type"), Some("result"));
    }
    // 50 stanzas over the burst at 50 per second: about a second, and nothing refused.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800), "answered in {took:?}");
    server.stop().await;
}

#[tokio::test]
async fn rosters_and_block_lists_are_bounded() {
    let server = TestServer::start_with(|c| {
        c.limits.max_roster_items = 2;
        c.limits.max_blocklist_items = 2;
    })
    .await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let add = |jid: &str| {
        format!("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{jid}'/></query></iq>")
    };
    for jid in ["a@x", "b@x"] {
        assert_eq!(alice.iq(&add(jid)).await.attr("type"), Some("result"));
    }
    // Changing a contact that is there is fine; a third is not.
    assert_eq!(alice.iq(&add("a@x")).await.attr("type"), Some("result"));
    let full = alice.iq(&add("c@x")).await;
    assert_eq!(full.attr("type"), Some("error"));
    assert!(full.to_stanza_string().contains("resource-constraint"));
    // Subscribing to a new contact would add one too.
    alice.send("<presence type='subscribe' to='d@x'/>").await;
    let refused = alice
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("error"))
        .await;
    assert!(refused.to_stanza_string().contains("resource-constraint"));
    let roster = alice
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let items = roster
        .child("query", "jabber:iq:roster")
        .unwrap()
        .elements()
        .count();
    assert_eq!(items, 2);

    let block = |jids: &[&str]| {
        let items: String = jids.iter().map(|j| format!("<item jid='{j}'/>")).collect();
        format!("<iq type='set'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>")
    };
    assert_eq!(
        alice.iq(&block(&["e@x", "f@x"])).await.attr("type"),
        Some("result")
    );
    assert_eq!(
        alice.iq(&block(&["e@x"])).await.attr("type"),
        Some("result")
    );
    let full = alice.iq(&block(&["g@x"])).await;
    assert_eq!(full.attr("type"), Some("error"));
    assert!(full.to_stanza_string().contains("resource-constraint"));
    server.stop().await;
}

#[tokio::test]
async fn an_account_keeps_a_bounded_number_of_hibernated_sessions() {
    let server = TestServer::start_with(|c| c.limits.max_hibernated_per_account = 1).await;
    server.add_user("bob", "password").await;
    let mut devices = Vec::new();
    for resource in ["one", "two"] {
        let mut c = server.login("bob", resource).await;
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let enabled = c.recv_until(|e| e.name == "enabled").await;
        assert_eq!(enabled.attr("resume"), Some("true"));
        devices.push(c);
    }
    let ctx = server.ctx().clone();
    let mut devices = devices.into_iter();
    devices.next().unwrap().drop_connection();
    wait_until("the first to hibernate", || ctx.sm.hibernated_count() == 1).await;
    devices.next().unwrap().drop_connection();
    // The second one cannot hibernate too: its session ends.
    wait_until("the second session to end", || {
        ctx.sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .len()
            == 1
    })
    .await;
    assert_eq!(ctx.sm.hibernated_count(), 1);
    assert_eq!(
        ctx.sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())[0]
            .resource,
        "one"
    );
    server.stop().await;
}

#[tokio::test]
async fn directed_presence_targets_are_bounded() {
    let server = TestServer::start_with(|c| c.limits.max_roster_items = 2).await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "pc").await;
    alice.available().await;
    for to in ["a@localhost", "b@localhost", "a@localhost"] {
        alice.send(&format!("<presence to='{to}'/>")).await;
    }
    alice.send("<presence to='c@localhost'/>").await;
    let refused = alice
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(refused.attr("from"), Some("c@localhost"));
    assert!(refused.to_stanza_string().contains("resource-constraint"));
    server.stop().await;
}

/// A session's memory is bounded in bytes, not only in stanzas: a client that enables
/// stream management and never acknowledges gets a quarter of the budget sent, then its
/// queue fills to half the budget and the session is closed. Counted in stanzas alone
/// (500 unacknowledged, 2048 queued, each up to the stanza limit), forty large messages
/// would all have been kept.
#[tokio::test]
async fn a_session_that_never_acks_is_closed_at_its_byte_budget() {
    let server = TestServer::start_with(|c| {
        c.limits.max_stanza_bytes = 64 * 1024;
        c.limits.session_max_bytes = 256 * 1024;
    })
    .await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    bob.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    bob.recv_until(|e| e.name == "enabled").await;
    let body = "x".repeat(30 * 1024);
    for i in 0..40 {
        alice
            .send(&format!(
                "<message to='bob@localhost/phone' type='chat' id='m{i}'><body>{body}</body></message>"
            ))
            .await;
    }
    // Bob reads (but never acks): some messages, then the stream error.
    let mut received = 0;
    let condition = loop {
        match bob.next_event().await {
            Some(xmppd::xml::StreamEvent::Stanza(el)) if el.name == "message" => received += 1,
            Some(xmppd::xml::StreamEvent::Stanza(el)) if el.name == "error" => {
                break el
                    .first_element()
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
            }
            Some(_) => {}
            None => panic!("stream ended without an error after {received} messages"),
        }
    };
    assert_eq!(condition, "policy-violation");
    assert!(received < 40, "all {received} messages were kept for bob");
    server.stop().await;
}
