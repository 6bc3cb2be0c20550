//! XEP-0163 PEP on the XEP-0060 engine over real sockets: the OMEMO flow (publish-options,
//! open nodes read by contacts and strangers, preconditions), notifications filtered by
//! XEP-0115 capabilities, last items at login and at subscription approval, node
//! configuration, retract/purge/delete notifications, and bad input.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::modules::pubsub::caps::ver_string;
use xmppd::storage::{RosterItem, Subscription};
use xmppd::xml::{Element, StreamEvent};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const DISCO: &str = "http://jabber.org/protocol/disco#info";
const CLIENT: &str = "jabber:client";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";
const BUNDLE: &str = "eu.siacs.conversations.axolotl.bundles:4223";
const QUIET: Duration = Duration::from_millis(400);

/// The stanza error condition and the pubsub#errors condition of an error reply.
fn conditions(e: &Element) -> (String, Option<String>) {
    assert_eq!(e.attr("type"), Some("error"), "not an error: {e:?}");
    let err = e.child("error", CLIENT).expect("error element");
    let cond = err
        .elements()
        .find(|c| c.ns == STANZAS)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let app = err
        .elements()
        .find(|c| c.ns == ERRORS)
        .map(|c| c.name.clone());
    (cond, app)
}

fn assert_result(e: &Element) {
    assert_eq!(e.attr("type"), Some("result"), "{e:?}");
}

/// The disco#info a test client answers with: a client identity and `features`.
fn disco_query(features: &[&str]) -> Element {
    let mut q = Element::new("query", DISCO).with_child(
        Element::new("identity", DISCO)
            .with_attr("category", "client")
            .with_attr("type", "pc")
            .with_attr("name", "test"),
    );
    for f in features {
        q.push_child(Element::new("feature", DISCO).with_attr("var", *f));
    }
    q
}

/// Sends available presence with XEP-0115 caps for `features`. If `answer`, waits for
/// the server's disco#info query and answers it (a version the server does not know
/// yet); the reflected presence is consumed.
async fn available_with_caps(c: &mut Client, features: &[&str], answer: bool) {
    let q = disco_query(features);
    let ver = ver_string(&q);
    c.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='https://xmppd.test/client' ver='{ver}'/></presence>"
    ))
    .await;
    if answer {
        let iq = c
            .recv_until(|e| e.name == "iq" && e.attr("type") == Some("get"))
            .await;
        let query = iq.child("query", DISCO).expect("a disco#info query");
        assert_eq!(
            query.attr("node"),
            Some(format!("https://xmppd.test/client#{ver}").as_str())
        );
        let reply = Element::new("iq", CLIENT)
            .with_attr("type", "result")
            .with_attr("id", iq.attr("id").unwrap())
            .with_attr("to", iq.attr("from").unwrap())
            .with_child(q.with_attr("node", query.attr("node").unwrap()));
        c.send(&reply.to_stanza_string()).await;
    }
    let me = c.jid.clone();
    c.recv_until(|e| e.name == "presence" && e.attr("from") == Some(me.as_str()))
        .await;
}

fn notify(node: &str) -> String {
    format!("{node}+notify")
}

async fn befriend(server: &TestServer, a: &str, b: &str) {
    let storage = &server.ctx().storage;
    for (user, contact) in [(a, b), (b, a)] {
        let item = RosterItem {
            subscription: Subscription::Both,
            ..RosterItem::new(xmppd::addr::parse_bare(&format!("{contact}@localhost")).unwrap())
        };
        storage
            .roster
            .put_item(
                &xmppd::addr::parse_bare(&format!("{user}@localhost")).unwrap(),
                &item,
            )
            .await
            .unwrap();
    }
}

fn devicelist(ids: &[u32]) -> String {
    let mut s = String::from("<list xmlns='eu.siacs.conversations.axolotl'>");
    for id in ids {
        s.push_str(&format!("<device id='{id}'/>"));
    }
    s.push_str("</list>");
    s
}

