//! One behavioural suite run against every storage backend, plus sled-only persistence
//! checks.

use tempfile::TempDir;
use xmppd::sasl::credentials::{ScramCredentials, StoredCredentials};
use xmppd::storage::{
    OfflineStoreOutcome, PendingSubscription, PushRegistration, RosterItem, Storage, StorageError,
    Subscription,
};

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
        jid: jid.into(),
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
        from: from.into(),
        stanza: Some(format!("<presence from='{from}' type='subscribe'/>")),
    }
}

async fn accounts(s: Storage) {
    let a = &s.accounts;
    assert!(a.create("b@x", &creds(1)).await.unwrap());
    assert!(!a.create("b@x", &creds(2)).await.unwrap(), "second create");
    assert_eq!(
        a.get("b@x").await.unwrap(),
        Some(creds(1)),
        "create twice kept first"
    );
    assert_eq!(a.get("nobody@x").await.unwrap(), None);

    assert!(a.set_credentials("b@x", &creds(3)).await.unwrap());
    assert_eq!(a.get("b@x").await.unwrap(), Some(creds(3)));
    assert!(!a.set_credentials("nobody@x", &creds(3)).await.unwrap());
    assert_eq!(
        a.get("nobody@x").await.unwrap(),
        None,
        "set must not create"
    );

    assert!(a.create("c@x", &creds(4)).await.unwrap());
    assert!(a.create("a@x", &creds(5)).await.unwrap());
    assert!(a.create("a@w", &creds(6)).await.unwrap());
    assert_eq!(a.list().await.unwrap(), ["a@w", "a@x", "b@x", "c@x"]);

    assert!(a.remove("b@x").await.unwrap());
    assert!(!a.remove("b@x").await.unwrap());
    assert_eq!(a.get("b@x").await.unwrap(), None);
    assert_eq!(a.list().await.unwrap(), ["a@w", "a@x", "c@x"]);
    s.flush().await.unwrap();
}

async fn roster(s: Storage) {
    let r = &s.roster;
    let empty = r.roster("u@x").await.unwrap();
    assert_eq!(empty.version, 0);
    assert!(empty.items.is_empty());

    let v1 = r
        .put_item("u@x", &item("c@y", Subscription::None))
        .await
        .unwrap();
    let v2 = r
        .put_item("u@x", &item("a@y", Subscription::To))
        .await
        .unwrap();
    assert!(v1 > 0 && v2 > v1, "{v1} {v2}");
    // Replacing an item is a change too.
    let v3 = r
        .put_item("u@x", &item("c@y", Subscription::Both))
        .await
        .unwrap();
    assert!(v3 > v2);

    let got = r.roster("u@x").await.unwrap();
    assert_eq!(got.version, v3);
    assert_eq!(
        got.items,
        [
            item("a@y", Subscription::To),
            item("c@y", Subscription::Both)
        ]
    );
    assert_eq!(
        r.item("u@x", "c@y").await.unwrap(),
        Some(item("c@y", Subscription::Both))
    );
    assert_eq!(r.item("u@x", "zz@y").await.unwrap(), None);
    // Another user's roster is separate, including one whose JID extends this one.
    assert_eq!(r.roster("u@xx").await.unwrap().items, []);
    r.put_item("u@xx", &item("q@y", Subscription::None))
        .await
        .unwrap();
    assert_eq!(r.roster("u@x").await.unwrap().items.len(), 2);

    assert_eq!(r.remove_item("u@x", "nobody@y").await.unwrap(), None);
    assert_eq!(
        r.roster("u@x").await.unwrap().version,
        v3,
        "no-op must not bump"
    );
    let v4 = r.remove_item("u@x", "a@y").await.unwrap().unwrap();
    assert!(v4 > v3);
    assert_eq!(r.remove_item("u@x", "a@y").await.unwrap(), None);
    let got = r.roster("u@x").await.unwrap();
    assert_eq!((got.version, got.items.len()), (v4, 1));

    // Pending subscriptions.
    assert!(r.pending_in("u@x").await.unwrap().is_empty());
    r.add_pending_in("u@x", &pending("p2@y")).await.unwrap();
    r.add_pending_in("u@x", &pending("p1@y")).await.unwrap();
    r.add_pending_in("u@x", &pending("p1@y")).await.unwrap();
    r.add_pending_in("u@xx", &pending("p3@y")).await.unwrap();
    assert_eq!(
        r.pending_in("u@x").await.unwrap(),
        [pending("p1@y"), pending("p2@y")]
    );
    assert!(r.remove_pending_in("u@x", "p1@y").await.unwrap());
    assert!(!r.remove_pending_in("u@x", "p1@y").await.unwrap());
    assert_eq!(r.pending_in("u@x").await.unwrap(), [pending("p2@y")]);
    assert_eq!(
        r.roster("u@x").await.unwrap().version,
        v4,
        "pending is not roster"
    );

    // remove_user drops items and pending, and the version never goes backwards.
    r.remove_user("u@x").await.unwrap();
    let got = r.roster("u@x").await.unwrap();
    assert!(got.items.is_empty());
    assert!(got.version >= v4);
    assert!(r.pending_in("u@x").await.unwrap().is_empty());
    let v5 = r
        .put_item("u@x", &item("c@y", Subscription::None))
        .await
        .unwrap();
    assert!(v5 > got.version);
    // The neighbour is untouched.
    assert_eq!(r.roster("u@xx").await.unwrap().items.len(), 1);
    assert_eq!(r.pending_in("u@xx").await.unwrap(), [pending("p3@y")]);
}

