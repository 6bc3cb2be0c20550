//! Routing per RFC 6121 §8 over real sockets.

mod support;

use std::time::Duration;

use support::TestServer;

#[tokio::test]
async fn chat_message_reaches_the_full_jid_with_stamped_from() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "desk").await;
    let mut bob = server.login("bob", "phone").await;
    bob.available().await;
    alice
        .send("<message to='bob@localhost/phone' type='chat' id='m1'><body>hello &amp; welcome</body></message>")
        .await;
    let msg = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(msg.attr("from"), Some("alice@localhost/desk"));
    assert_eq!(msg.attr("id"), Some("m1"));
    assert_eq!(
        msg.child_text("body", "jabber:client").as_deref(),
        Some("hello & welcome")
    );
    server.stop().await;
}

#[tokio::test]
async fn forged_from_is_a_stream_error() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "desk").await;
    alice
        .send("<message from='bob@localhost/x' to='alice@localhost'><body>x</body></message>")
        .await;
    assert_eq!(alice.expect_stream_error().await, "invalid-from");
    server.stop().await;
}

#[tokio::test]
async fn bare_jid_messages_go_to_non_negative_priority_resources() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "desk").await;
    let mut bob1 = server.login("bob", "one").await;
    let mut bob2 = server.login("bob", "two").await;
    bob1.available().await;
    bob2.send("<presence><priority>-1</priority></presence>")
        .await;
    bob2.recv_until(|e| e.name == "presence" && e.attr("from") == Some("bob@localhost/two"))
        .await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>to bare</body></message>")
        .await;
    let m = bob1.recv_until(|e| e.name == "message").await;
    assert_eq!(
        m.child_text("body", "jabber:client").as_deref(),
        Some("to bare")
    );
    // The negative-priority resource gets presence noise but no message.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, bob2.next_event()).await {
            Ok(Some(xmppd::xml::StreamEvent::Stanza(e))) => assert_ne!(e.name, "message"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn iq_to_unknown_namespace_and_unknown_user_get_service_unavailable() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "desk").await;
    let reply = alice
        .iq("<iq type='get' to='localhost'><query xmlns='urn:example:nothing'/></iq>")
        .await;
    assert_eq!(reply.attr("type"), Some("error"));
    let err = reply.child("error", "jabber:client").unwrap();
    assert_eq!(err.attr("type"), Some("cancel"));
    assert!(
        err.child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some()
    );

    // Message to a user that does not exist.
    alice
        .send("<message to='ghost@localhost' id='g1' type='chat'><body>x</body></message>")
        .await;
    let bounce = alice.recv_until(|e| e.name == "message").await;
    assert_eq!(bounce.attr("type"), Some("error"));
    assert_eq!(bounce.attr("id"), Some("g1"));
    assert_eq!(bounce.attr("from"), Some("ghost@localhost"));

    // Iq to an offline full JID.
    let reply = alice
        .iq("<iq type='get' to='alice@localhost/nowhere'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(reply.attr("type"), Some("error"));
    server.stop().await;
}

#[tokio::test]
async fn errors_are_never_answered_with_errors() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "desk").await;
    alice
        .send("<message to='ghost@localhost' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    alice
        .send("<iq type='error' id='e1' to='localhost'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        .await;
    alice.expect_silence(Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test]
async fn messages_to_unknown_remote_domains_bounce() {
    // An empty zone on loopback: remote.example does not exist.
    let dns = support::dns::TestDns::start("127.0.0.1").await;
    let server = TestServer::start_with(|c| c.s2s.dns_servers = vec![dns.addr]).await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "desk").await;
    alice
        .send("<message to='someone@remote.example' id='r1' type='chat'><body>x</body></message>")
        .await;
    let bounce = alice.recv_until(|e| e.name == "message").await;
    assert_eq!(bounce.attr("type"), Some("error"));
    let err = bounce.child("error", "jabber:client").unwrap();
    assert!(
        err.child(
            "remote-server-not-found",
            "urn:ietf:params:xml:ns:xmpp-stanzas"
        )
        .is_some()
    );
    server.stop().await;
}

#[tokio::test]
async fn ping_version_time_and_disco() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "desk").await;
    let r = alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = alice
        .iq("<iq type='get' to='localhost'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let q = r.child("query", "jabber:iq:version").unwrap();
    assert_eq!(
        q.child_text("name", "jabber:iq:version").as_deref(),
        Some("xmppd")
    );
    let r = alice
        .iq("<iq type='get' to='localhost'><time xmlns='urn:xmpp:time'/></iq>")
        .await;
    let t = r.child("time", "urn:xmpp:time").unwrap();
    assert!(t.child_text("utc", "urn:xmpp:time").unwrap().ends_with('Z'));

    let r = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let q = r
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let id = q
        .child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("server"), Some("im"))
    );
    let features: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
    for f in [
        "http://jabber.org/protocol/disco#info",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
        "msgoffline",
    ] {
        assert!(features.contains(&f), "{f} missing in {features:?}");
    }
    let r = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = alice
        .iq("<iq type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let q = r
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let id = q
        .child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("account"), Some("registered"))
    );
    // Legacy session establishment still works.
    let r = alice
        .iq("<iq type='set'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    server.stop().await;
}
