//! One behavioural suite run against every storage backend, plus sled-only persistence
//! checks.

use tempfile::TempDir;
use xmppd::sasl::credentials::{ScramCredentials, StoredCredentials};

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

fn dom(s: &str) -> xmppd::addr::DomainPart {
    xmppd::addr::parse_domain(s).unwrap()
}

fn jids(l: &[&str]) -> Vec<xmppd::addr::BareJid> {
    l.iter().map(|s| j(s)).collect()
}
use xmppd::storage::{
    ArchiveDefault, ArchivePos, ArchivePrefs, ArchiveQuery, NewArchived, OfflineStoreOutcome,
    PendingSubscription, PresenceContacts, PushRegistration, RoomAffiliation, RoomAffiliationEntry,
    RoomConfig, RoomPmPolicy, RosterItem, Storage, StorageError, StoredRoom, Subscription,
};
use xmppd::storage::{CreateOutcome, NodeRecord, StoredItem};

fn creds(tag: u8) -> StoredCredentials {
    let scram = |len: usize| ScramCredentials {
        salt: vec![tag; 16],
        iterations: 4096,
        stored_key: vec![tag; len],
        server_key: vec![tag.wrapping_add(1); len],
    };
    StoredCredentials {
        sha1: scram(20),
        sha256: scram(32),
    }
}

fn item(jid: &str, sub: Subscription) -> RosterItem {
    RosterItem {
        jid: j(jid),
        name: Some(format!("name of {jid}")),
        subscription: sub,
        ask: false,
        pending_in: false,
        approved: false,
        groups: vec!["Friends".into()],
    }
}

fn pending(from: &str) -> PendingSubscription {
    PendingSubscription {
        from: j(from),
        stanza: Some(format!("<presence from='{from}' type='subscribe'/>")),
    }
}

async fn accounts(s: Storage) {
    let a = &s.accounts;
    assert!(a.create(&j("b@x"), &creds(1)).await.unwrap());
    assert!(
        !a.create(&j("b@x"), &creds(2)).await.unwrap(),
        "second create"
    );
    assert_eq!(
        a.get(&j("b@x")).await.unwrap(),
        Some(creds(1)),
        "create twice kept first"
    );
    assert_eq!(a.get(&j("nobody@x")).await.unwrap(), None);

    assert!(a.set_credentials(&j("b@x"), &creds(3)).await.unwrap());
    assert_eq!(a.get(&j("b@x")).await.unwrap(), Some(creds(3)));
    assert!(!a.set_credentials(&j("nobody@x"), &creds(3)).await.unwrap());
    assert_eq!(
        a.get(&j("nobody@x")).await.unwrap(),
        None,
        "set must not create"
    );

    assert!(a.create(&j("c@x"), &creds(4)).await.unwrap());
    assert!(a.create(&j("a@x"), &creds(5)).await.unwrap());
    assert!(a.create(&j("a@w"), &creds(6)).await.unwrap());
    assert_eq!(a.list().await.unwrap(), jids(&["a@w", "a@x", "b@x", "c@x"]));

    assert!(a.remove(&j("b@x")).await.unwrap());
    assert!(!a.remove(&j("b@x")).await.unwrap());
    assert_eq!(a.get(&j("b@x")).await.unwrap(), None);
    assert_eq!(a.list().await.unwrap(), jids(&["a@w", "a@x", "c@x"]));
    s.flush().await.unwrap();
}

async fn roster(s: Storage) {
    let r = &s.roster;
    let empty = r.roster(&j("u@x")).await.unwrap();
    assert_eq!(empty.version, 0);
    assert!(empty.items.is_empty());

    let v1 = r
        .put_item(&j("u@x"), &item("c@y", Subscription::None))
        .await
        .unwrap();
    let v2 = r
        .put_item(&j("u@x"), &item("a@y", Subscription::To))
        .await
        .unwrap();
    assert!(v1 > 0 && v2 > v1, "{v1} {v2}");
    // Replacing an item is a change too.
    let v3 = r
        .put_item(&j("u@x"), &item("c@y", Subscription::Both))
        .await
        .unwrap();
    assert!(v3 > v2);

    let got = r.roster(&j("u@x")).await.unwrap();
    assert_eq!(got.version, v3);
    assert_eq!(
        got.items,
        [
            item("a@y", Subscription::To),
            item("c@y", Subscription::Both)
        ]
    );
    assert_eq!(
        r.item(&j("u@x"), &j("c@y")).await.unwrap(),
        Some(item("c@y", Subscription::Both))
    );
    assert_eq!(r.item(&j("u@x"), &j("zz@y")).await.unwrap(), None);
    // Another user's roster is separate, including one whose JID extends this one.
    assert_eq!(r.roster(&j("u@xx")).await.unwrap().items, []);
    r.put_item(&j("u@xx"), &item("q@y", Subscription::None))
        .await
        .unwrap();
    assert_eq!(r.roster(&j("u@x")).await.unwrap().items.len(), 2);

    assert_eq!(
        r.remove_item(&j("u@x"), &j("nobody@y")).await.unwrap(),
        None
    );
    assert_eq!(
        r.roster(&j("u@x")).await.unwrap().version,
        v3,
        "no-op must not bump"
    );
    let v4 = r.remove_item(&j("u@x"), &j("a@y")).await.unwrap().unwrap();
    assert!(v4 > v3);
    assert_eq!(r.remove_item(&j("u@x"), &j("a@y")).await.unwrap(), None);
    let got = r.roster(&j("u@x")).await.unwrap();
    assert_eq!((got.version, got.items.len()), (v4, 1));

    // Pending subscriptions.
    assert!(r.pending_in(&j("u@x")).await.unwrap().is_empty());
    r.add_pending_in(&j("u@x"), &pending("p2@y")).await.unwrap();
    r.add_pending_in(&j("u@x"), &pending("p1@y")).await.unwrap();
    r.add_pending_in(&j("u@x"), &pending("p1@y")).await.unwrap();
    r.add_pending_in(&j("u@xx"), &pending("p3@y"))
        .await
        .unwrap();
    assert_eq!(
        r.pending_in(&j("u@x")).await.unwrap(),
        [pending("p1@y"), pending("p2@y")]
    );
    assert!(r.remove_pending_in(&j("u@x"), &j("p1@y")).await.unwrap());
    assert!(!r.remove_pending_in(&j("u@x"), &j("p1@y")).await.unwrap());
    assert_eq!(r.pending_in(&j("u@x")).await.unwrap(), [pending("p2@y")]);
    assert_eq!(
        r.roster(&j("u@x")).await.unwrap().version,
        v4,
        "pending is not roster"
    );

    // remove_user drops items and pending, and the version never goes backwards.
    r.remove_user(&j("u@x")).await.unwrap();
    let got = r.roster(&j("u@x")).await.unwrap();
    assert!(got.items.is_empty());
    assert!(got.version >= v4);
    assert!(r.pending_in(&j("u@x")).await.unwrap().is_empty());
    let v5 = r
        .put_item(&j("u@x"), &item("c@y", Subscription::None))
        .await
        .unwrap();
    assert!(v5 > got.version);
    // The neighbour is untouched.
    assert_eq!(r.roster(&j("u@xx")).await.unwrap().items.len(), 1);
    assert_eq!(r.pending_in(&j("u@xx")).await.unwrap(), [pending("p3@y")]);
}

