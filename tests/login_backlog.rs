//! What arrives at login all at once: every offline message, every pending subscription
//! request and the presence of every online contact. The session must get all of it and
//! stay connected, however many there are within the configured limits.

mod support;

use std::sync::Arc;

use support::TestServer;
use xmppd::router::{BindOutcome, SessionControl, SessionInfo, SessionReceiver, session_queue};
use xmppd::storage::{PendingSubscription, RosterItem, Subscription};
use xmppd::xml::{Element, ns};

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const CONTACTS: usize = 1000;
const RESOURCES_PER_CONTACT: usize = 2;

/// Binds an available session for `bare/resource` straight into the session table (a
/// thousand real logins would dominate the test's time); its queue is returned so that
/// what the server sends it is kept, not refused.
fn fake_online(server: &TestServer, bare: &str, resource: &str, conn_id: u64) -> SessionReceiver {
    let (tx, rx) = session_queue(64);
    let presence = Element::new("presence", ns::CLIENT)
        .with_attr("from", format!("{bare}/{resource}"))
        .with_child(Element::new("status", ns::CLIENT).with_text("here"));
    let info = SessionInfo {
        resource: resource.to_string(),
        conn_id,
        tx,
        control: Arc::new(SessionControl::default()),
        priority: 0,
        available: true,
        presence: Some(presence),
        flags: Default::default(),
        secure: true,
    };
    let bound = server.ctx().sessions.bind(&j(bare), info, 10);
    assert!(matches!(bound, BindOutcome::Bound));
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_with_a_thousand_offline_messages_and_online_contacts_stays_connected() {
    let server = TestServer::start().await;
    server.add_user("bob", "password").await;
    let ctx = server.ctx();
    let quota = ctx.config.limits.offline_quota;
    assert_eq!(quota, 1000, "the default quota");
    let mut queues = Vec::new();
    for i in 0..CONTACTS {
        let contact = j(&format!("c{i}@localhost"));
        let item = RosterItem {
            subscription: Subscription::Both,
            ..RosterItem::new(contact.clone())
        };
        ctx.storage
            .roster
            .put_item(&j("bob@localhost"), &item)
            .await
            .unwrap();
        let bob = RosterItem {
            subscription: Subscription::Both,
            ..RosterItem::new(j("bob@localhost"))
        };
        ctx.storage.roster.put_item(&contact, &bob).await.unwrap();
        for r in 0..RESOURCES_PER_CONTACT {
            let conn_id = 1_000_000 + (i * RESOURCES_PER_CONTACT + r) as u64;
            queues.push(fake_online(
                &server,
                contact.as_str(),
                &format!("r{r}"),
                conn_id,
            ));
        }
    }
    for i in 0..quota {
        let stanza = format!(
            "<message xmlns='jabber:client' from='c{}@localhost/r0' to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>",
            i % CONTACTS
        );
        ctx.storage
            .offline
            .push(&j("bob@localhost"), &stanza, quota)
            .await
            .unwrap();
    }
    // More than one session queue holds, all produced by bob's own initial presence.
    let backlog = CONTACTS * RESOURCES_PER_CONTACT + quota;
    assert!(backlog > ctx.config.limits.session_queue_len);

    let mut bob = server.login("bob", "phone").await;
    bob.send("<presence/>").await;
    let (mut presences, mut messages) = (0, 0);
    while presences < CONTACTS * RESOURCES_PER_CONTACT || messages < quota {
        let el = bob.recv().await;
        match el.name.as_str() {
            "presence" if el.attr("from") != Some("bob@localhost/phone") => {
                assert_eq!(el.child_text("status", ns::CLIENT).as_deref(), Some("here"));
                presences += 1;
            }
            "message" => {
                assert_eq!(
                    el.attr("id"),
                    Some(format!("m{messages}").as_str()),
                    "in order"
                );
                messages += 1;
            }
            _ => {}
        }
    }
    // Still connected and served.
    let pong = bob
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    assert_eq!(
        ctx.storage
            .offline
            .count(&j("bob@localhost"))
            .await
            .unwrap(),
        0
    );
    drop(queues);
    server.stop().await;
}

#[tokio::test]
async fn pending_subscription_requests_are_capped_and_redelivered_at_login() {
    let server = TestServer::start_with(|c| c.limits.max_pending_subscriptions = 20).await;
    server.add_user("bob", "password").await;
    let ctx = server.ctx().clone();
    // A remote server can mint requesters without end.
    for i in 0..30 {
        let subscribe = Element::new("presence", ns::CLIENT)
            .with_attr("from", format!("spammer{i}@remote.example"))
            .with_attr("to", "bob@localhost")
            .with_attr("type", "subscribe")
            .with_child(Element::new("status", ns::CLIENT).with_text(format!("let me in {i}")))
            .with_child(Element::new("junk", "urn:example:junk").with_text("x".repeat(1000)));
        xmppd::router::route(&ctx, subscribe).await;
    }
    let pending = ctx
        .storage
        .roster
        .pending_in(&j("bob@localhost"))
        .await
        .unwrap();
    assert_eq!(pending.len(), 20);
    // What is kept is what redelivery needs, not the whole stanza.
    let kept: &PendingSubscription = &pending[0];
    let kept = kept.stanza.as_deref().unwrap_or_default();
    assert!(
        kept.contains("let me in") && !kept.contains("junk"),
        "{kept}"
    );

    // A known requester asking again is no new request.
    let again = Element::new("presence", ns::CLIENT)
        .with_attr("from", "spammer0@remote.example")
        .with_attr("to", "bob@localhost")
        .with_attr("type", "subscribe")
        .with_child(Element::new("status", ns::CLIENT).with_text("let me in, again"));
    xmppd::router::route(&ctx, again).await;
    assert_eq!(
        ctx.storage
            .roster
            .pending_in(&j("bob@localhost"))
            .await
            .unwrap()
            .len(),
        20
    );

    let mut bob = server.login("bob", "phone").await;
    bob.send("<presence/>").await;
    for _ in 0..20 {
        let p = bob
            .recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
            .await;
        assert!(p.attr("from").unwrap().starts_with("spammer"));
        assert!(
            p.child_text("status", ns::CLIENT)
                .unwrap()
                .starts_with("let me in")
        );
    }
    let pong = bob
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    server.stop().await;
}
