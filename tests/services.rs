//! Small services clients ask the server for: XEP-0012 last activity, XEP-0157 contact
//! addresses and XEP-0215 external (STUN/TURN) services with coturn credentials.

mod support;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use support::TestServer;
use xmppd::config::ExternalServiceConfig;
use xmppd::storage::{RosterItem, Subscription};
use xmppd::xml::Element;

const LAST: &str = "jabber:iq:last";
const EXTDISCO: &str = "urn:xmpp:extdisco:2";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn condition(e: &Element) -> String {
    assert_eq!(e.attr("type"), Some("error"), "not an error: {e:?}");
    e.child("error", "jabber:client")
        .and_then(|err| err.elements().find(|c| c.ns == STANZAS))
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn seconds(r: &Element) -> u64 {
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    r.child("query", LAST)
        .and_then(|q| q.attr("seconds"))
        .and_then(|s| s.parse().ok())
        .expect("seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_activity_of_the_server_and_of_contacts() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
    for (user, contact) in [("alice", "bob"), ("bob", "alice")] {
        let item = RosterItem {
            subscription: Subscription::Both,
            ..RosterItem::new(xmppd::addr::parse_bare(&format!("{contact}@localhost")).unwrap())
        };
        server
            .ctx()
            .storage
            .roster
            .put_item(
                &xmppd::addr::parse_bare(&format!("{user}@localhost")).unwrap(),
                &item,
            )
            .await
            .unwrap();
    }
    let mut alice = server.login("alice", "a").await;
    alice.available().await;
    let mut carol = server.login("carol", "c").await;

    // The server answers with its uptime.
    let r = alice
        .iq("<iq type='get' to='localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert!(seconds(&r) < 60);
    // Never logged in.
    let r = alice
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert_eq!(condition(&r), "item-not-found");

    let mut bob = server.login("bob", "b").await;
    bob.available().await;
    let r = alice
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert_eq!(seconds(&r), 0, "online");
    bob.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    alice
        .recv_until(|e| {
            e.name == "presence"
                && e.attr("type") == Some("unavailable")
                && e.attr("from") == Some("bob@localhost/b")
        })
        .await;
    let r = alice
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert!(seconds(&r) < 60);
    assert_eq!(r.child("query", LAST).unwrap().text(), "gone fishing");
    // Not for strangers.
    let r = carol
        .iq("<iq type='get' to='bob@localhost'><query xmlns='jabber:iq:last'/></iq>")
        .await;
    assert_eq!(condition(&r), "forbidden");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_addresses_in_the_server_disco() {
    let server = TestServer::start_with(|c| {
        c.contact.abuse = vec!["mailto:abuse@localhost".into()];
        c.contact.admin = vec![
            "xmpp:admin@localhost".into(),
            "mailto:admin@localhost".into(),
        ];
    })
    .await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "a").await;
    let r = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let q = r
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let form = q
        .elements()
        .find(|x| x.is("x", "jabber:x:data"))
        .expect("serverinfo form");
    let values = |var: &str| -> Vec<String> {
        form.elements()
            .find(|f| f.attr("var") == Some(var))
            .map(|f| f.elements().map(|v| v.text()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        values("FORM_TYPE"),
        ["http://jabber.org/network/serverinfo"]
    );
    assert_eq!(values("abuse-addresses"), ["mailto:abuse@localhost"]);
    assert_eq!(
        values("admin-addresses"),
        ["xmpp:admin@localhost", "mailto:admin@localhost"]
    );
    assert!(values("sales-addresses").is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_services_with_turn_credentials() {
    let server = TestServer::start_with(|c| {
        c.external_services = vec![
            ExternalServiceConfig {
                kind: "stun".into(),
                host: "stun.localhost".into(),
                port: 3478,
                transport: Some("udp".into()),
                secret: None,
                ttl_secs: 86400,
                name: None,
            },
            ExternalServiceConfig {
                kind: "turn".into(),
                host: "turn.localhost".into(),
                port: 3478,
                transport: Some("udp".into()),
                secret: Some("s3cret".into()),
                ttl_secs: 600,
                name: Some("Relay".into()),
            },
        ];
    })
    .await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "a").await;
    let r = alice
        .iq("<iq type='get' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let services: Vec<Element> = r
        .child("services", EXTDISCO)
        .unwrap()
        .elements()
        .cloned()
        .collect();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0].attr("type"), Some("stun"));
    assert_eq!(services[0].attr("username"), None);
    let turn = &services[1];
    assert_eq!(turn.attr("host"), Some("turn.localhost"));
    // The credentials coturn's use-auth-secret accepts: EXPIRY:JID, HMAC-SHA1 in base64.
    let username = turn.attr("username").unwrap();
    let (expiry, jid) = username.split_once(':').unwrap();
    assert_eq!(jid, "alice@localhost");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now && expiry <= now + 601);
    let mut mac = Hmac::<Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn.attr("password"), Some(expected.as_str()));

    // Filtered by type, and credentials for one service.
    let r = alice
        .iq("<iq type='get' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='turn'/></iq>")
        .await;
    assert_eq!(r.child("services", EXTDISCO).unwrap().elements().count(), 1);
    let r = alice
        .iq("<iq type='get' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'><service type='turn' host='turn.localhost'/></credentials></iq>")
        .await;
    let svc = r
        .child("credentials", EXTDISCO)
        .and_then(|c| c.child("service", EXTDISCO))
        .expect("service with credentials");
    assert!(svc.attr("password").is_some());
    let r = alice
        .iq("<iq type='get' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'><service type='turn' host='nowhere'/></credentials></iq>")
        .await;
    assert_eq!(condition(&r), "item-not-found");
    server.stop().await;
}
