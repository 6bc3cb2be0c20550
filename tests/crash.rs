//! Crash durability with the real binary: a sender with XEP-0198 floods an offline user and
//! an online user whose messages are archived; the server is killed with SIGKILL in the
//! middle; after a restart every message the server acknowledged (`<a h/>`) is delivered
//! from offline storage or found in the archive, exactly once.
//!
//! SIGKILL is a process crash: what sled already wrote to its file (without fsync) is in
//! the OS page cache and survives it, so this checks the acknowledgement contract, not
//! the fsync itself (a power loss is out of its reach).
//!
//! One run by default (a few seconds); `XMPPD_CRASH_RUNS=20` repeats it.

#[path = "support/process.rs"]
mod process;
mod support;

use std::collections::HashMap;

use process::{Xmppd, add_user, write_config};
use support::Client;
use xmppd::xml::{Element, StreamEvent};

const SM: &str = "urn:xmpp:sm:3";
const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
/// Messages sent between two `<r/>`.
const WINDOW: u32 = 25;
/// The flood goes to bob and to carol in turns of this many messages, so that a kill in
/// bob's turn finds no offline push (acked only after a flush of the whole database)
/// just before it.
const SEGMENT: u32 = 100;

/// Whether message `i` of the flood is for bob (online, archived), else carol (offline).
fn for_bob(i: u32) -> bool {
    (i / SEGMENT).is_multiple_of(2)
}

fn flood_id(i: u32) -> String {
    format!("{}{i}", if for_bob(i) { 'b' } else { 'c' })
}

fn flood_message(i: u32) -> String {
    let to = if for_bob(i) { "bob" } else { "carol" };
    let id = flood_id(i);
    format!("<message to='{to}@localhost' type='chat' id='{id}'><body>{i}</body></message>")
}

/// Sends the flood with SM until the connection breaks; publishes the highest `h` the
/// server acknowledged. Two windows are in flight, so the kill lands amid unacked ones.
async fn flood(mut alice: Client, acked: tokio::sync::watch::Sender<u32>) {
    let mut sent = 0u32;
    let mut received = 0u32;
    let send_window = |sent: &mut u32| {
        let mut out = String::new();
        for _ in 0..WINDOW {
            out.push_str(&flood_message(*sent));
            *sent += 1;
        }
        out.push_str(&format!("<r xmlns='{SM}'/>"));
        out
    };
    let first = send_window(&mut sent);
    if alice.try_send_raw(first.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let next = send_window(&mut sent);
        if alice.try_send_raw(next.as_bytes()).await.is_err() {
            return;
        }
        // Until the ack of the window before.
        loop {
            let Some(StreamEvent::Stanza(el)) = alice.next_event().await else {
                return;
            };
            if el.ns == SM && el.name == "a" {
                if let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) {
                    acked.send_modify(|a| *a = (*a).max(h));
                }
                break;
            }
            if el.ns == SM && el.name == "r" {
                let a = format!("<a xmlns='{SM}' h='{received}'/>");
                if alice.try_send_raw(a.as_bytes()).await.is_err() {
                    return;
                }
            } else if el.ns != SM {
                // An error bounce would mean an acknowledged message was refused.
                assert_ne!(el.attr("type"), Some("error"), "{el:?}");
                received += 1;
            }
        }
    }
}

/// Ids of the messages in `user`'s archive, with how often each occurs.
async fn archived_ids(c: &mut Client) -> HashMap<String, u32> {
    let mut ids = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let id = c.new_id();
        let set = match &after {
            Some(a) => format!("<set xmlns='{RSM}'><max>500</max><after>{a}</after></set>"),
            None => format!("<set xmlns='{RSM}'><max>500</max></set>"),
        };
        c.send(&format!(
            "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='{id}'>{set}</query></iq>"
        ))
        .await;
        let fin = loop {
            let el = c.recv().await;
            if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
                assert_eq!(el.attr("type"), Some("result"), "{el:?}");
                break el;
            }
            let forwarded = el
                .child("result", MAM)
                .filter(|r| r.attr("queryid") == Some(id.as_str()))
                .and_then(|r| r.child("forwarded", FORWARD))
                .and_then(|f| f.child("message", "jabber:client"));
            if let Some(m) = forwarded {
                *ids.entry(m.attr("id").unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
        };
        let fin: &Element = fin.child("fin", MAM).expect("fin");
        if fin.attr("complete") == Some("true") {
            return ids;
        }
        after = fin
            .child("set", RSM)
            .and_then(|s| s.child_text("last", RSM));
        assert!(after.is_some(), "incomplete page without <last/>");
    }
}