async fn offline(s: Storage) {
    let o = &s.offline;
    assert_eq!(o.count(&j("u@x")).await.unwrap(), 0);
    assert!(o.list(&j("u@x")).await.unwrap().is_empty());
    for i in 0..3 {
        let out = o
            .push(&j("u@x"), &format!("<message id='{i}'/>"), 3)
            .await
            .unwrap();
        assert_eq!(out, OfflineStoreOutcome::Stored);
    }
    assert_eq!(
        o.push(&j("u@x"), "<message id='over'/>", 3).await.unwrap(),
        OfflineStoreOutcome::QuotaExceeded
    );
    assert_eq!(
        o.push(&j("v@x"), "<message/>", 0).await.unwrap(),
        OfflineStoreOutcome::QuotaExceeded
    );
    assert_eq!(o.count(&j("v@x")).await.unwrap(), 0);
    o.push(&j("u@xx"), "<message id='other'/>", 3)
        .await
        .unwrap();

    let list = o.list(&j("u@x")).await.unwrap();
    assert_eq!(o.count(&j("u@x")).await.unwrap(), 3);
    let stanzas: Vec<&str> = list.iter().map(|m| m.stanza.as_str()).collect();
    assert_eq!(
        stanzas,
        [
            "<message id='0'/>",
            "<message id='1'/>",
            "<message id='2'/>"
        ]
    );
    assert!(list.windows(2).all(|w| w[0].seq < w[1].seq), "{list:?}");
    assert!(list.iter().all(|m| m.stored_at > 1_600_000_000));
    // list does not remove.
    assert_eq!(o.list(&j("u@x")).await.unwrap(), list);

    o.remove_up_to(&j("u@x"), list[1].seq).await.unwrap();
    assert_eq!(o.list(&j("u@x")).await.unwrap(), [list[2].clone()]);
    assert_eq!(o.count(&j("u@x")).await.unwrap(), 1);
    // Room again under the quota; the new seq is above everything before.
    assert_eq!(
        o.push(&j("u@x"), "<message id='3'/>", 3).await.unwrap(),
        OfflineStoreOutcome::Stored
    );
    let list2 = o.list(&j("u@x")).await.unwrap();
    assert_eq!(list2.len(), 2);
    assert!(list2[1].seq > list[2].seq);
    o.remove_up_to(&j("u@x"), 0).await.unwrap();
    assert_eq!(o.count(&j("u@x")).await.unwrap(), 2);

    o.remove_user(&j("u@x")).await.unwrap();
    assert_eq!(o.count(&j("u@x")).await.unwrap(), 0);
    assert!(o.list(&j("u@x")).await.unwrap().is_empty());
    o.push(&j("u@x"), "<message id='4'/>", 3).await.unwrap();
    let after = o.list(&j("u@x")).await.unwrap();
    assert!(after[0].seq > list2[1].seq, "seq must keep increasing");
    // The neighbour is untouched.
    assert_eq!(o.count(&j("u@xx")).await.unwrap(), 1);
    assert_eq!(o.list(&j("u@xx")).await.unwrap().len(), 1);
}

fn reg(jid: &str, node: &str, secret: Option<&str>) -> PushRegistration {
    PushRegistration {
        jid: xmppd::addr::parse(jid).unwrap(),
        node: node.into(),
        publish_options: secret.map(|s| format!("<x xmlns='jabber:x:data'>{s}</x>")),
        include_body: secret.is_some(),
    }
}

async fn push(s: Storage) {
    let p = &s.push;
    assert!(p.list(&j("u@x")).await.unwrap().is_empty());
    assert_eq!(
        p.disable(&j("u@x"), &xmppd::addr::parse("push.y").unwrap(), None)
            .await
            .unwrap(),
        0
    );
    p.enable(&j("u@x"), &reg("push.y", "n2", None))
        .await
        .unwrap();
    p.enable(&j("u@x"), &reg("push.y", "n1", Some("s1")))
        .await
        .unwrap();
    p.enable(&j("u@x"), &reg("a.push.y", "n9", None))
        .await
        .unwrap();
    // A jid that extends another must not be caught by the other's prefix.
    p.enable(&j("u@x"), &reg("push.y.z", "n1", None))
        .await
        .unwrap();
    p.enable(&j("u@xx"), &reg("push.y", "n1", None))
        .await
        .unwrap();
    assert_eq!(
        p.list(&j("u@x")).await.unwrap(),
        [
            reg("a.push.y", "n9", None),
            reg("push.y", "n1", Some("s1")),
            reg("push.y", "n2", None),
            reg("push.y.z", "n1", None),
        ]
    );
    // Same jid and node: replaced (the last publish options win).
    p.enable(&j("u@x"), &reg("push.y", "n1", Some("s2")))
        .await
        .unwrap();
    let list = p.list(&j("u@x")).await.unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[1], reg("push.y", "n1", Some("s2")));

    assert_eq!(
        p.disable(
            &j("u@x"),
            &xmppd::addr::parse("push.y").unwrap(),
            Some("n3")
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        p.disable(
            &j("u@x"),
            &xmppd::addr::parse("push.y").unwrap(),
            Some("n2")
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(p.list(&j("u@x")).await.unwrap().len(), 3);
    p.enable(&j("u@x"), &reg("push.y", "n2", None))
        .await
        .unwrap();
    assert_eq!(
        p.disable(&j("u@x"), &xmppd::addr::parse("push.y").unwrap(), None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        p.list(&j("u@x")).await.unwrap(),
        [reg("a.push.y", "n9", None), reg("push.y.z", "n1", None)]
    );
    // The neighbour is untouched.
    assert_eq!(
        p.list(&j("u@xx")).await.unwrap(),
        [reg("push.y", "n1", None)]
    );
    p.remove_user(&j("u@x")).await.unwrap();
    assert!(p.list(&j("u@x")).await.unwrap().is_empty());
    assert_eq!(p.list(&j("u@xx")).await.unwrap().len(), 1);
    s.flush().await.unwrap();
}

async fn remove_account(s: Storage) {
    s.accounts.create(&j("u@x"), &creds(1)).await.unwrap();
    s.roster
        .put_item(&j("u@x"), &item("c@y", Subscription::Both))
        .await
        .unwrap();
    s.roster
        .add_pending_in(&j("u@x"), &pending("p@y"))
        .await
        .unwrap();
    s.offline.push(&j("u@x"), "<message/>", 10).await.unwrap();
    s.push
        .enable(&j("u@x"), &reg("push.y", "n", None))
        .await
        .unwrap();
    s.pubsub
        .create_node("u@x", "n", &node_rec("open"), 5)
        .await
        .unwrap();
    s.pubsub
        .publish("u@x", "n", &pitem("i", "<x/>"), 5)
        .await
        .unwrap();
    s.profiles.set_vcard("u@x", Some("<v/>")).await.unwrap();
    s.profiles
        .set_private("u@x", "k", Some("<k/>"), 5)
        .await
        .unwrap();
    assert!(s.remove_account(&j("u@x")).await.unwrap());
    assert!(s.pubsub.nodes("u@x").await.unwrap().is_empty());
    assert!(s.pubsub.items("u@x", "n", 5).await.unwrap().is_empty());
    assert_eq!(s.profiles.vcard("u@x").await.unwrap(), None);
    assert_eq!(s.profiles.private("u@x", "k").await.unwrap(), None);
    assert!(s.push.list(&j("u@x")).await.unwrap().is_empty());
    assert_eq!(s.accounts.get(&j("u@x")).await.unwrap(), None);
    assert!(s.roster.roster(&j("u@x")).await.unwrap().items.is_empty());
    assert!(s.roster.pending_in(&j("u@x")).await.unwrap().is_empty());
    assert_eq!(s.offline.count(&j("u@x")).await.unwrap(), 0);
    assert!(!s.remove_account(&j("u@x")).await.unwrap());
}

async fn concurrent_pushes_respect_quota(s: Storage) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.offline.push(&j("u@x"), &format!("m{i}"), 7).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == OfflineStoreOutcome::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 7);
    assert_eq!(s.offline.count(&j("u@x")).await.unwrap(), 7);
    assert_eq!(s.offline.list(&j("u@x")).await.unwrap().len(), 7);
}

fn msg<'a>(with: &'a str, stanza: &str, micros: u64) -> NewArchived<'a> {
    NewArchived {
        with,
        stanza: stanza.into(),
        micros,
    }
}