async fn offline(s: Storage) {
    let o = &s.offline;
    assert_eq!(o.count("u@x").await.unwrap(), 0);
    assert!(o.list("u@x").await.unwrap().is_empty());
    for i in 0..3 {
        let out = o
            .push("u@x", &format!("<message id='{i}'/>"), 3)
            .await
            .unwrap();
        assert_eq!(out, OfflineStoreOutcome::Stored);
    }
    assert_eq!(
        o.push("u@x", "<message id='over'/>", 3).await.unwrap(),
        OfflineStoreOutcome::QuotaExceeded
    );
    assert_eq!(
        o.push("v@x", "<message/>", 0).await.unwrap(),
        OfflineStoreOutcome::QuotaExceeded
    );
    assert_eq!(o.count("v@x").await.unwrap(), 0);
    o.push("u@xx", "<message id='other'/>", 3).await.unwrap();

    let list = o.list("u@x").await.unwrap();
    assert_eq!(o.count("u@x").await.unwrap(), 3);
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
    assert_eq!(o.list("u@x").await.unwrap(), list);

    o.remove_up_to("u@x", list[1].seq).await.unwrap();
    assert_eq!(o.list("u@x").await.unwrap(), [list[2].clone()]);
    assert_eq!(o.count("u@x").await.unwrap(), 1);
    // Room again under the quota; the new seq is above everything before.
    assert_eq!(
        o.push("u@x", "<message id='3'/>", 3).await.unwrap(),
        OfflineStoreOutcome::Stored
    );
    let list2 = o.list("u@x").await.unwrap();
    assert_eq!(list2.len(), 2);
    assert!(list2[1].seq > list[2].seq);
    o.remove_up_to("u@x", 0).await.unwrap();
    assert_eq!(o.count("u@x").await.unwrap(), 2);

    o.remove_user("u@x").await.unwrap();
    assert_eq!(o.count("u@x").await.unwrap(), 0);
    assert!(o.list("u@x").await.unwrap().is_empty());
    o.push("u@x", "<message id='4'/>", 3).await.unwrap();
    let after = o.list("u@x").await.unwrap();
    assert!(after[0].seq > list2[1].seq, "seq must keep increasing");
    // The neighbour is untouched.
    assert_eq!(o.count("u@xx").await.unwrap(), 1);
    assert_eq!(o.list("u@xx").await.unwrap().len(), 1);
}

fn reg(jid: &str, node: &str, secret: Option<&str>) -> PushRegistration {
    PushRegistration {
        jid: jid.into(),
        node: node.into(),
        publish_options: secret.map(|s| format!("<x xmlns='jabber:x:data'>{s}</x>")),
        include_body: secret.is_some(),
    }
}

async fn push(s: Storage) {
    let p = &s.push;
    assert!(p.list("u@x").await.unwrap().is_empty());
    assert_eq!(p.disable("u@x", "push.y", None).await.unwrap(), 0);
    p.enable("u@x", &reg("push.y", "n2", None)).await.unwrap();
    p.enable("u@x", &reg("push.y", "n1", Some("s1")))
        .await
        .unwrap();
    p.enable("u@x", &reg("a.push.y", "n9", None)).await.unwrap();
    // A jid that extends another must not be caught by the other's prefix.
    p.enable("u@x", &reg("push.y.z", "n1", None)).await.unwrap();
    p.enable("u@xx", &reg("push.y", "n1", None)).await.unwrap();
    assert_eq!(
        p.list("u@x").await.unwrap(),
        [
            reg("a.push.y", "n9", None),
            reg("push.y", "n1", Some("s1")),
            reg("push.y", "n2", None),
            reg("push.y.z", "n1", None),
        ]
    );
    // Same jid and node: replaced (the last publish options win).
    p.enable("u@x", &reg("push.y", "n1", Some("s2")))
        .await
        .unwrap();
    let list = p.list("u@x").await.unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[1], reg("push.y", "n1", Some("s2")));

    assert_eq!(p.disable("u@x", "push.y", Some("n3")).await.unwrap(), 0);
    assert_eq!(p.disable("u@x", "push.y", Some("n2")).await.unwrap(), 1);
    assert_eq!(p.list("u@x").await.unwrap().len(), 3);
    p.enable("u@x", &reg("push.y", "n2", None)).await.unwrap();
    assert_eq!(p.disable("u@x", "push.y", None).await.unwrap(), 2);
    assert_eq!(
        p.list("u@x").await.unwrap(),
        [reg("a.push.y", "n9", None), reg("push.y.z", "n1", None)]
    );
    // The neighbour is untouched.
    assert_eq!(p.list("u@xx").await.unwrap(), [reg("push.y", "n1", None)]);
    p.remove_user("u@x").await.unwrap();
    assert!(p.list("u@x").await.unwrap().is_empty());
    assert_eq!(p.list("u@xx").await.unwrap().len(), 1);
    s.flush().await.unwrap();
}