fn publish_options(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (var, value) in pairs {
        s.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    s.push_str("</x></publish-options>");
    s
}

async fn publish(c: &mut Client, node: &str, id: &str, payload: &str, options: &str) -> Element {
    c.iq(&format!(
        "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='{node}'>\
         <item id='{id}'>{payload}</item></publish>{options}</pubsub></iq>"
    ))
    .await
}

async fn items(c: &mut Client, owner: &str, node: &str) -> Element {
    c.iq(&format!(
        "<iq type='get' to='{owner}'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>"
    ))
    .await
}

/// The ids of the items in an items result.
fn item_ids(r: &Element) -> Vec<String> {
    assert_result(r);
    r.child("pubsub", PUBSUB)
        .and_then(|p| p.child("items", PUBSUB))
        .expect("items")
        .elements()
        .filter_map(|i| i.attr("id").map(str::to_string))
        .collect()
}

fn is_event(node: &'static str) -> impl Fn(&Element) -> bool {
    move |e: &Element| {
        e.name == "message"
            && e.child("event", EVENT)
                .and_then(|ev| ev.first_element())
                .is_some_and(|x| x.attr("node") == Some(node))
    }
}

/// The content of an event notification (`<items/>`, `<delete/>`, `<purge/>`).
fn event_content(m: &Element) -> &Element {
    m.child("event", EVENT)
        .and_then(|e| e.first_element())
        .expect("event content")
}

/// No pubsub event arrives for a while (other stanzas are ignored).
async fn no_event(c: &mut Client) {
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(ev) = tokio::time::timeout_at(deadline, c.next_event()).await {
        if let Some(StreamEvent::Stanza(e)) = ev {
            assert!(e.child("event", EVENT).is_none(), "unexpected event {e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omemo_flow_with_publish_options_and_filtered_notifications() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
    befriend(&server, "alice", "bob").await;

    let mut alice = server.login("alice", "phone").await;
    available_with_caps(&mut alice, &[&notify(DEVICELIST)], true).await;
    // bob's phone wants device lists; his laptop does not.
    let mut bob_phone = server.login("bob", "phone").await;
    available_with_caps(&mut bob_phone, &[DISCO, &notify(DEVICELIST)], true).await;
    let mut bob_laptop = server.login("bob", "laptop").await;
    available_with_caps(&mut bob_laptop, &[DISCO], true).await;
    let mut carol = server.login("carol", "c").await;

    // The account advertises PEP and publish-options (OMEMO clients check both).
    let info = bob_phone
        .iq(&format!(
            "<iq type='get' to='alice@localhost'><query xmlns='{DISCO}'/></iq>"
        ))
        .await;
    let q = info.child("query", DISCO).expect("disco#info");
    assert!(
        q.elements()
            .any(|i| i.attr("category") == Some("pubsub") && i.attr("type") == Some("pep")),
        "{q:?}"
    );
    let features: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
    assert!(features.contains(&"http://jabber.org/protocol/pubsub#publish-options"));

    let open = publish_options(&[("pubsub#access_model", "open")]);
    let r = publish(
        &mut alice,
        DEVICELIST,
        "current",
        &devicelist(&[4223]),
        &open,
    )
    .await;
    assert_result(&r);
    let r = publish(
        &mut alice,
        BUNDLE,
        "current",
        "<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>AAAA</signedPreKeyPublic></bundle>",
        &publish_options(&[("pubsub#access_model", "open"), ("pubsub#max_items", "1")]),
    )
    .await;
    assert_result(&r);

    // The resource that asked for +notify gets the device list, the other nothing.
    let m = bob_phone.recv_until(is_event(DEVICELIST)).await;
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    assert_eq!(m.attr("to"), Some("bob@localhost/phone"));
    let item = event_content(&m).child("item", EVENT).expect("item");
    assert_eq!(item.attr("id"), Some("current"));
    assert!(
        item.child("list", "eu.siacs.conversations.axolotl")
            .is_some()
    );
    // The publisher's own resource with +notify gets it too.
    alice.recv_until(is_event(DEVICELIST)).await;
    no_event(&mut bob_laptop).await;
    // Nobody asked for bundle notifications.
    no_event(&mut bob_phone).await;

    // The contact and a stranger both read the open nodes.
    assert_eq!(
        item_ids(&items(&mut bob_laptop, "alice@localhost", DEVICELIST).await),
        ["current"]
    );
    assert_eq!(
        item_ids(&items(&mut carol, "alice@localhost", DEVICELIST).await),
        ["current"]
    );
    assert_eq!(
        item_ids(&items(&mut carol, "alice@localhost", BUNDLE).await),
        ["current"]
    );

    // A publish whose options differ from the node's configuration is refused.
    let presence_only = publish_options(&[("pubsub#access_model", "presence")]);
    let r = publish(
        &mut alice,
        DEVICELIST,
        "current",
        &devicelist(&[1]),
        &presence_only,
    )
    .await;
    assert_eq!(
        conditions(&r),
        ("conflict".into(), Some("precondition-not-met".into()))
    );
    // Matching options are fine, and the node keeps its single item.
    let r = publish(
        &mut alice,
        DEVICELIST,
        "current",
        &devicelist(&[4223, 7]),
        &open,
    )
    .await;
    assert_result(&r);
    let m = bob_phone.recv_until(is_event(DEVICELIST)).await;
    let list = event_content(&m)
        .child("item", EVENT)
        .and_then(|i| i.first_element())
        .unwrap();
    assert_eq!(list.elements().count(), 2);

    // A new resource of bob with known capabilities (no query) gets the last item at
    // login, with its publication time.
    let mut bob_tablet = server.login("bob", "tablet").await;
    available_with_caps(&mut bob_tablet, &[DISCO, &notify(DEVICELIST)], false).await;
    let m = bob_tablet.recv_until(is_event(DEVICELIST)).await;
    assert!(m.child("delay", "urn:xmpp:delay").is_some(), "{m:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_approved_mid_session_gets_the_last_item_at_once() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("dave", "password").await;
    let mut alice = server.login("alice", "a").await;
    alice.available().await;
    // The default access model is presence: only contacts may read.
    let r = publish(&mut alice, DEVICELIST, "current", &devicelist(&[1]), "").await;
    assert_result(&r);

    let mut dave = server.login("dave", "d").await;
    available_with_caps(&mut dave, &[&notify(DEVICELIST)], true).await;
    let r = items(&mut dave, "alice@localhost", DEVICELIST).await;
    assert_eq!(
        conditions(&r),
        (
            "not-authorized".into(),
            Some("presence-subscription-required".into())
        )
    );
    no_event(&mut dave).await;

    dave.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    alice
        .send("<presence to='dave@localhost' type='subscribed'/>")
        .await;
    // Without logging in again, dave's resource gets alice's device list.
    let m = dave.recv_until(is_event(DEVICELIST)).await;
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    assert_eq!(
        item_ids(&items(&mut dave, "alice@localhost", DEVICELIST).await),
        ["current"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_configuration_retract_purge_and_delete() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    befriend(&server, "alice", "bob").await;
    let mut alice = server.login("alice", "a").await;
    alice.available().await;
    let mut bob = server.login("bob", "b").await;
    available_with_caps(&mut bob, &[&notify("urn:xmpp:test")], true).await;

    let r = publish(
        &mut alice,
        "urn:xmpp:test",
        "1",
        "<x xmlns='urn:xmpp:test'/>",
        "",
    )
    .await;
    assert_result(&r);
    bob.recv_until(is_event("urn:xmpp:test")).await;

    // The form shows the node's configuration.
    let r = alice
        .iq(&format!(
            "<iq type='get'><pubsub xmlns='{OWNER}'><configure node='urn:xmpp:test'/></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    let x = r
        .child("pubsub", OWNER)
        .and_then(|p| p.child("configure", OWNER))
        .and_then(|c| c.child("x", "jabber:x:data"))
        .expect("form");
    let value = |var: &str| {
        x.elements()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.child_text("value", "jabber:x:data"))
    };
    assert_eq!(value("pubsub#access_model").as_deref(), Some("presence"));
    assert_eq!(value("pubsub#max_items").as_deref(), Some("1"));

    // More items, and retractions without notifications.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{OWNER}'><configure node='urn:xmpp:test'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#notify_retract'><value>0</value></field>\
             </x></configure></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    // A value out of range is refused and changes nothing.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{OWNER}'><configure node='urn:xmpp:test'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='pubsub#access_model'><value>authorize</value></field>\
             </x></configure></pubsub></iq>"
        ))
        .await;
    assert_eq!(conditions(&r).0, "not-acceptable");
    for id in ["2", "3"] {
        let r = publish(
            &mut alice,
            "urn:xmpp:test",
            id,
            "<x xmlns='urn:xmpp:test'/>",
            "",
        )
        .await;
        assert_result(&r);
        bob.recv_until(is_event("urn:xmpp:test")).await;
    }
    assert_eq!(
        item_ids(&items(&mut bob, "alice@localhost", "urn:xmpp:test").await),
        ["1", "2", "3"]
    );
    let r = bob
        .iq(&format!(
            "<iq type='get' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:test' max_items='1'/></pubsub></iq>"
        ))
        .await;
    assert_eq!(item_ids(&r), ["3"]);
    let r = bob
        .iq(&format!(
            "<iq type='get' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:test'><item id='2'/></items></pubsub></iq>"
        ))
        .await;
    assert_eq!(item_ids(&r), ["2"]);

    let retract = |id: &str, notify: &str| {
        format!(
            "<iq type='set'><pubsub xmlns='{PUBSUB}'><retract node='urn:xmpp:test'{notify}>\
             <item id='{id}'/></retract></pubsub></iq>"
        )
    };
    assert_result(&alice.iq(&retract("1", "")).await);
    no_event(&mut bob).await;
    // notify='true' asks for the notification anyway.
    assert_result(&alice.iq(&retract("2", " notify='true'")).await);
    let m = bob.recv_until(is_event("urn:xmpp:test")).await;
    assert_eq!(
        event_content(&m)
            .child("retract", EVENT)
            .and_then(|r| r.attr("id")),
        Some("2")
    );
    assert_eq!(
        conditions(&alice.iq(&retract("2", "")).await).0,
        "item-not-found"
    );
    assert_eq!(
        item_ids(&items(&mut bob, "alice@localhost", "urn:xmpp:test").await),
        ["3"]
    );

    let owner_op = |op: &str| {
        format!("<iq type='set'><pubsub xmlns='{OWNER}'><{op} node='urn:xmpp:test'/></pubsub></iq>")
    };
    assert_result(&alice.iq(&owner_op("purge")).await);
    assert_eq!(
        bob.recv_until(is_event("urn:xmpp:test"))
            .await
            .child("event", EVENT)
            .unwrap()
            .first_element()
            .unwrap()
            .name,
        "purge"
    );
    assert!(item_ids(&items(&mut bob, "alice@localhost", "urn:xmpp:test").await).is_empty());
    // Only the owner configures, purges or deletes.
    let r = bob
        .iq(&owner_op("delete").replace("<iq type='set'>", "<iq type='set' to='alice@localhost'>"))
        .await;
    assert_eq!(conditions(&r).0, "forbidden");
    assert_result(&alice.iq(&owner_op("delete")).await);
    let m = bob.recv_until(is_event("urn:xmpp:test")).await;
    assert_eq!(event_content(&m).name, "delete");
    let r = items(&mut bob, "alice@localhost", "urn:xmpp:test").await;
    assert_eq!(conditions(&r).0, "item-not-found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_xep_errors() {
    let server = TestServer::start_with(|c| {
        c.pep.max_item_bytes = 200;
        c.pep.max_nodes_per_account = 2;
    })
    .await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;

    let big = format!("<x xmlns='urn:xmpp:test'>{}</x>", "a".repeat(300));
    let r = publish(&mut alice, "n1", "1", &big, "").await;
    assert_eq!(
        conditions(&r),
        ("not-acceptable".into(), Some("payload-too-big".into()))
    );
    // Publishing to another account's PEP service.
    let r = bob
        .iq(&format!(
            "<iq type='set' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><publish node='n1'>\
             <item id='1'><x xmlns='urn:xmpp:test'/></item></publish></pubsub></iq>"
        ))
        .await;
    assert_eq!(conditions(&r).0, "forbidden");
    // Items of a node that does not exist.
    let r = items(&mut bob, "alice@localhost", "missing").await;
    assert_eq!(conditions(&r).0, "item-not-found");
    // Two payloads in one item, none, no node.
    let r = publish(&mut alice, "n1", "1", "<x xmlns='a'/><y xmlns='b'/>", "").await;
    assert_eq!(
        conditions(&r),
        ("bad-request".into(), Some("invalid-payload".into()))
    );
    let r = publish(&mut alice, "n1", "1", "", "").await;
    assert_eq!(
        conditions(&r),
        ("bad-request".into(), Some("payload-required".into()))
    );
    let r = publish(&mut alice, "", "1", "<x xmlns='a'/>", "").await;
    assert_eq!(
        conditions(&r),
        ("bad-request".into(), Some("nodeid-required".into()))
    );
    // Publish-options that cannot be applied to a new node.
    let r = publish(
        &mut alice,
        "n1",
        "1",
        "<x xmlns='a'/>",
        &publish_options(&[("pubsub#access_model", "authorize")]),
    )
    .await;
    assert_eq!(
        conditions(&r),
        ("conflict".into(), Some("precondition-not-met".into()))
    );
    // Instant nodes are not offered.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{PUBSUB}'><create/></pubsub></iq>"
        ))
        .await;
    assert_eq!(
        conditions(&r),
        ("not-acceptable".into(), Some("nodeid-required".into()))
    );
    // The node limit.
    for n in ["n1", "n2"] {
        assert_result(&publish(&mut alice, n, "1", "<x xmlns='a'/>", "").await);
    }
    let r = publish(&mut alice, "n3", "1", "<x xmlns='a'/>", "").await;
    assert_eq!(
        conditions(&r),
        ("not-allowed".into(), Some("max-nodes-exceeded".into()))
    );
    // Subscriptions are implicit on PEP.
    let r = bob
        .iq(&format!(
            "<iq type='set' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>\
             <subscribe node='n1' jid='bob@localhost'/></pubsub></iq>"
        ))
        .await;
    assert_eq!(
        conditions(&r),
        ("feature-not-implemented".into(), Some("unsupported".into()))
    );
    // Removing the account removes its nodes.
    assert!(
        server
            .ctx()
            .storage
            .remove_account(&xmppd::addr::parse_bare("alice@localhost").unwrap())
            .await
            .unwrap()
    );
    assert!(
        server
            .ctx()
            .storage
            .pubsub
            .nodes("alice@localhost")
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelist_and_roster_access_models() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
    befriend(&server, "alice", "bob").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    let mut carol = server.login("carol", "c").await;

    let whitelist = publish_options(&[("pubsub#access_model", "whitelist")]);
    assert_result(&publish(&mut alice, "secret", "1", "<x xmlns='a'/>", &whitelist).await);
    let r = items(&mut bob, "alice@localhost", "secret").await;
    assert_eq!(
        conditions(&r),
        ("not-allowed".into(), Some("closed-node".into()))
    );
    // A member affiliation opens it for carol, who is not even a contact.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{OWNER}'><affiliations node='secret'>\
             <affiliation jid='carol@localhost' affiliation='member'/></affiliations></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    assert_eq!(
        item_ids(&items(&mut carol, "alice@localhost", "secret").await),
        ["1"]
    );
    assert_eq!(
        item_ids(&items(&mut alice, "alice@localhost", "secret").await),
        ["1"]
    );

    let roster = publish_options(&[
        ("pubsub#access_model", "roster"),
        ("pubsub#roster_groups_allowed", "Family"),
    ]);
    assert_result(&publish(&mut alice, "family", "1", "<x xmlns='a'/>", &roster).await);
    let r = items(&mut bob, "alice@localhost", "family").await;
    assert_eq!(
        conditions(&r),
        ("not-authorized".into(), Some("not-in-roster-group".into()))
    );
    let item = RosterItem {
        subscription: Subscription::Both,
        groups: vec!["Family".into()],
        ..RosterItem::new(xmppd::addr::parse_bare("bob@localhost").unwrap())
    };
    server
        .ctx()
        .storage
        .roster
        .put_item(&xmppd::addr::parse_bare("alice@localhost").unwrap(), &item)
        .await
        .unwrap();
    assert_eq!(
        item_ids(&items(&mut bob, "alice@localhost", "family").await),
        ["1"]
    );

    // Node discovery lists what each may read.
    let nodes = |r: Element| -> Vec<String> {
        let mut n: Vec<String> = r
            .child("query", "http://jabber.org/protocol/disco#items")
            .expect("disco#items")
            .elements()
            .filter_map(|i| i.attr("node").map(str::to_string))
            .collect();
        n.sort();
        n
    };
    let disco_items = "<iq type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>";
    assert_eq!(nodes(bob.iq(disco_items).await), ["family"]);
    assert_eq!(nodes(carol.iq(disco_items).await), ["secret"]);
    assert_eq!(nodes(alice.iq(disco_items).await), ["family", "secret"]);
    server.stop().await;
}