/// Offline messages delivered at initial presence, by id with counts: everything before
/// the answer to a ping sent right after the presence.
async fn offline_ids(c: &mut Client) -> HashMap<String, u32> {
    c.send("<presence/>").await;
    let id = c.new_id();
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let mut ids = HashMap::new();
    loop {
        let el = c.recv().await;
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            return ids;
        }
        if el.name == "message" {
            *ids.entry(el.attr("id").unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
}

async fn one_run(run: u32) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[limits]\noffline_quota = 100000\nsession_backlog_len = 200000\n",
    );
    for user in ["alice", "bob", "carol"] {
        add_user(&config, &format!("{user}@localhost"), "password");
    }
    let server = Xmppd::running(&config);
    let mut bob = Client::login(server.c2s, "bob", "password", "phone").await;
    bob.available().await;
    // Bob reads everything, so his queue never fills; the stream ends with the kill.
    let bob_reader = tokio::spawn(async move { while bob.next_event().await.is_some() {} });
    let mut alice = Client::login(server.c2s, "alice", "password", "pc").await;
    alice.send(&format!("<enable xmlns='{SM}'/>")).await;
    alice.recv_until(|e| e.name == "enabled").await;

    let (acked_tx, mut acked) = tokio::sync::watch::channel(0u32);
    let flooding = tokio::spawn(flood(alice, acked_tx));
    // Somewhere in the middle of the flood: in bob's turn in even runs (the first one
    // too), in carol's in odd ones.
    let segment = 2 * (rand::random::<u32>() % 3) + run % 2;
    let kill_at = segment * SEGMENT + 20 + rand::random::<u32>() % 50;
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        acked.wait_for(|h| *h >= kill_at),
    )
    .await
    .expect("flood too slow")
    .expect("flood ended before the kill");
    // A random moment within the next windows' work, not a wait for anything: the kill
    // should also land while stanzas are half handled. Or right after the ack: messages
    // archived on the way are flushed in batches, so an ack sent before its batch's
    // flush would be caught there.
    let delay = match rand::random::<bool>() {
        true => 0,
        false => rand::random::<u64>() % 40,
    };
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    server.kill9();
    flooding.await.unwrap();
    let _ = bob_reader.await;
    let acked = *acked.borrow();

    let mut server = Xmppd::running(&config);
    let mut carol = Client::login(server.c2s, "carol", "password", "laptop").await;
    let offline = offline_ids(&mut carol).await;
    let mut bob = Client::login(server.c2s, "bob", "password", "phone2").await;
    let archived = archived_ids(&mut bob).await;

    let mut expected = 0;
    for i in 0..acked {
        let id = flood_id(i);
        let (place, n) = match for_bob(i) {
            true => ("bob's archive", archived.get(&id)),
            false => ("carol's offline messages", offline.get(&id)),
        };
        assert_eq!(n, Some(&1), "run {run}: acked message {id} in {place}");
        expected += 1;
    }
    // Unacknowledged ones may or may not have made it, but never twice.
    for (id, n) in archived.iter().chain(offline.iter()) {
        assert_eq!(*n, 1, "run {run}: {id} delivered {n} times");
    }
    let log = server.log_text();
    assert!(
        !log.contains("ERROR") && !log.to_lowercase().contains("corrupt"),
        "run {run}: {log}"
    );
    eprintln!(
        "run {run}: killed after {acked} acked ({expected} checked); archived {}, offline {}",
        archived.len(),
        offline.len()
    );
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let runs: u32 = std::env::var("XMPPD_CRASH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        one_run(run).await;
    }
}