async fn remove_account(s: Storage) {
    s.accounts.create("u@x", &creds(1)).await.unwrap();
    s.roster
        .put_item("u@x", &item("c@y", Subscription::Both))
        .await
        .unwrap();
    s.roster
        .add_pending_in("u@x", &pending("p@y"))
        .await
        .unwrap();
    s.offline.push("u@x", "<message/>", 10).await.unwrap();
    s.push
        .enable("u@x", &reg("push.y", "n", None))
        .await
        .unwrap();
    assert!(s.remove_account("u@x").await.unwrap());
    assert!(s.push.list("u@x").await.unwrap().is_empty());
    assert_eq!(s.accounts.get("u@x").await.unwrap(), None);
    assert!(s.roster.roster("u@x").await.unwrap().items.is_empty());
    assert!(s.roster.pending_in("u@x").await.unwrap().is_empty());
    assert_eq!(s.offline.count("u@x").await.unwrap(), 0);
    assert!(!s.remove_account("u@x").await.unwrap());
}

async fn concurrent_pushes_respect_quota(s: Storage) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.offline.push("u@x", &format!("m{i}"), 7).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == OfflineStoreOutcome::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 7);
    assert_eq!(s.offline.count("u@x").await.unwrap(), 7);
    assert_eq!(s.offline.list("u@x").await.unwrap().len(), 7);
}

fn memory() -> (Storage, Option<TempDir>) {
    (Storage::memory(), None)
}

fn sled() -> (Storage, Option<TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    (Storage::open_sled(dir.path()).unwrap(), Some(dir))
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

conformance!(memory: accounts, roster, offline, push, remove_account, concurrent_pushes_respect_quota);
conformance!(sled: accounts, roster, offline, push, remove_account, concurrent_pushes_respect_quota);

#[tokio::test]
async fn sled_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (version, messages) = {
        let s = Storage::open_sled(dir.path()).unwrap();
        s.accounts.create("u@x", &creds(1)).await.unwrap();
        s.roster
            .put_item("u@x", &item("c@y", Subscription::To))
            .await
            .unwrap();
        let version = s
            .roster
            .put_item("u@x", &item("d@y", Subscription::From))
            .await
            .unwrap();
        s.roster
            .add_pending_in("u@x", &pending("p@y"))
            .await
            .unwrap();
        s.offline
            .push("u@x", "<message id='a'/>", 10)
            .await
            .unwrap();
        s.offline
            .push("u@x", "<message id='b'/>", 10)
            .await
            .unwrap();
        let messages = s.offline.list("u@x").await.unwrap();
        s.push
            .enable("u@x", &reg("push.y", "n", Some("s")))
            .await
            .unwrap();
        s.flush().await.unwrap();
        (version, messages)
    };

    let s = Storage::open_sled(dir.path()).unwrap();
    assert_eq!(s.accounts.get("u@x").await.unwrap(), Some(creds(1)));
    assert_eq!(
        s.push.list("u@x").await.unwrap(),
        [reg("push.y", "n", Some("s"))]
    );
    assert_eq!(s.accounts.list().await.unwrap(), ["u@x"]);
    let roster = s.roster.roster("u@x").await.unwrap();
    assert_eq!(roster.version, version);
    assert_eq!(
        roster.items,
        [
            item("c@y", Subscription::To),
            item("d@y", Subscription::From)
        ]
    );
    assert_eq!(s.roster.pending_in("u@x").await.unwrap(), [pending("p@y")]);
    assert_eq!(s.offline.list("u@x").await.unwrap(), messages);
    assert_eq!(s.offline.count("u@x").await.unwrap(), 2);
    // Versions and seqs continue upwards after the restart.
    let v = s
        .roster
        .put_item("u@x", &item("e@y", Subscription::None))
        .await
        .unwrap();
    assert!(v > version);
    s.offline
        .push("u@x", "<message id='c'/>", 10)
        .await
        .unwrap();
    let list = s.offline.list("u@x").await.unwrap();
    assert!(list[2].seq > messages[1].seq, "{list:?}");
}

#[tokio::test]
async fn sled_offline_seq_increases_across_restarts_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let s = Storage::open_sled(dir.path()).unwrap();
        s.offline.push("u@x", "<message/>", 10).await.unwrap();
        let seq = s.offline.list("u@x").await.unwrap()[0].seq;
        s.offline.remove_up_to("u@x", seq).await.unwrap();
        seq
    };
    let s = Storage::open_sled(dir.path()).unwrap();
    s.offline.push("u@x", "<message/>", 10).await.unwrap();
    assert!(s.offline.list("u@x").await.unwrap()[0].seq > last);
}

#[tokio::test]
async fn sled_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open_sled(dir.path()).unwrap());
    {
        // Write the marker the way a newer server would.
        let db = ::sled::open(dir.path()).unwrap();
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