fn ids(page: &xmppd::storage::ArchivePage) -> Vec<String> {
    page.messages.iter().map(|m| m.stanza.clone()).collect()
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

async fn archive(s: Storage) {
    let a = &s.archive;
    assert_eq!(a.count(&j("u@x")).await.unwrap(), 0);
    let page = a.query(&j("u@x"), &ArchiveQuery::default()).await.unwrap();
    assert!(page.messages.is_empty() && !page.more);
    assert_eq!(a.position(&j("u@x"), "nope").await.unwrap(), None);

    // m0..m9 at 1000, 1010, …; with cycles a@y/r1, b@y, a@y/r2.
    let withs = ["a@y/r1", "b@y", "a@y/r2"];
    let stanzas = names(0..10);
    let mut stamps = Vec::new();
    for (i, st) in stanzas.iter().enumerate() {
        let m = msg(withs[i % 3], st, 1000 + 10 * i as u64);
        stamps.push(a.append(&j("u@x"), m).await.unwrap());
    }
    assert!(stamps.windows(2).all(|w| w[0].pos < w[1].pos));
    let unique: std::collections::HashSet<_> = stamps.iter().map(|s| &s.id).collect();
    assert_eq!(unique.len(), 10);
    assert_eq!(stamps[3].pos.micros, 1030);
    assert_eq!(a.count(&j("u@x")).await.unwrap(), 10);
    // The neighbour whose name extends this one is a different archive.
    a.append(&j("u@xx"), msg("a@y", "other", 1005))
        .await
        .unwrap();

    let all = a.query(&j("u@x"), &ArchiveQuery::default()).await.unwrap();
    assert_eq!((ids(&all), all.more), (names(0..10), false));
    assert_eq!(all.messages[4].id, stamps[4].id);
    assert_eq!(all.messages[4].pos, stamps[4].pos);
    assert_eq!(all.messages[5].with, "a@y/r2");

    let q = |max, from_end| ArchiveQuery {
        max,
        from_end,
        ..ArchiveQuery::default()
    };
    let first = a.query(&j("u@x"), &q(3, false)).await.unwrap();
    assert_eq!((ids(&first), first.more), (names(0..3), true));
    let last = a.query(&j("u@x"), &q(3, true)).await.unwrap();
    assert_eq!((ids(&last), last.more), (names(7..10), true));
    let exact = a.query(&j("u@x"), &q(10, true)).await.unwrap();
    assert_eq!((ids(&exact), exact.more), (names(0..10), false));
    let probe = a.query(&j("u@x"), &q(0, false)).await.unwrap();
    assert!(
        probe.messages.is_empty() && probe.more,
        "max 0 still says more"
    );

    // Paging with positions: after m3 (exclusive) and before m8 (exclusive).
    let mid = ArchiveQuery {
        from: stamps[3].pos.next(),
        to: stamps[8].pos.prev(),
        ..ArchiveQuery::default()
    };
    assert_eq!(ids(&a.query(&j("u@x"), &mid).await.unwrap()), names(4..8));
    let backwards = ArchiveQuery {
        to: stamps[5].pos.prev(),
        max: 2,
        from_end: true,
        ..ArchiveQuery::default()
    };
    let page = a.query(&j("u@x"), &backwards).await.unwrap();
    assert_eq!((ids(&page), page.more), (names(3..5), true));
    let empty = ArchiveQuery {
        from: stamps[5].pos,
        to: stamps[4].pos,
        ..ArchiveQuery::default()
    };
    assert!(
        a.query(&j("u@x"), &empty)
            .await
            .unwrap()
            .messages
            .is_empty()
    );

    // Time window, inclusive at both ends.
    let window = ArchiveQuery {
        from: ArchivePos {
            micros: 1020,
            seq: 0,
        },
        to: ArchivePos {
            micros: 1050,
            seq: u64::MAX,
        },
        ..ArchiveQuery::default()
    };
    assert_eq!(
        ids(&a.query(&j("u@x"), &window).await.unwrap()),
        names(2..6)
    );

    // with: bare matches every resource, full only itself, no prefix matches.
    let with = |w: &str, max, from_end| ArchiveQuery {
        with: Some(w.into()),
        max,
        from_end,
        ..ArchiveQuery::default()
    };
    let a_all = a.query(&j("u@x"), &with("a@y", 50, false)).await.unwrap();
    assert_eq!(ids(&a_all), ["m0", "m2", "m3", "m5", "m6", "m8", "m9"]);
    let r1 = a
        .query(&j("u@x"), &with("a@y/r1", 50, false))
        .await
        .unwrap();
    assert_eq!(ids(&r1), ["m0", "m3", "m6", "m9"]);
    let b_last = a.query(&j("u@x"), &with("b@y", 2, true)).await.unwrap();
    assert_eq!(
        (ids(&b_last), b_last.more),
        (vec!["m4".into(), "m7".into()], true)
    );
    assert!(
        a.query(&j("u@x"), &with("a@yy", 50, false))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let r1_window = ArchiveQuery {
        with: Some("a@y/r1".into()),
        ..window.clone()
    };
    assert_eq!(ids(&a.query(&j("u@x"), &r1_window).await.unwrap()), ["m3"]);

    // Lookups by UID.
    assert_eq!(
        a.position(&j("u@x"), &stamps[6].id).await.unwrap(),
        Some(stamps[6].pos)
    );
    let got = a.get(&j("u@x"), &stamps[6].id).await.unwrap().unwrap();
    assert_eq!((got.stanza.as_str(), got.with.as_str()), ("m6", "a@y/r1"));
    assert_eq!(a.position(&j("u@xx"), &stamps[6].id).await.unwrap(), None);

    // A clock that steps back, and two messages in one microsecond, keep arrival order.
    let back = a.append(&j("u@x"), msg("c@y", "m10", 5)).await.unwrap();
    assert_eq!(back.pos.micros, 1090);
    let same = a.append(&j("u@x"), msg("c@y", "m11", 1090)).await.unwrap();
    assert!(same.pos > back.pos);
    let batch = a
        .append_many(
            &j("u@x"),
            &[msg("c@y", "m12", 2000), msg("c@y", "m13", 1500)],
        )
        .await
        .unwrap();
    assert!(batch[0].pos > same.pos && batch[1].pos > batch[0].pos);
    assert_eq!(batch[1].pos.micros, 2000);
    let tail = a.query(&j("u@x"), &q(4, true)).await.unwrap();
    assert_eq!(ids(&tail), names(10..14));
    assert_eq!(a.count(&j("u@x")).await.unwrap(), 14);

    // Retention: oldest first, bounded per call.
    assert_eq!(a.remove_before(&j("u@x"), 1030, 2).await.unwrap(), 2);
    assert_eq!(a.remove_before(&j("u@x"), 1030, 100).await.unwrap(), 1);
    assert_eq!(a.remove_before(&j("u@x"), 1030, 100).await.unwrap(), 0);
    assert_eq!(a.count(&j("u@x")).await.unwrap(), 11);
    assert_eq!(a.position(&j("u@x"), &stamps[0].id).await.unwrap(), None);
    let a_all = a.query(&j("u@x"), &with("a@y", 50, false)).await.unwrap();
    assert_eq!(ids(&a_all), ["m3", "m5", "m6", "m8", "m9"]);
    assert_eq!(a.count(&j("u@xx")).await.unwrap(), 1);

    // Preferences.
    assert_eq!(a.prefs(&j("u@x")).await.unwrap(), None);
    let prefs = ArchivePrefs {
        default: ArchiveDefault::Roster,
        always: vec!["a@y".into()],
        never: vec!["b@y".into(), "c@y/r".into()],
    };
    a.set_prefs(&j("u@x"), &prefs).await.unwrap();
    assert_eq!(a.prefs(&j("u@x")).await.unwrap(), Some(prefs));
    assert_eq!(a.prefs(&j("u@xx")).await.unwrap(), None);

    // Account removal drops everything; UIDs and positions are never reused.
    a.remove_user(&j("u@x")).await.unwrap();
    assert_eq!(a.count(&j("u@x")).await.unwrap(), 0);
    assert!(
        a.query(&j("u@x"), &ArchiveQuery::default())
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        a.query(&j("u@x"), &with("a@y", 50, false))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(a.prefs(&j("u@x")).await.unwrap(), None);
    assert_eq!(a.position(&j("u@x"), &stamps[5].id).await.unwrap(), None);
    let again = a.append(&j("u@x"), msg("a@y", "new", 3000)).await.unwrap();
    assert!(stamps.iter().all(|s| s.id != again.id));
    assert!(again.pos.seq > batch[1].pos.seq);
    assert_eq!(a.count(&j("u@xx")).await.unwrap(), 1);
}

async fn archive_large_page_from_end(s: Storage) {
    let stanzas = names(0..1000);
    let msgs: Vec<_> = stanzas
        .iter()
        .enumerate()
        .map(|(i, st)| {
            msg(
                if i % 2 == 0 { "a@y" } else { "b@y/r" },
                st,
                1_000_000 + i as u64,
            )
        })
        .collect();
    let stamps = s.archive.append_many(&j("u@x"), &msgs).await.unwrap();
    assert_eq!(stamps.len(), 1000);
    assert_eq!(s.archive.count(&j("u@x")).await.unwrap(), 1000);
    let q = ArchiveQuery {
        max: 50,
        from_end: true,
        ..ArchiveQuery::default()
    };
    let page = s.archive.query(&j("u@x"), &q).await.unwrap();
    assert_eq!((ids(&page), page.more), (names(950..1000), true));
    let q = ArchiveQuery {
        with: Some("b@y".into()),
        ..q
    };
    let page = s.archive.query(&j("u@x"), &q).await.unwrap();
    assert_eq!(page.messages.len(), 50);
    assert_eq!(page.messages[0].stanza, "m901");
    assert_eq!(page.messages[49].stanza, "m999");
}

async fn blocklist(s: Storage) {
    let b = &s.blocklist;
    let v = |l: &[&str]| {
        l.iter()
            .map(|s| xmppd::addr::parse(s).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(b.blocklist(&j("u@x")).await.unwrap().is_empty());
    assert!(!b.is_blocked(&j("u@x"), &["c@y"]).await.unwrap());
    assert!(!b.may_block_anyone(&j("u@x")));
    let added = b
        .block(&j("u@x"), &v(&["c@y", "a@y/r", "evil.example"]))
        .await
        .unwrap();
    assert_eq!(added, v(&["c@y", "a@y/r", "evil.example"]));
    let added = b.block(&j("u@x"), &v(&["c@y", "d@y"])).await.unwrap();
    assert_eq!(added, v(&["d@y"]));
    assert!(b.may_block_anyone(&j("u@x")));
    assert_eq!(
        b.blocklist(&j("u@x")).await.unwrap(),
        v(&["a@y/r", "c@y", "d@y", "evil.example"])
    );
    b.block(&j("u@xx"), &v(&["z@y"])).await.unwrap();
    assert!(
        b.is_blocked(&j("u@x"), &["q@y/r", "q@y", "evil.example"])
            .await
            .unwrap()
    );
    assert!(
        b.is_blocked(&j("u@x"), &["a@y/r", "a@y", "y"])
            .await
            .unwrap()
    );
    assert!(
        !b.is_blocked(&j("u@x"), &["a@y/s", "a@y", "y"])
            .await
            .unwrap()
    );
    assert!(!b.is_blocked(&j("u@x"), &["z@y"]).await.unwrap());
    assert!(!b.is_blocked(&j("u@x"), &[]).await.unwrap());

    let removed = b
        .unblock(&j("u@x"), &v(&["c@y", "nobody@y"]))
        .await
        .unwrap();
    assert_eq!(removed, v(&["c@y"]));
    assert!(!b.is_blocked(&j("u@x"), &["c@y"]).await.unwrap());
    let all = b.unblock_all(&j("u@x")).await.unwrap();
    assert_eq!(all, v(&["a@y/r", "d@y", "evil.example"]));
    assert!(b.blocklist(&j("u@x")).await.unwrap().is_empty());
    assert!(!b.may_block_anyone(&j("u@x")));
    assert!(b.unblock_all(&j("u@x")).await.unwrap().is_empty());
    assert_eq!(b.blocklist(&j("u@xx")).await.unwrap(), v(&["z@y"]));
    assert!(b.may_block_anyone(&j("u@xx")));
    // Unblocking the last entry one by one empties the list as well.
    b.block(&j("u@x"), &v(&["c@y"])).await.unwrap();
    assert!(b.is_blocked(&j("u@x"), &["c@y"]).await.unwrap());
    b.unblock(&j("u@x"), &v(&["c@y"])).await.unwrap();
    assert!(!b.may_block_anyone(&j("u@x")));

    b.block(&j("u@x"), &v(&["c@y"])).await.unwrap();
    s.remove_account(&j("u@x")).await.unwrap();
    assert!(b.blocklist(&j("u@x")).await.unwrap().is_empty());
    assert_eq!(b.blocklist(&j("u@xx")).await.unwrap(), v(&["z@y"]));
}

async fn presence_contacts(s: Storage) {
    let r = &s.roster;
    let contacts = |from: &[&str], to: &[&str]| PresenceContacts {
        subscribers: jids(from),
        subscriptions: jids(to),
    };
    let sorted = |mut c: PresenceContacts| {
        c.subscribers.sort();
        c.subscriptions.sort();
        c
    };
    assert_eq!(
        *r.presence_contacts(&j("u@x")).await.unwrap(),
        contacts(&[], &[])
    );
    r.put_item(&j("u@x"), &item("both@y", Subscription::Both))
        .await
        .unwrap();
    r.put_item(&j("u@x"), &item("from@y", Subscription::From))
        .await
        .unwrap();
    r.put_item(&j("u@x"), &item("to@y", Subscription::To))
        .await
        .unwrap();
    r.put_item(&j("u@x"), &item("none@y", Subscription::None))
        .await
        .unwrap();
    let got = sorted((*r.presence_contacts(&j("u@x")).await.unwrap()).clone());
    assert_eq!(got, contacts(&["both@y", "from@y"], &["both@y", "to@y"]));
    // Every roster change shows at once.
    r.put_item(&j("u@x"), &item("from@y", Subscription::None))
        .await
        .unwrap();
    r.remove_item(&j("u@x"), &j("both@y")).await.unwrap();
    let got = sorted((*r.presence_contacts(&j("u@x")).await.unwrap()).clone());
    assert_eq!(got, contacts(&[], &["to@y"]));
    s.remove_account(&j("u@x")).await.unwrap();
    assert_eq!(
        *r.presence_contacts(&j("u@x")).await.unwrap(),
        contacts(&[], &[])
    );
    r.put_item(&j("u@x"), &item("new@y", Subscription::From))
        .await
        .unwrap();
    assert_eq!(
        *r.presence_contacts(&j("u@x")).await.unwrap(),
        contacts(&["new@y"], &[])
    );
}

/// `item_count` and `version` agree with the whole roster through every kind of change
/// (sled keeps counts per version in memory instead of scanning).
async fn roster_counts(s: Storage) {
    let r = s.roster.clone();
    let u = j("u@x");
    let agrees = |r: std::sync::Arc<dyn xmppd::storage::RosterStore>| async move {
        let whole = r.roster(&j("u@x")).await.unwrap();
        let count = r.item_count(&j("u@x")).await.unwrap();
        assert_eq!(count, whole.items.len());
        assert_eq!(r.version(&j("u@x")).await.unwrap(), whole.version);
        count
    };
    assert_eq!(agrees(r.clone()).await, 0);
    r.put_item(&u, &item("a@y", Subscription::None))
        .await
        .unwrap();
    assert_eq!(agrees(r.clone()).await, 1);
    // A replaced item is not a new one.
    r.put_item(&u, &item("a@y", Subscription::Both))
        .await
        .unwrap();
    assert_eq!(agrees(r.clone()).await, 1);
    r.put_item(&u, &item("b@y", Subscription::To))
        .await
        .unwrap();
    assert_eq!(agrees(r.clone()).await, 2);
    assert_eq!(agrees(r.clone()).await, 2);
    r.remove_item(&u, &j("a@y")).await.unwrap();
    r.remove_item(&u, &j("missing@y")).await.unwrap();
    assert_eq!(agrees(r.clone()).await, 1);
    assert_eq!(r.item_count(&j("u@xx")).await.unwrap(), 0);
    // Changes racing with counts.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let jid = format!("c{i}@y");
            r.put_item(&j("u@x"), &item(&jid, Subscription::None))
                .await
                .unwrap();
            r.item_count(&j("u@x")).await.unwrap();
            if i % 4 == 0 {
                r.remove_item(&j("u@x"), &j(&jid)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(agrees(r.clone()).await, 16);
    s.remove_account(&u).await.unwrap();
    assert_eq!(agrees(r.clone()).await, 0);
    r.put_item(&u, &item("new@y", Subscription::From))
        .await
        .unwrap();
    assert_eq!(agrees(r.clone()).await, 1);
}

fn stored_room(jid: &str, name: &str) -> StoredRoom {
    StoredRoom {
        jid: j(jid),
        config: RoomConfig {
            name: name.into(),
            description: "d".into(),
            persistent: true,
            public: false,
            members_only: true,
            moderated: false,
            password: Some("pw".into()),
            max_users: 30,
            whois_anyone: true,
            allow_pm: RoomPmPolicy::Moderators,
            change_subject: false,
            allow_invites: true,
            history_length: 10,
        },
        affiliations: vec![
            RoomAffiliationEntry {
                jid: j("a@x"),
                affiliation: RoomAffiliation::Owner,
                nick: Some("al".into()),
                reason: None,
            },
            RoomAffiliationEntry {
                jid: j("b@y"),
                affiliation: RoomAffiliation::Outcast,
                nick: None,
                reason: Some("spam".into()),
            },
        ],
        subject: Some(("topic".into(), "al".into())),
        occupant_id_key: vec![7; 16],
    }
}

async fn archive_replace(s: Storage) {
    let a = &s.archive;
    let st = a
        .append(
            &j("room@muc.x"),
            msg("room@muc.x/n", "<message>one</message>", 5),
        )
        .await
        .unwrap();
    assert!(
        a.replace(&j("room@muc.x"), &st.id, "<message>tomb</message>")
            .await
            .unwrap()
    );
    let m = a.get(&j("room@muc.x"), &st.id).await.unwrap().unwrap();
    assert_eq!(
        (m.stanza.as_str(), m.with.as_str(), m.pos),
        ("<message>tomb</message>", "room@muc.x/n", st.pos)
    );
    assert!(!a.replace(&j("room@muc.x"), "nope", "x").await.unwrap());
    assert!(!a.replace(&j("other@muc.x"), &st.id, "x").await.unwrap());
    assert_eq!(a.count(&j("room@muc.x")).await.unwrap(), 1);
}

async fn rooms(s: Storage) {
    let r = &s.rooms;
    assert_eq!(r.room(&j("cave@muc.x")).await.unwrap(), None);
    r.put_room(&stored_room("cave@muc.x", "Cave"))
        .await
        .unwrap();
    r.put_room(&stored_room("attic@muc.x", "Attic"))
        .await
        .unwrap();
    r.put_room(&stored_room("other@muc.y", "Other"))
        .await
        .unwrap();
    r.put_room(&stored_room("muc.xx-room@muc.xx", "Prefix"))
        .await
        .unwrap();
    assert_eq!(
        r.room(&j("cave@muc.x")).await.unwrap(),
        Some(stored_room("cave@muc.x", "Cave"))
    );
    // Replaced whole.
    r.put_room(&stored_room("cave@muc.x", "Cave 2"))
        .await
        .unwrap();
    assert_eq!(
        r.room(&j("cave@muc.x")).await.unwrap().unwrap().config.name,
        "Cave 2"
    );
    // One service's rooms, ordered by JID, bounded; a longer domain is another service.
    let names = |v: Vec<StoredRoom>| {
        v.into_iter()
            .map(|r| r.jid.into_inner())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(r.rooms(&dom("muc.x"), 10).await.unwrap()),
        ["attic@muc.x", "cave@muc.x"]
    );
    assert_eq!(
        names(r.rooms(&dom("muc.x"), 1).await.unwrap()),
        ["attic@muc.x"]
    );
    assert!(r.rooms(&dom("muc.z"), 10).await.unwrap().is_empty());
    assert!(r.remove_room(&j("cave@muc.x")).await.unwrap());
    assert!(!r.remove_room(&j("cave@muc.x")).await.unwrap());
    assert_eq!(r.room(&j("cave@muc.x")).await.unwrap(), None);
    assert_eq!(
        names(r.rooms(&dom("muc.x"), 10).await.unwrap()),
        ["attic@muc.x"]
    );
}

fn node_rec(access: &str) -> NodeRecord {
    NodeRecord {
        config: vec![("pubsub#access_model".into(), access.into())],
        affiliations: vec![("u@x".into(), "owner".into())],
        subscriptions: vec![("s@y/r".into(), "subscribed".into())],
    }
}

fn pitem(id: &str, payload: &str) -> StoredItem {
    StoredItem {
        id: id.into(),
        publisher: "u@x".into(),
        payload: payload.into(),
        published_at: 7,
    }
}

fn item_ids(items: &[StoredItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

async fn pubsub(s: Storage) {
    let p = &s.pubsub;
    assert_eq!(p.node("u@x", "n").await.unwrap(), None);
    assert_eq!(
        p.create_node("u@x", "n", &node_rec("presence"), 2)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        p.create_node("u@x", "n", &node_rec("open"), 2)
            .await
            .unwrap(),
        CreateOutcome::Exists
    );
    assert_eq!(
        p.node("u@x", "n").await.unwrap(),
        Some(node_rec("presence"))
    );
    assert_eq!(
        p.create_node("u@x", "m", &node_rec("open"), 2)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        p.create_node("u@x", "o", &node_rec("open"), 2)
            .await
            .unwrap(),
        CreateOutcome::TooManyNodes
    );
    // Another service (a user whose name extends this one's) is separate.
    assert_eq!(
        p.create_node("u@xy", "n", &node_rec("open"), 1)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    let names: Vec<String> = p
        .nodes("u@x")
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["m", "n"]);
    assert!(p.set_node("u@x", "n", &node_rec("open")).await.unwrap());
    assert!(!p.set_node("u@x", "zz", &node_rec("open")).await.unwrap());
    assert_eq!(p.node("u@x", "n").await.unwrap(), Some(node_rec("open")));

    for id in ["a", "b", "c"] {
        let dropped = p.publish("u@x", "n", &pitem(id, "<x/>"), 3).await.unwrap();
        assert!(dropped.is_empty());
    }
    assert_eq!(
        item_ids(&p.items("u@x", "n", 10).await.unwrap()),
        ["c", "b", "a"]
    );
    // Republishing an id replaces it and makes it the newest.
    assert!(
        p.publish("u@x", "n", &pitem("a", "<y/>"), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        item_ids(&p.items("u@x", "n", 10).await.unwrap()),
        ["a", "c", "b"]
    );
    assert_eq!(
        p.item("u@x", "n", "a").await.unwrap().unwrap().payload,
        "<y/>"
    );
    // Over the limit, the oldest go.
    assert_eq!(
        p.publish("u@x", "n", &pitem("d", "<z/>"), 3).await.unwrap(),
        ["b"]
    );
    assert_eq!(item_ids(&p.items("u@x", "n", 2).await.unwrap()), ["d", "a"]);
    assert_eq!(p.item("u@x", "n", "b").await.unwrap(), None);
    assert_eq!(p.trim("u@x", "n", 1).await.unwrap(), ["c", "a"]);
    assert_eq!(item_ids(&p.items("u@x", "n", 10).await.unwrap()), ["d"]);
    assert!(p.retract("u@x", "n", "d").await.unwrap());
    assert!(!p.retract("u@x", "n", "d").await.unwrap());
    assert!(p.items("u@x", "n", 10).await.unwrap().is_empty());
    // Publishing to a missing node stores nothing.
    assert!(
        p.publish("u@x", "zz", &pitem("a", "<x/>"), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(p.items("u@x", "zz", 10).await.unwrap().is_empty());

    p.publish("u@x", "m", &pitem("1", "<x/>"), 5).await.unwrap();
    p.publish("u@x", "m", &pitem("2", "<x/>"), 5).await.unwrap();
    p.purge("u@x", "m").await.unwrap();
    assert!(p.items("u@x", "m", 10).await.unwrap().is_empty());
    assert!(
        p.node("u@x", "m").await.unwrap().is_some(),
        "purge keeps the node"
    );
    p.publish("u@x", "m", &pitem("3", "<x/>"), 5).await.unwrap();
    assert!(p.delete_node("u@x", "m").await.unwrap());
    assert!(!p.delete_node("u@x", "m").await.unwrap());
    // A node created again under the same name starts empty.
    p.create_node("u@x", "m", &node_rec("open"), 5)
        .await
        .unwrap();
    assert!(p.items("u@x", "m", 10).await.unwrap().is_empty());

    p.publish("u@xy", "n", &pitem("keep", "<x/>"), 5)
        .await
        .unwrap();
    p.remove_service("u@x").await.unwrap();
    assert!(p.nodes("u@x").await.unwrap().is_empty());
    assert_eq!(item_ids(&p.items("u@xy", "n", 10).await.unwrap()), ["keep"]);
    s.flush().await.unwrap();
}

async fn profiles(s: Storage) {
    let p = &s.profiles;
    assert_eq!(p.vcard("u@x").await.unwrap(), None);
    p.set_vcard("u@x", Some("<vCard xmlns='vcard-temp'/>"))
        .await
        .unwrap();
    assert_eq!(
        p.vcard("u@x").await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'/>")
    );
    p.set_vcard("u@x", None).await.unwrap();
    assert_eq!(p.vcard("u@x").await.unwrap(), None);

    assert!(p.set_private("u@x", "a", Some("<a/>"), 2).await.unwrap());
    assert!(p.set_private("u@x", "b", Some("<b/>"), 2).await.unwrap());
    assert!(
        !p.set_private("u@x", "c", Some("<c/>"), 2).await.unwrap(),
        "full"
    );
    assert!(
        p.set_private("u@x", "a", Some("<a2/>"), 2).await.unwrap(),
        "replace"
    );
    assert_eq!(
        p.private("u@x", "a").await.unwrap().as_deref(),
        Some("<a2/>")
    );
    assert_eq!(p.private("u@x", "c").await.unwrap(), None);
    assert_eq!(p.private("u@xy", "a").await.unwrap(), None);
    assert!(p.set_private("u@x", "b", None, 2).await.unwrap());
    assert!(p.set_private("u@x", "c", Some("<c/>"), 2).await.unwrap());
    assert!(p.set_private("u@xy", "z", Some("<z/>"), 2).await.unwrap());
    // Every element of one user, by key (export).
    assert_eq!(
        p.private_all("u@x").await.unwrap(),
        [("a".into(), "<a2/>".into()), ("c".into(), "<c/>".into())]
    );
    assert!(p.private_all("nobody@x").await.unwrap().is_empty());
    p.set_vcard("u@x", Some("<v/>")).await.unwrap();
    assert_eq!(p.last_activity("u@x").await.unwrap(), None);
    p.set_last_activity("u@x", 5, "gone").await.unwrap();
    p.set_last_activity("u@x", 9, "away").await.unwrap();
    assert_eq!(
        p.last_activity("u@x").await.unwrap(),
        Some((9, "away".to_string()))
    );
    p.remove_user("u@x").await.unwrap();
    assert_eq!(p.last_activity("u@x").await.unwrap(), None);
    assert_eq!(p.vcard("u@x").await.unwrap(), None);
    assert_eq!(p.private("u@x", "a").await.unwrap(), None);
    assert!(p.private_all("u@x").await.unwrap().is_empty());
    assert_eq!(p.private_all("u@xy").await.unwrap().len(), 1);
    s.flush().await.unwrap();
}

fn invite(token: &str, uses: u32, expires: u64) -> xmppd::storage::Invite {
    xmppd::storage::Invite {
        token: token.into(),
        domain: "x".into(),
        inviter: Some(j("a@x")),
        username: None,
        register: true,
        admin: false,
        created: 10,
        expires,
        uses_left: uses,
    }
}

async fn invites(s: Storage) {
    let i = &s.invites;
    assert!(i.invites().await.unwrap().is_empty());
    i.put_invite(&invite("t1", 2, 100)).await.unwrap();
    i.put_invite(&invite("t2", 1, 50)).await.unwrap();
    assert_eq!(i.invite("t1").await.unwrap(), Some(invite("t1", 2, 100)));
    assert_eq!(i.invite("nope").await.unwrap(), None);
    let tokens: Vec<String> = i
        .invites()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.token)
        .collect();
    assert_eq!(tokens, ["t1", "t2"]);

    // Each use takes one; the last deletes the invitation.
    assert_eq!(
        i.use_invite("t1", 20).await.unwrap(),
        Some(invite("t1", 2, 100))
    );
    assert_eq!(i.invite("t1").await.unwrap().unwrap().uses_left, 1);
    assert_eq!(
        i.use_invite("t1", 20).await.unwrap(),
        Some(invite("t1", 1, 100))
    );
    assert_eq!(i.invite("t1").await.unwrap(), None);
    assert_eq!(i.use_invite("t1", 20).await.unwrap(), None);
    // Expired: not usable, and swept.
    assert_eq!(i.use_invite("t2", 50).await.unwrap(), None);
    assert!(i.invite("t2").await.unwrap().is_some());
    i.put_invite(&invite("t3", 1, 500)).await.unwrap();
    assert_eq!(i.remove_expired_invites(60).await.unwrap(), 1);
    assert_eq!(i.invite("t2").await.unwrap(), None);
    // Revocation.
    assert!(i.remove_invite("t3").await.unwrap());
    assert!(!i.remove_invite("t3").await.unwrap());
    assert_eq!(i.use_invite("t3", 20).await.unwrap(), None);

    // Admins made by invitations, forgotten with the account.
    assert!(!i.is_admin(&j("b@x")).await.unwrap());
    i.set_admin(&j("b@x"), true).await.unwrap();
    assert!(i.is_admin(&j("b@x")).await.unwrap());
    assert!(!i.is_admin(&j("c@x")).await.unwrap());
    s.accounts.create(&j("b@x"), &creds(1)).await.unwrap();
    s.remove_account(&j("b@x")).await.unwrap();
    assert!(!i.is_admin(&j("b@x")).await.unwrap());
    // A removed account's invitations go with it; others' stay.
    i.put_invite(&invite("ofa", 1, 500)).await.unwrap();
    let mut other = invite("ofc", 1, 500);
    other.inviter = Some(j("c@x"));
    i.put_invite(&other).await.unwrap();
    s.accounts.create(&j("a@x"), &creds(1)).await.unwrap();
    s.remove_account(&j("a@x")).await.unwrap();
    assert_eq!(i.invite("ofa").await.unwrap(), None);
    assert!(i.invite("ofc").await.unwrap().is_some());
}

async fn concurrent_invite_uses(s: Storage) {
    s.invites.put_invite(&invite("t", 3, 100)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let st = s.invites.clone();
        tasks.push(tokio::spawn(
            async move { st.use_invite("t", 1).await.unwrap() },
        ));
    }
    let mut used = 0;
    for t in tasks {
        used += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(used, 3);
}

/// An import keeps when the old server stored an offline message.
async fn offline_push_at(s: Storage) {
    let o = &s.offline;
    let out = o
        .push_at(&j("u@x"), "<message id='old'/>", 1_000_000_000, 5)
        .await
        .unwrap();
    assert_eq!(out, OfflineStoreOutcome::Stored);
    o.push(&j("u@x"), "<message id='new'/>", 5).await.unwrap();
    let list = o.list(&j("u@x")).await.unwrap();
    assert_eq!(list[0].stored_at, 1_000_000_000);
    assert!(list[1].stored_at > 1_000_000_000);
    assert_eq!(
        o.push_at(&j("u@x"), "<message/>", 5, 2).await.unwrap(),
        OfflineStoreOutcome::QuotaExceeded
    );
}

fn fast_tokens(secret: &str, expiry: u64) -> xmppd::storage::FastTokens {
    xmppd::storage::FastTokens {
        current: None,
        new: Some(xmppd::storage::FastToken {
            secret: secret.into(),
            mechanism: "HT-SHA-256-NONE".into(),
            issued: 1,
            expiry,
        }),
        credentials: vec![1, 2, 3],
    }
}

/// XEP-0484 tokens per account and client.
async fn fast(s: Storage) {
    let (alice, bob) = (j("alice@x"), j("bob@x"));
    assert_eq!(s.fast.fast_tokens(&alice, "phone").await.unwrap(), None);
    s.fast
        .set_fast_tokens(&alice, "phone", Some(&fast_tokens("a", 10)), true)
        .await
        .unwrap();
    s.fast
        .set_fast_tokens(&alice, "laptop", Some(&fast_tokens("b", 20)), true)
        .await
        .unwrap();
    s.fast
        .set_fast_tokens(&bob, "phone", Some(&fast_tokens("c", 30)), true)
        .await
        .unwrap();
    assert_eq!(
        s.fast.fast_tokens(&alice, "phone").await.unwrap(),
        Some(fast_tokens("a", 10))
    );
    let mut clients = s.fast.fast_clients(&alice).await.unwrap();
    clients.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        clients,
        vec![
            ("laptop".to_string(), fast_tokens("b", 20)),
            ("phone".to_string(), fast_tokens("a", 10))
        ]
    );
    // Replaced, then removed, per client.
    s.fast
        .set_fast_tokens(&alice, "phone", Some(&fast_tokens("d", 40)), true)
        .await
        .unwrap();
    assert_eq!(
        s.fast.fast_tokens(&alice, "phone").await.unwrap(),
        Some(fast_tokens("d", 40))
    );
    s.fast
        .set_fast_tokens(&alice, "phone", None, true)
        .await
        .unwrap();
    assert_eq!(s.fast.fast_tokens(&alice, "phone").await.unwrap(), None);
    // An account's removal takes its tokens, and only its own.
    s.accounts.create(&alice, &creds(1)).await.unwrap();
    assert!(s.remove_account(&alice).await.unwrap());
    assert!(s.fast.fast_clients(&alice).await.unwrap().is_empty());
    assert_eq!(s.fast.fast_clients(&bob).await.unwrap().len(), 1);
}

fn memory() -> (Storage, Option<TempDir>) {
    (Storage::memory(), None)
}

fn sled() -> (Storage, Option<TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    (Storage::open_sled(dir.path()).unwrap(), Some(dir))
}

/// Totals over all users, for metrics.
async fn totals(s: Storage) {
    assert_eq!(s.offline.total().await.unwrap(), Some(0));
    assert_eq!(s.archive.total().await.unwrap(), Some(0));
    for (user, n) in [("u@x", 2), ("v@x", 3)] {
        for i in 0..n {
            s.offline
                .push(&j(user), &format!("<message id='{i}'/>"), 10)
                .await
                .unwrap();
            s.archive
                .append(
                    &j(user),
                    msg("a@y", &format!("<message id='{i}'/>"), 1000 + i),
                )
                .await
                .unwrap();
        }
    }
    assert_eq!(s.offline.total().await.unwrap(), Some(5));
    assert_eq!(s.archive.total().await.unwrap(), Some(5));
    let delivered = s.offline.list(&j("v@x")).await.unwrap();
    s.offline
        .remove_up_to(&j("v@x"), delivered[1].seq)
        .await
        .unwrap();
    s.archive.remove_user(&j("u@x")).await.unwrap();
    assert_eq!(s.offline.total().await.unwrap(), Some(3));
    assert_eq!(s.archive.total().await.unwrap(), Some(3));
}

/// Runs every suite function against one backend constructor.
macro_rules! conformance {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // Keep the temp dir alive until the test ends.
                    let (storage, _dir) = super::$backend();
                    super::$case(storage).await;
                }
            )*
        }
    };
}

conformance!(memory: accounts, roster, roster_counts, presence_contacts, offline, push, remove_account, concurrent_pushes_respect_quota,
    archive, archive_large_page_from_end, blocklist, rooms, archive_replace, pubsub, profiles, totals, invites, concurrent_invite_uses, offline_push_at, fast);
conformance!(sled: accounts, roster, roster_counts, presence_contacts, offline, push, remove_account, concurrent_pushes_respect_quota,
    archive, archive_large_page_from_end, blocklist, rooms, archive_replace, pubsub, profiles, totals, invites, concurrent_invite_uses, offline_push_at, fast);

#[tokio::test]
async fn sled_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (version, messages) = {
        let s = Storage::open_sled(dir.path()).unwrap();
        s.accounts.create(&j("u@x"), &creds(1)).await.unwrap();
        s.roster
            .put_item(&j("u@x"), &item("c@y", Subscription::To))
            .await
            .unwrap();
        let version = s
            .roster
            .put_item(&j("u@x"), &item("d@y", Subscription::From))
            .await
            .unwrap();
        s.roster
            .add_pending_in(&j("u@x"), &pending("p@y"))
            .await
            .unwrap();
        s.offline
            .push(&j("u@x"), "<message id='a'/>", 10)
            .await
            .unwrap();
        s.offline
            .push(&j("u@x"), "<message id='b'/>", 10)
            .await
            .unwrap();
        let messages = s.offline.list(&j("u@x")).await.unwrap();
        s.push
            .enable(&j("u@x"), &reg("push.y", "n", Some("s")))
            .await
            .unwrap();
        s.flush().await.unwrap();
        (version, messages)
    };

    let s = Storage::open_sled(dir.path()).unwrap();
    assert_eq!(s.accounts.get(&j("u@x")).await.unwrap(), Some(creds(1)));
    assert_eq!(
        s.push.list(&j("u@x")).await.unwrap(),
        [reg("push.y", "n", Some("s"))]
    );
    assert_eq!(s.accounts.list().await.unwrap(), jids(&["u@x"]));
    let roster = s.roster.roster(&j("u@x")).await.unwrap();
    assert_eq!(roster.version, version);
    assert_eq!(
        roster.items,
        [
            item("c@y", Subscription::To),
            item("d@y", Subscription::From)
        ]
    );
    assert_eq!(
        s.roster.pending_in(&j("u@x")).await.unwrap(),
        [pending("p@y")]
    );
    assert_eq!(s.offline.list(&j("u@x")).await.unwrap(), messages);
    assert_eq!(s.offline.count(&j("u@x")).await.unwrap(), 2);
    // Versions and seqs continue upwards after the restart.
    let v = s
        .roster
        .put_item(&j("u@x"), &item("e@y", Subscription::None))
        .await
        .unwrap();
    assert!(v > version);
    s.offline
        .push(&j("u@x"), "<message id='c'/>", 10)
        .await
        .unwrap();
    let list = s.offline.list(&j("u@x")).await.unwrap();
    assert!(list[2].seq > messages[1].seq, "{list:?}");
}

#[tokio::test]
async fn sled_archive_and_blocklist_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (stamps, prefs) = {
        let s = Storage::open_sled(dir.path()).unwrap();
        let mut stamps = Vec::new();
        for i in 0..5u64 {
            let st = format!("m{i}");
            stamps.push(
                s.archive
                    .append(&j("u@x"), msg("a@y/r", &st, 100 + i))
                    .await
                    .unwrap(),
            );
        }
        let prefs = ArchivePrefs {
            default: ArchiveDefault::Never,
            always: vec!["a@y".into()],
            never: vec![],
        };
        s.archive.set_prefs(&j("u@x"), &prefs).await.unwrap();
        s.archive.set_prefs(&j("u@xx"), &prefs).await.unwrap();
        s.blocklist
            .block(&j("u@x"), &[xmppd::addr::parse("c@y").unwrap()])
            .await
            .unwrap();
        let several = ["a@y", "b@y", "y"].map(|s| xmppd::addr::parse(s).unwrap());
        s.blocklist.block(&j("t@x"), &several).await.unwrap();
        s.blocklist.block(&j("u@xx"), &several).await.unwrap();
        s.blocklist.block(&j("v@x"), &several).await.unwrap();
        s.blocklist.unblock_all(&j("v@x")).await.unwrap();
        (stamps, prefs)
    };
    let s = Storage::open_sled(dir.path()).unwrap();
    assert_eq!(s.archive.count(&j("u@x")).await.unwrap(), 5);
    assert_eq!(
        s.archive.prefs(&j("u@x")).await.unwrap(),
        Some(prefs.clone())
    );
    assert_eq!(s.archive.prefs(&j("u@xx")).await.unwrap(), Some(prefs));
    assert_eq!(s.archive.prefs(&j("t@x")).await.unwrap(), None);
    assert_eq!(
        s.blocklist.blocklist(&j("u@x")).await.unwrap(),
        [xmppd::addr::parse("c@y").unwrap()]
    );
    // The in-memory index of users with block lists is rebuilt from disk.
    for (user, jid, blocked) in [
        ("u@x", "c@y", true),
        ("u@x", "a@y", false),
        ("t@x", "b@y", true),
        ("u@xx", "y", true),
        ("v@x", "a@y", false),
        ("w@x", "a@y", false),
    ] {
        assert_eq!(
            s.blocklist.is_blocked(&j(user), &[jid]).await.unwrap(),
            blocked,
            "{user} {jid}"
        );
    }
    let q = ArchiveQuery {
        with: Some("a@y".into()),
        ..ArchiveQuery::default()
    };
    let page = s.archive.query(&j("u@x"), &q).await.unwrap();
    let got: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.id.clone(), m.pos))
        .collect();
    let want: Vec<_> = stamps.iter().map(|s| (s.id.clone(), s.pos)).collect();
    assert_eq!(got, want);
    // Positions keep increasing after the restart, even with an older clock.
    let next = s
        .archive
        .append(&j("u@x"), msg("a@y", "late", 50))
        .await
        .unwrap();
    assert!(next.pos > stamps[4].pos, "{next:?}");
}

#[tokio::test]
async fn sled_offline_seq_increases_across_restarts_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let s = Storage::open_sled(dir.path()).unwrap();
        s.offline.push(&j("u@x"), "<message/>", 10).await.unwrap();
        let seq = s.offline.list(&j("u@x")).await.unwrap()[0].seq;
        s.offline.remove_up_to(&j("u@x"), seq).await.unwrap();
        seq
    };
    let s = Storage::open_sled(dir.path()).unwrap();
    s.offline.push(&j("u@x"), "<message/>", 10).await.unwrap();
    assert!(s.offline.list(&j("u@x")).await.unwrap()[0].seq > last);
}

#[tokio::test]
async fn sled_invites_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open_sled(dir.path()).unwrap();
        s.invites.put_invite(&invite("t", 2, 100)).await.unwrap();
        s.invites.use_invite("t", 1).await.unwrap();
        s.invites.set_admin(&j("b@x"), true).await.unwrap();
    }
    let s = Storage::open_sled(dir.path()).unwrap();
    assert_eq!(s.invites.invite("t").await.unwrap().unwrap().uses_left, 1);
    assert!(s.invites.is_admin(&j("b@x")).await.unwrap());
}

