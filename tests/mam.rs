//! XEP-0313 Message Archive Management over real sockets: paging a 1,000-message archive
//! both ways, filters, ids, stanza-id stamping, preferences, retention and restarts.

mod support;

use support::{Client, TestServer};
use xmppd::modules::mam::stamp;
use xmppd::storage::NewArchived;
use xmppd::xml::Element;

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const SID: &str = "urn:xmpp:sid:0";
const FORWARD: &str = "urn:xmpp:forward:0";
const CLIENT: &str = "jabber:client";

/// First prefilled message: 2024-01-01T00:00:00Z; one a second after that.
const BASE: u64 = 1_704_067_200_000_000;

struct Answer {
    results: Vec<Element>,
    iq: Element,
}

impl Answer {
    fn fin(&self) -> &Element {
        self.iq.child("fin", MAM).expect("fin")
    }
    fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }
    fn set(&self) -> &Element {
        self.fin().child("set", RSM).expect("rsm set")
    }
    fn first(&self) -> Option<String> {
        self.set().child_text("first", RSM)
    }
    fn last(&self) -> Option<String> {
        self.set().child_text("last", RSM)
    }
    /// The forwarded messages' ids (test messages carry id='m<i>').
    fn ids(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| forwarded(m).attr("id").unwrap_or("").to_string())
            .collect()
    }
    fn uids(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| {
                m.child("result", MAM)
                    .unwrap()
                    .attr("id")
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
    fn error(&self) -> Option<String> {
        (self.iq.attr("type") == Some("error")).then(|| {
            self.iq
                .child("error", CLIENT)
                .and_then(|e| e.first_element())
                .map(|c| c.name.clone())
                .unwrap_or_default()
        })
    }
}

fn forwarded(result_msg: &Element) -> &Element {
    result_msg
        .child("result", MAM)
        .and_then(|r| r.child("forwarded", FORWARD))
        .and_then(|f| f.child("message", CLIENT))
        .expect("forwarded message")
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    x
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='{RSM}'>{inner}</set>")
}

/// Sends a MAM query and collects the result messages that precede the iq answer.
async fn query(c: &mut Client, to: Option<&str>, inner: &str) -> Answer {
    let id = c.new_id();
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    c.send(&format!(
        "<iq type='set' id='{id}'{to}><query xmlns='{MAM}' queryid='q-{id}'>{inner}</query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    loop {
        let el = c
            .recv_until(|e| {
                (e.name == "iq" && e.attr("id") == Some(id.as_str()))
                    || (e.name == "message" && e.has_child("result", MAM))
            })
            .await;
        if el.name == "iq" {
            return Answer { results, iq: el };
        }
        let r = el.child("result", MAM).unwrap();
        assert_eq!(r.attr("queryid"), Some(format!("q-{id}").as_str()));
        assert_eq!(el.attr("to"), Some(c.jid.as_str()));
        results.push(el);
    }
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Fills alice's archive with m0..m999, one a second from BASE, alternately with bob and
/// carol.
async fn prefill(server: &TestServer) {
    let stanzas: Vec<(String, String)> = (0..1000)
        .map(|i| {
            let with = if i % 2 == 0 {
                "bob@localhost/b"
            } else {
                "carol@localhost/c"
            };
            let xml = format!(
                "<message from='{with}' to='alice@localhost/a' type='chat' id='m{i}'><body>n{i}</body></message>"
            );
            (with.to_string(), xml)
        })
        .collect();
    let msgs: Vec<NewArchived> = stanzas
        .iter()
        .enumerate()
        .map(|(i, (with, xml))| NewArchived {
            with,
            stanza: xml.as_str().into(),
            micros: BASE + i as u64 * 1_000_000,
        })
        .collect();
    let storage = &server.handle.as_ref().unwrap().ctx.storage;
    storage
        .archive
        .append_many(&j("alice@localhost"), &msgs)
        .await
        .unwrap();
}

async fn users(server: &TestServer) {
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_a_thousand_messages_forwards_and_backwards() {
    let server = TestServer::start().await;
    users(&server).await;
    prefill(&server).await;
    let mut alice = server.login("alice", "a").await;

    // Forwards, 100 at a time, with RSM after.
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let set = match &after {
            None => rsm("<max>100</max>"),
            Some(a) => rsm(&format!("<max>100</max><after>{a}</after>")),
        };
        let page = query(&mut alice, None, &set).await;
        assert_eq!(page.error(), None);
        pages += 1;
        if pages == 1 {
            let first = page.set().child("first", RSM).unwrap();
            assert_eq!(first.attr("index"), Some("0"));
            assert_eq!(page.set().child_text("count", RSM).as_deref(), Some("1000"));
        }
        assert_eq!(page.first(), page.uids().first().cloned());
        assert_eq!(page.last(), page.uids().last().cloned());
        got.extend(page.ids());
        after = page.last();
        if page.complete() {
            break;
        }
        assert!(pages < 20, "paging never completed");
    }
    assert_eq!(got, names(0..1000));
    // The 10th page is complete because nothing follows it.
    assert_eq!(pages, 10);

    // Backwards from the end: <before/> then <before>first</before>.
    let mut got: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let set = match &before {
            None => rsm("<max>100</max><before/>"),
            Some(b) => rsm(&format!("<max>100</max><before>{b}</before>")),
        };
        let page = query(&mut alice, None, &set).await;
        pages += 1;
        if pages == 1 {
            // The last page, in chronological order.
            assert_eq!(page.ids(), names(900..1000));
            let first = page.set().child("first", RSM).unwrap();
            assert_eq!(first.attr("index"), Some("900"));
        }
        let mut ids = page.ids();
        ids.extend(got);
        got = ids;
        before = page.first();
        if page.complete() {
            break;
        }
        assert!(pages < 20, "paging never completed");
    }
    assert_eq!(got, names(0..1000));
    assert_eq!(pages, 10);

    // Result messages carry the original, a delay stamp and the query's UID.
    let page = query(&mut alice, None, &rsm("<max>1</max>")).await;
    let m = &page.results[0];
    assert_eq!(m.attr("from"), Some("alice@localhost"));
    let fwd = m
        .child("result", MAM)
        .unwrap()
        .child("forwarded", FORWARD)
        .unwrap();
    let delay = fwd.child("delay", "urn:xmpp:delay").unwrap();
    assert_eq!(delay.attr("stamp"), Some("2024-01-01T00:00:00.000000Z"));
    assert_eq!(
        forwarded(m).child_text("body", CLIENT).as_deref(),
        Some("n0")
    );
    assert!(!page.complete());

    // No RSM: the server's default page, not the whole archive.
    let page = query(&mut alice, None, "").await;
    assert_eq!(page.ids(), names(0..50));
    assert!(!page.complete());

    // A count-only request.
    let page = query(&mut alice, None, &rsm("<max>0</max>")).await;
    assert!(page.results.is_empty());
    assert_eq!(page.set().child_text("count", RSM).as_deref(), Some("1000"));
    assert_eq!(page.first(), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_with_time_and_ids() {
    let server = TestServer::start().await;
    users(&server).await;
    prefill(&server).await;
    let mut alice = server.login("alice", "a").await;

    // with: a bare JID matches the contact's resources; 500 of them, two pages of 250.
    let with_bob = form(&[("with", "bob@localhost")]);
    let p1 = query(
        &mut alice,
        None,
        &format!("{with_bob}{}", rsm("<max>300</max>")),
    )
    .await;
    assert_eq!(p1.results.len(), 250, "the server caps pages at 250");
    assert!(!p1.complete());
    assert!(
        p1.results
            .iter()
            .all(|m| forwarded(m).attr("from") == Some("bob@localhost/b"))
    );
    let p2 = query(
        &mut alice,
        None,
        &format!(
            "{with_bob}{}",
            rsm(&format!(
                "<max>250</max><after>{}</after>",
                p1.last().unwrap()
            ))
        ),
    )
    .await;
    assert_eq!(p2.results.len(), 250);
    assert!(p2.complete());
    assert_eq!(p2.ids().last().map(String::as_str), Some("m998"));
    // No count for filtered queries (it would need a scan).
    assert!(p2.set().child("count", RSM).is_none());
    // A full JID matches only that resource; the last page of carol's.
    let carol_last = query(
        &mut alice,
        None,
        &format!(
            "{}{}",
            form(&[("with", "carol@localhost/c")]),
            rsm("<max>3</max><before/>")
        ),
    )
    .await;
    assert_eq!(carol_last.ids(), ["m995", "m997", "m999"]);
    let nobody = query(
        &mut alice,
        None,
        &form(&[("with", "carol@localhost/other")]),
    )
    .await;
    assert!(nobody.results.is_empty() && nobody.complete());

    // Time: start and end are inclusive.
    let start = stamp(BASE + 100 * 1_000_000);
    let end = stamp(BASE + 199 * 1_000_000);
    let window = query(
        &mut alice,
        None,
        &format!(
            "{}{}",
            form(&[("start", &start), ("end", &end)]),
            rsm("<max>250</max>")
        ),
    )
    .await;
    assert_eq!(window.ids(), names(100..200));
    assert!(window.complete());
    // Whole-second stamps with an offset work too.
    let window = query(
        &mut alice,
        None,
        &form(&[
            ("start", "2024-01-01T01:16:30+01:00"),
            ("with", "bob@localhost"),
        ]),
    )
    .await;
    assert_eq!(window.ids()[0], "m990");
    assert_eq!(window.ids().len(), 5);

    // ids, after-id/before-id, flip-page.
    let all = query(&mut alice, None, &rsm("<max>20</max>")).await;
    let uid = all.uids();
    let ids_form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='ids'><value>{}</value><value>{}</value></field></x>",
        uid[7], uid[3]
    );
    let picked = query(&mut alice, None, &ids_form).await;
    assert_eq!(picked.ids(), ["m3", "m7"]);
    assert!(picked.complete());
    let between = query(
        &mut alice,
        None,
        &form(&[("after-id", &uid[3]), ("before-id", &uid[8])]),
    )
    .await;
    assert_eq!(between.ids(), names(4..8));
    let flipped = query(
        &mut alice,
        None,
        &format!(
            "{}{}<flip-page/>",
            form(&[("after-id", &uid[3])]),
            rsm("<max>3</max>")
        ),
    )
    .await;
    assert_eq!(flipped.ids(), ["m6", "m5", "m4"]);

    // Unknown ids, unknown fields, malformed values.
    let err = query(&mut alice, None, &rsm("<after>no-such-id</after>")).await;
    assert_eq!(err.error().as_deref(), Some("item-not-found"));
    let err = query(&mut alice, None, &form(&[("before-id", "nope")])).await;
    assert_eq!(err.error().as_deref(), Some("item-not-found"));
    let err = query(&mut alice, None, &form(&[("fulltext", "hello")])).await;
    assert_eq!(err.error().as_deref(), Some("feature-not-implemented"));
    let err = query(&mut alice, None, &form(&[("start", "last tuesday")])).await;
    assert_eq!(err.error().as_deref(), Some("bad-request"));
    assert!(err.results.is_empty());

    // Only the owner may query an archive.
    let mut bob = server.login("bob", "b").await;
    let err = query(&mut bob, Some("alice@localhost"), "").await;
    assert_eq!(err.error().as_deref(), Some("forbidden"));
    assert!(err.results.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_metadata_and_disco() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "a").await;
    let reply = alice
        .iq("<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    let x = reply
        .child("query", MAM)
        .and_then(|q| q.child("x", "jabber:x:data"))
        .unwrap();
    let vars: Vec<_> = x.elements().filter_map(|f| f.attr("var")).collect();
    for v in [
        "FORM_TYPE",
        "with",
        "start",
        "end",
        "before-id",
        "after-id",
        "ids",
    ] {
        assert!(vars.contains(&v), "{v} missing from {vars:?}");
    }
    let empty = alice
        .iq("<iq type='get'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    assert_eq!(empty.child("metadata", MAM).unwrap().elements().count(), 0);
    prefill(&server).await;
    let meta = alice
        .iq("<iq type='get'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    let meta = meta.child("metadata", MAM).unwrap();
    let start = meta.child("start", MAM).unwrap();
    assert_eq!(start.attr("timestamp"), Some("2024-01-01T00:00:00.000000Z"));
    let end = meta.child("end", MAM).unwrap();
    assert_eq!(
        end.attr("timestamp"),
        Some(stamp(BASE + 999_000_000).as_str())
    );

    // Advertised on the account, not on the server.
    let features = |reply: &Element| -> Vec<String> {
        reply
            .child("query", "http://jabber.org/protocol/disco#info")
            .unwrap()
            .elements()
            .filter_map(|f| f.attr("var").map(str::to_string))
            .collect()
    };
    let account = alice
        .iq("<iq type='get' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let account = features(&account);
    assert!(account.contains(&MAM.to_string()), "{account:?}");
    assert!(account.contains(&"urn:xmpp:mam:2#extended".to_string()));
    // XEP-0359 §4: the account's archive stamps <stanza-id by='the account'/>.
    assert!(account.contains(&SID.to_string()), "{account:?}");
    let host = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let host = features(&host);
    assert!(!host.contains(&MAM.to_string()), "{host:?}");
    // Nothing is stamped by the server itself.
    assert!(!host.contains(&SID.to_string()), "{host:?}");
    assert!(host.contains(&"urn:xmpp:carbons:2".to_string()));
    assert!(host.contains(&"urn:xmpp:blocking".to_string()));
    server.stop().await;
}

fn stanza_id<'a>(m: &'a Element, by: &str) -> Option<&'a str> {
    m.elements()
        .find(|e| e.is("stanza-id", SID) && e.attr("by") == Some(by))
        .and_then(|e| e.attr("id"))
}

/// alice (resource `a`) and bob (resource `b`, available), logged in.
async fn alice_to_available_bob(server: &TestServer) -> (Client, Client) {
    let alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    bob.available().await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_are_archived_on_both_sides_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    users(&server).await;
    let (mut alice, mut bob) = alice_to_available_bob(&server).await;

    // A forged stanza-id claiming bob's archive is replaced by the real one.
    alice
        .send(
            "<message to='bob@localhost/b' type='chat' id='live1'><body>hello</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='orig-1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/></message>",
        )
        .await;
    let got = bob.recv_until(|e| e.name == "message").await;
    let sid = stanza_id(&got, "bob@localhost")
        .expect("stanza-id")
        .to_string();
    assert_ne!(sid, "forged");
    assert_eq!(
        got.elements().filter(|e| e.is("stanza-id", SID)).count(),
        1,
        "{got:?}"
    );
    // Not archived: chat states alone; a no-store hint.
    alice
        .send("<message to='bob@localhost/b' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert!(stanza_id(&m, "bob@localhost").is_none());
    alice
        .send("<message to='bob@localhost/b' type='chat' id='ns'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>")
        .await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert!(stanza_id(&m, "bob@localhost").is_none());
    // To the bare JID while bob is offline: archived, then stored offline.
    drop(bob);
    support::wait_until("bob's session to end", || {
        server
            .ctx()
            .sessions
            .resources(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .is_empty()
    })
    .await;
    alice
        .send("<message to='bob@localhost' type='chat' id='off1'><body>later</body></message>")
        .await;
    alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;

    let mine = query(&mut alice, None, "").await;
    assert_eq!(mine.ids(), ["live1", "off1"]);
    let first = forwarded(&mine.results[0]);
    assert_eq!(first.attr("to"), Some("bob@localhost/b"));
    assert!(first.has_child("origin-id", SID));

    drop(alice);
    server.restart().await;

    let mut bob = server.login("bob", "b2").await;
    bob.send("<presence/>").await;
    let offline = bob
        .recv_until(|e| e.name == "message" && e.attr("id") == Some("off1"))
        .await;
    let off_sid = stanza_id(&offline, "bob@localhost").expect("offline copy has a stanza-id");
    let theirs = query(&mut bob, None, "").await;
    assert_eq!(theirs.ids(), ["live1", "off1"]);
    assert_eq!(theirs.uids(), [sid.as_str(), off_sid]);
    assert_eq!(
        forwarded(&theirs.results[0]).attr("from"),
        Some("alice@localhost/a")
    );
    server.stop().await;
}

/// The format byte of each message stored in `user`'s archive, read from the archive's
/// fjall keyspace of a stopped server (docs/storage.md: 2 a record, 3 a reference to the
/// record in another archive, 4 a chunk of several messages).
fn stored_formats(data_dir: &std::path::Path, user: &str) -> Vec<u8> {
    let db = fjall::Database::builder(data_dir.join("db").join("archive"))
        .open()
        .unwrap();
    let archive = db
        .keyspace("archive", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let prefix = format!("{user}\0");
    let mut formats = Vec::new();
    for entry in archive.prefix(prefix.as_bytes()) {
        let value = entry.into_inner().unwrap().1;
        if value[0] != 4 {
            formats.push(value[0]);
            continue;
        }
        // A chunk: a count, then per message its 16-byte position, length and value.
        let mut at = 1;
        for _ in 0..varint(&value, &mut at) {
            at += 16;
            let len = varint(&value, &mut at);
            formats.push(value[at]);
            at += len;
        }
    }
    formats
}

fn varint(bytes: &[u8], at: &mut usize) -> usize {
    let mut n = 0;
    for shift in (0..35).step_by(7) {
        let b = bytes[*at];
        *at += 1;
        n |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    n
}

/// A message between two local users is stored once: the recipient's archive holds a
/// reference to the sender's record, when the recipient's copy is the same stanza. When
/// the hooks changed it (a stanza-id only this server may add, stripped on the way in),
/// each archive keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_between_local_users_is_stored_once_unless_the_copies_differ() {
    let mut server = TestServer::start().await;
    users(&server).await;
    let (mut alice, mut bob) = alice_to_available_bob(&server).await;
    alice
        .send("<message to='bob@localhost' type='chat' id='same'><body>hi</body></message>")
        .await;
    bob.recv_until(|e| e.name == "message").await;
    alice
        .send(
            "<message to='bob@localhost' type='chat' id='forged'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='x'/></message>",
        )
        .await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(m.attr("id"), Some("forged"));
    let theirs = query(&mut bob, None, "").await;
    assert_eq!(theirs.ids(), ["same", "forged"]);
    assert!(
        theirs.uids().iter().all(|id| id != "x"),
        "the forged stanza-id is not bob's"
    );
    assert_eq!(query(&mut alice, None, "").await.ids(), ["same", "forged"]);
    drop((alice, bob));
    server.handle.take().unwrap().shutdown().await;
    assert_eq!(stored_formats(server.dir.path(), "alice@localhost"), [2, 2]);
    assert_eq!(stored_formats(server.dir.path(), "bob@localhost"), [3, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_between_own_resources_are_archived_once() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut one = server.login("alice", "one").await;
    let mut two = server.login("alice", "two").await;
    two.available().await;
    one.send(
        "<message to='alice@localhost/two' type='chat' id='self1'><body>note</body></message>",
    )
    .await;
    let m = two.recv_until(|e| e.name == "message").await;
    let sid = stanza_id(&m, "alice@localhost")
        .expect("stanza-id")
        .to_string();
    let all = query(&mut one, None, "").await;
    assert_eq!(all.ids(), ["self1"]);
    assert_eq!(all.uids(), [sid]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_decide_what_is_archived_and_persist() {
    let mut server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "a").await;
    alice.available().await;
    let prefs = alice
        .iq("<iq type='get'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    assert_eq!(
        prefs.child("prefs", MAM).unwrap().attr("default"),
        Some("always")
    );
    let set = alice
        .iq(
            "<iq type='set'><prefs xmlns='urn:xmpp:mam:2' default='never'>\
             <always><jid>Carol@Localhost</jid></always><never/></prefs></iq>",
        )
        .await;
    let p = set.child("prefs", MAM).unwrap();
    assert_eq!(p.attr("default"), Some("never"));
    assert_eq!(
        p.child("always", MAM)
            .unwrap()
            .child_text("jid", MAM)
            .as_deref(),
        Some("carol@localhost")
    );

    let mut bob = server.login("bob", "b").await;
    let mut carol = server.login("carol", "c").await;
    bob.send("<message to='alice@localhost' type='chat' id='fb'><body>from bob</body></message>")
        .await;
    carol
        .send("<message to='alice@localhost' type='chat' id='fc'><body>from carol</body></message>")
        .await;
    alice.recv_until(|e| e.attr("id") == Some("fb")).await;
    alice.recv_until(|e| e.attr("id") == Some("fc")).await;
    assert_eq!(query(&mut alice, None, "").await.ids(), ["fc"]);

    drop((alice, bob, carol));
    server.restart().await;
    let mut alice = server.login("alice", "a").await;
    let prefs = alice
        .iq("<iq type='get'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        .await;
    assert_eq!(
        prefs.child("prefs", MAM).unwrap().attr("default"),
        Some("never")
    );
    // 'roster': bob is not in alice's roster, so nothing of his is kept.
    alice
        .iq("<iq type='set'><prefs xmlns='urn:xmpp:mam:2' default='roster'/></iq>")
        .await;
    alice.available().await;
    let mut bob = server.login("bob", "b").await;
    bob.send("<message to='alice@localhost' type='chat' id='fb2'><body>again</body></message>")
        .await;
    alice.recv_until(|e| e.attr("id") == Some("fb2")).await;
    assert_eq!(query(&mut alice, None, "").await.ids(), ["fc"]);
    server.stop().await;
}

/// The module keeps the preferences of the users it archived for lately: a change, or the
/// account's removal, must take effect on the next message all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preference_changes_apply_to_the_next_message() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "a").await;
    alice.available().await;
    let mut bob = server.login("bob", "b").await;
    let mut exchange = async |alice: &mut Client, id: &str| {
        bob.send(&format!(
            "<message to='alice@localhost' type='chat' id='{id}'><body>x</body></message>"
        ))
        .await;
        alice.recv_until(|e| e.attr("id") == Some(id)).await;
    };
    // Archived under the default ('always'), which puts alice's preferences in the cache.
    exchange(&mut alice, "p1").await;
    alice
        .iq("<iq type='set'><prefs xmlns='urn:xmpp:mam:2' default='never'/></iq>")
        .await;
    exchange(&mut alice, "p2").await;
    alice
        .iq(
            "<iq type='set'><prefs xmlns='urn:xmpp:mam:2' default='always'>\
             <never><jid>bob@localhost</jid></never></prefs></iq>",
        )
        .await;
    exchange(&mut alice, "p3").await;
    alice
        .iq("<iq type='set'><prefs xmlns='urn:xmpp:mam:2' default='always'><never/></prefs></iq>")
        .await;
    exchange(&mut alice, "p4").await;
    assert_eq!(query(&mut alice, None, "").await.ids(), ["p1", "p4"]);

    // Removed with its 'never' and made again: the new account archives by default.
    alice
        .iq("<iq type='set'><prefs xmlns='urn:xmpp:mam:2' default='never'/></iq>")
        .await;
    exchange(&mut alice, "p5").await;
    drop(alice);
    let ctx = server.ctx().clone();
    assert!(
        ctx.storage
            .remove_account(&j("alice@localhost"))
            .await
            .unwrap()
    );
    ctx.registry
        .account_removed(&ctx, &j("alice@localhost"))
        .await;
    server.add_user("alice", "password").await;
    let mut alice = server.login("alice", "a").await;
    alice.available().await;
    exchange(&mut alice, "p6").await;
    assert_eq!(query(&mut alice, None, "").await.ids(), ["p6"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_hides_and_prunes_old_messages() {
    let server = TestServer::start_with(|c| {
        c.archive.retention_days = 1;
        c.archive.prune_interval_secs = 1;
    })
    .await;
    users(&server).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let storage = server.handle.as_ref().unwrap().ctx.storage.clone();
    storage
        .archive
        .append_many(
            &j("alice@localhost"),
            &[
                NewArchived {
                    with: "bob@localhost",
                    stanza: "<message id='old'><body>old</body></message>".into(),
                    micros: now - 3 * 86_400_000_000,
                },
                NewArchived {
                    with: "bob@localhost",
                    stanza: "<message id='new'><body>new</body></message>".into(),
                    micros: now - 3_600_000_000,
                },
            ],
        )
        .await
        .unwrap();
    let mut alice = server.login("alice", "a").await;
    // Hidden at once, whether or not the pruning pass has run yet.
    assert_eq!(query(&mut alice, None, "").await.ids(), ["new"]);
    // The background pass deletes it, and only it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while storage.archive.count(&j("alice@localhost")).await.unwrap() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired message not pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    alice.available().await;
    let mut bob = server.login("bob", "b").await;
    bob.send("<message to='alice@localhost' type='chat' id='x'><body>x</body></message>")
        .await;
    alice.recv_until(|e| e.attr("id") == Some("x")).await;
    assert_eq!(
        storage.archive.count(&j("alice@localhost")).await.unwrap(),
        2
    );
    assert_eq!(query(&mut alice, None, "").await.ids(), ["new", "x"]);
    server.stop().await;
}
