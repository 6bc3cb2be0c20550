//! Profiles and private data over real sockets: XEP-0054 vCards, the XEP-0398 avatar
//! conversion between PEP (XEP-0084) and the vCard in both directions, XEP-0049 private
//! storage and the XEP-0402 ⇄ XEP-0048 bookmark conversion.

mod support;

use base64::Engine;
use sha1::{Digest, Sha1};
use support::{Client, TestServer};
use xmppd::xml::Element;

const CLIENT: &str = "jabber:client";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const VCARD: &str = "vcard-temp";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const PRIVATE: &str = "jabber:iq:private";
const LEGACY: &str = "storage:bookmarks";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

fn condition(e: &Element) -> String {
    assert_eq!(e.attr("type"), Some("error"), "not an error: {e:?}");
    e.child("error", CLIENT)
        .and_then(|err| err.elements().find(|c| c.ns == STANZAS))
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn assert_result(e: &Element) {
    assert_eq!(e.attr("type"), Some("result"), "{e:?}");
}

async fn start() -> (TestServer, Client, Client) {
    let server = TestServer::start_with(|c| {
        c.pep.max_vcard_bytes = 2048;
        c.pep.max_private_entries = 3;
    })
    .await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
    let alice = server.login("alice", "a").await;
    let bob = server.login("bob", "b").await;
    (server, alice, bob)
}

async fn vcard_of(c: &mut Client, to: &str) -> Element {
    c.iq(&format!(
        "<iq type='get' to='{to}'><vCard xmlns='{VCARD}'/></iq>"
    ))
    .await
}

fn photo_binval(r: &Element) -> Option<String> {
    r.child("vCard", VCARD)?
        .child("PHOTO", VCARD)?
        .child_text("BINVAL", VCARD)
}

async fn items(c: &mut Client, owner: &str, node: &str) -> Vec<(String, Element)> {
    let r = c
        .iq(&format!(
            "<iq type='get' to='{owner}'><pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    r.child("pubsub", PUBSUB)
        .and_then(|p| p.child("items", PUBSUB))
        .expect("items")
        .elements()
        .map(|i| {
            (
                i.attr("id").unwrap_or("").to_string(),
                i.first_element().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcards_are_set_read_and_bounded() {
    let (server, mut alice, mut bob) = start().await;
    // Nothing stored yet: an empty vCard for the owner, an error for others.
    let r = vcard_of(&mut alice, "alice@localhost").await;
    assert_eq!(
        r.child("vCard", VCARD).map(|v| v.elements().count()),
        Some(0)
    );
    assert_eq!(
        condition(&vcard_of(&mut bob, "alice@localhost").await),
        "item-not-found"
    );

    let r = alice
        .iq("<iq type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN><NICKNAME>al</NICKNAME></vCard></iq>")
        .await;
    assert_result(&r);
    let r = vcard_of(&mut bob, "alice@localhost").await;
    assert_eq!(
        r.child("vCard", VCARD)
            .and_then(|v| v.child_text("FN", VCARD))
            .as_deref(),
        Some("Alice")
    );
    // Only the owner sets it, and within the size limit.
    let r = bob
        .iq("<iq type='set' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>")
        .await;
    assert_eq!(condition(&r), "forbidden");
    let big = format!(
        "<iq type='set'><vCard xmlns='vcard-temp'><DESC>{}</DESC></vCard></iq>",
        "x".repeat(3000)
    );
    assert_eq!(condition(&alice.iq(&big).await), "not-acceptable");
    let r = vcard_of(&mut alice, "alice@localhost").await;
    assert_eq!(
        r.child("vCard", VCARD)
            .and_then(|v| v.child_text("FN", VCARD))
            .as_deref(),
        Some("Alice"),
        "a refused vCard changes nothing"
    );
    // Removing the account removes the vCard.
    assert!(
        server
            .ctx()
            .storage
            .remove_account(&xmppd::addr::parse_bare("alice@localhost").unwrap())
            .await
            .unwrap()
    );
    assert_eq!(
        server
            .ctx()
            .storage
            .profiles
            .vcard("alice@localhost")
            .await
            .unwrap(),
        None
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatar_in_pep_shows_in_the_vcard_and_back() {
    let (server, mut alice, mut bob) = start().await;
    let image = b"\x89PNG fake image bytes".to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let id = sha1_hex(&image);

    // XEP-0084 publish: data first, then metadata.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='urn:xmpp:avatar:data'>\
             <item id='{id}'><data xmlns='urn:xmpp:avatar:data'>{b64}</data></item></publish></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='urn:xmpp:avatar:metadata'>\
             <item id='{id}'><metadata xmlns='urn:xmpp:avatar:metadata'>\
             <info id='{id}' bytes='{}' type='image/png'/></metadata></item></publish></pubsub></iq>",
            image.len()
        ))
        .await;
    assert_result(&r);
    let r = vcard_of(&mut bob, "alice@localhost").await;
    assert_eq!(photo_binval(&r).as_deref(), Some(b64.as_str()), "{r:?}");
    let photo_type = r
        .child("vCard", VCARD)
        .and_then(|v| v.child("PHOTO", VCARD))
        .and_then(|p| p.child_text("TYPE", VCARD));
    assert_eq!(photo_type.as_deref(), Some("image/png"));

    // Disabling the avatar in PEP removes the photo.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='urn:xmpp:avatar:metadata'>\
             <item id='none'><metadata xmlns='urn:xmpp:avatar:metadata'/></item></publish></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    assert_eq!(
        photo_binval(&vcard_of(&mut bob, "alice@localhost").await),
        None
    );

    // The other way: a vCard photo from a vCard-only client becomes the PEP avatar.
    let other = b"GIF89a other image".to_vec();
    let other_b64 = base64::engine::general_purpose::STANDARD.encode(&other);
    let other_id = sha1_hex(&other);
    let r = bob
        .iq(&format!(
            "<iq type='set'><vCard xmlns='vcard-temp'><FN>Bob</FN>\
             <PHOTO><TYPE>image/gif</TYPE><BINVAL>{other_b64}</BINVAL></PHOTO></vCard></iq>"
        ))
        .await;
    assert_result(&r);
    let meta = items(&mut bob, "bob@localhost", "urn:xmpp:avatar:metadata").await;
    assert_eq!(meta.len(), 1, "{meta:?}");
    let info = meta[0]
        .1
        .child("info", "urn:xmpp:avatar:metadata")
        .expect("info");
    assert_eq!(info.attr("id"), Some(other_id.as_str()));
    assert_eq!(info.attr("type"), Some("image/gif"));
    assert_eq!(info.attr("bytes"), Some(other.len().to_string().as_str()));
    let data = items(&mut bob, "bob@localhost", "urn:xmpp:avatar:data").await;
    assert_eq!(data[0].0, other_id);
    assert_eq!(data[0].1.text(), other_b64);
    server.stop().await;
}

async fn private_get(c: &mut Client, name: &str, ns: &str) -> Element {
    let r = c
        .iq(&format!(
            "<iq type='get'><query xmlns='{PRIVATE}'><{name} xmlns='{ns}'/></query></iq>"
        ))
        .await;
    assert_result(&r);
    r.child("query", PRIVATE)
        .and_then(|q| q.first_element())
        .cloned()
        .expect("stored element")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_storage_keeps_elements_per_namespace() {
    let (server, mut alice, mut bob) = start().await;
    let r = alice
        .iq("<iq type='set'><query xmlns='jabber:iq:private'><prefs xmlns='urn:test:a'><x>1</x></prefs></query></iq>")
        .await;
    assert_result(&r);
    let got = private_get(&mut alice, "prefs", "urn:test:a").await;
    assert_eq!(got.child_text("x", "urn:test:a").as_deref(), Some("1"));
    // Unknown: the empty element comes back.
    let got = private_get(&mut alice, "prefs", "urn:test:b").await;
    assert!(got.is("prefs", "urn:test:b") && got.elements().count() == 0);
    // Nobody else reads it.
    let r = bob
        .iq("<iq type='get' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:test:a'/></query></iq>")
        .await;
    assert_eq!(condition(&r), "forbidden");
    // Reserved namespaces and the entry limit.
    let r = alice
        .iq("<iq type='set'><query xmlns='jabber:iq:private'><query xmlns='jabber:iq:roster'/></query></iq>")
        .await;
    assert_eq!(condition(&r), "not-acceptable");
    for ns in ["urn:test:c", "urn:test:d"] {
        let r = alice
            .iq(&format!(
                "<iq type='set'><query xmlns='jabber:iq:private'><p xmlns='{ns}'/></query></iq>"
            ))
            .await;
        assert_result(&r);
    }
    let r = alice
        .iq("<iq type='set'><query xmlns='jabber:iq:private'><p xmlns='urn:test:e'/></query></iq>")
        .await;
    assert_eq!(condition(&r), "resource-constraint");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_convert_between_xep_0402_and_xep_0048() {
    let (server, mut alice, _bob) = start().await;
    // A XEP-0402 client adds a bookmark.
    let r = alice
        .iq(&format!(
            "<iq type='set'><pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS}'>\
             <item id='room@conference.localhost'><conference xmlns='{BOOKMARKS}' name='Room' autojoin='true'>\
             <nick>al</nick></conference></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#send_last_published_item'><value>never</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field>\
             </x></publish-options></pubsub></iq>"
        ))
        .await;
    assert_result(&r);
    // A XEP-0048 client sees it in private storage.
    let storage = private_get(&mut alice, "storage", LEGACY).await;
    let confs: Vec<&Element> = storage
        .elements()
        .filter(|c| c.name == "conference")
        .collect();
    assert_eq!(confs.len(), 1, "{storage:?}");
    assert_eq!(confs[0].attr("jid"), Some("room@conference.localhost"));
    assert_eq!(confs[0].attr("name"), Some("Room"));
    assert_eq!(confs[0].attr("autojoin"), Some("true"));
    assert_eq!(confs[0].child_text("nick", LEGACY).as_deref(), Some("al"));

    // The XEP-0048 client replaces the list: one kept, one new, and a URL.
    let r = alice
        .iq(&format!(
            "<iq type='set'><query xmlns='{PRIVATE}'><storage xmlns='{LEGACY}'>\
             <conference jid='other@conference.localhost' name='Other' autojoin='false'/>\
             <url name='site' url='https://example.org/'/>\
             </storage></query></iq>"
        ))
        .await;
    assert_result(&r);
    let pep = items(&mut alice, "alice@localhost", BOOKMARKS).await;
    let ids: Vec<&str> = pep.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["other@conference.localhost"],
        "the dropped one is retracted"
    );
    assert_eq!(pep[0].1.attr("name"), Some("Other"));
    assert!(pep[0].1.is("conference", BOOKMARKS));
    // The legacy view keeps the URL next to the converted conferences.
    let storage = private_get(&mut alice, "storage", LEGACY).await;
    assert!(storage.elements().any(|c| c.name == "url"), "{storage:?}");
    assert_eq!(
        storage
            .elements()
            .filter(|c| c.name == "conference")
            .filter_map(|c| c.attr("jid"))
            .collect::<Vec<_>>(),
        ["other@conference.localhost"]
    );
    server.stop().await;
}

fn photo_in(p: &Element) -> Option<String> {
    p.child("x", "vcard-temp:x:update")
        .and_then(|x| x.child("photo", "vcard-temp:x:update"))
        .map(|ph| ph.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photo_hash_is_kept_right_in_presence() {
    let (server, mut alice, mut bob) = start().await;
    let storage = &server.ctx().storage;
    for (user, contact) in [("alice", "bob"), ("bob", "alice")] {
        let item = xmppd::storage::RosterItem {
            subscription: xmppd::storage::Subscription::Both,
            ..xmppd::storage::RosterItem::new(
                xmppd::addr::parse_bare(&format!("{contact}@localhost")).unwrap(),
            )
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
    alice.available().await;
    bob.available().await;
    let from_alice =
        |e: &Element| e.name == "presence" && e.attr("from") == Some("alice@localhost/a");
    // No vCard yet: presence goes as the client sent it.
    let p = bob.recv_until(from_alice).await;
    assert_eq!(photo_in(&p), None);

    // A vCard photo set: alice's presence goes out again with its hash.
    let image = b"an image".to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let r = alice
        .iq(&format!(
            "<iq type='set'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{b64}</BINVAL></PHOTO></vCard></iq>"
        ))
        .await;
    assert_result(&r);
    let p = bob.recv_until(from_alice).await;
    assert_eq!(photo_in(&p), Some(sha1_hex(&image)));

    // A client announcing a stale hash is corrected.
    alice
        .send("<presence><x xmlns='vcard-temp:x:update'><photo>0000</photo></x></presence>")
        .await;
    let p = bob.recv_until(from_alice).await;
    assert_eq!(photo_in(&p), Some(sha1_hex(&image)));
    // A vCard without a photo: the empty hash (no avatar).
    let r = alice
        .iq("<iq type='set'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>")
        .await;
    assert_result(&r);
    let p = bob.recv_until(from_alice).await;
    assert_eq!(photo_in(&p), Some(String::new()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bookmarks_move_to_pep_on_first_read() {
    let (server, mut alice, _bob) = start().await;
    // Stored before XEP-0402 existed here: only in private storage.
    server
        .ctx()
        .storage
        .profiles
        .set_private(
            "alice@localhost",
            "storage:bookmarks\u{1f}storage",
            Some("<storage xmlns='storage:bookmarks'><conference jid='old@conference.localhost' autojoin='true'/></storage>"),
            10,
        )
        .await
        .unwrap();
    let pep = items(&mut alice, "alice@localhost", BOOKMARKS).await;
    assert_eq!(pep.len(), 1, "{pep:?}");
    assert_eq!(pep[0].0, "old@conference.localhost");
    assert_eq!(pep[0].1.attr("autojoin"), Some("true"));
    server.stop().await;
}