#[tokio::test]
async fn sled_fast_tokens_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open_sled(dir.path()).unwrap();
        s.fast
            .set_fast_tokens(&j("a@x"), "phone", Some(&fast_tokens("t", 9)), true)
            .await
            .unwrap();
    }
    let s = Storage::open_sled(dir.path()).unwrap();
    assert_eq!(
        s.fast.fast_tokens(&j("a@x"), "phone").await.unwrap(),
        Some(fast_tokens("t", 9))
    );
}

/// Opens the sled database directly once the dropped store's last handle on its lock
/// is gone (sled's I/O threads may hold it a moment longer on a loaded machine).
fn sled_once_released(path: &std::path::Path) -> ::sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ::sled::open(path) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("sled not released yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("sled database still held: {e}"),
        }
    }
}

#[tokio::test]
async fn sled_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open_sled(dir.path()).unwrap());
    {
        // Write the marker the way a newer server would.
        let db = sled_once_released(dir.path());
        let meta = db.open_tree("meta").unwrap();
        let newer = xmppd::storage::sled::SCHEMA_VERSION + 1;
        meta.insert(
            xmppd::storage::sled::SCHEMA_VERSION_KEY,
            &newer.to_be_bytes(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    match Storage::open_sled(dir.path()) {
        Err(StorageError::Backend(msg)) => assert!(msg.contains("newer"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a database with a newer schema"),
    }
}
