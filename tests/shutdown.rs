//! Graceful shutdown: every stream hears `<system-shutdown/>`, what hibernated XEP-0198
//! sessions hold goes to offline storage, and the real binary exits on SIGTERM in time.

#[path = "support/process.rs"]
mod process;
mod support;

use std::time::Duration;

use process::{Xmppd, add_user, write_config};
use support::{Client, TestServer};
use xmppd::xml::Element;

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const SM: &str = "urn:xmpp:sm:3";

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn body(el: &Element) -> Option<String> {
    el.child_text("body", "jabber:client")
}

#[tokio::test]
async fn shutdown_moves_hibernated_queues_to_offline_storage() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    bob.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    bob.recv_until(|e| e.name == "enabled").await;
    bob.available().await;
    // Written to bob, never acknowledged.
    alice
        .send("<message to='bob@localhost/phone' type='chat'><body>in flight</body></message>")
        .await;
    bob.recv_until(|e| e.name == "message").await;
    bob.drop_connection();
    let ctx = server.ctx().clone();
    wait_for("hibernation", || ctx.sm.hibernated_count() == 1).await;
    // Queued for the hibernated session.
    alice
        .send("<message to='bob@localhost' type='chat'><body>while away</body></message>")
        .await;
    alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        ctx.storage
            .offline
            .count(&j("bob@localhost"))
            .await
            .unwrap(),
        0
    );

    let (_, condition) = tokio::join!(server.stop(), alice.expect_stream_error());
    assert_eq!(condition, "system-shutdown");
    let stored: Vec<String> = ctx
        .storage
        .offline
        .list(&j("bob@localhost"))
        .await
        .unwrap()
        .iter()
        .map(|m| {
            let el = xmppd::xml::parse_stanza(&m.stanza).unwrap();
            body(&el).unwrap_or_default()
        })
        .collect();
    assert_eq!(stored, ["in flight", "while away"]);
}

/// SIGTERM: the client is told `system-shutdown`, the process exits 0 within the
/// configured deadline, and what was stored is there at the next start.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_streams_and_exits_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        "[server]\nshutdown_timeout_secs = 5\n",
    );
    add_user(&config, "alice@localhost", "password");
    add_user(&config, "bob@localhost", "password");
    let mut server = Xmppd::running(&config);
    let mut alice = Client::login(server.c2s, "alice", "password", "pc").await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>kept</body></message>")
        .await;
    alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let started = std::time::Instant::now();
    server.sigterm();
    assert_eq!(alice.expect_stream_error().await, "system-shutdown");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait(Duration::from_secs(10));
        (status, server.log_text())
    })
    .await
    .unwrap();
    let (status, log) = status;
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM: {log}"));
    assert!(status.success(), "{status}: {log}");
    assert!(started.elapsed() < Duration::from_secs(6), "{log}");
    assert!(log.contains("storage flushed"), "{log}");

    let server = Xmppd::running(&config);
    let mut bob = Client::login(server.c2s, "bob", "password", "phone").await;
    bob.send("<presence/>").await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("kept"));
    server.kill9();
}
