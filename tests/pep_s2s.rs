//! PEP across federation: a remote contact's resource whose XEP-0115 capabilities ask for
//! a node gets the local owner's notifications, learnt from the presence it sends.

mod support;

use support::ca::TestCa;
use support::dns::TestDns;
use support::{Client, TestServer, wait_until};
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode, VhostConfig};
use xmppd::modules::pubsub::caps::{CapsCache, ver_string};
use xmppd::storage::{RosterItem, Subscription};
use xmppd::xml::Element;

const A: &str = "a.example";
const B: &str = "b.example";
const A_IP: &str = "127.0.0.2";
const B_IP: &str = "127.0.0.3";
const DISCO: &str = "http://jabber.org/protocol/disco#info";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";

struct World {
    dns: TestDns,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        World {
            dns: TestDns::start("127.0.0.1").await,
            ca: TestCa::new("xmppd test CA"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A server for `domain` with s2s listeners on `ip`, found through SRV records.
    async fn server(&self, domain: &str, ip: &str) -> TestServer {
        let (cert, key) = self.ca.issue(domain, self.dir.path());
        let ca_file = self.ca.write_ca(self.dir.path());
        let dns = self.dns.addr;
        let server = TestServer::start_with(|c| {
            c.vhosts = vec![VhostConfig {
                domain: domain.into(),
                certificate: Some(cert),
                key: Some(key),
            }];
            c.listeners.push(ListenerConfig {
                kind: ListenerKind::S2s,
                address: format!("{ip}:0").parse().unwrap(),
                tls: TlsMode::Starttls,
            });
            c.s2s.dns_servers = vec![dns];
            c.s2s.ca_file = Some(ca_file);
        })
        .await;
        let host = format!("xmpp.{domain}");
        self.dns.add_srv(
            &format!("_xmpp-server._tcp.{domain}"),
            10,
            0,
            server.s2s_addr(TlsMode::Starttls).port(),
            &host,
        );
        self.dns.add_addr(&host, ip);
        server
    }
}

async fn contact(server: &TestServer, user: &str, contact: &str) {
    let item = RosterItem {
        subscription: Subscription::Both,
        ..RosterItem::new(xmppd::addr::parse_bare(contact).unwrap())
    };
    server
        .ctx()
        .storage
        .roster
        .put_item(&xmppd::addr::parse_bare(user).unwrap(), &item)
        .await
        .unwrap();
}

/// Answers the server's disco#info queries for the client's caps until one came from
/// `from`.
async fn answer_caps_queries(c: &mut Client, query: &Element, from: &str) {
    loop {
        let iq = c
            .recv_until(|e| e.name == "iq" && e.attr("type") == Some("get"))
            .await;
        let node = iq
            .child("query", DISCO)
            .and_then(|q| q.attr("node"))
            .unwrap();
        let reply = Element::new("iq", "jabber:client")
            .with_attr("type", "result")
            .with_attr("id", iq.attr("id").unwrap())
            .with_attr("to", iq.attr("from").unwrap())
            .with_child(query.clone().with_attr("node", node));
        c.send(&reply.to_stanza_string()).await;
        if iq.attr("from") == Some(from) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_contact_with_notify_caps_gets_notifications() {
    let world = World::new().await;
    let a = world.server(A, A_IP).await;
    let b = world.server(B, B_IP).await;
    a.add_user("alice", "password").await;
    b.add_user("bob", "password").await;
    contact(&a, "alice@a.example", "bob@b.example").await;
    contact(&b, "bob@b.example", "alice@a.example").await;

    let mut alice = a.login("alice", "phone").await;
    alice.available().await;
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{DEVICELIST}'>\
             <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list></item>\
             </publish></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");

    let mut bob = b.login("bob", "phone").await;
    let query = Element::new("query", DISCO)
        .with_child(
            Element::new("identity", DISCO)
                .with_attr("category", "client")
                .with_attr("type", "phone"),
        )
        .with_child(
            Element::new("feature", DISCO).with_attr("var", format!("{DEVICELIST}+notify")),
        );
    let ver = ver_string(&query);
    bob.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://xmppd.test/c' ver='{ver}'/></presence>"
    ))
    .await;
    // alice's server learns bob's capabilities from the presence he sends her, asks his
    // resource over federation, and sends alice's last item.
    answer_caps_queries(&mut bob, &query, "alice@a.example").await;
    let is_event = |e: &Element| e.name == "message" && e.child("event", EVENT).is_some();
    let m = bob.recv_until(is_event).await;
    assert_eq!(m.attr("from"), Some("alice@a.example"));
    assert!(m.child("delay", "urn:xmpp:delay").is_some());

    // A new publication reaches bob's resource as it happens.
    let cache = a.ctx().registry.state::<CapsCache>().unwrap();
    wait_until("alice's server knows bob's caps", || cache.len() == 1).await;
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{DEVICELIST}'>\
             <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='2'/></list></item>\
             </publish></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let m = bob.recv_until(is_event).await;
    assert_eq!(m.attr("from"), Some("alice@a.example"));
    assert!(
        m.child("delay", "urn:xmpp:delay").is_none(),
        "a live notification"
    );
    let device = m
        .child("event", EVENT)
        .and_then(|e| e.first_element())
        .and_then(|i| i.first_element())
        .and_then(|i| i.first_element())
        .and_then(|l| l.first_element())
        .and_then(|d| d.attr("id"));
    assert_eq!(device, Some("2"));
    a.stop().await;
    b.stop().await;
}

/// Presence a remote contact sends to one of the owner's resources (directed presence,
/// answers to probes) does not pass the presence module; it counts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_directed_presence_with_caps_counts() {
    let world = World::new().await;
    let a = world.server(A, A_IP).await;
    let b = world.server(B, B_IP).await;
    a.add_user("alice", "password").await;
    b.add_user("bob", "password").await;
    contact(&a, "alice@a.example", "bob@b.example").await;
    contact(&b, "bob@b.example", "alice@a.example").await;

    let mut alice = a.login("alice", "phone").await;
    alice.available().await;
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{DEVICELIST}'>\
             <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='5'/></list></item>\
             </publish></pubsub></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");

    // bob comes online without capabilities: nothing to send him.
    let mut bob = b.login("bob", "phone").await;
    bob.available().await;
    alice
        .recv_until(|e| e.name == "presence" && e.attr("from") == Some("bob@b.example/phone"))
        .await;
    // Then tells alice's resource alone that he wants device lists.
    let query = Element::new("query", DISCO)
        .with_child(
            Element::new("identity", DISCO)
                .with_attr("category", "client")
                .with_attr("type", "phone"),
        )
        .with_child(
            Element::new("feature", DISCO).with_attr("var", format!("{DEVICELIST}+notify")),
        );
    let ver = ver_string(&query);
    bob.send(&format!(
        "<presence to='alice@a.example/phone'><c xmlns='http://jabber.org/protocol/caps' \
         hash='sha-1' node='https://xmppd.test/c' ver='{ver}'/></presence>"
    ))
    .await;
    answer_caps_queries(&mut bob, &query, "alice@a.example").await;
    let m = bob
        .recv_until(|e| e.name == "message" && e.child("event", EVENT).is_some())
        .await;
    assert_eq!(m.attr("from"), Some("alice@a.example"));
    a.stop().await;
    b.stop().await;
}
