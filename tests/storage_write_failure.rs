//! A store that fails while the server runs: the sender is told with a stanza error, and
//! nothing is reported stored that was not (never a panic, never silence).

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use support::TestServer;
use xmppd::addr::BareJid;
use xmppd::storage::{
    OfflineMessage, OfflineStore, OfflineStoreOutcome, Result, Storage, StorageError,
};

/// Offline storage on a full disk: every write fails.
struct FullDisk;

#[async_trait]
impl OfflineStore for FullDisk {
    async fn push(&self, _: &BareJid, _: &str, _: usize) -> Result<OfflineStoreOutcome> {
        Err(StorageError::Backend("No space left on device".into()))
    }
    async fn list(&self, _: &BareJid) -> Result<Vec<OfflineMessage>> {
        Ok(Vec::new())
    }
    async fn remove_up_to(&self, _: &BareJid, _: u64) -> Result<()> {
        Err(StorageError::Backend("No space left on device".into()))
    }
    async fn count(&self, _: &BareJid) -> Result<usize> {
        Ok(0)
    }
    async fn remove_user(&self, _: &BareJid) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_offline_write_is_a_stanza_error_to_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::test_config(dir.path());
    let mut storage = Storage::memory();
    storage.offline = Arc::new(FullDisk);
    let handle =
        xmppd::server::start_with_storage(config.clone(), storage, xmppd::modules::standard())
            .await
            .unwrap();
    let server = TestServer {
        handle: Some(handle),
        dir,
        config,
    };
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let bounce = alice
        .recv_until(|e| e.name == "message" && e.attr("id") == Some("m1"))
        .await;
    assert_eq!(bounce.attr("type"), Some("error"));
    assert!(
        bounce.to_stanza_string().contains("internal-server-error"),
        "{bounce:?}"
    );
    // The server goes on serving.
    let pong = alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    server.stop().await;
}

/// Offline storage whose pushes are not durable until `pushed_durable`, which fails on
/// request (a flush on a full disk).
struct Deferred {
    inner: Arc<dyn OfflineStore>,
    not_durable: std::sync::atomic::AtomicUsize,
    flush_fails: bool,
}

#[async_trait]
impl OfflineStore for Deferred {
    async fn push(
        &self,
        user: &BareJid,
        stanza: &str,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        let outcome = self.inner.push(user, stanza, quota).await?;
        if outcome == OfflineStoreOutcome::Stored {
            self.not_durable
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(outcome)
    }
    async fn pushed_durable(&self) -> Result<()> {
        if self.flush_fails {
            return Err(StorageError::Backend("No space left on device".into()));
        }
        self.not_durable
            .store(0, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        self.inner.list(user).await
    }
    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        self.inner.remove_up_to(user, up_to).await
    }
    async fn count(&self, user: &BareJid) -> Result<usize> {
        self.inner.count(user).await
    }
    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        self.inner.remove_user(user).await
    }
}

/// A server whose offline store is a `Deferred`; alice (XEP-0198 on) has just sent a
/// message to bob, who is offline, and asked for an ack.
async fn message_to_offline_then_ack_request(
    flush_fails: bool,
) -> (TestServer, Arc<Deferred>, support::Client) {
    let dir = tempfile::tempdir().unwrap();
    let config = support::test_config(dir.path());
    let mut storage = Storage::memory();
    let offline = Arc::new(Deferred {
        inner: storage.offline.clone(),
        not_durable: Default::default(),
        flush_fails,
    });
    storage.offline = offline.clone();
    let handle =
        xmppd::server::start_with_storage(config.clone(), storage, xmppd::modules::standard())
            .await
            .unwrap();
    let server = TestServer {
        handle: Some(handle),
        dir,
        config,
    };
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "pc").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    alice.recv_until(|e| e.name == "enabled").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message><r xmlns='urn:xmpp:sm:3'/>")
        .await;
    (server, offline, alice)
}

#[tokio::test]
async fn an_sm_ack_covers_an_offline_message_only_once_it_is_durable() {
    let (server, offline, mut alice) = message_to_offline_then_ack_request(false).await;
    let ack = alice.recv_until(|e| e.name == "a").await;
    assert_eq!(ack.attr("h"), Some("1"));
    assert_eq!(
        offline
            .not_durable
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "acked before the offline message was made durable"
    );
    assert_eq!(
        offline
            .count(&xmppd::addr::parse_bare("bob@localhost").unwrap())
            .await
            .unwrap(),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn no_sm_ack_covers_an_offline_message_that_could_not_be_made_durable() {
    let (server, _offline, mut alice) = message_to_offline_then_ack_request(true).await;
    loop {
        match alice.next_event().await {
            Some(xmppd::xml::StreamEvent::Stanza(el)) if el.name == "a" => {
                panic!("acked a message that is not on disk: {el:?}")
            }
            Some(xmppd::xml::StreamEvent::Stanza(el)) if el.name == "error" => {
                let condition = el.first_element().map(|c| c.name.clone());
                assert_eq!(condition.as_deref(), Some("internal-server-error"));
                break;
            }
            Some(_) => {}
            None => panic!("closed without a stream error"),
        }
    }
    server.stop().await;
}
