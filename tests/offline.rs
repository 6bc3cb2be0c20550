//! XEP-0160 offline storage: durable across a restart, delayed delivery, quota.

mod support;

use std::time::Duration;

use support::TestServer;

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

#[tokio::test]
async fn offline_messages_survive_restart_and_arrive_with_delay() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='o{i}'><body>msg {i}</body></message>"
            ))
            .await;
    }
    // Chat states alone are not stored.
    alice
        .send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    // A round trip makes sure the server processed everything before the restart.
    alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    drop(alice);
    server.restart().await;

    let mut bob = server.login("bob", "b").await;
    bob.send("<presence/>").await;
    for i in 0..3 {
        let m = bob.recv_until(|e| e.name == "message").await;
        assert_eq!(m.attr("id"), Some(format!("o{i}").as_str()));
        assert_eq!(m.attr("from"), Some("alice@localhost/a"));
        assert_eq!(
            m.child_text("body", "jabber:client"),
            Some(format!("msg {i}"))
        );
        let delay = m.child("delay", "urn:xmpp:delay").expect("delay stamp");
        assert_eq!(delay.attr("from"), Some("localhost"));
        assert!(delay.attr("stamp").unwrap().ends_with('Z'));
    }
    // Delivered once: nothing more now, nor at the next login.
    bob.expect_silence_except_presence(Duration::from_millis(300))
        .await;
    drop(bob);
    support::wait_until("bob's session to end", || {
        server
            .ctx()
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    let mut bob = server.login("bob", "c").await;
    bob.send("<presence/>").await;
    bob.expect_silence_except_presence(Duration::from_millis(300))
        .await;
    server.stop().await;
}

/// Three messages to offline bob with a quota of two: returns the bounce of the third.
async fn overflow_quota_of_two() -> (TestServer, xmppd::xml::Element) {
    let server = TestServer::start_with(|c| c.limits.offline_quota = 2).await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='bob@localhost' id='q{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    let bounce = alice.recv_until(|e| e.name == "message").await;
    assert_eq!(bounce.attr("id"), Some("q2"));
    assert_eq!(bounce.attr("type"), Some("error"));
    (server, bounce)
}

#[tokio::test]
async fn quota_overflow_bounces_resource_constraint() {
    let (server, bounce) = overflow_quota_of_two().await;
    let err = bounce.child("error", "jabber:client").unwrap();
    assert_eq!(err.attr("type"), Some("wait"));
    assert!(
        err.child("resource-constraint", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some()
    );
    server.stop().await;
}

/// A message bounced for the offline quota was never accepted: it is not in the
/// recipient's archive either (only the sender's own copy of what it sent is).
#[tokio::test]
async fn quota_bounce_leaves_no_archive_entry() {
    let (server, _bounce) = overflow_quota_of_two().await;
    let archive = &server.ctx().storage.archive;
    assert_eq!(archive.count(&j("bob@localhost")).await.unwrap(), 2);
    assert_eq!(
        server
            .ctx()
            .storage
            .offline
            .count(&j("bob@localhost"))
            .await
            .unwrap(),
        2
    );
    server.stop().await;
}
