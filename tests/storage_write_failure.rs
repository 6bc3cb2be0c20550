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
